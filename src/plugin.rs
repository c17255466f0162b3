//! `kubectl archiver ...`: the same binary installed as `kubectl-archiver`
//! (kubectl runs any `kubectl-<name>` on PATH as `kubectl <name>`). The
//! person at the keyboard is usually the data protection officer, so the
//! plugin speaks in their terms: erase, receipt, plan, status. Everything it
//! does is an ordinary API call a `kubectl apply` could also make; the
//! operator does the work.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use clap::{Args, Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::api::deletion_request::{DeadlineExtension, DeletionReason};
use crate::api::{
    ArchiverShard, DeletionRequest, DeletionRequestSpec, PartitionSchedule, RetentionPolicy,
};

/// The file name kubectl looks for on PATH.
pub const PLUGIN_NAME: &str = "kubectl-archiver";

/// Whether the process was started as the kubectl plugin.
pub fn invoked_as_plugin(argv0: Option<&OsString>) -> bool {
    argv0
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.strip_suffix(".exe").unwrap_or(name) == PLUGIN_NAME)
}

/// archiver-operator as a kubectl plugin: erase a tenant's data, check a
/// receipt, preview a retention change, see every archiver object's health.
///
/// Exit codes: 0 success; 1 the request failed or a check did not pass;
/// 2 usage or configuration error (as `archiver-operator`).
#[derive(Debug, Parser)]
#[command(name = "kubectl archiver", version, long_about = None)]
pub struct PluginCli {
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a DeletionRequest (a GDPR erasure) with a generated name and
    /// `receivedAt` now; `--dry-run` prints it instead. The operator runs the
    /// erasure; follow it with `kubectl get dr -w` and `kubectl archiver receipt`.
    Erase(EraseArgs),
    /// Print a DeletionRequest's receipt and check its SHA-256 against the
    /// status, the audit log and the tombstones (as `archiver-operator receipt`).
    Receipt(crate::commands::erasure::ReceiptArgs),
    /// Show what a RetentionPolicy file would delete, and the privacy-text
    /// diff (as `archiver-operator plan`).
    Plan(crate::commands::retention::PlanArgs),
    /// One line per archiver object in the namespace: kind, name, Ready and why.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EraseArgs {
    /// Tenant whose data is erased (UUID).
    #[arg(long)]
    pub tenant: Uuid,
    /// Server to erase; omit to erase every server of the tenant.
    #[arg(long)]
    pub server: Option<String>,
    /// Why: gdpr-art17 | tenant-churned | manual-cleanup | drill.
    #[arg(long, value_parser = parse_reason)]
    pub reason: DeletionReason,
    /// UUID of the person accountable for the request.
    #[arg(long)]
    pub requester: Uuid,
    /// When the request was received (RFC 3339); default now. The deadline
    /// counts from here.
    #[arg(long, value_name = "RFC3339")]
    pub received_at: Option<DateTime<Utc>>,
    /// Namespace of the DeletionRequest (default: the kubeconfig's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Print the DeletionRequest as YAML instead of creating it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Namespace to list (default: the kubeconfig's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

fn parse_reason(text: &str) -> Result<DeletionReason, String> {
    serde_json::from_value(serde_json::Value::String(text.into())).map_err(|_| {
        format!("{text:?} is not one of gdpr-art17, tenant-churned, manual-cleanup, drill")
    })
}

/// Runs the plugin with its own argument vector.
pub async fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match PluginCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        PluginCommand::Erase(args) => report(erase(args).await),
        PluginCommand::Receipt(args) => crate::commands::erasure::receipt(args).await,
        PluginCommand::Plan(args) => crate::commands::retention::plan_command(args).await,
        PluginCommand::Status(args) => report(status(args).await),
    }
}

/// Why a plugin command failed: the API call (exit 1) or its inputs (2).
#[derive(Debug, thiserror::Error)]
enum PluginError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

fn report(result: Result<(), PluginError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ PluginError::Usage(_)) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The DeletionRequest `erase` creates: validated offline with the CRD's
/// schema and CEL rules first, so a bad slug is refused before any call.
pub fn deletion_request(args: &EraseArgs, namespace: &str, now: DateTime<Utc>) -> DeletionRequest {
    let spec = DeletionRequestSpec {
        tenant_id: args.tenant,
        server_slug: args.server.clone(),
        reason: args.reason,
        requester: args.requester,
        received_at: Some(args.received_at.unwrap_or(now)),
        extension: None::<DeadlineExtension>,
    };
    let mut object = DeletionRequest::new("", spec);
    object.metadata.name = None;
    // The API server completes the name: one request per apply, never a
    // collision with an earlier request for the same pair.
    object.metadata.generate_name = Some(format!("erase-{}-", short_tenant(args.tenant)));
    object.metadata.namespace = Some(namespace.to_string());
    object
}

fn short_tenant(tenant: Uuid) -> String {
    tenant.simple().to_string()[..8].to_string()
}

async fn client() -> Result<Client, PluginError> {
    crate::runtime::kube_client("kubectl-archiver")
        .await
        .map_err(PluginError::Connect)
}

async fn erase(args: EraseArgs) -> Result<(), PluginError> {
    // Whole seconds: the deadline and the receipt are read by people.
    let now = Utc::now().trunc_subsecs(0);
    // Checked before anything else, so bad input never reaches a cluster.
    let offline_namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
    let offline = deletion_request(&args, &offline_namespace, now);
    check_offline(&offline)?;
    if args.dry_run {
        print!("{}", to_yaml(&offline)?);
        return Ok(());
    }
    let client = client().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let object = deletion_request(&args, &namespace, now);
    let api: Api<DeletionRequest> = Api::namespaced(client, &namespace);
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .map_err(|source| PluginError::Api {
            action: format!("creating a DeletionRequest in {namespace}"),
            source,
        })?;
    println!(
        "deletionrequest.archiver.uptime.dev/{} created (received {})",
        created.name_any(),
        created
            .spec
            .received_at
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default()
    );
    Ok(())
}

fn to_yaml(object: &DeletionRequest) -> Result<String, PluginError> {
    serde_yaml_ng::to_string(object).map_err(|e| PluginError::Usage(e.to_string()))
}

/// The same checks `archiver-operator validate` runs on a file, on the
/// object with a stand-in for the name the API server will generate.
fn check_offline(object: &DeletionRequest) -> Result<(), PluginError> {
    let mut value = serde_json::to_value(object).map_err(|e| PluginError::Usage(e.to_string()))?;
    if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.insert("name".into(), "erase-name-to-be-generated".into());
        metadata.remove("generateName");
    }
    let document = crate::api::validation::Document {
        file: "kubectl archiver erase".into(),
        index: 0,
        value,
    };
    let problems = crate::api::validation::validate_document(&document);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Usage(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

async fn status(args: StatusArgs) -> Result<(), PluginError> {
    let client = client().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let mut rows = Vec::new();
    rows.extend(list::<ArchiverShard>(&client, &namespace, |o| conditions(&o.status)).await?);
    rows.extend(list::<RetentionPolicy>(&client, &namespace, |o| conditions(&o.status)).await?);
    rows.extend(list::<PartitionSchedule>(&client, &namespace, |o| conditions(&o.status)).await?);
    rows.extend(list::<DeletionRequest>(&client, &namespace, |o| conditions(&o.status)).await?);
    println!(
        "{:<20} {:<32} {:<7} {:<22} MESSAGE",
        "KIND", "NAME", "READY", "REASON"
    );
    for row in rows {
        println!(
            "{:<20} {:<32} {:<7} {:<22} {}",
            row.kind, row.name, row.ready, row.reason, row.message
        );
    }
    Ok(())
}

/// Anything whose status carries `conditions`.
trait HasConditions {
    fn conditions(&self) -> &[Condition];
}

macro_rules! has_conditions {
    ($($status:ty),*) => {$(
        impl HasConditions for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
        }
    )*};
}
has_conditions!(
    crate::api::ArchiverShardStatus,
    crate::api::RetentionPolicyStatus,
    crate::api::PartitionScheduleStatus,
    crate::api::DeletionRequestStatus
);

fn conditions<S: HasConditions>(status: &Option<S>) -> Vec<Condition> {
    status
        .as_ref()
        .map(|s| s.conditions().to_vec())
        .unwrap_or_default()
}

struct StatusRow {
    kind: String,
    name: String,
    ready: String,
    reason: String,
    message: String,
}

async fn list<K>(
    client: &Client,
    namespace: &str,
    conditions_of: impl Fn(&K) -> Vec<Condition>,
) -> Result<Vec<StatusRow>, PluginError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let objects = api
        .list(&ListParams::default())
        .await
        .map_err(|source| PluginError::Api {
            action: format!("listing {kind} in {namespace}"),
            source,
        })?;
    Ok(objects
        .items
        .iter()
        .map(|object| {
            let ready = conditions_of(object)
                .into_iter()
                .find(|c| c.type_ == "Ready");
            StatusRow {
                kind: kind.clone(),
                name: object.name_any(),
                ready: ready.as_ref().map_or("-".into(), |c| c.status.clone()),
                reason: ready
                    .as_ref()
                    .map_or("NotReconciled".into(), |c| c.reason.clone()),
                message: ready.map_or(String::new(), |c| c.message),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_answers_to_its_kubectl_name_only() {
        let os = |s: &str| Some(OsString::from(s));
        assert!(invoked_as_plugin(
            os("/usr/local/bin/kubectl-archiver").as_ref()
        ));
        assert!(invoked_as_plugin(os("kubectl-archiver").as_ref()));
        assert!(!invoked_as_plugin(
            os("/usr/bin/archiver-operator").as_ref()
        ));
        assert!(!invoked_as_plugin(os("kubectl-archiver-old").as_ref()));
        assert!(!invoked_as_plugin(None));
    }
}
