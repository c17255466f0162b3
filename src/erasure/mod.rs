//! GDPR erasure: the deletion transaction, the Redis fan-out, receipts,
//! tombstone replay and the drill.
//!
//! The reconciler below accepts a request (Pending, with its 30-day
//! deadline) and holds the finalizer; the erasure itself arrives with its
//! own issue. Nothing is erased by this module yet.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::common::chrono_time;
use crate::api::deletion_request::DeletionPhase;
use crate::api::{DeletionRequest, DeletionRequestStatus};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{Managed, Outcome, ReconcileError, begin_status, finish};

/// GDPR Art. 12(3): answer within one month; we count 30 days.
pub const RESPONSE_DAYS: i64 = 30;

/// When the request was received: `spec.receivedAt`, else the object's creation.
pub fn received_at(request: &DeletionRequest) -> Option<DateTime<Utc>> {
    request.spec.received_at.or_else(|| {
        request
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(chrono_time)
    })
}

impl Managed for DeletionRequest {
    type Status = DeletionRequestStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    fn uses_finalizer() -> bool {
        true
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        let (mut status, problems) = begin_status(self, ctx);
        if status.phase.is_none() {
            status.phase = Some(DeletionPhase::Pending);
        }
        status.deadline = received_at(self).map(|at| at + chrono::Duration::days(RESPONSE_DAYS));
        Ok(finish(
            self,
            ctx,
            status,
            &problems,
            "request accepted",
            Duration::from_secs(60),
        ))
    }
}
