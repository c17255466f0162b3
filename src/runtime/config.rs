//! Configuration of an operator process: flags with environment fallbacks.
//! Secret values (database URL, suppression salt) are redacted from `Debug`
//! so they cannot reach a log line by accident.

use std::net::SocketAddr;

use clap::Args;

pub use crate::secret::SecretString;

/// Flags shared by `run` and `worker`.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Postgres URL (from a Secret in the cluster).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// What an erasure needs from the process, shared with `drill`.
    #[command(flatten)]
    pub erasure: ErasureArgs,
    /// A Redis instance that erasures also clean, besides the shard Redis
    /// instances (e.g. the alert router's own Redis): the alert-key
    /// patterns and verdict keys of the erased pair are removed there too,
    /// and verification counts them (repeatable; `redis://` or
    /// `rediss://`). Also read from every ARCHIVER_ERASURE_REDIS_URL_<N>
    /// variable (one Secret each, as the chart sets them).
    #[arg(
        long = "erasure-redis-url",
        env = "ARCHIVER_ERASURE_REDIS_URLS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = ErasureRedisUrl
    )]
    pub erasure_redis_urls: Vec<SecretString>,
    /// Address of /health, /ready and /metrics.
    #[arg(long, env = "ARCHIVER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Namespace to watch (default: all namespaces).
    #[arg(long, env = "ARCHIVER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Image of the shard worker pods (normally the operator's own image).
    #[arg(long, env = "ARCHIVER_WORKER_IMAGE", default_value = concat!("archiver-operator:", env!("CARGO_PKG_VERSION")))]
    pub worker_image: String,
    /// Secret (NAME:KEY, in each shard's namespace) with the database URL for
    /// the shard workers.
    #[arg(
        long,
        env = "ARCHIVER_WORKER_DATABASE_SECRET",
        default_value = "archiver-database:url"
    )]
    pub worker_database_secret: String,
    /// ServiceAccount of the shard worker pods (needs `get` on its ArchiverShard).
    #[arg(
        long,
        env = "ARCHIVER_WORKER_SERVICE_ACCOUNT",
        default_value = "default"
    )]
    pub worker_service_account: String,
    /// Log format: `json` (default when stdout is not a terminal) or `text`.
    #[arg(long, env = "ARCHIVER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// The flags an erasure reads, the same for the operator (`run`, `worker`)
/// and for `drill`.
#[derive(Debug, Clone, Args)]
pub struct ErasureArgs {
    /// Salt for the tenant hashes of the suppression-cluster tables (from a Secret).
    #[arg(long, env = "ARCHIVER_SUPPRESSION_SALT", hide_env_values = true)]
    pub suppression_salt: Option<SecretString>,
    /// Read-side cache-invalidation URL (http:// or https://), POSTed on
    /// every erasure (repeatable).
    #[arg(
        long = "cache-invalidate-url",
        env = "ARCHIVER_CACHE_INVALIDATE_URLS",
        value_delimiter = ',',
        value_parser = cache_invalidate_url
    )]
    pub cache_invalidate_urls: Vec<String>,
    /// Alert-router Redis key pattern erased with a server, e.g.
    /// `alert:{tenant}:{server}:*` (repeatable).
    #[arg(
        long = "alert-key-pattern",
        env = "ARCHIVER_ALERT_KEY_PATTERNS",
        value_delimiter = ','
    )]
    pub alert_key_patterns: Vec<String>,
    /// A table that holds a `tenant_id` column (or tenant hashes) but is
    /// knowingly not erased, e.g. another team's table with its own
    /// deletion process (repeatable; `name`, or `schema.name` for a table
    /// the search path does not find by its name, read as SQL reads names:
    /// unquoted parts fold to lower case, `"Quoted"` ones keep theirs; the
    /// refusal spells each table that way). Without it, an erasure refuses
    /// to run while such a table exists outside the catalogue
    /// (`src/schema/`).
    #[arg(
        long = "erasure-out-of-scope-table",
        env = "ARCHIVER_ERASURE_OUT_OF_SCOPE_TABLES",
        value_delimiter = ','
    )]
    pub erasure_out_of_scope_tables: Vec<String>,
}

/// What reconcilers may read of the process configuration.
#[derive(Debug, Clone, Default)]
pub struct OperatorConfig {
    pub suppression_salt: Option<SecretString>,
    pub cache_invalidate_urls: Vec<String>,
    pub alert_key_patterns: Vec<String>,
    /// Tables naming a tenant that erasures knowingly leave alone.
    pub erasure_out_of_scope_tables: Vec<String>,
    /// Redis instances erasures clean besides the shards'.
    pub erasure_redis_urls: Vec<SecretString>,
}

impl From<&OperatorArgs> for OperatorConfig {
    fn from(args: &OperatorArgs) -> Self {
        Self {
            erasure_redis_urls: args
                .erasure_redis_urls
                .iter()
                .cloned()
                .chain(numbered_erasure_redis_urls())
                .collect(),
            ..Self::from(&args.erasure)
        }
    }
}

/// Without the erasure-only Redis instances, which only the operator has.
impl From<&ErasureArgs> for OperatorConfig {
    fn from(args: &ErasureArgs) -> Self {
        Self {
            suppression_salt: args.suppression_salt.clone(),
            cache_invalidate_urls: args.cache_invalidate_urls.clone(),
            alert_key_patterns: args.alert_key_patterns.clone(),
            erasure_out_of_scope_tables: args.erasure_out_of_scope_tables.clone(),
            erasure_redis_urls: Vec::new(),
        }
    }
}

/// The URLs of every `ARCHIVER_ERASURE_REDIS_URL_<N>` variable, by `N`:
/// one Secret per variable, which a Deployment cannot join into one list.
fn numbered_erasure_redis_urls() -> Vec<SecretString> {
    let mut numbered: Vec<(u32, SecretString)> = std::env::vars()
        .filter_map(|(name, value)| {
            let n = name
                .strip_prefix("ARCHIVER_ERASURE_REDIS_URL_")?
                .parse()
                .ok()?;
            Some((n, SecretString::new(value)))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    numbered.into_iter().map(|(_, url)| url).collect()
}

/// Every `ARCHIVER_ERASURE_REDIS_URL_*` variable, checked at startup as the
/// flag's values are: a suffix that is not a number (`..._ALERTS`) would
/// otherwise be ignored, and the erasures would report "verified" without
/// ever touching that Redis; a value that is not a Redis URL would fail
/// only at the first erasure. Errors name the variable, never its value.
pub fn check_numbered_erasure_redis_urls() -> Result<(), String> {
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(suffix) = name.strip_prefix("ARCHIVER_ERASURE_REDIS_URL_") else {
            continue;
        };
        if suffix.parse::<u32>().is_err() {
            return Err(format!(
                "{name}: the variables of erasure-only Redis URLs are ARCHIVER_ERASURE_REDIS_URL_<N>, N a number"
            ));
        }
        let url = value.to_str().unwrap_or_default();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(format!(
                "{name} does not start with redis:// or rediss:// (not shown: it may hold a password)"
            ));
        }
    }
    Ok(())
}

/// An erasure-only Redis URL is checked at startup, without ever printing
/// it: a parser function's error would have clap print the rejected value
/// (`invalid value 'redis//:password@…'`) into the operator's log.
#[derive(Debug, Clone, Copy)]
struct ErasureRedisUrl;

impl clap::builder::TypedValueParser for ErasureRedisUrl {
    type Value = SecretString;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SecretString, clap::Error> {
        match value.to_str() {
            Some(text) if text.starts_with("redis://") || text.starts_with("rediss://") => {
                Ok(SecretString::new(text))
            }
            _ => {
                let name = arg.map_or("--erasure-redis-url".to_string(), |arg| {
                    format!("--{}", arg.get_long().unwrap_or("erasure-redis-url"))
                });
                Err(clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!(
                        "a value of {name} (or ARCHIVER_ERASURE_REDIS_URLS) does not start with \
                         redis:// or rediss:// (not shown: it may hold a password; a comma \
                         separates URLs, so a comma in a password must be written %2C)\n"
                    ),
                )
                .with_cmd(cmd))
            }
        }
    }
}

/// A cache-invalidation URL is checked at startup: a typo must not wait for
/// the first erasure (which would fail and retry) to show.
fn cache_invalidate_url(text: &str) -> Result<String, String> {
    let uri: axum::http::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(text.to_string()),
        (Some("http" | "https"), None) => Err("the URL has no host".into()),
        _ => Err("only http:// and https:// URLs are supported".into()),
    }
}

impl OperatorConfig {
    /// What an erasure takes from this process's configuration, with the
    /// shard Redis targets it must also reach.
    /// The erasure-only Redis instances are added to `redis`, labelled
    /// `erasure-redis/<N>` (the URLs never reach a status or receipt).
    pub fn erasure_settings(
        &self,
        mut redis: Vec<crate::erasure::redis_targets::RedisTarget>,
    ) -> crate::erasure::ErasureSettings {
        redis.extend(self.erasure_redis_urls.iter().enumerate().map(|(n, url)| {
            crate::erasure::redis_targets::RedisTarget {
                label: format!("erasure-redis/{n}"),
                url: url.clone(),
            }
        }));
        crate::erasure::ErasureSettings::new(
            self.suppression_salt.clone(),
            self.cache_invalidate_urls.clone(),
            self.alert_key_patterns.clone(),
            redis,
        )
        .with_out_of_scope_tables(self.erasure_out_of_scope_tables.clone())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_invalidate_urls_are_checked_at_startup() {
        assert!(cache_invalidate_url("http://cache.read-side:8080/invalidate").is_ok());
        assert!(cache_invalidate_url("https://cache.example.com/invalidate").is_ok());
        let ftp = cache_invalidate_url("ftp://cache/invalidate").unwrap_err();
        assert!(ftp.contains("http://"), "{ftp}");
        assert!(cache_invalidate_url("cache.read-side/invalidate").is_err());
        assert!(cache_invalidate_url("http:///invalidate").is_err());
    }

    use super::*;

    #[test]
    fn secrets_never_print() {
        let config = OperatorConfig {
            suppression_salt: Some(SecretString::new("pepper-123")),
            ..Default::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("pepper-123"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
