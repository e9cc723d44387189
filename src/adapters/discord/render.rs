//! An [`OutMessage`] as a Discord message body: the text as `content`, the detail as code-block
//! embeds, the buttons in an action row, all within Discord's limits (2,000 characters of
//! content, 4,096 per embed description, 6,000 across a message's embeds, 10 embeds, 80
//! characters per button label, 100 per custom id). Bodies are built with serenity's builders.

use crate::adapters::chunks;
use crate::core::message::{ButtonStyle, OutMessage};
use regex::Regex;
use serde_json::Value;
use serenity::all::ButtonStyle as DiscordButtonStyle;
use serenity::builder::{
    CreateActionRow, CreateAllowedMentions, CreateButton, CreateEmbed, CreateMessage, EditMessage,
};
use std::sync::OnceLock;

/// Longest `content` Discord accepts.
pub const CONTENT_LIMIT: usize = 2000;
/// Longest embed description.
pub const DESCRIPTION_LIMIT: usize = 4096;
/// Most characters across all embeds of one message.
pub const EMBEDS_TOTAL_LIMIT: usize = 6000;
/// Most embeds in one message.
pub const EMBED_COUNT_LIMIT: usize = 10;
/// Longest button label.
pub const LABEL_LIMIT: usize = 80;

/// Prefix of a button's custom id when the click must ask for a reason first.
pub const ASK_PREFIX: &str = "ask:";

/// What is said where a message had to be cut.
const CUT_NOTE: &str = "\n*(cut to fit one Discord message; the whole of it is on the run's page)*";

/// Discord ids written as `@123…` and roles written as `@group:123…` become real mentions
/// (`<@123…>`, `<@&123…>`); the core's `*bold*` becomes Discord's `**bold**`.
fn discord_markdown(text: &str) -> String {
    static USERS: OnceLock<Regex> = OnceLock::new();
    static ROLES: OnceLock<Regex> = OnceLock::new();
    static BOLD: OnceLock<Regex> = OnceLock::new();
    let roles = ROLES.get_or_init(|| Regex::new(r"@group:(\d{15,21})\b").expect("valid regex"));
    let users =
        USERS.get_or_init(|| Regex::new(r"(^|[^<\w&])@(\d{15,21})\b").expect("valid regex"));
    let bold = BOLD.get_or_init(|| Regex::new(r"\*([^*\n]+)\*").expect("valid regex"));
    let text = bold.replace_all(text, "**$1**");
    let text = roles.replace_all(&text, "<@&$1>");
    users.replace_all(&text, "$1<@$2>").into_owned()
}

/// The users and roles a message may ping: only those it names on purpose, never `@everyone`
/// or a mention typed into an input.
fn allowed_mentions(message: &OutMessage) -> CreateAllowedMentions {
    let snowflake = |s: &str| s.parse::<u64>().ok().filter(|_| s.len() >= 15);
    let mut users = Vec::new();
    let mut roles = Vec::new();
    for entry in &message.mentions {
        let entry = entry.strip_prefix("discord:").unwrap_or(entry);
        match entry.strip_prefix("group:") {
            Some(role) => roles.extend(snowflake(role)),
            None => users.extend(snowflake(entry)),
        }
    }
    // Discord takes at most 100 of each.
    users.truncate(100);
    roles.truncate(100);
    CreateAllowedMentions::new().users(users).roles(roles)
}

/// Cuts `text` to `limit` characters, saying so.
fn fit(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let keep = limit - CUT_NOTE.chars().count();
    let cut: String = text.chars().take(keep).collect();
    format!("{cut}{CUT_NOTE}")
}

/// The detail as code-block embeds, as many as fit.
fn embeds(detail: &str) -> Vec<CreateEmbed> {
    // A fence inside the detail would end the code block early.
    let detail = detail.replace("```", "`\u{200b}``");
    let mut out = Vec::new();
    let mut total = 0;
    // The fences and the note always fit after what went before, so the cut embed never
    // pushes the message over Discord's total.
    let note = CUT_NOTE.chars().count() + 8;
    let budget = EMBEDS_TOTAL_LIMIT - note;
    let pieces = chunks(&detail, DESCRIPTION_LIMIT - 8);
    let count = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        let description = format!("```\n{piece}```");
        let size = description.chars().count();
        if total + size > budget || out.len() + 1 == EMBED_COUNT_LIMIT && i + 1 < count {
            // What does not fit is cut, and the last embed says so.
            let keep = (EMBEDS_TOTAL_LIMIT - total - note).min(DESCRIPTION_LIMIT - note);
            let cut: String = piece.chars().take(keep).collect();
            out.push(CreateEmbed::new().description(format!("```\n{cut}```{CUT_NOTE}")));
            break;
        }
        total += size;
        out.push(CreateEmbed::new().description(description));
    }
    out
}

fn buttons(message: &OutMessage) -> Vec<CreateActionRow> {
    if message.buttons.is_empty() {
        return vec![];
    }
    // Five buttons fit in a row; the core never asks for more than three.
    let row = message
        .buttons
        .iter()
        .take(5)
        .map(|b| {
            let id = match b.prompt {
                Some(_) => format!("{ASK_PREFIX}{}", b.action),
                None => b.action.clone(),
            };
            let label: String = b.label.chars().take(LABEL_LIMIT).collect();
            CreateButton::new(id).label(label).style(match b.style {
                // The affirmative choice (Approve) is green, as Discord's guidelines suggest.
                ButtonStyle::Primary => DiscordButtonStyle::Success,
                ButtonStyle::Danger => DiscordButtonStyle::Danger,
                ButtonStyle::Default => DiscordButtonStyle::Secondary,
            })
        })
        .collect();
    vec![CreateActionRow::Buttons(row)]
}

/// The content of a message: never empty, never over the limit.
fn content(message: &OutMessage) -> String {
    match message.text.trim() {
        "" if message.detail.is_some() => String::new(),
        "" => "(empty message)".to_owned(),
        t => fit(&discord_markdown(t), CONTENT_LIMIT),
    }
}

/// The body of `POST /channels/{id}/messages`.
pub fn post(message: &OutMessage) -> Value {
    let body = CreateMessage::new()
        .content(content(message))
        .embeds(message.detail.as_deref().map(embeds).unwrap_or_default())
        .components(buttons(message))
        .allowed_mentions(allowed_mentions(message));
    serde_json::to_value(body).expect("a message body serializes")
}

/// The body of `PATCH /channels/{id}/messages/{id}`: every part is given, so a removed button
/// or detail is removed on Discord too.
pub fn edit(message: &OutMessage) -> Value {
    let body = EditMessage::new()
        .content(content(message))
        .embeds(message.detail.as_deref().map(embeds).unwrap_or_default())
        .components(buttons(message))
        .allowed_mentions(allowed_mentions(message));
    serde_json::to_value(body).expect("a message body serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{ActionId, RunId};
    use crate::core::message::Button;

    fn approval() -> OutMessage {
        OutMessage {
            text: "*Approval needed* for step *gate*\nApprovers: @123456789012345678, @group:223456789012345678 @everyone".into(),
            detail: Some("payload".into()),
            buttons: vec![
                Button::new(
                    "Approve",
                    ActionId::Approve {
                        run: RunId(7),
                        step: "gate".into(),
                        shown: None,
                    },
                    ButtonStyle::Primary,
                ),
                Button::new(
                    "Reject",
                    ActionId::Reject {
                        run: RunId(7),
                        step: "gate".into(),
                        shown: None,
                    },
                    ButtonStyle::Danger,
                )
                .asking("Why?"),
            ],
            mentions: vec![
                "discord:123456789012345678".into(),
                "discord:group:223456789012345678".into(),
                "ben".into(),
            ],
        }
    }

    #[test]
    fn an_approval_has_green_and_red_buttons_and_pings_only_its_approvers() {
        let body = post(&approval());
        assert_eq!(
            body["content"],
            "**Approval needed** for step **gate**\nApprovers: <@123456789012345678>, <@&223456789012345678> @everyone"
        );
        let row = &body["components"][0];
        assert_eq!(row["type"], 1);
        assert_eq!(row["components"][0]["style"], 3, "Approve is success");
        assert_eq!(row["components"][0]["custom_id"], "approve:7:gate");
        assert_eq!(row["components"][1]["style"], 4, "Reject is danger");
        assert_eq!(row["components"][1]["custom_id"], "ask:reject:7:gate");
        let allowed = &body["allowed_mentions"];
        assert_eq!(allowed["parse"], serde_json::json!([]));
        assert_eq!(allowed["users"], serde_json::json!(["123456789012345678"]));
        assert_eq!(allowed["roles"], serde_json::json!(["223456789012345678"]));
        assert_eq!(body["embeds"][0]["description"], "```\npayload```");
    }

    #[test]
    fn an_edit_that_removes_the_buttons_says_so() {
        let mut m = approval();
        m.buttons.clear();
        m.detail = None;
        let body = edit(&m);
        assert_eq!(body["components"], serde_json::json!([]));
        assert_eq!(body["embeds"], serde_json::json!([]));
    }

    #[test]
    fn long_text_and_output_are_cut_to_discords_limits() {
        let m = OutMessage {
            text: "x".repeat(5000),
            detail: Some("line of output\n".repeat(2000)),
            ..Default::default()
        };
        let body = post(&m);
        let content = body["content"].as_str().unwrap();
        assert!(content.chars().count() <= CONTENT_LIMIT);
        assert!(content.ends_with("the whole of it is on the run's page)*"));
        let embeds = body["embeds"].as_array().unwrap();
        assert!(embeds.len() <= EMBED_COUNT_LIMIT);
        let total: usize = embeds
            .iter()
            .map(|e| e["description"].as_str().unwrap().chars().count())
            .sum();
        assert!(total <= EMBEDS_TOTAL_LIMIT, "{total}");
        assert!(
            embeds
                .iter()
                .all(|e| e["description"].as_str().unwrap().chars().count() <= DESCRIPTION_LIMIT)
        );
        assert!(
            embeds.last().unwrap()["description"]
                .as_str()
                .unwrap()
                .contains("cut to fit")
        );
    }

    #[test]
    fn embeds_stay_within_the_total_however_the_lines_fall() {
        // Line lengths that leave the second embed nearly full and little room after it.
        for long in [1800, 1826, 1850, 1880, 1905, 1990, 3000, 4087, 4200] {
            let detail = format!(
                "{}\n{}\n{}",
                "a".repeat(4000),
                "b".repeat(long),
                "c".repeat(900)
            );
            let body = post(&OutMessage {
                text: "t".into(),
                detail: Some(detail),
                ..Default::default()
            });
            let total: usize = body["embeds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["description"].as_str().unwrap().chars().count())
                .sum();
            assert!(total <= EMBEDS_TOTAL_LIMIT, "{long}: {total}");
        }
    }

    #[test]
    fn an_empty_message_is_still_a_valid_one() {
        assert_eq!(post(&OutMessage::default())["content"], "(empty message)");
        let fenced = post(&OutMessage {
            detail: Some("a ``` b".into()),
            ..Default::default()
        });
        assert!(!fenced["embeds"][0]["description"].as_str().unwrap()[4..].contains("```\n"));
    }
}
