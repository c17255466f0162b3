-- What the last drain tick of each shard saw. Workers run in their own
-- Deployments; the operator reads these columns to fill the shard's status
-- and conditions, so the database is the one channel between them.
ALTER TABLE archive_watermark
    ADD COLUMN last_tick_at             timestamptz NULL,
    ADD COLUMN last_minute_keys         integer     NOT NULL DEFAULT 0,
    ADD COLUMN rows_archived_last_tick  bigint      NOT NULL DEFAULT 0,
    ADD COLUMN rows_rejected_last_tick  bigint      NOT NULL DEFAULT 0,
    ADD COLUMN waiting_minute           timestamptz NULL,
    ADD COLUMN waiting_reason           text        NULL,
    ADD COLUMN last_error               text        NULL;
