//! Parsing one verdict hash from Redis into the native columns of
//! `probe_minute`, or into a reject with its reason. Nothing is dropped
//! silently: every key ends up either as a row or as a reject.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Regions the `probe_minute` CHECK constraint accepts.
pub const REGIONS: [&str; 5] = ["us-east", "us-west", "eu-west", "ap-southeast", "sa-east"];
/// States the `probe_minute` CHECK constraint accepts.
pub const STATES: [&str; 5] = ["up", "down", "degraded", "auth-walled", "unknown"];

/// Field the archiver writes back after commit; never archived itself.
pub const ARCHIVED_AT_FIELD: &str = "archived_at";
const SEALED_FIELD: &str = "verdict_sealed";
const NATIVE_FIELDS: [&str; 7] = [
    "state",
    "p95_ms",
    "tool_list_hash",
    "error_kind",
    "asn",
    "registry_of_origin",
    SEALED_FIELD,
];

/// `verdict:{tenant}:{server}:{region}:{minute}`.
pub fn verdict_key(tenant: Uuid, server: &str, region: &str, minute: DateTime<Utc>) -> String {
    format!("verdict:{tenant}:{server}:{region}:{}", minute.timestamp())
}

/// `verdict-index:{minute}`: the set of that minute's keys.
pub fn index_key(minute: DateTime<Utc>) -> String {
    format!("verdict-index:{}", minute.timestamp())
}

/// SCAN pattern of one minute's keys.
pub fn scan_pattern(minute: DateTime<Utc>) -> String {
    format!("verdict:*:*:*:{}", minute.timestamp())
}

/// One archived row of `probe_minute`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub tenant_id: Uuid,
    pub server_slug: String,
    pub region: String,
    pub minute: DateTime<Utc>,
    pub state: String,
    pub p95_ms: Option<i32>,
    pub tool_list_hash: Option<Vec<u8>>,
    pub error_kind: Option<String>,
    pub asn: Option<i32>,
    pub registry_of_origin: Option<String>,
    /// Every field that has no native column.
    pub extra: BTreeMap<String, String>,
}

/// Why a verdict was rejected; the label of `archiver_rejected_rows_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MalformedKey,
    UnknownRegion,
    UnknownState,
    MissingState,
    BadNumber,
    BadHash,
    /// The key was listed for the minute but was gone (evicted) when read.
    Vanished,
    /// Bytes that are not UTF-8, or a NUL byte: PostgreSQL text cannot hold
    /// them, and one such verdict must not fail the whole minute.
    InvalidText,
    /// Redis refused to read the key as a hash (e.g. WRONGTYPE).
    NotAHash,
    /// Still not sealed `spec.unsealedTimeoutSeconds` after its minute
    /// ended: the rest of the minute was archived without it.
    UnsealedTimeout,
    /// More than [`MAX_VERDICT_FIELDS`] fields or [`MAX_VERDICT_BYTES`] of
    /// names and values: only a bounded sample was read.
    TooLarge,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedKey => "malformed_key",
            Self::UnknownRegion => "unknown_region",
            Self::UnknownState => "unknown_state",
            Self::MissingState => "missing_state",
            Self::BadNumber => "bad_number",
            Self::BadHash => "bad_hash",
            Self::Vanished => "vanished",
            Self::InvalidText => "invalid_text",
            Self::NotAHash => "not_a_hash",
            Self::UnsealedTimeout => "unsealed_timeout",
            Self::TooLarge => "too_large",
        }
    }
}

/// A verdict that cannot be archived, with the detail for the rejects table.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// One verdict hash as read from Redis. Reading never fails on one bad
/// verdict: what cannot be read as text is flagged here and rejected by
/// [`parse`], so the rest of the minute is archived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawFields {
    /// Field names and values; bytes that were not UTF-8 appear as U+FFFD.
    pub fields: BTreeMap<String, String>,
    /// Some name or value was not UTF-8.
    pub not_utf8: bool,
    /// Redis's error when it would not read the key as a hash.
    pub read_error: Option<String>,
    /// The hash is over the size limits: `fields` holds only a bounded,
    /// truncated sample of it.
    pub oversize: Option<Oversize>,
}

/// A verdict hash may have at most this many fields...
pub const MAX_VERDICT_FIELDS: u64 = 256;
/// ...and at most this many bytes of field names and values in total.
pub const MAX_VERDICT_BYTES: u64 = 64 * 1024;

/// How big a hash over the limits was, as Redis reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    pub fields: u64,
    /// Bytes of names and values; `None` when the field count alone was
    /// over the limit (summing a huge hash would cost Redis O(fields)).
    pub bytes: Option<u64>,
}

impl RawFields {
    /// The fields as they can be stored in the rejects table (jsonb holds
    /// no NUL character, so NUL is shown as U+FFFD there).
    pub(crate) fn for_rejects_table(&self) -> BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|(name, value)| (without_nul(name), without_nul(value)))
            .collect()
    }
}

impl From<BTreeMap<String, String>> for RawFields {
    fn from(fields: BTreeMap<String, String>) -> Self {
        Self {
            fields,
            ..Self::default()
        }
    }
}

/// `text` with every NUL replaced by U+FFFD (PostgreSQL text and jsonb
/// cannot hold NUL).
pub(crate) fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// Whether the coalescer has finished writing this verdict.
pub fn is_sealed(raw: &RawFields) -> bool {
    raw.fields.get(SEALED_FIELD).is_some_and(|v| v == "1")
}

/// A verdict the coalescer is still writing: the minute has to wait for it.
/// A vanished key or one that is not a hash will never be sealed; those are
/// rejected instead.
pub(crate) fn is_unsealed(raw: &RawFields) -> bool {
    raw.read_error.is_none() && !raw.fields.is_empty() && !is_sealed(raw)
}

/// Parses the key of `minute` and its hash fields.
pub fn parse(key: &str, raw: &RawFields, minute: DateTime<Utc>) -> Result<Verdict, Reject> {
    if let Some(error) = &raw.read_error {
        return Err(Reject::new(RejectReason::NotAHash, error.clone()));
    }
    if raw.not_utf8 {
        return Err(Reject::new(
            RejectReason::InvalidText,
            "a field name or value is not UTF-8",
        ));
    }
    let fields = &raw.fields;
    if key.contains('\0')
        || fields
            .iter()
            .any(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(Reject::new(
            RejectReason::InvalidText,
            "the key or a field contains a NUL byte",
        ));
    }
    if fields.is_empty() {
        return Err(Reject::new(
            RejectReason::Vanished,
            "listed for the minute but gone when read",
        ));
    }
    let (tenant_id, server_slug, region) = parse_key(key, minute)?;
    if !REGIONS.contains(&region.as_str()) {
        return Err(Reject::new(
            RejectReason::UnknownRegion,
            format!("region {region:?}"),
        ));
    }
    let state = fields
        .get("state")
        .ok_or_else(|| Reject::new(RejectReason::MissingState, "no state field"))?;
    if !STATES.contains(&state.as_str()) {
        return Err(Reject::new(
            RejectReason::UnknownState,
            format!("state {state:?}"),
        ));
    }
    Ok(Verdict {
        tenant_id,
        server_slug,
        region,
        minute,
        state: state.clone(),
        p95_ms: number(fields, "p95_ms")?,
        tool_list_hash: hash(fields)?,
        error_kind: text(fields, "error_kind"),
        asn: number(fields, "asn")?,
        registry_of_origin: text(fields, "registry_of_origin"),
        extra: fields
            .iter()
            .filter(|(name, _)| {
                !NATIVE_FIELDS.contains(&name.as_str()) && name.as_str() != ARCHIVED_AT_FIELD
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
    })
}

/// Parses `key` (bytes, as Redis returns names) and its hash fields. A
/// name that is not UTF-8 cannot be a verdict: it is a reject whose detail
/// shows the name escaped, never an error of the minute.
pub fn parse_bytes(key: &[u8], raw: &RawFields, minute: DateTime<Utc>) -> Result<Verdict, Reject> {
    match std::str::from_utf8(key) {
        Ok(key) => parse(key, raw, minute),
        Err(_) => Err(Reject::new(
            RejectReason::InvalidText,
            format!("the key name is not UTF-8: {}", super::key::printable(key)),
        )),
    }
}

/// The tenant, server and region of a key of `minute`. Tenant and server
/// come from [`super::key::owner`], the reading every erasure path uses,
/// so a row is always attributed as an erasure would find it.
fn parse_key(key: &str, minute: DateTime<Utc>) -> Result<(Uuid, String, String), Reject> {
    let malformed = |why: &str| Reject::new(RejectReason::MalformedKey, format!("{why}: {key:?}"));
    let parts: Vec<&str> = key.split(':').collect();
    let [prefix, tenant, server, region, epoch] = parts.as_slice() else {
        return Err(malformed(
            "expected verdict:{tenant}:{server}:{region}:{minute}",
        ));
    };
    if *prefix != "verdict" || server.is_empty() {
        return Err(malformed(
            "expected verdict:{tenant}:{server}:{region}:{minute}",
        ));
    }
    if Uuid::try_parse(tenant).is_err() {
        return Err(malformed("tenant is not a UUID"));
    }
    let Some(super::key::KeyOwner {
        tenant,
        server: Some(server),
    }) = super::key::owner(key.as_bytes())
    else {
        return Err(malformed("server is not a slug"));
    };
    let epoch: i64 = epoch
        .parse()
        .map_err(|_| malformed("minute is not a number"))?;
    if epoch != minute.timestamp() {
        return Err(malformed("minute does not match the minute being archived"));
    }
    Ok((tenant, server, region.to_string()))
}

fn text(fields: &BTreeMap<String, String>, name: &str) -> Option<String> {
    fields.get(name).filter(|v| !v.is_empty()).cloned()
}

fn number(fields: &BTreeMap<String, String>, name: &str) -> Result<Option<i32>, Reject> {
    match fields.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(value) => value
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| Reject::new(RejectReason::BadNumber, format!("{name} {value:?}"))),
    }
}

fn hash(fields: &BTreeMap<String, String>) -> Result<Option<Vec<u8>>, Reject> {
    match fields.get("tool_list_hash").filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(value) => hex::decode(value)
            .map(Some)
            .map_err(|_| Reject::new(RejectReason::BadHash, format!("tool_list_hash {value:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn minute() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }

    fn fields(pairs: &[(&str, &str)]) -> RawFields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
            .into()
    }

    const TENANT: &str = "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01";

    fn key(region: &str) -> String {
        format!(
            "verdict:{TENANT}:my-server:{region}:{}",
            minute().timestamp()
        )
    }

    #[test]
    fn a_full_verdict_parses_into_native_columns_and_extra() {
        let f = fields(&[
            ("state", "down"),
            ("p95_ms", "412"),
            ("tool_list_hash", "00ff10"),
            ("error_kind", "tls-expired"),
            ("asn", "16509"),
            ("registry_of_origin", "mcp.so"),
            ("verdict_sealed", "1"),
            ("step_timings", "{\"connect\":12}"),
            ("archived_at", "1795000000"),
        ]);
        let v = parse(&key("us-east"), &f, minute()).unwrap();
        assert_eq!(v.tenant_id.to_string(), TENANT);
        assert_eq!(
            (v.server_slug.as_str(), v.region.as_str(), v.state.as_str()),
            ("my-server", "us-east", "down")
        );
        assert_eq!(v.p95_ms, Some(412));
        assert_eq!(v.tool_list_hash, Some(vec![0x00, 0xff, 0x10]));
        assert_eq!(v.asn, Some(16509));
        assert_eq!(v.error_kind.as_deref(), Some("tls-expired"));
        assert_eq!(v.extra.keys().collect::<Vec<_>>(), vec!["step_timings"]);
        assert!(is_sealed(&f));
    }

    #[test]
    fn empty_optional_fields_are_null() {
        let v = parse(
            &key("eu-west"),
            &fields(&[("state", "up"), ("p95_ms", ""), ("asn", "")]),
            minute(),
        )
        .unwrap();
        assert_eq!((v.p95_ms, v.asn, v.error_kind), (None, None, None));
    }

    #[test]
    fn every_bad_verdict_is_rejected_with_its_reason() {
        let up = fields(&[("state", "up")]);
        let not_utf8 = RawFields {
            not_utf8: true,
            ..fields(&[("state", "up"), ("error_kind", "\u{FFFD}")])
        };
        let wrong_type = RawFields {
            read_error: Some("WRONGTYPE".into()),
            ..RawFields::default()
        };
        let cases: Vec<(String, RawFields, RejectReason)> = vec![
            (key("us-east"), not_utf8, RejectReason::InvalidText),
            (
                key("us-east"),
                fields(&[("state", "up"), ("error_kind", "tls\0")]),
                RejectReason::InvalidText,
            ),
            (
                key("us-east"),
                fields(&[("state", "up"), ("note\0", "x")]),
                RejectReason::InvalidText,
            ),
            (
                format!("verdict:{TENANT}:s\0:us-east:{}", minute().timestamp()),
                up.clone(),
                RejectReason::InvalidText,
            ),
            (key("us-east"), wrong_type, RejectReason::NotAHash),
            (key("us-east"), RawFields::default(), RejectReason::Vanished),
            (key("us-easr"), up.clone(), RejectReason::UnknownRegion),
            (
                key("us-east"),
                fields(&[("state", "sideways")]),
                RejectReason::UnknownState,
            ),
            (
                key("us-east"),
                fields(&[("p95_ms", "3")]),
                RejectReason::MissingState,
            ),
            (
                key("us-east"),
                fields(&[("state", "up"), ("p95_ms", "fast")]),
                RejectReason::BadNumber,
            ),
            (
                key("us-east"),
                fields(&[("state", "up"), ("p95_ms", "-1")]),
                RejectReason::BadNumber,
            ),
            (
                key("us-east"),
                fields(&[("state", "up"), ("asn", "99999999999")]),
                RejectReason::BadNumber,
            ),
            (
                key("us-east"),
                fields(&[("state", "up"), ("tool_list_hash", "xyz")]),
                RejectReason::BadHash,
            ),
            (
                "verdict:not-a-uuid:s:us-east:1".into(),
                up.clone(),
                RejectReason::MalformedKey,
            ),
            (
                format!("verdict:{TENANT}:s:us-east"),
                up.clone(),
                RejectReason::MalformedKey,
            ),
            (
                format!("verdict:{TENANT}:s:us-east:{}", minute().timestamp() + 60),
                up.clone(),
                RejectReason::MalformedKey,
            ),
            (
                format!("other:{TENANT}:s:us-east:{}", minute().timestamp()),
                up,
                RejectReason::MalformedKey,
            ),
        ];
        for (key, f, reason) in cases {
            let reject = parse(&key, &f, minute()).expect_err(&key);
            assert_eq!(reject.reason, reason, "{key} {f:?}: {}", reject.detail);
        }
    }

    #[test]
    fn only_sealed_one_counts_as_sealed() {
        assert!(!is_sealed(&fields(&[("state", "up")])));
        assert!(!is_sealed(&fields(&[("verdict_sealed", "0")])));
        assert!(is_unsealed(&fields(&[("verdict_sealed", "0")])));
        assert!(!is_unsealed(&fields(&[("verdict_sealed", "1")])));
        assert!(!is_unsealed(&RawFields::default()), "vanished: rejected");
        let wrong_type = RawFields {
            read_error: Some("WRONGTYPE".into()),
            ..RawFields::default()
        };
        assert!(!is_unsealed(&wrong_type), "not a hash: rejected");
    }
}
