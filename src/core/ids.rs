//! Identifiers parsed once at the edge, so the core never re-validates them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A workflow run. Shown to people as "run 42".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for RunId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_start_matches('#');
        s.parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(RunId)
            .ok_or_else(|| format!("`{s}` is not a run number"))
    }
}

/// The id of a step inside a workflow, as written in its `id = "..."`.
pub type StepId = String;

/// A stable, logical name for a message the engine posts, such as `run:42:root`. The outbox
/// maps it to the platform's own reference once delivered, so edits and thread replies can be
/// written before the first post has reached the platform.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageKey(pub String);

impl MessageKey {
    /// The run's root message, which carries its status.
    pub fn root(run: RunId) -> Self {
        Self(format!("run:{run}:root"))
    }
    /// Any other message of a run.
    pub fn of(run: RunId, what: &str) -> Self {
        Self(format!("run:{run}:{what}"))
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a button does, encoded in the button's action id so every platform round-trips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionId {
    Approve {
        run: RunId,
        step: StepId,
    },
    Reject {
        run: RunId,
        step: StepId,
    },
    Cancel {
        run: RunId,
    },
    /// Start again what a stalled run is stuck on.
    Retry {
        run: RunId,
    },
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionId::Approve { run, step } => write!(f, "approve:{run}:{step}"),
            ActionId::Reject { run, step } => write!(f, "reject:{run}:{step}"),
            ActionId::Cancel { run } => write!(f, "cancel:{run}"),
            ActionId::Retry { run } => write!(f, "retry:{run}"),
        }
    }
}

impl FromStr for ActionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let verb = parts.next().unwrap_or_default();
        let run: RunId = parts.next().unwrap_or_default().parse()?;
        let step = parts.next().map(str::to_owned);
        match (verb, step) {
            ("approve", Some(step)) if !step.is_empty() => Ok(ActionId::Approve { run, step }),
            ("reject", Some(step)) if !step.is_empty() => Ok(ActionId::Reject { run, step }),
            ("cancel", None) => Ok(ActionId::Cancel { run }),
            ("retry", None) => Ok(ActionId::Retry { run }),
            _ => Err(format!("unknown action `{s}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_round_trip_through_their_text_form() {
        for action in [
            ActionId::Approve {
                run: RunId(7),
                step: "gate".into(),
            },
            ActionId::Reject {
                run: RunId(7),
                step: "gate".into(),
            },
            ActionId::Cancel { run: RunId(12) },
        ] {
            assert_eq!(action.to_string().parse::<ActionId>().unwrap(), action);
        }
    }

    #[test]
    fn malformed_action_ids_are_refused() {
        for bad in [
            "",
            "approve",
            "approve:x:gate",
            "approve:0:gate",
            "approve:3:",
            "cancel:3:x",
            "boom:3",
        ] {
            assert!(bad.parse::<ActionId>().is_err(), "{bad} parsed");
        }
    }
}
