//! The shrink guard: whether a RetentionPolicy generation becomes the
//! enforced tier table, or is held until a person confirms it. A typo in a
//! pull request (7 -> 0, 365 -> 36) must delete nothing by itself.

use super::store::{AcceptedAs, EnforcedPolicy};
use super::tiers::{WindowChange, effective_guard_percent, guarded_shrinks, window_changes};
use crate::api::RetentionPolicySpec;

/// What to do with the spec of the policy in force.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// It is already exactly what is enforced: nothing to write.
    Unchanged,
    /// Make it the enforced tier table.
    Accept {
        accepted_as: AcceptedAs,
        changes: Vec<WindowChange>,
        /// The guard it was checked against (none for the first policy).
        guard_percent: Option<u32>,
    },
    /// Keep enforcing the previous tier table.
    Hold {
        /// The windows that shrink beyond the guard.
        shrinks: Vec<WindowChange>,
        changes: Vec<WindowChange>,
        guard_percent: u32,
    },
}

/// The policy in force, as the guard sees it.
pub struct Candidate<'a> {
    pub policy: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a RetentionPolicySpec,
    pub policy_hash: &'a str,
    /// Value of the confirm-shrink annotation, if any.
    pub confirmation: Option<&'a str>,
}

pub(crate) fn decide(enforced: Option<&EnforcedPolicy>, candidate: &Candidate<'_>) -> Decision {
    let Some(enforced) = enforced else {
        // The very first tier table ever enforced: there is nothing it could
        // shorten.
        return Decision::Accept {
            accepted_as: AcceptedAs::FirstPolicy,
            changes: Vec::new(),
            guard_percent: None,
        };
    };
    let guard_percent = effective_guard_percent(&enforced.spec, candidate.spec);
    if enforced.policy_hash == candidate.policy_hash {
        let same = enforced.spec == *candidate.spec
            && enforced.generation == candidate.generation
            && enforced.policy == candidate.policy;
        return if same {
            Decision::Unchanged
        } else {
            Decision::Accept {
                accepted_as: AcceptedAs::SameTiers,
                changes: Vec::new(),
                guard_percent: Some(guard_percent),
            }
        };
    }
    let changes = window_changes(&enforced.spec.tiers, &candidate.spec.tiers);
    let shrinks = guarded_shrinks(&enforced.spec.tiers, &candidate.spec.tiers, guard_percent);
    if shrinks.is_empty() {
        return Decision::Accept {
            accepted_as: AcceptedAs::WithinGuard,
            changes,
            guard_percent: Some(guard_percent),
        };
    }
    if candidate.confirmation.map(str::trim) == Some(candidate.policy_hash) {
        return Decision::Accept {
            accepted_as: AcceptedAs::Confirmed,
            changes,
            guard_percent: Some(guard_percent),
        };
    }
    Decision::Hold {
        shrinks,
        changes,
        guard_percent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::tiers::policy_hash;

    fn example() -> RetentionPolicySpec {
        crate::api::retention_policy::example_spec()
    }

    fn enforced(spec: &RetentionPolicySpec) -> EnforcedPolicy {
        EnforcedPolicy {
            policy_hash: policy_hash(&spec.tiers),
            policy: "archiver/tiers".into(),
            generation: Some(1),
            spec: spec.clone(),
            accepted_at: chrono::DateTime::UNIX_EPOCH,
            accepted_as: "first-policy".into(),
        }
    }

    fn candidate<'a>(
        spec: &'a RetentionPolicySpec,
        hash: &'a str,
        confirmation: Option<&'a str>,
    ) -> Candidate<'a> {
        Candidate {
            policy: "archiver/tiers",
            generation: Some(2),
            spec,
            policy_hash: hash,
            confirmation,
        }
    }

    #[test]
    fn the_first_policy_is_never_a_shrink() {
        let spec = example();
        let hash = policy_hash(&spec.tiers);
        assert!(matches!(
            decide(None, &candidate(&spec, &hash, None)),
            Decision::Accept {
                accepted_as: AcceptedAs::FirstPolicy,
                ..
            }
        ));
    }

    #[test]
    fn a_typo_is_held_until_the_hash_is_confirmed() {
        let old = example();
        let mut new = old.clone();
        new.tiers.public.per_minute_days = 1; // 7 -> 1
        let hash = policy_hash(&new.tiers);
        let current = enforced(&old);
        let held = decide(Some(&current), &candidate(&new, &hash, None));
        assert!(
            matches!(&held, Decision::Hold { shrinks, .. } if shrinks.len() == 1),
            "{held:?}"
        );
        assert!(matches!(
            decide(Some(&current), &candidate(&new, &hash, Some("0000"))),
            Decision::Hold { .. }
        ));
        assert!(matches!(
            decide(
                Some(&current),
                &candidate(&new, &hash, Some(&format!(" {hash}\n")))
            ),
            Decision::Accept {
                accepted_as: AcceptedAs::Confirmed,
                ..
            }
        ));
    }

    #[test]
    fn loosening_the_guard_in_the_same_change_does_not_help() {
        let old = example();
        let mut new = old.clone();
        new.tiers.team.per_minute_days = 30; // -83%
        new.shrink_guard.max_shrink_percent = 100;
        let hash = policy_hash(&new.tiers);
        assert!(matches!(
            decide(Some(&enforced(&old)), &candidate(&new, &hash, None)),
            Decision::Hold {
                guard_percent: 50,
                ..
            }
        ));
    }

    #[test]
    fn same_tiers_with_other_changes_are_accepted_without_the_guard() {
        let old = example();
        let mut new = old.clone();
        new.privacy_policy.contact = "privacy@example.org".into();
        let hash = policy_hash(&new.tiers);
        let mut current = enforced(&old);
        current.generation = Some(2);
        assert!(matches!(
            decide(Some(&current), &candidate(&new, &hash, None)),
            Decision::Accept {
                accepted_as: AcceptedAs::SameTiers,
                ..
            }
        ));
        assert_eq!(
            decide(Some(&current), &candidate(&old, &hash, None)),
            Decision::Unchanged
        );
    }
}
