//! Soak benchmark: the whole operator, as a release binary in manifests mode
//! (`archiver-operator run --manifests DIR`), for SOAK_MINUTES real minutes
//! (default 30) against a throw-away PostgreSQL cluster and a throw-away
//! Redis server started from the binaries on this machine.
//!
//! A generator writes the seed's load on the wall clock: every minute,
//! 250,000 sealed verdicts of that minute (50,000 servers x 5 regions, with
//! their index set and a 10-minute TTL), spread over the first 50 seconds of
//! the minute. The operator runs everything at once: the drain worker of one
//! shard (index discovery), the derived views and suppression clusters, a
//! RetentionPolicy whose enforcement window opens during the run (over
//! history seeded 10 days back, past the public tier's 7 days), a
//! PartitionSchedule, and in the middle of the run one DeletionRequest of a
//! whole tenant, applied by writing its manifest into the directory.
//!
//! Every 2 seconds the bench scrapes the operator's /metrics (lag); at the
//! end of every minute it records the per-loop durations (histogram deltas),
//! the memory of the operator, PostgreSQL and Redis, dead tuples and table
//! sizes, and the CPU used by processes outside the soak. At the end it
//! counts the archived rows of every generated minute against what was
//! written. The results go into `docs/BENCHMARKS.md` between the
//! `<!-- bench:soak -->` markers; the rest of that file is left alone.
//!
//! Run with `cargo bench --bench soak` (SOAK_MINUTES=3 for a smoke run;
//! SOAK_SERVERS shrinks the load). Without `--bench` on the command line
//! (`cargo test --all-targets`) it does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use redis::aio::MultiplexedConnection;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use archiver_operator::archive::verdict::{REGIONS, index_key};
use archiver_operator::schema::Table;
use archiver_operator::testing::{TestDatabase, redis_server};

#[path = "support/verdicts.rs"]
mod verdicts;
use verdicts::{SERVERS_PER_TENANT, fields_of, key_of, tenant, tenant_number, tool_list_hashes};

const MARK_BEGIN: &str = "<!-- bench:soak -->";
const MARK_END: &str = "<!-- /bench:soak -->";

/// The operator binary built with this bench (release profile under `cargo bench`).
const OPERATOR: &str = env!("CARGO_BIN_EXE_archiver-operator");

/// The tenant erased in the middle of the run.
const ERASED_TENANT: usize = 7;
/// Keys per generator pipeline; the minute's pipelines are spread evenly
/// over its first `WRITE_SPREAD`.
const WRITE_BATCH: usize = 10_000;
const WRITE_SPREAD: Duration = Duration::from_secs(50);
/// TTL of a verdict key and its index set (as the coalescer would set one).
const KEY_TTL_SECONDS: i64 = 600;
/// Minutes of history seeded 10 days back for retention to prune.
const OLD_MINUTES: i64 = 4;
const OLD_DAYS: i64 = 10;
/// How often /metrics is scraped for the lag.
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// Bounds on every wait of the bench.
const START_TIMEOUT: Duration = Duration::from_secs(180);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
const ERASURE_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

// Targets from the issue.
const LAG_SLO_SECONDS: f64 = 180.0;
const MEMORY_GROWTH_LIMIT: f64 = 0.05;
/// The minute memory growth is measured from (the minute 10).
const MEMORY_BASE_MINUTE: usize = 10;

struct Params {
    minutes: usize,
    servers: usize,
    erasure_minute: usize,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Params {
    fn from_env() -> Self {
        let minutes = env_usize("SOAK_MINUTES", 30).max(2);
        Self {
            minutes,
            servers: env_usize("SOAK_SERVERS", 50_000)
                .max(SERVERS_PER_TENANT * (ERASED_TENANT + 1)),
            erasure_minute: env_usize("SOAK_ERASURE_MINUTE", minutes / 2).clamp(1, minutes),
        }
    }

    fn keys(&self) -> usize {
        self.servers * REGIONS.len()
    }

    /// The minute memory growth is measured from: minute 10, or a third of a
    /// shorter run.
    fn memory_base_minute(&self) -> usize {
        if self.minutes >= 2 * MEMORY_BASE_MINUTE {
            MEMORY_BASE_MINUTE
        } else {
            (self.minutes / 3).max(1)
        }
    }
}

fn log(message: impl AsRef<str>) {
    eprintln!(
        "[soak {}] {}",
        Utc::now().format("%H:%M:%S"),
        message.as_ref()
    );
}

// ---------------------------------------------------------------- fixtures (as in the drain bench)

// ---------------------------------------------------------------- the generator

/// What the generator wrote for one minute.
#[derive(Clone, Debug, Default)]
struct Written {
    keys: usize,
    /// Keys of the erased tenant (their rows must be gone at the end).
    erased_tenant_keys: usize,
    /// Seconds after the minute's start when its last pipeline returned.
    finished_after: f64,
}

async fn multiplexed(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Writes one minute of verdicts, paced over `WRITE_SPREAD` from `start`.
async fn write_minute(
    conn: &MultiplexedConnection,
    params_keys: usize,
    minute: DateTime<Utc>,
    start: tokio::time::Instant,
    skip_erased: bool,
    hashes: &[String],
) -> anyhow::Result<Written> {
    let batches: Vec<std::ops::Range<usize>> = (0..params_keys)
        .step_by(WRITE_BATCH)
        .map(|from| from..(from + WRITE_BATCH).min(params_keys))
        .collect();
    let step = WRITE_SPREAD / batches.len().max(1) as u32;
    let mut written = Written::default();
    for (n, range) in batches.into_iter().enumerate() {
        tokio::time::sleep_until(start + step * n as u32).await;
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(range.len());
        for i in range {
            let erased = tenant_number(i / REGIONS.len()) == ERASED_TENANT;
            if erased && skip_erased {
                continue;
            }
            let key = key_of(i, minute);
            pipe.hset_multiple(&key, &fields_of(i, minute, hashes))
                .ignore();
            pipe.expire(&key, KEY_TTL_SECONDS).ignore();
            keys.push(key);
            written.erased_tenant_keys += usize::from(erased);
        }
        written.keys += keys.len();
        if !keys.is_empty() {
            pipe.sadd(index_key(minute), &keys).ignore();
            pipe.expire(index_key(minute), KEY_TTL_SECONDS).ignore();
        }
        let mut conn = conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("writing verdicts of {minute}"))?;
    }
    written.finished_after = start.elapsed().as_secs_f64();
    Ok(written)
}

// ---------------------------------------------------------------- processes, memory, CPU

#[derive(Clone, Copy, Debug, Default)]
struct ProcInfo {
    ppid: u32,
    ticks: u64,
}

fn processes() -> BTreeMap<u32, ProcInfo> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(utime), Some(stime)) = (
            fields.get(1).and_then(|v| v.parse().ok()),
            fields.get(11).and_then(|v| v.parse::<u64>().ok()),
            fields.get(12).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        all.insert(
            pid,
            ProcInfo {
                ppid,
                ticks: utime + stime,
            },
        );
    }
    all
}

/// `root` and every live descendant of it.
fn tree(all: &BTreeMap<u32, ProcInfo>, root: u32) -> BTreeSet<u32> {
    let mut tree = BTreeSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, info) in all {
            if tree.contains(&info.ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

fn tree_ticks(all: &BTreeMap<u32, ProcInfo>, pids: &BTreeSet<u32>) -> u64 {
    pids.iter()
        .filter_map(|pid| all.get(pid))
        .map(|p| p.ticks)
        .sum()
}

fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| values.get(i))
        .sum()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// A kB field of a /proc file (`VmRSS:`, `Pss:`, ...).
fn proc_kb(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix(field)
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Memory of a process tree, in kB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    pss: u64,
}

impl Memory {
    /// Each field's smaller value.
    fn min(self, other: Memory) -> Memory {
        Memory {
            rss: self.rss.min(other.rss),
            anon: self.anon.min(other.anon),
            pss: self.pss.min(other.pss),
        }
    }
}

fn tree_memory(pids: &BTreeSet<u32>) -> Memory {
    let mut memory = Memory::default();
    for &pid in pids {
        memory.rss += proc_kb(pid, "status", "VmRSS:");
        memory.anon += proc_kb(pid, "status", "RssAnon:");
        memory.pss += proc_kb(pid, "smaps_rollup", "Pss:");
    }
    memory
}

// ---------------------------------------------------------------- /metrics

#[derive(Clone, Debug, Default)]
struct Scrape {
    series: Vec<(String, String, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.trim().parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name.to_string(), labels.to_string(), value))
            })
            .collect();
        Self { series }
    }

    /// Sum of the series named `name` whose labels contain `label` (all when empty).
    fn sum(&self, name: &str, label: &str) -> Option<f64> {
        let mut found = None;
        for (n, labels, value) in &self.series {
            if n == name && labels.contains(label) {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    /// Cumulative bucket counts of a histogram, by upper bound.
    fn buckets(&self, name: &str, label: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .series
            .iter()
            .filter(|(n, labels, _)| *n == bucket && labels.contains(label))
            .filter_map(|(_, labels, value)| {
                let le = labels.split("le=\"").nth(1)?.split('"').next()?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, *value))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

async fn scrape(port: u16) -> anyhow::Result<Scrape> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| anyhow!("scraping /metrics timed out"))??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP body from /metrics"))?;
    anyhow::ensure!(head.contains(" 200 "), "/metrics answered {head}");
    Ok(Scrape::parse(body))
}

/// One loop's histogram between two scrapes: how many runs, their total
/// seconds, and an upper bound of the longest (the smallest bucket bound
/// holding all of them).
#[derive(Clone, Copy, Debug, Default)]
struct LoopDelta {
    runs: f64,
    seconds: f64,
    max_at_most: f64,
}

fn loop_delta(before: &Scrape, after: &Scrape, name: &str, label: &str) -> LoopDelta {
    let count = |s: &Scrape| s.sum(&format!("{name}_count"), label).unwrap_or(0.0);
    let sum = |s: &Scrape| s.sum(&format!("{name}_sum"), label).unwrap_or(0.0);
    let runs = count(after) - count(before);
    let old: BTreeMap<u64, f64> = before
        .buckets(name, label)
        .into_iter()
        .map(|(bound, value)| (bound.to_bits(), value))
        .collect();
    let max_at_most = if runs > 0.0 {
        after
            .buckets(name, label)
            .into_iter()
            .find(|(bound, value)| value - old.get(&bound.to_bits()).unwrap_or(&0.0) >= runs)
            .map_or(f64::INFINITY, |(bound, _)| bound)
    } else {
        0.0
    };
    LoopDelta {
        runs,
        seconds: sum(after) - sum(before),
        max_at_most,
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// The tables whose dead tuples and size are followed (partitions summed):
/// every table of tenant data (the catalogue's), and the hot bookkeeping rows.
fn followed_tables() -> Vec<&'static str> {
    Table::ALL
        .iter()
        .map(|table| table.name())
        .chain([
            "archive_watermark",
            "derived_views_watermark",
            "retention_run",
        ])
        .collect()
}

#[derive(Clone, Copy, Debug, Default)]
struct TableStats {
    dead: i64,
    live: i64,
    bytes: i64,
    autovacuums: i64,
}

async fn table_stats(pool: &PgPool) -> anyhow::Result<BTreeMap<String, TableStats>> {
    let mut out = BTreeMap::new();
    for table in followed_tables() {
        let row: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(s.n_dead_tup)::bigint, sum(s.n_live_tup)::bigint, \
                    sum(pg_total_relation_size(t.relid))::bigint, \
                    sum(s.autovacuum_count + s.vacuum_count)::bigint \
             FROM (SELECT relid FROM pg_partition_tree($1::regclass) \
                   UNION SELECT $1::regclass) t \
             LEFT JOIN pg_stat_user_tables s ON s.relid = t.relid",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .with_context(|| format!("statistics of {table}"))?;
        out.insert(
            table.to_string(),
            TableStats {
                dead: row.0.unwrap_or(0),
                live: row.1.unwrap_or(0),
                bytes: row.2.unwrap_or(0),
                autovacuums: row.3.unwrap_or(0),
            },
        );
    }
    Ok(out)
}

async fn watermark(pool: &PgPool) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(
        sqlx::query_scalar("SELECT last_minute FROM archive_watermark WHERE shard_id = 0")
            .fetch_optional(pool)
            .await?,
    )
}

async fn postmaster_pid(pool: &PgPool) -> anyhow::Result<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await?;
    let all = processes();
    all.get(&(backend as u32))
        .map(|p| p.ppid)
        .ok_or_else(|| anyhow!("backend {backend} not found in /proc"))
}

async fn redis_pid(url: &str) -> anyhow::Result<u32> {
    let mut conn = multiplexed(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no process_id in INFO server"))
}

/// History rows 10 days back (public tier, 7 days of per-minute history):
/// retention prunes them inside its window during the run.
async fn seed_old_history(
    pool: &PgPool,
    servers: usize,
    now: DateTime<Utc>,
) -> anyhow::Result<i64> {
    let tenants = servers.div_ceil(SERVERS_PER_TENANT);
    sqlx::query(
        "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) \
         SELECT ('6f1c0000-0000-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, 'public', '2020-01-01' \
         FROM generate_series(0, $1 - 1) t",
    )
    .bind(tenants as i64)
    .execute(pool)
    .await
    .context("seeding tenant tiers")?;
    let from = now.duration_trunc(TimeDelta::hours(1))? - TimeDelta::days(OLD_DAYS);
    let inserted = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, error_kind, asn, registry_of_origin) \
         SELECT ('6f1c0000-0000-4000-8000-' || lpad(to_hex(s / {SERVERS_PER_TENANT}), 12, '0'))::uuid, \
                'srv-' || lpad(s::text, 5, '0'), r.region, $1::timestamptz + m * interval '1 minute', \
                'up', 50 + (s % 900), NULL, 16509, 'mcp.so' \
         FROM generate_series(0, $2 - 1) s, generate_series(0, {OLD_MINUTES} - 1) m, \
              unnest(ARRAY['us-east','us-west','eu-west','ap-southeast','sa-east']) r(region)"
    )))
    .bind(from)
    .bind(servers as i64)
    .execute(pool)
    .await
    .context("seeding old history")?
    .rows_affected();
    Ok(inserted as i64)
}

// ---------------------------------------------------------------- manifests

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    // Written whole then renamed, as a git checkout would replace it.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn write_manifests(dir: &Path, redis_url: &str) -> anyhow::Result<()> {
    write_file(
        &dir.join("secret-redis.yaml"),
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: redis-shard-0\n  namespace: archiver\n\
             type: Opaque\nstringData:\n  url: {redis_url}\n"
        ),
    )?;
    write_file(
        &dir.join("archiver-shard.yaml"),
        "apiVersion: archiver.uptime.dev/v1alpha1\nkind: ArchiverShard\nmetadata:\n  name: shard-0\n  namespace: archiver\n\
         spec:\n  shardId: 0\n  redis:\n    urlSecretRef: {name: redis-shard-0, key: url}\n  discovery: index\n\
         \x20 tickOffsetSeconds: 5\n  backfillWhenNoWatermark: 2m\n  lagSloSeconds: 180\n  unsealedTimeoutSeconds: 300\n  replicas: 1\n",
    )?;
    write_file(
        &dir.join("partition-schedule.yaml"),
        "apiVersion: archiver.uptime.dev/v1alpha1\nkind: PartitionSchedule\nmetadata:\n  name: probe-minute\n  namespace: archiver\n\
         spec:\n  table: probe_minute\n  createAheadDays: 7\n  dropWindow: \"03:00-04:00\"\n  retentionPolicyRef:\n    name: tiers\n  lockTimeoutSeconds: 5\n",
    )?;
    Ok(())
}

/// The RetentionPolicy, its enforcement window opening during the run.
fn write_retention_policy(
    dir: &Path,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> anyhow::Result<()> {
    write_file(
        &dir.join("retention-policy.yaml"),
        &format!(
            "apiVersion: archiver.uptime.dev/v1alpha1\nkind: RetentionPolicy\nmetadata:\n  name: tiers\n  namespace: archiver\n\
             spec:\n  tiers:\n\
             \x20   public:     {{perMinuteDays: 7,   dailyDays: 365,  monthlyDays: 2555, guarantee: best-effort}}\n\
             \x20   author:     {{perMinuteDays: 90,  dailyDays: 730,  monthlyDays: 2555}}\n\
             \x20   team:       {{perMinuteDays: 180, dailyDays: 1095, monthlyDays: 2555}}\n\
             \x20   enterprise: {{perMinuteDays: 365, dailyDays: 2555, monthlyDays: 2555, contractualCapDays: 730}}\n\
             \x20 enforcement:\n    window: \"{}-{}\"\n    maxRowsPerTenantPass: 100000\n    maxRowsPerRun: 5000000\n\
             \x20 shrinkGuard:\n    maxShrinkPercent: 50\n\
             \x20 privacyPolicy:\n    configMapName: privacy-policy-retention\n    article17ResponseDays: 30\n    contact: dpo@example.com\n",
            window.0.format("%H:%M"),
            window.1.format("%H:%M"),
        ),
    )?;
    Ok(())
}

fn deletion_request(now: DateTime<Utc>) -> String {
    format!(
        "apiVersion: archiver.uptime.dev/v1alpha1\nkind: DeletionRequest\nmetadata:\n  name: soak-erase-tenant\n  namespace: archiver\n\
         spec:\n  tenantId: {}\n  reason: tenant-churned\n  requester: 0b7e3c41-9d2a-4f6b-8e15-7a9c0d4e2f63\n  receivedAt: \"{}\"\n",
        tenant(ERASED_TENANT),
        now.format("%Y-%m-%dT%H:%M:%SZ"),
    )
}

/// The DeletionRequest's status as the manifests source stores it.
fn deletion_status(dir: &Path) -> Option<serde_json::Value> {
    let path = dir.join(".archiver/status/DeletionRequest_archiver_soak-erase-tenant.yaml");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_yaml_ng::from_str(&text).ok()?;
    value.get("status").cloned()
}

// ---------------------------------------------------------------- samples

/// One minute of the run, as seen at its end.
#[derive(Clone, Debug, Default)]
struct MinuteSample {
    /// 1-based minute of the load; 0 for the catch-up after it.
    minute: usize,
    /// Now minus the end of the shard's last archived minute (from
    /// `archive_watermark`), every `SCRAPE_EVERY`.
    lags: Vec<f64>,
    /// The largest `archiver_lag_seconds` (set by the worker at its ticks)
    /// and `archiver_shard_lag_seconds` (exported by the leader) scraped.
    gauge_lag_max: f64,
    shard_lag_max: f64,
    tick: LoopDelta,
    views: LoopDelta,
    retention: LoopDelta,
    partitions: LoopDelta,
    views_lag: f64,
    retention_deleted: f64,
    rows_archived: f64,
    rejected: f64,
    operator: Memory,
    postgres: Memory,
    /// The smallest memory seen at the `SCRAPE_EVERY` samples of the
    /// minute: what stays allocated between drain ticks (a leak raises it),
    /// while the end-of-minute sample swings with where it falls in a tick.
    operator_floor: Memory,
    postgres_floor: Memory,
    redis_rss: u64,
    tables: BTreeMap<String, TableStats>,
    operator_cores: f64,
    postgres_cores: f64,
    outside_cores: f64,
    written: Option<Written>,
}

struct Pids {
    operator: u32,
    postmaster: u32,
    redis: u32,
}

struct CpuMark {
    busy: u64,
    own: u64,
    operator: u64,
    postgres: u64,
    at: Instant,
}

fn cpu_mark(pids: &Pids) -> CpuMark {
    let all = processes();
    CpuMark {
        busy: machine_busy_ticks(),
        own: tree_ticks(&all, &tree(&all, std::process::id())),
        operator: tree_ticks(&all, &tree(&all, pids.operator)),
        postgres: tree_ticks(&all, &tree(&all, pids.postmaster)),
        at: Instant::now(),
    }
}

#[derive(Default)]
struct LagWindow {
    lags: Vec<f64>,
    /// The smallest operator and PostgreSQL memory sampled this minute.
    operator_floor: Option<Memory>,
    postgres_floor: Option<Memory>,
    gauge_lag_max: f64,
    shard_lag_max: f64,
    last_scrape: Option<Scrape>,
    scrape_errors: usize,
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------- the run

struct Operator {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    log_path: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_operator(dir: &Path, database_url: &str, log_path: &Path) -> anyhow::Result<Operator> {
    let port = free_port()?;
    let log = std::fs::File::create(log_path)?;
    let mut command = tokio::process::Command::new(OPERATOR);
    command
        .arg("run")
        .arg("--manifests")
        .arg(dir)
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "json"])
        .env("DATABASE_URL", database_url)
        .env("ARCHIVER_SUPPRESSION_SALT", "soak-bench-salt")
        .env("RUST_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the child dies with this process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {OPERATOR}"))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the operator exited at once"))?;
    Ok(Operator {
        child,
        pid,
        port,
        log_path: log_path.to_path_buf(),
    })
}

async fn stop_operator(operator: &mut Operator) -> String {
    // SAFETY: signalling our own child by its pid.
    unsafe {
        libc::kill(operator.pid as i32, libc::SIGTERM);
    }
    match tokio::time::timeout(STOP_TIMEOUT, operator.child.wait()).await {
        Ok(Ok(status)) => format!("stopped on SIGTERM: {status}"),
        Ok(Err(error)) => format!("wait failed: {error}"),
        Err(_) => {
            let _ = operator.child.kill().await;
            format!(
                "did not stop within {} s of SIGTERM; killed",
                STOP_TIMEOUT.as_secs()
            )
        }
    }
}

/// Waits until `check` holds, within `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {} s",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

struct ErasureOutcome {
    applied_at: DateTime<Utc>,
    phase: String,
    completed_at: Option<String>,
    seconds: Option<f64>,
    removed: String,
    verified: String,
}

struct Outcome {
    params_minutes: usize,
    servers: usize,
    started: DateTime<Utc>,
    first_minute: DateTime<Utc>,
    samples: Vec<MinuteSample>,
    written: Vec<Written>,
    /// Per generated minute: rows archived, rejects.
    counted: Vec<(i64, i64)>,
    erased_tenant_rows_left: i64,
    erased_tenant_day_rows_left: i64,
    old_rows_seeded: i64,
    old_rows_left: i64,
    retention_window: (DateTime<Utc>, DateTime<Utc>),
    erasure: Option<ErasureOutcome>,
    stop: String,
    log_warnings: BTreeMap<String, usize>,
    log_lines: usize,
    log_copy: PathBuf,
    scrape_errors: usize,
    views_watermark: Option<DateTime<Utc>>,
    final_watermark: Option<DateTime<Utc>>,
    caught_up_after: Option<f64>,
    memory_base_minute: usize,
    postgres_version: String,
    redis_version: String,
}

async fn run(params: Params, redis_url: String) -> anyhow::Result<Outcome> {
    let started = Utc::now();
    let database = TestDatabase::new().await;
    let pool = database.pool.clone();
    let postgres_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;

    write_manifests(&manifests, &redis_url)?;

    let log_path = dir.path().join("operator.log");
    let mut operator = start_operator(&manifests, &database.url, &log_path)?;
    log(format!(
        "operator {} started (pid {}, metrics on {}, manifests in {}); load of {} minutes",
        OPERATOR,
        operator.pid,
        operator.port,
        manifests.display(),
        params.minutes
    ));
    let port = operator.port;
    wait_for("the operator's /metrics", START_TIMEOUT, || async move {
        scrape(port).await.is_ok()
    })
    .await?;
    let partition_pool = pool.clone();
    wait_for(
        "this month's partition of probe_minute",
        START_TIMEOUT,
        || {
            let pool = partition_pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_partition_tree('probe_minute') WHERE level = 1",
                )
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n >= 2)
            }
        },
    )
    .await?;
    // The shard's worker has ticked once (its watermark row exists): the
    // whole operator runs.
    let tick_pool = pool.clone();
    wait_for("the shard's first drain tick", START_TIMEOUT, || {
        let pool = tick_pool.clone();
        async move { watermark(&pool).await.is_ok_and(|w| w.is_some()) }
    })
    .await?;
    // The load starts at the next minute boundary at least 20 s away (to
    // seed the old history); retention's window opens a third of the way
    // into the run.
    let first_minute = (Utc::now() + TimeDelta::seconds(20))
        .duration_trunc(TimeDelta::minutes(1))?
        + TimeDelta::minutes(1);
    let window_open = first_minute + TimeDelta::minutes((params.minutes / 3).max(1) as i64);
    let window_close = first_minute + TimeDelta::minutes(params.minutes as i64 + 10);
    write_retention_policy(&manifests, (window_open, window_close))?;
    let seeding = Instant::now();
    let old_rows_seeded = seed_old_history(&pool, params.servers, Utc::now()).await?;
    log(format!(
        "seeded {old_rows_seeded} history rows {OLD_DAYS} days back in {:.1} s; load from {first_minute}",
        seeding.elapsed().as_secs_f64()
    ));

    let pids = Pids {
        operator: operator.pid,
        postmaster: postmaster_pid(&pool).await?,
        redis: redis_pid(&redis_url).await?,
    };
    let redis_version = {
        let mut conn = multiplexed(&redis_url).await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    };

    // The generator: one task, minute after minute on the wall clock.
    let skip_erased = Arc::new(AtomicBool::new(false));
    let written: Arc<Mutex<BTreeMap<usize, Written>>> = Arc::default();
    let generator = {
        let conn = multiplexed(&redis_url).await?;
        let skip_erased = skip_erased.clone();
        let written = written.clone();
        let keys = params.keys();
        let minutes = params.minutes;
        let erasure_minute = params.erasure_minute;
        tokio::spawn(async move {
            let hashes = tool_list_hashes();
            for n in 0..minutes {
                let minute = first_minute + TimeDelta::minutes(n as i64);
                let wait = (minute - Utc::now()).to_std().unwrap_or_default();
                let start = tokio::time::Instant::now() + wait;
                tokio::time::sleep_until(start).await;
                if n + 1 >= erasure_minute {
                    // From the erasure's minute on, the erased tenant sends nothing.
                    skip_erased.store(true, Ordering::SeqCst);
                }
                let skip = skip_erased.load(Ordering::SeqCst);
                let result = write_minute(&conn, keys, minute, start, skip, &hashes).await?;
                if result.finished_after > 60.0 {
                    log(format!(
                        "generator: minute {minute} finished {:.1} s after its start (late)",
                        result.finished_after
                    ));
                }
                written.lock().await.insert(n + 1, result);
            }
            anyhow::Ok(())
        })
    };

    // The erasure, in the middle of the run.
    let erasure = {
        let manifests = manifests.clone();
        let at = first_minute
            + TimeDelta::minutes(params.erasure_minute as i64 - 1)
            + TimeDelta::seconds(20);
        tokio::spawn(async move {
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            let applied_at = Utc::now();
            write_file(
                &manifests.join("deletion-request.yaml"),
                &deletion_request(applied_at),
            )?;
            log("DeletionRequest of a whole tenant applied");
            let deadline = Instant::now() + ERASURE_TIMEOUT;
            loop {
                let status = deletion_status(&manifests);
                let phase = status
                    .as_ref()
                    .and_then(|s| s.get("phase"))
                    .and_then(|p| p.as_str())
                    .unwrap_or("none")
                    .to_string();
                if phase == "Completed" || phase == "Failed" || Instant::now() > deadline {
                    let status = status.unwrap_or_default();
                    let completed_at = status
                        .get("completedAt")
                        .and_then(|v| v.as_str())
                        .map(str::to_string);
                    let seconds = completed_at
                        .as_deref()
                        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
                        .map(|c| (c.with_timezone(&Utc) - applied_at).as_seconds_f64());
                    let removed = status
                        .get("removed")
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into());
                    let verified = status
                        .get("verification")
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into());
                    if phase != "Completed" && phase != "Failed" {
                        log(format!(
                            "erasure not finished after {} s",
                            ERASURE_TIMEOUT.as_secs()
                        ));
                    }
                    log(format!("erasure {phase}"));
                    return anyhow::Ok(ErasureOutcome {
                        applied_at,
                        phase,
                        completed_at,
                        seconds,
                        removed,
                        verified,
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // The sampler: lag every SCRAPE_EVERY, the rest at every minute's end.
    let mut samples: Vec<MinuteSample> = Vec::new();
    let mut window = LagWindow::default();
    let last_minute = first_minute + TimeDelta::minutes(params.minutes as i64 - 1);
    let mut minute_end = first_minute + TimeDelta::minutes(1);
    let mut caught_up_after = None;
    // Load minutes, then catch-up minutes until the watermark passes the last one.
    let catch_up_deadline =
        last_minute + TimeDelta::minutes(1) + TimeDelta::from_std(CATCH_UP_TIMEOUT)?;
    // Wait for the load to start.
    tokio::time::sleep((first_minute - Utc::now()).to_std().unwrap_or_default()).await;
    let mut previous_scrape = scrape(port).await?;
    let mut mark = cpu_mark(&pids);
    let mut minute_index = 1usize;
    loop {
        let now = Utc::now();
        if now >= minute_end {
            let scraped = window.last_scrape.take().unwrap_or_default();
            let mark_now = cpu_mark(&pids);
            let tps = ticks_per_second();
            let wall = mark_now.at.duration_since(mark.at).as_secs_f64().max(1e-3);
            let cores = |a: u64, b: u64| a.saturating_sub(b) as f64 / tps / wall;
            let all = processes();
            let shard = "shard=\"archiver/shard-0\"";
            let sample = MinuteSample {
                minute: if minute_index <= params.minutes {
                    minute_index
                } else {
                    0
                },
                lags: std::mem::take(&mut window.lags),
                operator_floor: window.operator_floor.take().unwrap_or_default(),
                postgres_floor: window.postgres_floor.take().unwrap_or_default(),
                gauge_lag_max: std::mem::take(&mut window.gauge_lag_max),
                shard_lag_max: std::mem::take(&mut window.shard_lag_max),
                tick: loop_delta(
                    &previous_scrape,
                    &scraped,
                    "archiver_tick_duration_seconds",
                    shard,
                ),
                views: loop_delta(
                    &previous_scrape,
                    &scraped,
                    "archiver_views_duration_seconds",
                    "",
                ),
                retention: loop_delta(
                    &previous_scrape,
                    &scraped,
                    "archiver_retention_run_duration_seconds",
                    "",
                ),
                partitions: loop_delta(
                    &previous_scrape,
                    &scraped,
                    "archiver_reconcile_duration_seconds",
                    "kind=\"PartitionSchedule\"",
                ),
                views_lag: scraped
                    .sum("archiver_views_lag_seconds", "")
                    .unwrap_or(f64::NAN),
                retention_deleted: scraped
                    .sum("archiver_retention_deleted_rows_total", "")
                    .unwrap_or(0.0)
                    - previous_scrape
                        .sum("archiver_retention_deleted_rows_total", "")
                        .unwrap_or(0.0),
                rows_archived: scraped
                    .sum("archiver_rows_archived_total", shard)
                    .unwrap_or(0.0)
                    - previous_scrape
                        .sum("archiver_rows_archived_total", shard)
                        .unwrap_or(0.0),
                rejected: scraped
                    .sum("archiver_rejected_rows_total", "")
                    .unwrap_or(0.0)
                    - previous_scrape
                        .sum("archiver_rejected_rows_total", "")
                        .unwrap_or(0.0),
                operator: tree_memory(&tree(&all, pids.operator)),
                postgres: tree_memory(&tree(&all, pids.postmaster)),
                redis_rss: proc_kb(pids.redis, "status", "VmRSS:"),
                tables: table_stats(&pool).await?,
                operator_cores: cores(mark_now.operator, mark.operator),
                postgres_cores: cores(mark_now.postgres, mark.postgres),
                outside_cores: (cores(mark_now.busy, mark.busy) - cores(mark_now.own, mark.own))
                    .max(0.0),
                written: written.lock().await.get(&minute_index).cloned(),
            };
            log(format!(
                "minute {:>2}: lag max {:.0} s, tick {:.2} s, operator RSS {} MiB, postgres PSS {} MiB, outside {:.2} cores",
                minute_index,
                sample.lags.iter().cloned().fold(f64::NAN, f64::max),
                sample.tick.seconds,
                sample.operator.rss / 1024,
                sample.postgres.pss / 1024,
                sample.outside_cores
            ));
            samples.push(sample);
            previous_scrape = scraped;
            mark = mark_now;
            minute_end += TimeDelta::minutes(1);
            minute_index += 1;
            if minute_index > params.minutes {
                let caught_up = watermark(&pool).await?.is_some_and(|w| w >= last_minute);
                if caught_up {
                    caught_up_after =
                        Some((Utc::now() - (last_minute + TimeDelta::minutes(1))).as_seconds_f64());
                    break;
                }
                if Utc::now() > catch_up_deadline {
                    log("the watermark did not reach the last minute in time");
                    break;
                }
            }
        }
        match scrape(port).await {
            Ok(scraped) => {
                let shard = "shard=\"archiver/shard-0\"";
                if let Some(lag) = scraped.sum("archiver_lag_seconds", shard) {
                    window.gauge_lag_max = window.gauge_lag_max.max(lag);
                }
                if let Some(lag) = scraped.sum("archiver_shard_lag_seconds", shard) {
                    window.shard_lag_max = window.shard_lag_max.max(lag);
                }
                window.last_scrape = Some(scraped);
            }
            Err(error) => {
                window.scrape_errors += 1;
                log(format!("scrape failed: {error:#}"));
            }
        }
        if let Some(w) = watermark(&pool).await? {
            let lag = (Utc::now() - (w + TimeDelta::minutes(1))).as_seconds_f64();
            window.lags.push(lag);
        }
        let all = processes();
        let operator_now = tree_memory(&tree(&all, pids.operator));
        let postgres_now = tree_memory(&tree(&all, pids.postmaster));
        window.operator_floor = Some(
            window
                .operator_floor
                .map_or(operator_now, |floor| floor.min(operator_now)),
        );
        window.postgres_floor = Some(
            window
                .postgres_floor
                .map_or(postgres_now, |floor| floor.min(postgres_now)),
        );
        if minute_index > params.minutes
            && caught_up_after.is_none()
            && watermark(&pool).await?.is_some_and(|w| w >= last_minute)
        {
            caught_up_after =
                Some((Utc::now() - (last_minute + TimeDelta::minutes(1))).as_seconds_f64());
        }
        tokio::time::sleep(SCRAPE_EVERY).await;
    }

    generator.await??;
    let erasure = match erasure.await {
        Ok(Ok(outcome)) => Some(outcome),
        Ok(Err(error)) => {
            log(format!("erasure task failed: {error:#}"));
            None
        }
        Err(error) => {
            log(format!("erasure task panicked: {error}"));
            None
        }
    };
    let final_watermark = watermark(&pool).await?;
    let views_watermark: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_minute FROM derived_views_watermark LIMIT 1")
            .fetch_optional(&pool)
            .await
            .unwrap_or(None);
    let stop = stop_operator(&mut operator).await;
    log(format!("operator {stop}"));

    // The count check.
    let rows: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT minute_bucket, count(*) FROM probe_minute \
         WHERE minute_bucket BETWEEN $1 AND $2 GROUP BY 1",
    )
    .bind(first_minute)
    .bind(last_minute)
    .fetch_all(&pool)
    .await?;
    let rejects: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT minute_bucket, count(*) FROM probe_minute_rejects \
         WHERE minute_bucket BETWEEN $1 AND $2 GROUP BY 1",
    )
    .bind(first_minute)
    .bind(last_minute)
    .fetch_all(&pool)
    .await?;
    let rows: BTreeMap<_, _> = rows.into_iter().collect();
    let rejects: BTreeMap<_, _> = rejects.into_iter().collect();
    let counted = (0..params.minutes)
        .map(|n| {
            let minute = first_minute + TimeDelta::minutes(n as i64);
            (
                rows.get(&minute).copied().unwrap_or(0),
                rejects.get(&minute).copied().unwrap_or(0),
            )
        })
        .collect();
    let erased_tenant_rows_left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM probe_minute WHERE tenant_id = $1")
            .bind(tenant(ERASED_TENANT))
            .fetch_one(&pool)
            .await?;
    let erased_tenant_day_rows_left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM probe_day WHERE tenant_id = $1")
            .bind(tenant(ERASED_TENANT))
            .fetch_one(&pool)
            .await?;
    let old_rows_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_minute WHERE minute_bucket < now() - interval '7 days'",
    )
    .fetch_one(&pool)
    .await?;
    let written: Vec<Written> = {
        let map = written.lock().await;
        (1..=params.minutes)
            .map(|n| map.get(&n).cloned().unwrap_or_default())
            .collect()
    };

    // The operator's log: warnings and errors by message.
    let log_text = std::fs::read_to_string(&operator.log_path).unwrap_or_default();
    let mut log_warnings: BTreeMap<String, usize> = BTreeMap::new();
    for line in log_text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let level = value.get("level").and_then(|l| l.as_str()).unwrap_or("");
        if level == "WARN" || level == "ERROR" {
            let message = value
                .pointer("/fields/message")
                .and_then(|m| m.as_str())
                .unwrap_or("?");
            *log_warnings
                .entry(format!("{level} {message}"))
                .or_default() += 1;
        }
    }
    let log_copy = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak-operator.log");
    let _ = std::fs::write(&log_copy, &log_text);

    Ok(Outcome {
        params_minutes: params.minutes,
        servers: params.servers,
        started,
        first_minute,
        samples,
        written,
        counted,
        erased_tenant_rows_left,
        erased_tenant_day_rows_left,
        old_rows_seeded,
        old_rows_left,
        retention_window: (window_open, window_close),
        erasure,
        stop,
        log_warnings,
        log_lines: log_text.lines().count(),
        log_copy,
        scrape_errors: window.scrape_errors,
        views_watermark,
        final_watermark,
        caught_up_after,
        memory_base_minute: params.memory_base_minute(),
        postgres_version,
        redis_version,
    })
}

// ---------------------------------------------------------------- the report

fn mib(kb: u64) -> String {
    format!("{:.0}", kb as f64 / 1024.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**NOT met**" }
}

fn seconds(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else if value.is_infinite() {
        "> last bucket".into()
    } else {
        format!("{value:.2}")
    }
}

/// Minutes whose median memory is compared (from the base minute, and
/// before the last minute).
const MEMORY_WINDOW: usize = 5;

fn median(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

fn growth(base: u64, end: u64) -> f64 {
    if base == 0 {
        f64::NAN
    } else {
        (end as f64 - base as f64) / base as f64
    }
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_string())
}

fn git_head() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn render(o: &Outcome) -> String {
    let mut md = String::new();
    let load: Vec<&MinuteSample> = o.samples.iter().filter(|s| s.minute > 0).collect();
    let all_lags: Vec<f64> = o
        .samples
        .iter()
        .flat_map(|s| s.lags.iter().copied())
        .collect();
    let lag_max = all_lags.iter().copied().fold(0.0, f64::max);
    let gauge_lag_max = o
        .samples
        .iter()
        .map(|s| s.gauge_lag_max)
        .fold(0.0, f64::max);
    let shard_lag_max = o
        .samples
        .iter()
        .map(|s| s.shard_lag_max)
        .fold(0.0, f64::max);
    let lag_ok = !all_lags.is_empty()
        && [lag_max, gauge_lag_max, shard_lag_max]
            .iter()
            .all(|lag| *lag <= LAG_SLO_SECONDS);

    // Medians of five minutes from the base minute and of the five before
    // the last one: a single sample swings with where it falls in the
    // drain tick (the operator's RSS went 44-93 MiB from minute to minute)
    // and PostgreSQL's last one drops as its backends exit with the load.
    let base: Vec<&MinuteSample> = load
        .iter()
        .copied()
        .filter(|s| {
            (o.memory_base_minute..o.memory_base_minute + MEMORY_WINDOW).contains(&s.minute)
        })
        .collect();
    let end: Vec<&MinuteSample> = load
        .iter()
        .copied()
        .rev()
        .skip(1)
        .take(MEMORY_WINDOW)
        .collect();
    let median_growth = |value: fn(&MinuteSample) -> u64| match (
        median(base.iter().map(|s| value(s))),
        median(end.iter().map(|s| value(s))),
    ) {
        (Some(b), Some(e)) => growth(b, e),
        _ => f64::NAN,
    };
    // The verdict is on the floors: what stays allocated between ticks.
    let (op_growth, pg_growth, pg_anon_growth) = (
        median_growth(|s| s.operator_floor.rss),
        median_growth(|s| s.postgres_floor.pss),
        median_growth(|s| s.postgres_floor.anon),
    );
    let (op_sample_growth, pg_sample_growth) = (
        median_growth(|s| s.operator.rss),
        median_growth(|s| s.postgres.pss),
    );
    let memory_ok = [op_growth, pg_growth, pg_anon_growth]
        .iter()
        .all(|growth| *growth < MEMORY_GROWTH_LIMIT);

    let mut exact = 0usize;
    let mut problems = Vec::new();
    for (n, (w, (rows, rejects))) in o.written.iter().zip(&o.counted).enumerate() {
        let expected = (w.keys - w.erased_tenant_keys) as i64;
        if *rows == expected && *rejects == 0 && w.keys > 0 {
            exact += 1;
        } else {
            problems.push(format!(
                "minute {}: written {} (erased tenant {}), archived {rows}, rejects {rejects}",
                n + 1,
                w.keys,
                w.erased_tenant_keys
            ));
        }
    }
    let exactly_once = exact == o.params_minutes && o.erased_tenant_rows_left == 0;
    let full_length = o.params_minutes >= 30;

    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let outside: Vec<f64> = o.samples.iter().map(|s| s.outside_cores).collect();
    let outside_mean = outside.iter().sum::<f64>() / outside.len().max(1) as f64;
    let outside_max = outside.iter().copied().fold(0.0, f64::max);

    let _ = writeln!(md, "# Soak benchmark\n");
    let _ = writeln!(
        md,
        "Run {} (UTC), {} minutes of load from {}, git HEAD `{}`; `cargo bench --bench soak` \
         (SOAK_MINUTES={}, SOAK_SERVERS={}). Machine: {cpu}, {cores} cores, {memory} RAM (the CPU that \
         processes outside the soak used is measured: \"Outside cores\" below); PostgreSQL {} (throw-away cluster of `archiver_operator::testing`: \
         fsync off, shared_buffers 128MB), Redis {}, all on the same host. The operator is the release binary \
         `archiver-operator run --manifests DIR` (one process: drain worker of one shard with index discovery, \
         derived views and suppression clusters, RetentionPolicy, PartitionSchedule, DeletionRequest).{}\n",
        o.started.format("%Y-%m-%d %H:%M"),
        o.params_minutes,
        o.first_minute.format("%H:%M"),
        git_head(),
        o.params_minutes,
        o.servers,
        o.postgres_version,
        o.redis_version,
        if full_length {
            ""
        } else {
            " **Smoke run: shorter than the 30 minutes the issue asks for.**"
        }
    );
    let _ = writeln!(
        md,
        "Load: every minute, {} sealed verdicts of that minute ({} servers x 5 regions, {} tenants) with their \
         index set and a {}-minute TTL, written in pipelines of {} keys spread over the first {} s of the \
         minute. Retention: {} rows seeded {} days back (public tier, 7 days), enforcement window {}-{} UTC. \
         Erasure: DeletionRequest of one whole tenant ({} servers) applied in minute {}; that tenant sends \
         nothing from then on.\n",
        o.servers * REGIONS.len(),
        o.servers,
        o.servers.div_ceil(SERVERS_PER_TENANT),
        KEY_TTL_SECONDS / 60,
        WRITE_BATCH,
        WRITE_SPREAD.as_secs(),
        o.old_rows_seeded,
        OLD_DAYS,
        o.retention_window.0.format("%H:%M"),
        o.retention_window.1.format("%H:%M"),
        SERVERS_PER_TENANT,
        o.erasure
            .as_ref()
            .map(|e| ((e.applied_at - o.first_minute).num_minutes() + 1).to_string())
            .unwrap_or_else(|| "?".into()),
    );

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| Target | Measured | Verdict |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| Run of at least 30 minutes | {} minutes of load | {} |",
        o.params_minutes,
        met(full_length)
    );
    let _ = writeln!(
        md,
        "| Lag never above the 180 s SLO | max {:.1} s (now - end of the last archived minute in `archive_watermark`, every {} s); gauges: `archiver_lag_seconds` max {:.1} s, `archiver_shard_lag_seconds` max {:.1} s | {} |",
        lag_max,
        SCRAPE_EVERY.as_secs(),
        gauge_lag_max,
        shard_lag_max,
        met(lag_ok)
    );
    let _ = writeln!(
        md,
        "| Memory growth under 5 % from minute {} to the end (medians of 5 minutes of each minute's floor, the smallest of its samples every {} s) | operator RSS {:+.1} %; PostgreSQL PSS {:+.1} %, private memory {:+.1} % (end-of-minute samples: operator {:+.1} %, PostgreSQL PSS {:+.1} %) | {} |",
        o.memory_base_minute,
        SCRAPE_EVERY.as_secs(),
        op_growth * 100.0,
        pg_growth * 100.0,
        pg_anon_growth * 100.0,
        op_sample_growth * 100.0,
        pg_sample_growth * 100.0,
        met(memory_ok)
    );
    let _ = writeln!(
        md,
        "| Every minute archived exactly once | {exact} of {} minutes exact (rows = written - erased tenant, no rejects); {} rows of the erased tenant left | {} |\n",
        o.params_minutes,
        o.erased_tenant_rows_left,
        met(exactly_once)
    );
    for problem in &problems {
        let _ = writeln!(md, "- {problem}");
    }
    if !problems.is_empty() {
        md.push('\n');
    }

    let _ = writeln!(md, "## Per minute\n");
    let _ = writeln!(
        md,
        "Lag: now minus the end of the shard's last archived minute (`archive_watermark`), read every {} s; \
         it saws between 0 and ~65 s plus the tick when the worker keeps up (a minute is archived at the \
         next minute's :05). The gauges' maxima over the minute are shown too (`archiver_lag_seconds` is set \
         by the worker at its ticks; `archiver_shard_lag_seconds` by the leader every 10 s). Loops: histogram \
         deltas over the minute (`archiver_tick_duration_seconds`, `archiver_views_duration_seconds`, \
         `archiver_retention_run_duration_seconds`, `archiver_reconcile_duration_seconds{{kind=\"PartitionSchedule\"}}`): \
         total seconds / runs, and the bucket bound the longest run fits under. Memory: operator VmRSS; \
         PostgreSQL PSS and private (RssAnon) summed over the postmaster and its backends; Redis VmRSS; at the \
         minute's end, and the floor: the smallest of the samples taken every {} s. CPU in cores \
         over the minute; \"outside\" is every process not started by the soak.\n",
        SCRAPE_EVERY.as_secs(),
        SCRAPE_EVERY.as_secs()
    );
    let _ = writeln!(
        md,
        "| Min | Lag p50 | Lag p99 | Lag max | Gauge max (worker / leader) | Tick s | Views s / runs (max <=) | Retention s / runs | Retention rows deleted | Partitions s / runs | Views lag s | Rows archived | Rejects | Operator RSS MiB (floor) | PG PSS MiB (floor) | PG private MiB (floor) | Redis RSS MiB | `probe_minute` dead / MiB | Operator cores | PG cores | Outside cores | Generator done at s |"
    );
    let _ = writeln!(md, "|{}", "---|".repeat(22));
    for s in &o.samples {
        let label = if s.minute == 0 {
            "after".to_string()
        } else {
            s.minute.to_string()
        };
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {} | {} / {:.0} ({}) | {} / {:.0} | {:.0} | {} / {:.0} | {:.0} | {:.0} | {:.0} | {} ({}) | {} ({}) | {} ({}) | {} | {} / {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            percentile(&s.lags, 50.0),
            percentile(&s.lags, 99.0),
            s.lags.iter().copied().fold(f64::NAN, f64::max),
            s.gauge_lag_max,
            s.shard_lag_max,
            seconds(s.tick.seconds),
            seconds(s.views.seconds),
            s.views.runs,
            seconds(s.views.max_at_most),
            seconds(s.retention.seconds),
            s.retention.runs,
            s.retention_deleted,
            seconds(s.partitions.seconds),
            s.partitions.runs,
            s.views_lag,
            s.rows_archived,
            s.rejected,
            mib(s.operator.rss),
            mib(s.operator_floor.rss),
            mib(s.postgres.pss),
            mib(s.postgres_floor.pss),
            mib(s.postgres.anon),
            mib(s.postgres_floor.anon),
            mib(s.redis_rss),
            s.tables.get("probe_minute").map_or(0, |t| t.dead),
            s.tables.get("probe_minute").map_or(0, |t| t.bytes) as f64 / 1048576.0,
            s.operator_cores,
            s.postgres_cores,
            s.outside_cores,
            s.written
                .as_ref()
                .map(|w| format!("{:.1}", w.finished_after))
                .unwrap_or_else(|| "-".into()),
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "Over the whole run: lag p50 {:.0} s, p99 {:.0} s, max {:.0} s ({} scrapes, {} failed). \
         CPU used outside the soak: mean {:.2}, max {:.2} cores (of {cores}).\n",
        percentile(&all_lags, 50.0),
        percentile(&all_lags, 99.0),
        lag_max,
        all_lags.len(),
        o.scrape_errors,
        outside_mean,
        outside_max
    );

    let _ = writeln!(md, "## Tables: dead tuples and size\n");
    let _ = writeln!(
        md,
        "`n_dead_tup` and `n_live_tup` (partitions summed), `pg_total_relation_size` (with indexes and TOAST), \
         vacuums (auto + manual) counted by `pg_stat_user_tables`, at the end of the first load minute, of \
         minute {}, and of the run.\n",
        o.memory_base_minute
    );
    let _ = writeln!(
        md,
        "| Table | Dead (1) | Dead ({}) | Dead (end) | Live (end) | MiB (1) | MiB ({}) | MiB (end) | Vacuums during the run |\n|---|---|---|---|---|---|---|---|---|",
        o.memory_base_minute, o.memory_base_minute
    );
    let first = o.samples.first();
    let last = o.samples.last();
    for table in followed_tables() {
        let get = |s: Option<&&MinuteSample>| {
            s.and_then(|s| s.tables.get(table))
                .copied()
                .unwrap_or_default()
        };
        let (a, b, c) = (get(first.as_ref()), get(base.first()), get(last.as_ref()));
        let _ = writeln!(
            md,
            "| `{table}` | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            a.dead,
            b.dead,
            c.dead,
            c.live,
            a.bytes as f64 / 1048576.0,
            b.bytes as f64 / 1048576.0,
            c.bytes as f64 / 1048576.0,
            c.autovacuums - a.autovacuums
        );
    }
    md.push('\n');

    let _ = writeln!(md, "## Erasure, retention, shutdown\n");
    match &o.erasure {
        Some(e) => {
            let _ = writeln!(
                md,
                "- Erasure (whole tenant `{}`): applied {}, phase **{}**, completed {} ({}). Removed: `{}`. \
                 Verification: `{}`. Rows of the tenant left at the end: {} in `probe_minute`, {} in `probe_day`.",
                tenant(ERASED_TENANT),
                e.applied_at.format("%H:%M:%S"),
                e.phase,
                e.completed_at.as_deref().unwrap_or("-"),
                e.seconds
                    .map(|s| format!("{s:.1} s after the manifest was written"))
                    .unwrap_or_else(|| "-".into()),
                e.removed,
                e.verified,
                o.erased_tenant_rows_left,
                o.erased_tenant_day_rows_left
            );
        }
        None => {
            let _ = writeln!(md, "- Erasure: no outcome (see the bench's log).");
        }
    }
    let deleted: f64 = o.samples.iter().map(|s| s.retention_deleted).sum();
    let runs: f64 = o.samples.iter().map(|s| s.retention.runs).sum();
    let _ = writeln!(
        md,
        "- Retention: {} rows seeded past the public tier's 7 days; {:.0} rows deleted in the window \
         (`archiver_retention_deleted_rows_total`, all tables), {:.0} enforcement run(s) observed; {} rows older than 7 days left in `probe_minute` at the end.",
        o.old_rows_seeded, deleted, runs, o.old_rows_left
    );
    let _ = writeln!(
        md,
        "- Catch-up: the shard's watermark reached the last loaded minute {}; at the end the shard watermark was {} and the derived views' {}.",
        o.caught_up_after
            .map(|s| format!("{s:.0} s after it ended"))
            .unwrap_or_else(|| "**not within the bench's wait**".into()),
        o.final_watermark
            .map(|w| w.format("%H:%M").to_string())
            .unwrap_or_else(|| "-".into()),
        o.views_watermark
            .map(|w| w.format("%H:%M").to_string())
            .unwrap_or_else(|| "-".into()),
    );
    let _ = writeln!(md, "- Operator shutdown: {}.", o.stop);
    let _ = writeln!(
        md,
        "- Operator log: {} lines, warnings and errors by message{}",
        o.log_lines,
        if o.log_warnings.is_empty() {
            ": none."
        } else {
            ":"
        }
    );
    for (message, count) in &o.log_warnings {
        let short: String = message.chars().take(160).collect();
        let _ = writeln!(md, "  - {count} x `{}`", short.replace('`', "'"));
    }
    let _ = writeln!(
        md,
        "\n(The operator's log of this run was copied to `{}`, which is not committed.)",
        o.log_copy
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&o.log_copy)
            .display()
    );
    md
}

/// `existing` with this bench's section replaced by `section` (between the
/// markers when they are there, else appended). Other sections are kept.
fn with_section(existing: &str, section: &str) -> String {
    let block = format!(
        "{MARK_BEGIN}\n{}{MARK_END}\n",
        section.trim_end_matches('\n').to_owned() + "\n"
    );
    if let (Some(begin), Some(end)) = (existing.find(MARK_BEGIN), existing.find(MARK_END))
        && end > begin
    {
        let rest = existing[end + MARK_END.len()..].trim_start_matches('\n');
        let separator = if rest.is_empty() { "" } else { "\n" };
        return format!("{}{block}{separator}{rest}", &existing[..begin]);
    }
    let existing = existing.trim_end_matches('\n');
    if existing.is_empty() {
        block
    } else {
        format!("{existing}\n\n{block}")
    }
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("soak bench: run it with `cargo bench --bench soak` (skipped without --bench)");
        return Ok(());
    }
    let params = Params::from_env();
    // Servers are tied to the thread that starts them: start them here, on
    // the main thread, which outlives the runtime.
    let redis = redis_server();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run(params, redis.url()))?;
    drop(runtime);
    drop(redis);

    let markdown = render(&outcome);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_section(&existing, &markdown))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{markdown}");
    eprintln!("[soak] wrote the soak section of {}", path.display());
    Ok(())
}
