//! Test harness: the real app on port 0 with a fresh database (a SQLite file, or a PostgreSQL
//! schema of its own), a manual clock, and helpers to act as console users through the HTTP
//! API.
#![allow(dead_code)]

pub mod bot;
pub mod postgres;

use baton::config::Settings;
use baton::core::clock::{Clock, ManualClock};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    pub env: HashMap<String, String>,
    /// The PostgreSQL schema the app works in, dropped with it.
    pub schema: Option<postgres::Schema>,
}

/// The database a test's app works on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Db {
    /// A SQLite file in the test's directory.
    #[default]
    Sqlite,
    /// A schema of the test's own on the development PostgreSQL server.
    Postgres,
}

impl Db {
    /// A fresh database for a test in `dir`: its URL, and the schema to keep alive (and drop
    /// afterwards) on PostgreSQL.
    pub async fn fresh(self, dir: &Path) -> (String, Option<postgres::Schema>) {
        match self {
            Db::Sqlite => (format!("sqlite://{}", dir.join("baton.db").display()), None),
            Db::Postgres => {
                let schema = postgres::Schema::new().await;
                (schema.url.clone(), Some(schema))
            }
        }
    }
}

/// Runs each story (an `async fn(Db)`) as a test on every backend: `sqlite::story` and
/// `postgres::story`.
#[macro_export]
macro_rules! on_every_backend {
    ($($story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $story() {
                    super::$story($crate::support::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $story() {
                    super::$story($crate::support::Db::Postgres).await
                }
            )*
        }
    };
}

/// The repository's own example workflows.
pub fn example_commands() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("commands")
}

/// A start time on a Monday morning, so schedule tests know where they stand.
pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T07:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub struct Spawn {
    pub extra_workflows: Vec<(&'static str, String)>,
    pub with_examples: bool,
    pub env: Vec<(&'static str, String)>,
    pub start: DateTime<Utc>,
    pub db: Db,
}

impl Default for Spawn {
    fn default() -> Self {
        Self {
            extra_workflows: vec![],
            with_examples: true,
            env: vec![],
            start: start_time(),
            db: Db::Sqlite,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn(Spawn::default()).await
}

/// The app with the example workflows on `db`.
pub async fn spawn_app_on(db: Db) -> TestApp {
    spawn(Spawn {
        db,
        ..Default::default()
    })
    .await
}

pub async fn spawn(opts: Spawn) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let commands = dir.path().join("commands");
    std::fs::create_dir_all(&commands).unwrap();
    if opts.with_examples {
        std::fs::create_dir_all(commands.join("agents")).unwrap();
        for sub in ["", "agents"] {
            for entry in std::fs::read_dir(example_commands().join(sub)).unwrap() {
                let p = entry.unwrap().path();
                if p.extension().is_some_and(|e| e == "toml") {
                    std::fs::copy(&p, commands.join(sub).join(p.file_name().unwrap())).unwrap();
                }
            }
        }
    }
    for (name, text) in &opts.extra_workflows {
        let path = commands.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let mut env: HashMap<String, String> = HashMap::new();
    let (url, schema) = opts.db.fresh(dir.path()).await;
    env.insert("DATABASE_URL".into(), url);
    env.insert("BATON_COMMANDS_DIR".into(), commands.display().to_string());
    env.insert("BATON_POLL_INTERVAL".into(), "20ms".into());
    env.insert("BATON_HTTP_ADDR".into(), "127.0.0.1:0".into());
    for (k, v) in opts.env {
        env.insert(k.into(), v);
    }
    let clock = Arc::new(ManualClock::new(opts.start));
    let mut app = TestApp {
        addr: "127.0.0.1:0".parse().unwrap(),
        base: String::new(),
        http: baton::http_client::client(),
        clock,
        dir,
        stop: None,
        task: None,
        env,
        schema,
    };
    app.start().await;
    app
}

impl TestApp {
    /// Starts (or restarts) the app on a fresh port with the same database and clock.
    pub async fn start(&mut self) {
        let env = self.env.clone();
        let settings =
            Settings::from_lookup(move |k| env.get(k).cloned()).expect("test settings are valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addr = listener.local_addr().unwrap();
        self.base = format!("http://{}", self.addr);
        let (tx, rx) = oneshot::channel::<()>();
        let clock: Arc<dyn Clock> = self.clock.clone();
        self.task = Some(tokio::spawn(baton::app::run(
            settings,
            listener,
            clock,
            async move {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
        // Ready when it answers; an app that stopped at start-up says why.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                match self.task.take().unwrap().await {
                    Ok(Err(e)) => panic!("the app stopped at start-up: {e:#}"),
                    other => panic!("the app stopped at start-up: {other:?}"),
                }
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the app to answer /readyz"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the app gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let (status, text) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Types a message into a channel as a user; returns the response body.
    pub async fn say(&self, user: &str, channel: &str, text: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/messages",
                json!({"channel": channel, "user": user, "text": text}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Types a message that must start a run; returns the run id.
    pub async fn start_run(&self, user: &str, channel: &str, text: &str) -> i64 {
        let body = self.say(user, channel, text).await;
        body["started"][0]
            .as_i64()
            .unwrap_or_else(|| panic!("`{text}` started no run: {body}"))
    }

    /// Clicks a button; returns the private notices.
    pub async fn click(&self, user: &str, message_id: i64, action: &str) -> Vec<String> {
        let (status, body) = self
            .post(
                "/api/actions",
                json!({"user": user, "message_id": message_id, "action": action}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["notices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    /// Clicks a button that asks for text (a reason, an edited payload), answering `text`.
    pub async fn click_with_text(
        &self,
        user: &str,
        message_id: i64,
        action: &str,
        text: &str,
    ) -> Vec<String> {
        let (status, body) = self
            .post(
                "/api/actions",
                json!({"user": user, "message_id": message_id, "action": action, "reason": text}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["notices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    /// The channel's messages, or `None` while the channel does not exist yet (a channel is
    /// created by its first message).
    pub async fn channel_if_any(&self, channel: &str) -> Option<Vec<Value>> {
        let (status, body) = self.get(&format!("/api/channels/{channel}/messages")).await;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    pub async fn channel(&self, channel: &str) -> Vec<Value> {
        self.get_json(&format!("/api/channels/{channel}/messages"))
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// The root message the bot posted for a run.
    pub async fn root_of(&self, channel: &str, run: i64) -> Value {
        let needle = format!("run {run} ·");
        eventually_some(&format!("the root message of run {run}"), || async {
            self.channel(channel)
                .await
                .into_iter()
                .find(|m| m["is_bot"] == true && text(m).contains(&needle))
        })
        .await
    }

    pub async fn thread(&self, root: i64) -> Vec<Value> {
        self.get_json(&format!("/api/threads/{root}"))
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits for a message in a run's thread whose text contains `needle`.
    pub async fn wait_in_thread(&self, root: i64, needle: &str) -> Value {
        eventually_some(&format!("`{needle}` in thread {root}"), || async {
            self.thread(root)
                .await
                .into_iter()
                .find(|m| text(m).contains(needle))
        })
        .await
    }

    /// The run's status as the store has it.
    pub async fn run_status(&self, run: i64) -> String {
        let page = self.get(&format!("/runs/{run}")).await.1;
        let at = page
            .find("<dt>Status</dt><dd class=\"status ")
            .expect("run page shows a status");
        let rest = &page[at + "<dt>Status</dt><dd class=\"status ".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    pub async fn wait_for_status(&self, run: i64, status: &str) {
        eventually(&format!("run {run} to be {status}"), || async {
            self.run_status(run).await == status
        })
        .await;
    }

    /// The ledger, oldest first, through the CLI's export path.
    pub async fn ledger(&self) -> Vec<Value> {
        let env = self.env.clone();
        let settings = Settings::from_lookup(move |k| env.get(k).cloned()).unwrap();
        let store = baton::app::open_store(&settings, &[], None).await.unwrap();
        let mut out = vec![];
        let mut after = 0;
        loop {
            let page = store.audit_page(after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            out.extend(page.iter().map(|e| serde_json::to_value(e).unwrap()));
        }
        out
    }

    /// The ledger entries of one kind, oldest first.
    pub async fn ledger_of(&self, kind: &str) -> Vec<Value> {
        self.ledger()
            .await
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.clock.advance(by);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn text(m: &Value) -> String {
    m["message"]["text"].as_str().unwrap_or_default().to_owned()
}

pub fn button(m: &Value, label: &str) -> Option<String> {
    m["message"]["buttons"]
        .as_array()?
        .iter()
        .find(|b| b["label"] == label)
        .map(|b| b["action"].as_str().unwrap().to_owned())
}

/// Polls until `check` holds; fails the test with `what` after 10 s. A wait, not a timing
/// assertion: it returns as soon as the condition holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn eventually_some<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server whose first answer never comes and whose later ones do: a tool that hangs once.
pub async fn hangs_once() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/status", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// `/check`: reads a service that hangs on the first call, so the run stalls after 10 minutes
/// of the test clock; only `starters` may start (and so retry) it.
pub async fn stalling_workflow(starters: &[&str]) -> String {
    let url = hangs_once().await;
    format!(
        r#"
name = "check"
description = "Check a service"
stall_after = "10m"
[[trigger]]
kind = "slash"
command = "check"
[permissions]
users = {starters:?}
[[step]]
id = "fetch"
kind = "tool"
tool = "http.get"
with = {{ url = "{url}" }}
timeout = "1h"
[[step]]
id = "report"
kind = "notify"
needs = ["fetch"]
text = "The service says {{{{ steps.fetch.output.body }}}}."
"#
    )
}
