//! Baton: a chat-ops bot that turns slash commands, channel messages and schedules into durable
//! workflow runs, with approvals and a hash-chained audit ledger.
//!
//! Codemap (ARCHITECTURE.md has the full picture and the invariants):
//! - [`core`]: workflows, triggers, the engine's pure state machine, approvals, the ledger's
//!   types. No platform, HTTP-server or database crate.
//! - [`store`]: storage traits and the SQLite backend.
//! - [`engine`]: the driver that applies commands through the store and carries out effects.
//! - [`tools`]: built-in tool implementations.
//! - [`agents`]: model providers (OpenAI-compatible, Anthropic) for agent steps.
//! - [`adapters`]: platforms: the local console, Slack, Discord.
//! - [`http`]: the HTTP server shared by the console, health and metrics.
//! - [`http_client`]: how every outbound HTTP client is built (TLS, user agent).
//! - [`app`], [`config`], [`cli`]: wiring, settings and the command line.

pub mod adapters;
pub mod agents;
pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod engine;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod http_client;
pub mod metrics;
pub mod store;
pub mod telemetry;
pub mod tools;
