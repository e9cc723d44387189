//! The ledger, the digest's figures and schedule cursors on PostgreSQL.

use super::super::tx;
use super::{PostgresStore, each, get, time, write_tx};
use crate::core::audit::Checkpoint;
use crate::core::digest::{LISTED, StalledRun, WaitingApproval};
use crate::store::*;
use sqlx::postgres::PgRow;

fn audit_from_row(r: &PgRow) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        seq: get(r, "seq")?,
        at: time(r, "at")?,
        kind: get(r, "kind")?,
        run: get(r, "run_id")?,
        step: get(r, "step_id")?,
        actor: get(r, "actor")?,
        data: get(r, "data")?,
        prev_hash: get(r, "prev_hash")?,
        hash: get(r, "hash")?,
        mac: get(r, "mac")?,
    })
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn audit_append(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        write_tx!(self, |c, rules| { rules.append(c, &events).await })
    }

    async fn audit_page(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        each(rows, audit_from_row)
    }

    async fn audit_recent(&self, run: Option<RunId>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let rows = match run {
            Some(r) => {
                sqlx::query("SELECT * FROM audit WHERE run_id = $1 ORDER BY seq DESC LIMIT $2")
                    .bind(r.0)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM audit ORDER BY seq DESC LIMIT $1")
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        each(rows, audit_from_row)
    }

    async fn digest_figures(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        stall_after: Duration,
    ) -> StoreResult<DigestFigures> {
        let mut f = DigestFigures {
            since,
            until,
            ..Default::default()
        };
        let (from, to) = (tx::ms(since), tx::ms(until));
        // Outcomes come from the ledger: the status changes recorded in the period. PostgreSQL
        // refuses to read JSON holding an escaped NUL (`\u0000`, which its text cannot hold),
        // so each is made `\u0001` first: still valid JSON, and `to` is never one.
        let outcomes = sqlx::query(
            r"SELECT replace(data, E'\\u0000', E'\\u0001')::jsonb ->> 'to' AS outcome, COUNT(*) AS n
             FROM audit WHERE kind = 'run.status' AND at > $1 AND at <= $2 GROUP BY outcome",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let outcomes = each(outcomes, |r| {
            let outcome: Option<String> = get(r, "outcome")?;
            let n: i64 = get(r, "n")?;
            Ok((outcome, n))
        })?;
        for (outcome, n) in outcomes {
            let n = n as u64;
            match outcome.as_deref() {
                Some("succeeded") => f.succeeded = n,
                Some("failed") => f.failed = n,
                Some("rejected") => f.rejected = n,
                Some("cancelled") => f.cancelled = n,
                _ => {}
            }
        }
        let idle_before = tx::ms(until - stall_after);
        // One round trip for the counts.
        let counts = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM audit WHERE kind = 'run.started' AND at > $1 AND at <= $2) AS started,
               (SELECT COUNT(*) FROM runs WHERE finished_at IS NULL
                  AND (stalled_at IS NOT NULL OR (status = 'running' AND updated_at < $3))) AS stalled,
               (SELECT COUNT(*) FROM outbox WHERE status = 'failed') AS undelivered",
        )
        .bind(from)
        .bind(to)
        .bind(idle_before)
        .fetch_one(&self.pool)
        .await?;
        f.started = get::<i64>(&counts, "started")? as u64;
        let (waiting, waiting_count) = RunStore::pending_approvals(self, LISTED as u32).await?;
        f.waiting_count = waiting_count;
        f.waiting = waiting
            .into_iter()
            .map(|p| WaitingApproval {
                run: p.run,
                workflow: p.workflow,
                step: p.step,
                approvers: p.approvers,
                since: p.requested_at,
            })
            .collect();
        // Flagged runs (their thread has the alert), and running ones idle past the
        // threshold that have not been flagged yet.
        let stalled = sqlx::query(
            "SELECT id, workflow, status, COALESCE(stalled_at, updated_at) AS idle_since FROM runs
             WHERE finished_at IS NULL AND (stalled_at IS NOT NULL OR (status = 'running' AND updated_at < $1))
             ORDER BY idle_since LIMIT $2",
        )
        .bind(idle_before)
        .bind(LISTED as i64)
        .fetch_all(&self.pool)
        .await?;
        f.stalled = each(stalled, |r| {
            Ok(StalledRun {
                run: RunId(get(r, "id")?),
                workflow: get(r, "workflow")?,
                status: get(r, "status")?,
                idle_since: time(r, "idle_since")?,
            })
        })?;
        f.stalled_count = get::<i64>(&counts, "stalled")? as u64;
        f.undelivered = get::<i64>(&counts, "undelivered")? as u64;
        let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        f.ledger_head = match head {
            Some(r) => Some(
                Checkpoint::of(get(&r, "seq")?, get(&r, "hash")?, self.rules.audit_key())
                    .to_string(),
            ),
            None => None,
        };
        Ok(f)
    }
}

#[async_trait]
impl ScheduleStore for PostgresStore {
    async fn schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let row =
            sqlx::query("SELECT last_slot FROM schedule_cursors WHERE workflow = $1 AND key = $2")
                .bind(workflow)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| time(&r, "last_slot")).transpose()
    }

    async fn set_schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
        slot: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (workflow, key) = (workflow.to_owned(), key.to_owned());
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "INSERT INTO schedule_cursors (workflow, key, last_slot) VALUES ($1, $2, $3)
                 ON CONFLICT (workflow, key)
                 DO UPDATE SET last_slot = GREATEST(schedule_cursors.last_slot, excluded.last_slot)",
            )
            .bind(workflow)
            .bind(key)
            .bind(tx::ms(slot))
            .execute(&mut **c)
            .await?;
            Ok(())
        })
    }
}
