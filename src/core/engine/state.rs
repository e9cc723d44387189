//! The rows a run consists of, as the state machine sees them.

use crate::core::event::{Actor, ConversationRef};
use crate::core::ids::RunId;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident ($label:literal) { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => {
                        let known: Vec<&str> = vec![$($text),+];
                        let shown: String = other.chars().take(40).collect();
                        Err(format!("`{shown}` is not a {}; use one of: {}", $label, known.join(", ")))
                    }
                }
            }
        }
    };
}

string_enum!(
    /// Where a run stands.
    RunStatus ("run status") {
        Running => "running",
        WaitingApproval => "waiting_approval",
        Succeeded => "succeeded",
        Failed => "failed",
        Rejected => "rejected",
        Cancelled => "cancelled",
    }
);

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Rejected | RunStatus::Cancelled
        )
    }
    /// How the status reads in chat.
    pub fn label(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::WaitingApproval => "waiting for approval",
            RunStatus::Succeeded => "done",
            RunStatus::Failed => "failed",
            RunStatus::Rejected => "rejected",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

string_enum!(
    /// Where a step stands.
    StepStatus ("step status") {
        Pending => "pending",
        Running => "running",
        Retrying => "retrying",
        Waiting => "waiting",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
        Cancelled => "cancelled",
    }
);

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }
}

string_enum!(
    /// Where an approval stands.
    ApprovalStatus ("approval status") {
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
        Expired => "expired",
        Cancelled => "cancelled",
    }
);

/// The run row.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub workflow: String,
    pub status: RunStatus,
    /// The inbound event that started it; unique, so a redelivered event starts nothing new.
    pub event_id: String,
    pub conversation: ConversationRef,
    pub requested_by: Actor,
    pub inputs: Map<String, Value>,
    /// Started for a schedule slot that was missed while Baton was down.
    pub late: bool,
    pub title: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When the run was flagged as stalled, until it moves again.
    pub stalled_at: Option<DateTime<Utc>>,
    /// Why the run's root message could not be posted, while it has not been: the run goes
    /// on, but its conversation is not in chat.
    pub conversation_lost: Option<String>,
    /// Delivery alerts the run raised, by the outbox entry they are about.
    pub alerts: BTreeMap<i64, DeliveryAlert>,
}

/// An alert the run posted because one of its messages did not go through.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryAlert {
    /// The key of the message that did not go through.
    pub about: String,
    /// Where that message was going.
    pub channel: String,
    /// A permanent error (true), or transient errors that lasted past the time budget.
    pub permanent: bool,
    /// Until the message goes through after all.
    pub open: bool,
    pub raised_at: DateTime<Utc>,
    /// Posted in the channel rather than the thread: the message was the thread's root.
    #[serde(default)]
    pub in_channel: bool,
}

/// A step row.
#[derive(Debug, Clone, PartialEq)]
pub struct StepState {
    pub status: StepStatus,
    /// Attempts started so far (the current one when running).
    pub attempt: u32,
    /// Retries used; attempts lost to a restart do not count.
    pub retries_used: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Default for StepState {
    fn default() -> Self {
        Self {
            status: StepStatus::Pending,
            attempt: 0,
            retries_used: 0,
            output: None,
            error: None,
            started_at: None,
            finished_at: None,
        }
    }
}

/// An approval row.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub status: ApprovalStatus,
    pub approvers: Vec<String>,
    /// What is about to happen, as shown on the buttons' message.
    pub summary: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_by: Option<Actor>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    /// For an agent's external tool call: the call (`call_id`, `tool`, `args`), the hash the
    /// decision is bound to, and which request of the step this is (`round`).
    pub payload: Option<serde_json::Value>,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Each person's decision so far, one per person.
    pub votes: Vec<Vote>,
    /// When the reminder went out, if it has.
    pub reminded_at: Option<DateTime<Utc>>,
    /// When the approval was escalated, if it has been.
    pub escalated_at: Option<DateTime<Utc>>,
    /// An approval step's payload as it stands (edits included).
    pub content: Option<String>,
    /// Who changed the payload; under four-eyes their approval does not count.
    pub editors: Vec<Actor>,
    /// Requests posted for this approval so far (a changed payload is asked about afresh).
    pub round: u32,
}

/// One person's decision on an approval that needs several.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Vote {
    pub actor: Actor,
    pub approve: bool,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Approval {
    /// The people who approved, in the order they did.
    pub fn approvals(&self) -> impl Iterator<Item = &Actor> {
        self.votes.iter().filter(|v| v.approve).map(|v| &v.actor)
    }
    pub fn rejections(&self) -> usize {
        self.votes.iter().filter(|v| !v.approve).count()
    }
}

/// Everything the machine reads and writes for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub run: Run,
    pub steps: BTreeMap<String, StepState>,
    pub approvals: BTreeMap<String, Approval>,
    /// Pending timers by key, with the instant each comes due.
    pub timers: BTreeMap<String, DateTime<Utc>>,
}

/// Timer keys are strings so the store need not know the machine's types.
pub mod timer {
    pub fn expire(step: &str) -> String {
        format!("expire:{step}")
    }
    pub fn retry(step: &str) -> String {
        format!("retry:{step}")
    }
    /// The run-level timer that flags a run with no progress for its stall threshold.
    pub const STALL: &str = "stall";
    pub fn deadline(step: &str) -> String {
        format!("deadline:{step}")
    }
    pub fn remind(step: &str) -> String {
        format!("remind:{step}")
    }
    pub fn escalate(step: &str) -> String {
        format!("escalate:{step}")
    }
}
