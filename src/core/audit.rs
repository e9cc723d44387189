//! The audit ledger's types: one kind per event, the hash chain, and redaction of secrets.
//! The store appends entries inside the same transaction as the state change they describe.

use crate::core::ids::RunId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Everything the ledger records. The string form is the `kind` column and the export format,
/// so variants are renamed, never repurposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuditKind {
    TriggerReceived,
    TriggerRefused,
    InboundUnreadable,
    ActionUnreadable,
    RunStarted,
    RunStatusChanged,
    RunCancelled,
    RunStalled,
    RunRetried,
    StepStarted,
    StepFinished,
    StepFailed,
    StepSkipped,
    StepRetryScheduled,
    AttemptLost,
    ResultIgnored,
    ToolCalled,
    ToolRefused,
    ModelCalled,
    ApprovalRequested,
    ApprovalDecided,
    ApprovalRefused,
    ApprovalExpired,
    ApprovalVoted,
    ApprovalReminded,
    ApprovalEscalated,
    ApprovalNotRequired,
    ApprovalEdited,
    PostQueued,
    PostDelivered,
    PostFailed,
    DeliveryAlerted,
    DeliveryRecovered,
    ScheduleFired,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::TriggerReceived => "trigger.received",
            AuditKind::ModelCalled => "model.called",
            AuditKind::TriggerRefused => "trigger.refused",
            AuditKind::InboundUnreadable => "inbound.unreadable",
            AuditKind::ActionUnreadable => "action.unreadable",
            AuditKind::RunStarted => "run.started",
            AuditKind::RunStatusChanged => "run.status",
            AuditKind::RunCancelled => "run.cancelled",
            AuditKind::RunStalled => "run.stalled",
            AuditKind::RunRetried => "run.retried",
            AuditKind::StepStarted => "step.started",
            AuditKind::StepFinished => "step.finished",
            AuditKind::StepFailed => "step.failed",
            AuditKind::StepSkipped => "step.skipped",
            AuditKind::StepRetryScheduled => "step.retry_scheduled",
            AuditKind::AttemptLost => "step.attempt_lost",
            AuditKind::ResultIgnored => "step.result_ignored",
            AuditKind::ToolCalled => "tool.called",
            AuditKind::ToolRefused => "tool.refused",
            AuditKind::ApprovalRequested => "approval.requested",
            AuditKind::ApprovalDecided => "approval.decided",
            AuditKind::ApprovalRefused => "approval.refused",
            AuditKind::ApprovalExpired => "approval.expired",
            AuditKind::ApprovalVoted => "approval.voted",
            AuditKind::ApprovalReminded => "approval.reminded",
            AuditKind::ApprovalEscalated => "approval.escalated",
            AuditKind::ApprovalNotRequired => "approval.not_required",
            AuditKind::ApprovalEdited => "approval.edited",
            AuditKind::PostQueued => "post.queued",
            AuditKind::PostDelivered => "post.delivered",
            AuditKind::PostFailed => "post.failed",
            AuditKind::DeliveryAlerted => "delivery.alerted",
            AuditKind::DeliveryRecovered => "delivery.recovered",
            AuditKind::ScheduleFired => "schedule.fired",
        }
    }
}

/// One event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub kind: AuditKind,
    pub run: Option<RunId>,
    pub step: Option<String>,
    /// Who caused it (`console:ben`), when a person did.
    pub actor: Option<String>,
    pub data: Value,
}

impl AuditEvent {
    pub fn new(at: DateTime<Utc>, kind: AuditKind, run: Option<RunId>, data: Value) -> Self {
        Self {
            at,
            kind,
            run,
            step: None,
            actor: None,
            data,
        }
    }
    pub fn step(mut self, step: &str) -> Self {
        self.step = Some(step.to_owned());
        self
    }
    pub fn actor(mut self, actor: &crate::core::event::Actor) -> Self {
        self.actor = Some(format!("{}:{}", actor.platform, actor.id));
        self
    }
}

/// An entry as stored: the data is kept as the exact JSON text that was hashed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub run: Option<i64>,
    pub step: Option<String>,
    pub actor: Option<String>,
    pub data: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of the chain's start.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hashes an entry together with the previous entry's hash. Each field is length-prefixed so no
/// two different entries can hash the same text.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    prev: &str,
    seq: i64,
    at: DateTime<Utc>,
    kind: &str,
    run: Option<i64>,
    step: Option<&str>,
    actor: Option<&str>,
    data: &str,
) -> String {
    let mut h = Sha256::new();
    let run = run.map(|r| r.to_string()).unwrap_or_default();
    let at = at.timestamp_millis().to_string();
    let seq = seq.to_string();
    for part in [
        prev,
        &seq,
        &at,
        kind,
        &run,
        step.unwrap_or(""),
        actor.unwrap_or(""),
        data,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl AuditEntry {
    /// Recomputes this entry's hash from its fields.
    pub fn expected_hash(&self) -> String {
        entry_hash(
            &self.prev_hash,
            self.seq,
            self.at,
            &self.kind,
            self.run,
            self.step.as_deref(),
            self.actor.as_deref(),
            &self.data,
        )
    }
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Intact { entries: u64 },
    Broken { seq: i64, reason: String },
}

/// Walks entries in order, checking links and hashes. Feed it pages in sequence order.
#[derive(Debug)]
pub struct ChainVerifier {
    prev: String,
    last_seq: i64,
    count: u64,
    broken: Option<(i64, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            prev: GENESIS.to_owned(),
            last_seq: 0,
            count: 0,
            broken: None,
        }
    }
}

impl ChainVerifier {
    /// Checks the next entry; after the first break the rest is ignored.
    pub fn push(&mut self, e: &AuditEntry) {
        if self.broken.is_some() {
            return;
        }
        let problem = if e.seq != self.last_seq + 1 {
            Some(format!(
                "entry {} follows entry {}: entries are missing",
                e.seq, self.last_seq
            ))
        } else if e.prev_hash != self.prev {
            Some("its link to the previous entry does not match".to_owned())
        } else if e.expected_hash() != e.hash {
            Some("its content does not match its hash (edited after it was written)".to_owned())
        } else {
            None
        };
        if let Some(reason) = problem {
            self.broken = Some((e.seq, reason));
            return;
        }
        self.prev = e.hash.clone();
        self.last_seq = e.seq;
        self.count += 1;
    }

    pub fn finish(self) -> Verification {
        match self.broken {
            Some((seq, reason)) => Verification::Broken { seq, reason },
            None => Verification::Intact {
                entries: self.count,
            },
        }
    }
}

/// Removes secrets before anything is written to the ledger: the configured secret values,
/// wherever they appear, and the values of fields whose names say they hold one.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

const SECRET_FIELD_HINTS: [&str; 7] = [
    "token",
    "secret",
    "password",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
];

impl Redactor {
    /// Secrets shorter than 4 characters are ignored: redacting them would shred ordinary text.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    pub fn redact(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                for secret in &self.secrets {
                    if s.contains(secret.as_str()) {
                        *s = s.replace(secret.as_str(), "[redacted]");
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact(v)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    let key = k.to_ascii_lowercase();
                    // Counts such as `max_tokens` or `prompt_tokens` are numbers; secrets
                    // are text.
                    let countable = v.is_number() || v.is_boolean();
                    if SECRET_FIELD_HINTS.iter().any(|h| key.contains(h))
                        && !v.is_null()
                        && !countable
                    {
                        *v = Value::String("[redacted]".into());
                    } else {
                        self.redact(v);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn redact_text(&self, text: &str) -> String {
        let mut v = Value::String(text.to_owned());
        self.redact(&mut v);
        match v {
            Value::String(s) => s,
            _ => unreachable!("a string stays a string"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let at = DateTime::from_timestamp_millis(1_700_000_000_000 + seq).unwrap();
                let data = format!("{{\"n\":{seq}}}");
                let hash = entry_hash(&prev, seq, at, "run.started", Some(1), None, None, &data);
                let e = AuditEntry {
                    seq,
                    at,
                    kind: "run.started".into(),
                    run: Some(1),
                    step: None,
                    actor: None,
                    data,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn verify(entries: &[AuditEntry]) -> Verification {
        let mut v = ChainVerifier::default();
        entries.iter().for_each(|e| v.push(e));
        v.finish()
    }

    #[test]
    fn an_untouched_chain_verifies_intact() {
        assert_eq!(verify(&chain(5)), Verification::Intact { entries: 5 });
    }

    #[test]
    fn an_edited_entry_is_reported_as_the_first_break() {
        let mut entries = chain(5);
        entries[2].data = "{\"n\":99}".into();
        assert!(matches!(
            verify(&entries),
            Verification::Broken { seq: 3, .. }
        ));
    }

    #[test]
    fn a_deleted_entry_is_reported() {
        let mut entries = chain(5);
        entries.remove(1);
        assert!(matches!(
            verify(&entries),
            Verification::Broken { seq: 3, .. }
        ));
    }

    #[test]
    fn configured_secrets_and_secret_fields_are_redacted() {
        let r = Redactor::new(["s3cr3t-value".to_owned(), "ab".to_owned()]);
        let mut v = json!({"url": "https://x/?key=s3cr3t-value", "api_key": "zzz", "nested": [{"Authorization": "Bearer q"}], "about": "ab"});
        r.redact(&mut v);
        assert_eq!(
            v,
            json!({"url": "https://x/?key=[redacted]", "api_key": "[redacted]", "nested": [{"Authorization": "[redacted]"}], "about": "ab"})
        );
    }

    #[test]
    fn token_counts_are_not_mistaken_for_tokens() {
        let mut v = json!({"max_tokens": 100, "usage": {"prompt_tokens": 7}, "token": "abc"});
        Redactor::new([]).redact(&mut v);
        assert_eq!(
            v,
            json!({"max_tokens": 100, "usage": {"prompt_tokens": 7}, "token": "[redacted]"})
        );
    }
}
