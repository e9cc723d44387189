//! From TOML text to a validated [`Workflow`], collecting every problem with its line rather
//! than stopping at the first.

use super::*;
use crate::core::agents::AgentDef;
use crate::core::template;
use crate::core::tools::{Capability, ToolCatalog, ToolInfo};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use toml::Spanned;

/// Default time one step attempt may take.
const DEFAULT_STEP_TIMEOUT: &str = "5m";
/// Default time an approval waits before it expires as rejected.
const DEFAULT_APPROVAL_TIMEOUT: &str = "24h";
/// The roots a template may read.
const TEMPLATE_ROOTS: [&str; 5] = ["input", "steps", "run", "trigger", "baton"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    title: Option<Spanned<String>>,
    stall_after: Option<Spanned<String>>,
    #[serde(default)]
    trigger: Vec<Spanned<RawTrigger>>,
    #[serde(default)]
    permissions: RawPermissions,
    #[serde(default)]
    tools: BTreeMap<String, RawToolPolicy>,
    #[serde(default)]
    inputs: toml::Table,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
    /// Agents declared in this file (`[agents.researcher]`), and shared ones a run carries.
    #[serde(default)]
    agents: BTreeMap<String, Spanned<RawAgent>>,
    /// Approval policies declared in this file (`[policies.payments]`), and shared ones
    /// (`commands/policies/*.toml`) a run carries.
    #[serde(default)]
    policies: BTreeMap<String, RawPolicy>,
}

/// An approval policy named once and used by steps (`policy = "payments"`): whatever the
/// step does not say itself comes from here.
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    approvers: Vec<String>,
    allow_self_approval: Option<bool>,
    reject_reason: Option<bool>,
    quorum: Option<Spanned<u32>>,
    rejections: Option<Spanned<u32>>,
    remind_after: Option<Spanned<String>>,
    escalate_after: Option<Spanned<String>>,
    escalate_to: Option<Spanned<Escalation>>,
    timeout: Option<Spanned<String>>,
    on_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    /// Only in `commands/agents/*.toml`; in a workflow the table's key names the agent.
    name: Option<String>,
    role: Option<String>,
    #[serde(default = "default_model")]
    model: String,
    instructions: Spanned<String>,
    #[serde(default)]
    tools: Vec<Spanned<String>>,
    max_turns: Option<u32>,
    max_output_tokens: Option<u32>,
    timeout: Option<Spanned<String>>,
    token_budget: Option<u64>,
    output_schema: Option<Spanned<toml::Value>>,
    #[serde(default)]
    memory: Vec<String>,
}

fn default_model() -> String {
    "default".into()
}

/// Default limits of an agent.
const DEFAULT_MAX_TURNS: u32 = 8;
const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 1024;
const DEFAULT_AGENT_TIMEOUT: &str = "3m";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPermissions {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    channels: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolPolicy {
    #[serde(default)]
    auto: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    kind: Spanned<String>,
    // slash
    command: Option<Spanned<String>>,
    usage: Option<String>,
    #[serde(default)]
    args: Vec<Spanned<RawArg>>,
    // message
    #[serde(default)]
    channels: Vec<String>,
    pattern: Option<Spanned<String>>,
    mention: Option<bool>,
    #[serde(default)]
    in_threads: bool,
    #[serde(default)]
    include_bots: bool,
    // schedule
    id: Option<String>,
    cron: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    channel: Option<String>,
    #[serde(default)]
    inputs: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArg {
    name: String,
    #[serde(rename = "type", default = "default_arg_type")]
    ty: String,
    #[serde(default)]
    required: bool,
    default: Option<toml::Value>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    choices: Vec<String>,
}

fn default_arg_type() -> String {
    "string".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    needs: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retry: Option<Spanned<RawRetry>>,
    // tool
    tool: Option<Spanned<String>>,
    with: Option<Spanned<toml::Table>>,
    // approval
    #[serde(default)]
    approvers: Vec<String>,
    allow_self_approval: Option<bool>,
    reject_reason: Option<bool>,
    policy: Option<Spanned<String>>,
    message: Option<Spanned<String>>,
    quorum: Option<Spanned<u32>>,
    rejections: Option<Spanned<u32>>,
    when: Option<Spanned<String>>,
    remind_after: Option<Spanned<String>>,
    escalate_after: Option<Spanned<String>>,
    escalate_to: Option<Spanned<Escalation>>,
    on_timeout: Option<Spanned<String>>,
    payload: Option<Spanned<String>>,
    editable: Option<Spanned<bool>>,
    // notify and digest
    channel: Option<String>,
    text: Option<Spanned<String>>,
    period: Option<Spanned<String>>,
    // agent
    agent: Option<Spanned<String>>,
    prompt: Option<Spanned<String>>,
    approval_timeout: Option<Spanned<String>>,
    // digest
    narrative: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    max: u32,
    backoff: Option<String>,
}

/// Collects diagnostics for one file, turning byte offsets into line numbers.
pub(super) struct Report<'a> {
    file: &'a Path,
    text: &'a str,
    out: Vec<Diagnostic>,
}

impl<'a> Report<'a> {
    pub(super) fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            out: Vec::new(),
        }
    }
    pub(super) fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.out
    }
    pub(super) fn error_count(&self) -> usize {
        self.out
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
    pub(super) fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.push(offset, Severity::Error, message.into());
    }
    fn warn(&mut self, offset: usize, message: impl Into<String>) {
        self.push(offset, Severity::Warning, message.into());
    }
    fn push(&mut self, offset: usize, severity: Severity, message: String) {
        let line = self.line_of(offset);
        self.out.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            severity,
            message,
        });
    }
}

/// Parses and validates one workflow file. Returns the workflow only when it has no errors;
/// the diagnostics may hold warnings either way.
pub fn parse_workflow(
    file: &Path,
    text: &str,
    tools: &ToolCatalog,
) -> (Option<Workflow>, Vec<Diagnostic>) {
    let mut r = Report {
        file,
        text,
        out: Vec::new(),
    };
    let raw: RawWorkflow = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            r.error(at, e.message().to_string());
            return (None, r.out);
        }
    };
    let wf = build(&mut r, file, text, raw, tools);
    let ok = !r.out.iter().any(|d| d.severity == Severity::Error);
    (wf.filter(|_| ok), r.out)
}

fn build(
    r: &mut Report<'_>,
    file: &Path,
    text: &str,
    raw: RawWorkflow,
    tools: &ToolCatalog,
) -> Option<Workflow> {
    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        r.error(
            raw.name.span().start,
            format!("workflow name `{name}` must be letters, digits, `-` or `_`"),
        );
    }

    let mut inputs: Map<String, Value> = Map::new();
    for (k, v) in raw.inputs {
        inputs.insert(k, toml_to_json(v));
    }
    // Every input name some trigger or default can provide; templates may only read these.
    let mut known_inputs: BTreeSet<String> = inputs.keys().cloned().collect();
    known_inputs.insert("text".into());

    let mut triggers = Vec::new();
    for (i, t) in raw.trigger.into_iter().enumerate() {
        let at = t.span().start;
        if let Some(trigger) = build_trigger(r, at, i, t.into_inner(), &mut known_inputs) {
            triggers.push(trigger);
        }
    }
    if triggers.is_empty() {
        r.warn(0, "no [[trigger]]: this workflow can never start");
    }

    // Steps: ids first, so `needs` can point forward.
    let mut ids: HashMap<String, usize> = HashMap::new();
    for s in &raw.step {
        let id = s.get_ref().id.get_ref().clone();
        let at = s.get_ref().id.span().start;
        // Step ids end up in button action ids, which chat platforms cap (Slack at 255).
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            r.error(
                at,
                format!("step id `{id}` must be 1-64 letters, digits, `-` or `_`"),
            );
        }
        if ids.insert(id.clone(), at).is_some() {
            r.error(at, format!("step id `{id}` is used twice"));
        }
    }
    if raw.step.is_empty() {
        r.error(0, "a workflow needs at least one [[step]]");
    }

    let mut agents: BTreeMap<String, Arc<AgentDef>> = BTreeMap::new();
    for (name, raw) in raw.agents {
        let at = raw.span().start;
        if let Some(a) = build_agent(r, at, &name, raw.into_inner(), tools) {
            agents.insert(name, Arc::new(a));
        }
    }

    let mut steps = Vec::new();
    let mut template_checks: Vec<(String, usize, String)> = Vec::new();
    for s in raw.step {
        let line_at = s.span().start;
        let s = s.into_inner();
        let Some(s) = with_policy(r, s, &raw.policies) else {
            continue;
        };
        if let Some(step) = build_step(r, line_at, s, &ids, tools, &agents, &mut template_checks) {
            steps.push(step);
        }
    }

    let stall_after = raw.stall_after.as_ref().and_then(|d| {
        parse_duration(d.get_ref())
            .map_err(|e| r.error(d.span().start, format!("stall_after: {e}")))
            .ok()
    });
    let wf = Workflow {
        stall_after,
        name,
        description: raw.description,
        title: raw.title.as_ref().map(|t| t.get_ref().clone()),
        file: file.to_path_buf(),
        source: Arc::from(text),
        triggers,
        permissions: Permissions {
            users: raw.permissions.users,
            channels: raw.permissions.channels,
        },
        tools: raw
            .tools
            .into_iter()
            .map(|(k, v)| (k, ToolPolicy { auto: v.auto }))
            .collect(),
        inputs,
        steps,
    };
    for name in wf.tools.keys() {
        if tools.get(name).is_none() {
            r.error(0, format!("[tools.\"{name}\"] names an unknown tool"));
        }
    }

    if let Some((at, cycle)) = find_cycle(&wf, &ids) {
        r.error(at, format!("steps form a cycle: {}", cycle.join(" -> ")));
        return None;
    }

    if let Some(title) = &raw.title {
        template_checks.push((String::new(), title.span().start, title.get_ref().clone()));
    }
    for (step, at, source) in template_checks {
        check_template(r, &wf, &known_inputs, &step, at, &source);
    }
    check_external_tools(r, &wf, tools);
    Some(wf)
}

fn build_trigger(
    r: &mut Report<'_>,
    at: usize,
    index: usize,
    t: RawTrigger,
    known_inputs: &mut BTreeSet<String>,
) -> Option<Trigger> {
    match t.kind.get_ref().as_str() {
        "slash" => {
            let Some(command) = t.command else {
                r.error(at, "a slash trigger needs `command`");
                return None;
            };
            let cmd = command.get_ref().trim_start_matches('/').to_string();
            let valid = !cmd.is_empty()
                && cmd.len() <= 32
                && cmd
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid {
                r.error(
                    command.span().start,
                    format!("command `{cmd}` must be 1-32 lowercase letters, digits, `-` or `_`"),
                );
            }
            if cmd == "baton" {
                r.error(
                    command.span().start,
                    "`/baton` is reserved for Baton's own commands",
                );
            }
            let mut args = Vec::new();
            let mut seen_optional = false;
            for a in t.args {
                let a_at = a.span().start;
                let a = a.into_inner();
                let ty = match a.ty.as_str() {
                    "string" if !a.choices.is_empty() => ArgType::Choice(a.choices.clone()),
                    "string" => ArgType::String,
                    "int" => ArgType::Int,
                    "number" => ArgType::Number,
                    "bool" => ArgType::Bool,
                    "choice" if !a.choices.is_empty() => ArgType::Choice(a.choices.clone()),
                    "choice" => {
                        r.error(
                            a_at,
                            format!("argument `{}` of type choice needs `choices`", a.name),
                        );
                        continue;
                    }
                    other => {
                        r.error(
                            a_at,
                            format!("argument `{}` has unknown type `{other}` (string, int, number, bool, choice)", a.name),
                        );
                        continue;
                    }
                };
                if a.required && seen_optional {
                    r.error(
                        a_at,
                        format!("required argument `{}` comes after an optional one", a.name),
                    );
                }
                seen_optional |= !a.required;
                known_inputs.insert(a.name.clone());
                args.push(ArgSpec {
                    name: a.name,
                    ty,
                    required: a.required,
                    default: a.default.map(toml_to_json),
                    description: a.description,
                });
            }
            let usage = t.usage.unwrap_or_else(|| {
                let mut u = format!("/{cmd}");
                for a in &args {
                    if a.required {
                        u.push_str(&format!(" <{}>", a.name));
                    } else {
                        u.push_str(&format!(" [{}]", a.name));
                    }
                }
                u
            });
            Some(Trigger::Slash(SlashTrigger {
                command: cmd,
                usage,
                args,
            }))
        }
        "message" => {
            let mention = t.mention.unwrap_or(false);
            let mut pattern = None;
            if let Some(p) = &t.pattern {
                match Regex::new(p.get_ref()) {
                    Ok(re) => {
                        known_inputs.extend(re.capture_names().flatten().map(str::to_owned));
                        pattern = Some(re);
                    }
                    Err(e) => r.error(p.span().start, format!("bad regex: {e}")),
                }
            }
            if t.pattern.is_none() && !mention {
                r.error(at, "a message trigger needs `pattern` or `mention = true`");
                return None;
            }
            Some(Trigger::Message(MessageTrigger {
                channels: t.channels,
                pattern,
                mention,
                in_threads: t.in_threads,
                include_bots: t.include_bots,
            }))
        }
        "schedule" => {
            let (Some(cron_text), Some(tz), Some(channel)) = (&t.cron, &t.timezone, &t.channel)
            else {
                r.error(
                    at,
                    "a schedule trigger needs `cron`, `timezone` and `channel`",
                );
                return None;
            };
            let cron = match croner::Cron::new(cron_text.get_ref()).parse() {
                Ok(c) => Some(c),
                Err(e) => {
                    r.error(
                        cron_text.span().start,
                        format!("bad cron `{}`: {e}", cron_text.get_ref()),
                    );
                    None
                }
            };
            let timezone = match tz.get_ref().parse::<Tz>() {
                Ok(z) => Some(z),
                Err(_) => {
                    r.error(
                        tz.span().start,
                        format!(
                            "unknown time zone `{}` (use an IANA name like Europe/Berlin)",
                            tz.get_ref()
                        ),
                    );
                    None
                }
            };
            let mut inputs = Map::new();
            for (k, v) in t.inputs {
                known_inputs.insert(k.clone());
                inputs.insert(k, toml_to_json(v));
            }
            known_inputs.insert("slot".into());
            Some(Trigger::Schedule(Box::new(ScheduleTrigger {
                key: t.id.unwrap_or_else(|| format!("schedule-{index}")),
                cron_text: cron_text.get_ref().clone(),
                cron: cron?,
                timezone: timezone?,
                channel: channel.clone(),
                inputs,
            })))
        }
        other => {
            r.error(
                t.kind.span().start,
                format!("unknown trigger kind `{other}` (slash, message, schedule)"),
            );
            None
        }
    }
}

/// Checks one agent: its tools exist and may be given to an agent, its schema is one Baton can
/// enforce, its limits are sane.
fn build_agent(
    r: &mut Report<'_>,
    at: usize,
    name: &str,
    a: RawAgent,
    tools: &ToolCatalog,
) -> Option<AgentDef> {
    let mut ok = true;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        r.error(
            at,
            format!("agent name `{name}` must be letters, digits, `-` or `_`"),
        );
        ok = false;
    }
    let mut allowed = Vec::new();
    for t in &a.tools {
        match tools.get(t.get_ref()) {
            None => {
                let known: Vec<&str> = tools.names().collect();
                r.error(
                    t.span().start,
                    format!(
                        "agent `{name}`: unknown tool `{}` (known: {})",
                        t.get_ref(),
                        known.join(", ")
                    ),
                );
                ok = false;
            }
            Some(info) => {
                warn_unlisted(r, t.span().start, &info);
                allowed.push(info.name.clone())
            }
        }
    }
    let output_schema = a
        .output_schema
        .as_ref()
        .map(|s| (s.span().start, toml_to_json(s.get_ref().clone())));
    if let Some((s_at, schema)) = &output_schema
        && let Err(e) = crate::core::agents::check_schema(schema)
    {
        r.error(*s_at, format!("agent `{name}`: output_schema: {e}"));
        ok = false;
    }
    if let Err(e) = template::variables(a.instructions.get_ref()) {
        r.error(
            a.instructions.span().start,
            format!("agent `{name}`: instructions do not parse: {e}"),
        );
        ok = false;
    }
    let max_turns = a.max_turns.unwrap_or(DEFAULT_MAX_TURNS);
    if !(1..=50).contains(&max_turns) {
        r.error(at, format!("agent `{name}`: max_turns must be 1 to 50"));
        ok = false;
    }
    let timeout = match &a.timeout {
        None => parse_duration(DEFAULT_AGENT_TIMEOUT).expect("default durations parse"),
        Some(t) => parse_duration(t.get_ref()).unwrap_or_else(|e| {
            r.error(t.span().start, e);
            ok = false;
            Duration::seconds(1)
        }),
    };
    ok.then(|| AgentDef {
        name: name.to_owned(),
        role: a.role.unwrap_or_else(|| name.to_owned()),
        model: a.model,
        instructions: a.instructions.into_inner(),
        tools: allowed,
        max_turns,
        max_output_tokens: a.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
        timeout,
        token_budget: a.token_budget,
        output_schema: output_schema.map(|(_, s)| s),
        memory: a.memory,
    })
}

fn build_step(
    r: &mut Report<'_>,
    at: usize,
    s: RawStep,
    ids: &HashMap<String, usize>,
    tools: &ToolCatalog,
    agents: &BTreeMap<String, Arc<AgentDef>>,
    templates: &mut Vec<(String, usize, String)>,
) -> Option<Step> {
    let id = s.id.get_ref().clone();
    for n in &s.needs {
        if !ids.contains_key(n.get_ref()) {
            r.error(
                n.span().start,
                format!("step `{id}` needs unknown step `{}`", n.get_ref()),
            );
        }
    }
    let duration = |r: &mut Report<'_>, v: &Option<Spanned<String>>, default: &str| -> Duration {
        match v {
            None => parse_duration(default).expect("default durations parse"),
            Some(v) => parse_duration(v.get_ref()).unwrap_or_else(|e| {
                r.error(v.span().start, e);
                Duration::seconds(1)
            }),
        }
    };
    let mut timeout = duration(r, &s.timeout, DEFAULT_STEP_TIMEOUT);
    let retry = match &s.retry {
        None => RetryPolicy {
            max: 0,
            backoff: Duration::seconds(10),
        },
        Some(raw) => {
            let rr = raw.get_ref();
            let backoff = match &rr.backoff {
                None => Duration::seconds(10),
                Some(b) => parse_duration(b).unwrap_or_else(|e| {
                    r.error(raw.span().start, e);
                    Duration::seconds(10)
                }),
            };
            if rr.max > 20 {
                r.error(
                    raw.span().start,
                    "retry.max above 20 is almost certainly a mistake",
                );
            }
            RetryPolicy {
                max: rr.max,
                backoff,
            }
        }
    };

    let kind_at = s.kind.span().start;
    let misplaced = |r: &mut Report<'_>, field: &str, present: bool| {
        if present {
            r.error(
                kind_at,
                format!("`{field}` does not apply to a {} step", s.kind.get_ref()),
            );
        }
    };
    if !matches!(s.kind.get_ref().as_str(), "approval" | "agent") {
        for (field, present) in [
            ("quorum", s.quorum.is_some()),
            ("rejections", s.rejections.is_some()),
            ("when", s.when.is_some()),
            ("remind_after", s.remind_after.is_some()),
            ("escalate_after", s.escalate_after.is_some()),
            ("escalate_to", s.escalate_to.is_some()),
            ("on_timeout", s.on_timeout.is_some()),
            ("payload", s.payload.is_some()),
            ("editable", s.editable.is_some()),
        ] {
            misplaced(r, field, present);
        }
    }
    let kind = match s.kind.get_ref().as_str() {
        "tool" => {
            misplaced(r, "approvers", !s.approvers.is_empty());
            misplaced(r, "text", s.text.is_some());
            let Some(tool) = &s.tool else {
                r.error(kind_at, format!("tool step `{id}` needs `tool`"));
                return None;
            };
            let Some(info) = tools.get(tool.get_ref()).filter(|i| !i.agent_only) else {
                let known: Vec<&str> = tools
                    .names()
                    .filter(|n| tools.get(n).is_some_and(|i| !i.agent_only))
                    .collect();
                r.error(
                    tool.span().start,
                    format!(
                        "unknown tool `{}` (known: {})",
                        tool.get_ref(),
                        known.join(", ")
                    ),
                );
                return None;
            };
            warn_unlisted(r, tool.span().start, &info);
            let with_at = s.with.as_ref().map(|w| w.span().start).unwrap_or(kind_at);
            let with: Map<String, Value> = s
                .with
                .map(|w| {
                    w.into_inner()
                        .into_iter()
                        .map(|(k, v)| (k, toml_to_json(v)))
                        .collect()
                })
                .unwrap_or_default();
            for arg in &info.required_args {
                if !with.contains_key(arg) {
                    r.error(with_at, format!("tool `{}` needs `with.{arg}`", info.name));
                }
            }
            collect_strings(&Value::Object(with.clone()), &mut |s| {
                templates.push((id.clone(), with_at, s.to_owned()));
            });
            StepKind::Tool {
                tool: info.name.clone(),
                with,
            }
        }
        "approval" => {
            if s.approvers.is_empty() {
                r.error(kind_at, format!("approval step `{id}` needs `approvers`"));
            }
            let message = s
                .message
                .as_ref()
                .map(|m| m.get_ref().clone())
                .unwrap_or_else(|| format!("Approve step `{id}`?"));
            if let Some(m) = &s.message {
                templates.push((id.clone(), m.span().start, m.get_ref().clone()));
            }
            let timeout = duration(r, &s.timeout, DEFAULT_APPROVAL_TIMEOUT);
            if let Some(when) = &s.when {
                // The condition is checked like a template: known steps, needed ones only.
                templates.push((
                    id.clone(),
                    when.span().start,
                    condition_template(when.get_ref()),
                ));
            }
            let mut spec = approval_spec(r, &format!("step `{id}`"), &s, message, timeout);
            if let Some(p) = &s.payload {
                templates.push((id.clone(), p.span().start, p.get_ref().clone()));
                spec.payload = Some(p.get_ref().clone());
            }
            if let Some(e) = &s.editable {
                spec.editable = *e.get_ref();
                if spec.editable && spec.payload.is_none() {
                    r.error(
                        e.span().start,
                        format!("step `{id}`: `editable` needs a `payload` to edit"),
                    );
                }
            }
            StepKind::Approval(spec)
        }
        "notify" => {
            let Some(text) = &s.text else {
                r.error(kind_at, format!("notify step `{id}` needs `text`"));
                return None;
            };
            templates.push((id.clone(), text.span().start, text.get_ref().clone()));
            if let Some(c) = &s.channel {
                templates.push((id.clone(), text.span().start, c.clone()));
            }
            StepKind::Notify {
                channel: s.channel,
                text: text.get_ref().clone(),
            }
        }
        "digest" => {
            let narrative = match &s.narrative {
                None => None,
                Some(name) => match agents.get(name.get_ref()) {
                    Some(a) => {
                        templates.push((id.clone(), name.span().start, a.instructions.clone()));
                        Some(a.clone())
                    }
                    None => {
                        r.error(
                            name.span().start,
                            format!("unknown agent `{}` for the narrative", name.get_ref()),
                        );
                        return None;
                    }
                },
            };
            StepKind::Digest {
                period: duration(r, &s.period, "24h"),
                channel: s.channel,
                narrative,
            }
        }
        "agent" => {
            misplaced(r, "tool", s.tool.is_some());
            // An agent's call is its own payload: the exact tool and arguments.
            misplaced(r, "payload", s.payload.is_some());
            misplaced(r, "editable", s.editable.is_some());
            let Some(name) = &s.agent else {
                r.error(kind_at, format!("agent step `{id}` needs `agent` (a name from [agents.*] or commands/agents/)"));
                return None;
            };
            let Some(agent) = agents.get(name.get_ref()) else {
                let known: Vec<&str> = agents.keys().map(String::as_str).collect();
                r.error(
                    name.span().start,
                    format!(
                        "unknown agent `{}` (known: {})",
                        name.get_ref(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                return None;
            };
            let Some(prompt) = &s.prompt else {
                r.error(
                    kind_at,
                    format!("agent step `{id}` needs `prompt`: the task, a template"),
                );
                return None;
            };
            templates.push((id.clone(), prompt.span().start, prompt.get_ref().clone()));
            templates.push((id.clone(), name.span().start, agent.instructions.clone()));
            if s.timeout.is_none() {
                timeout = agent.timeout;
            }
            // Each external call the agent makes waits for one of these people.
            let external: Vec<&str> = agent
                .tools
                .iter()
                .filter(|t| {
                    tools
                        .get(t)
                        .is_some_and(|i| i.capability == Capability::External)
                })
                .map(String::as_str)
                .collect();
            let approval = if s.approvers.is_empty() {
                if !external.is_empty() {
                    r.error(
                        name.span().start,
                        format!(
                            "agent step `{id}`: agent `{}` may call {} (external), so the step needs `approvers` who approve each call",
                            agent.name,
                            external.join(", ")
                        ),
                    );
                }
                None
            } else {
                if let Some(when) = &s.when {
                    r.error(
                        when.span().start,
                        "`when` is for approval steps; an agent's external calls are always approved",
                    );
                }
                if let Some(o) = s.on_timeout.as_ref().filter(|o| o.get_ref() == "approve") {
                    r.error(
                        o.span().start,
                        "an agent's external call is never made because nobody answered: `on_timeout = \"approve\"` is for approval steps",
                    );
                }
                let timeout = duration(r, &s.approval_timeout, DEFAULT_APPROVAL_TIMEOUT);
                Some(approval_spec(
                    r,
                    &format!("step `{id}`"),
                    &s,
                    String::new(),
                    timeout,
                ))
            };
            StepKind::Agent {
                agent: agent.clone(),
                prompt: prompt.get_ref().clone(),
                approval,
            }
        }
        other => {
            r.error(
                kind_at,
                format!("unknown step kind `{other}` (tool, approval, notify, digest, agent)"),
            );
            return None;
        }
    };
    Some(Step {
        id,
        needs: s.needs.into_iter().map(Spanned::into_inner).collect(),
        timeout,
        retry,
        kind,
        line: r.line_of(at),
    })
}

fn collect_strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, f)),
        Value::Object(map) => map.values().for_each(|i| collect_strings(i, f)),
        _ => {}
    }
}

/// Finds a cycle in `needs`, returning where to point and the path around it.
fn find_cycle(wf: &Workflow, ids: &HashMap<String, usize>) -> Option<(usize, Vec<String>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = wf
        .steps
        .iter()
        .map(|s| (s.id.as_str(), Mark::New))
        .collect();
    fn visit<'a>(
        wf: &'a Workflow,
        id: &'a str,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(id).copied() {
            Some(Mark::Done) | None => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(id.to_string());
                return Some(cycle);
            }
            Some(Mark::New) => {}
        }
        marks.insert(id, Mark::Open);
        path.push(id);
        if let Some(step) = wf.step(id) {
            for n in &step.needs {
                if let Some(c) = visit(wf, n, marks, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        marks.insert(id, Mark::Done);
        None
    }
    for s in &wf.steps {
        let mut path = Vec::new();
        if let Some(cycle) = visit(wf, &s.id, &mut marks, &mut path) {
            let at = ids.get(&cycle[0]).copied().unwrap_or(0);
            return Some((at, cycle));
        }
    }
    None
}

fn check_template(
    r: &mut Report<'_>,
    wf: &Workflow,
    known_inputs: &BTreeSet<String>,
    step: &str,
    at: usize,
    source: &str,
) {
    let vars = match template::variables(source) {
        Ok(v) => v,
        Err(e) => {
            r.error(at, format!("template does not parse: {e}"));
            return;
        }
    };
    let ancestors = if step.is_empty() {
        BTreeSet::new()
    } else {
        wf.ancestors(step)
    };
    for var in vars {
        let mut parts = var.split('.');
        let root = parts.next().unwrap_or_default();
        let second = parts.next();
        match (root, second) {
            ("input", Some(name)) if !known_inputs.contains(name) => r.error(
                at,
                format!(
                    "template reads unknown input `{name}` (known: {})",
                    known_inputs.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            ("steps", Some(other)) if wf.step(other).is_none() => {
                r.error(at, format!("template reads unknown step `{other}`"))
            }
            ("steps", Some(other)) if !ancestors.contains(other) => r.error(
                at,
                if step.is_empty() {
                    format!("the title cannot read step `{other}`: it is rendered when the run starts")
                } else {
                    format!("step `{step}` reads step `{other}` but does not need it (add it to `needs`)")
                },
            ),
            (root, _) if !TEMPLATE_ROOTS.contains(&root) => r.error(
                at,
                format!("template reads unknown variable `{root}` (input, steps, run, trigger, baton)"),
            ),
            _ => {}
        }
    }
}

/// A step that names a policy gets every approval field it does not set itself from it. An
/// agent step's approvals take the policy's `timeout` as their `approval_timeout`.
fn with_policy(
    r: &mut Report<'_>,
    mut s: RawStep,
    policies: &BTreeMap<String, RawPolicy>,
) -> Option<RawStep> {
    let Some(name) = s.policy.clone() else {
        return Some(s);
    };
    let Some(p) = policies.get(name.get_ref()) else {
        let known: Vec<&str> = policies.keys().map(String::as_str).collect();
        r.error(
            name.span().start,
            format!(
                "unknown policy `{}` (known: {}; policies live in commands/policies/ or [policies.NAME])",
                name.get_ref(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ),
        );
        return None;
    };
    if !matches!(s.kind.get_ref().as_str(), "approval" | "agent") {
        r.error(
            name.span().start,
            format!("`policy` does not apply to a {} step", s.kind.get_ref()),
        );
        return None;
    }
    let p = p.clone();
    if s.approvers.is_empty() {
        s.approvers = p.approvers;
    }
    s.allow_self_approval = s.allow_self_approval.or(p.allow_self_approval);
    s.reject_reason = s.reject_reason.or(p.reject_reason);
    s.quorum = s.quorum.or(p.quorum);
    s.rejections = s.rejections.or(p.rejections);
    s.remind_after = s.remind_after.or(p.remind_after);
    s.escalate_after = s.escalate_after.or(p.escalate_after);
    s.escalate_to = s.escalate_to.or(p.escalate_to);
    s.on_timeout = s.on_timeout.or(p.on_timeout);
    if s.kind.get_ref() == "agent" {
        s.approval_timeout = s.approval_timeout.or(p.timeout);
    } else {
        s.timeout = s.timeout.or(p.timeout);
    }
    Some(s)
}

/// An approval condition as a template that renders `true` or `false`.
pub fn condition_template(expr: &str) -> String {
    format!("{{% if {expr} %}}true{{% else %}}false{{% endif %}}")
}

/// The approval policy of an approval step, or of an agent step's external calls: quorum,
/// rejections, and the ladder (remind, escalate, expire), each checked against the others.
fn approval_spec(
    r: &mut Report<'_>,
    who: &str,
    s: &RawStep,
    message: String,
    timeout: Duration,
) -> ApprovalSpec {
    let mut spec = ApprovalSpec::simple(s.approvers.clone(), message, timeout);
    spec.allow_self_approval = s.allow_self_approval.unwrap_or(false);
    spec.reject_reason = s.reject_reason.unwrap_or(false);
    spec.when = s.when.as_ref().map(|w| w.get_ref().clone());
    if let Some(q) = &s.quorum {
        spec.quorum = *q.get_ref();
        let people = s
            .approvers
            .iter()
            .all(|a| !a.contains("group:") && !a.contains("channel:"));
        if spec.quorum == 0 {
            r.error(
                q.span().start,
                format!("{who}: `quorum` must be at least 1"),
            );
        } else if people && spec.quorum as usize > s.approvers.len() {
            r.error(
                q.span().start,
                format!(
                    "{who}: `quorum = {}` needs more approvers than the {} listed",
                    spec.quorum,
                    s.approvers.len()
                ),
            );
        }
    }
    if let Some(n) = &s.rejections {
        spec.rejections = *n.get_ref();
        if spec.rejections == 0 {
            r.error(
                n.span().start,
                format!("{who}: `rejections` must be at least 1"),
            );
        }
    }
    let rung = |r: &mut Report<'_>, v: &Option<Spanned<String>>| {
        v.as_ref().and_then(|v| match parse_duration(v.get_ref()) {
            Ok(d) => Some((d, v.span().start)),
            Err(e) => {
                r.error(v.span().start, e);
                None
            }
        })
    };
    let remind = rung(r, &s.remind_after);
    let escalate = rung(r, &s.escalate_after);
    if let (Some((re, _)), Some((es, at))) = (remind, escalate)
        && es <= re
    {
        r.error(
            at,
            format!("{who}: `escalate_after` must come after `remind_after`"),
        );
    }
    for (d, at, what) in [
        remind.map(|(d, at)| (d, at, "remind_after")),
        escalate.map(|(d, at)| (d, at, "escalate_after")),
    ]
    .into_iter()
    .flatten()
    {
        if d >= timeout {
            r.error(
                at,
                format!(
                    "{who}: `{what}` must come before the approval expires ({})",
                    format_duration(timeout)
                ),
            );
        }
    }
    spec.remind_after = remind.map(|(d, _)| d);
    spec.escalate_after = escalate.map(|(d, _)| d);
    if let Some(to) = &s.escalate_to {
        spec.escalate_to = to.get_ref().clone();
        if spec.escalate_to.channel.is_none() && spec.escalate_to.approvers.is_empty() {
            r.error(
                to.span().start,
                format!("{who}: `escalate_to` needs a `channel`, `approvers`, or both"),
            );
        }
    }
    match (&s.escalate_after, &s.escalate_to) {
        (Some(at), None) => r.error(
            at.span().start,
            format!("{who}: `escalate_after` needs `escalate_to` (a channel and/or approvers)"),
        ),
        (None, Some(to)) => r.error(
            to.span().start,
            format!("{who}: `escalate_to` needs `escalate_after`"),
        ),
        _ => {}
    }
    if let Some(o) = &s.on_timeout {
        spec.on_timeout = match o.get_ref().as_str() {
            "reject" => TimeoutOutcome::Reject,
            "approve" => TimeoutOutcome::Approve,
            other => {
                r.error(
                    o.span().start,
                    format!("{who}: `on_timeout = \"{other}\"`: use \"reject\" or \"approve\""),
                );
                TimeoutOutcome::Reject
            }
        };
    }
    spec
}

/// A tool of an MCP server that could not be listed is taken on trust; say so.
fn warn_unlisted(r: &mut Report<'_>, at: usize, info: &ToolInfo) {
    if let Some(origin) = &info.mcp
        && let Some(why) = &origin.unlisted
    {
        r.warn(
            at,
            format!(
                "`{}` is not checked: the MCP server `{}` could not list its tools ({why})",
                info.name, origin.server
            ),
        );
    }
}

/// An external tool acts on the outside world: it needs an approval step before it, unless the
/// workflow says `auto = true` for that tool.
fn check_external_tools(r: &mut Report<'_>, wf: &Workflow, tools: &ToolCatalog) {
    for step in &wf.steps {
        let StepKind::Tool { tool, .. } = &step.kind else {
            continue;
        };
        let Some(info) = tools.get(tool) else {
            continue;
        };
        if info.capability != Capability::External || wf.tools.get(tool).is_some_and(|p| p.auto) {
            continue;
        }
        let approved = wf
            .ancestors(&step.id)
            .iter()
            .any(|a| matches!(wf.step(a).map(|s| &s.kind), Some(StepKind::Approval(_))));
        if !approved {
            let line = step.line;
            r.out.push(Diagnostic {
                file: r.file.to_path_buf(),
                line,
                severity: Severity::Error,
                message: format!(
                    "step `{}` calls external tool `{tool}` with no approval step before it (add one to `needs`, or set [tools.\"{tool}\"] auto = true)",
                    step.id
                ),
            });
        }
    }
}

/// TOML to JSON, the one value model the engine uses. Dates become strings.
pub(crate) fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Loads every `*.toml` in `dir` (sorted, not recursive), checks each file and the set as a
/// whole (no command name used twice, no workflow name used twice).
pub fn load_dir(
    dir: &Path,
    tools: &ToolCatalog,
) -> std::io::Result<(WorkflowSet, Vec<Diagnostic>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut diagnostics = Vec::new();
    let shared = load_agents(&dir.join("agents"), tools, &mut diagnostics)?;
    let policies = load_policies(&dir.join("policies"), &mut diagnostics)?;
    let mut workflows: Vec<Workflow> = Vec::new();
    let mut commands: HashMap<String, (PathBuf, usize)> = HashMap::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let text = with_shared(&text, "agents", &["agent", "narrative"], &shared);
        let text = with_shared(&text, "policies", &["policy"], &policies);
        let (wf, diags) = parse_workflow(&file, &text, tools);
        diagnostics.extend(diags);
        let Some(wf) = wf else { continue };
        if let Some(first) = names.insert(wf.name.clone(), file.clone()) {
            diagnostics.push(Diagnostic {
                file: file.clone(),
                line: line_of_key(&text, "name"),
                severity: Severity::Error,
                message: format!(
                    "workflow name `{}` is also used by {}",
                    wf.name,
                    first.display()
                ),
            });
            continue;
        }
        let mut clash = false;
        for t in &wf.triggers {
            if let Trigger::Slash(s) = t {
                let line = line_of_command(&text, &s.command);
                if let Some((first, first_line)) = commands.get(&s.command) {
                    diagnostics.push(Diagnostic {
                        file: file.clone(),
                        line,
                        severity: Severity::Error,
                        message: format!(
                            "command `/{}` is also declared at {}:{first_line}",
                            s.command,
                            first.display()
                        ),
                    });
                    clash = true;
                } else {
                    commands.insert(s.command.clone(), (file.clone(), line));
                }
            }
        }
        if !clash {
            workflows.push(wf);
        }
    }
    Ok((WorkflowSet::new(workflows), diagnostics))
}

/// The `*.toml` files of `dir`, sorted; none when it does not exist.
pub(super) fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Reads `commands/policies/*.toml`, one approval policy per file (named by the file), checks
/// each as a step using it would be checked, and keeps the valid ones as TOML tables.
fn load_policies(
    dir: &Path,
    diagnostics: &mut Vec<Diagnostic>,
) -> std::io::Result<BTreeMap<String, toml::Table>> {
    let mut out = BTreeMap::new();
    for file in toml_files(dir) {
        let text = std::fs::read_to_string(&file)?;
        let mut r = Report::new(&file, &text);
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        match toml::from_str::<RawPolicy>(&text)
            .and_then(|raw| Ok((raw, toml::from_str::<toml::Table>(&text)?)))
        {
            Err(e) => r.error(
                e.span().map(|s| s.start).unwrap_or(0),
                e.message().to_string(),
            ),
            Ok((raw, table)) => {
                let probe: RawStep =
                    toml::from_str("id = \"policy\"\nkind = \"approval\"\npolicy = \"this\"\n")
                        .expect("the probe step parses");
                let errors = r.error_count();
                if let Some(s) =
                    with_policy(&mut r, probe, &BTreeMap::from([("this".to_owned(), raw)]))
                {
                    let timeout = s
                        .timeout
                        .as_ref()
                        .and_then(|t| parse_duration(t.get_ref()).ok())
                        .unwrap_or_else(|| {
                            parse_duration(DEFAULT_APPROVAL_TIMEOUT).expect("default")
                        });
                    approval_spec(
                        &mut r,
                        &format!("policy `{name}`"),
                        &s,
                        String::new(),
                        timeout,
                    );
                }
                if r.error_count() == errors {
                    out.insert(name, table);
                }
            }
        }
        diagnostics.extend(r.into_diagnostics());
    }
    Ok(out)
}

/// Reads `commands/agents/*.toml`, one agent per file (named by `name`, or by the file), and
/// keeps the valid ones as TOML tables for the workflows that use them.
fn load_agents(
    dir: &Path,
    tools: &ToolCatalog,
    diagnostics: &mut Vec<Diagnostic>,
) -> std::io::Result<BTreeMap<String, toml::Table>> {
    let mut out = BTreeMap::new();
    for file in toml_files(dir) {
        let text = std::fs::read_to_string(&file)?;
        let mut r = Report {
            file: &file,
            text: &text,
            out: Vec::new(),
        };
        let parsed = toml::from_str::<RawAgent>(&text)
            .and_then(|raw| Ok((raw, toml::from_str::<toml::Table>(&text)?)));
        match parsed {
            Err(e) => r.error(
                e.span().map(|s| s.start).unwrap_or(0),
                e.message().to_string(),
            ),
            Ok((mut raw, mut table)) => {
                let stem = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_owned();
                let name = raw.name.take().unwrap_or(stem);
                table.remove("name");
                if build_agent(&mut r, 0, &name, raw, tools).is_some() {
                    match out.entry(name) {
                        std::collections::btree_map::Entry::Occupied(e) => r.error(
                            0,
                            format!("agent `{}` is defined twice in {}", e.key(), dir.display()),
                        ),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(table);
                        }
                    }
                }
            }
        }
        diagnostics.extend(r.out);
    }
    Ok(out)
}

/// The workflow text with the shared definitions its steps name (under one of `step_keys`)
/// appended as `[table.NAME]`, so a run keeps the agents and policies it started with. Names
/// the file defines itself are left to it.
fn with_shared(
    text: &str,
    table: &str,
    step_keys: &[&str],
    shared: &BTreeMap<String, toml::Table>,
) -> String {
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return text.to_owned();
    };
    let inline = doc.get(table).and_then(|a| a.as_table());
    let mut used = toml::Table::new();
    for step in doc
        .get("step")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        let Some(name) = step_keys
            .iter()
            .find_map(|k| step.get(*k))
            .and_then(|a| a.as_str())
        else {
            continue;
        };
        if inline.is_some_and(|i| i.contains_key(name)) {
            continue;
        }
        if let Some(t) = shared.get(name) {
            used.insert(name.to_owned(), toml::Value::Table(t.clone()));
        }
    }
    if used.is_empty() {
        return text.to_owned();
    }
    let mut wrapper = toml::Table::new();
    wrapper.insert(table.into(), toml::Value::Table(used));
    let appended = toml::to_string(&wrapper).unwrap_or_default();
    format!(
        "{text}\n\n# Shared {table} from {table}/, as they were when this was loaded.\n{appended}"
    )
}

/// Agents name models by `BATON_MODELS` names: an unknown one is an error, and with no model
/// configured at all every agent step is warned about (Baton still starts).
pub fn check_models(set: &WorkflowSet, configured: &BTreeSet<String>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for wf in set.iter() {
        for step in &wf.steps {
            let StepKind::Agent { agent, .. } = &step.kind else {
                continue;
            };
            let (severity, message) = if configured.is_empty() {
                (
                    Severity::Warning,
                    format!(
                        "step `{}` uses agent `{}` with model `{}`, but no model is configured: set BATON_MODELS and a provider key, or the step fails when it runs",
                        step.id, agent.name, agent.model
                    ),
                )
            } else if !configured.contains(&agent.model) {
                (
                    Severity::Error,
                    format!(
                        "agent `{}` uses model `{}`, which BATON_MODELS does not name (configured: {})",
                        agent.name,
                        agent.model,
                        configured.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            } else {
                continue;
            };
            out.push(Diagnostic {
                file: wf.file.clone(),
                line: step.line,
                severity,
                message,
            });
        }
    }
    out
}

fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(key) && l.contains('='))
        .map(|i| i + 1)
        .unwrap_or(1)
}

fn line_of_command(text: &str, command: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with("command") && l.contains(&format!("\"{command}\""))
                || l.contains(&format!("\"/{command}\""))
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}
