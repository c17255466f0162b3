-- Server-minute state (DESIGN.md section 5): from the region rows of one
-- server-minute, with N rows and quorum q = min(2, N): down if >= q say
-- down; else degraded if >= q say down or degraded; else up if >= q say up;
-- else auth-walled if >= q say auth-walled; else unknown. The one
-- definition every rollup uses.
CREATE FUNCTION server_minute_state_counts(n bigint, down bigint, degraded bigint, up bigint, walled bigint)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- A single expression, so the planner inlines it into the rollup queries.
    SELECT CASE
        WHEN n = 0 THEN 'unknown'
        WHEN down >= least(2, n) THEN 'down'
        WHEN down + degraded >= least(2, n) THEN 'degraded'
        WHEN up >= least(2, n) THEN 'up'
        WHEN walled >= least(2, n) THEN 'auth-walled'
        ELSE 'unknown'
    END
$$;

-- The same rule over the region states of one server-minute.
CREATE FUNCTION server_minute_state(states text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT server_minute_state_counts(
        coalesce(cardinality(states), 0),
        (SELECT count(*) FROM unnest(states) s WHERE s = 'down'),
        (SELECT count(*) FROM unnest(states) s WHERE s = 'degraded'),
        (SELECT count(*) FROM unnest(states) s WHERE s = 'up'),
        (SELECT count(*) FROM unnest(states) s WHERE s = 'auth-walled'))
$$;

-- The per-minute derived work reads one minute at a time. Rows arrive in
-- minute order, so a BRIN index finds a minute for almost nothing at
-- ingest (the two B-tree indexes of the seed do not lead with the minute).
CREATE INDEX probe_minute_brin_minute ON probe_minute USING brin (minute_bucket)
    WITH (pages_per_range = 32, autosummarize = on);

-- What the incremental day rollup needs to carry from minute to minute.
ALTER TABLE probe_day
    ADD COLUMN last_minute timestamptz NULL,
    ADD COLUMN last_state  text        NULL;

-- probe_day with the p95 percentiles of a day still in progress computed
-- on read from probe_minute (one index range scan per server-day, on the
-- uptime index); closed days carry the exact values written at close. Kept
-- out of the per-minute path so that path costs one minute's rows only.
CREATE VIEW probe_day_live AS
SELECT d.*,
       coalesce(d.p95_ms_p50_of_day, open_day.p50) AS p95_ms_p50,
       coalesce(d.p95_ms_p95_of_day, open_day.p95) AS p95_ms_p95
FROM probe_day d
LEFT JOIN LATERAL (
    SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY m.p95_ms) AS p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY m.p95_ms) AS p95
    FROM probe_minute m
    WHERE NOT d.closed
      AND m.tenant_id = d.tenant_id AND m.server_slug = d.server_slug
      AND m.minute_bucket >= d.day::timestamptz AND m.minute_bucket < (d.day + 1)::timestamptz
      AND m.p95_ms IS NOT NULL
) open_day ON true;

-- Progress of the derived-view maintenance (one row).
CREATE TABLE derived_views_watermark (
    id                  boolean      PRIMARY KEY DEFAULT true CHECK (id),
    last_minute         timestamptz  NOT NULL,
    last_run_at         timestamptz  NULL,
    last_closed_day     date         NULL,
    last_snapshot_hour  timestamptz  NULL,
    last_analyze_at     timestamptz  NULL,
    plan_uses_index     boolean      NULL,
    plan_checked_at     timestamptz  NULL,
    last_error          text         NULL
);
