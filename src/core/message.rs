//! The platform-neutral outgoing message. Adapters render it as Block Kit, Discord components
//! or console HTML; the core never knows which.

use crate::core::ids::{ActionId, MessageKey, RunId};
use serde::{Deserialize, Serialize};

/// A message the bot posts or edits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutMessage {
    /// The main text, in a small markdown subset (`*bold*`, `` `code` ``, line breaks).
    pub text: String,
    /// Longer content shown as a block under the text (a step output, a payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Buttons, in order. Empty once a decision removed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
    /// Users to mention, by their platform id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

impl OutMessage {
    /// The message with control characters taken out of everything it shows: NUL and other
    /// C0/C1 controls (a tab and a line break stay; `\r\n` becomes a line break) and the
    /// bidirectional overrides that make text read differently from what it is. Platforms
    /// refuse some of them (Slack's `invalid_blocks`, Discord's 50035) and render others as
    /// boxes; none belongs in a chat message.
    pub fn strip_controls(&mut self) {
        self.text = strip_controls(&self.text);
        if let Some(d) = &mut self.detail {
            *d = strip_controls(d);
        }
        for b in &mut self.buttons {
            b.label = strip_controls(&b.label);
            for t in [&mut b.prompt, &mut b.prefill].into_iter().flatten() {
                *t = strip_controls(t);
            }
        }
    }
}

/// `text` without control characters and bidirectional overrides (see
/// [`OutMessage::strip_controls`]).
pub fn strip_controls(text: &str) -> String {
    let unwanted = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !text.chars().any(unwanted) {
        return text.to_owned();
    }
    text.replace("\r\n", "\n")
        .chars()
        .filter(|c| !unwanted(*c))
        .collect()
}

/// A button on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Button {
    pub label: String,
    /// The action id text form (see [`ActionId`]).
    pub action: String,
    pub style: ButtonStyle,
    /// Ask the person for text (a reason) before the click counts: a modal on Slack and
    /// Discord, a form in the console. The text is the question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The text the answer starts from (an Edit button's current payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<String>,
}

impl Button {
    /// A button that triggers `action`.
    pub fn new(label: &str, action: ActionId, style: ButtonStyle) -> Self {
        Self {
            label: label.into(),
            action: action.to_string(),
            style,
            prompt: None,
            prefill: None,
        }
    }

    /// The same button, asking `question` first.
    pub fn asking(mut self, question: &str) -> Self {
        self.prompt = Some(question.to_owned());
        self
    }

    /// The same button, its answer starting from `text`.
    pub fn prefilled(mut self, text: &str) -> Self {
        self.prefill = Some(text.to_owned());
        self
    }
}

/// How prominent a button is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonStyle {
    Primary,
    Danger,
    Default,
}

/// Where a post goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub platform: String,
    pub channel: String,
    /// Post as a reply in the thread of this earlier message.
    pub thread: Option<MessageKey>,
    /// Only this person (a platform user id) sees the post: a direct message on Slack and
    /// Discord, a private notice in the console. `channel` then says where it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_to: Option<String>,
}

/// One entry for the outbox: nothing reaches a platform except through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Post a new message under a stable key.
    Post {
        run: Option<RunId>,
        key: MessageKey,
        to: Destination,
        message: OutMessage,
        /// Goes out ahead of its conversation's queue instead of in line: a delivery alert
        /// must not wait behind the very message it is about.
        urgent: bool,
    },
    /// Replace the content of an earlier post.
    Edit {
        run: Option<RunId>,
        key: MessageKey,
        message: OutMessage,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_taken_out_of_what_a_message_shows() {
        let mut m = OutMessage {
            text: "a\u{0}b\r\nc\td\u{1b}[31m\u{202e}e".into(),
            detail: Some("x\u{7f}y\u{85}z".into()),
            ..Default::default()
        };
        m.strip_controls();
        assert_eq!(m.text, "ab\nc\td[31me");
        assert_eq!(m.detail.as_deref(), Some("xyz"));
        assert_eq!(strip_controls("plain ✓ 👩‍💻"), "plain ✓ 👩‍💻");
    }
}
