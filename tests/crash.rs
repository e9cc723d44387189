//! Kills the real `baton` process mid-run and starts it again: the run resumes and finishes,
//! the interrupted step runs again, and the ledger shows both attempts.

mod support;

#[path = "support/fake_discord.rs"]
mod fake_discord;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::bot::{Bot, free_port};
use support::{Db, button, eventually, eventually_some};

/// A workflow file shipped in `commands/`.
fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("commands")
            .join(name),
    )
    .unwrap()
}

/// Fails when a thread holds the same message twice: nothing already posted is posted again.
fn assert_posted_once(thread: &[String]) {
    let mut seen = thread.to_vec();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        thread.len(),
        "a message was posted twice: {thread:?}"
    );
}

/// An upstream on loopback counting its requests: the first one answers after `first`, the
/// others after `later`.
async fn upstream(
    first: std::time::Duration,
    later: std::time::Duration,
) -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            let h = h.clone();
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(if n == 0 { first } else { later }).await;
                "upstream ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, hits)
}

/// An upstream whose first request never answers in time (the process dies while waiting) and
/// whose later requests answer at once.
async fn slow_upstream() -> (u16, Arc<AtomicUsize>) {
    upstream(
        std::time::Duration::from_secs(60),
        std::time::Duration::ZERO,
    )
    .await
}

fn slow_workflow(port: u16) -> String {
    format!(
        r#"
name = "slow"
description = "Slow fetch"
[[trigger]]
kind = "slash"
command = "slow"
[[step]]
id = "fetch"
kind = "tool"
tool = "http.get"
with = {{ url = "http://127.0.0.1:{port}/slow" }}
timeout = "5m"
[[step]]
id = "after"
kind = "notify"
needs = ["fetch"]
text = "fetched: {{{{ steps.fetch.output.body }}}}"
"#
    )
}

async fn a_run_killed_mid_step_resumes_after_restart_and_the_ledger_shows_both_attempts(db: Db) {
    let (port, hits) = slow_upstream().await;
    let mut bot = Bot::on(db, &[("slow.toml", slow_workflow(port))]).await;
    bot.start().await;
    let run = bot.start_run("ana", "general", "/slow").await;
    eventually("the step to be in flight", || async {
        hits.load(Ordering::SeqCst) == 1
    })
    .await;
    bot.kill();

    bot.start().await;
    eventually("the run to finish after restart", || async {
        bot.run_page(run)
            .await
            .contains("<dd class=\"status succeeded\">")
    })
    .await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the interrupted step ran again, once"
    );

    let ledger = bot.ledger();
    let started: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["kind"] == "step.started" && e["step"] == "fetch")
        .collect();
    assert_eq!(started.len(), 2, "both attempts are in the ledger");
    assert!(
        started[0]["data"]
            .as_str()
            .unwrap()
            .contains("\"attempt\":1")
    );
    assert!(
        started[1]["data"]
            .as_str()
            .unwrap()
            .contains("\"attempt\":2")
    );
    assert!(
        ledger
            .iter()
            .any(|e| e["kind"] == "step.attempt_lost" && e["step"] == "fetch")
    );
    let (ok, verify) = bot.cli(&["audit", "verify"]);
    assert!(ok, "{verify}");

    let page = bot.run_page(run).await;
    assert!(
        page.contains("<td class=\"status lost\">lost</td>")
            && page.contains("<td class=\"status succeeded\">succeeded</td>"),
        "attempts table shows both"
    );
    let thread = eventually_some("the summary", || async {
        let t = bot.thread_texts("general", run).await;
        t.iter().any(|x| x.contains("*done*")).then_some(t)
    })
    .await;
    assert!(
        thread.iter().any(|t| t == "fetched: upstream ok"),
        "{thread:?}"
    );
    assert_posted_once(&thread);
}

async fn killing_the_process_repeatedly_during_a_run_loses_nothing(db: Db) {
    let demo = example("demo.toml");
    let mut bot = Bot::on(db, &[("demo.toml", demo)]).await;
    bot.start().await;
    let run = bot.start_run("ana", "general", "/demo crash").await;
    // Kill at once, before the outbox had a chance to deliver anything.
    bot.kill();
    bot.start().await;
    let approval = eventually_some("the approval message", || async {
        let msgs: Vec<Value> = bot
            .http
            .get(format!("{}/api/channels/general/messages", bot.base()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let root = msgs.iter().find(|m| {
            m["message"]["text"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("run {run} ·"))
        })?;
        let thread: Vec<Value> = bot
            .http
            .get(format!("{}/api/threads/{}", bot.base(), root["id"]))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        thread.into_iter().find(|m| {
            m["message"]["text"]
                .as_str()
                .unwrap_or("")
                .contains("Approval needed")
        })
    })
    .await;
    bot.kill();
    bot.start().await;
    let r = bot
        .http
        .post(format!("{}/api/actions", bot.base()))
        .json(&json!({"user": "ben", "message_id": approval["id"], "action": button(&approval, "Approve").unwrap()}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    eventually("the run to finish", || async {
        bot.run_page(run)
            .await
            .contains("<dd class=\"status succeeded\">")
    })
    .await;
    let thread = eventually_some("the summary", || async {
        let t = bot.thread_texts("general", run).await;
        t.iter().any(|x| x.contains("*done*")).then_some(t)
    })
    .await;
    assert_posted_once(&thread);
    assert!(bot.cli(&["audit", "verify"]).0);
}

#[tokio::test]
async fn the_cli_cancels_a_run_that_the_running_bot_then_reports() {
    let demo = example("demo.toml");
    let mut bot = Bot::new(&[("demo.toml", demo)]);
    bot.start().await;
    let run = bot.start_run("ana", "general", "/demo cli").await;
    eventually("the run to wait for approval", || async {
        bot.run_page(run).await.contains("status waiting_approval")
    })
    .await;
    let (ok, out) = bot.cli(&["runs", "cancel", &run.to_string(), "--as", "oncall"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("Run {run} cancelled.")), "{out}");
    eventually("the thread to report the cancellation", || async {
        bot.thread_texts("general", run)
            .await
            .iter()
            .any(|t| t.contains("*cancelled*"))
    })
    .await;
    let (ok, list) = bot.cli(&["runs", "list"]);
    assert!(ok && list.contains("cancelled"), "{list}");
    let (ok, show) = bot.cli(&["runs", "show", &run.to_string()]);
    assert!(ok && show.contains("approval approve: cancelled"), "{show}");
}

#[test]
fn baton_tools_lists_every_tool_with_its_class() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("tools")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for (tool, class) in [
        ("http.get", "read"),
        ("webhook.post", "external"),
        ("memory.read", "read"),
        ("memory.write", "write-internal"),
        ("run.context", "read"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(tool) && l.contains(class)),
            "{tool} {class}: {text}"
        );
    }
}

#[test]
fn check_exits_non_zero_and_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "name = \"bad\"\n[[trigger]]\nkind = \"slash\"\ncommand = \"bad\"\n[[step]]\nid = \"a\"\nkind = \"tool\"\ntool = \"nope\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check", "--dir"])
        .arg(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file: PathBuf = dir.path().join("bad.toml");
    assert!(
        stderr.contains(&format!("{}:8: error: unknown tool `nope`", file.display())),
        "{stderr}"
    );
    let ok = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check", "--dir"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("commands"))
        .env_clear()
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .env_clear()
        .env("BATON_WORKERS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BATON_WORKERS: `lots` must be a whole number"),
        "{stderr}"
    );
}

#[test]
fn audit_verify_finds_the_first_tampered_entry() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let demo = example("demo.toml");
    let mut bot = Bot::new(&[("demo.toml", demo)]);
    rt.block_on(async {
        bot.start().await;
        let run = bot.start_run("ana", "general", "/demo ledger").await;
        eventually("the approval", || async {
            bot.run_page(run).await.contains("status waiting_approval")
        })
        .await;
    });
    bot.kill();
    assert!(bot.cli(&["audit", "verify"]).0);
    let export = bot.dir.path().join("ledger.jsonl");
    let (ok, _) = bot.cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    assert!(ok);
    assert!(std::fs::read_to_string(&export).unwrap().lines().count() > 5);
    // Someone with database access rewrites history (the append-only trigger must go first).
    let c = rusqlite::Connection::open(bot.dir.path().join("baton.db")).unwrap();
    let refused = c.execute("UPDATE audit SET data = '{}' WHERE seq = 3", []);
    assert!(refused.is_err(), "the ledger refuses updates");
    c.execute_batch("DROP TRIGGER audit_no_update").unwrap();
    c.execute(
        "UPDATE audit SET data = '{\"forged\":true}' WHERE seq = 3",
        [],
    )
    .unwrap();
    drop(c);
    let (ok, out) = bot.cli(&["audit", "verify"]);
    assert!(!ok);
    assert!(out.contains("broken at entry 3"), "{out}");
}

/// Runs SQL on a stopped bot's database as someone with the file would.
fn tamper(bot: &Bot, statements: &[&str]) {
    let c = rusqlite::Connection::open(bot.dir.path().join("baton.db")).unwrap();
    for sql in statements {
        c.execute_batch(sql).unwrap();
    }
}

/// The `head:` line of `baton audit verify`.
fn head_of(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("head:"))
        .unwrap_or_else(|| panic!("no head in {out}"))
        .trim()
        .to_owned()
}

#[test]
fn deleting_the_newest_ledger_entries_is_caught_by_a_checkpoint_seen_before() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut bot = Bot::new(&[("demo.toml", example("demo.toml"))]);
    rt.block_on(async {
        bot.start().await;
        let run = bot.start_run("ana", "general", "/demo ledger").await;
        eventually("the approval", || async {
            bot.run_page(run).await.contains("status waiting_approval")
        })
        .await;
    });
    bot.kill();
    let (ok, out) = bot.cli(&["audit", "verify"]);
    assert!(ok, "{out}");
    let head = head_of(&out);
    let seq: i64 = head.split(':').next().unwrap().parse().unwrap();
    let file = bot.dir.path().join("checkpoints.txt");
    std::fs::write(
        &file,
        format!("# from the digest\nLedger checkpoint: `{head}`\n"),
    )
    .unwrap();
    assert!(bot.cli(&["audit", "verify", "--expect", &head]).0);
    assert!(
        bot.cli(&["audit", "verify", "--checkpoints", file.to_str().unwrap()])
            .0
    );

    // The two newest entries go; what is left is a valid chain on its own.
    tamper(
        &bot,
        &[
            "DROP TRIGGER audit_no_delete",
            &format!("DELETE FROM audit WHERE seq > {}", seq - 2),
        ],
    );
    assert!(
        bot.cli(&["audit", "verify"]).0,
        "alone, a shorter chain verifies"
    );
    for args in [
        vec!["audit", "verify", "--expect", head.as_str()],
        vec!["audit", "verify", "--checkpoints", file.to_str().unwrap()],
    ] {
        let (ok, out) = bot.cli(&args);
        assert!(!ok, "{args:?}");
        assert!(out.contains("newer entries were deleted"), "{out}");
    }
    let (ok, out) = bot.cli(&["audit", "verify", "--expect", "nonsense"]);
    assert!(!ok);
    assert!(!out.contains("intact"), "{out}");
}

#[test]
fn with_an_audit_key_a_tail_written_without_it_does_not_verify() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut bot = Bot::new(&[("demo.toml", example("demo.toml"))]);
    bot.env
        .push(("BATON_AUDIT_KEY", "correct horse battery staple".into()));
    rt.block_on(async {
        bot.start().await;
        let run = bot.start_run("ana", "general", "/demo signed").await;
        eventually("the approval", || async {
            bot.run_page(run).await.contains("status waiting_approval")
        })
        .await;
    });
    bot.kill();
    let (ok, out) = bot.cli(&["audit", "verify"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("every signature checks out (0 early entries"),
        "{out}"
    );
    let head = head_of(&out);
    assert_eq!(
        head.split(':').count(),
        3,
        "the head is printed signed: {head}"
    );
    // Someone with the file alone appends an entry, hashing it properly: it has no valid
    // signature.
    let export = bot.ledger();
    let last = export.last().unwrap();
    let seq = last["seq"].as_i64().unwrap() + 1;
    let prev = last["hash"].as_str().unwrap();
    let at = chrono::Utc::now();
    let hash =
        baton::core::audit::entry_hash(prev, seq, at, "run.cancelled", None, None, None, "{}");
    tamper(
        &bot,
        &[&format!(
            "INSERT INTO audit (seq, at, kind, data, prev_hash, hash) VALUES ({seq}, {}, 'run.cancelled', '{{}}', '{prev}', '{hash}')",
            at.timestamp_millis()
        )],
    );
    let (ok, out) = bot.cli(&["audit", "verify"]);
    assert!(!ok);
    assert!(out.contains(&format!("broken at entry {seq}")), "{out}");
    // Without the key the same chain verifies: the key is what proves the tail.
    let mut keyless = bot.command();
    keyless.env_remove("BATON_AUDIT_KEY");
    let out = keyless.args(["audit", "verify"]).output().unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn bound_to_every_interface_the_examples_still_work_and_links_use_the_public_url() {
    let token = "a-console-token-for-tests";
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let client = baton::http_client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let incident = example("incident.toml");
    let link = r#"
name = "link"
[[trigger]]
kind = "slash"
command = "link"
[[step]]
id = "tell"
kind = "notify"
text = "Follow it at {{ baton.url }}/runs/{{ run.id }}"
"#;
    let mut bot = Bot::new(&[
        ("demo.toml", example("demo.toml")),
        ("incident.toml", incident),
        ("link.toml", link.into()),
    ]);
    bot.http = client;
    let port = bot.port;
    bot.env.push(("BATON_HTTP_ADDR", format!("0.0.0.0:{port}")));
    bot.env.push(("BATON_CONSOLE_TOKEN", token.into()));
    bot.start().await;
    // Baton calls itself on loopback, which it can reach, whatever the bind address.
    let run = bot.start_run("ana", "general", "/demo wide").await;
    eventually("both checks through and the approval waiting", || async {
        bot.run_page(run).await.contains("status waiting_approval")
    })
    .await;
    let page = bot.run_page(run).await;
    assert!(!page.contains("not on BATON_HTTP_ALLOW"), "{page}");
    let log = std::fs::read_to_string(bot.dir.path().join("bot.log")).unwrap();
    assert!(
        log.contains("BATON_PUBLIC_URL is unset while Baton listens on 0.0.0.0"),
        "{log}"
    );
    bot.kill();

    // With the public address set, links in chat use it, and the self-calls still work.
    bot.env
        .push(("BATON_PUBLIC_URL", "https://baton.example.com".into()));
    bot.start().await;
    let run = bot
        .start_run("ana", "incidents", "/incident checkout is down")
        .await;
    eventually("the incident's checks through", || async {
        bot.run_page(run).await.contains("status waiting_approval")
    })
    .await;
    let run = bot.start_run("ana", "general", "/link").await;
    eventually("the link in the thread", || async {
        bot.thread_texts_if_any("general", run)
            .await
            .unwrap_or_default()
            .iter()
            .any(|t| {
                t.contains(&format!(
                    "Follow it at https://baton.example.com/runs/{run}"
                ))
            })
    })
    .await;
    bot.kill();
}

#[tokio::test]
async fn sigterm_lets_the_running_step_finish_and_flushes_its_posts() {
    let delay = std::time::Duration::from_millis(700);
    let (port, hits) = upstream(delay, delay).await;
    let mut bot = Bot::new(&[("slow.toml", slow_workflow(port))]);
    bot.start().await;
    let run = bot.start_run("ana", "general", "/slow").await;
    eventually("the step to be in flight", || async {
        hits.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut child = bot.child.take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "baton exits cleanly on SIGTERM: {status:?}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the step was not cut off and re-run"
    );

    // The step finished before the exit, and the run ended: nothing is left to resume.
    let ledger = bot.ledger();
    assert!(
        ledger
            .iter()
            .any(|e| e["kind"] == "step.finished" && e["step"] == "fetch")
    );
    assert!(!ledger.iter().any(|e| e["kind"] == "step.attempt_lost"));
    let summary_key = format!("run:{run}:summary");
    assert!(
        ledger
            .iter()
            .any(|e| e["kind"] == "post.delivered"
                && e["data"].as_str().unwrap().contains(&summary_key)),
        "the outbox was flushed before exit"
    );
    bot.start().await;
    assert!(
        bot.run_page(run)
            .await
            .contains("<dd class=\"status succeeded\">")
    );
    let thread = bot.thread_texts("general", run).await;
    assert!(
        thread.iter().any(|t| t == "fetched: upstream ok"),
        "the posts were flushed: {thread:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A Discord workflow: a slash command, an approval by one user, a note in the thread.
fn discord_ship() -> String {
    format!(
        r#"
name = "ship"
description = "Ship a release"
title = "Ship {{{{ input.version }}}}"
[[trigger]]
kind = "slash"
command = "ship"
args = [{{ name = "version", required = true }}]
[[step]]
id = "gate"
kind = "approval"
approvers = ["discord:{}"]
message = "Ship {{{{ input.version }}}}?"
timeout = "1h"
[[step]]
id = "done"
kind = "notify"
needs = ["gate"]
text = "Shipped {{{{ input.version }}}}."
"#,
        fake_discord::BEN
    )
}

#[tokio::test]
async fn a_discord_run_survives_kills_while_posting_and_nothing_reaches_discord_twice() {
    use fake_discord::*;
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::new(&[("ship.toml", discord_ship())]);
    bot.env = vec![
        ("DISCORD_TOKEN", TOKEN.into()),
        ("DISCORD_API_URL", fake.base.clone()),
        ("DISCORD_GUILD_IDS", GUILD.into()),
    ];
    bot.start().await;
    fake.dispatch(
        "INTERACTION_CREATE",
        slash(
            "810000000000000001",
            "ship",
            json!([{"name": "version", "type": 3, "value": "1.0"}]),
            ANA,
        ),
    );
    // Killed the moment the root reaches Discord: whether Baton recorded it or not.
    let root = eventually_some("the root message", || async {
        fake.messages_in(GENERAL).into_iter().next()
    })
    .await;
    bot.kill();
    bot.start().await;
    // Killed again as soon as the approval is in the thread.
    let approval = eventually_some("the approval", || async {
        fake.messages_in(&root.id).into_iter().find(|m| {
            m.body["content"]
                .as_str()
                .unwrap_or("")
                .contains("Approval needed")
        })
    })
    .await;
    bot.kill();
    bot.start().await;
    // Each start resumes the session the killed one left (or starts a new one).
    eventually("the gateway connected again", || async {
        let s = fake.s();
        s.identifies.len() + s.resumes.len() >= 3
    })
    .await;
    let approve = approval.body["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.dispatch(
        "INTERACTION_CREATE",
        click("810000000000000002", &approve, BEN, &[], &root.id),
    );
    eventually("the run to finish", || async {
        fake.messages_in(&root.id).iter().any(|m| {
            m.body["content"]
                .as_str()
                .unwrap_or("")
                .contains("Shipped 1.0.")
        })
    })
    .await;
    let roots = fake.messages_in(GENERAL);
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    let thread: Vec<String> = fake
        .messages_in(&root.id)
        .iter()
        .map(|m| m.body["content"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_posted_once(&thread);
    let run_done = bot.ledger().iter().any(|e| {
        e["kind"] == "run.status"
            && e["data"]
                .as_str()
                .unwrap_or("")
                .contains("\"to\":\"succeeded\"")
    });
    assert!(run_done, "the ledger shows the run finished");
}

#[tokio::test]
async fn runs_show_says_when_a_runs_conversation_did_not_reach_chat() {
    use fake_discord::*;
    let fake = FakeDiscord::start().await;
    fake.s().forbidden_channels.insert(GENERAL.into());
    let mut bot = Bot::new(&[("ship.toml", discord_ship())]);
    bot.env = vec![
        ("DISCORD_TOKEN", TOKEN.into()),
        ("DISCORD_API_URL", fake.base.clone()),
        ("DISCORD_GUILD_IDS", GUILD.into()),
    ];
    bot.start().await;
    fake.dispatch(
        "INTERACTION_CREATE",
        slash(
            "810000000000000101",
            "ship",
            json!([{"name": "version", "type": 3, "value": "2.0"}]),
            ANA,
        ),
    );
    eventually("the requester told privately", || async {
        let s = fake.s();
        s.dms.values().any(|who| who == ANA)
    })
    .await;
    eventually("runs show saying so", || async {
        let (ok, out) = bot.cli(&["runs", "show", "1"]);
        ok && out.contains("chat:     Its conversation did not reach chat")
    })
    .await;
    let (_, out) = bot.cli(&["runs", "show", "1"]);
    assert!(out.contains("Missing Access"), "{out}");
    bot.kill();
}

#[tokio::test]
async fn a_second_bot_on_the_same_sqlite_file_is_refused_and_the_first_delivers_alone() {
    let demo = example("demo.toml");
    let mut bot = Bot::new(&[("demo.toml", demo)]);
    bot.start().await;
    // The same directory and file on another port, as someone starting it twice would.
    let mut second = bot.command();
    second.env("BATON_HTTP_ADDR", format!("127.0.0.1:{}", free_port()));
    let mut second = second
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Refused, it stops at once; one that started would still be running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second bot started on the same SQLite file");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "the second one must not start");
    let mut said = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut said).unwrap();
    assert!(
        said.contains("another Baton is already running on the SQLite database"),
        "{said}"
    );
    // The command line still works beside the running bot.
    assert!(bot.cli(&["audit", "verify"]).0);
    let run = bot.start_run("ana", "general", "/demo once").await;
    let thread = eventually_some("the progress thread", || async {
        let t = bot.thread_texts_if_any("general", run).await?;
        t.iter().any(|x| x.contains("Approval needed")).then_some(t)
    })
    .await;
    assert_posted_once(&thread);
    // Killed, it leaves no stale lock: it starts again at once.
    bot.kill();
    bot.start().await;
}

const PING: &str = r#"
name = "ping"
description = "Answers ping"
[[trigger]]
kind = "message"
channels = ["general"]
pattern = '^ping (?P<n>\d+)$'
[[step]]
id = "pong"
kind = "notify"
text = "pong {{ input.n }}."
"#;

/// The bot's `pong N.` replies in #general, by N.
async fn pongs(bot: &Bot) -> Vec<u64> {
    let msgs: Vec<Value> = match bot
        .http
        .get(format!("{}/api/channels/general/messages", bot.base()))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return vec![],
    };
    let mut roots = vec![];
    for m in msgs {
        let thread: Vec<Value> = bot
            .http
            .get(format!("{}/api/threads/{}", bot.base(), m["id"]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        roots.extend(thread);
    }
    roots
        .iter()
        .filter_map(|m| {
            let t = m["message"]["text"].as_str()?;
            t.strip_prefix("pong ")?.strip_suffix('.')?.parse().ok()
        })
        .collect()
}

async fn ready(bot: &Bot) -> u16 {
    bot.http
        .get(format!("{}/readyz", bot.base()))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_postgresql_restart_mid_load_loses_nothing_and_readiness_follows_the_database() {
    let server = support::postgres::Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut bot = Bot::in_dir(dir, server.url(), None, &[("ping.toml", PING.to_owned())]);
    bot.start().await;
    for n in 0..20 {
        bot.say("cy", "general", &format!("ping {n}")).await;
    }
    server.stop();
    eventually("/readyz to say not ready", || async {
        ready(&bot).await == 503
    })
    .await;
    // Meanwhile a message is refused with an error, not taken and lost.
    let refused = bot
        .http
        .post(format!("{}/api/messages", bot.base()))
        .json(&json!({"channel": "general", "user": "cy", "text": "ping 999"}))
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_server_error(), "{}", refused.status());
    server.start_again();
    eventually("/readyz to say ready again", || async {
        ready(&bot).await == 200
    })
    .await;
    for n in 20..40 {
        bot.say("cy", "general", &format!("ping {n}")).await;
    }
    let mut seen = eventually_some("every reply", || async {
        let p = pongs(&bot).await;
        (p.iter().filter(|n| **n < 40).count() >= 40).then_some(p)
    })
    .await;
    seen.sort();
    assert_eq!(
        seen,
        (0..40).collect::<Vec<u64>>(),
        "each reply once, none lost"
    );
    let (ok, out) = bot.cli(&["audit", "verify"]);
    assert!(ok, "{out}");
}

// The crash stories that hold on every backend.
crate::on_every_backend!(
    a_run_killed_mid_step_resumes_after_restart_and_the_ledger_shows_both_attempts,
    killing_the_process_repeatedly_during_a_run_loses_nothing,
);
