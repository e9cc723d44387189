//! From a core event to engine commands: the single path every adapter's inbound traffic takes.

use super::{Engine, EngineError, StartOutcome, StartRequest};
use crate::core::audit::{AuditEvent, AuditKind};
use crate::core::engine::Command;
use crate::core::event::{EventKind, InboundEvent};
use crate::core::ids::{ActionId, RunId};
use crate::core::trigger::{self, BatonCommand, MessageFacts, SlashMatch};
use crate::core::workflow::Workflow;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// What an adapter should tell the person who sent the event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Response {
    /// Private notices, shown only to the sender.
    pub notices: Vec<String>,
    /// Runs started by this event.
    pub started: Vec<RunId>,
}

impl Response {
    fn notice(text: impl Into<String>) -> Self {
        Self {
            notices: vec![text.into()],
            started: vec![],
        }
    }
}

/// How much of a payload Baton could not read the ledger keeps, to see what it was.
const UNREADABLE_EXCERPT: usize = 500;

impl Engine {
    /// Records a payload from a platform that could not be read at all (it was acknowledged
    /// all the same, so the platform does not send it again): the ledger keeps what it was.
    pub async fn unreadable(&self, platform: &str, what: &str, error: &str, text: &str) {
        let excerpt: String = text.chars().take(UNREADABLE_EXCERPT).collect();
        let ev = AuditEvent::new(
            self.clock.now(),
            AuditKind::InboundUnreadable,
            None,
            json!({"platform": platform, "what": what, "error": error, "bytes": text.len(), "excerpt": excerpt}),
        );
        tracing::warn!(
            platform,
            what,
            error,
            "a payload Baton cannot read was acknowledged and recorded"
        );
        if let Err(e) = self.store.audit_append(vec![ev]).await {
            tracing::warn!(error = %e, "could not record an unreadable payload");
        }
    }

    /// Handles an event the platform was already told arrived (Slack and Discord are
    /// acknowledged first, and do not send it again): while the database is out of reach
    /// (restarting, failing over) it is tried again with backoff rather than lost. A try
    /// that went through although its answer was lost is recognised by the event's id, so
    /// nothing starts or counts twice.
    pub async fn handle_acknowledged(
        self: &Arc<Self>,
        ev: InboundEvent,
    ) -> Result<Response, EngineError> {
        super::durably("an event Slack or Discord was told arrived", || {
            self.handle(ev.clone())
        })
        .await
    }

    /// Handles one inbound event end to end.
    #[tracing::instrument(skip_all, fields(event_id = %ev.id))]
    pub async fn handle(self: &Arc<Self>, ev: InboundEvent) -> Result<Response, EngineError> {
        match ev.kind.clone() {
            EventKind::Slash {
                command,
                text,
                options,
            } => {
                let now = self.clock.now();
                let received = AuditEvent::new(now, AuditKind::TriggerReceived, None, json!({"kind": "slash", "command": command, "text": text, "channel": ev.conversation.channel, "event_id": ev.id}))
                    .actor(&ev.actor);
                match trigger::match_slash(&self.workflows, &command, &text, options.as_ref()) {
                    SlashMatch::Start { workflow, inputs } => {
                        self.start_for(&ev, workflow, inputs, ev.id.clone(), received)
                            .await
                    }
                    SlashMatch::Baton(BatonCommand::Cancel(run)) => {
                        self.store.audit_append(vec![received]).await?;
                        let notice = self
                            .submit(
                                run,
                                Command::Cancel {
                                    actor: ev.actor.clone(),
                                },
                            )
                            .await?;
                        Ok(Response {
                            notices: notice.into_iter().collect(),
                            started: vec![],
                        })
                    }
                    SlashMatch::Baton(BatonCommand::Help) => {
                        Ok(Response::notice(trigger::help(&self.workflows)))
                    }
                    SlashMatch::Usage(text) | SlashMatch::Unknown(text) => {
                        Ok(Response::notice(text))
                    }
                }
            }
            EventKind::Message { text, mentions_bot } => {
                let facts = MessageFacts {
                    channel: &ev.conversation.channel,
                    text: &text,
                    mentions_bot,
                    from_bot: ev.actor.is_bot,
                    in_thread: ev.conversation.thread.is_some(),
                };
                let mut out = Response::default();
                for (workflow, inputs) in trigger::match_message(&self.workflows, facts) {
                    let received = AuditEvent::new(self.clock.now(), AuditKind::TriggerReceived, None, json!({"kind": "message", "workflow": workflow.name, "text": text, "channel": ev.conversation.channel, "event_id": ev.id}))
                        .actor(&ev.actor);
                    // One message may start several workflows; each gets its own event id.
                    let id = format!("{}:{}", ev.id, workflow.name);
                    let r = self.start_for(&ev, workflow, inputs, id, received).await?;
                    out.notices.extend(r.notices);
                    out.started.extend(r.started);
                }
                Ok(out)
            }
            EventKind::UnreadableAction { action } => {
                let ev = AuditEvent::new(
                    self.clock.now(),
                    AuditKind::ActionUnreadable,
                    None,
                    json!({"action": action, "channel": ev.conversation.channel, "event_id": ev.id}),
                )
                .actor(&ev.actor);
                self.store.audit_append(vec![ev]).await?;
                Ok(Response::notice(
                    crate::core::engine::render::button_not_valid(),
                ))
            }
            EventKind::Action { action, reason } => {
                let (run, cmd) = match action {
                    ActionId::Approve { run, step, shown } => (
                        run,
                        Command::Decide {
                            step,
                            actor: ev.actor.clone(),
                            approve: true,
                            reason: None,
                            shown,
                        },
                    ),
                    ActionId::Reject { run, step, shown } => (
                        run,
                        Command::Decide {
                            step,
                            actor: ev.actor.clone(),
                            approve: false,
                            reason,
                            shown,
                        },
                    ),
                    ActionId::Edit { run, step, shown } => (
                        run,
                        Command::Edit {
                            step,
                            actor: ev.actor.clone(),
                            text: reason.unwrap_or_default(),
                            shown,
                        },
                    ),
                    ActionId::Cancel { run } => (
                        run,
                        Command::Cancel {
                            actor: ev.actor.clone(),
                        },
                    ),
                    ActionId::Retry { run } => (
                        run,
                        Command::Retry {
                            actor: ev.actor.clone(),
                        },
                    ),
                };
                // A click delivered twice (retries, two connections) is applied once.
                let notice = self.submit_event(run, Some(&ev.id), cmd).await?;
                Ok(Response {
                    notices: notice.into_iter().collect(),
                    started: vec![],
                })
            }
        }
    }

    async fn start_for(
        self: &Arc<Self>,
        ev: &InboundEvent,
        workflow: Arc<Workflow>,
        inputs: Map<String, Value>,
        event_id: String,
        received: AuditEvent,
    ) -> Result<Response, EngineError> {
        let req = StartRequest {
            workflow,
            inputs,
            actor: ev.actor.clone(),
            conversation: ev.conversation.clone(),
            event_id,
            late: false,
            received: Some(received),
        };
        Ok(match self.start_run(req).await? {
            StartOutcome::Started(run) => Response {
                notices: vec![],
                started: vec![run],
            },
            StartOutcome::Duplicate(_) => Response::default(),
            StartOutcome::Refused(text) => Response::notice(text),
        })
    }
}
