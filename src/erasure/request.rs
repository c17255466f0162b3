//! An erasure request as the domain sees it: who asked, for what, and
//! which incarnation of the DeletionRequest object it is. Built from the
//! custom resource by the reconciler; nothing here knows Kubernetes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::scope::Scope;
use crate::api::deletion_request::DeletionReason;

/// GDPR Art. 12(3): answer within one month; we count 30 days when no
/// RetentionPolicy in force says otherwise (`article17ResponseDays`, which
/// also sets the privacy text, so the promise and the deadline agree).
pub const RESPONSE_DAYS: i64 = 30;

/// An Art. 12(3) extension of the deadline, as the domain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub days: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErasureRequest {
    pub namespace: String,
    pub name: String,
    /// Distinguishes a re-created object of the same name; None when the
    /// source has no uid.
    pub uid: Option<String>,
    pub scope: Scope,
    pub reason: DeletionReason,
    pub requester: Uuid,
    /// `spec.receivedAt`, else the object's creation.
    pub received_at: Option<DateTime<Utc>>,
    /// Days to answer in: the policy's `article17ResponseDays`, else
    /// [`RESPONSE_DAYS`].
    pub response_days: i64,
    /// `spec.extension`, when the deadline was extended.
    pub extension: Option<Extension>,
}

impl ErasureRequest {
    /// `DeletionRequest/namespace/name`: the audit log's subject.
    pub(crate) fn subject(&self) -> String {
        subject(&self.namespace, &self.name)
    }

    /// When the answer is due: received + the response days + the
    /// extension's days.
    pub(crate) fn deadline(&self) -> Option<DateTime<Utc>> {
        let extension_days = self.extension.as_ref().map_or(0, |e| e.days);
        self.received_at
            .map(|at| at + chrono::Duration::days(self.response_days + extension_days))
    }
}

/// The audit-log subject of a DeletionRequest.
pub(crate) fn subject(namespace: &str, name: &str) -> String {
    format!("DeletionRequest/{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn request(response_days: i64, extension: Option<Extension>) -> ErasureRequest {
        ErasureRequest {
            namespace: "ns".into(),
            name: "dr".into(),
            uid: None,
            scope: Scope::tenant(Uuid::nil()),
            reason: DeletionReason::GdprArt17,
            requester: Uuid::nil(),
            received_at: Some(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()),
            response_days,
            extension,
        }
    }

    #[test]
    fn the_deadline_counts_the_policy_days_and_the_extension() {
        let at = |d| {
            Some(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap() + chrono::Duration::days(d))
        };
        assert_eq!(request(RESPONSE_DAYS, None).deadline(), at(30));
        assert_eq!(request(21, None).deadline(), at(21));
        let extension = Extension {
            days: 60,
            reason: "complex request".into(),
        };
        assert_eq!(request(30, Some(extension)).deadline(), at(90));
    }
}
