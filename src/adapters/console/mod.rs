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
use crate::store::{
    ConsoleDelivery, ConsoleMessage, ConsolePost, ConsoleRef, OutboxEntry, OutboxOp, Store,
};
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

    /// Shows browsers connected here the console messages other replicas write, as their
    /// ids arrive, until shutdown.
    pub async fn follow(
        self: Arc<Self>,
        mut changes: tokio::sync::mpsc::UnboundedReceiver<Vec<i64>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let ids = tokio::select! {
                ids = changes.recv() => ids,
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let Some(ids) = ids else { return };
            let mut messages = Vec::with_capacity(ids.len());
            for id in ids {
                match self.store.console_get(id).await {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read a console message another replica wrote")
                    }
                }
            }
            self.announce_all(&messages).await;
        }
    }

    /// Broadcasts a message and, for a reply, its thread root (whose reply count changed).
    async fn announce(&self, m: &ConsoleMessage) {
        self.announce_all(std::slice::from_ref(m)).await;
    }

    /// Broadcasts messages in order, then each thread root they reply to once, as it now
    /// stands (its reply count changed): a thread delivered in one batch costs one read of
    /// its root, not one per reply.
    async fn announce_all(&self, messages: &[ConsoleMessage]) {
        let mut roots: Vec<i64> = Vec::new();
        for m in messages {
            let _ = self
                .updates
                .send(ConsoleUpdate::Message { message: m.clone() });
            if let Some(root) = m.thread_id
                && !roots.contains(&root)
            {
                roots.push(root);
            }
        }
        for root in roots {
            if let Ok(Some(root)) = self.store.console_get(root).await {
                let _ = self.updates.send(ConsoleUpdate::Message { message: root });
            }
        }
    }
}

/// What the console stores to deliver an outbox entry, or why it cannot.
fn delivery(entry: &OutboxEntry) -> Result<ConsoleDelivery, DeliveryError> {
    let id = |r: &str, what: &str| {
        r.parse::<i64>()
            .map(ConsoleRef::Id)
            .map_err(|_| DeliveryError::Permanent(format!("bad {what} reference `{r}`")))
    };
    let (channel, about) = match entry.op {
        OutboxOp::Post => {
            // A private post goes to the person's own channel, `@name`.
            let channel = match &entry.private_to {
                Some(user) => format!("@{user}"),
                None if valid_channel(&entry.channel) => entry.channel.clone(),
                None => {
                    return Err(DeliveryError::Permanent(format!(
                        "channel `{}` does not exist",
                        entry.channel
                    )));
                }
            };
            let thread = match (&entry.thread_ref, &entry.thread_key) {
                (Some(r), _) => Some(id(r, "thread")?),
                // The root is ahead of it in the same batch.
                (None, Some(root)) => Some(ConsoleRef::Post(root.clone())),
                (None, None) => None,
            };
            (channel, thread)
        }
        OutboxOp::Edit => {
            let target = match &entry.target_ref {
                Some(r) => id(r, "message")?,
                None => ConsoleRef::Post(entry.key.clone()),
            };
            (entry.channel.clone(), Some(target))
        }
    };
    Ok(ConsoleDelivery {
        outbox_id: entry.id,
        author: BOT_NAME,
        key: entry.key.clone(),
        op: entry.op,
        channel,
        about,
        message: entry.message.clone(),
    })
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
        let mut results = self.deliver_all(std::slice::from_ref(entry)).await;
        match results.as_mut().and_then(|r| r.pop()) {
            Some(result) => result,
            // Its thread's root, or the message it edits, is not out yet.
            None => Err(DeliveryError::NotYet(std::time::Duration::ZERO)),
        }
    }

    async fn deliver_all(
        &self,
        entries: &[OutboxEntry],
    ) -> Option<Vec<Result<String, DeliveryError>>> {
        let mut batch = Vec::with_capacity(entries.len());
        let mut refused = None;
        for entry in entries {
            match delivery(entry) {
                Ok(d) => batch.push(d),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        if !batch.is_empty() {
            let tried = batch.len();
            match self.store.console_deliver(batch, self.clock.now()).await {
                Ok(results) => {
                    let stopped = results.len() < tried || results.iter().any(|r| r.is_err());
                    let mut delivered = Vec::with_capacity(results.len());
                    for result in results {
                        out.push(match result {
                            Ok(m) => {
                                let reference = m.id.to_string();
                                delivered.push(m);
                                Ok(reference)
                            }
                            Err(reason) => Err(DeliveryError::Permanent(reason)),
                        });
                    }
                    self.announce_all(&delivered).await;
                    if stopped {
                        return Some(out);
                    }
                }
                Err(e) => {
                    out.push(Err(DeliveryError::Transient {
                        message: e.to_string(),
                        retry_after: None,
                    }));
                    return Some(out);
                }
            }
        }
        out.extend(refused.map(Err));
        Some(out)
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.store.ping().await?;
        Ok(())
    }
}
