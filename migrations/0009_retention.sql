-- Retention enforcement state (src/retention/).

-- The tier table being enforced (one row). The shrink guard compares every
-- new RetentionPolicy generation with this copy, not with the object's
-- status: a status is lost when the object is deleted and applied again,
-- and a shortened policy re-applied that way must still be held.
CREATE TABLE retention_enforced_policy (
    id           boolean      PRIMARY KEY DEFAULT true CHECK (id),
    policy_hash  text         NOT NULL,
    -- namespace/name of the RetentionPolicy it came from
    policy       text         NOT NULL,
    generation   bigint       NULL,
    -- the whole accepted spec: tiers, guard, and the privacy-policy target
    spec         jsonb        NOT NULL,
    accepted_at  timestamptz  NOT NULL,
    accepted_as  text         NOT NULL CHECK (accepted_as IN ('first-policy', 'same-tiers', 'within-guard', 'confirmed'))
);

-- One row per enforcement run; a run belongs to one occurrence of the
-- enforcement window. Every batch of deletes updates its row in the same
-- transaction, so the counters and the cursor are exact after a crash and
-- the next reconcile resumes where the last commit left off.
CREATE TABLE retention_run (
    id                 bigserial    PRIMARY KEY,
    window_start       timestamptz  NOT NULL UNIQUE,
    -- retention is measured from this instant for the whole run
    as_of              timestamptz  NOT NULL,
    policy_hash        text         NOT NULL,
    started_at         timestamptz  NOT NULL,
    progress_at        timestamptz  NOT NULL,
    finished_at        timestamptz  NULL,
    outcome            text         NULL CHECK (outcome IN ('complete', 'run-cap', 'window-closed')),
    -- optimistic lock: a writer that did not see the last commit backs off
    version            bigint       NOT NULL DEFAULT 0,
    -- the first cycle visits tenants after start_after, wraps, and ends at it
    start_after        uuid         NULL,
    cycle              integer      NOT NULL DEFAULT 1,
    wrapped            boolean      NOT NULL DEFAULT false,
    -- last tenant whose first-cycle pass ended; the next run starts after it
    cursor             uuid         NULL,
    -- later cycles revisit only the tenants whose pass hit its cap
    pending            uuid[]       NOT NULL DEFAULT '{}',
    capped_tenants     uuid[]       NOT NULL DEFAULT '{}',
    history_done       boolean      NOT NULL DEFAULT false,
    history_cycle      integer      NOT NULL DEFAULT 0,
    -- the pass in progress: a tenant, or the cross-tenant history table
    current_tenant     uuid         NULL,
    current_history    boolean      NOT NULL DEFAULT false,
    current_rows       bigint       NOT NULL DEFAULT 0,
    tenant_passes      integer      NOT NULL DEFAULT 0,
    capped_passes      integer      NOT NULL DEFAULT 0,
    rows_total         bigint       NOT NULL DEFAULT 0,
    -- {"probe_minute": {"public": 12, ...}, ...}
    rows_deleted       jsonb        NOT NULL DEFAULT '{}'::jsonb,
    active_seconds     double precision NOT NULL DEFAULT 0,
    max_rows_per_run   bigint       NOT NULL,
    max_rows_per_pass  bigint       NOT NULL
);
CREATE INDEX retention_run_open ON retention_run (window_start) WHERE finished_at IS NULL;

-- What the last drift count found (one row), so a reconcile reports it
-- without scanning the history tables every time.
CREATE TABLE retention_drift (
    id                    boolean      PRIMARY KEY DEFAULT true CHECK (id),
    policy_hash           text         NOT NULL,
    counted_at            timestamptz  NOT NULL,
    -- {"probe_minute": 12, ...}
    rows_by_table         jsonb        NOT NULL,
    tenants_without_tier  bigint       NOT NULL
);
