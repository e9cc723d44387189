//! How fast Baton answers Slack and Discord, which give a bot three seconds before they tell the
//! person something went wrong. The release `baton` binary joins a fake Slack (the Events API
//! over HTTP and Socket Mode at once) and a fake Discord (REST and the gateway) on loopback,
//! both from `tests/support`; this process sends slash commands on all three paths and measures
//! each acknowledgement as the platform sees it: the HTTP response to Slack's POST, the Socket
//! Mode ack frame, the interaction callback Discord receives. First with the app idle, then
//! while the console drives it at a fixed rate of runs.
//!
//! `cargo bench --bench acks`. Prints figures; asserts nothing about speed. Settings:
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `BENCH_ACKS` | 200 | slash commands per path and phase |
//! | `BENCH_RATE` | 500 | console messages per second offered in the loaded phase |

mod support;

#[path = "../tests/support/fake_discord.rs"]
mod fake_discord;
#[path = "../tests/support/fake_slack.rs"]
mod fake_slack;

use fake_discord::FakeDiscord;
use fake_slack::{APP_TOKEN, BOT_TOKEN, FakeSlack, SIGNING_SECRET};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{App, PING, ms, percentile, setting};

const ACK: &str = r#"
name = "ack"
description = "Answers a slash command"
[[trigger]]
kind = "slash"
command = "ack"
args = [{ name = "n", type = "string", required = true, description = "A number" }]
[[step]]
id = "done"
kind = "notify"
text = "ack {{ input.n }}."
"#;

/// How long each path took to acknowledge, per sample.
#[derive(Default)]
struct Acks {
    slack_http: Vec<Duration>,
    slack_socket: Vec<Duration>,
    discord: Vec<Duration>,
}

impl Acks {
    fn print(mut self, phase: &str) {
        println!("{phase}:");
        for (path, samples) in [
            ("Slack, Events API over HTTP", &mut self.slack_http),
            ("Slack, Socket Mode", &mut self.slack_socket),
            ("Discord, gateway interaction", &mut self.discord),
        ] {
            samples.sort();
            println!(
                "  {path}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} acknowledged)",
                ms(percentile(samples, 0.5)),
                ms(percentile(samples, 0.99)),
                ms(samples.last().copied().unwrap_or_default()),
                samples.len(),
            );
        }
    }
}

/// Waits (briefly) for `probe` to give a value.
async fn within_seconds<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} within 10 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `/ack n` on each path one after another and measures each acknowledgement.
async fn sample(app: &App, slack: &FakeSlack, discord: &FakeDiscord, n: u64, acks: &mut Acks) {
    let body = serde_urlencoded::to_string([
        ("token", "legacy"),
        ("team_id", "T0ACME"),
        ("team_domain", "acme"),
        ("channel_id", "C0GENERAL"),
        ("channel_name", "general"),
        ("user_id", "U0ANA"),
        ("user_name", "ana"),
        ("command", "/ack"),
        ("text", &format!("h{n}")),
        ("api_app_id", "A0BATON"),
        ("response_url", &slack.response_url(&format!("h{n}"))),
        ("trigger_id", &format!("h{n}")),
    ])
    .unwrap();
    let (signature, timestamp) = fake_slack::sign(&body, fake_slack::now(), SIGNING_SECRET);
    let t = Instant::now();
    let answer = app
        .http
        .post(format!("{}/slack/commands", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-signature", signature)
        .header("x-slack-request-timestamp", timestamp)
        .body(body)
        .send()
        .await
        .expect("Baton answers Slack");
    acks.slack_http.push(t.elapsed());
    assert!(answer.status().is_success(), "{}", answer.status());

    let envelope = format!("env-{n}");
    slack.send(json!({
        "envelope_id": envelope,
        "type": "slash_commands",
        "accepts_response_payload": true,
        "payload": {
            "token": "legacy", "team_id": "T0ACME", "team_domain": "acme", "channel_id": "C0GENERAL",
            "channel_name": "general", "user_id": "U0ANA", "user_name": "ana", "command": "/ack",
            "text": format!("s{n}"), "api_app_id": "A0BATON", "is_enterprise_install": "false",
            "response_url": slack.response_url(&envelope), "trigger_id": envelope
        }
    }));

    let interaction = (900_000_000_000_000_000 + n).to_string();
    discord.dispatch(
        "INTERACTION_CREATE",
        fake_discord::slash(
            &interaction,
            "ack",
            json!([{"name": "n", "type": 3, "value": format!("d{n}")}]),
            fake_discord::ANA,
        ),
    );
    acks.slack_socket
        .push(within_seconds("Socket Mode ack", || slack.ack_latency(&envelope)).await);
    acks.discord.push(
        within_seconds("interaction callback", || {
            discord.callbacks(&interaction).first().map(|(_, d)| *d)
        })
        .await,
    );
}

/// Sends `/ack` on every path `count` times, one round every 50 ms.
async fn phase(
    app: &App,
    slack: &FakeSlack,
    discord: &FakeDiscord,
    first: u64,
    count: usize,
) -> Acks {
    let mut acks = Acks::default();
    let start = tokio::time::Instant::now();
    for k in 0..count as u64 {
        tokio::time::sleep_until(start + Duration::from_millis(50) * k as u32).await;
        sample(app, slack, discord, first + k, &mut acks).await;
    }
    acks
}

#[tokio::main]
async fn main() {
    let count = setting("BENCH_ACKS", 200).max(1);
    let rate = setting("BENCH_RATE", 500).max(1);
    let slack = FakeSlack::start().await;
    let discord = FakeDiscord::start().await;
    let workflows = [("ping.toml", PING.to_owned()), ("ack.toml", ACK.to_owned())];
    let env = [
        ("SLACK_BOT_TOKEN", BOT_TOKEN.to_owned()),
        ("SLACK_APP_TOKEN", APP_TOKEN.to_owned()),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET.to_owned()),
        ("SLACK_API_URL", slack.api_url()),
        ("DISCORD_TOKEN", fake_discord::TOKEN.to_owned()),
        ("DISCORD_API_URL", format!("{}/api/v10", discord.base)),
    ];
    let app = Arc::new(App::start(&workflows, &env).await);
    within_seconds("Socket Mode connection", || {
        slack.state.lock().unwrap().socket.clone()
    })
    .await;
    within_seconds("gateway session", || {
        let s = discord.s();
        (s.socket.is_some() && !s.identifies.is_empty()).then_some(())
    })
    .await;
    // Let READY and the command registration settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "acks bench: {} cores; each path gets /ack {count} times, one every 50 ms",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    phase(&app, &slack, &discord, 0, count).await.print("idle");

    // The same while the console offers `rate` runs a second (open loop).
    let loading = Arc::new(AtomicBool::new(true));
    let load = {
        let (app, loading) = (app.clone(), loading.clone());
        tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let start = tokio::time::Instant::now();
            let mut k = 0u32;
            while loading.load(Ordering::Relaxed) {
                tokio::time::sleep_until(start + interval * k).await;
                let app = app.clone();
                tokio::spawn(async move { app.say("cy", &format!("ping {k}")).await });
                k += 1;
            }
            k
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = phase(&app, &slack, &discord, count as u64, count).await;
    loading.store(false, Ordering::Relaxed);
    let offered = load.await.unwrap();
    acks.print(&format!(
        "while the console offers {rate} runs/s ({offered} messages in all)"
    ));
    // A task still holding the app would keep it alive past the end of the bench.
    let _ = std::process::Command::new("kill")
        .arg(app.child.id().to_string())
        .status();
}
