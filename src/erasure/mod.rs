//! GDPR erasure: the deletion transaction, the Redis fan-out, receipts,
//! tombstone replay and the drill.
//!
//! The domain lives in the submodules and knows nothing about Kubernetes:
//! [`transaction`] (one Postgres transaction across every surface, Redis
//! and cache invalidation awaited before COMMIT), [`verify`] (recount after
//! COMMIT), [`receipt`] (canonical JSON + SHA-256, audit log), [`replay`]
//! (tombstones re-applied after a restore), [`drill`]. The controller
//! (`crate::controllers::deletion_request`) is the thin adapter from a
//! DeletionRequest to one attempt, and from the attempt to the status.
//!
//! Lifecycle: Pending (waiting for the database or the shard Redis list)
//! -> Completed, or Failed with `step: reason` and a retry with backoff
//! until it completes. The whole attempt runs inside one reconcile (a few
//! seconds even for a year of minutes), so Running is never written as a
//! resting state. Completed is terminal: re-applying the object changes
//! nothing, and the erasure is never run twice for the same object (the
//! receipt is looked up by namespace, name and uid, also when the status
//! was lost).

pub mod invalidate;
pub mod receipt;
pub mod redis_side;
pub mod redis_targets;
pub mod replay;
pub mod request;
pub mod run;
pub mod scope;
pub mod surfaces;
pub mod transaction;
pub mod verify;

pub use request::{ErasureRequest, RESPONSE_DAYS};
pub use scope::Scope;
pub use transaction::{ErasureError, ErasureSettings};
