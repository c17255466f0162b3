//! Draining a Redis shard into `probe_minute`: watermark, verdict parsing,
//! bulk writes (the derived views built on it are in `crate::views`).
//!
//! The controller (`crate::controllers::archiver_shard`) checks the shard's
//! configuration, runs or deploys its drain worker ([`worker`]) and fills
//! the status from the watermark row ([`health`]).

pub mod brin;
pub mod health;
pub mod key;
pub mod lifecycle;
pub mod redis_source;
pub mod stray;
pub mod verdict;
pub mod worker;
pub mod writer;
