//! The outbox on SQLite.

use super::super::tx::{self, Pending};
use super::{SqliteStore, all, exec, get, one, write_tx};
use crate::store::*;
use rusqlite::{Connection, Row, params};
use std::collections::HashSet;

/// The columns of a waiting entry with the state of the post it depends on, and a `WHERE`
/// clause, as one static text (so its prepared form is reused). `pending_from_row` reads
/// them by position: this is a hot path, and names would be looked up for every column of
/// every row.
macro_rules! concat_pending {
    ($where:literal) => {
        concat!(
            "SELECT o.id, o.run_id, o.key, o.op, o.platform, o.channel, o.thread_key, o.body,
        o.attempts, o.failing_since, o.alerted, o.urgent, o.private_to, o.next_attempt_at,
        (SELECT p.platform_ref FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post'),
        (SELECT p.platform_ref FROM outbox p WHERE p.key = o.key AND p.op = 'post'),
        (SELECT p.status FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post'),
        (SELECT p.status FROM outbox p WHERE p.key = o.key AND p.op = 'post')
     FROM outbox o ",
            $where
        )
    };
}

fn pending_from_row(r: &Row<'_>) -> StoreResult<Pending> {
    Ok(Pending {
        entry: OutboxEntry {
            id: r.get(0)?,
            run: r.get::<_, Option<i64>>(1)?.map(RunId),
            key: MessageKey(r.get(2)?),
            op: if r.get_ref(3)?.as_str()? == "edit" {
                OutboxOp::Edit
            } else {
                OutboxOp::Post
            },
            platform: r.get(4)?,
            channel: r.get(5)?,
            thread_key: r.get::<_, Option<String>>(6)?.map(MessageKey),
            message: serde_json::from_str(r.get_ref(7)?.as_str()?)?,
            attempts: r.get::<_, i64>(8)? as u32,
            failing_since: r.get::<_, Option<i64>>(9)?.map(tx::at),
            alerted: r.get(10)?,
            urgent: r.get(11)?,
            private_to: r.get(12)?,
            thread_ref: r.get(14)?,
            target_ref: r.get(15)?,
        },
        next_attempt_at: r.get(13)?,
        thread_status: r.get(16)?,
        target_status: r.get(17)?,
    })
}

/// A lane's oldest waiting entries, up to the first that is not due (behind it the lane
/// waits anyway).
fn lane_head(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    now: i64,
    out: &mut Vec<Pending>,
) -> StoreResult<()> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    while let Some(r) = rows.next()? {
        let p = pending_from_row(r)?;
        let due = p.next_attempt_at <= now;
        out.push(p);
        if !due {
            break;
        }
    }
    Ok(())
}

/// Every lane's oldest waiting entries, `per_lane` each, skipping the lanes in `busy`. The
/// conversations with waiting entries are found one index seek at a time, so a deep queue
/// in one is never read to reach another.
fn pending(
    c: &Connection,
    now: i64,
    per_lane: u32,
    busy: &HashSet<Lane>,
) -> StoreResult<Vec<Pending>> {
    let limit = i64::from(per_lane);
    let mut out = Vec::new();
    let (mut platform, mut channel) = (String::new(), String::new());
    loop {
        // The next channel of this platform, else the first of the next platform. (A row
        // value, `(platform, channel) > (?, ?)`, would read through every waiting entry of
        // the current conversation to get past it.)
        let pair = |r: &Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
        let next = match one(
            c,
            "SELECT platform, channel FROM outbox WHERE status = 'pending' AND urgent = 0
               AND platform = ? AND channel > ? ORDER BY channel LIMIT 1",
            [&platform, &channel],
            pair,
        )? {
            Some(next) => Some(next),
            None => one(
                c,
                "SELECT platform, channel FROM outbox WHERE status = 'pending' AND urgent = 0
                   AND platform > ? ORDER BY platform, channel LIMIT 1",
                [&platform],
                pair,
            )?,
        };
        let Some((p, ch)) = next else { break };
        (platform, channel) = (p, ch);
        let lane = Lane::Conversation {
            platform: platform.clone(),
            channel: channel.clone(),
        };
        if busy.contains(&lane) {
            continue;
        }
        lane_head(
            c,
            concat_pending!(
                "WHERE o.status = 'pending' AND o.urgent = 0 AND o.platform = ? AND o.channel = ? ORDER BY o.id LIMIT ?"
            ),
            params![platform, channel, limit],
            now,
            &mut out,
        )?;
    }
    // Urgent entries are lanes of their own.
    let mut urgent = Vec::new();
    lane_head(
        c,
        concat_pending!("WHERE o.status = 'pending' AND o.urgent = 1 ORDER BY o.id LIMIT ?"),
        [limit],
        i64::MAX,
        &mut urgent,
    )?;
    out.extend(
        urgent
            .into_iter()
            .filter(|p| !busy.contains(&Lane::Urgent(p.entry.id))),
    );
    Ok(out)
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_ready(
        &self,
        now: DateTime<Utc>,
        per_lane: u32,
        busy: &HashSet<Lane>,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let pending = self.read(|c| pending(c, tx::ms(now), per_lane, busy))?;
        let tx::Ready {
            entries,
            superseded,
            orphaned,
        } = tx::ready(pending, now);
        if !orphaned.is_empty() || !superseded.is_empty() {
            write_tx!(self, |c, _rules| {
                for id in orphaned {
                    exec(
                        c,
                        "UPDATE outbox SET status = 'failed', last_error = 'depends on a message that could not be delivered'
                         WHERE id = ? AND status = 'pending'",
                        [id],
                    )?;
                }
                for id in superseded {
                    exec(
                        c,
                        "UPDATE outbox SET status = 'superseded' WHERE id = ? AND status = 'pending'",
                        [id],
                    )?;
                }
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
            exec(
                c,
                "UPDATE outbox SET next_attempt_at = ? WHERE id = ? AND status = 'pending'",
                params![tx::ms(until), id],
            )
            .map(drop)
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
                exec(
                    c,
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,
                       failing_since = COALESCE(failing_since, ?) WHERE id = ?",
                    params![error, tx::ms(next), tx::ms(now), id],
                )?;
                return Ok(());
            }
            tx::failed(c, rules, id, &error, now).await
        })
    }

    async fn outbox_alerted(&self, id: i64) -> StoreResult<()> {
        write_tx!(self, |c, _rules| {
            exec(c, "UPDATE outbox SET alerted = 1 WHERE id = ?", [id]).map(drop)
        })
    }

    async fn message_ref(&self, key: &MessageKey) -> StoreResult<Option<String>> {
        self.read(|c| {
            Ok(one(
                c,
                "SELECT platform_ref FROM outbox WHERE key = ? AND op = 'post'",
                [&key.0],
                |r| get::<Option<String>>(r, "platform_ref"),
            )?
            .flatten())
        })
    }

    async fn failed_deliveries(&self, limit: u32) -> StoreResult<Vec<FailedDelivery>> {
        self.read(|c| {
            all(
                c,
                "SELECT run_id, key, platform, channel, last_error, created_at FROM outbox
                 WHERE status = 'failed' ORDER BY id DESC LIMIT ?",
                [i64::from(limit)],
                |r| {
                    Ok(FailedDelivery {
                        run: get::<Option<i64>>(r, "run_id")?.map(RunId),
                        key: get(r, "key")?,
                        platform: get(r, "platform")?,
                        channel: get(r, "channel")?,
                        error: get(r, "last_error")?,
                        created_at: super::time(r, "created_at")?,
                    })
                },
            )
        })
    }

    async fn outbox_of_run(&self, run: RunId) -> StoreResult<Vec<OutboxRow>> {
        self.read(|c| {
            all(
                c,
                "SELECT * FROM outbox WHERE run_id = ? ORDER BY id",
                [run.0],
                |r| {
                    Ok(OutboxRow {
                        id: get(r, "id")?,
                        key: get(r, "key")?,
                        op: get(r, "op")?,
                        status: get(r, "status")?,
                        attempts: get::<i64>(r, "attempts")? as u32,
                        last_error: get(r, "last_error")?,
                        platform_ref: get(r, "platform_ref")?,
                    })
                },
            )
        })
    }
}
