//! Three Baton replicas (the real binary) on one PostgreSQL database of the test's own share
//! the work while one of them is killed with SIGKILL and started again and the database
//! restarts: afterwards no run is lost, nothing reached Slack twice, each approval was
//! decided once, the ledger is one chain that verifies, and each schedule slot fired once.

mod support;

#[path = "support/fake_slack.rs"]
mod fake_slack;

#[path = "support/fake_discord.rs"]
mod fake_discord;

use axum::Router;
use axum::routing::get;
use fake_slack::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::bot::Bot;
use support::postgres::Server;
use support::{button, eventually, eventually_some};

/// Runs started in Slack (each in one of `SLACK_CHANNELS` channels) and in the console.
const SLACK_RUNS: usize = 60;
const SLACK_CHANNELS: usize = 30;
const CONSOLE_RUNS: usize = 150;
const CONSOLE_CHANNELS: usize = 10;

/// A console workflow: an approval by ben, then a step that takes a while (so some are under
/// way when a replica is killed), then a notice.
fn release(port: u16) -> String {
    format!(
        r#"
name = "release"
description = "Release"
title = "Release {{{{ input.version }}}}"
[[trigger]]
kind = "message"
pattern = 'release (?P<version>\S+)'
[[step]]
id = "gate"
kind = "approval"
approvers = ["ben"]
message = "Release {{{{ input.version }}}}?"
timeout = "1h"
[[step]]
id = "fetch"
kind = "tool"
tool = "http.get"
needs = ["gate"]
with = {{ url = "http://127.0.0.1:{port}/slow" }}
timeout = "5m"
[[step]]
id = "done"
kind = "notify"
needs = ["fetch"]
text = "Released {{{{ input.version }}}}."
"#
    )
}

/// A digest every minute: every replica looks at the schedule, one run per slot.
const PULSE: &str = r#"
name = "pulse"
description = "Pulse"
[[trigger]]
kind = "schedule"
id = "minutely"
cron = "* * * * *"
timezone = "UTC"
channel = "incidents"
[[step]]
id = "digest"
kind = "digest"
period = "1h"
channel = "incidents"
"#;

fn console_channels() -> String {
    (0..CONSOLE_CHANNELS)
        .map(|n| format!("ops-{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An upstream that answers after a second, counting requests.
async fn slow_upstream() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                "upstream ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

fn slack_channel(n: usize) -> (String, String) {
    let n = n % SLACK_CHANNELS;
    (format!("C{n:08}"), format!("team-{n}"))
}

async fn send_slash(bot: &Bot, fake: &FakeSlack, n: usize, trigger: &str) -> u16 {
    let (id, name) = slack_channel(n);
    let body = command_form(
        fake,
        (&id, &name),
        "UANA0001",
        &format!("/ship s{n}"),
        trigger,
    );
    let url = format!("{}/slack/commands", bot.base());
    post_signed(
        &bot.http,
        &url,
        "application/x-www-form-urlencoded",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await
    .status()
    .as_u16()
}

async fn send_click(bot: &Bot, fake: &FakeSlack, approval: &Value, trigger: &str) -> u16 {
    let action = approval["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .map(|e| e["action_id"].as_str().unwrap_or_default().to_owned())
        .find(|a| a.starts_with("approve:"))
        .expect("an Approve button");
    let channel = approval["channel"].as_str().unwrap().to_owned();
    let ts = approval["ts"].as_str().unwrap().to_owned();
    let body = click_form(
        fake,
        (&channel, "team"),
        "UBEN0001",
        &action,
        None,
        &ts,
        trigger,
    );
    let url = format!("{}/slack/interactions", bot.base());
    post_signed(
        &bot.http,
        &url,
        "application/x-www-form-urlencoded",
        &body,
        0,
        SIGNING_SECRET,
    )
    .await
    .status()
    .as_u16()
}

/// The Slack approval request of run `/ship sN`, once it is posted, with its ts.
fn slack_approval(fake: &FakeSlack, n: usize) -> Option<Value> {
    let posts = fake.posts();
    let (root_ts, _) = posts.iter().find(|(_, b)| {
        b.get("thread_ts").is_none_or(Value::is_null)
            && b["text"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("*Ship s{n}*"))
    })?;
    let (ts, body) = posts.iter().find(|(_, b)| {
        b["thread_ts"] == root_ts.as_str() && blocks_text(b).contains("Approval needed")
    })?;
    let mut body = body.clone();
    body["ts"] = json!(ts);
    Some(body)
}

async fn get_json(bot: &Bot, path: &str) -> Option<Value> {
    bot.http
        .get(format!("{}{path}", bot.base()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The console approval message of run `run` (`release cN`), once it is posted.
async fn console_approval(bot: &Bot, n: usize, run: i64) -> Option<Value> {
    let channel = format!("ops-{}", n % CONSOLE_CHANNELS);
    let msgs = get_json(bot, &format!("/api/channels/{channel}/messages")).await?;
    let root = msgs.as_array()?.iter().find(|m| {
        m["message"]["text"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("run {run} ·"))
    })?;
    let thread = get_json(bot, &format!("/api/threads/{}", root["id"])).await?;
    thread.as_array()?.iter().find_map(|m| {
        m["message"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("Approval needed")
            .then(|| m.clone())
    })
}

async fn approve_in_console(bot: &Bot, approval: &Value) -> u16 {
    bot.http
        .post(format!("{}/api/actions", bot.base()))
        .json(&json!({"user": "ben", "message_id": approval["id"], "action": button(approval, "Approve").unwrap()}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn readyz(bot: &Bot) -> u16 {
    bot.http
        .get(format!("{}/readyz", bot.base()))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn data(e: &Value) -> Value {
    serde_json::from_str(e["data"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_work_through_a_kill_and_a_database_restart_and_nothing_is_lost_or_doubled()
 {
    let server = Server::start();
    let fake = FakeSlack::start().await;
    let (port, hits) = slow_upstream().await;
    let workflows = [
        ("ship.toml", APPROVE.to_owned()),
        ("release.toml", release(port)),
        ("pulse.toml", PULSE.to_owned()),
    ];
    let mut bots: Vec<Bot> = (1..=3)
        .map(|i| {
            let mut bot = Bot::in_dir(tempfile::tempdir().unwrap(), server.url(), None, &workflows);
            bot.env = vec![
                ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
                ("SLACK_SIGNING_SECRET", SIGNING_SECRET.into()),
                ("SLACK_API_URL", fake.api_url()),
                ("BATON_REPLICA_NAME", format!("r{i}")),
                ("BATON_LEASE", "3s".into()),
                ("BATON_CONSOLE_CHANNELS", console_channels()),
            ];
            bot
        })
        .collect();
    // All three start at the same moment on a new database: migrations run once.
    futures_util::future::join_all(bots.iter_mut().map(|b| b.start())).await;

    // Work arrives at every replica; some Slack commands arrive at two (a retry that went
    // to another replica behind the load balancer).
    for n in 0..SLACK_RUNS {
        let trigger = format!("T{n}.cmd");
        assert_eq!(send_slash(&bots[n % 3], &fake, n, &trigger).await, 200);
        if n % 10 == 0 {
            assert_eq!(
                send_slash(&bots[(n + 1) % 3], &fake, n, &trigger).await,
                200
            );
        }
    }
    let mut console_runs = Vec::new();
    for n in 0..CONSOLE_RUNS {
        let bot = &bots[n % 3];
        let channel = format!("ops-{}", n % CONSOLE_CHANNELS);
        console_runs.push(
            bot.start_run("ana", &channel, &format!("release c{n}"))
                .await,
        );
    }

    // Approvals, each clicked on one replica and some on two; replica 2 is killed a third of
    // the way through and started again two thirds of the way.
    let live = |killed: bool, n: usize| if killed { [0, 2][n % 2] } else { n % 3 };
    let mut killed = false;
    for n in 0..CONSOLE_RUNS {
        if n == CONSOLE_RUNS / 3 {
            bots[1].kill();
            killed = true;
        }
        if n == 2 * CONSOLE_RUNS / 3 {
            bots[1].start().await;
            killed = false;
        }
        let bot = &bots[live(killed, n)];
        let approval = eventually_some(&format!("the approval of c{n}"), || async {
            console_approval(bot, n, console_runs[n]).await
        })
        .await;
        assert_eq!(approve_in_console(bot, &approval).await, 200);
        if n % 10 == 0 {
            let other = &bots[live(killed, n + 1)];
            assert_eq!(approve_in_console(other, &approval).await, 200);
        }
    }
    // The database restarts while runs are under way; meanwhile every replica says it is not
    // ready, and all of them are ready again afterwards.
    server.stop();
    for bot in &bots {
        eventually("/readyz to say not ready", || async {
            readyz(bot).await == 503
        })
        .await;
    }
    // Slack is still acknowledged meanwhile, and the command is handled once the database
    // is back.
    let late = SLACK_RUNS;
    assert_eq!(
        send_slash(&bots[0], &fake, late, &format!("T{late}.cmd")).await,
        200
    );
    server.start_again();
    for bot in &bots {
        eventually("/readyz to say ready again", || async {
            readyz(bot).await == 200
        })
        .await;
    }
    for n in 0..=SLACK_RUNS {
        let approval = eventually_some(&format!("the Slack approval of s{n}"), || async {
            slack_approval(&fake, n)
        })
        .await;
        assert_eq!(
            send_click(&bots[n % 3], &fake, &approval, &format!("T{n}.ok")).await,
            200
        );
        if n % 7 == 0 {
            let trigger = format!("T{n}.ok2");
            let again = send_click(&bots[(n + 2) % 3], &fake, &approval, &trigger).await;
            assert_eq!(again, 200);
        }
    }

    // Every run finishes.
    let total = SLACK_RUNS + 1 + CONSOLE_RUNS;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let ledger = loop {
        let ledger = bots[0].ledger();
        let done: HashSet<i64> = ledger
            .iter()
            .filter(|e| e["kind"] == "run.status" && data(e)["to"] == "succeeded")
            .filter_map(|e| e["run"].as_i64())
            .collect();
        let wanted = commanded(&ledger);
        let open: Vec<&i64> = wanted.iter().filter(|r| !done.contains(r)).collect();
        if wanted.len() >= total && open.is_empty() {
            break ledger;
        }
        if std::time::Instant::now() > deadline {
            // What each open run went through, to see where it stopped.
            let story: Vec<String> = open
                .iter()
                .map(|r| {
                    let kinds: Vec<String> = ledger
                        .iter()
                        .filter(|e| e["run"].as_i64() == Some(**r))
                        .map(|e| {
                            let kind = e["kind"].as_str().unwrap_or("");
                            let why = if kind == "step.failed" {
                                e["data"].to_string()
                            } else {
                                String::new()
                            };
                            format!("{kind}{why}")
                        })
                        .collect();
                    format!("run {r}: {}", kinds.join(" "))
                })
                .collect();
            panic!(
                "{} of {total} runs started, these not done:\n{}",
                wanted.len(),
                story.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // One run per command, however many replicas heard it.
    assert_eq!(commanded(&ledger).len(), total, "one run each");
    // Each approval decided once, whoever clicked twice and wherever.
    let mut decisions: BTreeMap<i64, usize> = BTreeMap::new();
    for e in ledger.iter().filter(|e| e["kind"] == "approval.decided") {
        *decisions.entry(e["run"].as_i64().unwrap()).or_default() += 1;
    }
    assert_eq!(decisions.len(), total);
    assert!(decisions.values().all(|n| *n == 1), "{decisions:?}");
    // Nothing reached Slack twice: one root per command, each thread's messages once.
    let posts = fake.posts();
    let mut roots: HashMap<String, usize> = HashMap::new();
    let mut threads: HashMap<String, Vec<String>> = HashMap::new();
    for (_, b) in &posts {
        let text = format!("{} {}", b["text"].as_str().unwrap_or(""), blocks_text(b));
        match b["thread_ts"].as_str() {
            None => *roots.entry(text).or_default() += 1,
            Some(root) => threads.entry(root.to_owned()).or_default().push(text),
        }
    }
    assert!(roots.values().all(|n| *n == 1), "a root twice: {roots:?}");
    let ships = roots.keys().filter(|t| t.contains("Ship s")).count();
    assert_eq!(ships, SLACK_RUNS + 1, "{roots:?}");
    for (root, texts) in &threads {
        let unique: HashSet<&String> = texts.iter().collect();
        assert_eq!(unique.len(), texts.len(), "twice in {root}: {texts:?}");
    }
    // The attempt under way on the killed replica ran again, and the ledger says so.
    let lost = ledger
        .iter()
        .filter(|e| e["kind"] == "step.attempt_lost")
        .count();
    assert!(lost >= 1, "no attempt was taken over");
    assert!(hits.load(Ordering::SeqCst) >= CONSOLE_RUNS);
    // One digest run per schedule slot, each with one root in Slack.
    let mut slots: HashMap<String, usize> = HashMap::new();
    for e in ledger.iter().filter(|e| e["kind"] == "schedule.fired") {
        *slots.entry(data(e)["slot"].to_string()).or_default() += 1;
    }
    assert!(slots.values().all(|n| *n == 1), "{slots:?}");
    let digests = posts
        .iter()
        .filter(|(_, b)| {
            b["channel"] == "C0INCIDENTS"
                && b["thread_ts"].is_null()
                && b["text"].as_str().unwrap_or("").contains("*Pulse*")
        })
        .count();
    assert_eq!(digests, slots.len(), "one root per slot's run");
    let (ok, out) = bots[0].cli(&["audit", "verify"]);
    assert!(ok, "{out}");
    // Each replica says who it is and what it claimed.
    let metrics = bots[0]
        .http
        .get(format!("{}/metrics", bots[0].base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("baton_replica_info{replica=\"r1\"} 1"),
        "{metrics}"
    );
    let claims = metrics
        .lines()
        .find_map(|l| l.strip_prefix("baton_claims_total{replica=\"r1\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(claims.is_some_and(|n| n > 0), "{metrics}");
    assert!(metrics.contains("baton_leases_lost_total{replica=\"r1\"}"));
}

/// The runs people asked for (not the schedule's).
fn commanded(ledger: &[Value]) -> HashSet<i64> {
    ledger
        .iter()
        .filter(|e| e["kind"] == "run.started")
        .filter(|e| matches!(data(e)["workflow"].as_str(), Some("ship" | "release")))
        .filter_map(|e| e["run"].as_i64())
        .collect()
}

/// A Discord slash command answered in its thread.
const DISCORD_PING: &str = r#"
name = "ping"
description = "Ping"
[[trigger]]
kind = "slash"
command = "ping"
[[step]]
id = "pong"
kind = "notify"
text = "pong"
"#;

/// The replica holding the Discord gateway, as the database says.
async fn gateway_holder(url: &str) -> Option<String> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(url).await.ok()?;
    sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'discord:gateway' AND until > 0")
        .fetch_optional(&mut c)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_discord_gateway_and_another_resumes_its_session_when_it_dies() {
    use fake_discord::*;
    let fake = FakeDiscord::start().await;
    let schema = support::postgres::Schema::new().await;
    let mut bots: Vec<Bot> = (1..=2)
        .map(|i| {
            let mut bot = Bot::in_dir(
                tempfile::tempdir().unwrap(),
                schema.url.clone(),
                None,
                &[("ping.toml", DISCORD_PING.to_owned())],
            );
            bot.env = vec![
                ("DISCORD_TOKEN", TOKEN.into()),
                ("DISCORD_API_URL", fake.base.clone()),
                ("DISCORD_GUILD_IDS", GUILD.into()),
                ("BATON_REPLICA_NAME", format!("d{i}")),
                ("BATON_LEASE", "2s".into()),
            ];
            bot
        })
        .collect();
    for bot in &mut bots {
        bot.start().await;
    }
    let holder = eventually_some("a gateway holder", || async {
        gateway_holder(&schema.url).await
    })
    .await;
    // The other one stands by: one connection, one session.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.s().identifies.len(), 1);
    assert!(fake.s().resumes.is_empty());
    let (dead, alive) = if holder == "d1" { (0, 1) } else { (1, 0) };
    bots[dead].kill();
    let killed = std::time::Instant::now();
    // The other takes over within a lease (and a look), resuming the session: Discord
    // replays what was missed, and nothing is identified again.
    eventually_some("the session resumed by the other replica", || async {
        (!fake.s().resumes.is_empty()).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(8), "took over after {took:?}");
    assert_eq!(
        fake.s().identifies.len(),
        1,
        "resumed, not identified again"
    );
    assert_eq!(
        gateway_holder(&schema.url).await.as_deref(),
        Some(if alive == 0 { "d1" } else { "d2" })
    );
    // Events reach the new holder, and are answered.
    fake.dispatch(
        "INTERACTION_CREATE",
        slash("810000000000000077", "ping", json!([]), ANA),
    );
    eventually("the run to answer", || async {
        fake.messages_in(GENERAL)
            .iter()
            .any(|m| m.body["content"].as_str().unwrap_or("").contains("Ping"))
    })
    .await;
    let _ = &bots[alive];
}

/// Collects what a console's live stream says, as text.
async fn follow_stream(base: String, heard: Arc<std::sync::Mutex<String>>) {
    let http = baton::http_client::client();
    let mut r = http
        .get(format!("{base}/api/stream"))
        .send()
        .await
        .expect("the live stream opens");
    while let Ok(Some(chunk)) = r.chunk().await {
        heard
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_browser_on_one_replica_sees_live_what_a_run_on_another_posts() {
    let first = support::spawn_app_on(support::Db::Postgres).await;
    let url = first.schema.as_ref().unwrap().url.clone();
    let second = support::spawn(support::Spawn {
        env: vec![("DATABASE_URL", url)],
        ..Default::default()
    })
    .await;
    let heard = Arc::new(std::sync::Mutex::new(String::new()));
    tokio::spawn(follow_stream(second.base.clone(), heard.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A person writes on the first replica, and the run it starts answers there.
    let run = first.start_run("ana", "general", "/demo live-check").await;
    eventually(
        "the message and the run's root on the other replica's stream",
        || async {
            let heard = heard.lock().unwrap();
            heard.contains("/demo live-check") && heard.contains(&format!("run {run} ·"))
        },
    )
    .await;
}

/// A digest every five minutes, and an approval with a reminder: a schedule and a timer.
const TICK: &str = r#"
name = "tick"
description = "Tick"
[[trigger]]
kind = "schedule"
id = "five"
cron = "*/5 * * * *"
timezone = "UTC"
channel = "general"
[[step]]
id = "digest"
kind = "digest"
period = "1h"
channel = "general"
"#;

const HOLD: &str = r#"
name = "hold"
description = "Hold"
[[trigger]]
kind = "message"
pattern = 'hold (?P<what>\S+)'
[[step]]
id = "gate"
kind = "approval"
approvers = ["ben"]
message = "Hold {{ input.what }}?"
timeout = "1h"
remind_after = "10m"
"#;

#[tokio::test]
async fn on_two_replicas_each_schedule_slot_and_each_timer_fires_once() {
    let workflows = || {
        vec![
            ("tick.toml", TICK.to_owned()),
            ("hold.toml", HOLD.to_owned()),
        ]
    };
    let first = support::spawn(support::Spawn {
        db: support::Db::Postgres,
        with_examples: false,
        extra_workflows: workflows(),
        ..Default::default()
    })
    .await;
    let url = first.schema.as_ref().unwrap().url.clone();
    let second = support::spawn(support::Spawn {
        with_examples: false,
        extra_workflows: workflows(),
        env: vec![("DATABASE_URL", url)],
        ..Default::default()
    })
    .await;
    let run = first.start_run("ana", "general", "hold gates").await;
    // Both replicas' clocks move together, five minutes at a time, past three slots and the
    // reminder's instant.
    for slot in 1..=3 {
        first.advance(chrono::Duration::minutes(5));
        second.advance(chrono::Duration::minutes(5));
        eventually(&format!("slot {slot} to fire"), || async {
            first.ledger_of("schedule.fired").await.len() >= slot
        })
        .await;
    }
    eventually("the reminder", || async {
        !first.ledger_of("approval.reminded").await.is_empty()
    })
    .await;
    // Give a second firing every chance to happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fired = first.ledger_of("schedule.fired").await;
    assert_eq!(fired.len(), 3, "one run per slot: {fired:?}");
    let reminded = first.ledger_of("approval.reminded").await;
    assert_eq!(reminded.len(), 1, "one reminder: {reminded:?}");
    assert_eq!(reminded[0]["run"], run);
    let digests = eventually_some("three digests in #general", || async {
        let n = first
            .channel("general")
            .await
            .iter()
            .filter(|m| support::text(m).contains("*Tick*"))
            .count();
        (n >= 3).then_some(n)
    })
    .await;
    assert_eq!(digests, 3, "one root per slot's run");
}
