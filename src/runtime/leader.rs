//! Leader election: only the leader reconciles; a standby waits, ready to
//! take over. In a cluster the lock is a `coordination.k8s.io/v1` Lease
//! (kube-lease-manager); in standalone mode, where two processes may share a
//! database but no API server, it is a Postgres session advisory lock.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Advisory-lock key of the standalone leader (an arbitrary constant that
/// reads "archiver" in ASCII).
pub const STANDALONE_LOCK_KEY: i64 = 0x6172_6368_6976_6572;

/// Whether this process currently leads, observable and awaitable.
#[derive(Debug, Clone)]
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// A process that is always the leader (single instance, `--once`).
    pub fn always() -> Self {
        let (sender, state) = watch::channel(true);
        // Keep the sender alive for the life of the process: a closed
        // channel would read as "leadership lost".
        std::mem::forget(sender);
        Self { state }
    }

    pub fn from_receiver(state: watch::Receiver<bool>) -> Self {
        Self { state }
    }

    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once this process leads.
    pub async fn acquired(&mut self) {
        let _ = self.state.wait_for(|leader| *leader).await;
    }

    /// Resolves once this process no longer leads.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }
}

/// Leader election on a Lease in `namespace`.
pub async fn kubernetes_lease(
    client: kube::Client,
    namespace: &str,
    lease_name: &str,
    identity: &str,
) -> Result<(Leadership, JoinHandle<()>), kube_lease_manager::LeaseManagerError> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, lease_name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (state, task) = manager.watch().await;
    let handle = tokio::spawn(async move {
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "lease manager stopped"),
            Err(error) => tracing::error!(%error, "lease manager task failed"),
        }
    });
    Ok((Leadership::from_receiver(state), handle))
}

/// Leader election on a Postgres session advisory lock, held on a dedicated
/// connection for as long as this process leads. If the connection drops,
/// the server releases the lock and a standby takes over.
pub fn postgres_advisory_lock(
    database_url: String,
    key: i64,
    retry: Duration,
) -> (Leadership, JoinHandle<()>) {
    let (sender, state) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            if sender.is_closed() {
                return;
            }
            hold_lock_while_connected(&database_url, key, retry, &sender).await;
            let _ = sender.send(false);
            tokio::time::sleep(retry).await;
        }
    });
    (Leadership::from_receiver(state), task)
}

async fn hold_lock_while_connected(
    database_url: &str,
    key: i64,
    retry: Duration,
    sender: &watch::Sender<bool>,
) {
    let mut connection = match PgConnection::connect(database_url).await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::warn!(%error, "leader election: cannot connect to the database");
            return;
        }
    };
    loop {
        let acquired: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut connection)
            .await;
        match acquired {
            Ok(true) => break,
            Ok(false) => {
                if sender.is_closed() {
                    return;
                }
                tokio::time::sleep(retry).await;
            }
            Err(error) => {
                tracing::warn!(%error, "leader election: lock query failed");
                return;
            }
        }
    }
    tracing::info!("leader election: this process is the leader");
    let _ = sender.send(true);
    // Keep the session (and so the lock) alive; stop leading when it dies.
    loop {
        tokio::time::sleep(retry).await;
        if sender.is_closed() {
            return;
        }
        if let Err(error) = sqlx::query("SELECT 1").execute(&mut connection).await {
            tracing::warn!(%error, "leader election: lost the database session, stepping down");
            return;
        }
    }
}
