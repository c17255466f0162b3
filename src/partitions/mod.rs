//! Monthly partitions of `probe_minute`: calendar math, creation ahead of
//! need, and drops behind retention with guards.
//!
//! The reconciler below validates the schedule; creation and drops arrive
//! with their own issue.

use std::time::Duration;

use crate::api::{PartitionSchedule, PartitionScheduleStatus};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{Managed, Outcome, ReconcileError, begin_status, finish};

impl Managed for PartitionSchedule {
    type Status = PartitionScheduleStatus;

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
            "schedule valid",
            Duration::from_secs(300),
        ))
    }
}
