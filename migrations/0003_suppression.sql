-- Live suppression clusters (last 24 hours): failing minutes shared by more
-- than one tenant on the same (error_kind, asn, registry_of_origin). Tenants
-- appear only as salted SHA-256 hashes; erasure replaces a hash by the
-- literal 'tombstone' and keeps the row, because the outage really happened.
CREATE TABLE suppression_clusters (
    error_kind                 text         NULL,
    asn                        integer      NULL,
    registry_of_origin         text         NULL,
    minute_bucket              timestamptz  NOT NULL,
    contributing_tenant_count  integer      NOT NULL,
    contributing_tenant_hashes text[]       NOT NULL DEFAULT '{}',
    contributing_pair_count    integer      NOT NULL,
    updated_at                 timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT suppression_clusters_key
        UNIQUE NULLS NOT DISTINCT (error_kind, asn, registry_of_origin, minute_bucket)
);
-- The alert router asks: clusters in the last minute above a tenant share.
CREATE INDEX suppression_clusters_recent
    ON suppression_clusters (minute_bucket DESC, contributing_tenant_count);
CREATE INDEX suppression_clusters_hashes
    ON suppression_clusters USING gin (contributing_tenant_hashes);

-- Hourly snapshots of the live table, kept like the daily rollup.
CREATE TABLE suppression_clusters_history (
    error_kind                 text         NULL,
    asn                        integer      NULL,
    registry_of_origin         text         NULL,
    minute_bucket              timestamptz  NOT NULL,
    contributing_tenant_count  integer      NOT NULL,
    contributing_tenant_hashes text[]       NOT NULL DEFAULT '{}',
    contributing_pair_count    integer      NOT NULL,
    snapshot_at                timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT suppression_clusters_history_key
        UNIQUE NULLS NOT DISTINCT (error_kind, asn, registry_of_origin, minute_bucket)
);
CREATE INDEX suppression_clusters_history_by_minute
    ON suppression_clusters_history (minute_bucket);
CREATE INDEX suppression_clusters_history_hashes
    ON suppression_clusters_history USING gin (contributing_tenant_hashes);
