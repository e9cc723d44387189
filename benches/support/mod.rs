//! What the benches that drive the release `baton` binary from outside share: starting it,
//! reading its CPU time, memory and metrics, and percentiles.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A message trigger with one notify step: `ping N` in #general answered `pong N.`.
pub const PING: &str = r#"
name = "ping"
description = "Answers ping"
[[trigger]]
kind = "message"
channels = ["general"]
pattern = '^ping (?P<n>\d+)$'
[[step]]
id = "pong"
kind = "notify"
text = "pong {{ input.n }}."
"#;

pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The app under test, a child process of this one.
pub struct App {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
    pub ticks_per_second: f64,
    _dir: tempfile::TempDir,
}

impl App {
    /// Starts the release binary with `workflows` in its `commands/` and `env` besides its
    /// defaults; returns once it answers `/readyz`.
    pub async fn start(workflows: &[(&str, String)], env: &[(&str, String)]) -> App {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let commands = dir.path().join("commands");
        std::fs::create_dir_all(&commands).unwrap();
        for (name, text) in workflows {
            std::fs::write(commands.join(name), text).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("baton.db").display()));
        let log = std::fs::File::create(dir.path().join("baton.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", url)
            .env("BATON_COMMANDS_DIR", &commands)
            .env("BATON_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the baton binary starts");
        let app = App {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: baton::http_client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
            ticks_per_second: clock_ticks(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = app
                .http
                .get(format!("{}/readyz", app.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return app;
            }
            assert!(
                Instant::now() < deadline,
                "the app did not get ready in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// User + system CPU time the app has used so far.
    pub fn cpu(&self) -> Duration {
        cpu_of(
            &format!("/proc/{}/stat", self.child.id()),
            self.ticks_per_second,
        )
    }

    /// CPU time the app's thread called `name` (the store's writer) has used so far.
    pub fn thread_cpu(&self, name: &str) -> Duration {
        let tasks = format!("/proc/{}/task", self.child.id());
        let Ok(dir) = std::fs::read_dir(&tasks) else {
            return Duration::ZERO;
        };
        for task in dir.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            // The kernel keeps the first 15 bytes of a thread's name.
            if comm.trim() == &name[..name.len().min(15)] {
                let stat = task.path().join("stat");
                return cpu_of(&stat.to_string_lossy(), self.ticks_per_second);
            }
        }
        Duration::ZERO
    }

    /// A line of the app's `/proc/PID/status`, in MiB (`VmRSS`, `VmHWM`).
    pub fn memory(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }

    pub async fn say(&self, user: &str, text: &str) -> Value {
        let r = self
            .http
            .post(format!("{}/api/messages", self.base))
            .json(&json!({"channel": "general", "user": user, "text": text}))
            .send()
            .await
            .expect("the console API answers");
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "`{text}` was refused: {body}");
        body
    }

    /// Figures from `/metrics`, by their full series names.
    pub async fn metrics<const N: usize>(&self, series: [&str; N]) -> [f64; N] {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        series.map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0.0)
        })
    }

    /// Waits until `done` of the series `counted` and nothing is left to deliver. Polled
    /// every 100 ms: `/metrics` counts rows, and asking faster would load the app measured.
    pub async fn settled(&self, counted: &str, done: usize) {
        loop {
            let [n, depth] = self.metrics([counted, "baton_outbox_depth"]).await;
            if n as usize >= done && depth == 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time from a `/proc/.../stat` file.
pub fn cpu_of(path: &str, ticks_per_second: f64) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it do not.
    let Some(close) = stat.rfind(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Duration::from_secs_f64((field(11) + field(12)) / ticks_per_second)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
