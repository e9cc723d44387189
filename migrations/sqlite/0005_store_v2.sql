-- Store v2: the outbox is read lane by lane (a conversation's waiting entries, in order), so
-- one conversation's deep queue never hides another's. This index finds each conversation
-- with waiting entries, and its oldest ones, without reading the rest.
CREATE INDEX outbox_lanes ON outbox (status, urgent, platform, channel, id);
