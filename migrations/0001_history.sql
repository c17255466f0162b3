-- Per-minute history: one row per (tenant, server, region, minute).
-- Partitioned monthly by the PartitionSchedule reconciler. There is
-- deliberately no DEFAULT partition: a row without a partition must fail the
-- drain tick loudly instead of landing somewhere nobody looks.
CREATE TABLE probe_minute (
    tenant_id          uuid          NOT NULL,
    server_slug        text          NOT NULL,
    region             text          NOT NULL CHECK (region IN ('us-east','us-west','eu-west','ap-southeast','sa-east')),
    minute_bucket      timestamptz   NOT NULL,
    state              text          NOT NULL CHECK (state IN ('up','down','degraded','auth-walled','unknown')),
    p95_ms             integer       NULL,
    tool_list_hash     bytea         NULL,
    error_kind         text          NULL,
    asn                integer       NULL,
    registry_of_origin text          NULL,
    archived_at        timestamptz   NOT NULL DEFAULT now(),
    extra              jsonb         NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant_id, server_slug, region, minute_bucket)
) PARTITION BY RANGE (minute_bucket);

-- Serves the suppression-cluster computation (only failing minutes).
CREATE INDEX probe_minute_idx_cluster
    ON probe_minute (registry_of_origin, asn, error_kind, minute_bucket)
    WHERE state IN ('down','degraded');

-- Serves uptime reads, rollups and erasure of one server.
CREATE INDEX probe_minute_idx_uptime
    ON probe_minute (tenant_id, server_slug, minute_bucket)
    INCLUDE (state, p95_ms);

-- Every verdict that failed validation. Nothing is dropped silently.
CREATE TABLE probe_minute_rejects (
    id            bigserial    PRIMARY KEY,
    shard_id      integer      NOT NULL,
    verdict_key   text         NOT NULL,
    minute_bucket timestamptz  NULL,
    raw_fields    jsonb        NOT NULL DEFAULT '{}'::jsonb,
    reason        text         NOT NULL,
    rejected_at   timestamptz  NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX probe_minute_rejects_once
    ON probe_minute_rejects (shard_id, verdict_key);
CREATE INDEX probe_minute_rejects_by_time ON probe_minute_rejects (rejected_at);

-- One row per shard: the last minute fully archived. A drain tick holds this
-- row (FOR UPDATE SKIP LOCKED) from reading it to committing the rows and the
-- new value together; owner/taken_at/expires_at are for visibility.
CREATE TABLE archive_watermark (
    shard_id    integer      PRIMARY KEY CHECK (shard_id >= 0),
    last_minute timestamptz  NOT NULL,
    owner       text         NOT NULL,
    taken_at    timestamptz  NOT NULL DEFAULT now(),
    expires_at  timestamptz  NOT NULL
);
