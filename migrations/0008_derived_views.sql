-- Server-minute state (DESIGN.md section 5): from the region rows of one
-- server-minute, with N rows and quorum q = min(2, N): down if >= q say
-- down; else degraded if >= q say down or degraded; else up if >= q say up;
-- else auth-walled if >= q say auth-walled; else unknown. The one
-- definition every rollup uses.
CREATE FUNCTION server_minute_state(states text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN n = 0 THEN 'unknown'
        WHEN down >= q THEN 'down'
        WHEN down + degraded >= q THEN 'degraded'
        WHEN up >= q THEN 'up'
        WHEN walled >= q THEN 'auth-walled'
        ELSE 'unknown'
    END
    FROM (
        SELECT cardinality(states) AS n,
               least(2, cardinality(states)) AS q,
               (SELECT count(*) FROM unnest(states) s WHERE s = 'down') AS down,
               (SELECT count(*) FROM unnest(states) s WHERE s = 'degraded') AS degraded,
               (SELECT count(*) FROM unnest(states) s WHERE s = 'up') AS up,
               (SELECT count(*) FROM unnest(states) s WHERE s = 'auth-walled') AS walled
    ) counts
$$;

-- A compact histogram of p95 values (64 log-spaced buckets, 1 ms .. ~10 min)
-- so the day's p95 percentiles can be kept current at the cost of one
-- minute; the exact values are recomputed when the day closes.
CREATE FUNCTION p95_bucket(ms integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(63, greatest(0, floor(ln(greatest(ms, 1)::float8) / ln(1.23))::int))
$$;

CREATE FUNCTION p95_bucket_upper(bucket integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ceil(power(1.23, bucket + 1))::int
$$;

CREATE FUNCTION p95_histogram(values_ms integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(coalesce(c, 0) ORDER BY b)
    FROM generate_series(0, 63) b
    LEFT JOIN (SELECT p95_bucket(v) AS bucket, count(*)::int AS c
               FROM unnest(values_ms) v WHERE v IS NOT NULL GROUP BY 1) counted ON counted.bucket = b
$$;

CREATE FUNCTION histogram_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE (SELECT array_agg(x + y ORDER BY i) FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i))
    END
$$;

CREATE FUNCTION histogram_percentile(h integer[], q float8) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p95_bucket_upper((min(i) - 1)::int)
    FROM (
        SELECT i, sum(c) OVER (ORDER BY i) AS running, sum(c) OVER () AS total
        FROM unnest(h) WITH ORDINALITY AS t(c, i)
    ) cumulative
    WHERE total > 0 AND running >= q * total
$$;

-- What the incremental day rollup needs to carry from minute to minute.
ALTER TABLE probe_day
    ADD COLUMN last_minute timestamptz NULL,
    ADD COLUMN last_state  text        NULL,
    ADD COLUMN p95_hist    integer[]   NULL;

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
