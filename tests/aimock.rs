//! Agent steps against a third-party model server, `@copilotkit/aimock`, for protocol fidelity:
//! it speaks OpenAI's Chat Completions and Anthropic's Messages API from JSON fixtures. Baton's
//! own fake (`support/fake_llm.rs`) covers the edge cases; this one checks that what Baton
//! sends and reads is what another implementation of the same APIs expects.
//!
//! `./scripts/test` installs aimock into `.tools/` and sets `AIMOCK_CLI`. Without it these
//! tests fail and say so, unless `BATON_SKIP_AIMOCK=1` says to skip them.

mod support;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use support::*;

/// A running aimock, stopped when dropped.
struct Aimock {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Aimock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aimock_cli() -> Option<PathBuf> {
    let path = std::env::var("AIMOCK_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".tools/node_modules/@copilotkit/aimock/dist/cli.js")
        });
    if path.exists() {
        return Some(path);
    }
    if std::env::var("BATON_SKIP_AIMOCK").is_ok_and(|v| v == "1") {
        eprintln!("skipped: BATON_SKIP_AIMOCK=1");
        return None;
    }
    panic!(
        "@copilotkit/aimock is not installed at {}: run ./scripts/test (which installs it), or set BATON_SKIP_AIMOCK=1",
        path.display()
    );
}

impl Aimock {
    async fn start(fixtures: Value) -> Option<Self> {
        let cli = aimock_cli()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("fixtures.json"),
            json!({ "fixtures": fixtures }).to_string(),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("node")
            .arg(&cli)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .arg("--fixtures")
            .arg(dir.path())
            .args(["--log-level", "warn", "--strict"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs aimock");
        let base = format!("http://127.0.0.1:{port}");
        let mock = Self {
            child,
            base: base.clone(),
            _dir: dir,
        };
        let http = baton::http_client::client();
        eventually("aimock to listen", || async {
            http.get(format!("{base}/health")).send().await.is_ok()
        })
        .await;
        Some(mock)
    }
}

/// The example workflows, their agents on `default`, served by aimock in `dialect`.
async fn app_on(mock: &Aimock, dialect: &str) -> TestApp {
    let env = match dialect {
        "openai" => vec![
            ("BATON_MODELS", "default=openai:gpt-4o-mini".to_owned()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.base)),
            ("OPENAI_API_KEY", "sk-aimock".to_owned()),
        ],
        _ => vec![
            (
                "BATON_MODELS",
                "default=anthropic:claude-haiku-4-5".to_owned(),
            ),
            ("ANTHROPIC_BASE_URL", mock.base.clone()),
            ("ANTHROPIC_API_KEY", "sk-ant-aimock".to_owned()),
        ],
    };
    spawn(Spawn {
        env,
        ..Default::default()
    })
    .await
}

/// Fixtures for the lead intake: each agent is told apart by its instructions; the researcher
/// first writes memory, then answers once the tool result is in.
fn lead_fixtures() -> Value {
    let email = json!({"to": "jane@acme.com", "subject": "Rockets, faster", "body": "Hi Jane, we help teams like Acme ship rockets faster. Could we talk for 20 minutes next week?"});
    json!([
        {"match": {"systemMessage": "You research companies", "hasToolResult": false},
         "response": {"toolCalls": [{"id": "call_mem_1", "name": "memory__write", "arguments": {"namespace": "company", "key": "acme.com", "value": {"does": "rockets", "size": 50}}}]}},
        {"match": {"systemMessage": "You research companies", "hasToolResult": true},
         "response": {"content": "Acme builds rockets; about 50 people."}},
        {"match": {"systemMessage": "You write short, friendly first emails"},
         "response": {"content": email.to_string()}},
        {"match": {"systemMessage": "You review outgoing sales emails"},
         "response": {"content": "{\"ok\": true, \"confidence\": 0.87, \"notes\": \"Matches the research.\"}"}}
    ])
}

async fn run_lead_intake(dialect: &str) {
    let Some(mock) = Aimock::start(lead_fixtures()).await else {
        return;
    };
    let app = app_on(&mock, dialect).await;
    let run = app
        .start_run("ana", "general", "/lead acme.com jane@acme.com")
        .await;
    app.wait_for_status(run, "waiting_approval").await;
    let root = app.root_of("general", run).await;
    let approval = app
        .wait_in_thread(root["id"].as_i64().unwrap(), "Approval needed")
        .await;
    let shown = approval.to_string();
    assert!(
        shown.contains("subject: Rockets, faster") && shown.contains("confidence 0.87"),
        "{shown}"
    );
    let approve = button(&approval, "Approve").unwrap();
    app.click("cy", approval["id"].as_i64().unwrap(), &approve)
        .await;
    app.wait_for_status(run, "succeeded").await;
    let inbox: Vec<String> = app
        .channel("inbox")
        .await
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert!(
        inbox.iter().any(|m| m.contains("jane@acme.com")),
        "{inbox:?}"
    );
    // Four agents' turns, each a model call in the ledger with the tokens aimock reported.
    let calls = app.ledger_of("model.called").await;
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| !c["data"].as_str().unwrap().contains("\"error\""))
    );
    let memory = app.ledger_of("tool.called").await;
    assert!(memory[0]["data"].as_str().unwrap().contains("memory.write"));
}

#[tokio::test]
async fn a_full_lead_intake_runs_against_aimock_in_openais_dialect() {
    run_lead_intake("openai").await;
}

#[tokio::test]
async fn a_full_lead_intake_runs_against_aimock_in_anthropics_dialect() {
    run_lead_intake("anthropic").await;
}

#[tokio::test]
async fn ticket_triage_routes_by_a_schema_checked_answer_from_aimock() {
    let fixtures = json!([
        {"match": {"systemMessage": "You triage support tickets"},
         "response": {"content": "{\"category\": \"bug\", \"urgency\": \"normal\", \"confidence\": 0.7, \"summary\": \"Export crashes.\"}"}}
    ]);
    let Some(mock) = Aimock::start(fixtures).await else {
        return;
    };
    let app = app_on(&mock, "anthropic").await;
    let run = app
        .start_run(
            "ana",
            "general",
            "/triage The CSV export crashes every time",
        )
        .await;
    app.wait_for_status(run, "succeeded").await;
    let routed = eventually_some("the ticket in #support-bug", || async {
        app.channel_if_any("support-bug").await?.into_iter().next()
    })
    .await;
    assert!(text(&routed).contains("New *normal* bug ticket (70% sure): Export crashes."));
}
