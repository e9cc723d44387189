//! The console in headless Chromium: type `/demo`, watch the thread grow, get refused as a
//! non-approver, approve as an approver, and see the run finish — with no page reload.

mod support;

#[path = "support/webdriver.rs"]
mod webdriver;

use serde_json::json;
use support::spawn_app;
use webdriver::Browser;

#[tokio::test]
async fn a_person_runs_demo_in_the_console_and_approves_it_in_the_browser() {
    if std::env::var("BATON_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("BATON_SKIP_BROWSER=1: browser test skipped on purpose");
        return;
    }
    let app = spawn_app().await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/", app.base)).await;
    browser.wait_for("#user option[value=\"ana\"]").await;
    browser
        .click(&browser.wait_for("#user option[value=\"ana\"]").await)
        .await;
    browser.wait_for_text("#channel-name", "#general").await;

    let input = browser.wait_for("#text").await;
    browser.type_into(&input, "/demo browsers\u{E007}").await;

    // The root message appears live, then gains replies.
    browser
        .wait_for_text("#messages", "Demo for browsers")
        .await;
    let replies = browser.wait_for("#messages .replies").await;
    browser.click(&replies).await;
    browser
        .wait_for_text("#thread-messages", "Approval needed")
        .await;
    browser
        .wait_for_text(
            "#thread-messages",
            "*health*: done in".replace('*', "").as_str(),
        )
        .await;

    // dee is not an approver: a private notice, nothing changes.
    browser
        .click(&browser.wait_for("#user option[value=\"dee\"]").await)
        .await;
    browser
        .click(
            &browser
                .wait_for("#thread-messages button[data-action^=\"approve:\"]")
                .await,
        )
        .await;
    browser
        .wait_for_text("#thread-notices", "You are not an approver for this step.")
        .await;
    assert!(
        browser
            .find("#thread-messages button[data-action^=\"approve:\"]")
            .await
            .is_some()
    );

    // ben approves; the thread and the root update without a reload.
    browser
        .click(&browser.wait_for("#user option[value=\"ben\"]").await)
        .await;
    browser
        .click(
            &browser
                .wait_for("#thread-messages button[data-action^=\"approve:\"]")
                .await,
        )
        .await;
    browser
        .wait_for_text("#thread-messages", "Approved by @ben at")
        .await;
    browser
        .wait_for_text("#thread-messages", "Run 1 done after")
        .await;
    browser.wait_for_text("#messages", "Status: done").await;
    assert!(
        browser
            .find("#thread-messages button[data-action^=\"approve:\"]")
            .await
            .is_none(),
        "buttons are gone"
    );
    let reloaded = browser
        .script(
            "return performance.getEntriesByType('navigation').length",
            json!([]),
        )
        .await;
    assert_eq!(reloaded, json!(1), "the page never reloaded");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-demo.png");
    browser.screenshot(&shot).await;
    browser.quit().await;
}
