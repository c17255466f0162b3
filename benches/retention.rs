//! End-to-end benchmark of retention enforcement against a real PostgreSQL
//! (the throw-away cluster of `archiver_operator::testing`) and a real Redis.
//!
//! Seeds about 10 million expired `probe_minute` rows (INSERT ... SELECT
//! generate_series) over 1,000 tenants in four tiers, some with a tier
//! change, across ten monthly partitions, then measures:
//!
//! - the enforcement run (`retention::enforce::Enforcer::step`): rows/s;
//! - the drain tick (`archive::worker::Worker::tick`, one 20,000-key minute)
//!   on the idle database and while enforcement runs (target: within 1.5x);
//! - a naive baseline in the same run: one set-based `DELETE ... USING`
//!   over a sample of tenants (one statement, one transaction), with ticks
//!   during it too.
//!
//! The table goes into `docs/BENCHMARKS.md` between `<!-- bench:retention -->`
//! and `<!-- /bench:retention -->`; the rest of that file is left alone.
//!
//! Run with `cargo bench --bench retention`. Shrink it for a smoke run with
//! BENCH_RETENTION_STEP_MINUTES (rows every N minutes; default 68),
//! BENCH_RETENTION_TENANTS (default 1000) and BENCH_TICK_SERVERS (default
//! 4000 servers x 5 regions). Without `--bench` it does nothing.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use uuid::Uuid;

use archiver_operator::api::RetentionPolicy;
use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::archive::verdict::{REGIONS, index_key, verdict_key};
use archiver_operator::archive::worker::{MinuteOutcome, ShardSettings, Worker};
use archiver_operator::clock::ManualClock;
use archiver_operator::metrics::Metrics;
use archiver_operator::retention::count::count_expired;
use archiver_operator::retention::enforce::{Enforcer, Settings, StepReport};
use archiver_operator::retention::tiers::policy_hash;
use archiver_operator::testing::{TestDatabase, redis_server};

const SERVERS_PER_TENANT: i64 = 2;
/// Ticks on the idle database, and at most this many during each deletion.
const IDLE_TICKS: usize = 7;
const BUSY_TICKS: usize = 12;
/// Pause between two ticks during a deletion, to sample the whole run.
const TICK_SPACING: Duration = Duration::from_secs(2);
const TARGET_RATIO: f64 = 1.5;
const MARK_BEGIN: &str = "<!-- bench:retention -->";
const MARK_END: &str = "<!-- /bench:retention -->";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Enforcement runs at 03:30 UTC, inside the example's window.
fn as_of() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 3, 30, 0).unwrap()
}

fn data_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// The minutes the drain ticks archive.
fn drain_minute(k: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap() + chrono::Duration::minutes(k as i64)
}

fn tenant(i: usize) -> Uuid {
    Uuid::from_u128(0xbe0c_0000_0000_4000_8000_0000_0000_0000 + i as u128)
}

fn example() -> anyhow::Result<RetentionPolicy> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/retention-policy.yaml");
    Ok(serde_yaml_ng::from_str(&std::fs::read_to_string(path)?)?)
}

/// One tier row: tier, valid_from, valid_to, contract days.
type TierRow = (
    &'static str,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<i32>,
);

/// Tenant `i`'s tier rows and the end of its rows expired under the
/// example policy as of [`as_of`] (data is seeded densely before it and
/// sparsely after it). Tenants from `tenants` on are the naive baseline's
/// sample: public, so one plain DELETE covers them.
fn tiers_of(i: usize, tenants: usize) -> (Vec<TierRow>, DateTime<Utc>) {
    let since = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let june = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let days = |d: i64| as_of() - chrono::Duration::days(d);
    if i >= tenants {
        return (vec![("public", since, None, None)], days(7));
    }
    match i % 10 {
        // Public, upgraded to author in June: public rows all go; author
        // rows older than 90 days go.
        4 => (
            vec![
                ("public", since, Some(june), None),
                ("author", june, None, None),
            ],
            days(90),
        ),
        0..=3 => (vec![("public", since, None, None)], days(7)),
        5..=7 => (vec![("author", since, None, None)], days(90)),
        8 => (vec![("team", since, None, None)], days(180)),
        // Enterprise (half with a 730-day contract): nothing is a year old.
        _ => (
            vec![("enterprise", since, None, (i % 20 == 9).then_some(730))],
            data_start(),
        ),
    }
}

/// Load average of the machine (1/5/15 min).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn log(message: impl AsRef<str>) {
    eprintln!("[retention bench] {}", message.as_ref());
}

// ------------------------------------------------------------------ seeding

async fn create_partitions(pool: &PgPool) -> anyhow::Result<()> {
    for month in 1..=12 {
        let from = format!("2026-{month:02}-01");
        let to = if month == 12 {
            "2027-01-01".to_string()
        } else {
            format!("2026-{:02}-01", month + 1)
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE probe_minute_2026_{month:02} PARTITION OF probe_minute \
             FOR VALUES FROM ('{from} 00:00+00') TO ('{to} 00:00+00')"
        )))
        .execute(pool)
        .await
        .with_context(|| format!("creating the partition of 2026-{month:02}"))?;
    }
    Ok(())
}

/// Tier rows, then rows: every `step` minutes before a tenant's expiry
/// point, every 6 hours after it. Returns the rows written.
async fn seed_history(
    pool: &PgPool,
    tenants: usize,
    naive: usize,
    step: usize,
) -> anyhow::Result<i64> {
    sqlx::query("CREATE UNLOGGED TABLE bench_tenants (tenant_id uuid PRIMARY KEY, expired_end timestamptz NOT NULL)")
        .execute(pool)
        .await?;
    for i in 0..tenants + naive {
        let (spans, expired_end) = tiers_of(i, tenants);
        for (tier, from, to, contract) in spans {
            sqlx::query(
                "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from, valid_to, contract_minute_retention_days) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(tenant(i))
            .bind(tier)
            .bind(from)
            .bind(to)
            .bind(contract)
            .execute(pool)
            .await?;
        }
        sqlx::query("INSERT INTO bench_tenants VALUES ($1, $2)")
            .bind(tenant(i))
            .bind(expired_end)
            .execute(pool)
            .await?;
    }
    let mut rows = 0;
    let chunk = 50;
    for first in (0..tenants + naive).step_by(chunk) {
        let ids: Vec<Uuid> = (first..(first + chunk).min(tenants + naive))
            .map(tenant)
            .collect();
        let written = sqlx::query(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state) \
             SELECT t.tenant_id, 'srv-' || s, 'us-east', m, 'up' \
             FROM bench_tenants t CROSS JOIN generate_series(1, $5::int) s \
             CROSS JOIN LATERAL ( \
                 SELECT generate_series($2::timestamptz, t.expired_end - interval '1 minute', make_interval(mins => $3)) \
                 UNION ALL \
                 SELECT generate_series(t.expired_end, $4::timestamptz - interval '1 hour', interval '6 hours') \
             ) g(m) \
             WHERE t.tenant_id = ANY($1)",
        )
        .bind(&ids)
        .bind(data_start())
        .bind(step as i32)
        .bind(as_of())
        .bind(SERVERS_PER_TENANT as i32)
        .execute(pool)
        .await
        .context("seeding probe_minute")?
        .rows_affected();
        rows += written as i64;
        if first % 200 == 0 {
            log(format!(
                "seeded {} rows ({} tenants)",
                thousands(rows as f64),
                first + ids.len()
            ));
        }
    }
    Ok(rows)
}

async fn seed_redis(url: &str, servers: usize, minutes: usize) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let conn: MultiplexedConnection = client.get_multiplexed_async_connection().await?;
    let mut jobs = Vec::new();
    for k in 0..minutes {
        let minute = drain_minute(k);
        for first in (0..servers).step_by(1000) {
            jobs.push((minute, first..(first + 1000).min(servers)));
        }
    }
    futures::stream::iter(jobs)
        .map(|(minute, range)| {
            let mut conn = conn.clone();
            async move {
                let mut pipe = redis::pipe();
                let mut keys = Vec::new();
                for server in range {
                    for region in REGIONS {
                        let key = verdict_key(
                            Uuid::from_u128(0xd7a1_0000 + (server / 50) as u128),
                            &format!("srv-{server:05}"),
                            region,
                            minute,
                        );
                        pipe.hset_multiple(
                            &key,
                            &[
                                ("state", "up"),
                                ("p95_ms", "120"),
                                ("tool_list_hash", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
                                ("error_kind", ""),
                                ("asn", "16509"),
                                ("registry_of_origin", "mcp.so"),
                                ("verdict_sealed", "1"),
                            ],
                        )
                        .ignore();
                        keys.push(key);
                    }
                }
                pipe.sadd(index_key(minute), &keys).ignore();
                pipe.query_async::<()>(&mut conn).await
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

// ----------------------------------------------------------------- ticking

struct Drain {
    worker: Worker,
    clock: ManualClock,
    next: usize,
    keys: usize,
}

impl Drain {
    /// Archives the next minute; returns the tick's seconds.
    async fn tick(&mut self) -> anyhow::Result<f64> {
        let minute = drain_minute(self.next);
        self.clock.set(minute + chrono::Duration::seconds(65));
        let started = Instant::now();
        let report = self
            .worker
            .tick(Duration::from_secs(300))
            .await
            .context("tick")?;
        let seconds = started.elapsed().as_secs_f64();
        ensure!(
            report.archived.len() == 1
                && report.archived[0].minute == minute
                && report.archived[0].rows == self.keys as u64
                && report.stopped_at == Some(MinuteOutcome::CaughtUp),
            "expected minute {minute} with {} rows, got {report:?}",
            self.keys
        );
        self.next += 1;
        Ok(seconds)
    }
}

/// Ticks every [`TICK_SPACING`] while `work` runs; only ticks that ended
/// before `work` did count.
async fn ticks_during<T: Send + 'static>(
    drain: &mut Drain,
    work: tokio::task::JoinHandle<anyhow::Result<T>>,
) -> anyhow::Result<(T, Vec<f64>)> {
    let mut seconds = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while !work.is_finished() && seconds.len() < BUSY_TICKS {
        let s = drain.tick().await?;
        if !work.is_finished() {
            seconds.push(s);
        }
        tokio::time::sleep(TICK_SPACING).await;
    }
    let result = work.await.context("the deleting task panicked")??;
    Ok((result, seconds))
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn stats(values: &[f64]) -> Stats {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Stats {
        median,
        min: sorted.first().copied().unwrap_or(f64::NAN),
        max: sorted.last().copied().unwrap_or(f64::NAN),
        n,
    }
}

// --------------------------------------------------------------------- run

struct Results {
    started: DateTime<Utc>,
    load_before: String,
    postgres: String,
    tenants: usize,
    step: usize,
    seeded_rows: i64,
    seed_seconds: f64,
    expired_minute_rows: i64,
    count_seconds: f64,
    naive_tenants: usize,
    naive_rows: i64,
    naive_seconds: f64,
    ours_rows: i64,
    ours_seconds: f64,
    ours_report_rows: i64,
    drift_after: i64,
    keys: usize,
    idle: Stats,
    during_naive: Stats,
    during_ours: Stats,
    whole_seconds: f64,
}

async fn run(redis_url: String) -> anyhow::Result<Results> {
    let whole = Instant::now();
    let started = Utc::now();
    let load_before = load_average();
    let tenants = env_usize("BENCH_RETENTION_TENANTS", 1000);
    let step = env_usize("BENCH_RETENTION_STEP_MINUTES", 68);
    let servers = env_usize("BENCH_TICK_SERVERS", 4000);
    let keys = servers * REGIONS.len();

    let db = TestDatabase::new().await;
    let pool = db.pool.clone();
    let postgres: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    create_partitions(&pool).await?;
    log("seeding probe_minute");
    let seeding = Instant::now();
    let naive_tenants = tenants / 10;
    let seeded_rows = seed_history(&pool, tenants, naive_tenants, step).await?;
    sqlx::query("VACUUM ANALYZE probe_minute")
        .execute(&pool)
        .await?;
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    let seed_seconds = seeding.elapsed().as_secs_f64();
    log(format!(
        "seeded {} rows in {seed_seconds:.1} s",
        thousands(seeded_rows as f64)
    ));

    let policy = example()?;
    let counting = Instant::now();
    let counts = count_expired(&pool, &policy.spec.tiers, as_of()).await?;
    let count_seconds = counting.elapsed().as_secs_f64();
    let expired_minute_rows = counts.by_table()["probe_minute"];
    log(format!(
        "{} expired probe_minute rows (counted in {count_seconds:.1} s)",
        thousands(expired_minute_rows as f64)
    ));

    let minutes = 1 + IDLE_TICKS + 2 * BUSY_TICKS + 2;
    log(format!("seeding Redis: {minutes} minutes x {keys} keys"));
    seed_redis(&redis_url, servers, minutes).await?;
    let clock = ManualClock::new(drain_minute(0) + chrono::Duration::seconds(65));
    let worker = Worker::connect(
        ShardSettings::new(
            0,
            "bench/retention",
            Discovery::Index,
            chrono::Duration::seconds(65),
        ),
        "bench".into(),
        pool.clone(),
        &redis_url,
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
    )
    .await?;
    let mut drain = Drain {
        worker,
        clock,
        next: 0,
        keys,
    };
    drain.tick().await?; // warm-up, untimed
    let mut idle = Vec::new();
    for _ in 0..IDLE_TICKS {
        idle.push(drain.tick().await?);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    log(format!("idle tick median {:.3} s", stats(&idle).median));

    // Naive baseline: one DELETE for a sample of public tenants.
    let naive_ids: Vec<Uuid> = (tenants..tenants + naive_tenants).map(tenant).collect();
    let naive_pool = pool.clone();
    let naive = tokio::spawn(async move {
        let started = Instant::now();
        let rows = sqlx::query(
            "DELETE FROM probe_minute p USING tenant_tier_history h \
             WHERE p.tenant_id = ANY($1) AND h.tenant_id = p.tenant_id AND h.tier = 'public' \
               AND p.minute_bucket >= h.valid_from AND p.minute_bucket < $2",
        )
        .bind(&naive_ids)
        .bind(as_of() - chrono::Duration::days(7))
        .execute(&naive_pool)
        .await?
        .rows_affected();
        Ok((rows as i64, started.elapsed().as_secs_f64()))
    });
    let ((naive_rows, naive_seconds), during_naive) = ticks_during(&mut drain, naive).await?;
    log(format!(
        "naive: {} rows in {naive_seconds:.1} s; {} ticks during it",
        thousands(naive_rows as f64),
        during_naive.len()
    ));

    // The enforcement run.
    // Rows other than the drained minutes (which the ticks add meanwhile).
    let history_rows =
        "SELECT count(*) FROM probe_minute WHERE minute_bucket < '2026-11-23 09:00+00'";
    let before: i64 = sqlx::query_scalar(history_rows).fetch_one(&pool).await?;
    let ours_pool = pool.clone();
    let spec = policy.spec.clone();
    let ours = tokio::spawn(async move {
        let mut settings = Settings::from_spec(&spec)?;
        // One run for the whole backlog: the caps of the example (5 M per
        // run) would split it over two windows.
        settings.max_rows_per_run = i64::MAX / 2;
        settings.slice = Duration::from_secs(3600);
        let hash = policy_hash(&spec.tiers);
        let clock = ManualClock::new(as_of());
        let enforcer = Enforcer {
            pool: &ours_pool,
            tiers: &spec.tiers,
            policy_hash: &hash,
            settings: &settings,
            clock: &clock,
            subject: "RetentionPolicy/bench/tiers",
        };
        let started = Instant::now();
        let report: StepReport = enforcer.step().await?;
        Ok((report, started.elapsed().as_secs_f64()))
    });
    let ((report, ours_seconds), during_ours) = ticks_during(&mut drain, ours).await?;
    let after: i64 = sqlx::query_scalar(history_rows).fetch_one(&pool).await?;
    ensure!(
        report
            .finished
            .iter()
            .any(|run| run.outcome.as_deref() == Some("complete")),
        "the enforcement run did not complete"
    );
    let ours_report_rows = report
        .deleted
        .get("probe_minute")
        .map_or(0, |t| t.values().sum());
    let ours_rows = before - after;
    ensure!(
        ours_rows == ours_report_rows,
        "the run reports {ours_report_rows} rows deleted, the table lost {ours_rows}"
    );
    let drift_after = count_expired(&pool, &policy.spec.tiers, as_of())
        .await?
        .by_table()["probe_minute"];
    ensure!(drift_after == 0, "{drift_after} expired rows left");
    log(format!(
        "enforcement: {} rows in {ours_seconds:.1} s; {} ticks during it",
        thousands(ours_rows as f64),
        during_ours.len()
    ));

    let admin = pool.clone();
    drop(drain);
    admin.close().await;
    Ok(Results {
        started,
        load_before,
        postgres,
        tenants,
        step,
        seeded_rows,
        seed_seconds,
        expired_minute_rows,
        count_seconds,
        naive_tenants,
        naive_rows,
        naive_seconds,
        ours_rows,
        ours_seconds,
        ours_report_rows,
        drift_after,
        keys,
        idle: stats(&idle),
        during_naive: stats(&during_naive),
        during_ours: stats(&during_ours),
        whole_seconds: whole.elapsed().as_secs_f64(),
    })
}

fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Retention benchmark\n");
    let _ = writeln!(
        out,
        "Written by `cargo bench --bench retention` ([`benches/retention.rs`](../benches/retention.rs)); \
         do not edit by hand, re-run the bench instead.\n"
    );
    let _ = writeln!(
        out,
        "- **Date of run:** {}",
        r.started.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        out,
        "- **Whole bench (seeding included):** {:.1} min",
        r.whole_seconds / 60.0
    );
    let _ = writeln!(
        out,
        "- **Machine:** {} ({} cores available); load average before {}, after {}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        r.load_before,
        load_average()
    );
    let _ = writeln!(out, "- **PostgreSQL:** {}", r.postgres);
    let _ = writeln!(
        out,
        "- PostgreSQL and Redis are the throw-away servers of `src/local_servers.rs` on the same machine \
         (`fsync=off`, `synchronous_commit=off`); other work on the machine during the run shows in the load \
         average. Ratios matter more than absolute numbers.\n"
    );
    let _ = writeln!(out, "## Method\n");
    let _ = writeln!(
        out,
        "- {} tenants x {SERVERS_PER_TENANT} servers in tenant_tier_history: 40% public, 10% public upgraded to \
         author on 2026-06-01, 30% author, 10% team, 10% enterprise (half with a 730-day contract), plus {} \
         public tenants for the naive baseline only. `probe_minute` seeded with `INSERT ... SELECT generate_series` in 12 monthly partitions: one row every \
         {} minutes per server from 2026-01-01 up to the tenant's retention cut, one every 6 hours after it; \
         {} rows in {:.0} s ({} rows/s), then `VACUUM ANALYZE`.",
        r.tenants,
        r.naive_tenants,
        r.step,
        thousands(r.seeded_rows as f64),
        r.seed_seconds,
        thousands(r.seeded_rows as f64 / r.seed_seconds)
    );
    let _ = writeln!(
        out,
        "- Policy: `examples/retention-policy.yaml`; enforcement as of 2026-11-23 03:30 UTC. Rows expired: \
         {} (counted by `retention::count::count_expired`, the drift/plan count, in {:.1} s).",
        thousands(r.expired_minute_rows as f64),
        r.count_seconds
    );
    let _ = writeln!(
        out,
        "- Enforcement: `Enforcer::step` with the crate's defaults (5,000-row batches, one tenant per pass, \
         per server an ordered `SELECT ctid ... LIMIT n` then `DELETE ... WHERE ctid = ANY(...)` per partition \
         (a TID scan), erasure lock shared, \
         run row updated in each batch transaction), `maxRowsPerRun` lifted so the whole backlog is one run. \
         After it, the drift count finds {} expired rows.",
        r.drift_after
    );
    let _ = writeln!(
        out,
        "- Naive baseline, first, on {} public tenants: one `DELETE ... USING tenant_tier_history` statement \
         (one transaction) for all their expired rows.",
        r.naive_tenants
    );
    let _ = writeln!(
        out,
        "- Drain: `Worker::tick` archiving one {}-key minute (index discovery, COPY path) into the same database. \
         {} ticks on the idle database (after one warm-up), then one tick every {} s while each deletion runs; \
         only ticks that ended before the deletion did are counted.\n",
        thousands(r.keys as f64),
        r.idle.n,
        TICK_SPACING.as_secs()
    );
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(out, "| Deletion | Rows deleted | Seconds | Rows/s |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| enforcement run (batched, resumable) | {} | {:.1} | {} |",
        thousands(r.ours_rows as f64),
        r.ours_seconds,
        thousands(r.ours_rows as f64 / r.ours_seconds)
    );
    let _ = writeln!(
        out,
        "| naive single `DELETE` ({} tenants) | {} | {:.1} | {} |\n",
        r.naive_tenants,
        thousands(r.naive_rows as f64),
        r.naive_seconds,
        thousands(r.naive_rows as f64 / r.naive_seconds)
    );
    let _ = writeln!(
        out,
        "| Drain tick ({} keys) | Ticks | Median s | Min–max s | vs idle (median) |",
        thousands(r.keys as f64)
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (name, s) in [
        ("idle database", r.idle),
        ("during the enforcement run", r.during_ours),
        ("during the naive DELETE", r.during_naive),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.3} | {:.3}–{:.3} | {:.2}x |",
            s.n,
            s.median,
            s.min,
            s.max,
            s.median / r.idle.median
        );
    }
    let ratio = r.during_ours.median / r.idle.median;
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| Target | Measured | Verdict |");
    let _ = writeln!(out, "|---|---:|---|");
    let _ = writeln!(
        out,
        "| drain tick during enforcement within {TARGET_RATIO}x of idle | {:.3} s / {:.3} s = {ratio:.2}x | **{}** |",
        r.during_ours.median,
        r.idle.median,
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "not met"
        }
    );
    let _ = writeln!(
        out,
        "| 10 million expired rows deleted | {} | **{}** |",
        thousands(r.ours_report_rows as f64),
        if r.ours_report_rows >= 10_000_000 {
            "met"
        } else {
            "smaller run (see BENCH_* knobs)"
        }
    );
    out
}

/// Replaces the section between the markers, or appends it (with the
/// markers) at the end; nothing else in the file changes.
fn write_section(path: &std::path::Path, section: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{MARK_BEGIN}\n{}{MARK_END}", section);
    let updated = match (existing.find(MARK_BEGIN), existing.find(MARK_END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!(
                "{}{block}{}",
                &existing[..begin],
                &existing[end + MARK_END.len()..]
            )
        }
        _ => {
            let separator = if existing.is_empty() || existing.ends_with("\n\n") {
                ""
            } else if existing.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{existing}{separator}{block}\n")
        }
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!(
            "retention bench: run it with `cargo bench --bench retention` (skipped without --bench)"
        );
        return Ok(());
    }
    // Servers are tied to the thread that starts them: start them here.
    let redis = redis_server();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(run(redis.url()))?;
    drop(runtime);
    drop(redis);
    let section = markdown(&results);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_section(&path, &section)?;
    println!("{section}");
    eprintln!(
        "[retention bench] wrote the retention section of {}",
        path.display()
    );
    Ok(())
}
