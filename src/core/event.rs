//! What the platform adapters hand to the core: one [`InboundEvent`] per slash command, channel
//! message or button click, already stripped of every platform type.

use crate::core::ids::ActionId;
use serde::{Deserialize, Serialize};

/// The platform name of operators acting through the CLI.
pub const OPERATOR_PLATFORM: &str = "cli";

/// A person (or bot) acting on a platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The platform the identity belongs to: `console`, `slack`, `discord`, or `schedule`.
    pub platform: String,
    /// The platform's stable id for the actor (a console user name, a Slack `U…` id).
    pub id: String,
    /// How to show the actor to people.
    pub display: String,
    /// Bots are ignored by triggers unless a workflow opts in.
    pub is_bot: bool,
    /// Platform groups the actor belongs to (Slack user groups, Discord roles), filled in by
    /// the adapter when it matters (a click on an approval), so approvers can be groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Actor {
    /// The identity schedules act under.
    pub fn scheduler() -> Self {
        Self {
            platform: "schedule".into(),
            id: "schedule".into(),
            display: "the schedule".into(),
            is_bot: true,
            groups: vec![],
        }
    }

    /// An operator acting from the command line, who may cancel any run.
    pub fn operator(name: &str) -> Self {
        Self {
            platform: OPERATOR_PLATFORM.into(),
            id: name.into(),
            display: name.into(),
            is_bot: false,
            groups: vec![],
        }
    }

    /// Whether this is an operator on the command line (who has the database anyway).
    pub fn is_operator(&self) -> bool {
        self.platform == OPERATOR_PLATFORM
    }

    /// Whether a configured name names this actor: a user id (`ben`, `U012ABC`), a group the
    /// actor belongs to (`group:S0ABC`), either pinned to a platform (`slack:U012ABC`,
    /// `slack:group:S0ABC`).
    pub fn is_named_by(&self, name: &str) -> bool {
        let (platform, rest) = match name.split_once(':') {
            Some((p, rest)) if p != "group" && p != "channel" => (Some(p), rest),
            _ => (None, name),
        };
        if platform.is_some_and(|p| p != self.platform) {
            return false;
        }
        if let Some(group) = rest.strip_prefix("group:") {
            return self.groups.iter().any(|g| g == group);
        }
        // Members of a channel: the platform says who they are, as `channel:NAME` groups.
        if rest.starts_with("channel:") {
            return self.groups.iter().any(|g| g == rest);
        }
        rest == self.id
    }
}

/// Where a conversation happens: a channel on a platform, optionally inside a thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRef {
    pub platform: String,
    pub channel: String,
    /// The platform reference of the thread's root message, when the event came from a thread.
    pub thread: Option<String>,
}

/// One thing that happened on a platform.
#[derive(Debug, Clone)]
pub struct InboundEvent {
    /// Unique per platform delivery (Slack `event_id`, a Discord interaction id, a console
    /// client id). The same id seen twice starts at most one run.
    pub id: String,
    pub actor: Actor,
    pub conversation: ConversationRef,
    pub kind: EventKind,
}

/// The kinds of inbound events.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// `/name rest of the line`; `name` has no slash. Platforms that type the arguments
    /// themselves (Discord's command options) also give them by name in `options`, and
    /// `text` is then their values in order, for the record.
    Slash {
        command: String,
        text: String,
        options: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// A plain channel message; `mentions_bot` when it addressed the bot.
    Message { text: String, mentions_bot: bool },
    /// A button click on a message the bot posted.
    Action {
        action: ActionId,
        reason: Option<String>,
    },
    /// A click on a button Baton cannot read (one it never made, or of an older format): the
    /// person is told it is no longer valid, and the ledger keeps what it said.
    UnreadableAction { action: String },
}
