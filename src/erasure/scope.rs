//! What one erasure covers: a tenant's server, or the whole tenant, and how
//! that scope reads in SQL predicates, Redis key patterns and the salted
//! tenant hash of the suppression tables. Keys are attributed to a scope
//! by the drain's own key reading ([`crate::archive::key`]).

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::archive::key::{self, KeyOwner};

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
    pub(crate) fn kind(&self) -> &'static str {
        if self.server.is_some() {
            "server"
        } else {
            "tenant"
        }
    }

    /// Binds the scope's parameters: `$1` the tenant, `$2` the server when
    /// there is one (the condition is the catalogue's, built by
    /// `crate::erasure::surfaces`).
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

    /// Redis `SCAN MATCH` pattern that finds every verdict key of the
    /// scope, whatever the spelling of its tenant: a prefilter (one walk
    /// of the keyspace for every spelling), exact only together with
    /// [`Scope::owns_verdict_key`].
    pub fn verdict_key_glob(&self) -> String {
        let tenant = key::tenant_prefilter_glob(self.tenant);
        match &self.server {
            Some(server) => format!("verdict:{tenant}:{}*", key::escape_glob(server)),
            None => format!("verdict:{tenant}"),
        }
    }

    /// Whether `owner` (what a key names, by [`key::owner`]) is of this
    /// scope: the same tenant, and for a server scope the same slug, byte
    /// for byte, as the drain stores it.
    pub(crate) fn covers(&self, owner: &KeyOwner) -> bool {
        owner.tenant == self.tenant
            && self
                .server
                .as_deref()
                .is_none_or(|own| owner.server.as_deref() == Some(own))
    }

    /// Whether `key` is one of the scope's verdict keys, as the drain would
    /// attribute it, and its minute (epoch seconds) when readable.
    pub fn owns_verdict_key(&self, key: &[u8]) -> Option<Option<i64>> {
        let owner = key::owner(key)?;
        self.covers(&owner).then(|| key::minute_of(key))
    }

    /// Expands an alert-router key pattern such as `alert:{tenant}:{server}:*`
    /// for this scope: one glob per spelling of the tenant the drain reads
    /// (hyphenated, simple, braced; hex letters in either case). A
    /// whole-tenant erasure matches every server (`*`). Patterns without
    /// `{tenant}` would match other tenants' keys and are refused; patterns
    /// without `{server}` hold tenant-wide keys and only apply to
    /// whole-tenant erasures (empty for a server erasure).
    pub fn alert_key_globs(&self, pattern: &str) -> Result<Vec<String>, PatternError> {
        Ok(self
            .alert_key_search(pattern)?
            .map(|search| search.exact)
            .unwrap_or_default())
    }

    /// How to find the keys of an alert-router pattern in one walk of the
    /// keyspace: `SCAN MATCH` the prefilter (the `{tenant}` placeholder as
    /// [`key::tenant_prefilter_glob`], which every spelling matches), keep
    /// the keys an exact glob matches. None when the pattern does not apply
    /// to the scope (see [`Scope::alert_key_globs`]).
    pub fn alert_key_search(&self, pattern: &str) -> Result<Option<AlertKeySearch>, PatternError> {
        if !pattern.contains("{tenant}") {
            return Err(PatternError {
                pattern: pattern.to_string(),
            });
        }
        let server = match (&self.server, pattern.contains("{server}")) {
            (Some(server), true) => key::escape_glob(server),
            (Some(_), false) => return Ok(None),
            (None, _) => "*".to_string(),
        };
        let expand = |tenant: &str| {
            pattern
                .replace("{tenant}", tenant)
                .replace("{server}", &server)
        };
        Ok(Some(AlertKeySearch {
            prefilter: expand(&key::tenant_prefilter_glob(self.tenant)),
            exact: key::tenant_globs(self.tenant)
                .iter()
                .map(|tenant| expand(tenant))
                .collect(),
        }))
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

/// The keys of one alert-router pattern for a scope: those `SCAN MATCH
/// prefilter` returns that one of `exact` matches ([`key::glob_matches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertKeySearch {
    pub prefilter: String,
    pub exact: Vec<String>,
}

impl AlertKeySearch {
    pub fn selects(&self, name: &[u8]) -> bool {
        self.exact.iter().any(|glob| key::glob_matches(glob, name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "alert-router key pattern {pattern:?} has no {{tenant}} placeholder: it would match other tenants' keys"
)]
pub struct PatternError {
    pub pattern: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: Uuid = Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_2f5e7d8c9b01);

    #[test]
    fn verdict_keys_of_the_scope_in_any_spelling_and_only_those() {
        let upper = TENANT.hyphenated().to_string().to_uppercase();
        let server = Scope::server(TENANT, "my_server");
        assert_eq!(
            server.owns_verdict_key(format!("verdict:{TENANT}:my_server:us-east:60").as_bytes()),
            Some(Some(60))
        );
        assert_eq!(
            server.owns_verdict_key(format!("verdict:{upper}:my_server:us-east:60").as_bytes()),
            Some(Some(60))
        );
        assert_eq!(
            server.owns_verdict_key(format!("verdict:{TENANT}:my_server2:us-east:60").as_bytes()),
            None
        );
        assert_eq!(
            server.owns_verdict_key(format!("verdict:{TENANT}:My_server:us-east:60").as_bytes()),
            None,
            "slugs compare byte for byte, as the drain stores them"
        );
        let tenant = Scope::tenant(TENANT);
        assert_eq!(
            tenant.owns_verdict_key(format!("verdict:{TENANT}:other:us-east:x").as_bytes()),
            Some(None)
        );
        assert_eq!(
            tenant.owns_verdict_key(
                &[format!("verdict:{upper}:").as_bytes(), b"\xff:us-east:60"].concat()
            ),
            Some(Some(60))
        );
        assert!(server.verdict_key_glob().ends_with(":my_server*"));
        assert!(tenant.verdict_key_glob().starts_with("verdict:*6[fF]1[cC]"));
    }

    #[test]
    fn alert_patterns_need_the_tenant_and_follow_the_scope() {
        let [hyphenated, simple, braced] = key::tenant_globs(TENANT);
        let server = Scope::server(TENANT, "api");
        assert_eq!(
            server.alert_key_globs("alert:{tenant}:{server}:*").unwrap(),
            vec![
                format!("alert:{hyphenated}:api:*"),
                format!("alert:{simple}:api:*"),
                format!("alert:{braced}:api:*"),
            ]
        );
        assert!(
            server
                .alert_key_globs("cooldown:{tenant}")
                .unwrap()
                .is_empty(),
            "tenant-wide keys stay for a server erasure"
        );
        assert_eq!(
            Scope::tenant(TENANT)
                .alert_key_globs("alert:{tenant}:{server}:*")
                .unwrap()[0],
            format!("alert:{hyphenated}:*:*")
        );
        assert!(server.alert_key_globs("alert:*").is_err());
        assert_eq!(
            Scope::server(TENANT, "a*b?[c]")
                .alert_key_globs("a:{tenant}:{server}")
                .unwrap()[0],
            format!("a:{hyphenated}:a\\*b\\?\\[c\\]")
        );
    }

    #[test]
    fn tenant_hash_is_sha256_of_text_and_salt() {
        // printf '%s' '6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01pepper' | sha256sum
        let expected = "e3c037d5e35b1a7bc60d878a76a73eacc7a503ac9ab3da500197b210db91f176";
        assert_eq!(tenant_hash(TENANT, "pepper"), expected);
    }
}
