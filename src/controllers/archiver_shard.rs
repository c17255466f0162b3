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
use crate::runtime::reconcile::{Event, Managed, Outcome, ReconcileError, begin_status, finish};
use crate::runtime::workers::{WorkerInputs, WorkerState, worker_deployment_name};
use crate::secret::SecretString;
use crate::views;

/// How often the shard's status is refreshed from its watermark.
const STATUS_REFRESH: Duration = Duration::from_secs(30);

impl Managed for ArchiverShard {
    type Status = ArchiverShardStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    /// validate → watch the lag → resolve the Redis URL and share it with
    /// erasures → run the worker → record the lifecycle → read the
    /// watermark → status, conditions and events.
    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        let (status, problems) = begin_status(self, ctx);
        if !problems.is_empty() {
            return Ok(finish(self, ctx, status, &problems, "", STATUS_REFRESH));
        }
        self.watch_lag(ctx);
        let redis_url = self.resolve_redis_url(ctx).await?;
        self.share_redis_url(ctx, &redis_url);
        let pool = ctx.db.as_ref().ok_or(ReconcileError::NoDatabase)?;
        let worker = self.run_worker(ctx, &redis_url, pool).await?;
        let now = ctx.clock.now();
        let lifecycle = self.record_lifecycle(pool, now).await?;
        let health = health::read(pool, self.spec.shard_id)
            .await
            .map_err(ReconcileError::database("reading the shard's watermark"))?;
        let rejoin = rejoin_warning(pool, &lifecycle, health.as_ref()).await;
        Ok(self.report(
            ctx,
            status,
            Drained {
                worker,
                lifecycle,
                health,
                rejoin,
                now,
            },
        ))
    }
}

/// The lifecycle this reconcile recorded for the shard.
struct LifecycleChange {
    lifecycle: ShardLifecycle,
    /// The row changed: announced by an event.
    changed: bool,
}

/// Everything the status is built from.
struct Drained {
    worker: WorkerState,
    lifecycle: LifecycleChange,
    /// The shard's watermark row; None before its first tick.
    health: Option<ShardHealth>,
    /// The `RejoinedBehindViews` note of a shard that became active again.
    rejoin: Option<String>,
    now: DateTime<Utc>,
}

impl ArchiverShard {
    /// The `Ready` message: where the worker runs and how far it archived.
    fn ready_message(
        &self,
        worker: &WorkerState,
        health: Option<&ShardHealth>,
        now: DateTime<Utc>,
    ) -> String {
        let drained = match health {
            Some(health) => match (&health.waiting_reason, &health.last_error) {
                (Some(_), Some(error)) => format!("waiting: {error}"),
                _ => format!(
                    "archived through {}; lag {} s",
                    health.last_minute,
                    health.lag_seconds(now)
                ),
            },
            None => "waiting for the first tick".to_string(),
        };
        match worker {
            WorkerState::Suspended => {
                "suspended: no worker runs; the derived views do not wait on it".to_string()
            }
            WorkerState::Deployment(_) => format!(
                "worker Deployment {}; {drained}",
                worker_deployment_name(self)
            ),
            _ => drained,
        }
    }

    /// `namespace/name`, the label of the shard's metrics and Redis target.
    fn label(&self) -> String {
        format!(
            "{}/{}",
            self.namespace().unwrap_or_else(|| "default".into()),
            self.name_any()
        )
    }

    /// The leader's lag of this shard, from its watermark row (same label
    /// as the worker's metrics).
    fn watch_lag(&self, ctx: &Context) {
        ctx.metrics
            .observe_shard(self.spec.shard_id, &self.label(), self.spec.lag_slo_seconds);
    }

    /// The Redis URL from its Secret. The URL is only handed to the worker
    /// and to erasures; it never reaches a log, an event or the status.
    async fn resolve_redis_url(&self, ctx: &Context) -> Result<SecretString, ReconcileError> {
        let namespace = self.namespace().unwrap_or_else(|| "default".into());
        Ok(ctx
            .secrets
            .resolve(&namespace, &self.spec.redis.url_secret_ref)
            .await?)
    }

    /// Erasures clean every shard's Redis: tell them where this one is.
    fn share_redis_url(&self, ctx: &Context, redis_url: &SecretString) {
        ctx.redis_targets
            .publish_shard(self.label(), redis_url.clone());
    }

    /// Runs the drain worker in-process or applies its Deployment (or
    /// stops it when suspended).
    async fn run_worker(
        &self,
        ctx: &Context,
        redis_url: &SecretString,
        pool: &sqlx::PgPool,
    ) -> Result<WorkerState, ReconcileError> {
        ctx.workers
            .ensure(
                self,
                WorkerInputs {
                    redis_url,
                    pool: Some(pool),
                    clock: &ctx.clock,
                    metrics: &ctx.metrics,
                },
            )
            .await
    }

    /// A suspended shard no longer holds the derived views back; an active
    /// one (gap-held included: its minutes may still arrive) does.
    async fn record_lifecycle(
        &self,
        pool: &sqlx::PgPool,
        now: DateTime<Utc>,
    ) -> Result<LifecycleChange, ReconcileError> {
        let lifecycle = ShardLifecycle::of_present_shard(self.spec.suspend);
        let object = format!(
            "{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        );
        let changed = lifecycle::set(pool, self.spec.shard_id, &object, lifecycle, now)
            .await
            .map_err(ReconcileError::database("setting the shard's lifecycle"))?;
        Ok(LifecycleChange { lifecycle, changed })
    }

    /// Status, conditions and events from the worker, the lifecycle and the
    /// watermark row.
    fn report(
        &self,
        ctx: &Context,
        mut status: ArchiverShardStatus,
        drained: Drained,
    ) -> Outcome<ArchiverShardStatus> {
        let Drained {
            worker,
            lifecycle,
            health,
            rejoin,
            now,
        } = drained;
        if let WorkerState::Deployment(name) = &worker {
            status.worker_deployment = Some(name.clone());
        }
        if let Some(health) = &health {
            apply_health(
                &mut status,
                health,
                self.spec.lag_slo_seconds,
                self.metadata.generation,
                now,
            );
        }
        let ticking = !matches!(worker, WorkerState::Suspended);
        let message = self.ready_message(&worker, health.as_ref(), now);
        let mut outcome = finish(self, ctx, status, &[], &message, STATUS_REFRESH);
        // First: a shard that cannot make progress replaces `finish`'s
        // events with its Warning; the lifecycle events come after, so they
        // are never replaced.
        if let Some(health) = &health {
            self.report_drain_state(&mut outcome, health, ticking, now);
        }
        if lifecycle.changed {
            outcome.events.push(lifecycle_event(lifecycle.lifecycle));
            if let Some(note) = rejoin {
                outcome
                    .events
                    .push(Event::warning("RejoinedBehindViews", "Lifecycle", note));
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
        outcome
    }

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
        let warning = Event::warning;
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

/// A shard that became active again behind the derived views: the note
/// that says which of its minutes the views will not recompute. Only an
/// event: a failed read must not fail the reconcile.
async fn rejoin_warning(
    pool: &sqlx::PgPool,
    lifecycle: &LifecycleChange,
    health: Option<&ShardHealth>,
) -> Option<String> {
    let health = health?;
    if !lifecycle.changed || lifecycle.lifecycle != ShardLifecycle::Active {
        return None;
    }
    let views = views::progress(pool).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "reading the views watermark for a rejoining shard");
        None
    });
    views.and_then(|(through, closed)| lifecycle::rejoin_note(health.last_minute, through, closed))
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
    Event::normal(reason, "Lifecycle", note)
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
    fill_drain_fields(status, health, now);
    for update in health_conditions(health, lag_slo_seconds, now) {
        set_condition(&mut status.conditions, update, generation, now);
    }
}

/// The drain's own status fields: where it is and what its last tick did.
fn fill_drain_fields(status: &mut ArchiverShardStatus, health: &ShardHealth, now: DateTime<Utc>) {
    status.last_archived_minute = Some(health.last_minute);
    status.lag_seconds = Some(health.lag_seconds(now));
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
}

/// One condition: `on` picks the reason, `message` says why.
fn condition<'a>(
    type_: &'a str,
    on: bool,
    reason_on: &'a str,
    reason_off: &'a str,
    message: String,
) -> ConditionUpdate<'a> {
    ConditionUpdate {
        type_,
        status: on,
        reason: if on { reason_on } else { reason_off },
        message,
    }
}

/// The drain's conditions as `health` shows them: lag against the SLO, a
/// missing minute (or a sharp drop in keys), a missing partition, whether
/// the derived views wait on this shard and, once audited, stray keys.
fn health_conditions(
    health: &ShardHealth,
    lag_slo_seconds: u32,
    now: DateTime<Utc>,
) -> Vec<ConditionUpdate<'static>> {
    let lag = health.lag_seconds(now);
    let message = health.last_error.clone().unwrap_or_default();
    let mut updates = vec![condition(
        health::conditions::LAG_WITHIN_SLO,
        lag <= i64::from(lag_slo_seconds),
        "LagWithinSLO",
        "LagAboveSLO",
        format!("lag {lag} s, SLO {lag_slo_seconds} s"),
    )];
    let gap = health.waiting("gap");
    // A sharp drop in keys is a warning, not a hold: the condition stays
    // False but says why someone should look.
    let (no_gap_reason, no_gap_message) = match &health.last_warning {
        Some(warning) => ("FewerKeysThanBefore", warning.clone()),
        None => ("NoGap", String::new()),
    };
    updates.push(condition(
        health::conditions::GAP_DETECTED,
        gap,
        "MinuteMissing",
        no_gap_reason,
        if gap {
            format!("{message}; add it to spec.acknowledgedGaps once confirmed lost")
        } else {
            no_gap_message
        },
    ));
    let missing = health.waiting("partition-missing");
    updates.push(condition(
        health::conditions::PARTITION_MISSING,
        missing,
        "NoPartition",
        "PartitionsPresent",
        if missing { message } else { String::new() },
    ));
    updates.push(condition(
        health::conditions::HOLDS_DERIVED_VIEWS,
        health.holds_views,
        "ViewsWaitOnThisShard",
        "ViewsNotWaiting",
        if health.holds_views {
            format!(
                "the derived views (probe_day, probe_month, suppression clusters) of every tenant \
                 advance only through this shard's last archived minute, {}: it is the slowest \
                 active shard",
                health.last_minute.format("%Y-%m-%d %H:%M UTC")
            )
        } else {
            String::new()
        },
    ));
    if let Some(count) = health.stray_keys {
        updates.push(condition(
            health::conditions::STRAY_KEYS,
            count > 0,
            "StrayKeysFound",
            "NoStrayKeys",
            health::stray_message(count, &health.stray_key_examples),
        ));
    }
    updates
}
