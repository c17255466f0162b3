//! The leader's maintenance loop and what each pass publishes: metrics,
//! logs, and the error of a failed pass in the views watermark row.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::ViewsError;
use super::maintenance::{MaintenanceReport, ViewSettings, WaitingShard, maintain};
use super::plan_check::PlanCheck;

/// How often the leader looks for newly archived minutes.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Runs one pass and publishes it in metrics and logs.
pub async fn maintain_and_report(
    pool: &PgPool,
    salt: Option<&str>,
    now: DateTime<Utc>,
    metrics: &crate::metrics::Metrics,
) -> Result<MaintenanceReport, ViewsError> {
    let started = Instant::now();
    let result = maintain(
        pool,
        &ViewSettings {
            salt,
            now,
            budget: Duration::from_secs(50),
        },
    )
    .await;
    metrics
        .views_duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(report) => {
            if let Some(check) = &report.plan_check {
                export_plan_check(metrics, check);
            }
            if let Some(why) = report.suppression_disabled {
                tracing::warn!("suppression clusters not maintained: {why}");
            }
            export_waiting_on(metrics, report.waiting_on.as_ref());
            if !report.minutes.is_empty() {
                tracing::info!(
                    minutes = report.minutes.len(),
                    closed_days = ?report.closed_days,
                    waiting_on_shard = report.waiting_on.as_ref().map(|shard| shard.shard_id),
                    "derived views updated"
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, "derived views maintenance failed");
            let _ = sqlx::query("UPDATE derived_views_watermark SET last_error = $1")
                .bind(error.to_string())
                .execute(pool)
                .await;
        }
    }
    // After a failed pass too: a lag frozen at its last success would keep
    // ArchiverViewsLagAboveSLO silent while the views stop.
    if let Ok(Some(last)) =
        sqlx::query_scalar::<_, DateTime<Utc>>("SELECT last_minute FROM derived_views_watermark")
            .fetch_optional(pool)
            .await
    {
        metrics.views_lag_seconds.set(
            (now - (last + chrono::Duration::minutes(1)))
                .num_seconds()
                .max(0),
        );
    }
    result
}

/// `archiver_suppression_plan_uses_index` and
/// `archiver_suppression_plan_problem{reason}` (one series while there is
/// a problem), and a warning naming the plans the check saw.
fn export_plan_check(metrics: &crate::metrics::Metrics, check: &PlanCheck) {
    metrics
        .suppression_plan_uses_index
        .set(i64::from(check.problem.is_none()));
    metrics.suppression_plan_problem.clear();
    if let Some(problem) = check.problem {
        metrics
            .suppression_plan_problem
            .get_or_create(&crate::metrics::PlanProblemLabels {
                reason: problem.label().to_string(),
            })
            .set(1);
        tracing::warn!(
            reason = problem.label(),
            plan = %check.plan,
            plan_without_seqscan = %check.plan_without_seqscan,
            estimated_table_rows = check.estimated_table_rows,
            "the alert router's cluster query is not served by suppression_clusters_recent \
             (docs/OPERATIONS.md: the alert router's query plan)"
        );
    }
}

/// `archiver_views_waiting_on`: one series, for the shard the views wait on.
fn export_waiting_on(metrics: &crate::metrics::Metrics, waiting_on: Option<&WaitingShard>) {
    let labels = waiting_on.map(|shard| crate::metrics::ViewsWaitLabels {
        shard: metrics
            .shard_label(shard.shard_id)
            .unwrap_or_else(|| "unreconciled".to_string()),
        shard_id: shard.shard_id.to_string(),
    });
    let current = labels
        .as_ref()
        .is_some_and(|labels| metrics.views_waiting_on.get(labels).is_some());
    if !current {
        metrics.views_waiting_on.clear();
    }
    if let Some(labels) = labels {
        metrics.views_waiting_on.get_or_create(&labels).set(1);
    }
}

/// Says in the log when the shard the views wait on changes (not every
/// pass): which shard now bounds every tenant's rollups, and why it waits.
#[derive(Debug, Default)]
struct WaitingOnLog {
    last: Option<i32>,
}

impl WaitingOnLog {
    fn note(&mut self, report: &MaintenanceReport) {
        let now = report.waiting_on.as_ref().map(|shard| shard.shard_id);
        if now == self.last {
            return;
        }
        self.last = now;
        match &report.waiting_on {
            Some(shard) => tracing::info!(
                shard_id = shard.shard_id,
                archived_through = %shard.last_minute,
                waiting_reason = shard.waiting_reason.as_deref().unwrap_or("none"),
                "derived views now wait on shard {}",
                shard.shard_id
            ),
            None => tracing::info!("derived views wait on no shard: none is active"),
        }
    }
}

/// The leader's maintenance loop.
pub async fn run_forever(
    pool: PgPool,
    salt: Option<crate::secret::SecretString>,
    clock: crate::clock::SharedClock,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut shard_lag = crate::archive::health::ShardLagExport::default();
    let mut waiting_on_log = WaitingOnLog::default();
    loop {
        shard_lag.export(&pool, clock.now(), &metrics).await;
        if let Ok(report) = maintain_and_report(
            &pool,
            salt.as_ref().map(|s| s.expose()),
            clock.now(),
            &metrics,
        )
        .await
        {
            waiting_on_log.note(&report);
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
        }
    }
    // A replica that stops leading must not keep exporting a frozen lag:
    // alerts take max() over the replicas (a standby's views lag is 0).
    metrics.shard_lag_seconds.clear();
    metrics.shard_lag_slo_seconds.clear();
    metrics.views_lag_seconds.set(0);
    metrics.views_waiting_on.clear();
    metrics.shard_lifecycle.clear();
    metrics.suppression_plan_problem.clear();
}
