//! Runs, steps, attempts, approvals and timers on PostgreSQL.

use super::super::tx;
use super::write::load_state;
use super::{PostgresStore, each, get, json, json_opt, time, time_opt, write_tx};
use crate::store::*;
use serde_json::Value;
use sqlx::postgres::PgRow;

fn summary_from_row(r: &PgRow) -> StoreResult<RunSummary> {
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

/// What a run's summary needs, without the workflow text it was started with.
const SUMMARY: &str =
    "SELECT id, workflow, title, status, actor_display, platform, channel, created_at, updated_at,
   finished_at, stalled_at FROM runs";

#[async_trait]
impl RunStore for PostgresStore {
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
        let mut c = self.pool.acquire().await?;
        Ok(load_state(&mut c, run, false).await?.map(|(s, _)| s))
    }

    async fn stalled_runs(&self, limit: u32) -> StoreResult<Vec<RunSummary>> {
        let rows = sqlx::query(&format!(
            "{SUMMARY} WHERE stalled_at IS NOT NULL AND finished_at IS NULL ORDER BY stalled_at LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        each(rows, summary_from_row)
    }

    async fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
    ) -> StoreResult<Vec<RunSummary>> {
        let rows = match status {
            Some(s) => {
                sqlx::query(&format!(
                    "{SUMMARY} WHERE status = $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(s.as_str())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{SUMMARY} ORDER BY id DESC LIMIT $1"))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        each(rows, summary_from_row)
    }

    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT * FROM attempts WHERE run_id = $1 ORDER BY started_at, step_id, attempt",
        )
        .bind(run.0)
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| {
            Ok(AttemptRow {
                step: get(r, "step_id")?,
                attempt: get::<i64>(r, "attempt")? as u32,
                status: get(r, "status")?,
                input: json(r, "input")?,
                detail: json_opt(r, "detail")?.unwrap_or(Value::Null),
                started_at: time(r, "started_at")?,
                finished_at: time_opt(r, "finished_at")?,
            })
        })
    }

    async fn unfinished_attempts(&self) -> StoreResult<Vec<(RunId, String, u32)>> {
        let rows = sqlx::query(
            "SELECT run_id, step_id, attempt FROM attempts WHERE status = 'running' ORDER BY run_id, step_id",
        )
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| {
            Ok((
                RunId(get(r, "run_id")?),
                get(r, "step_id")?,
                get::<i64>(r, "attempt")? as u32,
            ))
        })
    }

    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(RunId, String, DateTime<Utc>)>> {
        let rows = sqlx::query(
            "SELECT run_id, key, due_at FROM timers WHERE due_at <= $1 ORDER BY due_at LIMIT $2",
        )
        .bind(tx::ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| {
            Ok((RunId(get(r, "run_id")?), get(r, "key")?, time(r, "due_at")?))
        })
    }

    async fn pending_approvals(&self, limit: u32) -> StoreResult<(Vec<PendingApproval>, u64)> {
        let rows = sqlx::query(
            "SELECT a.*, r.workflow, COUNT(*) OVER () AS total FROM approvals a JOIN runs r ON r.id = a.run_id
             WHERE a.status = 'pending' ORDER BY a.requested_at LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let total = match rows.first() {
            Some(r) => get::<i64>(r, "total")? as u64,
            None => 0,
        };
        let listed = each(rows, |r| {
            Ok(PendingApproval {
                run: RunId(get(r, "run_id")?),
                workflow: get(r, "workflow")?,
                step: get(r, "step_id")?,
                approvers: json(r, "approvers")?,
                summary: get(r, "summary")?,
                requested_at: time(r, "requested_at")?,
                expires_at: time(r, "expires_at")?,
            })
        })?;
        Ok((listed, total))
    }
}
