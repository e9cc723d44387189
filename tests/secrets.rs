//! Secrets stay out at rest: a value listed in `BATON_SECRETS` that arrives in a fetched body,
//! in what a person types, in a model's answer and in agent memory is found nowhere in the
//! database file (WAL included) and on no page Baton serves.

mod support;

#[path = "support/fake_llm.rs"]
mod fake_llm;

use fake_llm::*;
use serde_json::json;
use support::*;

const SECRET: &str = "sk-planted-7f3a9c2e4b1d";

/// A server whose page carries the secret.
async fn leaky_upstream() -> String {
    let app = axum::Router::new().route(
        "/leak",
        axum::routing::get(|| async { format!("status ok, key={SECRET}, done") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn workflow(upstream: &str) -> String {
    format!(
        r#"
name = "fetch"
description = "Fetch a page"
[[trigger]]
kind = "slash"
command = "fetch"
args = [{{ name = "note", required = true }}]

[agents.reader]
role = "Reader"
instructions = "Read pages."
tools = ["http.get", "memory.write"]
max_turns = 4

[[step]]
id = "get"
kind = "tool"
tool = "http.get"
with = {{ url = "{upstream}/leak" }}
[[step]]
id = "tell"
kind = "notify"
needs = ["get"]
text = "Got: {{{{ steps.get.output.body }}}} for {{{{ input.note }}}}"
[[step]]
id = "read"
kind = "agent"
agent = "reader"
needs = ["tell"]
prompt = "Read {upstream}/leak and remember it."
[[step]]
id = "gate"
kind = "approval"
needs = ["read"]
approvers = ["ben"]
message = "Publish {{{{ steps.get.output.body }}}}?"
"#
    )
}

#[tokio::test]
async fn a_secret_in_a_fetched_body_is_nowhere_in_the_database_file_or_on_any_page() {
    let upstream = leaky_upstream().await;
    let llm = FakeLlm::start().await;
    let mut app = spawn(Spawn {
        extra_workflows: vec![("fetch.toml", workflow(&upstream))],
        with_examples: false,
        env: vec![
            ("BATON_SECRETS", SECRET.into()),
            ("BATON_MODELS", "default=openai:gpt-test".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", llm.base)),
            ("OPENAI_API_KEY", "sk-test-key-0000".into()),
        ],
        ..Default::default()
    })
    .await;
    // The model fetches the page, then writes the secret it "knows" into memory and its answer.
    llm.script([
        openai_tool_call(
            "call_1",
            "http__get",
            json!({"url": format!("{upstream}/leak")}),
        ),
        openai_tool_call(
            "call_2",
            "memory__write",
            json!({"namespace": "pages", "key": "leak", "value": {"key": SECRET}}),
        ),
        openai_text(&format!("The page's key is {SECRET}.")),
    ]);
    // A person types it too.
    let run = app
        .start_run("ana", "general", &format!("/fetch {SECRET}"))
        .await;
    let root = app.root_of("general", run).await["id"].as_i64().unwrap();
    let approval = app.wait_in_thread(root, "Approval needed").await;
    app.say("ben", "general", &format!("the key is {SECRET}"))
        .await;
    assert!(
        !llm.requests()
            .iter()
            .skip(1)
            .any(|r| r.to_string().contains(SECRET)),
        "the model is not shown the secret from the fetched page"
    );
    app.click(
        "ben",
        approval["id"].as_i64().unwrap(),
        &button(&approval, "Approve").unwrap(),
    )
    .await;
    app.wait_for_status(run, "succeeded").await;
    app.wait_in_thread(root, &format!("Run {run} *done*")).await;

    let mut pages = vec![
        "/".to_owned(),
        "/runs".into(),
        format!("/runs/{run}"),
        "/approvals".into(),
        "/stalled".into(),
        "/audit".into(),
        "/memory".into(),
        "/api/state".into(),
        "/api/channels/general/messages".into(),
        format!("/api/threads/{root}"),
        "/metrics".into(),
    ];
    pages.sort();
    for page in &pages {
        let (status, body) = app.get(page).await;
        assert_eq!(status, 200, "{page}");
        assert!(!body.contains(SECRET), "{page} shows the secret");
    }
    let (_, run_page) = app.get(&format!("/runs/{run}")).await;
    assert!(
        run_page.contains("[redacted]"),
        "the run page shows where it was"
    );
    let ledger = serde_json::to_string(&app.ledger().await).unwrap();
    assert!(!ledger.contains(SECRET), "the export");

    app.stop().await;
    let mut files = 0;
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("baton.db")
        {
            continue;
        }
        // SQLite removes its log when its last connection closes, which may be just now.
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        files += 1;
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            path.display()
        );
    }
    assert!(files >= 1);
}
