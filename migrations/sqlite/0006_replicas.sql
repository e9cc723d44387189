-- Replicas: several Baton processes may share one database (PostgreSQL), so what one of them
-- is doing is written down with a lease it renews. A replica that stops renewing (it died, or
-- lost the database for longer than a lease) loses its claims, and another takes them over.
-- SQLite is served by one process at a time, but keeps the same rows, so both backends share
-- one transaction layer and one engine.

-- Each attempt is held by the replica running it, until `lease_until` (ms since the epoch).
-- An attempt still running with a lapsed lease was lost with its replica: another re-runs it.
ALTER TABLE attempts ADD COLUMN owner TEXT;
ALTER TABLE attempts ADD COLUMN lease_until INTEGER;

-- Named leases: an outbox lane (a conversation's deliveries go out from one replica at a
-- time, in order) and the Discord gateway (one connection for the whole bot). `data` is what
-- a holder leaves for the next one (the gateway session to resume).
CREATE TABLE leases (
    name   TEXT    PRIMARY KEY,
    holder TEXT    NOT NULL,
    until  INTEGER NOT NULL,
    data   TEXT
);
CREATE INDEX leases_by_holder ON leases (holder);
