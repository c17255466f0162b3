//! `DeletionRequest`: a GDPR Art. 17 erasure of one server (or a whole tenant).

// Each `printcolumn(...)` of kube's derive repeats the same keys by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An erasure of a tenant's server, or of the whole tenant, across every
/// table, derived view and Redis key, with a tombstone and a verifiable
/// receipt. The spec cannot be changed once applied.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "archiver.uptime.dev",
    version = "v1alpha1",
    kind = "DeletionRequest",
    namespaced,
    status = "DeletionRequestStatus",
    shortname = "dr",
    category = "archiver",
    doc = "A GDPR erasure of a tenant's server (or whole tenant), run in one transaction across every surface, with a tombstone and a verifiable receipt.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId"),
    printcolumn(name = "Server", type_ = "string", json_path = ".spec.serverSlug"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.reason"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Deadline", type_ = "string", json_path = ".status.deadline"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(SPEC_TRANSITION_RULE).message("spec is immutable (only an extension may be added, once): create a new DeletionRequest instead"))]
pub struct DeletionRequestSpec {
    /// Tenant whose data is erased.
    pub tenant_id: Uuid,
    /// Server to erase, exactly as it appears in its verdict keys (case
    /// matters); omit to erase every server of the tenant. Any text of up
    /// to 512 characters without ':' or control characters: every server
    /// the drain stores can be named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = kube::core::Rule::new(crate::archive::key::SERVER_SLUG_RULE).message("must be a server slug as its verdict keys spell it: no ':' and no control characters"))]
    pub server_slug: Option<String>,
    /// Why the data is erased.
    pub reason: DeletionReason,
    /// Person accountable for the request.
    pub requester: Uuid,
    /// When the request was received; the 30-day deadline counts from here.
    /// Defaults to the object's creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// GDPR Art. 12(3): the response deadline may be extended once, by at
    /// most 60 days, with a reason given to the data subject. May be set at
    /// creation or added later; once set it cannot change or be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<DeadlineExtension>,
}

/// Every field of the spec is immutable, except that `extension` may be
/// added once. Optional fields are compared with `has()` on both sides, so
/// adding or removing one is a change too.
pub const SPEC_TRANSITION_RULE: &str = "self.tenantId == oldSelf.tenantId \
&& self.reason == oldSelf.reason \
&& self.requester == oldSelf.requester \
&& has(self.serverSlug) == has(oldSelf.serverSlug) \
&& (!has(self.serverSlug) || self.serverSlug == oldSelf.serverSlug) \
&& has(self.receivedAt) == has(oldSelf.receivedAt) \
&& (!has(self.receivedAt) || self.receivedAt == oldSelf.receivedAt) \
&& (!has(oldSelf.extension) || (has(self.extension) && self.extension == oldSelf.extension))";

/// Most days Art. 12(3) allows the deadline to be extended by ("two
/// further months"; counted as 60 days, as the 30-day base is).
pub const MAX_EXTENSION_DAYS: u32 = 60;

/// An extension of the response deadline (GDPR Art. 12(3)).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadlineExtension {
    /// Days added to the deadline, 1 to 60.
    #[schemars(range(min = 1, max = 60))]
    pub days: u32,
    /// Why the request needs longer (told to the data subject; recorded in
    /// the receipt). No personal data here.
    #[schemars(length(min = 3, max = 500))]
    pub reason: String,
}

/// Reason recorded on the tombstone.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeletionReason {
    /// GDPR Article 17 request from the data subject.
    GdprArt17,
    /// The tenant left; their data goes.
    TenantChurned,
    /// Operator clean-up.
    ManualCleanup,
    /// The quarterly deletion drill on a synthetic tenant.
    Drill,
}

impl DeletionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GdprArt17 => "gdpr-art17",
            Self::TenantChurned => "tenant-churned",
            Self::ManualCleanup => "manual-cleanup",
            Self::Drill => "drill",
        }
    }
}

/// Lifecycle phase of an erasure.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPhase {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
}

/// Observed state of a DeletionRequest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionRequestStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DeletionPhase>,
    /// receivedAt + the policy's article17ResponseDays (30 without a
    /// policy in force) + the extension's days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Runs started so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Step and reason of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Id of the tombstone row in data_deletion_log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone_id: Option<i64>,
    /// Rows or keys removed per surface.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removed: BTreeMap<String, i64>,
    /// Recount after commit: every surface must be zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Read-side caches told to forget the pair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_invalidations: Vec<CacheInvalidation>,
    /// Canonical JSON receipt, also stored in operator_audit_log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    /// SHA-256 (hex) of `receipt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// Result of recounting every surface after commit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// True when every surface counted zero.
    pub verified: bool,
    /// Rows or keys still found, per surface.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remaining: BTreeMap<String, i64>,
    pub checked_at: DateTime<Utc>,
}

/// One cache-invalidation call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheInvalidation {
    pub url: String,
    /// HTTP status returned.
    pub status: u16,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use kube::core::cel::validate_cel_update;

    use super::*;

    fn object(spec: DeletionRequestSpec) -> DeletionRequest {
        DeletionRequest::new("erase", spec)
    }

    fn spec() -> DeletionRequestSpec {
        DeletionRequestSpec {
            tenant_id: Uuid::from_u128(1),
            server_slug: Some("api".into()),
            reason: DeletionReason::GdprArt17,
            requester: Uuid::from_u128(2),
            received_at: Some(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()),
            extension: None,
        }
    }

    fn extension(days: u32) -> Option<DeadlineExtension> {
        Some(DeadlineExtension {
            days,
            reason: "the request covers many servers".into(),
        })
    }

    /// The transition rule, run offline with the old object as the API
    /// server runs it on update.
    fn update_allowed(old: DeletionRequestSpec, new: DeletionRequestSpec) -> bool {
        validate_cel_update(&object(new), &object(old)).is_ok()
    }

    #[test]
    fn an_extension_may_be_added_once_and_nothing_else_may_change() {
        let extended = DeletionRequestSpec {
            extension: extension(30),
            ..spec()
        };
        assert!(update_allowed(spec(), spec()), "an unchanged spec");
        assert!(update_allowed(spec(), extended.clone()), "adding it");
        assert!(update_allowed(extended.clone(), extended.clone()));
        assert!(!update_allowed(extended.clone(), spec()), "removing it");
        let longer = DeletionRequestSpec {
            extension: extension(60),
            ..spec()
        };
        assert!(!update_allowed(extended, longer), "changing it");
        let other_server = DeletionRequestSpec {
            server_slug: Some("web".into()),
            ..spec()
        };
        assert!(!update_allowed(spec(), other_server));
        let whole_tenant = DeletionRequestSpec {
            server_slug: None,
            ..spec()
        };
        assert!(
            !update_allowed(spec(), whole_tenant.clone()),
            "dropping the slug"
        );
        assert!(!update_allowed(whole_tenant, spec()), "adding a slug");
        let later = DeletionRequestSpec {
            received_at: None,
            ..spec()
        };
        assert!(!update_allowed(spec(), later));
        let other_tenant = DeletionRequestSpec {
            tenant_id: Uuid::from_u128(9),
            ..spec()
        };
        assert!(!update_allowed(spec(), other_tenant));
        let other_reason = DeletionRequestSpec {
            reason: DeletionReason::Drill,
            ..spec()
        };
        assert!(!update_allowed(spec(), other_reason));
    }
}
