//! The `PartitionSchedule` reconciler: a thin adapter from the object and
//! the context to the domain functions, and from their results to status,
//! conditions, events and the coverage metric.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use sqlx::PgPool;

use crate::api::common::{UtcWindow, condition_types};
use crate::api::partition_schedule::NextDrop;
use crate::api::{PartitionSchedule, PartitionScheduleStatus, RetentionPolicySpec};
use crate::partitions::audit::{self, LockDiscipline};
use crate::partitions::catalog::{self, CatalogPartition};
use crate::partitions::coverage::{self, Coverage};
use crate::partitions::create::{self, CreateReport};
use crate::partitions::plan::{Candidate, DropDecision, DropInputs, plan_drops};
use crate::partitions::policy_registry::{NotInForce, PolicyLookup};
use crate::partitions::removal::{self, DropSettings, Dropped};
use crate::partitions::{PartitionError, conditions};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{
    Event, Managed, Outcome, ReconcileError, StatusReport, begin_status, finish, object_label,
};

/// Creation is checked at least this often (the issue: every few minutes).
const REQUEUE: Duration = Duration::from_secs(120);
/// Sooner while something is missing (partitions, the policy in force),
/// failed, or more may be dropped.
const REQUEUE_BUSY: Duration = Duration::from_secs(20);
/// Drops in one reconcile; the rest follow on the next ones.
const MAX_DROPS_PER_RECONCILE: usize = 12;

impl Managed for PartitionSchedule {
    type Status = PartitionScheduleStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    /// validate → resolve the RetentionPolicy in force → create partitions
    /// ahead → drop eligible ones in the window → observe the catalogue →
    /// status, conditions and events.
    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        let (status, problems) = begin_status(self, ctx);
        let window = match validate(self, problems) {
            Ok(window) => window,
            Err(problems) => return Ok(finish(self, ctx, status, &problems, "", REQUEUE)),
        };
        let pool = ctx.db.as_ref().ok_or(ReconcileError::NoDatabase)?;
        let pass = Pass::new(self, ctx, pool, window);
        let lookup = pass.resolve_policy();
        let creation = pass.create().await?;
        let drops = pass.drop_eligible(policy_spec(&lookup)).await?;
        let observed = pass.observe(policy_spec(&lookup), &drops).await?;
        Ok(pass.report(
            status,
            Acted {
                lookup,
                creation,
                drops,
                observed,
            },
        ))
    }
}

/// The drop window, or the spec's problems (admission rules first).
fn validate(schedule: &PartitionSchedule, problems: Vec<String>) -> Result<UtcWindow, Vec<String>> {
    if !problems.is_empty() {
        return Err(problems);
    }
    UtcWindow::parse(&schedule.spec.drop_window)
        .map_err(|error| vec![format!("spec.dropWindow: {error}")])
}

/// One reconcile of one schedule.
struct Pass<'a> {
    schedule: &'a PartitionSchedule,
    ctx: &'a Context,
    pool: &'a PgPool,
    now: DateTime<Utc>,
    window: UtcWindow,
    lock: LockDiscipline,
    actor: String,
}

/// What the drop step did.
#[derive(Debug, Default)]
struct DropRun {
    dropped: Vec<Dropped>,
    /// A verification found rows inside retention: (partition, rows).
    blocked: Option<(String, i64)>,
    /// A drop that should have happened and did not (lock timeouts...).
    failure: Option<String>,
    /// `max(contract_minute_retention_days)`, read when a policy is in force.
    longest_contract_days: Option<i32>,
}

/// The catalogue after the actions, and what it says.
struct Observed {
    partitions: Vec<CatalogPartition>,
    coverage: Coverage,
    last_create_at: Option<DateTime<Utc>>,
    last_drop_at: Option<DateTime<Utc>>,
    /// Partitions that may be dropped next, oldest first.
    candidates: Vec<Candidate>,
    /// Unexpected partitions and unusual growth.
    warnings: Vec<String>,
}

/// Everything the status is built from.
struct Acted {
    lookup: PolicyLookup,
    creation: CreateReport,
    drops: DropRun,
    observed: Observed,
}

fn reconcile_error(error: PartitionError) -> ReconcileError {
    match error {
        PartitionError::Database { context, source } => {
            ReconcileError::Database { context, source }
        }
        other => ReconcileError::Partitions(other),
    }
}

impl<'a> Pass<'a> {
    fn new(
        schedule: &'a PartitionSchedule,
        ctx: &'a Context,
        pool: &'a PgPool,
        window: UtcWindow,
    ) -> Self {
        Pass {
            schedule,
            ctx,
            pool,
            now: ctx.clock.now(),
            window,
            lock: LockDiscipline::new(Duration::from_secs(u64::from(
                schedule.spec.lock_timeout_seconds.max(1),
            ))),
            actor: object_label(schedule),
        }
    }

    /// The RetentionPolicy the schedule refers to, as the partition guard
    /// sees it: drops use only a tier table that policy's reconciler
    /// enforces.
    fn resolve_policy(&self) -> PolicyLookup {
        self.ctx.enforced_policies.in_force(
            &self.ctx.policies,
            &self.namespace(),
            &self.schedule.spec.retention_policy_ref.name,
        )
    }

    /// Creates the partitions missing up to `createAheadDays` ahead;
    /// nothing while suspended.
    async fn create(&self) -> Result<CreateReport, ReconcileError> {
        if self.schedule.spec.suspend {
            return Ok(CreateReport::default());
        }
        create::create_missing(
            self.pool,
            self.now,
            self.schedule.spec.create_ahead_days,
            self.lock,
            &self.actor,
        )
        .await
        .map_err(reconcile_error)
    }

    /// Drops what may be dropped; nothing while suspended.
    async fn drop_eligible(
        &self,
        policy: Option<&RetentionPolicySpec>,
    ) -> Result<DropRun, ReconcileError> {
        if self.schedule.spec.suspend {
            return Ok(DropRun::default());
        }
        self.drops(policy).await
    }

    /// Reads the catalogue as the actions left it: coverage, the last
    /// actions, the next drop candidates and anomalies.
    async fn observe(
        &self,
        policy: Option<&RetentionPolicySpec>,
        drops: &DropRun,
    ) -> Result<Observed, ReconcileError> {
        let partitions = self.read_partitions().await?;
        let coverage =
            coverage::coverage(&partitions, self.now, self.schedule.spec.create_ahead_days);
        let (last_create_at, last_drop_at) =
            audit::last_actions(self.pool)
                .await
                .map_err(ReconcileError::database(
                    "reading the last partition actions",
                ))?;
        let candidates = plan_drops(
            &partitions,
            self.drop_inputs(drops.longest_contract_days),
            policy,
        );
        let warnings = [
            coverage::unexpected_partitions(&partitions),
            coverage::growth_warnings(&partitions),
        ]
        .concat();
        Ok(Observed {
            partitions,
            coverage,
            last_create_at,
            last_drop_at,
            candidates,
            warnings,
        })
    }

    /// Status, conditions (`Covered`, `DropBlocked`, `Ready`), events and
    /// metrics from what the steps returned, and when to look again.
    fn report(
        self,
        status: PartitionScheduleStatus,
        acted: Acted,
    ) -> Outcome<PartitionScheduleStatus> {
        let Acted {
            lookup,
            creation,
            drops,
            observed,
        } = acted;
        let mut report = StatusReport::new(self.schedule, status, self.now);
        let mut events = Vec::new();
        let coverage = &observed.coverage;
        report.status.partitions = coverage::partition_infos(&observed.partitions);
        report.status.coverage_months_ahead = Some(coverage.months_ahead);
        report.status.last_create_at = observed.last_create_at;
        report.status.last_drop_at = observed.last_drop_at;
        report.status.next_drop = observed
            .candidates
            .first()
            .map(|c| self.next_drop(c, &lookup, &drops));
        self.set_covered(&mut report, coverage, &creation, &mut events);
        self.set_drop_blocked(&mut report, &lookup, &drops, &mut events);
        self.ctx
            .metrics
            .partition_coverage_months
            .set(coverage.months_including_current());
        events.extend(action_events(&creation, &drops));
        let message = self.ready_message(&observed.partitions, coverage, &observed.warnings);
        events.extend(warning_events(&observed.warnings, &report));

        // A policy not in force is looked up again soon. The Kubernetes
        // source also reconciles the schedule as soon as the registry or the
        // list of policies changes; this bounds the wait where nothing
        // announces a change (a policy that never becomes ready is re-checked
        // without rewriting anything: its reason is stable).
        let busy = !coverage.is_covered()
            || !matches!(lookup, PolicyLookup::Found(_))
            || drops.failure.is_some()
            || (!drops.dropped.is_empty() && self.window.contains(self.now));
        let requeue = if busy { REQUEUE_BUSY } else { REQUEUE };
        if coverage.is_covered() {
            report.condition(condition_types::READY, true, "Reconciled", message.as_str());
            report.event_if_changed(Event::normal("Reconciled", "Reconcile", message));
        } else {
            report.condition(condition_types::READY, false, "PartitionsMissing", message);
        }
        report.events.extend(events);
        report.into_outcome(requeue)
    }

    fn namespace(&self) -> String {
        self.schedule
            .namespace()
            .unwrap_or_else(|| "default".into())
    }

    fn policy_label(&self) -> String {
        format!(
            "{}/{}",
            self.namespace(),
            self.schedule.spec.retention_policy_ref.name
        )
    }

    /// The partitions of `probe_minute` as the catalogue lists them now.
    async fn read_partitions(&self) -> Result<Vec<CatalogPartition>, ReconcileError> {
        catalog::read_partitions(self.pool)
            .await
            .map_err(ReconcileError::database(
                "reading the partitions of probe_minute",
            ))
    }

    fn drop_inputs(&self, longest_contract_days: Option<i32>) -> DropInputs<'_> {
        DropInputs {
            now: self.now,
            window: &self.window,
            longest_contract_days,
        }
    }

    /// Finishes leftovers, then drops every eligible partition, oldest
    /// first, stopping at the first one that is not (history stays
    /// contiguous) or that fails.
    async fn drops(&self, policy: Option<&RetentionPolicySpec>) -> Result<DropRun, ReconcileError> {
        let mut run = DropRun::default();
        let Some(policy) = policy else {
            return Ok(run);
        };
        run.longest_contract_days =
            removal::longest_contract_days(self.pool)
                .await
                .map_err(ReconcileError::database(
                    "reading the longest contract extension",
                ))?;
        if !self.window.contains(self.now) {
            return Ok(run);
        }
        let settings = DropSettings {
            now: self.now,
            lock: self.lock,
            tiers: &policy.tiers,
            actor: &self.actor,
        };
        self.finish_leftovers(settings, &mut run).await?;
        if run.failure.is_some() {
            return Ok(run);
        }
        let partitions = self.read_partitions().await?;
        let candidates = plan_drops(
            &partitions,
            self.drop_inputs(run.longest_contract_days),
            Some(policy),
        );
        let droppable = candidates
            .iter()
            .take_while(|c| c.decision == DropDecision::Droppable)
            .take(MAX_DROPS_PER_RECONCILE);
        for candidate in droppable {
            match removal::detach_and_drop(self.pool, &candidate.name, settings).await {
                Ok(dropped) => run.dropped.push(dropped),
                Err(PartitionError::RowsInsideRetention { partition, rows }) => {
                    run.blocked = Some((partition, rows));
                    break;
                }
                Err(error) => {
                    tracing::warn!(partition = %candidate.name, %error, "partition drop did not complete");
                    run.failure = Some(error.to_string());
                    break;
                }
            }
        }
        Ok(run)
    }

    /// Drops tables the operator detached but never dropped.
    async fn finish_leftovers(
        &self,
        settings: DropSettings<'_>,
        run: &mut DropRun,
    ) -> Result<(), ReconcileError> {
        let leftovers =
            audit::detached_not_dropped(self.pool)
                .await
                .map_err(ReconcileError::database(
                    "looking for detached partitions not yet dropped",
                ))?;
        for (name, recorded) in leftovers {
            match removal::drop_leftover(self.pool, &name, &recorded, settings).await {
                Ok(Some(dropped)) => run.dropped.push(dropped),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(partition = %name, %error, "detached partition not dropped");
                    run.failure = Some(error.to_string());
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn next_drop(&self, candidate: &Candidate, lookup: &PolicyLookup, drops: &DropRun) -> NextDrop {
        let blocked = drops
            .blocked
            .as_ref()
            .filter(|(partition, _)| *partition == candidate.name);
        let mut droppable = candidate.decision == DropDecision::Droppable && blocked.is_none();
        let reason = if self.schedule.spec.suspend {
            droppable = false;
            "suspended: nothing is dropped".to_string()
        } else if candidate.decision == DropDecision::Protected {
            candidate.reason.clone()
        } else if let Some(reason) = self.policy_reason(lookup) {
            reason
        } else if let Some((_, rows)) = blocked {
            format!("{rows} row(s) still inside their own retention: not dropped")
        } else if let (true, Some(failure)) = (droppable, &drops.failure) {
            format!("{}; last attempt: {failure}", candidate.reason)
        } else {
            candidate.reason.clone()
        };
        NextDrop {
            partition: candidate.name.clone(),
            eligible_at: candidate.eligible_at,
            droppable,
            reason,
        }
    }

    /// Why no policy can be used, or None when one is in force. The same
    /// state always gives the same words (no time, no count), so a schedule
    /// waiting on its policy writes nothing until the state changes.
    fn policy_reason(&self, lookup: &PolicyLookup) -> Option<String> {
        let label = self.policy_label();
        match lookup {
            PolicyLookup::Found(_) => None,
            PolicyLookup::Missing(why) => {
                let why = match why {
                    NotInForce::StillListing => {
                        "the operator is still listing RetentionPolicies".to_string()
                    }
                    NotInForce::NoPolicy => "no RetentionPolicy exists".to_string(),
                    NotInForce::OtherInForce(other) => {
                        format!("{other} is the RetentionPolicy in force")
                    }
                    NotInForce::NotPublished => "its reconciler does not enforce it: not \
                         accepted yet, invalid, suspended or withheld, see its Ready condition"
                        .to_string(),
                };
                Some(format!(
                    "RetentionPolicy {label} is not in force ({why}): nothing is dropped"
                ))
            }
            PolicyLookup::Conflict { reason } => Some(format!(
                "RetentionPolicy {label} is in conflict ({reason}): nothing is dropped until \
                 resolved"
            )),
        }
    }

    /// `Covered`: whether the current month and those ahead have
    /// partitions, with a warning event for each creation problem the
    /// condition did not name yet.
    fn set_covered(
        &self,
        report: &mut StatusReport<'_, PartitionSchedule>,
        coverage: &Coverage,
        creation: &CreateReport,
        events: &mut Vec<Event>,
    ) {
        let problems: Vec<String> = creation.problems.iter().map(|p| p.to_string()).collect();
        let (covered, reason, mut message) = if coverage.is_covered() {
            (true, "MonthsPresent", self.covered_message(coverage))
        } else {
            let missing: Vec<String> = coverage
                .missing_required
                .iter()
                .map(|m| m.to_string())
                .collect();
            (
                false,
                "MonthsMissing",
                format!("no partition for {}", missing.join(", ")),
            )
        };
        if !problems.is_empty() {
            message = format!("{message}; {}", problems.join("; "));
            let before = previous_message(report, conditions::COVERED);
            for problem in problems.iter().filter(|p| !before.contains(p.as_str())) {
                tracing::warn!(problem = %problem, "partition not created");
                events.push(Event::warning(
                    "PartitionNotCreated",
                    "Create",
                    problem.clone(),
                ));
            }
        }
        report.condition(conditions::COVERED, covered, reason, message);
    }

    fn covered_message(&self, coverage: &Coverage) -> String {
        let mut message = format!(
            "{} and {} month(s) after it have partitions",
            coverage.current, coverage.months_ahead
        );
        if !coverage.next_month_covered() {
            let next = coverage.current.next();
            let due = next.start()
                - chrono::Duration::days(i64::from(self.schedule.spec.create_ahead_days));
            message.push_str(&format!(
                "; {next} is created from {} (createAheadDays)",
                due.format("%Y-%m-%dT%H:%M:%SZ")
            ));
        }
        message
    }

    /// `DropBlocked`: whether the next drop cannot happen (no policy in
    /// force, rows inside retention), with the drop-blocked metric, a
    /// warning when the rows found inside retention are news and one for a
    /// delayed drop.
    fn set_drop_blocked(
        &self,
        report: &mut StatusReport<'_, PartitionSchedule>,
        lookup: &PolicyLookup,
        drops: &DropRun,
        events: &mut Vec<Event>,
    ) {
        let (blocked, reason, message) = if self.schedule.spec.suspend {
            (
                false,
                "Suspended",
                "suspended: nothing is dropped".to_string(),
            )
        } else if let Some(reason) = self.policy_reason(lookup) {
            let kind = match lookup {
                PolicyLookup::Conflict { .. } => "RetentionPolicyConflict",
                _ => "NoRetentionPolicy",
            };
            (true, kind, reason)
        } else if let Some((partition, rows)) = &drops.blocked {
            (
                true,
                "RowsInsideRetention",
                format!(
                    "{partition}: {rows} row(s) still inside their own retention (tier in force \
                     at the row's minute; tenants without a tier are kept); nothing was dropped"
                ),
            )
        } else if let Some(kept) = still_blocked(report) {
            kept
        } else {
            (false, "NotBlocked", String::new())
        };
        let before = previous_message(report, conditions::DROP_BLOCKED);
        if blocked && reason == "RowsInsideRetention" && before != message {
            tracing::warn!(%message, "partition drop blocked");
            events.push(Event::warning("DropBlocked", "Drop", message.clone()));
        }
        if let Some(failure) = &drops.failure {
            events.push(Event::warning("DropDelayed", "Drop", failure.clone()));
        }
        self.ctx
            .metrics
            .partition_drop_blocked
            .set(i64::from(blocked));
        report.condition(conditions::DROP_BLOCKED, blocked, reason, message);
    }

    fn ready_message(
        &self,
        partitions: &[CatalogPartition],
        coverage: &Coverage,
        warnings: &[String],
    ) -> String {
        let mut message = if self.schedule.spec.suspend {
            "suspended: no partition is created or dropped; ".to_string()
        } else {
            String::new()
        };
        message.push_str(&format!(
            "{} partition(s); {} month(s) covered from {}",
            partitions.len(),
            coverage.months_including_current(),
            coverage.current
        ));
        for warning in warnings {
            message.push_str("; warning: ");
            message.push_str(warning);
        }
        message
    }
}

/// Outside the window no verification runs: a block found earlier for the
/// same candidate still stands.
fn still_blocked(
    report: &StatusReport<'_, PartitionSchedule>,
) -> Option<(bool, &'static str, String)> {
    let previous = report.previous()?;
    let same_candidate = match (&previous.next_drop, &report.status.next_drop) {
        (Some(before), Some(now)) => before.partition == now.partition,
        _ => false,
    };
    let condition = report.previous_condition(conditions::DROP_BLOCKED)?;
    (same_candidate && condition.status == "True" && condition.reason == "RowsInsideRetention")
        .then(|| (true, "RowsInsideRetention", condition.message.clone()))
}

/// The message of condition `type_` before this reconcile ("" when absent).
fn previous_message(report: &StatusReport<'_, PartitionSchedule>, type_: &str) -> String {
    report
        .previous_condition(type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The spec of the policy in force, when there is one.
fn policy_spec(lookup: &PolicyLookup) -> Option<&RetentionPolicySpec> {
    match lookup {
        PolicyLookup::Found(spec) => Some(spec.as_ref()),
        _ => None,
    }
}

fn action_events(creation: &CreateReport, drops: &DropRun) -> Vec<Event> {
    let created = creation
        .created
        .iter()
        .map(|name| Event::normal("PartitionCreated", "Create", format!("created {name}")));
    let dropped = drops.dropped.iter().map(|d| {
        Event::normal(
            "PartitionDropped",
            "Drop",
            format!("detached and dropped {} {}", d.name, d.bounds),
        )
    });
    created.chain(dropped).collect()
}

/// A warning event for each warning the previous status did not show yet,
/// so a standing anomaly is announced once, not every requeue.
fn warning_events(warnings: &[String], report: &StatusReport<'_, PartitionSchedule>) -> Vec<Event> {
    let before = previous_message(report, condition_types::READY);
    warnings
        .iter()
        .filter(|w| !before.contains(w.as_str()))
        .map(|w| {
            tracing::warn!(warning = %w, "partition anomaly");
            Event::warning("PartitionAnomaly", "Observe", w.clone())
        })
        .collect()
}
