//! Read-side cache invalidation: one `POST` per configured URL with
//! `{"tenantId": .., "serverSlug": ..}` (`serverSlug` null for a whole
//! tenant). The read-side API caches rows for 60 s; the call makes the
//! erasure visible at once. Every URL must answer 2xx within the timeout,
//! otherwise the erasure fails and Postgres rolls back.
//!
//! `http://` (in-cluster service URLs) and `https://`. HTTPS trusts the
//! system's CA certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` point it at a
//! private CA bundle); without any, `https://` calls fail with the TLS
//! error and `http://` still works. The client is hyper-util's with rustls,
//! the same stack kube uses.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, Uri, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::scope::Scope;
use crate::api::deletion_request::CacheInvalidation;

/// How long one invalidation may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidationError {
    #[error("{url} is not a usable http(s):// URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
}

/// POSTs the invalidation to every URL concurrently. Returns each URL with
/// its status, or the first failure (in URL order).
pub async fn invalidate_all(
    urls: &[String],
    scope: &Scope,
    timeout: Duration,
) -> Result<Vec<CacheInvalidation>, InvalidationError> {
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let client = client(timeout);
    let body = serde_json::json!({
        "tenantId": scope.tenant,
        "serverSlug": scope.server,
    })
    .to_string();
    let calls = urls
        .iter()
        .map(|url| post(&client, url, body.clone(), timeout));
    futures::future::join_all(calls).await.into_iter().collect()
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

fn client(timeout: Duration) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(timeout));
    // The TLS layer above handles https://.
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// TLS settings for https:// URLs, read once per process: loading the
/// system's CA certificates is file work an erasure should not repeat.
/// Without any, https:// calls fail verification and http:// still works.
fn tls_config() -> rustls::ClientConfig {
    static CONFIG: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "reading the system CA certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "CA certificates for https:// cache URLs");
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        })
        .clone()
}

async fn post(
    client: &HttpsClient,
    url: &str,
    body: String,
    timeout: Duration,
) -> Result<CacheInvalidation, InvalidationError> {
    let shown = display_url(url);
    let uri: Uri =
        url.parse()
            .map_err(|e: axum::http::uri::InvalidUri| InvalidationError::BadUrl {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(InvalidationError::BadUrl {
            url: shown,
            reason: "only http:// and https:// are supported".into(),
        });
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("archiver-operator/", env!("CARGO_PKG_VERSION")),
        )
        .body(Body::from(body))
        .map_err(|e| InvalidationError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| InvalidationError::Timeout {
            url: shown.clone(),
            seconds: timeout.as_secs(),
        })?
        .map_err(|e| InvalidationError::Request {
            url: shown.clone(),
            reason: error_chain(&e),
        })?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(InvalidationError::Status { url: shown, status });
    }
    Ok(CacheInvalidation { url: shown, status })
}

/// The URL as shown in statuses, receipts and errors: without credentials
/// or query string, which may carry tokens.
pub(crate) fn display_url(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return "<unparseable URL>".into();
    };
    let authority = uri
        .authority()
        .map(|a| {
            a.as_str()
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        authority,
        uri.path()
    )
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_carry_no_credentials_or_query() {
        assert_eq!(
            display_url(
                "http://user:secret@cache.read-side:8080/api/admin/cache-invalidate?token=abc"
            ),
            "http://cache.read-side:8080/api/admin/cache-invalidate"
        );
        assert_eq!(display_url("not a url"), "<unparseable URL>");
    }
}
