//! The durable engine's pure half: run state, the commands that change it, and the effects a
//! change asks for. [`machine::apply`] is a function of (state, command, now); the driver in
//! `src/engine/` applies it inside one store transaction and carries out the effects.

pub mod machine;
pub mod render;
pub mod state;

pub use machine::{Context, abandon, apply, start};

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
pub use state::*;

use crate::core::audit::AuditEvent;
use crate::core::event::Actor;
use crate::core::ids::{RunId, StepId};
use crate::core::message::Outgoing;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

/// Something that happened to a run, to be applied by the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A step attempt came back from a worker.
    StepFinished {
        step: StepId,
        attempt: u32,
        result: Result<Value, String>,
    },
    /// Someone clicked Approve or Reject.
    Decide {
        step: StepId,
        actor: Actor,
        approve: bool,
        reason: Option<String>,
        /// The hash of the request the person saw, when the button carried it.
        shown: Option<String>,
    },
    /// Someone changed an approval's payload (where the step allows it).
    Edit {
        step: StepId,
        actor: Actor,
        text: String,
        shown: Option<String>,
    },
    /// A persisted timer came due: `due` is the instant it was set for, as the timer loop
    /// read it. Only that timer fires: one re-armed since (or already fired) is left alone, so
    /// a tick repeated after a crash or by a second loop fires nothing twice.
    TimerFired { key: String, due: DateTime<Utc> },
    /// Someone asked to stop the run.
    Cancel { actor: Actor },
    /// Someone asked a stalled run to try again what it is stuck on (steps, and messages
    /// that could not be delivered).
    Retry { actor: Actor },
    /// One of the run's messages did not go through: the platform refused it for good
    /// (`permanent`), or it kept failing past the outbox's time budget (it is still tried).
    DeliveryFailed {
        /// The outbox entry.
        outbox: i64,
        key: String,
        channel: String,
        error: String,
        permanent: bool,
    },
    /// A message the run raised a delivery alert about went through after all.
    DeliveryRecovered { outbox: i64, key: String },
    /// A step attempt was in flight when the process stopped; it will not report back.
    AttemptLost { step: StepId, attempt: u32 },
    /// A running agent wants an external tool called: the step waits for a decision on this
    /// exact payload.
    AgentWantsTool {
        step: StepId,
        attempt: u32,
        call: crate::core::agents::ToolCall,
        payload_hash: String,
    },
    /// A running step has something to show in the thread (an agent's tool call, a refusal).
    /// `key` names the note within the attempt, so a repeated note is the same message.
    StepNote {
        step: StepId,
        attempt: u32,
        key: String,
        message: crate::core::message::OutMessage,
    },
}

impl Command {
    /// The command with every configured secret taken out of what it carries (a step's result,
    /// a note, an agent's proposed call, text a person typed), before the machine sees it: so
    /// no state, message, hash or page is ever made from a secret.
    pub fn redacted(self, r: &crate::core::audit::Redactor) -> Command {
        if r.is_empty() {
            return self;
        }
        match self {
            Command::StepFinished {
                step,
                attempt,
                result,
            } => Command::StepFinished {
                step,
                attempt,
                result: match result {
                    Ok(mut v) => {
                        r.redact_values(&mut v);
                        Ok(v)
                    }
                    Err(e) => Err(r.redact_text(&e)),
                },
            },
            Command::StepNote {
                step,
                attempt,
                key,
                mut message,
            } => {
                r.redact_message(&mut message);
                Command::StepNote {
                    step,
                    attempt,
                    key,
                    message,
                }
            }
            Command::AgentWantsTool {
                step,
                attempt,
                mut call,
                payload_hash,
            } => {
                r.redact_values(&mut call.arguments);
                Command::AgentWantsTool {
                    step,
                    attempt,
                    call,
                    payload_hash,
                }
            }
            Command::Decide {
                step,
                actor,
                approve,
                reason,
                shown,
            } => Command::Decide {
                step,
                actor,
                approve,
                reason: reason.map(|t| r.redact_text(&t)),
                shown,
            },
            Command::Edit {
                step,
                actor,
                text,
                shown,
            } => Command::Edit {
                step,
                actor,
                text: r.redact_text(&text),
                shown,
            },
            Command::DeliveryFailed {
                outbox,
                key,
                channel,
                error,
                permanent,
            } => Command::DeliveryFailed {
                outbox,
                key,
                channel,
                error: r.redact_text(&error),
                permanent,
            },
            other => other,
        }
    }
}

/// Work to carry out after the transaction commits. The store persists all of them in the
/// same transaction as the state, so none is lost to a crash.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run one attempt of a step on the worker pool.
    Run(Job),
    /// Record how an attempt ended.
    AttemptEnded {
        run: RunId,
        step: StepId,
        attempt: u32,
        outcome: AttemptOutcome,
        detail: Value,
        at: DateTime<Utc>,
    },
    /// Post or edit a chat message, through the outbox.
    Send(Outgoing),
    /// Append to the ledger.
    Audit(AuditEvent),
    /// Give this run's messages that could not be delivered (given up on, or waiting to be
    /// tried again) another try now.
    Redeliver(RunId),
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    Lost,
    Cancelled,
    /// An agent paused for a decision; a new attempt continues after it.
    Paused,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Paused => "paused",
        }
    }
}

/// One unit of background work.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub run: RunId,
    pub step: StepId,
    pub attempt: u32,
    pub timeout: Duration,
    pub work: Work,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Call a tool. `declared` is the set of tools the step may use; the worker refuses others.
    Tool {
        tool: String,
        args: Value,
        declared: Vec<String>,
    },
    /// Build a digest over the ledger for the period ending now, with a narrative by `narrative`
    /// (instructions filled in) when a model can write one.
    Digest {
        period: Duration,
        narrative: Option<Box<crate::core::agents::AgentDef>>,
    },
    /// Let an agent work on `prompt` with the run's `context` (inputs and the outputs of the
    /// steps it needs). Its instructions are already filled in. `decision` is what people
    /// decided on the external call the agent last paused for.
    Agent {
        agent: Box<crate::core::agents::AgentDef>,
        prompt: String,
        context: Value,
        decision: Option<crate::core::agents::AgentDecision>,
        /// A retry after a failed attempt: the conversation starts over. Otherwise (a first
        /// attempt, one after a crash or after a decision) it goes on from its last turn.
        fresh: bool,
    },
}

/// The result of applying a command.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Transition {
    pub effects: Vec<Effect>,
    /// A private notice for the person who sent the command (a refusal, "already decided").
    pub notice: Option<String>,
}

impl Transition {
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.effects.iter().filter_map(|e| match e {
            Effect::Run(j) => Some(j),
            _ => None,
        })
    }
}
