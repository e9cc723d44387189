//! Governance through the console: approvals that need several people, a condition, and a
//! ladder (reminder, escalation, expiry) on the injected clock, across a restart.

mod support;

use chrono::Duration;
use support::*;

const PAY: &str = r#"
name = "pay"
description = "Pay a supplier"
title = "Pay {{ input.amount }}"
[[trigger]]
kind = "slash"
command = "pay"
args = [{ name = "amount", type = "int", required = true }]

[[step]]
id = "quote"
kind = "notify"
text = "Paying {{ input.amount }} EUR."

[[step]]
id = "gate"
kind = "approval"
needs = ["quote"]
approvers = ["ben", "cy"]
quorum = 2
when = "input.amount > 1000"
message = "Pay {{ input.amount }} EUR?"
remind_after = "1h"
escalate_after = "2h"
escalate_to = { channel = "finance", approvers = ["dee"] }
timeout = "4h"

[[step]]
id = "paid"
kind = "notify"
needs = ["gate"]
text = "Paid {{ input.amount }} EUR."
"#;

async fn app() -> TestApp {
    spawn(Spawn {
        extra_workflows: vec![("pay.toml", PAY.into())],
        with_examples: false,
        ..Default::default()
    })
    .await
}

fn id(m: &serde_json::Value) -> i64 {
    m["id"].as_i64().unwrap()
}

#[tokio::test]
async fn an_approval_needed_only_above_a_threshold_lets_small_runs_through_and_says_why() {
    let app = app().await;
    let run = app.start_run("ana", "general", "/pay 500").await;
    app.wait_for_status(run, "succeeded").await;
    let root = app.root_of("general", run).await;
    app.wait_in_thread(
        id(&root),
        "needs no approval in this run (`input.amount > 1000` does not hold)",
    )
    .await;
    assert_eq!(app.ledger_of("approval.not_required").await.len(), 1);
    assert!(app.ledger_of("approval.requested").await.is_empty());
}

#[tokio::test]
async fn a_quorum_ladder_reminds_escalates_and_lets_the_escalation_decide_across_a_restart() {
    let mut app = app().await;
    let run = app.start_run("ana", "general", "/pay 5000").await;
    app.wait_for_status(run, "waiting_approval").await;
    let root = id(&app.root_of("general", run).await);
    let request = app.wait_in_thread(root, "Approval needed").await;
    assert!(
        text(&request).contains("Needs 2 distinct approvals: 0 so far"),
        "{}",
        text(&request)
    );
    let approve = button(&request, "Approve").unwrap();

    // The requester is not an approver; ben counts once however often he clicks.
    assert_eq!(
        app.click("ana", id(&request), &approve).await,
        ["You are not an approver for this step."]
    );
    assert_eq!(
        app.click("ben", id(&request), &approve).await,
        ["Your approval is counted: 1 of 2."]
    );
    assert_eq!(
        app.click("ben", id(&request), &approve).await,
        ["You have already decided on this step; each person counts once."]
    );
    eventually("the request to show ben's approval", || async {
        app.thread(root)
            .await
            .iter()
            .any(|m| text(m).contains("Needs 2 distinct approvals: 1 so far (@ben)"))
    })
    .await;

    // First rung: a reminder in the thread, once.
    app.advance(Duration::minutes(61));
    let reminder = app.wait_in_thread(root, "Reminder: step *gate*").await;
    assert!(text(&reminder).contains("@cy"), "{}", text(&reminder));
    assert!(
        !text(&reminder).contains("@ben"),
        "ben has decided: {}",
        text(&reminder)
    );

    // The ladder is rows: a restart loses no rung and repeats none.
    app.stop().await;
    app.start().await;
    app.advance(Duration::minutes(60));
    let escalated = eventually_some("the request in #finance", || async {
        app.channel_if_any("finance").await.and_then(|msgs| {
            msgs.into_iter()
                .find(|m| text(m).contains("*Escalated* from run"))
        })
    })
    .await;
    assert!(text(&escalated).contains("Needs 2 distinct approvals: 1 so far (@ben)"));
    app.wait_in_thread(root, "Escalated to #finance and @dee at")
        .await;

    // dee, whom the escalation named, decides in #finance.
    let approve_there = button(&escalated, "Approve").unwrap();
    app.click("dee", id(&escalated), &approve_there).await;
    app.wait_for_status(run, "succeeded").await;
    app.wait_in_thread(root, "Approved by @ben, @dee").await;
    eventually("the #finance copy to show the outcome", || async {
        app.channel("finance")
            .await
            .iter()
            .any(|m| text(m).contains("Approved by @ben, @dee"))
    })
    .await;

    app.advance(Duration::hours(3));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for (kind, n) in [
        ("approval.reminded", 1),
        ("approval.escalated", 1),
        ("approval.voted", 1),
        ("approval.decided", 1),
        ("approval.expired", 0),
    ] {
        assert_eq!(app.ledger_of(kind).await.len(), n, "{kind}");
    }
    let refused = app.ledger_of("approval.refused").await;
    assert_eq!(refused.len(), 2, "ana's and ben's second click");
}

#[tokio::test]
async fn an_approval_nobody_decides_expires_as_rejected_after_its_ladder() {
    let app = app().await;
    let run = app.start_run("ana", "general", "/pay 5000").await;
    app.wait_for_status(run, "waiting_approval").await;
    app.advance(Duration::hours(5));
    app.wait_for_status(run, "rejected").await;
    let root = id(&app.root_of("general", run).await);
    app.wait_in_thread(root, "Expired at").await;
    assert_eq!(app.ledger_of("approval.expired").await.len(), 1);
}

const RESTRICTED: &str = r#"
name = "deploy"
description = "Deploy to production"
[[trigger]]
kind = "slash"
command = "deploy"
[permissions]
users = ["group:release"]
channels = ["general"]
[[step]]
id = "gate"
kind = "approval"
approvers = ["group:release"]
[[step]]
id = "go"
kind = "notify"
needs = ["gate"]
text = "Deploying."
"#;

#[tokio::test]
async fn only_members_of_a_console_group_may_start_a_workflow_and_refusals_are_audited() {
    let app = spawn(Spawn {
        extra_workflows: vec![("deploy.toml", RESTRICTED.into())],
        with_examples: false,
        env: vec![
            ("BATON_CONSOLE_GROUPS", "release=ben,cy".into()),
            ("BATON_CONSOLE_CHANNELS", "general,random".into()),
        ],
        ..Default::default()
    })
    .await;
    let body = app.say("ana", "general", "/deploy").await;
    assert_eq!(
        body["notices"],
        serde_json::json!(["You are not allowed to start /deploy here."])
    );
    assert!(
        body["started"].as_array().is_none_or(|s| s.is_empty()),
        "{body}"
    );
    let refused = app.ledger_of("trigger.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["actor"], "console:ana");

    // ben may start it; the group approves, but not ben himself (four-eyes) and not dee.
    let run = app.start_run("ben", "general", "/deploy").await;
    app.wait_for_status(run, "waiting_approval").await;
    let request = app
        .wait_in_thread(id(&app.root_of("general", run).await), "Approval needed")
        .await;
    assert!(
        text(&request).contains("Approvers: @group:release"),
        "{}",
        text(&request)
    );
    let approve = button(&request, "Approve").unwrap();
    assert!(app.click("ben", id(&request), &approve).await[0].contains("four-eyes"));
    assert_eq!(
        app.click("dee", id(&request), &approve).await,
        ["You are not an approver for this step."]
    );
    app.click("cy", id(&request), &approve).await;
    app.wait_for_status(run, "succeeded").await;
    // A member, but in a channel the workflow does not allow.
    let body = app.say("cy", "random", "/deploy").await;
    assert_eq!(
        body["notices"],
        serde_json::json!(["You are not allowed to start /deploy here."])
    );
    assert_eq!(app.ledger_of("trigger.refused").await.len(), 2);
}

#[tokio::test]
async fn a_stalled_run_is_flagged_with_retry_and_cancel_and_retry_resumes_it() {
    let workflow = stalling_workflow(&["ana", "ben"]).await;
    let app = spawn(Spawn {
        extra_workflows: vec![("check.toml", workflow)],
        with_examples: false,
        ..Default::default()
    })
    .await;
    let run = app.start_run("ana", "general", "/check").await;
    let root = id(&app.root_of("general", run).await);
    app.wait_in_thread(root, "started").await;
    app.advance(Duration::minutes(11));
    let alert = app.wait_in_thread(root, "*Stalled*: run").await;
    assert!(
        text(&alert).contains("It is waiting on *fetch*"),
        "{}",
        text(&alert)
    );
    let retry = button(&alert, "Retry").unwrap();
    assert!(button(&alert, "Cancel run").is_some());
    let (_, page) = app.get("/stalled").await;
    assert!(
        page.contains(&format!("<a href=\"/runs/{run}\">{run}</a>")),
        "listed on the console page"
    );

    // Only people allowed to start the workflow may retry it.
    let refused = app.click("dee", id(&alert), &retry).await;
    assert!(
        refused[0].starts_with(&format!("You may not retry run {run}")),
        "{refused:?}"
    );
    assert_eq!(
        app.click("ben", id(&alert), &retry).await,
        ["Retrying fetch."]
    );
    app.wait_for_status(run, "succeeded").await;
    app.wait_in_thread(root, "The service says ok.").await;
    app.wait_in_thread(root, "Retried by @ben").await;
    assert_eq!(app.ledger_of("run.stalled").await.len(), 1);
    assert_eq!(app.ledger_of("run.retried").await.len(), 1);
    let (_, page) = app.get("/stalled").await;
    assert!(page.contains("Nothing is stalled."));
}

const WELCOME: &str = r#"
name = "welcome"
description = "Welcome a customer"
[[trigger]]
kind = "slash"
command = "welcome"
args = [{ name = "who", required = true }]
[[step]]
id = "gate"
kind = "approval"
approvers = ["ben", "cy"]
message = "Send this email?"
payload = "Dear {{ input.who }}, welcome."
editable = true
[[step]]
id = "send"
kind = "notify"
needs = ["gate"]
channel = "outbox"
text = "{{ steps.gate.output.payload }}"
"#;

#[tokio::test]
async fn an_approver_edits_the_payload_then_someone_else_approves_it_and_an_old_copy_is_refused() {
    let app = spawn(Spawn {
        extra_workflows: vec![("welcome.toml", WELCOME.into())],
        with_examples: false,
        env: vec![("BATON_CONSOLE_CHANNELS", "general,outbox".into())],
        ..Default::default()
    })
    .await;
    let run = app.start_run("ana", "general", "/welcome Jane").await;
    let root = id(&app.root_of("general", run).await);
    let first = app.wait_in_thread(root, "Approval needed").await;
    let edit = first["message"]["buttons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == "Edit")
        .cloned()
        .unwrap();
    assert_eq!(edit["prefill"], "Dear Jane, welcome.");
    let old_approve = button(&first, "Approve").unwrap();

    let notices = app
        .click_with_text(
            "ben",
            id(&first),
            edit["action"].as_str().unwrap(),
            "Dear Jane, welcome aboard!",
        )
        .await;
    assert!(notices[0].starts_with("Your edit is saved"), "{notices:?}");
    let fresh = app.wait_in_thread(root, "Payload edited by @ben").await;
    assert!(
        fresh["message"]["detail"]
            .as_str()
            .unwrap()
            .ends_with("Dear Jane, welcome aboard!")
    );

    // ben edited it, so his approval does not count; the first copy no longer decides.
    let approve = button(&fresh, "Approve").unwrap();
    assert!(app.click("ben", id(&fresh), &approve).await[0].contains("You edited this payload"));
    assert_eq!(
        app.click("cy", id(&first), &old_approve).await,
        ["This button is no longer active."],
        "the console shows the replaced copy without buttons"
    );
    app.click("cy", id(&fresh), &approve).await;
    app.wait_for_status(run, "succeeded").await;
    let sent = eventually_some("the email in #outbox", || async {
        app.channel("outbox").await.into_iter().next()
    })
    .await;
    assert_eq!(text(&sent), "Dear Jane, welcome aboard!");
    let edited = app.ledger_of("approval.edited").await;
    assert_eq!(edited.len(), 1);
    assert_eq!(edited[0]["actor"], "console:ben");
    let data: serde_json::Value =
        serde_json::from_str(edited[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        (data["before"].as_str(), data["after"].as_str()),
        (
            Some("Dear Jane, welcome."),
            Some("Dear Jane, welcome aboard!")
        )
    );
}

#[tokio::test]
async fn in_the_console_the_members_of_a_channel_are_the_people_who_write_there() {
    let wf = PAY
        .replace("approvers = [\"ben\", \"cy\"]\nquorum = 2\nwhen = \"input.amount > 1000\"\n", "approvers = [\"channel:finance\"]\n")
        .replace("remind_after = \"1h\"\nescalate_after = \"2h\"\nescalate_to = { channel = \"finance\", approvers = [\"dee\"] }\n", "");
    let app = spawn(Spawn {
        extra_workflows: vec![("pay.toml", wf)],
        with_examples: false,
        env: vec![("BATON_CONSOLE_CHANNELS", "general,finance".into())],
        ..Default::default()
    })
    .await;
    app.say("dee", "finance", "I look after payments.").await;
    let run = app.start_run("ana", "general", "/pay 5000").await;
    let root = id(&app.root_of("general", run).await);
    let request = app.wait_in_thread(root, "Approval needed").await;
    assert!(
        text(&request).contains("Approvers: members of #finance"),
        "{}",
        text(&request)
    );
    let approve = button(&request, "Approve").unwrap();
    assert_eq!(
        app.click("cy", id(&request), &approve).await,
        ["You are not an approver for this step."]
    );
    app.click("dee", id(&request), &approve).await;
    app.wait_for_status(run, "succeeded").await;
}
