//! Platform adapters. Each folder has the same shape: `mod.rs` (the adapter and its
//! [`Platform`] implementation: outbound delivery and a health check), `inbound.rs` (platform
//! payloads to core events), and its settings in `crate::config`.

pub mod console;
pub mod discord;
pub mod limits;
pub mod payload;
pub mod slack;

use crate::store::OutboxEntry;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Why a delivery did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (network trouble, 5xx, rate limited). `retry_after` when the platform
    /// said how long to wait.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed (unknown channel, no access): reported in the run and the ledger.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: the platform's pace for this channel says wait this long first.
    #[error("paced: wait {0:?}")]
    NotYet(Duration),
    /// Not a failure either: the platform answered (or had already answered another call in
    /// the same bucket) that it is rate limited for this long. The outbox waits and never
    /// counts it as a failed try.
    #[error("rate limited: wait {0:?}")]
    RateLimited(Duration),
}

impl DeliveryError {
    /// A platform API's failure as the outbox sees it: permanent, or worth trying again
    /// (after `retry_after` when the platform said).
    pub fn from_failure(message: String, permanent: bool, retry_after: Option<Duration>) -> Self {
        if permanent {
            DeliveryError::Permanent(message)
        } else {
            DeliveryError::Transient {
                message,
                retry_after,
            }
        }
    }
}

/// Splits a `CHANNEL:MESSAGE` reference, as Slack and Discord adapters write them.
pub fn split_ref<'a>(
    reference: &'a str,
    platform: &str,
) -> Result<(&'a str, &'a str), DeliveryError> {
    reference.split_once(':').ok_or_else(|| {
        DeliveryError::Permanent(format!(
            "`{reference}` is not a {platform} message reference"
        ))
    })
}

/// What the outbox needs from a platform.
#[async_trait]
pub trait Platform: Send + Sync {
    /// The platform name used in conversation references (`console`, `slack`, `discord`).
    fn name(&self) -> &'static str;
    /// Posts or edits one message and returns the platform's reference for it.
    async fn deliver(&self, entry: &OutboxEntry) -> Result<String, DeliveryError>;
    /// Delivers a conversation's entries in order at once, stopping at the first that does
    /// not go out: the result of each entry tried, in order. An entry may be a reply to (or an
    /// edit of) a post earlier in `entries`, without that post's reference: the platform
    /// resolves it. `None` (the default): the platform delivers one entry at a time.
    async fn deliver_all(
        &self,
        _entries: &[OutboxEntry],
    ) -> Option<Vec<Result<String, DeliveryError>>> {
        None
    }
    /// Whether `deliver` records the entry as delivered itself, in the same write as the
    /// delivery (the console, whose messages live in Baton's own database).
    fn records_deliveries(&self) -> bool {
        false
    }
    /// Checks credentials and reachability at start-up.
    async fn healthcheck(&self) -> anyhow::Result<()>;
}

/// Counts events acknowledged to a platform but not yet handled, so shutdown can wait for
/// them: Slack and Discord do not deliver an acknowledged event again.
#[derive(Default)]
pub struct Inflight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Held while an event is handled.
pub struct InflightGuard(Arc<Inflight>);

impl Inflight {
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InflightGuard(self.clone())
    }

    /// Waits until every event taken in has been handled.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Splits text into pieces of at most `limit` characters, preferring line breaks.
pub fn chunks(text: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        let mut line = line;
        while !line.is_empty() {
            let room = limit - current.chars().count();
            if line.chars().count() <= room {
                current.push_str(line);
                break;
            }
            if !current.is_empty() && line.chars().count() <= limit {
                out.push(std::mem::take(&mut current));
                continue;
            }
            let cut = line
                .char_indices()
                .nth(room)
                .map(|(i, _)| i)
                .unwrap_or(line.len());
            current.push_str(&line[..cut]);
            out.push(std::mem::take(&mut current));
            line = &line[cut..];
        }
    }
    if !current.is_empty() || out.is_empty() {
        out.push(current);
    }
    out
}
