//! One real Kubernetes control plane (kube-apiserver + etcd) per test process,
//! started by `scripts/dev-cluster.sh up --foreground` — the same script and
//! flags a person uses — and driven with the real `kubectl`.
//!
//! Like the PostgreSQL test support: started once on a thread that lives as long
//! as the process (the parent-death signal is tied to the spawning thread), stopped
//! and its directory removed at exit, also after a failed test; if the process is
//! killed, the kernel signals the script, whose children die with it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Building the binaries on a cold machine takes minutes; starting takes seconds.
const BINARIES_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// Any single kubectl call (waits pass their own shorter `--timeout`).
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(180);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// The script's directory: kubeconfig, audit.log, apiserver.log, pki/.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

struct Running {
    supervisor: Child,
    root: PathBuf,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static RUNNING: Mutex<Option<Running>> = Mutex::new(None);
/// What `kubectl apply -f crds/` printed on stderr (the API server's warnings).
static CRDS: OnceLock<Result<String, String>> = OnceLock::new();

extern "C" fn stop_at_exit() {
    if let Ok(mut running) = RUNNING.lock()
        && let Some(running) = running.take()
    {
        stop(running.supervisor, &running.root);
    }
}

/// Runs a command to completion within `timeout` (killed after it).
pub fn run_bounded(mut command: Command, timeout: Duration) -> Result<Output, String> {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {described}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{described} did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {described}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Starts `scripts/dev-cluster.sh up --foreground` on a control plane of its
/// own under a new directory, and waits until it is ready. The script is
/// spawned by a thread that lives as long as the process (the parent-death
/// signal is tied to the spawning thread), so it dies with the test process
/// even when nothing stops it.
fn launch() -> Result<(ControlPlane, Child, PathBuf), String> {
    // The binaries first (cached after the first build); the script would do
    // the same, but here the wait is bounded and its own.
    let mut binaries = Command::new(repo().join("scripts/kube-binaries.sh"));
    binaries.current_dir(repo());
    let found = run_bounded(binaries, BINARIES_TIMEOUT)?;
    if !found.status.success() {
        return Err(format!(
            "scripts/kube-binaries.sh failed: {}",
            String::from_utf8_lossy(&found.stderr)
        ));
    }
    let root = tempfile::Builder::new()
        .prefix("archiver-kube-")
        .tempdir()
        .map_err(|e| format!("creating the control-plane directory: {e}"))?
        .keep();
    let dir = root.join("cluster");
    let (sender, receiver) = std::sync::mpsc::channel();
    let script = repo().join("scripts/dev-cluster.sh");
    let (thread_dir, thread_root) = (dir.clone(), root.clone());
    std::thread::Builder::new()
        .name("test-kube-keeper".into())
        .spawn(move || {
            let log = std::fs::File::create(thread_root.join("supervisor.log"));
            let spawned = log
                .and_then(|log| {
                    let mut command = Command::new(&script);
                    command
                        .args(["up", "--foreground"])
                        .env("ARCHIVER_DEV_CLUSTER_DIR", &thread_dir)
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log);
                    // SAFETY: prctl is async-signal-safe; the script traps
                    // SIGTERM and stops etcd and kube-apiserver.
                    unsafe {
                        command.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                            Ok(())
                        });
                    }
                    command.spawn()
                })
                .map_err(|e| format!("cannot start scripts/dev-cluster.sh: {e}"));
            let _ = sender.send(spawned);
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("cannot start the control-plane keeper thread: {e}"))?;
    let mut supervisor = receiver
        .recv()
        .map_err(|_| "the control-plane keeper thread died".to_string())??;
    let deadline = Instant::now() + READY_TIMEOUT;
    let supervisor_log =
        || std::fs::read_to_string(root.join("supervisor.log")).unwrap_or_default();
    while !dir.join("ready").exists() {
        if !matches!(supervisor.try_wait(), Ok(None)) {
            return Err(format!(
                "scripts/dev-cluster.sh exited early:\n{}",
                supervisor_log()
            ));
        }
        if Instant::now() >= deadline {
            stop(supervisor, &root);
            return Err(format!(
                "the control plane was not ready within {READY_TIMEOUT:?}:\n{}",
                supervisor_log()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let control_plane = ControlPlane {
        kubeconfig: dir.join("kubeconfig"),
        kubectl: dir.join("kubectl"),
        dir,
    };
    Ok((control_plane, supervisor, root))
}

/// Stops a control plane's script (it stops etcd and kube-apiserver) and
/// removes its directory.
fn stop(mut supervisor: Child, root: &Path) {
    let pid = supervisor.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = supervisor.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = supervisor.kill();
    let _ = supervisor.wait();
    let _ = std::fs::remove_dir_all(root);
}

fn start() -> Result<ControlPlane, String> {
    let (control_plane, supervisor, root) = launch()?;
    if let Ok(mut running) = RUNNING.lock() {
        *running = Some(Running { supervisor, root });
    }
    // SAFETY: registering a plain extern "C" function with atexit.
    unsafe {
        libc::atexit(stop_at_exit);
    }
    Ok(control_plane)
}

/// A control plane of one test's own, for what would disturb the tests
/// sharing the common one (restarting kube-apiserver). Stopped and removed
/// when dropped.
pub struct PrivateControlPlane {
    control_plane: ControlPlane,
    running: Option<(Child, PathBuf)>,
}

impl PrivateControlPlane {
    /// Started with the operator's CRDs (from `crds/`) Established and the
    /// examples' namespace created.
    pub fn with_crds() -> Self {
        let (control_plane, supervisor, root) =
            launch().unwrap_or_else(|reason| panic!("a private control plane: {reason}"));
        let private = Self {
            control_plane,
            running: Some((supervisor, root)),
        };
        install_crds(&private).unwrap_or_else(|reason| panic!("{reason}"));
        private
    }
}

impl std::ops::Deref for PrivateControlPlane {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        &self.control_plane
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        if let Some((supervisor, root)) = self.running.take() {
            stop(supervisor, &root);
        }
    }
}

/// The shared control plane (started on first use).
pub fn control_plane() -> &'static ControlPlane {
    match CONTROL_PLANE.get_or_init(start) {
        Ok(control_plane) => control_plane,
        Err(reason) => panic!("Kubernetes control plane unavailable: {reason}"),
    }
}

/// The shared control plane with the operator's CRDs (from `crds/`) installed
/// and Established, and the examples' namespace created.
pub fn with_crds() -> &'static ControlPlane {
    let control_plane = control_plane();
    let installed = CRDS.get_or_init(|| install_crds(control_plane));
    if let Err(reason) = installed {
        panic!("{reason}");
    }
    control_plane
}

/// Applies `crds/`, waits until they are Established and creates the
/// examples' namespace; the API server's warnings.
fn install_crds(control_plane: &ControlPlane) -> Result<String, String> {
    let crds = repo().join("crds");
    let applied = control_plane.kubectl(&["apply", "-f", crds.to_str().unwrap_or("crds")]);
    if !applied.success {
        return Err(format!("applying crds/: {}", applied.stderr));
    }
    control_plane
        .kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .map_err(|e| format!("waiting for the CRDs: {e}"))?;
    control_plane.ensure_namespace("archiver")?;
    Ok(applied.stderr)
}

/// The API server's warnings when `crds/` was first applied.
pub fn crd_apply_warnings() -> String {
    with_crds();
    match CRDS.get() {
        Some(Ok(stderr)) => stderr.clone(),
        _ => String::new(),
    }
}

/// What a kubectl call printed.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ControlPlane {
    /// A `kubectl` command against this control plane, as a user would type it.
    pub fn kubectl_command(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--request-timeout=60s");
        command
    }

    pub fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.kubectl_with_stdin(args, None)
    }

    /// kubectl with a manifest given as text: every `-` argument (as in
    /// `-f -`) names a temporary file holding it.
    pub fn kubectl_with_stdin(&self, args: &[&str], manifest: Option<&str>) -> KubectlOutput {
        let file = manifest.map(|text| {
            let file = tempfile::NamedTempFile::new().expect("temporary manifest");
            std::fs::write(file.path(), text).expect("write the temporary manifest");
            file
        });
        let mut command = self.kubectl_command();
        for arg in args {
            match (&file, *arg) {
                (Some(file), "-") => command.arg(file.path()),
                _ => command.arg(arg),
            };
        }
        match run_bounded(command, KUBECTL_TIMEOUT) {
            Ok(output) => KubectlOutput {
                success: output.status.success(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            },
            Err(reason) => KubectlOutput {
                success: false,
                stdout: String::new(),
                stderr: reason,
            },
        }
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, String> {
        let output = self.kubectl(args);
        if output.success {
            Ok(output.stdout)
        } else {
            Err(format!(
                "kubectl {}: {}{}",
                args.join(" "),
                output.stderr,
                output.stdout
            ))
        }
    }

    pub fn ensure_namespace(&self, name: &str) -> Result<(), String> {
        let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
        let output = self.kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest));
        // Two tests of one binary may ensure the same namespace at once:
        // both `apply`s see it missing and one create loses the race.
        if output.success || output.stderr.contains("AlreadyExists") {
            Ok(())
        } else {
            Err(format!("creating namespace {name}: {}", output.stderr))
        }
    }

    /// Stops kube-apiserver, keeps it down for `down`, starts it again on
    /// the same port and etcd (`scripts/dev-cluster.sh restart-apiserver`),
    /// and returns once it is ready.
    pub fn restart_apiserver(&self, down: Duration) -> Result<(), String> {
        let mut command = Command::new(repo().join("scripts/dev-cluster.sh"));
        command
            .args(["restart-apiserver", "--down"])
            .arg(down.as_secs().to_string())
            .env("ARCHIVER_DEV_CLUSTER_DIR", &self.dir);
        let output = run_bounded(command, down + READY_TIMEOUT)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "restart-apiserver: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// The audit log: one JSON event per request, Metadata level.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// The chart's RBAC objects (ServiceAccount, Roles, ClusterRoles and their
/// bindings) rendered with the real Helm library, as JSON: the virtualenv of
/// the chart tests (`scripts/chart-tests.sh`, which creates it when missing)
/// holds helm-python-sdk.
pub fn chart_rbac(release_namespace: &str, values: &serde_json::Value) -> Vec<serde_json::Value> {
    const RENDER: &str = r#"
import json, sys
import helm_python as helm
import yaml
chart_dir, namespace, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with helm.Chart.load(chart_dir) as chart:
    manifests = chart.render(values, name="archiver-operator", namespace=namespace)
kinds = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
objects = [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
           for doc in yaml.safe_load_all(text) if doc and doc["kind"] in kinds]
print(json.dumps(objects))
"#;
    let venv_python = repo().join("target/chart-venv/bin/python");
    // Once per test process: tests run in parallel, and two concurrent
    // set-ups would each remove the virtualenv the other is filling (seen on
    // a fresh clone: "No module named 'helm_python'").
    static HELM_LIBRARY: OnceLock<Result<(), String>> = OnceLock::new();
    let prepared = HELM_LIBRARY.get_or_init(|| {
        if venv_python.exists() {
            return Ok(());
        }
        // Creates the virtualenv (pinned packages) and only collects the tests.
        let mut setup = Command::new(repo().join("scripts/chart-tests.sh"));
        setup.current_dir(repo()).args(["--collect-only", "-q"]);
        let output = run_bounded(setup, Duration::from_secs(900))
            .map_err(|e| format!("scripts/chart-tests.sh: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/chart-tests.sh could not prepare the Helm library: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(reason) = prepared {
        panic!("{reason}");
    }
    let (python, pythonpath) = if venv_python.exists() {
        (venv_python, None)
    } else {
        // chart-tests.sh's fallback without a virtualenv.
        (
            PathBuf::from("python3"),
            Some(repo().join("target/chart-pylib")),
        )
    };
    let mut render = Command::new(python);
    render
        .arg("-c")
        .arg(RENDER)
        .arg(repo().join("charts/archiver-operator"))
        .arg(release_namespace)
        .arg(values.to_string());
    if let Some(path) = pythonpath {
        render.env("PYTHONPATH", path);
    }
    let output = run_bounded(render, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("rendering the chart: {e}"));
    assert!(
        output.status.success(),
        "rendering the chart: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the render script prints JSON")
}

impl ControlPlane {
    /// A kubeconfig that authenticates as a ServiceAccount, with a token
    /// from the TokenRequest API (`kubectl create token`).
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) {
        let token = self
            .kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=2h"])
            .unwrap_or_else(|e| panic!("{e}"));
        let server = self
            .kubectl_ok(&[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n  - name: archiver-dev\n    cluster:\n      server: {server}\n      certificate-authority: {ca}\nusers:\n  - name: {name}\n    user:\n      token: {token}\ncontexts:\n  - name: {name}\n    context:\n      cluster: archiver-dev\n      user: {name}\n      namespace: {namespace}\ncurrent-context: {name}\n",
            ca = self.dir.join("pki/ca.crt").display(),
            token = token.trim(),
        );
        std::fs::write(path, text).expect("write the ServiceAccount kubeconfig");
    }
}
