//! Draining a Redis shard into `probe_minute`: watermark, verdict parsing,
//! bulk writes and the derived views.
//!
//! The reconciler below checks the shard's configuration (spec rules and the
//! Redis URL Secret); the drain worker arrives with its own issue.

pub mod redis_source;
pub mod verdict;
pub mod worker;
pub mod writer;

use std::time::Duration;

use kube::ResourceExt;

use crate::api::{ArchiverShard, ArchiverShardStatus};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{Managed, Outcome, ReconcileError, begin_status, finish};

impl Managed for ArchiverShard {
    type Status = ArchiverShardStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        let (status, problems) = begin_status(self, ctx);
        if problems.is_empty() {
            // Resolving the URL proves the Secret reference works; the value
            // itself is never logged or written to status.
            let namespace = self.namespace().unwrap_or_else(|| "default".into());
            ctx.secrets
                .resolve(&namespace, &self.spec.redis.url_secret_ref)
                .await?;
        }
        let message = format!(
            "shard {} configured; Redis URL Secret resolved",
            self.spec.shard_id
        );
        Ok(finish(
            self,
            ctx,
            status,
            &problems,
            &message,
            Duration::from_secs(60),
        ))
    }
}
