-- Store v2: every index a write keeps up earns its keep, and an index that only one kind of
-- row needs holds only those rows (a partial index), so writing the others costs nothing
-- there and a row changing state moves in one index at most.

-- The outbox is read lane by lane (a conversation's waiting entries, in order), so one
-- conversation's deep queue never hides another's. This index finds each conversation with
-- waiting entries, and its oldest ones, without reading the rest; a delivered entry leaves it.
DROP INDEX outbox_pending;
CREATE INDEX outbox_lanes ON outbox (urgent, platform, channel, id) WHERE status = 'pending';
CREATE INDEX outbox_failed ON outbox (id) WHERE status = 'failed';
-- Entries a delivery alert was raised about and that have not gone through since: few.
CREATE INDEX outbox_alerted ON outbox (id) WHERE alerted = 1 AND status IN ('pending', 'failed');
-- A run's page and Retry read a run's outbox entries.
CREATE INDEX outbox_by_run ON outbox (run_id);

-- Every change to a run moves its updated_at; only runs not finished are looked up by it
-- (stalled runs), and only a change of status moves a run in the status index.
DROP INDEX runs_by_status;
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_active ON runs (updated_at) WHERE finished_at IS NULL;
CREATE INDEX runs_unreachable ON runs (id) WHERE conversation_lost IS NOT NULL;

-- The digest reads status changes and run starts by time; no other kind of entry needs an
-- index by time.
DROP INDEX audit_by_kind;
CREATE INDEX audit_status_changes ON audit (at) WHERE kind = 'run.status';
CREATE INDEX audit_run_starts ON audit (at) WHERE kind = 'run.started';

-- Replies are looked up by their thread; messages at the top of a channel are not.
DROP INDEX console_by_thread;
CREATE INDEX console_by_thread ON console_messages (thread_id, id) WHERE thread_id IS NOT NULL;
