//! The console's chat history on PostgreSQL.

use super::super::tx;
use super::{PostgresStore, each, get, json, time, write_tx};
use crate::store::*;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgConnection, Row as _};

/// The channel replicas tell each other of console messages on.
const CHANNEL: &str = "baton_console";
/// Most message ids in one notification (a payload must stay under 8000 bytes).
const IDS_PER_NOTICE: usize = 400;

/// Tells the other replicas which console messages this write changed: PostgreSQL delivers
/// the notice when the transaction commits, and drops it when it rolls back. The payload names
/// the schema (databases in different schemas share the channel) and the replica (which has
/// told its own browsers already).
async fn tell_others(c: &mut PgConnection, replica: &str, ids: &[i64]) -> StoreResult<()> {
    for chunk in ids.chunks(IDS_PER_NOTICE) {
        let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
        sqlx::query("SELECT pg_notify($1, current_schema() || '|' || $2 || '|' || $3)")
            .bind(CHANNEL)
            .bind(replica)
            .bind(list.join(","))
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

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
async fn edit(
    c: &mut PgConnection,
    id: i64,
    message: OutMessage,
    body: &str,
    at: i64,
) -> StoreResult<Option<ConsoleMessage>> {
    // Read back with RETURNING: one round trip rather than an update and a select.
    let row = sqlx::query(
        "UPDATE console_messages AS m SET body = $1, updated_at = $2 WHERE m.id = $3
         RETURNING m.id, m.channel, m.thread_id, m.author, m.is_bot, m.created_at, m.updated_at,
           (SELECT COUNT(*) FROM console_messages r WHERE r.thread_id = m.id) AS replies",
    )
    .bind(body)
    .bind(at)
    .bind(id)
    .fetch_optional(c)
    .await?;
    row.map(|r| edited_from_row(&r, message)).transpose()
}

fn console_from_row(r: &PgRow) -> StoreResult<ConsoleMessage> {
    Ok(ConsoleMessage {
        id: get(r, "id")?,
        channel: get(r, "channel")?,
        thread_id: get(r, "thread_id")?,
        author: get(r, "author")?,
        is_bot: get(r, "is_bot")?,
        message: json(r, "body")?,
        created_at: time(r, "created_at")?,
        updated_at: time(r, "updated_at")?,
        replies: r.try_get("replies").unwrap_or(0),
    })
}

/// An edited message from its row (all but the body) and the new content.
fn edited_from_row(r: &PgRow, message: OutMessage) -> StoreResult<ConsoleMessage> {
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
        Ok(sqlx::query_scalar(
            "INSERT INTO console_messages (channel, thread_id, author, is_bot, body, outbox_id, created_at, updated_at)
             VALUES ($1, $2, $3, TRUE, $4, $5, $6, $6) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(r.channel)
        .bind(r.thread_id)
        .bind(r.author)
        .bind(r.body)
        .bind(r.outbox_id)
        .bind(r.at)
        .fetch_optional(&mut **self)
        .await?)
    }

    async fn console_delivered(&mut self, outbox_id: i64) -> StoreResult<Option<ConsoleMessage>> {
        sqlx::query(console_select!("WHERE m.outbox_id = $1"))
            .bind(outbox_id)
            .fetch_optional(&mut **self)
            .await?
            .map(|r| console_from_row(&r))
            .transpose()
    }

    async fn console_replace(
        &mut self,
        id: i64,
        message: OutMessage,
        body: &str,
        at: i64,
    ) -> StoreResult<Option<ConsoleMessage>> {
        edit(self, id, message, body, at).await
    }
}

#[async_trait]
impl ConsoleStore for PostgresStore {
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
            let results = tx::console_deliver(c, rules, batch, cleaned, now).await?;
            let ids: Vec<i64> = results.iter().flatten().map(|m| m.id).collect();
            tell_others(c, &rules.replica().name, &ids).await?;
            Ok(results)
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
            let inserted = sqlx::query(
                "INSERT INTO console_messages (channel, thread_id, author, is_bot, body, outbox_id, client_id, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(&channel)
            .bind(thread_id)
            .bind(&author)
            .bind(is_bot)
            .bind(&body)
            .bind(outbox_id)
            .bind(client_id.as_deref())
            .bind(tx::ms(now))
            .fetch_optional(&mut **c)
            .await?;
            if let Some(r) = inserted {
                let id: i64 = get(&r, "id")?;
                // Posting an outbox entry is delivering it: recorded in the same write, so no
                // crash can separate the two.
                if let Some(entry) = outbox_id {
                    tx::delivered(c, rules, entry, &id.to_string(), now).await?;
                }
                tell_others(c, &rules.replica().name, &[id]).await?;
                return Ok((id, true));
            }
            let earlier = sqlx::query(
                "SELECT id FROM console_messages WHERE outbox_id = $1 OR (author = $2 AND client_id = $3)",
            )
            .bind(outbox_id)
            .bind(&author)
            .bind(client_id.as_deref())
            .fetch_optional(&mut **c)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt("a console message was refused as a duplicate of none".into())
            })?;
            Ok((get(&earlier, "id")?, false))
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
            let m = edit(c, id, message, &body, tx::ms(now)).await?;
            if m.is_some() {
                if let Some(entry) = outbox_id {
                    tx::delivered(c, rules, entry, &id.to_string(), now).await?;
                }
                tell_others(c, &rules.replica().name, &[id]).await?;
            }
            Ok(m)
        })
    }

    async fn console_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<i64>>> {
        let schema: String = match sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&self.pool)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow other replicas' console messages");
                return None;
            }
        };
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow other replicas' console messages");
                return None;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot follow other replicas' console messages");
            return None;
        }
        let me = self.rules.replica().name.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let notice = tokio::select! {
                    n = listener.try_recv() => n,
                    () = tx.closed() => return,
                };
                match notice {
                    Ok(Some(n)) => {
                        let mut parts = n.payload().splitn(3, '|');
                        let (Some(s), Some(from), Some(ids)) =
                            (parts.next(), parts.next(), parts.next())
                        else {
                            continue;
                        };
                        if s != schema || from == me {
                            continue;
                        }
                        let ids = ids.split(',').filter_map(|i| i.parse().ok()).collect();
                        if tx.send(ids).is_err() {
                            return;
                        }
                    }
                    // The connection was lost and is opened again on the next call; what was
                    // said meanwhile is missed (a browser shows it on its next load).
                    Ok(None) => tracing::warn!(
                        "lost the database connection following other replicas' console messages; reconnecting"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot follow other replicas' console messages; trying again");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Some(rx)
    }

    async fn console_get(&self, id: i64) -> StoreResult<Option<ConsoleMessage>> {
        sqlx::query(console_select!("WHERE m.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| console_from_row(&r))
            .transpose()
    }

    async fn console_member_of(
        &self,
        author: &str,
        channels: &[String],
    ) -> StoreResult<Vec<String>> {
        // Every channel in one round trip (SQLite asks channel by channel), in the order given.
        let rows = sqlx::query(
            "SELECT c.channel FROM unnest($1::text[]) WITH ORDINALITY AS c (channel, n)
             WHERE EXISTS (SELECT 1 FROM console_messages m
                           WHERE m.channel = c.channel AND m.author = $2 AND NOT m.is_bot)
             ORDER BY c.n",
        )
        .bind(channels)
        .bind(author)
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| get(r, "channel"))
    }

    async fn console_channel_names(&self) -> StoreResult<Vec<String>> {
        // In byte order, as SQLite sorts text, whatever the database's collation.
        let rows = sqlx::query(
            r#"SELECT channel FROM console_messages GROUP BY channel ORDER BY channel COLLATE "C""#,
        )
        .fetch_all(&self.pool)
        .await?;
        each(rows, |r| get(r, "channel"))
    }

    async fn console_channel(&self, channel: &str, limit: u32) -> StoreResult<Vec<ConsoleMessage>> {
        let rows = sqlx::query(console_select!(
            "WHERE m.channel = $1 AND m.thread_id IS NULL ORDER BY m.id DESC LIMIT $2"
        ))
        .bind(channel)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = each(rows, console_from_row)?;
        out.reverse();
        Ok(out)
    }

    async fn console_thread(&self, root: i64) -> StoreResult<Vec<ConsoleMessage>> {
        let rows = sqlx::query(console_select!(
            "WHERE m.id = $1 OR m.thread_id = $1 ORDER BY m.id"
        ))
        .bind(root)
        .fetch_all(&self.pool)
        .await?;
        each(rows, console_from_row)
    }
}
