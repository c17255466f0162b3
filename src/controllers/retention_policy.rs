//! The `RetentionPolicy` adapter: decides whether this policy may be
//! enforced at all, runs the shrink guard, publishes the privacy text,
//! drives enforcement inside the window and reports drift. The work itself
//! lives in the domain modules; this file only sequences it and turns the
//! results into status, conditions, events and metrics.

use std::time::Duration;

use kube::{Resource, ResourceExt};

use crate::api::common::{
    CONFIRM_SHRINK_ANNOTATION, ConditionUpdate, condition_types, set_condition,
};
use crate::api::retention_policy::{EnforcementRun, ShrinkHold};
use crate::api::{RetentionPolicy, RetentionPolicyStatus};
use crate::metrics::{RetentionRowLabels, RetentionTableLabels};
use crate::retention::count::count_expired;
use crate::retention::directory::InForce;
use crate::retention::enforce::{self, Enforcer, StepReport, next_window_start};
use crate::retention::guard::{self, Candidate, Decision};
use crate::retention::store::{self, Acceptance, AcceptedAs, DriftRow, EnforcedPolicy, RunRow};
use crate::retention::tiers::{Table, policy_hash, spec_problems};
use crate::retention::{RetentionError, privacy};
use crate::runtime::context::Context;
use crate::runtime::reconcile::{Event, EventType, Managed, Outcome, ReconcileError, begin_status};

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

/// `map_err` adapter that adds what was being done to a database error.
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

/// What the reconcile has decided so far.
struct Pass<'a> {
    policy: &'a RetentionPolicy,
    ctx: &'a Context,
    namespace: String,
    name: String,
    /// `namespace/name`
    label: String,
    status: RetentionPolicyStatus,
    events: Vec<Event>,
}

impl Pass<'_> {
    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        set_condition(
            &mut self.status.conditions,
            ConditionUpdate {
                type_,
                status,
                reason,
                message: message.into(),
            },
            self.policy.meta().generation,
            self.ctx.clock.now(),
        );
    }

    fn event(&mut self, type_: EventType, reason: &str, action: &str, note: impl Into<String>) {
        self.events.push(Event {
            type_,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
        });
    }

    /// The previous value of a condition, if any.
    fn was(&self, type_: &str) -> Option<bool> {
        self.policy
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| c.status == "True")
    }

    fn finish(mut self, requeue_after: Duration) -> Outcome<RetentionPolicyStatus> {
        // Ready first, whatever order the conditions were added in: people
        // and tools read conditions[0].
        self.status
            .conditions
            .sort_by_key(|c| c.type_ != condition_types::READY);
        // An event when a condition changes, not on every status write: a
        // running enforcement updates its counters every slice.
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
        let changed = summary(self.policy.status.as_ref()) != summary(Some(&self.status));
        if changed && self.events.is_empty() {
            let note = self
                .status
                .conditions
                .first()
                .map(|c| c.message.clone())
                .unwrap_or_default();
            self.event(EventType::Normal, "Reconciled", "Reconcile", note);
        }
        Outcome {
            status: self.status,
            events: self.events,
            requeue_after,
        }
    }
}

async fn reconcile_policy(
    policy: &RetentionPolicy,
    ctx: &Context,
) -> Result<Outcome<RetentionPolicyStatus>, RetentionError> {
    let namespace = policy.namespace().unwrap_or_else(|| "default".into());
    let name = policy.name_any();
    let (status, mut problems) = begin_status(policy, ctx);
    if problems.is_empty() {
        problems = spec_problems(&policy.spec);
    }
    let mut pass = Pass {
        policy,
        ctx,
        label: format!("{namespace}/{name}"),
        namespace,
        name,
        status,
        events: Vec::new(),
    };
    let hash = policy_hash(&policy.spec.tiers);
    pass.status.policy_hash = Some(hash.clone());

    if !problems.is_empty() {
        // A broken policy must never cause a delete, partition drops included.
        pass.ctx
            .enforced_policies
            .withdraw(&pass.namespace, &pass.name);
        let message = problems.join("; ");
        pass.condition(
            condition_types::READY,
            false,
            "InvalidSpec",
            format!("invalid spec, nothing is deleted: {message}"),
        );
        if pass.was(condition_types::READY) != Some(false) || policy.status.is_none() {
            pass.event(EventType::Warning, "InvalidSpec", "Validate", message);
        }
        return Ok(pass.finish(REQUEUE));
    }
    let Some(pool) = ctx.db.clone() else {
        pass.condition(
            condition_types::READY,
            true,
            "Reconciled",
            "tier table valid; no database configured, nothing is enforced",
        );
        return Ok(pass.finish(REQUEUE));
    };
    if let Some(requeue) = withhold(&mut pass, &pool).await? {
        return Ok(pass.finish(requeue));
    }
    pass.condition(
        CONFLICT,
        false,
        "SinglePolicy",
        "this is the only RetentionPolicy in force",
    );

    let (enforced, decision) = accept_or_hold(&mut pass, &pool, &hash).await?;
    pass.status.enforced_policy_hash = Some(enforced.policy_hash.clone());
    report_hold(&mut pass, &pool, &hash, &decision).await?;

    let published = ctx
        .publisher
        .publish(
            &pass.namespace,
            &enforced.spec.privacy_policy.config_map_name,
            privacy::render_all(&enforced.spec, enforced.generation),
        )
        .await;

    let step = enforce_step(&mut pass, &pool, &enforced).await?;
    report_drift(&mut pass, &pool, &enforced, &step).await?;
    pass.status.last_enforcement = store::latest_run(&pool)
        .await?
        .map(|run| enforcement_run(&run));
    let settings = enforce::Settings::from_spec(&policy.spec)?;
    let now = ctx.clock.now();
    pass.status.next_enforcement_at =
        (!policy.spec.suspend).then(|| next_window_start(&settings.window, now));

    if policy.spec.suspend {
        // Suspended: nothing is deleted, by partition drops either.
        pass.ctx
            .enforced_policies
            .withdraw(&pass.namespace, &pass.name);
    } else {
        pass.ctx
            .enforced_policies
            .publish(&pass.namespace, &pass.name, enforced.spec.clone());
    }

    let short_hash = &enforced.policy_hash[..12.min(enforced.policy_hash.len())];
    match (&published, &decision) {
        (Err(error), _) => {
            let message = format!("privacy-policy text not published (enforcement continues): {error}");
            pass.condition(condition_types::READY, false, "PublishFailed", message.clone());
            pass.event(EventType::Warning, "PublishFailed", "Publish", message);
        }
        _ if policy.spec.suspend => pass.condition(
            condition_types::READY,
            true,
            "Suspended",
            format!("suspended: nothing is deleted; tier table {short_hash} accepted"),
        ),
        (_, Decision::Hold { .. }) => pass.condition(
            condition_types::READY,
            true,
            "ShrinkHeld",
            format!("enforcing the previous tier table {short_hash}; the new one is held (see ShrinkHeld)"),
        ),
        _ => pass.condition(
            condition_types::READY,
            true,
            "Reconciled",
            format!("enforcing tier table {short_hash}"),
        ),
    }

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
    Ok(pass.finish(requeue))
}

/// When this policy may not be enforced (no policy in force, two of them,
/// or the list still loading): fills the status with why and what is known,
/// and returns when to look again. Nothing is deleted.
async fn withhold(
    pass: &mut Pass<'_>,
    pool: &sqlx::PgPool,
) -> Result<Option<Duration>, RetentionError> {
    let (reason, message, requeue, conflict) = match pass.ctx.policies.in_force() {
        InForce::One { label, .. } if label == pass.label => return Ok(None),
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
            "the operator does not list this RetentionPolicy yet; nothing is deleted".to_string(),
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
    if conflict {
        pass.ctx
            .enforced_policies
            .conflict(&pass.namespace, &pass.name, message.clone());
        if pass.was(CONFLICT) != Some(true) {
            pass.event(EventType::Warning, "Conflict", "Enforce", message.clone());
        }
        pass.condition(CONFLICT, true, "MultiplePolicies", message.clone());
    } else {
        pass.ctx
            .enforced_policies
            .withdraw(&pass.namespace, &pass.name);
        pass.condition(
            CONFLICT,
            false,
            "NoConflict",
            "no other RetentionPolicy is in force",
        );
    }
    pass.condition(condition_types::READY, false, reason, message);
    // What is known without deciding anything.
    if let Some(enforced) = store::enforced_policy(pool).await? {
        pass.status.enforced_policy_hash = Some(enforced.policy_hash);
    }
    pass.status.last_enforcement = store::latest_run(pool)
        .await?
        .map(|run| enforcement_run(&run));
    pass.status.next_enforcement_at = None;
    Ok(Some(requeue))
}

/// Runs the shrink guard and stores an accepted tier table. Returns the
/// tier table to enforce and the decision.
async fn accept_or_hold(
    pass: &mut Pass<'_>,
    pool: &sqlx::PgPool,
    hash: &str,
) -> Result<(EnforcedPolicy, Decision), RetentionError> {
    let policy = pass.policy;
    let now = pass.ctx.clock.now();
    let enforced = store::enforced_policy(pool).await?;
    let candidate = Candidate {
        policy: &pass.label,
        generation: policy.meta().generation,
        spec: &policy.spec,
        policy_hash: hash,
        confirmation: policy
            .annotations()
            .get(CONFIRM_SHRINK_ANNOTATION)
            .map(String::as_str),
    };
    let decision = guard::decide(enforced.as_ref(), &candidate);
    let chosen = match (&decision, enforced) {
        (
            Decision::Accept {
                accepted_as,
                changes,
                guard_percent,
            },
            previous,
        ) => {
            let previous_hash = previous.as_ref().map(|p| p.policy_hash.clone());
            store::accept(
                pool,
                &Acceptance {
                    policy: &pass.label,
                    generation: policy.meta().generation,
                    spec: &policy.spec,
                    policy_hash: hash,
                    accepted_as: *accepted_as,
                    previous_hash: previous_hash.as_deref(),
                    changes,
                    guard_percent: *guard_percent,
                    at: now,
                },
            )
            .await?;
            if *accepted_as != AcceptedAs::SameTiers {
                let what: Vec<String> = changes.iter().map(ToString::to_string).collect();
                let note = match accepted_as {
                    AcceptedAs::FirstPolicy => format!("first tier table {hash} is now enforced"),
                    _ => format!(
                        "tier table {hash} is now enforced ({}): {}",
                        accepted_as.as_str(),
                        what.join(", ")
                    ),
                };
                pass.event(EventType::Normal, "PolicyAccepted", "Accept", note);
            }
            EnforcedPolicy {
                policy_hash: hash.to_string(),
                policy: pass.label.clone(),
                generation: policy.meta().generation,
                spec: policy.spec.clone(),
                accepted_at: now,
                accepted_as: accepted_as.as_str().into(),
            }
        }
        (_, Some(previous)) => previous,
        (_, None) => {
            return Err(RetentionError::Invariant(
                "the guard kept a tier table that was never stored".into(),
            ));
        }
    };
    Ok((chosen, decision))
}

/// Status, condition, event and audit of a held shrink.
async fn report_hold(
    pass: &mut Pass<'_>,
    pool: &sqlx::PgPool,
    hash: &str,
    decision: &Decision,
) -> Result<(), RetentionError> {
    let Decision::Hold {
        shrinks,
        guard_percent,
        ..
    } = decision
    else {
        pass.status.shrink_hold = None;
        pass.condition(
            SHRINK_HELD,
            false,
            "NoShrinkHeld",
            "the tier table in force is the one enforced",
        );
        return Ok(());
    };
    let previous = pass
        .policy
        .status
        .as_ref()
        .and_then(|s| s.shrink_hold.clone());
    let rows_would_delete = match previous.as_ref() {
        // Counting is a scan: once per held hash is enough.
        Some(hold) if hold.policy_hash == hash => hold.rows_would_delete.clone(),
        _ => count_expired(pool, &pass.policy.spec.tiers, pass.ctx.clock.now())
            .await?
            .by_table(),
    };
    let shrinking: Vec<String> = shrinks.iter().map(ToString::to_string).collect();
    let confirmation = pass
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
    if previous.as_ref().map(|h| h.policy_hash.as_str()) != Some(hash) {
        store::audit(
            pool,
            pass.ctx.clock.now(),
            store::actions::SHRINK_HELD,
            &store::subject(&pass.label),
            serde_json::json!({
                "policyHash": hash,
                "generation": pass.policy.meta().generation,
                "shrinking": shrinking,
                "maxShrinkPercent": guard_percent,
                "rowsWouldDelete": rows_would_delete,
            }),
        )
        .await?;
        pass.event(EventType::Warning, "ShrinkHeld", "Guard", message.clone());
    }
    pass.condition(SHRINK_HELD, true, "ShrinkBeyondGuard", message);
    pass.status.shrink_hold = Some(ShrinkHold {
        policy_hash: hash.to_string(),
        shrinking,
        rows_would_delete,
    });
    Ok(())
}

/// Runs (or, when suspended, only closes) enforcement, with its metrics and events.
async fn enforce_step(
    pass: &mut Pass<'_>,
    pool: &sqlx::PgPool,
    enforced: &EnforcedPolicy,
) -> Result<StepReport, RetentionError> {
    let settings = enforce::Settings::from_spec(&pass.policy.spec)?;
    let subject = store::subject(&pass.label);
    let enforcer = Enforcer {
        pool,
        tiers: &enforced.spec.tiers,
        policy_hash: &enforced.policy_hash,
        settings: &settings,
        clock: pass.ctx.clock.as_ref(),
        subject: &subject,
    };
    let step = if pass.policy.spec.suspend {
        StepReport {
            finished: enforcer.close_stale().await?,
            ..StepReport::default()
        }
    } else {
        enforcer.step().await?
    };
    let metrics = &pass.ctx.metrics;
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
        let rows: Vec<String> = run
            .rows_by_table()
            .iter()
            .map(|(table, n)| format!("{table} {n}"))
            .collect();
        pass.event(
            EventType::Normal,
            "EnforcementRun",
            "Enforce",
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
            ),
        );
    }
    Ok(step)
}

/// Counts drift when the last count is stale (never while a run is deleting
/// in the window, unless there is no count at all) and reports it.
async fn report_drift(
    pass: &mut Pass<'_>,
    pool: &sqlx::PgPool,
    enforced: &EnforcedPolicy,
    step: &StepReport,
) -> Result<(), RetentionError> {
    let now = pass.ctx.clock.now();
    let last = store::drift(pool).await?;
    let refresh = chrono::Duration::from_std(DRIFT_REFRESH).unwrap_or(chrono::Duration::hours(1));
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
        pass.ctx
            .metrics
            .retention_drift_rows
            .get_or_create(&RetentionTableLabels {
                table: table.name().to_string(),
            })
            .set(rows);
    }
    pass.ctx
        .metrics
        .retention_tenants_without_tier
        .set(drift.tenants_without_tier);
    let (untiered, reason, message) = untiered_condition(&drift);
    pass.condition(UNTIERED_TENANTS, untiered, reason, message);
    pass.status.drift = drift.rows_by_table;
    pass.status.tenants_without_tier = Some(drift.tenants_without_tier);
    Ok(())
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
