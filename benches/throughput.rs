//! The whole message path under load, measured from outside as a team would meet it: the
//! release `baton` binary on its defaults (a SQLite file, the local console), driven through
//! the console API over HTTP by this process, which watches the console's live stream for the
//! bot's replies.
//!
//! `cargo bench --bench throughput`. Prints figures; asserts nothing about speed. Settings:
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `BENCH_MESSAGES` | 2000 | messages of the mixed load (half `ping`, half `please deploy`) |
//! | `BENCH_ROUNDS` | 3 | rounds of the mixed load; each is printed, then the median |
//! | `BENCH_CONCURRENCY` | 32 | requests in flight at once in the mixed load and parking |
//! | `BENCH_RATE` | 500 | messages per second offered in the latency phase |
//! | `BENCH_LATENCY_MESSAGES` | 1000 | messages sent in the latency phase |
//! | `BENCH_CHAINS` | 10 | runs of the 20-step chain, one after another |
//! | `BENCH_PARKED` | 5000 | runs parked on an approval |
//! | `BENCH_DATABASE_URL` | a fresh SQLite file | the database the app uses |
//! | `BENCH_REPLICAS` | 1 | Baton processes sharing that database (PostgreSQL only); the load is spread over them, the stream watched on the first, CPU summed over all |
//!
//! The load generator shares the machine with the app; the CPU figures are the app's own
//! (user + system time of its process), not the machine's.

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{App, PING, cpu_of, ms, percentile, setting};

const DEPLOY: &str = r#"
name = "deploy"
description = "Deploys a service"
[[trigger]]
kind = "message"
channels = ["general"]
pattern = '(?i)^please deploy (?P<service>\S+) to (?P<env>\S+)$'
[[step]]
id = "say"
kind = "notify"
text = "Deploying {{ input.service }} to {{ input.env }}."
"#;

const PARKED: &str = r#"
name = "parked"
description = "Waits for a decision"
[[trigger]]
kind = "slash"
command = "park"
args = [{ name = "n", type = "string", required = true }]
[[step]]
id = "gate"
kind = "approval"
approvers = ["ben"]
timeout = "7d"
"#;

const CHAIN_STEPS: usize = 20;
const SUCCEEDED: &str = "baton_runs{status=\"succeeded\"}";
/// The store writer's counters, in the order [`Writer`] reads them.
const WRITER: [&str; 4] = [
    "baton_store_batches_total",
    "baton_store_writes_total",
    "baton_store_busy_seconds_total",
    "baton_store_commit_seconds_total",
];

/// The name of the store writer's thread (as `/proc` shortens it).
const WRITER_THREAD: &str = "baton-sqlite-writer";

/// What the store's writer did over a phase: its counters and its thread's CPU time.
struct Writer([f64; 4], Duration);

impl Writer {
    async fn read(app: &App) -> Writer {
        Writer(app.metrics(WRITER).await, app.thread_cpu(WRITER_THREAD))
    }

    /// One line on the writer since `before`, over `wall`.
    fn since(&self, before: &Writer, wall: Duration) -> String {
        let d: Vec<f64> = self.0.iter().zip(before.0).map(|(a, b)| a - b).collect();
        let batches = d[0].max(1.0);
        format!(
            "store writer: {:.0} transactions, {:.1} writes each, busy {:.0}% of the time (on the CPU {:.0}%), {:.2} ms per transaction ({:.2} ms of it committing)",
            d[0],
            d[1] / batches,
            100.0 * d[2] / wall.as_secs_f64(),
            100.0 * (self.1 - before.1).as_secs_f64() / wall.as_secs_f64(),
            1000.0 * d[2] / batches,
            1000.0 * d[3] / batches,
        )
    }
}

fn chain() -> String {
    let mut wf = String::from(
        "name = \"chain\"\ndescription = \"Twenty steps\"\n[[trigger]]\nkind = \"slash\"\ncommand = \"chain\"\nargs = [{ name = \"n\", type = \"string\", required = true }]\n",
    );
    for i in 1..=CHAIN_STEPS {
        wf.push_str(&format!("[[step]]\nid = \"s{i}\"\nkind = \"notify\"\n"));
        if i > 1 {
            wf.push_str(&format!("needs = [\"s{}\"]\n", i - 1));
        }
        if i == CHAIN_STEPS {
            wf.push_str("text = \"chain {{ input.n }} done.\"\n");
        } else {
            wf.push_str(&format!("text = \"step {i}\"\n"));
        }
    }
    wf
}

/// When each marked reply of the bot first appeared on the console's live stream: `pong N.`,
/// `Deploying svcN to prod.` and `chain N done.` by their N.
#[derive(Default)]
struct Seen {
    pongs: Mutex<HashMap<u64, Instant>>,
    deploys: Mutex<HashMap<u64, Instant>>,
    chains: Mutex<HashMap<u64, Instant>>,
    resyncs: AtomicUsize,
}

fn number_after(text: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    rest[digits..].starts_with(suffix).then_some(())?;
    rest[..digits].parse().ok()
}

async fn watch(app_base: String, seen: Arc<Seen>) {
    let http = baton::http_client::client();
    let mut r = http
        .get(format!("{app_base}/api/stream"))
        .send()
        .await
        .expect("the live stream opens");
    let mut buf = String::new();
    while let Ok(Some(chunk)) = r.chunk().await {
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("event: resync") {
                seen.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(m) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if m["is_bot"] != true {
                continue;
            }
            let text = m["message"]["text"].as_str().unwrap_or_default();
            if let Some(n) = number_after(text, "pong ", ".") {
                seen.pongs.lock().unwrap().entry(n).or_insert(now);
            }
            if let Some(n) = number_after(text, "Deploying svc", " to prod.") {
                seen.deploys.lock().unwrap().entry(n).or_insert(now);
            }
            if let Some(n) = number_after(text, "chain ", " done.") {
                seen.chains.lock().unwrap().entry(n).or_insert(now);
            }
        }
    }
}

impl Seen {
    /// Waits until the reply of every mixed-load message numbered in `range` is on the stream;
    /// when the last of them appeared.
    async fn all_replies(&self, range: std::ops::Range<u64>) -> Instant {
        loop {
            let last = {
                let (pongs, deploys) = (self.pongs.lock().unwrap(), self.deploys.lock().unwrap());
                range
                    .clone()
                    .map(|i| {
                        if i % 2 == 0 {
                            pongs.get(&i)
                        } else {
                            deploys.get(&i)
                        }
                    })
                    .try_fold(None::<Instant>, |latest, at| {
                        at.map(|at| Some(latest.map_or(*at, |l: Instant| l.max(*at))))
                    })
            };
            if let Some(Some(at)) = last {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sends `texts` with `concurrency` requests in flight, spread over the replicas; returns
/// when every one was answered.
async fn closed_loop(apps: &Arc<Vec<App>>, texts: Arc<Vec<String>>, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let (apps, texts, next) = (apps.clone(), texts.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(text) = texts.get(i) else { break };
                    let app = &apps[i % apps.len()];
                    let user = if text.starts_with("/park") {
                        "ana"
                    } else {
                        "cy"
                    };
                    app.say(user, text).await;
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let messages = setting("BENCH_MESSAGES", 2000);
    let concurrency = setting("BENCH_CONCURRENCY", 32).max(1);
    let rate = setting("BENCH_RATE", 500).max(1);
    let latency_messages = setting("BENCH_LATENCY_MESSAGES", 1000);
    let chains = setting("BENCH_CHAINS", 10);
    let parked = setting("BENCH_PARKED", 5000);

    let workflows = [
        ("ping.toml", PING.to_owned()),
        ("deploy.toml", DEPLOY.to_owned()),
        ("parked.toml", PARKED.to_owned()),
        ("chain.toml", chain()),
    ];
    let replicas = setting("BENCH_REPLICAS", 1).max(1);
    let postgres = std::env::var("BENCH_DATABASE_URL").is_ok_and(|u| u.starts_with("postgres"));
    assert!(
        replicas == 1 || postgres,
        "BENCH_REPLICAS needs BENCH_DATABASE_URL=postgres://..."
    );
    let mut started = Vec::with_capacity(replicas);
    for i in 1..=replicas {
        let name = [("BATON_REPLICA_NAME", format!("bench-{i}"))];
        started.push(App::start(&workflows, &name).await);
    }
    let apps = Arc::new(started);
    let app = &apps[0];
    let seen = Arc::new(Seen::default());
    tokio::spawn(watch(app.base.clone(), seen.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = app.memory("VmRSS");
    println!(
        "throughput bench: {} cores, {replicas} replica(s), each idle at about {rss_idle:.1} MiB RSS",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // CPU of every replica together.
    let cpu = || apps.iter().map(App::cpu).sum::<Duration>();

    // 1. The mixed load, closed loop: as fast as the app answers. A run is done when its
    // reply is on the live stream, which is where a person would see it.
    let rounds = setting("BENCH_ROUNDS", 3).max(1);
    let mut rates = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let first = (round * messages) as u64;
        let texts: Vec<String> = (first..first + messages as u64)
            .map(|i| {
                if i % 2 == 0 {
                    format!("ping {i}")
                } else {
                    format!("please deploy svc{i} to prod")
                }
            })
            .collect();
        let cpu0 = cpu();
        let own0 = cpu_of("/proc/self/stat", app.ticks_per_second);
        let writer0 = Writer::read(app).await;
        let t0 = Instant::now();
        closed_loop(&apps, Arc::new(texts), concurrency).await;
        let accepted = t0.elapsed();
        let last = seen.all_replies(first..first + messages as u64).await;
        let wall = last.saturating_duration_since(t0);
        let cpu = cpu() - cpu0;
        let own = cpu_of("/proc/self/stat", app.ticks_per_second) - own0;
        let writer = Writer::read(app).await.since(&writer0, wall);
        let rate = messages as f64 / wall.as_secs_f64();
        rates.push(rate);
        println!(
            "mixed load, round {}: {messages} messages, {concurrency} in flight: {rate:.0} runs finished/s ({:.2} s; all accepted after {:.2} s), {:.2} ms CPU per run",
            round + 1,
            wall.as_secs_f64(),
            accepted.as_secs_f64(),
            ms(cpu) / messages as f64,
        );
        println!("  {writer}");
        println!(
            "  the load generator itself: {:.2} ms CPU per message",
            ms(own) / messages as f64
        );
    }
    let runs_so_far = rounds * messages;
    app.settled(SUCCEEDED, runs_so_far).await;
    rates.sort_by(f64::total_cmp);
    println!(
        "mixed load: {:.0} runs finished/s, the median of {rounds} rounds ({:.0}-{:.0})",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
    );

    // 2. Message to reply at a fixed offered rate (open loop: sends do not wait for answers).
    let base = 1_000_000_000u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(latency_messages);
    let mut requests = Vec::with_capacity(latency_messages);
    for k in 0..latency_messages as u64 {
        tokio::time::sleep_until(start + interval * k as u32).await;
        let n = base + k;
        sent.push((n, Instant::now()));
        let apps = apps.clone();
        requests.push(tokio::spawn(async move {
            apps[k as usize % apps.len()]
                .say("cy", &format!("ping {n}"))
                .await;
        }));
    }
    let offered_for = start.elapsed();
    for r in requests {
        r.await.unwrap();
    }
    app.settled(SUCCEEDED, runs_so_far + latency_messages).await;
    let runs_so_far = runs_so_far + latency_messages;
    // The outbox is empty once the last replies are committed; the console tells the stream
    // of them just after, so wait (a little) for the stream to show every one.
    let seen_all = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < seen_all {
        let all_seen = {
            let pongs = seen.pongs.lock().unwrap();
            sent.iter().all(|(n, _)| pongs.contains_key(n))
        };
        if all_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies: Vec<Duration> = {
        let pongs = seen.pongs.lock().unwrap();
        sent.iter()
            .filter_map(|(n, at)| pongs.get(n).map(|got| got.saturating_duration_since(*at)))
            .collect()
    };
    latencies.sort();
    println!(
        "message to reply at {rate}/s offered ({latency_messages} messages over {:.2} s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} replies seen, {} stream resyncs)",
        offered_for.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len(),
        seen.resyncs.load(Ordering::Relaxed),
    );

    // 3. The 20-step chain, one run at a time: what each step costs on its own.
    let mut per_step = Vec::with_capacity(chains);
    for n in 0..chains as u64 {
        let t = Instant::now();
        app.say("ana", &format!("/chain {n}")).await;
        loop {
            if let Some(done) = seen.chains.lock().unwrap().get(&n) {
                per_step.push(done.saturating_duration_since(t) / CHAIN_STEPS as u32);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    per_step.sort();
    app.settled(SUCCEEDED, runs_so_far + chains).await;
    println!(
        "chain of {CHAIN_STEPS} notify steps, {chains} runs one after another: {:.2} ms per step (median; best {:.2} ms)",
        ms(percentile(&per_step, 0.5)),
        ms(per_step.first().copied().unwrap_or_default()),
    );
    let rss_peak_before_parking = app.memory("VmHWM");

    // 4. Runs parked on an approval: how fast they are created, what they cost held.
    let texts: Vec<String> = (0..parked).map(|i| format!("/park {i}")).collect();
    let cpu0 = cpu();
    let writer0 = Writer::read(app).await;
    let t = Instant::now();
    closed_loop(&apps, Arc::new(texts), concurrency).await;
    let created = t.elapsed();
    let cpu = cpu() - cpu0;
    app.settled("baton_approvals_pending", parked).await;
    let parked_at = t.elapsed();
    let writer = Writer::read(app).await.since(&writer0, parked_at);
    println!(
        "parked runs: {parked} created at {:.0} runs/s ({:.2} ms CPU each; their messages delivered after {:.2} s), RSS {:.1} MiB with them parked",
        parked as f64 / created.as_secs_f64(),
        ms(cpu) / parked as f64,
        parked_at.as_secs_f64(),
        app.memory("VmRSS"),
    );
    println!("  {writer}");
    println!(
        "peak RSS: {rss_peak_before_parking:.1} MiB through the mixed load, latency and chain phases; {:.1} MiB in all",
        app.memory("VmHWM"),
    );
    // A task still holding an app would keep it alive past the end of the bench.
    for app in apps.iter() {
        let _ = Command::new("kill")
            .arg(app.child.id().to_string())
            .status();
    }
}
