//! The outbox against a platform that fails: transient failures are retried with backoff and
//! keep thread order; permanent ones are given up, recorded in the ledger, and take the
//! messages that depend on them along.

use async_trait::async_trait;
use baton::adapters::{DeliveryError, Platform};
use baton::core::clock::{Clock, ManualClock};
use baton::core::event::{Actor, ConversationRef};
use baton::core::tools::ToolCatalog;
use baton::core::workflow::{WorkflowSet, parse_workflow};
use baton::engine::{Engine, EngineSettings, StartOutcome, StartRequest};
use baton::metrics::Metrics;
use baton::store::{OutboxEntry, Store};
use baton::tools::{ToolBox, ToolSettings};
use chrono::{DateTime, Duration, Utc};
use serde_json::Map;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A platform that fails the first `transient` deliveries, refuses channel `gone` for good,
/// and answers for channel `slow` only when `gate` lets it.
struct Flaky {
    transient: Mutex<u32>,
    delivered: Mutex<Vec<(String, Option<String>)>>,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Platform for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn deliver(&self, entry: &OutboxEntry) -> Result<String, DeliveryError> {
        if entry.channel == "gone" {
            return Err(DeliveryError::Permanent("channel_not_found".into()));
        }
        if entry.channel == "slow" {
            self.gate.acquire().await.unwrap().forget();
        }
        {
            let mut left = self.transient.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(DeliveryError::Transient {
                    message: "rate limited".into(),
                    retry_after: Some(std::time::Duration::from_secs(30)),
                });
            }
        }
        let mut d = self.delivered.lock().unwrap();
        d.push((entry.key.0.clone(), entry.thread_ref.clone()));
        Ok(format!("ref-{}", d.len()))
    }
    async fn healthcheck(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

const WF: &str = r#"
name = "note"
[[trigger]]
kind = "slash"
command = "note"
[[step]]
id = "a"
kind = "notify"
text = "first"
[[step]]
id = "b"
kind = "notify"
needs = ["a"]
text = "second"
"#;

async fn engine(
    transient: u32,
) -> (
    Arc<Engine>,
    Arc<Flaky>,
    Arc<ManualClock>,
    Arc<dyn Store>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    let store = baton::store::open(&url, Default::default()).await.unwrap();
    let (wf, diags) = parse_workflow(Path::new("note.toml"), WF, &ToolCatalog::builtin());
    let workflows = Arc::new(WorkflowSet::new(
        [wf.unwrap_or_else(|| panic!("{diags:?}"))],
    ));
    let start: DateTime<Utc> = "2026-03-02T07:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let flaky = Arc::new(Flaky {
        transient: Mutex::new(transient),
        delivered: Mutex::new(vec![]),
        gate: tokio::sync::Semaphore::new(0),
    });
    let settings = EngineSettings {
        workers: 1,
        poll_interval: std::time::Duration::from_millis(20),
        stall_after: Duration::hours(1),
        base_url: "http://127.0.0.1:1".into(),
        local_url: "http://127.0.0.1:1".into(),
        default_platform: "flaky".into(),
        shutdown_grace: std::time::Duration::from_secs(1),
        delivery_alert_after: Duration::minutes(10),
        replica: Default::default(),
    };
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let engine = Engine::new(
        store.clone(),
        workflows,
        Arc::new(ToolCatalog::builtin()),
        Arc::new(ToolBox::new(ToolSettings::default()).unwrap()),
        Arc::new(baton::agents::Models::new(Default::default()).unwrap()),
        dyn_clock,
        settings,
        Arc::new(Metrics::default()),
        vec![flaky.clone()],
    );
    (engine, flaky, clock, store, dir)
}

async fn start(engine: &Arc<Engine>, channel: &str) -> i64 {
    start_as(engine, channel, &format!("e-{channel}")).await
}

async fn start_as(engine: &Arc<Engine>, channel: &str, event: &str) -> i64 {
    let req = StartRequest {
        workflow: engine.workflows().get("note").unwrap().clone(),
        inputs: Map::new(),
        actor: Actor {
            platform: "flaky".into(),
            id: "ana".into(),
            display: "ana".into(),
            is_bot: false,
            groups: vec![],
        },
        conversation: ConversationRef {
            platform: "flaky".into(),
            channel: channel.into(),
            thread: None,
        },
        event_id: event.to_owned(),
        late: false,
        received: None,
    };
    match engine.start_run(req).await.unwrap() {
        StartOutcome::Started(r) => r.0,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rate_limited_delivery_waits_for_retry_after_and_keeps_thread_order() {
    let (engine, flaky, clock, store, _dir) = engine(1).await;
    start(&engine, "ops").await;
    // The root is refused once; nothing behind it in the conversation may overtake it.
    assert_eq!(engine.deliver_ready().await, 1);
    assert!(flaky.delivered.lock().unwrap().is_empty());
    assert_eq!(
        engine.deliver_ready().await,
        0,
        "nothing is due before Retry-After"
    );
    clock.advance(Duration::seconds(31));
    while engine.deliver_ready().await > 0 {}
    let delivered = flaky.delivered.lock().unwrap().clone();
    let keys: Vec<&str> = delivered.iter().map(|(k, _)| k.as_str()).collect();
    // The root, the replies in order, the root's status edit, the summary.
    assert_eq!(
        keys,
        [
            "run:1:root",
            "run:1:post:a",
            "run:1:post:b",
            "run:1:root",
            "run:1:summary"
        ]
    );
    let replies = [&delivered[1], &delivered[2], &delivered[4]];
    assert!(
        replies
            .iter()
            .all(|(_, thread)| thread.as_deref() == Some("ref-1")),
        "replies go to the root's thread: {delivered:?}"
    );
    let rows = store
        .outbox_of_run(baton::core::ids::RunId(1))
        .await
        .unwrap();
    assert!(
        rows.iter()
            .all(|r| r.status == "delivered" || r.status == "superseded"),
        "{rows:?}"
    );
    assert_eq!(rows[0].attempts, 2);
}

#[tokio::test]
async fn a_root_and_everything_in_its_thread_go_out_in_one_pass() {
    let (engine, flaky, _clock, store, _dir) = engine(0).await;
    start(&engine, "ops").await;
    // The replies and the root's edit wait for the root's reference, which this same pass
    // gets before it reaches them: no pass per level of the thread.
    assert_eq!(engine.deliver_ready().await, 5);
    let delivered = flaky.delivered.lock().unwrap().clone();
    let keys: Vec<&str> = delivered.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "run:1:root",
            "run:1:post:a",
            "run:1:post:b",
            "run:1:root",
            "run:1:summary"
        ]
    );
    assert!(
        [&delivered[1], &delivered[2], &delivered[4]]
            .iter()
            .all(|(_, thread)| thread.as_deref() == Some("ref-1")),
        "replies go to the root's thread: {delivered:?}"
    );
    assert_eq!(engine.deliver_ready().await, 0, "nothing is left");
    let rows = store
        .outbox_of_run(baton::core::ids::RunId(1))
        .await
        .unwrap();
    assert!(
        rows.iter()
            .all(|r| r.status == "delivered" || r.status == "superseded"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_permanent_failure_is_recorded_and_fails_what_depends_on_it() {
    let (engine, flaky, _clock, store, _dir) = engine(0).await;
    let run = start(&engine, "gone").await;
    while engine.deliver_ready().await > 0 {}
    assert!(flaky.delivered.lock().unwrap().is_empty());
    let rows = store
        .outbox_of_run(baton::core::ids::RunId(run))
        .await
        .unwrap();
    assert!(rows.iter().all(|r| r.status == "failed"), "{rows:?}");
    assert_eq!(rows[0].last_error.as_deref(), Some("channel_not_found"));
    let ledger = store.audit_recent(None, 100).await.unwrap();
    let failed = ledger
        .iter()
        .find(|e| e.kind == "post.failed")
        .expect("the failure is in the ledger");
    assert!(failed.data.contains("channel_not_found"));
    let metrics = store.metrics().await.unwrap();
    assert_eq!(metrics.outbox_pending, 0);
    assert!(metrics.outbox_failed >= 4);
}

#[tokio::test]
async fn a_slow_channel_holds_back_no_other_and_each_keeps_its_own_order() {
    let (engine, flaky, _clock, _store, _dir) = engine(0).await;
    // The slow channel's run is older, so its root comes first in the outbox.
    start(&engine, "slow").await;
    start(&engine, "ops").await;
    let pass = tokio::spawn({
        let engine = engine.clone();
        async move { engine.deliver_ready().await }
    });
    let ops_root_out = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !flaky
            .delivered
            .lock()
            .unwrap()
            .iter()
            .any(|(k, _)| k == "run:2:root")
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        ops_root_out.is_ok(),
        "#ops waited for #slow: {:?}",
        flaky.delivered.lock().unwrap()
    );
    assert!(!pass.is_finished(), "the pass waits for #slow's delivery");
    flaky.gate.add_permits(100);
    pass.await.unwrap();
    while engine.deliver_ready().await > 0 {}
    let delivered = flaky.delivered.lock().unwrap().clone();
    for run in [1, 2] {
        let keys: Vec<String> = delivered
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with(&format!("run:{run}:")))
            .collect();
        let expected: Vec<String> = ["root", "post:a", "post:b", "root", "summary"]
            .iter()
            .map(|k| format!("run:{run}:{k}"))
            .collect();
        assert_eq!(keys, expected, "run {run} in its own order");
    }
}

/// The keys delivered so far for `run`.
fn delivered_of(flaky: &Flaky, run: i64) -> Vec<String> {
    flaky
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| k.starts_with(&format!("run:{run}:")))
        .collect()
}

#[tokio::test]
async fn while_one_conversation_waits_on_a_slow_platform_later_runs_elsewhere_are_delivered_in_full()
 {
    let (engine, flaky, _clock, _store, _dir) = engine(0).await;
    let background = engine.start_background().await.unwrap();
    let slow = start(&engine, "slow").await;
    let everything = |run: i64| -> Vec<String> {
        ["root", "post:a", "post:b", "root", "summary"]
            .iter()
            .map(|k| format!("run:{run}:{k}"))
            .collect()
    };
    // Three runs in #ops, one after another, each while #slow's first message hangs.
    for n in 0..3 {
        let ops = start_as(&engine, "ops", &format!("ops-{n}")).await;
        let whole = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while delivered_of(&flaky, ops) != everything(ops) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            whole.is_ok(),
            "run {ops} in #ops waited for #slow: {:?}",
            flaky.delivered.lock().unwrap()
        );
    }
    assert!(
        delivered_of(&flaky, slow).is_empty(),
        "#slow is still stuck"
    );
    flaky.gate.add_permits(100);
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while delivered_of(&flaky, slow) != everything(slow) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("#slow's run goes out in its own order once the platform answers");
    background.shutdown().await;
}
