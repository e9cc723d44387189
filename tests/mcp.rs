//! Tools from MCP servers, against the MCP reference server
//! `@modelcontextprotocol/server-everything` (a third-party implementation, so what Baton sends
//! is what the official SDK expects): over stdio, where Baton starts the server, and over
//! streamable HTTP. Agents call the tools through the fake model server (`support/fake_llm.rs`).
//!
//! `./scripts/test` installs the server into `.tools/` and sets `MCP_EVERYTHING`. Without it
//! these tests fail and say so, unless `BATON_SKIP_MCP=1` says to skip them.

mod support;

#[path = "support/fake_llm.rs"]
mod fake_llm;
#[path = "support/fake_mcp.rs"]
mod fake_mcp;

use fake_llm::*;
use fake_mcp::FakeMcp;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use support::*;

fn everything() -> Option<PathBuf> {
    let path = std::env::var("MCP_EVERYTHING")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js")
        });
    if path.exists() {
        return Some(path);
    }
    if std::env::var("BATON_SKIP_MCP").is_ok_and(|v| v == "1") {
        eprintln!("skipped: BATON_SKIP_MCP=1");
        return None;
    }
    panic!(
        "@modelcontextprotocol/server-everything is not installed at {}: run ./scripts/test (which installs it), or set BATON_SKIP_MCP=1",
        path.display()
    );
}

/// `commands/mcp/everything.toml` for a server Baton starts over stdio.
fn stdio_server(script: &std::path::Path, extra: &str) -> (&'static str, String) {
    (
        "mcp/everything.toml",
        format!(
            "command = \"node\"\nargs = [{:?}, \"stdio\"]\n{extra}\n",
            script.display().to_string()
        ),
    )
}

/// The reference server on streamable HTTP, stopped when dropped.
struct HttpServer {
    child: Child,
    port: u16,
    script: PathBuf,
}

impl HttpServer {
    async fn start(script: &std::path::Path, port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = Command::new("node")
            .arg(script)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the MCP server");
        eventually("the MCP server to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self {
            child,
            port,
            script: script.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Stops the server and starts a new one on the same port: every session is gone.
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::start(&self.script.clone(), Some(self.port)).await;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn app_with(llm: Option<&FakeLlm>, files: Vec<(&'static str, String)>) -> TestApp {
    let mut env = vec![("MCP_TEST_TOKEN", "tok-very-secret-42".to_owned())];
    if let Some(llm) = llm {
        env.push(("BATON_MODELS", "default=openai:gpt-test".into()));
        env.push(("OPENAI_BASE_URL", format!("{}/v1", llm.base)));
        env.push(("OPENAI_API_KEY", "sk-test-secret".into()));
    }
    spawn(Spawn {
        extra_workflows: files,
        with_examples: false,
        env,
        ..Default::default()
    })
    .await
}

/// The ledger's `tool.called` entries' data.
async fn tool_calls(app: &TestApp) -> Vec<Value> {
    app.ledger_of("tool.called")
        .await
        .iter()
        .map(|e| serde_json::from_str(e["data"].as_str().unwrap()).unwrap())
        .collect()
}

const SUMMER: &str = r#"
name = "sum"
description = "Add two numbers with a tool"
[[trigger]]
kind = "slash"
command = "sum"
args = [{ name = "a", type = "int", required = true }, { name = "b", type = "int", required = true }]

[agents.adder]
role = "Adder"
instructions = "You add numbers with your tool."
tools = ["everything.get-sum"]

[[step]]
id = "add"
kind = "agent"
agent = "adder"
prompt = "Add {{ input.a }} and {{ input.b }}."
"#;

#[tokio::test]
async fn an_agent_calls_a_read_class_mcp_tool_over_stdio_and_gets_its_answer() {
    let Some(script) = everything() else { return };
    let llm = FakeLlm::start().await;
    let app = app_with(
        Some(&llm),
        vec![
            stdio_server(&script, "[tools]\nget-sum = \"read\""),
            ("sum.toml", SUMMER.into()),
        ],
    )
    .await;
    llm.script([
        openai_tool_call("call_1", "everything__get-sum", json!({"a": 2, "b": 3})),
        openai_text("2 + 3 = 5"),
    ]);
    let run = app.start_run("ana", "general", "/sum 2 3").await;
    app.wait_for_status(run, "succeeded").await;

    // The model was offered the tool as the server describes it.
    let requests = llm.requests();
    let offered = &requests[0]["tools"][0]["function"];
    assert_eq!(offered["name"], "everything__get-sum");
    assert_eq!(offered["description"], "Returns the sum of two numbers");
    assert_eq!(offered["parameters"]["properties"]["a"]["type"], "number");
    // A read-class tool runs at once, and its answer goes back to the model.
    let result = &tool_messages(&requests[1])[0];
    assert_eq!(result["tool_call_id"], "call_1");
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("The sum of 2 and 3 is 5."),
        "{result}"
    );
    let root = app.root_of("general", run).await;
    let call = app
        .wait_in_thread(root["id"].as_i64().unwrap(), "calls `everything.get-sum`")
        .await;
    assert!(call.to_string().contains("a=2, b=3"), "{call}");
    let calls = tool_calls(&app).await;
    assert_eq!(calls[0]["tool"], "everything.get-sum");
    assert_eq!(calls[0]["ok"], true);
    assert_eq!(calls[0]["output"]["text"], "The sum of 2 and 3 is 5.");
    assert!(app.ledger_of("approval.requested").await.is_empty());
}

const ENV_DUMP: &str = r#"
name = "env"
description = "Ask the server for its environment"
[[trigger]]
kind = "slash"
command = "env"

[agents.inspector]
role = "Inspector"
instructions = "You inspect servers."
tools = ["everything.get-env"]

[[step]]
id = "inspect"
kind = "agent"
agent = "inspector"
prompt = "What does the server see?"
approvers = ["ben"]
"#;

#[tokio::test]
async fn an_external_mcp_tool_waits_for_approval_and_the_server_gets_only_the_env_its_file_gives() {
    let Some(script) = everything() else { return };
    let llm = FakeLlm::start().await;
    let app = app_with(
        Some(&llm),
        vec![
            // get-env is not named under [tools], so it is external.
            stdio_server(
                &script,
                "env = { GREETING = \"hello\", API_TOKEN = \"${MCP_TEST_TOKEN}\" }",
            ),
            ("env.toml", ENV_DUMP.into()),
        ],
    )
    .await;
    llm.script([
        openai_tool_call("call_env", "everything__get-env", json!({})),
        openai_text("It sees GREETING."),
    ]);
    let run = app.start_run("ana", "general", "/env").await;
    app.wait_for_status(run, "waiting_approval").await;
    assert!(
        tool_calls(&app).await.is_empty(),
        "nothing runs before the decision"
    );
    let root = app.root_of("general", run).await;
    let approval = app
        .wait_in_thread(root["id"].as_i64().unwrap(), "Approval needed")
        .await;
    assert!(
        approval
            .to_string()
            .contains("Inspector wants to call everything.get-env"),
        "{approval}"
    );
    let approve = button(&approval, "Approve").unwrap();
    app.click("ben", approval["id"].as_i64().unwrap(), &approve)
        .await;
    app.wait_for_status(run, "succeeded").await;

    let result = &tool_messages(&llm.requests()[1])[0];
    let seen: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    let env: Value = serde_json::from_str(seen["text"].as_str().unwrap()).unwrap();
    assert_eq!(env["GREETING"], "hello");
    // The server saw the expanded token: the result carried exactly that value, which is why
    // neither the model nor the store sees it.
    assert_eq!(env["API_TOKEN"], "[redacted]");
    assert!(
        env.get("PATH").is_some(),
        "PATH is passed so the server can run"
    );
    // Baton's own environment (here, what cargo sets for the tests) stays with Baton.
    assert!(env.get("CARGO_MANIFEST_DIR").is_none(), "{env}");
    // The ledger keeps the call, with the expanded secret redacted.
    let ledger = Value::Array(app.ledger().await).to_string();
    assert!(ledger.contains("everything.get-env"));
    assert!(
        !ledger.contains("tok-very-secret-42"),
        "the token is redacted"
    );
}

const ECHO_STEP: &str = r#"
name = "echo"
description = "Echo through a remote MCP server"
[[trigger]]
kind = "slash"
command = "echo"
args = [{ name = "who", required = true }]

[[step]]
id = "say"
kind = "tool"
tool = "remote.echo"
with = { message = "hello {{ input.who }}" }
"#;

fn http_server_file(url: &str) -> (&'static str, String) {
    (
        "mcp/remote.toml",
        format!(
            "url = \"{url}\"\nheaders = {{ Authorization = \"Bearer ${{MCP_TEST_TOKEN}}\" }}\n[tools]\necho = \"read\"\n"
        ),
    )
}

#[tokio::test]
async fn a_tool_step_calls_an_mcp_tool_over_streamable_http_and_a_restarted_server_gets_a_new_session()
 {
    let Some(script) = everything() else { return };
    let mut server = HttpServer::start(&script, None).await;
    let app = app_with(
        None,
        vec![
            http_server_file(&server.url()),
            ("echo.toml", ECHO_STEP.into()),
        ],
    )
    .await;
    let run = app.start_run("ana", "general", "/echo ana").await;
    app.wait_for_status(run, "succeeded").await;
    let calls = tool_calls(&app).await;
    assert_eq!(calls[0]["tool"], "remote.echo");
    assert_eq!(calls[0]["args"]["message"], "hello ana");
    assert_eq!(calls[0]["output"]["text"], "Echo: hello ana");

    // The server forgets every session; the next call opens a new one.
    server.restart().await;
    let run = app.start_run("ana", "general", "/echo ben").await;
    app.wait_for_status(run, "succeeded").await;
    let calls = tool_calls(&app).await;
    assert_eq!(calls.last().unwrap()["output"]["text"], "Echo: hello ben");
}

const LOOKUP: &str = r#"
name = "lookup"
description = "Look something up"
[[trigger]]
kind = "slash"
command = "lookup"
args = [{ name = "q", required = true }]

[[step]]
id = "find"
kind = "tool"
tool = "fake.{{TOOL}}"
with = { q = "{{ input.q }}" }
"#;

#[tokio::test]
async fn an_http_mcp_server_gets_the_configured_headers_and_a_forgotten_session_is_replaced() {
    let server = FakeMcp::start().await;
    let config = format!(
        "url = \"{}\"\nheaders = {{ Authorization = \"Bearer ${{MCP_TEST_TOKEN}}\", X-Team = \"ops\" }}\n[tools]\nlookup = \"read\"\nbroken = \"read\"\n",
        server.url
    );
    let app = app_with(
        None,
        vec![
            ("mcp/fake.toml", config),
            ("lookup.toml", LOOKUP.replace("{{TOOL}}", "lookup")),
            (
                "broken.toml",
                LOOKUP
                    .replace("{{TOOL}}", "broken")
                    .replace("\"lookup\"", "\"broken\""),
            ),
        ],
    )
    .await;
    let run = app.start_run("ana", "general", "/lookup acme").await;
    app.wait_for_status(run, "succeeded").await;
    assert_eq!(tool_calls(&app).await[0]["output"]["text"], "found acme");
    let call = &server.requests("tools/call")[0];
    assert_eq!(call["authorization"], "Bearer tok-very-secret-42");
    assert_eq!(call["x-team"], "ops");
    assert_eq!(call["mcp-session-id"], "session-1");
    assert!(call.get("mcp-protocol-version").is_some(), "{call:?}");

    // The server forgets the session and answers 404: a new one is opened and the call sent
    // again, once.
    server.forget_sessions();
    let run = app.start_run("ana", "general", "/lookup beta").await;
    app.wait_for_status(run, "succeeded").await;
    assert_eq!(tool_calls(&app).await[1]["output"]["text"], "found beta");
    assert_eq!(server.requests("initialize").len(), 2);
    assert_eq!(
        server.requests("tools/call")[2]["mcp-session-id"],
        "session-2"
    );

    // A tool that reports an error fails its step with the tool's words.
    let run = app.start_run("ana", "general", "/broken x").await;
    app.wait_for_status(run, "failed").await;
    let calls = tool_calls(&app).await;
    assert_eq!(calls[2]["ok"], false);
    assert_eq!(calls[2]["error"], "the backend is down");
}

const GHOST: &str = r#"
name = "ghost"
description = "Use a server that is not there"
[[trigger]]
kind = "slash"
command = "ghost"

[[step]]
id = "look"
kind = "tool"
tool = "ghost.lookup"
with = { q = "x" }
"#;

#[tokio::test]
async fn an_mcp_server_that_cannot_start_does_not_stop_baton_and_its_calls_fail_with_the_reason() {
    let app = app_with(
        None,
        vec![
            (
                "mcp/ghost.toml",
                "command = \"/nonexistent/ghost-server\"\nconnect_timeout = \"5s\"\n[tools]\nlookup = \"read\"\n".into(),
            ),
            ("ghost.toml", GHOST.into()),
        ],
    )
    .await;
    let run = app.start_run("ana", "general", "/ghost").await;
    app.wait_for_status(run, "failed").await;
    let calls = tool_calls(&app).await;
    assert_eq!(calls[0]["tool"], "ghost.lookup");
    assert_eq!(calls[0]["ok"], false);
    let error = calls[0]["error"].as_str().unwrap();
    assert!(
        error.contains("could not start `/nonexistent/ghost-server`"),
        "{error}"
    );
}

const SLOW: &str = r#"
name = "slow"
description = "A tool slower than its timeout"
[[trigger]]
kind = "slash"
command = "slow"

[[step]]
id = "wait"
kind = "tool"
tool = "everything.trigger-long-running-operation"
with = { duration = 5, steps = 5 }
"#;

#[tokio::test]
async fn an_mcp_call_past_its_timeout_fails_and_the_server_still_answers_the_next_call() {
    let Some(script) = everything() else { return };
    let app = app_with(
        None,
        vec![
            stdio_server(
                &script,
                "timeout = \"1s\"\n[tools]\ntrigger-long-running-operation = \"read\"\necho = \"read\"",
            ),
            ("slow.toml", SLOW.into()),
            (
                "echo.toml",
                ECHO_STEP.replace("remote.echo", "everything.echo"),
            ),
        ],
    )
    .await;
    let run = app.start_run("ana", "general", "/slow").await;
    app.wait_for_status(run, "failed").await;
    let calls = tool_calls(&app).await;
    let error = calls[0]["error"].as_str().unwrap();
    assert!(error.contains("did not answer within 1 s"), "{error}");

    let run = app.start_run("ana", "general", "/echo cy").await;
    app.wait_for_status(run, "succeeded").await;
    let calls = tool_calls(&app).await;
    assert_eq!(calls.last().unwrap()["output"]["text"], "Echo: hello cy");
}

/// Runs the real binary with `args` in a commands directory holding `files`.
fn baton(args: &[&str], files: &[(&str, String)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let commands = dir.path().join("commands");
    for (name, text) in files {
        let path = commands.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(&commands).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .current_dir(dir.path())
        .env("BATON_COMMANDS_DIR", &commands)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        )
        .env("BATON_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn baton_tools_lists_each_mcp_tool_with_the_class_its_file_gives() {
    let Some(script) = everything() else { return };
    let (ok, out, err) = baton(
        &["tools"],
        &[stdio_server(&script, "[tools]\necho = \"read\"")],
    );
    assert!(ok, "{out}\n{err}");
    let line = |tool: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{tool} ")))
            .unwrap_or_else(|| panic!("no {tool} in\n{out}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(line("everything.echo"), "read");
    assert_eq!(line("everything.get-env"), "external");
    assert_eq!(line("webhook.post"), "external");
}

#[test]
fn baton_check_names_a_tool_the_mcp_server_does_not_have() {
    let Some(script) = everything() else { return };
    let workflow = ECHO_STEP.replace("remote.echo", "everything.shout");
    let (ok, out, err) = baton(
        &["check"],
        &[
            stdio_server(&script, "[tools]\necho = \"read\""),
            ("echo.toml", workflow),
        ],
    );
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains("echo.toml:") && err.contains("unknown tool `everything.shout`"),
        "{err}"
    );
    assert!(
        err.contains("everything.echo"),
        "the known tools are listed: {err}"
    );
}
