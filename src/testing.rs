//! Test support shared by the integration tests and the benchmarks: one
//! throw-away PostgreSQL cluster per test process (a fresh, migrated database
//! per test, cloned from a template in milliseconds) and one Redis server per
//! test. Everything is removed when the process exits, also after a failed
//! test; if the process is killed, the kernel stops the servers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use sqlx::PgPool;

use crate::local_servers::{LocalServerError, PostgresServer, RedisServer};

const TEMPLATE: &str = "archiver_template";

/// The shared cluster: its port, or why it could not start.
static CLUSTER_PORT: OnceLock<Result<u16, String>> = OnceLock::new();
/// Owned here so the exit hook can stop it.
static CLUSTER: Mutex<Option<PostgresServer>> = Mutex::new(None);
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_cluster_at_exit() {
    if let Ok(mut cluster) = CLUSTER.lock()
        && let Some(mut server) = cluster.take()
    {
        server.stop();
    }
}

/// Starts the cluster on a thread that lives as long as the process: the
/// kernel's parent-death signal is tied to the spawning thread, and a test's
/// thread ends long before the process does.
fn start_cluster() -> Result<u16, String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres-keeper".into())
        .spawn(move || {
            let started = PostgresServer::start().and_then(|server| {
                let port = server.port();
                prepare_template(&server.url("postgres"), &server.url(TEMPLATE))?;
                if let Ok(mut cluster) = CLUSTER.lock() {
                    *cluster = Some(server);
                }
                Ok(port)
            });
            let _ = sender.send(started.map_err(|e| e.to_string()));
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("cannot start the PostgreSQL keeper thread: {e}"))?;
    // SAFETY: registering a plain extern "C" function with atexit.
    unsafe {
        libc::atexit(stop_cluster_at_exit);
    }
    receiver
        .recv()
        .map_err(|_| "the PostgreSQL keeper thread died".to_string())?
}

/// Creates and migrates the template every test database is cloned from.
fn prepare_template(admin_url: &str, template_url: &str) -> Result<(), LocalServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| LocalServerError::Io {
            context: "building a runtime for the template".into(),
            source,
        })?;
    let (admin_url, template_url) = (admin_url.to_string(), template_url.to_string());
    runtime.block_on(async move {
        let failed = |what: &str, e: String| LocalServerError::Command {
            what: what.into(),
            detail: e,
        };
        let admin = crate::db::connect(&admin_url, 1)
            .await
            .map_err(|e| failed("connecting to the test cluster", e.to_string()))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {TEMPLATE}")))
            .execute(&admin)
            .await
            .map_err(|e| failed("creating the template database", e.to_string()))?;
        admin.close().await;
        let template = crate::db::connect(&template_url, 1)
            .await
            .map_err(|e| failed("connecting to the template", e.to_string()))?;
        crate::db::migrate(&template)
            .await
            .map_err(|e| failed("migrating the template", e.to_string()))?;
        template.close().await;
        Ok(())
    })
}

fn cluster_port() -> u16 {
    match CLUSTER_PORT.get_or_init(start_cluster) {
        Ok(port) => *port,
        Err(reason) => panic!("test PostgreSQL cluster unavailable: {reason}"),
    }
}

/// A fresh database with the whole schema applied, private to one test.
pub struct TestDatabase {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    /// `pg_dump` of this database in custom format into `file`, as a backup
    /// job takes it (the restore-drill tests restore it).
    pub fn dump_custom(&self, file: &std::path::Path) {
        let url = url::Url::parse(&self.url).expect("the test database URL parses");
        let output = std::process::Command::new("pg_dump")
            .args(["--format=custom", "--file"])
            .arg(file)
            .env("PGHOST", url.host_str().unwrap_or("localhost"))
            .env("PGPORT", url.port().unwrap_or(5432).to_string())
            .env("PGUSER", url.username())
            .env("PGPASSWORD", url.password().unwrap_or_default())
            .env("PGDATABASE", url.path().trim_start_matches('/'))
            .output()
            .expect("pg_dump runs");
        assert!(
            output.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub async fn new() -> Self {
        Self::create("test", Some(TEMPLATE), 20).await
    }

    /// URL of an empty database (no migrations), for testing `migrate` itself.
    pub async fn empty() -> Self {
        Self::create("empty", None, 5).await
    }

    /// A new database named `<prefix>_<pid>_<n>` on the test cluster, a
    /// copy of `template` when given, and a pool of `connections` to it.
    async fn create(prefix: &str, template: Option<&str>, connections: u32) -> Self {
        let port = cluster_port();
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::SeqCst)
        );
        let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let admin = crate::db::connect(&admin_url, 1)
            .await
            .expect("connect to the test cluster");
        let template = template.map_or(String::new(), |t| format!(" TEMPLATE {t}"));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name}{template}"
        )))
        .execute(&admin)
        .await
        .unwrap_or_else(|error| panic!("create the test database {name}: {error}"));
        admin.close().await;
        let url = format!("postgres://postgres@127.0.0.1:{port}/{name}");
        let pool = crate::db::connect(&url, connections)
            .await
            .unwrap_or_else(|error| panic!("connect to the test database {name}: {error}"));
        Self { pool, url, name }
    }
}

/// A Redis server private to one test, stopped when dropped.
pub fn redis_server() -> RedisServer {
    RedisServer::start().expect("start a throw-away redis-server")
}
