//! Attacks on the partition drop (`removal::detach_and_drop`,
//! `drop_leftover`, `attach_again`) under faults: PostgreSQL restarted
//! (fast shutdown, and immediate shutdown with crash recovery) or the
//! drop's backend killed (`pg_terminate_backend`) while a step waits for a
//! lock, and a schema other than `public`.
//!
//! Promises under attack, whatever instant the fault hits:
//! (a) no row inside retention is lost;
//! (b) the month ends attached with all its rows, dropped only when every
//!     row was past retention, or detached and recorded (a `detach` audit
//!     row without a later `drop`) so the next reconcile finishes it;
//! (c) the next reconcile completes the job without manual repair;
//! (d) the audit trail claims no drop that did not happen.
//!
//! Every scenario runs on a PostgreSQL cluster private to the test (the
//! restart must not disturb the shared test cluster), one fresh database
//! per fault. Each step waits for a lock held by another session with a
//! `lock_timeout` far longer than the test, so the fault always hits the
//! waiting statement. "The next reconcile" is what the PartitionSchedule
//! reconciler's drop step does: `drop_leftover` for every month the audit
//! log records as detached and not dropped (the query of
//! `audit::detached_not_dropped`, crate-private, repeated here), then
//! `detach_and_drop` of the month when it is still attached and past
//! retention.

use std::time::{Duration as StdDuration, Instant};

use sqlx::PgPool;
use tokio::sync::oneshot;

use archiver_operator::local_servers::PostgresServer;
use archiver_operator::partitions::PartitionError;
use archiver_operator::partitions::audit::LockDiscipline;
use archiver_operator::partitions::removal::{self, DropSettings};

#[path = "common/old_month.rs"]
#[allow(dead_code)] // shared by several test binaries; each uses a part
mod old_month;
use old_month::{
    PARTITION, drop_now, example_tiers, one_old_month_in as one_old_month,
    record_contract_in as record_contract,
};

/// What hits the drop while one of its statements waits for a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `pg_ctl stop -m fast` and start (SIGINT to the postmaster).
    FastRestart,
    /// `pg_ctl stop -m immediate` and start: no shutdown checkpoint, crash
    /// recovery replays the WAL.
    ImmediateRestart,
    /// `pg_terminate_backend` of the drop's own backend; the server stays up.
    KillBackend,
}

const FAULTS: [Fault; 3] = [
    Fault::FastRestart,
    Fault::ImmediateRestart,
    Fault::KillBackend,
];

/// Waits far longer than any test: the fault, not the timeout, ends a wait.
fn patient() -> LockDiscipline {
    LockDiscipline {
        lock_timeout: StdDuration::from_secs(60),
        attempts: 1,
        backoff: StdDuration::from_millis(50),
    }
}

/// What the operator runs with after the fault (nothing is in the way).
fn brisk() -> LockDiscipline {
    LockDiscipline {
        lock_timeout: StdDuration::from_secs(2),
        attempts: 3,
        backoff: StdDuration::from_millis(50),
    }
}

/// A private cluster and the databases made on it.
struct Cluster {
    server: PostgresServer,
    databases: u32,
}

impl Cluster {
    fn start() -> Self {
        Self {
            server: PostgresServer::start().expect("start a private PostgreSQL cluster"),
            databases: 0,
        }
    }

    /// A new migrated database; with `schema`, the database's search_path
    /// is that schema alone, so the migrations create every table there
    /// and the operator's connections find them there.
    async fn database(&mut self, schema: Option<&str>) -> PgPool {
        self.databases += 1;
        let name = format!("drop_restart_{}", self.databases);
        let admin = archiver_operator::db::connect(&self.server.url("postgres"), 1)
            .await
            .expect("connect to the private cluster");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        // The shared server runs with synchronous_commit=off (throw-away
        // data); a commit must survive the immediate shutdown here, as it
        // does in production.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET synchronous_commit = on"
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        if let Some(schema) = schema {
            let setup = archiver_operator::db::connect(&self.server.url(&name), 1)
                .await
                .unwrap();
            for statement in [
                format!("CREATE SCHEMA {schema}"),
                format!("ALTER DATABASE {name} SET search_path = {schema}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&setup)
                    .await
                    .unwrap();
            }
            setup.close().await;
        }
        let pool = archiver_operator::db::connect(&self.server.url(&name), 10)
            .await
            .expect("connect to the test database");
        archiver_operator::db::migrate(&pool)
            .await
            .expect("migrations");
        pool
    }

    /// Applies `fault`; `waiter` is the backend of the drop that waits.
    async fn inject(&mut self, fault: Fault, pool: &PgPool, waiter: i32) {
        match fault {
            Fault::FastRestart => {
                tokio::task::block_in_place(|| self.server.restart()).expect("restart postgres");
            }
            Fault::ImmediateRestart => {
                // The postmaster is the parent of every backend.
                let stat = std::fs::read_to_string(format!("/proc/{waiter}/stat"))
                    .expect("the waiting backend's /proc entry");
                let after_name = stat.rsplit_once(')').expect("a /proc stat line").1;
                let postmaster: i32 = after_name
                    .split_whitespace()
                    .nth(1)
                    .expect("the parent pid field")
                    .parse()
                    .expect("a pid");
                // SAFETY: kill(2) of the postmaster this test started.
                let sent = unsafe { libc::kill(postmaster, libc::SIGQUIT) };
                assert_eq!(sent, 0, "SIGQUIT to the postmaster {postmaster}");
                tokio::task::block_in_place(|| self.server.restart())
                    .expect("start postgres after the immediate shutdown");
            }
            Fault::KillBackend => {
                let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                    .bind(waiter)
                    .fetch_one(pool)
                    .await
                    .unwrap();
                assert!(killed, "the drop's backend {waiter} was terminated");
            }
        }
    }
}

/// A session of its own that runs `statements` in a transaction and holds
/// what they locked until released (or until its connection dies).
struct Holder {
    release: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Holder {
    fn spawn(pool: &PgPool, statements: Vec<String>) -> Self {
        let pool = pool.clone();
        let (release, released) = oneshot::channel();
        let done = tokio::spawn(async move {
            let mut tx = pool.begin().await.expect("the holder's transaction");
            for statement in statements {
                // A fault may end the session while it waits; then nothing is held.
                if sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = released.await;
            let _ = tx.rollback().await;
        });
        Self { release, done }
    }

    /// A holder of `mode` on `table`, for a pool given later.
    fn spawn_locking(table: &'static str, mode: &'static str) -> impl Fn(&PgPool) -> Self {
        move |pool| Self::spawn(pool, vec![format!("LOCK TABLE {table} IN {mode} MODE")])
    }

    async fn release(self) {
        let _ = self.release.send(());
        let _ = tokio::time::timeout(StdDuration::from_secs(20), self.done).await;
    }
}

/// Waits until a backend of this database waits for `mode` on `relation`
/// (and `also` holds), and returns that backend.
async fn waiter(pool: &PgPool, mode: &str, relation: &str, also: &str) -> i32 {
    lock_of(pool, false, mode, relation, also).await
}

/// Waits until another backend of this database holds `mode` on `relation`.
async fn holder(pool: &PgPool, mode: &str, relation: &str) -> i32 {
    lock_of(pool, true, mode, relation, "pid <> pg_backend_pid()").await
}

async fn lock_of(pool: &PgPool, granted: bool, mode: &str, relation: &str, also: &str) -> i32 {
    let started = Instant::now();
    loop {
        let statement = format!(
            "SELECT pid FROM pg_locks WHERE granted = {granted} AND mode = $1 \
             AND relation = to_regclass($2) \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ({also}) LIMIT 1"
        );
        let pid: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
            .bind(mode)
            .bind(relation)
            .fetch_optional(pool)
            .await
            .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(20),
            "no lock {mode} (granted {granted}) on {relation} (and {also}) within 20 s"
        );
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
}

/// Whether the detach of the month committed (its audit row).
const DETACHED: &str = "EXISTS (SELECT FROM operator_audit_log WHERE action = 'partition-detach')";

type DropOutcome = Result<removal::Dropped, PartitionError>;
type LeftoverOutcome = Result<Option<removal::Dropped>, PartitionError>;

fn settings<'a>(
    tiers: &'a archiver_operator::api::retention_policy::Tiers,
    lock: LockDiscipline,
) -> DropSettings<'a> {
    DropSettings {
        now: drop_now(),
        lock,
        tiers,
        actor: "attack",
    }
}

fn spawn_drop(
    pool: &PgPool,
    name: &str,
    lock: LockDiscipline,
) -> tokio::task::JoinHandle<DropOutcome> {
    let pool = pool.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let tiers = example_tiers();
        removal::detach_and_drop(&pool, &name, settings(&tiers, lock)).await
    })
}

/// Months the audit log records as detached and never dropped, with the
/// recorded bounds (the query of `audit::detached_not_dropped`).
async fn leftovers(pool: &PgPool) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as(
        "SELECT DISTINCT ON (subject) subject, payload FROM operator_audit_log d \
         WHERE d.action = 'partition-detach' AND NOT EXISTS ( \
             SELECT 1 FROM operator_audit_log x \
             WHERE x.subject = d.subject AND x.action = 'partition-drop' AND x.id > d.id) \
         ORDER BY subject, id DESC",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn spawn_leftovers(pool: &PgPool, lock: LockDiscipline) -> tokio::task::JoinHandle<Vec<String>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let tiers = example_tiers();
        let mut outcomes = Vec::new();
        for (name, recorded) in leftovers(&pool).await {
            let outcome: LeftoverOutcome =
                removal::drop_leftover(&pool, &name, &recorded, settings(&tiers, lock)).await;
            outcomes.push(format!("{name}: {outcome:?}"));
        }
        outcomes
    })
}

/// The month as it stands.
#[derive(Debug)]
struct Month {
    /// `Some(true)` attached, `Some(false)` a detached plain table, `None` gone.
    attached: Option<bool>,
    /// Rows of the month's table, when it exists.
    rows: Option<i64>,
    /// Whether the audit log records it as detached and not dropped.
    recorded_leftover: bool,
    /// `partition-drop` audit rows of the month.
    drop_rows: i64,
}

async fn month(pool: &PgPool, table: &str) -> Month {
    let attached: Option<bool> =
        sqlx::query_scalar("SELECT relispartition FROM pg_class WHERE oid = to_regclass($1)")
            .bind(table)
            .fetch_optional(pool)
            .await
            .unwrap();
    let rows = match attached {
        Some(_) => Some(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(pool)
                .await
                .unwrap(),
        ),
        None => None,
    };
    let recorded_leftover = leftovers(pool).await.iter().any(|(n, _)| n == PARTITION);
    let drop_rows = sqlx::query_scalar(
        "SELECT count(*) FROM operator_audit_log WHERE action = 'partition-drop' AND subject = $1",
    )
    .bind(PARTITION)
    .fetch_one(pool)
    .await
    .unwrap();
    Month {
        attached,
        rows,
        recorded_leftover,
        drop_rows,
    }
}

/// Promises (a), (b) and (d) right after a fault: the month's one row is
/// inside retention or not (`kept`).
fn check_after_fault(month: &Month, kept: bool, context: &str) {
    match month.attached {
        None => {
            assert!(
                !kept,
                "{context}: the month holding a row inside retention was dropped"
            );
            assert_eq!(
                month.drop_rows, 1,
                "{context}: dropped without its audit row: {month:?}"
            );
        }
        Some(true) => {
            assert_eq!(
                month.rows,
                Some(1),
                "{context}: the attached month lost its row"
            );
            assert_eq!(
                month.drop_rows, 0,
                "{context}: the audit claims a drop: {month:?}"
            );
        }
        Some(false) => {
            assert_eq!(
                month.rows,
                Some(1),
                "{context}: the detached month lost its row"
            );
            assert!(
                month.recorded_leftover,
                "{context}: detached but not recorded for the next reconcile: {month:?}"
            );
            assert_eq!(
                month.drop_rows, 0,
                "{context}: the audit claims a drop: {month:?}"
            );
        }
    }
}

/// Promise (c): after the next reconcile the month is gone (its row past
/// retention) or attached with its row (inside retention), and the audit
/// log agrees.
/// After a fault whose statement was waiting for a lock: `expected` is
/// where the month stands when the fault lands first. A restart also ends
/// the session holding that lock, and on a loaded machine the waiting
/// statement can be granted it and finish before its own termination is
/// seen (observed under a parallel build): the drop then ran further, and
/// only what check_after_fault checks (the month is whole, no drop claimed
/// that did not happen) holds. A killed backend cannot race that way (the
/// holder lives), so there the expected state is required.
fn landed(after: &Month, expected: Option<bool>, fault: Fault, context: &str) {
    if !matches!(fault, Fault::KillBackend) {
        return;
    }
    assert_eq!(after.attached, expected, "{context}: {after:?}");
}

fn check_finished(month: &Month, kept: bool, context: &str) {
    if kept {
        assert_eq!(
            (month.attached, month.rows, month.drop_rows),
            (Some(true), Some(1), 0),
            "{context}: the month holding a row inside retention must be attached with it: \
             {month:?}"
        );
    } else {
        assert_eq!(
            (month.attached, month.drop_rows, month.recorded_leftover),
            (None, 1, false),
            "{context}: the month past retention must be dropped and recorded so: {month:?}"
        );
    }
}

/// The next reconcile (see [`next_reconcile_of`]) finishes the job on
/// `table`: dropped and recorded, or attached with its row when `kept`.
async fn finished_by_next_reconcile(pool: &PgPool, table: &str, kept: bool, context: &str) {
    let next = next_reconcile_of(pool, kept, table).await;
    check_finished(
        &month(pool, table).await,
        kept,
        &format!("{context}; next: {next:?}"),
    );
}

/// The next reconcile's drop step: leftovers first, then the month itself
/// when it is still attached and past retention; the month's table is
/// named `table` (schema-qualified when it is off the search_path).
async fn next_reconcile_of(pool: &PgPool, kept: bool, table: &str) -> Vec<String> {
    let mut outcomes = spawn_leftovers(pool, brisk()).await.unwrap();
    if !kept && month(pool, table).await.attached == Some(true) {
        let outcome = spawn_drop(pool, PARTITION, brisk()).await.unwrap();
        outcomes.push(format!("detach_and_drop: {outcome:?}"));
    }
    outcomes
}

async fn finish<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(StdDuration::from_secs(60), task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 60 s of the fault"))
        .unwrap()
}

/// The fault hits the DETACH while it waits for ACCESS EXCLUSIVE on
/// probe_minute (a reader of probe_minute holds ACCESS SHARE). The attempt
/// never committed: the month must be attached with its row, and the next
/// reconcile drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_while_the_detach_waits_leaves_the_month_attached_and_the_next_reconcile_drops_it()
{
    let mut cluster = Cluster::start();
    for fault in FAULTS {
        let pool = cluster.database(None).await;
        one_old_month(&pool).await;
        let reader = Holder::spawn(&pool, vec!["SELECT count(*) FROM probe_minute".into()]);
        holder(&pool, "AccessShareLock", "probe_minute").await;
        let drop = spawn_drop(&pool, PARTITION, patient());
        let waiting = waiter(&pool, "AccessExclusiveLock", "probe_minute", "true").await;
        cluster.inject(fault, &pool, waiting).await;
        let outcome = finish(drop, "the drop").await;
        reader.release().await;
        let context = format!("{fault:?} during the DETACH's lock wait, drop: {outcome:?}");
        let after = month(&pool, PARTITION).await;
        check_after_fault(&after, false, &context);
        landed(&after, Some(true), fault, &context);
        finished_by_next_reconcile(&pool, PARTITION, false, &context).await;
        pool.close().await;
    }
}

/// Brings the drop to the point between its committed DETACH and its DROP:
/// the drop waits for ACCESS EXCLUSIVE on the detached table, held in
/// ACCESS SHARE by a session that queued behind the DETACH. Returns the
/// drop, that session (`table_reader`) and the drop's backend.
async fn drop_waiting_after_the_detach(
    pool: &PgPool,
    table: &str,
) -> (tokio::task::JoinHandle<DropOutcome>, Holder, i32) {
    // A reader of the month makes the DETACH wait for the month's lock
    // (its SHARE lock is granted: both only read).
    let month_reader = Holder::spawn(pool, vec![format!("SELECT count(*) FROM {table}")]);
    holder(pool, "AccessShareLock", table).await;
    let drop = spawn_drop(pool, PARTITION, patient());
    waiter(pool, "AccessExclusiveLock", table, "true").await;
    // Queued behind the DETACH: granted the moment the detach commits, before
    // the drop's transaction asks for the table.
    let table_reader = Holder::spawn(
        pool,
        vec![format!("LOCK TABLE {table} IN ACCESS SHARE MODE")],
    );
    waiter(pool, "AccessShareLock", table, "true").await;
    month_reader.release().await;
    let waiting = waiter(pool, "AccessExclusiveLock", table, DETACHED).await;
    (drop, table_reader, waiting)
}

/// The fault hits between the committed DETACH and the DROP (the drop
/// waits for the detached table), and then again while the next
/// reconcile's `drop_leftover` waits for the table: the month must stay
/// detached with its row and recorded, and the reconcile after that drops
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_between_detach_and_drop_and_again_in_drop_leftover_ends_in_the_drop() {
    let mut cluster = Cluster::start();
    for fault in FAULTS {
        let pool = cluster.database(None).await;
        one_old_month(&pool).await;
        let (drop, table_reader, waiting) = drop_waiting_after_the_detach(&pool, PARTITION).await;
        cluster.inject(fault, &pool, waiting).await;
        let outcome = finish(drop, "the drop").await;
        table_reader.release().await;
        let context = format!("{fault:?} between DETACH and DROP, drop: {outcome:?}");
        let after = month(&pool, PARTITION).await;
        check_after_fault(&after, false, &context);
        landed(&after, Some(false), fault, &context);
        if after.attached.is_none() {
            // The DROP won the race (see `landed`): nothing is left over.
            check_finished(&after, false, &context);
            pool.close().await;
            continue;
        }

        // Again, while the next reconcile's drop_leftover waits for the table.
        let table_reader = Holder::spawn(
            &pool,
            vec![format!("LOCK TABLE {PARTITION} IN ACCESS SHARE MODE")],
        );
        holder(&pool, "AccessShareLock", PARTITION).await;
        let reconcile = spawn_leftovers(&pool, patient());
        let waiting = waiter(&pool, "AccessExclusiveLock", PARTITION, "true").await;
        cluster.inject(fault, &pool, waiting).await;
        let leftover = finish(reconcile, "drop_leftover").await;
        table_reader.release().await;
        let context = format!("{context}; {fault:?} in drop_leftover's lock wait: {leftover:?}");
        let after = month(&pool, PARTITION).await;
        check_after_fault(&after, false, &context);
        landed(&after, Some(false), fault, &context);

        finished_by_next_reconcile(&pool, PARTITION, false, &context).await;
        pool.close().await;
    }
}

/// The fault hits `attach_again` while its ATTACH waits for probe_minute:
/// billing recorded a contract between the DETACH and the drop's count,
/// so the drop attaches the month again, and another session holds SHARE
/// on probe_minute. Then again while the next reconcile's `drop_leftover`
/// attaches it. The month must stay detached with its row and recorded,
/// and the reconcile after that attaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_while_attaching_again_keeps_the_row_and_the_next_reconcile_attaches_it() {
    let mut cluster = Cluster::start();
    for fault in FAULTS {
        let pool = cluster.database(None).await;
        one_old_month(&pool).await;
        let context = attach_again_scenario(&mut cluster, &pool, fault, PARTITION).await;
        finished_by_next_reconcile(&pool, PARTITION, true, &context).await;
        pool.close().await;
    }
}

/// The two faults of the re-attach (see above), on the month's `table`
/// (made already); returns what happened, for messages.
async fn attach_again_scenario(
    cluster: &mut Cluster,
    pool: &PgPool,
    fault: Fault,
    table: &str,
) -> String {
    let (drop, table_reader, _) = drop_waiting_after_the_detach(pool, table).await;
    record_contract(pool).await;
    let parent_lock = Holder::spawn(pool, vec!["LOCK TABLE probe_minute IN SHARE MODE".into()]);
    holder(pool, "ShareLock", "probe_minute").await;
    table_reader.release().await;
    let waiting = waiter(pool, "ShareUpdateExclusiveLock", "probe_minute", "true").await;
    cluster.inject(fault, pool, waiting).await;
    let outcome = finish(drop, "the drop").await;
    parent_lock.release().await;
    let context = format!("{fault:?} during attach_again, drop: {outcome:?}");
    assert!(outcome.is_err(), "{context}");
    let after = month(pool, table).await;
    check_after_fault(&after, true, &context);
    landed(&after, Some(false), fault, &context);
    if after.attached == Some(true) {
        // The ATTACH won the race (see `landed`): nothing is left over for
        // the next reconcile to attach.
        return context;
    }

    // Again, in the next reconcile's drop_leftover.
    let parent_lock = Holder::spawn(pool, vec!["LOCK TABLE probe_minute IN SHARE MODE".into()]);
    holder(pool, "ShareLock", "probe_minute").await;
    let reconcile = spawn_leftovers(pool, patient());
    let waiting = waiter(pool, "ShareUpdateExclusiveLock", "probe_minute", "true").await;
    cluster.inject(fault, pool, waiting).await;
    let leftover = finish(reconcile, "drop_leftover").await;
    parent_lock.release().await;
    let context = format!("{context}; {fault:?} in drop_leftover's attach: {leftover:?}");
    let after = month(pool, table).await;
    check_after_fault(&after, true, &context);
    landed(&after, Some(false), fault, &context);
    context
}

/// Every table in a schema other than `public`, found through the
/// operator's search_path (the database's `search_path = archive`): a fast
/// restart between DETACH and DROP, and the two in the re-attach, end as
/// they do in `public`, and nothing is created in `public`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_other_than_public_through_the_search_path() {
    let mut cluster = Cluster::start();
    let fault = Fault::FastRestart;
    // Past retention: dropped after a fault between DETACH and DROP.
    let pool = cluster.database(Some("archive")).await;
    one_old_month(&pool).await;
    let schema: String = sqlx::query_scalar(
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass($1)",
    )
    .bind(PARTITION)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        schema, "archive",
        "the month is created in the search_path's schema"
    );
    let (drop, table_reader, waiting) = drop_waiting_after_the_detach(&pool, PARTITION).await;
    cluster.inject(fault, &pool, waiting).await;
    let outcome = finish(drop, "the drop").await;
    table_reader.release().await;
    let context = format!("archive schema, {fault:?} between DETACH and DROP, drop: {outcome:?}");
    check_after_fault(&month(&pool, PARTITION).await, false, &context);
    finished_by_next_reconcile(&pool, PARTITION, false, &context).await;
    let in_public: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_public, 0, "nothing is created in public");
    pool.close().await;

    // Inside retention: attached again after the faults of the re-attach.
    let pool = cluster.database(Some("archive")).await;
    one_old_month(&pool).await;
    let context = attach_again_scenario(&mut cluster, &pool, fault, PARTITION).await;
    finished_by_next_reconcile(
        &pool,
        PARTITION,
        true,
        &format!("archive schema, {context}"),
    )
    .await;
    pool.close().await;
}

/// A month of probe_minute in a schema off the operator's search_path
/// (moved to `cold`, e.g. onto slower storage by hand). The catalog reads
/// it as `cold.probe_minute_2027_01` and the DETACH uses that name.
async fn month_in_cold(pool: &PgPool) {
    month_in_schema(pool, "cold").await;
}

/// The month moved to `schema` (a quoted identifier or a plain name).
async fn month_in_schema(pool: &PgPool, schema: &str) {
    one_old_month(pool).await;
    for statement in [
        format!("CREATE SCHEMA {schema}"),
        format!("ALTER TABLE {PARTITION} SET SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap();
    }
}

const COLD: &str = "cold.probe_minute_2027_01";

/// Defect (fixed: the drop names the table by the schema it was detached
/// from, recorded with the detach): a month off the search_path was
/// detached (by its qualified name) and then left: the drop looks the detached table up by its bare name,
/// finds nothing, reports "not a detached table any more; left as is", and
/// every later reconcile's `drop_leftover` finds nothing either and
/// returns `Ok(None)`. The month stays a detached table for ever, invisible
/// to every query of probe_minute, and no reconcile reports it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_off_the_search_path_is_dropped_not_left_detached() {
    let mut cluster = Cluster::start();
    let pool = cluster.database(None).await;
    month_in_cold(&pool).await;
    let outcome = spawn_drop(&pool, PARTITION, brisk()).await.unwrap();
    let next = next_reconcile_of(&pool, false, COLD).await;
    let after = month(&pool, COLD).await;
    check_finished(
        &after,
        false,
        &format!("drop of {COLD}: {outcome:?}; next reconcile: {next:?}"),
    );
    pool.close().await;
}

/// Defect (fixed with the one above): the same month off the search_path,
/// and a plain table of the same name in `public` (a copy restored for
/// inspection). The drop detached `cold.probe_minute_2027_01`, then locked,
/// counted and dropped `public.probe_minute_2027_01` — a table that was
/// never a partition — and recorded `partition-drop`: the audit claimed the
/// month dropped while it was still there, detached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drop_drops_the_month_it_detached_not_a_namesake_on_the_search_path() {
    let mut cluster = Cluster::start();
    let pool = cluster.database(None).await;
    month_in_cold(&pool).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE public.{PARTITION} (LIKE probe_minute)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let outcome = spawn_drop(&pool, PARTITION, brisk()).await.unwrap();
    let namesake = month(&pool, &format!("public.{PARTITION}")).await;
    let after = month(&pool, COLD).await;
    let context = format!("drop of {COLD}: {outcome:?}");
    assert_eq!(
        namesake.attached,
        Some(false),
        "{context}: public.{PARTITION}, never a partition of probe_minute, was dropped"
    );
    if after.drop_rows > 0 {
        assert_eq!(
            after.attached, None,
            "{context}: the audit log records the drop of {PARTITION} while {COLD} is still there: \
             {after:?}"
        );
    }
    check_finished(&after, false, &context);
    pool.close().await;
}

/// The month off the search_path under the faults: between DETACH and DROP
/// (past retention; the next reconcile's `drop_leftover` must find the
/// table in the schema recorded with the detach and drop it), and in the
/// re-attach (inside retention; attached again from `cold`). On the code
/// before the fix the drop never reaches its lock wait on the detached
/// table: it looks up the bare name, finds nothing and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_off_the_search_path_under_faults_is_finished_by_the_next_reconcile() {
    let mut cluster = Cluster::start();
    let fault = Fault::FastRestart;
    let pool = cluster.database(None).await;
    month_in_cold(&pool).await;
    let (drop, table_reader, waiting) = drop_waiting_after_the_detach(&pool, COLD).await;
    cluster.inject(fault, &pool, waiting).await;
    let outcome = finish(drop, "the drop").await;
    table_reader.release().await;
    let context = format!("{COLD}, {fault:?} between DETACH and DROP, drop: {outcome:?}");
    let after = month(&pool, COLD).await;
    check_after_fault(&after, false, &context);
    landed(&after, Some(false), fault, &context);
    finished_by_next_reconcile(&pool, COLD, false, &context).await;
    pool.close().await;

    let pool = cluster.database(None).await;
    month_in_cold(&pool).await;
    let context = attach_again_scenario(&mut cluster, &pool, fault, COLD).await;
    finished_by_next_reconcile(&pool, COLD, true, &format!("{COLD}, {context}")).await;
    pool.close().await;
}

/// The fault hits after a statement that changes the month ran and before
/// its transaction commits: the audit row written in the same transaction
/// waits (another session holds SHARE on operator_audit_log). First after
/// the DETACH (ACCESS EXCLUSIVE on probe_minute held, `partition-detach`
/// not yet written): the month must be attached and the next reconcile
/// drops it. Then after the DROP TABLE (`partition-drop` not yet
/// written): the month must still be there, detached and recorded, with
/// no drop claimed, and the next reconcile drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_before_the_audit_row_of_the_detach_or_the_drop_commits_claims_nothing() {
    let mut cluster = Cluster::start();
    let audit_lock = || Holder::spawn_locking("operator_audit_log", "SHARE");
    for fault in FAULTS {
        // After the DETACH.
        let pool = cluster.database(None).await;
        one_old_month(&pool).await;
        let month_reader = Holder::spawn(&pool, vec![format!("SELECT count(*) FROM {PARTITION}")]);
        holder(&pool, "AccessShareLock", PARTITION).await;
        let drop = spawn_drop(&pool, PARTITION, patient());
        // The DETACH waits for the month: its intent is recorded already.
        waiter(&pool, "AccessExclusiveLock", PARTITION, "true").await;
        let audit = audit_lock()(&pool);
        holder(&pool, "ShareLock", "operator_audit_log").await;
        month_reader.release().await;
        let waiting = waiter(&pool, "RowExclusiveLock", "operator_audit_log", "true").await;
        let detached_uncommitted: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1 AND granted \
             AND mode = 'AccessExclusiveLock' AND relation = 'probe_minute'::regclass)",
        )
        .bind(waiting)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            detached_uncommitted,
            "the DETACH ran before the audit row waits"
        );
        cluster.inject(fault, &pool, waiting).await;
        let outcome = finish(drop, "the drop").await;
        audit.release().await;
        let context = format!("{fault:?} before the detach's audit row, drop: {outcome:?}");
        let after = month(&pool, PARTITION).await;
        check_after_fault(&after, false, &context);
        landed(&after, Some(true), fault, &context);
        finished_by_next_reconcile(&pool, PARTITION, false, &context).await;
        pool.close().await;

        // After the DROP TABLE.
        let pool = cluster.database(None).await;
        one_old_month(&pool).await;
        let (drop, table_reader, _) = drop_waiting_after_the_detach(&pool, PARTITION).await;
        // The drop's intent is recorded before its transaction asks for the table.
        let audit = audit_lock()(&pool);
        holder(&pool, "ShareLock", "operator_audit_log").await;
        table_reader.release().await;
        let waiting = waiter(&pool, "RowExclusiveLock", "operator_audit_log", "true").await;
        let dropped_uncommitted: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE l.pid = $1 AND l.granted AND l.mode = 'AccessExclusiveLock' \
               AND c.relname = $2)",
        )
        .bind(waiting)
        .bind(PARTITION)
        .fetch_one(&pool)
        .await
        .unwrap();
        // (Nothing here may read the table: it would wait for the drop.)
        assert!(
            dropped_uncommitted,
            "the drop holds the detached table while its audit row waits"
        );
        cluster.inject(fault, &pool, waiting).await;
        let outcome = finish(drop, "the drop").await;
        audit.release().await;
        let context = format!("{fault:?} before the drop's audit row, drop: {outcome:?}");
        let after = month(&pool, PARTITION).await;
        check_after_fault(&after, false, &context);
        landed(&after, Some(false), fault, &context);
        finished_by_next_reconcile(&pool, PARTITION, false, &context).await;
        pool.close().await;
    }
}

/// A month off the search_path in a schema whose name needs quotes
/// (`"Cold Store"`): a fault between DETACH and DROP, and the next
/// reconcile's `drop_leftover` finds the table by the recorded schema and
/// drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_in_a_schema_whose_name_needs_quotes_is_finished_after_a_fault() {
    let table = format!("\"Cold Store\".{PARTITION}");
    let mut cluster = Cluster::start();
    let fault = Fault::KillBackend;
    let pool = cluster.database(None).await;
    month_in_schema(&pool, "\"Cold Store\"").await;
    let (drop, table_reader, waiting) = drop_waiting_after_the_detach(&pool, &table).await;
    cluster.inject(fault, &pool, waiting).await;
    let outcome = finish(drop, "the drop").await;
    table_reader.release().await;
    let context = format!("{table}, {fault:?} between DETACH and DROP, drop: {outcome:?}");
    let after = month(&pool, &table).await;
    check_after_fault(&after, false, &context);
    landed(&after, Some(false), fault, &context);
    finished_by_next_reconcile(&pool, &table, false, &context).await;
    pool.close().await;
}
