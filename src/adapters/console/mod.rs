//! The local web console: the embedded default platform. It behaves like a chat workspace
//! (channels, threads, buttons, live updates) and adds pages for runs, approvals and the ledger.
//!
//! Same shape as every adapter: this file holds the adapter and its outbound delivery,
//! `inbound.rs` turns console requests into core events, `pages.rs` renders the extra pages.

pub mod inbound;
pub mod pages;

use super::{DeliveryError, Platform};
use crate::core::clock::Clock;
use crate::core::message::OutMessage;
use crate::store::{ConsoleMessage, ConsolePost, OutboxEntry, OutboxOp, Store};
use async_trait::async_trait;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The bot's name in the console.
pub const BOT_NAME: &str = "baton";
/// The channel webhook deliveries to the console's inbox appear in.
pub const INBOX_CHANNEL: &str = "inbox";

/// A change pushed to every open console over server-sent events.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConsoleUpdate {
    Message { message: ConsoleMessage },
}

/// The console platform.
pub struct Console {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    updates: broadcast::Sender<ConsoleUpdate>,
}

/// Whether a channel name is acceptable: what chat platforms allow, in lower case.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 80
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Console {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let (updates, _) = broadcast::channel(1024);
        Arc::new(Self {
            store,
            clock,
            updates,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ConsoleUpdate> {
        self.updates.subscribe()
    }

    /// Stores a message and tells every open console. With `client_id`, a message the same
    /// author sent before under that id is returned as it was, and nobody is told again.
    pub async fn post(
        &self,
        channel: &str,
        thread: Option<i64>,
        author: &str,
        is_bot: bool,
        message: &OutMessage,
        client_id: Option<&str>,
    ) -> anyhow::Result<ConsoleMessage> {
        let (m, new) = self
            .store
            .console_post(
                ConsolePost {
                    channel,
                    thread_id: thread,
                    author,
                    is_bot,
                    message,
                    outbox_id: None,
                    client_id,
                },
                self.clock.now(),
            )
            .await?;
        // A message stored before (a resend) was announced then.
        if new {
            self.announce(&m).await;
        }
        Ok(m)
    }

    /// Broadcasts a message and, for a reply, its thread root (whose reply count changed).
    async fn announce(&self, m: &ConsoleMessage) {
        let _ = self
            .updates
            .send(ConsoleUpdate::Message { message: m.clone() });
        if let Some(root) = m.thread_id
            && let Ok(Some(root)) = self.store.console_get(root).await
        {
            let _ = self.updates.send(ConsoleUpdate::Message { message: root });
        }
    }
}

#[async_trait]
impl Platform for Console {
    fn name(&self) -> &'static str {
        "console"
    }

    fn records_deliveries(&self) -> bool {
        true
    }

    async fn deliver(&self, entry: &OutboxEntry) -> Result<String, DeliveryError> {
        let transient = |e: crate::store::StoreError| DeliveryError::Transient {
            message: e.to_string(),
            retry_after: None,
        };
        match entry.op {
            OutboxOp::Post => {
                // A private post goes to the person's own channel, `@name`.
                let direct = entry.private_to.as_ref().map(|user| format!("@{user}"));
                let channel = direct.as_deref().unwrap_or(&entry.channel);
                if direct.is_none() && !valid_channel(channel) {
                    return Err(DeliveryError::Permanent(format!(
                        "channel `{channel}` does not exist"
                    )));
                }
                let thread = match &entry.thread_ref {
                    Some(r) => Some(r.parse::<i64>().map_err(|_| {
                        DeliveryError::Permanent(format!("bad thread reference `{r}`"))
                    })?),
                    None => None,
                };
                let (m, _) = self
                    .store
                    .console_post(
                        ConsolePost {
                            channel,
                            thread_id: thread,
                            author: BOT_NAME,
                            is_bot: true,
                            message: &entry.message,
                            outbox_id: Some(entry.id),
                            client_id: None,
                        },
                        self.clock.now(),
                    )
                    .await
                    .map_err(transient)?;
                self.announce(&m).await;
                Ok(m.id.to_string())
            }
            OutboxOp::Edit => {
                let target = entry.target_ref.as_deref().unwrap_or_default();
                let id: i64 = target.parse().map_err(|_| {
                    DeliveryError::Permanent(format!("bad message reference `{target}`"))
                })?;
                match self
                    .store
                    .console_edit(id, &entry.message, Some(entry.id), self.clock.now())
                    .await
                    .map_err(transient)?
                {
                    Some(m) => {
                        self.announce(&m).await;
                        Ok(m.id.to_string())
                    }
                    None => Err(DeliveryError::Permanent(format!(
                        "message {id} no longer exists"
                    ))),
                }
            }
        }
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.store.ping().await?;
        Ok(())
    }
}
