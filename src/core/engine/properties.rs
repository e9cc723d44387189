//! Property tests of the state machine: random sequences of what can happen to a run (results,
//! clicks by anyone, timers, cancels, retries, lost attempts, time passing), checked after
//! every step against the rules that must always hold.

use super::tests::{fresh, t0, user, wf};
use super::*;
use crate::core::tools::ToolCatalog;
use crate::core::workflow::Workflow;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// Parallel steps with retries, a quorum approval with a reminder and an expiry, steps after
/// it, and a notify at the end.
const FLOW: &str = r#"
name = "prop"
description = "Property flow"
[[trigger]]
kind = "slash"
command = "prop"
[[step]]
id = "a"
kind = "tool"
tool = "http.get"
with = { url = "http://127.0.0.1/a" }
timeout = "1m"
retry = { max = 1, backoff = "5s" }
[[step]]
id = "b"
kind = "tool"
tool = "http.get"
with = { url = "http://127.0.0.1/b" }
timeout = "1m"
[[step]]
id = "gate"
kind = "approval"
needs = ["a", "b"]
approvers = ["ben", "cy", "dee"]
quorum = 2
timeout = "1h"
remind_after = "10m"
[[step]]
id = "c"
kind = "tool"
tool = "http.get"
needs = ["gate"]
with = { url = "http://127.0.0.1/c" }
[[step]]
id = "done"
kind = "notify"
needs = ["c"]
text = "done"
"#;

/// Something that happens to the run, before it is turned into a command against the state.
#[derive(Debug, Clone)]
enum Happening {
    Finish { step: usize, ok: bool, stale: bool },
    Click { who: usize, approve: bool },
    Wait { minutes: i64 },
    FireDue { pick: usize },
    FireAgain { pick: usize },
    Cancel { who: usize },
    Retry { who: usize },
    Lost { step: usize },
}

const STEPS: [&str; 5] = ["a", "b", "gate", "c", "done"];
const PEOPLE: [&str; 4] = ["ana", "ben", "cy", "dee"];

fn happening() -> impl Strategy<Value = Happening> {
    prop_oneof![
        4 => (0..5usize, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(step, ok, stale)| Happening::Finish { step, ok, stale }),
        3 => (0..4usize, prop::bool::weighted(0.8)).prop_map(|(who, approve)| Happening::Click { who, approve }),
        2 => (1..90i64).prop_map(|minutes| Happening::Wait { minutes }),
        2 => (0..8usize).prop_map(|pick| Happening::FireDue { pick }),
        1 => (0..8usize).prop_map(|pick| Happening::FireAgain { pick }),
        1 => (0..4usize).prop_map(|who| Happening::Cancel { who }),
        1 => (0..4usize).prop_map(|who| Happening::Retry { who }),
        1 => (0..5usize).prop_map(|step| Happening::Lost { step }),
    ]
}

struct Run {
    wf: Workflow,
    tools: ToolCatalog,
    state: RunState,
    now: chrono::DateTime<chrono::Utc>,
    /// Timers that fired, with the instant they were due.
    fired: Vec<(String, chrono::DateTime<chrono::Utc>)>,
    /// Decisions recorded per approval step.
    decided: BTreeMap<String, usize>,
    /// The state when the run first finished.
    finished: Option<RunState>,
}

impl Run {
    fn apply(&mut self, cmd: Command) -> Transition {
        let cx = Context {
            workflow: &self.wf,
            tools: &self.tools,
            now: self.now,
            base_url: "http://x",
            local_url: "http://127.0.0.1:1",
            stall_after: chrono::Duration::hours(1),
        };
        apply(&mut self.state, cmd, &cx)
    }

    /// Turns a happening into the command the driver would send, if it would send one.
    fn command(&self, h: &Happening) -> Option<Command> {
        Some(match h {
            Happening::Finish { step, ok, stale } => {
                let id = STEPS[*step];
                let s = self.state.steps.get(id)?;
                // A stale result is one from an earlier attempt; the driver does send those.
                let attempt = if *stale {
                    s.attempt.saturating_sub(1)
                } else {
                    s.attempt
                };
                Command::StepFinished {
                    step: id.into(),
                    attempt,
                    result: if *ok {
                        Ok(serde_json::json!({"status": 200}))
                    } else {
                        Err("boom".into())
                    },
                }
            }
            Happening::Click { who, approve } => Command::Decide {
                step: "gate".into(),
                actor: user(PEOPLE[*who]),
                approve: *approve,
                reason: None,
                shown: None,
            },
            Happening::Cancel { who } => Command::Cancel {
                actor: user(PEOPLE[*who]),
            },
            Happening::Retry { who } => Command::Retry {
                actor: user(PEOPLE[*who]),
            },
            Happening::Lost { step } => {
                let id = STEPS[*step];
                let s = self.state.steps.get(id)?;
                Command::AttemptLost {
                    step: id.into(),
                    attempt: s.attempt,
                }
            }
            Happening::FireDue { pick } => {
                // The timer loop fires what is due, once.
                let due: Vec<&String> = self
                    .state
                    .timers
                    .iter()
                    .filter(|(_, at)| **at <= self.now)
                    .map(|(k, _)| k)
                    .collect();
                let key = due.get(pick % due.len().max(1))?;
                Command::TimerFired {
                    key: (*key).clone(),
                    due: self.state.timers[*key],
                }
            }
            // A timer fired again (a tick repeated after a crash, two loops racing).
            Happening::FireAgain { pick } => {
                let (key, due) = self.fired.get(pick % self.fired.len().max(1))?;
                Command::TimerFired {
                    key: key.clone(),
                    due: *due,
                }
            }
            Happening::Wait { .. } => return None,
        })
    }
}

fn started_steps(t: &Transition) -> Vec<String> {
    t.jobs().map(|j| j.step.clone()).collect()
}

/// Applies the happenings and checks the rules after each.
fn check(happenings: Vec<Happening>) -> Result<(), TestCaseError> {
    let mut run = Run {
        wf: wf(FLOW),
        tools: ToolCatalog::builtin(),
        state: fresh(),
        now: t0(),
        fired: vec![],
        decided: BTreeMap::new(),
        finished: None,
    };
    {
        let cx = Context {
            workflow: &run.wf,
            tools: &run.tools,
            now: run.now,
            base_url: "http://x",
            local_url: "http://127.0.0.1:1",
            stall_after: chrono::Duration::hours(1),
        };
        start(&mut run.state, &cx);
    }
    let needs: BTreeMap<String, Vec<String>> = run
        .wf
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.needs.clone()))
        .collect();
    for h in happenings {
        if let Happening::Wait { minutes } = h {
            run.now += chrono::Duration::minutes(minutes);
            continue;
        }
        let Some(cmd) = run.command(&h) else { continue };
        let before = run.state.clone();
        let timer = match &cmd {
            Command::TimerFired { key, due } => Some((
                key.clone(),
                before.timers.get(key).copied().filter(|d| d == due),
            )),
            _ => None,
        };
        let t = run.apply(cmd.clone());

        // No step starts before everything it needs has succeeded.
        for step in started_steps(&t) {
            for need in &needs[&step] {
                let status = run.state.steps[need].status;
                prop_assert_eq!(
                    status,
                    StepStatus::Succeeded,
                    "{} started while {} was {:?} (after {:?})",
                    step,
                    need,
                    status,
                    cmd
                );
            }
        }
        // One decision per approval.
        let decisions = t
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Audit(a) if a.kind == crate::core::audit::AuditKind::ApprovalDecided))
            .count();
        let total = run.decided.entry("gate".into()).or_default();
        *total += decisions;
        prop_assert!(*total <= 1, "the approval was decided {} times", total);
        if let (Some(b), Some(a)) = (
            before.approvals.get("gate"),
            run.state.approvals.get("gate"),
        ) && b.status != ApprovalStatus::Pending
        {
            prop_assert_eq!(b, a, "a decided approval changed (after {:?})", cmd);
        }
        // A finished run never changes.
        if let Some(done) = &run.finished {
            prop_assert_eq!(&run.state.run.status, &done.run.status);
            prop_assert_eq!(
                &run.state.steps,
                &done.steps,
                "steps changed after the end ({:?})",
                cmd
            );
            prop_assert_eq!(&run.state.approvals, &done.approvals);
            prop_assert!(t.jobs().next().is_none(), "a finished run started work");
        } else if run.state.run.status.is_terminal() {
            prop_assert!(
                run.state.timers.is_empty(),
                "timers left after the end: {:?}",
                run.state.timers
            );
            run.finished = Some(run.state.clone());
        }
        // Every timer fires at most once.
        if let Some((key, due)) = timer {
            match due {
                Some(due) => {
                    prop_assert!(
                        !run.fired.contains(&(key.clone(), due)),
                        "{} due {} fired twice",
                        key,
                        due
                    );
                    prop_assert_ne!(
                        run.state.timers.get(&key),
                        Some(&due),
                        "{} is still set after it fired",
                        key
                    );
                    run.fired.push((key, due));
                }
                None => {
                    prop_assert!(
                        t.jobs().next().is_none()
                            && !t.effects.iter().any(|e| matches!(e, Effect::Send(_))),
                        "{} fired again and did something: {:?}",
                        key,
                        t.effects
                    );
                }
            }
        }
        // Nothing is kept that the workflow does not have.
        let known: BTreeSet<&str> = STEPS.into_iter().collect();
        prop_assert!(run.state.steps.keys().all(|k| known.contains(k.as_str())));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_events_keeps_the_run_rules(happenings in prop::collection::vec(happening(), 1..60)) {
        check(happenings)?;
    }
}
