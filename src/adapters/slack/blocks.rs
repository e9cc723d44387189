//! An [`OutMessage`] as Slack Block Kit: a section for the text, code sections for the detail,
//! an actions block for the buttons, all within Slack's limits (3,000 characters per section
//! text, 50 blocks per message, 40,000 characters of fallback text).

use crate::adapters::chunks;
use crate::core::message::{ButtonStyle, OutMessage};
use regex::Regex;
use serde_json::{Value, json};
use slack_morphism::prelude::*;
use std::sync::OnceLock;

/// Longest text in one section block, as Slack documents it.
pub const SECTION_LIMIT: usize = 3000;
/// Most blocks in one message.
pub const BLOCK_LIMIT: usize = 50;
/// Longest fallback `text` we send (Slack truncates at 40,000).
pub const TEXT_LIMIT: usize = 3000;

/// Slack user ids written as `@U…` and user groups written as `@group:S…` become real
/// mentions (`<@U…>`, `<!subteam^S…>`).
fn mentions(text: &str) -> String {
    static USERS: OnceLock<Regex> = OnceLock::new();
    static GROUPS: OnceLock<Regex> = OnceLock::new();
    let users = USERS.get_or_init(|| Regex::new(r"@([UW][A-Z0-9]{6,})\b").expect("valid regex"));
    let groups =
        GROUPS.get_or_init(|| Regex::new(r"@group:(S[A-Z0-9]{6,})\b").expect("valid regex"));
    let text = groups.replace_all(text, "<!subteam^$1>");
    users.replace_all(&text, "<@$1>").into_owned()
}

/// Escapes the three characters Slack's mrkdwn reserves, leaving our `<@U…>` mentions intact.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The `text` and `blocks` fields of a `chat.postMessage` or `chat.update` call.
pub fn render(message: &OutMessage) -> (String, Value) {
    // Slack refuses an empty section; say so rather than lose the post.
    let text = match message.text.trim() {
        "" => "(empty message)".to_owned(),
        t => mentions(&escape(t)),
    };
    let mut blocks: Vec<SlackBlock> = chunks(&text, SECTION_LIMIT)
        .into_iter()
        .map(|t| SlackSectionBlock::new().with_text(md!(t)).into())
        .collect();
    if let Some(detail) = &message.detail {
        // Code fences take 6 characters of each section.
        for piece in chunks(&escape(detail), SECTION_LIMIT - 8) {
            blocks.push(
                SlackSectionBlock::new()
                    .with_text(md!(format!("```{piece}```")))
                    .into(),
            );
        }
    }
    let reserve = usize::from(!message.buttons.is_empty());
    if blocks.len() + reserve > BLOCK_LIMIT {
        blocks.truncate(BLOCK_LIMIT - reserve - 1);
        blocks.push(
            SlackSectionBlock::new()
                .with_text(md!(
                    "_(cut to fit one Slack message; the whole of it is on the run's page)_"
                ))
                .into(),
        );
    }
    if !message.buttons.is_empty() {
        let elements: Vec<SlackActionBlockElement> = message
            .buttons
            .iter()
            .map(|b| {
                // The value carries the question when the click must ask for a reason first.
                let value = match &b.prompt {
                    Some(q) => json!({"ask": q}).to_string(),
                    None => String::new(),
                };
                let button = SlackBlockButtonElement::new(b.label.as_str().into())
                    .with_action_id(b.action.clone().into());
                let button = if value.is_empty() {
                    button
                } else {
                    button.with_value(value)
                };
                let button = match b.style {
                    ButtonStyle::Primary => button.with_style(SlackBlockButtonStyle::Primary),
                    ButtonStyle::Danger => button.with_style(SlackBlockButtonStyle::Danger),
                    ButtonStyle::Default => button,
                };
                button.into()
            })
            .collect();
        blocks.push(SlackActionsBlock::new(elements).into());
    }
    let fallback: String = text.chars().take(TEXT_LIMIT).collect();
    (
        fallback,
        serde_json::to_value(&blocks).unwrap_or_else(|_| json!([])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{ActionId, RunId};
    use crate::core::message::Button;

    #[test]
    fn buttons_become_an_actions_block_with_styles_and_action_ids() {
        let m = OutMessage {
            text: "*Approval needed*".into(),
            buttons: vec![
                Button::new(
                    "Approve",
                    ActionId::Approve {
                        run: RunId(4),
                        step: "gate".into(),
                        shown: None,
                    },
                    ButtonStyle::Primary,
                ),
                Button::new(
                    "Reject",
                    ActionId::Reject {
                        run: RunId(4),
                        step: "gate".into(),
                        shown: None,
                    },
                    ButtonStyle::Danger,
                ),
            ],
            ..Default::default()
        };
        let (_, blocks) = render(&m);
        let actions = blocks.as_array().unwrap().last().unwrap();
        assert_eq!(actions["type"], "actions");
        assert_eq!(actions["elements"][0]["action_id"], "approve:4:gate");
        assert_eq!(actions["elements"][0]["style"], "primary");
        assert_eq!(actions["elements"][1]["style"], "danger");
        assert_eq!(actions["elements"][1]["text"]["type"], "plain_text");
    }

    #[test]
    fn long_output_is_split_and_never_breaks_slack_limits() {
        let m = OutMessage {
            text: "x".repeat(7000),
            detail: Some("line\n".repeat(40_000)),
            ..Default::default()
        };
        let (text, blocks) = render(&m);
        let blocks = blocks.as_array().unwrap();
        assert!(blocks.len() <= BLOCK_LIMIT);
        assert!(text.chars().count() <= TEXT_LIMIT);
        for b in blocks {
            assert!(
                b["text"]["text"].as_str().unwrap().chars().count() <= SECTION_LIMIT,
                "{b}"
            );
        }
        assert!(
            blocks.last().unwrap()["text"]["text"]
                .as_str()
                .unwrap()
                .contains("cut to fit")
        );
    }

    #[test]
    fn user_ids_become_mentions_and_markup_characters_are_escaped() {
        let (text, _) = render(&OutMessage {
            text: "started by @U01ABCDEF for <script> & co, ask @group:S0RELEASE".into(),
            ..Default::default()
        });
        assert_eq!(
            text,
            "started by <@U01ABCDEF> for &lt;script&gt; &amp; co, ask <!subteam^S0RELEASE>"
        );
    }

    #[test]
    fn an_empty_message_still_renders_a_valid_section() {
        let (text, blocks) = render(&OutMessage::default());
        assert_eq!(text, "(empty message)");
        assert_eq!(blocks[0]["text"]["text"], "(empty message)");
    }
}
