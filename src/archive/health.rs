//! The shard's health, read from its watermark row: workers record what
//! each tick saw there, and the operator's controller turns it into status
//! fields and conditions (the database is the channel between the two).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::lifecycle::ShardLifecycle;

/// Condition types of an ArchiverShard besides Ready.
pub mod conditions {
    pub const LAG_WITHIN_SLO: &str = "LagWithinSLO";
    pub const GAP_DETECTED: &str = "GapDetected";
    pub const PARTITION_MISSING: &str = "PartitionMissing";
    pub const STRAY_KEYS: &str = "StrayKeys";
    pub const HOLDS_DERIVED_VIEWS: &str = "HoldsDerivedViews";
}

/// A worker ticks every minute; a last tick older than this means it is not
/// running, or cannot reach PostgreSQL to record anything.
pub const NO_RECENT_TICK_SECONDS: i64 = 180;

/// The watermark row of one shard.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ShardHealth {
    pub last_minute: DateTime<Utc>,
    pub owner: String,
    pub expires_at: DateTime<Utc>,
    pub last_tick_at: Option<DateTime<Utc>>,
    pub rows_archived_last_tick: i64,
    pub rows_rejected_last_tick: i64,
    pub waiting_minute: Option<DateTime<Utc>>,
    pub waiting_reason: Option<String>,
    pub last_error: Option<String>,
    pub last_warning: Option<String>,
    pub unsealed_timeout_minute: Option<DateTime<Utc>>,
    pub unsealed_timeout_keys: i32,
    pub stray_audit_at: Option<DateTime<Utc>>,
    pub stray_keys: Option<i64>,
    pub stray_key_examples: Vec<String>,
    /// The derived views wait on this shard: it is the slowest active one
    /// (`derived_views_watermark.waiting_on_shard`), so every tenant's
    /// `probe_day`, `probe_month` and suppression clusters advance only as
    /// far as its last archived minute. As of the views' last run, and only
    /// while the shard is active (a shard just suspended no longer holds
    /// them, though the views have not run since).
    pub holds_views: bool,
}

impl ShardHealth {
    /// Seconds between `now` and the end of the last archived minute.
    pub(crate) fn lag_seconds(&self, now: DateTime<Utc>) -> i64 {
        (now - (self.last_minute + chrono::Duration::minutes(1)))
            .num_seconds()
            .max(0)
    }

    /// Whether the last tick waited for `reason` (`gap`, `unsealed`, ...).
    pub(crate) fn waiting(&self, reason: &str) -> bool {
        self.waiting_reason.as_deref() == Some(reason)
    }
}

pub async fn read(pool: &PgPool, shard_id: i32) -> Result<Option<ShardHealth>, sqlx::Error> {
    sqlx::query_as(
        "SELECT last_minute, owner, expires_at, last_tick_at, rows_archived_last_tick, rows_rejected_last_tick, \
         waiting_minute, waiting_reason, last_error, last_warning, unsealed_timeout_minute, unsealed_timeout_keys, \
         stray_audit_at, stray_keys, stray_key_examples, \
         (w.lifecycle = 'active' AND EXISTS (SELECT FROM derived_views_watermark v \
           WHERE v.waiting_on_shard = w.shard_id)) AS holds_views \
         FROM archive_watermark w WHERE shard_id = $1",
    )
    .bind(shard_id)
    .fetch_optional(pool)
    .await
}

pub(crate) fn stray_message(count: i64, examples: &[String]) -> String {
    if count == 0 {
        return "no key looks like a verdict that can never be archived".into();
    }
    format!(
        "{count} key(s) look like verdicts but can never be archived, e.g. {}",
        examples.join(", ")
    )
}

/// Why a shard cannot make progress, as the reason and message of
/// `Ready=False`; `None` when it can. `ticking` is false for a suspended
/// shard: it is expected not to progress, and what its last tick saw is
/// stale.
pub fn not_ready(
    health: &ShardHealth,
    now: DateTime<Utc>,
    ticking: bool,
    unsealed_timeout_seconds: u32,
) -> Option<(&'static str, String)> {
    if !ticking {
        return None;
    }
    let error = health.last_error.clone().unwrap_or_default();
    let blocked = match health.waiting_reason.as_deref() {
        Some("redis-unavailable") => Some(("RedisUnavailable", error)),
        Some(crate::archive::worker::DATABASE_ERROR) => Some(("DatabaseError", error)),
        Some("gap") => Some((
            "GapHeld",
            format!("{error}; add it to spec.acknowledgedGaps once confirmed lost"),
        )),
        Some("partition-missing") => Some(("PartitionMissing", error)),
        Some("unsealed") => {
            let waited = health
                .waiting_minute
                .map(|minute| (now - (minute + chrono::Duration::minutes(1))).num_seconds())
                .unwrap_or(0)
                .max(0);
            Some((
                "UnsealedWait",
                format!(
                    "{error}; waited {waited} s of spec.unsealedTimeoutSeconds {unsealed_timeout_seconds}"
                ),
            ))
        }
        Some(other) => Some(("Waiting", format!("{other}: {error}"))),
        None => None,
    };
    if blocked.is_some() {
        return blocked;
    }
    let last_tick = health.last_tick_at?;
    let silent = (now - last_tick).num_seconds();
    (silent > NO_RECENT_TICK_SECONDS).then(|| {
        (
            "NoRecentTick",
            format!(
                "no tick recorded since {last_tick} ({silent} s): the worker is not running or cannot reach PostgreSQL"
            ),
        )
    })
}

/// The Warning event of a minute archived without its unsealed verdicts,
/// once per such minute (`known` is the minute already reported, from the
/// status before this reconcile).
pub(crate) fn unsealed_timeout_note(
    known: Option<DateTime<Utc>>,
    health: &ShardHealth,
    unsealed_timeout_seconds: u32,
) -> Option<String> {
    let minute = health.unsealed_timeout_minute?;
    (known != Some(minute)).then(|| {
        format!(
            "{} verdict(s) of minute {minute} were not sealed within {unsealed_timeout_seconds} s; \
             the minute was archived without them and they are in probe_minute_rejects as unsealed_timeout",
            health.unsealed_timeout_keys
        )
    })
}

/// The Warning event of a stray-key audit that found keys the drain can
/// never archive, once per new audit result (`known` is the count already
/// reported).
pub(crate) fn stray_keys_note(known: Option<i64>, health: &ShardHealth) -> Option<String> {
    let count = health.stray_keys.filter(|count| *count > 0)?;
    (known != Some(count)).then(|| stray_message(count, &health.stray_key_examples))
}

/// The leader's view of every shard's lag, from `archive_watermark` and the
/// clock: it exists whether or not a shard's worker runs, so a crash-looping
/// or scaled-down worker shows a lag that rises instead of a series that
/// stops. When the table cannot be read, the lag keeps rising from the last
/// minute read (a lower bound of the truth) and the failure is counted.
///
/// Each shard's lifecycle is exported beside it
/// (`archiver_shard_lifecycle{shard,state}`, 1 for the current state, 0 for
/// the others), so a lag alert can leave suspended shards out; a retired
/// shard (its ArchiverShard deleted) has no lag series at all.
#[derive(Debug, Default)]
pub struct ShardLagExport {
    last_minutes: std::collections::BTreeMap<i32, (DateTime<Utc>, String)>,
}

impl ShardLagExport {
    pub async fn export(
        &mut self,
        pool: &PgPool,
        now: DateTime<Utc>,
        metrics: &crate::metrics::Metrics,
    ) {
        let read = sqlx::query_as::<_, (i32, DateTime<Utc>, String)>(
            "SELECT shard_id, last_minute, lifecycle FROM archive_watermark",
        )
        .fetch_all(pool);
        match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
            Ok(Ok(rows)) => {
                self.last_minutes = rows
                    .into_iter()
                    .map(|(shard_id, last_minute, lifecycle)| (shard_id, (last_minute, lifecycle)))
                    .collect()
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading archive_watermark for the shard lag failed");
                metrics.watermark_read_failures.inc();
            }
            Err(_) => {
                tracing::warn!("reading archive_watermark for the shard lag timed out after 10 s");
                metrics.watermark_read_failures.inc();
            }
        }
        for (shard_id, (last_minute, lifecycle)) in &self.last_minutes {
            // A row no reconciled ArchiverShard names has no label nor SLO.
            let Some(shard) = metrics.shard_label(*shard_id) else {
                continue;
            };
            for state in [
                ShardLifecycle::Active,
                ShardLifecycle::Suspended,
                ShardLifecycle::Retired,
            ] {
                metrics
                    .shard_lifecycle
                    .get_or_create(&crate::metrics::ShardLifecycleLabels {
                        shard: shard.clone(),
                        state: state.as_str().to_string(),
                    })
                    .set(i64::from(state.as_str() == lifecycle));
            }
            let labels = crate::metrics::ShardLabels { shard };
            if lifecycle == ShardLifecycle::Retired.as_str() {
                // Deleted: nothing will ever archive it again, so no lag to page on.
                metrics.shard_lag_seconds.remove(&labels);
                metrics.shard_lag_slo_seconds.remove(&labels);
                continue;
            }
            let lag = (now - (*last_minute + chrono::Duration::minutes(1)))
                .num_seconds()
                .max(0);
            metrics.shard_lag_seconds.get_or_create(&labels).set(lag);
        }
    }
}
