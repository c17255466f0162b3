//! archiver-operator: a Kubernetes operator that turns four custom resources
//! (`ArchiverShard`, `RetentionPolicy`, `PartitionSchedule`,
//! `DeletionRequest`) into the persistence side of an uptime-monitoring
//! platform: Redis verdicts drained into Postgres history, pruned to the tier
//! table, partitioned ahead of need, and erased on request with a receipt.
//!
//! Domain modules (`archive`, `views`, `retention`, `partitions`, `erasure`, with
//! the neutral `clock`, `db`, `metrics`, `secret`, `redis_client`) know
//! nothing about Kubernetes (`tests/architecture.rs` enforces it).
//! `controllers` adapts them to the four custom resources, `commands` to
//! the one-shot CLI commands, and `runtime` runs the controllers against
//! the API server or a directory of manifests.

/// The drain allocates and frees millions of small strings per minute
/// (Redis replies, parsed verdicts): mimalloc does that markedly cheaper
/// than the system allocator (measured in `cargo bench --bench drain`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod archive;
pub mod canonical;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod controllers;
pub mod db;
#[cfg(feature = "demo")]
pub mod demo;
pub mod erasure;
#[cfg(feature = "demo")]
pub mod local_servers;
pub mod metrics;
pub mod partitions;
pub mod plugin;
pub mod redis_client;
pub mod retention;
pub mod runtime;
pub mod schema;
pub mod secret;
/// Throw-away servers and databases for the integration tests and benches;
/// never in a release build (see the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
pub mod views;
