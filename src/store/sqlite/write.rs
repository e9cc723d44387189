//! The transaction layer's primitives on SQLite: a prepared statement or two each, called
//! directly on the writer's thread. What they mean and when they run is `store::tx`'s.

use super::super::tx::{self, Head, Rows, Settled, Tx};
use super::super::{Definition, StoreResult};
use super::{Conn, get, json, json_opt, one, parsed, time, time_opt};
use crate::core::engine::{Approval, Run, RunState, StepState};
use crate::core::event::{Actor, ConversationRef};
use crate::core::ids::RunId;
use rusqlite::{Connection, Row, params};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A run as stored, with the workflow text it was started with.
pub(super) fn load_state(c: &Connection, id: RunId) -> StoreResult<Option<(RunState, Definition)>> {
    let Some((run, def)) = one(c, "SELECT * FROM runs WHERE id = ?", [id.0], |r| {
        run_from_row(id, r)
    })?
    else {
        return Ok(None);
    };
    let mut steps = BTreeMap::new();
    let mut stmt = c.prepare_cached("SELECT * FROM steps WHERE run_id = ?")?;
    let mut rows = stmt.query([id.0])?;
    while let Some(s) = rows.next()? {
        steps.insert(
            get::<String>(s, "step_id")?,
            StepState {
                status: parsed(s, "status")?,
                attempt: get::<i64>(s, "attempt")? as u32,
                retries_used: get::<i64>(s, "retries_used")? as u32,
                output: json_opt(s, "output")?,
                error: get(s, "error")?,
                started_at: time_opt(s, "started_at")?,
                finished_at: time_opt(s, "finished_at")?,
            },
        );
    }
    let mut approvals = BTreeMap::new();
    let mut stmt = c.prepare_cached("SELECT * FROM approvals WHERE run_id = ?")?;
    let mut rows = stmt.query([id.0])?;
    while let Some(a) = rows.next()? {
        approvals.insert(get::<String>(a, "step_id")?, approval_from_row(a)?);
    }
    let mut timers = BTreeMap::new();
    let mut stmt = c.prepare_cached("SELECT key, due_at FROM timers WHERE run_id = ?")?;
    let mut rows = stmt.query([id.0])?;
    while let Some(t) = rows.next()? {
        timers.insert(get::<String>(t, "key")?, time(t, "due_at")?);
    }
    Ok(Some((
        RunState {
            run,
            steps,
            approvals,
            timers,
        },
        def,
    )))
}

fn run_from_row(id: RunId, r: &Row<'_>) -> StoreResult<(Run, Definition)> {
    let run = Run {
        id,
        workflow: get(r, "workflow")?,
        status: parsed(r, "status")?,
        event_id: get(r, "event_id")?,
        conversation: ConversationRef {
            platform: get(r, "platform")?,
            channel: get(r, "channel")?,
            thread: get(r, "thread")?,
        },
        requested_by: Actor {
            platform: get(r, "actor_platform")?,
            id: get(r, "actor_id")?,
            display: get(r, "actor_display")?,
            is_bot: get(r, "actor_is_bot")?,
            groups: vec![],
        },
        inputs: json(r, "inputs")?,
        late: get(r, "late")?,
        title: get(r, "title")?,
        error: get(r, "error")?,
        created_at: time(r, "created_at")?,
        updated_at: time(r, "updated_at")?,
        finished_at: time_opt(r, "finished_at")?,
        stalled_at: time_opt(r, "stalled_at")?,
        conversation_lost: get(r, "conversation_lost")?,
        alerts: json(r, "alerts")?,
    };
    let def = Definition {
        file: get(r, "file")?,
        source: Arc::from(r.get_ref("definition")?.as_str()?),
    };
    Ok((run, def))
}

pub(super) fn approval_from_row(a: &Row<'_>) -> StoreResult<Approval> {
    Ok(Approval {
        status: parsed(a, "status")?,
        approvers: json(a, "approvers")?,
        summary: get(a, "summary")?,
        requested_at: time(a, "requested_at")?,
        expires_at: time(a, "expires_at")?,
        decided_by: json_opt(a, "decided_by")?,
        decided_at: time_opt(a, "decided_at")?,
        reason: get(a, "reason")?,
        payload: json_opt(a, "payload")?,
        quorum: u32::try_from(get::<i64>(a, "quorum")?).unwrap_or(1),
        votes: json(a, "votes")?,
        reminded_at: time_opt(a, "reminded_at")?,
        escalated_at: time_opt(a, "escalated_at")?,
        content: get(a, "content")?,
        editors: json(a, "editors")?,
        round: u32::try_from(get::<i64>(a, "round")?).unwrap_or(1),
    })
}

/// An outbox row whose delivery was just settled (`run_id, key, op, platform, channel`, and
/// `text` when asked for).
pub(super) fn settled(r: &Row<'_>) -> StoreResult<Settled> {
    Ok(Settled {
        run: get::<Option<i64>>(r, "run_id")?.map(RunId),
        key: get(r, "key")?,
        op: get(r, "op")?,
        platform: get(r, "platform")?,
        channel: get(r, "channel")?,
        text: r.get("text").unwrap_or_default(),
    })
}

impl Tx for Conn {
    async fn insert_run(&mut self, r: &tx::NewRunRow) -> StoreResult<Option<RunId>> {
        let id = super::insert(
            self,
            "INSERT INTO runs (workflow, event_id, status, platform, channel, thread, actor_platform, actor_id, actor_display,
               actor_is_bot, inputs, late, title, file, definition, created_at, updated_at)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15)
             ON CONFLICT (event_id) DO NOTHING",
            params![
                r.workflow,
                r.event_id,
                r.platform,
                r.channel,
                r.thread,
                r.actor_platform,
                r.actor_id,
                r.actor_display,
                r.actor_is_bot,
                r.inputs,
                r.late,
                r.title,
                r.file,
                &*r.definition,
                r.created_at,
            ],
        )?;
        Ok(id.map(RunId))
    }

    async fn run_for_event(&mut self, event_id: &str) -> StoreResult<Option<RunId>> {
        one(
            self,
            "SELECT id FROM runs WHERE event_id = ?",
            [event_id],
            |r| Ok(RunId(get(r, "id")?)),
        )
    }

    async fn load_run(&mut self, run: RunId) -> StoreResult<Option<(RunState, Definition)>> {
        load_state(self, run)
    }

    async fn first_sighting(&mut self, event_id: &str, at: i64) -> StoreResult<bool> {
        let n = super::exec(
            self,
            "INSERT INTO inbound_events (event_id, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            params![event_id, at],
        )?;
        Ok(n == 1)
    }

    async fn ledger_head(&mut self) -> StoreResult<Option<Head>> {
        one(
            self,
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(Head {
                    seq: get(r, "seq")?,
                    hash: get(r, "hash")?,
                })
            },
        )
    }

    async fn mark_delivered(
        &mut self,
        id: i64,
        platform_ref: &str,
        at: i64,
    ) -> StoreResult<Option<Settled>> {
        let changed = super::exec(
            self,
            "UPDATE outbox SET status = 'delivered', platform_ref = ?, delivered_at = ?, attempts = attempts + 1
             WHERE id = ? AND status <> 'delivered'",
            params![platform_ref, at, id],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        one(
            self,
            "SELECT run_id, key, op, platform, channel, body ->> '$.text' AS text FROM outbox WHERE id = ?",
            [id],
            settled,
        )
    }

    async fn mark_failed(&mut self, id: i64, error: &str) -> StoreResult<Option<Settled>> {
        one(
            self,
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?
             RETURNING run_id, key, op, platform, channel",
            params![error, id],
            settled,
        )
    }

    async fn fail_dependents(&mut self, key: &str, error: &str) -> StoreResult<()> {
        super::exec(
            self,
            "UPDATE outbox SET status = 'failed', last_error = ?1
             WHERE status = 'pending' AND (thread_key = ?2 OR (key = ?2 AND op = 'edit'))",
            params![error, key],
        )?;
        Ok(())
    }

    async fn write(&mut self, rows: &Rows) -> StoreResult<()> {
        // A prepared statement per kind of row, each row a call on this thread: with no
        // hand-off per statement, a row costs microseconds, and nothing is encoded twice.
        let c: &Connection = self;
        if let Some(r) = &rows.run {
            c.prepare_cached(
                "UPDATE runs SET status = ?, error = ?, updated_at = ?, finished_at = ?, stalled_at = ?,
                   conversation_lost = ?, alerts = ? WHERE id = ?",
            )?
            .execute(params![
                r.status,
                r.error,
                r.updated_at,
                r.finished_at,
                r.stalled_at,
                r.conversation_lost,
                r.alerts,
                r.id
            ])?;
        }
        if !rows.steps.is_empty() {
            let mut stmt = c.prepare_cached(
                "INSERT INTO steps (run_id, step_id, status, attempt, retries_used, output, error, started_at, finished_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
                   retries_used = excluded.retries_used, output = excluded.output, error = excluded.error,
                   started_at = excluded.started_at, finished_at = excluded.finished_at",
            )?;
            for s in &rows.steps {
                stmt.execute(params![
                    s.run,
                    s.step,
                    s.status,
                    s.attempt,
                    s.retries_used,
                    s.output,
                    s.error,
                    s.started_at,
                    s.finished_at
                ])?;
            }
        }
        if !rows.approvals.is_empty() {
            let mut stmt = c.prepare_cached(
                "INSERT INTO approvals (run_id, step_id, status, approvers, summary, requested_at, expires_at, decided_by,
                   decided_at, reason, payload, quorum, votes, reminded_at, escalated_at, content, editors, round)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, approvers = excluded.approvers,
                   summary = excluded.summary, requested_at = excluded.requested_at, expires_at = excluded.expires_at,
                   decided_by = excluded.decided_by, decided_at = excluded.decided_at, reason = excluded.reason,
                   payload = excluded.payload, quorum = excluded.quorum, votes = excluded.votes,
                   reminded_at = excluded.reminded_at, escalated_at = excluded.escalated_at,
                   content = excluded.content, editors = excluded.editors, round = excluded.round",
            )?;
            for a in &rows.approvals {
                stmt.execute(params![
                    a.run,
                    a.step,
                    a.status,
                    a.approvers,
                    a.summary,
                    a.requested_at,
                    a.expires_at,
                    a.decided_by,
                    a.decided_at,
                    a.reason,
                    a.payload,
                    a.quorum,
                    a.votes,
                    a.reminded_at,
                    a.escalated_at,
                    a.content,
                    a.editors,
                    a.round
                ])?;
            }
        }
        for t in &rows.timers {
            match t.due_at {
                None => c
                    .prepare_cached("DELETE FROM timers WHERE run_id = ? AND key = ?")?
                    .execute(params![t.run, t.key])?,
                Some(due) => c
                    .prepare_cached(
                        "INSERT INTO timers (run_id, key, due_at) VALUES (?, ?, ?)
                         ON CONFLICT (run_id, key) DO UPDATE SET due_at = excluded.due_at",
                    )?
                    .execute(params![t.run, t.key, due])?,
            };
        }
        for a in &rows.attempts {
            match &a.input {
                // Started in this change (and perhaps ended in it too): a new row, replacing
                // one of the same number.
                Some(input) => c
                    .prepare_cached(
                        "INSERT OR REPLACE INTO attempts (run_id, step_id, attempt, status, input, started_at, detail,
                           finished_at, owner, lease_until)
                         VALUES (?, ?, ?, COALESCE(?, 'running'), ?, ?, ?, ?, ?, ?)",
                    )?
                    .execute(params![
                        a.run,
                        a.step,
                        a.attempt,
                        a.status,
                        input,
                        a.started_at,
                        a.detail,
                        a.finished_at,
                        a.owner,
                        a.lease_until
                    ])?,
                None => c
                    .prepare_cached(
                        "UPDATE attempts SET status = ?, detail = ?, finished_at = ?
                         WHERE run_id = ? AND step_id = ? AND attempt = ? AND status = 'running'",
                    )?
                    .execute(params![
                        a.status,
                        a.detail,
                        a.finished_at,
                        a.run,
                        a.step,
                        a.attempt
                    ])?,
            };
        }
        for o in &rows.outbox {
            match &o.target {
                Some(t) => c
                    .prepare_cached(
                        "INSERT INTO outbox (run_id, key, op, platform, channel, thread_key, body, status, next_attempt_at,
                           created_at, urgent, private_to)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![
                        o.run,
                        o.key,
                        o.op,
                        t.platform,
                        t.channel,
                        o.thread_key,
                        o.body,
                        o.at,
                        t.urgent,
                        t.private_to
                    ])?,
                // An edit without a target goes where its post went; one whose post does not
                // exist is dropped.
                None => c
                    .prepare_cached(
                        "INSERT INTO outbox (run_id, key, op, platform, channel, thread_key, body, status, next_attempt_at,
                           created_at, urgent, private_to)
                         SELECT ?1, ?2, ?3, p.platform, p.channel, ?4, ?5, 'pending', ?6, ?6, p.urgent, p.private_to
                         FROM outbox p WHERE p.key = ?2 AND p.op = 'post' ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![o.run, o.key, o.op, o.thread_key, o.body, o.at])?,
            };
        }
        for (run, now) in &rows.redeliver {
            c.prepare_cached(
                "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL, failing_since = NULL, next_attempt_at = ?
                 WHERE run_id = ? AND (status = 'failed' OR (status = 'pending' AND attempts > 0))",
            )?
            .execute(params![now, run])?;
        }
        if !rows.audit.is_empty() {
            let mut stmt = c.prepare_cached(
                "INSERT INTO audit (seq, at, kind, run_id, step_id, actor, data, prev_hash, hash, mac)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?;
            for a in &rows.audit {
                stmt.execute(params![
                    a.seq,
                    a.at,
                    a.kind,
                    a.run_id,
                    a.step_id,
                    a.actor,
                    a.data,
                    a.prev_hash,
                    a.hash,
                    a.mac
                ])?;
            }
        }
        Ok(())
    }
}
