//! The `render-privacy-policy` and `plan` commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::api::RetentionPolicy;
use crate::api::validation::{read_documents, validate_document};
use crate::retention::plan::{self, Plan};
use crate::retention::privacy::{self, Format};
use crate::retention::tiers::spec_problems;
use crate::secret::SecretString;

/// Exit status of `plan` when the change applies without confirmation.
pub const EXIT_NO_CONFIRMATION: u8 = 0;
/// Exit status of any error (unreadable or invalid file, database).
pub const EXIT_ERROR: u8 = 1;
/// Exit status of `plan` when the shrink guard will hold the change until
/// the confirm-shrink annotation carries the new hash.
pub const EXIT_CONFIRMATION_NEEDED: u8 = 3;

/// Output of `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Text,
    Markdown,
}

/// Arguments of `render-privacy-policy`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// The RetentionPolicy manifest (the file in git).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Output format; the operator publishes all three.
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: Format,
    /// Generation to print (default: the file's metadata.generation, if any).
    #[arg(long)]
    pub generation: Option<i64>,
}

/// Arguments of `plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The RetentionPolicy manifest proposed (e.g. the pull request's version).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Postgres URL of the database the policy would be enforced on.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// `markdown` for a pull-request comment.
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
    /// Count as of this time (RFC 3339) instead of now.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<DateTime<Utc>>,
}

/// Runs `render-privacy-policy`.
pub fn render_command(args: RenderArgs) -> ExitCode {
    render_privacy_policy(&args.file, args.format, args.generation)
}

/// Runs `plan`.
pub async fn plan_command(args: PlanArgs) -> ExitCode {
    plan(&args.file, &args.database_url, args.format, args.now).await
}

/// Reads the one RetentionPolicy of `file` and checks it with the CRD's
/// schema and CEL rules (as `validate` does) and the tier rules.
pub fn read_policy(file: &Path) -> Result<RetentionPolicy, Vec<String>> {
    let documents = read_documents(file).map_err(|problem| vec![problem.to_string()])?;
    let mut policies: Vec<_> = documents
        .into_iter()
        .filter(|doc| doc.kind() == "RetentionPolicy")
        .collect();
    let document = match policies.len() {
        1 => policies.remove(0),
        0 => {
            return Err(vec![format!(
                "{}: no RetentionPolicy in the file",
                file.display()
            )]);
        }
        n => {
            return Err(vec![format!(
                "{}: {n} RetentionPolicies in the file; exactly one may be in force",
                file.display()
            )]);
        }
    };
    let problems: Vec<String> = validate_document(&document)
        .iter()
        .map(ToString::to_string)
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let policy: RetentionPolicy = serde_json::from_value(document.value)
        .map_err(|error| vec![format!("{}: cannot be read: {error}", file.display())])?;
    let problems = spec_problems(&policy.spec);
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| format!("{}: {p}", file.display()))
            .collect());
    }
    Ok(policy)
}

fn report_problems(problems: &[String]) -> ExitCode {
    for problem in problems {
        eprintln!("error: {problem}");
    }
    ExitCode::from(EXIT_ERROR)
}

/// `render-privacy-policy -f FILE`: the section the operator publishes, at
/// build time. The generation is the file's `metadata.generation` unless
/// given.
pub fn render_privacy_policy(file: &Path, format: Format, generation: Option<i64>) -> ExitCode {
    let policy = match read_policy(file) {
        Ok(policy) => policy,
        Err(problems) => return report_problems(&problems),
    };
    let generation = generation.or(policy.metadata.generation);
    print!("{}", privacy::render(&policy.spec, generation, format));
    ExitCode::SUCCESS
}

/// `plan -f FILE --database-url URL`: exit 0 when the change applies as it
/// is, 3 when the shrink guard will hold it, 1 on any error.
pub async fn plan(
    file: &Path,
    database_url: &SecretString,
    format: PlanFormat,
    now: Option<DateTime<Utc>>,
) -> ExitCode {
    let policy = match read_policy(file) {
        Ok(policy) => policy,
        Err(problems) => return report_problems(&problems),
    };
    let result = async {
        let pool = crate::db::connect(database_url.expose(), 2)
            .await
            .map_err(|error| error.to_string())?;
        let now = now.unwrap_or_else(Utc::now);
        let plan = plan_of(&pool, &policy, now).await.map_err(|error| {
            format!("{error} (is the schema current? run `archiver-operator migrate`)")
        });
        pool.close().await;
        plan
    }
    .await;
    match result {
        Ok(plan) => {
            print_plan(&plan, format);
            if plan.needs_confirmation() {
                ExitCode::from(EXIT_CONFIRMATION_NEEDED)
            } else {
                ExitCode::from(EXIT_NO_CONFIRMATION)
            }
        }
        Err(error) => report_problems(&[error]),
    }
}

fn print_plan(plan: &Plan, format: PlanFormat) {
    let text = match format {
        PlanFormat::Text => plan::render_text(plan),
        PlanFormat::Markdown => plan::render_markdown(plan),
    };
    print!("{text}");
}

/// The plan of a RetentionPolicy object read from a file.
pub async fn plan_of(
    pool: &sqlx::PgPool,
    policy: &RetentionPolicy,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<plan::Plan, crate::retention::RetentionError> {
    use kube::ResourceExt;
    let label = format!(
        "{}/{}",
        policy.namespace().unwrap_or_else(|| "default".into()),
        policy.name_any()
    );
    let confirmation = policy
        .annotations()
        .get(crate::api::common::CONFIRM_SHRINK_ANNOTATION)
        .map(String::as_str);
    let planned = plan::PlannedPolicy {
        label: &label,
        spec: &policy.spec,
        confirmation,
    };
    plan::plan(pool, planned, now).await
}
