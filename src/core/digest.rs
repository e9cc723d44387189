//! The daily digest: figures come from the store (the ledger and the run rows), never from a
//! model; this module only words them.

use crate::core::ids::RunId;
use crate::core::workflow::format_duration;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// How many waiting approvals and stalled runs a digest names one by one; the rest are counted.
pub const LISTED: usize = 15;

/// What happened in a period, and what is waiting now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DigestFigures {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub cancelled: u64,
    pub started: u64,
    /// How many approvals wait, and the oldest of them (at most [`LISTED`]).
    pub waiting_count: u64,
    pub waiting: Vec<WaitingApproval>,
    /// How many runs are stalled, and the longest stalled (at most [`LISTED`]).
    pub stalled_count: u64,
    pub stalled: Vec<StalledRun>,
    /// Messages the outbox gave up on that nobody has sent again yet.
    pub undelivered: u64,
    /// The ledger's newest entry as a checkpoint (signed when the ledger is), so chat history
    /// holds points of the chain that `baton audit verify --expect` can check later.
    pub ledger_head: Option<String>,
}

/// An approval nobody has decided yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitingApproval {
    pub run: RunId,
    pub workflow: String,
    pub step: String,
    pub approvers: Vec<String>,
    pub since: DateTime<Utc>,
}

/// A run with no progress for longer than the stall threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StalledRun {
    pub run: RunId,
    pub workflow: String,
    pub status: String,
    pub idle_since: DateTime<Utc>,
}

/// Words the figures for a channel.
pub fn render(f: &DigestFigures) -> String {
    let mut out = vec![format!(
        "*Daily digest* ({} – {})",
        f.since.format("%Y-%m-%d %H:%M"),
        f.until.format("%Y-%m-%d %H:%M UTC")
    )];
    out.push(format!(
        "Runs started: {} · finished: {} · failed: {} · rejected: {} · cancelled: {}",
        f.started, f.succeeded, f.failed, f.rejected, f.cancelled
    ));
    if f.waiting_count == 0 {
        out.push("Waiting for approval: none".into());
    } else {
        out.push(format!("Waiting for approval: {}", f.waiting_count));
        for w in &f.waiting {
            let who: Vec<String> = w
                .approvers
                .iter()
                .map(|a| format!("@{}", crate::core::engine::render::approver_name(a)))
                .collect();
            out.push(format!(
                "• run {} ({}) step {}: waiting on {} for {}",
                w.run,
                w.workflow,
                w.step,
                who.join(", "),
                format_duration(f.until - w.since)
            ));
        }
        more(&mut out, f.waiting_count, f.waiting.len());
    }
    if f.stalled_count == 0 {
        out.push("Stalled: none".into());
    } else {
        out.push(format!("Stalled: {}", f.stalled_count));
        for s in &f.stalled {
            out.push(format!(
                "• run {} ({}) {} with no progress for {}",
                s.run,
                s.workflow,
                s.status,
                format_duration(f.until - s.idle_since)
            ));
        }
        more(&mut out, f.stalled_count, f.stalled.len());
    }
    if f.undelivered > 0 {
        out.push(format!(
            "Messages not delivered: {} (their runs' threads have Retry; the console's Stalled page lists them)",
            f.undelivered
        ));
    }
    if let Some(head) = &f.ledger_head {
        out.push(format!(
            "Ledger checkpoint: `{head}` (`baton audit verify --expect {head}` proves nothing before it was deleted or changed)"
        ));
    }
    out.join("\n")
}

fn more(out: &mut Vec<String>, total: u64, listed: usize) {
    if total > listed as u64 {
        out.push(format!(
            "• …and {} more (see the console's approvals and runs pages)",
            total - listed as u64
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn the_digest_names_counts_waiting_approvals_and_their_age() {
        let until = DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let f = DigestFigures {
            since: until - Duration::days(1),
            until,
            succeeded: 3,
            failed: 1,
            started: 5,
            waiting_count: 1,
            waiting: vec![WaitingApproval {
                run: RunId(7),
                workflow: "demo".into(),
                step: "gate".into(),
                approvers: vec!["ben".into()],
                since: until - Duration::hours(3),
            }],
            ..Default::default()
        };
        let text = render(&f);
        assert!(text.contains("finished: 3 · failed: 1"), "{text}");
        assert!(
            text.contains("run 7 (demo) step gate: waiting on @ben for 3 h"),
            "{text}"
        );
        assert!(text.contains("Stalled: none"), "{text}");
        assert!(!text.contains("not delivered"), "{text}");
    }

    #[test]
    fn the_digest_lists_stalled_runs_and_counts_messages_not_delivered() {
        let until = DateTime::parse_from_rfc3339("2026-03-02T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let f = DigestFigures {
            until,
            stalled_count: 1,
            stalled: vec![StalledRun {
                run: RunId(9),
                workflow: "check".into(),
                status: "running".into(),
                idle_since: until - Duration::hours(2),
            }],
            undelivered: 2,
            ..Default::default()
        };
        let text = render(&f);
        assert!(
            text.contains("• run 9 (check) running with no progress for 2 h"),
            "{text}"
        );
        assert!(text.contains("Messages not delivered: 2"), "{text}");
        assert!(!text.contains("Ledger checkpoint"), "{text}");
        let f = DigestFigures {
            ledger_head: Some("42:0123456789abcdef".into()),
            ..f
        };
        assert!(
            render(&f).contains("Ledger checkpoint: `42:0123456789abcdef` (`baton audit verify --expect 42:0123456789abcdef`"),
            "{}",
            render(&f)
        );
    }
}
