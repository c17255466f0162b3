//! Arbitrary bytes as a verdict key name and as the fields of its hash,
//! through the one key reading (`key::owner`, `key::minute_of`,
//! `key::printable`) and the verdict parser. The invariants are those of
//! `tests/key_matcher.rs`: nothing panics, a row that is archived is
//! attributed exactly as its key reads (canonical tenant, a storable slug),
//! and escaped names never collide.
#![no_main]

use std::collections::BTreeMap;

use archiver_operator::archive::key::{self, KeyOwner};
use archiver_operator::archive::verdict::{self, RawFields};
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

/// Splits the input at 0xff bytes (never part of UTF-8 text, so the
/// separator itself does not bias the text parts): the first part is the
/// key name, the second a second key name for the collision check, and the
/// rest name/value pairs of the hash. The first byte of the input (when
/// present) chooses the flags of the reading.
fn split(data: &[u8]) -> (u8, Vec<&[u8]>) {
    let (flags, rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
    (flags, rest.split(|byte| *byte == 0xff).collect())
}

fuzz_target!(|data: &[u8]| {
    let (flags, parts) = split(data);
    let key = parts.first().copied().unwrap_or_default();
    let other = parts.get(1).copied().unwrap_or_default();

    // The escaper is injective: two names share a printable text only when
    // they are the same name, and a name that needed no escaping is itself.
    let printable = key::printable(key);
    assert_eq!(printable == key::printable(other), key == other);
    if let Ok(text) = std::str::from_utf8(key)
        && !text.contains(['\0', '\\'])
    {
        assert_eq!(printable, text);
    }

    let owner = key::owner(key);
    if let Some(KeyOwner { tenant, server }) = &owner {
        assert!(key.starts_with(key::PREFIX));
        // The tenant read is a real UUID; its canonical spelling is what is
        // stored. A slug is non-empty UTF-8 without NUL or ':'.
        assert_eq!(tenant.hyphenated().to_string().len(), 36);
        if let Some(slug) = server {
            assert!(!slug.is_empty() && !slug.contains(['\0', ':']));
        }
    }
    let _ = key::minute_of(key);

    let mut fields = BTreeMap::new();
    for pair in parts.get(2..).unwrap_or_default().chunks(2) {
        let name = String::from_utf8_lossy(pair[0]).into_owned();
        let value = pair.get(1).map(|v| String::from_utf8_lossy(v).into_owned());
        fields.insert(name, value.unwrap_or_default());
    }
    let raw = RawFields {
        fields,
        not_utf8: flags & 1 != 0,
        read_error: (flags & 2 != 0).then(|| "WRONGTYPE".to_string()),
        // The worker turns an oversize hash into a reject before parsing
        // (`worker.rs`); the parser itself does not look at this flag.
        oversize: None,
    };
    let minute = Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap();
    match verdict::parse_bytes(key, &raw, minute) {
        Ok(row) => {
            assert!(raw.read_error.is_none() && !raw.not_utf8);
            assert!(verdict::REGIONS.contains(&row.region.as_str()));
            assert!(verdict::STATES.contains(&row.state.as_str()));
            assert_eq!(row.minute, minute);
            assert!(row.p95_ms.is_none_or(|n| n >= 0) && row.asn.is_none_or(|n| n >= 0));
            assert!(!row.extra.contains_key("state") && !row.extra.contains_key("archived_at"));
            assert!(!row.server_slug.contains('\0') && !row.server_slug.is_empty());
            assert_eq!(
                owner,
                Some(KeyOwner {
                    tenant: row.tenant_id,
                    server: Some(row.server_slug)
                })
            );
        }
        Err(reject) => assert!(!reject.reason.as_str().is_empty()),
    }
});
