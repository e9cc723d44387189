//! The outbox on PostgreSQL.

use super::super::tx::{self, Pending};
use super::{PostgresStore, each, get, write_tx};
use crate::store::*;
use sqlx::Row as _;
use sqlx::postgres::PgRow;
use std::collections::HashSet;

/// The columns of a waiting entry with the state of the post it depends on, read by
/// position in [`pending_from_row`].
macro_rules! pending_columns {
    () => {
        "o.id, o.run_id, o.key, o.op, o.platform, o.channel, o.thread_key, o.body,
        o.attempts, o.failing_since, o.alerted, o.urgent, o.private_to, o.next_attempt_at,
        (SELECT p.platform_ref FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post'),
        (SELECT p.platform_ref FROM outbox p WHERE p.key = o.key AND p.op = 'post'),
        (SELECT p.status FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post'),
        (SELECT p.status FROM outbox p WHERE p.key = o.key AND p.op = 'post')"
    };
}

fn pending_from_row(r: &PgRow) -> StoreResult<Pending> {
    Ok(Pending {
        entry: OutboxEntry {
            id: r.try_get(0)?,
            run: r.try_get::<Option<i64>, _>(1)?.map(RunId),
            key: MessageKey(r.try_get(2)?),
            op: if r.try_get::<&str, _>(3)? == "edit" {
                OutboxOp::Edit
            } else {
                OutboxOp::Post
            },
            platform: r.try_get(4)?,
            channel: r.try_get(5)?,
            thread_key: r.try_get::<Option<String>, _>(6)?.map(MessageKey),
            message: serde_json::from_str(r.try_get::<&str, _>(7)?)?,
            attempts: r.try_get::<i64, _>(8)? as u32,
            failing_since: r.try_get::<Option<i64>, _>(9)?.map(tx::at),
            alerted: r.try_get(10)?,
            urgent: r.try_get(11)?,
            private_to: r.try_get(12)?,
            thread_ref: r.try_get(14)?,
            target_ref: r.try_get(15)?,
        },
        next_attempt_at: r.try_get(13)?,
        thread_status: r.try_get(16)?,
        target_status: r.try_get(17)?,
    })
}

/// Every lane's oldest waiting entries, `per_lane` each, in one round trip: the
/// conversations with waiting entries are found by walking the lanes index from one to the
/// next (a deep queue in one is never read to reach another), then each one's oldest
/// entries are read from the same index. Urgent entries are lanes of their own.
const PENDING: &str = concat!(
    "WITH RECURSIVE lanes (platform, channel) AS (
       (SELECT platform, channel FROM outbox WHERE status = 'pending' AND NOT urgent
        ORDER BY platform, channel LIMIT 1)
       UNION ALL
       SELECT n.platform, n.channel FROM lanes l, LATERAL (
         SELECT platform, channel FROM outbox
         WHERE status = 'pending' AND NOT urgent AND (platform, channel) > (l.platform, l.channel)
         ORDER BY platform, channel LIMIT 1) n
     )
     SELECT * FROM (
       SELECT ",
    pending_columns!(),
    " FROM lanes l, LATERAL (
         SELECT * FROM outbox o WHERE o.status = 'pending' AND NOT o.urgent
           AND o.platform = l.platform AND o.channel = l.channel ORDER BY o.id LIMIT $1) o
       UNION ALL
       SELECT * FROM (SELECT ",
    pending_columns!(),
    " FROM outbox o WHERE o.status = 'pending' AND o.urgent ORDER BY o.id LIMIT $1) u
     ) w ORDER BY 12, 5, 6, 1"
);

/// The waiting entries a delivery pass considers: each lane's up to its first entry that is
/// not due (behind it the lane waits anyway), the lanes in `busy` left out.
fn lane_heads(rows: Vec<Pending>, now: i64, busy: &HashSet<Lane>) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::with_capacity(rows.len());
    let mut stopped: Option<Lane> = None;
    for p in rows {
        let lane = p.entry.lane();
        if busy.contains(&lane) || stopped.as_ref() == Some(&lane) {
            continue;
        }
        // Urgent entries go whenever they are asked for: each is its own lane.
        if !p.entry.urgent && p.next_attempt_at > now {
            stopped = Some(lane);
        }
        out.push(p);
    }
    out
}

#[async_trait]
impl OutboxStore for PostgresStore {
    async fn outbox_ready(
        &self,
        now: DateTime<Utc>,
        per_lane: u32,
        busy: &HashSet<Lane>,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(PENDING)
            .bind(i64::from(per_lane))
            .fetch_all(&self.pool)
            .await?;
        let pending = lane_heads(each(rows, pending_from_row)?, tx::ms(now), busy);
        let tx::Ready {
            entries,
            superseded,
            orphaned,
        } = tx::ready(pending, now);
        if !orphaned.is_empty() || !superseded.is_empty() {
            write_tx!(self, |c, _rules| {
                sqlx::query(
                    "UPDATE outbox SET status = 'failed', last_error = 'depends on a message that could not be delivered'
                     WHERE id = ANY($1) AND status = 'pending'",
                )
                .bind(&orphaned)
                .execute(&mut **c)
                .await?;
                sqlx::query(
                    "UPDATE outbox SET status = 'superseded' WHERE id = ANY($1) AND status = 'pending'",
                )
                .bind(&superseded)
                .execute(&mut **c)
                .await?;
                Ok(())
            })?;
        }
        Ok(entries)
    }

    async fn outbox_delivered(
        &self,
        id: i64,
        platform_ref: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let platform_ref = platform_ref.to_owned();
        write_tx!(self, |c, rules| {
            tx::delivered(c, rules, id, &platform_ref, now).await
        })
    }

    async fn outbox_defer(&self, id: i64, until: DateTime<Utc>) -> StoreResult<()> {
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "UPDATE outbox SET next_attempt_at = $1 WHERE id = $2 AND status = 'pending'",
            )
            .bind(tx::ms(until))
            .bind(id)
            .execute(&mut **c)
            .await?;
            Ok(())
        })
    }

    async fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let error = error.to_owned();
        write_tx!(self, |c, rules| {
            if let Some(next) = retry_at {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2,
                       failing_since = COALESCE(failing_since, $3) WHERE id = $4",
                )
                .bind(&error)
                .bind(tx::ms(next))
                .bind(tx::ms(now))
                .bind(id)
                .execute(&mut **c)
                .await?;
                return Ok(());
            }
            tx::failed(c, rules, id, &error, now).await
        })
    }

    async fn outbox_alerted(&self, id: i64) -> StoreResult<()> {
        write_tx!(self, |c, _rules| {
            sqlx::query("UPDATE outbox SET alerted = TRUE WHERE id = $1")
                .bind(id)
                .execute(&mut **c)
                .await?;
            Ok(())
        })
    }

    async fn message_ref(&self, key: &MessageKey) -> StoreResult<Option<String>> {
        let r: Option<Option<String>> =
            sqlx::query_scalar("SELECT platform_ref FROM outbox WHERE key = $1 AND op = 'post'")
                .bind(&key.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.flatten())
    }

    async fn failed_deliveries(&self, limit: u32) -> StoreResult<Vec<FailedDelivery>> {
        let rows = sqlx::query(
            "SELECT run_id, key, platform, channel, last_error, created_at FROM outbox
             WHERE status = 'failed' ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| {
            Ok(FailedDelivery {
                run: get::<Option<i64>>(r, "run_id")?.map(RunId),
                key: get(r, "key")?,
                platform: get(r, "platform")?,
                channel: get(r, "channel")?,
                error: get(r, "last_error")?,
                created_at: super::time(r, "created_at")?,
            })
        })
    }

    async fn outbox_of_run(&self, run: RunId) -> StoreResult<Vec<OutboxRow>> {
        let rows = sqlx::query(
            "SELECT id, key, op, status, attempts, last_error, platform_ref FROM outbox
             WHERE run_id = $1 ORDER BY id",
        )
        .bind(run.0)
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| {
            Ok(OutboxRow {
                id: get(r, "id")?,
                key: get(r, "key")?,
                op: get(r, "op")?,
                status: get(r, "status")?,
                attempts: get::<i64>(r, "attempts")? as u32,
                last_error: get(r, "last_error")?,
                platform_ref: get(r, "platform_ref")?,
            })
        })
    }
}
