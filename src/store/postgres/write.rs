//! The transaction layer's primitives on PostgreSQL. Every round trip to the server costs
//! more than SQLite's function calls, so a change is written by one statement for all its
//! rows: each table's rows go as one JSON array, which the statement reads with
//! `jsonb_to_recordset` (one fixed text, so its prepared form is reused).

use super::super::tx::{self, Head, Rows, Settled, Tx};
use super::super::{Definition, StoreError, StoreResult};
use super::{Conn, LEDGER_LOCK, get, json, json_opt, parsed, time, time_opt};
use crate::core::engine::{Approval, Run, RunState, StepState};
use crate::core::event::{Actor, ConversationRef};
use crate::core::ids::RunId;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A run as stored, with the workflow text it was started with. With `lock`, the run's row
/// stays locked until the transaction ends, so no other process changes it meanwhile.
pub(super) async fn load_state(
    c: &mut PgConnection,
    id: RunId,
    lock: bool,
) -> StoreResult<Option<(RunState, Definition)>> {
    let sql = if lock {
        "SELECT * FROM runs WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM runs WHERE id = $1"
    };
    let Some(row) = sqlx::query(sql).bind(id.0).fetch_optional(&mut *c).await? else {
        return Ok(None);
    };
    let (run, def) = run_from_row(id, &row)?;
    let mut steps = BTreeMap::new();
    for s in sqlx::query("SELECT * FROM steps WHERE run_id = $1")
        .bind(id.0)
        .fetch_all(&mut *c)
        .await?
    {
        steps.insert(
            get::<String>(&s, "step_id")?,
            StepState {
                status: parsed(&s, "status")?,
                attempt: get::<i64>(&s, "attempt")? as u32,
                retries_used: get::<i64>(&s, "retries_used")? as u32,
                output: json_opt(&s, "output")?,
                error: get(&s, "error")?,
                started_at: time_opt(&s, "started_at")?,
                finished_at: time_opt(&s, "finished_at")?,
            },
        );
    }
    let mut approvals = BTreeMap::new();
    for a in sqlx::query("SELECT * FROM approvals WHERE run_id = $1")
        .bind(id.0)
        .fetch_all(&mut *c)
        .await?
    {
        approvals.insert(get::<String>(&a, "step_id")?, approval_from_row(&a)?);
    }
    let mut timers = BTreeMap::new();
    for t in sqlx::query("SELECT key, due_at FROM timers WHERE run_id = $1")
        .bind(id.0)
        .fetch_all(&mut *c)
        .await?
    {
        timers.insert(get::<String>(&t, "key")?, time(&t, "due_at")?);
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

fn run_from_row(id: RunId, r: &PgRow) -> StoreResult<(Run, Definition)> {
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
        source: Arc::from(r.try_get::<&str, _>("definition")?),
    };
    Ok((run, def))
}

pub(super) fn approval_from_row(a: &PgRow) -> StoreResult<Approval> {
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
pub(super) fn settled(r: &PgRow) -> StoreResult<Settled> {
    Ok(Settled {
        run: get::<Option<i64>>(r, "run_id")?.map(RunId),
        key: get(r, "key")?,
        op: get(r, "op")?,
        platform: get(r, "platform")?,
        channel: get(r, "channel")?,
        text: r
            .try_get::<Option<String>, _>("text")
            .ok()
            .flatten()
            .unwrap_or_default(),
    })
}

/// Rows as the JSON array a `jsonb_to_recordset` statement reads.
fn records<T: Serialize>(rows: &T) -> StoreResult<String> {
    serde_json::to_string(rows).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// An outbox entry as its statement reads it: flat, with its place in the change.
#[derive(Serialize)]
struct OutboxRecord<'a> {
    n: usize,
    run: Option<i64>,
    key: &'a str,
    op: &'a str,
    body: &'a str,
    at: i64,
    thread_key: Option<&'a str>,
    /// `false` for an edit that goes where its post went (looked up).
    targeted: bool,
    platform: Option<&'a str>,
    channel: Option<&'a str>,
    urgent: bool,
    private_to: Option<&'a str>,
}

impl Tx for Conn {
    async fn insert_run(&mut self, r: &tx::NewRunRow) -> StoreResult<Option<RunId>> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO runs (workflow, event_id, status, platform, channel, thread, actor_platform, actor_id, actor_display,
               actor_is_bot, inputs, late, title, file, definition, created_at, updated_at)
             VALUES ($1, $2, 'running', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
             ON CONFLICT (event_id) DO NOTHING RETURNING id",
        )
        .bind(&r.workflow)
        .bind(&r.event_id)
        .bind(&r.platform)
        .bind(&r.channel)
        .bind(&r.thread)
        .bind(&r.actor_platform)
        .bind(&r.actor_id)
        .bind(&r.actor_display)
        .bind(r.actor_is_bot)
        .bind(&r.inputs)
        .bind(r.late)
        .bind(&r.title)
        .bind(&r.file)
        .bind(&*r.definition)
        .bind(r.created_at)
        .fetch_optional(&mut **self)
        .await?;
        Ok(id.map(RunId))
    }

    async fn run_for_event(&mut self, event_id: &str) -> StoreResult<Option<RunId>> {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&mut **self)
            .await?;
        Ok(id.map(RunId))
    }

    async fn load_run(&mut self, run: RunId) -> StoreResult<Option<(RunState, Definition)>> {
        load_state(self, run, true).await
    }

    async fn first_sighting(&mut self, event_id: &str, at: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO inbound_events (event_id, seen_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(event_id)
        .bind(at)
        .execute(&mut **self)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ledger_head(&mut self) -> StoreResult<Option<Head>> {
        // Held until this transaction ends: another process appending waits here, and then
        // reads the head this one wrote.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))")
            .bind(LEDGER_LOCK)
            .execute(&mut **self)
            .await?;
        let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **self)
            .await?;
        head.map(|r| {
            Ok(Head {
                seq: get(&r, "seq")?,
                hash: get(&r, "hash")?,
            })
        })
        .transpose()
    }

    async fn mark_delivered(
        &mut self,
        id: i64,
        platform_ref: &str,
        at: i64,
    ) -> StoreResult<Option<Settled>> {
        let row = sqlx::query(
            "UPDATE outbox SET status = 'delivered', platform_ref = $1, delivered_at = $2, attempts = attempts + 1
             WHERE id = $3 AND status <> 'delivered'
             RETURNING run_id, key, op, platform, channel, body::jsonb ->> 'text' AS text",
        )
        .bind(platform_ref)
        .bind(at)
        .bind(id)
        .fetch_optional(&mut **self)
        .await?;
        row.as_ref().map(settled).transpose()
    }

    async fn mark_failed(&mut self, id: i64, error: &str) -> StoreResult<Option<Settled>> {
        let row = sqlx::query(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = $1 WHERE id = $2
             RETURNING run_id, key, op, platform, channel",
        )
        .bind(error)
        .bind(id)
        .fetch_optional(&mut **self)
        .await?;
        row.as_ref().map(settled).transpose()
    }

    async fn fail_dependents(&mut self, key: &str, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE outbox SET status = 'failed', last_error = $1
             WHERE status = 'pending' AND (thread_key = $2 OR (key = $2 AND op = 'edit'))",
        )
        .bind(error)
        .bind(key)
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn write(&mut self, rows: &Rows) -> StoreResult<()> {
        let c: &mut PgConnection = self;
        let outbox: Vec<OutboxRecord<'_>> = rows
            .outbox
            .iter()
            .enumerate()
            .map(|(n, o)| OutboxRecord {
                n,
                run: o.run,
                key: &o.key,
                op: o.op,
                body: &o.body,
                at: o.at,
                thread_key: o.thread_key.as_deref(),
                targeted: o.target.is_some(),
                platform: o.target.as_ref().map(|t| t.platform.as_str()),
                channel: o.target.as_ref().map(|t| t.channel.as_str()),
                urgent: o.target.as_ref().is_some_and(|t| t.urgent),
                private_to: o.target.as_ref().and_then(|t| t.private_to.as_deref()),
            })
            .collect();
        let (cleared, set): (Vec<_>, Vec<_>) = rows.timers.iter().partition(|t| t.due_at.is_none());
        let (started, ended): (Vec<_>, Vec<_>) =
            rows.attempts.iter().partition(|a| a.input.is_some());
        let run = rows.run.as_ref();
        // Timers cleared and attempts ended are a few rows at most, each a point statement:
        // joined against the rows, the planner may scan the table (a plan chosen while it
        // was small is kept as it grows).
        for t in cleared {
            sqlx::query("DELETE FROM timers WHERE run_id = $1 AND key = $2")
                .bind(t.run)
                .bind(&t.key)
                .execute(&mut *c)
                .await?;
        }
        for a in ended {
            sqlx::query(
                "UPDATE attempts SET status = $1, detail = $2, finished_at = $3
                 WHERE run_id = $4 AND step_id = $5 AND attempt = $6 AND status = 'running'",
            )
            .bind(a.status)
            .bind(&a.detail)
            .bind(a.finished_at)
            .bind(a.run)
            .bind(&a.step)
            .bind(a.attempt)
            .execute(&mut *c)
            .await?;
        }
        // The rest of the change in one statement, one round trip: the run's row by its id,
        // each other table's rows a JSON array read by `jsonb_to_recordset` (an empty array
        // writes nothing) and inserted by key, every part a data-modifying CTE, which
        // PostgreSQL runs once and to completion whether or not anything reads it. The parts
        // touch different rows, so one snapshot is enough; the text is fixed, so its prepared
        // form is reused.
        sqlx::query(
            "WITH
             run_row AS (
               UPDATE runs SET status = $1, error = $2, updated_at = $3, finished_at = $4, stalled_at = $5,
                 conversation_lost = $6, alerts = $7
               WHERE id = $8),
             step_rows AS (
               INSERT INTO steps (run_id, step_id, status, attempt, retries_used, output, error, started_at, finished_at)
               SELECT run, step, status, attempt, retries_used, output, error, started_at, finished_at
               FROM jsonb_to_recordset($9::jsonb) AS x(run bigint, step text, status text, attempt bigint,
                 retries_used bigint, output text, error text, started_at bigint, finished_at bigint)
               ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
                 retries_used = excluded.retries_used, output = excluded.output, error = excluded.error,
                 started_at = excluded.started_at, finished_at = excluded.finished_at),
             approval_rows AS (
               INSERT INTO approvals (run_id, step_id, status, approvers, summary, requested_at, expires_at, decided_by,
                 decided_at, reason, payload, quorum, votes, reminded_at, escalated_at, content, editors, round)
               SELECT run, step, status, approvers, summary, requested_at, expires_at, decided_by, decided_at, reason,
                 payload, quorum, votes, reminded_at, escalated_at, content, editors, round
               FROM jsonb_to_recordset($10::jsonb) AS x(run bigint, step text, status text, approvers text, summary text,
                 requested_at bigint, expires_at bigint, decided_by text, decided_at bigint, reason text, payload text,
                 quorum bigint, votes text, reminded_at bigint, escalated_at bigint, content text, editors text, round bigint)
               ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, approvers = excluded.approvers,
                 summary = excluded.summary, requested_at = excluded.requested_at, expires_at = excluded.expires_at,
                 decided_by = excluded.decided_by, decided_at = excluded.decided_at, reason = excluded.reason,
                 payload = excluded.payload, quorum = excluded.quorum, votes = excluded.votes,
                 reminded_at = excluded.reminded_at, escalated_at = excluded.escalated_at,
                 content = excluded.content, editors = excluded.editors, round = excluded.round),
             timers_set AS (
               INSERT INTO timers (run_id, key, due_at)
               SELECT run, key, due_at FROM jsonb_to_recordset($11::jsonb) AS x(run bigint, key text, due_at bigint)
               ON CONFLICT (run_id, key) DO UPDATE SET due_at = excluded.due_at),
             -- Started in this change (perhaps ended in it too): a new row, replacing one of
             -- the same number.
             attempts_started AS (
               INSERT INTO attempts (run_id, step_id, attempt, status, input, started_at, detail, finished_at,
                 owner, lease_until)
               SELECT run, step, attempt, COALESCE(status, 'running'), input, started_at, detail, finished_at,
                 owner, lease_until
               FROM jsonb_to_recordset($12::jsonb) AS x(run bigint, step text, attempt bigint, input text,
                 started_at bigint, status text, detail text, finished_at bigint, owner text, lease_until bigint)
               ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET status = excluded.status, input = excluded.input,
                 started_at = excluded.started_at, detail = excluded.detail, finished_at = excluded.finished_at,
                 owner = excluded.owner, lease_until = excluded.lease_until),
             -- In the order asked for, so their ids keep it. An edit without a target goes
             -- where its post went, looked up row by row (LATERAL ... LIMIT 1, one index probe
             -- each: a join could become a scan of every post while the table's statistics lag
             -- behind its growth); one whose post does not exist is dropped.
             outbox_rows AS (
               INSERT INTO outbox (run_id, key, op, platform, channel, thread_key, body, status, next_attempt_at,
                 created_at, urgent, private_to)
               SELECT x.run, x.key, x.op, COALESCE(x.platform, p.platform), COALESCE(x.channel, p.channel),
                 x.thread_key, x.body, 'pending', x.at, x.at,
                 CASE WHEN x.targeted THEN x.urgent ELSE p.urgent END,
                 CASE WHEN x.targeted THEN x.private_to ELSE p.private_to END
               FROM jsonb_to_recordset($13::jsonb) AS x(n bigint, run bigint, key text, op text, body text, at bigint,
                 thread_key text, targeted boolean, platform text, channel text, urgent boolean, private_to text)
               LEFT JOIN LATERAL (SELECT * FROM outbox p WHERE NOT x.targeted AND p.key = x.key AND p.op = 'post' LIMIT 1) p ON TRUE
               WHERE x.targeted OR p.id IS NOT NULL
               ORDER BY x.n
               ON CONFLICT DO NOTHING),
             audit_rows AS (
               INSERT INTO audit (seq, at, kind, run_id, step_id, actor, data, prev_hash, hash, mac)
               SELECT seq, at, kind, run_id, step_id, actor, data, prev_hash, hash, mac
               FROM jsonb_to_recordset($14::jsonb) AS x(seq bigint, at bigint, kind text, run_id bigint, step_id text,
                 actor text, data text, prev_hash text, hash text, mac text)
               ORDER BY seq)
             SELECT 1",
        )
        .bind(run.map(|r| r.status))
        .bind(run.and_then(|r| r.error.as_deref()))
        .bind(run.map(|r| r.updated_at))
        .bind(run.and_then(|r| r.finished_at))
        .bind(run.and_then(|r| r.stalled_at))
        .bind(run.and_then(|r| r.conversation_lost.as_deref()))
        .bind(run.map(|r| r.alerts.as_str()))
        .bind(run.map(|r| r.id))
        .bind(records(&rows.steps)?)
        .bind(records(&rows.approvals)?)
        .bind(records(&set)?)
        .bind(records(&started)?)
        .bind(records(&outbox)?)
        .bind(records(&rows.audit)?)
        .execute(&mut *c)
        .await?;
        for (run, now) in &rows.redeliver {
            sqlx::query(
                "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL, failing_since = NULL, next_attempt_at = $1
                 WHERE run_id = $2 AND (status = 'failed' OR (status = 'pending' AND attempts > 0))",
            )
            .bind(now)
            .bind(run)
            .execute(&mut *c)
            .await?;
        }
        Ok(())
    }
}
