//! Discord end to end, against a fake Discord speaking API v10's REST and gateway wire formats
//! (see `support/fake_discord.rs`): slash commands, message triggers, threads, approvals by
//! user and by role, modals, reconnects, rate limits and command registration.

mod support;

#[path = "support/fake_discord.rs"]
mod fake_discord;

use fake_discord::*;
use serde_json::json;
use support::*;

fn ship() -> String {
    format!(
        r#"
name = "ship"
description = "Ship a release"
title = "Ship {{{{ input.version }}}}"
[[trigger]]
kind = "slash"
command = "ship"
args = [{{ name = "version", required = true, description = "Which version" }}, {{ name = "note", description = "Anything to add" }}]
[[trigger]]
kind = "message"
pattern = 'ship it: (?P<version>\S+)'
[[step]]
id = "gate"
kind = "approval"
approvers = ["discord:{BEN}", "discord:group:{RELEASE_ROLE}"]
message = "Ship {{{{ input.version }}}} to production?"
timeout = "1h"
reject_reason = true
[[step]]
id = "done"
kind = "notify"
needs = ["gate"]
text = "Shipped {{{{ input.version }}}}."
[[step]]
id = "announce"
kind = "notify"
needs = ["gate"]
channel = "releases"
text = "Version {{{{ input.version }}}} is out."
"#
    )
}

async fn discord_app(fake: &FakeDiscord) -> TestApp {
    discord_app_with(fake, vec![("ship.toml", ship())]).await
}

async fn discord_app_with(fake: &FakeDiscord, workflows: Vec<(&'static str, String)>) -> TestApp {
    let app = spawn(Spawn {
        extra_workflows: workflows,
        with_examples: false,
        env: env(fake),
        ..Default::default()
    })
    .await;
    eventually("the gateway session", || async {
        fake.s().socket.is_some()
    })
    .await;
    app
}

fn env(fake: &FakeDiscord) -> Vec<(&'static str, String)> {
    vec![
        ("DISCORD_TOKEN", TOKEN.into()),
        // A bare origin, as for a proxy: Baton adds Discord's `/api/v10/`.
        ("DISCORD_API_URL", fake.base.clone()),
        ("DISCORD_GUILD_IDS", GUILD.into()),
    ]
}

/// Waits for a message in `channel` whose content contains `needle`.
async fn message_with(fake: &FakeDiscord, channel: &str, needle: &str) -> Msg {
    eventually_some(
        &format!("a message with `{needle}` in {channel}"),
        || async {
            fake.messages_in(channel).into_iter().find(|m| {
                m.body["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(needle)
            })
        },
    )
    .await
}

fn content(m: &Msg) -> String {
    m.body["content"].as_str().unwrap_or_default().to_owned()
}

/// Starts `/ship <version>` as ana; returns the run's root message.
async fn start_ship(fake: &FakeDiscord, interaction: &str, version: &str) -> Msg {
    fake.dispatch(
        "INTERACTION_CREATE",
        slash(
            interaction,
            "ship",
            json!([{"name": "version", "type": 3, "value": version}]),
            ANA,
        ),
    );
    message_with(fake, GENERAL, &format!("Ship {version}")).await
}

/// The approval request in a run's thread.
async fn approval_in(fake: &FakeDiscord, root: &Msg) -> Msg {
    message_with(fake, &root.id, "Approval needed").await
}

fn custom_id(m: &Msg, label: &str) -> String {
    m.body["components"][0]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["label"] == label)
        .and_then(|b| b["custom_id"].as_str())
        .unwrap_or_else(|| panic!("no {label} button on {:?}", m.body))
        .to_owned()
}

#[tokio::test]
async fn a_slash_command_runs_to_the_end_with_its_progress_in_a_thread() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let identify = fake.s().identifies[0].clone();
    assert_eq!(identify["token"], TOKEN);
    let intents = identify["intents"].as_u64().unwrap();
    assert_eq!(
        intents,
        1 | 1 << 9 | 1 << 15,
        "guilds, guild messages, message content"
    );

    let root = start_ship(&fake, "800000000000000001", "1.0").await;
    // Answered at once, privately, before the work.
    let callbacks = fake.callbacks("800000000000000001");
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].0["type"], 5, "deferred");
    assert_eq!(callbacks[0].0["data"]["flags"], 64, "private");
    assert!(
        callbacks[0].1 < std::time::Duration::from_secs(3),
        "{:?}",
        callbacks[0].1
    );
    eventually("the reply through the interaction token", || async {
        fake.webhook_calls("tok-800000000000000001")
            .iter()
            .any(|c| {
                c.method == "PATCH"
                    && c.path.ends_with("messages/@original")
                    && c.body["content"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("Started run #1")
            })
    })
    .await;
    assert!(
        content(&root).contains(&format!("<@{ANA}>")),
        "{}",
        content(&root)
    );
    assert_eq!(custom_id(&root, "Cancel"), "cancel:1");
    assert_eq!(
        root.body["enforce_nonce"], true,
        "posts carry an idempotency key"
    );
    assert!(root.body["nonce"].as_str().is_some_and(|n| n.len() <= 25));

    // The thread is started from the root message, and the approval goes in it.
    let approval = approval_in(&fake, &root).await;
    assert_eq!(fake.s().threads.get(&root.id), Some(&GENERAL.to_owned()));
    let thread_call = &fake.calls("POST", &format!("messages/{}/threads", root.id))[0];
    assert_eq!(thread_call.body["name"], "Run #1");
    let text = content(&approval);
    assert!(
        text.contains(&format!("<@{BEN}>")) && text.contains(&format!("<@&{RELEASE_ROLE}>")),
        "{text}"
    );
    assert_eq!(approval.body["allowed_mentions"]["users"], json!([BEN]));
    assert_eq!(
        approval.body["allowed_mentions"]["roles"],
        json!([RELEASE_ROLE])
    );
    let buttons = &approval.body["components"][0]["components"];
    assert_eq!(buttons[0]["label"], "Approve");
    assert_eq!(buttons[0]["style"], 3, "success");
    assert_eq!(buttons[1]["label"], "Reject");
    assert_eq!(buttons[1]["style"], 4, "danger");
    assert!(
        approval.body["embeds"][0]["description"]
            .as_str()
            .unwrap()
            .contains("Ship 1.0 to production?")
    );

    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000002",
            &custom_id(&approval, "Approve"),
            BEN,
            &[],
            &root.id,
        ),
    );
    message_with(&fake, &root.id, "Shipped 1.0.").await;
    // The notify step with a channel name posts in that channel, resolved in the guild.
    message_with(&fake, RELEASES, "Version 1.0 is out.").await;
    assert_eq!(
        fake.callbacks("800000000000000002")[0].0,
        json!({"type": 6})
    );
    eventually(
        "the approval shows its decision and loses its buttons",
        || async {
            let m = fake.message(&approval.id).unwrap();
            content(&m).contains(&format!("Approved by <@{BEN}>"))
                && m.body["components"] == json!([])
        },
    )
    .await;
    app.wait_for_status(1, "succeeded").await;
    eventually("the root shows the outcome", || async {
        content(&fake.message(&root.id).unwrap()).contains("Status: **done**")
    })
    .await;
    assert_eq!(app.ledger_of("post.failed").await.len(), 0);
}

#[tokio::test]
async fn a_message_pattern_starts_one_run_and_bots_and_the_bot_itself_are_ignored() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    fake.dispatch(
        "MESSAGE_CREATE",
        message_create("900000000000000001", GENERAL, BOT_ID, "ship it: 0.1", true),
    );
    fake.dispatch(
        "MESSAGE_CREATE",
        message_create(
            "900000000000000002",
            GENERAL,
            OTHER_BOT,
            "ship it: 0.2",
            true,
        ),
    );
    fake.dispatch(
        "MESSAGE_CREATE",
        message_create("900000000000000003", GENERAL, ANA, "ship it: 2.0", false),
    );
    // The same message again, as after a resume.
    fake.dispatch(
        "MESSAGE_CREATE",
        message_create("900000000000000003", GENERAL, ANA, "ship it: 2.0", false),
    );
    message_with(&fake, GENERAL, "Ship 2.0").await;
    app.wait_for_status(1, "waiting_approval").await;
    // Give a second run every chance to appear.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.ledger_of("run.started").await.len(), 1);
    let roots: Vec<Msg> = fake.messages_in(GENERAL);
    assert_eq!(roots.len(), 1, "one root message: {roots:?}");
}

#[tokio::test]
async fn approvers_may_be_a_role_checked_at_the_click_and_others_get_a_private_refusal() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let root = start_ship(&fake, "800000000000000011", "3.0").await;
    let approval = approval_in(&fake, &root).await;
    let approve = custom_id(&approval, "Approve");

    // Cy has no role yet: refused privately, nothing changes.
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000012", &approve, CY, &[], &root.id),
    );
    eventually("a private refusal", || async {
        fake.webhook_calls("tok-800000000000000012")
            .iter()
            .any(|c| {
                c.method == "POST"
                    && c.body["flags"] == 64
                    && c.body["content"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("not an approver")
            })
    })
    .await;
    assert_eq!(fake.message(&approval.id).unwrap().edits, 0);
    assert_eq!(app.run_status(1).await, "waiting_approval");

    // With the role (as Discord sends it in the click's member), Cy may decide.
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000013",
            &approve,
            CY,
            &[RELEASE_ROLE],
            &root.id,
        ),
    );
    app.wait_for_status(1, "succeeded").await;
    let decided = app.ledger_of("approval.decided").await;
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["actor"], format!("discord:{CY}"));
    assert_eq!(app.ledger_of("approval.refused").await.len(), 1);
}

#[tokio::test]
async fn the_same_click_delivered_twice_and_two_clicks_at_once_decide_once() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let root = start_ship(&fake, "800000000000000021", "4.0").await;
    let approval = approval_in(&fake, &root).await;
    let approve = custom_id(&approval, "Approve");
    let same = click("800000000000000022", &approve, BEN, &[], &root.id);
    fake.dispatch("INTERACTION_CREATE", same.clone());
    fake.dispatch("INTERACTION_CREATE", same);
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000023",
            &approve,
            CY,
            &[RELEASE_ROLE],
            &root.id,
        ),
    );
    app.wait_for_status(1, "succeeded").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.ledger_of("approval.decided").await.len(), 1);
    assert_eq!(
        fake.messages_in(&root.id)
            .iter()
            .filter(|m| content(m).contains("Shipped"))
            .count(),
        1
    );
}

#[tokio::test]
async fn reject_asks_for_the_reason_in_a_modal_and_the_submission_decides() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let root = start_ship(&fake, "800000000000000031", "5.0").await;
    let approval = approval_in(&fake, &root).await;
    let reject = custom_id(&approval, "Reject");
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000032", &reject, BEN, &[], &root.id),
    );
    let modal = eventually_some("the modal", || async {
        fake.callbacks("800000000000000032")
            .into_iter()
            .map(|c| c.0)
            .find(|b| b["type"] == 9)
    })
    .await;
    let modal_id = modal["data"]["custom_id"].as_str().unwrap().to_owned();
    assert_eq!(
        modal["data"]["components"][0]["components"][0]["custom_id"],
        "reason"
    );
    assert_eq!(
        app.run_status(1).await,
        "waiting_approval",
        "opening the modal decides nothing"
    );
    fake.dispatch(
        "INTERACTION_CREATE",
        modal_submit(
            "800000000000000033",
            &modal_id,
            "not on a Friday",
            BEN,
            &root.id,
        ),
    );
    app.wait_for_status(1, "rejected").await;
    eventually("the reason on the approval", || async {
        content(&fake.message(&approval.id).unwrap()).contains(&format!("Rejected by <@{BEN}>"))
            && content(&fake.message(&approval.id).unwrap()).contains("not on a Friday")
    })
    .await;
}

#[tokio::test]
async fn a_reconnect_mid_run_resumes_the_session_and_loses_nothing() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let root = start_ship(&fake, "800000000000000041", "6.0").await;
    let approval = approval_in(&fake, &root).await;
    // Discord asks for a reconnect; the click happens while Baton is away.
    fake.reconnect();
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000042",
            &custom_id(&approval, "Approve"),
            BEN,
            &[],
            &root.id,
        ),
    );
    eventually("a RESUME", || async { !fake.s().resumes.is_empty() }).await;
    let resume = fake.s().resumes[0].clone();
    assert_eq!(resume["session_id"], "sess-1");
    assert_eq!(resume["token"], TOKEN);
    app.wait_for_status(1, "succeeded").await;
    assert_eq!(
        fake.s().identifies.len(),
        1,
        "resumed, not identified again"
    );

    // A dropped connection without a word resumes too, and the session replay does not
    // decide twice.
    fake.close(4000);
    eventually("a second RESUME", || async { fake.s().resumes.len() >= 2 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.ledger_of("approval.decided").await.len(), 1);

    // An invalid session starts a new one with IDENTIFY.
    fake.send_op(json!({"op": 9, "d": false}));
    eventually("a new IDENTIFY", || async {
        fake.s().identifies.len() == 2
    })
    .await;
}

#[tokio::test]
async fn heartbeats_are_sent_and_a_connection_without_acks_is_replaced() {
    let fake = FakeDiscord::start().await;
    fake.s().heartbeat_interval = 150;
    let _app = discord_app(&fake).await;
    eventually("heartbeats", || async { fake.s().heartbeats >= 2 }).await;
    fake.s().no_acks = true;
    eventually("a reconnect after a missing ACK", || async {
        !fake.s().resumes.is_empty()
    })
    .await;
    fake.s().no_acks = false;
    let after = fake.s().heartbeats;
    eventually("heartbeats on the new connection", || async {
        fake.s().heartbeats > after + 1
    })
    .await;
}

#[tokio::test]
async fn a_429_storm_delays_posts_without_losing_or_reordering_any() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    fake.s().rate_limit = 4;
    fake.dispatch(
        "INTERACTION_CREATE",
        slash(
            "800000000000000051",
            "ship",
            json!([{"name": "version", "type": 3, "value": "7.0"}]),
            ANA,
        ),
    );
    // Each 429 says wait 1.5 s; the outbox waits on the clock.
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        app.advance(chrono::Duration::seconds(2));
    }
    let root = message_with(&fake, GENERAL, "Ship 7.0").await;
    approval_in(&fake, &root).await;
    let ledger = app.ledger_of("post.failed").await;
    assert!(ledger.is_empty(), "{ledger:?}");
    // Posts to the channel came in order: the root first, and no 429'd post was lost.
    let posts: Vec<_> = fake
        .calls("POST", "/messages")
        .into_iter()
        .filter(|c| c.path.ends_with("/messages"))
        .collect();
    assert!(
        posts[..5]
            .iter()
            .all(|c| c.path == format!("channels/{GENERAL}/messages")),
        "the root is retried before anything goes in its thread"
    );
    let rate_limited = posts.len() - fake.s().messages.len();
    assert_eq!(rate_limited, 4, "every 429 was retried: {posts:?}");
}

#[tokio::test]
async fn commands_are_registered_once_and_not_again_when_unchanged() {
    let fake = FakeDiscord::start().await;
    let mut app = discord_app(&fake).await;
    let route = format!("applications/{APP_ID}/guilds/{GUILD}/commands");
    let puts = fake.calls("PUT", &route);
    assert_eq!(puts.len(), 1);
    let body = &puts[0].body;
    let ship = body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ship")
        .unwrap();
    assert_eq!(ship["description"], "Ship a release");
    let version = &ship["options"][0];
    assert_eq!(
        (
            &version["type"],
            &version["name"],
            &version["description"],
            &version["required"]
        ),
        (
            &json!(3),
            &json!("version"),
            &json!("Which version"),
            &json!(true)
        )
    );
    assert_eq!(ship["options"][1]["required"], false);
    let baton = body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "baton")
        .unwrap();
    assert_eq!(baton["options"][0]["name"], "cancel");
    assert_eq!(baton["options"][0]["options"][0]["type"], 4);
    app.restart().await;
    eventually("the new gateway session", || async {
        fake.s().identifies.len() == 2
    })
    .await;
    eventually("the commands read again", || async {
        fake.calls("GET", &route).len() == 2
    })
    .await;
    assert_eq!(
        fake.calls("PUT", &route).len(),
        1,
        "unchanged commands are not written again"
    );
}

#[tokio::test]
async fn typed_options_reach_the_workflow_and_bad_ones_get_the_usage_privately() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    fake.dispatch(
        "INTERACTION_CREATE",
        slash(
            "800000000000000061",
            "ship",
            json!([{"name": "note", "type": 3, "value": "with spaces in it"}]),
            ANA,
        ),
    );
    eventually("the usage, privately", || async {
        fake.webhook_calls("tok-800000000000000061")
            .iter()
            .any(|c| {
                c.body["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Missing argument `version`")
            })
    })
    .await;
    fake.dispatch("INTERACTION_CREATE", slash("800000000000000062", "baton", json!([{"name": "cancel", "type": 1, "options": [{"name": "run", "type": 4, "value": 41}]}]), ANA));
    eventually("the cancel answer", || async {
        !fake.webhook_calls("tok-800000000000000062").is_empty()
    })
    .await;
    assert!(app.ledger_of("run.started").await.is_empty());
}

#[tokio::test]
async fn an_unknown_channel_or_missing_access_is_reported_in_the_run_and_the_ledger() {
    let fake = FakeDiscord::start().await;
    let wf = ship().replace("channel = \"releases\"", "channel = \"nowhere\"");
    let app = discord_app_with(&fake, vec![("ship.toml", wf)]).await;
    let root = start_ship(&fake, "800000000000000071", "8.0").await;
    let approval = approval_in(&fake, &root).await;
    fake.s().forbidden_channels.insert(root.id.clone());
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000072",
            &custom_id(&approval, "Approve"),
            BEN,
            &[],
            &root.id,
        ),
    );
    let failed = eventually_some("post.failed entries", || async {
        let l = app.ledger_of("post.failed").await;
        (l.len() >= 2).then_some(l)
    })
    .await;
    let text = serde_json::to_string(&failed).unwrap();
    assert!(text.contains("channel #nowhere not found"), "{text}");
    assert!(text.contains("Missing Access"), "{text}");
}

/// Runs the app to its start-up error.
async fn start_up_error(fake: &FakeDiscord, token: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let commands = dir.path().join("commands");
    std::fs::create_dir_all(&commands).unwrap();
    std::fs::write(commands.join("ship.toml"), ship()).unwrap();
    let env: std::collections::HashMap<String, String> = [
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        ),
        ("BATON_COMMANDS_DIR", commands.display().to_string()),
        ("DISCORD_TOKEN", token.to_owned()),
        ("DISCORD_API_URL", fake.base.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = baton::config::Settings::from_lookup(move |k| env.get(k).cloned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock: std::sync::Arc<dyn baton::core::clock::Clock> =
        std::sync::Arc::new(baton::core::clock::ManualClock::new(start_time()));
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        baton::app::run(settings, listener, clock, std::future::pending()),
    )
    .await
    .expect("start-up ends");
    format!("{:#}", result.expect_err("start-up fails"))
}

#[tokio::test]
async fn a_bad_token_or_a_missing_intent_stops_start_up_with_what_to_change() {
    let fake = FakeDiscord::start().await;
    let e = start_up_error(&fake, "not-the-token").await;
    assert!(
        e.contains("DISCORD_TOKEN") && e.contains("Reset Token"),
        "{e}"
    );
    fake.s().close_on_identify = Some(4014);
    let e = start_up_error(&fake, TOKEN).await;
    assert!(
        e.contains("MESSAGE CONTENT INTENT") && e.contains("Developer Portal"),
        "{e}"
    );
}

#[tokio::test]
async fn the_bot_mention_triggers_and_messages_in_threads_need_in_threads() {
    let fake = FakeDiscord::start().await;
    let wf = r#"
name = "ask"
description = "Ask Baton"
[[trigger]]
kind = "message"
mention = true
[[step]]
id = "hi"
kind = "notify"
text = "Hello {{ input.text }}"
"#;
    let app = discord_app_with(&fake, vec![("ask.toml", wf.into())]).await;
    // The intent for message content is not asked for without a pattern.
    assert_eq!(fake.s().identifies[0]["intents"], json!(1 | 1 << 9));
    let mut m = message_create(
        "900000000000000011",
        GENERAL,
        ANA,
        &format!("<@{BOT_ID}> status?"),
        false,
    );
    m["mentions"] = json!([{"id": BOT_ID, "username": "baton", "bot": true}]);
    fake.dispatch("MESSAGE_CREATE", m);
    let root = message_with(&fake, GENERAL, "Ask Baton").await;
    message_with(&fake, &root.id, "Hello").await;
    // A mention inside the run's thread starts nothing (no `in_threads`).
    let mut m = message_create(
        "900000000000000012",
        &root.id,
        ANA,
        &format!("<@{BOT_ID}> again"),
        false,
    );
    m["mentions"] = json!([{"id": BOT_ID, "username": "baton", "bot": true}]);
    fake.dispatch("MESSAGE_CREATE", m);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(app.ledger_of("run.started").await.len(), 1);
}

#[tokio::test]
async fn an_empty_rate_limit_bucket_holds_the_channel_back_without_asking_or_failing() {
    let fake = FakeDiscord::start().await;
    let wf = r#"
name = "two"
description = "Two posts"
[[trigger]]
kind = "slash"
command = "two"
[[step]]
id = "first"
kind = "notify"
channel = "general"
text = "first post"
[[step]]
id = "second"
kind = "notify"
needs = ["first"]
channel = "general"
text = "second post"
"#;
    let app = discord_app_with(&fake, vec![("two.toml", wf.into())]).await;
    fake.s().empty_bucket_for = Some("3.5");
    fake.dispatch(
        "INTERACTION_CREATE",
        slash("800000000000000081", "two", json!([]), ANA),
    );
    message_with(&fake, GENERAL, "Two posts").await;
    // Discord said the bucket is empty for 3.5 s: Baton does not ask again before that.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let asked = |fake: &FakeDiscord| {
        fake.calls("POST", &format!("channels/{GENERAL}/messages"))
            .iter()
            .filter(|c| c.path.ends_with("/messages"))
            .count()
    };
    assert_eq!(asked(&fake), 1);
    app.advance(chrono::Duration::seconds(4));
    message_with(&fake, GENERAL, "first post").await;
    app.advance(chrono::Duration::seconds(4));
    message_with(&fake, GENERAL, "second post").await;
    assert_eq!(
        asked(&fake),
        fake.messages_in(GENERAL).len(),
        "every post went out on its first try"
    );
    assert!(app.ledger_of("post.failed").await.is_empty());
}

#[tokio::test]
async fn the_daily_digest_posts_to_its_channel_by_name_on_discord() {
    let fake = FakeDiscord::start().await;
    // The narrative's agent lives in agents/; this test is about where the digest goes.
    let digest = std::fs::read_to_string(example_commands().join("daily-digest.toml"))
        .unwrap()
        .replace("narrative = \"analyst\"", "");
    let app = discord_app_with(
        &fake,
        vec![("daily-digest.toml", digest), ("ship.toml", ship())],
    )
    .await;
    // 09:00 in Berlin is 08:00 UTC in March; the test clock starts at 07:00 UTC.
    app.advance(chrono::Duration::minutes(61));
    let digest = message_with(&fake, GENERAL, "**Daily digest**").await;
    assert!(
        content(&digest).contains("Waiting for approval: none"),
        "{}",
        content(&digest)
    );
    assert_eq!(app.ledger_of("schedule.fired").await.len(), 1);
}

#[tokio::test]
async fn a_role_named_in_the_workflow_is_mentioned_as_the_role_and_its_members_may_decide() {
    let fake = FakeDiscord::start().await;
    let wf = ship().replace(
        &format!(r#"approvers = ["discord:{BEN}", "discord:group:{RELEASE_ROLE}"]"#),
        r#"approvers = ["discord:group:Release Managers"]"#,
    );
    let app = discord_app_with(&fake, vec![("ship.toml", wf)]).await;
    let root = start_ship(&fake, "800000000000000091", "9.0").await;
    let approval = approval_in(&fake, &root).await;
    assert!(
        content(&approval).contains(&format!("<@&{RELEASE_ROLE}>")),
        "{}",
        content(&approval)
    );
    assert_eq!(
        approval.body["allowed_mentions"]["roles"],
        json!([RELEASE_ROLE])
    );
    let approve = custom_id(&approval, "Approve");
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000092", &approve, BEN, &[], &root.id),
    );
    eventually("a private refusal for someone without the role", || async {
        !fake.webhook_calls("tok-800000000000000092").is_empty()
    })
    .await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000093",
            &approve,
            CY,
            &[RELEASE_ROLE],
            &root.id,
        ),
    );
    app.wait_for_status(1, "succeeded").await;
}

#[tokio::test]
async fn an_answer_after_the_interaction_token_expired_goes_to_the_channel() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    fake.s().callback_delay = std::time::Duration::from_millis(600);
    fake.dispatch(
        "INTERACTION_CREATE",
        slash("800000000000000101", "ship", json!([]), ANA),
    );
    // While Discord takes its time with the acknowledgement, a quarter of an hour passes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    app.advance(chrono::Duration::minutes(16));
    let answer = message_with(&fake, GENERAL, "Missing argument `version`").await;
    assert!(
        content(&answer).starts_with(&format!("<@{ANA}>")),
        "{}",
        content(&answer)
    );
    assert_eq!(answer.body["allowed_mentions"]["users"], json!([ANA]));
    assert!(
        fake.webhook_calls("tok-800000000000000101").is_empty(),
        "the expired token is not used"
    );
}

#[tokio::test]
async fn resumes_go_to_the_resume_url_that_ready_gave() {
    let fake = FakeDiscord::start().await;
    let _app = discord_app(&fake).await;
    assert_eq!(fake.s().resume_connections, 0);
    fake.close(4000);
    eventually("a RESUME", || async { !fake.s().resumes.is_empty() }).await;
    assert_eq!(fake.s().resume_connections, 1);
    // Closing right after HELLO, again and again, does not make Baton hammer the gateway.
    fake.s().close_on_identify = Some(4000);
    fake.send_op(json!({"op": 9, "d": false}));
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let identifies = fake.s().identifies.len();
    assert!(identifies <= 8, "{identifies} IDENTIFYs in 4 s");
}

#[tokio::test]
async fn without_guild_ids_commands_are_global_and_channels_resolve_in_the_guilds_the_bot_is_in() {
    let fake = FakeDiscord::start().await;
    let app = spawn(Spawn {
        extra_workflows: vec![("ship.toml", ship())],
        with_examples: false,
        env: vec![
            ("DISCORD_TOKEN", TOKEN.into()),
            ("DISCORD_API_URL", format!("{}/api/v10", fake.base)),
        ],
        ..Default::default()
    })
    .await;
    assert_eq!(
        fake.calls("PUT", &format!("applications/{APP_ID}/commands"))
            .len(),
        1
    );
    assert!(fake.calls("PUT", "/guilds/").is_empty());
    // The guild came from READY; `releases` is found in it.
    let root = start_ship(&fake, "800000000000000111", "11.0").await;
    let approval = approval_in(&fake, &root).await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000112",
            &custom_id(&approval, "Approve"),
            BEN,
            &[],
            &root.id,
        ),
    );
    message_with(&fake, RELEASES, "Version 11.0 is out.").await;
    app.wait_for_status(1, "succeeded").await;
}

#[tokio::test]
async fn commands_from_another_server_or_a_user_install_start_nothing() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let options = json!([{"name": "version", "type": 3, "value": "12.0"}]);
    let mut elsewhere = slash("800000000000000121", "ship", options.clone(), ANA);
    elsewhere["guild_id"] = json!("399999999999999999");
    fake.dispatch("INTERACTION_CREATE", elsewhere);
    let mut user_install = slash("800000000000000122", "ship", options, ANA);
    user_install["authorizing_integration_owners"] = json!({"1": ANA});
    fake.dispatch("INTERACTION_CREATE", user_install);
    for token in ["tok-800000000000000121", "tok-800000000000000122"] {
        eventually("a private answer", || async {
            fake.webhook_calls(token).iter().any(|c| {
                c.body["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("set up for")
            })
        })
        .await;
    }
    assert!(app.ledger_of("run.started").await.is_empty());
    assert!(fake.messages_in(GENERAL).is_empty());
}

#[tokio::test]
async fn a_message_without_a_guild_id_counts_when_its_channel_is_in_a_listed_guild() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    let mut m = message_create("900000000000000021", GENERAL, ANA, "ship it: 13.0", false);
    m.as_object_mut().unwrap().remove("guild_id");
    fake.dispatch("MESSAGE_CREATE", m);
    message_with(&fake, GENERAL, "Ship 13.0").await;
    let mut m = message_create(
        "900000000000000022",
        "299999999999999999",
        ANA,
        "ship it: 14.0",
        false,
    );
    m.as_object_mut().unwrap().remove("guild_id");
    fake.dispatch("MESSAGE_CREATE", m);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        app.ledger_of("run.started").await.len(),
        1,
        "a channel outside the guilds counts for nothing"
    );
}

/// Waits for the private answer to interaction `id` that contains `text`.
async fn private_answer(fake: &FakeDiscord, id: &str, text: &str) {
    eventually(&format!("the private answer `{text}`"), || async {
        fake.webhook_calls(&format!("tok-{id}")).iter().any(|c| {
            c.body["flags"] == 64
                && c.body["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(text)
        })
    })
    .await;
}

#[tokio::test]
async fn on_discord_a_quorum_counts_each_person_once_and_the_ladder_escalates_to_a_role_in_a_channel()
 {
    const DEE: &str = "400000000000000004";
    let fake = FakeDiscord::start().await;
    let wf = ship().replace(
        &format!("approvers = [\"discord:{BEN}\", \"discord:group:{RELEASE_ROLE}\"]"),
        &format!(
            "approvers = [\"discord:{BEN}\", \"discord:{CY}\"]\nquorum = 2\nremind_after = \"30m\"\nescalate_after = \"45m\"\nescalate_to = {{ channel = \"releases\", approvers = [\"discord:group:{RELEASE_ROLE}\"] }}"
        ),
    );
    let app = discord_app_with(&fake, vec![("ship.toml", wf)]).await;
    let root = start_ship(&fake, "800000000000000101", "7.0").await;
    let approval = approval_in(&fake, &root).await;
    assert!(
        content(&approval).contains("Needs 2 distinct approvals: 0 so far"),
        "{}",
        content(&approval)
    );
    let approve = custom_id(&approval, "Approve");

    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000102", &approve, ANA, &[], &root.id),
    );
    private_answer(&fake, "800000000000000102", "not an approver").await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000103", &approve, BEN, &[], &root.id),
    );
    private_answer(
        &fake,
        "800000000000000103",
        "Your approval is counted: 1 of 2.",
    )
    .await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000104", &approve, BEN, &[], &root.id),
    );
    private_answer(&fake, "800000000000000104", "each person counts once").await;
    eventually("the request to show the vote", || async {
        fake.message(&approval.id)
            .is_some_and(|m| content(&m).contains(&format!("1 so far (<@{BEN}>)")))
    })
    .await;

    app.advance(chrono::Duration::minutes(31));
    let reminder = message_with(&fake, &root.id, "Reminder: step **gate**").await;
    assert!(
        content(&reminder).contains(&format!("<@{CY}>")),
        "{}",
        content(&reminder)
    );

    app.advance(chrono::Duration::minutes(15));
    let escalated = message_with(&fake, RELEASES, "Escalated").await;
    assert!(
        content(&escalated).contains(&format!("<@&{RELEASE_ROLE}>")),
        "{}",
        content(&escalated)
    );
    let approve_there = custom_id(&escalated, "Approve");
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000105",
            &approve_there,
            DEE,
            &[RELEASE_ROLE],
            RELEASES,
        ),
    );
    app.wait_for_status(1, "succeeded").await;
    eventually("both copies to show the outcome", || async {
        let done = |id: &str| {
            fake.message(id)
                .is_some_and(|m| content(&m).contains(&format!("Approved by <@{BEN}>, <@{DEE}>")))
        };
        done(&approval.id) && done(&escalated.id)
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
async fn on_discord_only_holders_of_a_role_may_start_a_workflow_and_others_are_told_privately() {
    let fake = FakeDiscord::start().await;
    let wf = ship().replace(
        "[[step]]\nid = \"gate\"",
        &format!(
            "[permissions]\nusers = [\"discord:group:{RELEASE_ROLE}\"]\n[[step]]\nid = \"gate\""
        ),
    );
    let app = discord_app_with(&fake, vec![("ship.toml", wf)]).await;
    let options = json!([{"name": "version", "type": 3, "value": "8.0"}]);
    fake.dispatch(
        "INTERACTION_CREATE",
        slash("800000000000000201", "ship", options.clone(), ANA),
    );
    eventually("the private refusal", || async {
        fake.webhook_calls("tok-800000000000000201")
            .iter()
            .any(|c| {
                c.body["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("You are not allowed to start /ship here.")
            })
    })
    .await;
    let refused = app.ledger_of("trigger.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["actor"], format!("discord:{ANA}"));
    assert!(fake.messages_in(GENERAL).is_empty(), "nothing started");

    fake.dispatch(
        "INTERACTION_CREATE",
        slash_with_roles("800000000000000202", "ship", options, CY, &[RELEASE_ROLE]),
    );
    message_with(&fake, GENERAL, "Ship 8.0").await;
    assert_eq!(app.ledger_of("run.started").await.len(), 1);
}

#[tokio::test]
async fn on_discord_a_stalled_run_is_flagged_in_its_thread_and_retry_resumes_it() {
    let fake = FakeDiscord::start().await;
    let wf = stalling_workflow(&[&format!("discord:{ANA}")]).await;
    let app = discord_app_with(&fake, vec![("check.toml", wf)]).await;
    fake.dispatch(
        "INTERACTION_CREATE",
        slash("800000000000000301", "check", json!([]), ANA),
    );
    let root = message_with(&fake, GENERAL, "Check a service").await;
    app.advance(chrono::Duration::minutes(11));
    let alert = message_with(&fake, &root.id, "**Stalled**: run 1").await;
    let retry = custom_id(&alert, "Retry");
    assert_eq!(retry, "retry:1");
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000302", &retry, BEN, &[], &root.id),
    );
    private_answer(&fake, "800000000000000302", "You may not retry run 1").await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000303", &retry, ANA, &[], &root.id),
    );
    app.wait_for_status(1, "succeeded").await;
    eventually("the alert to say who retried", || async {
        fake.message(&alert.id)
            .is_some_and(|m| content(&m).contains(&format!("Retried by <@{ANA}>")))
    })
    .await;
    assert_eq!(app.ledger_of("run.retried").await.len(), 1);
}

#[tokio::test]
async fn on_discord_an_edited_payload_is_asked_about_afresh_and_a_click_on_the_old_copy_is_refused()
{
    let fake = FakeDiscord::start().await;
    let wf = format!(
        r#"
name = "welcome"
description = "Welcome a customer"
[[trigger]]
kind = "slash"
command = "welcome"
args = [{{ name = "who", required = true }}]
[[step]]
id = "gate"
kind = "approval"
approvers = ["discord:{BEN}", "discord:{CY}"]
message = "Send this email?"
payload = "Dear {{{{ input.who }}}}, welcome."
editable = true
[[step]]
id = "send"
kind = "notify"
needs = ["gate"]
text = "{{{{ steps.gate.output.payload }}}}"
"#
    );
    let app = discord_app_with(&fake, vec![("welcome.toml", wf)]).await;
    fake.dispatch(
        "INTERACTION_CREATE",
        slash(
            "800000000000000401",
            "welcome",
            json!([{"name": "who", "type": 3, "value": "Jane"}]),
            ANA,
        ),
    );
    let root = message_with(&fake, GENERAL, "Welcome a customer").await;
    let first = approval_in(&fake, &root).await;
    let old_approve = custom_id(&first, "Approve");
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000402",
            &custom_id(&first, "Edit"),
            BEN,
            &[],
            &root.id,
        ),
    );
    let modal = eventually_some("the edit modal", || async {
        fake.callbacks("800000000000000402")
            .into_iter()
            .map(|c| c.0)
            .find(|b| b["type"] == 9)
    })
    .await;
    let input = &modal["data"]["components"][0]["components"][0];
    assert_eq!(input["value"], "Dear Jane, welcome.");
    assert_eq!(input["max_length"], 4000);
    fake.dispatch(
        "INTERACTION_CREATE",
        modal_submit(
            "800000000000000403",
            modal["data"]["custom_id"].as_str().unwrap(),
            "Dear Jane, welcome aboard!",
            BEN,
            &root.id,
        ),
    );
    let fresh = message_with(&fake, &root.id, "Payload edited by").await;

    // cy clicks Approve on the first copy: refused, and asked afresh.
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000404", &old_approve, CY, &[], &root.id),
    );
    private_answer(
        &fake,
        "800000000000000404",
        "This request changed since you saw it",
    )
    .await;
    // ben edited it, so his approval does not count.
    let approve = custom_id(&fresh, "Approve");
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000405", &approve, BEN, &[], &root.id),
    );
    private_answer(&fake, "800000000000000405", "You edited this payload").await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000406", &approve, CY, &[], &root.id),
    );
    app.wait_for_status(1, "succeeded").await;
    eventually("the edited text sent", || async {
        fake.messages_in(&root.id)
            .iter()
            .any(|m| content(m).starts_with("Dear Jane, welcome aboard!"))
    })
    .await;
    assert_eq!(app.ledger_of("approval.edited").await.len(), 1);
}

#[tokio::test]
async fn on_discord_a_message_that_cannot_be_delivered_is_flagged_in_the_thread_and_retry_sends_it_again()
 {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    fake.s().forbidden_channels.insert(RELEASES.into());
    let root = start_ship(&fake, "800000000000000501", "9.0").await;
    let approval = approval_in(&fake, &root).await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000502",
            &custom_id(&approval, "Approve"),
            BEN,
            &[],
            &root.id,
        ),
    );
    let alert = message_with(&fake, &root.id, "**Delivery failed**").await;
    assert!(
        content(&alert).contains("to #releases"),
        "{}",
        content(&alert)
    );
    let retry = custom_id(&alert, "Retry");

    fake.s().forbidden_channels.clear();
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000503", &retry, ANA, &[], &root.id),
    );
    message_with(&fake, RELEASES, "Version 9.0 is out.").await;
    assert_eq!(app.ledger_of("run.retried").await.len(), 1);
}

#[tokio::test]
async fn on_discord_the_members_of_a_channel_are_those_who_can_see_it() {
    let fake = FakeDiscord::start().await;
    let wf = ship().replace(
        &format!("approvers = [\"discord:{BEN}\", \"discord:group:{RELEASE_ROLE}\"]"),
        "approvers = [\"channel:release-room\"]\nquorum = 2",
    );
    let app = discord_app_with(&fake, vec![("ship.toml", wf)]).await;
    let root = start_ship(&fake, "800000000000000601", "10.0").await;
    let approval = approval_in(&fake, &root).await;
    assert!(
        content(&approval).contains("Approvers: members of #release-room"),
        "{}",
        content(&approval)
    );
    let approve = custom_id(&approval, "Approve");
    // #release-room is closed to @everyone and open to the release role.
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000602", &approve, BEN, &[], &root.id),
    );
    private_answer(&fake, "800000000000000602", "not an approver").await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000603",
            &approve,
            CY,
            &[RELEASE_ROLE],
            &root.id,
        ),
    );
    private_answer(
        &fake,
        "800000000000000603",
        "Your approval is counted: 1 of 2.",
    )
    .await;
    // The guild's owner sees every channel, whatever its overwrites say.
    fake.dispatch(
        "INTERACTION_CREATE",
        click("800000000000000604", &approve, OWNER, &[], &root.id),
    );
    app.wait_for_status(1, "succeeded").await;
}

#[tokio::test]
async fn on_discord_a_condition_skips_the_approval_and_a_reminder_fires_once_across_a_restart() {
    let fake = FakeDiscord::start().await;
    let wf = ship().replace(
        "timeout = \"1h\"\nreject_reason = true",
        "timeout = \"4h\"\nreject_reason = true\nwhen = \"input.version != 'dev'\"\nremind_after = \"30m\"",
    );
    let mut app = discord_app_with(&fake, vec![("ship.toml", wf)]).await;
    let root = start_ship(&fake, "800000000000000701", "dev").await;
    app.wait_for_status(1, "succeeded").await;
    message_with(&fake, &root.id, "needs no approval in this run").await;

    let root = start_ship(&fake, "800000000000000702", "2.0").await;
    approval_in(&fake, &root).await;
    app.stop().await;
    app.start().await;
    eventually("the gateway session again", || async {
        fake.s().socket.is_some()
    })
    .await;
    app.advance(chrono::Duration::minutes(31));
    message_with(&fake, &root.id, "Reminder: step **gate**").await;
    app.advance(chrono::Duration::hours(2));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let reminders = fake
        .messages_in(&root.id)
        .iter()
        .filter(|m| content(m).contains("Reminder"))
        .count();
    assert_eq!(reminders, 1, "a rung fires once");
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

fn start_chain(fake: &FakeDiscord, interaction: &str, n: u32) {
    fake.dispatch(
        "INTERACTION_CREATE",
        slash(
            interaction,
            "chain",
            json!([{"name": "n", "type": 3, "value": n.to_string()}]),
            ANA,
        ),
    );
}

/// Everything Baton posted or edited in channels and threads, as text.
fn everything_said(fake: &FakeDiscord) -> Vec<String> {
    fake.s()
        .calls
        .iter()
        .filter(|c| c.path.starts_with("channels/") && c.path.contains("/messages"))
        .map(|c| c.body.to_string())
        .collect()
}

#[tokio::test]
async fn a_hundred_429s_in_a_row_on_a_channel_delay_every_message_of_every_run_and_lose_none() {
    let fake = FakeDiscord::start().await;
    let app = discord_app_with(&fake, vec![("chain.toml", CHAIN.into())]).await;
    {
        let mut s = fake.s();
        s.clock = Some(app.clock.clone());
        s.rate_limit = 100;
        s.retry_after = Some(1.0);
    }
    for n in 1..=3u32 {
        start_chain(&fake, &format!("8000000000000009{n:02}"), n);
    }
    eventually("every run's summary through the storm", || async {
        app.advance(chrono::Duration::seconds(1));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let s = fake.s();
        s.rate_limit == 0
            && (1..=3).all(|n| {
                s.messages.iter().any(|m| {
                    m.body["content"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&format!("Run {n} **done**"))
                })
            })
    })
    .await;
    for n in 1..=3 {
        let roots: Vec<Msg> = fake
            .messages_in(GENERAL)
            .into_iter()
            .filter(|m| content(m).contains(&format!("Chain {n}")))
            .collect();
        assert_eq!(roots.len(), 1, "one root for run {n}");
        let notes: Vec<String> = fake
            .messages_in(&roots[0].id)
            .iter()
            .map(content)
            .filter(|t| t.starts_with("note "))
            .collect();
        assert_eq!(
            notes,
            vec![
                format!("note A of {n}"),
                format!("note B of {n}"),
                format!("note C of {n}")
            ],
            "each note once, in order"
        );
    }
    let said = everything_said(&fake);
    assert!(
        !said.iter().any(|t| t.contains("Delivery")),
        "no alert for a rate limit"
    );
    for kind in ["post.failed", "delivery.alerted", "run.stalled"] {
        assert!(app.ledger_of(kind).await.is_empty(), "{kind} in the ledger");
    }
    fake.assert_waits_were_kept(chrono::Duration::seconds(1));
}

#[tokio::test]
async fn on_discord_a_message_that_keeps_failing_past_the_time_budget_is_flagged_once_and_the_flag_says_when_it_got_through()
 {
    let fake = FakeDiscord::start().await;
    let app = discord_app_with(&fake, vec![("chain.toml", CHAIN.into())]).await;
    fake.s().failing_texts = vec!["note B".into()];
    start_chain(&fake, "800000000000000951", 7);
    let root = message_with(&fake, GENERAL, "Chain 7").await;
    let alert = eventually_some("the alert once the trouble lasted", || async {
        app.advance(chrono::Duration::seconds(30));
        fake.messages_in(&root.id)
            .into_iter()
            .find(|m| content(m).contains("**Delivery delayed**"))
    })
    .await;
    assert!(
        content(&alert).contains("Baton keeps trying"),
        "{}",
        content(&alert)
    );
    assert!(
        !fake
            .messages_in(&root.id)
            .iter()
            .any(|m| content(m) == "note C of 7"),
        "the thread keeps its order meanwhile"
    );
    fake.s().failing_texts.clear();
    eventually("the alert withdrawn", || async {
        app.advance(chrono::Duration::seconds(60));
        fake.message(&alert.id).is_some_and(|m| {
            content(&m).contains("**Delivered after all**")
                && m.body["components"].as_array().is_none_or(Vec::is_empty)
        })
    })
    .await;
    message_with(&fake, &root.id, "note C of 7").await;
    assert_eq!(app.ledger_of("delivery.alerted").await.len(), 1);
    assert_eq!(app.ledger_of("delivery.recovered").await.len(), 1);
    assert!(app.ledger_of("post.failed").await.is_empty());
}

#[tokio::test]
async fn on_discord_a_root_that_cannot_be_posted_is_told_to_the_requester_privately() {
    let fake = FakeDiscord::start().await;
    let app = discord_app_with(&fake, vec![("chain.toml", CHAIN.into())]).await;
    fake.s().forbidden_channels.insert(GENERAL.into());
    start_chain(&fake, "800000000000000961", 3);
    let dm = eventually_some("a direct message to the requester", || async {
        let s = fake.s();
        let dm = s
            .dms
            .iter()
            .find(|(_, who)| *who == ANA)
            .map(|(c, _)| c.clone())?;
        s.messages.iter().find(|m| m.channel == dm).cloned()
    })
    .await;
    assert!(
        content(&dm).starts_with("Your run 1 (Chain 3) could not post in #general"),
        "{}",
        content(&dm)
    );
    assert!(
        dm.body.to_string().contains("Missing Access"),
        "{}",
        dm.body
    );
    let (_, page) = app.get("/runs/1").await;
    assert!(page.contains("Its conversation did not reach chat"));
    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.contains("baton_runs_unreachable 1"), "{metrics}");
}

#[tokio::test]
async fn a_global_429_holds_back_every_route_until_it_is_over() {
    let fake = FakeDiscord::start().await;
    let app = discord_app_with(&fake, vec![("chain.toml", CHAIN.into())]).await;
    {
        let mut s = fake.s();
        s.clock = Some(app.clock.clone());
        s.global_rate_limit = 1;
        s.retry_after = Some(5.0);
    }
    start_chain(&fake, "800000000000000971", 1);
    let limited_at = eventually_some("the global 429", || async {
        fake.s()
            .calls
            .iter()
            .find(|c| c.limited)
            .and_then(|c| c.clock_at)
    })
    .await;
    eventually("the run's summary", || async {
        app.advance(chrono::Duration::seconds(1));
        fake.s().messages.iter().any(|m| {
            m.body["content"]
                .as_str()
                .unwrap_or_default()
                .contains("Run 1 **done**")
        })
    })
    .await;
    let s = fake.s();
    let early: Vec<String> = s
        .calls
        .iter()
        .skip_while(|c| !c.limited)
        .skip(1)
        .filter(|c| !c.path.starts_with("interactions/") && c.path != "gateway")
        .filter(|c| {
            c.clock_at
                .is_some_and(|t| t < limited_at + chrono::Duration::seconds(5))
        })
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(early.is_empty(), "calls during the global limit: {early:?}");
}

#[tokio::test]
async fn a_click_on_a_button_baton_cannot_read_is_answered_privately_and_recorded() {
    let fake = FakeDiscord::start().await;
    let app = discord_app(&fake).await;
    fake.dispatch(
        "INTERACTION_CREATE",
        click(
            "800000000000000981",
            "legacy_approve_button",
            BEN,
            &[],
            GENERAL,
        ),
    );
    let answer = eventually_some("the private answer", || async {
        fake.webhook_calls("tok-800000000000000981")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        answer.body["content"],
        "This button is no longer valid. Nothing was changed."
    );
    assert_eq!(answer.body["flags"], 64, "only the clicker sees it");
    assert_eq!(app.ledger_of("action.unreadable").await.len(), 1);
}
