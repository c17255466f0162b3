//! An erasure request as the domain sees it: who asked, for what, and
//! which incarnation of the DeletionRequest object it is. Built from the
//! custom resource by the reconciler; nothing here knows Kubernetes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::scope::Scope;
use crate::api::deletion_request::DeletionReason;

/// GDPR Art. 12(3): answer within one month; we count 30 days.
pub const RESPONSE_DAYS: i64 = 30;

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
}

impl ErasureRequest {
    /// `DeletionRequest/namespace/name`: the audit log's subject.
    pub fn subject(&self) -> String {
        subject(&self.namespace, &self.name)
    }

    /// When the answer is due: received + 30 days.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.received_at
            .map(|at| at + chrono::Duration::days(RESPONSE_DAYS))
    }
}

/// The audit-log subject of a DeletionRequest.
pub fn subject(namespace: &str, name: &str) -> String {
    format!("DeletionRequest/{namespace}/{name}")
}
