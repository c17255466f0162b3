//! `archiver-operator restore-drill`: the quarterly restore drill of seed
//! 000 as one command. It checks the backup's SHA-256, restores it into a
//! scratch database on the live server, brings the schema up to date,
//! replays every tombstone of the live database into it, checks that a
//! second replay finds nothing (no erased data survived the restore), that
//! every table of the catalogue is there, and compares row counts per table
//! and month with the live database; then it drops the scratch database.
//!
//! Differences in row counts are expected (retention pruned the live
//! database since the dump, new data arrived after it) and are reported,
//! not judged, with one exception: a month the live database holds but the
//! restore has no row of, while the restore holds later months of the same
//! table, is a hole in the backup (a partition or a table's month that was
//! never dumped) and a surprise. A surprise — a hash mismatch, a restore
//! that fails, a table missing, erased data that a second replay still
//! finds, a hole — exits 1.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::Args;
use serde::Serialize;
use sha2::Digest;
use sqlx::PgPool;

use crate::erasure::replay;
use crate::schema::Table;
use crate::secret::SecretString;

#[derive(Debug, Clone, Args)]
pub struct RestoreDrillArgs {
    /// The backup: a `pg_dump` archive (custom, tar or directory format,
    /// restored with `pg_restore`). A plain SQL dump is refused: `psql`
    /// would run its meta-commands (shell, `\connect`).
    #[arg(long, value_name = "FILE")]
    pub dump: PathBuf,
    /// The SHA-256 the backup must have (hex, as recorded when it was
    /// taken); a mismatch stops the drill before anything is restored.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The live database: the scratch database is created on its server,
    /// its tombstones are replayed into the restore and its counts compared.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Salt of the suppression tables' tenant hashes; without it those
    /// tables are not replayed.
    #[arg(long, env = "ARCHIVER_SUPPRESSION_SALT", hide_env_values = true)]
    pub suppression_salt: Option<SecretString>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Longest time the restore may take, in minutes.
    #[arg(long, default_value_t = 60)]
    pub restore_timeout_minutes: u64,
}

/// What the drill found.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub dump: String,
    pub dump_sha256: String,
    pub scratch_database: String,
    pub tombstones_replayed: usize,
    /// Tombstones whose data had come back with the restore (removed again).
    pub tombstones_effective: Vec<i64>,
    pub removed_by_replay: std::collections::BTreeMap<String, i64>,
    /// Row counts per table and month, restored and live.
    pub counts: Vec<MonthCount>,
    /// Everything that makes the drill fail; empty when it passed.
    pub surprises: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthCount {
    pub table: String,
    pub month: String,
    pub restored: i64,
    pub live: i64,
}

#[derive(Debug, thiserror::Error)]
enum DrillError {
    #[error("reading {path}: {source}")]
    Dump {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database URL cannot be read as a URL: {0}")]
    Url(String),
    #[error(transparent)]
    Connect(#[from] crate::db::DbError),
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> DrillError {
    move |source| DrillError::Database { context, source }
}

/// Runs the drill; exit 0 when it passed, 1 on a surprise or an error.
pub async fn restore_drill(args: RestoreDrillArgs) -> ExitCode {
    match drill(&args).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(error) => eprintln!("error: {error}"),
                }
            } else {
                print_report(&report);
            }
            if report.surprises.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn drill(args: &RestoreDrillArgs) -> Result<RestoreReport, DrillError> {
    let dump_sha256 = file_sha256(&args.dump)?;
    let mut report = RestoreReport {
        dump: args.dump.display().to_string(),
        dump_sha256: dump_sha256.clone(),
        scratch_database: String::new(),
        tombstones_replayed: 0,
        tombstones_effective: Vec::new(),
        removed_by_replay: Default::default(),
        counts: Vec::new(),
        surprises: Vec::new(),
    };
    if let Some(expected) = &args.sha256
        && !expected.trim().eq_ignore_ascii_case(&dump_sha256)
    {
        report.surprises.push(format!(
            "the dump's SHA-256 is {dump_sha256}, not the recorded {}: nothing was restored",
            expected.trim()
        ));
        return Ok(report);
    }
    let live = crate::db::connect(args.database_url.expose(), 4).await?;
    let scratch_name = format!(
        "archiver_restore_drill_{}_{}",
        Utc::now().format("%Y%m%d%H%M%S"),
        std::process::id()
    );
    report.scratch_database = scratch_name.clone();
    // From template0: template1 may hold objects (an extension's, a DBA's)
    // that the restore would collide with or that the backup never had.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{scratch_name}\" TEMPLATE template0"
    )))
    .execute(&live)
    .await
    .map_err(db(
        "creating the scratch database (the role needs CREATEDB)",
    ))?;
    let outcome = restore_and_check(args, &live, &scratch_name, &mut report).await;
    // The scratch database goes whatever happened; its connections first.
    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{scratch_name}\" WITH (FORCE)"
    )))
    .execute(&live)
    .await;
    if let Err(error) = dropped {
        report.surprises.push(format!(
            "the scratch database {scratch_name} could not be dropped: {error}"
        ));
    }
    outcome.map(|()| report)
}

async fn restore_and_check(
    args: &RestoreDrillArgs,
    live: &PgPool,
    scratch_name: &str,
    report: &mut RestoreReport,
) -> Result<(), DrillError> {
    let scratch_url = with_database(args.database_url.expose(), scratch_name)?;
    let timeout = Duration::from_secs(args.restore_timeout_minutes.saturating_mul(60));
    if let Err(problem) = restore(&args.dump, &scratch_url, timeout).await {
        report.surprises.push(problem);
        return Ok(());
    }
    let scratch = crate::db::connect(scratch_url.expose(), 4).await?;
    // A backup older than the running version gets its missing migrations,
    // as an operator would apply them on start.
    if let Err(error) = crate::db::migrate(&scratch).await {
        report
            .surprises
            .push(format!("the restored schema cannot be migrated: {error}"));
        scratch.close().await;
        return Ok(());
    }
    let salt = args.suppression_salt.as_ref();
    let now = Utc::now();
    match replay::import_and_replay(live, &scratch, salt, now).await {
        Ok(replayed) => {
            report.tombstones_replayed = replayed.tombstones;
            report.tombstones_effective = replayed.effective;
            report.removed_by_replay = replayed.removed;
        }
        Err(error) => report
            .surprises
            .push(format!("replaying the tombstones failed: {error}")),
    }
    // A second replay must find nothing: whatever an erasure removed is
    // gone from the restore.
    match replay::replay_tombstones(&scratch, salt, now).await {
        Ok(again) if again.effective.is_empty() => {}
        Ok(again) => report.surprises.push(format!(
            "a second replay still removed data of tombstone(s) {:?}",
            again.effective
        )),
        Err(error) => report
            .surprises
            .push(format!("the second replay failed: {error}")),
    }
    for table in missing_tables(&scratch).await? {
        report
            .surprises
            .push(format!("{table} is missing from the restored database"));
    }
    report.counts = month_counts(&scratch, live).await?;
    report.surprises.extend(holes(&report.counts));
    scratch.close().await;
    Ok(())
}

/// The SHA-256 of a file (a directory-format dump: of its `toc.dat`).
fn file_sha256(path: &Path) -> Result<String, DrillError> {
    let file = if path.is_dir() {
        path.join("toc.dat")
    } else {
        path.to_path_buf()
    };
    let error = |source| DrillError::Dump {
        path: file.display().to_string(),
        source,
    };
    // A device (`/dev/zero`) would be hashed for ever and a FIFO would
    // block the open: only a regular file (links followed) is a dump.
    let metadata = std::fs::metadata(&file).map_err(error)?;
    if !metadata.is_file() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a pg_dump archive, a plain SQL dump or a directory dump)",
        )));
    }
    let mut reader = std::fs::File::open(&file).map_err(error)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|source| DrillError::Dump {
                path: file.display().to_string(),
                source,
            })?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `url` naming database `name` instead of its own: in its path, and
/// without a `dbname` parameter (which the client would read over the
/// path, and so check the live database instead of the restore).
fn with_database(url: &str, name: &str) -> Result<SecretString, DrillError> {
    let mut parsed = url::Url::parse(url).map_err(|e| DrillError::Url(e.to_string()))?;
    parsed.set_path(&format!("/{name}"));
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| key != "dbname")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    Ok(SecretString::new(parsed.to_string()))
}

/// The libpq environment that reaches the database at `url` as the
/// drill's own connections (sqlx) reach it: user and password
/// percent-decoded, and the query parameters sqlx reads (`host` for a
/// socket directory, `port`, `user`, `password`, TLS files, `options`)
/// over the URL's own parts. Variables of the operator's environment that
/// would choose another server are cleared.
fn libpq_environment(url: &url::Url) -> Vec<(&'static str, Option<OsString>)> {
    let text = |value: &str| Some(OsString::from(value));
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or("localhost");
    let mut env: Vec<(&'static str, Option<OsString>)> = vec![
        ("PGHOST", text(host)),
        ("PGHOSTADDR", None),
        ("PGPORT", text(&url.port().unwrap_or(5432).to_string())),
        ("PGUSER", Some(percent_decoded(url.username()))),
        (
            "PGPASSWORD",
            Some(percent_decoded(url.password().unwrap_or_default())),
        ),
        ("PGSERVICE", None),
        ("PGOPTIONS", None),
        ("PGDATABASE", text(url.path().trim_start_matches('/'))),
    ];
    for (key, value) in url.query_pairs() {
        let variable = match key.as_ref() {
            "host" => "PGHOST",
            "hostaddr" => "PGHOSTADDR",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "password" => "PGPASSWORD",
            "sslmode" | "ssl-mode" => "PGSSLMODE",
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => "PGSSLROOTCERT",
            "sslcert" | "ssl-cert" => "PGSSLCERT",
            "sslkey" | "ssl-key" => "PGSSLKEY",
            "application_name" => "PGAPPNAME",
            "options" => "PGOPTIONS",
            _ => continue,
        };
        env.retain(|(name, _)| *name != variable);
        env.push((variable, text(&value)));
    }
    env
}

/// `%XX` escapes of a URL part as the bytes they stand for.
fn percent_decoded(part: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Why a plain SQL dump is not restored: `psql` would run its meta-commands
/// (`\!` runs a shell command, `\connect` moves the restore to another
/// database, the live one included) with the live database's credentials,
/// and a backup file is outside input. `psql`'s `\restrict` (17.6+) would
/// stop that, but the PostgreSQL client of the supported platforms is older.
const PLAIN_DUMP_REFUSED: &str = "a plain SQL dump is refused: psql would run its \
    meta-commands (\\! shell, \\connect to another database) with the live database's \
    credentials; take the backup with pg_dump --format=custom (or directory, or tar)";

/// Restores the `pg_dump` archive `dump` into the database at `url` with
/// `pg_restore`, stopping at the first error, within `timeout`. A plain SQL
/// dump is refused ([`PLAIN_DUMP_REFUSED`]).
/// The connection goes through the environment (`PGPASSWORD` and the other
/// libpq variables), so no password is on a command line.
async fn restore(dump: &Path, url: &SecretString, timeout: Duration) -> Result<(), String> {
    let parsed = url::Url::parse(url.expose()).map_err(|e| e.to_string())?;
    let archive = dump.is_dir() || {
        let mut magic = [0u8; 5];
        std::fs::File::open(dump)
            .and_then(|mut file| file.read_exact(&mut magic))
            .is_ok()
            && &magic == b"PGDMP"
    };
    // A relative name starting with `-` would be read as options (and `-`
    // as standard input): the tools get it as `./-name`.
    let dump = if dump.is_relative() && dump.as_os_str().as_encoded_bytes().starts_with(b"-") {
        Path::new(".").join(dump)
    } else {
        dump.to_path_buf()
    };
    if !archive {
        return Err(PLAIN_DUMP_REFUSED.into());
    }
    let mut command = tokio::process::Command::new("pg_restore");
    command.args(["--no-owner", "--no-privileges", "--exit-on-error"]);
    command.arg(&dump);
    command
        .arg("--dbname")
        .arg(parsed.path().trim_start_matches('/'));
    for (variable, value) in libpq_environment(&parsed) {
        match value {
            Some(value) => command.env(variable, value),
            None => command.env_remove(variable),
        };
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let program = "pg_restore";
    let child = command
        .spawn()
        .map_err(|e| format!("{program} cannot be started: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("the restore did not finish within {timeout:?}")),
        Ok(Err(error)) => Err(format!("{program}: {error}")),
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => Err(format!(
            "the restore failed ({program} {}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        )),
    }
}

/// Tables of the catalogue the restored database lacks.
async fn missing_tables(scratch: &PgPool) -> Result<Vec<String>, DrillError> {
    let mut missing = Vec::new();
    for table in crate::schema::catalogued_tables() {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(scratch)
            .await
            .map_err(db("looking for the catalogue's tables"))?;
        if found.is_none() {
            missing.push(table.to_string());
        }
    }
    Ok(missing)
}

/// Rows per erasure surface and month in both databases.
async fn month_counts(scratch: &PgPool, live: &PgPool) -> Result<Vec<MonthCount>, DrillError> {
    let mut counts = Vec::new();
    for table in Table::ALL {
        let statement = format!(
            "SELECT to_char(date_trunc('month', {time}), 'YYYY-MM') AS month, count(*) \
             FROM {name} GROUP BY 1 ORDER BY 1",
            time = table.time_expression(),
            name = table.name()
        );
        let read = |pool: &PgPool| {
            let statement = statement.clone();
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (Option<String>, i64)>(sqlx::AssertSqlSafe(statement))
                    .fetch_all(&pool)
                    .await
                    .map_err(db("counting rows per month"))
            }
        };
        let mut months: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for (month, count) in read(scratch).await? {
            months.entry(month.unwrap_or_default()).or_default().0 = count;
        }
        for (month, count) in read(live).await? {
            months.entry(month.unwrap_or_default()).or_default().1 = count;
        }
        counts.extend(
            months
                .into_iter()
                .map(|(month, (restored, live))| MonthCount {
                    table: table.name().to_string(),
                    month,
                    restored,
                    live,
                }),
        );
    }
    Ok(counts)
}

/// Months the backup misses: the live database holds rows of the month,
/// the restore none, and the restore holds a later month of that table, so
/// the month was not simply after the dump. (Retention only ever removes a
/// table's oldest months, and the tombstones replayed into the restore were
/// applied to the live database too, so neither empties a month in the
/// restore alone.)
fn holes(counts: &[MonthCount]) -> Vec<String> {
    counts
        .iter()
        .filter(|count| count.restored == 0 && count.live > 0)
        .filter(|hole| {
            counts.iter().any(|later| {
                later.table == hole.table && later.month > hole.month && later.restored > 0
            })
        })
        .map(|hole| {
            format!(
                "{} {}: the live database holds {} row(s), the restore none, though it holds \
                 later months: the backup misses that month",
                hole.table, hole.month, hole.live
            )
        })
        .collect()
}

fn print_report(report: &RestoreReport) {
    println!(
        "restore drill of {} (sha256 {})",
        report.dump, report.dump_sha256
    );
    if !report.scratch_database.is_empty() {
        println!("scratch database {} (dropped)", report.scratch_database);
    }
    println!(
        "{} tombstone(s) replayed; data had come back for {:?}",
        report.tombstones_replayed, report.tombstones_effective
    );
    for (surface, removed) in &report.removed_by_replay {
        println!("  removed again from {surface:<28} {removed}");
    }
    println!(
        "{:<30} {:<8} {:>12} {:>12}",
        "table", "month", "restored", "live"
    );
    for count in &report.counts {
        println!(
            "{:<30} {:<8} {:>12} {:>12}",
            count.table, count.month, count.restored, count.live
        );
    }
    if report.surprises.is_empty() {
        println!("PASSED: no surprise");
    } else {
        for surprise in &report.surprises {
            println!("SURPRISE: {surprise}");
        }
    }
}

#[cfg(test)]
mod tests {
    fn count(table: &str, month: &str, restored: i64, live: i64) -> super::MonthCount {
        super::MonthCount {
            table: table.into(),
            month: month.into(),
            restored,
            live,
        }
    }

    #[test]
    fn a_month_missing_between_restored_months_is_a_hole() {
        let counts = [
            count("probe_minute", "2026-09", 5, 0),
            count("probe_minute", "2026-10", 0, 7),
            count("probe_minute", "2026-11", 3, 9),
            // Newer than the dump: not a hole.
            count("probe_minute", "2026-12", 0, 4),
            // Another table's later month does not make this one a hole.
            count("probe_day", "2026-10", 0, 2),
            count("probe_month", "2026-11", 1, 1),
        ];
        let holes = super::holes(&counts);
        assert_eq!(holes.len(), 1, "{holes:?}");
        assert!(holes[0].starts_with("probe_minute 2026-10: the live database holds 7 row(s)"));
    }

    use super::*;

    #[test]
    fn the_scratch_url_names_the_scratch_database_only() {
        let url = with_database(
            "postgres://u:p@db:5433/live?dbname=live&sslmode=require",
            "scratch",
        )
        .unwrap();
        assert_eq!(
            url.expose(),
            "postgres://u:p@db:5433/scratch?sslmode=require"
        );
    }

    #[test]
    fn libpq_gets_the_server_sqlx_reaches() {
        let url = url::Url::parse(
            "postgres://drill%20user:p%40ss%2Fw@localhost:1/scratch?host=/run/pg&port=5444&sslrootcert=/ca.pem",
        )
        .unwrap();
        let env: std::collections::BTreeMap<&str, Option<OsString>> =
            libpq_environment(&url).into_iter().collect();
        let value = |name: &str| env[name].clone().map(|v| v.into_string().unwrap());
        assert_eq!(value("PGHOST").as_deref(), Some("/run/pg"));
        assert_eq!(value("PGPORT").as_deref(), Some("5444"));
        assert_eq!(value("PGUSER").as_deref(), Some("drill user"));
        assert_eq!(value("PGPASSWORD").as_deref(), Some("p@ss/w"));
        assert_eq!(value("PGSSLROOTCERT").as_deref(), Some("/ca.pem"));
        assert_eq!(value("PGDATABASE").as_deref(), Some("scratch"));
        assert_eq!(value("PGSERVICE"), None);
        assert_eq!(percent_decoded("%zz%4"), OsString::from("%zz%4"));
    }
}
