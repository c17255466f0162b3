-- Daily rollup: one row per server per day, counted in server-minutes.
CREATE TABLE probe_day (
    tenant_id            uuid          NOT NULL,
    server_slug          text          NOT NULL,
    day                  date          NOT NULL,
    minutes_total        integer       NOT NULL,
    minutes_up           integer       NOT NULL,
    minutes_down         integer       NOT NULL,
    minutes_degraded     integer       NOT NULL,
    minutes_auth_walled  integer       NOT NULL,
    minutes_unknown      integer       NOT NULL,
    p95_ms_p50_of_day    integer       NULL,
    p95_ms_p95_of_day    integer       NULL,
    incident_count       integer       NOT NULL DEFAULT 0,
    updated_at           timestamptz   NOT NULL DEFAULT now(),
    closed               boolean       NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, server_slug, day)
);
CREATE INDEX probe_day_by_day ON probe_day (day);

-- Monthly rollup, computed from probe_day. sla_uptime_pct is NULL when no
-- minute of the month was conclusive (up + down + degraded = 0).
CREATE TABLE probe_month (
    tenant_id            uuid          NOT NULL,
    server_slug          text          NOT NULL,
    month                date          NOT NULL CHECK (extract(day FROM month) = 1),
    days_total           integer       NOT NULL,
    minutes_up           integer       NOT NULL,
    minutes_down         integer       NOT NULL,
    minutes_degraded     integer       NOT NULL,
    minutes_auth_walled  integer       NOT NULL,
    minutes_unknown      integer       NOT NULL,
    incident_count       integer       NOT NULL DEFAULT 0,
    sla_uptime_pct       numeric(6,3)  NULL CHECK (sla_uptime_pct BETWEEN 0 AND 100),
    updated_at           timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, server_slug, month)
);
CREATE INDEX probe_month_by_month ON probe_month (month);
