//! Slack over Socket Mode, against a fake Slack that hands out a WebSocket URL from
//! `apps.connections.open` and speaks Slack's envelopes on it (`hello`, `slash_commands`,
//! `events_api`, `interactive`, `disconnect`), checking every acknowledgement.

mod support;

#[path = "support/fake_slack.rs"]
mod fake_slack;

use fake_slack::{APP_TOKEN, APPROVE, BOT_TOKEN, FakeSlack};
use serde_json::{Value, json};
use support::*;

async fn socket_app(fake: &FakeSlack) -> TestApp {
    let app = spawn(Spawn {
        extra_workflows: vec![("ship.toml", APPROVE.into())],
        with_examples: false,
        env: vec![
            ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
            ("SLACK_APP_TOKEN", APP_TOKEN.into()),
            ("SLACK_API_URL", fake.api_url()),
        ],
        ..Default::default()
    })
    .await;
    eventually("the Socket Mode connection", || async {
        fake.state.lock().unwrap().socket.is_some()
    })
    .await;
    app
}

fn slash(fake: &FakeSlack, envelope: &str, user: &str, text: &str, trigger: &str) -> Value {
    let (command, args) = text.split_once(' ').unwrap_or((text, ""));
    json!({
        "envelope_id": envelope,
        "type": "slash_commands",
        "accepts_response_payload": true,
        "payload": {
            "token": "legacy", "team_id": "T0ACME", "team_domain": "acme", "channel_id": "C0GENERAL", "channel_name": "general",
            "user_id": user, "user_name": "someone", "command": command, "text": args, "api_app_id": "A0BATON",
            "is_enterprise_install": "false", "response_url": fake.response_url(trigger), "trigger_id": trigger
        }
    })
}

fn click(fake: &FakeSlack, envelope: &str, user: &str, action: &str, trigger: &str) -> Value {
    json!({
        "envelope_id": envelope,
        "type": "interactive",
        "accepts_response_payload": false,
        "payload": {
            "type": "block_actions",
            "team": {"id": "T0ACME", "domain": "acme"},
            "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0ACME"},
            "api_app_id": "A0BATON",
            "container": {"type": "message", "message_ts": "1700000000.000003", "channel_id": "C0GENERAL", "is_ephemeral": false},
            "trigger_id": trigger,
            "channel": {"id": "C0GENERAL", "name": "general"},
            "response_url": fake.response_url(trigger),
            "actions": [{"type": "button", "action_id": action, "block_id": "b1", "text": {"type": "plain_text", "text": "Approve"}, "value": action, "action_ts": "1700000100.000200"}]
        }
    })
}

async fn acked(fake: &FakeSlack, envelope: &str) {
    eventually(&format!("the ack of {envelope}"), || async {
        fake.acks()
            .iter()
            .any(|a| serde_json::from_str::<Value>(a).is_ok_and(|v| v["envelope_id"] == envelope))
    })
    .await;
}

#[tokio::test]
async fn a_slash_command_and_clicks_over_socket_mode_run_to_the_end_and_every_envelope_is_acknowledged()
 {
    let fake = FakeSlack::start().await;
    let app = socket_app(&fake).await;
    fake.send(slash(&fake, "env-1", "UANA0001", "/ship 1.0", "T1"));
    acked(&fake, "env-1").await;
    let (root_ts, _) = eventually_some("the root post", || async {
        fake.posts()
            .into_iter()
            .find(|(_, b)| b["thread_ts"].is_null())
    })
    .await;
    eventually("the approval request", || async {
        fake.thread(&root_ts)
            .iter()
            .any(|b| b["text"].as_str().unwrap_or("").contains("Approval needed"))
    })
    .await;

    fake.send(click(&fake, "env-2", "UDEE0001", "approve:1:gate", "T2"));
    acked(&fake, "env-2").await;
    eventually("the private refusal", || async {
        fake.responses()
            .iter()
            .any(|r| r["text"] == "You are not an approver for this step.")
    })
    .await;

    // The same click reaching Baton twice (a redelivery, a second connection) decides once.
    fake.send(click(&fake, "env-3", "UBEN0001", "approve:1:gate", "T3"));
    fake.send(click(&fake, "env-4", "UBEN0001", "approve:1:gate", "T3"));
    acked(&fake, "env-3").await;
    acked(&fake, "env-4").await;
    app.wait_for_status(1, "succeeded").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.ledger_of("approval.decided").await.len(), 1);
    eventually("the summary", || async {
        fake.thread(&root_ts)
            .iter()
            .any(|b| b["text"].as_str().unwrap_or("").contains("Run 1 *done*"))
    })
    .await;
}

#[tokio::test]
async fn a_redelivered_event_starts_one_run() {
    let fake = FakeSlack::start().await;
    let app = socket_app(&fake).await;
    let event = |envelope: &str, retry: u32| {
        json!({
            "envelope_id": envelope, "type": "events_api", "accepts_response_payload": false, "retry_attempt": retry, "retry_reason": if retry > 0 { "timeout" } else { "" },
            "payload": {"token": "legacy", "team_id": "T0ACME", "api_app_id": "A0BATON", "type": "event_callback", "event_id": "Ev77", "event_time": 1700000000,
                "event": {"type": "message", "channel": "C0GENERAL", "user": "UANA0001", "text": "ship it: 5.0", "ts": "1700000050.000100", "channel_type": "channel"}}
        })
    };
    fake.send(event("env-a", 0));
    fake.send(event("env-b", 1));
    acked(&fake, "env-a").await;
    acked(&fake, "env-b").await;
    eventually("the run", || async {
        fake.posts()
            .iter()
            .any(|(_, b)| b["text"].as_str().unwrap_or("").contains("Ship 5.0"))
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(app.ledger_of("run.started").await.len(), 1);
}

#[tokio::test]
async fn a_disconnect_mid_run_reconnects_and_loses_nothing() {
    let fake = FakeSlack::start().await;
    let app = socket_app(&fake).await;
    fake.send(slash(&fake, "env-1", "UANA0001", "/ship 2.0", "T1"));
    eventually("the approval request", || async {
        fake.posts()
            .iter()
            .any(|(_, b)| b["text"].as_str().unwrap_or("").contains("Approval needed"))
    })
    .await;
    assert_eq!(fake.opens(), 1);
    fake.send(json!({"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "applink-7"}}));
    eventually("a new connection", || async {
        fake.opens() == 2 && fake.state.lock().unwrap().connected == 2
    })
    .await;
    fake.send(click(&fake, "env-2", "UBEN0001", "approve:1:gate", "T2"));
    acked(&fake, "env-2").await;
    app.wait_for_status(1, "succeeded").await;
    assert!(app.ledger_of("post.failed").await.is_empty());
}

#[tokio::test]
async fn on_refresh_requested_the_new_connection_is_open_before_the_old_one_closes_and_nothing_is_missed()
 {
    let fake = FakeSlack::start().await;
    let app = socket_app(&fake).await;
    // The successor takes a while to say hello: the old connection must keep serving.
    fake.state.lock().unwrap().hello_delay = Some(std::time::Duration::from_millis(300));
    fake.send_on(1, json!({"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "applink-7"}}));
    fake.send_on(1, slash(&fake, "env-during", "UANA0001", "/ship 3.0", "T1"));
    acked(&fake, "env-during").await;
    eventually("the old connection closed by Baton", || async {
        fake.socket_log().iter().any(|e| e == "closed by bot 1")
    })
    .await;
    let log = fake.socket_log();
    let hello2 = log
        .iter()
        .position(|e| e == "hello 2")
        .expect("a second connection");
    let closed1 = log.iter().position(|e| e == "closed by bot 1").unwrap();
    assert!(hello2 < closed1, "no moment without a connection: {log:?}");
    eventually("the run the envelope started", || async {
        fake.posts()
            .iter()
            .any(|(_, b)| b["text"].as_str().unwrap_or("").contains("Ship 3.0"))
    })
    .await;
    // An envelope Slack sends on both connections counts once.
    fake.send_on(
        2,
        click(&fake, "env-twice", "UBEN0001", "approve:1:gate", "T2"),
    );
    fake.send_on(
        2,
        click(&fake, "env-twice", "UBEN0001", "approve:1:gate", "T2"),
    );
    app.wait_for_status(1, "succeeded").await;
    assert_eq!(app.ledger_of("approval.decided").await.len(), 1);
}

#[tokio::test]
async fn the_reconnect_backoff_starts_over_after_every_good_connection() {
    let fake = FakeSlack::start().await;
    // Four connections in a row drop right after hello; the fifth stays.
    fake.state.lock().unwrap().drop_after_hello = 4;
    let _app = socket_app(&fake).await;
    eventually("a fifth connection", || async {
        fake.socket_log().iter().any(|e| e == "hello 5")
    })
    .await;
    let s = fake.state.lock().unwrap();
    let at = |what: &str| s.socket_log.iter().find(|(_, e)| e == what).unwrap().0;
    // Each drop followed a good connection, so each pause is the first one (half a second);
    // a backoff that kept doubling would need 0.5 + 1 + 2 + 4 s.
    let took = at("hello 5") - at("dropped 1");
    assert!(
        took < std::time::Duration::from_millis(5000),
        "four reconnects took {took:?}"
    );
}

#[tokio::test]
async fn an_envelope_baton_cannot_read_is_acknowledged_and_recorded() {
    let fake = FakeSlack::start().await;
    let app = socket_app(&fake).await;
    // A lone surrogate is valid JSON to Slack but not a Rust string: read as U+FFFD.
    fake.send_text(r#"{"envelope_id": "env-surrogate", "type": "events_api", "accepts_response_payload": false, "retry_attempt": 0, "payload": {"token": "legacy", "team_id": "T0ACME", "api_app_id": "A0BATON", "type": "event_callback", "event_id": "Ev9", "event_time": 1700000000, "event": {"type": "message", "channel": "C0GENERAL", "user": "UANA0001", "text": "ship it: 6.0 \ud800", "ts": "1700000060.000100", "channel_type": "channel"}}}"#.into());
    acked(&fake, "env-surrogate").await;
    eventually("the run it started", || async {
        fake.posts()
            .iter()
            .any(|(_, b)| b["text"].as_str().unwrap_or("").contains("Ship 6.0"))
    })
    .await;
    // What cannot be read at all is still acknowledged, and the ledger keeps it.
    fake.send_text(
        r#"{"envelope_id": "env-broken", "type": "events_api", "payload": {"event": {"#.into(),
    );
    acked(&fake, "env-broken").await;
    let entry = eventually_some("the unreadable envelope in the ledger", || async {
        app.ledger_of("inbound.unreadable").await.into_iter().next()
    })
    .await;
    assert!(
        entry["data"].as_str().unwrap().contains("env-broken"),
        "{entry}"
    );
}

#[tokio::test]
async fn each_replica_holds_its_own_connection_and_an_envelope_sent_on_both_starts_one_run() {
    let fake = FakeSlack::start().await;
    let env = || {
        vec![
            ("SLACK_BOT_TOKEN", BOT_TOKEN.to_owned()),
            ("SLACK_APP_TOKEN", APP_TOKEN.to_owned()),
            ("SLACK_API_URL", fake.api_url()),
        ]
    };
    let first = spawn(Spawn {
        extra_workflows: vec![("ship.toml", APPROVE.into())],
        with_examples: false,
        env: env(),
        db: Db::Postgres,
        ..Default::default()
    })
    .await;
    let mut second_env = env();
    second_env.push(("DATABASE_URL", first.schema.as_ref().unwrap().url.clone()));
    let _second = spawn(Spawn {
        extra_workflows: vec![("ship.toml", APPROVE.into())],
        with_examples: false,
        env: second_env,
        ..Default::default()
    })
    .await;
    eventually("a connection from each replica", || async {
        fake.state.lock().unwrap().sockets.len() == 2
    })
    .await;
    // Slack spreads envelopes over the connections; one it sends again may come on the other.
    fake.send_on(1, slash(&fake, "env-1", "UANA0001", "/ship 7.0", "T7"));
    fake.send_on(2, slash(&fake, "env-2", "UANA0001", "/ship 7.0", "T7"));
    acked(&fake, "env-1").await;
    acked(&fake, "env-2").await;
    eventually("the run's root", || async {
        fake.posts()
            .iter()
            .any(|(_, b)| b["text"].as_str().unwrap_or("").contains("Ship 7.0"))
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(first.ledger_of("run.started").await.len(), 1);
    let roots = fake
        .posts()
        .iter()
        .filter(|(_, b)| {
            b["thread_ts"].is_null() && b["text"].as_str().unwrap_or("").contains("Ship 7.0")
        })
        .count();
    assert_eq!(roots, 1);
}
