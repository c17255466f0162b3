//! `archiver-operator demo`: the whole lifecycle on throw-away local servers,
//! on an accelerated clock.
//!
//! Starts PostgreSQL and Redis from the binaries on this machine, applies the
//! schema and the manifests of `examples/` (through the same standalone
//! engine as `run --manifests`), feeds simulated verdicts minute by minute
//! (a few hundred servers in every region, some outages and a registry-wide
//! incident), and shows what an operator watches: minutes archived and lag,
//! rollups, suppression clusters, partitions created ahead, a retention run
//! inside its window, a DeletionRequest with its receipt, and the rendered
//! privacy-policy section. Everything is stopped and removed at the end
//! unless `--keep` is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Timelike, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::retention_policy::Tier;
use crate::api::validation::{manifest_files, validate_files};
use crate::archive::verdict::{REGIONS, index_key, verdict_key};
use crate::clock::{Clock, ManualClock, minute_floor};
use crate::local_servers::{PostgresServer, RedisServer};
use crate::runtime::config::{OperatorConfig, SecretString};
use crate::runtime::context::Context;
use crate::runtime::manifests::ManifestsEngine;
use crate::runtime::operator::published_dir;
use crate::runtime::publish::Publisher;
use crate::runtime::status_store::StatusStore;
use crate::runtime::workers::WorkerHost;

/// The tenant the demo's DeletionRequest erases (as in examples/).
const ERASED_TENANT: &str = "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01";
const ERASED_SERVER: &str = "my-server";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Servers(#[from] crate::local_servers::LocalServerError),
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error("query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the examples in {dir} are invalid:\n{problems}")]
    InvalidExamples { dir: String, problems: String },
    #[error("preparing the demo directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// How long the simulation runs.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Simulated minutes (the retention window opens after 20).
    pub minutes: u32,
    /// Servers per simulated minute (x 5 regions).
    pub servers: u32,
    /// Leave the servers running and print how to connect.
    pub keep: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            minutes: 30,
            servers: 300,
            keep: false,
        }
    }
}

/// A demo tenant: its id and tier.
fn tenants() -> Vec<(Uuid, Tier)> {
    let erased = Uuid::parse_str(ERASED_TENANT).expect("a valid constant UUID");
    let mut tenants = vec![(erased, Tier::Team)];
    for n in 1..60usize {
        let tier = Tier::ALL[n % Tier::ALL.len()];
        tenants.push((
            Uuid::from_u128(0xde00_0000_0000_4000_8000_0000_0000_0000 + n as u128),
            tier,
        ));
    }
    tenants
}

/// Runs the demo against the manifests in `examples`.
pub async fn run(examples: &Path, options: DemoOptions) -> Result<(), DemoError> {
    let started = Instant::now();
    println!("== validating {}", examples.display());
    let files = manifest_files(&[examples.to_path_buf()]);
    let problems = validate_files(&files);
    if !problems.is_empty() {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(DemoError::InvalidExamples {
            dir: examples.display().to_string(),
            problems: problems.join("\n"),
        });
    }
    println!("   {} manifests valid", files.len());

    println!("== starting throw-away PostgreSQL and Redis");
    // Started on this (the main) thread on purpose: the servers are tied to
    // the thread that starts them (see local_servers) and must outlive it.
    let postgres = PostgresServer::start()?;
    let redis = RedisServer::start()?;
    println!(
        "   postgres 127.0.0.1:{}, redis 127.0.0.1:{}",
        postgres.port(),
        redis.port()
    );
    let pool = crate::db::connect(&postgres.url("postgres"), 10).await?;
    crate::db::migrate(&pool).await?;
    println!(
        "   schema applied ({} migrations)",
        crate::db::MIGRATOR.iter().count()
    );

    let workdir = tempfile::Builder::new()
        .prefix("archiver-demo-")
        .tempdir()?;
    let dir = workdir.path().to_path_buf();
    copy_examples(examples, &dir, &redis.url())?;

    // The demo day starts at 02:40 UTC, so the retention window (03:00) opens
    // during the run.
    let start = minute_floor(Utc::now())
        .with_hour(2)
        .and_then(|t| t.with_minute(40))
        .unwrap_or_else(Utc::now)
        - Duration::days(1);
    let clock = ManualClock::new(start);
    seed_history(&pool, start).await?;
    let ctx = Context::new(Arc::new(clock.clone()))
        .with_database(pool.clone())
        .with_config(OperatorConfig {
            suppression_salt: Some(SecretString::new("demo-salt")),
            ..Default::default()
        })
        .with_workers(WorkerHost::Inline)
        .with_publisher(Publisher::Directory(published_dir(&dir)));
    let engine = ManifestsEngine::new(dir.clone(), ctx.clone());
    let store = StatusStore::for_manifests(&dir);
    let redis_client = redis::Client::open(redis.url())?;
    let mut conn = redis_client.get_multiplexed_async_connection().await?;

    println!(
        "== simulating {} minutes from {} ({} servers x 5 regions per minute)",
        options.minutes,
        start.format("%Y-%m-%d %H:%M"),
        options.servers
    );
    println!(
        "   {:<6} {:>7} {:>6} {:>9} {:>8} {:>10} {:>9}",
        "minute", "rows", "lag s", "day rows", "clusters", "partitions", "retention"
    );
    for m in 0..i64::from(options.minutes) {
        let minute = start + Duration::minutes(m);
        feed_minute(&mut conn, minute, options.servers, m).await?;
        clock.set(minute + Duration::seconds(65));
        let report = engine.pass(true).await;
        if !report.failed.is_empty() {
            return Err(DemoError::Failed(format!(
                "reconcile failed: {:?}",
                report.failed
            )));
        }
        let salt = ctx.config.suppression_salt.as_ref().map(|s| s.expose());
        crate::views::maintain_and_report(&pool, salt, clock.now(), &ctx.metrics)
            .await
            .map_err(|e| DemoError::Failed(e.to_string()))?;
        print_minute(&pool, &store, minute, clock.now()).await?;
    }

    println!("== a DeletionRequest is applied (kubectl apply -f deletion-request.yaml)");
    std::fs::copy(
        examples.join("deletion-request.yaml"),
        dir.join("deletion-request.yaml"),
    )?;
    for _ in 0..3 {
        clock.set(clock.now() + Duration::seconds(20));
        engine.pass(true).await;
        let phase = status_field(&store, "DeletionRequest", "erase-6f1c-my-server", "phase");
        if phase.as_deref() == Some("Completed") {
            break;
        }
    }
    print_deletion(&pool, &store).await?;

    println!("== the privacy-policy retention section rendered from the RetentionPolicy");
    let markdown = published_dir(&dir)
        .join("archiver")
        .join("privacy-policy-retention")
        .join("retention.md");
    match std::fs::read_to_string(&markdown) {
        Ok(text) => println!("{}", indent(&text)),
        Err(_) => println!("   (not published: {})", markdown.display()),
    }

    println!("== status of every object (archiver-operator status --manifests DIR)");
    let objects = store.list().map_err(|e| DemoError::Failed(e.to_string()))?;
    println!("{}", indent(&crate::cli::status_table(&objects)));
    println!("== done in {:.0} s", started.elapsed().as_secs_f64());

    pool.close().await;
    if options.keep {
        println!(
            "   --keep: servers left running.\n   psql {}\n   redis-cli -p {}\n   manifests and status: {}\n   press Ctrl-C to stop them",
            postgres.url("postgres"),
            redis.port(),
            dir.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(redis);
    drop(postgres);
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The examples without the DeletionRequest (applied later), with the
/// shard's Secret pointing at the demo Redis.
fn copy_examples(examples: &Path, dir: &Path, redis_url: &str) -> Result<(), DemoError> {
    for file in manifest_files(&[examples.to_path_buf()]) {
        let name = file.file_name().map(PathBuf::from).unwrap_or_default();
        if name.to_string_lossy().contains("deletion-request") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?.replace("redis://127.0.0.1:6379/0", redis_url);
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// Tenants and tiers (billing's table), and old rows past the public tier's
/// 7 days so the retention run has something to delete.
async fn seed_history(pool: &PgPool, start: DateTime<Utc>) -> Result<(), DemoError> {
    for (tenant, tier) in tenants() {
        sqlx::query(
            "INSERT INTO tenant_tier_history (tenant_id, tier, valid_from) VALUES ($1, $2, $3)",
        )
        .bind(tenant)
        .bind(tier.as_str())
        .bind(start - Duration::days(400))
        .execute(pool)
        .await?;
    }
    crate::partitions::ensure_partitions(
        pool,
        start - Duration::days(20),
        30,
        std::time::Duration::from_secs(5),
    )
    .await
    .map_err(|e| DemoError::Failed(e.to_string()))?;
    let old = start - Duration::days(12);
    let public: Vec<Uuid> = tenants()
        .into_iter()
        .filter(|(_, t)| *t == Tier::Public)
        .map(|(id, _)| id)
        .collect();
    sqlx::query(
        "INSERT INTO probe_minute (tenant_id, server_slug, region, minute_bucket, state, p95_ms) \
         SELECT t, 'old-server', 'us-east', $2::timestamptz + m * interval '1 minute', 'up', 100 \
         FROM unnest($1::uuid[]) t, generate_series(0, 59) m",
    )
    .bind(&public)
    .bind(old)
    .execute(pool)
    .await?;
    Ok(())
}

/// One minute of verdicts: every server in every region, a few outages, and
/// from minute 10 to 14 a registry-wide TLS incident on many tenants.
async fn feed_minute(
    conn: &mut redis::aio::MultiplexedConnection,
    minute: DateTime<Utc>,
    servers: u32,
    index: i64,
) -> Result<(), DemoError> {
    let tenants = tenants();
    let incident = (10..15).contains(&index);
    let mut pipe = redis::pipe();
    for s in 0..servers {
        let (tenant, _) = tenants[s as usize % tenants.len()];
        let server = if s == 0 {
            ERASED_SERVER.to_string()
        } else {
            format!("server-{s}")
        };
        for (r, region) in REGIONS.iter().enumerate() {
            let failing = (incident && s.is_multiple_of(3))
                || (s + r as u32 + index as u32).is_multiple_of(97);
            let key = verdict_key(tenant, &server, region, minute);
            let state = if failing { "down" } else { "up" };
            let p95 = (80 + (s * 7 + r as u32 * 13 + index as u32) % 400).to_string();
            pipe.hset_multiple(
                &key,
                &[
                    ("state", state),
                    ("p95_ms", p95.as_str()),
                    ("error_kind", if failing { "tls-expired" } else { "" }),
                    ("asn", "16509"),
                    ("registry_of_origin", "mcp.so"),
                    ("verdict_sealed", "1"),
                ],
            )
            .ignore();
            pipe.expire(&key, 96 * 3600).ignore();
            pipe.sadd(index_key(minute), &key).ignore();
        }
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

fn status_field(store: &StatusStore, kind: &str, name: &str, field: &str) -> Option<String> {
    let object = store.load(kind, "archiver", name).ok().flatten()?;
    object.status.get(field).map(|v| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    })
}

async fn print_minute(
    pool: &PgPool,
    store: &StatusStore,
    minute: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DemoError> {
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM probe_minute WHERE minute_bucket = $1")
            .bind(minute)
            .fetch_one(pool)
            .await?;
    let day_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_day WHERE day = $1")
        .bind(minute.date_naive())
        .fetch_one(pool)
        .await?;
    let clusters: i64 = sqlx::query_scalar("SELECT count(*) FROM suppression_clusters")
        .fetch_one(pool)
        .await?;
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'probe_minute'::regclass",
    )
    .fetch_one(pool)
    .await?;
    let lag =
        status_field(store, "ArchiverShard", "shard-0", "lagSeconds").unwrap_or_else(|| "-".into());
    let retention = store
        .load("RetentionPolicy", "archiver", "tiers")
        .ok()
        .flatten()
        .and_then(|o| {
            o.status
                .pointer("/lastEnforcement/rowsDeleted")
                .and_then(|v| v.as_object())
                .map(|m| m.values().filter_map(|v| v.as_i64()).sum::<i64>())
        })
        .map(|n| format!("{n} del"))
        .unwrap_or_else(|| {
            if now.hour() < 3 {
                "waiting".into()
            } else {
                "-".into()
            }
        });
    println!(
        "   {:<6} {:>7} {:>6} {:>9} {:>8} {:>10} {:>9}",
        minute.format("%H:%M"),
        rows,
        lag,
        day_rows,
        clusters,
        partitions,
        retention
    );
    Ok(())
}

async fn print_deletion(pool: &PgPool, store: &StatusStore) -> Result<(), DemoError> {
    let Some(object) = store
        .load("DeletionRequest", "archiver", "erase-6f1c-my-server")
        .ok()
        .flatten()
    else {
        println!("   (no status)");
        return Ok(());
    };
    let status = &object.status;
    println!("   phase: {}", status["phase"].as_str().unwrap_or("-"));
    if let Some(removed) = status.get("removed") {
        println!("   removed: {removed}");
    }
    if let Some(sha) = status.get("receiptSha256").and_then(|v| v.as_str()) {
        println!("   receipt sha256: {sha}");
    }
    let tenant = Uuid::parse_str(ERASED_TENANT).expect("a valid constant UUID");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_minute WHERE tenant_id = $1 AND server_slug = $2",
    )
    .bind(tenant)
    .bind(ERASED_SERVER)
    .fetch_one(pool)
    .await?;
    let tombstones: i64 =
        sqlx::query_scalar("SELECT count(*) FROM data_deletion_log WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(pool)
            .await?;
    println!(
        "   rows of {ERASED_TENANT}/{ERASED_SERVER} left in probe_minute: {left}; tombstones: {tombstones}"
    );
    Ok(())
}
