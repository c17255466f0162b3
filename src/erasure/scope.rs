//! What one erasure covers: a tenant's server, or the whole tenant, and how
//! that scope reads in SQL predicates, Redis key patterns and the salted
//! tenant hash of the suppression tables.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The literal that replaces an erased tenant's hash in the suppression tables.
pub const TOMBSTONE_HASH: &str = "tombstone";

/// A tenant's server, or the whole tenant (`server` = None).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub tenant: Uuid,
    pub server: Option<String>,
}

impl Scope {
    pub fn server(tenant: Uuid, server: impl Into<String>) -> Self {
        Self {
            tenant,
            server: Some(server.into()),
        }
    }

    pub fn tenant(tenant: Uuid) -> Self {
        Self {
            tenant,
            server: None,
        }
    }

    /// `server` or `tenant`, as written in receipts.
    pub fn kind(&self) -> &'static str {
        if self.server.is_some() {
            "server"
        } else {
            "tenant"
        }
    }

    /// How many bind parameters [`Scope::predicate`] uses: `$1` is the
    /// tenant, `$2` the server when there is one. Further parameters of a
    /// query start after these.
    pub fn param_count(&self) -> usize {
        if self.server.is_some() { 2 } else { 1 }
    }

    /// The SQL condition selecting the scope's rows of a table with
    /// `tenant_id` and `server_slug` columns. Built from constants only; the
    /// values are bound with [`Scope::bind`].
    pub fn predicate(&self) -> &'static str {
        if self.server.is_some() {
            "tenant_id = $1 AND server_slug = $2"
        } else {
            "tenant_id = $1"
        }
    }

    /// Binds the scope's parameters (see [`Scope::predicate`]).
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let query = query.bind(self.tenant);
        match &self.server {
            Some(server) => query.bind(server.as_str()),
            None => query,
        }
    }

    /// `LIKE` pattern of the scope's verdict keys (as stored in
    /// `probe_minute_rejects.verdict_key`), with `_`, `%` and `\` escaped:
    /// slugs may contain `_`, which LIKE would read as any character.
    pub fn verdict_key_like(&self) -> String {
        let mut pattern = format!("verdict:{}:", self.tenant);
        if let Some(server) = &self.server {
            pattern.push_str(&escape_like(server));
            pattern.push(':');
        }
        pattern.push('%');
        pattern
    }

    /// Redis `SCAN MATCH` pattern of the scope's verdict keys
    /// (`verdict:{tenant}:{server}:{region}:{minute}`).
    pub fn verdict_key_glob(&self) -> String {
        match &self.server {
            Some(server) => format!(
                "verdict:{}:{}:*",
                escape_glob(&self.tenant.to_string()),
                escape_glob(server)
            ),
            None => format!("verdict:{}:*", escape_glob(&self.tenant.to_string())),
        }
    }

    /// Whether a key found by [`Scope::verdict_key_glob`] really is one of
    /// the scope's verdicts, and its minute (epoch seconds) when readable.
    /// The glob already guarantees the prefix; this guards against a key
    /// whose server part merely starts like ours.
    pub fn owns_verdict_key(&self, key: &str) -> Option<Option<i64>> {
        let mut parts = key.split(':');
        if parts.next() != Some("verdict") || parts.next() != Some(&*self.tenant.to_string()) {
            return None;
        }
        let server = parts.next()?;
        if self.server.as_deref().is_some_and(|own| own != server) {
            return None;
        }
        let _region = parts.next();
        let minute = parts.next().and_then(|m| m.parse::<i64>().ok());
        Some(minute)
    }

    /// Expands an alert-router key pattern such as `alert:{tenant}:{server}:*`
    /// for this scope. A whole-tenant erasure matches every server (`*`).
    /// Patterns without `{tenant}` would match other tenants' keys and are
    /// refused; patterns without `{server}` hold tenant-wide keys and only
    /// apply to whole-tenant erasures (None for a server erasure).
    pub fn alert_key_glob(&self, pattern: &str) -> Result<Option<String>, PatternError> {
        if !pattern.contains("{tenant}") {
            return Err(PatternError {
                pattern: pattern.to_string(),
            });
        }
        let tenant = escape_glob(&self.tenant.to_string());
        match (&self.server, pattern.contains("{server}")) {
            (Some(server), true) => Ok(Some(
                pattern
                    .replace("{tenant}", &tenant)
                    .replace("{server}", &escape_glob(server)),
            )),
            (Some(_), false) => Ok(None),
            (None, _) => Ok(Some(
                pattern
                    .replace("{tenant}", &tenant)
                    .replace("{server}", "*"),
            )),
        }
    }

    /// The tenant's hash in the suppression tables: lowercase hex of
    /// SHA-256(tenant_id as text || salt), as the cluster maintenance writes it.
    pub fn tenant_hash(&self, salt: &str) -> String {
        tenant_hash(self.tenant, salt)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Some(server) => write!(f, "{}/{server}", self.tenant),
            None => write!(f, "{} (every server)", self.tenant),
        }
    }
}

/// Lowercase hex of SHA-256(tenant_id as text || salt).
pub fn tenant_hash(tenant: Uuid, salt: &str) -> String {
    hex::encode(Sha256::digest(format!("{tenant}{salt}")))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "alert-router key pattern {pattern:?} has no {{tenant}} placeholder: it would match other tenants' keys"
)]
pub struct PatternError {
    pub pattern: String,
}

fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: Uuid = Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_2f5e7d8c9b01);

    #[test]
    fn verdict_patterns_select_exactly_the_scope() {
        let server = Scope::server(TENANT, "my_server");
        assert_eq!(
            server.verdict_key_glob(),
            format!("verdict:{TENANT}:my_server:*")
        );
        assert_eq!(
            server.verdict_key_like(),
            format!("verdict:{TENANT}:my\\_server:%")
        );
        assert_eq!(
            server.owns_verdict_key(&format!("verdict:{TENANT}:my_server:us-east:60")),
            Some(Some(60))
        );
        assert_eq!(
            server.owns_verdict_key(&format!("verdict:{TENANT}:my_server2:us-east:60")),
            None
        );
        let tenant = Scope::tenant(TENANT);
        assert_eq!(tenant.verdict_key_glob(), format!("verdict:{TENANT}:*"));
        assert_eq!(
            tenant.owns_verdict_key(&format!("verdict:{TENANT}:other:us-east:x")),
            Some(None)
        );
    }

    #[test]
    fn alert_patterns_need_the_tenant_and_follow_the_scope() {
        let server = Scope::server(TENANT, "api");
        assert_eq!(
            server.alert_key_glob("alert:{tenant}:{server}:*").unwrap(),
            Some(format!("alert:{TENANT}:api:*"))
        );
        assert_eq!(
            server.alert_key_glob("cooldown:{tenant}").unwrap(),
            None,
            "tenant-wide keys stay for a server erasure"
        );
        assert_eq!(
            Scope::tenant(TENANT)
                .alert_key_glob("alert:{tenant}:{server}:*")
                .unwrap(),
            Some(format!("alert:{TENANT}:*:*"))
        );
        assert!(server.alert_key_glob("alert:*").is_err());
    }

    #[test]
    fn glob_specials_in_values_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn tenant_hash_is_sha256_of_text_and_salt() {
        // printf '%s' '6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01pepper' | sha256sum
        let expected = "e3c037d5e35b1a7bc60d878a76a73eacc7a503ac9ab3da500197b210db91f176";
        assert_eq!(tenant_hash(TENANT, "pepper"), expected);
    }
}
