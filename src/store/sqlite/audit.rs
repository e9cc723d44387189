//! The ledger, the digest's figures and schedule cursors on SQLite.

use super::super::tx;
use super::{SqliteStore, all, exec, get, number, one, time, write_tx};
use crate::core::audit::Checkpoint;
use crate::core::digest::{LISTED, StalledRun, WaitingApproval};
use crate::store::*;
use rusqlite::{Row, params};

fn audit_from_row(r: &Row<'_>) -> StoreResult<AuditEntry> {
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
impl AuditStore for SqliteStore {
    async fn audit_append(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        write_tx!(self, |c, rules| { rules.append(c, &events).await })
    }

    async fn audit_page(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.read(|c| {
            all(
                c,
                "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                params![after_seq, i64::from(limit)],
                audit_from_row,
            )
        })
    }

    async fn audit_recent(&self, run: Option<RunId>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        self.read(|c| match run {
            Some(r) => all(
                c,
                "SELECT * FROM audit WHERE run_id = ? ORDER BY seq DESC LIMIT ?",
                params![r.0, i64::from(limit)],
                audit_from_row,
            ),
            None => all(
                c,
                "SELECT * FROM audit ORDER BY seq DESC LIMIT ?",
                [i64::from(limit)],
                audit_from_row,
            ),
        })
    }

    async fn digest_figures(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        stall_after: Duration,
    ) -> StoreResult<DigestFigures> {
        self.read(|c| {
            let mut f = DigestFigures {
                since,
                until,
                ..Default::default()
            };
            let (from, to) = (tx::ms(since), tx::ms(until));
            // Outcomes come from the ledger: the status changes recorded in the period.
            let outcomes = all(
                c,
                "SELECT json_extract(data, '$.to') AS outcome, COUNT(*) AS n FROM audit
                 WHERE kind = 'run.status' AND at > ? AND at <= ? GROUP BY outcome",
                params![from, to],
                |r| Ok((get::<Option<String>>(r, "outcome")?, get::<i64>(r, "n")?)),
            )?;
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
            f.started = number(
                c,
                "SELECT COUNT(*) FROM audit WHERE kind = 'run.started' AND at > ? AND at <= ?",
                params![from, to],
            )? as u64;
            let (waiting, waiting_count) = super::runs::pending_approvals(c, LISTED as u32)?;
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
            let idle_before = tx::ms(until - stall_after);
            // Flagged runs (their thread has the alert), and running ones idle past the
            // threshold that have not been flagged yet.
            f.stalled = all(
                c,
                "SELECT id, workflow, status, COALESCE(stalled_at, updated_at) AS idle_since FROM runs
                 WHERE finished_at IS NULL AND (stalled_at IS NOT NULL OR (status = 'running' AND updated_at < ?1))
                 ORDER BY idle_since LIMIT ?2",
                params![idle_before, LISTED as i64],
                |r| {
                    Ok(StalledRun {
                        run: RunId(get(r, "id")?),
                        workflow: get(r, "workflow")?,
                        status: get(r, "status")?,
                        idle_since: time(r, "idle_since")?,
                    })
                },
            )?;
            f.stalled_count = number(
                c,
                "SELECT COUNT(*) FROM runs WHERE finished_at IS NULL
                 AND (stalled_at IS NOT NULL OR (status = 'running' AND updated_at < ?))",
                [idle_before],
            )? as u64;
            f.undelivered =
                number(c, "SELECT COUNT(*) FROM outbox WHERE status = 'failed'", [])? as u64;
            f.ledger_head = one(
                c,
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| {
                    Ok(Checkpoint::of(
                        get(r, "seq")?,
                        r.get_ref("hash")?.as_str()?,
                        self.rules.audit_key(),
                    )
                    .to_string())
                },
            )?;
            Ok(f)
        })
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        self.read(|c| {
            one(
                c,
                "SELECT last_slot FROM schedule_cursors WHERE workflow = ? AND key = ?",
                [workflow, key],
                |r| time(r, "last_slot"),
            )
        })
    }

    async fn set_schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
        slot: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (workflow, key) = (workflow.to_owned(), key.to_owned());
        write_tx!(self, |c, _rules| {
            exec(
                c,
                "INSERT INTO schedule_cursors (workflow, key, last_slot) VALUES (?, ?, ?)
                 ON CONFLICT (workflow, key) DO UPDATE SET last_slot = MAX(last_slot, excluded.last_slot)",
                params![workflow, key, tx::ms(slot)],
            )
            .map(drop)
        })
    }
}
