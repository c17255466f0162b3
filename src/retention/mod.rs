//! Retention by tier: tier semantics, enforcement, the shrink guard,
//! privacy-policy rendering and `plan`.
//!
//! The reconciler below validates the policy; enforcement and rendering
//! arrive with their own issue. Nothing is deleted by this module yet.

use std::time::Duration;

use crate::api::{RetentionPolicy, RetentionPolicyStatus};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{Managed, Outcome, ReconcileError, begin_status, finish};

impl Managed for RetentionPolicy {
    type Status = RetentionPolicyStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        let (status, problems) = begin_status(self, ctx);
        Ok(finish(
            self,
            ctx,
            status,
            &problems,
            "tier table valid",
            Duration::from_secs(300),
        ))
    }
}
