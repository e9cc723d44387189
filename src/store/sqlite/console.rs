//! The console's chat history on SQLite.

use super::super::tx;
use super::{SqliteStore, all, exec, get, insert, json, one, time, write_tx};
use crate::store::*;
use rusqlite::{Connection, Row, params};

/// A console message with its reply count, as every read of one returns it.
macro_rules! console_select {
    ($where:literal) => {
        concat!(
            "SELECT m.*, (SELECT COUNT(*) FROM console_messages r WHERE r.thread_id = m.id) AS replies
             FROM console_messages m ",
            $where
        )
    };
}

/// Replaces a console message's content; the message as it now is, `None` when there is no
/// such message. What was written is in hand, so only the rest is read back.
fn edit(
    c: &Connection,
    id: i64,
    message: OutMessage,
    body: &str,
    at: i64,
) -> StoreResult<Option<ConsoleMessage>> {
    let changed = exec(
        c,
        "UPDATE console_messages SET body = ?, updated_at = ? WHERE id = ?",
        params![body, at, id],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    one(
        c,
        "SELECT id, channel, thread_id, author, is_bot, created_at, updated_at,
           (SELECT COUNT(*) FROM console_messages r WHERE r.thread_id = m.id) AS replies
         FROM console_messages m WHERE m.id = ?",
        [id],
        |r| edited_from_row(r, message),
    )
}

fn console_from_row(r: &Row<'_>) -> StoreResult<ConsoleMessage> {
    Ok(ConsoleMessage {
        id: get(r, "id")?,
        channel: get(r, "channel")?,
        thread_id: get(r, "thread_id")?,
        author: get(r, "author")?,
        is_bot: get(r, "is_bot")?,
        message: json(r, "body")?,
        created_at: time(r, "created_at")?,
        updated_at: time(r, "updated_at")?,
        replies: r.get("replies").unwrap_or(0),
    })
}

/// An edited message from its row (all but the body) and the new content.
fn edited_from_row(r: &Row<'_>, message: OutMessage) -> StoreResult<ConsoleMessage> {
    Ok(ConsoleMessage {
        id: get(r, "id")?,
        channel: get(r, "channel")?,
        thread_id: get(r, "thread_id")?,
        author: get(r, "author")?,
        is_bot: get(r, "is_bot")?,
        message,
        created_at: time(r, "created_at")?,
        updated_at: time(r, "updated_at")?,
        replies: get(r, "replies")?,
    })
}

impl tx::ConsoleTx for super::Conn {
    async fn console_insert(&mut self, r: &tx::ConsoleRow<'_>) -> StoreResult<Option<i64>> {
        insert(
            self,
            "INSERT INTO console_messages (channel, thread_id, author, is_bot, body, outbox_id, created_at, updated_at)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?6) ON CONFLICT DO NOTHING",
            params![r.channel, r.thread_id, r.author, r.body, r.outbox_id, r.at],
        )
    }

    async fn console_delivered(&mut self, outbox_id: i64) -> StoreResult<Option<ConsoleMessage>> {
        one(
            self,
            console_select!("WHERE m.outbox_id = ?"),
            [outbox_id],
            console_from_row,
        )
    }

    async fn console_replace(
        &mut self,
        id: i64,
        message: OutMessage,
        body: &str,
        at: i64,
    ) -> StoreResult<Option<ConsoleMessage>> {
        edit(self, id, message, body, at)
    }
}

#[async_trait]
impl ConsoleStore for SqliteStore {
    async fn console_deliver(
        &self,
        batch: Vec<ConsoleDelivery>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Result<ConsoleMessage, String>>> {
        let cleaned = batch
            .iter()
            .map(|d| self.rules.clean(&d.message))
            .collect::<StoreResult<Vec<_>>>()?;
        write_tx!(self, |c, rules| {
            tx::console_deliver(c, rules, batch, cleaned, now).await
        })
    }

    async fn console_post(
        &self,
        post: ConsolePost<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<(ConsoleMessage, bool)> {
        let ConsolePost {
            channel,
            thread_id,
            author,
            is_bot,
            message,
            outbox_id,
            client_id,
        } = post;
        let (stored, body) = self.rules.clean(message)?;
        let (channel, author) = (channel.to_owned(), author.to_owned());
        let client_id = client_id.map(str::to_owned);
        // Written, or found to be there already, in one write: a message sent twice at once
        // is stored once. A new message is not read back: it is what was just written.
        let (id, new): (i64, bool) = write_tx!(self, |c, rules| {
            let inserted = insert(
                c,
                "INSERT INTO console_messages (channel, thread_id, author, is_bot, body, outbox_id, client_id, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT DO NOTHING",
                params![channel, thread_id, author, is_bot, body, outbox_id, client_id, tx::ms(now)],
            )?;
            if let Some(id) = inserted {
                // Posting an outbox entry is delivering it: recorded in the same write, so no
                // crash can separate the two.
                if let Some(entry) = outbox_id {
                    tx::delivered(c, rules, entry, &id.to_string(), now).await?;
                }
                return Ok((id, true));
            }
            let earlier = one(
                c,
                "SELECT id FROM console_messages WHERE outbox_id = ? OR (author = ? AND client_id = ?)",
                params![outbox_id, author, client_id],
                |r| get::<i64>(r, "id"),
            )?
            .ok_or_else(|| {
                StoreError::Corrupt("a console message was refused as a duplicate of none".into())
            })?;
            Ok((earlier, false))
        })?;
        if !new {
            let m = self
                .console_get(id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("message vanished".into()))?;
            return Ok((m, false));
        }
        let m = ConsoleMessage {
            id,
            channel: post.channel.to_owned(),
            thread_id,
            author: post.author.to_owned(),
            is_bot,
            message: stored,
            created_at: tx::at(tx::ms(now)),
            updated_at: tx::at(tx::ms(now)),
            replies: 0,
        };
        Ok((m, true))
    }

    async fn console_edit(
        &self,
        id: i64,
        message: &OutMessage,
        outbox_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ConsoleMessage>> {
        let (message, body) = self.rules.clean(message)?;
        write_tx!(self, |c, rules| {
            let m = edit(c, id, message, &body, tx::ms(now))?;
            if m.is_some()
                && let Some(entry) = outbox_id
            {
                tx::delivered(c, rules, entry, &id.to_string(), now).await?;
            }
            Ok(m)
        })
    }

    async fn console_get(&self, id: i64) -> StoreResult<Option<ConsoleMessage>> {
        self.read(|c| one(c, console_select!("WHERE m.id = ?"), [id], console_from_row))
    }

    async fn console_member_of(
        &self,
        author: &str,
        channels: &[String],
    ) -> StoreResult<Vec<String>> {
        self.read(|c| {
            let mut out = Vec::new();
            for channel in channels {
                let found = one(
                    c,
                    "SELECT 1 FROM console_messages WHERE channel = ? AND author = ? AND is_bot = 0 LIMIT 1",
                    [channel.as_str(), author],
                    |_| Ok(()),
                )?;
                if found.is_some() {
                    out.push(channel.clone());
                }
            }
            Ok(out)
        })
    }

    async fn console_channel_names(&self) -> StoreResult<Vec<String>> {
        self.read(|c| {
            all(
                c,
                "SELECT DISTINCT channel FROM console_messages ORDER BY channel",
                [],
                |r| get(r, "channel"),
            )
        })
    }

    async fn console_channel(&self, channel: &str, limit: u32) -> StoreResult<Vec<ConsoleMessage>> {
        let mut out = self.read(|c| {
            all(
                c,
                console_select!(
                    "WHERE m.channel = ? AND m.thread_id IS NULL ORDER BY m.id DESC LIMIT ?"
                ),
                params![channel, i64::from(limit)],
                console_from_row,
            )
        })?;
        out.reverse();
        Ok(out)
    }

    async fn console_thread(&self, root: i64) -> StoreResult<Vec<ConsoleMessage>> {
        self.read(|c| {
            all(
                c,
                console_select!("WHERE m.id = ?1 OR m.thread_id = ?1 ORDER BY m.id"),
                [root],
                console_from_row,
            )
        })
    }
}
