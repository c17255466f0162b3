-- What the operator turns into status, conditions and events of a shard,
-- recorded by its worker (the database is the one channel between them).
--
-- The last minute whose unsealed verdicts were rejected after
-- spec.unsealedTimeoutSeconds, and how many: the operator raises a Warning
-- event once per such minute.
ALTER TABLE archive_watermark
    ADD COLUMN unsealed_timeout_minute  timestamptz NULL,
    ADD COLUMN unsealed_timeout_keys    integer     NOT NULL DEFAULT 0,
-- The last hourly stray-key audit: when it finished, how many keys look
-- like verdicts but can never be archived, and a few of their names
-- (printable-escaped, bounded).
    ADD COLUMN stray_audit_at           timestamptz NULL,
    ADD COLUMN stray_keys               bigint      NULL,
    ADD COLUMN stray_key_examples       text[]      NOT NULL DEFAULT '{}';
