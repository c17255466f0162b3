//! The one reading of a verdict key's name (DESIGN §9, identity): which
//! tenant and server a key belongs to. The drain, its tombstone filter, the
//! rejects table's `tenant_id`/`server_slug`, the erasure, its verification
//! and replay all attribute keys through [`owner`], so what the drain would
//! archive (or reject) for a pair is exactly what an erasure of that pair
//! finds.
//!
//! Key names are bytes: Redis does not require them to be UTF-8, and one
//! such key must neither stop a minute nor an erasure.
//!
//! A tenant may be spelled in any form `Uuid::try_parse` reads inside one
//! key segment: hyphenated, simple (32 hex digits) or braced, in any mix of
//! upper and lower case (the URN form holds `:` and cannot be one segment).
//! Its canonical text is lower-case hyphenated. A server slug is compared
//! byte for byte: `api` and `API` are two servers, in the drain as in an
//! erasure.
//!
//! A server slug is any text [`is_server_slug`] accepts, and the
//! DeletionRequest CRD admits exactly the same texts (its `serverSlug`
//! rule; a proptest of `tests/key_matcher.rs` compares the two), so every
//! server the drain stores can be named by a server erasure. A key whose
//! second segment is not a slug belongs to its tenant only: the drain
//! rejects it and a whole-tenant erasure finds it.

use uuid::Uuid;

/// Every verdict key starts with this.
pub const PREFIX: &[u8] = b"verdict:";

/// The tenant and server a verdict key names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyOwner {
    pub tenant: Uuid,
    /// The second segment, when it is UTF-8 and a server slug
    /// ([`is_server_slug`]). Otherwise the key belongs to the tenant only
    /// (a whole-tenant erasure finds it, a server one cannot name it).
    pub server: Option<String>,
}

/// Whom `key` belongs to: `verdict:{tenant}[:{server}[:...]]` where
/// `{tenant}` is a UUID in any spelling described in the module docs.
/// None when the key names no tenant.
pub fn owner(key: &[u8]) -> Option<KeyOwner> {
    let rest = key.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, |byte| *byte == b':');
    let tenant = Uuid::try_parse_ascii(parts.next()?).ok()?;
    let server = parts.next().and_then(slug);
    Some(KeyOwner { tenant, server })
}

fn slug(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|text| is_server_slug(text))
        .map(str::to_string)
}

/// The longest server slug, in characters (a CRD's `maxLength` counts
/// characters, not bytes).
pub const MAX_SERVER_SLUG_CHARS: usize = 512;

/// The DeletionRequest CRD's rule for `spec.serverSlug`, the same grammar
/// as [`is_server_slug`] (RE2 in the API server, the `regex` crate in
/// `validate`; both read `\p{Cc}` as the Unicode control characters, which
/// is what `char::is_control` tests).
pub const SERVER_SLUG_RULE: &str = r"self.matches('^[^:\\p{Cc}]+$')";

/// Whether `text` can be a server slug: 1 to [`MAX_SERVER_SLUG_CHARS`]
/// characters, none of them `:` (it separates a key's segments) or a
/// control character (NUL, newline, escape: nothing a person could type
/// into a DeletionRequest or read back in a receipt). Case, spaces, glob and
/// LIKE metacharacters and any other Unicode are allowed: an erasure
/// escapes them.
pub fn is_server_slug(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= MAX_SERVER_SLUG_CHARS
        && !text.chars().any(|c| c == ':' || c.is_control())
}

/// The minute (epoch seconds) a key names in its fifth segment, as in
/// `verdict:{tenant}:{server}:{region}:{minute}`: the index set
/// `verdict-index:{minute}` that lists it.
pub(crate) fn minute_of(key: &[u8]) -> Option<i64> {
    let segment = key.split(|byte| *byte == b':').nth(4)?;
    std::str::from_utf8(segment).ok()?.parse().ok()
}

/// A key name as text for the rejects table, logs and details. A name that
/// is UTF-8 without NUL or backslash is itself; any other is escaped
/// (`\\` for a backslash, `\xNN` for NUL and for each byte that is not
/// UTF-8). Two different names never give the same text: an escaped name
/// always holds a backslash, an unescaped one never does.
pub fn printable(key: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(key)
        && !text.contains(['\0', '\\'])
    {
        return text.to_string();
    }
    let mut out = String::with_capacity(key.len() + 8);
    for chunk in key.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\0' => out.push_str("\\x00"),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Redis glob (`SCAN MATCH`) patterns that together match every spelling
/// of `tenant` the parser reads: hyphenated, simple and braced, each
/// hexadecimal letter as `[aA]`. Each pattern is exact for its spelling;
/// put in place of a `{tenant}` placeholder, they find the same keys
/// whatever the spelling.
pub fn tenant_globs(tenant: Uuid) -> [String; 3] {
    let hyphenated = case_insensitive(&tenant.hyphenated().to_string());
    [
        hyphenated.clone(),
        case_insensitive(&tenant.simple().to_string()),
        format!("{{{hyphenated}}}"),
    ]
}

/// One glob matching every spelling of `tenant` at the start of a key
/// segment, followed by anything: `*` before each group of hex digits and
/// after the last lets a brace or a hyphen through (or anything else,
/// which [`owner`] then sorts out). A prefilter for `SCAN MATCH`, so one
/// walk of the keyspace finds every spelling; never exact on its own.
pub(crate) fn tenant_prefilter_glob(tenant: Uuid) -> String {
    let simple = tenant.simple().to_string();
    let mut glob = String::from("*");
    let mut start = 0;
    for len in [8, 4, 4, 4, 12] {
        glob.push_str(&case_insensitive(&simple[start..start + len]));
        glob.push('*');
        start += len;
    }
    glob
}

fn case_insensitive(hex: &str) -> String {
    let mut glob = String::with_capacity(hex.len() * 4);
    for c in hex.chars() {
        if c.is_ascii_alphabetic() {
            glob.push('[');
            glob.push(c.to_ascii_lowercase());
            glob.push(c.to_ascii_uppercase());
            glob.push(']');
        } else {
            glob.push(c);
        }
    }
    glob
}

/// `text` with the Redis glob metacharacters (`* ? [ ] \`) escaped.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[derive(Debug)]
enum GlobToken {
    Star,
    Any,
    Literal(u8),
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

/// Tokens of a Redis glob, read as `stringmatchlen` reads it: `\` escapes
/// the next byte, in classes too; `[^...]` negates; `a-z` is a range in
/// either order.
fn glob_tokens(pattern: &[u8]) -> Vec<GlobToken> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' => out.push(GlobToken::Star),
            b'?' => out.push(GlobToken::Any),
            b'\\' if i + 1 < pattern.len() => {
                i += 1;
                out.push(GlobToken::Literal(pattern[i]));
            }
            b'[' => {
                i += 1;
                let negated = pattern.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                while i < pattern.len() && pattern[i] != b']' {
                    if pattern[i] == b'\\' && i + 1 < pattern.len() {
                        i += 1;
                        ranges.push((pattern[i], pattern[i]));
                    } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' {
                        let (a, b) = (pattern[i], pattern[i + 2]);
                        ranges.push((a.min(b), a.max(b)));
                        i += 2;
                    } else {
                        ranges.push((pattern[i], pattern[i]));
                    }
                    i += 1;
                }
                out.push(GlobToken::Class { negated, ranges });
            }
            byte => out.push(GlobToken::Literal(byte)),
        }
        i += 1;
    }
    out
}

/// Whether `text` matches the Redis glob `pattern`, as `SCAN MATCH` would
/// (checked against a real server in tests/key_matcher.rs). Dynamic
/// programming: no backtracking blow-up on many stars.
pub fn glob_matches(pattern: &str, text: &[u8]) -> bool {
    let tokens = glob_tokens(pattern.as_bytes());
    // matches[j]: tokens[i..] match text[j..], for the current i.
    let mut matches = vec![false; text.len() + 1];
    matches[text.len()] = true;
    for token in tokens.iter().rev() {
        let mut next = vec![false; text.len() + 1];
        for j in (0..=text.len()).rev() {
            next[j] = match token {
                GlobToken::Star => matches[j] || (j < text.len() && next[j + 1]),
                _ if j == text.len() => false,
                GlobToken::Any => matches[j + 1],
                GlobToken::Literal(byte) => text[j] == *byte && matches[j + 1],
                GlobToken::Class { negated, ranges } => {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&text[j]));
                    inside != *negated && matches[j + 1]
                }
            };
        }
        matches = next;
    }
    matches[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: Uuid = Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_2f5e7d8c9b01);

    #[test]
    fn every_spelling_of_a_tenant_names_the_same_tenant() {
        for spelling in [
            "6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01",
            "6F1C2A9E-4B1D-4C55-9A43-2F5E7D8C9B01",
            "6f1C2a9E-4b1d-4C55-9a43-2f5e7D8c9b01",
            "6f1c2a9e4b1d4c559a432f5e7d8c9b01",
            "{6F1C2A9E-4b1d-4c55-9a43-2f5e7d8c9b01}",
        ] {
            let key = format!("verdict:{spelling}:api:us-east:60");
            assert_eq!(
                owner(key.as_bytes()),
                Some(KeyOwner {
                    tenant: TENANT,
                    server: Some("api".into())
                }),
                "{spelling}"
            );
        }
    }

    #[test]
    fn a_key_without_a_storable_server_belongs_to_the_tenant_only() {
        let tenant_only = Some(KeyOwner {
            tenant: TENANT,
            server: None,
        });
        for key in [
            format!("verdict:{TENANT}").into_bytes(),
            format!("verdict:{TENANT}:").into_bytes(),
            format!("verdict:{TENANT}::us-east:60").into_bytes(),
            [format!("verdict:{TENANT}:").as_bytes(), b"\xff:us-east:60"].concat(),
            format!("verdict:{TENANT}:a\0:us-east:60").into_bytes(),
        ] {
            assert_eq!(owner(&key), tenant_only, "{}", printable(&key));
        }
        for key in [
            "verdict:not-a-uuid:api:us-east:60",
            "verdict:urn:uuid:6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01:api",
            "other:6f1c2a9e-4b1d-4c55-9a43-2f5e7d8c9b01:api:us-east:60",
            "verdict:{6f1c2a9e4b1d4c559a432f5e7d8c9b01}:api:us-east:60",
        ] {
            assert_eq!(owner(key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn printable_names_are_distinct_and_readable() {
        assert_eq!(printable(b"verdict:a:b"), "verdict:a:b");
        assert_eq!(printable(b"verdict:\xff:b"), "verdict:\\xff:b");
        assert_eq!(printable(b"a\0b"), "a\\x00b");
        assert_eq!(printable(b"a\\xffb"), "a\\\\xffb");
        assert_ne!(printable(b"a\\xff"), printable(b"a\xff"));
        // The old text (NUL shown as U+FFFD) made these two one row.
        assert_ne!(printable(b"a\0b"), printable("a\u{FFFD}b".as_bytes()));
    }

    #[test]
    fn minute_is_the_fifth_segment() {
        assert_eq!(minute_of(b"verdict:t:s:r:120"), Some(120));
        assert_eq!(minute_of(b"verdict:t:s:r:x"), None);
        assert_eq!(minute_of(b"verdict:t:s:r"), None);
    }

    #[test]
    fn globs_spell_hex_letters_in_both_cases() {
        let [hyphenated, simple, braced] = tenant_globs(TENANT);
        assert!(hyphenated.starts_with("6[fF]1[cC]2[aA]9[eE]-4[bB]1[dD]-"));
        assert!(!simple.contains('-'));
        assert!(braced.starts_with('{') && braced.ends_with('}'));
        assert!(tenant_prefilter_glob(TENANT).starts_with("*6[fF]1[cC]2[aA]9[eE]*4[bB]1[dD]*"));
    }
}
