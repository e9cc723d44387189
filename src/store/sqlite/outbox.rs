//! The outbox on SQLite.

use super::super::tx::{self, Pending};
use super::write::settled;
use super::{SqliteStore, all, exec, get, json, one, time_opt, write_tx};
use crate::store::*;
use rusqlite::params;

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_ready(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<OutboxEntry>> {
        let pending = self.read(|c| {
            all(
                c,
                "SELECT o.*,
                        (SELECT p.platform_ref FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post') AS thread_ref,
                        (SELECT p.platform_ref FROM outbox p WHERE p.key = o.key AND p.op = 'post') AS target_ref,
                        (SELECT p.status FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post') AS thread_status,
                        (SELECT p.status FROM outbox p WHERE p.key = o.key AND p.op = 'post') AS target_status
                 FROM outbox o WHERE o.status = 'pending' ORDER BY o.id LIMIT ?",
                [i64::from(limit) * 4],
                |r| {
                    Ok(Pending {
                        entry: OutboxEntry {
                            id: get(r, "id")?,
                            run: get::<Option<i64>>(r, "run_id")?.map(RunId),
                            key: MessageKey(get(r, "key")?),
                            op: if r.get_ref("op")?.as_str()? == "edit" {
                                OutboxOp::Edit
                            } else {
                                OutboxOp::Post
                            },
                            platform: get(r, "platform")?,
                            channel: get(r, "channel")?,
                            thread_key: get::<Option<String>>(r, "thread_key")?.map(MessageKey),
                            thread_ref: get(r, "thread_ref")?,
                            target_ref: get(r, "target_ref")?,
                            message: json(r, "body")?,
                            attempts: get::<i64>(r, "attempts")? as u32,
                            failing_since: time_opt(r, "failing_since")?,
                            alerted: get(r, "alerted")?,
                            urgent: get(r, "urgent")?,
                            private_to: get(r, "private_to")?,
                        },
                        next_attempt_at: get(r, "next_attempt_at")?,
                        thread_status: get(r, "thread_status")?,
                        target_status: get(r, "target_status")?,
                    })
                },
            )
        })?;
        let tx::Ready {
            entries,
            superseded,
            orphaned,
        } = tx::ready(pending, now, limit);
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
            let Some(s) = one(
                c,
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?
                 RETURNING run_id, key, op, platform, channel",
                params![error, id],
                settled,
            )?
            else {
                return Ok(());
            };
            // Replies and edits that depend on a post that will never exist cannot be
            // delivered either; they fail with it rather than wait forever.
            if s.op == "post" {
                exec(
                    c,
                    "UPDATE outbox SET status = 'failed', last_error = ?1
                     WHERE status = 'pending' AND (thread_key = ?2 OR (key = ?2 AND op = 'edit'))",
                    params![
                        format!("depends on {}, which could not be delivered", s.key),
                        s.key
                    ],
                )?;
            }
            let ev = tx::failed_event(now, &s, &error);
            rules.append(c, &[ev]).await
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
