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
use super::publish::Publisher;
use super::workers::{InProcessWorkers, KubeWorkers, WorkerHost};
use crate::api::common::SecretKeyRef;
use crate::clock::{ManualClock, SharedClock, SystemClock};
use crate::metrics::Metrics;

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
    #[error("ArchiverShard {0} not found")]
    ShardNotFound(String),
    #[error("worker: {0}")]
    Worker(String),
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
    workers: WorkerHost,
    publisher: Publisher,
) -> Context {
    let ctx = Context::new(clock)
        .with_config(OperatorConfig::from(args))
        .with_secrets(secrets)
        .with_workers(workers)
        .with_publisher(publisher);
    match db {
        Some(pool) => ctx.with_database(pool),
        None => ctx,
    }
}

/// `NAME:KEY` of the Secret the worker pods read the database URL from.
fn worker_database_secret(args: &OperatorArgs) -> SecretKeyRef {
    let (name, key) = args
        .worker_database_secret
        .split_once(':')
        .unwrap_or((args.worker_database_secret.as_str(), "url"));
    SecretKeyRef {
        name: name.to_string(),
        key: key.to_string(),
    }
}

/// Standalone mode publishes documents beside the status files.
pub fn published_dir(manifests: &std::path::Path) -> PathBuf {
    manifests.join(".archiver").join("published")
}

/// How often the leader re-applies every tombstone (the safety net after a
/// restore or a missed surface).
const REPLAY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// The leader's periodic tombstone replay.
async fn replay_forever(
    pool: PgPool,
    ctx: Context,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let salt = ctx.config.suppression_salt.as_ref();
        match crate::erasure::replay::replay_tombstones(&pool, salt, ctx.clock.now()).await {
            Ok(report) => tracing::debug!(?report, "tombstones replayed"),
            Err(error) => tracing::warn!(%error, "tombstone replay failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(REPLAY_INTERVAL) => {}
        }
    }
}

async fn listen(args: &OperatorArgs) -> Result<tokio::net::TcpListener, RunError> {
    let addr = args.http_addr;
    bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })
}

/// Binds the operator's HTTP port and serves `/health`, `/ready` (the
/// leadership and the database) and `/metrics` until termination.
async fn serve_operator_http(
    args: &OperatorArgs,
    leadership: &Leadership,
    db: Option<PgPool>,
    ctx: &Context,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, RunError> {
    let state = HttpState {
        leadership: leadership.clone(),
        db,
        metrics: ctx.metrics.clone(),
        worker: None,
    };
    let listener = listen(args).await?;
    Ok(tokio::spawn(serve(listener, state, terminated())))
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
    let ctx = context(
        args,
        clock,
        db,
        SecretSource::Manifests(Default::default()),
        WorkerHost::Inline,
        Publisher::Directory(published_dir(&dir)),
    );
    let views = ctx.db.clone().map(|pool| (pool, ctx.clone()));
    let engine = ManifestsEngine::new(dir, ctx);
    let mut report = engine.pass(true).await;
    // The derived views follow the minutes the pass archived.
    if let Some((pool, ctx)) = views {
        let salt = ctx.config.suppression_salt.as_ref().map(|s| s.expose());
        match crate::views::maintain_and_report(&pool, salt, ctx.clock.now(), &ctx.metrics).await {
            Ok(views) => report.notes.push(format!(
                "derived views: {} minute(s) applied, {} day(s) closed{}{}{}",
                views.minutes.len(),
                views.closed_days.len(),
                views
                    .waiting_on
                    .as_ref()
                    .map(|shard| format!(
                        "; waiting on shard {} (archived through {})",
                        shard.shard_id, shard.last_minute
                    ))
                    .unwrap_or_else(|| "; no active shard".into()),
                views
                    .suppression_disabled
                    .map(|why| format!("; suppression clusters skipped: {why}"))
                    .unwrap_or_default(),
                views
                    .plan_check
                    .as_ref()
                    .and_then(|check| check.problem.map(|problem| (problem, &check.plan)))
                    .map(|(problem, plan)| format!(
                        "; the alert router's query is not served by its index ({}: {plan})",
                        problem.label()
                    ))
                    .unwrap_or_default()
            )),
            Err(error) => report
                .failed
                .push(("derived views".into(), error.to_string())),
        }
    }
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
    let workers = WorkerHost::InProcess(Arc::new(InProcessWorkers::new()));
    let ctx = context(
        args,
        Arc::new(SystemClock),
        db.clone(),
        SecretSource::Manifests(Default::default()),
        workers,
        Publisher::Directory(published_dir(&dir)),
    );
    let http = serve_operator_http(args, &leadership, db, &ctx).await?;
    let replay = ctx.db.clone().map(|pool| {
        let ctx = ctx.clone();
        let mut leadership = leadership.clone();
        tokio::spawn(async move {
            leadership.acquired().await;
            replay_forever(pool, ctx, terminated()).await
        })
    });
    let views = ctx.db.clone().map(|pool| {
        let ctx = ctx.clone();
        let mut leadership = leadership.clone();
        tokio::spawn(async move {
            leadership.acquired().await;
            crate::views::run_forever(
                pool,
                ctx.config.suppression_salt.clone(),
                ctx.clock.clone(),
                ctx.metrics.clone(),
                terminated(),
            )
            .await
        })
    });
    let engine = ManifestsEngine::new(dir, ctx);
    tracing::info!("standalone operator started");
    engine.run(leadership, terminated()).await;
    for task in [views, replay].into_iter().flatten() {
        task.abort();
    }
    http.abort();
    Ok(())
}

/// `run` in a cluster: the four controllers, only while this replica holds
/// the Lease.
pub async fn run_in_cluster(args: &OperatorArgs) -> Result<(), RunError> {
    let client = super::kube_client("archiver-operator").await?;
    let db = database(args).await?;
    let workers = WorkerHost::Kubernetes(Arc::new(KubeWorkers::new(
        client.clone(),
        args.worker_image.clone(),
        worker_database_secret(args),
        args.worker_service_account.clone(),
    )));
    let ctx = context(
        args,
        Arc::new(SystemClock),
        db.clone(),
        SecretSource::Kubernetes(client.clone()),
        workers,
        Publisher::Kubernetes(client.clone()),
    );
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("archiver-operator-{}", uuid::Uuid::new_v4()));
    let lease_namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let (mut leadership, _lease_task) =
        kubernetes_lease(client.clone(), &lease_namespace, LEASE_NAME, &identity).await?;
    let http = serve_operator_http(args, &leadership, db, &ctx).await?;
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
            stopped.clone(),
        ));
        // The leader also replays tombstones periodically (safety net).
        let replay = kctx.ctx.db.clone().map(|pool| {
            tokio::spawn(replay_forever(
                pool,
                kctx.ctx.clone(),
                std::future::pending(),
            ))
        });
        // The leader also keeps the derived views current.
        let views = kctx.ctx.db.clone().map(|pool| {
            let ctx = kctx.ctx.clone();
            let mut stopped = stopped;
            tokio::spawn(crate::views::run_forever(
                pool,
                ctx.config.suppression_salt.clone(),
                ctx.clock.clone(),
                ctx.metrics.clone(),
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
            ))
        });
        let terminating = tokio::select! {
            _ = leadership.lost() => false,
            _ = &mut terminate => true,
        };
        tracing::info!(%identity, "stopping controllers");
        let _ = stop.send(true);
        let _ = controllers.await;
        if let Some(views) = views {
            let _ = views.await;
        }
        if let Some(replay) = replay {
            replay.abort();
        }
        // Nothing leader-side runs any more: a standby exports no frozen
        // leader gauges (the rules aggregate over the replicas).
        kctx.ctx.metrics.forget_leader_state();
        if terminating {
            break;
        }
    }
    http.abort();
    Ok(())
}

/// Where a worker reads its ArchiverShard from.
#[derive(Debug, Clone)]
pub enum ShardSource {
    Kubernetes,
    Manifests(PathBuf),
}

/// `worker --shard NAMESPACE/NAME`: the drain loop of one shard, with its
/// HTTP endpoints. The Redis URL comes from `REDIS_URL` (the Deployment
/// injects it from the shard's Secret) or is resolved from the Secret.
pub async fn run_worker(
    shard_ref: &str,
    source: ShardSource,
    redis_url: Option<crate::runtime::config::SecretString>,
    args: &OperatorArgs,
) -> Result<(), RunError> {
    let (namespace, name) = shard_ref.split_once('/').unwrap_or(("default", shard_ref));
    let (shard, secrets) = match &source {
        ShardSource::Manifests(dir) => {
            let set = super::manifests::load(dir);
            let shard = set
                .shards
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata.name.as_deref() == Some(name)
                })
                .cloned()
                .ok_or_else(|| RunError::ShardNotFound(shard_ref.to_string()))?;
            (
                shard,
                SecretSource::Manifests(Arc::new(std::sync::RwLock::new(set.secrets))),
            )
        }
        ShardSource::Kubernetes => {
            let client = super::kube_client("archiver-operator").await?;
            let api: kube::Api<crate::api::ArchiverShard> =
                kube::Api::namespaced(client.clone(), namespace);
            let shard = api
                .get_opt(name)
                .await?
                .ok_or_else(|| RunError::ShardNotFound(shard_ref.to_string()))?;
            (shard, SecretSource::Kubernetes(client))
        }
    };
    let redis_url = match redis_url {
        Some(url) => url,
        None => secrets
            .resolve(namespace, &shard.spec.redis.url_secret_ref)
            .await
            .map_err(|e| RunError::Worker(e.to_string()))?,
    };
    let pool = database(args)
        .await?
        .ok_or_else(|| RunError::Worker("a worker needs --database-url or DATABASE_URL".into()))?;
    let metrics = Arc::new(Metrics::new());
    let readiness = super::http::WorkerReadiness {
        redis: crate::redis_client::open(redis_url.expose())
            .map_err(|e| RunError::Worker(format!("the shard's Redis URL: {e}")))?,
        shard_id: shard.spec.shard_id,
        unsealed_timeout_seconds: shard.spec.unsealed_timeout_seconds,
        clock: Arc::new(SystemClock),
    };
    let listener = listen(args).await?;
    let http = tokio::spawn(serve(
        listener,
        HttpState {
            leadership: Leadership::always(),
            db: Some(pool.clone()),
            metrics: metrics.clone(),
            worker: Some(readiness),
        },
        terminated(),
    ));
    let settings = crate::controllers::archiver_shard::shard_settings(&shard);
    let worker = crate::archive::worker::Worker::connect(
        settings,
        super::workers::owner_name(),
        pool,
        redis_url.expose(),
        Arc::new(SystemClock),
        metrics,
    )
    .await
    .map_err(|e| RunError::Worker(format!("connecting to Redis: {e}")))?;
    tracing::info!(shard = %shard_ref, "worker started");
    crate::archive::worker::run_forever(worker, terminated()).await;
    http.abort();
    Ok(())
}
