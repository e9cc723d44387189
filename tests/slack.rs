//! Slack over the Events API (HTTP), against a fake Slack speaking the real wire formats:
//! signed slash commands, events and button clicks in; Web API calls out.

mod support;

#[path = "support/fake_slack.rs"]
mod fake_slack;

use chrono::Duration;
use fake_slack::{
    APPROVE, BOT_TOKEN, BOT_USER, FakeSlack, SIGNING_SECRET, blocks_text, click_form, command_form,
    form, now, post_signed, sign,
};
use serde_json::{Value, json};
use support::*;

/// Baton with Slack over HTTP and one workflow file, against `fake`.
async fn slack_app_with(fake: &FakeSlack, file: &'static str, workflow: String) -> TestApp {
    spawn(Spawn {
        extra_workflows: vec![(file, workflow)],
        with_examples: false,
        env: vec![
            ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
            ("SLACK_SIGNING_SECRET", SIGNING_SECRET.into()),
            ("SLACK_API_URL", fake.api_url()),
        ],
        ..Default::default()
    })
    .await
}

async fn slack_app(fake: &FakeSlack) -> TestApp {
    slack_app_with(fake, "ship.toml", APPROVE.into()).await
}

/// POSTs a body to Baton signed as Slack would, `age` seconds ago.
async fn signed(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: &str,
    age: i64,
    secret: &str,
) -> reqwest::Response {
    let url = format!("{}{path}", app.base);
    post_signed(&app.http, &url, content_type, body, age, secret).await
}

const GENERAL: (&str, &str) = ("C0GENERAL", "general");

async fn slash(app: &TestApp, fake: &FakeSlack, user: &str, text: &str, trigger: &str) -> u16 {
    let body = command_form(fake, GENERAL, user, text, trigger);
    signed(
        app,
        "/slack/commands",
        "application/x-www-form-urlencoded",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await
    .status()
    .as_u16()
}

async fn click(
    app: &TestApp,
    fake: &FakeSlack,
    user: &str,
    action: &str,
    message_ts: &str,
    trigger: &str,
) -> u16 {
    click_with_value(app, fake, user, action, None, message_ts, trigger).await
}

/// A click on a button; Slack sends the button's `value` along when it has one.
async fn click_with_value(
    app: &TestApp,
    fake: &FakeSlack,
    user: &str,
    action: &str,
    value: Option<&str>,
    message_ts: &str,
    trigger: &str,
) -> u16 {
    let body = click_form(fake, GENERAL, user, action, value, message_ts, trigger);
    signed(
        app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await
    .status()
    .as_u16()
}

fn event(event_id: &str, event: Value) -> String {
    json!({"token": "legacy", "team_id": "T0ACME", "api_app_id": "A0BATON", "event": event, "type": "event_callback", "event_id": event_id, "event_time": 1700000000, "authorizations": []}).to_string()
}

/// The buttons' action ids, without the hash of the request approval buttons carry.
fn action_ids(body: &Value) -> Vec<String> {
    body["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let id = e["action_id"].as_str().unwrap_or_default();
            id.splitn(4, ':').take(3).collect::<Vec<_>>().join(":")
        })
        .collect()
}

/// The first top-level post containing `needle`, with its ts.
async fn root_post(fake: &FakeSlack, needle: &str) -> (String, Value) {
    eventually_some(&format!("a root post with `{needle}`"), || async {
        fake.posts().into_iter().find(|(_, b)| {
            b["thread_ts"].is_null() && b["text"].as_str().unwrap_or_default().contains(needle)
        })
    })
    .await
}

/// Runs Baton against `fake` with `token` until start-up fails; returns the error.
async fn start_up_error(fake: &FakeSlack, token: &str) -> anyhow::Error {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("commands")).unwrap();
    let env = [
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        ),
        (
            "BATON_COMMANDS_DIR",
            dir.path().join("commands").display().to_string(),
        ),
        ("SLACK_BOT_TOKEN", token.to_owned()),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET.to_owned()),
        ("SLACK_API_URL", fake.api_url()),
    ];
    let settings = baton::config::Settings::from_lookup(move |k| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock: std::sync::Arc<dyn baton::core::clock::Clock> =
        std::sync::Arc::new(baton::core::clock::SystemClock::default());
    baton::app::run(settings, listener, clock, std::future::pending())
        .await
        .unwrap_err()
}

/// The approval request the bot posted, with its ts.
async fn approval_post(fake: &FakeSlack) -> (String, Value) {
    eventually_some("the approval request", || async {
        fake.posts()
            .into_iter()
            .find(|(_, b)| blocks_text(b).contains("Approval needed"))
    })
    .await
}

#[tokio::test]
async fn a_signed_slash_command_runs_to_the_end_with_a_thread_and_block_kit_approval() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    let started = std::time::Instant::now();
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/ship 1.4.2", "T1.1").await,
        200
    );
    // Acknowledged at once; the run goes on in the background.
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    let (root_ts, root) = root_post(&fake, "Ship 1.4.2").await;
    assert_eq!(root["channel"], "C0GENERAL");
    assert!(
        root["text"]
            .as_str()
            .unwrap()
            .contains("started by <@UANA0001>"),
        "{root}"
    );
    let (approval_ts, approval) = eventually_some("the approval request in the thread", || async {
        fake.posts().into_iter().find(|(_, b)| {
            b["thread_ts"] == root_ts.as_str() && blocks_text(b).contains("Approval needed")
        })
    })
    .await;
    assert!(blocks_text(&approval).contains("Ship 1.4.2 to production?"));
    assert_eq!(
        action_ids(&approval),
        vec!["approve:1:gate", "reject:1:gate"]
    );

    // Not an approver: a private notice through response_url, nothing changes.
    assert_eq!(
        click(
            &app,
            &fake,
            "UDEE0001",
            "approve:1:gate",
            &approval_ts,
            "T2.1"
        )
        .await,
        200
    );
    eventually("the private notice", || async {
        fake.responses().iter().any(|r| {
            r["text"] == "You are not an approver for this step."
                && r["response_type"] == "ephemeral"
        })
    })
    .await;
    assert_eq!(app.run_status(1).await, "waiting_approval");

    // The approver decides; the request message is edited and loses its buttons.
    assert_eq!(
        click(
            &app,
            &fake,
            "UBEN0001",
            "approve:1:gate",
            &approval_ts,
            "T3.1"
        )
        .await,
        200
    );
    app.wait_for_status(1, "succeeded").await;
    let edited = eventually_some("the approval message edited", || async {
        fake.calls("chat.update").into_iter().find(|b| {
            b["ts"] == approval_ts.as_str() && blocks_text(b).contains("Approved by <@UBEN0001> at")
        })
    })
    .await;
    assert!(action_ids(&edited).is_empty(), "buttons are gone: {edited}");
    eventually("the summary in the thread", || async {
        fake.thread(&root_ts).iter().any(|b| {
            b["text"]
                .as_str()
                .unwrap_or_default()
                .contains("Run 1 *done*")
        })
    })
    .await;
    eventually("the root edited to done", || async {
        fake.calls("chat.update").iter().any(|b| {
            b["ts"] == root_ts.as_str()
                && b["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Status: *done*")
        })
    })
    .await;

    // The same click delivered again records nothing more.
    assert_eq!(
        click(
            &app,
            &fake,
            "UBEN0001",
            "approve:1:gate",
            &approval_ts,
            "T3.1"
        )
        .await,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.ledger_of("approval.decided").await.len(), 1);
}

#[tokio::test]
async fn forged_stale_and_unsigned_requests_are_refused_and_change_nothing() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    let body = form(&[
        ("command", "/ship"),
        ("text", "9.9.9"),
        ("user_id", "UANA0001"),
        ("channel_id", "C0GENERAL"),
        ("response_url", &fake.response_url("x")),
        ("trigger_id", "T9"),
    ]);
    let forged = signed(
        &app,
        "/slack/commands",
        "application/x-www-form-urlencoded",
        &body,
        0,
        "not-the-secret",
    )
    .await;
    assert_eq!(forged.status().as_u16(), 401);
    let stale = signed(
        &app,
        "/slack/commands",
        "application/x-www-form-urlencoded",
        &body,
        6 * 60,
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(stale.status().as_u16(), 401);
    let unsigned = app
        .http
        .post(format!("{}/slack/commands", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    // A valid signature over a different body does not carry over.
    let (sig, ts) = sign("something else", now(), SIGNING_SECRET);
    let swapped = app
        .http
        .post(format!("{}/slack/commands", app.base))
        .header("x-slack-signature", sig)
        .header("x-slack-request-timestamp", ts)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status().as_u16(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(fake.calls("chat.postMessage").is_empty());
    assert!(app.ledger().await.is_empty());
}

#[tokio::test]
async fn url_verification_is_answered_with_the_challenge() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    let body = json!({"token": "legacy", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}).to_string();
    let r = signed(
        &app,
        "/slack/events",
        "application/json",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
}

#[tokio::test]
async fn a_channel_message_starts_one_run_however_often_it_is_delivered() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    let message = json!({"type": "message", "channel": "C0GENERAL", "user": "UANA0001", "text": "ship it: 2.0.0", "ts": "1700000050.000100", "channel_type": "channel"});
    for (id, retry) in [("Ev01", 0), ("Ev01", 1), ("Ev01", 2)] {
        let body = event(id, message.clone());
        let (sig, ts) = sign(&body, now(), SIGNING_SECRET);
        let r = app
            .http
            .post(format!("{}/slack/events", app.base))
            .header("content-type", "application/json")
            .header("x-slack-signature", sig)
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-retry-num", retry.to_string())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    root_post(&fake, "Ship 2.0.0").await;
    // The bot's own message and other bots' are ignored.
    let own = json!({"type": "message", "channel": "C0GENERAL", "user": BOT_USER, "text": "ship it: 6.6.6", "ts": "1700000060.000100"});
    signed(
        &app,
        "/slack/events",
        "application/json",
        &event("Ev02", own),
        0,
        SIGNING_SECRET,
    )
    .await;
    let bot = json!({"type": "message", "channel": "C0GENERAL", "user": "UOTHERBOT", "bot_id": "B0OTHER", "text": "ship it: 7.7.7", "ts": "1700000070.000100"});
    signed(
        &app,
        "/slack/events",
        "application/json",
        &event("Ev03", bot),
        0,
        SIGNING_SECRET,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.ledger_of("run.started").await.len(), 1);
}

#[tokio::test]
async fn bad_slash_arguments_get_the_usage_privately() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/ship", "T5.1").await, 200);
    eventually("the usage text", || async {
        fake.responses().iter().any(|r| {
            r["text"]
                .as_str()
                .unwrap_or_default()
                .contains("Usage: /ship <version>")
        })
    })
    .await;
    assert!(fake.calls("chat.postMessage").is_empty());
}

#[tokio::test]
async fn a_429_storm_delays_posts_without_losing_or_reordering_any() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    fake.state.lock().unwrap().rate_limit = 4;
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/ship 3.0.0", "T6.1").await,
        200
    );
    for _ in 0..12 {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        app.advance(Duration::seconds(3));
    }
    let (root_ts, _) = root_post(&fake, "Ship 3.0.0").await;
    let posts = fake.posts();
    assert_eq!(posts[0].0, root_ts, "the root went first");
    assert!(
        posts[1..]
            .iter()
            .all(|(_, p)| p["thread_ts"] == root_ts.as_str()),
        "replies follow in its thread"
    );
    eventually("the approval request despite the storm", || async {
        fake.thread(&root_ts)
            .iter()
            .any(|b| blocks_text(b).contains("Approval needed"))
    })
    .await;
    let failures = app.ledger_of("post.failed").await;
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn a_missing_channel_is_reported_in_the_run_and_the_ledger() {
    let fake = FakeSlack::start().await;
    fake.state
        .lock()
        .unwrap()
        .missing_channels
        .insert("C0GENERAL".into());
    let app = slack_app(&fake).await;
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/ship 4.0.0", "T7.1").await,
        200
    );
    let failed = eventually_some("post.failed in the ledger", || async {
        app.ledger_of("post.failed").await.into_iter().next()
    })
    .await;
    assert!(
        failed["data"]
            .as_str()
            .unwrap()
            .contains("channel_not_found"),
        "{failed}"
    );
    let (_, page) = app.get("/runs/1").await;
    assert!(
        page.contains("channel_not_found"),
        "the run's page shows it"
    );
    // The channel will not take an alert either, so the requester hears of it privately.
    let private = eventually_some("a direct message to the requester", || async {
        fake.calls("chat.postMessage")
            .into_iter()
            .find(|b| b["channel"] == "UANA0001")
    })
    .await;
    assert!(
        blocks_text(&private).starts_with("Your run 1 (Ship 4.0.0) could not post in #general"),
        "{}",
        blocks_text(&private)
    );
    let (_, page) = app.get("/runs/1").await;
    assert!(
        page.contains("Its conversation did not reach chat"),
        "the run's page says the conversation is missing"
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.contains("baton_runs_unreachable 1"), "{metrics}");
    assert_eq!(app.ledger_of("delivery.alerted").await.len(), 1);
    // What the run posts later (its cancellation) cannot reach a thread that does not exist:
    // it fails too instead of waiting forever.
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/baton cancel 1", "T7.2").await,
        200
    );
    app.wait_for_status(1, "cancelled").await;
    eventually("nothing left pending", || async {
        app.get("/metrics").await.1.contains("baton_outbox_depth 0")
    })
    .await;
}

#[tokio::test]
async fn a_bad_token_stops_start_up_saying_what_to_fix() {
    let fake = FakeSlack::start().await;
    let err = start_up_error(&fake, "xoxb-wrong").await;
    assert!(
        err.to_string()
            .contains("SLACK_BOT_TOKEN: Slack refused the token (invalid_auth)"),
        "{err:#}"
    );
}

const NOTIFY: &str = r##"
name = "announce"
description = "Announce"
[[trigger]]
kind = "slash"
command = "announce"
[[step]]
id = "ops"
kind = "notify"
channel = "ops"
text = "to ops"
[[step]]
id = "incidents"
kind = "notify"
channel = "#incidents"
text = "to incidents"
[[step]]
id = "nowhere"
kind = "notify"
channel = "nowhere"
text = "lost"
"##;

#[tokio::test]
async fn channel_names_in_workflows_are_resolved_and_an_unknown_one_is_reported() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake, "announce.toml", NOTIFY.into()).await;
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/announce", "T8.1").await,
        200
    );
    eventually("posts in #ops and #incidents", || async {
        let posts = fake.calls("chat.postMessage");
        posts
            .iter()
            .any(|p| p["channel"] == "G0OPS0001" && p["text"] == "to ops")
            && posts
                .iter()
                .any(|p| p["channel"] == "C0INCIDENTS" && p["text"] == "to incidents")
    })
    .await;
    let failed = eventually_some("the unknown channel reported", || async {
        app.ledger_of("post.failed").await.into_iter().next()
    })
    .await;
    assert!(
        failed["data"]
            .as_str()
            .unwrap()
            .contains("channel #nowhere not found"),
        "{failed}"
    );
}

#[tokio::test]
async fn posts_to_one_channel_are_paced_and_keep_their_order() {
    let many: String = (1..=8)
        .map(|i| {
            format!(
                "[[step]]\nid = \"s{i}\"\nkind = \"notify\"\n{}text = \"note {i}\"\n",
                if i > 1 {
                    format!("needs = [\"s{}\"]\n", i - 1)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    let wf =
        format!("name = \"burst\"\n[[trigger]]\nkind = \"slash\"\ncommand = \"burst\"\n{many}");
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake, "burst.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/burst", "T9.1").await, 200);
    // A burst of four goes out at once; the rest wait for the channel's pace.
    eventually("the burst", || async {
        fake.calls("chat.postMessage").len() == 4
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(fake.calls("chat.postMessage").len(), 4, "paced, not sent");
    assert!(app.ledger_of("post.failed").await.is_empty());
    for _ in 0..8 {
        app.advance(Duration::seconds(1));
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    eventually("every post", || async {
        fake.calls("chat.postMessage").len() == 10
    })
    .await;
    let texts: Vec<String> = fake
        .calls("chat.postMessage")
        .iter()
        .map(|p| p["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    let notes: Vec<&String> = texts.iter().filter(|t| t.starts_with("note ")).collect();
    assert_eq!(
        notes,
        (1..=8)
            .map(|i| format!("note {i}"))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>(),
        "in order"
    );
}

#[tokio::test]
async fn reject_opens_a_modal_for_the_reason_and_the_submission_decides() {
    let fake = FakeSlack::start().await;
    let wf = APPROVE.replace(
        "approvers = [\"UBEN0001\"]",
        "approvers = [\"UBEN0001\"]\nreject_reason = true",
    );
    let app = slack_app_with(&fake, "ship.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/ship 8.0", "T1").await, 200);
    let (approval_ts, approval) = approval_post(&fake).await;
    let reject = approval["blocks"].as_array().unwrap().last().unwrap()["elements"][1].clone();
    assert!(
        reject["action_id"]
            .as_str()
            .unwrap()
            .starts_with("reject:1:gate:"),
        "{reject}"
    );
    assert!(
        reject["value"]
            .as_str()
            .unwrap()
            .contains("Why are you rejecting this?"),
        "{reject}"
    );

    // Reject opens a modal on the click's trigger id and decides nothing yet.
    assert_eq!(
        click_with_value(
            &app,
            &fake,
            "UBEN0001",
            "reject:1:gate",
            reject["value"].as_str(),
            &approval_ts,
            "T2.7"
        )
        .await,
        200
    );
    let opened = eventually_some("views.open", || async {
        fake.calls("views.open").into_iter().next()
    })
    .await;
    assert_eq!(opened["trigger_id"], "T2.7");
    assert_eq!(
        opened["view"]["blocks"][0]["element"]["type"],
        "plain_text_input"
    );
    assert_eq!(app.run_status(1).await, "waiting_approval");

    let submission = json!({
        "type": "view_submission",
        "team": {"id": "T0ACME", "domain": "acme"},
        "user": {"id": "UBEN0001", "username": "ben", "name": "ben", "team_id": "T0ACME"},
        "api_app_id": "A0BATON",
        "trigger_id": "T2.8",
        "view": {
            "id": "V0MODAL01", "type": "modal", "callback_id": opened["view"]["callback_id"], "private_metadata": opened["view"]["private_metadata"],
            "title": {"type": "plain_text", "text": "Reject"}, "blocks": opened["view"]["blocks"],
            "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": "the changelog is missing"}}}},
            "team_id": "T0ACME", "app_id": "A0BATON", "bot_id": "B0BATON", "hash": "1700000000.abcd"
        }
    });
    let body = form(&[("payload", &submission.to_string())]);
    let r = signed(
        &app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "",
        "an empty answer closes the modal"
    );
    app.wait_for_status(1, "rejected").await;
    eventually("the decision with its reason", || async {
        fake.calls("chat.update").iter().any(|b| {
            b["ts"] == approval_ts.as_str()
                && blocks_text(b).contains("Rejected by <@UBEN0001> at")
                && blocks_text(b).contains("the changelog is missing")
        })
    })
    .await;
}

#[tokio::test]
async fn a_missing_scope_stops_start_up_naming_it() {
    let fake = FakeSlack::start().await;
    fake.state.lock().unwrap().scopes = Some("chat:write,commands".into());
    let err = start_up_error(&fake, BOT_TOKEN).await;
    assert!(
        err.to_string()
            .contains("lacks the scopes app_mentions:read, channels:history, channels:read"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_user_group_can_approve_and_is_mentioned_as_a_group() {
    let fake = FakeSlack::start().await;
    let wf = APPROVE.replace(
        "approvers = [\"UBEN0001\"]",
        "approvers = [\"slack:group:S0RELEASE\"]",
    );
    let app = slack_app_with(&fake, "ship.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/ship 9.1", "T1").await, 200);
    let (approval_ts, approval) = approval_post(&fake).await;
    assert!(
        blocks_text(&approval).contains("Approvers: <!subteam^S0RELEASE>"),
        "{}",
        blocks_text(&approval)
    );
    // Not in the group: refused.
    assert_eq!(
        click(
            &app,
            &fake,
            "UBEN0001",
            "approve:1:gate",
            &approval_ts,
            "T2"
        )
        .await,
        200
    );
    eventually("the refusal", || async {
        fake.responses()
            .iter()
            .any(|r| r["text"] == "You are not an approver for this step.")
    })
    .await;
    // In the group: approved.
    assert_eq!(
        click(
            &app,
            &fake,
            "UCY00001",
            "approve:1:gate",
            &approval_ts,
            "T3"
        )
        .await,
        200
    );
    app.wait_for_status(1, "succeeded").await;
}

#[tokio::test]
async fn a_large_signed_event_is_accepted() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    let long = format!("ship it: 6.0 {}", "x".repeat(200 * 1024));
    let message = json!({"type": "message", "channel": "C0GENERAL", "user": "UANA0001", "text": long, "ts": "1700000090.000100"});
    let r = signed(
        &app,
        "/slack/events",
        "application/json",
        &event("EvBig", message),
        0,
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    root_post(&fake, "Ship 6.0").await;
}

const INCIDENTS: &str = r#"
name = "page"
[[trigger]]
kind = "message"
channels = ["incidents"]
pattern = 'incident: (?P<summary>.+)'
[permissions]
channels = ["incidents"]
[[step]]
id = "ack"
kind = "notify"
text = "Looking into {{ input.summary }}"
"#;

#[tokio::test]
async fn workflows_naming_channels_match_slack_channel_ids() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake, "page.toml", INCIDENTS.into()).await;
    let message = json!({"type": "message", "channel": "C0INCIDENTS", "user": "UANA0001", "text": "incident: api down", "ts": "1700000200.000100"});
    signed(
        &app,
        "/slack/events",
        "application/json",
        &event("EvInc", message),
        0,
        SIGNING_SECRET,
    )
    .await;
    eventually("the reply in #incidents", || async {
        fake.calls("chat.postMessage")
            .iter()
            .any(|p| p["channel"] == "C0INCIDENTS" && p["text"] == "Looking into api down")
    })
    .await;
    // The same text elsewhere starts nothing.
    let other = json!({"type": "message", "channel": "C0GENERAL", "user": "UANA0001", "text": "incident: elsewhere", "ts": "1700000210.000100"});
    signed(
        &app,
        "/slack/events",
        "application/json",
        &event("EvGen", other),
        0,
        SIGNING_SECRET,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(app.ledger_of("run.started").await.len(), 1);
}

/// Waits for a private answer (through `response_url`) with exactly `text`.
async fn private_answer(fake: &FakeSlack, text: &str) {
    eventually(&format!("the private answer `{text}`"), || async {
        fake.responses().iter().any(|r| r["text"] == text)
    })
    .await;
}

#[tokio::test]
async fn on_slack_a_quorum_counts_each_person_once_and_the_ladder_escalates_to_a_channel_that_may_decide()
 {
    let fake = FakeSlack::start().await;
    let wf = APPROVE.replace(
        "approvers = [\"UBEN0001\"]",
        "approvers = [\"UBEN0001\", \"UCY00001\"]\nquorum = 2\nremind_after = \"30m\"\nescalate_after = \"45m\"\nescalate_to = { channel = \"incidents\", approvers = [\"UDEE0001\"] }",
    );
    let app = slack_app_with(&fake, "ship.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/ship 9.2", "T1").await, 200);
    let (approval_ts, approval) = approval_post(&fake).await;
    assert!(
        blocks_text(&approval).contains("Needs 2 distinct approvals: 0 so far"),
        "{}",
        blocks_text(&approval)
    );
    // The requester may not approve; ben counts once.
    click(
        &app,
        &fake,
        "UANA0001",
        "approve:1:gate",
        &approval_ts,
        "T2",
    )
    .await;
    private_answer(&fake, "You are not an approver for this step.").await;
    click(
        &app,
        &fake,
        "UBEN0001",
        "approve:1:gate",
        &approval_ts,
        "T3",
    )
    .await;
    private_answer(&fake, "Your approval is counted: 1 of 2.").await;
    click(
        &app,
        &fake,
        "UBEN0001",
        "approve:1:gate",
        &approval_ts,
        "T4",
    )
    .await;
    private_answer(
        &fake,
        "You have already decided on this step; each person counts once.",
    )
    .await;
    eventually("the request to show the vote", || async {
        fake.calls("chat.update")
            .iter()
            .any(|b| blocks_text(b).contains("1 so far (<@UBEN0001>)"))
    })
    .await;

    app.advance(Duration::minutes(31));
    let reminder = eventually_some("the reminder in the thread", || async {
        fake.posts()
            .into_iter()
            .find(|(_, b)| blocks_text(b).contains("Reminder: step *gate*"))
    })
    .await;
    assert!(
        blocks_text(&reminder.1).contains("<@UCY00001>"),
        "{}",
        blocks_text(&reminder.1)
    );
    assert!(!reminder.1["thread_ts"].is_null(), "in the run's thread");

    app.advance(Duration::minutes(15));
    let (escalated_ts, escalated) = eventually_some("the request in #incidents", || async {
        fake.posts().into_iter().find(|(_, b)| {
            b["channel"] == "C0INCIDENTS" && blocks_text(b).contains("*Escalated* from run 1")
        })
    })
    .await;
    assert!(blocks_text(&escalated).contains("<@UDEE0001>"));
    assert_eq!(
        action_ids(&escalated),
        vec!["approve:1:gate", "reject:1:gate"]
    );
    click(
        &app,
        &fake,
        "UDEE0001",
        "approve:1:gate",
        &escalated_ts,
        "T5",
    )
    .await;
    app.wait_for_status(1, "succeeded").await;
    eventually("both copies to show the outcome", || async {
        let updates = fake.calls("chat.update");
        let done = |channel: &str| {
            updates.iter().any(|b| {
                b["channel"] == channel
                    && blocks_text(b).contains("Approved by <@UBEN0001>, <@UDEE0001>")
            })
        };
        done("C0GENERAL") && done("C0INCIDENTS")
    })
    .await;
    for (kind, n) in [
        ("approval.reminded", 1),
        ("approval.escalated", 1),
        ("approval.voted", 1),
        ("approval.decided", 1),
        ("approval.refused", 2),
    ] {
        assert_eq!(app.ledger_of(kind).await.len(), n, "{kind}");
    }
}

#[tokio::test]
async fn on_slack_only_members_of_a_user_group_may_start_a_workflow_and_others_are_told_privately()
{
    let fake = FakeSlack::start().await;
    let wf = APPROVE.replace(
        "[[step]]\nid = \"gate\"",
        "[permissions]\nusers = [\"slack:group:S0RELEASE\"]\n[[step]]\nid = \"gate\"",
    );
    let app = slack_app_with(&fake, "ship.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/ship 1.0", "T1").await, 200);
    private_answer(&fake, "You are not allowed to start /ship here.").await;
    let refused = app.ledger_of("trigger.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["actor"], "slack:UANA0001");
    assert!(fake.posts().is_empty(), "nothing started, nothing posted");

    assert_eq!(slash(&app, &fake, "UCY00001", "/ship 1.0", "T2").await, 200);
    approval_post(&fake).await;
    assert_eq!(app.ledger_of("run.started").await.len(), 1);
}

#[tokio::test]
async fn on_slack_a_stalled_run_is_flagged_in_its_thread_and_retry_resumes_it() {
    let fake = FakeSlack::start().await;
    let wf = stalling_workflow(&["UANA0001"]).await;
    let app = slack_app_with(&fake, "check.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/check", "T1").await, 200);
    let (root_ts, _) = root_post(&fake, "Check a service").await;
    app.advance(Duration::minutes(11));
    let (alert_ts, alert) = eventually_some("the stall alert in the thread", || async {
        fake.posts().into_iter().find(|(_, b)| {
            b["thread_ts"] == root_ts.as_str() && blocks_text(b).contains("*Stalled*: run 1")
        })
    })
    .await;
    assert_eq!(action_ids(&alert), vec!["retry:1", "cancel:1"]);
    click(&app, &fake, "UBEN0001", "retry:1", &alert_ts, "T2").await;
    private_answer(
        &fake,
        "You may not retry run 1: only its requester or people allowed to start `check` can.",
    )
    .await;
    click(&app, &fake, "UANA0001", "retry:1", &alert_ts, "T3").await;
    app.wait_for_status(1, "succeeded").await;
    eventually("the alert to say who retried", || async {
        fake.calls("chat.update")
            .iter()
            .any(|b| blocks_text(b).contains("Retried by <@UANA0001>"))
    })
    .await;
    assert_eq!(app.ledger_of("run.retried").await.len(), 1);
}

/// Submits the modal `opened` (a `views.open` body) as `user` with `text` in its input.
async fn submit_modal(app: &TestApp, opened: &Value, user: &str, view_id: &str, text: &str) {
    let submission = json!({
        "type": "view_submission",
        "team": {"id": "T0ACME", "domain": "acme"},
        "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0ACME"},
        "api_app_id": "A0BATON",
        "trigger_id": format!("{view_id}.t"),
        "view": {
            "id": view_id, "type": "modal", "callback_id": opened["view"]["callback_id"], "private_metadata": opened["view"]["private_metadata"],
            "title": opened["view"]["title"], "blocks": opened["view"]["blocks"],
            "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": text}}}},
            "team_id": "T0ACME", "app_id": "A0BATON", "bot_id": "B0BATON", "hash": "1700000000.abcd"
        }
    });
    let body = form(&[("payload", &submission.to_string())]);
    let r = signed(
        app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
}

/// The full action id of the button labelled `label` on a posted message.
fn full_action_id(body: &Value, label: &str) -> (String, Option<String>) {
    body["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["text"]["text"] == label)
        .map(|e| {
            (
                e["action_id"].as_str().unwrap().to_owned(),
                e["value"].as_str().map(str::to_owned),
            )
        })
        .unwrap_or_else(|| panic!("no {label} button"))
}

#[tokio::test]
async fn on_slack_an_edited_payload_is_asked_about_afresh_and_a_click_on_the_old_copy_is_refused() {
    let fake = FakeSlack::start().await;
    let wf = r#"
name = "welcome"
description = "Welcome a customer"
[[trigger]]
kind = "slash"
command = "welcome"
args = [{ name = "who", required = true }]
[[step]]
id = "gate"
kind = "approval"
approvers = ["UBEN0001", "UCY00001"]
message = "Send this email?"
payload = "Dear {{ input.who }}, welcome."
editable = true
[[step]]
id = "send"
kind = "notify"
needs = ["gate"]
text = "{{ steps.gate.output.payload }}"
"#;
    let app = slack_app_with(&fake, "welcome.toml", wf.into()).await;
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/welcome Jane", "T1").await,
        200
    );
    let (first_ts, first) = approval_post(&fake).await;
    let (edit, value) = full_action_id(&first, "Edit");
    let (old_approve, _) = full_action_id(&first, "Approve");
    click_with_value(
        &app,
        &fake,
        "UBEN0001",
        &edit,
        value.as_deref(),
        &first_ts,
        "T2",
    )
    .await;
    let opened = eventually_some("the edit modal", || async {
        fake.calls("views.open").into_iter().next()
    })
    .await;
    assert_eq!(opened["trigger_id"], "T2");
    assert_eq!(
        opened["view"]["blocks"][0]["element"]["initial_value"],
        "Dear Jane, welcome."
    );
    submit_modal(
        &app,
        &opened,
        "UBEN0001",
        "V0EDIT01",
        "Dear Jane, welcome aboard!",
    )
    .await;
    let (fresh_ts, fresh) = eventually_some("the fresh request", || async {
        fake.posts()
            .into_iter()
            .find(|(_, b)| blocks_text(b).contains("Payload edited by <@UBEN0001>"))
    })
    .await;
    assert!(blocks_text(&fresh).contains("Dear Jane, welcome aboard!"));

    // cy clicks Approve on the first copy, still on screen: refused, and asked afresh.
    click(&app, &fake, "UCY00001", &old_approve, &first_ts, "T3").await;
    private_answer(
        &fake,
        "This request changed since you saw it (its payload was edited). Decide on the fresh request in the thread.",
    )
    .await;
    assert_eq!(app.run_status(1).await, "waiting_approval");
    let (new_approve, _) = full_action_id(&fresh, "Approve");
    click(&app, &fake, "UCY00001", &new_approve, &fresh_ts, "T4").await;
    app.wait_for_status(1, "succeeded").await;
    // Posts to one channel are paced on the test clock.
    eventually("the edited text sent", || async {
        app.advance(Duration::seconds(2));
        fake.posts()
            .iter()
            .any(|(_, b)| blocks_text(b).starts_with("Dear Jane, welcome aboard!"))
    })
    .await;
    assert_eq!(app.ledger_of("approval.edited").await.len(), 1);
    let refused: Vec<Value> = app
        .ledger_of("approval.refused")
        .await
        .iter()
        .map(|e| serde_json::from_str(e["data"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(refused[0]["reason"], "stale_payload");
}

#[tokio::test]
async fn on_slack_a_message_that_cannot_be_delivered_is_flagged_in_the_thread_and_retry_sends_it_again()
 {
    let fake = FakeSlack::start().await;
    fake.state
        .lock()
        .unwrap()
        .missing_channels
        .insert("C0INCIDENTS".into());
    let wf = r#"
name = "announce"
description = "Announce something"
[[trigger]]
kind = "slash"
command = "announce"
args = [{ name = "what", required = true }]
[[step]]
id = "tell"
kind = "notify"
channel = "incidents"
text = "Heads up: {{ input.what }}"
"#;
    let app = slack_app_with(&fake, "announce.toml", wf.into()).await;
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/announce maintenance", "T1").await,
        200
    );
    let (root_ts, _) = root_post(&fake, "Announce something").await;
    let (alert_ts, alert) = eventually_some("the delivery alert in the thread", || async {
        app.advance(Duration::seconds(2));
        fake.posts().into_iter().find(|(_, b)| {
            b["thread_ts"] == root_ts.as_str() && blocks_text(b).contains("*Delivery failed*")
        })
    })
    .await;
    assert!(
        blocks_text(&alert).contains("to #incidents"),
        "{}",
        blocks_text(&alert)
    );
    assert!(blocks_text(&alert).contains("channel_not_found"));
    assert_eq!(
        action_ids(&alert),
        vec!["retry:1"],
        "the run has ended: nothing to cancel"
    );
    let (_, page) = app.get("/stalled").await;
    assert!(
        page.contains("slack #incidents") && page.contains("channel_not_found"),
        "the console lists it"
    );

    // The bot is invited; someone who may start the workflow retries.
    fake.state.lock().unwrap().missing_channels.clear();
    click(&app, &fake, "UANA0001", "retry:1", &alert_ts, "T2").await;
    private_answer(
        &fake,
        "Sending the messages that could not be delivered again.",
    )
    .await;
    eventually("the announcement in #incidents", || async {
        app.advance(Duration::seconds(2));
        fake.posts().iter().any(|(_, b)| {
            b["channel"] == "C0INCIDENTS" && blocks_text(b).contains("Heads up: maintenance")
        })
    })
    .await;
    assert_eq!(app.ledger_of("run.retried").await.len(), 1);
}

#[tokio::test]
async fn on_slack_members_of_a_channel_may_approve_and_others_may_not() {
    let fake = FakeSlack::start().await;
    let wf = APPROVE.replace(
        "approvers = [\"UBEN0001\"]",
        "approvers = [\"channel:incidents\"]",
    );
    let app = slack_app_with(&fake, "ship.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/ship 9.9", "T1").await, 200);
    let (approval_ts, approval) = approval_post(&fake).await;
    assert!(
        blocks_text(&approval).contains("Approvers: members of #incidents"),
        "{}",
        blocks_text(&approval)
    );
    let (approve, _) = full_action_id(&approval, "Approve");
    click(&app, &fake, "UBEN0001", &approve, &approval_ts, "T2").await;
    private_answer(&fake, "You are not an approver for this step.").await;
    // UEVE0001 is on the second page of #incidents' members.
    click(&app, &fake, "UEVE0001", &approve, &approval_ts, "T3").await;
    app.wait_for_status(1, "succeeded").await;
}

#[tokio::test]
async fn on_slack_a_message_that_keeps_failing_is_flagged_after_the_time_budget_and_retry_tries_at_once()
 {
    let fake = FakeSlack::start().await;
    fake.state
        .lock()
        .unwrap()
        .failing_channels
        .insert("C0INCIDENTS".into());
    let wf = r#"
name = "announce"
description = "Announce something"
[[trigger]]
kind = "slash"
command = "announce"
args = [{ name = "what", required = true }]
[[step]]
id = "tell"
kind = "notify"
channel = "incidents"
text = "Heads up: {{ input.what }}"
"#;
    let app = slack_app_with(&fake, "announce.toml", wf.into()).await;
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/announce maintenance", "T1").await,
        200
    );
    let (root_ts, _) = root_post(&fake, "Announce something").await;
    let (alert_ts, alert) = eventually_some("the alert after ten minutes of trouble", || async {
        app.advance(Duration::seconds(40));
        fake.posts().into_iter().find(|(_, b)| {
            b["thread_ts"] == root_ts.as_str() && blocks_text(b).contains("*Delivery delayed*")
        })
    })
    .await;
    assert!(
        blocks_text(&alert).contains("still trying: Slack could not be reached: HTTP 500"),
        "{}",
        blocks_text(&alert)
    );
    assert!(
        app.ledger_of("post.failed").await.is_empty(),
        "not given up"
    );
    let tries = || {
        fake.calls("chat.postMessage")
            .iter()
            .filter(|b| b["channel"] == "C0INCIDENTS")
            .count()
    };
    let before = tries();
    fake.state.lock().unwrap().failing_channels.clear();
    click(&app, &fake, "UANA0001", "retry:1", &alert_ts, "T2").await;
    // Retry does not wait for the backoff.
    eventually("the announcement in #incidents", || async {
        tries() > before
            && fake.posts().iter().any(|(_, b)| {
                b["channel"] == "C0INCIDENTS" && blocks_text(b).contains("Heads up: maintenance")
            })
    })
    .await;
    let update = eventually_some("the alert says it went through", || async {
        fake.calls("chat.update")
            .into_iter()
            .find(|b| b["ts"] == alert_ts.as_str())
    })
    .await;
    assert!(
        blocks_text(&update)
            .starts_with("*Delivered after all*: the message of run 1 to #incidents"),
        "{}",
        blocks_text(&update)
    );
}

#[tokio::test]
async fn on_slack_a_condition_skips_the_approval_and_a_reminder_fires_once_across_a_restart() {
    let fake = FakeSlack::start().await;
    let wf = APPROVE.replace(
        "approvers = [\"UBEN0001\"]",
        "approvers = [\"UBEN0001\"]\nwhen = \"input.version != 'dev'\"\nremind_after = \"30m\"",
    );
    let mut app = slack_app_with(&fake, "ship.toml", wf).await;
    assert_eq!(slash(&app, &fake, "UANA0001", "/ship dev", "T1").await, 200);
    root_post(&fake, "Ship dev").await;
    app.wait_for_status(1, "succeeded").await;
    eventually("the note that no approval is needed", || async {
        app.advance(Duration::seconds(2));
        fake.posts().iter().any(|(_, b)| {
            blocks_text(b)
                .contains("needs no approval in this run (`input.version != 'dev'` does not hold)")
        })
    })
    .await;

    assert_eq!(slash(&app, &fake, "UANA0001", "/ship 2.0", "T2").await, 200);
    eventually("the second run's request", || async {
        app.advance(Duration::seconds(2));
        fake.posts()
            .iter()
            .filter(|(_, b)| blocks_text(b).contains("Approval needed"))
            .count()
            == 1
    })
    .await;
    app.stop().await;
    app.start().await;
    app.advance(Duration::minutes(31));
    let reminders = || {
        fake.posts()
            .iter()
            .filter(|(_, b)| blocks_text(b).contains("Reminder: step *gate*"))
            .count()
    };
    eventually("the reminder", || async { reminders() == 1 }).await;
    app.advance(Duration::hours(2));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(reminders(), 1, "a rung fires once");
    assert_eq!(app.ledger_of("approval.reminded").await.len(), 1);
}

/// Three notes in a row, each in the run's thread.
const CHAIN: &str = r#"
name = "chain"
description = "Three notes"
title = "Chain {{ input.n }}"
[[trigger]]
kind = "slash"
command = "chain"
args = [{ name = "n", required = true }]
[[step]]
id = "a"
kind = "notify"
text = "note A of {{ input.n }}"
[[step]]
id = "b"
kind = "notify"
needs = ["a"]
text = "note B of {{ input.n }}"
[[step]]
id = "c"
kind = "notify"
needs = ["b"]
text = "note C of {{ input.n }}"
"#;

/// Whatever Baton posted or wrote in an update, as text.
fn everything_said(fake: &FakeSlack) -> Vec<String> {
    fake.state
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|c| c.method.starts_with("chat."))
        .map(|c| {
            format!(
                "{} {}",
                c.body["text"].as_str().unwrap_or_default(),
                blocks_text(&c.body)
            )
        })
        .collect()
}

#[tokio::test]
async fn a_hundred_429s_in_a_row_on_one_channel_delay_every_message_of_every_run_and_lose_none() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake, "chain.toml", CHAIN.into()).await;
    {
        let mut s = fake.state.lock().unwrap();
        s.clock = Some(app.clock.clone());
        s.rate_limit = 100;
        s.rate_limit_updates = 100;
        s.retry_after = Some("1");
    }
    for n in 1..=3 {
        let trigger = format!("T9.{n}");
        assert_eq!(
            slash(&app, &fake, "UANA0001", &format!("/chain {n}"), &trigger).await,
            200
        );
    }
    eventually("three runs started", || async {
        app.ledger_of("run.started").await.len() == 3
    })
    .await;
    for n in 1..=3 {
        app.wait_for_status(n, "succeeded").await;
    }
    eventually("every message through the storm", || async {
        app.advance(Duration::seconds(1));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let s = fake.state.lock().unwrap();
        s.rate_limit == 0
            && s.rate_limit_updates == 0
            && (1..=3).all(|n| {
                s.calls.iter().any(|c| {
                    c.body["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&format!("Run {n} *done*"))
                })
            })
    })
    .await;
    for n in 1..=3 {
        let (root_ts, _) = root_post(&fake, &format!("Chain {n}")).await;
        let thread: Vec<String> = fake
            .thread(&root_ts)
            .iter()
            .map(|b| b["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        let notes: Vec<&String> = thread.iter().filter(|t| t.starts_with("note ")).collect();
        assert_eq!(
            notes,
            vec![
                &format!("note A of {n}"),
                &format!("note B of {n}"),
                &format!("note C of {n}")
            ],
            "each note once, in order: {thread:?}"
        );
        assert_eq!(
            fake.posts()
                .iter()
                .filter(|(_, b)| b["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("Chain {n}"))
                    && b["thread_ts"].is_null())
                .count(),
            1,
            "one root for run {n}"
        );
    }
    let said = everything_said(&fake);
    assert!(
        !said.iter().any(|t| t.contains("Delivery")),
        "no alert for a rate limit: {said:?}"
    );
    for kind in ["post.failed", "delivery.alerted", "run.stalled"] {
        assert!(app.ledger_of(kind).await.is_empty(), "{kind} in the ledger");
    }
    fake.assert_waits_were_kept(Duration::seconds(1));
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("baton_rate_limited_total 200"),
        "{metrics}"
    );
}

#[tokio::test]
async fn after_a_429_on_an_update_no_other_update_in_that_channel_goes_before_retry_after() {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake, "chain.toml", CHAIN.into()).await;
    {
        let mut s = fake.state.lock().unwrap();
        s.clock = Some(app.clock.clone());
        s.rate_limit_updates = 1;
        s.retry_after = Some("30");
    }
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/chain 1", "T10.1").await,
        200
    );
    root_post(&fake, "Chain 1").await;
    app.wait_for_status(1, "succeeded").await;
    eventually("the 429 on an update", || async {
        app.advance(Duration::seconds(1));
        fake.state.lock().unwrap().rate_limit_updates == 0
    })
    .await;
    // Newer edits of the root supersede the one that got the 429; none may go early.
    let updates = || fake.calls("chat.update").len();
    let before = updates();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(updates(), before, "an update went before Retry-After");
    eventually("the root's last edit after the wait", || async {
        app.advance(Duration::seconds(5));
        fake.calls("chat.update").iter().any(|b| {
            b["text"]
                .as_str()
                .unwrap_or_default()
                .contains("Status: *done*")
        })
    })
    .await;
    fake.assert_waits_were_kept(Duration::seconds(30));
}

#[tokio::test]
async fn a_message_that_keeps_failing_past_the_time_budget_is_flagged_once_and_the_flag_says_when_it_got_through()
 {
    let fake = FakeSlack::start().await;
    let app = slack_app_with(&fake, "chain.toml", CHAIN.into()).await;
    fake.state.lock().unwrap().failing_texts = vec!["note B".into()];
    assert_eq!(
        slash(&app, &fake, "UANA0001", "/chain 7", "T11.1").await,
        200
    );
    let (root_ts, _) = root_post(&fake, "Chain 7").await;
    let (alert_ts, alert) = eventually_some("the alert once the trouble lasted", || async {
        app.advance(Duration::seconds(30));
        fake.posts().into_iter().find(|(_, b)| {
            b["thread_ts"] == root_ts.as_str() && blocks_text(b).contains("*Delivery delayed*")
        })
    })
    .await;
    let text = blocks_text(&alert);
    assert!(text.contains("Baton keeps trying"), "{text}");
    assert!(
        text.contains("internal_error") || text.contains("HTTP 500"),
        "{text}"
    );
    // Notify steps do not wait for delivery, so the run is over: Retry only.
    assert_eq!(action_ids(&alert), vec!["retry:1"]);
    let (_, page) = app.get("/runs/1").await;
    assert!(
        page.contains("has not gone through yet"),
        "the run page says so"
    );
    assert!(
        !fake
            .thread(&root_ts)
            .iter()
            .any(|b| b["text"] == "note C of 7"),
        "the thread keeps its order meanwhile"
    );
    assert!(
        app.ledger_of("post.failed").await.is_empty(),
        "not given up"
    );

    fake.state.lock().unwrap().failing_texts.clear();
    let update = eventually_some("the alert withdrawn", || async {
        app.advance(Duration::seconds(60));
        fake.calls("chat.update")
            .into_iter()
            .find(|b| b["ts"] == alert_ts.as_str())
    })
    .await;
    assert!(
        blocks_text(&update).contains("*Delivered after all*"),
        "{}",
        blocks_text(&update)
    );
    assert!(action_ids(&update).is_empty(), "no buttons left");
    app.wait_for_status(1, "succeeded").await;
    eventually("note C after note B", || async {
        app.advance(Duration::seconds(2));
        let thread: Vec<String> = fake
            .thread(&root_ts)
            .iter()
            .map(|b| b["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        let b = thread.iter().position(|t| t == "note B of 7");
        let c = thread.iter().position(|t| t == "note C of 7");
        matches!((b, c), (Some(b), Some(c)) if b < c)
    })
    .await;
    assert_eq!(app.ledger_of("delivery.alerted").await.len(), 1);
    assert_eq!(app.ledger_of("delivery.recovered").await.len(), 1);
    let alerts = everything_said(&fake)
        .iter()
        .filter(|t| t.contains("*Delivery delayed*"))
        .count();
    assert_eq!(alerts, 1, "said once");
}

#[tokio::test]
async fn a_click_on_a_button_baton_cannot_read_is_answered_privately_and_recorded() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    for (action, trigger) in [("approve:1", "T12.1"), ("legacy_approve_button", "T12.2")] {
        assert_eq!(
            click(
                &app,
                &fake,
                "UBEN0001",
                action,
                "1700000000.000009",
                trigger
            )
            .await,
            200
        );
    }
    eventually("both answered", || async {
        fake.responses()
            .iter()
            .filter(|r| {
                r["text"] == "This button is no longer valid. Nothing was changed."
                    && r["response_type"] == "ephemeral"
            })
            .count()
            == 2
    })
    .await;
    let recorded = app.ledger_of("action.unreadable").await;
    assert_eq!(recorded.len(), 2);
    assert!(
        recorded[1]["data"]
            .as_str()
            .unwrap()
            .contains("legacy_approve_button")
    );
    // A payload Slack sends that is not JSON Baton can read is acknowledged, not refused.
    let body = form(&[("payload", "{\"type\": \"block_actions\", \"user\": ")]);
    let status = signed(
        &app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await
    .status();
    assert_eq!(status, 200);
    eventually("the unreadable payload recorded", || async {
        app.ledger_of("inbound.unreadable").await.len() == 1
    })
    .await;
}

#[tokio::test]
async fn nul_and_other_control_characters_never_reach_slack() {
    let fake = FakeSlack::start().await;
    let app = slack_app(&fake).await;
    assert_eq!(
        slash(
            &app,
            &fake,
            "UANA0001",
            "/ship 1.0\u{0}\u{1b}\u{202e}beta",
            "T13.1"
        )
        .await,
        200
    );
    let (_, root) = root_post(&fake, "Ship 1.0").await;
    let text = root["text"].as_str().unwrap();
    assert!(text.contains("Ship 1.0beta"), "{text}");
    let everything = fake.calls("chat.postMessage");
    assert!(
        !serde_json::to_string(&everything)
            .unwrap()
            .contains("\\u0000"),
        "a NUL reached Slack"
    );
    assert!(everything.iter().all(|b| !b.to_string().contains('\u{1b}')));
}
