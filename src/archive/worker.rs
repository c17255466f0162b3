//! The drain worker of one shard: each tick archives minute after minute
//! behind the watermark, each minute in one Postgres transaction that holds
//! the shard's watermark row (`FOR UPDATE SKIP LOCKED`) from reading it to
//! committing the rows and the new watermark together. Two replicas can
//! therefore never write the same minute, and a crash before commit leaves
//! nothing behind.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::key::{self, KeyOwner};
use super::redis_source::{self, MinuteStream};
use super::stray::{self, AuditPace};
use super::verdict::{self, RawFields, Reject, RejectReason, Verdict};
use super::writer::{self, StreamError, WriteError, WritePath};
use crate::api::ArchiverShardSpec;
use crate::api::archiver_shard::Discovery;
use crate::clock::parse_duration;
use crate::clock::{SharedClock, minute_floor};
use crate::metrics::{Metrics, RejectLabels, ShardLabels, StrayKeyLabels};
use futures::StreamExt;

/// Advisory-lock key shared by drain ticks (shared side) and erasures
/// (exclusive side): an erasure waits for in-flight ticks and blocks new ones.
pub const ERASURE_LOCK_KEY: i64 = crate::db::locks::ERASURE;
/// The `waiting_reason` of a tick that failed on a PostgreSQL error.
pub const DATABASE_ERROR: &str = "database-error";
/// How long a tick's hold on the watermark is advertised as valid.
const LOCK_TTL: chrono::Duration = chrono::Duration::seconds(90);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("database: {context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> DrainError {
    move |source| DrainError::Database { context, source }
}

/// What the worker needs of the ArchiverShard spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSettings {
    pub shard_id: i32,
    /// `namespace/name`, the metric label.
    pub label: String,
    pub discovery: Discovery,
    pub backfill: chrono::Duration,
    pub acknowledged_gaps: Vec<(DateTime<Utc>, DateTime<Utc>, String)>,
    pub tick_offset: chrono::Duration,
    /// How long past its end a minute waits for unsealed verdicts before
    /// they are rejected as `unsealed_timeout` and the minute proceeds.
    pub unsealed_timeout: chrono::Duration,
}

impl ShardSettings {
    /// Settings with the spec's defaults for everything but the shard's
    /// identity, discovery and backfill: no acknowledged gaps, the default
    /// tick offset (5 s) and unsealed timeout (300 s).
    pub fn new(
        shard_id: i32,
        label: impl Into<String>,
        discovery: Discovery,
        backfill: chrono::Duration,
    ) -> Self {
        use crate::api::archiver_shard::{
            default_tick_offset_seconds, default_unsealed_timeout_seconds,
        };
        Self {
            shard_id,
            label: label.into(),
            discovery,
            backfill,
            acknowledged_gaps: Vec::new(),
            tick_offset: chrono::Duration::seconds(i64::from(default_tick_offset_seconds())),
            unsealed_timeout: chrono::Duration::seconds(i64::from(
                default_unsealed_timeout_seconds(),
            )),
        }
    }

    /// The settings of the shard `label` (`namespace/name`) from its spec.
    pub fn from_spec(label: impl Into<String>, spec: &ArchiverShardSpec) -> Self {
        Self {
            shard_id: spec.shard_id,
            label: label.into(),
            discovery: spec.discovery,
            // Validated by the spec rules; an hour is the documented default.
            backfill: parse_duration(&spec.backfill_when_no_watermark)
                .unwrap_or(chrono::Duration::hours(1)),
            acknowledged_gaps: spec
                .acknowledged_gaps
                .iter()
                .map(|gap| (gap.from, gap.to, gap.reason.clone()))
                .collect(),
            tick_offset: chrono::Duration::seconds(i64::from(spec.tick_offset_seconds)),
            unsealed_timeout: chrono::Duration::seconds(i64::from(spec.unsealed_timeout_seconds)),
        }
    }

    fn acknowledged(&self, minute: DateTime<Utc>) -> Option<&str> {
        self.acknowledged_gaps
            .iter()
            .find(|(from, to, _)| *from <= minute && minute < *to)
            .map(|(_, _, reason)| reason.as_str())
    }
}

/// Why the watermark did not move past a minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// Some keys of the minute are not sealed yet (and the minute ended
    /// less than `unsealed_timeout` ago).
    Unsealed { keys: usize },
    /// No keys at all while the previous minute had some: suspected eviction.
    Gap,
    /// No partition of probe_minute covers the minute.
    PartitionMissing,
    /// Redis did not answer.
    RedisUnavailable(String),
}

impl WaitReason {
    /// The `waiting_reason` recorded in the watermark row.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Unsealed { .. } => "unsealed",
            Self::Gap => "gap",
            Self::PartitionMissing => "partition-missing",
            Self::RedisUnavailable(_) => "redis-unavailable",
        }
    }

    fn message(&self, minute: DateTime<Utc>) -> String {
        match self {
            Self::Unsealed { keys } => format!("{keys} key(s) of {minute} not sealed yet"),
            Self::Gap => format!(
                "no keys for {minute} while the minute before had some (suspected eviction)"
            ),
            Self::PartitionMissing => format!("no partition of probe_minute covers {minute}"),
            Self::RedisUnavailable(error) => format!("Redis unavailable: {error}"),
        }
    }
}

/// What happened to one minute.
#[derive(Debug, Clone, PartialEq)]
pub enum MinuteOutcome {
    Archived(ArchivedMinute),
    /// An acknowledged gap: the watermark moved past a minute with no keys.
    GapSkipped {
        minute: DateTime<Utc>,
    },
    Waiting {
        minute: DateTime<Utc>,
        reason: WaitReason,
    },
    /// The next minute has not ended yet.
    CaughtUp,
    /// Another replica holds the watermark row.
    HeldElsewhere,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedMinute {
    pub minute: DateTime<Utc>,
    pub keys: usize,
    pub rows: u64,
    pub rejected: usize,
    /// Rows dropped because their pair was erased at or after the minute.
    pub erased: usize,
    /// Verdicts still unsealed past the timeout, rejected as
    /// `unsealed_timeout` (included in `rejected`).
    pub unsealed_timed_out: usize,
    pub path: WritePath,
    pub via: Discovery,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    pub archived: Vec<ArchivedMinute>,
    pub gaps_skipped: Vec<DateTime<Utc>>,
    /// Where the tick stopped.
    pub stopped_at: Option<MinuteOutcome>,
}

impl TickReport {
    pub fn rows(&self) -> u64 {
        self.archived.iter().map(|m| m.rows).sum()
    }
    pub(crate) fn rejected(&self) -> usize {
        self.archived.iter().map(|m| m.rejected).sum()
    }
}

/// The drain worker of one shard.
pub struct Worker {
    pub settings: ShardSettings,
    owner: String,
    pool: PgPool,
    redis: ConnectionManager,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Keys of the minute being committed, marked `archived_at` after commit.
    pending_marks: Vec<Vec<u8>>,
    marker: Marker,
    /// A warning about the last archived minute (kept until the next one).
    warning: Option<String>,
    /// The stray-key audit running on its own task, if any.
    audit: Option<tokio::task::JoinHandle<()>>,
    audit_pace: AuditPace,
}

impl Worker {
    pub async fn connect(
        settings: ShardSettings,
        owner: String,
        pool: PgPool,
        redis_url: &str,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> redis::RedisResult<Self> {
        let client = crate::redis_client::open(redis_url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2);
        // Lazy: a Redis that is down at start is a wait the tick records
        // (and the status shows), not a worker that never starts.
        let redis = client.get_connection_manager_lazy(config)?;
        let marker = Marker::start(redis.clone(), settings.label.clone());
        Ok(Self {
            settings,
            owner,
            pool,
            redis,
            clock,
            metrics,
            pending_marks: Vec::new(),
            marker,
            warning: None,
            audit: None,
            audit_pace: AuditPace::default(),
        })
    }

    fn shard_labels(&self) -> ShardLabels {
        ShardLabels {
            shard: self.settings.label.clone(),
        }
    }

    /// Archives minute after minute until caught up, blocked, or `budget`
    /// is spent.
    pub async fn tick(&mut self, budget: Duration) -> Result<TickReport, DrainError> {
        let started = Instant::now();
        let result = self.tick_inner(budget, started).await;
        if let Err(error) = &result {
            self.record_failure(error).await;
        }
        self.start_audit_if_due().await;
        self.metrics
            .tick_duration
            .get_or_create(&self.shard_labels())
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn tick_inner(
        &mut self,
        budget: Duration,
        started: Instant,
    ) -> Result<TickReport, DrainError> {
        self.ensure_watermark_row().await?;
        let mut report = TickReport::default();
        loop {
            let outcome = self.archive_next_minute(&report).await?;
            match outcome {
                MinuteOutcome::Archived(minute) => report.archived.push(minute),
                MinuteOutcome::GapSkipped { minute } => report.gaps_skipped.push(minute),
                other => {
                    report.stopped_at = Some(other);
                    break;
                }
            }
            if started.elapsed() >= budget {
                break;
            }
        }
        Ok(report)
    }

    /// How fast the stray-key audit walks the keyspace.
    pub fn set_audit_pace(&mut self, pace: AuditPace) {
        self.audit_pace = pace;
    }

    /// Waits for a running stray-key audit to finish (tests, `run --once`).
    pub async fn wait_for_audit(&mut self) {
        if let Some(audit) = self.audit.take()
            && let Err(error) = audit.await
        {
            tracing::warn!(shard = %self.settings.label, %error, "the stray-key audit task failed");
        }
    }

    /// Starts the hourly stray-key audit on a task of its own when the
    /// last one (of any replica: the claim is in the watermark row) is an
    /// hour old by the worker's clock. Never on a minute's transaction.
    async fn start_audit_if_due(&mut self) {
        if self
            .audit
            .as_ref()
            .is_some_and(|audit| !audit.is_finished())
        {
            return;
        }
        let now = self.clock.now();
        let claimed: Result<Option<DateTime<Utc>>, sqlx::Error> = sqlx::query_scalar(
            "UPDATE archive_watermark SET stray_audit_at = $2 WHERE shard_id = $1 \
             AND (stray_audit_at IS NULL OR stray_audit_at <= $3) RETURNING last_minute",
        )
        .bind(self.settings.shard_id)
        .bind(now)
        .bind(now - stray::AUDIT_EVERY)
        .fetch_optional(&self.pool)
        .await;
        let watermark = match claimed {
            Ok(Some(watermark)) => watermark,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(shard = %self.settings.label, %error, "could not claim the stray-key audit");
                return;
            }
        };
        let mut redis = self.redis.clone();
        let pool = self.pool.clone();
        let clock = self.clock.clone();
        let metrics = self.metrics.clone();
        let label = self.settings.label.clone();
        let shard_id = self.settings.shard_id;
        let pace = self.audit_pace;
        self.audit = Some(tokio::spawn(async move {
            let rejects = stray::ShardRejects {
                pool: &pool,
                shard_id,
            };
            let found = match stray::audit(&mut redis, Some(watermark), pace, rejects).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(shard = %label, %error, "stray-key audit failed; next one in an hour");
                    return;
                }
            };
            for kind in stray::StrayKind::ALL {
                let count = found.by_kind.get(&kind).copied().unwrap_or(0);
                metrics
                    .stray_keys
                    .get_or_create(&StrayKeyLabels {
                        shard: label.clone(),
                        kind: kind.as_str().into(),
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            if found.total() > 0 {
                tracing::warn!(shard = %label, strays = found.total(), examples = ?found.examples, "keys that look like verdicts can never be archived");
            }
            let recorded = sqlx::query(
                "UPDATE archive_watermark SET stray_audit_at = $2, stray_keys = $3, stray_key_examples = $4 \
                 WHERE shard_id = $1",
            )
            .bind(shard_id)
            .bind(clock.now())
            .bind(i64::try_from(found.total()).unwrap_or(i64::MAX))
            .bind(&found.examples)
            .execute(&pool)
            .await;
            if let Err(error) = recorded {
                tracing::warn!(shard = %label, %error, "could not record the stray-key audit");
            }
        }));
    }

    /// Records a failed tick in the watermark row, outside the rolled-back
    /// transaction, so the status says why the shard does not progress.
    /// Best effort: when PostgreSQL itself is unreachable this fails too,
    /// and the status reports the missing ticks instead (`NoRecentTick`).
    async fn record_failure(&self, error: &DrainError) {
        let now = self.clock.now();
        let recorded = sqlx::query(
            "UPDATE archive_watermark SET last_tick_at = $2, waiting_minute = last_minute + interval '1 minute', \
             waiting_reason = $3, last_error = $4 WHERE shard_id = $1",
        )
        .bind(self.settings.shard_id)
        .bind(now)
        .bind(DATABASE_ERROR)
        .bind(error.to_string())
        .execute(&self.pool)
        .await;
        if let Err(record_error) = recorded {
            tracing::warn!(shard = %self.settings.label, %record_error, "could not record the failed tick");
        }
    }

    /// A first watermark: the minute before `now - backfill`.
    async fn ensure_watermark_row(&self) -> Result<(), DrainError> {
        let start =
            minute_floor(self.clock.now() - self.settings.backfill) - chrono::Duration::minutes(1);
        sqlx::query(
            "INSERT INTO archive_watermark \
                 (shard_id, last_minute, owner, taken_at, expires_at, lifecycle_since, shard_object) \
             VALUES ($1, $2, $3, $4, $4, $4, $5) ON CONFLICT (shard_id) DO NOTHING",
        )
        .bind(self.settings.shard_id)
        .bind(start)
        .bind(&self.owner)
        .bind(self.clock.now())
        .bind(&self.settings.label)
        .execute(&self.pool)
        .await
        .map_err(db("creating the watermark"))?;
        Ok(())
    }

    async fn archive_next_minute(
        &mut self,
        so_far: &TickReport,
    ) -> Result<MinuteOutcome, DrainError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await.map_err(db("beginning the tick"))?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(ERASURE_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(db("taking the erasure lock (shared)"))?;
        let row: Option<(DateTime<Utc>, i32)> = sqlx::query_as(
            "SELECT last_minute, last_minute_keys FROM archive_watermark \
             WHERE shard_id = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.settings.shard_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("locking the watermark"))?;
        let Some((last_minute, previous_keys)) = row else {
            return Ok(MinuteOutcome::HeldElsewhere);
        };
        let minute = last_minute + chrono::Duration::minutes(1);
        self.metrics
            .lag_seconds
            .get_or_create(&self.shard_labels())
            .set((now - minute).num_seconds().max(0));
        if minute + chrono::Duration::minutes(1) > now {
            self.record_health(&mut tx, now, so_far, None).await?;
            tx.commit().await.map_err(db("committing the tick"))?;
            self.metrics
                .unsealed_wait_seconds
                .get_or_create(&self.shard_labels())
                .set(0);
            return Ok(MinuteOutcome::CaughtUp);
        }
        let outcome =
            match redis_source::stream_minute(&self.redis, minute, self.settings.discovery).await {
                Err(error) => Err(WaitReason::RedisUnavailable(error.to_string())),
                Ok(stream) => {
                    self.archive_minute(&mut tx, minute, previous_keys, stream)
                        .await?
                }
            };
        match outcome {
            Ok(done) => {
                let keys = match &done {
                    MinuteOutcome::Archived(archived) => archived.keys,
                    _ => 0,
                };
                let mut report = so_far.clone();
                if let MinuteOutcome::Archived(archived) = &done {
                    report.archived.push(archived.clone());
                    self.note_key_drop(minute, archived.keys, previous_keys);
                }
                sqlx::query("UPDATE archive_watermark SET last_minute = $2, last_minute_keys = $3 WHERE shard_id = $1")
                    .bind(self.settings.shard_id)
                    .bind(minute)
                    .bind(i32::try_from(keys).unwrap_or(i32::MAX))
                    .execute(&mut *tx)
                    .await
                    .map_err(db("advancing the watermark"))?;
                self.record_health(&mut tx, now, &report, None).await?;
                tx.commit().await.map_err(db("committing the minute"))?;
                self.metrics
                    .unsealed_wait_seconds
                    .get_or_create(&self.shard_labels())
                    .set(0);
                self.mark_committed_keys().await;
                Ok(done)
            }
            Err(reason) => {
                self.pending_marks.clear();
                if matches!(reason, WaitReason::Unsealed { .. }) {
                    let waited = (now - (minute + chrono::Duration::minutes(1)))
                        .num_seconds()
                        .max(0);
                    self.metrics
                        .unsealed_wait_seconds
                        .get_or_create(&self.shard_labels())
                        .set(waited);
                }
                tracing::info!(shard = %self.settings.label, %minute, reason = reason.label(), "{}", reason.message(minute));
                self.record_health(&mut tx, now, so_far, Some((minute, &reason)))
                    .await?;
                tx.commit().await.map_err(db("recording the wait"))?;
                Ok(MinuteOutcome::Waiting { minute, reason })
            }
        }
    }

    /// Keeps (or clears) the warning about a minute with far fewer keys than
    /// the one before; it is recorded with the minute and counted.
    fn note_key_drop(&mut self, minute: DateTime<Utc>, keys: usize, previous_keys: i32) {
        self.warning = key_drop_warning(minute, keys, previous_keys);
        if let Some(warning) = &self.warning {
            tracing::warn!(shard = %self.settings.label, %minute, "{warning}");
            self.metrics
                .key_drop_warnings
                .get_or_create(&self.shard_labels())
                .inc();
        }
    }

    /// Hands the keys just committed to the marker task, which writes their
    /// `archived_at` marker while the next minute is being archived. Waits
    /// only while a previous minute's markers are still queued (backpressure).
    async fn mark_committed_keys(&mut self) {
        let keys = std::mem::take(&mut self.pending_marks);
        if keys.is_empty() {
            return;
        }
        self.marker.mark(keys, self.clock.now()).await;
    }

    /// Waits until every committed minute's keys carry their `archived_at`
    /// marker (or marking them failed and was logged). Call before dropping
    /// the worker when the process is about to exit.
    pub async fn flush_marks(&self) {
        self.marker.flush().await;
    }

    /// A minute without keys: fine after an idle minute, a suspected
    /// eviction gap after a busy one (held until acknowledged).
    async fn empty_minute(
        &self,
        tx: &mut PgConnection,
        minute: DateTime<Utc>,
        previous_keys: i32,
    ) -> Result<Result<MinuteOutcome, WaitReason>, DrainError> {
        if previous_keys == 0 {
            return Ok(Ok(MinuteOutcome::Archived(ArchivedMinute {
                minute,
                keys: 0,
                rows: 0,
                rejected: 0,
                erased: 0,
                unsealed_timed_out: 0,
                path: WritePath::Copy,
                via: self.settings.discovery,
            })));
        }
        let Some(reason) = self.settings.acknowledged(minute) else {
            return Ok(Err(WaitReason::Gap));
        };
        sqlx::query(
            "INSERT INTO operator_audit_log (at, action, subject, actor, payload) \
             VALUES ($1, 'gap-acknowledged', $2, $3, $4)",
        )
        .bind(self.clock.now())
        .bind(format!("ArchiverShard/{}", self.settings.label))
        .bind(&self.owner)
        .bind(serde_json::json!({"shardId": self.settings.shard_id, "minute": minute, "reason": reason}))
        .execute(&mut *tx)
        .await
        .map_err(db("auditing the acknowledged gap"))?;
        Ok(Ok(MinuteOutcome::GapSkipped { minute }))
    }

    async fn archive_minute(
        &mut self,
        tx: &mut PgConnection,
        minute: DateTime<Utc>,
        previous_keys: i32,
        stream: MinuteStream,
    ) -> Result<Result<MinuteOutcome, WaitReason>, DrainError> {
        let MinuteStream { via, mut chunks } = stream;
        let first = match chunks.recv().await {
            None => return self.empty_minute(tx, minute, previous_keys).await,
            Some(Err(error)) => return Ok(Err(WaitReason::RedisUnavailable(error.to_string()))),
            Some(Ok(first)) => first,
        };
        // Check and parse chunk by chunk while the previous chunk is being
        // copied into Postgres and the next one read from Redis.
        let tombstones = Tombstones::load(tx, minute).await?;
        let mut keys_read: Vec<Vec<u8>> = Vec::new();
        let mut rejects: Vec<(Vec<u8>, RawFields, Reject)> = Vec::new();
        let mut erased = 0;
        let mut unsealed_timed_out = 0;
        // Past the timeout, a verdict still unsealed is rejected instead of
        // holding the minute: the coalescer that should seal it is gone.
        let waited = self.clock.now() - (minute + chrono::Duration::minutes(1));
        let timed_out = waited >= self.settings.unsealed_timeout;
        let timeout_seconds = self.settings.unsealed_timeout.num_seconds();
        let rest = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx));
        let all = futures::stream::iter([Ok(first)]).chain(rest);
        let rows = all.map(|chunk| {
            let (keys, fields) = chunk.map_err(|e| WaitReason::RedisUnavailable(e.to_string()))?;
            let unsealed = fields.iter().filter(|f| is_unsealed(f)).count();
            if unsealed > 0 && !timed_out {
                return Err(WaitReason::Unsealed { keys: unsealed });
            }
            keys_read.extend(keys.iter().cloned());
            let mut rows = Vec::with_capacity(keys.len());
            for (key, fields) in keys.into_iter().zip(fields) {
                let parsed = if let Some(reject) = too_large(&fields) {
                    Err(reject)
                } else if is_unsealed(&fields) {
                    unsealed_timed_out += 1;
                    Err(Reject {
                        reason: RejectReason::UnsealedTimeout,
                        detail: format!(
                            "not sealed {} s after the minute ended (spec.unsealedTimeoutSeconds {timeout_seconds})",
                            waited.num_seconds()
                        ),
                    })
                } else {
                    verdict::parse_bytes(&key, &fields, minute)
                };
                match parsed {
                    Ok(row) => rows.push(row),
                    // A reject of an erased pair is its data too: not stored.
                    Err(_) if tombstones.erases_key(&key) => erased += 1,
                    Err(reject) => rejects.push((key, fields, reject)),
                }
            }
            erased += tombstones.drop_erased(&mut rows);
            Ok(rows)
        });
        let written = writer::write_minute_streaming(tx, rows, minute, self.clock.now()).await;
        let written = match written {
            Ok(written) => written,
            Err(StreamError::Aborted(reason)) => return Ok(Err(reason)),
            Err(StreamError::Write(WriteError::PartitionMissing { .. })) => {
                return Ok(Err(WaitReason::PartitionMissing));
            }
            Err(StreamError::Write(WriteError::Database(source))) => {
                return Err(DrainError::Database {
                    context: "writing probe_minute",
                    source,
                });
            }
        };
        self.insert_rejects(tx, minute, &rejects).await?;
        if unsealed_timed_out > 0 {
            self.record_unsealed_timeout(tx, minute, unsealed_timed_out)
                .await?;
        }
        // The marker is written after the commit; a crash in between only
        // means the next tick finds the rows present (ON CONFLICT absorbs it).
        let archived = ArchivedMinute {
            minute,
            keys: keys_read.len(),
            rows: written.inserted,
            rejected: rejects.len(),
            erased,
            unsealed_timed_out,
            path: written.path,
            via,
        };
        self.metrics
            .rows_archived
            .get_or_create(&self.shard_labels())
            .inc_by(written.inserted);
        for (_, _, reject) in &rejects {
            self.metrics
                .rejected_rows
                .get_or_create(&RejectLabels {
                    reason: reject.reason.as_str().into(),
                })
                .inc();
        }
        if unsealed_timed_out > 0 {
            tracing::warn!(
                shard = %self.settings.label,
                %minute,
                verdicts = unsealed_timed_out,
                "verdicts never sealed within spec.unsealedTimeoutSeconds were rejected as unsealed_timeout"
            );
            self.metrics
                .unsealed_timeout_verdicts
                .get_or_create(&self.shard_labels())
                .inc_by(unsealed_timed_out as u64);
        }
        self.pending_marks = keys_read;
        Ok(Ok(MinuteOutcome::Archived(archived)))
    }

    /// Remembers, with the minute, the last minute whose unsealed verdicts
    /// timed out: the operator raises one Warning event for each.
    async fn record_unsealed_timeout(
        &self,
        tx: &mut PgConnection,
        minute: DateTime<Utc>,
        verdicts: usize,
    ) -> Result<(), DrainError> {
        sqlx::query(
            "UPDATE archive_watermark SET unsealed_timeout_minute = $2, unsealed_timeout_keys = $3 \
             WHERE shard_id = $1",
        )
        .bind(self.settings.shard_id)
        .bind(minute)
        .bind(i32::try_from(verdicts).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db("recording the unsealed timeout"))?;
        Ok(())
    }

    async fn insert_rejects(
        &self,
        tx: &mut PgConnection,
        minute: DateTime<Utc>,
        rejects: &[(Vec<u8>, RawFields, Reject)],
    ) -> Result<(), DrainError> {
        if rejects.is_empty() {
            return Ok(());
        }
        // Text holds neither NUL nor bytes that are not UTF-8: such names
        // are stored escaped (`\xff`), distinct from every other name.
        let keys: Vec<String> = rejects
            .iter()
            .map(|(key, _, _)| key::printable(key))
            .collect();
        // The owner as the one key reading gives it, so an erasure reaches
        // the reject by column, whatever the spelling of the key.
        let owners: Vec<Option<KeyOwner>> =
            rejects.iter().map(|(key, _, _)| key::owner(key)).collect();
        let tenants: Vec<Option<Uuid>> = owners
            .iter()
            .map(|o| o.as_ref().map(|o| o.tenant))
            .collect();
        let servers: Vec<Option<String>> = owners
            .into_iter()
            .map(|o| o.and_then(|o| o.server))
            .collect();
        let raw: Vec<serde_json::Value> = rejects
            .iter()
            .map(|(_, fields, _)| {
                serde_json::to_value(fields.for_rejects_table()).unwrap_or_default()
            })
            .collect();
        let reasons: Vec<String> = rejects
            .iter()
            .map(|(_, _, reject)| {
                verdict::without_nul(&format!("{}: {}", reject.reason.as_str(), reject.detail))
            })
            .collect();
        sqlx::query(
            "INSERT INTO probe_minute_rejects \
               (shard_id, verdict_key, minute_bucket, raw_fields, reason, rejected_at, tenant_id, server_slug) \
             SELECT $1, key, $2, raw, reason, $6, tenant, server \
             FROM unnest($3::text[], $4::jsonb[], $5::text[], $7::uuid[], $8::text[]) \
                  AS r(key, raw, reason, tenant, server) \
             ON CONFLICT (shard_id, verdict_key) DO NOTHING",
        )
        .bind(self.settings.shard_id)
        .bind(minute)
        .bind(&keys)
        .bind(&raw)
        .bind(&reasons)
        .bind(self.clock.now())
        .bind(&tenants)
        .bind(&servers)
        .execute(&mut *tx)
        .await
        .map_err(db("writing rejects"))?;
        Ok(())
    }

    async fn record_health(
        &self,
        tx: &mut PgConnection,
        now: DateTime<Utc>,
        report: &TickReport,
        waiting: Option<(DateTime<Utc>, &WaitReason)>,
    ) -> Result<(), DrainError> {
        sqlx::query(
            "UPDATE archive_watermark SET owner = $2, taken_at = $3, expires_at = $4, last_tick_at = $3, \
             rows_archived_last_tick = $5, rows_rejected_last_tick = $6, waiting_minute = $7, \
             waiting_reason = $8, last_error = $9, last_warning = $10 WHERE shard_id = $1",
        )
        .bind(self.settings.shard_id)
        .bind(&self.owner)
        .bind(now)
        .bind(now + LOCK_TTL)
        .bind(i64::try_from(report.rows()).unwrap_or(i64::MAX))
        .bind(i64::try_from(report.rejected()).unwrap_or(i64::MAX))
        .bind(waiting.map(|(minute, _)| minute))
        .bind(waiting.map(|(_, reason)| reason.label()))
        .bind(waiting.map(|(minute, reason)| reason.message(minute)))
        .bind(self.warning.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(db("recording shard health"))?;
        Ok(())
    }
}

/// A verdict the coalescer is still writing. A hash over the size limits
/// is only sampled, so whether it is sealed is unknown: it is rejected as
/// too large instead of holding the minute.
fn is_unsealed(raw: &RawFields) -> bool {
    raw.oversize.is_none() && verdict::is_unsealed(raw)
}

/// The reject of a hash over the size limits, saying how big it was.
fn too_large(raw: &RawFields) -> Option<Reject> {
    let size = raw.oversize?;
    let bytes = match size.bytes {
        Some(bytes) => format!("{bytes} bytes"),
        None => "bytes not summed".to_string(),
    };
    Some(Reject {
        reason: RejectReason::TooLarge,
        detail: format!(
            "{} fields, {bytes} (limits: {} fields, {} bytes of names and values); raw_fields holds a truncated sample",
            size.fields,
            verdict::MAX_VERDICT_FIELDS,
            verdict::MAX_VERDICT_BYTES
        ),
    })
}

/// A minute with less than half the keys of the one before may have lost
/// keys to eviction: worth a warning, not a hold (traffic does vary).
pub(crate) fn key_drop_warning(
    minute: DateTime<Utc>,
    keys: usize,
    previous_keys: i32,
) -> Option<String> {
    let previous = usize::try_from(previous_keys).unwrap_or(0);
    (previous >= 10 && keys * 2 < previous).then(|| {
        format!("{minute} has {keys} keys, the minute before had {previous}: partial eviction?")
    })
}

/// Writes the `archived_at` markers on a task of its own, after the commit.
///
/// The marker is for post-incident investigation only (seed 004: it tells
/// "evicted before it was archived" from "archived, then evicted"); the
/// rows and the watermark are already committed when it is written. So the
/// next minute does not wait for it: when catching up, minute N's markers
/// are written while minute N+1 is read and copied. At most one minute
/// waits in the queue, so memory stays bounded and a slow Redis slows the
/// ticks down instead of piling up work. A crash can lose the markers of
/// the last minute, never rows.
struct Marker {
    jobs: tokio::sync::mpsc::Sender<MarkJob>,
    label: String,
}

enum MarkJob {
    Mark {
        keys: Vec<Vec<u8>>,
        at: DateTime<Utc>,
    },
    /// Answered once every job before it is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Marker {
    fn start(redis: ConnectionManager, label: String) -> Self {
        let (jobs, mut queue) = tokio::sync::mpsc::channel(1);
        let shard = label.clone();
        // The task ends when the worker (the only sender) is dropped, after
        // the jobs already queued.
        tokio::spawn(async move {
            let mut redis = redis;
            while let Some(job) = queue.recv().await {
                match job {
                    MarkJob::Mark { keys, at } => {
                        if let Err(error) = redis_source::mark_archived(&mut redis, &keys, at).await
                        {
                            tracing::warn!(%shard, %error, keys = keys.len(), "could not mark keys archived");
                        }
                    }
                    MarkJob::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self { jobs, label }
    }

    async fn mark(&self, keys: Vec<Vec<u8>>, at: DateTime<Utc>) {
        if self.jobs.send(MarkJob::Mark { keys, at }).await.is_err() {
            tracing::warn!(shard = %self.label, "the marker task is gone; keys not marked archived");
        }
    }

    async fn flush(&self) {
        let (done, finished) = tokio::sync::oneshot::channel();
        if self.jobs.send(MarkJob::Flush(done)).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// Tombstones at or after the minute being archived: a tick that read
/// verdicts before an erasure committed must not bring the erased server
/// back, so rows of those pairs are dropped.
struct Tombstones {
    whole_tenants: BTreeSet<Uuid>,
    pairs: BTreeSet<(Uuid, String)>,
}

impl Tombstones {
    async fn load(tx: &mut PgConnection, minute: DateTime<Utc>) -> Result<Self, DrainError> {
        let rows: Vec<(Uuid, Option<String>)> = sqlx::query_as(
            "SELECT tenant_id, server_slug FROM data_deletion_log WHERE deleted_at >= $1",
        )
        .bind(minute)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading tombstones"))?;
        let mut tombstones = Self {
            whole_tenants: BTreeSet::new(),
            pairs: BTreeSet::new(),
        };
        for (tenant, server) in rows {
            match server {
                None => tombstones.whole_tenants.insert(tenant),
                Some(server) => tombstones.pairs.insert((tenant, server)),
            };
        }
        Ok(tombstones)
    }

    /// Whether a tombstone covers data of `tenant` and `server` (None: a
    /// key that names the tenant only, which only a whole-tenant erasure
    /// reaches, as in the erasure itself).
    fn erases(&self, tenant: Uuid, server: Option<&str>) -> bool {
        self.whole_tenants.contains(&tenant)
            || server.is_some_and(|server| self.pairs.contains(&(tenant, server.to_string())))
    }

    /// Whether `key` belongs to an erased pair, read by the one key
    /// reading the erasure uses ([`key::owner`]).
    fn erases_key(&self, key: &[u8]) -> bool {
        !self.is_empty()
            && key::owner(key)
                .is_some_and(|owner| self.erases(owner.tenant, owner.server.as_deref()))
    }

    fn is_empty(&self) -> bool {
        self.whole_tenants.is_empty() && self.pairs.is_empty()
    }

    /// Removes erased rows; returns how many.
    fn drop_erased(&self, rows: &mut Vec<Verdict>) -> usize {
        if self.is_empty() {
            return 0;
        }
        let before = rows.len();
        rows.retain(|row| !self.erases(row.tenant_id, Some(&row.server_slug)));
        before - rows.len()
    }
}

/// When the tick after `now` starts: the next minute boundary plus the offset.
pub(crate) fn next_tick_at(now: DateTime<Utc>, offset: chrono::Duration) -> DateTime<Utc> {
    let this_minute = minute_floor(now) + offset;
    if this_minute > now {
        this_minute
    } else {
        this_minute + chrono::Duration::minutes(1)
    }
}

/// How long a tick may keep archiving when behind: leaves room before the
/// next tick starts.
pub const TICK_BUDGET: Duration = Duration::from_secs(50);

/// Ticks every minute until `shutdown` resolves. Sleeps in real time until
/// the clock's next tick (use `tick` directly to drive a manual clock).
pub async fn run_forever(mut worker: Worker, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        match worker.tick(TICK_BUDGET).await {
            Ok(report) => tracing::info!(
                shard = %worker.settings.label,
                minutes = report.archived.len(),
                rows = report.rows(),
                rejected = report.rejected(),
                stopped_at = ?report.stopped_at,
                "tick"
            ),
            Err(error) => tracing::warn!(shard = %worker.settings.label, %error, "tick failed"),
        }
        let now = worker.clock.now();
        let wait = (next_tick_at(now, worker.settings.tick_offset) - now)
            .to_std()
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = &mut shutdown => {
                worker.flush_marks().await;
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_sharp_drop_in_keys_warns_but_small_shards_and_growth_do_not() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap();
        assert!(key_drop_warning(at, 40, 100).is_some());
        assert!(key_drop_warning(at, 60, 100).is_none());
        assert!(key_drop_warning(at, 1, 6).is_none(), "too few keys to tell");
        assert!(key_drop_warning(at, 500, 100).is_none());
    }

    #[test]
    fn ticks_start_at_the_minute_boundary_plus_the_offset() {
        let at = |m, s| Utc.with_ymd_and_hms(2026, 11, 23, 9, m, s).unwrap();
        let offset = chrono::Duration::seconds(5);
        assert_eq!(next_tick_at(at(0, 0), offset), at(0, 5));
        assert_eq!(next_tick_at(at(0, 5), offset), at(1, 5));
        assert_eq!(next_tick_at(at(0, 59), offset), at(1, 5));
    }
}
