//! Workflows as parsed from `commands/*.toml`: triggers, permissions, and steps forming a DAG.
//! Parsing and validation live in [`parse`]; a [`Workflow`] that exists is a valid one.

mod duration;
mod mcp;
mod parse;
#[cfg(test)]
mod tests;

pub use duration::{format_duration, parse_duration};
pub use mcp::{McpServer, McpTransport, load_mcp_servers, parse_mcp_server};
pub use parse::{check_models, condition_template, load_dir, parse_workflow};

use chrono::Duration;
use chrono_tz::Tz;
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// One problem found in a workflow file, pointing at the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

/// Errors stop `baton check` and start-up; warnings are printed and let both go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}: {level}: {}",
            self.file.display(),
            self.line,
            self.message
        )
    }
}

/// Every workflow found in the commands directory.
#[derive(Debug, Default, Clone)]
pub struct WorkflowSet {
    by_name: BTreeMap<String, Arc<Workflow>>,
}

impl WorkflowSet {
    /// Builds a set from already validated workflows.
    pub fn new(workflows: impl IntoIterator<Item = Workflow>) -> Self {
        Self {
            by_name: workflows
                .into_iter()
                .map(|w| (w.name.clone(), Arc::new(w)))
                .collect(),
        }
    }
    pub fn get(&self, name: &str) -> Option<&Arc<Workflow>> {
        self.by_name.get(name)
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.by_name.values()
    }
    pub fn len(&self) -> usize {
        self.by_name.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
    /// The workflow whose slash trigger is `/command`.
    pub fn by_command(&self, command: &str) -> Option<(&Arc<Workflow>, &SlashTrigger)> {
        self.iter().find_map(|w| {
            w.triggers.iter().find_map(|t| match t {
                Trigger::Slash(s) if s.command == command => Some((w, s)),
                _ => None,
            })
        })
    }
    /// Every channel some workflow mentions, so the console can list them.
    pub fn channels(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for w in self.iter() {
            for t in &w.triggers {
                match t {
                    Trigger::Message(m) => out.extend(m.channels.iter().cloned()),
                    Trigger::Schedule(s) => {
                        out.insert(s.channel.clone());
                    }
                    Trigger::Slash(_) => {}
                }
            }
            out.extend(w.permissions.channels.iter().cloned());
            for s in &w.steps {
                match &s.kind {
                    StepKind::Notify {
                        channel: Some(c), ..
                    }
                    | StepKind::Digest {
                        channel: Some(c), ..
                    } => {
                        out.insert(c.clone());
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

/// A validated workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub description: String,
    /// Template for the root message title; defaults to the description.
    pub title: Option<String>,
    pub file: PathBuf,
    /// The file's text. Runs keep the text they started with, so editing a file never changes
    /// a run already under way.
    pub source: Arc<str>,
    pub triggers: Vec<Trigger>,
    pub permissions: Permissions,
    /// Per-tool policy, such as `auto = true` for an external tool that may run unapproved.
    pub tools: BTreeMap<String, ToolPolicy>,
    /// Input defaults, available to every trigger.
    pub inputs: Map<String, Value>,
    /// Steps in file order; `needs` forms a DAG (checked).
    pub steps: Vec<Step>,
    /// A run with no progress for this long is flagged in its thread (default:
    /// `BATON_STALL_AFTER`).
    pub stall_after: Option<Duration>,
}

impl Workflow {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Every step `id` depends on, directly or not.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<&str> = vec![id];
        while let Some(cur) = stack.pop() {
            if let Some(step) = self.step(cur) {
                for n in &step.needs {
                    if out.insert(n.clone()) {
                        stack.push(n);
                    }
                }
            }
        }
        out
    }

    /// Whether `actor_id` in `channel` may start this workflow. No lists means anyone.
    pub fn may_start(&self, actor: &crate::core::event::Actor, channel: &str) -> bool {
        let p = &self.permissions;
        let user_ok = p.users.is_empty() || p.users.iter().any(|u| actor.is_named_by(u));
        let channel_ok = p.channels.is_empty() || p.channels.iter().any(|c| c == channel);
        user_ok && channel_ok
    }

    /// The slash command that starts this workflow, if any, for messages like usage hints.
    pub fn slash(&self) -> Option<&SlashTrigger> {
        self.triggers.iter().find_map(|t| match t {
            Trigger::Slash(s) => Some(s),
            _ => None,
        })
    }
}

/// Who may start a workflow. Empty lists mean anyone, anywhere.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    pub users: Vec<String>,
    pub channels: Vec<String>,
}

/// Policy for one tool within a workflow.
#[derive(Debug, Clone, Default)]
pub struct ToolPolicy {
    /// An external tool may run without an approval step before it.
    pub auto: bool,
}

/// How a run can start.
#[derive(Debug, Clone)]
pub enum Trigger {
    Slash(SlashTrigger),
    Message(MessageTrigger),
    /// Boxed: a schedule carries a parsed cron, much larger than the other triggers.
    Schedule(Box<ScheduleTrigger>),
}

/// `/command args…`
#[derive(Debug, Clone)]
pub struct SlashTrigger {
    /// Without the slash.
    pub command: String,
    pub usage: String,
    pub args: Vec<ArgSpec>,
}

/// One typed argument of a slash command. Arguments are positional; the last string argument
/// takes the rest of the line.
#[derive(Debug, Clone)]
pub struct ArgSpec {
    pub name: String,
    pub ty: ArgType,
    pub required: bool,
    pub default: Option<Value>,
    pub description: String,
}

/// The type of a slash-command argument.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgType {
    String,
    Int,
    Number,
    Bool,
    Choice(Vec<String>),
}

/// A channel message matching a pattern, or mentioning the bot.
#[derive(Debug, Clone)]
pub struct MessageTrigger {
    /// Channels to listen in; empty means every channel.
    pub channels: Vec<String>,
    /// Named captures become inputs.
    pub pattern: Option<Regex>,
    /// Fire when the bot is mentioned.
    pub mention: bool,
    /// Also fire on replies inside threads.
    pub in_threads: bool,
    /// Let other bots' messages fire it.
    pub include_bots: bool,
}

/// A cron schedule in a time zone, posting into a channel.
#[derive(Debug, Clone)]
pub struct ScheduleTrigger {
    /// Stable name for the schedule within the workflow (slot bookkeeping uses it).
    pub key: String,
    pub cron_text: String,
    pub cron: croner::Cron,
    pub timezone: Tz,
    pub channel: String,
    pub inputs: Map<String, Value>,
}

impl ScheduleTrigger {
    /// The latest slot at or before `now` that comes after `after`, and whether more than one
    /// slot fell in that window (so some were skipped). Bounded, so a cursor years old cannot
    /// spin forever.
    pub fn latest_slot(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let start = after.with_timezone(&self.timezone);
        let mut latest = None;
        for slot in self.cron.clone().iter_after(start).take(100_000) {
            let slot = slot.with_timezone(&chrono::Utc);
            if slot > now {
                break;
            }
            latest = Some(slot);
        }
        latest
    }
}

/// One node of the DAG.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub needs: Vec<String>,
    /// How long one attempt may take.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub kind: StepKind,
    /// The line of `[[step]]` in the file, for messages.
    pub line: usize,
}

/// How often a failed step is tried again, and how long to wait first.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub max: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `n` (1-based), doubling and capped at an hour.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1i32 << n.saturating_sub(1).min(10);
        (self.backoff * factor).min(Duration::hours(1))
    }
}

/// What a step does. Closed on purpose: every kind is handled by the engine and `baton check`.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Call a built-in tool with templated arguments.
    Tool {
        tool: String,
        with: Map<String, Value>,
    },
    /// Ask people to decide.
    Approval(ApprovalSpec),
    /// Post a templated message, to a channel or the run's thread.
    Notify {
        channel: Option<String>,
        text: String,
    },
    /// A summary over the ledger for a period, posted to a channel or the run's thread.
    Digest {
        period: Duration,
        channel: Option<String>,
        /// An agent that writes a few sentences about the figures, when a model is configured.
        /// The figures themselves always come from the ledger.
        narrative: Option<Arc<crate::core::agents::AgentDef>>,
    },
    /// A specialist agent works on a templated task with its model and allowed tools.
    Agent {
        agent: Arc<crate::core::agents::AgentDef>,
        prompt: String,
        /// Who approves each external tool call the agent makes (required when it may make
        /// one): the run pauses on an approval showing the exact payload.
        approval: Option<ApprovalSpec>,
    },
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Tool { .. } => "tool",
            StepKind::Approval(_) => "approval",
            StepKind::Notify { .. } => "notify",
            StepKind::Digest { .. } => "digest",
            StepKind::Agent { .. } => "agent",
        }
    }
}

/// An approval step's policy.
#[derive(Debug, Clone)]
pub struct ApprovalSpec {
    /// Who may decide: user ids (`ben`) or `platform:id`.
    pub approvers: Vec<String>,
    /// Let the person who started the run approve it (off by default: four-eyes).
    pub allow_self_approval: bool,
    /// Rejecting needs a reason, asked for when Reject is clicked.
    pub reject_reason: bool,
    /// Template for what is about to happen.
    pub message: String,
    /// After this long with no decision, the approval expires with `on_timeout`.
    pub timeout: Duration,
    /// Distinct approvals needed (four-eyes still applies to each).
    pub quorum: u32,
    /// Rejections that reject the step (one, unless the step says otherwise).
    pub rejections: u32,
    /// Approval is needed only when this expression over the run holds (e.g.
    /// `steps.quote.output.amount > 1000`); otherwise the step passes at once.
    pub when: Option<String>,
    /// Mention the approvers again in the thread after this long.
    pub remind_after: Option<Duration>,
    /// After this long, ask `escalate_to` too.
    pub escalate_after: Option<Duration>,
    pub escalate_to: Escalation,
    /// What an expired approval becomes.
    pub on_timeout: TimeoutOutcome,
    /// Template for the payload the approval gates (an email, an amount), shown in the
    /// request and given to later steps as `steps.ID.output.payload`.
    pub payload: Option<String>,
    /// Approvers may change the payload before approving it.
    pub editable: bool,
}

/// Who an approval escalates to: a channel to post it in, and people who may then decide.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    pub channel: Option<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// The outcome of an approval nobody decided in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeoutOutcome {
    #[default]
    Reject,
    Approve,
}

impl ApprovalSpec {
    /// One approver, no ladder: what an approval is unless the step says more.
    pub fn simple(approvers: Vec<String>, message: String, timeout: Duration) -> Self {
        Self {
            approvers,
            allow_self_approval: false,
            reject_reason: false,
            message,
            timeout,
            quorum: 1,
            rejections: 1,
            when: None,
            remind_after: None,
            escalate_after: None,
            escalate_to: Escalation::default(),
            on_timeout: TimeoutOutcome::Reject,
            payload: None,
            editable: false,
        }
    }
}
