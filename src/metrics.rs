//! Prometheus metrics of the process (prefix `archiver_`).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: String,
    pub error: String,
}

/// A shard and a kind of stray key (`unaligned`, `malformed`, `missed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StrayKeyLabels {
    pub shard: String,
    pub kind: String,
}

/// One DeletionRequest.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeletionLabels {
    pub namespace: String,
    pub name: String,
}

/// The erasure step that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErasureStepLabels {
    pub step: String,
}

/// Rows retention deleted: the table and the tier they were attributed to
/// (`all` for the cross-tenant suppression history).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetentionRowLabels {
    pub table: String,
    pub tier: String,
}

/// One table retention prunes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetentionTableLabels {
    pub table: String,
}

/// A shard and one lifecycle state (`active`, `suspended`, `retired`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLifecycleLabels {
    pub shard: String,
    pub state: String,
}

/// The shard the derived views wait on: its label (`namespace/name`, or
/// `unreconciled` when no ArchiverShard of this process names it) and id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViewsWaitLabels {
    pub shard: String,
    pub shard_id: String,
}

/// Why the alert router's cluster query is not served by its index
/// (`crate::views::PlanProblem::label`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanProblemLabels {
    pub reason: String,
}

/// The process's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// Seconds between now and the end of the last archived minute.
    pub lag_seconds: Family<ShardLabels, Gauge>,
    pub rows_archived: Family<ShardLabels, Counter>,
    pub rejected_rows: Family<RejectLabels, Counter>,
    pub tick_duration: Family<ShardLabels, Histogram>,
    /// How long the next minute has waited for unsealed keys.
    pub unsealed_wait_seconds: Family<ShardLabels, Gauge>,
    /// Minutes with far fewer keys than the one before.
    pub key_drop_warnings: Family<ShardLabels, Counter>,
    /// Unsealed verdicts rejected after `spec.unsealedTimeoutSeconds`.
    pub unsealed_timeout_verdicts: Family<ShardLabels, Counter>,
    /// Keys that look like verdicts but can never be archived, by kind, at
    /// the last hourly audit.
    pub stray_keys: Family<StrayKeyLabels, Gauge>,
    /// Seconds left until an open DeletionRequest's deadline (response days plus any extension)
    /// (negative when overdue); removed once the request completed.
    pub deletion_deadline_seconds: Family<DeletionLabels, Gauge>,
    /// Duration of a completed erasure (transaction, recount, receipt).
    pub deletion_duration: Histogram,
    /// Erasure attempts that failed, by step.
    pub deletion_failures: Family<ErasureStepLabels, Counter>,
    /// Seconds the derived views (rollups, clusters) are behind now.
    pub views_lag_seconds: Gauge,
    pub views_duration: Histogram,
    /// 1 for the shard the derived views wait on (the slowest active one);
    /// one series at most, gone when no shard is active.
    pub views_waiting_on: Family<ViewsWaitLabels, Gauge>,
    /// 1 when the alert router's query uses its index, 0 when the plan flipped.
    pub suppression_plan_uses_index: Gauge,
    /// 1, labelled with the reason, while the last plan check found the
    /// alert router's query not served by its index; no series otherwise
    /// (and before the first check, and on a standby).
    pub suppression_plan_problem: Family<PlanProblemLabels, Gauge>,
    /// Consecutive monthly partitions of probe_minute from the current month
    /// on (0: this month's rows have no partition).
    pub partition_coverage_months: Gauge,
    /// Rows deleted by retention enforcement, per table and tier.
    pub retention_deleted_rows: Family<RetentionRowLabels, Counter>,
    /// Rows past retention still present, per table (at the last count).
    pub retention_drift_rows: Family<RetentionTableLabels, Gauge>,
    /// Seconds spent deleting in one enforcement run (all its batches).
    pub retention_run_duration: Histogram,
    /// Tenants with rows and no `tenant_tier_history` row (at the last
    /// drift count): retention never prunes them and they block drops.
    pub retention_tenants_without_tier: Gauge,
    /// 1 while the PartitionSchedule's `DropBlocked` condition is True.
    pub partition_drop_blocked: Gauge,
    /// Seconds between now and the end of each shard's last archived minute,
    /// computed by the leader from `archive_watermark` whether or not the
    /// shard's worker runs (the worker's own `lag_seconds` stops with it).
    pub shard_lag_seconds: Family<ShardLabels, Gauge>,
    /// Each shard's `spec.lagSloSeconds`, so alerts compare the two series.
    pub shard_lag_slo_seconds: Family<ShardLabels, Gauge>,
    /// Reads of `archive_watermark` by the leader that failed.
    pub watermark_read_failures: Counter,
    /// Each shard's lifecycle in `archive_watermark`: 1 for its state, 0
    /// for the two others.
    pub shard_lifecycle: Family<ShardLifecycleLabels, Gauge>,
    /// Shard id to shard label (`namespace/name`) of the shards this
    /// process reconciles: the watermark rows only know the id.
    shard_labels: Mutex<std::collections::BTreeMap<i32, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("archiver");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_failures = Family::<FailureLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "reconciles",
            "Reconciliations run, by kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by kind and error",
            reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation, by kind",
            reconcile_duration.clone(),
        );
        let lag_seconds = Family::<ShardLabels, Gauge>::default();
        let rows_archived = Family::<ShardLabels, Counter>::default();
        let rejected_rows = Family::<RejectLabels, Counter>::default();
        let tick_duration = Family::<ShardLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        let unsealed_wait_seconds = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "lag_seconds",
            "Seconds the shard's watermark is behind now",
            lag_seconds.clone(),
        );
        registry.register(
            "rows_archived",
            "Rows written to probe_minute",
            rows_archived.clone(),
        );
        registry.register(
            "rejected_rows",
            "Verdicts sent to probe_minute_rejects, by reason",
            rejected_rows.clone(),
        );
        registry.register(
            "tick_duration_seconds",
            "Duration of one drain tick",
            tick_duration.clone(),
        );
        registry.register(
            "unsealed_wait_seconds",
            "How long the next minute has waited for unsealed verdicts",
            unsealed_wait_seconds.clone(),
        );
        let key_drop_warnings = Family::<ShardLabels, Counter>::default();
        registry.register(
            "key_drop_warnings",
            "Minutes with less than half the keys of the minute before",
            key_drop_warnings.clone(),
        );
        let unsealed_timeout_verdicts = Family::<ShardLabels, Counter>::default();
        registry.register(
            "unsealed_timeout_verdicts",
            "Verdicts rejected because they were not sealed within spec.unsealedTimeoutSeconds",
            unsealed_timeout_verdicts.clone(),
        );
        let stray_keys = Family::<StrayKeyLabels, Gauge>::default();
        registry.register(
            "stray_keys",
            "Keys that look like verdicts but can never be archived, by kind, at the last audit",
            stray_keys.clone(),
        );
        let deletion_deadline_seconds = Family::<DeletionLabels, Gauge>::default();
        let deletion_duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        let deletion_failures = Family::<ErasureStepLabels, Counter>::default();
        registry.register(
            "deletion_deadline_seconds",
            "Seconds left until an open DeletionRequest's deadline (response days plus any extension)",
            deletion_deadline_seconds.clone(),
        );
        registry.register(
            "deletion_duration_seconds",
            "Duration of a completed erasure, verification and receipt included",
            deletion_duration.clone(),
        );
        registry.register(
            "deletion_failures",
            "Erasure attempts that failed, by step",
            deletion_failures.clone(),
        );
        let views_lag_seconds = Gauge::default();
        let views_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let suppression_plan_uses_index = Gauge::default();
        registry.register(
            "views_lag_seconds",
            "Seconds the rollups and suppression clusters are behind now",
            views_lag_seconds.clone(),
        );
        let views_waiting_on = Family::<ViewsWaitLabels, Gauge>::default();
        registry.register(
            "views_waiting_on",
            "1 for the shard the rollups and suppression clusters wait on (the slowest active shard)",
            views_waiting_on.clone(),
        );
        registry.register(
            "views_duration_seconds",
            "Duration of one derived-view maintenance pass",
            views_duration.clone(),
        );
        registry.register(
            "suppression_plan_uses_index",
            "1 when the alert router's cluster query uses its index",
            suppression_plan_uses_index.clone(),
        );
        let suppression_plan_problem = Family::<PlanProblemLabels, Gauge>::default();
        registry.register(
            "suppression_plan_problem",
            "1 while the alert router's cluster query is not served by its index, by reason",
            suppression_plan_problem.clone(),
        );
        let partition_coverage_months = Gauge::default();
        registry.register(
            "partition_coverage_months",
            "Consecutive monthly partitions of probe_minute from the current month on",
            partition_coverage_months.clone(),
        );
        let retention_deleted_rows = Family::<RetentionRowLabels, Counter>::default();
        let retention_drift_rows = Family::<RetentionTableLabels, Gauge>::default();
        let retention_run_duration = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        registry.register(
            "retention_deleted_rows",
            "Rows deleted by retention enforcement, by table and tier",
            retention_deleted_rows.clone(),
        );
        registry.register(
            "retention_drift_rows",
            "Rows older than the retention policy still present, by table",
            retention_drift_rows.clone(),
        );
        registry.register(
            "retention_run_duration_seconds",
            "Seconds spent deleting in one retention enforcement run",
            retention_run_duration.clone(),
        );
        let retention_tenants_without_tier = Gauge::default();
        let partition_drop_blocked = Gauge::default();
        registry.register(
            "retention_tenants_without_tier",
            "Tenants with rows and no tenant_tier_history row, never pruned (at the last drift count)",
            retention_tenants_without_tier.clone(),
        );
        registry.register(
            "partition_drop_blocked",
            "1 while a partition drop is refused (the PartitionSchedule's DropBlocked condition)",
            partition_drop_blocked.clone(),
        );
        let shard_lag_seconds = Family::<ShardLabels, Gauge>::default();
        let shard_lag_slo_seconds = Family::<ShardLabels, Gauge>::default();
        let watermark_read_failures = Counter::default();
        registry.register(
            "shard_lag_seconds",
            "Seconds each shard's archive_watermark is behind now, computed by the leader",
            shard_lag_seconds.clone(),
        );
        registry.register(
            "shard_lag_slo_seconds",
            "Each shard's spec.lagSloSeconds",
            shard_lag_slo_seconds.clone(),
        );
        let shard_lifecycle = Family::<ShardLifecycleLabels, Gauge>::default();
        registry.register(
            "shard_lifecycle",
            "Each shard's lifecycle in archive_watermark: 1 for its state (active, suspended, retired)",
            shard_lifecycle.clone(),
        );
        registry.register(
            "watermark_read_failures",
            "Reads of archive_watermark by the leader that failed",
            watermark_read_failures.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            reconciles,
            reconcile_failures,
            reconcile_duration,
            lag_seconds,
            rows_archived,
            rejected_rows,
            tick_duration,
            unsealed_wait_seconds,
            key_drop_warnings,
            unsealed_timeout_verdicts,
            stray_keys,
            deletion_deadline_seconds,
            deletion_duration,
            deletion_failures,
            views_lag_seconds,
            views_duration,
            views_waiting_on,
            suppression_plan_uses_index,
            suppression_plan_problem,
            partition_coverage_months,
            retention_deleted_rows,
            retention_drift_rows,
            retention_run_duration,
            retention_tenants_without_tier,
            partition_drop_blocked,
            shard_lag_seconds,
            shard_lag_slo_seconds,
            watermark_read_failures,
            shard_lifecycle,
            shard_labels: Mutex::default(),
        }
    }

    /// Forgets what only the leader exports, when this replica stops
    /// leading and stays up as a standby: the rules take `max()` (`min()`
    /// for deadlines) over the replicas, so a frozen value (a drift, a
    /// blocked drop, the deadline of a request the new leader completed)
    /// would keep an alert firing, or hide one, until the process restarts.
    /// A standby reports what a replica that never led does.
    pub fn forget_leader_state(&self) {
        self.shard_lag_seconds.clear();
        self.shard_lag_slo_seconds.clear();
        self.deletion_deadline_seconds.clear();
        self.retention_drift_rows.clear();
        self.views_lag_seconds.set(0);
        self.suppression_plan_uses_index.set(0);
        self.suppression_plan_problem.clear();
        self.partition_coverage_months.set(0);
        self.partition_drop_blocked.set(0);
        self.retention_tenants_without_tier.set(0);
    }

    /// Records a reconciled shard: its label for the lag computed from its
    /// watermark row, and its lag SLO.
    pub fn observe_shard(&self, shard_id: i32, label: &str, lag_slo_seconds: u32) {
        self.shard_labels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(shard_id, label.to_string());
        self.shard_lag_slo_seconds
            .get_or_create(&ShardLabels {
                shard: label.to_string(),
            })
            .set(i64::from(lag_slo_seconds));
    }

    /// The label of shard `shard_id`, when this process reconciled it.
    pub(crate) fn shard_label(&self, shard_id: i32) -> Option<String> {
        self.shard_labels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&shard_id)
            .cloned()
    }

    /// Registers a metric added by a domain module (drain lag, coverage...).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .register(name, help, metric);
    }

    /// Records one reconcile of `kind`: its duration and, if it failed, why.
    pub fn observe_reconcile(&self, kind: &str, seconds: f64, failure: Option<&str>) {
        let labels = KindLabels {
            kind: kind.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(seconds);
        if let Some(error) = failure {
            self.reconcile_failures
                .get_or_create(&FailureLabels {
                    kind: kind.to_string(),
                    error: error.to_string(),
                })
                .inc();
        }
    }

    /// The exposition of a fresh registry with one sample in every labelled
    /// family. prometheus-client leaves a family without samples out of
    /// the exposition altogether (no `# TYPE` line), so a scrape of a
    /// process lists only what it has touched; this lists every family, for
    /// checking the names the chart's dashboard and alerts query
    /// (tests/metrics_exposition.rs). The destructuring names every field,
    /// so a new metric field does not compile until it is sampled here.
    pub fn every_family_exposition() -> String {
        let metrics = Self::new();
        let Self {
            registry: _,
            reconciles,
            reconcile_failures,
            reconcile_duration,
            lag_seconds,
            rows_archived,
            rejected_rows,
            tick_duration,
            unsealed_wait_seconds,
            key_drop_warnings,
            unsealed_timeout_verdicts,
            stray_keys,
            deletion_deadline_seconds,
            deletion_duration: _,
            deletion_failures,
            views_lag_seconds: _,
            views_duration: _,
            views_waiting_on,
            shard_lifecycle,
            suppression_plan_uses_index: _,
            suppression_plan_problem,
            partition_coverage_months: _,
            retention_deleted_rows,
            retention_drift_rows,
            retention_run_duration: _,
            retention_tenants_without_tier: _,
            partition_drop_blocked: _,
            shard_lag_seconds,
            shard_lag_slo_seconds,
            watermark_read_failures: _,
            shard_labels: _,
        } = &metrics;
        let text = || "example".to_string();
        let kind = KindLabels { kind: text() };
        let shard = ShardLabels { shard: text() };
        let _ = reconciles.get_or_create(&kind);
        let _ = reconcile_failures.get_or_create(&FailureLabels {
            kind: text(),
            error: text(),
        });
        let _ = reconcile_duration.get_or_create(&kind);
        let _ = lag_seconds.get_or_create(&shard);
        let _ = rows_archived.get_or_create(&shard);
        let _ = rejected_rows.get_or_create(&RejectLabels { reason: text() });
        let _ = tick_duration.get_or_create(&shard);
        let _ = unsealed_wait_seconds.get_or_create(&shard);
        let _ = key_drop_warnings.get_or_create(&shard);
        let _ = unsealed_timeout_verdicts.get_or_create(&shard);
        let _ = stray_keys.get_or_create(&StrayKeyLabels {
            shard: text(),
            kind: text(),
        });
        let _ = deletion_deadline_seconds.get_or_create(&DeletionLabels {
            namespace: text(),
            name: text(),
        });
        let _ = deletion_failures.get_or_create(&ErasureStepLabels { step: text() });
        let _ = retention_deleted_rows.get_or_create(&RetentionRowLabels {
            table: text(),
            tier: text(),
        });
        let _ = retention_drift_rows.get_or_create(&RetentionTableLabels { table: text() });
        let _ = views_waiting_on.get_or_create(&ViewsWaitLabels {
            shard: text(),
            shard_id: text(),
        });
        let _ = shard_lifecycle.get_or_create(&ShardLifecycleLabels {
            shard: text(),
            state: text(),
        });
        let _ = suppression_plan_problem.get_or_create(&PlanProblemLabels { reason: text() });
        let _ = shard_lag_seconds.get_or_create(&shard);
        let _ = shard_lag_slo_seconds.get_or_create(&shard);
        metrics.encode()
    }

    /// How many metrics the registry holds (sampled or not).
    #[cfg(test)]
    fn registered_count(&self) -> usize {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The registry does not list its metrics; its Debug form shows one
        // descriptor per registered metric.
        format!("{registry:?}").matches("Descriptor {").count()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_that_stops_leading_forgets_the_leader_gauges() {
        let metrics = Metrics::new();
        metrics.observe_shard(0, "archiver/shard-0", 180);
        let shard = ShardLabels {
            shard: "archiver/shard-0".into(),
        };
        metrics.shard_lag_seconds.get_or_create(&shard).set(900);
        metrics
            .deletion_deadline_seconds
            .get_or_create(&DeletionLabels {
                namespace: "tenants".into(),
                name: "erase-1".into(),
            })
            .set(3600);
        metrics
            .retention_drift_rows
            .get_or_create(&RetentionTableLabels {
                table: "probe_minute".into(),
            })
            .set(5000);
        metrics
            .suppression_plan_problem
            .get_or_create(&PlanProblemLabels {
                reason: "plan_flipped".into(),
            })
            .set(1);
        for gauge in [
            &metrics.views_lag_seconds,
            &metrics.suppression_plan_uses_index,
            &metrics.partition_coverage_months,
            &metrics.partition_drop_blocked,
            &metrics.retention_tenants_without_tier,
        ] {
            gauge.set(7);
        }
        metrics.forget_leader_state();
        let text = metrics.encode();
        for family in [
            "archiver_shard_lag_seconds{",
            "archiver_shard_lag_slo_seconds{",
            "archiver_deletion_deadline_seconds{",
            "archiver_retention_drift_rows{",
            "archiver_suppression_plan_problem{",
        ] {
            assert!(!text.contains(family), "{family} left: {text}");
        }
        for gauge in [
            "archiver_views_lag_seconds",
            "archiver_suppression_plan_uses_index",
            "archiver_partition_coverage_months",
            "archiver_partition_drop_blocked",
            "archiver_retention_tenants_without_tier",
        ] {
            assert!(text.contains(&format!("\n{gauge} 0\n")), "{gauge}: {text}");
        }
        // The counters stay: rate() and increase() handle them per replica.
        metrics.observe_reconcile("ArchiverShard", 0.1, Some("Boom"));
        metrics.forget_leader_state();
        assert!(
            metrics
                .encode()
                .contains("archiver_reconcile_failures_total{")
        );
    }

    #[test]
    fn every_family_exposition_lists_every_registered_metric() {
        let registered = Metrics::new().registered_count();
        assert!(registered >= 20, "{registered}");
        let text = Metrics::every_family_exposition();
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(families, registered, "{text}");
        // A fresh registry shows only its unlabelled metrics.
        let fresh = Metrics::new().encode();
        assert!(
            !fresh.contains("# TYPE archiver_deletion_failures counter"),
            "{fresh}"
        );
        assert!(
            text.contains("# TYPE archiver_deletion_failures counter"),
            "{text}"
        );
    }

    #[test]
    fn reconciles_and_failures_are_encoded_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.observe_reconcile("RetentionPolicy", 0.01, None);
        metrics.observe_reconcile("RetentionPolicy", 0.02, Some("InvalidSpec"));
        let text = metrics.encode();
        assert!(
            text.contains("archiver_reconciles_total{kind=\"RetentionPolicy\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("archiver_reconcile_failures_total{kind=\"RetentionPolicy\",error=\"InvalidSpec\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("archiver_reconcile_duration_seconds_count{kind=\"RetentionPolicy\"} 2")
        );
    }
}
