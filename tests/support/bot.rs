//! The real `baton` binary as a test drives it: its own directory, database and port,
//! started, killed (SIGKILL) and started again, with helpers to act as a console user.

use super::Db;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};

/// The `baton` binary with its own directory, database and port.
pub struct Bot {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub http: reqwest::Client,
    /// Settings beyond the defaults, such as a platform's token.
    pub env: Vec<(&'static str, String)>,
    pub database_url: String,
    /// The PostgreSQL schema it works in, dropped with it.
    pub schema: Option<super::postgres::Schema>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Bot {
    pub fn new(workflows: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("baton.db").display());
        Self::in_dir(dir, database_url, None, workflows)
    }

    /// The bot on `db`.
    pub async fn on(db: Db, workflows: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, schema) = db.fresh(dir.path()).await;
        Self::in_dir(dir, url, schema, workflows)
    }

    pub fn in_dir(
        dir: tempfile::TempDir,
        database_url: String,
        schema: Option<super::postgres::Schema>,
        workflows: &[(&str, String)],
    ) -> Self {
        let commands = dir.path().join("commands");
        std::fs::create_dir_all(&commands).unwrap();
        for (name, text) in workflows {
            std::fs::write(commands.join(name), text).unwrap();
        }
        Self {
            dir,
            port: free_port(),
            child: None,
            http: baton::http_client::client(),
            env: vec![],
            database_url,
            schema,
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_baton"));
        c.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.database_url)
            .env("BATON_COMMANDS_DIR", self.dir.path().join("commands"))
            .env("BATON_HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .env("BATON_POLL_INTERVAL", "50ms")
            .env("BATON_LOG", "warn");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bot.log"))
            .unwrap();
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("baton starts");
        self.child = Some(child);
        let url = format!("{}/readyz", self.base());
        let log = self.dir.path().join("bot.log");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // One that stopped at start-up says why.
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("baton stopped at start-up ({status}):\n{said}");
            }
            let ready = self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for baton to answer"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn say(&self, user: &str, channel: &str, text: &str) -> Value {
        let r = self
            .http
            .post(format!("{}/api/messages", self.base()))
            .json(&json!({"channel": channel, "user": user, "text": text}))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    pub async fn start_run(&self, user: &str, channel: &str, text: &str) -> i64 {
        let body = self.say(user, channel, text).await;
        body["started"][0]
            .as_i64()
            .unwrap_or_else(|| panic!("`{text}` started no run: {body}"))
    }

    pub async fn run_page(&self, run: i64) -> String {
        self.http
            .get(format!("{}/runs/{run}", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = self.command().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn ledger(&self) -> Vec<Value> {
        let (ok, out) = self.cli(&["audit", "export"]);
        assert!(ok);
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub async fn thread_texts(&self, channel: &str, run: i64) -> Vec<String> {
        self.thread_texts_if_any(channel, run)
            .await
            .expect("root posted")
    }

    /// The run's thread, once its root is in the channel.
    pub async fn thread_texts_if_any(&self, channel: &str, run: i64) -> Option<Vec<String>> {
        let msgs: Vec<Value> = self
            .http
            .get(format!("{}/api/channels/{channel}/messages", self.base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let root = msgs.iter().find(|m| {
            m["message"]["text"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("run {run} ·"))
        })?;
        let thread: Vec<Value> = self
            .http
            .get(format!("{}/api/threads/{}", self.base(), root["id"]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Some(
            thread
                .iter()
                .map(|m| m["message"]["text"].as_str().unwrap_or("").to_owned())
                .collect(),
        )
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        // A failing test shows what the bot said.
        if std::thread::panicking() {
            let said = std::fs::read_to_string(self.dir.path().join("bot.log")).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(40).collect();
            eprintln!("--- the bot on port {} said (last lines):", self.port);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
