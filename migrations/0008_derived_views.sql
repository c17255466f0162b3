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
-- per server-day, so the day's p95 percentiles can be estimated at any time
-- from work proportional to one minute; the exact values are recomputed
-- when the day closes. plpgsql loops: these run once per server per minute.
CREATE FUNCTION p95_bucket(ms integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(63, greatest(0, floor(ln(greatest(ms, 1)::float8) / ln(1.23))::int))
$$;

CREATE FUNCTION p95_bucket_upper(bucket integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ceil(power(1.23, bucket + 1))::int
$$;

CREATE FUNCTION p95_histogram(values_ms integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    h integer[] := array_fill(0, ARRAY[64]);
    v integer;
    b integer;
BEGIN
    FOREACH v IN ARRAY values_ms LOOP
        IF v IS NOT NULL THEN
            b := least(63, greatest(0, floor(ln(greatest(v, 1)::float8) / 0.20701416938432612)::int)) + 1;
            h[b] := h[b] + 1;
        END IF;
    END LOOP;
    RETURN h;
END
$$;

CREATE FUNCTION histogram_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    sum integer[];
BEGIN
    IF a IS NULL THEN RETURN b; END IF;
    IF b IS NULL THEN RETURN a; END IF;
    sum := a;
    FOR i IN 1 .. 64 LOOP
        sum[i] := sum[i] + b[i];
    END LOOP;
    RETURN sum;
END
$$;

CREATE FUNCTION histogram_percentile(h integer[], q float8) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    total bigint := 0;
    running bigint := 0;
BEGIN
    IF h IS NULL THEN RETURN NULL; END IF;
    FOR i IN 1 .. 64 LOOP
        total := total + h[i];
    END LOOP;
    IF total = 0 THEN RETURN NULL; END IF;
    FOR i IN 1 .. 64 LOOP
        running := running + h[i];
        IF running >= q * total THEN
            RETURN p95_bucket_upper(i - 1);
        END IF;
    END LOOP;
    RETURN p95_bucket_upper(63);
END
$$;

-- The per-minute derived work reads one minute at a time. Rows arrive in
-- minute order, so a BRIN index finds a minute for almost nothing at
-- ingest (the two B-tree indexes of the seed do not lead with the minute).
CREATE INDEX probe_minute_brin_minute ON probe_minute USING brin (minute_bucket)
    WITH (pages_per_range = 32, autosummarize = on);

-- What the incremental day rollup needs to carry from minute to minute.
ALTER TABLE probe_day
    ADD COLUMN last_minute timestamptz NULL,
    ADD COLUMN last_state  text        NULL,
    ADD COLUMN p95_hist    integer[]   NULL;

-- The day so far with its p95 percentiles estimated from the histogram;
-- closed days carry the exact values.
CREATE VIEW probe_day_live AS
SELECT d.*,
       CASE WHEN d.closed THEN d.p95_ms_p50_of_day ELSE histogram_percentile(d.p95_hist, 0.5) END AS p95_ms_p50_estimate,
       CASE WHEN d.closed THEN d.p95_ms_p95_of_day ELSE histogram_percentile(d.p95_hist, 0.95) END AS p95_ms_p95_estimate
FROM probe_day d;

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
