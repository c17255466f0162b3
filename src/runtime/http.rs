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
use super::metrics::Metrics;

/// What the endpoints report on.
#[derive(Clone)]
pub struct HttpState {
    pub leadership: Leadership,
    pub db: Option<PgPool>,
    pub metrics: Arc<Metrics>,
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

/// Serves the endpoints until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /health, /ready and /metrics");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The process is alive.
async fn health() -> &'static str {
    "ok\n"
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
    let ready = matches!(database, "ok" | "not configured");
    let role = if state.leadership.is_leader() {
        "leader"
    } else {
        "standby"
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({"ready": ready, "role": role, "database": database})),
    )
        .into_response()
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
