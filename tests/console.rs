//! The real app on port 0, driven through the console's HTTP API as several people would.

mod support;

use chrono::Duration;
use serde_json::json;
use support::*;

/// Starts `/demo`, returns (run id, root message id).
async fn start_demo(app: &TestApp, user: &str) -> (i64, i64) {
    let run = app.start_run(user, "general", "/demo rockets").await;
    let root = app.root_of("general", run).await;
    (run, root["id"].as_i64().unwrap())
}

async fn a_slash_command_runs_to_the_end_with_a_progress_thread(db: Db) {
    let app = spawn_app_on(db).await;
    let (run, root) = start_demo(&app, "ana").await;
    let root_msg = app.root_of("general", run).await;
    assert!(text(&root_msg).contains("Demo for rockets"), "{root_msg}");
    assert!(text(&root_msg).contains("started by @ana"));

    app.wait_in_thread(root, "*health*: done in").await;
    app.wait_in_thread(root, "*ready*: done in").await;
    let approval = app.wait_in_thread(root, "Approval needed").await;
    assert!(
        approval["message"]["detail"]
            .as_str()
            .unwrap()
            .contains("Publish the demo result for rockets?")
    );
    eventually("the root to say waiting for approval", || async {
        text(&app.root_of("general", run).await).contains("waiting for approval")
    })
    .await;

    let approve = button(&approval, "Approve").unwrap();
    assert_eq!(
        app.click("ben", approval["id"].as_i64().unwrap(), &approve)
            .await,
        vec!["You approved this step."]
    );

    app.wait_for_status(run, "succeeded").await;
    let decided = app.wait_in_thread(root, "Approved by @ben at").await;
    assert!(
        decided["message"]["buttons"].is_null(),
        "buttons are gone: {decided}"
    );
    app.wait_in_thread(
        root,
        "Demo result for rockets: every check passed, approved by @ben.",
    )
    .await;
    let summary = app.wait_in_thread(root, &format!("Run {run} *done*")).await;
    assert!(
        text(&summary).contains("approve: approved by @ben"),
        "{summary}"
    );
    eventually(
        "the root to show the outcome without a Cancel button",
        || async {
            let r = app.root_of("general", run).await;
            text(&r).contains("Status: *done*") && button(&r, "Cancel").is_none()
        },
    )
    .await;

    // The two checks ran in parallel: both started before either reported.
    let thread: Vec<String> = app.thread(root).await.iter().map(text).collect();
    let pos = |s: &str| thread.iter().position(|t| t.contains(s)).unwrap();
    assert!(
        pos("*health*: started") < pos("*ready*: done")
            && pos("*ready*: started") < pos("*health*: done"),
        "{thread:?}"
    );

    let kinds: Vec<String> = app
        .ledger()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    for k in [
        "trigger.received",
        "run.started",
        "step.started",
        "tool.called",
        "step.finished",
        "approval.requested",
        "approval.decided",
        "post.delivered",
        "run.status",
    ] {
        assert!(kinds.iter().any(|x| x == k), "ledger lacks {k}: {kinds:?}");
    }
    let (_, verify) = app.get("/audit").await;
    assert!(verify.contains("Intact:"), "{verify}");
}

#[tokio::test]
async fn a_message_matching_a_pattern_starts_a_run_with_its_captures() {
    let app = spawn_app().await;
    let body = app
        .say("dee", "incidents", "incident: db latency above 2s")
        .await;
    let run = body["started"][0].as_i64().expect("a run started");
    let root = app.root_of("incidents", run).await;
    assert!(
        text(&root).contains("Incident: db latency above 2s"),
        "{root}"
    );
    let approval = app
        .wait_in_thread(root["id"].as_i64().unwrap(), "Approval needed")
        .await;
    assert!(
        approval["message"]["detail"]
            .as_str()
            .unwrap()
            .contains("summary: db latency above 2s")
    );

    // Other channels and non-matching text start nothing.
    assert!(
        app.say("dee", "general", "incident: elsewhere").await["started"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        app.say("dee", "incidents", "all good here").await["started"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_approved_webhook_reaches_the_console_inbox() {
    let app = spawn_app().await;
    let run = app
        .start_run("ana", "incidents", "/incident checkout is down")
        .await;
    let root = app.root_of("incidents", run).await["id"].as_i64().unwrap();
    let approval = app.wait_in_thread(root, "Approval needed").await;
    app.click(
        "cy",
        approval["id"].as_i64().unwrap(),
        &button(&approval, "Approve").unwrap(),
    )
    .await;
    app.wait_for_status(run, "succeeded").await;
    let inbox = app.channel("inbox").await;
    let hit = inbox
        .iter()
        .find(|m| {
            m["message"]["detail"]
                .as_str()
                .unwrap_or("")
                .contains("checkout is down")
        })
        .expect("payload in #inbox");
    assert!(
        hit["message"]["detail"]
            .as_str()
            .unwrap()
            .contains("\"opened_by\": \"ana\"")
    );
    eventually("the announcement in #incidents", || async {
        app.channel("incidents")
            .await
            .into_iter()
            .any(|m| text(&m).contains("On-call has been paged about *checkout is down*"))
    })
    .await;
}

async fn a_non_approver_and_the_requester_are_refused_and_nothing_changes(db: Db) {
    let app = spawn_app_on(db).await;
    let (run, root) = start_demo(&app, "ben").await;
    let approval = app.wait_in_thread(root, "Approval needed").await;
    let id = approval["id"].as_i64().unwrap();
    let approve = button(&approval, "Approve").unwrap();

    assert_eq!(
        app.click("dee", id, &approve).await,
        vec!["You are not an approver for this step."]
    );
    // ben is an approver but started the run: four-eyes.
    assert_eq!(
        app.click("ben", id, &approve).await,
        vec!["You started this run, so you cannot approve it (four-eyes rule)."]
    );
    assert_eq!(app.run_status(run).await, "waiting_approval");
    let still = app
        .thread(root)
        .await
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap();
    assert!(button(&still, "Approve").is_some(), "buttons remain");

    let refusals: Vec<_> = app.ledger_of("approval.refused").await;
    assert_eq!(refusals.len(), 2);
    assert_eq!(refusals[0]["actor"], "console:dee");
    assert!(
        refusals[0]["data"]
            .as_str()
            .unwrap()
            .contains("not_approver")
    );
    assert!(refusals[1]["data"].as_str().unwrap().contains("own_run"));

    // A rejection with a reason ends the run as rejected, and says who and why.
    let (status, body) = app.post("/api/actions", json!({"user": "cy", "message_id": id, "action": button(&approval, "Reject").unwrap(), "reason": "not today"})).await;
    assert_eq!(status, 200, "{body}");
    app.wait_for_status(run, "rejected").await;
    app.wait_in_thread(root, "Rejected by @cy at").await;
    app.wait_in_thread(root, "not today").await;
}

async fn double_and_concurrent_clicks_record_exactly_one_decision(db: Db) {
    let app = spawn_app_on(db).await;
    let (run, root) = start_demo(&app, "ana").await;
    let approval = app.wait_in_thread(root, "Approval needed").await;
    let id = approval["id"].as_i64().unwrap();
    let approve = button(&approval, "Approve").unwrap();
    let reject = button(&approval, "Reject").unwrap();

    let clicks = vec![
        app.click("ben", id, &approve),
        app.click("ben", id, &approve),
        app.click("cy", id, &approve),
        app.click("cy", id, &reject),
    ];
    let notices: Vec<Vec<String>> = futures_join(clicks).await;
    let decided = notices
        .iter()
        .filter(|n| {
            n.iter()
                .any(|t| t == "You approved this step." || t == "You rejected this step.")
        })
        .count();
    assert_eq!(decided, 1, "{notices:?}");

    // Whichever click won decides the outcome.
    let approved = notices
        .iter()
        .any(|n| n.iter().any(|t| t == "You approved this step."));
    app.wait_for_status(run, if approved { "succeeded" } else { "rejected" })
        .await;
    let decisions = app.ledger_of("approval.decided").await.len();
    assert_eq!(decisions, 1);
}

async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(f);
    }
    // Poll them together so the requests race on the server.
    let mut out = Vec::new();
    let handles: Vec<_> = set.into_iter().map(Box::pin).collect();
    let results = join_all(handles).await;
    out.extend(results);
    out
}

async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if results[i].is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    Poll::Ready(v) => results[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn an_approval_left_past_its_timeout_expires_as_rejected() {
    let app = spawn_app().await;
    let (run, root) = start_demo(&app, "ana").await;
    let approval = app.wait_in_thread(root, "Approval needed").await;
    app.advance(Duration::minutes(59));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.run_status(run).await, "waiting_approval");
    app.advance(Duration::minutes(2));
    app.wait_for_status(run, "rejected").await;
    let expired = app.wait_in_thread(root, "Expired at").await;
    assert_eq!(
        expired["id"], approval["id"],
        "the approval message itself is edited"
    );
    assert!(button(&expired, "Approve").is_none());
    // A late click changes nothing.
    let notices = app
        .click("ben", approval["id"].as_i64().unwrap(), "approve:1:approve")
        .await;
    assert_eq!(notices, vec!["This button is no longer active."]);
    assert_eq!(app.ledger_of("approval.expired").await.len(), 1);
}

async fn pending_approvals_survive_a_restart_and_their_buttons_still_work(db: Db) {
    let mut app = spawn_app_on(db).await;
    let (run, root) = start_demo(&app, "ana").await;
    let approval = app.wait_in_thread(root, "Approval needed").await;
    app.restart().await;
    let (_, page) = app.get("/approvals").await;
    assert!(
        page.contains(&format!("<a href=\"/runs/{run}\">{run}</a>")),
        "{page}"
    );
    app.click(
        "ben",
        approval["id"].as_i64().unwrap(),
        &button(&approval, "Approve").unwrap(),
    )
    .await;
    app.wait_for_status(run, "succeeded").await;
}

async fn a_run_can_be_cancelled_from_chat_and_with_its_button(db: Db) {
    let app = spawn_app_on(db).await;
    let (run, root) = start_demo(&app, "ana").await;
    app.wait_in_thread(root, "Approval needed").await;
    let notices = app
        .say("ana", "general", &format!("/baton cancel {run}"))
        .await["notices"]
        .clone();
    assert_eq!(notices, json!([format!("Run {run} cancelled.")]));
    app.wait_for_status(run, "cancelled").await;
    app.wait_in_thread(root, "Cancelled at").await;
    app.wait_in_thread(root, &format!("Run {run} *cancelled*"))
        .await;

    let (run2, _) = start_demo(&app, "cy").await;
    let root2 = app.root_of("general", run2).await;
    let cancel = button(&root2, "Cancel").unwrap();
    assert_eq!(
        app.click("cy", root2["id"].as_i64().unwrap(), &cancel)
            .await,
        vec![format!("Run {run2} cancelled.")]
    );
    app.wait_for_status(run2, "cancelled").await;
}

async fn the_same_inbound_event_twice_starts_one_run(db: Db) {
    let app = spawn_app_on(db).await;
    let body =
        json!({"channel": "general", "user": "ana", "text": "/demo once", "client_id": "abc-123"});
    let (_, first) = app.post("/api/messages", body.clone()).await;
    let (_, second) = app.post("/api/messages", body).await;
    assert_eq!(first["started"].as_array().unwrap().len(), 1);
    assert!(second["started"].as_array().unwrap().is_empty(), "{second}");
    let (_, runs) = app.get("/runs").await;
    assert_eq!(runs.matches("<a href=\"/runs/").count(), 1);
    // Sent again after a lost answer, the message is the same message: shown once.
    assert_eq!(first["message"]["id"], second["message"]["id"]);
    let shown = app
        .channel("general")
        .await
        .iter()
        .filter(|m| text(m) == "/demo once")
        .count();
    assert_eq!(shown, 1, "the channel shows the message once");
    // Another person's message with the same id is their own.
    let (_, other) = app
        .post(
            "/api/messages",
            json!({"channel": "general", "user": "ben", "text": "hello", "client_id": "abc-123"}),
        )
        .await;
    assert_ne!(other["message"]["id"], first["message"]["id"]);
}

#[tokio::test]
async fn bad_arguments_get_the_usage_text_privately_and_start_nothing() {
    let app = spawn_app().await;
    let body = app.say("ana", "general", "/incident").await;
    assert_eq!(
        body["notices"][0],
        "Missing argument `summary`.\nUsage: /incident <summary>"
    );
    assert!(body["started"].as_array().unwrap().is_empty());
    let body = app.say("ana", "general", "/nosuch thing").await;
    assert!(
        body["notices"][0]
            .as_str()
            .unwrap()
            .contains("No workflow declares /nosuch")
    );
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_a_clear_error_and_change_nothing() {
    let app = spawn_app().await;
    let cases = [
        json!({"channel": "general", "user": "mallory", "text": "/demo"}),
        json!({"channel": "nowhere", "user": "ana", "text": "/demo"}),
        json!({"channel": "general", "user": "ana", "text": "   "}),
        json!({"channel": "general", "user": "ana", "text": "x".repeat(4001)}),
        json!({"channel": "general", "user": "ana"}),
        json!({"channel": "general", "user": "ana", "text": "/demo", "client_id": "../../etc"}),
    ];
    for body in cases {
        let (status, reply) = app.post("/api/messages", body).await;
        assert_eq!(status, 400, "{reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = app
        .http
        .post(format!("{}/api/messages", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = app
        .http
        .post(format!("{}/api/messages", app.base))
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let (status, _) = app
        .post(
            "/api/actions",
            json!({"user": "ben", "message_id": 1, "action": "explode:1"}),
        )
        .await;
    assert_eq!(status, 404, "a click on a message that does not exist");
    assert!(
        app.channel("general").await.is_empty(),
        "nothing was posted"
    );
    assert!(app.ledger().await.is_empty(), "nothing was recorded");
}

#[tokio::test]
async fn user_text_is_escaped_on_every_page() {
    let app = spawn_app().await;
    let run = app
        .say("ana", "general", "/demo <script>alert(1)</script>")
        .await["started"][0]
        .as_i64()
        .unwrap();
    app.root_of("general", run).await;
    for page in [
        "/runs".to_owned(),
        format!("/runs/{run}"),
        "/audit".to_owned(),
    ] {
        let (status, html) = app.get(&page).await;
        assert_eq!(status, 200);
        assert!(!html.contains("<script>alert(1)"), "{page} is not escaped");
        assert!(
            html.contains("&lt;script&gt;alert(1)"),
            "{page} lacks the escaped text"
        );
    }
}

const EVERY_MINUTE: &str = r#"
name = "ticker"
description = "Posts at 09:00 Berlin time"
[[trigger]]
kind = "schedule"
id = "nine"
cron = "0 9 * * *"
timezone = "Europe/Berlin"
channel = "general"
[[step]]
id = "say"
kind = "notify"
text = "Good morning{% if trigger.late %} (late){% endif %}"
"#;

async fn a_schedule_slot_fires_once_and_a_missed_slot_fires_late_after_restart(db: Db) {
    // 2026-03-02 07:00 UTC is 08:00 in Berlin (winter time).
    let mut app = spawn(Spawn {
        extra_workflows: vec![("ticker.toml", EVERY_MINUTE.into())],
        with_examples: false,
        db,
        ..Default::default()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    app.advance(Duration::minutes(59));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        app.channel("general").await.is_empty(),
        "nothing before 09:00"
    );
    app.advance(Duration::minutes(2));
    eventually("the 09:00 slot to fire", || async {
        app.channel("general")
            .await
            .iter()
            .any(|m| text(m).contains("run 1 ·"))
    })
    .await;
    // More ticks in the same slot start nothing more.
    for _ in 0..5 {
        app.advance(Duration::minutes(5));
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    assert_eq!(app.ledger_of("schedule.fired").await.len(), 1);

    // Down over the next slot: it fires once at start-up, marked late.
    app.stop().await;
    app.advance(Duration::days(2));
    app.start().await;
    eventually("the missed slot to fire late", || async {
        app.ledger_of("schedule.fired").await.len() == 2
    })
    .await;
    let fired: Vec<_> = app.ledger_of("schedule.fired").await;
    assert!(
        fired[1]["data"].as_str().unwrap().contains("\"late\":true"),
        "{fired:?}"
    );
    let root = app.root_of("general", 2).await;
    assert!(text(&root).contains("started late"), "{root}");
    app.wait_in_thread(root["id"].as_i64().unwrap(), "Good morning (late)")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        app.ledger_of("schedule.fired").await.len(),
        2,
        "two days missed, one late run"
    );
}

#[tokio::test]
async fn the_daily_digest_counts_from_the_ledger() {
    let app = spawn_app().await;
    let (run, root) = start_demo(&app, "ana").await;
    app.wait_in_thread(root, "Approval needed").await;
    app.say("ana", "general", &format!("/baton cancel {run}"))
        .await;
    app.wait_for_status(run, "cancelled").await;
    let (run2, root2) = start_demo(&app, "ana").await;
    app.wait_in_thread(root2, "Approval needed").await;
    // Within the demo approval's hour, so it is still waiting.
    app.advance(Duration::minutes(30));
    let digest = app.start_run("dee", "general", "/digest").await;
    app.wait_for_status(digest, "succeeded").await;
    let post = eventually_some("the digest post", || async {
        app.channel("general")
            .await
            .into_iter()
            .find(|m| text(m).starts_with("*Daily digest*"))
    })
    .await;
    let t = text(&post);
    assert!(t.contains("Runs started: 3"), "{t}");
    assert!(t.contains("cancelled: 1"), "{t}");
    assert!(
        t.contains(&format!(
            "run {run2} (demo) step approve: waiting on @ben, @cy for 30 min"
        )),
        "{t}"
    );
    // Chat history holds a checkpoint of the ledger that verifies.
    let head = t
        .split("Ledger checkpoint: `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .unwrap_or_else(|| panic!("no checkpoint in {t}"));
    let (_, page) = app.get("/audit").await;
    assert!(page.contains("Intact"), "{page}");
    let seq: i64 = head.split(':').next().unwrap().parse().unwrap();
    assert!(
        app.ledger().await.iter().any(|e| e["seq"] == seq
            && e["hash"]
                .as_str()
                .unwrap()
                .starts_with(head.split(':').nth(1).unwrap())),
        "the checkpoint is an entry of the ledger: {head}"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await, (200, "ok".into()));
    assert_eq!(app.get("/readyz").await.0, 200);
    start_demo(&app, "ana").await;
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "baton_runs{status=\"waiting_approval\"} 1",
        "baton_approvals_pending 1",
        "baton_outbox_depth",
        "baton_step_duration_seconds_count 2",
        "baton_delivery_failures_total 0",
    ] {
        if !metrics.contains(line) {
            // Step durations and deliveries settle a moment after the approval is posted.
            eventually(line, || async {
                app.get("/metrics").await.1.contains(line)
            })
            .await;
        }
    }
}

#[tokio::test]
async fn a_console_bound_beyond_loopback_demands_its_token() {
    let app = spawn(Spawn {
        env: vec![("BATON_CONSOLE_TOKEN", "0123456789abcdef-token".into())],
        ..Default::default()
    })
    .await;
    assert_eq!(app.get("/api/state").await.0, 401);
    assert_eq!(app.get("/healthz").await.0, 200);
    let r = app
        .http
        .get(format!("{}/api/state", app.base))
        .bearer_auth("0123456789abcdef-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app
        .http
        .get(format!("{}/runs?token=0123456789abcdef-token", app.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("baton_token=")
    );
}

#[test]
fn the_core_imports_no_platform_http_server_or_database_crate() {
    let core = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut stack = vec![core];
    let forbidden = [
        "sqlx",
        "rusqlite",
        "axum",
        "hyper",
        "reqwest",
        "serenity",
        "slack_morphism",
        "tower",
        "rmcp",
        "tokio_tungstenite",
    ];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for krate in forbidden {
                assert!(
                    !text.contains(&format!("{krate}::")),
                    "{} uses {krate}",
                    path.display()
                );
            }
        }
    }
}

async fn a_click_delivered_twice_is_applied_once(db: Db) {
    let app = spawn_app_on(db).await;
    let (run, root) = start_demo(&app, "ana").await;
    let approval = app.wait_in_thread(root, "Approval needed").await;
    let click = json!({"user": "ben", "message_id": approval["id"], "action": button(&approval, "Reject").unwrap(), "client_id": "click-1"});
    let (_, first) = app.post("/api/actions", click.clone()).await;
    assert_eq!(first["notices"], json!(["You rejected this step."]));
    // The same delivery again (a retry, a second connection) decides nothing: it is either
    // silently dropped or, once the buttons are gone, told they are no longer active.
    let (status, second) = app.post("/api/actions", click).await;
    assert_eq!(status, 200);
    assert!(
        second["notices"] == json!([])
            || second["notices"] == json!(["This button is no longer active."]),
        "{second}"
    );
    app.wait_for_status(run, "rejected").await;
    assert_eq!(app.ledger_of("approval.decided").await.len(), 1);
}

const RESTRICTED: &str = r#"
name = "deploy"
description = "Deploy"
[[trigger]]
kind = "slash"
command = "deploy"
[permissions]
users = ["ben"]
channels = ["general"]
[[step]]
id = "say"
kind = "notify"
text = "deploying"
"#;

#[tokio::test]
async fn someone_not_allowed_to_start_a_workflow_is_refused_privately_and_nothing_starts() {
    let app = spawn(Spawn {
        extra_workflows: vec![("deploy.toml", RESTRICTED.into())],
        ..Default::default()
    })
    .await;
    let body = app.say("ana", "general", "/deploy").await;
    assert_eq!(
        body["notices"],
        json!(["You are not allowed to start /deploy here."])
    );
    assert!(body["started"].as_array().unwrap().is_empty());
    let body = app.say("ben", "incidents", "/deploy").await;
    assert_eq!(
        body["notices"],
        json!(["You are not allowed to start /deploy here."]),
        "wrong channel"
    );
    let refused: Vec<_> = app.ledger_of("trigger.refused").await;
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["actor"], "console:ana");
    app.start_run("ben", "general", "/deploy").await;
}

#[tokio::test]
async fn a_click_on_a_button_baton_cannot_read_is_answered_and_recorded() {
    let app = spawn_app().await;
    let (_, root) = start_demo(&app, "ana").await;
    let notices = app.click("ben", root, "approve:1").await;
    assert_eq!(
        notices,
        vec!["This button is no longer valid. Nothing was changed."]
    );
    assert_eq!(app.ledger_of("action.unreadable").await.len(), 1);
}

#[tokio::test]
async fn what_a_person_is_told_is_a_sentence_about_what_they_did() {
    let wf = r#"
name = "page"
description = "Page someone"
[[trigger]]
kind = "slash"
command = "page"
[tools."webhook.post"]
auto = true
[[step]]
id = "send"
kind = "tool"
tool = "webhook.post"
with = { endpoint = "pager", body = { text = "hello" } }
"#;
    let app = spawn(Spawn {
        extra_workflows: vec![("page.toml", wf.into())],
        env: vec![("BATON_WEBHOOKS", "pager=http://127.0.0.1:1/hook".into())],
        ..Default::default()
    })
    .await;
    let notice = |body: serde_json::Value| body["notices"][0].as_str().unwrap_or("").to_owned();
    assert_eq!(
        notice(app.say("ana", "general", "/baton cancel").await),
        "Which run? Usage: /baton cancel <run>, with the run's number."
    );
    assert_eq!(
        notice(app.say("ana", "general", "/baton cancel abc").await),
        "`abc` is not a run number (runs are numbered 1, 2, 3 …). Usage: /baton cancel <run>"
    );
    let error = |body: String| -> String {
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (status, body) = app.get("/api/threads/abc").await;
    assert_eq!(status, 400);
    assert_eq!(
        error(body),
        "`abc` is not a message number; threads are named by their first message's number"
    );
    let (status, body) = app.get("/runs?status=bogus").await;
    assert_eq!(status, 400);
    assert_eq!(
        error(body),
        "`bogus` is not a run status; use one of: running, waiting_approval, succeeded, failed, rejected, cancelled"
    );
    let (status, body) = app.get("/runs/").await;
    assert_eq!(status, 404);
    assert!(error(body).starts_with("there is no page"));
    let (status, body) = app
        .post(
            "/api/messages",
            json!({"channel": "general", "user": "ana", "text": "x", "thread_id": "seven"}),
        )
        .await;
    assert_eq!(status, 400);
    let said = body["error"].as_str().unwrap();
    assert!(said.contains("expected a whole number"), "{said}");
    assert!(
        !said.contains("i64") && !said.contains("Failed to deserialize"),
        "{said}"
    );

    // A webhook that cannot be reached says why, not "error sending request".
    let run = app.start_run("ana", "general", "/page").await;
    app.wait_for_status(run, "failed").await;
    let (_, page) = app.get(&format!("/runs/{run}")).await;
    assert!(
        page.contains("POST to webhook `pager` failed: could not connect"),
        "{page}"
    );
    assert!(!page.contains("error sending request"));
}

// The stories that hold on every backend.
crate::on_every_backend!(
    a_slash_command_runs_to_the_end_with_a_progress_thread,
    a_non_approver_and_the_requester_are_refused_and_nothing_changes,
    double_and_concurrent_clicks_record_exactly_one_decision,
    a_run_can_be_cancelled_from_chat_and_with_its_button,
    the_same_inbound_event_twice_starts_one_run,
    a_schedule_slot_fires_once_and_a_missed_slot_fires_late_after_restart,
    pending_approvals_survive_a_restart_and_their_buttons_still_work,
    a_click_delivered_twice_is_applied_once,
);
