//! How much 100k runs parked on an approval cost: creating them, the process's memory and
//! tasks afterwards, start-up with them in the database, and the timer poll over them.
//!
//! `cargo bench --bench parked_runs` (`PARKED_RUNS` sets the count, 100,000 by default;
//! `PARKED_CONCURRENCY` how many start requests are in flight at once, 32 by default). Prints
//! figures; asserts nothing about speed.

use async_trait::async_trait;
use baton::adapters::{DeliveryError, Platform};
use baton::core::clock::{Clock, SystemClock};
use baton::core::event::{Actor, ConversationRef};
use baton::core::tools::ToolCatalog;
use baton::core::workflow::{WorkflowSet, parse_workflow};
use baton::engine::{Engine, EngineSettings, StartRequest};
use baton::metrics::Metrics;
use baton::store::OutboxEntry;
use baton::tools::{ToolBox, ToolSettings};
use chrono::Duration;
use serde_json::Map;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The allocator the `baton` binary uses, so the engine here costs what it costs there.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const WF: &str = r#"
name = "parked"
[[trigger]]
kind = "slash"
command = "parked"
[[step]]
id = "gate"
kind = "approval"
approvers = ["ben"]
timeout = "7d"
"#;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A platform that accepts every post at once, so the bench measures Baton, not a chat API.
struct Sink(AtomicU64);

#[async_trait]
impl Platform for Sink {
    fn name(&self) -> &'static str {
        "console"
    }
    async fn deliver(&self, _entry: &OutboxEntry) -> Result<String, DeliveryError> {
        Ok(self.0.fetch_add(1, Ordering::Relaxed).to_string())
    }
    async fn healthcheck(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

async fn engine(url: &str) -> Arc<Engine> {
    let store = baton::store::open(url, Default::default()).await.unwrap();
    let (wf, _) = parse_workflow(Path::new("parked.toml"), WF, &ToolCatalog::builtin());
    let settings = EngineSettings {
        workers: 8,
        poll_interval: std::time::Duration::from_millis(200),
        stall_after: Duration::hours(1),
        base_url: "http://127.0.0.1:8080".into(),
        local_url: "http://127.0.0.1:8080".into(),
        default_platform: "console".into(),
        shutdown_grace: std::time::Duration::from_secs(1),
        delivery_alert_after: Duration::minutes(10),
        replica: Default::default(),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    Engine::new(
        store,
        Arc::new(WorkflowSet::new([wf.unwrap()])),
        Arc::new(ToolCatalog::builtin()),
        Arc::new(ToolBox::new(ToolSettings::default()).unwrap()),
        Arc::new(baton::agents::Models::new(Default::default()).unwrap()),
        clock,
        settings,
        Arc::new(Metrics::default()),
        vec![Arc::new(Sink(AtomicU64::new(1)))],
    )
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("PARKED_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("parked.db");
    let url = format!("sqlite://{}", db.display());
    let rss_start = rss_mib();

    let e = engine(&url).await;
    let background = e.start_background().await.unwrap();
    let wf = e.workflows().get("parked").unwrap().clone();
    let concurrency: usize = std::env::var("PARKED_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // Requests arrive side by side, as they do from a channel full of people.
    let starters: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (e, wf, next) = (e.clone(), wf.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        break;
                    }
                    let req = StartRequest {
                        workflow: wf.clone(),
                        inputs: Map::new(),
                        actor: Actor {
                            platform: "console".into(),
                            id: "ana".into(),
                            display: "ana".into(),
                            is_bot: false,
                            groups: vec![],
                        },
                        conversation: ConversationRef {
                            platform: "console".into(),
                            channel: "general".into(),
                            thread: None,
                        },
                        event_id: format!("bench-{i}"),
                        late: false,
                        received: None,
                    };
                    e.start_run(req).await.unwrap();
                }
            })
        })
        .collect();
    for s in starters {
        s.await.unwrap();
    }
    let took = started.elapsed();
    // Let the outbox deliver every root message and approval request.
    while e.store().metrics().await.unwrap().outbox_pending > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let drained = started.elapsed();
    let rss_parked = rss_mib();
    background.shutdown().await;
    drop(e);

    // A fresh start with n parked runs in the database: recovery, loops, idle.
    let started = Instant::now();
    let e = engine(&url).await;
    let background = e.start_background().await.unwrap();
    let startup = started.elapsed();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let rss_idle = rss_mib();
    let poll = Instant::now();
    let due = e.store().due_timers(chrono::Utc::now(), 200).await.unwrap();
    let poll_took = poll.elapsed();
    let (pending, total) = e.store().pending_approvals(15).await.unwrap();
    background.shutdown().await;
    let db_mib = std::fs::metadata(&db)
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0)
        + std::fs::metadata(dir.path().join("parked.db-wal"))
            .map(|m| m.len() as f64 / 1048576.0)
            .unwrap_or(0.0);

    println!("parked runs:                 {n}");
    println!(
        "time to park them:           {:.1} s ({:.0} runs/s, {concurrency} requests in flight)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    println!(
        "…and their posts delivered: {:.1} s after the first start",
        drained.as_secs_f64()
    );
    println!(
        "database size:               {db_mib:.1} MiB ({:.2} KiB per run, outbox and ledger included)",
        db_mib * 1024.0 / n as f64
    );
    println!("RSS at start:                {rss_start:.1} MiB");
    println!("RSS after parking:           {rss_parked:.1} MiB");
    println!(
        "start-up with them stored:   {:.0} ms",
        startup.as_secs_f64() * 1000.0
    );
    println!("RSS idle after restart:      {rss_idle:.1} MiB");
    println!("tokio tasks alive when idle: {tasks} (workers and loops; none per run)");
    println!(
        "due-timer poll:              {:.2} ms ({} due)",
        poll_took.as_secs_f64() * 1000.0,
        due.len()
    );
    println!(
        "pending approvals counted:   {total} ({} listed)",
        pending.len()
    );
}
