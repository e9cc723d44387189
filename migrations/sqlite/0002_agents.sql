-- Agents: each completed turn of an agent step's conversation (so a crash resumes from the
-- last one rather than from scratch), and the keyed memory agents share across runs.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE agent_turns (
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    step_id     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    -- One provider-neutral message as JSON (see core::agents::Turn).
    message     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id, seq)
);

CREATE TABLE memory (
    namespace   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    -- JSON.
    value       TEXT    NOT NULL,
    run_id      INTEGER,
    step_id     TEXT,
    agent       TEXT,
    written_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
);

-- An approval of an agent's external tool call keeps the call it was asked for and the hash
-- of that payload, which the decision is bound to.
ALTER TABLE approvals ADD COLUMN payload TEXT;
