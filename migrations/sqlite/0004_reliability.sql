-- Reliability: delivery alerts that mean something, and alerts that jump their queue.
-- Times are milliseconds since the Unix epoch (UTC).

-- A post that goes out ahead of its conversation's queue (a delivery alert), and a post only
-- one person sees (a direct message; `channel` then says what it is about).
ALTER TABLE outbox ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN private_to TEXT;
-- Since when an entry has failed without a break (rate limits do not count), and whether the
-- run was told.
ALTER TABLE outbox ADD COLUMN failing_since INTEGER;
ALTER TABLE outbox ADD COLUMN alerted INTEGER NOT NULL DEFAULT 0;

-- Why a run's root message could not be posted, while it has not been.
ALTER TABLE runs ADD COLUMN conversation_lost TEXT;
-- The run's delivery alerts as JSON, by outbox entry (see core::engine::state::DeliveryAlert).
ALTER TABLE runs ADD COLUMN alerts TEXT NOT NULL DEFAULT '{}';

-- With BATON_AUDIT_KEY set, each ledger entry's hash signed (HMAC-SHA256), so a tail written
-- without the key does not verify. Written with the entry, never changed after.
ALTER TABLE audit ADD COLUMN mac TEXT;

-- The browser's own id for a message a person sends, so a message sent again after a lost
-- answer is stored (and shown) once.
ALTER TABLE console_messages ADD COLUMN client_id TEXT;
CREATE UNIQUE INDEX console_by_client ON console_messages (author, client_id) WHERE client_id IS NOT NULL;
