//! Adapters between the domain reconcilers and the world: the Kubernetes API
//! and a directory of manifests as object sources, leader election, HTTP
//! endpoints, metrics and logging.

pub mod config;
pub mod context;
pub mod http;
pub mod kubernetes;
pub mod leader;
pub mod manifests;
pub mod operator;
pub mod publish;
pub mod reconcile;
pub mod status_store;
pub mod telemetry;
pub mod workers;
