//! `/health`, `/ready` and `/metrics` on every process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use super::leader::Leadership;
use crate::metrics::Metrics;

/// What the endpoints report on.
#[derive(Clone)]
pub struct HttpState {
    pub leadership: Leadership,
    pub db: Option<PgPool>,
    pub metrics: Arc<Metrics>,
    /// Set in a shard worker: `/ready` also checks its Redis and whether its
    /// shard progresses.
    pub worker: Option<WorkerReadiness>,
}

/// What a worker's `/ready` checks besides the database.
#[derive(Clone)]
pub struct WorkerReadiness {
    /// The shard's Redis (a fresh connection per probe: the drain's own
    /// connection must not be taken by a probe).
    pub redis: redis::Client,
    pub shard_id: i32,
    /// `spec.unsealedTimeoutSeconds`, for the reason of an unsealed wait.
    pub unsealed_timeout_seconds: u32,
    pub clock: crate::clock::SharedClock,
}

/// How long one dependency check of `/ready` may take.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl WorkerReadiness {
    async fn redis(&self) -> &'static str {
        let ping = async {
            let mut connection = self.redis.get_multiplexed_async_connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        };
        match tokio::time::timeout(READY_CHECK_TIMEOUT, ping).await {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "unreachable",
            Err(_) => "timeout",
        }
    }

    /// Why the shard cannot progress, from its watermark row; `None` when it
    /// progresses or waits only for unsealed verdicts (bounded by the
    /// shard's timeout), or has not ticked yet.
    async fn shard_blocked(&self, pool: &PgPool) -> Option<(String, String)> {
        let read = crate::archive::health::read(pool, self.shard_id);
        let health = match tokio::time::timeout(READY_CHECK_TIMEOUT, read).await {
            Ok(Ok(health)) => health?,
            Ok(Err(error)) => {
                return Some((
                    "DatabaseError".into(),
                    format!("reading the watermark: {error}"),
                ));
            }
            Err(_) => {
                return Some((
                    "DatabaseError".into(),
                    "reading the watermark timed out".into(),
                ));
            }
        };
        let (reason, message) = crate::archive::health::not_ready(
            &health,
            self.clock.now(),
            true,
            self.unsealed_timeout_seconds,
        )?;
        (reason != "UnsealedWait").then(|| (reason.to_string(), message))
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds `addr`; done before anything else starts so a taken port fails
/// the process at once.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// What one client can hold of the server. The endpoints are read by
/// probes and scrapers that send a whole request at once; without these
/// bounds a client that sends half a request (or opens sockets and sends
/// nothing) holds a connection and its task forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's headers must have arrived this long after the connection
    /// became ready for them; otherwise it is closed. Also ends keep-alive
    /// connections idle for this long.
    pub header_read_timeout: Duration,
    /// Connections served at once; a connection beyond it is closed as soon
    /// as it is accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// How long a connection in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the endpoints until `shutdown` resolves, with the default limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /health, /ready and /metrics");
    }
    serve_with_limits(
        listener,
        router(state),
        ConnectionLimits::default(),
        shutdown,
    )
    .await
}

/// Serves `app` over HTTP/1 within `limits` until `shutdown` resolves; then
/// stops accepting and gives connections in flight [`SHUTDOWN_GRACE`].
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, for instance: wait instead of spinning.
                tracing::warn!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                limit = limits.max_connections,
                "HTTP connection limit reached; closing a new connection"
            );
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                    }
                }
                _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
        });
    }
    let _ = stop.send(true);
    Ok(())
}

/// The process is alive, and which build it runs (seed 002).
async fn health() -> Json<serde_json::Value> {
    Json(build_info())
}

/// The version, git commit and build time recorded by `build.rs`.
pub fn build_info() -> serde_json::Value {
    let built = env!("ARCHIVER_BUILD_EPOCH")
        .parse::<i64>()
        .ok()
        .and_then(|seconds| chrono::DateTime::<chrono::Utc>::from_timestamp(seconds, 0))
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("ARCHIVER_GIT_COMMIT"),
        "buildTime": built,
    })
}

/// Ready when the database answers (or none is configured) and the process
/// either leads or stands by ready to lead.
async fn ready(State(state): State<HttpState>) -> Response {
    let database = match &state.db {
        None => "not configured",
        Some(pool) => {
            let ping = sqlx::query("SELECT 1").execute(pool);
            match tokio::time::timeout(Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => "ok",
                Ok(Err(_)) => "unreachable",
                Err(_) => "timeout",
            }
        }
    };
    let mut ready = matches!(database, "ok" | "not configured");
    let role = if state.leadership.is_leader() {
        "leader"
    } else {
        "standby"
    };
    let mut body = json!({"ready": ready, "role": role, "database": database});
    if let Some(worker) = &state.worker {
        let redis = worker.redis().await;
        body["redis"] = json!(redis);
        ready &= redis == "ok";
        let blocked = match (&state.db, database) {
            (Some(pool), "ok") => worker.shard_blocked(pool).await,
            _ => None,
        };
        body["shard"] = match &blocked {
            None => json!({"progressing": true}),
            Some((reason, message)) => {
                json!({"progressing": false, "reason": reason, "message": message})
            }
        };
        ready &= blocked.is_none();
        body["ready"] = json!(ready);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
