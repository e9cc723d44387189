//! The words Baton says in chat. Every platform shows the same text; adapters only change the
//! markup.

use super::state::*;
use crate::core::event::Actor;
use crate::core::ids::{ActionId, RunId};
use crate::core::message::{Button, ButtonStyle, OutMessage};
use crate::core::workflow::{ApprovalSpec, TimeoutOutcome, Workflow, format_duration};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Longest step output shown inline; the rest is on the run's page.
pub const MAX_INLINE_OUTPUT: usize = 1500;

pub fn time_of_day(at: DateTime<Utc>) -> String {
    at.format("%H:%M UTC").to_string()
}

/// The root message: title, who started it, status, and Cancel while it is active.
pub fn root(state: &RunState) -> OutMessage {
    let run = &state.run;
    let mut text = format!(
        "*{}* — run {} · started by {}\nStatus: *{}*",
        run.title,
        run.id,
        mention(&run.requested_by),
        run.status.label()
    );
    if run.late {
        text.push_str("\n(started late: this schedule slot passed while Baton was down)");
    }
    if let Some(err) = &run.error {
        text.push_str(&format!("\n{err}"));
    }
    let buttons = if run.status.is_terminal() {
        vec![]
    } else {
        vec![Button::new(
            "Cancel",
            ActionId::Cancel { run: run.id },
            ButtonStyle::Default,
        )]
    };
    OutMessage {
        text,
        buttons,
        ..Default::default()
    }
}

pub fn mention(actor: &Actor) -> String {
    format!("@{}", actor.display)
}

pub fn step_started(step: &str, attempt: u32) -> OutMessage {
    let text = if attempt > 1 {
        format!("*{step}*: started (attempt {attempt})")
    } else {
        format!("*{step}*: started")
    };
    OutMessage {
        text,
        ..Default::default()
    }
}

pub fn step_done(step: &str, took: String, output: &Value, run: RunId) -> OutMessage {
    OutMessage {
        text: format!("*{step}*: done in {took}"),
        detail: summarize_output(output, run),
        ..Default::default()
    }
}

pub fn step_failed(
    step: &str,
    took: String,
    error: &str,
    retry: Option<(String, u32, u32)>,
) -> OutMessage {
    let mut text = format!("*{step}*: failed after {took}: {error}");
    if let Some((wait, next, of)) = retry {
        text.push_str(&format!("\nRetrying in {wait} (attempt {next} of {of})."));
    }
    OutMessage {
        text,
        ..Default::default()
    }
}

/// A step output as a short block; long ones are cut and point at the run page.
pub fn summarize_output(output: &Value, run: RunId) -> Option<String> {
    let text = match output {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Object(map) if map.len() == 1 && map.get("text").is_some_and(Value::is_string) => {
            map["text"].as_str().unwrap_or_default().to_owned()
        }
        // An HTTP response from a tool: the status and the start of the body say enough.
        Value::Object(map)
            if map.get("status").is_some_and(Value::is_u64)
                && map.get("body").is_some_and(Value::is_string) =>
        {
            let body: String = map["body"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            format!("HTTP {} · {}", map["status"], body.trim())
        }
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    if text.trim().is_empty() {
        return None;
    }
    if text.chars().count() <= MAX_INLINE_OUTPUT {
        return Some(text);
    }
    let cut: String = text.chars().take(MAX_INLINE_OUTPUT).collect();
    Some(format!(
        "{cut}…\n(output cut; the whole of it is on the page of run {run})"
    ))
}

/// An approver as written in chat: the platform prefix dropped (`slack:U012` → `U012`),
/// groups kept as `group:ID` so each adapter can turn them into its own group mention.
pub fn approver_name(entry: &str) -> &str {
    match entry.split_once(':') {
        Some((p, rest)) if p != "group" && p != "channel" => rest,
        _ => entry,
    }
}

/// An approver as a request names it: `@ben`, `@group:S0…`, or `members of #finance`.
fn approver_label(entry: &str) -> String {
    let name = approver_name(entry);
    match name.strip_prefix("channel:") {
        Some(channel) => format!("members of #{channel}"),
        None => format!("@{name}"),
    }
}

/// Approvers to mention: people and groups; a channel's members are not pinged one by one.
pub fn mentionable(approvers: &[String]) -> Vec<String> {
    approvers
        .iter()
        .filter(|a| !approver_name(a).starts_with("channel:"))
        .cloned()
        .collect()
}

/// What Reject asks when the step wants a reason.
pub const REJECT_QUESTION: &str = "Why are you rejecting this?";

/// The approval request with its buttons, with how far it has got: votes so far against the
/// quorum, and the rungs of the ladder that have fired.
pub fn approval_request(run: RunId, step: &str, a: &Approval, spec: &ApprovalSpec) -> OutMessage {
    let reject_reason = spec.reject_reason;
    // Every button carries the hash of this request, so a click on an outdated copy is caught.
    let shown = Some(crate::core::approvals::request_hash(a));
    let reject = Button::new(
        "Reject",
        ActionId::Reject {
            run,
            step: step.into(),
            shown: shown.clone(),
        },
        ButtonStyle::Danger,
    );
    let reject = if reject_reason {
        reject.asking(REJECT_QUESTION)
    } else {
        reject
    };
    let approvers: Vec<String> = a.approvers.iter().map(|x| approver_label(x)).collect();
    let mut text = format!(
        "*Approval needed* for step *{step}*\nApprovers: {} · expires at {} ({})",
        approvers.join(", "),
        a.expires_at.format("%Y-%m-%d %H:%M UTC"),
        format_duration(a.expires_at - a.requested_at),
    );
    if spec.on_timeout == TimeoutOutcome::Approve {
        text.push_str(", then approved");
    }
    if a.quorum > 1 {
        let so_far: Vec<String> = a.approvals().map(mention).collect();
        text.push_str(&format!(
            "\nNeeds {} distinct approvals: {} so far{}",
            a.quorum,
            so_far.len(),
            if so_far.is_empty() {
                String::new()
            } else {
                format!(" ({})", so_far.join(", "))
            }
        ));
    }
    let rejected: Vec<String> = a
        .votes
        .iter()
        .filter(|v| !v.approve)
        .map(|v| mention(&v.actor))
        .collect();
    if !rejected.is_empty() {
        text.push_str(&format!(
            "\nRejected by {} ({} of {} rejections needed)",
            rejected.join(", "),
            rejected.len(),
            spec.rejections
        ));
    }
    if let Some(at) = a.reminded_at {
        text.push_str(&format!("\nReminded at {}", time_of_day(at)));
    }
    if let Some(at) = a.escalated_at {
        text.push_str(&format!(
            "\nEscalated to {} at {}",
            escalation_target(spec),
            time_of_day(at)
        ));
    }
    if !a.editors.is_empty() {
        let who: Vec<String> = a.editors.iter().map(mention).collect();
        text.push_str(&format!("\nPayload edited by {}", who.join(", ")));
    }
    let mut buttons = vec![
        Button::new(
            "Approve",
            ActionId::Approve {
                run,
                step: step.into(),
                shown: shown.clone(),
            },
            ButtonStyle::Primary,
        ),
        reject,
    ];
    if spec.editable
        && let Some(content) = &a.content
    {
        buttons.push(
            Button::new(
                "Edit",
                ActionId::Edit {
                    run,
                    step: step.into(),
                    shown,
                },
                ButtonStyle::Default,
            )
            .asking(EDIT_QUESTION)
            .prefilled(content),
        );
    }
    OutMessage {
        text,
        detail: Some(shown_detail(a)),
        buttons,
        mentions: mentionable(&a.approvers),
    }
}

/// What Edit asks.
pub const EDIT_QUESTION: &str = "Edit the payload (approvals start again on the new text)";

/// The request's block: the message, then the payload it gates when there is one.
fn shown_detail(a: &Approval) -> String {
    match &a.content {
        Some(content) => format!("{}\n---\n{content}", a.summary),
        None => a.summary.clone(),
    }
}

/// An earlier copy of a request that a fresh one replaced: no buttons.
pub fn approval_replaced(step: &str, a: &Approval, edited_by: Option<&Actor>) -> OutMessage {
    let why = match edited_by {
        Some(actor) => format!("{} edited the payload", mention(actor)),
        None => "it changed".to_owned(),
    };
    OutMessage {
        text: format!(
            "*Approval* for step *{step}*: replaced ({why}); decide on the request below."
        ),
        detail: Some(shown_detail(a)),
        ..Default::default()
    }
}

/// Where an approval escalates, as the request says it: `#channel and @dee`.
fn escalation_target(spec: &ApprovalSpec) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &spec.escalate_to.channel {
        parts.push(format!("#{c}"));
    }
    parts.extend(spec.escalate_to.approvers.iter().map(|x| approver_label(x)));
    parts.join(" and ")
}

/// The first rung: a new mention in the thread for those who have not decided.
pub fn approval_reminder(step: &str, a: &Approval, waiting: &[String]) -> OutMessage {
    let who: Vec<String> = waiting.iter().map(|x| approver_label(x)).collect();
    OutMessage {
        text: format!(
            "Reminder: step *{step}* is waiting for a decision from {} (expires at {}).",
            who.join(", "),
            a.expires_at.format("%Y-%m-%d %H:%M UTC")
        ),
        mentions: mentionable(waiting),
        ..Default::default()
    }
}

/// The request as posted in the escalation channel: which run it belongs to comes first.
pub fn escalated_request(run: &Run, step: &str, request_text: &str) -> String {
    format!(
        "*Escalated* from run {} *{}* (#{}), step *{step}*, started by {}:\n{request_text}",
        run.id,
        run.title,
        run.conversation.channel,
        mention(&run.requested_by)
    )
}

/// An approval whose `when` did not hold.
pub fn approval_not_required(step: &str, when: &str) -> String {
    format!("Step *{step}* needs no approval in this run (`{when}` does not hold).")
}

/// What a person sees after a vote that did not decide yet.
pub fn vote_recorded(
    approve: bool,
    approvals: usize,
    quorum: u32,
    rejections: usize,
    needed: u32,
) -> String {
    if approve {
        format!("Your approval is counted: {approvals} of {quorum}.")
    } else {
        format!("Your rejection is counted: {rejections} of {needed} needed to reject.")
    }
}

/// The approval message once decided: the decision, no buttons.
/// Who decided: with a quorum, everyone who approved (or rejected), in order; otherwise the
/// one who decided.
fn deciders(a: &Approval) -> String {
    let approving = a.status == ApprovalStatus::Approved;
    let voters: Vec<String> = a
        .votes
        .iter()
        .filter(|v| v.approve == approving)
        .map(|v| mention(&v.actor))
        .collect();
    if voters.len() > 1 {
        return voters.join(", ");
    }
    a.decided_by.as_ref().map(mention).unwrap_or_default()
}

/// The private answer to a click on an approval that is no longer waiting.
pub fn already_decided(step: &str, a: &Approval) -> String {
    let when = a.decided_at.map(time_of_day).unwrap_or_default();
    let what = match a.status {
        ApprovalStatus::Approved if a.decided_by.is_none() => {
            format!("was approved when it expired at {when}")
        }
        ApprovalStatus::Approved => format!("was already approved by {} at {when}", deciders(a)),
        ApprovalStatus::Rejected => format!("was already rejected by {} at {when}", deciders(a)),
        ApprovalStatus::Expired => format!("expired at {when} with no decision"),
        ApprovalStatus::Cancelled => format!("was cancelled with its run at {when}"),
        ApprovalStatus::Pending => "is still waiting".to_owned(),
    };
    format!("Step {step} {what}; your click changed nothing.")
}

pub fn approval_outcome(step: &str, a: &Approval) -> OutMessage {
    let who = deciders(a);
    let when = a.decided_at.map(time_of_day).unwrap_or_default();
    let line = match a.status {
        // Nobody decided and the step says expiry approves.
        ApprovalStatus::Approved if a.decided_by.is_none() => {
            format!("Expired at {when} with no decision: approved, as the step says")
        }
        ApprovalStatus::Approved => format!("Approved by {who} at {when}"),
        ApprovalStatus::Rejected => match &a.reason {
            Some(r) => format!("Rejected by {who} at {when}: {r}"),
            None => format!("Rejected by {who} at {when}"),
        },
        ApprovalStatus::Expired => format!("Expired at {when} with no decision: rejected"),
        ApprovalStatus::Cancelled => format!("Cancelled at {when}: the run was cancelled"),
        ApprovalStatus::Pending => "Waiting for a decision".into(),
    };
    OutMessage {
        text: format!("*Approval* for step *{step}*\n{line}"),
        detail: Some(shown_detail(a)),
        ..Default::default()
    }
}

/// A run with no progress for its threshold: what it is stuck on, with Retry and Cancel (the
/// engine lets only people who may steer the run use them).
pub fn stall_alert(
    run: RunId,
    idle: chrono::Duration,
    stuck: &[(String, Option<DateTime<Utc>>)],
    now: DateTime<Utc>,
) -> OutMessage {
    let steps: Vec<String> = stuck
        .iter()
        .map(|(id, since)| match since {
            Some(t) => format!("*{id}* (running for {})", format_duration(now - *t)),
            None => format!("*{id}*"),
        })
        .collect();
    let what = if steps.is_empty() {
        String::new()
    } else {
        format!(" It is waiting on {}.", steps.join(", "))
    };
    OutMessage {
        text: format!(
            "*Stalled*: run {run} has made no progress for {}.{what} Retry starts those steps again; Cancel stops the run.",
            format_duration(idle)
        ),
        buttons: vec![
            Button::new("Retry", ActionId::Retry { run }, ButtonStyle::Primary),
            Button::new("Cancel run", ActionId::Cancel { run }, ButtonStyle::Danger),
        ],
        ..Default::default()
    }
}

/// A stall alert for a step whose timeout passed with no result.
pub fn past_deadline(run: RunId, step: &str, alert: &str) -> String {
    let rest = alert
        .split_once(". ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    format!("*Stalled*: step *{step}* of run {run} is past its deadline with no result. {rest}")
}

/// A message of the run that did not go through, with Retry (and Cancel while the run is
/// under way). It says which kind of trouble it is: a refusal that retrying will not fix, or
/// trouble that has lasted long enough for a person to look (Baton keeps trying meanwhile).
pub fn delivery_alert(
    run: RunId,
    channel: &str,
    error: &str,
    permanent: bool,
    active: bool,
) -> OutMessage {
    let text = if permanent {
        format!(
            "*Delivery failed*: a message of run {run} to #{channel} was refused, and trying again will not help until the cause is fixed. Retry sends it again."
        )
    } else {
        format!(
            "*Delivery delayed*: a message of run {run} to #{channel} has not gone through for a while. Baton keeps trying; Retry tries again now."
        )
    };
    OutMessage {
        text,
        detail: Some(error.to_owned()),
        buttons: alert_buttons(run, active),
        ..Default::default()
    }
}

fn alert_buttons(run: RunId, active: bool) -> Vec<Button> {
    let mut buttons = vec![Button::new(
        "Retry",
        ActionId::Retry { run },
        ButtonStyle::Primary,
    )];
    if active {
        buttons.push(Button::new(
            "Cancel run",
            ActionId::Cancel { run },
            ButtonStyle::Danger,
        ));
    }
    buttons
}

/// The run's root message did not go through, so it has no thread: said in the channel
/// itself, with where to follow the run.
pub fn root_alert(run: &Run, error: &str, permanent: bool, base_url: &str) -> OutMessage {
    let how = if permanent {
        "was refused"
    } else {
        "has not gone through for a while (Baton keeps trying)"
    };
    OutMessage {
        text: format!(
            "*Delivery failed*: the first message of run {} ({}) {how}, so the run has no thread here. It goes on; follow it at {base_url}/runs/{}. Retry sends the message again.",
            run.id, run.title, run.id
        ),
        detail: Some(error.to_owned()),
        buttons: alert_buttons(run.id, !run.status.is_terminal()),
        ..Default::default()
    }
}

/// The same, for the person who started the run, when the channel would not take the alert.
pub fn root_alert_private(run: &Run, channel: &str, error: &str, base_url: &str) -> OutMessage {
    OutMessage {
        text: format!(
            "Your run {} ({}) could not post in #{channel}, so it has no thread there. It goes on; follow it at {base_url}/runs/{}.",
            run.id, run.title, run.id
        ),
        detail: Some(error.to_owned()),
        ..Default::default()
    }
}

/// The answer to a click on a button Baton cannot read.
pub fn button_not_valid() -> String {
    "This button is no longer valid. Nothing was changed.".to_owned()
}

/// What a run page and `baton runs show` say of a run whose root message is not in chat.
pub fn conversation_lost(run: &Run, why: &str) -> String {
    format!(
        "Its conversation did not reach chat: the first message could not be posted in {} #{} ({why}).",
        run.conversation.platform, run.conversation.channel
    )
}

/// The same for another message of the run that has not gone through.
pub fn message_missing(alert: &DeliveryAlert) -> String {
    let how = if alert.permanent {
        "was refused"
    } else {
        "has not gone through yet"
    };
    format!(
        "A message to #{} {how} (since {}).",
        alert.channel,
        time_of_day(alert.raised_at)
    )
}

/// A delivery alert once its message went through after all.
pub fn delivery_recovered(run: RunId, channel: &str, at: DateTime<Utc>) -> OutMessage {
    OutMessage {
        text: format!(
            "*Delivered after all*: the message of run {run} to #{channel} went through at {}.",
            time_of_day(at)
        ),
        ..Default::default()
    }
}

/// The stall alert once resolved: no buttons, and how.
pub fn stall_resolved(how: &str) -> OutMessage {
    OutMessage {
        text: format!("*Stalled* earlier. {how}"),
        ..Default::default()
    }
}

pub fn retried_by(actor: &Actor, at: DateTime<Utc>) -> String {
    format!("Retried by {} at {}.", mention(actor), time_of_day(at))
}

pub fn moving_again(at: DateTime<Utc>) -> String {
    format!("Moving again since {}.", time_of_day(at))
}

pub fn run_ended(status: RunStatus, at: DateTime<Utc>) -> String {
    format!("The run ended ({}) at {}.", status.label(), time_of_day(at))
}

/// The final reply in the thread.
pub fn summary(state: &RunState, wf: &Workflow, now: DateTime<Utc>) -> OutMessage {
    let run = &state.run;
    let mut lines = vec![format!(
        "Run {} *{}* after {}.",
        run.id,
        run.status.label(),
        format_duration(now - run.created_at)
    )];
    for step in &wf.steps {
        let Some(s) = state.steps.get(&step.id) else {
            continue;
        };
        let took = match (s.started_at, s.finished_at) {
            (Some(a), Some(b)) => format!(" ({})", format_duration(b - a)),
            _ => String::new(),
        };
        let what = match (s.status, state.approvals.get(&step.id)) {
            (_, Some(a)) if a.status != ApprovalStatus::Pending => approval_word(a),
            (StepStatus::Failed, _) => format!("failed: {}", s.error.clone().unwrap_or_default()),
            (status, _) => status.as_str().to_owned(),
        };
        lines.push(format!("• {}: {what}{took}", step.id));
    }
    OutMessage {
        text: lines.join("\n"),
        ..Default::default()
    }
}

fn approval_word(a: &Approval) -> String {
    let who = deciders(a);
    match a.status {
        ApprovalStatus::Approved if a.decided_by.is_none() => "approved on expiry".into(),
        ApprovalStatus::Approved => format!("approved by {who}"),
        ApprovalStatus::Rejected => format!("rejected by {who}"),
        ApprovalStatus::Expired => "expired".into(),
        ApprovalStatus::Cancelled => "cancelled".into(),
        ApprovalStatus::Pending => "waiting".into(),
    }
}

// What agents' notes say in the thread. Names and arguments a model wrote go in a message's
// detail (a code block), never in its text, where a platform could make them mentions.

pub fn agent_unavailable(role: &str, why: &str) -> String {
    format!("*{role}* cannot start: {why}")
}

pub fn agent_started(role: &str, provider: &str, model: &str) -> String {
    format!("*{role}* is on it ({provider} {model}).")
}

pub fn agent_resumed(role: &str, turns: usize) -> String {
    format!("*{role}* picks up where it stopped (after {turns} turns).")
}

pub fn agent_calls(role: &str, tool: &str) -> String {
    format!("*{role}* calls `{tool}`")
}

pub fn agent_refused(role: &str) -> String {
    format!("*{role}* asked for a tool call that was refused.")
}

pub fn agent_waiting(role: &str, tool: &str) -> String {
    format!("*{role}* wants to call `{tool}`: waiting for approval.")
}

pub fn agent_call_rejected(role: &str, tool: &str) -> String {
    format!("*{role}* may not call `{tool}`.")
}

pub fn agent_schema_retry(role: &str, error: &str) -> String {
    format!("*{role}*'s answer did not match its output schema ({error}); asking once more.")
}

/// Added to a note whose detail was cut.
pub fn note_cut(url: &str) -> String {
    format!(" The start is below; all of it is on the run's page: {url}")
}

pub fn agent_answered(role: &str) -> String {
    format!("*{role}* answered.")
}

/// What an approval of an agent's external call shows: the exact payload.
pub fn agent_call_summary(role: &str, tool: &str, args_pretty: &str) -> String {
    format!("{role} wants to call {tool} with:\n{args_pretty}")
}
