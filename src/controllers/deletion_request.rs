//! The `DeletionRequest` controller: from the object to one erasure attempt
//! of the domain (`crate::erasure`), and from the attempt to status,
//! conditions, events and metrics.
//!
//! Lifecycle: Pending (waiting for the database or the shard Redis list)
//! -> Completed, or Failed with `step: reason` and a retry with backoff
//! until it completes. The whole attempt runs inside one reconcile (a few
//! seconds even for a year of minutes), so Running is never written as a
//! resting state. Completed is terminal: re-applying the object changes
//! nothing, and the erasure is never run twice for the same object (the
//! receipt is looked up by namespace, name and uid, also when the status
//! was lost).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use crate::api::common::{ConditionUpdate, chrono_time, condition_types, set_condition};
use crate::api::deletion_request::DeletionPhase;
use crate::api::{DeletionRequest, DeletionRequestStatus};
use crate::erasure::{
    ErasureError, ErasureRequest, ErasureSettings, RESPONSE_DAYS, Scope, request, run,
};
use crate::metrics::{DeletionLabels, ErasureStepLabels};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{
    CleanupOutcome, Event, EventType, Managed, Outcome, ReconcileError, begin_status, finish,
    spec_problems,
};

/// Condition: the recount after COMMIT found every surface empty.
pub const VERIFIED: &str = "Verified";
/// A completed request is only looked at again this rarely.
const COMPLETED_REQUEUE: Duration = Duration::from_secs(3600);
/// How often a request waiting for the database or the shards looks again.
const WAITING_REQUEUE: Duration = Duration::from_secs(15);

/// When the request was received: `spec.receivedAt`, else the object's creation.
pub(crate) fn received_at(request: &DeletionRequest) -> Option<DateTime<Utc>> {
    request.spec.received_at.or_else(|| {
        request
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(chrono_time)
    })
}

/// Days to answer in: `article17ResponseDays` of the RetentionPolicy in
/// force (the number the privacy text promises), else 30. With no policy
/// or a conflict the legal default applies; it never waits longer.
pub(crate) fn response_days(policies: &crate::retention::directory::PolicyDirectory) -> i64 {
    match policies.in_force() {
        crate::retention::directory::InForce::One { spec, .. } => {
            i64::from(spec.privacy_policy.article17_response_days)
        }
        _ => RESPONSE_DAYS,
    }
}

/// The domain's view of the object; `response_days` from [`response_days`].
pub(crate) fn erasure_request(object: &DeletionRequest, response_days: i64) -> ErasureRequest {
    ErasureRequest {
        namespace: object.namespace().unwrap_or_else(|| "default".into()),
        name: object.name_any(),
        uid: object.metadata.uid.clone(),
        scope: Scope {
            tenant: object.spec.tenant_id,
            server: object.spec.server_slug.clone(),
        },
        reason: object.spec.reason,
        requester: object.spec.requester,
        received_at: received_at(object),
        response_days,
        extension: object.spec.extension.as_ref().map(|e| request::Extension {
            days: i64::from(e.days),
            reason: e.reason.clone(),
        }),
    }
}

/// Delay before retrying after `attempts` failed runs: 15 s, doubling, at
/// most 15 minutes (a failed erasure is usually a dependency that is down).
pub(crate) fn retry_after(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(6);
    Duration::from_secs((15u64 << exponent).min(900))
}

fn labels(request: &ErasureRequest) -> DeletionLabels {
    DeletionLabels {
        namespace: request.namespace.clone(),
        name: request.name.clone(),
    }
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
        let request = erasure_request(self, response_days(&ctx.policies));
        status.deadline = request.deadline();
        if !problems.is_empty() {
            status.phase.get_or_insert(DeletionPhase::Pending);
            return Ok(finish(self, ctx, status, &problems, "", WAITING_REQUEUE));
        }
        if status.phase == Some(DeletionPhase::Completed) {
            ctx.metrics
                .deletion_deadline_seconds
                .remove(&labels(&request));
            // Terminal: nothing runs again, the status stays as written.
            let event = event(
                EventType::Normal,
                "Completed",
                "Erase",
                completed_message(&status),
            );
            return Ok(outcome(self, status, event, COMPLETED_REQUEUE));
        }
        if let Some(deadline) = status.deadline {
            ctx.metrics
                .deletion_deadline_seconds
                .get_or_create(&labels(&request))
                .set((deadline - ctx.clock.now()).num_seconds());
        }
        let Some(pool) = ctx.db.as_ref() else {
            return Ok(waiting(
                self,
                ctx,
                status,
                "NoDatabase",
                "no database configured (--database-url): the erasure waits",
            ));
        };
        let targets = ctx.redis_targets.targets();
        if targets.is_empty() {
            // Never erase without the Redis side: the verdict keys would
            // survive and the receipt would claim otherwise.
            return Ok(waiting(
                self,
                ctx,
                status,
                "WaitingForRedisShards",
                "no ArchiverShard Redis is known yet: the erasure waits for the shards",
            ));
        }
        let settings = ctx.config.erasure_settings(targets);
        Ok(attempt(self, ctx, pool, &request, &settings, status).await)
    }

    /// Deleting the object never undoes an erasure, and does not cancel
    /// one: until it has completed, the finalizer stays. Once deletion has
    /// started only this runs, so it makes the attempt itself; the receipt
    /// still reaches the audit log (`archiver-operator receipt` reads it there).
    async fn cleanup(
        &self,
        ctx: &Context,
    ) -> Result<CleanupOutcome<DeletionRequestStatus>, ReconcileError> {
        if self.status.as_ref().and_then(|s| s.phase) == Some(DeletionPhase::Completed) {
            return Ok(CleanupOutcome::Finished);
        }
        if !spec_problems(self).is_empty() {
            // An invalid request never ran and never can: nothing to wait for.
            tracing::warn!(request = %self.name_any(), "invalid DeletionRequest deleted before it ran");
            return Ok(CleanupOutcome::Finished);
        }
        let mut outcome = self.reconcile(ctx).await?;
        if outcome.status.phase == Some(DeletionPhase::Completed) {
            tracing::info!(
                request = %self.name_any(),
                receipt_sha256 = outcome.status.receipt_sha256.as_deref().unwrap_or(""),
                "erasure completed during deletion; the receipt is in the audit log"
            );
            return Ok(CleanupOutcome::Finished);
        }
        let why = outcome
            .status
            .last_failure
            .clone()
            .or_else(|| ready_message(&outcome.status))
            .unwrap_or_else(|| "not started".into());
        outcome.events.push(event(
            EventType::Normal,
            "DeletionWaitsForErasure",
            "Cleanup",
            format!("deleted, but the object stays until its erasure has completed: {why}"),
        ));
        Ok(CleanupOutcome::Waiting { outcome, why })
    }
}

/// One attempt, turned into the status.
async fn attempt(
    object: &DeletionRequest,
    ctx: &Context,
    pool: &sqlx::PgPool,
    request: &ErasureRequest,
    settings: &ErasureSettings,
    mut status: DeletionRequestStatus,
) -> Outcome<DeletionRequestStatus> {
    let attempts = status.attempts.unwrap_or(0) + 1;
    let started_at = *status.started_at.get_or_insert(ctx.clock.now());
    let timer = Instant::now();
    let result = run::execute(
        pool,
        request,
        settings,
        ctx.clock.as_ref(),
        attempts,
        started_at,
    )
    .await;
    match result {
        Ok(done) => {
            if !done.already_done {
                status.attempts = Some(attempts);
                ctx.metrics
                    .deletion_duration
                    .observe(timer.elapsed().as_secs_f64());
            }
            ctx.metrics
                .deletion_deadline_seconds
                .remove(&labels(request));
            tracing::info!(
                request = %request.subject(),
                tombstone = done.tombstone_id,
                receipt_sha256 = %done.receipt.sha256,
                phases = ?done.phases,
                "erasure completed"
            );
            status.phase = Some(DeletionPhase::Completed);
            status.last_failure = None;
            status.tombstone_id = Some(done.tombstone_id);
            status.removed = done.removed;
            status.verification = Some(done.verification);
            status.cache_invalidations = done.invalidations;
            status.receipt = Some(done.receipt.canonical);
            status.receipt_sha256 = Some(done.receipt.sha256);
            status.completed_at = Some(done.completed_at);
            let message = completed_message(&status);
            set_conditions(
                object,
                ctx,
                &mut status,
                true,
                "Completed",
                &message,
                Some(true),
            );
            let event = event(EventType::Normal, "Erased", "Erase", message);
            outcome(object, status, event, COMPLETED_REQUEUE)
        }
        Err(error) => {
            status.attempts = Some(attempts);
            status.phase = Some(DeletionPhase::Failed);
            status.last_failure = Some(error.to_string());
            ctx.metrics
                .deletion_failures
                .get_or_create(&ErasureStepLabels {
                    step: error.step().to_string(),
                })
                .inc();
            let retry = retry_after(attempts);
            tracing::warn!(request = %request.subject(), attempt = attempts, %error, "erasure failed; rolled back");
            let message = format!(
                "attempt {attempts} failed at {error}; rolled back, retrying in {} s",
                retry.as_secs()
            );
            let verified = matches!(error, ErasureError::Unverified(_)).then_some(false);
            set_conditions(
                object,
                ctx,
                &mut status,
                false,
                "ErasureFailed",
                &message,
                verified,
            );
            let event = event(EventType::Warning, "ErasureFailed", "Erase", message);
            outcome(object, status, event, retry)
        }
    }
}

/// A request that cannot start yet: it stays Pending (or Failed, if an
/// earlier attempt failed) and looks again soon.
fn waiting(
    object: &DeletionRequest,
    ctx: &Context,
    mut status: DeletionRequestStatus,
    reason: &str,
    message: &str,
) -> Outcome<DeletionRequestStatus> {
    status.phase.get_or_insert(DeletionPhase::Pending);
    set_conditions(object, ctx, &mut status, false, reason, message, None);
    let event = event(EventType::Warning, reason, "Erase", message.to_string());
    outcome(object, status, event, WAITING_REQUEUE)
}

fn set_conditions(
    object: &DeletionRequest,
    ctx: &Context,
    status: &mut DeletionRequestStatus,
    ready: bool,
    reason: &str,
    message: &str,
    verified: Option<bool>,
) {
    let generation = object.metadata.generation;
    let now = ctx.clock.now();
    set_condition(
        &mut status.conditions,
        ConditionUpdate {
            type_: condition_types::READY,
            status: ready,
            reason,
            message: message.to_string(),
        },
        generation,
        now,
    );
    if let Some(verified) = verified {
        let message = match &status.verification {
            Some(v) if v.verified => "every surface counted zero after COMMIT".to_string(),
            _ => status.last_failure.clone().unwrap_or_default(),
        };
        set_condition(
            &mut status.conditions,
            ConditionUpdate {
                type_: VERIFIED,
                status: verified,
                reason: if verified {
                    "AllSurfacesEmpty"
                } else {
                    "DataRemains"
                },
                message,
            },
            generation,
            now,
        );
    }
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        action: action.into(),
        note,
    }
}

/// The outcome, with the event only when the status changed (a request
/// waiting for its shards does not fill the event log every 15 s).
fn outcome(
    object: &DeletionRequest,
    status: DeletionRequestStatus,
    event: Event,
    requeue_after: Duration,
) -> Outcome<DeletionRequestStatus> {
    let changed = object.status.as_ref() != Some(&status);
    Outcome {
        status,
        events: if changed { vec![event] } else { Vec::new() },
        requeue_after,
    }
}

fn completed_message(status: &DeletionRequestStatus) -> String {
    let removed: i64 = status.removed.values().sum();
    format!(
        "erased: {removed} rows/keys removed, tombstone #{}, receipt sha256 {}",
        status.tombstone_id.unwrap_or_default(),
        status.receipt_sha256.as_deref().unwrap_or("-")
    )
}

fn ready_message(status: &DeletionRequestStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == condition_types::READY)
        .map(|c| format!("{}: {}", c.reason, c.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_15_seconds_to_15_minutes() {
        assert_eq!(retry_after(1), Duration::from_secs(15));
        assert_eq!(retry_after(2), Duration::from_secs(30));
        assert_eq!(retry_after(4), Duration::from_secs(120));
        assert_eq!(retry_after(7), Duration::from_secs(900));
        assert_eq!(retry_after(100), Duration::from_secs(900));
        assert_eq!(retry_after(0), Duration::from_secs(15));
    }
}
