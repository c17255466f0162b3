//! Derived-view maintenance against a realistic day (`cargo bench --bench views`).
//!
//! A day of 2,000 servers x 5 regions x 1,440 minutes (14.4 M rows) is
//! resident in probe_minute. Measured: the per-minute maintenance
//! (`views::apply_minute`: probe_day incremental update and suppression
//! clusters) of a 250,000-row minute (50,000 servers x 5 regions) at the
//! start of the day and at its end, and in the same run the seed's approach:
//! refreshing the whole day-in-progress with one GROUP BY (`recompute_day`).
//! Results go to docs/BENCHMARKS.md between the `bench:views` markers.
//! Without `--bench` on the command line (`cargo test --all-targets`) it does nothing.

use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use sqlx::{AssertSqlSafe, PgPool};

use archiver_operator::testing::TestDatabase;
use archiver_operator::views;

const RESIDENT_SERVERS: i64 = 2_000;
const MINUTE_SERVERS: i64 = 50_000;
const RUNS: usize = 3;

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 10).expect("a valid date")
}

fn at(hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 10, hour, minute, 0)
        .single()
        .expect("a valid time")
}

async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows of `servers` servers (5 regions each) for minutes [from, from + minutes).
async fn insert_rows(
    pool: &PgPool,
    servers: i64,
    from: DateTime<Utc>,
    minutes: i64,
    offset: i64,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms, error_kind, asn, registry_of_origin) \
         SELECT ('00000000-0000-4000-8000-' || lpad(((s + {offset}) / 20)::text, 12, '0'))::uuid, \
                'srv-' || (s + {offset}), r.region, $1::timestamptz + m * interval '1 minute', \
                (ARRAY['up','up','up','up','up','up','up','down','degraded','unknown'])[1 + ((s * 7 + m * 13 + r.i) % 10)], \
                50 + ((s * 31 + m) % 900), 'tls-expired', 16509, 'mcp.so' \
         FROM generate_series(0, {servers} - 1) s, generate_series(0, {minutes} - 1) m, \
              (VALUES (0, 'us-east'), (1, 'us-west'), (2, 'eu-west'), (3, 'ap-southeast'), (4, 'sa-east')) r(i, region) \
         ORDER BY m, s, r.i"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(from)
        .execute(pool)
        .await?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

struct Measured {
    label: &'static str,
    seconds: Vec<f64>,
}

impl Measured {
    fn row(&mut self) -> String {
        let min = self.seconds.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = self.seconds.iter().cloned().fold(0.0, f64::max);
        let median = median(&mut self.seconds);
        format!(
            "| {} | {} | {median:.3} | {min:.3}–{max:.3} |",
            self.label,
            self.seconds.len()
        )
    }
    fn median(&mut self) -> f64 {
        median(&mut self.seconds)
    }
}

/// The three load averages of `/proc/loadavg`, as they read.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|error| format!("unreadable: {error}"))
}

/// One measured minute, inside a transaction that is rolled back, so every
/// run does the same work on the same state.
async fn measure_minute(pool: &PgPool, minute: DateTime<Utc>) -> anyhow::Result<f64> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO derived_views_watermark (id, last_minute) VALUES (true, $1) \
         ON CONFLICT (id) DO UPDATE SET last_minute = EXCLUDED.last_minute",
    )
    .bind(minute - chrono::Duration::minutes(1))
    .execute(&mut *tx)
    .await?;
    let started = Instant::now();
    views::apply_minute_in(&mut tx, minute, Some("bench-salt")).await?;
    let seconds = started.elapsed().as_secs_f64();
    tx.rollback().await?;
    Ok(seconds)
}

async fn run() -> anyhow::Result<String> {
    let db = TestDatabase::new().await;
    let pool = &db.pool;
    prepare(pool).await?;
    let seeding = Instant::now();
    // The resident day through 23:57, in minute order as the drain writes it.
    for hour in 0..24 {
        let minutes = if hour == 23 { 58 } else { 60 };
        insert_rows(pool, RESIDENT_SERVERS, at(hour, 0), minutes, 0).await?;
    }
    // A 250k-row minute (the resident servers plus 48,000 more) at the
    // start of the day.
    sqlx::query("DELETE FROM probe_minute WHERE minute_bucket = $1")
        .bind(at(0, 0))
        .execute(pool)
        .await?;
    insert_rows(pool, MINUTE_SERVERS, at(0, 0), 1, 0).await?;
    sqlx::query("VACUUM ANALYZE probe_minute_2026_11")
        .execute(pool)
        .await?;

    let load_before = loadavg();
    // Start of day: probe_day has nothing of today yet.
    let mut start = Measured {
        label: "per-minute maintenance, 250k-row minute at 00:00 (start of day)",
        seconds: Vec::new(),
    };
    for _ in 0..RUNS {
        start.seconds.push(measure_minute(pool, at(0, 0)).await?);
    }
    // End of day: the day so far in probe_day (exact, as the incremental
    // path leaves it), then the 250k-row minute 23:58 just archived.
    {
        let mut tx = pool.begin().await?;
        views::recompute_day(&mut tx, day()).await?;
        tx.commit().await?;
    }
    insert_rows(pool, MINUTE_SERVERS, at(23, 58), 1, 0).await?;
    let seeded = seeding.elapsed();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_minute")
        .fetch_one(pool)
        .await?;
    let mut end = Measured {
        label: "per-minute maintenance, 250k-row minute at 23:58 (end of day)",
        seconds: Vec::new(),
    };
    for _ in 0..RUNS {
        end.seconds.push(measure_minute(pool, at(23, 58)).await?);
    }
    let mut full = Measured {
        label: "seed's approach: full day-in-progress GROUP BY refresh (`recompute_day`)",
        seconds: Vec::new(),
    };
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        views::recompute_day(&mut tx, day()).await?;
        tx.commit().await?;
        full.seconds.push(started.elapsed().as_secs_f64());
    }

    let load_after = loadavg();
    let (s, e, f) = (start.median(), end.median(), full.median());
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let mut out = String::new();
    out.push_str("## Derived views (`cargo bench --bench views`)\n\n");
    out.push_str(&format!(
        "Run {} UTC. Resident: {} rows in probe_minute ({} servers x 5 regions x 1,438 minutes, plus two 250,000-row minutes of {} servers); seeding took {:.0} s (not measured). `/proc/loadavg` before the measured runs: `{}`, after: `{}` (the bench and its PostgreSQL alone keep about one of the 2 cores busy; more means other work shared the machine). PostgreSQL is the throw-away server of `src/local_servers.rs` (fsync off). {RUNS} runs each; each per-minute run is rolled back so all runs do the same work.\n\n",
        Utc::now().format("%Y-%m-%d %H:%M"),
        rows,
        RESIDENT_SERVERS,
        MINUTE_SERVERS,
        seeded.as_secs_f64(),
        load_before,
        load_after
    ));
    out.push_str("| What | Runs | Median s | Min–max s |\n|---|---:|---:|---:|\n");
    for measured in [&mut start, &mut end, &mut full] {
        out.push_str(&measured.row());
        out.push('\n');
    }
    out.push_str("\n| Target | Measured | Verdict |\n|---|---:|---|\n");
    out.push_str(&format!(
        "| per-minute maintenance of a 250k-row minute <= 1 s | {:.3} s (end of day) | {} |\n",
        e.max(s),
        verdict(e.max(s) <= 1.0)
    ));
    out.push_str(&format!(
        "| flat across the day: end <= 1.5x start | {:.2}x | {} |\n",
        e / s,
        verdict(e / s <= 1.5)
    ));
    out.push_str(&format!(
        "| end of day <= 10% of the full refresh | {:.1}% | {} |\n",
        100.0 * e / f,
        verdict(e / f <= 0.10)
    ));
    Ok(out)
}

fn write_section(section: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (open, close) = ("<!-- bench:views -->", "<!-- /bench:views -->");
    let block = format!("{open}\n{section}{close}");
    let updated = match (text.find(open), text.find(close)) {
        (Some(start), Some(end)) => {
            format!("{}{block}{}", &text[..start], &text[end + close.len()..])
        }
        _ => format!("{}\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(&path, updated).context("writing docs/BENCHMARKS.md")
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let section = runtime.block_on(run())?;
    print!("{section}");
    write_section(&section)?;
    Ok(())
}
