//! `archiver-operator demo`: the product on throw-away local servers.
//!
//! Today it starts PostgreSQL and Redis from the binaries on this machine,
//! applies the schema, validates the examples and shows what the operator
//! would manage. The reconcilers join it as they land (drain, rollups,
//! partitions, retention, erasure with its receipt).

use std::path::{Path, PathBuf};

use crate::api::validation::validate_files;
use crate::local_servers::{PostgresServer, RedisServer};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Servers(#[from] crate::local_servers::LocalServerError),
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error("query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the examples in {dir} are invalid:\n{problems}")]
    InvalidExamples { dir: String, problems: String },
}

/// Runs the demo against the manifests in `examples`.
pub async fn run(examples: &Path) -> Result<(), DemoError> {
    println!("== starting throw-away PostgreSQL and Redis servers");
    // Started on this (the main) thread on purpose: the servers are tied to
    // the thread that starts them (see local_servers) and must outlive it.
    let postgres = PostgresServer::start()?;
    let redis = RedisServer::start()?;
    println!(
        "   postgres on 127.0.0.1:{}, redis on 127.0.0.1:{}",
        postgres.port(),
        redis.port()
    );

    println!("== applying the schema (embedded migrations)");
    let pool = crate::db::connect(&postgres.url("postgres"), 2).await?;
    crate::db::migrate(&pool).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND relkind IN ('r', 'p') AND NOT relispartition \
         AND relname NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    println!("   tables: {}", tables.join(", "));

    println!("== validating the manifests in {}", examples.display());
    let files: Vec<PathBuf> = crate::api::validation::manifest_files(&[examples.to_path_buf()]);
    let problems = validate_files(&files);
    if !problems.is_empty() {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(DemoError::InvalidExamples {
            dir: examples.display().to_string(),
            problems: problems.join("\n"),
        });
    }
    for file in &files {
        println!("   ok  {}", file.display());
    }
    println!(
        "== done. The reconcilers (drain, rollups, partitions, retention, erasure) are not\n   \
         part of this build yet; this demo shows the schema and the validated resources.\n   \
         The servers are stopped and their directories removed now."
    );
    pool.close().await;
    drop(redis);
    drop(postgres);
    Ok(())
}
