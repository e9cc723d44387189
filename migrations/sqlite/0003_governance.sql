-- Governance: approvals that need several people (quorum, with each person's vote) and that
-- climb a ladder (a reminder, then an escalation) before they expire.
-- Times are milliseconds since the Unix epoch (UTC).

ALTER TABLE approvals ADD COLUMN quorum INTEGER NOT NULL DEFAULT 1;
-- Each person's decision so far, as JSON (see core::engine::state::Vote).
ALTER TABLE approvals ADD COLUMN votes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE approvals ADD COLUMN reminded_at INTEGER;
ALTER TABLE approvals ADD COLUMN escalated_at INTEGER;

-- When a run was flagged as stalled (no progress for its threshold), until it moves again.
ALTER TABLE runs ADD COLUMN stalled_at INTEGER;

-- An approval step's payload as it stands, who edited it, and how many requests were posted.
ALTER TABLE approvals ADD COLUMN content TEXT;
ALTER TABLE approvals ADD COLUMN editors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE approvals ADD COLUMN round INTEGER NOT NULL DEFAULT 1;
