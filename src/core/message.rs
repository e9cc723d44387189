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
