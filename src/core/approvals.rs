//! Pure approval policy: who may decide a pending approval.

use crate::core::engine::state::Approval;
use crate::core::event::Actor;
use crate::core::workflow::ApprovalSpec;

/// Why a click on Approve or Reject changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The actor is not among the step's approvers.
    NotApprover,
    /// Four-eyes: whoever started the run may not approve it.
    OwnRun,
    /// This person already decided; with a quorum each person counts once.
    AlreadyVoted,
    /// Four-eyes: whoever edited the payload may not approve it.
    EditedIt,
    /// The request changed (its payload was edited) since the person saw it.
    Stale,
}

impl Refusal {
    /// The private notice the actor sees. Same wording on every platform.
    pub fn notice(&self) -> &'static str {
        match self {
            Refusal::NotApprover => "You are not an approver for this step.",
            Refusal::OwnRun => "You started this run, so you cannot approve it (four-eyes rule).",
            Refusal::AlreadyVoted => {
                "You have already decided on this step; each person counts once."
            }
            Refusal::EditedIt => {
                "You edited this payload, so your approval does not count (four-eyes rule)."
            }
            Refusal::Stale => {
                "This request changed since you saw it (its payload was edited). Decide on the fresh request in the thread."
            }
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotApprover => "not_approver",
            Refusal::OwnRun => "own_run",
            Refusal::AlreadyVoted => "already_voted",
            Refusal::EditedIt => "edited_it",
            Refusal::Stale => "stale_payload",
        }
    }
}

/// Decides whether `actor` may approve (or reject) under `spec` for a run `requester` started,
/// given who may decide now (`approvers`: the step's, plus the escalation's once it
/// escalated). An approver may always reject; approving one's own run needs
/// `allow_self_approval`.
pub fn may_decide(
    spec: &ApprovalSpec,
    approvers: &[String],
    requester: &Actor,
    actor: &Actor,
    approve: bool,
) -> Result<(), Refusal> {
    if !approvers.iter().any(|a| actor.is_named_by(a)) {
        return Err(Refusal::NotApprover);
    }
    let own = actor.platform == requester.platform && actor.id == requester.id;
    if approve && own && !spec.allow_self_approval {
        return Err(Refusal::OwnRun);
    }
    Ok(())
}

/// What a decision is bound to: the request as shown (its message, an approval step's payload,
/// an agent call's exact tool and arguments), as a short hash buttons carry.
pub fn request_hash(a: &Approval) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(a.summary.as_bytes());
    h.update([0]);
    h.update(a.content.as_deref().unwrap_or_default().as_bytes());
    h.update([0]);
    if let Some(p) = &a.payload {
        h.update(p["hash"].as_str().unwrap_or_default().as_bytes());
    }
    hex::encode(&h.finalize()[..4])
}

/// A click carrying the hash of what the person saw counts only if that is still the request.
pub fn current(approval: &Approval, shown: Option<&str>) -> Result<(), Refusal> {
    match shown {
        Some(h) if h != request_hash(approval) => Err(Refusal::Stale),
        _ => Ok(()),
    }
}

/// Under four-eyes, whoever changed the payload does not also approve it.
pub fn not_editor(
    spec: &ApprovalSpec,
    approval: &Approval,
    actor: &Actor,
    approve: bool,
) -> Result<(), Refusal> {
    let edited = approval
        .editors
        .iter()
        .any(|e| e.platform == actor.platform && e.id == actor.id);
    if approve && edited && !spec.allow_self_approval {
        return Err(Refusal::EditedIt);
    }
    Ok(())
}

/// Each person decides once: a second click by the same person changes nothing.
pub fn not_voted(approval: &Approval, actor: &Actor) -> Result<(), Refusal> {
    let same = |v: &Actor| v.platform == actor.platform && v.id == actor.id;
    if approval.votes.iter().any(|v| same(&v.actor)) {
        return Err(Refusal::AlreadyVoted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn user(id: &str) -> Actor {
        Actor {
            platform: "console".into(),
            id: id.into(),
            display: id.into(),
            is_bot: false,
            groups: vec![],
        }
    }

    fn spec(allow_self: bool) -> ApprovalSpec {
        ApprovalSpec {
            allow_self_approval: allow_self,
            ..ApprovalSpec::simple(
                vec!["ben".into(), "console:cy".into()],
                String::new(),
                Duration::hours(1),
            )
        }
    }

    #[test]
    fn a_listed_approver_may_approve_someone_elses_run() {
        assert_eq!(
            may_decide(
                &spec(false),
                &spec(false).approvers,
                &user("ana"),
                &user("ben"),
                true
            ),
            Ok(())
        );
        assert_eq!(
            may_decide(
                &spec(false),
                &spec(false).approvers,
                &user("ana"),
                &user("cy"),
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn someone_not_listed_is_refused() {
        assert_eq!(
            may_decide(
                &spec(false),
                &spec(false).approvers,
                &user("ana"),
                &user("dee"),
                true
            ),
            Err(Refusal::NotApprover)
        );
        assert_eq!(
            may_decide(
                &spec(false),
                &spec(false).approvers,
                &user("ana"),
                &user("dee"),
                false
            ),
            Err(Refusal::NotApprover)
        );
    }

    #[test]
    fn a_platform_qualified_approver_does_not_match_another_platform() {
        let mut cy = user("cy");
        cy.platform = "slack".into();
        assert_eq!(
            may_decide(
                &spec(false),
                &spec(false).approvers,
                &user("ana"),
                &cy,
                true
            ),
            Err(Refusal::NotApprover)
        );
    }

    #[test]
    fn the_requester_cannot_approve_their_own_run_unless_allowed() {
        assert_eq!(
            may_decide(
                &spec(false),
                &spec(false).approvers,
                &user("ben"),
                &user("ben"),
                true
            ),
            Err(Refusal::OwnRun)
        );
        assert_eq!(
            may_decide(
                &spec(true),
                &spec(true).approvers,
                &user("ben"),
                &user("ben"),
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn a_member_of_an_approver_group_may_decide() {
        let spec = ApprovalSpec {
            approvers: vec!["group:release".into(), "slack:group:S0OPS".into()],
            ..spec(false)
        };
        let mut cy = user("cy");
        assert_eq!(
            may_decide(&spec, &spec.approvers, &user("ana"), &cy, true),
            Err(Refusal::NotApprover)
        );
        cy.groups = vec!["release".into()];
        assert_eq!(
            may_decide(&spec, &spec.approvers, &user("ana"), &cy, true),
            Ok(())
        );
        let mut slack = user("U0CY");
        slack.platform = "slack".into();
        slack.groups = vec!["S0OPS".into()];
        assert_eq!(
            may_decide(&spec, &spec.approvers, &user("ana"), &slack, true),
            Ok(())
        );
        let mut console = user("dee");
        console.groups = vec!["S0OPS".into()];
        assert_eq!(
            may_decide(&spec, &spec.approvers, &user("ana"), &console, true),
            Err(Refusal::NotApprover),
            "pinned to Slack"
        );
    }

    #[test]
    fn the_requester_may_still_reject_their_own_run() {
        assert_eq!(
            may_decide(
                &spec(false),
                &spec(false).approvers,
                &user("ben"),
                &user("ben"),
                false
            ),
            Ok(())
        );
    }
}
