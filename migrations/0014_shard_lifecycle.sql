-- Shards have a lifecycle (issue 16 item 2). The derived views advance to
-- the slowest *active* shard: a suspended shard (spec.suspend) or a retired
-- one (its ArchiverShard deleted) no longer holds probe_day, probe_month and
-- the suppression clusters back for every tenant. The ArchiverShard
-- controller sets active/suspended; the source that sees the object gone
-- (manifest removed, watch cache without it) sets retired. Rows are never
-- deleted: a shard that comes back resumes from its watermark.
ALTER TABLE archive_watermark
    ADD COLUMN lifecycle          text         NOT NULL DEFAULT 'active'
        CHECK (lifecycle IN ('active', 'suspended', 'retired')),
    ADD COLUMN lifecycle_since    timestamptz  NOT NULL DEFAULT now();

-- The shard the views wait on (the slowest active one) at the last pass,
-- for `status` and for people reading the table.
ALTER TABLE derived_views_watermark
    ADD COLUMN waiting_on_shard   integer      NULL;

-- Tenants with data and no tenant_tier_history row are never pruned: a few
-- of them (at most 5) name the problem on the RetentionPolicy.
ALTER TABLE retention_drift
    ADD COLUMN untiered_tenant_examples uuid[] NOT NULL DEFAULT '{}';
