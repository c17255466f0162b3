//! `archiver-operator plan`: what a RetentionPolicy file would change if it
//! were applied now — the rows its enforcement would delete (per tier and
//! table, next to what the enforced policy deletes anyway), the windows that
//! shrink and whether the shrink guard would hold them, and the diff of the
//! rendered privacy text. The output is what a CI job posts on the
//! retention pull request; the exit code says whether a confirmation will
//! be needed.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::RetentionError;
use super::count::{ExpiredCounts, count_expired};
use super::privacy::{self, Format};
use super::store::{self, EnforcedPolicy};
use super::tiers::{
    ALL_TIERS, Table, Tier, WindowChange, effective_guard_percent, policy_hash, window_changes,
};
use crate::api::RetentionPolicySpec;
use crate::api::common::CONFIRM_SHRINK_ANNOTATION;

/// What applying a policy file would do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `namespace/name` of the file's RetentionPolicy.
    pub policy: String,
    pub as_of: DateTime<Utc>,
    pub policy_hash: String,
    /// The tier table enforced now (`None`: this would be the first).
    pub enforced: Option<EnforcedPolicy>,
    /// The guard the change is checked against.
    pub guard_percent: Option<u32>,
    pub changes: Vec<WindowChange>,
    /// The changes the guard would hold.
    pub held: Vec<WindowChange>,
    /// The file itself carries the confirm-shrink annotation with its hash.
    pub confirmed_in_file: bool,
    /// Expired rows present now under the enforced tier table.
    pub under_enforced: Option<ExpiredCounts>,
    /// Expired rows present now under the file's tier table: what its first
    /// run deletes (within the run caps).
    pub under_new: ExpiredCounts,
    pub max_rows_per_run: i64,
    /// Line diff of the rendered Markdown, enforced -> file.
    pub privacy_diff: Vec<DiffLine>,
    pub suspended: bool,
}

impl Plan {
    /// Whether the guard will hold the change until someone confirms it.
    pub fn needs_confirmation(&self) -> bool {
        !self.held.is_empty() && !self.confirmed_in_file
    }
}

/// The policy a plan is computed for, as read from its file.
#[derive(Debug, Clone, Copy)]
pub struct PlannedPolicy<'a> {
    /// `namespace/name`.
    pub label: &'a str,
    pub spec: &'a RetentionPolicySpec,
    /// The value of the confirm-shrink annotation, when the file has one.
    pub confirmation: Option<&'a str>,
}

/// Computes the plan of `policy` against the database, as of `now`.
pub async fn plan(
    pool: &PgPool,
    policy: PlannedPolicy<'_>,
    now: DateTime<Utc>,
) -> Result<Plan, RetentionError> {
    let spec = policy.spec;
    let hash = policy_hash(&spec.tiers);
    let enforced = store::enforced_policy(pool).await?;
    let (guard_percent, changes, held) = match &enforced {
        None => (None, Vec::new(), Vec::new()),
        Some(current) => {
            let guard = effective_guard_percent(&current.spec, spec);
            let changes = window_changes(&current.spec.tiers, &spec.tiers);
            let held = changes
                .iter()
                .filter(|c| c.beyond(guard))
                .cloned()
                .collect();
            (Some(guard), changes, held)
        }
    };
    let confirmation = policy.confirmation;
    let under_new = count_expired(pool, &spec.tiers, now).await?;
    let under_enforced = match &enforced {
        Some(current) if current.policy_hash == hash => Some(under_new.clone()),
        Some(current) => Some(count_expired(pool, &current.spec.tiers, now).await?),
        None => None,
    };
    let old_text = enforced
        .as_ref()
        .map(|current| privacy::render(&current.spec, None, Format::Markdown))
        .unwrap_or_default();
    let new_text = privacy::render(spec, None, Format::Markdown);
    Ok(Plan {
        policy: policy.label.to_string(),
        as_of: now,
        confirmed_in_file: confirmation.map(|value| value.trim()) == Some(hash.as_str()),
        policy_hash: hash,
        enforced,
        guard_percent,
        changes,
        held,
        under_enforced,
        under_new,
        max_rows_per_run: spec.enforcement.max_rows_per_run,
        privacy_diff: diff_lines(&old_text, &new_text),
        suspended: spec.suspend,
    })
}

// ------------------------------------------------------------------- diff

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffLine {
    Same(String),
    Removed(String),
    Added(String),
}

/// A line diff of `old` and `new` (longest common subsequence; the texts
/// are a page long, so the quadratic table is small).
pub fn diff_lines(old: &str, new: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut lines = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push(DiffLine::Same(a[i].to_string()));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(DiffLine::Removed(a[i].to_string()));
            i += 1;
        } else {
            lines.push(DiffLine::Added(b[j].to_string()));
            j += 1;
        }
    }
    lines
}

/// The diff as unified-style text with `context` lines around changes;
/// empty when nothing changed.
pub fn unified(lines: &[DiffLine], context: usize) -> String {
    let changed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !matches!(line, DiffLine::Same(_)))
        .map(|(i, _)| i)
        .collect();
    let near = |i: usize| changed.iter().any(|&c| c.abs_diff(i) <= context);
    let mut out = String::new();
    let mut gap = false;
    for (i, line) in lines.iter().enumerate() {
        if !near(i) {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() {
            out.push_str("@@\n");
        }
        gap = false;
        let _ = match line {
            DiffLine::Same(s) => writeln!(out, " {s}"),
            DiffLine::Removed(s) => writeln!(out, "-{s}"),
            DiffLine::Added(s) => writeln!(out, "+{s}"),
        };
    }
    out
}

// -------------------------------------------------------------- rendering

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{}", thousands(n))
    } else {
        thousands(n)
    }
}

/// Rows of the deletion table: (table, tier, enforced, new).
fn deletion_rows(plan: &Plan) -> Vec<(Table, String, i64, i64)> {
    let mut rows = Vec::new();
    for table in Table::ALL {
        let tiers: Vec<String> = if table.is_cross_tenant() {
            vec![ALL_TIERS.to_string()]
        } else {
            Tier::ALL.iter().map(|t| t.as_str().to_string()).collect()
        };
        for tier in tiers {
            let new = plan.under_new.get(table, &tier);
            let old = plan
                .under_enforced
                .as_ref()
                .map_or(0, |c| c.get(table, &tier));
            if new != 0 || old != 0 {
                rows.push((table, tier, old, new));
            }
        }
    }
    rows
}

fn verdict(plan: &Plan) -> String {
    match (&plan.enforced, plan.held.is_empty(), plan.confirmed_in_file) {
        (None, _, _) => "not needed: this would be the first tier table enforced".into(),
        (Some(_), true, _) => "not needed: no window shrinks beyond the guard".into(),
        (Some(_), false, true) => format!(
            "present in the file ({CONFIRM_SHRINK_ANNOTATION} = this hash): the shrink applies at once"
        ),
        (Some(_), false, false) => format!(
            "NEEDED: the shrink guard will hold this change until the RetentionPolicy carries the annotation \
             {CONFIRM_SHRINK_ANNOTATION}: \"{}\"",
            plan.policy_hash
        ),
    }
}

fn runs_needed(rows: i64, per_run: i64) -> i64 {
    if rows <= 0 {
        0
    } else {
        (rows + per_run.max(1) - 1) / per_run.max(1)
    }
}

/// The plan as Markdown, for a pull-request comment.
pub fn render_markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Retention plan for `{}`\n", plan.policy);
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| Tier table hash (this file) | `{}` |",
        plan.policy_hash
    );
    let enforced = match &plan.enforced {
        Some(e) => format!(
            "`{}` ({}{})",
            e.policy_hash,
            e.policy,
            e.generation
                .map(|g| format!(", generation {g}"))
                .unwrap_or_default()
        ),
        None => "none (no tier table enforced yet)".into(),
    };
    let _ = writeln!(out, "| Enforced now | {enforced} |");
    let _ = writeln!(
        out,
        "| Counted as of | {} |",
        plan.as_of.format("%Y-%m-%dT%H:%M:%SZ")
    );
    if let Some(guard) = plan.guard_percent {
        let _ = writeln!(out, "| Shrink guard | {guard}% |");
    }
    let _ = writeln!(out, "| Confirmation | {} |", verdict(plan));
    if plan.suspended {
        let _ = writeln!(
            out,
            "| Suspended | yes: nothing is deleted while `suspend: true` |"
        );
    }
    out.push('\n');

    let _ = writeln!(out, "#### Windows that change\n");
    if plan.changes.is_empty() {
        let _ = writeln!(out, "No retention window changes.\n");
    } else {
        let _ = writeln!(
            out,
            "| Window | Enforced (days) | This file (days) | Change | Guard |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|");
        for change in &plan.changes {
            let delta = if change.shrinks() {
                format!("-{:.0}%", change.shrink_percent())
            } else {
                "longer".into()
            };
            let guard = if plan.held.contains(change) {
                "**held**"
            } else {
                "ok"
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {delta} | {guard} |",
                change.window,
                thousands(change.from_days.into()),
                thousands(change.to_days.into())
            );
        }
        out.push('\n');
    }

    let _ = writeln!(out, "#### Rows the next enforcement run would delete\n");
    let rows = deletion_rows(plan);
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "Nothing: no row is past its retention under either tier table.\n"
        );
    } else {
        let _ = writeln!(
            out,
            "| Table | Tier | Enforced tier table | This file | Difference |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|");
        for (table, tier, old, new) in &rows {
            let _ = writeln!(
                out,
                "| `{table}` | {tier} | {} | {} | {} |",
                thousands(*old),
                thousands(*new),
                signed(new - old)
            );
        }
        let old = plan.under_enforced.as_ref().map_or(0, ExpiredCounts::total);
        let new = plan.under_new.total();
        let _ = writeln!(
            out,
            "| **Total** | | **{}** | **{}** | **{}** |\n",
            thousands(old),
            thousands(new),
            signed(new - old)
        );
        let _ = writeln!(
            out,
            "At most {} rows are deleted per run (`maxRowsPerRun`): this takes at least {} run(s).\n",
            thousands(plan.max_rows_per_run),
            runs_needed(new, plan.max_rows_per_run)
        );
    }
    let _ = writeln!(
        out,
        "Tenants with data but no tier (never pruned): {}.\n",
        plan.under_new.tenants_without_tier
    );

    let _ = writeln!(out, "#### Privacy-policy text\n");
    let diff = unified(&plan.privacy_diff, 2);
    if diff.is_empty() {
        let _ = writeln!(out, "Unchanged.");
    } else {
        let _ = writeln!(out, "```diff\n{diff}```");
    }
    out
}

/// The plan as plain text, for a terminal.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Retention plan for {}", plan.policy);
    let _ = writeln!(out, "  tier table hash (this file): {}", plan.policy_hash);
    match &plan.enforced {
        Some(e) => {
            let _ = writeln!(
                out,
                "  enforced now:                {} ({})",
                e.policy_hash, e.policy
            );
        }
        None => {
            let _ = writeln!(out, "  enforced now:                none");
        }
    }
    let _ = writeln!(
        out,
        "  counted as of:               {}",
        plan.as_of.format("%Y-%m-%dT%H:%M:%SZ")
    );
    if let Some(guard) = plan.guard_percent {
        let _ = writeln!(out, "  shrink guard:                {guard}%");
    }
    let _ = writeln!(out, "  confirmation:                {}", verdict(plan));
    if plan.suspended {
        let _ = writeln!(out, "  suspended:                   nothing is deleted");
    }
    let _ = writeln!(out, "\nWindows that change:");
    if plan.changes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for change in &plan.changes {
        let held = if plan.held.contains(change) {
            "  HELD"
        } else {
            ""
        };
        let _ = writeln!(out, "  {change}{held}");
    }
    let _ = writeln!(
        out,
        "\nRows the next enforcement run would delete (enforced -> this file):"
    );
    let rows = deletion_rows(plan);
    if rows.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (table, tier, old, new) in &rows {
        let _ = writeln!(
            out,
            "  {:<30} {:<11} {:>14} -> {:>14}  ({})",
            table.name(),
            tier,
            thousands(*old),
            thousands(*new),
            signed(new - old)
        );
    }
    let _ = writeln!(
        out,
        "  total: {} -> {} (at least {} run(s) at maxRowsPerRun {})",
        thousands(plan.under_enforced.as_ref().map_or(0, ExpiredCounts::total)),
        thousands(plan.under_new.total()),
        runs_needed(plan.under_new.total(), plan.max_rows_per_run),
        thousands(plan.max_rows_per_run)
    );
    let _ = writeln!(
        out,
        "  tenants with data but no tier (never pruned): {}",
        plan.under_new.tenants_without_tier
    );
    let _ = writeln!(out, "\nPrivacy-policy text:");
    let diff = unified(&plan.privacy_diff, 2);
    if diff.is_empty() {
        let _ = writeln!(out, "  unchanged");
    } else {
        out.push_str(&diff);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_keep_order_and_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\n";
        let new = "a\nb\nC\nd\ne\nf\ng\nh\n";
        let lines = diff_lines(old, new);
        assert_eq!(
            lines
                .iter()
                .filter(|l| matches!(l, DiffLine::Removed(_)))
                .count(),
            1
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| matches!(l, DiffLine::Added(_)))
                .count(),
            2
        );
        assert_eq!(unified(&lines, 1), " b\n-c\n+C\n d\n@@\n g\n+h\n");
        assert_eq!(unified(&diff_lines(old, old), 2), "");
    }

    #[test]
    fn counts_are_readable() {
        assert_eq!(thousands(5_000_000), "5,000,000");
        assert_eq!(signed(-1234), "-1,234");
        assert_eq!(signed(12), "+12");
        assert_eq!(runs_needed(10, 3), 4);
        assert_eq!(runs_needed(0, 3), 0);
    }
}
