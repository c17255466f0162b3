//! Rows of `operator_audit_log` written by partition work, and the lock
//! discipline every DDL statement runs under.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// `operator_audit_log.action` values written by this module.
pub mod actions {
    /// A partition was created (written in the creating transaction).
    pub const CREATE: &str = "partition-create";
    /// About to detach: committed before the detach transaction starts, so
    /// the intent survives a crash in the middle.
    pub const DETACH_INTENT: &str = "partition-detach-intent";
    /// Detached (written in the detaching transaction).
    pub const DETACH: &str = "partition-detach";
    /// About to drop a detached partition.
    pub const DROP_INTENT: &str = "partition-drop-intent";
    /// Dropped (written in the dropping transaction).
    pub const DROP: &str = "partition-drop";
    /// A detach or drop gave up (lock timeouts exhausted, verification failed).
    pub const ABANDONED: &str = "partition-drop-abandoned";
}

/// Who acted, for `operator_audit_log.actor`.
pub const DEFAULT_ACTOR: &str = "archiver-operator";

/// Appends one audit row.
pub(crate) async fn record<'e>(
    executor: impl PgExecutor<'e>,
    at: DateTime<Utc>,
    action: &str,
    subject: &str,
    actor: &str,
    payload: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO operator_audit_log (at, action, subject, actor, payload) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(action)
    .bind(subject)
    .bind(actor)
    .bind(payload)
    .execute(executor)
    .await?;
    Ok(())
}

/// When the operator last created and last dropped a partition.
pub(crate) async fn last_actions<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT max(at) FROM operator_audit_log WHERE action = $1), \
                (SELECT max(at) FROM operator_audit_log WHERE action = $2)",
    )
    .bind(actions::CREATE)
    .bind(actions::DROP)
    .fetch_one(executor)
    .await
}

/// Partitions detached by the operator whose drop never happened (the
/// process died, or the drop ran out of retries): name and recorded bounds.
pub(crate) async fn detached_not_dropped<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<(String, serde_json::Value)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (subject) subject, payload FROM operator_audit_log d \
         WHERE d.action = $1 AND NOT EXISTS ( \
             SELECT 1 FROM operator_audit_log x \
             WHERE x.subject = d.subject AND x.action = $2 AND x.id > d.id) \
         ORDER BY subject, id DESC",
    )
    .bind(actions::DETACH)
    .bind(actions::DROP)
    .fetch_all(executor)
    .await
}

/// How long one DDL statement may wait for its locks, and how often it is
/// tried. A long reader of a partition must delay creation or a drop, never
/// queue ingestion behind it for longer than `lock_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockDiscipline {
    pub lock_timeout: Duration,
    /// Attempts of one statement (at least 1).
    pub attempts: u32,
    /// Pause between attempts, during which nothing of ours is queued.
    pub backoff: Duration,
}

impl LockDiscipline {
    /// Three attempts a second apart: a reader that holds its lock for a few
    /// seconds delays the step, anything longer postpones it to the next
    /// reconcile.
    pub fn new(lock_timeout: Duration) -> Self {
        Self {
            lock_timeout,
            attempts: 3,
            backoff: Duration::from_secs(1),
        }
    }

    /// `SET LOCAL lock_timeout` for the current transaction.
    pub async fn apply(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let millis = self.lock_timeout.as_millis().max(1);
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{millis}ms"))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// Whether the statement lost a lock wait (lock_timeout or a deadlock) and
/// may simply be tried again.
pub(crate) fn is_lock_conflict(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("55P03") | Some("40P01"))
    )
}
