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
        if s.is_empty() {
            return Err("The run's number is missing (runs are numbered 1, 2, 3 …).".into());
        }
        s.parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(RunId)
            .ok_or_else(|| {
                let shown: String = s.chars().take(40).collect();
                format!("`{shown}` is not a run number (runs are numbered 1, 2, 3 …).")
            })
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
    /// `shown`: the hash of the request the person saw, so a click on a request that has
    /// changed since (an edited payload) is refused rather than counted.
    Approve {
        run: RunId,
        step: StepId,
        shown: Option<String>,
    },
    Reject {
        run: RunId,
        step: StepId,
        shown: Option<String>,
    },
    /// Change an approval's payload before approving (the new text comes with the click).
    Edit {
        run: RunId,
        step: StepId,
        shown: Option<String>,
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
            ActionId::Approve { run, step, shown } => write_step(f, "approve", *run, step, shown),
            ActionId::Reject { run, step, shown } => write_step(f, "reject", *run, step, shown),
            ActionId::Edit { run, step, shown } => write_step(f, "edit", *run, step, shown),
            ActionId::Cancel { run } => write!(f, "cancel:{run}"),
            ActionId::Retry { run } => write!(f, "retry:{run}"),
        }
    }
}

fn write_step(
    f: &mut fmt::Formatter<'_>,
    verb: &str,
    run: RunId,
    step: &str,
    shown: &Option<String>,
) -> fmt::Result {
    match shown {
        Some(h) => write!(f, "{verb}:{run}:{step}:{h}"),
        None => write!(f, "{verb}:{run}:{step}"),
    }
}

impl FromStr for ActionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Step ids have no `:` (checked when workflows load), so a fourth part is the hash.
        let mut parts = s.splitn(4, ':');
        let verb = parts.next().unwrap_or_default();
        let run: RunId = parts.next().unwrap_or_default().parse()?;
        let step = parts.next().map(str::to_owned);
        let shown = match parts.next() {
            None => None,
            Some(h)
                if !h.is_empty() && h.len() <= 16 && h.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                Some(h.to_owned())
            }
            Some(_) => return Err(format!("unknown action `{s}`")),
        };
        match (verb, step) {
            ("approve", Some(step)) if !step.is_empty() => {
                Ok(ActionId::Approve { run, step, shown })
            }
            ("reject", Some(step)) if !step.is_empty() => Ok(ActionId::Reject { run, step, shown }),
            ("edit", Some(step)) if !step.is_empty() => Ok(ActionId::Edit { run, step, shown }),
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
                shown: None,
            },
            ActionId::Reject {
                run: RunId(7),
                step: "gate".into(),
                shown: Some("ab12cd34".into()),
            },
            ActionId::Edit {
                run: RunId(7),
                step: "gate".into(),
                shown: Some("ab12cd34".into()),
            },
            ActionId::Cancel { run: RunId(12) },
            ActionId::Retry { run: RunId(12) },
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
            "approve:3:gate:not-a-hash",
            "boom:3",
        ] {
            assert!(bad.parse::<ActionId>().is_err(), "{bad} parsed");
        }
    }
}
