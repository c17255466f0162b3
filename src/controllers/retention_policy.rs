//! The `RetentionPolicy` adapter: decides whether this policy may be
//! enforced at all, runs the shrink guard, publishes the privacy text,
//! drives enforcement inside the window and reports drift. The work itself
//! lives in the domain modules; this file only sequences it and turns the
//! results into status, conditions, events and metrics.

use std::time::Duration;

use kube::{Resource, ResourceExt};

use crate::api::common::{CONFIRM_SHRINK_ANNOTATION, condition_types};
use crate::api::retention_policy::{EnforcementRun, ShrinkHold};
use crate::api::{RetentionPolicy, RetentionPolicyStatus};
use crate::metrics::{RetentionRowLabels, RetentionTableLabels};
use crate::retention::count::count_expired;
use crate::retention::directory::InForce;
use crate::retention::enforce::{self, Enforcer, StepReport, next_window_start};
use crate::retention::guard::{self, Candidate, Decision};
use crate::retention::store::{self, Acceptance, AcceptedAs, DriftRow, EnforcedPolicy, RunRow};
use crate::retention::tiers::{Table, WindowChange, policy_hash, spec_problems};
use crate::retention::{RetentionError, privacy};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{
    Event, Managed, Outcome, ReconcileError, StatusReport, begin_status,
};

impl From<RetentionError> for ReconcileError {
    fn from(error: RetentionError) -> Self {
        match error {
            RetentionError::Database { context, source } => {
                ReconcileError::Database { context, source }
            }
            other => ReconcileError::Retention(other),
        }
    }
}

/// How old a drift count may get before it is counted again (outside a run).
pub const DRIFT_REFRESH: Duration = Duration::from_secs(3600);
/// Condition types of this kind besides `Ready`.
pub const CONFLICT: &str = "Conflict";
pub const SHRINK_HELD: &str = "ShrinkHeld";
/// True while tenants with data have no tenant_tier_history row.
pub const UNTIERED_TENANTS: &str = "UntieredTenants";

const REQUEUE: Duration = Duration::from_secs(300);
const REQUEUE_RUNNING: Duration = Duration::from_secs(1);
const REQUEUE_NOT_READY: Duration = Duration::from_secs(5);
const REQUEUE_WITHHELD: Duration = Duration::from_secs(60);

impl Managed for RetentionPolicy {
    type Status = RetentionPolicyStatus;

    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Outcome<Self::Status>, ReconcileError> {
        Ok(reconcile_policy(self, ctx).await?)
    }
}

/// One reconcile: validate → decide whether this policy is the one in force
/// → accept the tier table or hold a shrink → publish the privacy text →
/// enforce → count drift → share the enforced table with the partition
/// guard → status and events. Every stop on the way deletes nothing.
async fn reconcile_policy(
    policy: &RetentionPolicy,
    ctx: &Context,
) -> Result<Outcome<RetentionPolicyStatus>, RetentionError> {
    let pass = Pass::new(policy, ctx);
    let pool = match pass.validate() {
        Ok(pool) => pool,
        Err(stopped) => return Ok(pass.report_stopped(stopped)),
    };
    if let Some(withheld) = pass.not_in_force() {
        let stopped = pass.withhold(&pool, withheld).await?;
        return Ok(pass.report_stopped(stopped));
    }
    let accepted = pass.accept_or_hold(&pool).await?;
    // At once: the table now stored is the one enforcement deletes by, so it
    // is the one partition drops go by, even when a later step fails.
    pass.share_enforced(&accepted.enforced);
    let hold = pass.assess_hold(&pool, &accepted.decision).await?;
    let published = pass.publish_privacy_text(&accepted.enforced).await;
    let enforcement = pass.enforce(&pool, &accepted.enforced).await?;
    let drift = pass
        .refresh_drift(&pool, &accepted.enforced, &enforcement.step)
        .await?;
    let last_run = store::latest_run(&pool).await?;
    Ok(pass.report_enforcing(Enforcing {
        accepted,
        hold,
        published,
        enforcement,
        drift,
        last_run,
    }))
}

/// The policy, where it lives and the status this reconcile starts from.
struct Pass<'a> {
    policy: &'a RetentionPolicy,
    ctx: &'a Context,
    namespace: String,
    name: String,
    /// `namespace/name`
    label: String,
    /// `policy_hash` of the spec's tier table.
    hash: String,
    /// The stored status with observedGeneration (and `InvalidSpec` when
    /// the admission rules are broken).
    status: RetentionPolicyStatus,
    /// Broken admission rules, then broken tier-table rules.
    problems: Vec<String>,
}

/// Why a reconcile stopped before enforcing: nothing is deleted.
enum Stopped {
    /// The spec breaks a rule.
    Invalid(Vec<String>),
    /// Valid, but there is no database to enforce in.
    NoDatabase,
    /// Valid, but not the one policy in force.
    Withheld(Box<Known>),
}

/// What a withheld policy's status shows without deciding anything.
struct Known {
    why: Withheld,
    /// The tier table enforced (by the policy in force, or before).
    enforced_hash: Option<String>,
    last_enforcement: Option<EnforcementRun>,
}

/// Why this policy is not the one enforced, and when to look again.
struct Withheld {
    reason: &'static str,
    message: String,
    requeue: Duration,
    /// Two or more policies are in force (not just another one, or none yet).
    conflict: bool,
}

/// The tier table to enforce and how the shrink guard decided.
struct Accepted {
    enforced: EnforcedPolicy,
    decision: Decision,
    /// The `PolicyAccepted` note, when a new tier table was stored.
    accepted_note: Option<String>,
}

/// A shrink the guard holds back.
struct Held {
    hold: ShrinkHold,
    message: String,
    /// First reconcile that holds this hash: audited, announced by an event.
    new: bool,
}

/// What one enforcement step did, and the settings it ran with.
struct Enforcement {
    step: StepReport,
    settings: enforce::Settings,
}

/// Everything the enforcing path's status is built from.
struct Enforcing {
    accepted: Accepted,
    hold: Option<Held>,
    published: Result<(), String>,
    enforcement: Enforcement,
    drift: DriftRow,
    last_run: Option<RunRow>,
}

impl<'a> Pass<'a> {
    fn new(policy: &'a RetentionPolicy, ctx: &'a Context) -> Self {
        let namespace = policy.namespace().unwrap_or_else(|| "default".into());
        let name = policy.name_any();
        let (status, mut problems) = begin_status(policy, ctx);
        if problems.is_empty() {
            problems = spec_problems(&policy.spec);
        }
        Pass {
            policy,
            ctx,
            label: format!("{namespace}/{name}"),
            namespace,
            name,
            hash: policy_hash(&policy.spec.tiers),
            status,
            problems,
        }
    }

    /// A broken policy is withdrawn from the partition guard at once: it
    /// must never cause a delete, partition drops included. A valid one
    /// needs a database to be enforced in.
    fn validate(&self) -> Result<sqlx::PgPool, Stopped> {
        if !self.problems.is_empty() {
            self.ctx
                .enforced_policies
                .withdraw(&self.namespace, &self.name);
            return Err(Stopped::Invalid(self.problems.clone()));
        }
        self.ctx.db.clone().ok_or(Stopped::NoDatabase)
    }

    /// Whether another policy is in force, two are, or the list is still
    /// loading (then this one may not be enforced), and when to look again.
    fn not_in_force(&self) -> Option<Withheld> {
        let (reason, message, requeue, conflict) = match self.ctx.policies.in_force() {
            InForce::One { label, .. } if label == self.label => return None,
            InForce::One { label, .. } => (
                "NotInForce",
                format!("{label} is the RetentionPolicy in force; nothing is deleted for this one"),
                REQUEUE_WITHHELD,
                false,
            ),
            InForce::Conflict(labels) => (
                "Conflict",
                format!(
                    "{} RetentionPolicies are in force ({}); nothing is deleted until exactly one remains",
                    labels.len(),
                    labels.join(", ")
                ),
                REQUEUE_WITHHELD,
                true,
            ),
            InForce::Missing => (
                "NotInForce",
                "the operator does not list this RetentionPolicy yet; nothing is deleted"
                    .to_string(),
                REQUEUE_NOT_READY,
                false,
            ),
            InForce::NotReady => (
                "NotReady",
                "the list of RetentionPolicies is still loading; nothing is deleted".to_string(),
                REQUEUE_NOT_READY,
                false,
            ),
        };
        Some(Withheld {
            reason,
            message,
            requeue,
            conflict,
        })
    }

    /// Takes a withheld policy away from the partition guard (marked as in
    /// conflict when it is), then reads what is known without deciding
    /// anything: the tier table enforced and the last run.
    async fn withhold(
        &self,
        pool: &sqlx::PgPool,
        why: Withheld,
    ) -> Result<Stopped, RetentionError> {
        if why.conflict {
            self.ctx
                .enforced_policies
                .conflict(&self.namespace, &self.name, why.message.clone());
        } else {
            self.ctx
                .enforced_policies
                .withdraw(&self.namespace, &self.name);
        }
        let enforced_hash = store::enforced_policy(pool)
            .await?
            .map(|enforced| enforced.policy_hash);
        let last_enforcement = store::latest_run(pool)
            .await?
            .map(|run| enforcement_run(&run));
        Ok(Stopped::Withheld(Box::new(Known {
            why,
            enforced_hash,
            last_enforcement,
        })))
    }

    /// Runs the shrink guard and stores an accepted tier table. Returns the
    /// tier table to enforce: the new one, or the stored one while a shrink
    /// is held.
    async fn accept_or_hold(&self, pool: &sqlx::PgPool) -> Result<Accepted, RetentionError> {
        let stored = store::enforced_policy(pool).await?;
        let decision = guard::decide(stored.as_ref(), &self.candidate());
        let (enforced, accepted_note) = match (&decision, stored) {
            (
                Decision::Accept {
                    accepted_as,
                    changes,
                    guard_percent,
                },
                previous,
            ) => {
                let enforced = self
                    .store_accepted(pool, *accepted_as, changes, *guard_percent, previous)
                    .await?;
                (enforced, self.acceptance_note(*accepted_as, changes))
            }
            (_, Some(previous)) => (previous, None),
            (_, None) => {
                return Err(RetentionError::Invariant(
                    "the guard kept a tier table that was never stored".into(),
                ));
            }
        };
        Ok(Accepted {
            enforced,
            decision,
            accepted_note,
        })
    }

    /// What the shrink guard judges: this policy's tier table and its
    /// confirmation annotation, if any.
    fn candidate(&self) -> Candidate<'_> {
        Candidate {
            policy: &self.label,
            generation: self.policy.meta().generation,
            spec: &self.policy.spec,
            policy_hash: &self.hash,
            confirmation: self
                .policy
                .annotations()
                .get(CONFIRM_SHRINK_ANNOTATION)
                .map(String::as_str),
        }
    }

    /// Stores the accepted tier table (with its audit of what changed) and
    /// returns it as the table now enforced.
    async fn store_accepted(
        &self,
        pool: &sqlx::PgPool,
        accepted_as: AcceptedAs,
        changes: &[WindowChange],
        guard_percent: Option<u32>,
        previous: Option<EnforcedPolicy>,
    ) -> Result<EnforcedPolicy, RetentionError> {
        let now = self.ctx.clock.now();
        let generation = self.policy.meta().generation;
        let previous_hash = previous.map(|p| p.policy_hash);
        store::accept(
            pool,
            &Acceptance {
                policy: &self.label,
                generation,
                spec: &self.policy.spec,
                policy_hash: &self.hash,
                accepted_as,
                previous_hash: previous_hash.as_deref(),
                changes,
                guard_percent,
                at: now,
            },
        )
        .await?;
        Ok(EnforcedPolicy {
            policy_hash: self.hash.clone(),
            policy: self.label.clone(),
            generation,
            spec: self.policy.spec.clone(),
            accepted_at: now,
            accepted_as: accepted_as.as_str().into(),
        })
    }

    /// The event text of an acceptance that changed the tier table; none
    /// when the tiers stayed the same.
    fn acceptance_note(&self, accepted_as: AcceptedAs, changes: &[WindowChange]) -> Option<String> {
        let hash = &self.hash;
        match accepted_as {
            AcceptedAs::SameTiers => None,
            AcceptedAs::FirstPolicy => Some(format!("first tier table {hash} is now enforced")),
            _ => {
                let what: Vec<String> = changes.iter().map(ToString::to_string).collect();
                Some(format!(
                    "tier table {hash} is now enforced ({}): {}",
                    accepted_as.as_str(),
                    what.join(", ")
                ))
            }
        }
    }

    /// For a held shrink: what it would delete (counted once per held
    /// hash: counting is a scan), the message that says how to confirm it,
    /// and an audit row the first time this hash is held.
    async fn assess_hold(
        &self,
        pool: &sqlx::PgPool,
        decision: &Decision,
    ) -> Result<Option<Held>, RetentionError> {
        let Decision::Hold {
            shrinks,
            guard_percent,
            ..
        } = decision
        else {
            return Ok(None);
        };
        let hash = self.hash.as_str();
        let previous = self
            .policy
            .status
            .as_ref()
            .and_then(|s| s.shrink_hold.clone());
        let rows_would_delete = match previous.as_ref() {
            Some(hold) if hold.policy_hash == hash => hold.rows_would_delete.clone(),
            _ => count_expired(pool, &self.policy.spec.tiers, self.ctx.clock.now())
                .await?
                .by_table(),
        };
        let shrinking: Vec<String> = shrinks.iter().map(ToString::to_string).collect();
        let confirmation = self
            .policy
            .annotations()
            .get(CONFIRM_SHRINK_ANNOTATION)
            .cloned();
        let mut message = format!(
            "{} shortens retention by more than {guard_percent}%: {}; it would delete {} row(s) now. \
             Set annotation {CONFIRM_SHRINK_ANNOTATION}={hash} to apply it",
            hash,
            shrinking.join(", "),
            rows_would_delete.values().sum::<i64>()
        );
        if let Some(value) = &confirmation {
            message.push_str(&format!(
                " (the annotation is {value:?}, which is not this hash)"
            ));
        }
        let new = previous.as_ref().map(|h| h.policy_hash.as_str()) != Some(hash);
        if new {
            store::audit(
                pool,
                self.ctx.clock.now(),
                store::actions::SHRINK_HELD,
                &store::subject(&self.label),
                serde_json::json!({
                    "policyHash": hash,
                    "generation": self.policy.meta().generation,
                    "shrinking": shrinking,
                    "maxShrinkPercent": guard_percent,
                    "rowsWouldDelete": rows_would_delete,
                }),
            )
            .await?;
        }
        Ok(Some(Held {
            hold: ShrinkHold {
                policy_hash: hash.to_string(),
                shrinking,
                rows_would_delete,
            },
            message,
            new,
        }))
    }

    /// Publishes the privacy text of the enforced tier table. A failure is
    /// reported, never fatal: enforcement continues.
    async fn publish_privacy_text(&self, enforced: &EnforcedPolicy) -> Result<(), String> {
        self.ctx
            .publisher
            .publish(
                &self.namespace,
                &enforced.spec.privacy_policy.config_map_name,
                privacy::render_all(&enforced.spec, enforced.generation),
            )
            .await
            .map_err(|error| error.to_string())
    }

    /// Runs one enforcement step (when suspended, only closes a run left
    /// open) and counts its deletions and finished runs in the metrics.
    async fn enforce(
        &self,
        pool: &sqlx::PgPool,
        enforced: &EnforcedPolicy,
    ) -> Result<Enforcement, RetentionError> {
        let settings = enforce::Settings::from_spec(&self.policy.spec)?;
        let subject = store::subject(&self.label);
        let enforcer = Enforcer {
            pool,
            tiers: &enforced.spec.tiers,
            policy_hash: &enforced.policy_hash,
            settings: &settings,
            clock: self.ctx.clock.as_ref(),
            subject: &subject,
        };
        let step = if self.policy.spec.suspend {
            StepReport {
                finished: enforcer.close_stale().await?,
                ..StepReport::default()
            }
        } else {
            enforcer.step().await?
        };
        let metrics = &self.ctx.metrics;
        for (table, tiers) in &step.deleted {
            for (tier, rows) in tiers {
                metrics
                    .retention_deleted_rows
                    .get_or_create(&RetentionRowLabels {
                        table: table.clone(),
                        tier: tier.clone(),
                    })
                    .inc_by(u64::try_from(*rows).unwrap_or(0));
            }
        }
        for run in &step.finished {
            metrics.retention_run_duration.observe(run.active_seconds);
        }
        Ok(Enforcement { step, settings })
    }

    /// Counts drift when the last count is stale (never while a run is
    /// deleting in the window, unless there is no count at all), stores it
    /// and sets the drift metrics.
    async fn refresh_drift(
        &self,
        pool: &sqlx::PgPool,
        enforced: &EnforcedPolicy,
        step: &StepReport,
    ) -> Result<DriftRow, RetentionError> {
        let now = self.ctx.clock.now();
        let last = store::drift(pool).await?;
        let refresh =
            chrono::Duration::from_std(DRIFT_REFRESH).unwrap_or(chrono::Duration::hours(1));
        let stale = match &last {
            None => true,
            Some(drift) => {
                drift.policy_hash != enforced.policy_hash
                    || now - drift.counted_at >= refresh
                    || now < drift.counted_at
                    || !step.finished.is_empty()
            }
        };
        let drift = match last {
            Some(drift) if !stale || step.in_progress() => drift,
            _ => {
                let counts = count_expired(pool, &enforced.spec.tiers, now).await?;
                let drift = DriftRow {
                    policy_hash: enforced.policy_hash.clone(),
                    counted_at: now,
                    rows_by_table: counts.by_table(),
                    tenants_without_tier: counts.tenants_without_tier,
                    untiered_tenant_examples: counts.untiered_examples,
                };
                store::save_drift(pool, &drift).await?;
                drift
            }
        };
        for table in Table::ALL {
            let rows = drift.rows_by_table.get(table.name()).copied().unwrap_or(0);
            self.ctx
                .metrics
                .retention_drift_rows
                .get_or_create(&RetentionTableLabels {
                    table: table.name().to_string(),
                })
                .set(rows);
        }
        self.ctx
            .metrics
            .retention_tenants_without_tier
            .set(drift.tenants_without_tier);
        Ok(drift)
    }

    /// Tells the partition guard which tier table is enforced, or that
    /// none is while suspended (nothing is deleted, by partition drops either).
    fn share_enforced(&self, enforced: &EnforcedPolicy) {
        if self.policy.spec.suspend {
            self.ctx
                .enforced_policies
                .withdraw(&self.namespace, &self.name);
        } else {
            self.ctx
                .enforced_policies
                .publish(&self.namespace, &self.name, enforced.spec.clone());
        }
    }

    /// Status and events of a reconcile that stopped before enforcing.
    fn report_stopped(self, stopped: Stopped) -> Outcome<RetentionPolicyStatus> {
        let mut report = self.report();
        let requeue = match stopped {
            Stopped::Invalid(problems) => {
                let message = problems.join("; ");
                report.condition(
                    condition_types::READY,
                    false,
                    "InvalidSpec",
                    format!("invalid spec, nothing is deleted: {message}"),
                );
                if report.was(condition_types::READY) != Some(false) || report.previous().is_none()
                {
                    report.event(Event::warning("InvalidSpec", "Validate", message));
                }
                REQUEUE
            }
            Stopped::NoDatabase => {
                report.condition(
                    condition_types::READY,
                    true,
                    "Reconciled",
                    "tier table valid; no database configured, nothing is enforced",
                );
                REQUEUE
            }
            Stopped::Withheld(known) => {
                let Known {
                    why,
                    enforced_hash,
                    last_enforcement,
                } = *known;
                if why.conflict {
                    if report.was(CONFLICT) != Some(true) {
                        report.event(Event::warning("Conflict", "Enforce", why.message.clone()));
                    }
                    report.condition(CONFLICT, true, "MultiplePolicies", why.message.clone());
                } else {
                    report.condition(
                        CONFLICT,
                        false,
                        "NoConflict",
                        "no other RetentionPolicy is in force",
                    );
                }
                report.condition(condition_types::READY, false, why.reason, why.message);
                if enforced_hash.is_some() {
                    report.status.enforced_policy_hash = enforced_hash;
                }
                report.status.last_enforcement = last_enforcement;
                report.status.next_enforcement_at = None;
                why.requeue
            }
        };
        finish_report(report, requeue)
    }

    /// Status, conditions and events of a reconcile that enforced (or, when
    /// suspended, kept the tier table without deleting), and when to look
    /// again: at once while a run is deleting, soon after a failed publish,
    /// else when the next window opens (at most `REQUEUE` away).
    fn report_enforcing(self, done: Enforcing) -> Outcome<RetentionPolicyStatus> {
        let suspended = self.policy.spec.suspend;
        let now = self.ctx.clock.now();
        let mut report = self.report();
        let Enforcing {
            accepted,
            hold,
            published,
            enforcement: Enforcement { step, settings },
            drift,
            last_run,
        } = done;
        report.condition(
            CONFLICT,
            false,
            "SinglePolicy",
            "this is the only RetentionPolicy in force",
        );
        if let Some(note) = accepted.accepted_note.clone() {
            report.event(Event::normal("PolicyAccepted", "Accept", note));
        }
        report.status.enforced_policy_hash = Some(accepted.enforced.policy_hash.clone());
        set_shrink_held(&mut report, hold);
        for run in &step.finished {
            report.event(Event::normal("EnforcementRun", "Enforce", run_note(run)));
        }
        let (untiered, reason, message) = untiered_condition(&drift);
        report.condition(UNTIERED_TENANTS, untiered, reason, message);
        report.status.drift = drift.rows_by_table;
        report.status.tenants_without_tier = Some(drift.tenants_without_tier);
        report.status.last_enforcement = last_run.as_ref().map(enforcement_run);
        report.status.next_enforcement_at =
            (!suspended).then(|| next_window_start(&settings.window, now));

        set_ready(&mut report, &accepted, &published, suspended);
        let requeue = if step.in_progress() {
            REQUEUE_RUNNING
        } else if published.is_err() {
            REQUEUE_WITHHELD
        } else {
            let until_window = (next_window_start(&settings.window, now) - now)
                .to_std()
                .unwrap_or(REQUEUE);
            until_window.clamp(Duration::from_secs(1), REQUEUE)
        };
        finish_report(report, requeue)
    }

    /// The report every path fills: the starting status with the policy hash.
    fn report(self) -> StatusReport<'a, RetentionPolicy> {
        let mut report = StatusReport::new(self.policy, self.status, self.ctx.clock.now());
        report.status.policy_hash = Some(self.hash);
        report
    }
}

/// `ShrinkHeld` and `status.shrinkHold`; a Warning the first time a hash is held.
fn set_shrink_held(report: &mut StatusReport<'_, RetentionPolicy>, hold: Option<Held>) {
    match hold {
        Some(Held { hold, message, new }) => {
            if new {
                report.event(Event::warning("ShrinkHeld", "Guard", message.clone()));
            }
            report.condition(SHRINK_HELD, true, "ShrinkBeyondGuard", message);
            report.status.shrink_hold = Some(hold);
        }
        None => {
            report.status.shrink_hold = None;
            report.condition(
                SHRINK_HELD,
                false,
                "NoShrinkHeld",
                "the tier table in force is the one enforced",
            );
        }
    }
}

/// `Ready` of an enforcing policy: False only when the privacy text could
/// not be published (with a Warning); else which tier table is enforced.
fn set_ready(
    report: &mut StatusReport<'_, RetentionPolicy>,
    accepted: &Accepted,
    published: &Result<(), String>,
    suspended: bool,
) {
    let enforced_hash = &accepted.enforced.policy_hash;
    let short_hash = &enforced_hash[..12.min(enforced_hash.len())];
    match (published, &accepted.decision) {
        (Err(error), _) => {
            let message =
                format!("privacy-policy text not published (enforcement continues): {error}");
            report.condition(condition_types::READY, false, "PublishFailed", message.clone());
            report.event(Event::warning("PublishFailed", "Publish", message));
        }
        _ if suspended => report.condition(
            condition_types::READY,
            true,
            "Suspended",
            format!("suspended: nothing is deleted; tier table {short_hash} accepted"),
        ),
        (_, Decision::Hold { .. }) => report.condition(
            condition_types::READY,
            true,
            "ShrinkHeld",
            format!("enforcing the previous tier table {short_hash}; the new one is held (see ShrinkHeld)"),
        ),
        _ => report.condition(
            condition_types::READY,
            true,
            "Reconciled",
            format!("enforcing tier table {short_hash}"),
        ),
    }
}

/// Ready first, whatever order the conditions were added in (people and
/// tools read conditions[0]), and a `Reconciled` event when a condition
/// changed and nothing else was said: a running enforcement updates its
/// counters every slice, which is no news.
fn finish_report(
    mut report: StatusReport<'_, RetentionPolicy>,
    requeue_after: Duration,
) -> Outcome<RetentionPolicyStatus> {
    report
        .status
        .conditions
        .sort_by_key(|c| c.type_ != condition_types::READY);
    let summary = |status: Option<&RetentionPolicyStatus>| -> Vec<(String, String, String)> {
        status
            .map(|s| {
                s.conditions
                    .iter()
                    .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let changed = summary(report.previous()) != summary(Some(&report.status));
    if changed && report.events.is_empty() {
        let note = report
            .status
            .conditions
            .first()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        report.event(Event::normal("Reconciled", "Reconcile", note));
    }
    report.into_outcome(requeue_after)
}

/// The `EnforcementRun` note of a finished run.
fn run_note(run: &RunRow) -> String {
    let rows: Vec<String> = run
        .rows_by_table()
        .iter()
        .map(|(table, n)| format!("{table} {n}"))
        .collect();
    format!(
        "run of the window at {} ended ({}{}): {} row(s) deleted{}",
        run.window_start.format("%Y-%m-%d %H:%M UTC"),
        run.outcome.as_deref().unwrap_or("?"),
        if run.capped() { ", capped" } else { "" },
        run.rows_total,
        if rows.is_empty() {
            String::new()
        } else {
            format!(" ({})", rows.join(", "))
        }
    )
}

/// `UntieredTenants` from the last drift count: status, reason, message
/// (the count and a few tenant ids).
pub(crate) fn untiered_condition(drift: &DriftRow) -> (bool, &'static str, String) {
    let count = drift.tenants_without_tier;
    if count == 0 {
        return (
            false,
            "AllTenantsTiered",
            "every tenant with data has a tenant_tier_history row".into(),
        );
    }
    let examples: Vec<String> = drift
        .untiered_tenant_examples
        .iter()
        .map(|tenant| tenant.to_string())
        .collect();
    let more = usize::try_from(count).unwrap_or(usize::MAX) > examples.len();
    (
        true,
        "TenantsWithoutTier",
        format!(
            "{count} tenant(s) with data have no tenant_tier_history row: their rows are never pruned \
             and keep every partition holding them from being dropped (DropBlocked); \
             {} (counted at {})",
            if examples.is_empty() {
                "their ids are named at the next count".to_string()
            } else {
                format!(
                    "e.g. {}{}",
                    examples.join(", "),
                    if more { ", ..." } else { "" }
                )
            },
            drift.counted_at.format("%Y-%m-%d %H:%M UTC"),
        ),
    )
}

/// The status view of a run.
fn enforcement_run(run: &RunRow) -> EnforcementRun {
    EnforcementRun {
        started_at: run.started_at,
        finished_at: run.finished_at,
        rows_deleted: run.rows_by_table(),
        capped: run.capped(),
    }
}
