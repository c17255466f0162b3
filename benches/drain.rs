//! End-to-end benchmark of the drain worker against real servers (a
//! throw-away PostgreSQL cluster and throw-away Redis servers started from the
//! binaries on this machine).
//!
//! Measures one `Worker::tick` that archives one minute of 250,000 verdict
//! keys (50,000 servers x 5 regions), with index discovery and with scan
//! discovery, each with 1 and with 10 minutes of keys resident in Redis. A
//! naive baseline (SCAN MATCH, one HGETALL per key, one autocommit
//! `INSERT ... ON CONFLICT DO NOTHING` per row) runs on a smaller sample in
//! the same rounds. Every measured run uses a fresh database (fresh
//! watermark), so the minute is really written. Configurations are measured
//! in interleaved rounds, so background load on the machine hits all of them
//! alike, and the CPU used by processes outside the bench is recorded per
//! run. The results go into `docs/BENCHMARKS.md` between the
//! `<!-- bench:drain -->` markers; the rest of that file is left alone.
//!
//! Run with `cargo bench --bench drain`. For a quick smoke run, shrink it
//! with BENCH_SERVERS, BENCH_RUNS, BENCH_WARMUP and BENCH_NAIVE_KEYS.
//! Without `--bench` on the command line (`cargo test --all-targets`) it
//! does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use chrono::{DateTime, TimeZone, Utc};
use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use sqlx::{AssertSqlSafe, PgPool};

use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::archive::redis_source;
use archiver_operator::archive::verdict::{self, REGIONS, index_key, scan_pattern};
use archiver_operator::archive::worker::{MinuteOutcome, ShardSettings, Worker};
use archiver_operator::archive::writer::{self, WritePath};
use archiver_operator::clock::ManualClock;
use archiver_operator::metrics::Metrics;
use archiver_operator::testing::{TestDatabase, redis_server};

#[path = "support/verdicts.rs"]
mod verdicts;
use verdicts::{SERVERS_PER_TENANT, fields_of, key_of, tool_list_hashes};

/// This bench's section of docs/BENCHMARKS.md (other benches own theirs).
const MARK_BEGIN: &str = "<!-- bench:drain -->";
const MARK_END: &str = "<!-- /bench:drain -->";
/// How this bench's section began before it had markers.
const LEGACY_HEADING: &str = "# Drain benchmark";

/// Commands per seeding pipeline.
const SEED_BATCH: usize = 10_000;
/// Seeding pipelines in flight at once (overlaps building and Redis work).
const SEED_IN_FLIGHT: usize = 4;
/// Large enough that one tick never stops on its budget.
const TICK_BUDGET: Duration = Duration::from_secs(600);
/// Minutes resident besides the archived one in the "10 minutes" case:
/// eight older minutes (already archived, still within their TTL) and the
/// minute being written while the tick runs.
const OLDER_MINUTES: i64 = 8;
const NEWER_MINUTES: i64 = 1;
const RESIDENT: i64 = 1 + OLDER_MINUTES + NEWER_MINUTES;
/// The tick runs this long after the archived minute starts (a minute
/// is archived once it has ended; the next one has not).
const TICK_AT: i64 = 65;
/// The columns of probe_minute as the worker's COPY lists them.
const COLUMNS: &str = archiver_operator::archive::writer::COLUMNS;

/// A run during which other processes kept more cores than this busy on
/// average is discarded and retried (up to `RETRIES_PER_RUN` times).
const QUIET_CORES: f64 = 0.3;
const RETRIES_PER_RUN: usize = 3;
/// How often the gate samples the machine while waiting for quiet.
const QUIET_SAMPLE: Duration = Duration::from_millis(500);

// Targets from the issue.
const TARGET_SECONDS: f64 = 3.0;
const TARGET_SPEEDUP: f64 = 25.0;
const TARGET_RESIDENT_RATIO: f64 = 1.2;

struct Params {
    servers: usize,
    runs: usize,
    warmup: usize,
    naive_keys: usize,
    /// Total seconds the bench may wait for a quiet machine.
    quiet_wait: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Params {
    fn from_env() -> Self {
        Self {
            servers: env_usize("BENCH_SERVERS", 50_000).max(1),
            runs: env_usize("BENCH_RUNS", 7).max(1),
            warmup: env_usize("BENCH_WARMUP", 1),
            naive_keys: env_usize("BENCH_NAIVE_KEYS", 10_000).max(REGIONS.len()),
            quiet_wait: Duration::from_secs(env_usize("BENCH_QUIET_WAIT", 600) as u64),
        }
    }

    fn keys(&self) -> usize {
        self.servers * REGIONS.len()
    }

    fn naive_servers(&self) -> usize {
        self.naive_keys / REGIONS.len()
    }
}

/// The minute every measured tick archives.
fn archived_minute() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

fn tick_time() -> DateTime<Utc> {
    archived_minute() + chrono::Duration::seconds(TICK_AT)
}

// ---------------------------------------------------------------- fixtures

fn redis_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(120)))
}

async fn multiplexed(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(client
        .get_multiplexed_async_connection_with_config(&redis_config())
        .await?)
}

/// Runs one pipeline per batch of `keys` keys, `SEED_IN_FLIGHT` at a time.
async fn pipelined<F>(conn: &MultiplexedConnection, keys: usize, build: F) -> anyhow::Result<()>
where
    F: Fn(std::ops::Range<usize>) -> redis::Pipeline,
{
    let batches: Vec<std::ops::Range<usize>> = (0..keys)
        .step_by(SEED_BATCH)
        .map(|start| start..(start + SEED_BATCH).min(keys))
        .collect();
    futures::stream::iter(batches)
        .map(|range| {
            let mut conn = conn.clone();
            let pipe = build(range);
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .buffer_unordered(SEED_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Writes one minute of `servers x 5` sealed verdicts and its index set.
async fn seed_minute(
    conn: &MultiplexedConnection,
    servers: usize,
    minute: DateTime<Utc>,
) -> anyhow::Result<()> {
    let hashes = tool_list_hashes();
    pipelined(conn, servers * REGIONS.len(), |range| {
        let mut pipe = redis::pipe();
        let mut keys = Vec::with_capacity(range.len());
        for i in range {
            let key = key_of(i, minute);
            pipe.hset_multiple(&key, &fields_of(i, minute, &hashes))
                .ignore();
            keys.push(key);
        }
        pipe.sadd(index_key(minute), &keys).ignore();
        pipe
    })
    .await
    .with_context(|| format!("seeding {minute}"))
}

/// Removes the `archived_at` marker a tick left, so every run reads the same
/// hashes and writes the same markers.
async fn unmark_minute(
    conn: &MultiplexedConnection,
    servers: usize,
    minute: DateTime<Utc>,
) -> anyhow::Result<()> {
    pipelined(conn, servers * REGIONS.len(), |range| {
        let mut pipe = redis::pipe();
        for i in range {
            pipe.hdel(key_of(i, minute), verdict::ARCHIVED_AT_FIELD)
                .ignore();
        }
        pipe
    })
    .await
    .context("removing archived_at markers")
}

/// Seconds of server time Redis spent in `commands` since the last
/// CONFIG RESETSTAT (from INFO commandstats).
async fn redis_server_seconds(
    conn: &mut MultiplexedConnection,
    commands: &[&str],
) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let mut usec = 0.0;
    for line in info.lines() {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if !commands.contains(&name) {
            continue;
        }
        usec += stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("usec="))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(usec / 1e6)
}

async fn reset_redis_stats(conn: &mut MultiplexedConnection) -> anyhow::Result<()> {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- CPU used by others

/// The machine is shared: how much CPU did processes outside this bench
/// (this process, its Redis and PostgreSQL servers and their backends) use?
#[derive(Clone, Copy)]
struct CpuMark {
    busy_ticks: u64,
    own_ticks: u64,
    at: Instant,
}

fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
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

/// utime + stime of this process and all its descendants (live ones).
fn own_tree_ticks() -> u64 {
    let mut parent_of: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state ppid ... utime(12th) stime(13th).
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
        parent_of.insert(pid, (ppid, utime + stime));
    }
    let mut tree: BTreeSet<u32> = BTreeSet::from([std::process::id()]);
    loop {
        let before = tree.len();
        for (pid, (ppid, _)) in &parent_of {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.iter()
        .filter_map(|pid| parent_of.get(pid))
        .map(|(_, ticks)| ticks)
        .sum()
}

fn cpu_mark() -> CpuMark {
    CpuMark {
        busy_ticks: machine_busy_ticks(),
        own_ticks: own_tree_ticks(),
        at: Instant::now(),
    }
}

/// Average number of cores kept busy by other processes since `start`.
fn foreign_cores(start: CpuMark) -> f64 {
    let end = cpu_mark();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy = end.busy_ticks.saturating_sub(start.busy_ticks) as f64;
    let own = end.own_ticks.saturating_sub(start.own_ticks) as f64;
    let wall = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
    ((busy - own) / per_second / wall).max(0.0)
}

/// Waits (within a total budget) until other processes leave the machine
/// quiet, and counts the runs discarded because others got busy mid-run.
struct QuietGate {
    budget: Duration,
    waited: Duration,
}

impl QuietGate {
    async fn wait(&mut self) {
        loop {
            let mark = cpu_mark();
            tokio::time::sleep(QUIET_SAMPLE).await;
            if foreign_cores(mark) < QUIET_CORES || self.exhausted() {
                return;
            }
            self.waited += QUIET_SAMPLE;
        }
    }

    fn exhausted(&self) -> bool {
        self.waited >= self.budget
    }

    /// Whether a run is kept: quiet enough, or out of retries or patience.
    fn keep(&self, run: &Run, attempt: usize) -> bool {
        run.foreign_cores <= QUIET_CORES || attempt >= RETRIES_PER_RUN || self.exhausted()
    }
}

// ---------------------------------------------------------------- databases

struct Admin {
    pool: PgPool,
}

impl Admin {
    /// A fresh migrated database with the November 2026 partition.
    async fn fresh(&self) -> anyhow::Result<TestDatabase> {
        let db = TestDatabase::new().await;
        sqlx::query(
            "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
             FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
        )
        .execute(&db.pool)
        .await
        .context("creating the November partition")?;
        Ok(db)
    }

    /// Drops a run's database and checkpoints, so the next run starts clean.
    async fn discard(&self, db: TestDatabase) -> anyhow::Result<()> {
        db.pool.close().await;
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            db.name
        )))
        .execute(&self.pool)
        .await
        .context("dropping a run's database")?;
        sqlx::query("CHECKPOINT").execute(&self.pool).await?;
        Ok(())
    }
}

async fn probe_minute_rows(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(pool)
        .await?)
}

/// One measured run: wall seconds and the cores used by others meanwhile.
#[derive(Clone, Copy)]
struct Run {
    /// Until the minute is committed (what a tick waits for).
    seconds: f64,
    /// Until its keys also carry the `archived_at` marker (written after the
    /// commit by the worker's marker task).
    until_marked: f64,
    foreign_cores: f64,
}

// ---------------------------------------------------------------- measured paths

/// One worker tick on a fresh database.
async fn worker_tick(
    admin: &Admin,
    redis_url: &str,
    discovery: Discovery,
    expected: usize,
) -> anyhow::Result<Run> {
    let db = admin.fresh().await?;
    let minute = archived_minute();
    let now = tick_time();
    let settings = ShardSettings::new(0, "bench/drain", discovery, now - minute);
    let mut worker = Worker::connect(
        settings,
        "bench".into(),
        db.pool.clone(),
        redis_url,
        Arc::new(ManualClock::new(now)),
        Arc::new(Metrics::new()),
    )
    .await
    .context("connecting the worker")?;

    let cpu = cpu_mark();
    let started = Instant::now();
    let report = worker.tick(TICK_BUDGET).await.context("tick")?;
    let seconds = started.elapsed().as_secs_f64();
    worker.flush_marks().await;
    let until_marked = started.elapsed().as_secs_f64();
    let foreign_cores = foreign_cores(cpu);
    drop(worker);

    ensure!(
        report.archived.len() == 1 && report.stopped_at == Some(MinuteOutcome::CaughtUp),
        "expected exactly one archived minute, got {} (stopped at {:?})",
        report.archived.len(),
        report.stopped_at
    );
    let archived = &report.archived[0];
    ensure!(
        archived.minute == minute
            && archived.keys == expected
            && archived.rows == expected as u64
            && archived.rejected == 0
            && archived.via == discovery
            && archived.path == WritePath::Copy,
        "unexpected minute: {archived:?}"
    );
    ensure!(
        probe_minute_rows(&db.pool).await? == expected as i64,
        "probe_minute row count differs"
    );
    admin.discard(db).await?;
    Ok(Run {
        seconds,
        until_marked,
        foreign_cores,
    })
}

/// The naive baseline: SCAN MATCH (default COUNT), one HGETALL round trip
/// per key, one autocommit INSERT per row on a single connection.
async fn naive_run(admin: &Admin, redis_url: &str, expected: usize) -> anyhow::Result<Run> {
    let db = admin.fresh().await?;
    let minute = archived_minute();
    let archived_at = tick_time();
    let mut redis = multiplexed(redis_url).await?;
    let mut pg = db.pool.acquire().await?;

    let cpu = cpu_mark();
    let started = Instant::now();
    let pattern = scan_pattern(minute);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .query_async(&mut redis)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut inserted = 0;
    for key in &keys {
        let fields: verdict::RawFields = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut redis)
            .await?;
        let row = verdict::parse(key, &fields, minute)
            .map_err(|reject| anyhow!("{key}: {} {}", reject.reason.as_str(), reject.detail))?;
        inserted += sqlx::query(
            "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, \
             tool_list_hash, error_kind, asn, registry_of_origin, archived_at, extra) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
        )
        .bind(row.tenant_id)
        .bind(&row.server_slug)
        .bind(&row.region)
        .bind(row.minute)
        .bind(&row.state)
        .bind(row.p95_ms)
        .bind(&row.tool_list_hash)
        .bind(&row.error_kind)
        .bind(row.asn)
        .bind(&row.registry_of_origin)
        .bind(archived_at)
        .bind(serde_json::to_value(&row.extra)?)
        .execute(&mut *pg)
        .await?
        .rows_affected();
    }
    let seconds = started.elapsed().as_secs_f64();
    let foreign_cores = foreign_cores(cpu);
    drop(pg);
    ensure!(
        keys.len() == expected && inserted == expected as u64,
        "naive baseline saw {} keys, inserted {inserted}, expected {expected}",
        keys.len()
    );
    admin.discard(db).await?;
    Ok(Run {
        seconds,
        until_marked: seconds,
        foreign_cores,
    })
}

/// Phase timings of one minute, replaying the worker's steps from outside
/// with the crate's public functions, plus server-side evidence.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    discover: f64,
    discover_redis: f64,
    read: f64,
    read_redis: f64,
    parse: f64,
    encode: f64,
    write: f64,
    commit: f64,
    mark: f64,
    mark_redis: f64,
    /// COPY of the same binary COPY data into a copy of probe_minute without indexes,
    /// constraints or partitioning.
    copy_bare: f64,
}

impl Phases {
    /// `write` encodes the rows itself, then COPYs.
    fn copy(&self) -> f64 {
        (self.write - self.encode).max(0.0)
    }
    fn total(&self) -> f64 {
        self.discover + self.read + self.parse + self.write + self.commit + self.mark
    }
}

async fn probe_phases(
    admin: &Admin,
    config: &mut Config,
    expected: usize,
) -> anyhow::Result<Phases> {
    let db = admin.fresh().await?;
    let minute = archived_minute();
    let now = tick_time();
    let client = redis::Client::open(config.url.as_str())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(2);
    let mut redis: ConnectionManager = client
        .get_connection_manager_with_config(manager_config)
        .await?;
    let stats = &mut config.conn;
    let mut phases = Phases::default();
    let lap = |since: &mut Instant| {
        let seconds = since.elapsed().as_secs_f64();
        *since = Instant::now();
        seconds
    };

    reset_redis_stats(stats).await?;
    let mut at = Instant::now();
    let found = redis_source::discover(&mut redis, minute, config.discovery).await?;
    phases.discover = lap(&mut at);
    phases.discover_redis = redis_server_seconds(stats, &["smembers", "scan"]).await?;
    reset_redis_stats(stats).await?;

    let mut at = Instant::now();
    let fields = redis_source::read(&mut redis, &found.keys).await?;
    phases.read = lap(&mut at);
    phases.read_redis = redis_server_seconds(stats, &["hgetall"]).await?;

    let mut at = Instant::now();
    ensure!(fields.iter().all(verdict::is_sealed), "unsealed keys");
    let rows: Vec<verdict::Verdict> = found
        .keys
        .iter()
        .zip(&fields)
        .map(|(key, fields)| verdict::parse_bytes(key, fields, minute))
        .collect::<Result<_, _>>()
        .map_err(|reject| anyhow!("{} {}", reject.reason.as_str(), reject.detail))?;
    phases.parse = lap(&mut at);
    let mut copy_data = writer::copy_header();
    writer::encode_rows(&rows, now, &mut copy_data);
    copy_data.extend_from_slice(&writer::COPY_TRAILER);
    phases.encode = lap(&mut at);
    let mut tx = db.pool.begin().await?;
    lap(&mut at);
    let written = writer::write_minute(&mut tx, &rows, minute, now).await?;
    phases.write = lap(&mut at);
    tx.commit().await?;
    phases.commit = lap(&mut at);
    reset_redis_stats(stats).await?;

    let mut at = Instant::now();
    redis_source::mark_archived(&mut redis, &found.keys, now).await?;
    phases.mark = lap(&mut at);
    phases.mark_redis = redis_server_seconds(stats, &["evalsha", "eval"]).await?;

    // The same COPY data into a bare table: what index and constraint maintenance
    // and partition routing add to the COPY.
    sqlx::query("CREATE TABLE bench_bare (LIKE probe_minute INCLUDING DEFAULTS)")
        .execute(&db.pool)
        .await?;
    sqlx::query("CHECKPOINT").execute(&admin.pool).await?;
    let mut conn = db.pool.acquire().await?;
    let mut at = Instant::now();
    let mut copy_in = conn
        .copy_in_raw(&format!(
            "COPY bench_bare ({COLUMNS}) FROM STDIN WITH (FORMAT binary)"
        ))
        .await?;
    copy_in.send(copy_data.as_slice()).await?;
    let bare_rows = copy_in.finish().await?;
    phases.copy_bare = lap(&mut at);
    drop(conn);

    ensure!(
        written.inserted == expected as u64,
        "probe wrote {} rows",
        written.inserted
    );
    ensure!(
        bare_rows == expected as u64,
        "bare COPY wrote {bare_rows} rows"
    );
    admin.discard(db).await?;
    Ok(phases)
}

// ---------------------------------------------------------------- statistics

#[derive(Debug, Clone, Default)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    /// Median seconds until the `archived_at` markers were written too.
    median_until_marked: f64,
    runs: usize,
    /// Highest average number of cores other processes used during a run.
    max_foreign: f64,
}

impl Stats {
    fn of(runs: &[Run]) -> Self {
        if runs.is_empty() {
            return Self::default();
        }
        let mut sorted: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mut until_marked: Vec<f64> = runs.iter().map(|r| r.until_marked).collect();
        until_marked.sort_by(f64::total_cmp);
        Self {
            median: median(&sorted),
            median_until_marked: median(&until_marked),
            min: sorted[0],
            max: sorted[n - 1],
            runs: n,
            max_foreign: runs.iter().map(|r| r.foreign_cores).fold(0.0, f64::max),
        }
    }
}

/// The median of sorted, non-empty `values`.
fn median(values: &[f64]) -> f64 {
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One worker configuration and what was measured for it.
struct Config {
    discovery: Discovery,
    resident_minutes: i64,
    url: String,
    conn: MultiplexedConnection,
    runs: Vec<Run>,
    discarded: usize,
    phases: Phases,
}

struct Measured {
    name: String,
    discovery: Discovery,
    resident_minutes: i64,
    resident_keys: usize,
    rows: usize,
    stats: Stats,
    discarded: usize,
    phases: Phases,
}

impl Measured {
    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.stats.median
    }
}

fn config_name(discovery: Discovery, resident_minutes: i64) -> String {
    let via = match discovery {
        Discovery::Index => "index",
        Discovery::Scan => "scan",
        Discovery::Auto => "auto",
    };
    let plural = if resident_minutes == 1 { "" } else { "s" };
    format!("worker, {via} discovery, {resident_minutes} minute{plural} resident")
}

// ---------------------------------------------------------------- the run

struct Servers {
    one_minute: String,
    ten_minutes: String,
    naive: String,
}

struct Environment {
    started: DateTime<Utc>,
    cpu: String,
    cores: usize,
    memory: String,
    kernel: String,
    load_before: String,
    postgres: String,
    redis: String,
    rustc: String,
    source: String,
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_string())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn environment(postgres: String, redis: String) -> Environment {
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into());
    Environment {
        started: Utc::now(),
        cpu: first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into()),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        load_before: read_trimmed("/proc/loadavg"),
        postgres,
        redis,
        rustc,
        source: worker_source(),
    }
}

/// The worker sources compiled into this bench (they change while other
/// work goes on): a SHA-256 over them, and the git commit they sit on.
fn worker_source() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for source in [
        include_str!("../src/archive/worker.rs"),
        include_str!("../src/archive/redis_source.rs"),
        include_str!("../src/archive/writer.rs"),
        include_str!("../src/archive/verdict.rs"),
    ] {
        hash.update(source.as_bytes());
    }
    let digest: String = hash
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = git(&["status", "--porcelain", "--", "src/archive"])
        .map(|s| {
            if s.is_empty() {
                "clean"
            } else {
                "with uncommitted changes"
            }
        })
        .unwrap_or("?");
    format!(
        "`src/archive/{{worker,redis_source,writer,verdict}}.rs` as compiled into the bench: sha256 prefix \
         `{digest}`; git HEAD `{commit}`, `src/archive` {dirty} at run time"
    )
}

fn log(message: impl AsRef<str>) {
    eprintln!("[drain bench] {}", message.as_ref());
}

async fn redis_info_field(
    conn: &mut MultiplexedConnection,
    section: &str,
    field: &str,
) -> anyhow::Result<String> {
    let info: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)
                .and_then(|rest| rest.strip_prefix(':'))
        })
        .unwrap_or("?")
        .trim()
        .to_string())
}

struct Seeding {
    one_minute: f64,
    ten_minutes: f64,
    dbsize_one: usize,
    dbsize_ten: usize,
    memory_one: String,
    memory_ten: String,
}

async fn run(params: Params, servers: Servers) -> anyhow::Result<String> {
    let wall = Instant::now();
    let minute = archived_minute();

    // The cluster starts with the first database; its admin URL follows.
    let first = TestDatabase::new().await;
    let (base, _) = first.url.rsplit_once('/').context("database URL")?;
    let admin = Admin {
        pool: archiver_operator::db::connect(&format!("{base}/postgres"), 2).await?,
    };
    let postgres: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&admin.pool)
        .await?;
    admin.discard(first).await?;
    let mut one = multiplexed(&servers.one_minute).await?;
    let mut ten = multiplexed(&servers.ten_minutes).await?;
    let naive_conn = multiplexed(&servers.naive).await?;
    let redis_version = redis_info_field(&mut one, "server", "redis_version").await?;
    let env = environment(postgres, format!("Redis {redis_version}"));
    log(format!("load average before: {}", env.load_before));

    // Seeding (not measured beyond a note).
    let naive_keys = params.naive_servers() * REGIONS.len();
    seed_minute(&naive_conn, params.naive_servers(), minute).await?;
    let started = Instant::now();
    seed_minute(&one, params.servers, minute).await?;
    let seed_one = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for offset in -OLDER_MINUTES..=NEWER_MINUTES {
        seed_minute(
            &ten,
            params.servers,
            minute + chrono::Duration::minutes(offset),
        )
        .await?;
    }
    let seed_ten = started.elapsed().as_secs_f64();
    let seeding = Seeding {
        one_minute: seed_one,
        ten_minutes: seed_ten,
        dbsize_one: redis::cmd("DBSIZE").query_async(&mut one).await?,
        dbsize_ten: redis::cmd("DBSIZE").query_async(&mut ten).await?,
        memory_one: redis_info_field(&mut one, "memory", "used_memory_human").await?,
        memory_ten: redis_info_field(&mut ten, "memory", "used_memory_human").await?,
    };
    log(format!(
        "seeded {} keys in {seed_one:.1} s and {} keys in {seed_ten:.1} s",
        seeding.dbsize_one, seeding.dbsize_ten
    ));

    let mut configs: Vec<Config> = Vec::new();
    for (resident_minutes, url, conn) in [
        (1, &servers.one_minute, &one),
        (RESIDENT, &servers.ten_minutes, &ten),
    ] {
        for discovery in [Discovery::Index, Discovery::Scan] {
            configs.push(Config {
                discovery,
                resident_minutes,
                url: url.clone(),
                conn: conn.clone(),
                runs: Vec::new(),
                discarded: 0,
                phases: Phases::default(),
            });
        }
    }

    // Interleaved rounds: every configuration (and the baseline) once per round.
    let keys = params.keys();
    let mut gate = QuietGate {
        budget: params.quiet_wait,
        waited: Duration::ZERO,
    };
    let mut naive_runs = Vec::new();
    let mut naive_discarded = 0;
    for round in 0..params.warmup + params.runs {
        let warm = round < params.warmup;
        let tag = if warm {
            "warm-up".to_string()
        } else {
            format!("round {}", round - params.warmup + 1)
        };
        let mut attempt = 0;
        let run = loop {
            gate.wait().await;
            let run = naive_run(&admin, &servers.naive, naive_keys).await?;
            log(format!(
                "{tag}: naive {:.3} s ({:.0} rows/s, others {:.2} cores)",
                run.seconds,
                naive_keys as f64 / run.seconds,
                run.foreign_cores
            ));
            if warm || gate.keep(&run, attempt) {
                break run;
            }
            attempt += 1;
            naive_discarded += 1;
            log("  discarded: the machine was busy");
        };
        if !warm {
            naive_runs.push(run);
        }
        for config in &mut configs {
            let name = config_name(config.discovery, config.resident_minutes);
            let mut attempt = 0;
            let run = loop {
                unmark_minute(&config.conn, params.servers, minute).await?;
                gate.wait().await;
                let run = worker_tick(&admin, &config.url, config.discovery, keys).await?;
                log(format!(
                    "{tag}: {name} {:.3} s ({:.0} rows/s, others {:.2} cores)",
                    run.seconds,
                    keys as f64 / run.seconds,
                    run.foreign_cores
                ));
                if warm || gate.keep(&run, attempt) {
                    break run;
                }
                attempt += 1;
                config.discarded += 1;
                log("  discarded: the machine was busy");
            };
            if !warm {
                config.runs.push(run);
            }
        }
    }
    log(format!(
        "waited {:.0} s for a quiet machine{}",
        gate.waited.as_secs_f64(),
        if gate.exhausted() {
            " (budget exhausted)"
        } else {
            ""
        }
    ));

    for config in &mut configs {
        unmark_minute(&config.conn, params.servers, minute).await?;
        gate.wait().await;
        config.phases = probe_phases(&admin, config, keys).await?;
        log(format!(
            "probe {}: {:?}",
            config_name(config.discovery, config.resident_minutes),
            config.phases
        ));
    }

    let results: Vec<Measured> = configs
        .iter()
        .map(|c| Measured {
            name: config_name(c.discovery, c.resident_minutes),
            discovery: c.discovery,
            resident_minutes: c.resident_minutes,
            resident_keys: keys * c.resident_minutes as usize,
            rows: keys,
            stats: Stats::of(&c.runs),
            discarded: c.discarded,
            phases: c.phases,
        })
        .collect();
    let naive = Stats::of(&naive_runs);
    let quiet = QuietReport {
        waited: gate.waited.as_secs_f64(),
        exhausted: gate.exhausted(),
        naive_discarded,
    };
    let report = Report {
        params: &params,
        env: &env,
        load_after: read_trimmed("/proc/loadavg"),
        wall_minutes: wall.elapsed().as_secs_f64() / 60.0,
        naive_rate: naive_keys as f64 / naive.median,
        naive,
        naive_keys,
        results: &results,
        seeding: &seeding,
        quiet,
    };
    Ok(report.markdown())
}

// ---------------------------------------------------------------- report

struct Report<'a> {
    params: &'a Params,
    env: &'a Environment,
    load_after: String,
    wall_minutes: f64,
    naive: Stats,
    naive_keys: usize,
    naive_rate: f64,
    results: &'a [Measured],
    seeding: &'a Seeding,
    quiet: QuietReport,
}

struct QuietReport {
    waited: f64,
    exhausted: bool,
    naive_discarded: usize,
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict_of(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

fn percent(part: f64, whole: f64) -> String {
    format!("{:.0} %", 100.0 * part / whole.max(1e-9))
}

impl Report<'_> {
    fn find(&self, discovery: Discovery, resident_minutes: i64) -> Option<&Measured> {
        self.results
            .iter()
            .find(|m| m.discovery == discovery && m.resident_minutes == resident_minutes)
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        self.header(&mut md);
        self.method(&mut md);
        self.results_table(&mut md);
        self.targets(&mut md);
        self.phases(&mut md);
        md
    }

    fn header(&self, md: &mut String) {
        let e = self.env;
        let _ = writeln!(md, "# Drain benchmark\n");
        let _ = writeln!(
            md,
            "Written by `cargo bench --bench drain` ([`benches/drain.rs`](../benches/drain.rs)); \
             do not edit by hand, re-run the bench instead.\n"
        );
        let _ = writeln!(
            md,
            "- **Date of run:** {} UTC",
            e.started.format("%Y-%m-%d %H:%M")
        );
        let _ = writeln!(
            md,
            "- **Whole bench (seeding and probes included):** {:.1} min",
            self.wall_minutes
        );
        let _ = writeln!(md, "\n## Machine\n");
        let _ = writeln!(
            md,
            "- CPU: {} ({} cores available), a KVM guest",
            e.cpu, e.cores
        );
        let _ = writeln!(md, "- Memory: {}; kernel {}", e.memory, e.kernel);
        let _ = writeln!(md, "- {}", e.postgres);
        let _ = writeln!(md, "- {}", e.redis);
        let _ = writeln!(md, "- {} (bench profile: optimized)", e.rustc);
        let _ = writeln!(md, "- Worker measured: {}", e.source);
        let _ = writeln!(
            md,
            "- `/proc/loadavg` before: `{}`, after: `{}`",
            e.load_before, self.load_after
        );
        let _ = writeln!(
            md,
            "\nThe bench process, PostgreSQL and Redis all share these {} cores, and talk over loopback \
             TCP. PostgreSQL and Redis are the throw-away servers of `src/local_servers.rs`: PostgreSQL \
             with `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`, `shared_buffers=128MB`; \
             Redis without persistence. Absolute numbers on production hardware (separate hosts, \
             durable commits, network round trips) will differ.",
            e.cores
        );
    }

    fn method(&self, md: &mut String) {
        let p = self.params;
        let s = self.seeding;
        let _ = writeln!(md, "\n## Method\n");
        let _ = writeln!(
            md,
            "- **Data.** One minute = {} verdict keys ({} servers x {} regions, {} servers per tenant), each \
             a hash with the 7 native fields (`state` ~85 % `up`, `p95_ms`, a 64-hex `tool_list_hash`, \
             `error_kind`, `asn`, `registry_of_origin`, `verdict_sealed=1`), plus the minute's \
             `verdict-index:{{minute}}` set. Seeded with pipelines of {} commands, {} in flight (not \
             measured: {:.1} s for one minute, {:.1} s for ten).",
            thousands(p.keys() as f64),
            thousands(p.servers as f64),
            REGIONS.len(),
            SERVERS_PER_TENANT,
            thousands(SEED_BATCH as f64),
            SEED_IN_FLIGHT,
            s.one_minute,
            s.ten_minutes
        );
        let _ = writeln!(
            md,
            "- **Residency.** Two Redis servers: \"1 minute resident\" holds only the archived minute \
             (DBSIZE {}, `used_memory` {}); \"{RESIDENT} minutes resident\" holds the archived minute, \
             {OLDER_MINUTES} older minutes and {NEWER_MINUTES} newer minute, each with its index set \
             (DBSIZE {}, `used_memory` {}). Only the archived minute is written in either case: SCAN \
             has to walk every resident key, the index reads only the minute's set.",
            thousands(s.dbsize_one as f64),
            s.memory_one,
            thousands(s.dbsize_ten as f64),
            s.memory_ten
        );
        let _ = writeln!(
            md,
            "- **What is timed.** The wall time (`std::time::Instant`) of one `Worker::tick`, with a \
             `ManualClock` {TICK_AT} s past the archived minute: the tick archives exactly that minute \
             (discovery, pipelined HGETALL, parse, COPY into `probe_minute`, watermark and health update, \
             commit) and stops `CaughtUp` at the next minute. The tick then hands the keys to the \
             worker's marker task, which writes their `archived_at` markers in the background (when \
             catching up, while the next minute is archived); the bench waits for it \
             (`Worker::flush_marks`) and reports that time as well (*incl. markers*). Connecting the \
             worker is not timed. Every run uses a fresh migrated database (cloned from the template) \
             with the November 2026 partition, so the watermark is new and the {} rows are really \
             written; each run checks rows, `via`, the COPY path and `count(*)`. Afterwards the database \
             is dropped and a CHECKPOINT taken; before each run the previous run's `archived_at` \
             markers are removed (untimed), so every run reads and writes the same data.",
            thousands(p.keys() as f64)
        );
        let _ = writeln!(
            md,
            "- **Runs.** {} untimed warm-up round(s), then {} measured rounds. Each round runs the naive \
             baseline and then every worker configuration once, so slow drifts of background load \
             affect all configurations alike. Median and min–max of the seconds; rows/s = rows / median \
             seconds.",
            p.warmup, p.runs
        );
        let _ = writeln!(
            md,
            "- **Other load.** The machine is shared (another engineer was compiling and running tests \
             in the same workspace). For every run the bench reads `/proc/stat` and the CPU time of its \
             own process tree (the bench, its Redis and PostgreSQL servers and their backends); the \
             difference is the CPU other processes used during the run. Before each run the bench waits \
             until others use less than {QUIET_CORES} cores (sampled every {} ms); a run during which \
             others used more than {QUIET_CORES} cores on average is discarded and retried (up to \
             {RETRIES_PER_RUN} times per run; warm-up runs are never retried), within a total waiting \
             budget of {} s. This run waited {:.0} s in total{}. \"Discarded\" counts the retried runs \
             per configuration; \"others (max)\" is the highest average number of cores ({} available) \
             other processes kept busy during any *kept* run (near 0 = quiet machine).",
            QUIET_SAMPLE.as_millis(),
            self.params.quiet_wait.as_secs(),
            self.quiet.waited,
            if self.quiet.exhausted {
                " and **ran out of patience: later runs were kept although the machine was busy**"
            } else {
                ""
            },
            self.env.cores
        );
        let _ = writeln!(
            md,
            "- **Naive baseline** (written in the bench with redis + sqlx, not the worker): `SCAN cursor \
             MATCH verdict:*:*:*:{{minute}}` with the default COUNT, then one `HGETALL` round trip per \
             key, the crate's `verdict::parse`, and one autocommit `INSERT ... ON CONFLICT DO NOTHING` \
             per row on a single connection. To keep the run time sane it runs on a **{}-key sample** \
             ({} servers x {} regions) in a third Redis holding only that sample, which keeps its SCAN \
             cheaper than on a full shard (this favours the baseline). Its rows/s is compared with each \
             worker configuration's rows/s. Note that with `synchronous_commit=off` an autocommit costs \
             no WAL flush wait here; on a durable production database every one of its commits would \
             wait for a flush, so the baseline is slower there than measured here.",
            thousands(self.naive_keys as f64),
            thousands(p.naive_servers() as f64),
            REGIONS.len()
        );
    }

    fn results_table(&self, md: &mut String) {
        let p = self.params;
        let _ = writeln!(md, "\n## Results\n");
        let _ = writeln!(
            md,
            "| Configuration | Keys resident in Redis | Rows per run | Runs | Median s (committed) | Min–max s | Median s incl. markers | Rows/s (median) | Speedup vs naive | Others (max), cores | Discarded (busy) |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for m in self.results {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3} | {:.3}–{:.3} | {:.3} | {} | {:.1}x | {:.2} | {} |",
                m.name,
                thousands(m.resident_keys as f64),
                thousands(m.rows as f64),
                m.stats.runs,
                m.stats.median,
                m.stats.min,
                m.stats.max,
                m.stats.median_until_marked,
                thousands(m.rows_per_second()),
                m.rows_per_second() / self.naive_rate,
                m.stats.max_foreign,
                m.discarded
            );
        }
        let _ = writeln!(
            md,
            "| naive baseline, **{}-key sample** (SCAN + HGETALL per key + autocommit INSERT per row) | {} | {} | {} | {:.3} | {:.3}–{:.3} | — | {} | 1.0x | {:.2} | {} |",
            thousands(self.naive_keys as f64),
            thousands(self.naive_keys as f64),
            thousands(self.naive_keys as f64),
            self.naive.runs,
            self.naive.median,
            self.naive.min,
            self.naive.max,
            thousands(self.naive_rate),
            self.naive.max_foreign,
            self.quiet.naive_discarded
        );
        let _ = writeln!(
            md,
            "\nAt its median rate the naive baseline would need about **{:.0} s** for one {}-key minute \
             (extrapolated from the {}-key sample; not measured).",
            p.keys() as f64 / self.naive_rate,
            thousands(p.keys() as f64),
            thousands(self.naive_keys as f64)
        );
    }

    fn targets(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| Target | Configuration | Measured | Verdict |");
        let _ = writeln!(md, "|---|---|---:|---|");
        for m in self.results {
            let _ = writeln!(
                md,
                "| {}-key minute archived (committed) in <= {TARGET_SECONDS:.0} s | {} | {:.3} s median (min {:.3}, max {:.3}); `archived_at` markers written by {:.3} s | {} |",
                thousands(m.rows as f64),
                m.name,
                m.stats.median,
                m.stats.min,
                m.stats.max,
                m.stats.median_until_marked,
                verdict_of(m.stats.median <= TARGET_SECONDS)
            );
        }
        for m in self.results {
            let speedup = m.rows_per_second() / self.naive_rate;
            let _ = writeln!(
                md,
                "| >= {TARGET_SPEEDUP:.0}x faster than naive (rows/s ratio) | {} | {} / {} rows/s = {:.1}x | {} |",
                m.name,
                thousands(m.rows_per_second()),
                thousands(self.naive_rate),
                speedup,
                verdict_of(speedup >= TARGET_SPEEDUP)
            );
        }
        for discovery in [Discovery::Index, Discovery::Scan] {
            let (Some(one), Some(ten)) = (self.find(discovery, 1), self.find(discovery, RESIDENT))
            else {
                continue;
            };
            let ratio = ten.stats.median / one.stats.median;
            let (target, verdict) = if discovery == Discovery::Index {
                (
                    format!(
                        "index mode: {RESIDENT} minutes resident within {TARGET_RESIDENT_RATIO}x of 1 minute"
                    ),
                    verdict_of(ratio <= TARGET_RESIDENT_RATIO),
                )
            } else {
                (
                    format!(
                        "(no target, for comparison) scan mode: {RESIDENT} vs 1 minute resident"
                    ),
                    "—",
                )
            };
            let _ = writeln!(
                md,
                "| {target} | median seconds, {RESIDENT} / 1 minute resident | {:.3} s / {:.3} s = {ratio:.2}x | {verdict} |",
                ten.stats.median, one.stats.median
            );
        }
    }

    fn phases(&self, md: &mut String) {
        let _ = writeln!(md, "\n## Where the time goes\n");
        let _ = writeln!(
            md,
            "After the measured rounds, one probe run per configuration replays the worker's steps from \
             the bench with the crate's public functions (`redis_source::discover`, `redis_source::read`, \
             `verdict::parse`, `writer::encode_rows`, `writer::write_minute`, commit, \
             `redis_source::mark_archived`) and times each step. `write_minute` encodes the rows itself and \
             then COPYs, so *COPY* is `write_minute` minus the separately timed encoding. The probe runs \
             the steps one after another and skips the worker's small bookkeeping queries (erasure \
             lock, watermark lock and update, health, tombstones); a worker that overlaps steps (reading \
             the next chunk from Redis while COPYing the previous one) can finish below *Sum*. All \
             times in seconds.\n"
        );
        let _ = writeln!(
            md,
            "| Configuration | Discover | HGETALL (pipelined) | Parse | Encode (binary COPY) | COPY | Commit | Mark `archived_at` | Sum | Tick median |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for m in self.results {
            let ph = m.phases;
            let _ = writeln!(
                md,
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                m.name,
                ph.discover,
                ph.read,
                ph.parse,
                ph.encode,
                ph.copy(),
                ph.commit,
                ph.mark,
                ph.total(),
                m.stats.median
            );
        }
        let _ = writeln!(
            md,
            "\nServer-side evidence from the same probe runs: Redis's own time from `INFO commandstats` \
             (reset before each step: SMEMBERS/SCAN, HGETALL, EVALSHA of the marker script), and the \
             same binary COPY data COPYed into a bare copy of `probe_minute` (`LIKE probe_minute`: no primary key, no \
             indexes, no CHECKs, not partitioned). Wall time minus Redis time is round trips, transfer \
             and client-side decoding; COPY minus bare COPY is index/constraint maintenance and \
             partition routing.\n"
        );
        let _ = writeln!(
            md,
            "| Configuration | Discover: wall / Redis | HGETALL: wall / Redis | COPY: `probe_minute` / bare table | Mark: wall / Redis |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for m in self.results {
            let ph = m.phases;
            let _ = writeln!(
                md,
                "| {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |",
                m.name,
                ph.discover,
                ph.discover_redis,
                ph.read,
                ph.read_redis,
                ph.copy(),
                ph.copy_bare,
                ph.mark,
                ph.mark_redis
            );
        }
        if let Some(m) = self.find(Discovery::Index, 1) {
            let ph = m.phases;
            let total = ph.total();
            let mut shares = [
                ("COPY into probe_minute", ph.copy()),
                ("pipelined HGETALL", ph.read),
                ("marking `archived_at`", ph.mark),
                ("parsing", ph.parse),
                ("discovery", ph.discover),
                ("encoding (binary COPY)", ph.encode),
            ];
            shares.sort_by(|a, b| b.1.total_cmp(&a.1));
            let listed: Vec<String> = shares
                .iter()
                .map(|(name, seconds)| {
                    format!("{name} {seconds:.2} s ({})", percent(*seconds, total))
                })
                .collect();
            let _ = writeln!(
                md,
                "\nIn the {} case the probe's {:.2} s split into: {}. Of the HGETALL phase, Redis itself \
                 spent {:.2} s ({}); of the marker phase, {:.2} s ({}). The COPY into the bare table took \
                 {:.2} s of the {:.2} s the COPY into `probe_minute` took.",
                m.name,
                total,
                listed.join(", "),
                ph.read_redis,
                percent(ph.read_redis, ph.read),
                ph.mark_redis,
                percent(ph.mark_redis, ph.mark),
                ph.copy_bare,
                ph.copy()
            );
        }
        if let Some(m) = self.find(Discovery::Scan, RESIDENT) {
            let ph = m.phases;
            let _ = writeln!(
                md,
                "\nIn the {} case SCAN alone kept Redis busy {:.2} s ({:.2} µs per resident key: SCAN \
                 visits every key of the keyspace, whatever the pattern) before the first key of the \
                 minute could be read; that is {} of the {:.0} s target by itself, which is why the \
                 worker prefers the minute's index set (`discovery: auto`, DESIGN.md section 4).",
                m.name,
                ph.discover_redis,
                ph.discover_redis * 1e6 / m.resident_keys as f64,
                percent(ph.discover_redis, TARGET_SECONDS),
                TARGET_SECONDS
            );
        }
    }
}

/// `existing` with this bench's section replaced by `section`: between the
/// markers when they are there; otherwise the unmarked output of earlier
/// versions of this bench (the file's start up to the first other section)
/// is replaced; otherwise the section goes first. Other sections are kept.
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
    let rest = if existing.starts_with(LEGACY_HEADING) {
        existing
            .find("<!-- bench:")
            .map_or("", |other| &existing[other..])
    } else {
        existing
    };
    let separator = if rest.is_empty() { "" } else { "\n" };
    format!("{block}{separator}{rest}")
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("drain bench: run it with `cargo bench --bench drain` (skipped without --bench)");
        return Ok(());
    }
    let params = Params::from_env();
    // Servers are tied to the thread that starts them: start them here, on
    // the main thread, which outlives the runtime.
    let one_minute = redis_server();
    let ten_minutes = redis_server();
    let naive = redis_server();
    let servers = Servers {
        one_minute: one_minute.url(),
        ten_minutes: ten_minutes.url(),
        naive: naive.url(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let markdown = runtime.block_on(run(params, servers))?;
    drop(runtime);
    drop((one_minute, ten_minutes, naive));

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_section(&existing, &markdown))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{markdown}");
    eprintln!(
        "[drain bench] wrote the drain section of {}",
        path.display()
    );
    Ok(())
}
