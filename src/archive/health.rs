//! The shard's status, read from its watermark row: workers record what
//! each tick saw there, and the operator turns it into status fields and
//! conditions (the database is the channel between the two).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::api::ArchiverShardStatus;
use crate::api::common::{ConditionUpdate, set_condition};

/// Condition types of an ArchiverShard besides Ready.
pub mod conditions {
    pub const LAG_WITHIN_SLO: &str = "LagWithinSLO";
    pub const GAP_DETECTED: &str = "GapDetected";
    pub const PARTITION_MISSING: &str = "PartitionMissing";
}

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
}

impl ShardHealth {
    /// Seconds between `now` and the end of the last archived minute.
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> i64 {
        (now - (self.last_minute + chrono::Duration::minutes(1)))
            .num_seconds()
            .max(0)
    }

    fn waiting(&self, reason: &str) -> bool {
        self.waiting_reason.as_deref() == Some(reason)
    }
}

pub async fn read(pool: &PgPool, shard_id: i32) -> Result<Option<ShardHealth>, sqlx::Error> {
    sqlx::query_as(
        "SELECT last_minute, owner, expires_at, last_tick_at, rows_archived_last_tick, rows_rejected_last_tick, \
         waiting_minute, waiting_reason, last_error, last_warning FROM archive_watermark WHERE shard_id = $1",
    )
    .bind(shard_id)
    .fetch_optional(pool)
    .await
}

/// Fills the drain fields and conditions of `status` from `health`.
pub fn apply(
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
        conditions::LAG_WITHIN_SLO,
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
        conditions::GAP_DETECTED,
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
        conditions::PARTITION_MISSING,
        missing,
        "NoPartition",
        "PartitionsPresent",
        if missing { message } else { String::new() },
    );
}
