//! Platform adapters. Each folder has the same shape: `mod.rs` (the adapter and its
//! [`Platform`] implementation: outbound delivery and a health check), `inbound.rs` (platform
//! payloads to core events), and its settings in `crate::config`.

pub mod console;
pub mod slack;

use crate::store::OutboxEntry;
use async_trait::async_trait;
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
}

/// What the outbox needs from a platform.
#[async_trait]
pub trait Platform: Send + Sync {
    /// The platform name used in conversation references (`console`, `slack`, `discord`).
    fn name(&self) -> &'static str;
    /// Posts or edits one message and returns the platform's reference for it.
    async fn deliver(&self, entry: &OutboxEntry) -> Result<String, DeliveryError>;
    /// Checks credentials and reachability at start-up.
    async fn healthcheck(&self) -> anyhow::Result<()>;
}
