//! Agent steps end to end through the console, against fake OpenAI-compatible and Anthropic
//! servers on loopback (`support/fake_llm.rs`): the tool loop, refusals, memory with
//! attribution, schema checks, retries, a missing provider, and a crash mid-loop.

mod support;

#[path = "support/fake_llm.rs"]
mod fake_llm;

use fake_llm::*;
use serde_json::{Value, json};
use support::*;

const RESEARCH: &str = r#"
name = "research"
description = "Research a company"
title = "Research {{ input.company }}"
[[trigger]]
kind = "slash"
command = "research"
args = [{ name = "company", required = true }]

[agents.researcher]
role = "Researcher"
instructions = "You research companies for the sales team of {{ run.workflow }}."
tools = ["memory.read", "memory.write", "run.context"]
max_turns = 4

[[step]]
id = "research"
kind = "agent"
agent = "researcher"
prompt = "Research {{ input.company }}."
"#;

async fn app_with(
    llm: Option<&FakeLlm>,
    workflow: &str,
    extra: Vec<(&'static str, String)>,
) -> TestApp {
    let mut env = extra;
    if let Some(llm) = llm {
        env.push((
            "BATON_MODELS",
            "default=openai:gpt-test,claude=anthropic:claude-test".into(),
        ));
        env.push(("OPENAI_BASE_URL", format!("{}/v1", llm.base)));
        env.push(("OPENAI_API_KEY", "sk-test-secret".into()));
        env.push(("ANTHROPIC_BASE_URL", llm.base.clone()));
        env.push(("ANTHROPIC_API_KEY", "ak-test-secret".into()));
    }
    spawn(Spawn {
        extra_workflows: vec![("wf.toml", workflow.into())],
        with_examples: false,
        env,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn an_agent_writes_memory_in_one_run_and_the_next_run_reads_it_with_attribution() {
    let llm = FakeLlm::start().await;
    let app = app_with(Some(&llm), RESEARCH, vec![]).await;
    llm.script([
        openai_tool_call(
            "call_1",
            "memory__write",
            json!({"namespace": "company", "key": "acme.com", "value": {"employees": 50}}),
        ),
        openai_text("Acme has 50 employees."),
    ]);
    let run = app.start_run("ana", "general", "/research acme.com").await;
    app.wait_for_status(run, "succeeded").await;
    let root = app.root_of("general", run).await;
    let root_id = root["id"].as_i64().unwrap();
    app.wait_in_thread(root_id, "Researcher* is on it (openai gpt-test)")
        .await;
    let call = app.wait_in_thread(root_id, "calls `memory.write`").await;
    assert!(
        call.to_string().contains("key=acme.com, namespace=company"),
        "{call}"
    );
    let answer = app.wait_in_thread(root_id, "Researcher* answered").await;
    assert!(
        answer.to_string().contains("Acme has 50 employees."),
        "{answer}"
    );

    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["model"], "gpt-test");
    assert_eq!(
        requests[0]["messages"][0]["content"],
        "You research companies for the sales team of research."
    );
    assert!(
        requests[0]["messages"][1]["content"]
            .as_str()
            .unwrap()
            .starts_with("Research acme.com.")
    );
    let names: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["memory__read", "memory__write", "run__context"]);
    assert_eq!(tool_messages(&requests[1])[0]["tool_call_id"], "call_1");
    assert_eq!(llm.headers(0)["authorization"], "Bearer sk-test-secret");

    // Every model call is in the ledger, with tokens, and the key never is.
    let calls = app.ledger_of("model.called").await;
    assert_eq!(calls.len(), 2);
    let data: Value = serde_json::from_str(calls[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        (data["provider"].as_str(), data["model"].as_str()),
        (Some("openai"), Some("gpt-test"))
    );
    assert_eq!(
        (data["tokens_in"].as_u64(), data["tokens_out"].as_u64()),
        (Some(80), Some(10))
    );
    assert_eq!(data["finish_reason"], "tool_calls");
    assert!(data["request"]["messages"].is_array());
    let ledger = serde_json::to_string(&app.ledger().await).unwrap();
    assert!(!ledger.contains("sk-test-secret"));

    // The next run reads what the first wrote, and sees who wrote it.
    llm.script([
        openai_tool_call(
            "call_2",
            "memory__read",
            json!({"namespace": "company", "key": "acme.com"}),
        ),
        openai_text("Known: 50 employees."),
    ]);
    let second = app.start_run("ben", "general", "/research acme.com").await;
    app.wait_for_status(second, "succeeded").await;
    let requests = llm.requests();
    let read: Value =
        serde_json::from_str(tool_messages(&requests[3])[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(read["value"], json!({"employees": 50}));
    assert_eq!(read["written_by"]["run"], run);
    assert_eq!(read["written_by"]["step"], "research");
    assert_eq!(read["written_by"]["agent"], "researcher");

    // The console's memory page shows the entry with the same attribution.
    let (status, page) = app.get("/memory?namespace=company").await;
    assert_eq!(status, 200);
    let row = &page[page.find("<td>acme.com</td>").expect("the entry is listed")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("&quot;employees&quot;: 50"), "{row}");
    assert!(row.contains("<td>researcher</td>"), "{row}");
    assert!(
        row.contains(&format!("<a href=\"/runs/{run}\">{run}</a>")),
        "{row}"
    );
    assert!(row.contains("<td>research</td>"), "{row}");
    let (_, other) = app.get("/memory?namespace=elsewhere").await;
    assert!(!other.contains("acme.com"));
}

#[tokio::test]
async fn a_tool_outside_the_allow_list_is_refused_told_to_the_model_and_audited() {
    let llm = FakeLlm::start().await;
    let app = app_with(Some(&llm), RESEARCH, vec![]).await;
    llm.script([
        openai_tool_call("call_x", "http__get", json!({"url": "http://127.0.0.1:1/"})),
        openai_tool_call("call_y", "shell__exec", json!({"cmd": "rm -rf /"})),
        openai_text("I could not look it up."),
    ]);
    let run = app.start_run("ana", "general", "/research acme.com").await;
    app.wait_for_status(run, "succeeded").await;
    let requests = llm.requests();
    let refusal = &tool_messages(&requests[1])[0];
    assert_eq!(refusal["tool_call_id"], "call_x");
    assert!(
        refusal["content"]
            .as_str()
            .unwrap()
            .starts_with("refused: `http.get` is not one of this agent's tools"),
        "{refusal}"
    );
    let refused = app.ledger_of("tool.refused").await;
    assert_eq!(refused.len(), 2);
    assert!(refused[1]["data"].as_str().unwrap().contains("shell.exec"));
    let root = app.root_of("general", run).await;
    let root_id = root["id"].as_i64().unwrap();
    eventually("the shell.exec refusal in the thread", || async {
        app.thread(root_id).await.iter().any(|m| {
            m["message"]["detail"].as_str().is_some_and(|d| {
                d.contains(
                    "shell.exec(cmd=rm -rf /): `shell.exec` is not one of this agent's tools",
                )
            })
        })
    })
    .await;
}

#[tokio::test]
async fn with_no_model_configured_baton_starts_and_the_agent_step_says_what_to_set() {
    let app = app_with(None, RESEARCH, vec![]).await;
    let run = app.start_run("ana", "general", "/research acme.com").await;
    app.wait_for_status(run, "failed").await;
    let root = app.root_of("general", run).await;
    app.wait_in_thread(
        root["id"].as_i64().unwrap(),
        "no model is configured, so agent steps cannot run: set BATON_MODELS",
    )
    .await;
}

const TRIAGE: &str = r#"
name = "triage"
description = "Triage a ticket"
[[trigger]]
kind = "slash"
command = "triage"
args = [{ name = "ticket", required = true }]

[agents.classifier]
role = "Classifier"
model = "claude"
instructions = "Classify support tickets."
output_schema = { type = "object", required = ["category"], properties = { category = { type = "string", enum = ["billing", "bug", "other"] } } }

[[step]]
id = "classify"
kind = "agent"
agent = "classifier"
prompt = "Ticket: {{ input.ticket }}"

[[step]]
id = "route"
kind = "notify"
needs = ["classify"]
text = "Routed to {{ steps.classify.output.json.category }}."
"#;

#[tokio::test]
async fn an_answer_that_misses_the_schema_is_asked_for_once_more_with_the_error() {
    let llm = FakeLlm::start().await;
    let app = app_with(Some(&llm), TRIAGE, vec![]).await;
    llm.script([
        Reply::Status(429, Some("0")),
        anthropic_text("It is probably billing."),
        anthropic_text("```json\n{\"category\": \"billing\"}\n```"),
    ]);
    let run = app
        .start_run("ana", "general", "/triage I was charged twice")
        .await;
    app.wait_for_status(run, "succeeded").await;
    let root = app.root_of("general", run).await;
    app.wait_in_thread(root["id"].as_i64().unwrap(), "Routed to billing.")
        .await;
    let requests = llm.requests();
    assert_eq!(requests.len(), 3, "the 429 was tried again");
    let headers = llm.headers(1);
    assert_eq!(headers["x-api-key"], "ak-test-secret");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    let last = requests[2]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("the answer is not JSON"),
        "{last}"
    );

    // Twice wrong fails the step with the error.
    llm.script([
        anthropic_text("{\"category\": \"spam\"}"),
        anthropic_text("{\"category\": \"spam\"}"),
    ]);
    let run = app.start_run("ana", "general", "/triage buy now").await;
    app.wait_for_status(run, "failed").await;
    let root = app.root_of("general", run).await;
    app.wait_in_thread(
        root["id"].as_i64().unwrap(),
        "does not match its output schema: $.category should be one of",
    )
    .await;
}

#[tokio::test]
async fn a_crash_mid_loop_resumes_from_the_last_completed_turn() {
    let llm = FakeLlm::start().await;
    let mut app = app_with(
        Some(&llm),
        RESEARCH,
        vec![("BATON_SHUTDOWN_GRACE", "100ms".into())],
    )
    .await;
    llm.script([
        openai_tool_call(
            "call_1",
            "memory__write",
            json!({"namespace": "company", "key": "globex.com", "value": "big"}),
        ),
        Reply::Hang,
        openai_text("Globex is big."),
    ]);
    let run = app
        .start_run("ana", "general", "/research globex.com")
        .await;
    eventually("the second model call", || async {
        llm.requests().len() == 2
    })
    .await;
    // The process stops while the model thinks; the attempt is left running.
    app.restart().await;
    app.wait_for_status(run, "succeeded").await;
    let requests = llm.requests();
    assert_eq!(requests.len(), 3);
    // The resumed call carries the first turns; the tool did not run again.
    assert_eq!(tool_messages(&requests[2])[0]["tool_call_id"], "call_1");
    let writes: Vec<Value> = app
        .ledger_of("tool.called")
        .await
        .into_iter()
        .filter(|e| e["data"].as_str().unwrap_or("").contains("memory.write"))
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    let root = app.root_of("general", run).await;
    app.wait_in_thread(root["id"].as_i64().unwrap(), "picks up where it stopped")
        .await;
}

/// The example models: every agent uses `default`, here the fake OpenAI-compatible server.
fn example_models(llm: &FakeLlm) -> Vec<(&'static str, String)> {
    vec![
        ("BATON_MODELS", "default=openai:gpt-test".into()),
        ("OPENAI_BASE_URL", format!("{}/v1", llm.base)),
        ("OPENAI_API_KEY", "sk-test-secret".into()),
    ]
}

#[tokio::test]
async fn the_lead_intake_example_researches_drafts_reviews_and_sends_after_approval() {
    let llm = FakeLlm::start().await;
    let app = spawn(Spawn {
        env: example_models(&llm),
        ..Default::default()
    })
    .await;
    let email = json!({"to": "jane@acme.com", "subject": "Hello from us", "body": "Hi Jane, we help teams like Acme ship faster. Could we talk for 20 minutes next week?"});
    llm.script([
        openai_tool_call(
            "r1",
            "memory__read",
            json!({"namespace": "company", "key": "acme.com"}),
        ),
        openai_tool_call(
            "r2",
            "memory__write",
            json!({"namespace": "company", "key": "acme.com", "value": {"does": "rockets"}}),
        ),
        openai_text("Acme builds rockets; about 50 people."),
        openai_text(&email.to_string()),
        openai_text(r#"{"ok": true, "confidence": 0.9, "notes": "Accurate and polite."}"#),
    ]);
    let run = app
        .start_run("ana", "general", "/lead acme.com jane@acme.com")
        .await;
    app.wait_for_status(run, "waiting_approval").await;
    let root = app.root_of("general", run).await;
    let root_id = root["id"].as_i64().unwrap();
    let approval = app.wait_in_thread(root_id, "Approval needed").await;
    let shown = approval.to_string();
    assert!(
        shown.contains("to: jane@acme.com") && shown.contains("we help teams like Acme"),
        "{shown}"
    );
    assert!(
        shown.contains("looks good (confidence 0.9): Accurate and polite."),
        "{shown}"
    );
    // The writer saw the researcher's output.
    let writer_request = &llm.requests()[3];
    assert!(
        writer_request.to_string().contains("Acme builds rockets"),
        "{writer_request}"
    );
    let approve = button(&approval, "Approve").unwrap();
    app.click("ben", approval["id"].as_i64().unwrap(), &approve)
        .await;
    app.wait_for_status(run, "succeeded").await;
    let inbox = app.channel("inbox").await;
    let delivered = inbox
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        delivered.contains("jane@acme.com") && delivered.contains("Hello from us"),
        "{delivered}"
    );
}

#[tokio::test]
async fn the_ticket_triage_example_routes_by_the_classifiers_answer() {
    let llm = FakeLlm::start().await;
    let app = spawn(Spawn {
        env: example_models(&llm),
        ..Default::default()
    })
    .await;
    llm.script([openai_text(
        r#"{"category": "billing", "urgency": "high", "confidence": 0.82, "summary": "Charged twice for March."}"#,
    )]);
    let run = app
        .start_run("ana", "general", "/triage I was charged twice in March!")
        .await;
    app.wait_for_status(run, "succeeded").await;
    let routed = eventually_some("the ticket in #support-billing", || async {
        app.channel_if_any("support-billing")
            .await?
            .into_iter()
            .next()
    })
    .await;
    let text = text(&routed);
    assert!(
        text.contains("New *high* billing ticket (82% sure): Charged twice for March."),
        "{text}"
    );
}

#[tokio::test]
async fn the_digest_opens_with_a_narrative_when_a_model_is_configured_and_keeps_the_ledgers_figures()
 {
    let llm = FakeLlm::start().await;
    let app = spawn(Spawn {
        env: example_models(&llm),
        ..Default::default()
    })
    .await;
    llm.script([openai_text(
        "A quiet day: nothing failed and nothing waits.",
    )]);
    let run = app.start_run("ana", "general", "/digest").await;
    app.wait_for_status(run, "succeeded").await;
    let digest = eventually_some("the digest", || async {
        app.channel("general")
            .await
            .into_iter()
            .find(|m| text(m).contains("*Daily digest*"))
    })
    .await;
    let text = text(&digest);
    assert!(
        text.starts_with("A quiet day: nothing failed and nothing waits.\n\n*Daily digest*"),
        "{text}"
    );
    assert!(
        text.contains("Runs started: 1"),
        "the figures come from the ledger: {text}"
    );
    let asked = llm.requests()[0]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(asked.contains("\"started\": 1"), "{asked}");
}

const OUTREACH: &str = r#"
name = "outreach"
description = "Send a note to the CRM"
[[trigger]]
kind = "slash"
command = "outreach"
args = [{ name = "company", required = true }]

[agents.sender]
role = "Sender"
instructions = "You send notes to the CRM."
tools = ["webhook.post"]

[[step]]
id = "send"
kind = "agent"
agent = "sender"
prompt = "Tell the CRM about {{ input.company }}."
approvers = ["ben"]
"#;

#[tokio::test]
async fn an_agents_external_call_waits_for_approval_of_the_exact_payload_then_runs_or_is_refused() {
    let llm = FakeLlm::start().await;
    let app = app_with(Some(&llm), OUTREACH, vec![]).await;
    let payload = json!({"endpoint": "crm", "body": {"company": "acme.com", "note": "hot lead"}});
    llm.script([
        openai_tool_call("call_send", "webhook__post", payload.clone()),
        openai_text("Sent."),
    ]);
    let run = app.start_run("ana", "general", "/outreach acme.com").await;
    app.wait_for_status(run, "waiting_approval").await;
    let root = app.root_of("general", run).await;
    let root_id = root["id"].as_i64().unwrap();
    let approval = app.wait_in_thread(root_id, "Approval needed").await;
    let shown = approval.to_string();
    assert!(
        shown.contains("Sender wants to call webhook.post with") && shown.contains("hot lead"),
        "{shown}"
    );
    assert!(
        app.channel("inbox").await.is_empty(),
        "nothing is sent before the decision"
    );
    assert_eq!(llm.requests().len(), 1, "the model waits too");
    let requested = app.ledger_of("approval.requested").await;
    assert!(
        requested[0]["data"]
            .as_str()
            .unwrap()
            .contains("payload_hash")
    );
    // The requester may not approve their own run's call; ben may.
    let approve = button(&approval, "Approve").unwrap();
    let refused = app
        .click("ana", approval["id"].as_i64().unwrap(), &approve)
        .await;
    assert!(!refused.is_empty());
    app.click("ben", approval["id"].as_i64().unwrap(), &approve)
        .await;
    app.wait_for_status(run, "succeeded").await;
    let sent = eventually_some("the webhook in #inbox", || async {
        app.channel("inbox").await.into_iter().next()
    })
    .await;
    assert!(sent.to_string().contains("hot lead"), "{sent}");
    let result = &tool_messages(&llm.requests()[1])[0];
    assert_eq!(result["tool_call_id"], "call_send");
    assert!(
        !result["content"].as_str().unwrap().starts_with("rejected"),
        "{result}"
    );

    // Rejected: the agent hears who rejected it, and nothing is sent.
    llm.script([
        openai_tool_call("call_again", "webhook__post", payload),
        openai_text("Understood, not sent."),
    ]);
    let run = app.start_run("ana", "general", "/outreach acme.com").await;
    app.wait_for_status(run, "waiting_approval").await;
    let root = app.root_of("general", run).await;
    let approval = app
        .wait_in_thread(root["id"].as_i64().unwrap(), "Approval needed")
        .await;
    let reject = button(&approval, "Reject").unwrap();
    app.click("ben", approval["id"].as_i64().unwrap(), &reject)
        .await;
    app.wait_for_status(run, "succeeded").await;
    let result = &tool_messages(&llm.requests()[3])[0];
    assert_eq!(result["content"], "rejected by @ben");
    assert_eq!(app.channel("inbox").await.len(), 1, "still only the first");
}

#[tokio::test]
async fn an_agent_only_touches_the_memory_namespaces_it_is_given() {
    let llm = FakeLlm::start().await;
    let wf = RESEARCH.replace("max_turns = 4", "max_turns = 4\nmemory = [\"company\"]");
    let app = app_with(Some(&llm), &wf, vec![]).await;
    llm.script([
        openai_tool_call(
            "call_m",
            "memory__write",
            json!({"namespace": "people", "key": "ceo", "value": "x"}),
        ),
        openai_text("Could not write there."),
    ]);
    let run = app.start_run("ana", "general", "/research acme.com").await;
    app.wait_for_status(run, "succeeded").await;
    let result = &tool_messages(&llm.requests()[1])[0];
    assert_eq!(
        result["content"],
        "error: namespace `people` is not one this agent may use (company)"
    );
}
