//! The core: everything Baton knows about workflows, runs, approvals and the ledger, with no
//! platform, HTTP-server or database crate in sight (see ARCHITECTURE.md, "Invariant:").

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod clock;
pub mod digest;
pub mod engine;
pub mod event;
pub mod ids;
pub mod message;
pub mod template;
pub mod tools;
pub mod trigger;
pub mod workflow;
