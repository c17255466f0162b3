//! Attacks on the erasure-only Redis targets (`--erasure-redis-url`,
//! `src/erasure/redis_targets.rs`) with real PostgreSQL and Redis: a URL
//! with a password, a target that is down or refuses the password, the
//! shard's own Redis listed again, twice, and with another database index,
//! tenant spellings in upper case and key names that are not UTF-8.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use archiver_operator::api::deletion_request::{
    DeletionPhase, DeletionReason, DeletionRequestSpec,
};
use archiver_operator::api::{DeletionRequest, DeletionRequestStatus};
use archiver_operator::archive::verdict::index_key;
use archiver_operator::clock::ManualClock;
use archiver_operator::local_servers::RedisServer;
use archiver_operator::metrics::Metrics;
use archiver_operator::runtime::config::{OperatorConfig, SecretString};
use archiver_operator::runtime::context::{Context, SecretSource};
use archiver_operator::runtime::reconcile::{Managed, Outcome};
use archiver_operator::runtime::workers::WorkerHost;
use archiver_operator::testing::{TestDatabase, redis_server};

const TENANT: Uuid = Uuid::from_u128(0xe7a5_0000_0000_4000_8000_0000_0000_0001);
const NEIGHBOUR: Uuid = Uuid::from_u128(0xe7a5_0000_0000_4000_8000_0000_0000_0002);
const PASSWORD: &str = "Sekr3t-Passw0rd-e7a5";
const ALERT_PATTERNS: [&str; 1] = ["alert:{tenant}:{server}:*"];

fn minute() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

fn context(pool: &PgPool, shard: &RedisServer, extra: Vec<String>) -> Context {
    let ctx = Context {
        clock: Arc::new(ManualClock::new(minute() + chrono::Duration::minutes(30))),
        db: Some(pool.clone()),
        config: Arc::new(OperatorConfig {
            suppression_salt: Some(SecretString::new("erasure-redis-salt")),
            cache_invalidate_urls: Vec::new(),
            alert_key_patterns: ALERT_PATTERNS.iter().map(|p| p.to_string()).collect(),
            erasure_out_of_scope_tables: Vec::new(),
            erasure_redis_urls: extra.into_iter().map(SecretString::new).collect(),
        }),
        secrets: SecretSource::Manifests(Default::default()),
        metrics: Arc::new(Metrics::new()),
        workers: WorkerHost::Disabled,
        policies: Arc::new(archiver_operator::retention::directory::PolicyDirectory::new()),
        enforced_policies: Default::default(),
        redis_targets: Default::default(),
        publisher: archiver_operator::runtime::publish::Publisher::Disabled,
    };
    ctx.redis_targets
        .publish_shard("test/shard-0", SecretString::new(shard.url()));
    ctx
}

fn request(name: &str, server: Option<&str>) -> DeletionRequest {
    let mut object = DeletionRequest::new(
        name,
        DeletionRequestSpec {
            tenant_id: TENANT,
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

async fn reconcile(ctx: &Context, object: &DeletionRequest) -> Outcome<DeletionRequestStatus> {
    object.reconcile(ctx).await.expect("a status")
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The tenant's keys (in lower- and upper-case spellings, one server name
/// not UTF-8) and the neighbour's, with their index entries and alert keys.
fn pair_keys(tenant: Uuid) -> Vec<Vec<u8>> {
    let at = minute().timestamp();
    let lower = tenant.to_string();
    let upper = lower.to_uppercase();
    vec![
        format!("verdict:{lower}:web:us-east:{at}").into_bytes(),
        format!("verdict:{upper}:web:eu-west:{at}").into_bytes(),
        [
            format!("verdict:{lower}:").into_bytes(),
            b"w\xffb".to_vec(),
            format!(":us-east:{at}").into_bytes(),
        ]
        .concat(),
        format!("alert:{lower}:web:open").into_bytes(),
        format!("alert:{upper}:api:open").into_bytes(),
    ]
}

async fn seed(url: &str) {
    let mut conn = conn(url).await;
    let mut pipe = redis::pipe();
    for tenant in [TENANT, NEIGHBOUR] {
        for key in pair_keys(tenant) {
            if key.starts_with(b"verdict:") {
                pipe.hset_multiple(&key, &[("state", "up"), ("verdict_sealed", "1")])
                    .ignore();
                pipe.sadd(index_key(minute()), &key).ignore();
            } else {
                pipe.set(&key, "1").ignore();
            }
        }
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();
}

/// Every key name and every index member.
async fn snapshot(url: &str) -> BTreeSet<Vec<u8>> {
    let mut conn = conn(url).await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut all: BTreeSet<Vec<u8>> = keys.into_iter().collect();
    let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
        .arg(index_key(minute()))
        .query_async(&mut conn)
        .await
        .unwrap();
    all.extend(
        members
            .into_iter()
            .map(|m| [b"member ".to_vec(), m].concat()),
    );
    all
}

fn expected_after(before: &BTreeSet<Vec<u8>>) -> BTreeSet<Vec<u8>> {
    let erased: BTreeSet<Vec<u8>> = pair_keys(TENANT).into_iter().collect();
    before
        .iter()
        .filter(|k| {
            let name = k.strip_prefix(b"member ").unwrap_or(k);
            !erased.contains(name)
        })
        .cloned()
        .collect()
}

/// Attack: the shard's own Redis listed again as an erasure-only Redis,
/// twice, and once more with database index 3 (where the alert router
/// keeps its keys), holding upper-case spellings of the tenant and a
/// server name that is not UTF-8. A tenant-wide erasure removes the
/// tenant's keys in database 0 and 3 and nothing of the neighbour's; the
/// counts are of keys removed, not of targets that saw them (the same key
/// is not counted twice), and the erasure is verified.
#[tokio::test]
async fn the_shard_redis_listed_again_twice_and_with_another_database() {
    let db = TestDatabase::new().await;
    let shard = redis_server();
    let db3 = format!("{}/3", shard.url().trim_end_matches('/'));
    seed(&shard.url()).await;
    seed(&db3).await;
    let before_0 = snapshot(&shard.url()).await;
    let before_3 = snapshot(&db3).await;
    let ctx = context(
        &db.pool,
        &shard,
        vec![shard.url(), shard.url(), db3.clone()],
    );

    let status = reconcile(&ctx, &request("erase-listed-twice", None))
        .await
        .status;
    assert_eq!(status.phase, Some(DeletionPhase::Completed), "{status:#?}");
    assert_eq!(snapshot(&shard.url()).await, expected_after(&before_0));
    assert_eq!(snapshot(&db3).await, expected_after(&before_3));
    // Three verdict keys and two alert keys in each database, once each.
    assert_eq!(status.removed["redis_verdict_keys"], 6, "{status:#?}");
    assert_eq!(status.removed["redis_index_entries"], 6, "{status:#?}");
    assert_eq!(status.removed["redis_alert_keys"], 4, "{status:#?}");
    let verification = status.verification.expect("verified");
    assert!(verification.verified, "{verification:#?}");
}

/// Attack: an erasure-only Redis URL with a password, first down, then up
/// but refusing that password. Both fail the erasure at step `redis` with
/// nothing kept of the Postgres side; the password is in no status, event,
/// receipt or metric. With the right password the retry completes and the
/// receipt names the target by its label only.
#[tokio::test]
async fn a_password_in_an_erasure_redis_url_never_leaves_the_process() {
    let db = TestDatabase::new().await;
    let shard = redis_server();
    let mut extra = redis_server();
    seed(&extra.url()).await;
    let port = extra.port();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}/0");
    let object = request("erase-with-password", Some("web"));
    let leaks = |ctx: &Context, outcome: &Outcome<DeletionRequestStatus>| {
        let mut seen = serde_json::to_string(&outcome.status).unwrap();
        for event in &outcome.events {
            seen.push_str(&event.reason);
            seen.push_str(&event.note);
        }
        seen.push_str(&ctx.metrics.encode());
        seen.push_str(&format!("{:?}", ctx.config));
        seen.contains(PASSWORD) || seen.contains("Sekr3t")
    };

    // Down.
    extra.halt();
    let ctx = context(&db.pool, &shard, vec![url.clone()]);
    let outcome = reconcile(&ctx, &object).await;
    assert_ne!(outcome.status.phase, Some(DeletionPhase::Completed));
    let failure = outcome.status.last_failure.clone().unwrap_or_default();
    assert!(failure.contains("erasure-redis/0"), "{failure}");
    assert!(!leaks(&ctx, &outcome), "{outcome:#?}");

    // Up, with a password the URL does not have.
    extra.start_again().unwrap();
    seed(&extra.url()).await;
    let mut admin = conn(&extra.url()).await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("another-password")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let outcome = reconcile(&ctx, &object).await;
    assert_ne!(outcome.status.phase, Some(DeletionPhase::Completed));
    assert!(!leaks(&ctx, &outcome), "{outcome:#?}");

    // The right password: the retry completes; the receipt has the label.
    let mut admin = conn(&format!("redis://:another-password@127.0.0.1:{port}/0")).await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(PASSWORD)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let outcome = reconcile(&ctx, &object).await;
    assert_eq!(
        outcome.status.phase,
        Some(DeletionPhase::Completed),
        "{:#?}",
        outcome.status
    );
    assert!(!leaks(&ctx, &outcome), "{outcome:#?}");
    let receipt = outcome.status.receipt.clone().unwrap_or_default();
    assert!(receipt.contains("erasure-redis/0"), "{receipt}");
    assert!(!receipt.contains(PASSWORD));
    let stored: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM operator_audit_log")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(stored.iter().all(|p| !p.contains(PASSWORD)), "{stored:?}");
    let left: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("*{TENANT}:web*"))
        .query_async(&mut conn(&url).await)
        .await
        .unwrap();
    assert_eq!(left, Vec::<Vec<u8>>::new());
}

/// Attack: an erasure-only Redis URL with a password but a typo in its
/// scheme, given as the flag, as the environment variable, and split by a
/// comma in the password. Startup refuses it (exit 2) naming the flag;
/// before the fix clap printed the rejected value, password and all, into
/// the operator's log (`invalid value 'redis//:…@host'`).
#[test]
fn a_malformed_erasure_redis_url_is_refused_without_printing_it() {
    let malformed = format!("redis//:{PASSWORD}@127.0.0.1:6379/0");
    let with_comma = "redis://:Sekr3t,Tail-e7a5@127.0.0.1:6379/0".to_string();
    let runs: [(&str, Vec<String>, Option<String>); 3] = [
        (
            "flag",
            vec!["--erasure-redis-url".into(), malformed.clone()],
            None,
        ),
        ("environment", Vec::new(), Some(malformed.clone())),
        ("comma", Vec::new(), Some(with_comma)),
    ];
    for (how, args, env) in runs {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"));
        command
            .args(["run", "--once", "--manifests", "/nonexistent"])
            .args(&args)
            .env_remove("ARCHIVER_ERASURE_REDIS_URLS");
        if let Some(value) = &env {
            command.env("ARCHIVER_ERASURE_REDIS_URLS", value);
        }
        let output = command.output().expect("the operator runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(2), "{how}: {stderr}");
        assert!(stderr.contains("erasure-redis-url"), "{how}: {stderr}");
        for secret in [PASSWORD, "Sekr3t", "Tail-e7a5"] {
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "{how}: the password is printed: {stderr}"
            );
        }
    }
}

/// Attack: one Secret per erasure-only Redis, as the chart maps them, but
/// a variable named by hand with a word instead of a number
/// (`ARCHIVER_ERASURE_REDIS_URL_ALERTS`), and one whose value is no Redis
/// URL. Before the fix the operator started (exit 0): the first was never
/// read, so every erasure reported "verified" without touching that Redis;
/// the second would fail only at the first erasure. Now startup refuses
/// both (exit 2) naming the variable, never the value; a well-formed
/// numbered variable starts as before.
#[test]
fn numbered_erasure_redis_variables_are_checked_at_startup() {
    let manifests = tempfile::tempdir().unwrap();
    let valid = format!("redis://:{PASSWORD}@127.0.0.1:6379/0");
    let cases = [
        ("ARCHIVER_ERASURE_REDIS_URL_ALERTS", valid.clone(), Some(2)),
        (
            "ARCHIVER_ERASURE_REDIS_URL_1",
            format!("http://:{PASSWORD}@127.0.0.1:6379/0"),
            Some(2),
        ),
        ("ARCHIVER_ERASURE_REDIS_URL_1", valid.clone(), Some(0)),
    ];
    for (variable, value, expected) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(["run", "--once", "--manifests"])
            .arg(manifests.path())
            .env_remove("DATABASE_URL")
            .env_remove("ARCHIVER_ERASURE_REDIS_URLS")
            .env(variable, &value)
            .output()
            .expect("the operator runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), expected, "{variable}: {stderr}");
        if expected == Some(2) {
            assert!(stderr.contains(variable), "{variable}: {stderr}");
        }
        assert!(
            !stderr.contains(PASSWORD) && !stdout.contains(PASSWORD),
            "{variable}: the password is printed: {stderr}"
        );
    }
}

/// Attack: the erasure-only Redis restarts between its keys' removal and
/// the verification, and comes back with the keys (its persistence file
/// predates the erasure). The erasure transaction is held on a lock of
/// another session after the Redis side finished; meanwhile the Redis
/// restarts with the tenant's keys again. The verification counts them:
/// the attempt fails at step `verification`, without a receipt, and the
/// retry removes them and completes.
#[tokio::test]
async fn an_erasure_redis_that_restarts_with_the_keys_is_not_verified() {
    use std::time::{Duration, Instant};
    let db = TestDatabase::new().await;
    let shard = redis_server();
    let mut extra = redis_server();
    seed(&extra.url()).await;
    let ctx = context(&db.pool, &shard, vec![extra.url()]);
    let object = request("erase-restarting-redis", Some("web"));
    let tenant_web_keys = |url: String| async move {
        let found: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("*{TENANT}:web*"))
            .query_async(&mut conn(&url).await)
            .await
            .unwrap();
        found.len()
    };
    assert_eq!(tenant_web_keys(extra.url()).await, 2);

    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE probe_month IN EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let erasure = async {
        let outcome = reconcile(&ctx, &object).await;
        outcome.status
    };
    let restart = async {
        // The Redis side is done (the keys are gone) and the transaction
        // waits for the lock.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if waiting > 0 && tenant_web_keys(extra.url()).await == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the erasure never got there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        extra.halt();
        extra.start_again().unwrap();
        seed(&extra.url()).await;
        holder.commit().await.unwrap();
    };
    let (status, ()) = tokio::join!(erasure, restart);
    assert_ne!(status.phase, Some(DeletionPhase::Completed), "{status:#?}");
    assert_eq!(status.receipt, None);
    let failure = status.last_failure.clone().unwrap_or_default();
    assert!(failure.contains("verification"), "{failure}");

    let mut object = object;
    object.status = Some(status);
    let status = reconcile(&ctx, &object).await.status;
    assert_eq!(status.phase, Some(DeletionPhase::Completed), "{status:#?}");
    assert_eq!(tenant_web_keys(extra.url()).await, 0);
}
