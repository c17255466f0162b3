//! Redis over TLS (`rediss://`): the drain, the erasure and the drill against
//! a real `redis-server` listening with `--tls-port`, its certificate issued
//! by a throw-away CA made with openssl and trusted through `SSL_CERT_FILE`;
//! a certificate the client cannot verify is refused.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use uuid::Uuid;

use archiver_operator::archive::verdict::{REGIONS, index_key, verdict_key};
use archiver_operator::clock::minute_floor;
use archiver_operator::local_servers::free_port;
use archiver_operator::testing::TestDatabase;

/// Runs a command that must succeed (openssl).
fn run(command: &mut Command) {
    let output = command.output().expect("run openssl");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate it signed for `names`.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn issue(names: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let at = |file: &str| dir.path().join(file);
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            // Each CA its own name, so a foreign one is an unknown issuer.
            .arg("-subj")
            .arg(format!(
                "/CN=archiver test CA {}",
                dir.path().file_name().unwrap_or_default().to_string_lossy()
            ))
            .arg("-keyout")
            .arg(at("ca.key"))
            .arg("-out")
            .arg(at("ca.pem")));
        run(Command::new("openssl")
            .args(["req", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-subj", "/CN=redis", "-keyout"])
            .arg(at("server.key"))
            .arg("-out")
            .arg(at("server.csr")));
        std::fs::write(
            at("ext.cnf"),
            format!(
                "subjectAltName={names}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
            .arg(at("server.csr"))
            .arg("-CA")
            .arg(at("ca.pem"))
            .arg("-CAkey")
            .arg(at("ca.key"))
            .arg("-extfile")
            .arg(at("ext.cnf"))
            .arg("-out")
            .arg(at("server.pem")));
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

/// redis-server with a plain port (for seeding and checking) and a TLS
/// port; stopped when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    tls_port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(certificates: &Certificates) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let tls_port = free_port().unwrap();
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--tls-port",
                &tls_port.to_string(),
            ])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(certificates.path("server.pem"))
            .arg("--tls-key-file")
            .arg(certificates.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certificates.ca())
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl in the child before exec; no allocation, no locks.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("redis-server on PATH (Debian's is built with TLS)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            tls_port,
            _dir: dir,
        }
    }

    fn plain_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn tls_url(&self, host: &str) -> String {
        format!("rediss://{host}:{}/", self.tls_port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process of the operator binary that is killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Partitions for the month of `at` and the one before (tests run on real time).
async fn partitions_around(db: &TestDatabase, at: DateTime<Utc>) {
    let month_start =
        |year: i32, month: u32| Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).unwrap();
    let this = month_start(at.year(), at.month());
    let next = |d: DateTime<Utc>| {
        if d.month() == 12 {
            month_start(d.year() + 1, 1)
        } else {
            month_start(d.year(), d.month() + 1)
        }
    };
    let previous = if this.month() == 1 {
        month_start(this.year() - 1, 12)
    } else {
        month_start(this.year(), this.month() - 1)
    };
    for start in [previous, this] {
        let name = format!("probe_minute_{}", start.format("%Y_%m"));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {name} PARTITION OF probe_minute FOR VALUES FROM ('{}') TO ('{}')",
            start.to_rfc3339(),
            next(start).to_rfc3339()
        )))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn the_drain_archives_from_a_tls_redis() {
    let certificates = Certificates::issue("DNS:localhost,IP:127.0.0.1");
    let redis = TlsRedis::start(&certificates);
    let db = TestDatabase::new().await;
    let now = Utc::now();
    partitions_around(&db, now).await;

    // Three sealed minutes, ending two minutes ago, seeded on the plain port.
    let last = minute_floor(now) - chrono::Duration::minutes(2);
    let client = redis::Client::open(redis.plain_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut expected = BTreeSet::new();
    for back in 0..3 {
        let at = last - chrono::Duration::minutes(back);
        let mut pipe = redis::pipe();
        for t in 0..5u128 {
            let tenant = Uuid::from_u128(0x7150_0000_0000_4000_8000_0000_0000_0000 + t);
            for region in REGIONS {
                let key = verdict_key(tenant, "srv", region, at);
                pipe.hset_multiple(
                    &key,
                    &[("state", "up"), ("p95_ms", "80"), ("verdict_sealed", "1")],
                )
                .ignore();
                pipe.sadd(index_key(at), &key).ignore();
                expected.insert((tenant, region.to_string(), at));
            }
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let shard = std::fs::read_to_string(examples.join("archiver-shard.yaml"))
        .unwrap()
        .replace("backfillWhenNoWatermark: 1h", "backfillWhenNoWatermark: 4m");
    std::fs::write(dir.path().join("shard.yaml"), shard).unwrap();
    // The worker reads the URL from the shard's Secret, as deployed.
    let secret = std::fs::read_to_string(examples.join("secret-redis-shard-0.yaml"))
        .unwrap()
        .replace("redis://127.0.0.1:6379/0", &redis.tls_url("localhost"));
    assert!(secret.contains("rediss://"), "the example Secret changed");
    std::fs::write(dir.path().join("secret.yaml"), secret).unwrap();

    let _worker = Running(
        Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(["worker", "--shard", "archiver/shard-0", "--manifests"])
            .arg(dir.path())
            .args(["--http-addr", "127.0.0.1:0"])
            .env("DATABASE_URL", &db.url)
            .env("SSL_CERT_FILE", certificates.ca())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the worker"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let watermark: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT last_minute FROM archive_watermark WHERE shard_id = 0")
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        if watermark.is_some_and(|w| w >= last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not drain the TLS Redis: watermark {watermark:?}, expected {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT tenant_id, region, minute_bucket FROM probe_minute")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), expected);
}

/// The drill seeds its tenant into Redis and erases it again through the
/// erasure's Redis side, both over `rediss://`.
#[tokio::test]
async fn the_drill_and_its_erasure_work_over_tls() {
    let certificates = Certificates::issue("DNS:localhost,IP:127.0.0.1");
    let redis = TlsRedis::start(&certificates);
    let db = TestDatabase::new().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
        .args(["drill", "--database-url", &db.url])
        .args(["--redis-url", &redis.tls_url("localhost")])
        .args(["--suppression-salt", "test-salt"])
        .args(["--alert-key-pattern", "alert:{tenant}:{server}:*"])
        .env("SSL_CERT_FILE", certificates.ca())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("drill PASSED"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The drill's keys went through the TLS port into this very server.
    let client = redis::Client::open(redis.plain_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let tenant = archiver_operator::commands::drill::DRILL_TENANT;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{tenant}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "the erasure left {left:?}");
    // Seeded (SADD to the index sets) and erased (UNLINK) here, and only the test's
    // own plain connection used the plain port.
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        stats.contains("cmdstat_unlink:") && stats.contains("cmdstat_sadd:"),
        "the drill neither seeded nor erased this server:\n{stats}"
    );
}

/// Certificates the client cannot verify are refused: one from a CA it
/// does not trust, one for another name, and `#insecure` (no verification).
#[tokio::test]
async fn an_unverifiable_server_certificate_is_refused() {
    let trusted = Certificates::issue("DNS:localhost,IP:127.0.0.1");
    let other_name = {
        // Same CA, certificate for another name.
        let other = Certificates::issue("DNS:redis.elsewhere.example");
        for file in ["ca.pem", "ca.key"] {
            std::fs::copy(trusted.path(file), other.path(file)).unwrap();
        }
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
            .arg(other.path("server.csr"))
            .arg("-CA")
            .arg(other.ca())
            .arg("-CAkey")
            .arg(other.path("ca.key"))
            .arg("-extfile")
            .arg(other.path("ext.cnf"))
            .arg("-out")
            .arg(other.path("server.pem")));
        other
    };
    let untrusted = Certificates::issue("DNS:localhost,IP:127.0.0.1");
    let db = TestDatabase::new().await;

    let mut cases = Vec::new();
    let redis_untrusted = TlsRedis::start(&untrusted);
    cases.push((
        "untrusted CA",
        redis_untrusted.tls_url("localhost"),
        "invalid peer certificate: UnknownIssuer",
    ));
    let redis_other_name = TlsRedis::start(&other_name);
    cases.push((
        "other name",
        redis_other_name.tls_url("localhost"),
        "certificate not valid for name",
    ));
    let redis_trusted = TlsRedis::start(&trusted);
    cases.push((
        "#insecure",
        format!("{}#insecure", redis_trusted.tls_url("localhost")),
        "insecure",
    ));
    for (case, url, expected) in cases {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_archiver-operator"))
            .args(["drill", "--database-url", &db.url])
            .args(["--redis-url", &url])
            .args(["--suppression-salt", "test-salt"])
            .env("SSL_CERT_FILE", trusted.ca())
            .output()
            .await
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{case}: the drill passed\n{all}");
        assert!(
            all.contains(expected),
            "{case}: expected an error about {expected:?}\n{all}"
        );
        let client = redis::Client::open(match case {
            "untrusted CA" => redis_untrusted.plain_url(),
            "other name" => redis_other_name.plain_url(),
            _ => redis_trusted.plain_url(),
        })
        .unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: usize = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        assert_eq!(
            keys, 0,
            "{case}: something was written over the refused connection"
        );
    }
}
