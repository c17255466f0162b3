//! The `ArchiverShard` controller: resolve the Redis URL Secret, check the
//! spec, run or deploy the shard's drain worker, then fill status,
//! conditions and events from the shard's watermark row
//! (`crate::archive::health`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use kube::ResourceExt;

use crate::api::common::{ConditionUpdate, condition_types, set_condition};
use crate::api::{ArchiverShard, ArchiverShardStatus};
use crate::archive::health::{self, ShardHealth};
use crate::archive::lifecycle::{self, ShardLifecycle};
use crate::archive::worker::ShardSettings;
use crate::runtime::context::Context;
use crate::runtime::reconcile::{
    Event, EventType, Managed, Outcome, ReconcileError, begin_status, finish,
};
use crate::runtime::workers::{WorkerInputs, WorkerState, worker_deployment_name};
use crate::views;

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
        let now = ctx.clock.now();
        // A suspended shard no longer holds the derived views back; an
        // active one (gap-held included: its minutes may still arrive) does.
        let lifecycle = ShardLifecycle::of_present_shard(self.spec.suspend);
        let object = format!(
            "{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        );
        let lifecycle_changed = lifecycle::set(pool, self.spec.shard_id, &object, lifecycle, now)
            .await
            .map_err(ReconcileError::database("setting the shard's lifecycle"))?;
        let health = health::read(pool, self.spec.shard_id)
            .await
            .map_err(ReconcileError::database("reading the shard's watermark"))?;
        let message = match &health {
            Some(health) => {
                apply_health(
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
            WorkerState::Suspended => {
                "suspended: no worker runs; the derived views do not wait on it".to_string()
            }
            WorkerState::Deployment(_) => format!(
                "worker Deployment {}; {message}",
                worker_deployment_name(self)
            ),
            _ => message,
        };
        let mut outcome = finish(self, ctx, status, &problems, &message, STATUS_REFRESH);
        // First: a shard that cannot make progress replaces `finish`'s
        // events with its Warning; the lifecycle events come after, so they
        // are never replaced.
        if let Some(health) = &health {
            self.report_drain_state(&mut outcome, health, ticking, now);
        }
        if lifecycle_changed {
            outcome.events.push(lifecycle_event(lifecycle));
            if let (ShardLifecycle::Active, Some(health)) = (lifecycle, &health) {
                // Only an event: a failed read must not fail the reconcile.
                let views = views::progress(pool).await.unwrap_or_else(|error| {
                    tracing::warn!(%error, "reading the views watermark for a rejoining shard");
                    None
                });
                if let Some(note) = views.and_then(|(through, closed)| {
                    lifecycle::rejoin_note(health.last_minute, through, closed)
                }) {
                    outcome.events.push(Event {
                        type_: EventType::Warning,
                        reason: "RejoinedBehindViews".into(),
                        action: "Lifecycle".into(),
                        note,
                    });
                }
            }
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
        if let Some(note) = health::unsealed_timeout_note(
            self.status
                .as_ref()
                .and_then(|status| status.unsealed_timeout_minute),
            health,
            timeout,
        ) {
            outcome
                .events
                .push(warning("UnsealedTimeout", "Drain", note));
        }
        if let Some(note) = health::stray_keys_note(
            self.status.as_ref().and_then(|status| status.stray_keys),
            health,
        ) {
            outcome
                .events
                .push(warning("StrayKeysFound", "AuditStrayKeys", note));
        }
    }
}

/// The event of a shard whose lifecycle row changed in this reconcile.
fn lifecycle_event(lifecycle: ShardLifecycle) -> Event {
    let (reason, note) = match lifecycle {
        ShardLifecycle::Suspended => (
            "ShardSuspended",
            "spec.suspend: the derived views (probe_day, probe_month, suppression clusters) \
             no longer wait on this shard",
        ),
        _ => (
            "ShardActive",
            "the derived views wait on this shard's watermark again",
        ),
    };
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        action: "Lifecycle".into(),
        note: note.into(),
    }
}

/// The drain settings of `shard`, labelled `namespace/name`.
pub fn shard_settings(shard: &ArchiverShard) -> ShardSettings {
    ShardSettings::from_spec(
        format!(
            "{}/{}",
            shard.metadata.namespace.as_deref().unwrap_or("default"),
            shard.metadata.name.as_deref().unwrap_or("")
        ),
        &shard.spec,
    )
}

/// Fills the drain fields and conditions of `status` from `health`.
pub fn apply_health(
    status: &mut ArchiverShardStatus,
    health: &ShardHealth,
    lag_slo_seconds: u32,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let lag = health.lag_seconds(now);
    status.last_archived_minute = Some(health.last_minute);
    status.lag_seconds = Some(lag);
    status.lock_owner = Some(health.owner.clone());
    status.rows_archived_last_tick = Some(health.rows_archived_last_tick);
    status.rows_rejected_last_tick = Some(health.rows_rejected_last_tick);
    status.unsealed_wait_seconds = health
        .waiting_minute
        .filter(|_| health.waiting("unsealed"))
        .map(|minute| {
            (now - (minute + chrono::Duration::minutes(1)))
                .num_seconds()
                .max(0)
        });
    status.unsealed_timeout_minute = health.unsealed_timeout_minute;
    status.unsealed_timeout_verdicts = health
        .unsealed_timeout_minute
        .map(|_| i64::from(health.unsealed_timeout_keys));
    status.stray_keys = health.stray_keys;
    status.stray_key_examples = health.stray_key_examples.clone();
    status.stray_audit_time = health.stray_audit_at;
    let message = health.last_error.clone().unwrap_or_default();
    let mut set = |type_, on: bool, reason_on, reason_off, text: String| {
        set_condition(
            &mut status.conditions,
            ConditionUpdate {
                type_,
                status: on,
                reason: if on { reason_on } else { reason_off },
                message: text,
            },
            generation,
            now,
        );
    };
    set(
        health::conditions::LAG_WITHIN_SLO,
        lag <= i64::from(lag_slo_seconds),
        "LagWithinSLO",
        "LagAboveSLO",
        format!("lag {lag} s, SLO {lag_slo_seconds} s"),
    );
    let gap = health.waiting("gap");
    // A sharp drop in keys is a warning, not a hold: the condition stays
    // False but says why someone should look.
    let (no_gap_reason, no_gap_message) = match &health.last_warning {
        Some(warning) => ("FewerKeysThanBefore", warning.clone()),
        None => ("NoGap", String::new()),
    };
    set(
        health::conditions::GAP_DETECTED,
        gap,
        "MinuteMissing",
        no_gap_reason,
        if gap {
            format!("{message}; add it to spec.acknowledgedGaps once confirmed lost")
        } else {
            no_gap_message
        },
    );
    let missing = health.waiting("partition-missing");
    set(
        health::conditions::PARTITION_MISSING,
        missing,
        "NoPartition",
        "PartitionsPresent",
        if missing { message } else { String::new() },
    );
    if let Some(count) = health.stray_keys {
        set(
            health::conditions::STRAY_KEYS,
            count > 0,
            "StrayKeysFound",
            "NoStrayKeys",
            health::stray_message(count, &health.stray_key_examples),
        );
    }
}
