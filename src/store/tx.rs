//! The transaction layer every backend shares: what a change to a run means in rows.
//!
//! The engine hands the store a pure transition; this module decides what it writes: which
//! steps, approvals and timers changed, the attempts, outbox entries and ledger entries the
//! effects ask for, every secret redacted and every time at the precision stored, ledger
//! entries chained onto the ledger's head, and which outbox entries are ready in which order.
//! A backend supplies the primitives of [`Tx`] (a statement or two of its SQL each) and
//! nothing else, so a second backend writes SQL and no rules.
//!
//! Rows go to the backend a table at a time ([`Rows`]), so it can write each table of a
//! change in one statement however many rows it has.

use super::writer::Memory;
use super::{
    ConsoleDelivery, ConsoleMessage, ConsoleRef, Created, Definition, NewRun, OutboxEntry,
    OutboxOp, Replica, StoreError, StoreResult,
};
use crate::core::audit::{AuditEvent, AuditKey, AuditKind, GENESIS, Redactor, entry_hash};
use crate::core::engine::{Effect, Run, RunState, RunStatus, Transition, Work};
use crate::core::event::Actor;
use crate::core::ids::RunId;
use crate::core::message::{OutMessage, Outgoing};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Times are stored as milliseconds since the epoch on every backend.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The ledger's newest entry: what the next one is chained onto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: String,
}

/// What the store applies to everything it writes (secrets redacted, ledger entries signed),
/// and what its writer remembers between writes.
pub(crate) struct Rules {
    redactor: Redactor,
    audit_key: Option<AuditKey>,
    /// The ledger's head as the writer last wrote it, so appending does not read it back;
    /// forgotten whenever it may be wrong (see [`Memory`]).
    head: Mutex<Option<Head>>,
    /// Who holds the attempts this store starts, and for how long without renewal.
    replica: Replica,
}

impl Memory for Rules {
    fn forget(&self) {
        *self.head.lock().expect("ledger head lock") = None;
    }
}

impl Rules {
    pub(crate) fn new(options: &super::Options) -> Self {
        Self {
            redactor: options.redactor.clone(),
            audit_key: options.audit_key.clone(),
            head: Mutex::new(None),
            replica: options.replica.clone(),
        }
    }

    pub(crate) fn replica(&self) -> &Replica {
        &self.replica
    }

    pub(crate) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub(crate) fn audit_key(&self) -> Option<&AuditKey> {
        self.audit_key.as_ref()
    }

    /// A chat message as stored: JSON with every secret and control character taken out, so
    /// what the outbox delivers and the console shows is clean.
    pub(crate) fn message(&self, m: &OutMessage) -> StoreResult<String> {
        Ok(self.clean(m)?.1)
    }

    /// A chat message as stored, and its JSON (see [`Rules::message`]).
    pub(crate) fn clean(&self, m: &OutMessage) -> StoreResult<(OutMessage, String)> {
        let mut m = m.clone();
        m.strip_controls();
        if !self.redactor.is_empty() {
            self.redactor.redact_message(&mut m);
        }
        let body = serde_json::to_string(&m).map_err(corrupt)?;
        Ok((m, body))
    }

    /// A JSON value a run goes on with, as stored: the secret values taken out.
    pub(crate) fn json(&self, v: &Value) -> String {
        if self.redactor.is_empty() {
            return v.to_string();
        }
        let mut v = v.clone();
        self.redactor.redact_values(&mut v);
        v.to_string()
    }

    /// Text as stored, secrets taken out.
    pub(crate) fn text(&self, t: &str) -> String {
        self.redactor.redact_text(t)
    }

    /// Ledger rows for `events`, chained onto the head (read from the backend only when it
    /// is not remembered). The head moves on as if they were written: a write that fails
    /// after this is rolled back, and the writer then forgets the head.
    pub(crate) async fn chain<T: Tx>(
        &self,
        tx: &mut T,
        events: &[AuditEvent],
    ) -> StoreResult<Vec<AuditRow>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let remembered = self.head.lock().expect("ledger head lock").take();
        let mut head = match remembered {
            Some(h) => h,
            None => tx.ledger_head().await?.unwrap_or(Head {
                seq: 0,
                hash: GENESIS.to_owned(),
            }),
        };
        let mut rows = Vec::with_capacity(events.len());
        for ev in events {
            let mut data = ev.data.clone();
            self.redactor.redact(&mut data);
            let data = data.to_string();
            let seq = head.seq + 1;
            // Stored at millisecond precision, so hash what is stored.
            let when = at(ms(ev.at));
            let kind = ev.kind.as_str();
            let run = ev.run.map(|r| r.0);
            let hash = entry_hash(
                &head.hash,
                seq,
                when,
                kind,
                run,
                ev.step.as_deref(),
                ev.actor.as_deref(),
                &data,
            );
            let mac = self.audit_key.as_ref().map(|k| k.entry_mac(&hash));
            rows.push(AuditRow {
                seq,
                at: ms(when),
                kind,
                run_id: run,
                step_id: ev.step.clone(),
                actor: ev.actor.clone(),
                data,
                prev_hash: std::mem::replace(&mut head.hash, hash.clone()),
                hash,
                mac,
            });
            head.seq = seq;
        }
        *self.head.lock().expect("ledger head lock") = Some(head);
        Ok(rows)
    }

    /// Appends `events` to the ledger on their own.
    pub(crate) async fn append<T: Tx>(&self, tx: &mut T, events: &[AuditEvent]) -> StoreResult<()> {
        let rows = Rows {
            audit: self.chain(tx, events).await?,
            ..Rows::default()
        };
        tx.write(&rows).await
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The primitives a backend's write transaction offers. Each is a statement or two of the
/// backend's SQL; what they mean, and when they are used, is decided in this module.
pub(crate) trait Tx: Send {
    /// Inserts the row of a new run; `None` when a run already has its event id (nothing is
    /// written then).
    fn insert_run(
        &mut self,
        row: &NewRunRow,
    ) -> impl Future<Output = StoreResult<Option<RunId>>> + Send;
    /// The run started by an event.
    fn run_for_event(
        &mut self,
        event_id: &str,
    ) -> impl Future<Output = StoreResult<Option<RunId>>> + Send;
    /// A run as stored, with the workflow text it was started with.
    fn load_run(
        &mut self,
        run: RunId,
    ) -> impl Future<Output = StoreResult<Option<(RunState, Definition)>>> + Send;
    /// Records an inbound event's id; false when it was recorded before.
    fn first_sighting(
        &mut self,
        event_id: &str,
        at: i64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The ledger's newest entry, `None` while it is empty.
    fn ledger_head(&mut self) -> impl Future<Output = StoreResult<Option<Head>>> + Send;
    /// Marks an outbox entry delivered with the platform's reference; `None` when there is
    /// no such entry or it was marked already (so it is told of once).
    fn mark_delivered(
        &mut self,
        id: i64,
        platform_ref: &str,
        at: i64,
    ) -> impl Future<Output = StoreResult<Option<Settled>>> + Send;
    /// Marks an outbox entry failed for good with `error`; `None` when there is no such
    /// entry.
    fn mark_failed(
        &mut self,
        id: i64,
        error: &str,
    ) -> impl Future<Output = StoreResult<Option<Settled>>> + Send;
    /// Fails the waiting entries that depend on the post `key` (replies in its thread, its
    /// edits) with `error`.
    fn fail_dependents(
        &mut self,
        key: &str,
        error: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Writes `rows`, a table at a time, in the order the tables are listed in [`Rows`].
    fn write(&mut self, rows: &Rows) -> impl Future<Output = StoreResult<()>> + Send;
}

/// A new run's row.
#[derive(Debug, Clone)]
pub(crate) struct NewRunRow {
    pub workflow: String,
    pub event_id: String,
    pub platform: String,
    pub channel: String,
    pub thread: Option<String>,
    pub actor_platform: String,
    pub actor_id: String,
    pub actor_display: String,
    pub actor_is_bot: bool,
    pub inputs: String,
    pub late: bool,
    pub title: String,
    pub file: String,
    pub definition: Arc<str>,
    pub created_at: i64,
}

/// Everything one change writes, table by table, as stored. A backend writes the tables in
/// this order; within a table, rows in the order given.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub run: Option<RunRow>,
    pub steps: Vec<StepRow>,
    pub approvals: Vec<ApprovalRow>,
    pub timers: Vec<TimerRow>,
    pub attempts: Vec<AttemptWrite>,
    /// Posts and edits in the order they were asked for: their ids keep that order.
    pub outbox: Vec<OutboxWrite>,
    /// Runs whose undelivered messages go back in line, and when.
    pub redeliver: Vec<(i64, i64)>,
    pub audit: Vec<AuditRow>,
}

/// The run row's changing columns.
#[derive(Debug, Serialize)]
pub(crate) struct RunRow {
    pub id: i64,
    pub status: &'static str,
    pub error: Option<String>,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub stalled_at: Option<i64>,
    pub conversation_lost: Option<String>,
    pub alerts: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct StepRow {
    pub run: i64,
    pub step: String,
    pub status: &'static str,
    pub attempt: i64,
    pub retries_used: i64,
    pub output: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ApprovalRow {
    pub run: i64,
    pub step: String,
    pub status: &'static str,
    pub approvers: String,
    pub summary: String,
    pub requested_at: i64,
    pub expires_at: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub reason: Option<String>,
    pub payload: Option<String>,
    pub quorum: i64,
    pub votes: String,
    pub reminded_at: Option<i64>,
    pub escalated_at: Option<i64>,
    pub content: Option<String>,
    pub editors: String,
    pub round: i64,
}

/// A timer set (`due_at`) or cleared (`None`).
#[derive(Debug, Serialize)]
pub(crate) struct TimerRow {
    pub run: i64,
    pub key: String,
    pub due_at: Option<i64>,
}

/// One attempt's row: started (a new row, replacing one of the same number), ended (the
/// existing row updated), or both within one change.
#[derive(Debug, Serialize)]
pub(crate) struct AttemptWrite {
    pub run: i64,
    pub step: String,
    pub attempt: i64,
    /// Set when the attempt starts in this change: its input, and the replica holding it
    /// (the one that started it, which runs it) until when.
    pub input: Option<String>,
    pub started_at: Option<i64>,
    pub owner: Option<String>,
    pub lease_until: Option<i64>,
    /// Set when the attempt ends in this change.
    pub status: Option<&'static str>,
    pub detail: Option<String>,
    pub finished_at: Option<i64>,
}

/// A post, or an edit of an earlier post. An edit goes where its post went, in the same
/// lane: `target` says where when the post is in the same change; otherwise the backend
/// looks the post up, and an edit of a post that does not exist is dropped.
#[derive(Debug, Serialize)]
pub(crate) struct OutboxWrite {
    pub run: Option<i64>,
    pub key: String,
    pub op: &'static str,
    pub body: String,
    pub at: i64,
    /// Where a post goes; for an edit, `Some` when known without a lookup.
    pub target: Option<Target>,
    pub thread_key: Option<String>,
}

/// Where an outbox entry goes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub platform: String,
    pub channel: String,
    pub urgent: bool,
    pub private_to: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub kind: &'static str,
    pub run_id: Option<i64>,
    pub step_id: Option<String>,
    pub actor: Option<String>,
    pub data: String,
    pub prev_hash: String,
    pub hash: String,
    pub mac: Option<String>,
}

/// Creates a run for `new` and applies `start` to it. A second run for the same event id is
/// never started: the first is returned, with nothing applied.
pub(crate) async fn create_run<T: Tx>(
    tx: &mut T,
    rules: &Rules,
    new: NewRun,
    now: DateTime<Utc>,
    start: super::ApplyFn,
) -> StoreResult<Created> {
    let row = NewRunRow {
        workflow: new.workflow.clone(),
        event_id: new.event_id.clone(),
        platform: new.conversation.platform.clone(),
        channel: new.conversation.channel.clone(),
        thread: new.conversation.thread.clone(),
        actor_platform: new.requested_by.platform.clone(),
        actor_id: new.requested_by.id.clone(),
        actor_display: new.requested_by.display.clone(),
        actor_is_bot: new.requested_by.is_bot,
        inputs: rules.json(&Value::Object(new.inputs.clone())),
        late: new.late,
        title: rules.text(&new.title),
        file: new.file.clone(),
        definition: new.definition.clone(),
        created_at: ms(now),
    };
    let received: Vec<AuditEvent> = new.received.iter().cloned().collect();
    let Some(id) = tx.insert_run(&row).await? else {
        rules.append(tx, &received).await?;
        let run = tx
            .run_for_event(&new.event_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a run's event id vanished".into()))?;
        return Ok(Created {
            run,
            new: false,
            transition: Transition::default(),
        });
    };
    // The run as it was just stored, without reading it back.
    let (mut state, def) = stored_new_run(id, row, new.requested_by);
    let before = state.clone();
    let transition = start(&mut state, &def);
    write_change(tx, rules, &before, &state, &transition, now, received).await?;
    Ok(Created {
        run: id,
        new: true,
        transition,
    })
}

/// A new run exactly as [`Tx::load_run`] would read it back.
fn stored_new_run(id: RunId, row: NewRunRow, by: Actor) -> (RunState, Definition) {
    let created = at(row.created_at);
    let run = Run {
        id,
        workflow: row.workflow,
        status: RunStatus::Running,
        event_id: row.event_id,
        conversation: crate::core::event::ConversationRef {
            platform: row.platform,
            channel: row.channel,
            thread: row.thread,
        },
        requested_by: Actor {
            // Group membership is looked up when it matters, never stored.
            groups: vec![],
            ..by
        },
        inputs: serde_json::from_str(&row.inputs).unwrap_or_default(),
        late: row.late,
        title: row.title,
        error: None,
        created_at: created,
        updated_at: created,
        finished_at: None,
        stalled_at: None,
        conversation_lost: None,
        alerts: BTreeMap::new(),
    };
    let state = RunState {
        run,
        steps: BTreeMap::new(),
        approvals: BTreeMap::new(),
        timers: BTreeMap::new(),
    };
    let def = Definition {
        file: row.file,
        source: row.definition,
    };
    (state, def)
}

/// Applies `f` to a stored run. With `event_id`, the event is recorded in the same
/// transaction as the change it caused: a redelivered event finds it and changes nothing.
/// `None` when there is no such run.
pub(crate) async fn apply<T: Tx>(
    tx: &mut T,
    rules: &Rules,
    run: RunId,
    event_id: Option<&str>,
    f: super::ApplyFn,
) -> StoreResult<Option<Transition>> {
    let Some((mut state, def)) = tx.load_run(run).await? else {
        return Ok(None);
    };
    let before = state.clone();
    let transition = f(&mut state, &def);
    if let Some(id) = event_id
        && !tx.first_sighting(id, ms(state.run.updated_at)).await?
    {
        return Ok(Some(Transition::default()));
    }
    let now = state.run.updated_at;
    write_change(tx, rules, &before, &state, &transition, now, Vec::new()).await?;
    Ok(Some(transition))
}

/// Writes what changed between `before` and `after` and what `t`'s effects ask for, with
/// the ledger entries `first` ahead of the transition's.
async fn write_change<T: Tx>(
    tx: &mut T,
    rules: &Rules,
    before: &RunState,
    after: &RunState,
    t: &Transition,
    now: DateTime<Utc>,
    first: Vec<AuditEvent>,
) -> StoreResult<()> {
    let mut rows = diff(rules, before, after)?;
    effects(rules, &mut rows, t, now)?;
    let mut events = first;
    events.extend(t.effects.iter().filter_map(|e| match e {
        Effect::Audit(ev) => Some(ev.clone()),
        _ => None,
    }));
    rows.audit = rules.chain(tx, &events).await?;
    tx.write(&rows).await
}

fn to_json<T: Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(corrupt)
}

/// The rows that change between two states of a run: the run row always (its `updated_at`
/// moves), steps, approvals and timers only where they differ.
pub(crate) fn diff(rules: &Rules, before: &RunState, after: &RunState) -> StoreResult<Rows> {
    let r = &after.run;
    let id = r.id.0;
    let mut rows = Rows {
        run: Some(RunRow {
            id,
            status: r.status.as_str(),
            error: r.error.as_deref().map(|e| rules.text(e)),
            updated_at: ms(r.updated_at),
            finished_at: r.finished_at.map(ms),
            stalled_at: r.stalled_at.map(ms),
            conversation_lost: r.conversation_lost.clone(),
            alerts: to_json(&r.alerts)?,
        }),
        ..Rows::default()
    };
    for (step, s) in &after.steps {
        if before.steps.get(step) == Some(s) {
            continue;
        }
        rows.steps.push(StepRow {
            run: id,
            step: step.clone(),
            status: s.status.as_str(),
            attempt: i64::from(s.attempt),
            retries_used: i64::from(s.retries_used),
            output: s.output.as_ref().map(|o| rules.json(o)),
            error: s.error.as_deref().map(|e| rules.text(e)),
            started_at: s.started_at.map(ms),
            finished_at: s.finished_at.map(ms),
        });
    }
    for (step, a) in &after.approvals {
        if before.approvals.get(step) == Some(a) {
            continue;
        }
        rows.approvals.push(ApprovalRow {
            run: id,
            step: step.clone(),
            status: a.status.as_str(),
            approvers: to_json(&a.approvers)?,
            summary: rules.text(&a.summary),
            requested_at: ms(a.requested_at),
            expires_at: ms(a.expires_at),
            decided_by: a.decided_by.as_ref().map(to_json).transpose()?,
            decided_at: a.decided_at.map(ms),
            reason: a.reason.as_deref().map(|t| rules.text(t)),
            payload: a.payload.as_ref().map(|p| rules.json(p)),
            quorum: i64::from(a.quorum),
            votes: to_json(&a.votes)?,
            reminded_at: a.reminded_at.map(ms),
            escalated_at: a.escalated_at.map(ms),
            content: a.content.as_deref().map(|t| rules.text(t)),
            editors: to_json(&a.editors)?,
            round: i64::from(a.round),
        });
    }
    for key in before.timers.keys() {
        if !after.timers.contains_key(key) {
            rows.timers.push(TimerRow {
                run: id,
                key: key.clone(),
                due_at: None,
            });
        }
    }
    for (key, due) in &after.timers {
        if before.timers.get(key) != Some(due) {
            rows.timers.push(TimerRow {
                run: id,
                key: key.clone(),
                due_at: Some(ms(*due)),
            });
        }
    }
    Ok(rows)
}

/// The rows a transition's effects ask for, besides the ledger's (see [`Rules::chain`]).
fn effects(rules: &Rules, rows: &mut Rows, t: &Transition, now: DateTime<Utc>) -> StoreResult<()> {
    // Where each post of this change goes, for edits of it in the same change.
    let mut posted: BTreeMap<&str, Target> = BTreeMap::new();
    for e in &t.effects {
        match e {
            Effect::Run(job) => {
                let mut input = match &job.work {
                    Work::Tool { tool, args, .. } => {
                        serde_json::json!({"tool": tool, "args": args})
                    }
                    Work::Digest { period, .. } => {
                        serde_json::json!({"digest_seconds": period.num_seconds()})
                    }
                    Work::Agent { agent, prompt, .. } => {
                        serde_json::json!({"agent": agent.name, "model": agent.model, "prompt": prompt})
                    }
                };
                rules.redactor.redact(&mut input);
                let (run, step, attempt) = (job.run.0, job.step.clone(), i64::from(job.attempt));
                // Starting an attempt again replaces what was there, ending included.
                rows.attempts
                    .retain(|a| !(a.run == run && a.step == step && a.attempt == attempt));
                rows.attempts.push(AttemptWrite {
                    run,
                    step,
                    attempt,
                    input: Some(input.to_string()),
                    started_at: Some(ms(now)),
                    owner: Some(rules.replica.name.clone()),
                    lease_until: Some(ms(now + rules.replica.lease)),
                    status: None,
                    detail: None,
                    finished_at: None,
                });
            }
            Effect::AttemptEnded {
                run,
                step,
                attempt,
                outcome,
                detail,
                at: ended,
            } => {
                let mut detail = detail.clone();
                rules.redactor.redact(&mut detail);
                let (run, attempt) = (run.0, i64::from(*attempt));
                let write = match rows
                    .attempts
                    .iter_mut()
                    .find(|a| a.run == run && a.step == *step && a.attempt == attempt)
                {
                    Some(w) => w,
                    None => {
                        rows.attempts.push(AttemptWrite {
                            run,
                            step: step.clone(),
                            attempt,
                            input: None,
                            started_at: None,
                            owner: None,
                            lease_until: None,
                            status: None,
                            detail: None,
                            finished_at: None,
                        });
                        rows.attempts.last_mut().expect("just pushed")
                    }
                };
                write.status = Some(outcome.as_str());
                write.detail = Some(detail.to_string());
                write.finished_at = Some(ms(*ended));
            }
            Effect::Send(Outgoing::Post {
                run,
                key,
                to,
                message,
                urgent,
            }) => {
                let target = Target {
                    platform: to.platform.clone(),
                    channel: to.channel.clone(),
                    urgent: *urgent,
                    private_to: to.private_to.clone(),
                };
                posted.entry(&key.0).or_insert_with(|| target.clone());
                rows.outbox.push(OutboxWrite {
                    run: run.map(|r| r.0),
                    key: key.0.clone(),
                    op: "post",
                    body: rules.message(message)?,
                    at: ms(now),
                    target: Some(target),
                    thread_key: to.thread.as_ref().map(|k| k.0.clone()),
                });
            }
            Effect::Send(Outgoing::Edit { run, key, message }) => {
                rows.outbox.push(OutboxWrite {
                    run: run.map(|r| r.0),
                    key: key.0.clone(),
                    op: "edit",
                    body: rules.message(message)?,
                    at: ms(now),
                    target: posted.get(key.0.as_str()).cloned(),
                    thread_key: None,
                });
            }
            // Chained by the caller, which holds the ledger's head.
            Effect::Audit(_) => {}
            // Failed posts and edits (and those that failed with them) go back in line, in
            // their order, as if new.
            Effect::Redeliver(run) => rows.redeliver.push((run.0, ms(now))),
        }
    }
    Ok(())
}

/// An outbox entry waiting for delivery, as a backend reads it, with the state of the post
/// it depends on (its thread's root, or for an edit the post it changes).
#[derive(Debug)]
pub(crate) struct Pending {
    pub entry: OutboxEntry,
    pub next_attempt_at: i64,
    pub thread_status: Option<String>,
    pub target_status: Option<String>,
}

/// Which waiting entries go out now.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    pub entries: Vec<OutboxEntry>,
    /// Edits overtaken by a later edit of the same post: only the latest is delivered.
    pub superseded: Vec<i64>,
    /// Entries that depend on a post that failed for good: they can never be delivered.
    pub orphaned: Vec<i64>,
}

/// The outbox's order, over each lane's waiting entries in id order: a conversation's entries
/// wait behind its first one that cannot go yet (not due, or its root or target not posted
/// yet), so a thread never goes out of order; an urgent entry neither waits for nor holds its
/// conversation. Only the latest edit of a post is sent. A root or post that is ready goes out
/// ahead of the replies and edits that depend on it in the same conversation, so those are
/// ready too: one pass delivers a whole thread instead of one pass per message it waits for.
/// What is ready comes out oldest first.
pub(crate) fn ready(pending: Vec<Pending>, now: DateTime<Utc>) -> Ready {
    let mut latest_edit: BTreeMap<&str, i64> = BTreeMap::new();
    for p in &pending {
        if p.entry.op == OutboxOp::Edit {
            latest_edit.insert(&p.entry.key.0, p.entry.id);
        }
    }
    let latest_edit: BTreeMap<String, i64> = latest_edit
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut out = Ready::default();
    let mut blocked: HashSet<(String, String)> = HashSet::new();
    // Posts going out in this pass, in order within their conversation: their references
    // are known to whoever delivers that conversation by the time it reaches what follows.
    let mut ahead: HashMap<String, (String, String)> = HashMap::new();
    for p in pending {
        let e = &p.entry;
        if e.op == OutboxOp::Edit && latest_edit.get(&e.key.0) != Some(&e.id) {
            out.superseded.push(e.id);
            continue;
        }
        let conversation = (e.platform.clone(), e.channel.clone());
        if blocked.contains(&conversation) && !e.urgent {
            continue;
        }
        // A reply to a root, or an edit of a post, that could never be delivered can never
        // be delivered either; it must not wait (and hold its conversation) forever.
        let failed_dependency = p.thread_status.as_deref() == Some("failed")
            || (e.op == OutboxOp::Edit && p.target_status.as_deref() == Some("failed"));
        if failed_dependency {
            out.orphaned.push(e.id);
            continue;
        }
        // Urgent entries go out on their own, so nothing is ahead of them.
        let ahead_of_it = |key: &str| !e.urgent && ahead.get(key) == Some(&conversation);
        let root_missing = match (&e.thread_key, &e.thread_ref) {
            (Some(root), None) => !ahead_of_it(&root.0),
            _ => false,
        };
        let target_missing =
            e.op == OutboxOp::Edit && e.target_ref.is_none() && !ahead_of_it(&e.key.0);
        let waiting = p.next_attempt_at > ms(now) || root_missing || target_missing;
        if waiting {
            // Later messages of this conversation wait too, so a thread keeps its order.
            // An urgent post is outside that order: it neither waits for nor holds it.
            if !e.urgent {
                blocked.insert(conversation);
            }
            continue;
        }
        if e.op == OutboxOp::Post && !e.urgent {
            ahead.insert(e.key.0.clone(), conversation);
        }
        out.entries.push(p.entry);
    }
    out.entries.sort_by_key(|e| e.id);
    out
}

/// Records that an outbox entry reached its platform, with its ledger entry, once.
pub(crate) async fn delivered<T: Tx>(
    tx: &mut T,
    rules: &Rules,
    id: i64,
    platform_ref: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    if let Some(ev) = mark_delivered(tx, id, platform_ref, now).await? {
        rules.append(tx, &[ev]).await?;
    }
    Ok(())
}

/// Gives up on an outbox entry, with its ledger entry. Replies and edits that depend on a
/// post that will never exist cannot be delivered either: they fail with it rather than wait
/// forever.
pub(crate) async fn failed<T: Tx>(
    tx: &mut T,
    rules: &Rules,
    id: i64,
    error: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let Some(settled) = tx.mark_failed(id, error).await? else {
        return Ok(());
    };
    if settled.op == "post" {
        let because = format!("depends on {}, which could not be delivered", settled.key);
        tx.fail_dependents(&settled.key, &because).await?;
    }
    rules
        .append(tx, &[failed_event(now, &settled, error)])
        .await
}

/// Marks an outbox entry delivered; the ledger entry that says so, for the caller to append
/// (with others of the same write), or `None` when it was marked before.
pub(crate) async fn mark_delivered<T: Tx>(
    tx: &mut T,
    id: i64,
    platform_ref: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<AuditEvent>> {
    match tx.mark_delivered(id, platform_ref, ms(now)).await? {
        Some(settled) => Ok(Some(delivered_event(now, &settled, platform_ref))),
        None => Ok(None),
    }
}

/// The ledger entry for an outbox entry that was delivered.
fn delivered_event(now: DateTime<Utc>, settled: &Settled, platform_ref: &str) -> AuditEvent {
    AuditEvent::new(
        now,
        AuditKind::PostDelivered,
        settled.run,
        serde_json::json!({"key": settled.key, "op": settled.op, "platform": settled.platform,
            "channel": settled.channel, "ref": platform_ref, "text": settled.text}),
    )
}

/// The ledger entry for an outbox entry given up on.
fn failed_event(now: DateTime<Utc>, settled: &Settled, error: &str) -> AuditEvent {
    AuditEvent::new(
        now,
        AuditKind::PostFailed,
        settled.run,
        serde_json::json!({"key": settled.key, "op": settled.op, "platform": settled.platform,
            "channel": settled.channel, "error": error}),
    )
}

/// An outbox entry whose delivery was just settled, as the ledger tells of it.
#[derive(Debug)]
pub(crate) struct Settled {
    pub run: Option<RunId>,
    pub key: String,
    pub op: String,
    pub platform: String,
    pub channel: String,
    /// The message's text, when the backend was asked for it (a delivery's ledger entry).
    pub text: String,
}

/// The console's primitives: the console's chat is a table of the store's own, so delivering
/// an outbox entry there and recording the delivery is one write.
pub(crate) trait ConsoleTx: Tx {
    /// Stores the bot's message delivering outbox entry `row.outbox_id`; its id, or `None`
    /// when that entry was delivered before (nothing is written then).
    fn console_insert(
        &mut self,
        row: &ConsoleRow<'_>,
    ) -> impl Future<Output = StoreResult<Option<i64>>> + Send;
    /// The message that delivered outbox entry `outbox_id`.
    fn console_delivered(
        &mut self,
        outbox_id: i64,
    ) -> impl Future<Output = StoreResult<Option<ConsoleMessage>>> + Send;
    /// Replaces a message's content with `message` (stored as `body`); the message as it now
    /// is, `None` when there is no such message. What was written is in hand, so only the
    /// rest is read back.
    fn console_replace(
        &mut self,
        id: i64,
        message: OutMessage,
        body: &str,
        at: i64,
    ) -> impl Future<Output = StoreResult<Option<ConsoleMessage>>> + Send;
}

/// A bot's console message delivering an outbox entry, as stored.
pub(crate) struct ConsoleRow<'a> {
    pub channel: &'a str,
    pub thread_id: Option<i64>,
    pub author: &'a str,
    pub body: &'a str,
    pub outbox_id: i64,
    pub at: i64,
}

/// Delivers a batch of outbox entries to the console in one write, each recorded delivered
/// with its ledger entry; a post later in the batch may reply to or be edited after one
/// earlier in it. The batch stops at the first entry that cannot be delivered (its post is
/// not in the batch, or its message is gone): what follows it in the conversation waits.
/// `cleaned` holds each entry's message as stored, with its JSON.
pub(crate) async fn console_deliver<T: ConsoleTx>(
    tx: &mut T,
    rules: &Rules,
    batch: Vec<ConsoleDelivery>,
    cleaned: Vec<(OutMessage, String)>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Result<ConsoleMessage, String>>> {
    let mut out = Vec::with_capacity(batch.len());
    let mut ledger = Vec::with_capacity(batch.len());
    // Ids of the posts this batch stored, for the replies and edits behind them.
    let mut posted: BTreeMap<String, i64> = BTreeMap::new();
    let stamp = ms(now);
    for (d, (message, body)) in batch.into_iter().zip(cleaned) {
        let about = match &d.about {
            None => None,
            Some(ConsoleRef::Id(id)) => Some(*id),
            Some(ConsoleRef::Post(key)) => match posted.get(&key.0) {
                Some(id) => Some(*id),
                // Not in this batch: it stops here, and the next pass has it.
                None => break,
            },
        };
        // What was written is in hand: only what the database adds is read back.
        let row = match d.op {
            OutboxOp::Post => {
                let row = ConsoleRow {
                    channel: &d.channel,
                    thread_id: about,
                    author: d.author,
                    body: &body,
                    outbox_id: d.outbox_id,
                    at: stamp,
                };
                match tx.console_insert(&row).await? {
                    Some(id) => Some(ConsoleMessage {
                        id,
                        channel: d.channel.clone(),
                        thread_id: about,
                        author: d.author.to_owned(),
                        is_bot: true,
                        message,
                        created_at: at(stamp),
                        updated_at: at(stamp),
                        replies: 0,
                    }),
                    // Delivered before (a crash before the engine heard of it): the
                    // message already posted for it.
                    None => tx.console_delivered(d.outbox_id).await?,
                }
            }
            OutboxOp::Edit => match about {
                Some(id) => tx.console_replace(id, message, &body, stamp).await?,
                None => None,
            },
        };
        let Some(m) = row else {
            out.push(Err(match about {
                Some(id) => format!("message {id} no longer exists"),
                None => "there is no message to edit".to_owned(),
            }));
            break;
        };
        ledger.extend(mark_delivered(tx, d.outbox_id, &m.id.to_string(), now).await?);
        if d.op == OutboxOp::Post {
            posted.insert(d.key.0, m.id);
        }
        out.push(Ok(m));
    }
    rules.append(tx, &ledger).await?;
    Ok(out)
}
