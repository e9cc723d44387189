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
    /// HMAC-SHA256 of `hash` under `BATON_AUDIT_KEY`, when a key was set when it was written:
    /// a tail rewritten by someone without the key has no valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
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

/// The secret key the ledger is signed with (`BATON_AUDIT_KEY`). Its Debug form prints
/// nothing of it.
#[derive(Clone)]
pub struct AuditKey(Vec<u8>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

impl AuditKey {
    pub fn new(key: &[u8]) -> Self {
        Self(key.to_vec())
    }

    fn mac(&self, parts: &[&str]) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The signature stored with an entry: over its hash, which covers the whole chain before it.
    pub fn entry_mac(&self, hash: &str) -> String {
        self.mac(&["baton-audit-entry", hash])
    }

    /// The signature of a checkpoint as printed for people: the first 16 hex digits are
    /// plenty to stop a forger who has no key, and short enough for a chat message.
    pub fn checkpoint_mac(&self, seq: i64, hash: &str) -> String {
        self.mac(&["baton-audit-head", &seq.to_string(), hash])[..CHECKPOINT_MAC_LEN].to_owned()
    }
}

/// Hex digits of a hash a printed checkpoint keeps.
pub const CHECKPOINT_HASH_LEN: usize = 16;
const CHECKPOINT_MAC_LEN: usize = 16;
/// The shortest hash prefix a checkpoint may give: shorter ones would be easy to collide.
const MIN_CHECKPOINT_HASH: usize = 12;

/// A point of the chain seen before, as people keep it: `SEQ:HASH`, or `SEQ:HASH:MAC` when
/// signed. `HASH` may be a prefix of the entry's hash (12 hex digits at least).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub mac: Option<String>,
}

impl Checkpoint {
    /// The checkpoint of entry `seq` with hash `hash`, signed when there is a key.
    pub fn of(seq: i64, hash: &str, key: Option<&AuditKey>) -> Self {
        Self {
            seq,
            hash: hash.chars().take(CHECKPOINT_HASH_LEN).collect(),
            mac: key.map(|k| k.checkpoint_mac(seq, hash)),
        }
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)?;
        if let Some(mac) = &self.mac {
            write!(f, ":{mac}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{text}` is not a checkpoint: write SEQ:HASH (or SEQ:HASH:SIGNATURE), as `baton audit verify` and the digest print it"
            )
        };
        let mut parts = text.trim().trim_start_matches('#').split(':');
        let seq = parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(bad)?;
        let hex = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit());
        let hash = parts
            .next()
            .filter(|h| hex(h) && h.len() >= MIN_CHECKPOINT_HASH)
            .ok_or_else(bad)?
            .to_ascii_lowercase();
        let mac = match parts.next() {
            None => None,
            Some(m) if hex(m) => Some(m.to_ascii_lowercase()),
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self { seq, hash, mac })
    }
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every link and hash checks out, every checkpoint is on the chain, and with a key every
    /// entry since signing began is signed. `head` is the newest entry's checkpoint;
    /// `unsigned` counts entries written before a key was set (with a key only).
    Intact {
        entries: u64,
        head: Option<Checkpoint>,
        unsigned: u64,
    },
    Broken {
        seq: i64,
        reason: String,
    },
}

/// Walks entries in order, checking links, hashes and (with a key) signatures, then the
/// checkpoints seen before. Feed it pages in sequence order.
#[derive(Debug)]
pub struct ChainVerifier {
    prev: String,
    last_seq: i64,
    count: u64,
    broken: Option<(i64, String)>,
    key: Option<AuditKey>,
    signed_since: Option<i64>,
    unsigned: u64,
    expect: Vec<Checkpoint>,
    /// The full hash of each entry a checkpoint names, as found.
    found: std::collections::HashMap<i64, String>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new(None, Vec::new())
    }
}

impl ChainVerifier {
    /// A verifier that checks signatures with `key` and that the chain holds `expect`.
    pub fn new(key: Option<AuditKey>, expect: Vec<Checkpoint>) -> Self {
        Self {
            prev: GENESIS.to_owned(),
            last_seq: 0,
            count: 0,
            broken: None,
            key,
            signed_since: None,
            unsigned: 0,
            expect,
            found: Default::default(),
        }
    }

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
            self.signature_problem(e)
        };
        if let Some(reason) = problem {
            self.broken = Some((e.seq, reason));
            return;
        }
        if self.expect.iter().any(|c| c.seq == e.seq) {
            self.found.insert(e.seq, e.hash.clone());
        }
        self.prev = e.hash.clone();
        self.last_seq = e.seq;
        self.count += 1;
    }

    fn signature_problem(&mut self, e: &AuditEntry) -> Option<String> {
        let key = self.key.as_ref()?;
        match &e.mac {
            Some(mac) if *mac == key.entry_mac(&e.hash) => {
                self.signed_since.get_or_insert(e.seq);
                None
            }
            Some(_) => Some(
                "its signature is not one BATON_AUDIT_KEY made: it was written or rewritten without the key".to_owned(),
            ),
            None if self.signed_since.is_some() => Some(
                "it is not signed, though the entries before it are: it was added without BATON_AUDIT_KEY".to_owned(),
            ),
            None => {
                self.unsigned += 1;
                None
            }
        }
    }

    pub fn finish(self) -> Verification {
        if let Some((seq, reason)) = self.broken {
            return Verification::Broken { seq, reason };
        }
        for c in &self.expect {
            let Some(hash) = self.found.get(&c.seq) else {
                return Verification::Broken {
                    seq: c.seq,
                    reason: format!(
                        "the ledger ends at entry {}, but entry {} was seen before: newer entries were deleted",
                        self.last_seq, c.seq
                    ),
                };
            };
            if !hash.starts_with(&c.hash) {
                return Verification::Broken {
                    seq: c.seq,
                    reason: format!(
                        "it is not the entry seen before (checkpoint {c}): the ledger was rewritten from here"
                    ),
                };
            }
            if let (Some(mac), Some(key)) = (&c.mac, &self.key)
                && *mac != key.checkpoint_mac(c.seq, hash)
            {
                return Verification::Broken {
                    seq: c.seq,
                    reason: format!("checkpoint {c} was not signed with BATON_AUDIT_KEY"),
                };
            }
        }
        let head = (self.last_seq > 0)
            .then(|| Checkpoint::of(self.last_seq, &self.prev, self.key.as_ref()));
        Verification::Intact {
            entries: self.count,
            head,
            unsigned: self.unsigned,
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

    /// Takes out the configured secret values only, wherever they appear (keys included);
    /// unlike [`Redactor::redact`], a field is not blanked for its name. For data a run goes
    /// on with (step outputs, inputs, turns, memory), where `token_count` or a field called
    /// `password_hint` must stay as it is.
    pub fn redact_values(&self, value: &mut Value) {
        if self.secrets.is_empty() {
            return;
        }
        match value {
            Value::String(s) => *s = self.redact_text(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_values(v)),
            Value::Object(map) => {
                let has_secret_key = map
                    .keys()
                    .any(|k| self.secrets.iter().any(|s| k.contains(s.as_str())));
                if has_secret_key {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.redact_text(&k), v);
                    }
                }
                map.values_mut().for_each(|v| self.redact_values(v));
            }
            _ => {}
        }
    }

    /// Whether there is anything to redact by value (field names are always looked at).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// A chat message with every secret value taken out of what it shows.
    pub fn redact_message(&self, m: &mut crate::core::message::OutMessage) {
        m.text = self.redact_text(&m.text);
        if let Some(d) = &mut m.detail {
            *d = self.redact_text(d);
        }
        for b in &mut m.buttons {
            b.label = self.redact_text(&b.label);
            for t in [&mut b.prompt, &mut b.prefill].into_iter().flatten() {
                *t = self.redact_text(t);
            }
        }
    }

    /// Only the configured secret values, for text (not JSON): names of fields mean nothing.
    pub fn redact_text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
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
                    mac: None,
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
        let entries = chain(5);
        assert_eq!(
            verify(&entries),
            Verification::Intact {
                entries: 5,
                head: Some(Checkpoint::of(5, &entries[4].hash, None)),
                unsigned: 0
            }
        );
    }

    fn verify_with(
        entries: &[AuditEntry],
        key: Option<&AuditKey>,
        expect: &[&str],
    ) -> Verification {
        let expect = expect.iter().map(|c| c.parse().unwrap()).collect();
        let mut v = ChainVerifier::new(key.cloned(), expect);
        entries.iter().for_each(|e| v.push(e));
        v.finish()
    }

    #[test]
    fn a_ledger_shorter_than_a_checkpoint_seen_before_is_broken() {
        let entries = chain(5);
        let head = Checkpoint::of(5, &entries[4].hash, None).to_string();
        assert!(matches!(
            verify_with(&entries, None, &[&head]),
            Verification::Intact { .. }
        ));
        // The newest two entries deleted: what is left is a valid chain, but not the one seen.
        match verify_with(&entries[..3], None, &[&head]) {
            Verification::Broken { seq: 5, reason } => {
                assert!(reason.contains("newer entries were deleted"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rewritten_tail_does_not_match_the_checkpoint_seen_before() {
        let entries = chain(5);
        let head = Checkpoint::of(4, &entries[3].hash, None).to_string();
        let mut forged = chain(3);
        // A forger rebuilds entries 4 and 5 with other content, hashing them properly.
        let mut prev = forged[2].hash.clone();
        for seq in 4..=5 {
            let at = DateTime::from_timestamp_millis(1_700_000_000_000 + seq).unwrap();
            let hash = entry_hash(&prev, seq, at, "run.started", Some(2), None, None, "{}");
            forged.push(AuditEntry {
                seq,
                at,
                kind: "run.started".into(),
                run: Some(2),
                step: None,
                actor: None,
                data: "{}".into(),
                prev_hash: prev.clone(),
                hash: hash.clone(),
                mac: None,
            });
            prev = hash;
        }
        assert!(
            matches!(verify(&forged), Verification::Intact { .. }),
            "a chain on its own"
        );
        assert!(matches!(
            verify_with(&forged, None, &[&head]),
            Verification::Broken { seq: 4, .. }
        ));
    }

    #[test]
    fn with_a_key_an_entry_added_without_it_is_broken_and_checkpoints_must_be_signed() {
        let key = AuditKey::new(b"a key of some length");
        let mut entries = chain(4);
        for e in &mut entries[1..3] {
            e.mac = Some(key.entry_mac(&e.hash));
        }
        // Entry 1 was written before the key was set; entry 4 by someone without it.
        match verify_with(&entries, Some(&key), &[]) {
            Verification::Broken { seq: 4, reason } => {
                assert!(reason.contains("not signed"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        entries[3].mac = Some("00".repeat(32));
        assert!(matches!(
            verify_with(&entries, Some(&key), &[]),
            Verification::Broken { seq: 4, .. }
        ));
        entries[3].mac = Some(key.entry_mac(&entries[3].hash));
        let Verification::Intact {
            head: Some(head),
            unsigned: 1,
            ..
        } = verify_with(&entries, Some(&key), &[])
        else {
            panic!("intact with one early unsigned entry");
        };
        assert!(head.mac.is_some(), "the head is printed signed");
        let signed = head.to_string();
        assert!(matches!(
            verify_with(&entries, Some(&key), &[&signed]),
            Verification::Intact { .. }
        ));
        let forged = format!("4:{}:{}", head.hash, "0".repeat(16));
        assert!(matches!(
            verify_with(&entries, Some(&key), &[&forged]),
            Verification::Broken { seq: 4, .. }
        ));
    }

    #[test]
    fn checkpoints_are_read_as_printed_and_bad_ones_refused() {
        let c: Checkpoint = "#42:0123456789abcdef".parse().unwrap();
        assert_eq!(
            (c.seq, c.hash.as_str(), c.mac),
            (42, "0123456789abcdef", None)
        );
        assert_eq!(
            "42:0123456789AB:ff00"
                .parse::<Checkpoint>()
                .unwrap()
                .mac
                .as_deref(),
            Some("ff00")
        );
        for bad in [
            "",
            "42",
            "42:abc",
            "x:0123456789ab",
            "0:0123456789ab",
            "42:0123456789ab:zz",
            "1:2:3:4",
        ] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad}");
        }
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
