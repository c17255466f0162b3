//! Leader election: only the leader reconciles; a standby waits, ready to
//! take over. In a cluster the lock is a `coordination.k8s.io/v1` Lease
//! (kube-lease-manager); in standalone mode, where two processes may share a
//! database but no API server, it is a Postgres session advisory lock.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
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

/// Seconds a Lease is valid after its last renewal: how long a crashed
/// leader's work stays unclaimed.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry the holder renews.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Leader election on a Lease in `namespace`.
pub async fn kubernetes_lease(
    client: kube::Client,
    namespace: &str,
    lease_name: &str,
    identity: &str,
) -> Result<(Leadership, JoinHandle<()>), kube_lease_manager::LeaseManagerError> {
    kubernetes_lease_with(
        client,
        namespace,
        lease_name,
        identity,
        LEASE_DURATION_SECONDS,
        LEASE_GRACE_SECONDS,
    )
    .await
}

/// [`kubernetes_lease`] with its timing spelled out (tests use seconds).
/// Dropping every clone of the returned [`Leadership`] releases the Lease.
pub async fn kubernetes_lease_with(
    client: kube::Client,
    namespace: &str,
    lease_name: &str,
    identity: &str,
    duration_seconds: u64,
    grace_seconds: u64,
) -> Result<(Leadership, JoinHandle<()>), kube_lease_manager::LeaseManagerError> {
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), namespace);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, lease_name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration_seconds)
        .with_grace(grace_seconds)
        .build()
        .await?;
    let (manager_state, task) = manager.watch().await;
    let (sender, state) = watch::channel(false);
    let guard = ExpiryGuard {
        leases,
        lease_name: lease_name.to_string(),
        identity: identity.to_string(),
        // Step down halfway through the grace period: after the renewal
        // was due, well before another replica may take the Lease.
        valid_for: chrono::Duration::milliseconds(
            i64::try_from((duration_seconds * 1000).saturating_sub(grace_seconds * 500))
                .unwrap_or(i64::MAX),
        ),
    };
    let handle = tokio::spawn(async move {
        guard.run(manager_state, sender).await;
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "lease manager stopped"),
            Err(error) => tracing::error!(%error, "lease manager task failed"),
        }
    });
    Ok((Leadership::from_receiver(state), handle))
}

/// kube-lease-manager reports leadership from what it last saw of the
/// Lease: a leader cut off from the API server keeps reporting `true` after
/// its Lease has expired and another replica has taken it (two leaders;
/// reproduced in tests/leader_lease.rs). The guard passes the manager's
/// answer on only while the Lease, as last read, names this process and its
/// last renewal is recent enough; otherwise this process stops leading, on
/// its own clock, before the Lease can change hands.
struct ExpiryGuard {
    leases: kube::Api<Lease>,
    lease_name: String,
    identity: String,
    valid_for: chrono::Duration,
}

impl ExpiryGuard {
    /// Until every [`Leadership`] is dropped; then drops the manager's
    /// receiver too, which makes the manager release the Lease.
    async fn run(self, mut manager_state: watch::Receiver<bool>, sender: watch::Sender<bool>) {
        let mut valid_until: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = sender.closed() => return,
                changed = manager_state.changed() => {
                    if changed.is_err() {
                        sender.send_replace(false);
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            if *manager_state.borrow() {
                // A failed read keeps the last known expiry: that is the point.
                if let Ok(lease) = self.leases.get(&self.lease_name).await {
                    valid_until = self.renewed_by_us(&lease).map(|at| at + self.valid_for);
                }
            } else {
                valid_until = None;
            }
            let leading = *manager_state.borrow()
                && valid_until.is_some_and(|until| chrono::Utc::now() < until);
            sender.send_if_modified(|state| std::mem::replace(state, leading) != leading);
        }
    }

    /// When this process last renewed `lease`, if it holds it.
    fn renewed_by_us(&self, lease: &Lease) -> Option<chrono::DateTime<chrono::Utc>> {
        let spec = lease.spec.as_ref()?;
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return None;
        }
        let renewed = spec.renew_time.as_ref()?.0;
        let nanos = u32::try_from(renewed.subsec_nanosecond()).unwrap_or(0);
        chrono::DateTime::from_timestamp(renewed.as_second(), nanos)
    }
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
