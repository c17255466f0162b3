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

/// Who a Kubernetes request came from, as the API server's audit log and
/// its metrics show it (`userAgent`): the program (`archiver-operator`,
/// `kubectl-archiver`) and this build's version.
pub fn user_agent(program: &str) -> String {
    format!("{program}/{}", env!("CARGO_PKG_VERSION"))
}

/// A client from the environment (in-cluster ServiceAccount or
/// KUBECONFIG), as `Client::try_default` builds it, that names itself with
/// [`user_agent`]: kube sends no User-Agent of its own, so without it the
/// operator's requests cannot be told apart in an audit log.
pub async fn kube_client(program: &str) -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let agent = axum::http::HeaderValue::from_str(&user_agent(program))
        .expect("a program name and a crate version are valid header text");
    config.headers.push((axum::http::header::USER_AGENT, agent));
    kube::Client::try_from(config)
}
