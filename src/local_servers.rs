//! Throw-away PostgreSQL and Redis servers started from the binaries on this
//! machine, for the demo, the tests and the benchmarks.
//!
//! Each server lives in its own temporary directory on a free loopback port
//! and is stopped (and its directory removed) when the handle is dropped.
//! PostgreSQL refuses to run as root, so as root the cluster is owned by and
//! run as the `postgres` user (from the Debian package) or `nobody`.
//!
//! The kernel stops a server when the thread that started it exits (so a
//! killed test run leaves no servers behind): start servers from a thread
//! that outlives them, never from a short-lived pool thread.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    #[error("{0} not found on PATH{1}; install it (Debian: apt-get install {2})")]
    BinaryMissing(&'static str, String, &'static str),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what} did not become ready within {seconds} s; its log:\n{log}")]
    NotReady {
        what: &'static str,
        seconds: u64,
        log: String,
    },
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalServerError {
    let context = context.into();
    move |source| LocalServerError::Io { context, source }
}

/// A user to run PostgreSQL as when this process is root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Looks a user up in /etc/passwd (uid and primary gid).
fn passwd_entry(user: &str) -> Option<RunAs> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() <= 3 || fields[0] != user {
            return None;
        }
        Some(RunAs {
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
        })
    })
}

fn postgres_run_as() -> Option<RunAs> {
    if current_uid() != 0 {
        return None;
    }
    passwd_entry("postgres").or_else(|| passwd_entry("nobody"))
}

/// Finds a PostgreSQL server binary on PATH or in Debian's versioned
/// directories (newest version first).
fn find_postgres_binary(name: &'static str) -> Result<PathBuf, LocalServerError> {
    if let Some(found) = find_on_path(name) {
        return Ok(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let candidate = entry.path().join("bin").join(name);
            candidate.is_file().then_some((version, candidate))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions
        .into_iter()
        .next()
        .map(|(_, path)| path)
        .ok_or_else(|| {
            LocalServerError::BinaryMissing(
                name,
                " or in /usr/lib/postgresql/*/bin".into(),
                "postgresql",
            )
        })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range
/// (32768 and up): a client reconnecting to a stopped server on an
/// ephemeral port can connect to itself and squat that port, so a server
/// restarted on it could not bind again.
pub fn free_port() -> Result<u16, LocalServerError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let _ = STATE.compare_exchange(0, seed | 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..200 {
        let next = STATE
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
            .wrapping_mul(0xD1B5_4A32_D192_ED03);
        let port = 20_000 + (next >> 40) as u16 % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LocalServerError::Io {
        context: "finding a free port in 20000-31999".into(),
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    })
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn chown_recursive(path: &Path, owner: RunAs) -> Result<(), LocalServerError> {
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).map_err(io_error(format!(
        "changing the owner of {}",
        path.display()
    )))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io_error("listing a directory"))? {
            let entry = entry.map_err(io_error("listing a directory"))?;
            chown_recursive(&entry.path(), owner)?;
        }
    }
    Ok(())
}

fn command_as(binary: &Path, run_as: Option<RunAs>) -> Command {
    let mut command = Command::new(binary);
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    // Ask the kernel to stop the server if this process dies without cleaning
    // up (killed by a signal): no orphaned servers after a crashed test run.
    // SAFETY: prctl is async-signal-safe and only affects the child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
}

fn run_to_completion(mut command: Command, what: &str) -> Result<(), LocalServerError> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(io_error(format!("running {what}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(LocalServerError::Command {
            what: what.to_string(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// Sends `signal` to the child and waits up to `grace` for it to exit, then kills it.
fn stop_child(child: &mut Child, signal: i32, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, signal);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running throw-away PostgreSQL cluster.
#[derive(Debug)]
pub struct PostgresServer {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    port: u16,
    binary: PathBuf,
    run_as: Option<RunAs>,
}

impl PostgresServer {
    /// initdb + start on a free port; returns once it accepts connections.
    pub fn start() -> Result<Self, LocalServerError> {
        let initdb = find_postgres_binary("initdb")?;
        let postgres = find_postgres_binary("postgres")?;
        let run_as = postgres_run_as();
        let dir = tempfile::Builder::new()
            .prefix("archiver-pg-")
            .tempdir()
            .map_err(io_error("creating the PostgreSQL directory"))?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir_all(&socket_dir).map_err(io_error("creating the socket directory"))?;
        if let Some(user) = run_as {
            chown_recursive(dir.path(), user)?;
        }
        let mut init = command_as(&initdb, run_as);
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ]);
        run_to_completion(init, "initdb")?;

        let port = free_port()?;
        let mut started = Self {
            child: None,
            dir: Some(dir),
            port,
            binary: postgres,
            run_as,
        };
        started.launch()?;
        Ok(started)
    }

    fn dir_path(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default()
    }

    /// Starts the server process on the existing data directory and waits
    /// until it accepts connections.
    fn launch(&mut self) -> Result<(), LocalServerError> {
        let dir = self.dir_path();
        let log_path = dir.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("opening the PostgreSQL log"))?;
        if let Some(user) = self.run_as {
            chown_recursive(&log_path, user)?;
        }
        let log_err = log
            .try_clone()
            .map_err(io_error("opening the PostgreSQL log"))?;
        let mut server = command_as(&self.binary, self.run_as);
        server
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                dir.join("socket").display()
            ))
            // Throw-away data: durability buys nothing and costs seconds.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        self.child = Some(server.spawn().map_err(io_error("starting postgres"))?);
        if !wait_for_port(self.port, Duration::from_secs(30)) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            self.stop();
            return Err(LocalServerError::NotReady {
                what: "postgres",
                seconds: 30,
                log,
            });
        }
        Ok(())
    }

    /// Stops the server (fast shutdown, as an operator restart would) and
    /// starts it again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), LocalServerError> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGINT, Duration::from_secs(10));
        }
        self.launch()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of `database` as the superuser `postgres` (trust authentication).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (fast shutdown) and removes its directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGINT, Duration::from_secs(10));
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running throw-away Redis server.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    port: u16,
    binary: PathBuf,
}

impl RedisServer {
    /// Starts redis-server without persistence on a free port.
    pub fn start() -> Result<Self, LocalServerError> {
        let binary = find_on_path("redis-server").ok_or_else(|| {
            LocalServerError::BinaryMissing("redis-server", String::new(), "redis-server")
        })?;
        let dir = tempfile::Builder::new()
            .prefix("archiver-redis-")
            .tempdir()
            .map_err(io_error("creating the Redis directory"))?;
        let port = free_port()?;
        let mut started = Self {
            child: None,
            dir: Some(dir),
            port,
            binary,
        };
        started.launch()?;
        Ok(started)
    }

    fn launch(&mut self) -> Result<(), LocalServerError> {
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        let log_path = dir.join("redis.log");
        let mut server = command_as(&self.binary, None);
        server
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log_path)
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(server.spawn().map_err(io_error("starting redis-server"))?);
        if !wait_for_port(self.port, Duration::from_secs(10)) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            self.halt();
            return Err(LocalServerError::NotReady {
                what: "redis-server",
                seconds: 10,
                log,
            });
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port (its data is gone:
    /// no persistence, like an evicting cache after a crash).
    pub fn start_again(&mut self) -> Result<(), LocalServerError> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
        self.launch()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the process but keeps the directory, so `start_again` works.
    pub fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }

    pub fn stop(&mut self) {
        self.halt();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
