//! Types and rules shared by the four custom resources.

use chrono::{DateTime, NaiveTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every kind this operator serves.
pub const GROUP: &str = "archiver.uptime.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get archiver` lists every kind of the operator.
pub const CATEGORY: &str = "archiver";

/// Annotation that pauses reconciliation of one object (`disabled`).
pub const RECONCILE_ANNOTATION: &str = "archiver.uptime.dev/reconcile";
/// Annotation that confirms a retention shrink (value: the new policy hash).
pub const CONFIRM_SHRINK_ANNOTATION: &str = "archiver.uptime.dev/confirm-shrink";

/// CEL rule (and the validate command's check) for a `HH:MM-HH:MM` UTC window.
pub const WINDOW_RULE: &str =
    "self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$')";
pub const WINDOW_MESSAGE: &str = "must be a UTC window HH:MM-HH:MM, e.g. 03:00-05:00";
/// CEL rule: a window whose start equals its end is empty (the API server
/// accepted `04:00-04:00` before this rule; `validate` did not).
pub const WINDOW_NOT_EMPTY_RULE: &str = "!self.matches('^[0-9][0-9]:[0-9][0-9]-[0-9][0-9]:[0-9][0-9]$') || self.substring(0, 5) != self.substring(6, 11)";
pub const WINDOW_NOT_EMPTY_MESSAGE: &str = "start and end are equal: the window would be empty";

/// Longest RFC 1123 label (a namespace), as the API server allows.
pub const DNS1123_LABEL_MAX: usize = 63;
/// Longest RFC 1123 subdomain (an object name), as the API server allows.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// Whether `text` is an RFC 1123 label, the rule for a namespace:
/// lower-case letters, digits and `-`, starting and ending with an
/// alphanumeric, at most 63 characters. Such a text can never name a path
/// (no `/`, no `.`).
pub(crate) fn is_dns1123_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= DNS1123_LABEL_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `text` is an RFC 1123 subdomain, the rule for an object name:
/// labels of lower-case letters, digits and `-` joined by single dots, at
/// most 253 characters (the API server's `IsDNS1123Subdomain`). Such a text
/// contains no `/` and no `..`, so it can never name a path.
pub(crate) fn is_dns1123_subdomain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= DNS1123_SUBDOMAIN_MAX
        && text.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && label.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
}

/// Reference to one key of a Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Reference to another object of the operator in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A daily time window in UTC, parsed from `HH:MM-HH:MM`.
///
/// A window whose end is before its start wraps past midnight
/// (`23:00-01:00` is two hours long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("must be a UTC window HH:MM-HH:MM, e.g. 03:00-05:00 (got {0:?})")]
    Malformed(String),
    #[error("start and end are equal ({0:?}): the window would be empty")]
    Empty(String),
}

impl UtcWindow {
    pub fn parse(text: &str) -> Result<Self, WindowError> {
        let malformed = || WindowError::Malformed(text.to_string());
        let (start, end) = text.split_once('-').ok_or_else(malformed)?;
        let parse_time = |part: &str| {
            if part.len() != 5 {
                return Err(malformed());
            }
            NaiveTime::parse_from_str(part, "%H:%M").map_err(|_| malformed())
        };
        let window = Self {
            start: parse_time(start)?,
            end: parse_time(end)?,
        };
        if window.start == window.end {
            return Err(WindowError::Empty(text.to_string()));
        }
        Ok(window)
    }

    /// Whether `at` (UTC) falls inside the window; start inclusive, end exclusive.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let time = at.time();
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }
}

/// Standard condition types every kind reports.
pub mod condition_types {
    pub const READY: &str = "Ready";
}

/// Converts a chrono timestamp into the Kubernetes `Time` wrapper.
pub(crate) fn kube_time(at: DateTime<Utc>) -> Time {
    let nanos = at.timestamp_nanos_opt().unwrap_or(i64::MAX);
    Time(k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or_default())
}

/// Converts a Kubernetes `Time` back into a chrono timestamp.
pub(crate) fn chrono_time(time: &Time) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(time.0.subsec_nanosecond()).unwrap_or(0);
    DateTime::from_timestamp(time.0.as_second(), nanos)
}

/// The desired state of one condition; [`set_condition`] turns it into a
/// `metav1.Condition` and keeps `lastTransitionTime` when the status is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Sets `update` in `conditions`, preserving `lastTransitionTime` when the
/// status did not change (so a steady object does not look like it flaps).
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate<'_>,
    observed_generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let status = if update.status { "True" } else { "False" }.to_string();
    let existing = conditions.iter_mut().find(|c| c.type_ == update.type_);
    match existing {
        Some(condition) => {
            if condition.status != status {
                condition.last_transition_time = kube_time(now);
            }
            condition.status = status;
            condition.reason = update.reason.to_string();
            condition.message = update.message;
            condition.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: update.type_.to_string(),
            status,
            reason: update.reason.to_string(),
            message: update.message,
            observed_generation,
            last_transition_time: kube_time(now),
        }),
    }
}

/// Whether the condition of `type_` is present and `True`.
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
    }

    #[test]
    fn names_follow_the_api_server_rules() {
        for good in ["a", "archiver", "team-1", "0abc"] {
            assert!(is_dns1123_label(good), "{good:?}");
            assert!(is_dns1123_subdomain(good), "{good:?}");
        }
        assert!(is_dns1123_subdomain("erase.6f1c.my-server"));
        assert!(!is_dns1123_label("erase.6f1c"), "a namespace has no dots");
        assert!(is_dns1123_label(&"a".repeat(63)));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain(&"a".repeat(253)));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        for bad in [
            "",
            "x/../../../outside",
            "..",
            ".",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "a b",
            "\u{e9}t\u{e9}",
            "a\0b",
        ] {
            assert!(!is_dns1123_label(bad), "{bad:?} is no label");
            assert!(!is_dns1123_subdomain(bad), "{bad:?} is no subdomain");
        }
    }

    #[test]
    fn window_contains_start_but_not_end() {
        let w = UtcWindow::parse("03:00-05:00").unwrap();
        assert!(!w.contains(at(2, 59)));
        assert!(w.contains(at(3, 0)));
        assert!(w.contains(at(4, 59)));
        assert!(!w.contains(at(5, 0)));
    }

    #[test]
    fn window_wraps_past_midnight() {
        let w = UtcWindow::parse("23:30-00:30").unwrap();
        assert!(w.contains(at(23, 45)));
        assert!(w.contains(at(0, 10)));
        assert!(!w.contains(at(12, 0)));
    }

    #[test]
    fn malformed_and_empty_windows_are_rejected() {
        for bad in [
            "3:00-05:00",
            "03:00",
            "25:00-01:00",
            "03:00-05:60",
            "",
            "03:00-05:00x",
        ] {
            assert!(
                matches!(UtcWindow::parse(bad), Err(WindowError::Malformed(_))),
                "{bad:?} should be malformed"
            );
        }
        assert_eq!(
            UtcWindow::parse("04:00-04:00"),
            Err(WindowError::Empty("04:00-04:00".into()))
        );
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let mut conditions = Vec::new();
        let ready = |status| ConditionUpdate {
            type_: condition_types::READY,
            status,
            reason: "Reconciled",
            message: "ok".into(),
        };
        set_condition(&mut conditions, ready(true), Some(1), at(1, 0));
        set_condition(&mut conditions, ready(true), Some(2), at(2, 0));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, kube_time(at(1, 0)));
        assert_eq!(conditions[0].observed_generation, Some(2));
        set_condition(&mut conditions, ready(false), Some(2), at(3, 0));
        assert_eq!(conditions[0].last_transition_time, kube_time(at(3, 0)));
        assert!(!condition_is_true(&conditions, condition_types::READY));
    }
}
