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

use crate::api::common::{chrono_time, condition_types};
use crate::api::deletion_request::DeletionPhase;
use crate::api::{DeletionRequest, DeletionRequestStatus};
use crate::erasure::{
    ErasureError, ErasureRequest, ErasureSettings, RESPONSE_DAYS, Scope, request, run,
};
use crate::metrics::{DeletionLabels, ErasureStepLabels};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{
    CleanupOutcome, Event, Managed, Outcome, ReconcileError, StatusReport, begin_status, finish,
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

    /// `SPEC_TRANSITION_RULE`: only an extension may be added, once.
    const SPEC_TRANSITION_RULE: bool = true;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    fn uses_finalizer() -> bool {
        true
    }

    /// resolve the request (the response days of the policy in force) →
    /// validate → stop when completed → wait for the database and the
    /// shards' Redis → one erasure attempt → status, conditions and event.
    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        let (mut status, problems) = begin_status(self, ctx);
        let request = erasure_request(self, response_days(&ctx.policies));
        status.deadline = request.deadline();
        if !problems.is_empty() {
            status.phase.get_or_insert(DeletionPhase::Pending);
            return Ok(finish(self, ctx, status, &problems, "", WAITING_REQUEUE));
        }
        if status.phase == Some(DeletionPhase::Completed) {
            return Ok(report_completed(self, ctx, &request, status));
        }
        track_deadline(ctx, &request, &status);
        let (pool, settings) = match ready_to_erase(ctx) {
            Ok(ready) => ready,
            Err(waiting) => return Ok(report_waiting(self, ctx, status, waiting)),
        };
        let attempt = erase(ctx, pool, &request, &settings, &status).await;
        Ok(report_attempt(self, ctx, status, attempt))
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
        outcome.events.push(Event::normal(
            "DeletionWaitsForErasure",
            "Cleanup",
            format!("deleted, but the object stays until its erasure has completed: {why}"),
        ));
        Ok(CleanupOutcome::Waiting { outcome, why })
    }
}

/// Why an erasure cannot start yet.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    NoDatabase,
    /// Never erase without the Redis side: the verdict keys would survive
    /// and the receipt would claim otherwise.
    NoRedisShards,
}

impl Waiting {
    fn reason(self) -> &'static str {
        match self {
            Self::NoDatabase => "NoDatabase",
            Self::NoRedisShards => "WaitingForRedisShards",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::NoDatabase => "no database configured (--database-url): the erasure waits",
            Self::NoRedisShards => {
                "no ArchiverShard Redis is known yet: the erasure waits for the shards"
            }
        }
    }
}

/// One erasure attempt and its result.
struct Attempt {
    /// 1 for the first attempt.
    number: i32,
    started_at: DateTime<Utc>,
    result: Result<run::Completed, ErasureError>,
}

/// The time left to answer, as a metric, while the request is open.
fn track_deadline(ctx: &Context, request: &ErasureRequest, status: &DeletionRequestStatus) {
    if let Some(deadline) = status.deadline {
        ctx.metrics
            .deletion_deadline_seconds
            .get_or_create(&labels(request))
            .set((deadline - ctx.clock.now()).num_seconds());
    }
}

/// The database and every shard's Redis, or why the erasure must wait.
fn ready_to_erase(ctx: &Context) -> Result<(&sqlx::PgPool, ErasureSettings), Waiting> {
    let pool = ctx.db.as_ref().ok_or(Waiting::NoDatabase)?;
    let targets = ctx.redis_targets.targets();
    if targets.is_empty() {
        return Err(Waiting::NoRedisShards);
    }
    Ok((pool, ctx.config.erasure_settings(targets)))
}

/// Runs one erasure attempt through the domain, with its metrics and log
/// line. A failed attempt has rolled back: it is retried with backoff.
async fn erase(
    ctx: &Context,
    pool: &sqlx::PgPool,
    request: &ErasureRequest,
    settings: &ErasureSettings,
    status: &DeletionRequestStatus,
) -> Attempt {
    let number = status.attempts.unwrap_or(0) + 1;
    let started_at = status.started_at.unwrap_or_else(|| ctx.clock.now());
    let timer = Instant::now();
    let result = run::execute(
        pool,
        request,
        settings,
        ctx.clock.as_ref(),
        number,
        started_at,
    )
    .await;
    match &result {
        Ok(done) => {
            if !done.already_done {
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
        }
        Err(error) => {
            ctx.metrics
                .deletion_failures
                .get_or_create(&ErasureStepLabels {
                    step: error.step().to_string(),
                })
                .inc();
            tracing::warn!(request = %request.subject(), attempt = number, %error, "erasure failed; rolled back");
        }
    }
    Attempt {
        number,
        started_at,
        result,
    }
}

/// Terminal: nothing runs again and the status stays as written; the
/// deadline metric goes.
fn report_completed(
    object: &DeletionRequest,
    ctx: &Context,
    request: &ErasureRequest,
    status: DeletionRequestStatus,
) -> Outcome<DeletionRequestStatus> {
    ctx.metrics
        .deletion_deadline_seconds
        .remove(&labels(request));
    let mut report = StatusReport::new(object, status, ctx.clock.now());
    let message = completed_message(&report.status);
    report.event_if_changed(Event::normal("Completed", "Erase", message));
    report.into_outcome(COMPLETED_REQUEUE)
}

/// A request that cannot start yet: it stays Pending (or Failed, if an
/// earlier attempt failed) and looks again soon.
fn report_waiting(
    object: &DeletionRequest,
    ctx: &Context,
    mut status: DeletionRequestStatus,
    waiting: Waiting,
) -> Outcome<DeletionRequestStatus> {
    status.phase.get_or_insert(DeletionPhase::Pending);
    let mut report = StatusReport::new(object, status, ctx.clock.now());
    set_conditions(
        &mut report,
        false,
        waiting.reason(),
        waiting.message(),
        None,
    );
    report.event_if_changed(Event::warning(waiting.reason(), "Erase", waiting.message()));
    report.into_outcome(WAITING_REQUEUE)
}

/// Completed with the receipt, or Failed with `step: reason` and the
/// time of the retry.
fn report_attempt(
    object: &DeletionRequest,
    ctx: &Context,
    mut status: DeletionRequestStatus,
    attempt: Attempt,
) -> Outcome<DeletionRequestStatus> {
    status.started_at = Some(attempt.started_at);
    let attempts = attempt.number;
    match attempt.result {
        Ok(done) => {
            if !done.already_done {
                status.attempts = Some(attempts);
            }
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
            let mut report = StatusReport::new(object, status, ctx.clock.now());
            set_conditions(&mut report, true, "Completed", &message, Some(true));
            report.event_if_changed(Event::normal("Erased", "Erase", message));
            report.into_outcome(COMPLETED_REQUEUE)
        }
        Err(error) => {
            status.attempts = Some(attempts);
            status.phase = Some(DeletionPhase::Failed);
            status.last_failure = Some(error.to_string());
            let retry = retry_after(attempts);
            let message = format!(
                "attempt {attempts} failed at {error}; rolled back, retrying in {} s",
                retry.as_secs()
            );
            let verified = matches!(error, ErasureError::Unverified(_)).then_some(false);
            let mut report = StatusReport::new(object, status, ctx.clock.now());
            set_conditions(&mut report, false, "ErasureFailed", &message, verified);
            report.event_if_changed(Event::warning("ErasureFailed", "Erase", message));
            report.into_outcome(retry)
        }
    }
}

/// `Ready`, and `Verified` when the attempt got as far as verifying.
fn set_conditions(
    report: &mut StatusReport<'_, DeletionRequest>,
    ready: bool,
    reason: &str,
    message: &str,
    verified: Option<bool>,
) {
    report.condition(condition_types::READY, ready, reason, message);
    if let Some(verified) = verified {
        let message = match &report.status.verification {
            Some(v) if v.verified => "every surface counted zero after COMMIT".to_string(),
            _ => report.status.last_failure.clone().unwrap_or_default(),
        };
        let reason = if verified {
            "AllSurfacesEmpty"
        } else {
            "DataRemains"
        };
        report.condition(VERIFIED, verified, reason, message);
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
