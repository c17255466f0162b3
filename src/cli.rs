//! Command-line interface: argument definitions and the commands that need
//! no running controllers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api;
use crate::runtime::config::OperatorArgs;
use crate::runtime::status_store::{SPEC_CHANGE_REFUSED, StatusStore, StoredObject};

/// Output format of `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

/// Kubernetes operator that archives uptime verdicts from Redis into Postgres,
/// enforces tiered retention, manages monthly partitions and runs GDPR erasures.
#[derive(Debug, Parser)]
#[command(name = "archiver-operator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the four CustomResourceDefinitions as YAML (or write them to a directory).
    Crd {
        /// Write one file per CRD (`<plural>.yaml`) into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
    /// Check manifests offline with the CRDs' schema and CEL rules plus the
    /// semantic rules (windows, durations, one RetentionPolicy, unique shard ids).
    ///
    /// Exits 0 when every object is valid; otherwise prints one line per problem
    /// (file, object, field, reason) and exits 1.
    Validate {
        /// Manifest files (multi-document YAML); directories are searched for *.yaml and *.yml.
        #[arg(short = 'f', long = "filename", value_name = "FILE", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
    /// Run the product on throw-away local PostgreSQL and Redis servers
    /// (started from the binaries on this machine, removed afterwards).
    #[cfg(feature = "demo")]
    Demo {
        /// Directory of manifests to use.
        #[arg(long, value_name = "DIR", default_value = "examples")]
        examples: PathBuf,
        /// Simulated minutes (the retention window opens after 20).
        #[arg(long, default_value_t = 30)]
        minutes: u32,
        /// Servers per simulated minute (each in 5 regions).
        #[arg(long, default_value_t = 300)]
        servers: u32,
        /// Leave the servers running at the end and print how to connect.
        #[arg(long)]
        keep: bool,
    },
    /// Run the operator: against the Kubernetes API (default), or standalone
    /// against a directory of manifests (`--manifests DIR`).
    ///
    /// Exit codes of `run --manifests DIR --once`: 0 every object reconciled
    /// and ready; 1 an object failed, or reports Ready=False (a failed
    /// erasure, a shard that could not make progress), or a manifest is
    /// invalid; 2 usage or configuration error (bad arguments, a manifests
    /// directory that does not exist, a database that cannot be reached).
    /// Without --once, the process exits 2 when it cannot start.
    Run {
        /// Read custom resources and Secrets from this directory instead of
        /// the API server; status goes to DIR/.archiver/status/.
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
        /// Reconcile every object once and exit: 0 all succeeded, 1 an object
        /// failed or a shard could not progress, 2 usage or configuration error.
        #[arg(long, requires = "manifests")]
        once: bool,
        /// The time the pass runs at (RFC 3339), for deterministic passes.
        #[arg(long, value_name = "RFC3339", requires = "once")]
        now: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Run the drain worker of one ArchiverShard (what the shard's
    /// Deployment runs; standalone mode runs workers in-process).
    Worker {
        /// The shard, as NAMESPACE/NAME.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        shard: String,
        /// Read the shard from this manifests directory instead of the API server.
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
        /// Redis URL of the shard (default: resolved from the shard's Secret).
        #[arg(long, env = "REDIS_URL", hide_env_values = true)]
        redis_url: Option<crate::runtime::config::SecretString>,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Print the status the standalone operator keeps for a manifests directory.
    Status {
        /// The manifests directory given to `run --manifests`.
        #[arg(long, value_name = "DIR")]
        manifests: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Apply the embedded schema migrations to a database (idempotent).
    Migrate {
        /// Postgres URL, e.g. postgres://user:password@host:5432/archiver.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Show what a RetentionPolicy file would change against a database:
    /// rows deleted per tier and table, windows that shrink and whether the
    /// shrink guard holds them, and the privacy-text diff (`--format
    /// markdown` for a pull-request comment). Exit 0: applies without
    /// confirmation; 3: the confirm-shrink annotation will be needed; 1: error.
    Plan(crate::commands::retention::PlanArgs),
    /// Render the privacy-policy retention section of a RetentionPolicy file:
    /// the same text the operator publishes to its ConfigMap.
    RenderPrivacyPolicy(crate::commands::retention::RenderArgs),
    /// Print the receipt of a DeletionRequest and check its SHA-256 against
    /// the object's status, the audit log and the tombstones (exit 0 when
    /// everything matches, 1 on a mismatch, 2 when there is no receipt).
    Receipt(crate::commands::erasure::ReceiptArgs),
    /// Re-apply every tombstone to the data it covers: after restoring a
    /// backup (with --tombstones-from the live database) and periodically.
    ReplayTombstones(crate::commands::erasure::ReplayArgs),
    /// Run the deletion drill: seed a synthetic tenant in every surface,
    /// erase it through a real DeletionRequest, check every surface is empty
    /// and the tombstone exists, print the receipt (exit 0 = passed).
    Drill(crate::commands::erasure::DrillArgs),
    /// Drill a restore: check a backup's SHA-256, restore it into a scratch
    /// database, replay every tombstone of the live database, check no
    /// erased data survived and every catalogue table is there, compare row
    /// counts per table and month, drop the scratch database (exit 0 =
    /// passed, 1 = a surprise or an error).
    RestoreDrill(crate::commands::restore_drill::RestoreDrillArgs),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd { output_dir } => print_or_write_crds(output_dir.as_deref()),
        Command::Validate { files } => validate(&files),
        Command::Migrate { database_url } => migrate(&database_url).await,
        Command::Plan(args) => crate::commands::retention::plan_command(args).await,
        Command::RenderPrivacyPolicy(args) => crate::commands::retention::render_command(args),
        Command::Receipt(args) => crate::commands::erasure::receipt(args).await,
        Command::ReplayTombstones(args) => crate::commands::erasure::replay_tombstones(args).await,
        Command::Drill(args) => crate::commands::erasure::drill(args).await,
        Command::RestoreDrill(args) => crate::commands::restore_drill::restore_drill(args).await,
        Command::Run {
            manifests,
            once,
            now,
            operator,
        } => run_operator(manifests, once, now, operator).await,
        Command::Worker {
            shard,
            manifests,
            redis_url,
            operator,
        } => {
            crate::runtime::telemetry::init(operator.log_format);
            let source = match manifests {
                Some(dir) => crate::runtime::operator::ShardSource::Manifests(dir),
                None => crate::runtime::operator::ShardSource::Kubernetes,
            };
            match crate::runtime::operator::run_worker(&shard, source, redis_url, &operator).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { manifests, output } => print_status(&manifests, output),
        #[cfg(feature = "demo")]
        Command::Demo {
            examples,
            minutes,
            servers,
            keep,
        } => match crate::demo::run(
            &examples,
            crate::demo::DemoOptions {
                minutes,
                servers,
                keep,
            },
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn print_or_write_crds(output_dir: Option<&Path>) -> ExitCode {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    for crd in api::crds() {
        let yaml = api::crd_yaml(&crd);
        match output_dir {
            None => {
                if stdout.write_all(yaml.as_bytes()).is_err() {
                    // The reader went away (e.g. `| head`): nothing left to do.
                    return ExitCode::SUCCESS;
                }
            }
            Some(dir) => {
                let path = dir.join(api::crd_file_name(&crd));
                if let Err(error) = std::fs::write(&path, yaml) {
                    eprintln!("error: cannot write {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let (files, problems) = api::validation::validate_paths(paths);
    let mut out = Output::stdout();
    if problems.is_empty() {
        out.line(format_args!("{files} file(s) valid"));
        return out.finish(ExitCode::SUCCESS);
    }
    for problem in &problems {
        out.line(problem);
    }
    eprintln!("{} problem(s) found", problems.len());
    out.finish(ExitCode::FAILURE)
}

/// Standard output that a reader going away ends quietly. Once a write
/// finds the pipe closed (`| head`, `| grep -q`), nothing more is written
/// and the command ends with the exit code of its own result, without a
/// panic or a message. The process keeps ignoring SIGPIPE (Rust's default):
/// dying of it would also kill the operator whenever a peer of one of its
/// sockets goes away.
pub struct Output {
    out: std::io::StdoutLock<'static>,
    closed: bool,
    error: Option<std::io::Error>,
}

impl Output {
    pub fn stdout() -> Self {
        Self {
            out: std::io::stdout().lock(),
            closed: false,
            error: None,
        }
    }

    /// Writes one line, unless the reader is gone.
    pub fn line(&mut self, text: impl std::fmt::Display) {
        use std::io::Write as _;
        if self.closed {
            return;
        }
        if let Err(error) = writeln!(self.out, "{text}").and_then(|()| self.out.flush()) {
            self.closed = true;
            if error.kind() != std::io::ErrorKind::BrokenPipe {
                self.error = Some(error);
            }
        }
    }

    /// `code`, or 1 when output failed for another reason than a closed pipe
    /// (a full disk, for instance): that must not pass for success.
    pub fn finish(self, code: ExitCode) -> ExitCode {
        match self.error {
            Some(error) => {
                eprintln!("error: writing to standard output: {error}");
                ExitCode::FAILURE
            }
            None => code,
        }
    }
}

/// Exit codes of `run` (DESIGN.md section 9).
pub mod exit_code {
    /// Every object reconciled and ready.
    pub const SUCCESS: u8 = 0;
    /// An object failed or is not ready (a shard could not progress), or a
    /// manifest is invalid.
    pub const NOT_ALL_SUCCEEDED: u8 = 1;
    /// Usage or configuration error: the pass could not start.
    pub const USAGE_OR_CONFIGURATION: u8 = 2;
}

async fn migrate(database_url: &str) -> ExitCode {
    let result = async {
        let pool = crate::db::connect(database_url, 2).await?;
        crate::db::migrate(&pool).await?;
        pool.close().await;
        Ok::<_, crate::db::DbError>(())
    }
    .await;
    match result {
        Ok(()) => {
            println!(
                "schema is up to date ({} migrations)",
                crate::db::MIGRATOR.iter().count()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_operator(
    manifests: Option<PathBuf>,
    once: bool,
    now: Option<chrono::DateTime<chrono::Utc>>,
    operator: OperatorArgs,
) -> ExitCode {
    use crate::runtime::operator;
    crate::runtime::telemetry::init(operator.log_format);
    if let Err(problem) = crate::runtime::config::check_numbered_erasure_redis_urls() {
        eprintln!("error: {problem}");
        return ExitCode::from(exit_code::USAGE_OR_CONFIGURATION);
    }
    if let Some(dir) = &manifests
        && !dir.is_dir()
    {
        eprintln!(
            "error: the manifests directory {} does not exist or is not a directory",
            dir.display()
        );
        return ExitCode::from(exit_code::USAGE_OR_CONFIGURATION);
    }
    let result = match (manifests, once) {
        (Some(dir), true) => match operator::run_once(dir, now, &operator).await {
            Ok(report) => {
                let mut out = Output::stdout();
                print_pass(&mut out, &report);
                let code = if report.is_success() {
                    ExitCode::from(exit_code::SUCCESS)
                } else {
                    eprintln!(
                        "error: {} object(s) failed, {} not ready, {} manifest problem(s)",
                        report.failed.len(),
                        report.not_ready.len(),
                        report.invalid.len()
                    );
                    ExitCode::from(exit_code::NOT_ALL_SUCCEEDED)
                };
                return out.finish(code);
            }
            Err(error) => Err(error),
        },
        (Some(dir), false) => operator::run_standalone(dir, &operator).await,
        (None, _) => operator::run_in_cluster(&operator).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(operator::RunError::PassFailed { .. }) => ExitCode::from(exit_code::NOT_ALL_SUCCEEDED),
        Err(error) => {
            // The operator could not start: arguments, the database, the
            // API server or the HTTP address.
            eprintln!("error: {error}");
            ExitCode::from(exit_code::USAGE_OR_CONFIGURATION)
        }
    }
}

fn print_pass(out: &mut Output, report: &crate::runtime::manifests::PassReport) {
    for label in &report.reconciled {
        out.line(format_args!("reconciled  {label}"));
    }
    for label in &report.paused {
        out.line(format_args!("paused      {label}"));
    }
    for (label, error) in &report.failed {
        out.line(format_args!("failed      {label}: {error}"));
    }
    for (label, why) in &report.not_ready {
        out.line(format_args!("not ready   {label}: {why}"));
    }
    for problem in &report.invalid {
        out.line(format_args!("invalid     {problem}"));
    }
    for note in &report.notes {
        out.line(format_args!("note        {note}"));
    }
}

fn print_status(dir: &Path, output: OutputFormat) -> ExitCode {
    let objects = match StatusStore::for_manifests(dir).list_with_foreign() {
        Ok((objects, foreign)) => {
            for file in foreign {
                eprintln!(
                    "warning: {} is not a status file of the operator ({}); ignored",
                    file.path.display(),
                    file.reason
                );
            }
            objects
        }
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let printed = match output {
        OutputFormat::Json => serde_json::to_string_pretty(&objects).map_err(|e| e.to_string()),
        OutputFormat::Yaml => serde_yaml_ng::to_string(&objects).map_err(|e| e.to_string()),
        OutputFormat::Table => Ok(status_table(&objects)),
    };
    match printed {
        Ok(text) => {
            let mut out = Output::stdout();
            for line in text.trim_end().lines() {
                out.line(line);
            }
            out.finish(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One line per object: what `kubectl get archiver` would show.
pub fn status_table(objects: &[StoredObject]) -> String {
    let mut rows = vec![[
        "KIND".to_string(),
        "NAMESPACE".into(),
        "NAME".into(),
        "GEN".into(),
        "OBSERVED".into(),
        "READY".into(),
        "REASON".into(),
        "LAST RECONCILED".into(),
    ]];
    for object in objects {
        let ready = object.status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        let field = |key: &str| {
            ready
                .and_then(|c| c[key].as_str())
                .unwrap_or("-")
                .to_string()
        };
        let refused = object.status["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == SPEC_CHANGE_REFUSED));
        let reason = if object.paused {
            "Paused".to_string()
        } else if refused {
            format!("{},{SPEC_CHANGE_REFUSED}", field("reason"))
        } else {
            field("reason")
        };
        rows.push([
            object.kind.clone(),
            object.namespace.clone(),
            object.name.clone(),
            object.generation.to_string(),
            object.status["observedGeneration"]
                .as_i64()
                .map_or("-".into(), |g| g.to_string()),
            field("status"),
            reason,
            object
                .last_reconciled
                .map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
