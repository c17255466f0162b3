//! The four controllers: each adapts one custom resource to the domain
//! modules as a pipeline of small steps — resolve what the object refers
//! to, validate, act through the domain, then status, conditions and
//! events. Domain modules (`archive`, `erasure`, `retention`,
//! `partitions`) never import from here, from `runtime` or from Kubernetes
//! crates (`tests/architecture.rs` fails when one does).

pub mod archiver_shard;
pub mod deletion_request;
pub mod partition_schedule;
pub mod retention_policy;
