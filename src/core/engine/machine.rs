//! The state machine. Pure: given a run's rows, a command and the time, it changes the rows and
//! lists the effects. It never blocks, sleeps, or touches the network.

use super::render;
use super::state::*;
use super::{AttemptOutcome, Command, Effect, Job, Transition, Work};
use crate::core::agents::ToolCall;
use crate::core::approvals;
use crate::core::audit::{AuditEvent, AuditKind};
use crate::core::event::Actor;
use crate::core::ids::MessageKey;
use crate::core::message::{Destination, OutMessage, Outgoing};
use crate::core::template;
use crate::core::tools::{Capability, ToolCatalog};
use crate::core::workflow::{ApprovalSpec, StepKind, TimeoutOutcome, Workflow, format_duration};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Characters of an agent's answer (or another step note's detail) the thread shows; the rest
/// is on the run's page.
const NOTE_DETAIL_LIMIT: usize = 1500;

/// Longest payload an approver may write when editing one.
const MAX_PAYLOAD_CHARS: usize = 4000;

/// What the machine needs besides the run itself.
pub struct Context<'a> {
    pub workflow: &'a Workflow,
    pub tools: &'a ToolCatalog,
    pub now: DateTime<Utc>,
    /// Where people reach Baton's console, for templates (`{{ baton.url }}`) and links.
    pub base_url: &'a str,
    /// Where Baton reaches itself (`{{ baton.local_url }}`), for steps that call Baton's own
    /// endpoints: a loopback address when it listens on every interface.
    pub local_url: &'a str,
    /// How long a run may go without progress before it is flagged, unless its workflow says.
    pub stall_after: chrono::Duration,
}

struct Apply<'a, 'b> {
    state: &'b mut RunState,
    cx: &'b Context<'a>,
    out: Transition,
}

/// Starts a freshly created run: audits it, posts its root message, starts the ready steps.
pub fn start(state: &mut RunState, cx: &Context<'_>) -> Transition {
    let mut a = Apply {
        state,
        cx,
        out: Transition::default(),
    };
    let run = &a.state.run;
    let data = json!({"workflow": run.workflow, "inputs": run.inputs, "event_id": run.event_id, "late": run.late, "channel": run.conversation.channel});
    let ev =
        AuditEvent::new(cx.now, AuditKind::RunStarted, Some(run.id), data).actor(&run.requested_by);
    a.audit(ev);
    for step in &cx.workflow.steps {
        a.state.steps.entry(step.id.clone()).or_default();
    }
    let root = render::root(a.state);
    let to = Destination {
        platform: a.state.run.conversation.platform.clone(),
        channel: a.state.run.conversation.channel.clone(),
        thread: None,
        private_to: None,
    };
    a.send(Outgoing::Post {
        run: Some(a.state.run.id),
        key: MessageKey::root(a.state.run.id),
        to,
        message: root,
        urgent: false,
    });
    a.advance();
    a.finish(None)
}

/// Ends a run that cannot go on at all (its stored workflow no longer parses), so its timers
/// stop firing and people see why. Whatever command arrived is dropped.
pub fn abandon(state: &mut RunState, reason: &str, now: DateTime<Utc>) -> Transition {
    let mut out = Transition::default();
    if state.run.status.is_terminal() {
        return out;
    }
    let before = state.run.status;
    state.run.status = RunStatus::Failed;
    state.run.error = Some(reason.to_owned());
    state.run.updated_at = now;
    state.run.finished_at = Some(now);
    state.timers.clear();
    let run = state.run.id;
    let ev = AuditEvent::new(
        now,
        AuditKind::RunStatusChanged,
        Some(run),
        json!({"from": before.as_str(), "to": "failed", "why": reason}),
    );
    out.effects.push(Effect::Audit(ev));
    out.effects.push(Effect::Send(Outgoing::Edit {
        run: Some(run),
        key: MessageKey::root(run),
        message: render::root(state),
    }));
    let to = Destination {
        platform: state.run.conversation.platform.clone(),
        channel: state.run.conversation.channel.clone(),
        thread: Some(MessageKey::root(run)),
        private_to: None,
    };
    let message = OutMessage {
        text: format!("Run {run} *failed*: {reason}"),
        ..Default::default()
    };
    out.effects.push(Effect::Send(Outgoing::Post {
        run: Some(run),
        key: MessageKey::of(run, "summary"),
        to,
        message,
        urgent: false,
    }));
    out.notice = Some(format!("Run {run} could not go on: {reason}"));
    out
}

/// Applies one command to a run.
pub fn apply(state: &mut RunState, cmd: Command, cx: &Context<'_>) -> Transition {
    let before = state.run.status;
    let mut a = Apply {
        state,
        cx,
        out: Transition::default(),
    };
    if a.state.run.status.is_terminal() {
        return a.on_finished_run(cmd);
    }
    match cmd {
        Command::StepFinished {
            step,
            attempt,
            result,
        } => a.step_finished(&step, attempt, result),
        Command::Decide {
            step,
            actor,
            approve,
            reason,
            shown,
        } => a.decide(&step, &actor, approve, reason, shown.as_deref()),
        Command::Edit {
            step,
            actor,
            text,
            shown,
        } => a.edit(&step, &actor, &text, shown.as_deref()),
        Command::TimerFired { key, due } => a.timer_fired(&key, due),
        Command::Cancel { actor } => a.cancel(&actor),
        Command::Retry { actor } => a.retry(&actor),
        Command::DeliveryFailed {
            outbox,
            key,
            channel,
            error,
            permanent,
        } => a.delivery_failed(outbox, &key, &channel, &error, permanent),
        Command::DeliveryRecovered { outbox, key } => a.delivery_recovered(outbox, &key),
        Command::StepNote {
            step,
            attempt,
            key,
            message,
        } => a.step_note(&step, attempt, &key, message),
        Command::AgentWantsTool {
            step,
            attempt,
            call,
            payload_hash,
        } => a.agent_wants_tool(&step, attempt, call, payload_hash),
        Command::AttemptLost { step, attempt } => a.attempt_lost(&step, attempt),
    }
    a.finish(Some(before))
}

impl<'a> Apply<'a, '_> {
    fn now(&self) -> DateTime<Utc> {
        self.cx.now
    }

    fn audit(&mut self, ev: AuditEvent) {
        self.out.effects.push(Effect::Audit(ev));
    }

    fn event(&self, kind: AuditKind, step: Option<&str>, data: Value) -> AuditEvent {
        let ev = AuditEvent::new(self.now(), kind, Some(self.state.run.id), data);
        match step {
            Some(s) => ev.step(s),
            None => ev,
        }
    }

    fn send(&mut self, o: Outgoing) {
        self.out.effects.push(Effect::Send(o));
    }

    fn thread(&self) -> Destination {
        Destination {
            platform: self.state.run.conversation.platform.clone(),
            channel: self.state.run.conversation.channel.clone(),
            thread: Some(MessageKey::root(self.state.run.id)),
            private_to: None,
        }
    }

    fn reply(&mut self, what: &str, message: OutMessage) {
        let o = Outgoing::Post {
            run: Some(self.state.run.id),
            key: MessageKey::of(self.state.run.id, what),
            to: self.thread(),
            message,
            urgent: false,
        };
        self.send(o);
    }

    /// A note from a running attempt goes into the thread; one from an attempt that is over
    /// (superseded after a crash, or timed out) is dropped.
    fn step_note(&mut self, id: &str, attempt: u32, key: &str, message: OutMessage) {
        let current = self
            .state
            .steps
            .get(id)
            .is_some_and(|s| s.status == StepStatus::Running && s.attempt == attempt);
        if current {
            let mut message = message;
            // A long answer is the step's output, kept whole on the run's page: the thread gets
            // the start of it and the link.
            if let Some(detail) = &mut message.detail
                && detail.chars().count() > NOTE_DETAIL_LIMIT
            {
                *detail = detail.chars().take(NOTE_DETAIL_LIMIT).collect();
                detail.push('…');
                let url = format!("{}/runs/{}", self.cx.base_url, self.state.run.id);
                message.text.push_str(&render::note_cut(&url));
            }
            self.reply(&format!("step:{id}:{attempt}:note:{key}"), message);
        }
    }

    /// An agent asks for an external call: the step waits on an approval that shows the exact
    /// payload, and the decision is bound to its hash.
    fn agent_wants_tool(&mut self, id: &str, attempt: u32, call: ToolCall, hash: String) {
        let current = self
            .state
            .steps
            .get(id)
            .is_some_and(|s| s.status == StepStatus::Running && s.attempt == attempt);
        let Some(StepKind::Agent {
            agent,
            approval: Some(spec),
            ..
        }) = self.cx.workflow.step(id).map(|s| &s.kind)
        else {
            return;
        };
        if !current || hash != crate::core::agents::payload_hash(&call.name, &call.arguments) {
            return;
        }
        let now = self.now();
        let round = self
            .state
            .approvals
            .get(id)
            .and_then(|a| a.payload.as_ref())
            .and_then(|p| p["round"].as_u64())
            .unwrap_or(0)
            + 1;
        let args = serde_json::to_string_pretty(&call.arguments).unwrap_or_default();
        let approval = new_approval(
            spec,
            render::agent_call_summary(&agent.role, &call.name, &args),
            now,
            Some(
                json!({"call_id": call.id, "tool": call.name, "args": call.arguments, "hash": hash, "round": round}),
            ),
        );
        let s = self.state.steps.get_mut(id).expect("step rows exist");
        s.status = StepStatus::Waiting;
        self.out.effects.push(Effect::AttemptEnded {
            run: self.state.run.id,
            step: id.into(),
            attempt,
            outcome: AttemptOutcome::Paused,
            detail: json!({"waiting_for": call.name, "hash": hash}),
            at: now,
        });
        self.request_approval(
            id,
            spec,
            approval,
            json!({"tool": call.name, "args": call.arguments, "payload_hash": hash}),
        );
        self.advance();
    }

    /// Posts an approval request and sets its ladder: a reminder and an escalation when the
    /// step has them, and the expiry.
    fn request_approval(
        &mut self,
        id: &str,
        spec: &ApprovalSpec,
        approval: Approval,
        extra: Value,
    ) {
        let now = approval.requested_at;
        self.state
            .timers
            .insert(timer::expire(id), approval.expires_at);
        if let Some(after) = spec.remind_after {
            self.state.timers.insert(timer::remind(id), now + after);
        }
        if let Some(after) = spec.escalate_after {
            self.state.timers.insert(timer::escalate(id), now + after);
        }
        let mut data = json!({"approvers": approval.approvers, "summary": approval.summary, "expires_at": approval.expires_at, "quorum": approval.quorum});
        if let (Value::Object(d), Value::Object(more)) = (&mut data, extra) {
            d.extend(more);
        }
        let ev = self.event(AuditKind::ApprovalRequested, Some(id), data);
        self.audit(ev);
        let msg = render::approval_request(self.state.run.id, id, &approval, spec);
        self.reply(&approval_key(id, &approval), msg);
        self.state.approvals.insert(id.to_owned(), approval);
    }

    /// The decision on the call an agent step paused for, once people made it.
    fn agent_decision(&self, id: &str) -> Option<crate::core::agents::AgentDecision> {
        let a = self.state.approvals.get(id)?;
        let p = a.payload.as_ref()?;
        let approved = match a.status {
            ApprovalStatus::Approved => true,
            ApprovalStatus::Rejected | ApprovalStatus::Expired => false,
            _ => return None,
        };
        let by = match (&a.decided_by, a.status) {
            (Some(actor), _) => render::mention(actor),
            (None, _) => "nobody: the approval expired".to_owned(),
        };
        Some(crate::core::agents::AgentDecision {
            call_id: p["call_id"].as_str()?.to_owned(),
            payload_hash: p["hash"].as_str()?.to_owned(),
            approved,
            by,
            reason: a.reason.clone(),
        })
    }

    /// A new attempt of an agent step that waited for a decision.
    fn resume_agent(&mut self, id: &str) {
        if self.state.steps.get(id).map(|s| s.status) == Some(StepStatus::Waiting) {
            self.state.steps.get_mut(id).expect("checked").status = StepStatus::Pending;
            self.start_step(id);
        }
    }

    fn notice(&mut self, text: impl Into<String>) {
        self.out.notice = Some(text.into());
    }

    /// Commands that reach a run after it ended: results are recorded as ignored, clicks get
    /// a private notice, nothing changes.
    fn on_finished_run(mut self, cmd: Command) -> Transition {
        let status = self.state.run.status.label();
        match cmd {
            Command::StepFinished { step, attempt, .. } => {
                let ev = self.event(
                    AuditKind::ResultIgnored,
                    Some(&step),
                    json!({"attempt": attempt, "why": format!("run is {status}")}),
                );
                self.audit(ev);
            }
            Command::Decide { step, .. } => {
                let text = match self.state.approvals.get(&step) {
                    Some(a) if a.status != ApprovalStatus::Pending => {
                        render::already_decided(&step, a)
                    }
                    _ => format!("Run {} is already {status}.", self.state.run.id),
                };
                self.notice(text);
            }
            Command::Edit { .. } => self.notice(format!(
                "Run {} is already {status}; nothing is waiting for a decision.",
                self.state.run.id
            )),
            Command::Cancel { .. } => {
                self.notice(format!("Run {} is already {status}.", self.state.run.id))
            }
            // A finished run's messages can still fail to arrive (a last notify): it says so
            // in its thread, and Retry sends them again.
            Command::DeliveryFailed {
                outbox,
                key,
                channel,
                error,
                permanent,
            } => self.delivery_failed(outbox, &key, &channel, &error, permanent),
            Command::DeliveryRecovered { outbox, key } => self.delivery_recovered(outbox, &key),
            Command::Retry { actor } => {
                if !self.may_steer(&actor) {
                    self.refuse_retry(&actor);
                    return self.out;
                }
                self.out.effects.push(Effect::Redeliver(self.state.run.id));
                let ev = self
                    .event(
                        AuditKind::RunRetried,
                        None,
                        json!({"steps": [], "redeliver": true}),
                    )
                    .actor(&actor);
                self.audit(ev);
                self.notice("Sending the messages that could not be delivered again.");
            }
            Command::TimerFired { key, due } => {
                if self.state.timers.get(&key) == Some(&due) {
                    self.state.timers.remove(&key);
                }
            }
            // The thread of a finished run stays as it ended.
            Command::StepNote { .. } | Command::AgentWantsTool { .. } => {}
            Command::AttemptLost { step, attempt } => {
                let ev = self.event(
                    AuditKind::AttemptLost,
                    Some(&step),
                    json!({"attempt": attempt}),
                );
                self.audit(ev);
                self.out.effects.push(Effect::AttemptEnded {
                    run: self.state.run.id,
                    step,
                    attempt,
                    outcome: AttemptOutcome::Lost,
                    detail: json!({"error": "lost when the process stopped"}),
                    at: self.cx.now,
                });
            }
        }
        self.out
    }

    /// The template context: inputs, outputs of finished steps, and the run.
    fn template_context(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .state
            .steps
            .iter()
            .map(|(id, s)| (id.clone(), json!({"output": s.output.clone().unwrap_or(Value::Null), "status": s.status.as_str()})))
            .collect();
        let run = &self.state.run;
        json!({
            "input": run.inputs,
            "steps": steps,
            "run": {"id": run.id.0, "workflow": run.workflow, "started_by": run.requested_by.display, "channel": run.conversation.channel},
            "trigger": {"event_id": run.event_id, "late": run.late},
            "baton": {"url": self.cx.base_url, "local_url": self.cx.local_url},
        })
    }

    /// Starts every pending step whose needs are met and skips those whose needs failed, until
    /// nothing changes (a notify step finishes at once and may unblock others).
    fn advance(&mut self) {
        loop {
            let mut changed = false;
            for step in &self.cx.workflow.steps {
                if self.state.steps.get(&step.id).map(|s| s.status) != Some(StepStatus::Pending) {
                    continue;
                }
                let needs: Vec<StepStatus> = step
                    .needs
                    .iter()
                    .map(|n| {
                        self.state
                            .steps
                            .get(n)
                            .map(|s| s.status)
                            .unwrap_or(StepStatus::Pending)
                    })
                    .collect();
                if let Some(bad) = needs.iter().position(|s| {
                    matches!(
                        s,
                        StepStatus::Failed | StepStatus::Skipped | StepStatus::Cancelled
                    )
                }) {
                    let s = self.state.steps.get_mut(&step.id).expect("step rows exist");
                    s.status = StepStatus::Skipped;
                    s.finished_at = Some(self.cx.now);
                    let ev = self.event(
                        AuditKind::StepSkipped,
                        Some(&step.id),
                        json!({"because": step.needs[bad]}),
                    );
                    self.audit(ev);
                    changed = true;
                } else if needs.iter().all(|s| *s == StepStatus::Succeeded) {
                    self.start_step(&step.id);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.update_status();
    }

    fn start_step(&mut self, id: &str) {
        let wf = self.cx.workflow;
        let step = wf.step(id).expect("workflow steps match state");
        let ctx = self.template_context();
        let now = self.now();
        match &step.kind {
            StepKind::Tool { tool, with } => {
                let args = match template::render_value(&Value::Object(with.clone()), &ctx) {
                    Ok(a) => a,
                    Err(e) => {
                        return self.fail_now(id, format!("could not fill in the arguments: {e}"));
                    }
                };
                if let Err(why) = self.external_tool_allowed(id, tool) {
                    let ev = self.event(
                        AuditKind::ToolRefused,
                        Some(id),
                        json!({"tool": tool, "args": args, "why": why}),
                    );
                    self.audit(ev);
                    return self.fail_now(id, format!("refused: {why}"));
                }
                let job = Work::Tool {
                    tool: tool.clone(),
                    args: args.clone(),
                    declared: vec![tool.clone()],
                };
                self.launch(id, job, json!({"tool": tool, "args": args}));
            }
            StepKind::Agent { agent, prompt, .. } => {
                let filled = template::render(prompt, &ctx)
                    .and_then(|p| Ok((p, template::render(&agent.instructions, &ctx)?)));
                let (prompt, instructions) = match filled {
                    Ok(pair) => pair,
                    Err(e) => {
                        return self
                            .fail_now(id, format!("could not fill in the agent's task: {e}"));
                    }
                };
                // What the agent is given: the trigger's input and the outputs of the steps
                // it needs; `run.context` reads the rest.
                let needed: serde_json::Map<String, Value> = step
                    .needs
                    .iter()
                    .map(|n| (n.clone(), ctx["steps"][n]["output"].clone()))
                    .collect();
                let context = json!({"input": ctx["input"], "steps": needed, "all_steps": ctx["steps"], "run": ctx["run"]});
                let mut agent = (**agent).clone();
                agent.instructions = instructions;
                // The step carries the error of a failed attempt only while it is retried.
                let fresh = self.state.steps.get(id).is_some_and(|s| s.error.is_some());
                let input = json!({"agent": agent.name, "model": agent.model, "prompt": prompt});
                self.launch(
                    id,
                    Work::Agent {
                        agent: Box::new(agent),
                        prompt,
                        context,
                        decision: self.agent_decision(id),
                        fresh,
                    },
                    input,
                );
            }
            StepKind::Digest {
                period, narrative, ..
            } => {
                let narrative = match narrative {
                    None => None,
                    Some(agent) => match template::render(&agent.instructions, &ctx) {
                        Ok(instructions) => Some(Box::new(crate::core::agents::AgentDef {
                            instructions,
                            ..(**agent).clone()
                        })),
                        Err(e) => {
                            return self.fail_now(
                                id,
                                format!("could not fill in the narrative's instructions: {e}"),
                            );
                        }
                    },
                };
                self.launch(
                    id,
                    Work::Digest {
                        period: *period,
                        narrative,
                    },
                    json!({"period": format_duration(*period)}),
                );
            }
            StepKind::Approval(spec) => {
                // Approval may be needed only in some runs: the condition decides, on this
                // run's context, and says so in the ledger.
                if let Some(when) = &spec.when {
                    match template::render(&crate::core::workflow::condition_template(when), &ctx) {
                        Ok(v) if v.trim() == "false" => {
                            let s = self.state.steps.get_mut(id).expect("step rows exist");
                            s.attempt += 1;
                            s.started_at = Some(now);
                            let ev = self.event(
                                AuditKind::ApprovalNotRequired,
                                Some(id),
                                json!({"when": when}),
                            );
                            self.audit(ev);
                            self.reply(
                                &format!("approval:{id}:not-required"),
                                OutMessage {
                                    text: render::approval_not_required(id, when),
                                    ..Default::default()
                                },
                            );
                            self.succeed(
                                id,
                                json!({"decision": "not_required", "when": when}),
                                false,
                            );
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            return self.fail_now(
                                id,
                                format!("could not evaluate `when = \"{when}\"`: {e}"),
                            );
                        }
                    }
                }
                let summary = match template::render(&spec.message, &ctx) {
                    Ok(s) => s,
                    Err(e) => {
                        return self
                            .fail_now(id, format!("could not fill in the approval message: {e}"));
                    }
                };
                let mut approval = new_approval(spec, summary, now, None);
                if let Some(p) = &spec.payload {
                    match template::render(p, &ctx) {
                        Ok(text) => approval.content = Some(text),
                        Err(e) => {
                            return self.fail_now(
                                id,
                                format!("could not fill in the approval payload: {e}"),
                            );
                        }
                    }
                }
                let s = self.state.steps.get_mut(id).expect("step rows exist");
                s.status = StepStatus::Waiting;
                s.attempt += 1;
                s.started_at = Some(now);
                self.request_approval(id, spec, approval, json!({}));
            }
            StepKind::Notify { channel, text } => {
                let text = match template::render(text, &ctx) {
                    Ok(t) => t,
                    Err(e) => {
                        return self.fail_now(id, format!("could not fill in the message: {e}"));
                    }
                };
                // A channel may depend on the run (routing by an agent's answer).
                let channel = match channel.as_deref().map(|c| template::render(c, &ctx)) {
                    None => None,
                    Some(Ok(c)) => Some(c.trim().to_owned()),
                    Some(Err(e)) => {
                        return self.fail_now(id, format!("could not fill in the channel: {e}"));
                    }
                };
                let s = self.state.steps.get_mut(id).expect("step rows exist");
                s.attempt += 1;
                s.started_at = Some(now);
                self.post_to(id, channel.as_deref(), &text);
                let output = json!({"text": text, "channel": channel.clone().unwrap_or_else(|| self.state.run.conversation.channel.clone())});
                self.succeed(id, output, false);
            }
        }
    }

    /// Posts text for a step: as a new message in `channel` when the workflow names one (even
    /// the run's own channel), else as a reply in the run's thread.
    fn post_to(&mut self, id: &str, channel: Option<&str>, text: &str) {
        let message = OutMessage {
            text: text.to_owned(),
            ..Default::default()
        };
        let key = MessageKey::of(self.state.run.id, &format!("post:{id}"));
        let to = match channel {
            Some(c) => Destination {
                platform: self.state.run.conversation.platform.clone(),
                channel: c.to_owned(),
                thread: None,
                private_to: None,
            },
            _ => self.thread(),
        };
        self.send(Outgoing::Post {
            run: Some(self.state.run.id),
            key,
            to,
            message,
            urgent: false,
        });
    }

    /// External tools need an approved approval step among the step's ancestors, unless the
    /// workflow set `auto = true` for the tool. `baton check` enforces the same at load time;
    /// this is the engine's own guard.
    fn external_tool_allowed(&self, id: &str, tool: &str) -> Result<(), String> {
        let Some(info) = self.cx.tools.get(tool) else {
            return Err(format!("unknown tool `{tool}`"));
        };
        if info.capability != Capability::External
            || self.cx.workflow.tools.get(tool).is_some_and(|p| p.auto)
        {
            return Ok(());
        }
        let approved = self.cx.workflow.ancestors(id).iter().any(|a| {
            self.state
                .approvals
                .get(a)
                .is_some_and(|x| x.status == ApprovalStatus::Approved)
        });
        if approved {
            Ok(())
        } else {
            Err(format!(
                "external tool `{tool}` needs an approved approval step before it"
            ))
        }
    }

    fn launch(&mut self, id: &str, work: Work, input: Value) {
        let step = self
            .cx
            .workflow
            .step(id)
            .expect("workflow steps match state");
        let now = self.now();
        let s = self.state.steps.get_mut(id).expect("step rows exist");
        s.status = StepStatus::Running;
        s.attempt += 1;
        s.started_at = Some(now);
        s.error = None;
        let attempt = s.attempt;
        let ev = self.event(
            AuditKind::StepStarted,
            Some(id),
            json!({"attempt": attempt, "input": input}),
        );
        self.audit(ev);
        self.reply(
            &format!("step:{id}:{attempt}:start"),
            render::step_started(id, attempt),
        );
        self.out.effects.push(Effect::Run(Job {
            run: self.state.run.id,
            step: id.to_owned(),
            attempt,
            timeout: step.timeout,
            work,
        }));
        // The worker enforces the timeout; this timer notices if no result came all the same
        // (a wedged tool, a lost worker), and flags the run.
        self.state
            .timers
            .insert(timer::deadline(id), now + step.timeout);
    }

    fn succeed(&mut self, id: &str, output: Value, report: bool) {
        let now = self.now();
        let run = self.state.run.id;
        let s = self.state.steps.get_mut(id).expect("step rows exist");
        s.status = StepStatus::Succeeded;
        s.output = Some(output.clone());
        s.finished_at = Some(now);
        let attempt = s.attempt;
        let took = format_duration(now - s.started_at.unwrap_or(now));
        let ev = self.event(
            AuditKind::StepFinished,
            Some(id),
            json!({"attempt": attempt, "output": output}),
        );
        self.audit(ev);
        if report {
            self.reply(
                &format!("step:{id}:{attempt}:end"),
                render::step_done(id, took, &output, run),
            );
        }
    }

    /// Fails a step without trying again (a refusal, a template error).
    fn fail_now(&mut self, id: &str, error: String) {
        let now = self.now();
        let s = self.state.steps.get_mut(id).expect("step rows exist");
        s.status = StepStatus::Failed;
        s.error = Some(error.clone());
        s.started_at.get_or_insert(now);
        s.finished_at = Some(now);
        let ev = self.event(
            AuditKind::StepFailed,
            Some(id),
            json!({"error": error, "retry": false}),
        );
        self.audit(ev);
        self.reply(
            &format!("step:{id}:failed"),
            render::step_failed(id, "0.0 s".into(), &error, None),
        );
    }

    fn step_finished(&mut self, id: &str, attempt: u32, result: Result<Value, String>) {
        let current = self.state.steps.get(id).map(|s| (s.status, s.attempt));
        if current != Some((StepStatus::Running, attempt)) {
            let ev = self.event(
                AuditKind::ResultIgnored,
                Some(id),
                json!({"attempt": attempt, "why": "not the current attempt"}),
            );
            return self.audit(ev);
        }
        self.state.timers.remove(&timer::deadline(id));
        let now = self.now();
        match result {
            Ok(output) => {
                self.out.effects.push(Effect::AttemptEnded {
                    run: self.state.run.id,
                    step: id.into(),
                    attempt,
                    outcome: AttemptOutcome::Succeeded,
                    detail: output.clone(),
                    at: now,
                });
                self.succeed(id, output.clone(), true);
                // A digest posts its text where the workflow says.
                if let Some(StepKind::Digest { channel, .. }) =
                    self.cx.workflow.step(id).map(|s| &s.kind)
                {
                    let text = output
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    self.post_to(id, channel.as_deref(), &text);
                }
            }
            Err(error) => {
                self.out.effects.push(Effect::AttemptEnded {
                    run: self.state.run.id,
                    step: id.into(),
                    attempt,
                    outcome: AttemptOutcome::Failed,
                    detail: json!({"error": error}),
                    at: now,
                });
                self.attempt_failed(id, error);
            }
        }
        self.advance();
    }

    fn attempt_failed(&mut self, id: &str, error: String) {
        let policy = &self
            .cx
            .workflow
            .step(id)
            .expect("workflow steps match state")
            .retry;
        let now = self.now();
        let s = self.state.steps.get_mut(id).expect("step rows exist");
        let took = format_duration(now - s.started_at.unwrap_or(now));
        let attempt = s.attempt;
        s.error = Some(error.clone());
        if s.retries_used < policy.max {
            s.retries_used += 1;
            s.status = StepStatus::Retrying;
            let wait = policy.delay(s.retries_used);
            let total = policy.max + 1;
            let next = s.retries_used + 1;
            self.state.timers.insert(timer::retry(id), now + wait);
            let ev = self.event(
                AuditKind::StepRetryScheduled,
                Some(id),
                json!({"attempt": attempt, "error": error, "retry_at": now + wait}),
            );
            self.audit(ev);
            let msg =
                render::step_failed(id, took, &error, Some((format_duration(wait), next, total)));
            self.reply(&format!("step:{id}:{attempt}:end"), msg);
        } else {
            s.status = StepStatus::Failed;
            s.finished_at = Some(now);
            let ev = self.event(
                AuditKind::StepFailed,
                Some(id),
                json!({"attempt": attempt, "error": error}),
            );
            self.audit(ev);
            self.reply(
                &format!("step:{id}:{attempt}:end"),
                render::step_failed(id, took, &error, None),
            );
        }
    }

    fn attempt_lost(&mut self, id: &str, attempt: u32) {
        let now = self.now();
        // An attempt ends once (the store ends only a running one): a result that arrived
        // after all, before this report, stands.
        self.out.effects.push(Effect::AttemptEnded {
            run: self.state.run.id,
            step: id.into(),
            attempt,
            outcome: AttemptOutcome::Lost,
            detail: json!({"error": "lost when the process running it stopped"}),
            at: now,
        });
        let current = self.state.steps.get(id).map(|s| (s.status, s.attempt));
        if current == Some((StepStatus::Running, attempt)) {
            let ev = self.event(
                AuditKind::AttemptLost,
                Some(id),
                json!({"attempt": attempt}),
            );
            self.audit(ev);
            // Run it again without spending a retry: the attempt never reported an outcome.
            let s = self.state.steps.get_mut(id).expect("step rows exist");
            s.status = StepStatus::Pending;
            self.start_step(id);
        }
        self.advance();
    }

    fn decide(
        &mut self,
        id: &str,
        actor: &Actor,
        approve: bool,
        reason: Option<String>,
        shown: Option<&str>,
    ) {
        let spec = match self.cx.workflow.step(id).map(|s| &s.kind) {
            Some(StepKind::Approval(spec)) => spec,
            Some(StepKind::Agent {
                approval: Some(spec),
                ..
            }) => spec,
            _ => return self.notice(format!("Step `{id}` is not an approval.")),
        };
        let approval = match self.pending(id) {
            Ok(a) => a,
            Err(why) => return self.notice(why),
        };
        if let Err(refusal) = approvals::may_decide(
            spec,
            &approval.approvers,
            &self.state.run.requested_by,
            actor,
            approve,
        )
        .and_then(|()| approvals::current(approval, shown))
        .and_then(|()| approvals::not_voted(approval, actor))
        .and_then(|()| approvals::not_editor(spec, approval, actor, approve))
        {
            return self.refuse(id, spec, actor, refusal, json!({"approve": approve}));
        }
        let reason = reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        if !approve && spec.reject_reason && reason.is_none() {
            return self.notice("Rejecting this step needs a reason.");
        }
        let now = self.now();
        let a = self.state.approvals.get_mut(id).expect("checked above");
        a.votes.push(Vote {
            actor: actor.clone(),
            approve,
            at: now,
            reason: reason.clone(),
        });
        let approvals = a.approvals().count();
        let rejections = a.rejections();
        let done = if approve {
            approvals >= a.quorum.max(1) as usize
        } else {
            rejections >= spec.rejections.max(1) as usize
        };
        if !done {
            // One of several: counted, shown on the request, and the request stays open.
            let a = a.clone();
            let ev = self
                .event(
                    AuditKind::ApprovalVoted,
                    Some(id),
                    json!({"approve": approve, "reason": reason, "approvals": approvals, "quorum": a.quorum, "rejections": rejections}),
                )
                .actor(actor);
            self.audit(ev);
            self.send(Outgoing::Edit {
                run: Some(self.state.run.id),
                key: MessageKey::of(self.state.run.id, &approval_key(id, &a)),
                message: render::approval_request(self.state.run.id, id, &a, spec),
            });
            self.edit_escalation(id, &a, spec);
            return self.notice(render::vote_recorded(
                approve,
                approvals,
                a.quorum,
                rejections,
                spec.rejections,
            ));
        }
        a.status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Rejected
        };
        a.decided_by = Some(actor.clone());
        a.decided_at = Some(now);
        a.reason = reason.clone();
        let a = a.clone();
        self.clear_ladder(id);
        let ev = self
            .event(
                AuditKind::ApprovalDecided,
                Some(id),
                json!({"decision": a.status.as_str(), "reason": reason, "summary": a.summary, "approved_by": a.approvals().map(|x| format!("{}:{}", x.platform, x.id)).collect::<Vec<_>>()}),
            )
            .actor(actor);
        self.audit(ev);
        self.send(Outgoing::Edit {
            run: Some(self.state.run.id),
            key: MessageKey::of(self.state.run.id, &approval_key(id, &a)),
            message: render::approval_outcome(id, &a),
        });
        self.edit_escalation(id, &a, spec);
        if a.payload.is_some() {
            // An agent's call: the agent goes on with the decision, whichever it is.
            self.resume_agent(id);
            self.notice(if approve {
                "You approved this call."
            } else {
                "You rejected this call."
            });
            return self.advance();
        }
        // `by` is whoever decided (the vote that reached the quorum); `approvers` credits
        // everyone who approved, in order.
        let approvers: Vec<String> = a.approvals().map(|x| x.display.clone()).collect();
        let mut output = json!({"decision": a.status.as_str(), "by": actor.display, "approvers": approvers, "at": now, "reason": reason});
        if let Some(content) = &a.content {
            output["payload"] = json!(content);
            output["edited_by"] = json!(
                a.editors
                    .iter()
                    .map(|e| e.display.clone())
                    .collect::<Vec<_>>()
            );
        }
        if approve {
            self.succeed(id, output, false);
        } else {
            self.reject_step(
                id,
                format!("rejected by {}", render::mention(actor)),
                output,
            );
        }
        self.notice(if approve {
            "You approved this step."
        } else {
            "You rejected this step."
        });
        self.advance();
    }

    fn reject_step(&mut self, id: &str, error: String, output: Value) {
        let now = self.now();
        let s = self.state.steps.get_mut(id).expect("step rows exist");
        s.status = StepStatus::Failed;
        s.error = Some(error);
        s.output = Some(output);
        s.finished_at = Some(now);
    }

    fn timer_fired(&mut self, key: &str, due: DateTime<Utc>) {
        // Already fired, cancelled, or set again for later since this tick read it: a timer
        // acts once, at its time.
        if self.state.timers.get(key) != Some(&due) {
            return;
        }
        self.state.timers.remove(key);
        if key == timer::STALL {
            self.stalled(None);
        } else if let Some(step) = key.strip_prefix("deadline:") {
            let past = self.state.steps.get(step).is_some_and(|s| {
                s.status == StepStatus::Running
                    && s.started_at.is_some_and(|t| {
                        self.cx
                            .workflow
                            .step(step)
                            .is_some_and(|w| t + w.timeout <= self.cx.now)
                    })
            });
            if past {
                self.stalled(Some(step));
            }
        } else if let Some(step) = key.strip_prefix("remind:") {
            self.remind(step);
        } else if let Some(step) = key.strip_prefix("escalate:") {
            self.escalate(step);
        } else if let Some(step) = key.strip_prefix("expire:") {
            let Some(a) = self.state.approvals.get_mut(step) else {
                return;
            };
            if a.status != ApprovalStatus::Pending {
                return;
            }
            let approve = match self.cx.workflow.step(step).map(|s| &s.kind) {
                // An agent's call is never made because nobody answered.
                Some(StepKind::Approval(spec)) => spec.on_timeout == TimeoutOutcome::Approve,
                _ => false,
            };
            // Approved on expiry counts as approved for what follows (external tools too):
            // the workflow said so.
            a.status = if approve {
                ApprovalStatus::Approved
            } else {
                ApprovalStatus::Expired
            };
            a.decided_at = Some(self.cx.now);
            let a = a.clone();
            self.clear_ladder(step);
            let ev = self.event(
                AuditKind::ApprovalExpired,
                Some(step),
                json!({"requested_at": a.requested_at, "expires_at": a.expires_at, "outcome": if approve { "approve" } else { "reject" }}),
            );
            self.audit(ev);
            self.send(Outgoing::Edit {
                run: Some(self.state.run.id),
                key: MessageKey::of(self.state.run.id, &approval_key(step, &a)),
                message: render::approval_outcome(step, &a),
            });
            if let Some(StepKind::Approval(spec)) = self.cx.workflow.step(step).map(|s| &s.kind) {
                self.edit_escalation(step, &a, spec);
            }
            if a.payload.is_some() {
                self.resume_agent(step);
                return self.advance();
            }
            if approve {
                self.succeed(
                    step,
                    json!({"decision": "expired", "outcome": "approved", "at": self.cx.now}),
                    false,
                );
            } else {
                self.reject_step(
                    step,
                    "expired with no decision".into(),
                    json!({"decision": "expired"}),
                );
            }
            self.advance();
        } else if let Some(step) = key.strip_prefix("retry:")
            && self.state.steps.get(step).map(|s| s.status) == Some(StepStatus::Retrying)
        {
            self.state.steps.get_mut(step).expect("checked").status = StepStatus::Pending;
            self.start_step(step);
            self.advance();
        }
    }

    /// The approval's spec, for an approval step or an agent step's calls.
    fn approval_spec(&self, id: &str) -> Option<&'a ApprovalSpec> {
        match self.cx.workflow.step(id).map(|s| &s.kind) {
            Some(StepKind::Approval(spec)) => Some(spec),
            Some(StepKind::Agent {
                approval: Some(spec),
                ..
            }) => Some(spec),
            _ => None,
        }
    }

    /// A decided (or expired, or cancelled) approval climbs no further.
    fn clear_ladder(&mut self, id: &str) {
        for key in [timer::expire(id), timer::remind(id), timer::escalate(id)] {
            self.state.timers.remove(&key);
        }
    }

    /// The first rung: the approvers who have not decided yet are mentioned again.
    fn remind(&mut self, id: &str) {
        let Some(spec) = self.approval_spec(id) else {
            return;
        };
        let Some(a) = self.state.approvals.get_mut(id) else {
            return;
        };
        if a.status != ApprovalStatus::Pending {
            return;
        }
        a.reminded_at = Some(self.cx.now);
        let a = a.clone();
        let ev = self.event(
            AuditKind::ApprovalReminded,
            Some(id),
            json!({"approvers": a.approvers}),
        );
        self.audit(ev);
        let waiting: Vec<String> = a
            .approvers
            .iter()
            .filter(|x| !a.votes.iter().any(|v| v.actor.is_named_by(x)))
            .cloned()
            .collect();
        self.reply(
            &format!("{}:reminder", approval_key(id, &a)),
            render::approval_reminder(id, &a, &waiting),
        );
        self.send(Outgoing::Edit {
            run: Some(self.state.run.id),
            key: MessageKey::of(self.state.run.id, &approval_key(id, &a)),
            message: render::approval_request(self.state.run.id, id, &a, spec),
        });
    }

    /// The second rung: the escalation's people may decide too, and the request is posted in
    /// the escalation channel (with the same buttons) or mentioned in the thread.
    fn escalate(&mut self, id: &str) {
        let Some(spec) = self.approval_spec(id) else {
            return;
        };
        let Some(a) = self.state.approvals.get_mut(id) else {
            return;
        };
        if a.status != ApprovalStatus::Pending {
            return;
        }
        a.escalated_at = Some(self.cx.now);
        for extra in &spec.escalate_to.approvers {
            if !a.approvers.contains(extra) {
                a.approvers.push(extra.clone());
            }
        }
        let a = a.clone();
        let ev = self.event(
            AuditKind::ApprovalEscalated,
            Some(id),
            json!({"channel": spec.escalate_to.channel, "approvers": spec.escalate_to.approvers}),
        );
        self.audit(ev);
        let request = render::approval_request(self.state.run.id, id, &a, spec);
        match &spec.escalate_to.channel {
            Some(channel) => {
                let mut message = request.clone();
                message.text = render::escalated_request(&self.state.run, id, &message.text);
                message.mentions = render::mentionable(&spec.escalate_to.approvers);
                self.send(Outgoing::Post {
                    run: Some(self.state.run.id),
                    key: MessageKey::of(self.state.run.id, &escalation_key(id, &a)),
                    to: Destination {
                        platform: self.state.run.conversation.platform.clone(),
                        channel: channel.clone(),
                        thread: None,
                        private_to: None,
                    },
                    message,
                    urgent: false,
                });
            }
            None => self.reply(
                &escalation_key(id, &a),
                render::approval_reminder(id, &a, &spec.escalate_to.approvers),
            ),
        }
        self.send(Outgoing::Edit {
            run: Some(self.state.run.id),
            key: MessageKey::of(self.state.run.id, &approval_key(id, &a)),
            message: request,
        });
    }

    /// The copy of the request in the escalation channel follows the original.
    fn edit_escalation(&mut self, id: &str, a: &Approval, spec: &ApprovalSpec) {
        if a.escalated_at.is_none() || spec.escalate_to.channel.is_none() {
            return;
        }
        let mut message = if a.status == ApprovalStatus::Pending {
            render::approval_request(self.state.run.id, id, a, spec)
        } else {
            render::approval_outcome(id, a)
        };
        message.text = render::escalated_request(&self.state.run, id, &message.text);
        self.send(Outgoing::Edit {
            run: Some(self.state.run.id),
            key: MessageKey::of(self.state.run.id, &escalation_key(id, a)),
            message,
        });
    }

    /// An approver changes the payload: the change is recorded before and after, the votes on
    /// the old payload no longer count, and a fresh request goes out. Under four-eyes the
    /// editor's own approval will not count.
    fn edit(&mut self, id: &str, actor: &Actor, text: &str, shown: Option<&str>) {
        let Some(StepKind::Approval(spec)) = self.cx.workflow.step(id).map(|s| &s.kind) else {
            return self.notice(format!("Step `{id}` has no payload to edit."));
        };
        if !spec.editable {
            return self.notice(format!("The payload of step `{id}` cannot be edited."));
        }
        let approval = match self.pending(id) {
            Ok(a) => a,
            Err(why) => return self.notice(why),
        };
        if let Err(refusal) = approvals::may_decide(
            spec,
            &approval.approvers,
            &self.state.run.requested_by,
            actor,
            false,
        )
        .and_then(|()| approvals::current(approval, shown))
        {
            return self.refuse(id, spec, actor, refusal, json!({"edit": true}));
        }
        let text = text.trim();
        if text.is_empty() {
            return self.notice("An edited payload cannot be empty; nothing changed.");
        }
        if text.chars().count() > MAX_PAYLOAD_CHARS {
            return self.notice(format!(
                "An edited payload is limited to {MAX_PAYLOAD_CHARS} characters; nothing changed."
            ));
        }
        if approval.content.as_deref() == Some(text) {
            return self.notice("That is the payload as it stands; nothing changed.");
        }
        let a = self.state.approvals.get_mut(id).expect("checked above");
        let before = a.content.replace(text.to_owned());
        let cleared = a.votes.len();
        a.votes.clear();
        if !a
            .editors
            .iter()
            .any(|e| e.platform == actor.platform && e.id == actor.id)
        {
            a.editors.push(actor.clone());
        }
        let ev = self
            .event(
                AuditKind::ApprovalEdited,
                Some(id),
                json!({"before": before, "after": text, "votes_cleared": cleared}),
            )
            .actor(actor);
        self.audit(ev);
        self.repost(id, spec, Some(actor));
        self.notice(if spec.allow_self_approval {
            "Your edit is saved; approvals start again on the new payload."
        } else {
            "Your edit is saved; approvals start again on the new payload, and someone else must approve it (four-eyes rule)."
        });
    }

    /// The approval of `id` while it waits for a decision, or what to tell someone acting on
    /// one that does not.
    fn pending(&self, id: &str) -> Result<&Approval, String> {
        let approval = self
            .state
            .approvals
            .get(id)
            .ok_or_else(|| "This approval has not been requested yet.".to_owned())?;
        if approval.status != ApprovalStatus::Pending {
            return Err(render::already_decided(id, approval));
        }
        Ok(approval)
    }

    /// A click that changes nothing: recorded, answered privately, and, when the person acted
    /// on an old copy, the request as it stands goes out again.
    fn refuse(
        &mut self,
        id: &str,
        spec: &ApprovalSpec,
        actor: &Actor,
        refusal: approvals::Refusal,
        mut data: Value,
    ) {
        data["reason"] = json!(refusal.code());
        let ev = self
            .event(AuditKind::ApprovalRefused, Some(id), data)
            .actor(actor);
        self.audit(ev);
        if refusal == approvals::Refusal::Stale {
            self.repost(id, spec, None);
        }
        self.notice(refusal.notice());
    }

    /// The request as it stands goes out afresh; the copy before it loses its buttons and
    /// points to the new one.
    fn repost(&mut self, id: &str, spec: &ApprovalSpec, edited_by: Option<&Actor>) {
        let Some(a) = self.state.approvals.get_mut(id) else {
            return;
        };
        let old = a.clone();
        a.round += 1;
        let a = a.clone();
        self.send(Outgoing::Edit {
            run: Some(self.state.run.id),
            key: MessageKey::of(self.state.run.id, &approval_key(id, &old)),
            message: render::approval_replaced(id, &old, edited_by),
        });
        self.reply(
            &approval_key(id, &a),
            render::approval_request(self.state.run.id, id, &a, spec),
        );
        if old.escalated_at.is_some()
            && let Some(channel) = &spec.escalate_to.channel
        {
            let mut message = render::approval_request(self.state.run.id, id, &a, spec);
            message.text = render::escalated_request(&self.state.run, id, &message.text);
            self.send(Outgoing::Edit {
                run: Some(self.state.run.id),
                key: MessageKey::of(self.state.run.id, &escalation_key(id, &old)),
                message: render::approval_replaced(id, &old, edited_by),
            });
            self.send(Outgoing::Post {
                run: Some(self.state.run.id),
                key: MessageKey::of(self.state.run.id, &escalation_key(id, &a)),
                to: Destination {
                    platform: self.state.run.conversation.platform.clone(),
                    channel: channel.clone(),
                    thread: None,
                    private_to: None,
                },
                message,
                urgent: false,
            });
        }
    }

    /// Whoever started the run, an operator, or anyone allowed to start its workflow there
    /// may cancel or retry it.
    fn may_steer(&self, actor: &Actor) -> bool {
        let run = &self.state.run;
        let own = actor.platform == run.requested_by.platform && actor.id == run.requested_by.id;
        own || actor.is_operator() || self.cx.workflow.may_start(actor, &run.conversation.channel)
    }

    /// The stall timer fired: the run has made no progress for its threshold. The thread
    /// says what it is stuck on, with Retry and Cancel.
    /// `past_deadline`: the step whose timeout passed with no result, when that is why.
    fn stalled(&mut self, past_deadline: Option<&str>) {
        if self.state.run.status != RunStatus::Running || self.state.run.stalled_at.is_some() {
            return;
        }
        let now = self.now();
        let stuck: Vec<(String, Option<DateTime<Utc>>)> = self
            .state
            .steps
            .iter()
            .filter(|(_, s)| matches!(s.status, StepStatus::Running | StepStatus::Retrying))
            .map(|(id, s)| (id.clone(), s.started_at))
            .collect();
        self.state.run.stalled_at = Some(now);
        let idle = now - self.state.run.updated_at;
        let ev = self.event(
            AuditKind::RunStalled,
            None,
            json!({"idle_since": self.state.run.updated_at, "steps": stuck.iter().map(|(id, _)| id).collect::<Vec<_>>(), "past_deadline": past_deadline}),
        );
        self.audit(ev);
        let mut alert = render::stall_alert(self.state.run.id, idle, &stuck, now);
        if let Some(step) = past_deadline {
            alert.text = render::past_deadline(self.state.run.id, step, &alert.text);
        }
        self.reply(&stall_key(now), alert);
    }

    /// Retry: every step the run is stuck on starts a new attempt now (an old attempt's
    /// result, should it still come, is ignored), and the alert says who retried.
    fn refuse_retry(&mut self, actor: &Actor) {
        let run = &self.state.run;
        let text = format!(
            "You may not retry run {}: only its requester or people allowed to start `{}` can.",
            run.id, run.workflow
        );
        let ev = self
            .event(AuditKind::TriggerRefused, None, json!({"action": "retry"}))
            .actor(actor);
        self.audit(ev);
        self.notice(text);
    }

    /// A message of this run did not go through: the thread says which and why (or, when it
    /// was the thread's root, the channel does), with Retry (and Cancel while the run is under
    /// way). Said once per message: a second report of the same kind changes nothing. An alert
    /// that cannot be delivered either falls back to the requester, privately, when it was
    /// about the root; nothing is said about the loss of that private note itself.
    fn delivery_failed(
        &mut self,
        outbox: i64,
        key: &str,
        channel: &str,
        error: &str,
        permanent: bool,
    ) {
        let run = self.state.run.id;
        let now = self.now();
        if let Some((about, alert)) = self
            .state
            .run
            .alerts
            .iter()
            .find(|(id, _)| alert_key(run, **id).0 == key)
            .map(|(id, a)| (*id, a.clone()))
        {
            if alert.in_channel {
                self.tell_requester_privately(about, &alert.channel, error);
            }
            return;
        }
        if key.ends_with(":private") {
            return;
        }
        if self
            .state
            .run
            .alerts
            .get(&outbox)
            .is_some_and(|a| a.open && a.permanent == permanent)
        {
            // Said already, and nothing changed.
            return;
        }
        let is_root = key == MessageKey::root(run).0;
        if is_root {
            self.state.run.conversation_lost = Some(error.to_owned());
        }
        let ev = self.event(
            AuditKind::DeliveryAlerted,
            None,
            json!({"message": key, "channel": channel, "error": error, "permanent": permanent}),
        );
        self.audit(ev);
        let active = !self.state.run.status.is_terminal();
        let message = if is_root {
            render::root_alert(&self.state.run, error, permanent, self.cx.base_url)
        } else {
            render::delivery_alert(run, channel, error, permanent, active)
        };
        match self.state.run.alerts.get_mut(&outbox) {
            Some(a) => {
                a.open = true;
                a.permanent = permanent;
                self.send(Outgoing::Edit {
                    run: Some(run),
                    key: alert_key(run, outbox),
                    message,
                });
            }
            None => {
                let to = if is_root {
                    Destination {
                        thread: None,
                        ..self.thread()
                    }
                } else {
                    self.thread()
                };
                self.state.run.alerts.insert(
                    outbox,
                    DeliveryAlert {
                        about: key.to_owned(),
                        channel: channel.to_owned(),
                        permanent,
                        open: true,
                        raised_at: now,
                        in_channel: is_root,
                    },
                );
                self.send(Outgoing::Post {
                    run: Some(run),
                    key: alert_key(run, outbox),
                    to,
                    message,
                    urgent: true,
                });
            }
        }
    }

    /// The channel would not take the alert about a root message either: the person who
    /// started the run hears of it privately, when a person did.
    fn tell_requester_privately(&mut self, about: i64, channel: &str, error: &str) {
        let run = &self.state.run;
        let requester = &run.requested_by;
        if requester.is_bot || requester.platform != run.conversation.platform {
            return;
        }
        let key = MessageKey(format!("{}:private", alert_key(run.id, about).0));
        let message = render::root_alert_private(run, channel, error, self.cx.base_url);
        let to = Destination {
            platform: run.conversation.platform.clone(),
            channel: channel.to_owned(),
            thread: None,
            private_to: Some(requester.id.clone()),
        };
        self.send(Outgoing::Post {
            run: Some(run.id),
            key,
            to,
            message,
            urgent: true,
        });
    }

    /// A message this run raised an alert about went through after all: the alert says so
    /// and loses its buttons.
    fn delivery_recovered(&mut self, outbox: i64, key: &str) {
        let run = self.state.run.id;
        let now = self.now();
        if key == MessageKey::root(run).0 {
            self.state.run.conversation_lost = None;
        }
        let Some(alert) = self.state.run.alerts.get_mut(&outbox) else {
            return;
        };
        if !alert.open {
            return;
        }
        alert.open = false;
        let channel = alert.channel.clone();
        let message = render::delivery_recovered(run, &channel, now);
        let ev = self.event(
            AuditKind::DeliveryRecovered,
            None,
            json!({"message": key, "channel": channel}),
        );
        self.audit(ev);
        self.send(Outgoing::Edit {
            run: Some(run),
            key: alert_key(run, outbox),
            message,
        });
    }

    fn retry(&mut self, actor: &Actor) {
        if !self.may_steer(actor) {
            return self.refuse_retry(actor);
        }
        // Messages that could not be delivered are sent again whatever else is stuck.
        self.out.effects.push(Effect::Redeliver(self.state.run.id));
        let now = self.now();
        let stuck: Vec<String> = self
            .state
            .steps
            .iter()
            .filter(|(_, s)| matches!(s.status, StepStatus::Running | StepStatus::Retrying))
            .map(|(id, _)| id.clone())
            .collect();
        if stuck.is_empty() {
            let ev = self
                .event(
                    AuditKind::RunRetried,
                    None,
                    json!({"steps": [], "redeliver": true}),
                )
                .actor(actor);
            self.audit(ev);
            return self.notice(format!(
                "Run {} is not stuck on any step; messages that could not be delivered are sent again.",
                self.state.run.id
            ));
        }
        for id in &stuck {
            let s = self.state.steps.get_mut(id).expect("listed above");
            if s.status == StepStatus::Running {
                self.out.effects.push(Effect::AttemptEnded {
                    run: self.state.run.id,
                    step: id.clone(),
                    attempt: s.attempt,
                    outcome: AttemptOutcome::Lost,
                    detail: json!({"error": "abandoned by a retry", "by": format!("{}:{}", actor.platform, actor.id)}),
                    at: now,
                });
            }
            s.status = StepStatus::Pending;
            self.state.timers.remove(&timer::retry(id));
            self.start_step(id);
        }
        let ev = self
            .event(AuditKind::RunRetried, None, json!({"steps": stuck}))
            .actor(actor);
        self.audit(ev);
        if let Some(at) = self.state.run.stalled_at.take() {
            self.send(Outgoing::Edit {
                run: Some(self.state.run.id),
                key: MessageKey::of(self.state.run.id, &stall_key(at)),
                message: render::stall_resolved(&render::retried_by(actor, now)),
            });
        }
        self.notice(format!("Retrying {}.", stuck.join(", ")));
        self.advance();
    }

    fn cancel(&mut self, actor: &Actor) {
        let run = &self.state.run;
        if !self.may_steer(actor) {
            let text = format!(
                "You may not cancel run {}: only its requester or people allowed to start `{}` can.",
                run.id, run.workflow
            );
            let ev = self
                .event(AuditKind::TriggerRefused, None, json!({"action": "cancel"}))
                .actor(actor);
            self.audit(ev);
            return self.notice(text);
        }
        let now = self.now();
        let run_id = self.state.run.id;
        for (id, s) in self.state.steps.iter_mut() {
            if s.status.is_terminal() {
                continue;
            }
            if s.status == StepStatus::Running {
                self.out.effects.push(Effect::AttemptEnded {
                    run: self.state.run.id,
                    step: id.clone(),
                    attempt: s.attempt,
                    outcome: AttemptOutcome::Cancelled,
                    detail: Value::Null,
                    at: now,
                });
            }
            s.status = StepStatus::Cancelled;
            s.finished_at = Some(now);
        }
        let mut cancelled = Vec::new();
        for (id, a) in self.state.approvals.iter_mut() {
            if a.status == ApprovalStatus::Pending {
                a.status = ApprovalStatus::Cancelled;
                a.decided_at = Some(now);
                cancelled.push((id.clone(), a.clone()));
            }
        }
        for (id, a) in cancelled {
            self.send(Outgoing::Edit {
                run: Some(run_id),
                key: MessageKey::of(run_id, &approval_key(&id, &a)),
                message: render::approval_outcome(&id, &a),
            });
            if let Some(spec) = self.approval_spec(&id) {
                self.edit_escalation(&id, &a, spec);
            }
        }
        self.state.timers.clear();
        self.state.run.status = RunStatus::Cancelled;
        self.state.run.error = Some(format!("Cancelled by {}.", render::mention(actor)));
        let ev = self
            .event(AuditKind::RunCancelled, None, json!({}))
            .actor(actor);
        self.audit(ev);
        self.notice(format!("Run {run_id} cancelled."));
    }

    /// Derives the run's status from its steps.
    fn update_status(&mut self) {
        if self.state.run.status == RunStatus::Cancelled {
            return;
        }
        let statuses: Vec<StepStatus> = self.state.steps.values().map(|s| s.status).collect();
        let status = if statuses.iter().all(|s| s.is_terminal()) {
            // An agent's rejected call is an answer the agent works with, not the run's.
            let rejected = self.state.approvals.values().any(|a| {
                a.payload.is_none()
                    && matches!(a.status, ApprovalStatus::Rejected | ApprovalStatus::Expired)
            });
            if rejected {
                RunStatus::Rejected
            } else if statuses.contains(&StepStatus::Failed) {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            }
        } else if statuses
            .iter()
            .any(|s| matches!(s, StepStatus::Running | StepStatus::Retrying))
        {
            RunStatus::Running
        } else if statuses.contains(&StepStatus::Waiting) {
            RunStatus::WaitingApproval
        } else {
            RunStatus::Running
        };
        self.state.run.status = status;
    }

    /// Common ending: status change audited, root edited, summary posted when it ended.
    fn finish(mut self, before: Option<RunStatus>) -> Transition {
        let now = self.now();
        self.state.run.updated_at = now;
        let after = self.state.run.status;
        // Progress (anything but a ledger entry: a step moved, a post, a vote) re-arms the
        // stall timer; a run waiting for people has its approval's ladder instead.
        let progressed = self
            .out
            .effects
            .iter()
            .any(|e| !matches!(e, Effect::Audit(_)));
        if after == RunStatus::Running {
            if progressed {
                let threshold = self.cx.workflow.stall_after.unwrap_or(self.cx.stall_after);
                self.state
                    .timers
                    .insert(timer::STALL.to_owned(), now + threshold);
            }
        } else {
            self.state.timers.remove(timer::STALL);
        }
        // A stalled run that moves again says so under its alert.
        if progressed
            && let Some(at) = self.state.run.stalled_at
            && at < now
        {
            self.state.run.stalled_at = None;
            let how = if after.is_terminal() {
                render::run_ended(after, now)
            } else {
                render::moving_again(now)
            };
            self.send(Outgoing::Edit {
                run: Some(self.state.run.id),
                key: MessageKey::of(self.state.run.id, &stall_key(at)),
                message: render::stall_resolved(&how),
            });
        }
        if before.is_some_and(|b| b != after) || (before.is_none() && after != RunStatus::Running) {
            if after.is_terminal() {
                self.state.run.finished_at = Some(now);
                self.state.timers.clear();
            }
            let ev = self.event(
                AuditKind::RunStatusChanged,
                None,
                json!({"from": before.map(|b| b.as_str()), "to": after.as_str()}),
            );
            self.audit(ev);
            let root = render::root(self.state);
            self.send(Outgoing::Edit {
                run: Some(self.state.run.id),
                key: MessageKey::root(self.state.run.id),
                message: root,
            });
            if after.is_terminal() {
                let summary = render::summary(self.state, self.cx.workflow, now);
                self.reply("summary", summary);
            }
        }
        self.out
    }
}

/// The message key of an approval request: one per request, as an agent step may ask more
/// than once.
fn new_approval(
    spec: &ApprovalSpec,
    summary: String,
    now: DateTime<Utc>,
    payload: Option<Value>,
) -> Approval {
    Approval {
        status: ApprovalStatus::Pending,
        approvers: spec.approvers.clone(),
        summary,
        requested_at: now,
        expires_at: now + spec.timeout,
        decided_by: None,
        decided_at: None,
        reason: None,
        payload,
        quorum: spec.quorum,
        votes: Vec::new(),
        reminded_at: None,
        escalated_at: None,
        content: None,
        editors: Vec::new(),
        round: 1,
    }
}

/// The message key of a stall alert: one per time the run stalled.
/// The key of the alert about outbox entry `outbox`: one alert per message, edited as it
/// changes.
fn alert_key(run: crate::core::ids::RunId, outbox: i64) -> MessageKey {
    MessageKey::of(run, &format!("delivery:{outbox}"))
}

fn stall_key(at: DateTime<Utc>) -> String {
    format!("stall:{}", at.timestamp_millis())
}

fn escalation_key(id: &str, a: &Approval) -> String {
    format!("{}:escalation", approval_key(id, a))
}

fn approval_key(id: &str, a: &Approval) -> String {
    let round = a
        .payload
        .as_ref()
        .and_then(|p| p["round"].as_u64())
        .unwrap_or(u64::from(a.round));
    if round > 1 {
        format!("approval:{id}:{round}")
    } else {
        format!("approval:{id}")
    }
}
