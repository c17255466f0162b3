//! Properties of the one key reading (DESIGN §9, identity): for generated
//! key names — every spelling of a tenant in random case, broken
//! spellings, slugs with glob and LIKE metacharacters, bytes that are not
//! UTF-8 — the drain's attribution of a key to a pair and the erasure's
//! matcher (its Redis glob and its exact filter) agree exactly.
//!
//! The Redis glob is checked with the crate's model of Redis's
//! `stringmatchlen` ([`key::glob_matches`], which the erasure also uses to
//! filter alert-router keys), and the model itself against a real
//! `redis-server` (`SCAN MATCH`).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use uuid::Uuid;

use archiver_operator::api::validation::{Document, validate_document};
use archiver_operator::archive::key::{self, KeyOwner, glob_matches};
use archiver_operator::archive::verdict::{self, RawFields};
use archiver_operator::erasure::Scope;

/// The scope's tenant, and one that differs from it in the last digit only.
const TENANT: Uuid = Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_2f5e7d8c9b01);
const NEIGHBOUR: Uuid = Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_2f5e7d8c9b0f);
/// Slugs an erasure may name; some hold glob or LIKE metacharacters.
const SLUGS: [&str; 8] = ["api", "API", "a*", "a?", "[a]", "a%_", "a\\b", "a_b"];

fn minute() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

// ------------------------------------------------------------ generators

/// A spelling of `tenant`: hyphenated, simple, braced or URN, each hex
/// letter in a random case, or one broken by a missing or extra character.
fn spelling(tenant: Uuid) -> impl Strategy<Value = String> {
    let forms = prop_oneof![
        Just(tenant.hyphenated().to_string()),
        Just(tenant.simple().to_string()),
        Just(format!("{{{}}}", tenant.hyphenated())),
        Just(format!("urn:uuid:{}", tenant.hyphenated())),
        Just(format!("{{{}}}", tenant.simple())),
    ];
    (
        forms,
        prop::collection::vec(any::<bool>(), 45),
        0..6usize,
        any::<u8>(),
    )
        .prop_map(|(text, upper, damage, at)| {
            let mut text: String = text
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            let at = usize::from(at) % text.len();
            match damage {
                0 => {
                    text.remove(at);
                }
                1 => text.insert(at, '-'),
                _ => {}
            }
            text
        })
}

/// A key segment: a slug of the scopes, a random one with metacharacters,
/// empty, or bytes that are not UTF-8 (or hold NUL).
fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(SLUGS.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
        "[a-zA-Z0-9*?%_.\\[\\]\\\\-]{0,5}".prop_map(String::into_bytes),
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..5),
    ]
}

/// A key name: `verdict:` (or not) + a spelling of one of two tenants, then
/// zero to four further segments; or plain random bytes.
fn key_name() -> impl Strategy<Value = Vec<u8>> {
    let tenant = prop_oneof![spelling(TENANT), spelling(NEIGHBOUR)];
    let epoch = minute().timestamp().to_string();
    let tail = prop::collection::vec(
        prop_oneof![
            segment(),
            prop::sample::select(verdict::REGIONS.to_vec()).prop_map(|r| r.as_bytes().to_vec()),
            Just(epoch.into_bytes()),
        ],
        0..5,
    );
    let prefix = prop_oneof![
        8 => Just(b"verdict:".to_vec()),
        1 => Just(b"Verdict:".to_vec()),
        1 => Just(b"verdicts:".to_vec()),
    ];
    prop_oneof![
        9 => (prefix, tenant, tail, any::<bool>()).prop_map(|(prefix, tenant, tail, colon)| {
            let mut key = prefix;
            key.extend_from_slice(tenant.as_bytes());
            if tail.is_empty() && colon {
                key.push(b':');
            }
            for part in &tail {
                key.push(b':');
                key.extend_from_slice(part);
            }
            key
        }),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// Texts near the slug grammar's edges: short ones from an alphabet of
/// separators, control characters (C0, DEL, C1), glob/LIKE metacharacters,
/// spaces and other Unicode, and runs around the length limit.
fn slug_text() -> impl Strategy<Value = String> {
    let alphabet = prop::sample::select(vec![
        'a',
        'Z',
        '0',
        '-',
        '.',
        '_',
        ' ',
        ':',
        '*',
        '?',
        '[',
        '%',
        '\\',
        '/',
        '\u{e9}',
        '\u{1f600}',
        '\0',
        '\t',
        '\n',
        '\u{1b}',
        '\u{7f}',
        '\u{85}',
        '\u{9f}',
        '\u{a0}',
        '\u{2028}',
        '\u{feff}',
    ]);
    prop_oneof![
        prop::collection::vec(alphabet, 0..8).prop_map(|chars| chars.into_iter().collect()),
        (
            key::MAX_SERVER_SLUG_CHARS - 2..key::MAX_SERVER_SLUG_CHARS + 3,
            prop::bool::ANY
        )
            .prop_map(|(n, wide)| if wide {
                "\u{e9}".repeat(n)
            } else {
                "s".repeat(n)
            }),
    ]
}

/// A verdict key of `TENANT`'s server `slug`.
fn verdict_key_of(slug: &str) -> Vec<u8> {
    format!("verdict:{TENANT}:{slug}:us-east:{}", minute().timestamp()).into_bytes()
}

fn scopes() -> Vec<Scope> {
    let mut scopes = vec![Scope::tenant(TENANT)];
    scopes.extend(SLUGS.iter().map(|slug| Scope::server(TENANT, *slug)));
    scopes
}

fn sealed() -> RawFields {
    BTreeMap::from([
        ("state".to_string(), "up".to_string()),
        ("verdict_sealed".to_string(), "1".to_string()),
    ])
    .into()
}

/// Whether the erasure of `scope` selects `key`: its glob finds it in the
/// walk and the exact filter keeps it.
fn erasure_selects(scope: &Scope, key: &[u8]) -> bool {
    glob_matches(&scope.verdict_key_glob(), key) && scope.owns_verdict_key(key).is_some()
}

// ------------------------------------------------------------ properties

/// Cases per property: `PROPTEST_CASES` when set (scripts/fuzz.sh runs
/// far more), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Hash fields as a coalescer (or anything else) might write them: native
/// names with random values, random names, NUL and huge numbers included.
fn raw_fields() -> impl Strategy<Value = RawFields> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "state",
            "p95_ms",
            "tool_list_hash",
            "error_kind",
            "asn",
            "registry_of_origin",
            "verdict_sealed",
            "archived_at",
        ])
        .prop_map(str::to_string),
        ".{0,8}",
    ];
    let value = prop_oneof![
        prop::sample::select(verdict::STATES.to_vec()).prop_map(str::to_string),
        "-?[0-9]{0,12}",
        "[0-9a-fA-F]{0,9}",
        ".{0,12}",
    ];
    (
        prop::collection::btree_map(name, value, 0..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(fields, not_utf8, wrong_type)| RawFields {
            fields,
            not_utf8,
            read_error: wrong_type.then(|| "WRONGTYPE".to_string()),
            oversize: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(2_000)))]

    /// The verdict parser never panics, and what it archives is what the
    /// table accepts and what the key names.
    #[test]
    fn the_verdict_parser_takes_any_input(
        key in prop_oneof![key_name(), prop::collection::vec(any::<u8>(), 0..64)],
        raw in raw_fields(),
    ) {
        match verdict::parse_bytes(&key, &raw, minute()) {
            Ok(row) => {
                prop_assert!(raw.read_error.is_none() && !raw.not_utf8);
                prop_assert!(verdict::REGIONS.contains(&row.region.as_str()));
                prop_assert!(verdict::STATES.contains(&row.state.as_str()));
                prop_assert_eq!(row.minute, minute());
                prop_assert!(row.p95_ms.is_none_or(|n| n >= 0) && row.asn.is_none_or(|n| n >= 0));
                prop_assert!(!row.extra.contains_key("state") && !row.extra.contains_key("archived_at"));
                prop_assert!(!row.server_slug.contains('\0') && !row.server_slug.is_empty());
                prop_assert_eq!(
                    key::owner(&key),
                    Some(KeyOwner { tenant: row.tenant_id, server: Some(row.server_slug) })
                );
            }
            Err(reject) => prop_assert!(!reject.reason.as_str().is_empty()),
        }
    }

    /// What the drain archives as a row of a pair, or attributes to a pair
    /// as a reject, is exactly what the erasure of that pair selects.
    #[test]
    fn the_drain_and_the_erasure_attribute_every_key_alike(key in key_name()) {
        let owner = key::owner(&key);
        if let Ok(row) = verdict::parse_bytes(&key, &sealed(), minute()) {
            prop_assert_eq!(
                owner.clone(),
                Some(KeyOwner { tenant: row.tenant_id, server: Some(row.server_slug.clone()) }),
                "a row is attributed as its key reads"
            );
        }
        for scope in scopes() {
            let drain_says = owner.as_ref().is_some_and(|owner| {
                owner.tenant == scope.tenant
                    && scope.server.as_ref().is_none_or(|s| owner.server.as_ref() == Some(s))
            });
            prop_assert_eq!(
                erasure_selects(&scope, &key),
                drain_says,
                "scope {} key {}",
                scope,
                key::printable(&key)
            );
        }
    }

    /// Alert-router keys: the globs of a pattern match a key exactly when
    /// its `{tenant}` part is a spelling of the tenant the drain reads (and
    /// its `{server}` part the slug, for a server scope).
    #[test]
    fn alert_globs_match_every_spelling_and_nothing_else(
        tenant in prop_oneof![spelling(TENANT), spelling(NEIGHBOUR)],
        server in segment(),
    ) {
        let mut key = format!("alert:{tenant}:").into_bytes();
        key.extend_from_slice(&server);
        key.extend_from_slice(b":cooldown");
        let is_tenant = !tenant.contains(':')
            && Uuid::try_parse(&tenant).is_ok_and(|t| t == TENANT);
        for scope in scopes() {
            let search = scope
                .alert_key_search("alert:{tenant}:{server}:*")
                .unwrap()
                .expect("the pattern names the server");
            // What the erasure keeps: SCAN MATCH of the prefilter, then
            // the exact globs.
            let matched = glob_matches(&search.prefilter, &key) && search.selects(&key);
            prop_assert!(
                !search.exact.iter().any(|glob| glob_matches(glob, &key))
                    || glob_matches(&search.prefilter, &key),
                "the prefilter misses {}", key::printable(&key)
            );
            let expected = is_tenant
                && scope.server.as_ref().is_none_or(|s| server == s.as_bytes());
            prop_assert_eq!(matched, expected, "scope {} key {}", scope, key::printable(&key));
        }
    }

    /// The escaped name of a key is injective: two names never share a
    /// rejects-table text (its unique index would drop one silently).
    /// The DeletionRequest CRD admits as `spec.serverSlug` exactly the
    /// texts the drain stores as a server (`key::is_server_slug`), checked
    /// through the CRD's own schema and CEL rule as `validate` and the
    /// operator evaluate them: every server the drain stores can be named
    /// by a server erasure, and nothing else can.
    #[test]
    fn the_crd_admits_exactly_the_servers_the_drain_stores(slug in slug_text()) {
        let document = Document {
            file: "generated.yaml".into(),
            index: 0,
            value: serde_json::json!({
                "apiVersion": "archiver.uptime.dev/v1alpha1",
                "kind": "DeletionRequest",
                "metadata": {"name": "erase-generated", "namespace": "archiver"},
                "spec": {
                    "tenantId": TENANT.to_string(),
                    "serverSlug": slug,
                    "reason": "gdpr-art17",
                    "requester": NEIGHBOUR.to_string(),
                },
            }),
        };
        let problems = validate_document(&document);
        let admitted = problems.is_empty();
        prop_assert_eq!(admitted, key::is_server_slug(&slug), "{:?}: {:?}", slug, problems);
        prop_assert!(problems.iter().all(|p| p.field.as_deref() == Some("spec.serverSlug")), "{:?}", problems);
        let stored = key::owner(&verdict_key_of(&slug)).and_then(|owner| owner.server);
        prop_assert_eq!(stored.as_deref() == Some(slug.as_str()), admitted);
    }

    #[test]
    fn printable_names_never_collide(a in key_name(), b in key_name()) {
        prop_assert_eq!(key::printable(&a) == key::printable(&b), a == b);
    }
}

/// The glob model agrees with a real `redis-server` on generated keys and
/// the scopes' globs: `SCAN MATCH` finds exactly the keys the model says.
#[tokio::test]
async fn the_glob_model_agrees_with_redis() {
    let redis = archiver_operator::testing::redis_server();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut runner = TestRunner::deterministic();
    let strategy = key_name();
    let mut keys = std::collections::BTreeSet::new();
    while keys.len() < 1_500 {
        keys.insert(strategy.new_tree(&mut runner).unwrap().current());
    }
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.set(key, 1).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
    let mut patterns: Vec<String> = scopes().iter().map(Scope::verdict_key_glob).collect();
    for scope in scopes() {
        let search = scope
            .alert_key_search("verdict:{tenant}:{server}:*")
            .unwrap()
            .unwrap();
        patterns.push(search.prefilter);
        patterns.extend(search.exact);
    }
    let mut total = 0;
    for pattern in patterns {
        let found: std::collections::BTreeSet<Vec<u8>> =
            archiver_operator::archive::redis_source::scan_keys(&mut conn, &pattern)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let modelled: std::collections::BTreeSet<Vec<u8>> = keys
            .iter()
            .filter(|key| glob_matches(&pattern, key))
            .cloned()
            .collect();
        assert_eq!(found, modelled, "{pattern}");
        total += found.len();
    }
    assert!(
        total > 100,
        "the generated keys exercise the globs: {total}"
    );
}

/// Measures the Redis cost of finding one tenant's keys among many
/// (`cargo test --test key_matcher -- --ignored --nocapture`): the old
/// lower-case glob, the prefilter glob, one exact glob per spelling, and
/// `verdict:*` filtered on the client. Figures in docs/BENCHMARKS.md.
#[tokio::test]
#[ignore = "a measurement, minutes long"]
async fn measure_scan_patterns() {
    const TENANTS: u128 = 2_000;
    const KEYS_PER_TENANT: usize = 250;
    let redis = archiver_operator::testing::redis_server();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let tenant = |n: u128| Uuid::from_u128(0x6f1c2a9e_4b1d_4c55_9a43_000000000000 + n);
    for t in 0..TENANTS {
        let mut pipe = redis::pipe();
        for k in 0..KEYS_PER_TENANT {
            let key = format!(
                "verdict:{}:server-{}:us-east:{}",
                tenant(t),
                k % 5,
                1_795_424_400 + 60 * (k / 5)
            );
            pipe.set(key, 1).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    let target = tenant(TENANTS / 2);
    let scope = Scope::tenant(target);
    let [hyphenated, simple, braced] = key::tenant_globs(target);
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        (
            "old: lower-case only",
            vec![format!("verdict:{target}:*")],
            false,
        ),
        (
            "prefilter glob + key reading",
            vec![scope.verdict_key_glob()],
            true,
        ),
        (
            "one exact glob per spelling (3 walks)",
            vec![
                format!("verdict:{hyphenated}:*"),
                format!("verdict:{simple}:*"),
                format!("verdict:{braced}:*"),
            ],
            true,
        ),
        (
            "verdict:* + key reading",
            vec!["verdict:*".to_string()],
            true,
        ),
    ];
    for (name, patterns, filter) in cases {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut returned = 0;
        let mut selected = 0;
        for pattern in &patterns {
            let keys = archiver_operator::archive::redis_source::scan_keys(&mut conn, pattern)
                .await
                .unwrap();
            returned += keys.len();
            selected += keys
                .iter()
                .filter(|k| !filter || scope.owns_verdict_key(k).is_some())
                .count();
        }
        let wall = started.elapsed().as_secs_f64();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let usec = info
            .lines()
            .find(|l| l.starts_with("cmdstat_scan:"))
            .and_then(|l| l.split(',').find(|f| f.starts_with("usec=")))
            .map(|f| f.trim_start_matches("usec=").to_string())
            .unwrap_or_default();
        println!(
            "{name}: {returned} keys returned, {selected} selected, server {usec} us, wall {wall:.3} s \
             ({} keys in Redis)",
            TENANTS as usize * KEYS_PER_TENANT
        );
    }
}

/// Migration 0010 fills `tenant_id` and `server_slug` of the rejects
/// stored before it from their key text, in SQL, and 0013 clears the
/// server of those whose server segment is outside the slug grammar. For
/// generated keys (as rejects stored them then: UTF-8, verbatim), the two
/// statements give exactly what the drain's key reading gives now.
#[tokio::test]
async fn the_migration_backfill_reads_keys_as_the_drain_does() {
    let db = archiver_operator::testing::TestDatabase::new().await;
    let update_of = |migration: &'static str| {
        let start = migration
            .find("UPDATE probe_minute_rejects")
            .expect("the backfill statement");
        let update = &migration[start..];
        update[..update.find(';').expect("its end")].to_string()
    };
    let updates = [
        update_of(include_str!("../migrations/0010_rejects_identity.sql")),
        update_of(include_str!("../migrations/0013_server_slug_grammar.sql")),
    ];
    let mut runner = TestRunner::deterministic();
    let strategy = key_name();
    let mut keys = std::collections::BTreeSet::new();
    while keys.len() < 2_000 {
        let key = strategy.new_tree(&mut runner).unwrap().current();
        if let Ok(text) = String::from_utf8(key)
            && !text.contains('\0')
        {
            keys.insert(text);
        }
    }
    // Server segments at the grammar's edges, which blind generation
    // rarely reaches.
    for server in ["tab\tx", "del\u{7f}", "c1\u{9f}", "nbsp\u{a0}"] {
        keys.insert(format!("verdict:{TENANT}:{server}:us-east:60"));
    }
    for n in [key::MAX_SERVER_SLUG_CHARS, key::MAX_SERVER_SLUG_CHARS + 1] {
        keys.insert(format!(
            "verdict:{TENANT}:{}:us-east:60",
            "\u{e9}".repeat(n)
        ));
    }
    let keys: Vec<String> = keys.into_iter().collect();
    sqlx::query(
        "INSERT INTO probe_minute_rejects (shard_id, verdict_key, reason) \
         SELECT 0, key, 'test' FROM unnest($1::text[]) AS key",
    )
    .bind(&keys)
    .execute(&db.pool)
    .await
    .unwrap();
    for update in updates {
        sqlx::raw_sql(sqlx::AssertSqlSafe(update))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let rows: Vec<(String, Option<Uuid>, Option<String>)> =
        sqlx::query_as("SELECT verdict_key, tenant_id, server_slug FROM probe_minute_rejects")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), keys.len());
    let mut attributed = 0;
    for (key, tenant, server) in rows {
        let owner = key::owner(key.as_bytes());
        attributed += usize::from(owner.is_some());
        assert_eq!(
            owner,
            tenant.map(|tenant| KeyOwner { tenant, server }),
            "{key}"
        );
    }
    assert!(
        attributed > 500,
        "the keys exercise the backfill: {attributed}"
    );
}
