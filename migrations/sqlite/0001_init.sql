-- Baton's schema for SQLite. Append-only: change the schema with a new numbered file.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL UNIQUE,
    status          TEXT    NOT NULL,
    platform        TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    thread          TEXT,
    actor_platform  TEXT    NOT NULL,
    actor_id        TEXT    NOT NULL,
    actor_display   TEXT    NOT NULL,
    actor_is_bot    INTEGER NOT NULL,
    inputs          TEXT    NOT NULL,
    late            INTEGER NOT NULL DEFAULT 0,
    title           TEXT    NOT NULL,
    error           TEXT,
    file            TEXT    NOT NULL,
    definition      TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX runs_by_status ON runs (status, updated_at);

CREATE TABLE steps (
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    step_id      TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    retries_used INTEGER NOT NULL,
    output       TEXT,
    error        TEXT,
    started_at   INTEGER,
    finished_at  INTEGER,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE attempts (
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    step_id     TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    input       TEXT    NOT NULL,
    detail      TEXT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    PRIMARY KEY (run_id, step_id, attempt)
);
CREATE INDEX attempts_running ON attempts (status) WHERE status = 'running';

CREATE TABLE approvals (
    run_id            INTEGER NOT NULL REFERENCES runs (id),
    step_id           TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    approvers         TEXT    NOT NULL,
    summary           TEXT    NOT NULL,
    requested_at      INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    decided_by        TEXT,
    decided_at        INTEGER,
    reason            TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX approvals_pending ON approvals (status) WHERE status = 'pending';

CREATE TABLE timers (
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    key     TEXT    NOT NULL,
    due_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX timers_due ON timers (due_at);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          INTEGER,
    key             TEXT    NOT NULL,
    op              TEXT    NOT NULL,
    platform        TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    thread_key      TEXT,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    platform_ref    TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
-- A post is written once per key: re-applying a command cannot post twice.
CREATE UNIQUE INDEX outbox_post_key ON outbox (key) WHERE op = 'post';
CREATE INDEX outbox_pending ON outbox (status, id);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    run_id    INTEGER,
    step_id   TEXT,
    actor     TEXT,
    data      TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE INDEX audit_by_run ON audit (run_id, seq);
CREATE INDEX audit_by_kind ON audit (kind, at);

-- The ledger is append-only: the database itself refuses changes to written entries.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;

CREATE TABLE schedule_cursors (
    workflow  TEXT    NOT NULL,
    key       TEXT    NOT NULL,
    last_slot INTEGER NOT NULL,
    PRIMARY KEY (workflow, key)
);

CREATE TABLE inbound_events (
    event_id TEXT    PRIMARY KEY,
    seen_at  INTEGER NOT NULL
);

CREATE TABLE console_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel    TEXT    NOT NULL,
    thread_id  INTEGER,
    author     TEXT    NOT NULL,
    is_bot     INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    -- The outbox entry that posted it: delivering the same entry again after a crash finds
    -- this message instead of posting a second one.
    outbox_id  INTEGER UNIQUE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX console_by_channel ON console_messages (channel, thread_id, id);
CREATE INDEX console_by_thread ON console_messages (thread_id, id);
