//! Draining a Redis shard into `probe_minute`: watermark, verdict parsing,
//! bulk writes and the derived views.
//!
//! The reconciler below checks the shard's configuration (spec rules and the
//! Redis URL Secret), runs or deploys the shard's drain worker
//! ([`worker`]) and fills the status from the watermark row ([`health`]).

pub mod brin;
pub mod health;
pub mod key;
pub mod redis_source;
pub mod stray;
pub mod verdict;
pub mod views;
pub mod worker;
pub mod writer;

use std::time::Duration;

use kube::ResourceExt;

use crate::api::common::{ConditionUpdate, condition_types, set_condition};
use crate::api::{ArchiverShard, ArchiverShardStatus};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{
    Event, EventType, Managed, Outcome, ReconcileError, begin_status, finish,
};
use crate::runtime::workers::{WorkerInputs, WorkerState, worker_deployment_name};

/// How often the shard's status is refreshed from its watermark.
const STATUS_REFRESH: Duration = Duration::from_secs(30);

impl Managed for ArchiverShard {
    type Status = ArchiverShardStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        let (mut status, problems) = begin_status(self, ctx);
        if !problems.is_empty() {
            return Ok(finish(self, ctx, status, &problems, "", STATUS_REFRESH));
        }
        let namespace = self.namespace().unwrap_or_else(|| "default".into());
        // The leader's lag of this shard, from its watermark row (same label
        // as the worker's metrics).
        ctx.metrics.observe_shard(
            self.spec.shard_id,
            &format!("{namespace}/{}", self.name_any()),
            self.spec.lag_slo_seconds,
        );
        // The URL is only handed to the worker; it never reaches a log,
        // an event or the status.
        let redis_url = ctx
            .secrets
            .resolve(&namespace, &self.spec.redis.url_secret_ref)
            .await?;
        // Erasures clean every shard's Redis: tell them where this one is.
        ctx.redis_targets.publish_shard(
            format!("{namespace}/{}", self.name_any()),
            redis_url.clone(),
        );
        let Some(pool) = ctx.db.as_ref() else {
            return Err(ReconcileError::NoDatabase);
        };
        let state = ctx
            .workers
            .ensure(
                self,
                WorkerInputs {
                    redis_url: &redis_url,
                    pool: Some(pool),
                    clock: &ctx.clock,
                    metrics: &ctx.metrics,
                },
            )
            .await?;
        if let WorkerState::Deployment(name) = &state {
            status.worker_deployment = Some(name.clone());
        }
        let health = health::read(pool, self.spec.shard_id)
            .await
            .map_err(|source| ReconcileError::Database {
                context: "reading the shard's watermark".into(),
                source,
            })?;
        let now = ctx.clock.now();
        let message = match &health {
            Some(health) => {
                health::apply(
                    &mut status,
                    health,
                    self.spec.lag_slo_seconds,
                    self.metadata.generation,
                    now,
                );
                match (&health.waiting_reason, &health.last_error) {
                    (Some(_), Some(error)) => format!("waiting: {error}"),
                    _ => format!(
                        "archived through {}; lag {} s",
                        health.last_minute,
                        health.lag_seconds(now)
                    ),
                }
            }
            None => "waiting for the first tick".to_string(),
        };
        let ticking = !matches!(state, WorkerState::Suspended);
        let message = match state {
            WorkerState::Suspended => "suspended: no worker runs".to_string(),
            WorkerState::Deployment(_) => format!(
                "worker Deployment {}; {message}",
                worker_deployment_name(self)
            ),
            _ => message,
        };
        let mut outcome = finish(self, ctx, status, &problems, &message, STATUS_REFRESH);
        if let Some(health) = &health {
            self.report_drain_state(&mut outcome, health, ticking, now);
        }
        if health.is_none() {
            set_condition(
                &mut outcome.status.conditions,
                ConditionUpdate {
                    type_: health::conditions::LAG_WITHIN_SLO,
                    status: false,
                    reason: "NoWatermarkYet",
                    message: "no tick has run yet".into(),
                },
                self.metadata.generation,
                now,
            );
        }
        Ok(outcome)
    }
}

impl ArchiverShard {
    /// `Ready=False` with the reason whenever the shard cannot make progress
    /// (`finish` only knows the spec is valid), and a Warning event for each
    /// new minute archived without its unsealed verdicts and each new
    /// stray-key count.
    fn report_drain_state(
        &self,
        outcome: &mut Outcome<ArchiverShardStatus>,
        health: &health::ShardHealth,
        ticking: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let timeout = self.spec.unsealed_timeout_seconds;
        let warning = |reason: &str, action: &str, note: String| Event {
            type_: EventType::Warning,
            reason: reason.into(),
            action: action.into(),
            note,
        };
        if let Some((reason, message)) = health::not_ready(health, now, ticking, timeout) {
            set_condition(
                &mut outcome.status.conditions,
                ConditionUpdate {
                    type_: condition_types::READY,
                    status: false,
                    reason,
                    message: message.clone(),
                },
                self.metadata.generation,
                now,
            );
            outcome.events = if self.status.as_ref() != Some(&outcome.status) {
                vec![warning(reason, "Drain", message)]
            } else {
                Vec::new()
            };
        }
        if let Some(note) = health::unsealed_timeout_note(self.status.as_ref(), health, timeout) {
            outcome
                .events
                .push(warning("UnsealedTimeout", "Drain", note));
        }
        if let Some(note) = health::stray_keys_note(self.status.as_ref(), health) {
            outcome
                .events
                .push(warning("StrayKeysFound", "AuditStrayKeys", note));
        }
    }
}
