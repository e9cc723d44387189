//! Runs, steps, attempts, approvals and timers on SQLite.

use super::super::tx;
use super::write::load_state;
use super::{SqliteStore, all, get, json, json_opt, time, time_opt, write_tx};
use crate::store::*;
use rusqlite::{Row, params};
use serde_json::Value;

fn summary_from_row(r: &Row<'_>) -> StoreResult<RunSummary> {
    Ok(RunSummary {
        id: RunId(get(r, "id")?),
        workflow: get(r, "workflow")?,
        title: get(r, "title")?,
        status: get(r, "status")?,
        requested_by: get(r, "actor_display")?,
        platform: get(r, "platform")?,
        channel: get(r, "channel")?,
        created_at: time(r, "created_at")?,
        updated_at: time(r, "updated_at")?,
        finished_at: time_opt(r, "finished_at")?,
        stalled_at: time_opt(r, "stalled_at")?,
    })
}

/// The oldest pending approvals, at most `limit`, and how many there are in all.
pub(super) fn pending_approvals(
    c: &rusqlite::Connection,
    limit: u32,
) -> StoreResult<(Vec<PendingApproval>, u64)> {
    let listed = all(
        c,
        "SELECT a.*, r.workflow FROM approvals a JOIN runs r ON r.id = a.run_id
         WHERE a.status = 'pending' ORDER BY a.requested_at LIMIT ?",
        [i64::from(limit)],
        |r| {
            Ok(PendingApproval {
                run: RunId(get(r, "run_id")?),
                workflow: get(r, "workflow")?,
                step: get(r, "step_id")?,
                approvers: json(r, "approvers")?,
                summary: get(r, "summary")?,
                requested_at: time(r, "requested_at")?,
                expires_at: time(r, "expires_at")?,
            })
        },
    )?;
    let total = super::number(
        c,
        "SELECT COUNT(*) FROM approvals WHERE status = 'pending'",
        [],
    )?;
    Ok((listed, total as u64))
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn create_run(
        &self,
        new: NewRun,
        now: DateTime<Utc>,
        start: ApplyFn,
    ) -> StoreResult<Created> {
        write_tx!(self, |c, rules| {
            tx::create_run(c, rules, new, now, start).await
        })
    }

    async fn apply(
        &self,
        run: RunId,
        event_id: Option<&str>,
        f: ApplyFn,
    ) -> StoreResult<Option<Transition>> {
        let event_id = event_id.map(str::to_owned);
        write_tx!(self, |c, rules| {
            tx::apply(c, rules, run, event_id.as_deref(), f).await
        })
    }

    async fn load_run(&self, run: RunId) -> StoreResult<Option<RunState>> {
        self.read(|c| Ok(load_state(c, run)?.map(|(s, _)| s)))
    }

    async fn stalled_runs(&self, limit: u32) -> StoreResult<Vec<RunSummary>> {
        self.read(|c| {
            all(
                c,
                "SELECT * FROM runs WHERE stalled_at IS NOT NULL AND finished_at IS NULL ORDER BY stalled_at LIMIT ?",
                [i64::from(limit)],
                summary_from_row,
            )
        })
    }

    async fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
    ) -> StoreResult<Vec<RunSummary>> {
        self.read(|c| match status {
            Some(s) => all(
                c,
                "SELECT * FROM runs WHERE status = ? ORDER BY id DESC LIMIT ?",
                params![s.as_str(), i64::from(limit)],
                summary_from_row,
            ),
            None => all(
                c,
                "SELECT * FROM runs ORDER BY id DESC LIMIT ?",
                [i64::from(limit)],
                summary_from_row,
            ),
        })
    }

    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRow>> {
        self.read(|c| {
            all(
                c,
                "SELECT * FROM attempts WHERE run_id = ? ORDER BY started_at, step_id, attempt",
                [run.0],
                |r| {
                    Ok(AttemptRow {
                        step: get(r, "step_id")?,
                        attempt: get::<i64>(r, "attempt")? as u32,
                        status: get(r, "status")?,
                        input: json(r, "input")?,
                        detail: json_opt(r, "detail")?.unwrap_or(Value::Null),
                        started_at: time(r, "started_at")?,
                        finished_at: time_opt(r, "finished_at")?,
                    })
                },
            )
        })
    }

    async fn unfinished_attempts(&self) -> StoreResult<Vec<(RunId, String, u32)>> {
        self.read(|c| {
            all(
                c,
                "SELECT run_id, step_id, attempt FROM attempts WHERE status = 'running' ORDER BY run_id, step_id",
                [],
                |r| {
                    Ok((
                        RunId(get(r, "run_id")?),
                        get(r, "step_id")?,
                        get::<i64>(r, "attempt")? as u32,
                    ))
                },
            )
        })
    }

    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(RunId, String, DateTime<Utc>)>> {
        self.read(|c| {
            all(
                c,
                "SELECT run_id, key, due_at FROM timers WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                params![tx::ms(now), i64::from(limit)],
                |r| Ok((RunId(get(r, "run_id")?), get(r, "key")?, time(r, "due_at")?)),
            )
        })
    }

    async fn pending_approvals(&self, limit: u32) -> StoreResult<(Vec<PendingApproval>, u64)> {
        self.read(|c| pending_approvals(c, limit))
    }
}
