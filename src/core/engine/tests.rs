//! The state machine, tested on its effects alone: no store, no clock, no network.

use super::*;
use crate::core::event::{Actor, ConversationRef};
use crate::core::ids::{MessageKey, RunId};
use crate::core::message::{Destination, OutMessage, Outgoing};
use crate::core::tools::ToolCatalog;
use crate::core::workflow::{Workflow, parse_workflow};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, json};
use std::collections::BTreeMap;
use std::path::Path;

const FLOW: &str = r#"
name = "flow"
description = "Flow"
[[trigger]]
kind = "slash"
command = "flow"
[[step]]
id = "a"
kind = "tool"
tool = "http.get"
with = { url = "http://127.0.0.1/a" }
retry = { max = 1, backoff = "10s" }
[[step]]
id = "b"
kind = "tool"
tool = "http.get"
with = { url = "http://127.0.0.1/b" }
[[step]]
id = "gate"
kind = "approval"
needs = ["a", "b"]
approvers = ["ben"]
timeout = "1h"
message = "a said {{ steps.a.output.status }}"
[[step]]
id = "send"
kind = "tool"
tool = "webhook.post"
needs = ["gate"]
with = { endpoint = "pager", body = { x = "{{ input.text }}" } }
"#;

pub(super) fn wf(text: &str) -> Workflow {
    let (wf, diags) = parse_workflow(Path::new("flow.toml"), text, &ToolCatalog::builtin());
    wf.unwrap_or_else(|| panic!("{diags:?}"))
}

pub(super) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(super) fn user(id: &str) -> Actor {
    Actor {
        platform: "console".into(),
        id: id.into(),
        display: id.into(),
        is_bot: false,
        groups: vec![],
    }
}

pub(super) fn fresh() -> RunState {
    let mut inputs = Map::new();
    inputs.insert("text".into(), json!("hello"));
    RunState {
        run: Run {
            id: RunId(7),
            workflow: "flow".into(),
            status: RunStatus::Running,
            event_id: "e1".into(),
            conversation: ConversationRef {
                platform: "console".into(),
                channel: "general".into(),
                thread: None,
            },
            requested_by: user("ana"),
            inputs,
            late: false,
            title: "Flow".into(),
            error: None,
            created_at: t0(),
            updated_at: t0(),
            finished_at: None,
            stalled_at: None,
            conversation_lost: None,
            alerts: BTreeMap::new(),
        },
        steps: BTreeMap::new(),
        approvals: BTreeMap::new(),
        timers: BTreeMap::new(),
    }
}

struct Harness {
    wf: Workflow,
    tools: ToolCatalog,
    state: RunState,
    now: DateTime<Utc>,
}

impl Harness {
    fn new(text: &str) -> Self {
        Self {
            wf: wf(text),
            tools: ToolCatalog::builtin(),
            state: fresh(),
            now: t0(),
        }
    }
    fn start(&mut self) -> Transition {
        let cx = Context {
            workflow: &self.wf,
            tools: &self.tools,
            now: self.now,
            base_url: "http://x",
            local_url: "http://127.0.0.1:1",
            stall_after: Duration::hours(1),
        };
        start(&mut self.state, &cx)
    }
    fn apply(&mut self, cmd: Command) -> Transition {
        let cx = Context {
            workflow: &self.wf,
            tools: &self.tools,
            now: self.now,
            base_url: "http://x",
            local_url: "http://127.0.0.1:1",
            stall_after: Duration::hours(1),
        };
        apply(&mut self.state, cmd, &cx)
    }
    /// The timer loop firing `key` as it was set (or a key that is not set, as a repeat would).
    fn fire(&mut self, key: &str) -> Transition {
        let due = self.state.timers.get(key).copied().unwrap_or(self.now);
        self.apply(Command::TimerFired {
            key: key.into(),
            due,
        })
    }
    fn status(&self, step: &str) -> StepStatus {
        self.state.steps[step].status
    }
}

fn jobs(t: &Transition) -> Vec<(String, u32)> {
    t.jobs().map(|j| (j.step.clone(), j.attempt)).collect()
}

fn audits(t: &Transition) -> Vec<&'static str> {
    t.effects
        .iter()
        .filter_map(|e| {
            if let Effect::Audit(a) = e {
                Some(a.kind.as_str())
            } else {
                None
            }
        })
        .collect()
}

fn posts(t: &Transition) -> Vec<String> {
    t.effects
        .iter()
        .filter_map(|e| {
            if let Effect::Send(Outgoing::Post { key, .. }) = e {
                Some(key.0.clone())
            } else {
                None
            }
        })
        .collect()
}

fn edits(t: &Transition) -> Vec<String> {
    t.effects
        .iter()
        .filter_map(|e| {
            if let Effect::Send(Outgoing::Edit { key, .. }) = e {
                Some(key.0.clone())
            } else {
                None
            }
        })
        .collect()
}

fn ok(status: u16) -> Result<serde_json::Value, String> {
    Ok(json!({ "status": status }))
}

#[test]
fn starting_posts_the_root_first_and_runs_independent_steps_in_parallel() {
    let mut h = Harness::new(FLOW);
    let t = h.start();
    assert_eq!(
        posts(&t)[0],
        MessageKey::root(RunId(7)).0,
        "the root is posted before any reply"
    );
    assert_eq!(jobs(&t), vec![("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(h.status("gate"), StepStatus::Pending);
    assert!(audits(&t).contains(&"run.started"));
}

#[test]
fn an_approval_waits_for_all_its_needs_then_parks_the_run_on_a_timer() {
    let mut h = Harness::new(FLOW);
    h.start();
    let t = h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 1,
        result: ok(200),
    });
    assert!(jobs(&t).is_empty());
    assert_eq!(h.state.run.status, RunStatus::Running);
    let t = h.apply(Command::StepFinished {
        step: "b".into(),
        attempt: 1,
        result: ok(204),
    });
    assert!(posts(&t).contains(&"run:7:approval:gate".to_owned()));
    assert_eq!(h.state.approvals["gate"].summary, "a said 200");
    assert_eq!(
        h.state.timers.get("expire:gate"),
        Some(&(t0() + Duration::hours(1)))
    );
    assert_eq!(h.state.run.status, RunStatus::WaitingApproval);
    assert!(
        edits(&t).contains(&"run:7:root".to_owned()),
        "the root shows the new status"
    );
    assert!(jobs(&t).is_empty(), "a parked run asks for no work");
}

fn to_gate(h: &mut Harness) {
    h.start();
    h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 1,
        result: ok(200),
    });
    h.apply(Command::StepFinished {
        step: "b".into(),
        attempt: 1,
        result: ok(200),
    });
}

#[test]
fn approval_by_an_approver_runs_the_external_step_and_cancels_the_expiry() {
    let mut h = Harness::new(FLOW);
    to_gate(&mut h);
    let t = h.apply(Command::Decide {
        step: "gate".into(),
        actor: user("ben"),
        approve: true,
        reason: None,
        shown: None,
    });
    assert_eq!(t.notice.as_deref(), Some("You approved this step."));
    assert_eq!(jobs(&t), vec![("send".into(), 1)]);
    assert!(edits(&t).contains(&"run:7:approval:gate".to_owned()));
    assert!(!h.state.timers.contains_key("expire:gate"));
    let Some(Job {
        work: Work::Tool { args, .. },
        ..
    }) = t.jobs().next().cloned()
    else {
        panic!()
    };
    assert_eq!(args, json!({"endpoint": "pager", "body": {"x": "hello"}}));
}

#[test]
fn a_refused_click_changes_no_state_and_is_audited() {
    let mut h = Harness::new(FLOW);
    to_gate(&mut h);
    let before = h.state.clone();
    let t = h.apply(Command::Decide {
        step: "gate".into(),
        actor: user("dee"),
        approve: true,
        reason: None,
        shown: None,
    });
    assert_eq!(
        t.notice.as_deref(),
        Some("You are not an approver for this step.")
    );
    assert_eq!(audits(&t), vec!["approval.refused"]);
    assert!(jobs(&t).is_empty() && posts(&t).is_empty() && edits(&t).is_empty());
    let mut after = h.state.clone();
    after.run.updated_at = before.run.updated_at;
    assert_eq!(after, before);
}

#[test]
fn a_second_decision_is_answered_with_the_first() {
    let mut h = Harness::new(FLOW);
    to_gate(&mut h);
    h.apply(Command::Decide {
        step: "gate".into(),
        actor: user("ben"),
        approve: false,
        reason: Some("no".into()),
        shown: None,
    });
    let t = h.apply(Command::Decide {
        step: "gate".into(),
        actor: user("ben"),
        approve: true,
        reason: None,
        shown: None,
    });
    assert_eq!(
        t.notice.as_deref(),
        Some("Step gate was already rejected by @ben at 10:00 UTC; your click changed nothing.")
    );
    assert!(t.effects.is_empty());
}

#[test]
fn rejection_skips_what_depends_on_it_and_ends_the_run_rejected() {
    let mut h = Harness::new(FLOW);
    to_gate(&mut h);
    let t = h.apply(Command::Decide {
        step: "gate".into(),
        actor: user("ben"),
        approve: false,
        reason: Some("too risky".into()),
        shown: None,
    });
    assert_eq!(h.status("send"), StepStatus::Skipped);
    assert_eq!(h.state.run.status, RunStatus::Rejected);
    assert!(posts(&t).contains(&"run:7:summary".to_owned()));
    assert!(jobs(&t).is_empty());
}

#[test]
fn the_expiry_timer_rejects_once_and_a_second_firing_does_nothing() {
    let mut h = Harness::new(FLOW);
    to_gate(&mut h);
    h.now = t0() + Duration::hours(1);
    let t = h.fire("expire:gate");
    assert!(audits(&t).contains(&"approval.expired"));
    assert_eq!(h.state.run.status, RunStatus::Rejected);
    let t = h.fire("expire:gate");
    assert!(t.effects.is_empty());
}

#[test]
fn a_failed_attempt_retries_after_its_backoff_then_fails_for_good() {
    let mut h = Harness::new(FLOW);
    h.start();
    let t = h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 1,
        result: Err("boom".into()),
    });
    assert_eq!(h.status("a"), StepStatus::Retrying);
    assert_eq!(
        h.state.timers.get("retry:a"),
        Some(&(t0() + Duration::seconds(10)))
    );
    assert!(jobs(&t).is_empty());
    let t = h.fire("retry:a");
    assert_eq!(jobs(&t), vec![("a".into(), 2)]);
    h.apply(Command::StepFinished {
        step: "b".into(),
        attempt: 1,
        result: ok(200),
    });
    let t = h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 2,
        result: Err("boom again".into()),
    });
    assert_eq!(h.status("a"), StepStatus::Failed);
    assert_eq!(h.status("gate"), StepStatus::Skipped);
    assert_eq!(h.state.run.status, RunStatus::Failed);
    assert!(audits(&t).contains(&"step.failed"));
}

#[test]
fn a_lost_attempt_runs_again_without_spending_a_retry() {
    let mut h = Harness::new(FLOW);
    h.start();
    let t = h.apply(Command::AttemptLost {
        step: "b".into(),
        attempt: 1,
    });
    assert_eq!(jobs(&t), vec![("b".into(), 2)]);
    assert_eq!(h.state.steps["b"].retries_used, 0);
    assert!(audits(&t).contains(&"step.attempt_lost"));
    assert!(t.effects.iter().any(|e| matches!(
        e,
        Effect::AttemptEnded {
            attempt: 1,
            outcome: AttemptOutcome::Lost,
            ..
        }
    )));
}

#[test]
fn a_result_from_an_old_attempt_is_ignored() {
    let mut h = Harness::new(FLOW);
    h.start();
    h.apply(Command::AttemptLost {
        step: "b".into(),
        attempt: 1,
    });
    let t = h.apply(Command::StepFinished {
        step: "b".into(),
        attempt: 1,
        result: ok(200),
    });
    assert_eq!(audits(&t), vec!["step.result_ignored"]);
    assert_eq!(h.status("b"), StepStatus::Running);
}

#[test]
fn cancel_stops_everything_and_only_allowed_people_may_cancel() {
    let text = FLOW.replace(
        "[[trigger]]",
        "[permissions]\nusers = [\"ana\", \"ben\"]\n[[trigger]]",
    );
    let mut h = Harness::new(&text);
    to_gate(&mut h);
    let t = h.apply(Command::Cancel { actor: user("dee") });
    assert!(t.notice.unwrap().contains("You may not cancel run 7"));
    assert_eq!(h.state.run.status, RunStatus::WaitingApproval);
    let t = h.apply(Command::Cancel { actor: user("ben") });
    assert_eq!(h.state.run.status, RunStatus::Cancelled);
    assert_eq!(h.state.approvals["gate"].status, ApprovalStatus::Cancelled);
    assert!(h.state.timers.is_empty());
    assert!(edits(&t).contains(&"run:7:approval:gate".to_owned()));
    let t = h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 1,
        result: ok(200),
    });
    assert_eq!(audits(&t), vec!["step.result_ignored"]);
}

#[test]
fn an_external_tool_without_an_approved_gate_is_refused_by_the_engine() {
    // `auto = true` passes `baton check`; taking it away afterwards must not let the call through.
    let mut text = FLOW.replace("needs = [\"gate\"]", "needs = []");
    text.push_str("[tools.\"webhook.post\"]\nauto = true\n");
    let mut h = Harness::new(&text);
    h.wf.tools.clear();
    let t = h.start();
    assert!(audits(&t).contains(&"tool.refused"));
    assert_eq!(h.status("send"), StepStatus::Failed);
    assert!(!jobs(&t).iter().any(|(s, _)| s == "send"));
}

#[test]
fn notify_steps_post_and_finish_at_once() {
    let text = r#"
name = "n"
[[trigger]]
kind = "slash"
command = "n"
[[step]]
id = "hello"
kind = "notify"
text = "hi {{ input.text }}"
[[step]]
id = "ops"
kind = "notify"
channel = "ops"
needs = ["hello"]
text = "posted"
"#;
    let mut h = Harness::new(text);
    let t = h.start();
    assert_eq!(h.state.run.status, RunStatus::Succeeded);
    let dests: Vec<(String, Option<String>)> = t
        .effects
        .iter()
        .filter_map(|e| {
            if let Effect::Send(Outgoing::Post { key, to, .. }) = e {
                Some((
                    key.0.clone(),
                    to.thread.clone().map(|k| k.0).or(Some(to.channel.clone())),
                ))
            } else {
                None
            }
        })
        .collect();
    assert!(
        dests.contains(&("run:7:post:hello".into(), Some("run:7:root".into()))),
        "{dests:?}"
    );
    assert!(
        dests.contains(&("run:7:post:ops".into(), Some("ops".into()))),
        "{dests:?}"
    );
    assert!(posts(&t).last().unwrap().ends_with(":summary"));
}

#[test]
fn an_abandoned_run_fails_with_its_reason_and_stops_its_timers() {
    let mut h = Harness::new(FLOW);
    to_gate(&mut h);
    let t = abandon(&mut h.state, "the workflow no longer parses", t0());
    assert_eq!(h.state.run.status, RunStatus::Failed);
    assert!(h.state.timers.is_empty());
    assert!(posts(&t).contains(&"run:7:summary".to_owned()));
    assert!(
        abandon(&mut h.state, "again", t0()).effects.is_empty(),
        "once ended, nothing more"
    );
}

#[test]
fn a_step_that_wants_a_reason_refuses_a_rejection_without_one() {
    let text = FLOW.replace(
        "approvers = [\"ben\"]",
        "approvers = [\"ben\"]\nreject_reason = true",
    );
    let mut h = Harness::new(&text);
    to_gate(&mut h);
    let t = h.apply(Command::Decide {
        step: "gate".into(),
        actor: user("ben"),
        approve: false,
        reason: Some("  ".into()),
        shown: None,
    });
    assert_eq!(
        t.notice.as_deref(),
        Some("Rejecting this step needs a reason.")
    );
    assert_eq!(h.state.approvals["gate"].status, ApprovalStatus::Pending);
    let t = h.apply(Command::Decide {
        step: "gate".into(),
        actor: user("ben"),
        approve: false,
        reason: Some("no tests".into()),
        shown: None,
    });
    assert_eq!(t.notice.as_deref(), Some("You rejected this step."));
    assert_eq!(
        h.state.approvals["gate"].reason.as_deref(),
        Some("no tests")
    );
}

#[test]
fn a_long_step_note_shows_its_start_in_the_thread_and_links_the_run_page() {
    let mut h = Harness::new(FLOW);
    h.start();
    let long = "word ".repeat(1000);
    let t = h.apply(Command::StepNote {
        step: "a".into(),
        attempt: 1,
        key: "answer".into(),
        message: crate::core::message::OutMessage {
            text: "*Writer* answered.".into(),
            detail: Some(long),
            ..Default::default()
        },
    });
    let message = t
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Send(Outgoing::Post { key, message, .. }) if key.0.contains("note") => {
                Some(message.clone())
            }
            _ => None,
        })
        .expect("the note is posted");
    let detail = message.detail.unwrap();
    assert_eq!(detail.chars().count(), 1501, "cut, with an ellipsis");
    assert!(detail.ends_with('…'));
    assert!(
        message
            .text
            .ends_with("all of it is on the run's page: http://x/runs/7"),
        "{}",
        message.text
    );
}

/// FLOW's gate, with a quorum of two and a ladder: remind at 1h, escalate at 2h to #leads
/// and dee, expire at 4h.
fn governed(extra: &str) -> String {
    FLOW.replace(
        "approvers = [\"ben\"]\ntimeout = \"1h\"",
        &format!(
            "approvers = [\"ben\", \"cy\", \"ana\"]\nquorum = 2\ntimeout = \"4h\"\nremind_after = \"1h\"\nescalate_after = \"2h\"\nescalate_to = {{ channel = \"leads\", approvers = [\"dee\"] }}\n{extra}"
        ),
    )
}

fn decide(h: &mut Harness, who: &str, approve: bool) -> Transition {
    h.apply(Command::Decide {
        step: "gate".into(),
        actor: user(who),
        approve,
        reason: None,
        shown: None,
    })
}

#[test]
fn a_quorum_of_two_needs_two_distinct_approvers_and_a_repeated_one_does_not_count_twice() {
    let mut h = Harness::new(&governed(""));
    to_gate(&mut h);
    let t = decide(&mut h, "ben", true);
    assert_eq!(
        t.notice.as_deref(),
        Some("Your approval is counted: 1 of 2.")
    );
    assert_eq!(audits(&t), vec!["approval.voted"]);
    assert!(edits(&t).contains(&"run:7:approval:gate".to_owned()));
    assert_eq!(h.status("gate"), StepStatus::Waiting);

    // ben again: refused and audited; still one approval.
    let t = decide(&mut h, "ben", true);
    assert_eq!(
        t.notice.as_deref(),
        Some("You have already decided on this step; each person counts once.")
    );
    assert_eq!(audits(&t), vec!["approval.refused"]);
    assert_eq!(h.state.approvals["gate"].approvals().count(), 1);

    // ana started the run: four-eyes still applies to each vote.
    let t = decide(&mut h, "ana", true);
    assert!(t.notice.unwrap().contains("four-eyes"));
    assert_eq!(h.status("gate"), StepStatus::Waiting);

    let t = decide(&mut h, "cy", true);
    assert_eq!(h.status("gate"), StepStatus::Succeeded);
    assert_eq!(jobs(&t), vec![("send".into(), 1)]);
    let outcome = t
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Send(Outgoing::Edit { key, message, .. }) if key.0 == "run:7:approval:gate" => {
                Some(message.text.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(outcome.contains("Approved by @ben, @cy"), "{outcome}");
    // Everyone who approved is credited; `by` is who decided it.
    let out = h.state.steps["gate"].output.clone().unwrap();
    assert_eq!(out["approvers"], json!(["ben", "cy"]));
    assert_eq!(out["by"], "cy");
    let summary = render::summary(&h.state, &h.wf, h.now).text;
    assert!(
        summary.contains("• gate: approved by @ben, @cy"),
        "{summary}"
    );
    for key in ["expire:gate", "remind:gate", "escalate:gate"] {
        assert!(!h.state.timers.contains_key(key), "{key} is cleared");
    }
}

#[test]
fn one_rejection_rejects_a_quorum_step_unless_it_asks_for_more() {
    let mut h = Harness::new(&governed(""));
    to_gate(&mut h);
    decide(&mut h, "ben", true);
    decide(&mut h, "cy", false);
    assert_eq!(h.state.run.status, RunStatus::Rejected);

    let mut h = Harness::new(&governed("rejections = 2"));
    to_gate(&mut h);
    let t = decide(&mut h, "cy", false);
    assert_eq!(
        t.notice.as_deref(),
        Some("Your rejection is counted: 1 of 2 needed to reject.")
    );
    assert_eq!(h.status("gate"), StepStatus::Waiting);
    decide(&mut h, "ben", false);
    assert_eq!(h.state.run.status, RunStatus::Rejected);
}

#[test]
fn the_ladder_reminds_then_escalates_then_expires_each_rung_once() {
    let mut h = Harness::new(&governed(""));
    to_gate(&mut h);
    assert_eq!(h.state.timers["remind:gate"], t0() + Duration::hours(1));
    assert_eq!(h.state.timers["escalate:gate"], t0() + Duration::hours(2));
    assert_eq!(h.state.timers["expire:gate"], t0() + Duration::hours(4));

    h.now = t0() + Duration::hours(1);
    let t = h.fire("remind:gate");
    assert_eq!(audits(&t), vec!["approval.reminded"]);
    assert_eq!(posts(&t), vec!["run:7:approval:gate:reminder".to_owned()]);
    let request = t
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Send(Outgoing::Edit { message, .. }) => Some(message.text.clone()),
            _ => None,
        })
        .unwrap();
    assert!(request.contains("Reminded at 11:00 UTC"), "{request}");
    assert!(
        h.fire("remind:gate").effects.is_empty(),
        "a rung fires once"
    );

    // dee may not decide before the escalation, and may after it.
    let t = decide(&mut h, "dee", true);
    assert_eq!(
        t.notice.as_deref(),
        Some("You are not an approver for this step.")
    );
    h.now = t0() + Duration::hours(2);
    let t = h.fire("escalate:gate");
    assert_eq!(audits(&t), vec!["approval.escalated"]);
    let (to, message) = t
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Send(Outgoing::Post {
                key, to, message, ..
            }) if key.0 == "run:7:approval:gate:escalation" => Some((to.clone(), message.clone())),
            _ => None,
        })
        .expect("the request is posted in the escalation channel");
    assert_eq!((to.channel.as_str(), to.thread.is_none()), ("leads", true));
    assert!(
        message.text.starts_with("*Escalated* from run 7"),
        "{}",
        message.text
    );
    assert_eq!(message.buttons.len(), 2, "the escalation may decide there");
    assert_eq!(message.mentions, vec!["dee".to_owned()]);
    decide(&mut h, "dee", true);
    let t = decide(&mut h, "cy", true);
    assert_eq!(h.status("gate"), StepStatus::Succeeded);
    // Both copies of the request show the outcome.
    let edited = edits(&t);
    assert!(edited.contains(&"run:7:approval:gate".to_owned()));
    assert!(edited.contains(&"run:7:approval:gate:escalation".to_owned()));
}

#[test]
fn an_approval_nobody_decides_expires_with_the_outcome_the_step_gives() {
    let mut h = Harness::new(&governed(""));
    to_gate(&mut h);
    h.now = t0() + Duration::hours(4);
    h.fire("expire:gate");
    assert_eq!(h.state.run.status, RunStatus::Rejected);
    assert!(
        !h.state.timers.contains_key("remind:gate"),
        "the ladder stops"
    );

    let mut h = Harness::new(&governed("on_timeout = \"approve\""));
    to_gate(&mut h);
    h.now = t0() + Duration::hours(4);
    let t = h.fire("expire:gate");
    assert_eq!(h.status("gate"), StepStatus::Succeeded);
    assert_eq!(jobs(&t), vec![("send".into(), 1)]);
}

#[test]
fn an_approval_whose_condition_does_not_hold_passes_at_once_and_says_why() {
    let cond = |when: &str| {
        FLOW.replace(
            "timeout = \"1h\"",
            &format!("timeout = \"1h\"\nwhen = \"{when}\""),
        )
    };
    let mut h = Harness::new(&cond("steps.a.output.status >= 500"));
    to_gate(&mut h);
    assert_eq!(h.status("gate"), StepStatus::Succeeded);
    assert!(!h.state.approvals.contains_key("gate"));
    assert_eq!(jobs(&h.fire("none")), vec![]);

    let mut h = Harness::new(&cond("steps.a.output.status == 200"));
    to_gate(&mut h);
    assert_eq!(h.status("gate"), StepStatus::Waiting);
}

#[test]
fn a_run_without_progress_is_flagged_once_with_retry_and_cancel_and_retry_starts_its_steps_again() {
    let text = FLOW.replace(
        "[[step]]\nid = \"a\"",
        "[permissions]\nusers = [\"ana\", \"ben\"]\n[[step]]\nid = \"a\"",
    );
    let mut h = Harness::new(&text);
    h.start();
    assert_eq!(h.state.timers["stall"], t0() + Duration::hours(1));
    // b finishes after 10 minutes: progress moves the threshold.
    h.now = t0() + Duration::minutes(10);
    h.apply(Command::StepFinished {
        step: "b".into(),
        attempt: 1,
        result: ok(200),
    });
    assert_eq!(h.state.timers["stall"], t0() + Duration::minutes(70));

    h.now = t0() + Duration::minutes(70);
    let t = h.fire("stall");
    assert_eq!(audits(&t), vec!["run.stalled"]);
    let alert = posted_under(&t, "run:7:stall:").expect("an alert in the thread");
    assert!(
        alert.text.contains("no progress for 1 h")
            && alert.text.contains("*a* (running for 1 h 10 min)"),
        "{}",
        alert.text
    );
    let labels: Vec<&str> = alert.buttons.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["Retry", "Cancel run"]);
    assert_eq!(alert.buttons[0].action, "retry:7");
    assert!(h.state.run.stalled_at.is_some());

    // Only people who may start the workflow (or the requester) may retry.
    let t = h.apply(Command::Retry { actor: user("dee") });
    assert!(
        t.notice
            .as_deref()
            .unwrap()
            .starts_with("You may not retry run 7")
    );
    assert!(jobs(&t).is_empty());

    let t = h.apply(Command::Retry { actor: user("ben") });
    assert_eq!(jobs(&t), vec![("a".into(), 2)]);
    assert!(audits(&t).contains(&"run.retried"));
    assert!(edits(&t).iter().any(|k| k.starts_with("run:7:stall:")));
    assert!(h.state.run.stalled_at.is_none());
    // The abandoned attempt's late answer changes nothing.
    let t = h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 1,
        result: ok(200),
    });
    assert_eq!(audits(&t), vec!["step.result_ignored"]);
    h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 2,
        result: ok(200),
    });
    assert_eq!(h.state.run.status, RunStatus::WaitingApproval);
    assert!(
        !h.state.timers.contains_key("stall"),
        "waiting for people is not stalling"
    );
}

/// The request message (text and buttons) posted or edited under `key`.
fn message_at(t: &Transition, key: &str) -> Option<crate::core::message::OutMessage> {
    t.effects.iter().find_map(|e| match e {
        Effect::Send(
            Outgoing::Post {
                key: k, message, ..
            }
            | Outgoing::Edit {
                key: k, message, ..
            },
        ) if k.0 == key => Some(message.clone()),
        _ => None,
    })
}

/// The first post whose key starts with `prefix` (keys with a time in them).
fn posted_under(t: &Transition, prefix: &str) -> Option<crate::core::message::OutMessage> {
    t.effects.iter().find_map(|e| match e {
        Effect::Send(Outgoing::Post { key, message, .. }) if key.0.starts_with(prefix) => {
            Some(message.clone())
        }
        _ => None,
    })
}

fn action_of(m: &crate::core::message::OutMessage, label: &str) -> crate::core::ids::ActionId {
    m.buttons
        .iter()
        .find(|b| b.label == label)
        .unwrap_or_else(|| panic!("no {label} on {m:?}"))
        .action
        .parse()
        .unwrap()
}

fn shown_of(action: &crate::core::ids::ActionId) -> Option<String> {
    use crate::core::ids::ActionId;
    match action {
        ActionId::Approve { shown, .. }
        | ActionId::Reject { shown, .. }
        | ActionId::Edit { shown, .. } => shown.clone(),
        _ => None,
    }
}

#[test]
fn an_edited_payload_is_recorded_asked_about_afresh_and_its_editor_cannot_approve_it() {
    let text = FLOW
        .replace(
            "approvers = [\"ben\"]\ntimeout = \"1h\"",
            "approvers = [\"ben\", \"cy\", \"dee\"]\nquorum = 2\ntimeout = \"1h\"\npayload = \"Dear {{ input.text }}, welcome.\"\neditable = true",
        );
    let mut h = Harness::new(&text);
    h.start();
    h.apply(Command::StepFinished {
        step: "a".into(),
        attempt: 1,
        result: ok(200),
    });
    let t = h.apply(Command::StepFinished {
        step: "b".into(),
        attempt: 1,
        result: ok(200),
    });
    let first = message_at(&t, "run:7:approval:gate").expect("the request");
    assert!(
        first
            .detail
            .as_deref()
            .unwrap()
            .ends_with("---\nDear hello, welcome.")
    );
    let edit = first.buttons.iter().find(|b| b.label == "Edit").unwrap();
    assert_eq!(edit.prefill.as_deref(), Some("Dear hello, welcome."));
    let old_hash = shown_of(&action_of(&first, "Approve"));
    assert!(old_hash.as_deref().is_some_and(|h| h.len() == 8));

    let vote = |h: &mut Harness, who: &str, shown: Option<String>| {
        h.apply(Command::Decide {
            step: "gate".into(),
            actor: user(who),
            approve: true,
            reason: None,
            shown,
        })
    };
    vote(&mut h, "ben", old_hash.clone());
    assert_eq!(h.state.approvals["gate"].approvals().count(), 1);

    // cy edits: before and after are in the ledger, ben's vote no longer counts, and a fresh
    // request replaces the first.
    let t = h.apply(Command::Edit {
        step: "gate".into(),
        actor: user("cy"),
        text: "Dear hello, welcome aboard!".into(),
        shown: old_hash.clone(),
    });
    assert_eq!(audits(&t), vec!["approval.edited"]);
    let Effect::Audit(ev) = &t.effects[0] else {
        panic!()
    };
    assert_eq!(ev.data["before"], "Dear hello, welcome.");
    assert_eq!(ev.data["after"], "Dear hello, welcome aboard!");
    assert_eq!(ev.data["votes_cleared"], 1);
    assert!(
        message_at(&t, "run:7:approval:gate")
            .unwrap()
            .text
            .contains("replaced (@cy edited the payload)")
    );
    let fresh = message_at(&t, "run:7:approval:gate:2").expect("a fresh request");
    assert!(fresh.text.contains("Payload edited by @cy"));
    let new_hash = shown_of(&action_of(&fresh, "Approve"));
    assert_ne!(new_hash, old_hash);
    assert_eq!(h.state.approvals["gate"].approvals().count(), 0);

    // The editor's own approval does not count.
    let t = vote(&mut h, "cy", new_hash.clone());
    assert!(t.notice.unwrap().contains("You edited this payload"));
    // A click on the old copy is refused, and the request goes out afresh.
    let t = vote(&mut h, "dee", old_hash);
    assert!(
        t.notice
            .as_deref()
            .unwrap()
            .starts_with("This request changed since you saw it")
    );
    assert!(audits(&t).contains(&"approval.refused"));
    assert!(message_at(&t, "run:7:approval:gate:3").is_some());
    assert_eq!(h.state.approvals["gate"].approvals().count(), 0);

    let newest = shown_of(&action_of(
        &message_at(&t, "run:7:approval:gate:3").unwrap(),
        "Approve",
    ));
    assert_eq!(
        newest, new_hash,
        "the payload is the same; only the copy is new"
    );
    vote(&mut h, "dee", newest.clone());
    let t = vote(&mut h, "ben", newest);
    assert_eq!(h.status("gate"), StepStatus::Succeeded);
    assert_eq!(jobs(&t), vec![("send".into(), 1)]);
    let out = h.state.steps["gate"].output.clone().unwrap();
    assert_eq!(out["payload"], "Dear hello, welcome aboard!");
    assert_eq!(out["edited_by"], json!(["cy"]));
}

fn failed(outbox: i64, key: &str, permanent: bool) -> Command {
    Command::DeliveryFailed {
        outbox,
        key: key.into(),
        channel: "nowhere".into(),
        error: "channel_not_found".into(),
        permanent,
    }
}

/// The post with this exact key, with where it goes and whether it jumps the queue.
fn post_of(t: &Transition, wanted: &str) -> Option<(Destination, OutMessage, bool)> {
    t.effects.iter().find_map(|e| match e {
        Effect::Send(Outgoing::Post {
            key,
            to,
            message,
            urgent,
            ..
        }) if key.0 == wanted => Some((to.clone(), message.clone(), *urgent)),
        _ => None,
    })
}

#[test]
fn a_message_that_could_not_be_delivered_is_flagged_once_and_the_flag_is_withdrawn_when_it_goes_through()
 {
    let mut h = Harness::new(FLOW);
    h.start();
    let t = h.apply(failed(11, "run:7:post:tell", true));
    assert_eq!(audits(&t), vec!["delivery.alerted"]);
    let (to, alert, urgent) = post_of(&t, "run:7:delivery:11").unwrap();
    assert!(
        urgent,
        "an alert does not wait behind the message it is about"
    );
    assert_eq!(to.thread, Some(MessageKey::root(RunId(7))));
    assert!(
        alert
            .text
            .starts_with("*Delivery failed*: a message of run 7 to #nowhere was refused"),
        "{}",
        alert.text
    );
    assert_eq!(alert.detail.as_deref(), Some("channel_not_found"));
    assert_eq!(
        alert.buttons.len(),
        2,
        "Retry and Cancel while the run is on"
    );
    assert!(
        h.apply(failed(11, "run:7:post:tell", true))
            .effects
            .is_empty(),
        "said once"
    );
    let t = h.apply(Command::DeliveryRecovered {
        outbox: 11,
        key: "run:7:post:tell".into(),
    });
    assert_eq!(audits(&t), vec!["delivery.recovered"]);
    let edited = t
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Send(Outgoing::Edit { key, message, .. }) if key.0 == "run:7:delivery:11" => {
                Some(message.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(
        edited.text.starts_with("*Delivered after all*"),
        "{}",
        edited.text
    );
    assert!(edited.buttons.is_empty());
    assert!(
        h.apply(Command::DeliveryRecovered {
            outbox: 11,
            key: "run:7:post:tell".into(),
        })
        .effects
        .is_empty()
    );

    let t = h.apply(failed(12, "run:7:post:other", false));
    let (_, delayed, _) = post_of(&t, "run:7:delivery:12").unwrap();
    assert!(
        delayed.text.starts_with("*Delivery delayed*"),
        "{}",
        delayed.text
    );
    // Trouble that becomes a refusal is said again, in the same message.
    let t = h.apply(failed(12, "run:7:post:other", true));
    assert_eq!(edits(&t), vec!["run:7:delivery:12"]);

    // The loss of an alert in the thread is not flagged again.
    assert!(
        h.apply(failed(40, "run:7:delivery:11", true))
            .effects
            .is_empty()
    );

    let t = h.apply(Command::Retry { actor: user("ana") });
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::Redeliver(RunId(7))))
    );
}

#[test]
fn a_root_that_cannot_be_posted_is_said_in_the_channel_and_then_privately_to_the_requester() {
    let mut h = Harness::new(FLOW);
    h.start();
    let t = h.apply(failed(1, "run:7:root", true));
    assert_eq!(
        h.state.run.conversation_lost.as_deref(),
        Some("channel_not_found")
    );
    let (to, alert, urgent) = post_of(&t, "run:7:delivery:1").unwrap();
    assert!(urgent);
    assert_eq!(
        (to.channel.as_str(), to.thread),
        ("general", None),
        "in the channel"
    );
    assert!(
        alert.text.contains("so the run has no thread here"),
        "{}",
        alert.text
    );
    assert!(alert.text.contains("http://x/runs/7"), "{}", alert.text);

    // The channel will not take that either: the requester hears of it privately.
    let t = h.apply(failed(2, "run:7:delivery:1", true));
    let (to, private, urgent) = post_of(&t, "run:7:delivery:1:private").unwrap();
    assert!(urgent);
    assert_eq!(to.private_to.as_deref(), Some("ana"));
    assert!(
        private
            .text
            .starts_with("Your run 7 (Flow) could not post in #nowhere"),
        "{}",
        private.text
    );
    assert!(
        h.apply(failed(3, "run:7:delivery:1:private", true))
            .effects
            .is_empty()
    );

    h.apply(Command::DeliveryRecovered {
        outbox: 1,
        key: "run:7:root".into(),
    });
    assert_eq!(h.state.run.conversation_lost, None);
}

#[test]
fn a_step_past_its_deadline_with_no_result_flags_the_run_once() {
    let mut h = Harness::new(FLOW);
    h.start();
    // FLOW's steps have the default timeout of five minutes.
    assert_eq!(h.state.timers["deadline:a"], t0() + Duration::minutes(5));
    h.apply(Command::StepFinished {
        step: "b".into(),
        attempt: 1,
        result: ok(200),
    });
    assert!(
        !h.state.timers.contains_key("deadline:b"),
        "a result clears it"
    );
    h.now = t0() + Duration::minutes(5);
    let t = h.fire("deadline:a");
    assert_eq!(audits(&t), vec!["run.stalled"]);
    let alert = posted_under(&t, "run:7:stall:").unwrap();
    assert!(
        alert
            .text
            .starts_with("*Stalled*: step *a* of run 7 is past its deadline with no result."),
        "{}",
        alert.text
    );
    assert_eq!(alert.buttons.len(), 2);
}

#[test]
fn a_timer_tick_repeated_after_the_timer_was_set_again_fires_nothing() {
    // Found by the property tests: a second timer loop (or a tick repeated after a crash)
    // that read `stall` before it fired would have fired it again, early, once re-armed.
    let mut h = Harness::new(FLOW);
    h.start();
    let first = h.state.timers["stall"];
    h.now = first;
    let t = h.fire("stall");
    assert_eq!(audits(&t), vec!["run.stalled"]);
    let t = h.apply(Command::Retry { actor: user("ana") });
    assert!(!t.effects.is_empty());
    let again = h.state.timers["stall"];
    assert!(again > first, "Retry sets the stall timer again");
    let t = h.apply(Command::TimerFired {
        key: "stall".into(),
        due: first,
    });
    assert!(t.effects.is_empty(), "{:?}", t.effects);
    assert_eq!(h.state.timers["stall"], again);
}
