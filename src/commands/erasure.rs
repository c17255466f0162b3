//! The erasure's command-line commands: `receipt`, `replay-tombstones` and
//! `drill`. Arguments and printing only; the work is in the domain modules.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::DeletionRequest;
use crate::clock::SystemClock;
use crate::commands::drill::{self, DRILL_REQUESTER};
use crate::erasure::receipt::{self, SealedReceipt, sha256_hex};
use crate::erasure::replay::{self, ReplayReport};
use crate::runtime::config::{OperatorConfig, SecretString};
use crate::runtime::status_store::StatusStore;

#[derive(Debug, Clone, Args)]
pub struct ReceiptArgs {
    /// Name of the DeletionRequest.
    pub name: String,
    /// Its namespace (default: `default` with --manifests, else the
    /// kubeconfig's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Read the status from the standalone operator's manifests directory
    /// instead of the Kubernetes API.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Postgres URL, for the audit log and the tombstones.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Postgres URL of the database to replay into (e.g. the restored one).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Import the tombstones of this database first (the live one, when
    /// replaying into a restore of a backup older than some erasures).
    #[arg(long, value_name = "URL", hide_env_values = true)]
    pub tombstones_from: Option<SecretString>,
    /// Salt of the suppression tables' tenant hashes; without it those
    /// tables are not replayed.
    #[arg(long, env = "ARCHIVER_SUPPRESSION_SALT", hide_env_values = true)]
    pub suppression_salt: Option<SecretString>,
}

#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// Postgres URL (the production database: the drill tenant is synthetic).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Redis URL of a shard, where the drill's verdict keys are seeded.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: SecretString,
    /// Salt of the suppression tables' tenant hashes.
    #[arg(long, env = "ARCHIVER_SUPPRESSION_SALT", hide_env_values = true)]
    pub suppression_salt: Option<SecretString>,
    /// Read-side cache-invalidation URL (repeatable), as the operator has.
    #[arg(
        long = "cache-invalidate-url",
        env = "ARCHIVER_CACHE_INVALIDATE_URLS",
        value_delimiter = ','
    )]
    pub cache_invalidate_urls: Vec<String>,
    /// Alert-router Redis key pattern (repeatable), as the operator has.
    #[arg(
        long = "alert-key-pattern",
        env = "ARCHIVER_ALERT_KEY_PATTERNS",
        value_delimiter = ','
    )]
    pub alert_key_patterns: Vec<String>,
    /// A table that holds a `tenant_id` column (or tenant hashes) but is
    /// knowingly not erased, e.g. another team's table with its own
    /// deletion process (repeatable; `name`, or `schema.name` for a table
    /// the search path does not find by its name, read as SQL reads names:
    /// unquoted parts fold to lower case, `"Quoted"` ones keep theirs; the
    /// refusal spells each table that way). Without it, an erasure refuses to run
    /// while such a table exists outside the catalogue (`src/schema.rs`).
    #[arg(
        long = "erasure-out-of-scope-table",
        env = "ARCHIVER_ERASURE_OUT_OF_SCOPE_TABLES",
        value_delimiter = ','
    )]
    pub erasure_out_of_scope_tables: Vec<String>,
    /// The person accountable for the drill erasure.
    #[arg(long, default_value_t = DRILL_REQUESTER)]
    pub requester: Uuid,
}

async fn connect(url: &SecretString) -> Result<PgPool, String> {
    crate::db::connect(url.expose(), 4)
        .await
        .map_err(|e| e.to_string())
}

// ------------------------------------------------------------------ receipt

/// `archiver-operator receipt NAME`: prints the receipt and whether its
/// hash matches the status, the audit log and the tombstones.
pub async fn receipt(args: ReceiptArgs) -> ExitCode {
    match print_receipt(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// The object's status: from the manifests directory's status file, or
/// from the API server. None when the object is gone (its receipt stays in
/// the audit log).
async fn object_status(args: &ReceiptArgs) -> Result<(String, Option<Value>), String> {
    match &args.manifests {
        Some(dir) => {
            let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
            let stored = StatusStore::for_manifests(dir)
                .load("DeletionRequest", &namespace, &args.name)
                .map_err(|e| e.to_string())?;
            Ok((namespace, stored.map(|s| s.status)))
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
            let namespace = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            let api: kube::Api<DeletionRequest> = kube::Api::namespaced(client, &namespace);
            let object = api
                .get_opt(&args.name)
                .await
                .map_err(|e| format!("reading DeletionRequest {namespace}/{}: {e}", args.name))?;
            let status = object
                .and_then(|o| o.status)
                .map(|s| serde_json::to_value(s).unwrap_or(Value::Null));
            Ok((namespace, status))
        }
    }
}

async fn print_receipt(args: ReceiptArgs) -> Result<bool, String> {
    let (namespace, status) = object_status(&args).await?;
    let pool = connect(&args.database_url).await?;
    let stored = receipt::stored_receipts(&pool, &namespace, &args.name)
        .await
        .map_err(|e| format!("reading the audit log: {e}"))?;
    let label = format!("DeletionRequest {namespace}/{}", args.name);
    let status_receipt = status
        .as_ref()
        .and_then(|s| s["receipt"].as_str().map(str::to_string));
    let status_hash = status
        .as_ref()
        .and_then(|s| s["receiptSha256"].as_str().map(str::to_string));

    let mut checks: Vec<(String, bool)> = Vec::new();
    let receipt_text = match (&status_receipt, stored.first()) {
        (Some(text), _) => {
            let matches = status_hash.as_deref() == Some(sha256_hex(text).as_str());
            checks.push((
                "the status's receiptSha256 is the SHA-256 of its receipt".into(),
                matches,
            ));
            text.clone()
        }
        (None, Some(newest)) => {
            println!(
                "# {label}: no receipt in the object's status ({}); showing the audit log's",
                if status.is_some() {
                    "not completed?"
                } else {
                    "object not found"
                }
            );
            newest.sealed.canonical.clone()
        }
        (None, None) => {
            return Err(format!(
                "{label}: no receipt in its status nor in the audit log (has the erasure completed?)"
            ));
        }
    };
    let parsed: Value =
        serde_json::from_str(&receipt_text).map_err(|e| format!("the receipt is not JSON: {e}"))?;
    let sealed = SealedReceipt::from_value(&parsed);
    checks.push((
        "the receipt is canonical JSON".into(),
        sealed.canonical == receipt_text,
    ));
    let audited = stored.iter().find(|r| r.sealed.sha256 == sealed.sha256);
    checks.push((
        match audited {
            Some(r) => format!(
                "operator_audit_log #{} ({}) holds the same receipt",
                r.audit_id,
                receipt::timestamp(r.recorded_at)
            ),
            None => "operator_audit_log holds the same receipt".into(),
        },
        audited.is_some(),
    ));
    let ids: Vec<i64> = parsed["tombstones"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["id"].as_i64()).collect())
        .unwrap_or_default();
    let marked: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, receipt_sha256 FROM data_deletion_log WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .map_err(|e| format!("reading the tombstones: {e}"))?;
    let all_marked = !ids.is_empty()
        && ids.iter().all(|id| {
            marked
                .iter()
                .any(|(m, hash)| m == id && hash.as_deref() == Some(sealed.sha256.as_str()))
        });
    checks.push((
        format!("tombstone(s) {ids:?} exist and record the same hash"),
        all_marked,
    ));

    println!(
        "{}",
        serde_json::to_string_pretty(&parsed).unwrap_or(receipt_text)
    );
    println!("\n{label}");
    println!("receipt sha256: {}", sealed.sha256);
    let mut ok = true;
    for (check, passed) in &checks {
        println!("  [{}] {check}", if *passed { "ok" } else { "MISMATCH" });
        ok &= passed;
    }
    println!(
        "{}",
        if ok {
            "hash matches"
        } else {
            "HASH DOES NOT MATCH"
        }
    );
    Ok(ok)
}

// -------------------------------------------------------- replay-tombstones

/// `archiver-operator replay-tombstones`: re-applies every tombstone.
pub async fn replay_tombstones(args: ReplayArgs) -> ExitCode {
    let result = async {
        let pool = connect(&args.database_url).await?;
        crate::db::migrate(&pool).await.map_err(|e| e.to_string())?;
        let now = chrono::Utc::now();
        let salt = args.suppression_salt.as_ref();
        let report = match &args.tombstones_from {
            Some(source) => {
                let source = connect(source).await?;
                replay::import_and_replay(&source, &pool, salt, now).await
            }
            None => replay::replay_tombstones(&pool, salt, now).await,
        };
        report.map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(report) => {
            print_replay(&report);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn print_replay(report: &ReplayReport) {
    println!(
        "{} tombstone(s) replayed ({} imported)",
        report.tombstones, report.imported
    );
    for (surface, count) in &report.removed {
        println!("  {surface:<30} {count}");
    }
    if report.effective.is_empty() {
        println!("nothing had come back");
    } else {
        println!(
            "data had come back for tombstone(s) {:?}; removed again",
            report.effective
        );
    }
    if report.suppression_skipped {
        eprintln!(
            "warning: the suppression tables were not replayed: give --suppression-salt (ARCHIVER_SUPPRESSION_SALT)"
        );
    }
}

// -------------------------------------------------------------------- drill

/// `archiver-operator drill`: exit 0 when every assertion held.
pub async fn drill(args: DrillArgs) -> ExitCode {
    let result = async {
        let pool = connect(&args.database_url).await?;
        crate::db::migrate(&pool).await.map_err(|e| e.to_string())?;
        let config = OperatorConfig {
            suppression_salt: args.suppression_salt.clone(),
            cache_invalidate_urls: args.cache_invalidate_urls.clone(),
            alert_key_patterns: args.alert_key_patterns.clone(),
            erasure_out_of_scope_tables: args.erasure_out_of_scope_tables.clone(),
            erasure_redis_urls: Vec::new(),
        };
        drill::run(
            &pool,
            &args.redis_url,
            config,
            args.requester,
            Arc::new(SystemClock),
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("drill FAILED: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "deletion drill {} (tenant {}, server {})",
        report.request,
        drill::DRILL_TENANT,
        drill::DRILL_SERVER
    );
    println!("  {:<30} {:>8} {:>8}", "surface", "seeded", "after");
    for (surface, seeded) in &report.seeded {
        let after = report.after.get(surface).copied().unwrap_or_default();
        println!("  {surface:<30} {seeded:>8} {after:>8}");
    }
    if let Some(id) = report.status.tombstone_id {
        println!("tombstone: data_deletion_log #{id}");
    }
    if let Some(text) = &report.status.receipt {
        let pretty = serde_json::from_str::<Value>(text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| text.clone());
        println!("receipt:\n{pretty}");
        println!(
            "receipt sha256: {}",
            report.status.receipt_sha256.as_deref().unwrap_or("-")
        );
    }
    if report.passed() {
        println!("drill PASSED");
        ExitCode::SUCCESS
    } else {
        for problem in &report.problems {
            println!("  FAILED: {problem}");
        }
        println!("drill FAILED");
        ExitCode::FAILURE
    }
}
