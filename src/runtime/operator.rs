//! The `run` command: the operator process, either against the API server
//! (leader-elected controllers) or against a manifests directory
//! (standalone), with its HTTP endpoints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::config::{OperatorArgs, OperatorConfig};
use super::context::{Context, SecretSource};
use super::http::{HttpState, bind, serve};
use super::kubernetes::{KubeContext, run_controllers};
use super::leader::{Leadership, STANDALONE_LOCK_KEY, kubernetes_lease, postgres_advisory_lock};
use super::manifests::{ManifestsEngine, PassReport};
use super::metrics::Metrics;
use crate::clock::{ManualClock, SharedClock, SystemClock};

/// Name of the Lease the operator replicas compete for.
pub const LEASE_NAME: &str = "archiver-operator-leader";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error("cannot reach the Kubernetes API: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("HTTP endpoints on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} object(s) failed and {invalid} manifest problem(s) were found")]
    PassFailed { failed: usize, invalid: usize },
}

/// Connects and migrates when a database is configured.
async fn database(args: &OperatorArgs) -> Result<Option<PgPool>, RunError> {
    let Some(url) = &args.database_url else {
        tracing::warn!(
            "no database configured (--database-url / DATABASE_URL): data work is disabled"
        );
        return Ok(None);
    };
    let pool = crate::db::connect(url.expose(), 10).await?;
    crate::db::migrate(&pool).await?;
    Ok(Some(pool))
}

fn context(
    args: &OperatorArgs,
    clock: SharedClock,
    db: Option<PgPool>,
    secrets: SecretSource,
) -> Context {
    Context {
        clock,
        db,
        config: Arc::new(OperatorConfig::from(args)),
        secrets,
        metrics: Arc::new(Metrics::new()),
    }
}

async fn listen(args: &OperatorArgs) -> Result<tokio::net::TcpListener, RunError> {
    let addr = args.http_addr;
    bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return ctrl_c().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

/// `run --manifests DIR --once [--now T]`: one deterministic pass.
pub async fn run_once(
    dir: PathBuf,
    now: Option<DateTime<Utc>>,
    args: &OperatorArgs,
) -> Result<PassReport, RunError> {
    let clock: SharedClock = match now {
        Some(now) => Arc::new(ManualClock::new(now)),
        None => Arc::new(SystemClock),
    };
    let db = database(args).await?;
    let ctx = context(args, clock, db, SecretSource::Manifests(Default::default()));
    let engine = ManifestsEngine::new(dir, ctx);
    let report = engine.pass(true).await;
    Ok(report)
}

/// `run --manifests DIR`: reconcile continuously, watching the directory.
/// Two standalone processes on one database elect a leader through a
/// Postgres advisory lock.
pub async fn run_standalone(dir: PathBuf, args: &OperatorArgs) -> Result<(), RunError> {
    let db = database(args).await?;
    let leadership = match &args.database_url {
        Some(url) => {
            postgres_advisory_lock(
                url.expose().to_string(),
                STANDALONE_LOCK_KEY,
                Duration::from_secs(2),
            )
            .0
        }
        None => Leadership::always(),
    };
    let ctx = context(
        args,
        Arc::new(SystemClock),
        db.clone(),
        SecretSource::Manifests(Default::default()),
    );
    let http_state = HttpState {
        leadership: leadership.clone(),
        db,
        metrics: ctx.metrics.clone(),
    };
    let listener = listen(args).await?;
    let http = tokio::spawn(serve(listener, http_state, terminated()));
    let engine = ManifestsEngine::new(dir, ctx);
    tracing::info!("standalone operator started");
    engine.run(leadership, terminated()).await;
    http.abort();
    Ok(())
}

/// `run` in a cluster: the four controllers, only while this replica holds
/// the Lease.
pub async fn run_in_cluster(args: &OperatorArgs) -> Result<(), RunError> {
    let client = kube::Client::try_default().await?;
    let db = database(args).await?;
    let ctx = context(
        args,
        Arc::new(SystemClock),
        db.clone(),
        SecretSource::Kubernetes(client.clone()),
    );
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("archiver-operator-{}", uuid::Uuid::new_v4()));
    let lease_namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let (mut leadership, _lease_task) =
        kubernetes_lease(client.clone(), &lease_namespace, LEASE_NAME, &identity).await?;
    let http_state = HttpState {
        leadership: leadership.clone(),
        db,
        metrics: ctx.metrics.clone(),
    };
    let listener = listen(args).await?;
    let http = tokio::spawn(serve(listener, http_state, terminated()));
    let kctx = Arc::new(KubeContext::new(ctx, client, Some(identity.clone())));
    let terminate = terminated();
    tokio::pin!(terminate);
    loop {
        tracing::info!(%identity, "waiting for leadership");
        tokio::select! {
            _ = leadership.acquired() => {}
            _ = &mut terminate => break,
        }
        tracing::info!(%identity, "leading: starting controllers");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let controllers = tokio::spawn(run_controllers(
            kctx.clone(),
            args.namespace.clone(),
            stopped,
        ));
        let terminating = tokio::select! {
            _ = leadership.lost() => false,
            _ = &mut terminate => true,
        };
        tracing::info!(%identity, "stopping controllers");
        let _ = stop.send(true);
        let _ = controllers.await;
        if terminating {
            break;
        }
    }
    http.abort();
    Ok(())
}
