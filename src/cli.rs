//! Command-line interface: argument definitions and the commands that need
//! no running controllers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api;

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
    Demo {
        /// Directory of manifests to use.
        #[arg(long, value_name = "DIR", default_value = "examples")]
        examples: PathBuf,
    },
    /// Apply the embedded schema migrations to a database (idempotent).
    Migrate {
        /// Postgres URL, e.g. postgres://user:password@host:5432/archiver.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd { output_dir } => print_or_write_crds(output_dir.as_deref()),
        Command::Validate { files } => validate(&files),
        Command::Migrate { database_url } => migrate(&database_url).await,
        Command::Demo { examples } => match crate::demo::run(&examples).await {
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

/// Expands directories into the YAML files they contain (sorted, recursive).
pub fn manifest_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            collect_yaml(path, &mut found);
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let files = manifest_files(paths);
    let problems = api::validation::validate_files(&files);
    if problems.is_empty() {
        println!("{} file(s) valid", files.len());
        return ExitCode::SUCCESS;
    }
    for problem in &problems {
        println!("{problem}");
    }
    eprintln!("{} problem(s) found", problems.len());
    ExitCode::FAILURE
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
