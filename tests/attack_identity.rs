//! Attacks on the identity contract (DESIGN §9): what the drain attributes
//! to a (tenant, server) pair is exactly what an erasure finds, counts and
//! verifies, with real PostgreSQL and Redis. Each test is one attack that
//! was tried; those still standing pin the promise that held.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use archiver_operator::api::archiver_shard::Discovery;
use archiver_operator::api::deletion_request::{
    DeletionPhase, DeletionReason, DeletionRequestSpec,
};
use archiver_operator::api::{DeletionRequest, DeletionRequestStatus};
use archiver_operator::archive::key;
use archiver_operator::archive::verdict::index_key;
use archiver_operator::archive::worker::{ShardSettings, Worker};
use archiver_operator::clock::ManualClock;
use archiver_operator::erasure::Scope;
use archiver_operator::erasure::verify::count_surfaces;
use archiver_operator::local_servers::RedisServer;
use archiver_operator::metrics::Metrics;
use archiver_operator::runtime::config::{OperatorConfig, SecretString};
use archiver_operator::runtime::context::Context;
use archiver_operator::runtime::reconcile::{Managed, Outcome};
use archiver_operator::testing::{TestDatabase, redis_server};

const SALT: &str = "attack-salt";
const ALERT_PATTERNS: [&str; 2] = ["alert:{tenant}:{server}:*", "tenantcfg:{tenant}"];

fn tenant(n: u128) -> Uuid {
    Uuid::from_u128(0xa7ac_0000_0000_4000_8000_0000_0000_0000 + n)
}

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap() + chrono::Duration::minutes(n)
}

fn erasure_time() -> DateTime<Utc> {
    minute(30)
}

struct Env {
    db: TestDatabase,
    redis: RedisServer,
    ctx: Context,
}

async fn env() -> Env {
    let db = TestDatabase::new().await;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS probe_minute_2026_11 PARTITION OF probe_minute \
         FOR VALUES FROM ('2026-11-01 00:00+00') TO ('2026-12-01 00:00+00')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let redis = redis_server();
    let ctx = context(&db.pool);
    ctx.redis_targets
        .publish_shard("test/shard-0", SecretString::new(redis.url()));
    Env { db, redis, ctx }
}

fn context(pool: &PgPool) -> Context {
    Context::new(Arc::new(ManualClock::new(erasure_time())))
        .with_database(pool.clone())
        .with_config(OperatorConfig {
            suppression_salt: Some(SecretString::new(SALT)),
            alert_key_patterns: ALERT_PATTERNS.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        })
}

fn request(name: &str, tenant: Uuid, server: Option<&str>) -> DeletionRequest {
    let mut object = DeletionRequest::new(
        name,
        DeletionRequestSpec {
            tenant_id: tenant,
            server_slug: server.map(str::to_string),
            reason: DeletionReason::GdprArt17,
            requester: Uuid::from_u128(0x0b7e),
            received_at: Some(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()),
            extension: None,
        },
    );
    object.metadata.namespace = Some("privacy".into());
    object.metadata.uid = Some(Uuid::new_v4().to_string());
    object.metadata.generation = Some(1);
    object
}

async fn erase(ctx: &Context, name: &str, t: Uuid, server: Option<&str>) -> DeletionRequestStatus {
    let object = request(name, t, server);
    let outcome: Outcome<DeletionRequestStatus> = object
        .reconcile(ctx)
        .await
        .expect("reconcile returns a status");
    outcome.status
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Sealed verdicts under these names, listed in `minute`'s index set.
async fn put_verdicts(url: &str, keys: &[Vec<u8>], minute: DateTime<Utc>) {
    let mut conn = redis_conn(url).await;
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.hset_multiple(key, &[("state", "up"), ("verdict_sealed", "1")])
            .ignore();
        pipe.sadd(index_key(minute), key).ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
}

/// Every member of every index set, as bytes.
async fn index_members(url: &str) -> BTreeSet<Vec<u8>> {
    let mut conn = redis_conn(url).await;
    let sets: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("verdict-index:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut members = BTreeSet::new();
    for set in sets {
        // Keys of the glob that are not sets have no members.
        let of_set: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        members.extend(of_set);
    }
    members
}

async fn key_names(url: &str) -> BTreeSet<Vec<u8>> {
    let mut conn = redis_conn(url).await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.into_iter().collect()
}

fn verdict_key(tenant: &str, server: &str, region: &str, minute: DateTime<Utc>) -> Vec<u8> {
    format!("verdict:{tenant}:{server}:{region}:{}", minute.timestamp()).into_bytes()
}

fn contains_tenant(name: &[u8], t: Uuid) -> bool {
    let text = String::from_utf8_lossy(name).to_lowercase();
    text.contains(&t.hyphenated().to_string()) || text.contains(&t.simple().to_string())
}

async fn drain_worker(env: &Env, first: DateTime<Utc>, at: DateTime<Utc>) -> Worker {
    Worker::connect(
        ShardSettings::new(0, "test/shard-0", Discovery::Index, at - first),
        "worker-attack".into(),
        env.db.pool.clone(),
        &env.redis.url(),
        Arc::new(ManualClock::new(at)),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap()
}

/// Attack: index entries whose key no longer exists (expired, or deleted
/// by hand) and an entry listed under another minute than its key names.
/// Index members are key names: they hold the tenant id and the server
/// slug. A "verified" erasure must leave none of the pair's members in any
/// index set, and verification must count those it left.
#[tokio::test]
async fn index_entries_of_the_pair_without_their_key_are_erased_and_counted() {
    let env = env().await;
    let (t, server) = (tenant(1), "laptop-of-someone");
    let m = minute(3);
    let upper = t.hyphenated().to_string().to_uppercase();
    // A key that expired: only its index entry is left.
    let expired = verdict_key(&upper, server, "us-east", m);
    // A key listed in the index set of the next minute (a producer bug):
    // its name says minute m.
    let misfiled = verdict_key(&t.to_string(), server, "eu-west", m);
    // Whole-tenant erasure: another server of the tenant, key gone too.
    let other_server = verdict_key(&t.simple().to_string(), "other", "us-east", m);
    // Another tenant's entry stays.
    let unrelated = verdict_key(&tenant(2).to_string(), server, "us-east", m);
    put_verdicts(&env.redis.url(), &[expired.clone(), unrelated.clone()], m).await;
    put_verdicts(&env.redis.url(), std::slice::from_ref(&misfiled), minute(4)).await;
    put_verdicts(&env.redis.url(), std::slice::from_ref(&other_server), m).await;
    let mut conn = redis_conn(&env.redis.url()).await;
    redis::cmd("DEL")
        .arg(&expired)
        .arg(&other_server)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    // Keys of the index glob that are not sets (the erasure pipelines its
    // SSCANs; a WRONGTYPE reply must not fail or hide the others).
    redis::pipe()
        .set("verdict-index:not-a-set", "x")
        .hset("verdict-index:1", "f", "v")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    // Verification counts them: before the erasure it sees both entries
    // (it said zero before the fix, so a leftover could not fail it).
    let scope = Scope::server(t, server);
    let settings = env
        .ctx
        .config
        .erasure_settings(env.ctx.redis_targets.targets());
    let before = count_surfaces(&env.db.pool, &scope, &settings, erasure_time(), &Vec::new())
        .await
        .unwrap();
    assert_eq!(before["redis_index_entries"], 2, "{before:?}");

    let st = erase(&env.ctx, "erase-dangling", t, Some(server)).await;
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    let members = index_members(&env.redis.url()).await;
    assert!(
        !members.contains(&expired),
        "dangling entry of the pair left"
    );
    assert!(
        !members.contains(&misfiled),
        "misfiled entry of the pair left"
    );
    assert!(
        members.contains(&other_server),
        "another server's entry stays"
    );
    assert!(members.contains(&unrelated), "another tenant's entry stays");
    assert!(st.verification.as_ref().unwrap().verified, "{st:#?}");
    assert_eq!(st.removed["redis_index_entries"], 2, "{st:#?}");

    let st = erase(&env.ctx, "erase-dangling-tenant", t, None).await;
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    let members = index_members(&env.redis.url()).await;
    assert!(
        !members.iter().any(|m| contains_tenant(m, t)),
        "the tenant is still named in an index set: {members:?}"
    );
    assert!(members.contains(&unrelated));
}

async fn rows_of(pool: &PgPool, t: Uuid) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT server_slug, region FROM probe_minute WHERE tenant_id = $1 ORDER BY 1, 2",
    )
    .bind(t)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn rejects_of(pool: &PgPool, t: Uuid) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT verdict_key, server_slug FROM probe_minute_rejects WHERE tenant_id = $1 ORDER BY 1",
    )
    .bind(t)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Drains the keys of `minute` and returns the tenant's rows and rejects.
async fn drain_minute(env: &Env, m: DateTime<Utc>) {
    let mut worker = drain_worker(env, m, m + chrono::Duration::seconds(65)).await;
    let report = worker.tick(Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.archived.len(), 1, "{report:?}");
    worker.flush_marks().await;
}

/// Attack: a server slug with LIKE (`_`) and regex (`.`) metacharacters
/// (the only ones a DeletionRequest admits), neighbours that differ only
/// in case, in what the metacharacters would match, by a Unicode
/// look-alike or an invisible character, and neighbours holding glob
/// metacharacters, each in every spelling of the tenant. The drain stores
/// each as its own server; a server erasure removes exactly the erased
/// slug's rows, reject and keys.
#[tokio::test]
async fn slugs_with_metacharacters_case_and_look_alikes_are_erased_exactly() {
    let env = env().await;
    let t = tenant(3);
    let m = minute(2);
    let erased = "a_b.c-d";
    let others = [
        "A_B.C-D",         // differs in case
        "axb.c-d",         // what LIKE `_` would match
        "a_bxc-d",         // what regex `.` would match
        "a_b.c-d-",        // a longer slug with the same start
        "\u{0430}_b.c-d",  // Cyrillic а
        "a_b.c-d\u{200b}", // zero-width space
        "a*",              // a glob that would match the erased slug
        "a_b.c-[d]",       // a class that would match it
        "a_b.c-?",         // `?` that would match it
        "a%",              // LIKE `%`
        "a_b.c-d\\",       // a trailing backslash
    ];
    let spellings = [
        t.to_string(),
        t.to_string().to_uppercase(),
        t.simple().to_string(),
        format!("{{{}}}", t.to_string().to_uppercase()),
    ];
    let regions = ["us-east", "eu-west", "ap-southeast", "us-west"];
    let mut keys = Vec::new();
    let mut other_keys = Vec::new();
    for (spelling, region) in spellings.iter().zip(regions) {
        keys.push(verdict_key(spelling, erased, region, m));
        for other in others {
            other_keys.push(verdict_key(spelling, other, region, m));
        }
    }
    // A reject of the erased slug (unknown region) and one of another.
    keys.push(verdict_key(&spellings[1], erased, "nowhere", m));
    other_keys.push(verdict_key(&spellings[1], others[0], "nowhere", m));
    put_verdicts(&env.redis.url(), &keys, m).await;
    put_verdicts(&env.redis.url(), &other_keys, m).await;
    drain_minute(&env, m).await;
    let rows_before = rows_of(&env.db.pool, t).await;
    let rejects_before = rejects_of(&env.db.pool, t).await;
    assert_eq!(rows_before.len(), 4 * (1 + others.len()), "{rows_before:?}");
    assert_eq!(rejects_before.len(), 2, "{rejects_before:?}");

    let st = erase(&env.ctx, "erase-metacharacters", t, Some(erased)).await;
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert!(st.verification.as_ref().unwrap().verified, "{st:#?}");
    assert_eq!(st.removed["probe_minute"], 4, "{st:#?}");
    assert_eq!(st.removed["probe_minute_rejects"], 1, "{st:#?}");
    assert_eq!(st.removed["redis_verdict_keys"], 5, "{st:#?}");
    let rows_after = rows_of(&env.db.pool, t).await;
    let expected: Vec<(String, String)> = rows_before
        .iter()
        .filter(|(slug, _)| slug != erased)
        .cloned()
        .collect();
    assert_eq!(rows_after, expected);
    let rejects_after = rejects_of(&env.db.pool, t).await;
    assert_eq!(rejects_after.len(), 1);
    assert_eq!(rejects_after[0].1.as_deref(), Some(others[0]));
    let left = key_names(&env.redis.url()).await;
    for key in &keys {
        assert!(!left.contains(key), "{}", String::from_utf8_lossy(key));
    }
    for key in &other_keys {
        assert!(
            left.contains(key),
            "{} erased",
            String::from_utf8_lossy(key)
        );
    }
}

/// Attack: the drain stores slugs no simple grammar would allow (`a*b`,
/// `My Laptop`, `café`, 300 characters). The DeletionRequest CRD admits
/// the drain's grammar (`key::is_server_slug`), so each such pair can be
/// erased as the pair the drain attributed it to, not only with its whole
/// tenant. (Before, the CRD admitted `^[A-Za-z0-9][A-Za-z0-9._-]*$` up to
/// 200 characters and each of these requests was InvalidSpec.)
#[tokio::test]
async fn every_server_the_drain_stores_can_be_erased_as_a_pair() {
    let env = env().await;
    let t = tenant(8);
    let m = minute(2);
    let long = "s".repeat(300);
    for slug in ["a*b", "My Laptop", "caf\u{e9}", long.as_str()] {
        put_verdicts(
            &env.redis.url(),
            &[verdict_key(&t.to_string(), slug, "us-east", m)],
            m,
        )
        .await;
    }
    drain_minute(&env, m).await;
    let stored = rows_of(&env.db.pool, t).await;
    assert_eq!(
        stored.len(),
        4,
        "the drain stores each as a server: {stored:?}"
    );
    for (i, (slug, _)) in stored.iter().enumerate() {
        let st = erase(&env.ctx, &format!("erase-slug-{i}"), t, Some(slug)).await;
        assert_eq!(
            st.phase,
            Some(DeletionPhase::Completed),
            "{slug:?}: {st:#?}"
        );
    }
    assert!(rows_of(&env.db.pool, t).await.is_empty());
}

/// A server segment outside the slug grammar (a control character, one
/// character over the limit) is not stored as a server the CRD could never
/// name: the drain rejects it, attributed to its tenant only, and a
/// whole-tenant erasure removes the reject.
#[tokio::test]
async fn a_server_the_crd_cannot_name_is_a_reject_of_its_tenant() {
    let env = env().await;
    let t = tenant(9);
    let m = minute(3);
    let over = "s".repeat(key::MAX_SERVER_SLUG_CHARS + 1);
    for slug in ["tab\there", "next\u{85}line", over.as_str()] {
        put_verdicts(
            &env.redis.url(),
            &[verdict_key(&t.to_string(), slug, "us-east", m)],
            m,
        )
        .await;
    }
    drain_minute(&env, m).await;
    assert!(rows_of(&env.db.pool, t).await.is_empty());
    let rejects = rejects_of(&env.db.pool, t).await;
    assert_eq!(rejects.len(), 3, "{rejects:?}");
    assert!(
        rejects.iter().all(|(_, server)| server.is_none()),
        "{rejects:?}"
    );
    let st = erase(&env.ctx, "erase-unnameable", t, None).await;
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert!(rejects_of(&env.db.pool, t).await.is_empty());
}

/// Attack: verdicts of an erased pair that arrive after the erasure, in
/// other spellings of the tenant, some the drain rejects (unknown region,
/// an extra segment, a server segment that is not UTF-8 under a
/// whole-tenant erasure). None may be stored, neither as a row nor as a
/// reject; the pair's neighbours still are.
#[tokio::test]
async fn late_verdicts_of_an_erased_pair_are_stored_neither_as_rows_nor_as_rejects() {
    let env = env().await;
    let (t, server) = (tenant(4), "api");
    let whole = tenant(5);
    let st = erase(&env.ctx, "erase-before-late", t, Some(server)).await;
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    let st = erase(&env.ctx, "erase-whole-before-late", whole, None).await;
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");

    // A minute before the erasures, read late (a stalled shard catching up).
    let m = minute(5);
    let upper = t.to_string().to_uppercase();
    let late = vec![
        verdict_key(&upper, server, "us-east", m),
        verdict_key(&t.simple().to_string(), server, "eu-west", m),
        verdict_key(&format!("{{{upper}}}"), server, "nowhere", m),
        format!("verdict:{upper}:{server}:us-east:{}:extra", m.timestamp()).into_bytes(),
        verdict_key(&whole.to_string().to_uppercase(), "any", "us-east", m),
        verdict_key(&whole.simple().to_string(), "", "us-east", m),
        [
            format!("verdict:{}:", whole.simple()).as_bytes(),
            b"caf\xe9:us-east:",
            m.timestamp().to_string().as_bytes(),
        ]
        .concat(),
        format!("verdict:{whole}:x\0y:us-east:{}", m.timestamp()).into_bytes(),
    ];
    let kept = vec![
        verdict_key(&upper, "API", "us-east", m),
        verdict_key(&upper, "api2", "nowhere", m),
    ];
    put_verdicts(&env.redis.url(), &late, m).await;
    put_verdicts(&env.redis.url(), &kept, m).await;
    drain_minute(&env, m).await;

    let rows = rows_of(&env.db.pool, t).await;
    assert_eq!(rows, vec![("API".to_string(), "us-east".to_string())]);
    let rejects = rejects_of(&env.db.pool, t).await;
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0].1.as_deref(), Some("api2"));
    assert!(rows_of(&env.db.pool, whole).await.is_empty());
    assert!(rejects_of(&env.db.pool, whole).await.is_empty());
    // Nor by key text (a reject without columns would escape the above).
    let by_text: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM probe_minute_rejects \
         WHERE lower(verdict_key) LIKE '%' || $1 || '%' OR lower(verdict_key) LIKE '%' || $2 || '%'",
    )
    .bind(whole.simple().to_string())
    .bind(whole.to_string())
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(by_text, 0);
}

/// Attack: a whole-tenant erasure whose keys span several minutes and
/// two shards (two Redis servers), in every spelling, with alert keys on
/// both. Every key and index entry of the tenant goes, on both, and the
/// other tenant's stay.
#[tokio::test]
async fn a_whole_tenant_erasure_across_minutes_and_shards_leaves_nothing() {
    let env = env().await;
    let second = redis_server();
    env.ctx
        .redis_targets
        .publish_shard("test/shard-1", SecretString::new(second.url()));
    let t = tenant(6);
    let spellings = [
        t.to_string(),
        t.to_string().to_uppercase(),
        t.simple().to_string().to_uppercase(),
        format!("{{{t}}}"),
    ];
    let mut expected_keys = 0;
    for url in [env.redis.url(), second.url()] {
        for n in 0..5 {
            let m = minute(n);
            let mut keys: Vec<Vec<u8>> = spellings
                .iter()
                .map(|s| verdict_key(s, &format!("srv-{n}"), "us-east", m))
                .collect();
            expected_keys += keys.len();
            keys.push(verdict_key(&tenant(7).to_string(), "srv", "us-east", m));
            put_verdicts(&url, &keys, m).await;
        }
        let mut conn = redis_conn(&url).await;
        redis::pipe()
            .set(format!("alert:{}:srv-1:cooldown", spellings[2]), "1")
            .ignore()
            .set(format!("tenantcfg:{}", spellings[3]), "{}")
            .ignore()
            .set(format!("tenantcfg:{}", tenant(7)), "{}")
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let st = erase(&env.ctx, "erase-across-shards", t, None).await;
    assert_eq!(st.phase, Some(DeletionPhase::Completed), "{st:#?}");
    assert!(st.verification.as_ref().unwrap().verified, "{st:#?}");
    assert_eq!(st.removed["redis_verdict_keys"], expected_keys as i64);
    assert_eq!(st.removed["redis_index_entries"], expected_keys as i64);
    assert_eq!(st.removed["redis_alert_keys"], 4);
    for url in [env.redis.url(), second.url()] {
        let left = key_names(&url).await;
        assert!(!left.iter().any(|k| contains_tenant(k, t)), "{left:?}");
        assert_eq!(
            left.iter()
                .filter(|k| contains_tenant(k, tenant(7)))
                .count(),
            6
        );
        let members = index_members(&url).await;
        assert!(!members.iter().any(|k| contains_tenant(k, t)));
        assert_eq!(members.len(), 5);
    }
}
