//! Writing one minute of verdicts into `probe_minute`: COPY on the fast
//! path, and a staging table with `ON CONFLICT DO NOTHING` when the minute
//! was partly written before (watermark drift after a failover).

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{Acquire, PgConnection};

use super::verdict::Verdict;

const COLUMNS: &str = "tenant_id, server_slug, region, minute_bucket, state, p95_ms, tool_list_hash, \
                       error_kind, asn, registry_of_origin, archived_at, extra";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No partition of probe_minute covers the minute: the tick must fail
    /// loudly (there is no default partition on purpose).
    #[error("no partition of probe_minute covers {minute}")]
    PartitionMissing { minute: DateTime<Utc> },
    #[error("writing probe_minute: {0}")]
    Database(#[from] sqlx::Error),
}

/// Which path wrote the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    Copy,
    /// Fell back to the staging table: the minute was partly present.
    ConflictFallback,
}

/// The outcome of writing a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub path: WritePath,
    /// Rows that are new in probe_minute.
    pub inserted: u64,
}

/// Writes `rows` inside the caller's transaction.
pub async fn write_minute(
    tx: &mut PgConnection,
    rows: &[Verdict],
    minute: DateTime<Utc>,
    archived_at: DateTime<Utc>,
) -> Result<Written, WriteError> {
    if rows.is_empty() {
        return Ok(Written {
            path: WritePath::Copy,
            inserted: 0,
        });
    }
    let csv = encode_csv(rows, archived_at);
    // A savepoint lets the fallback run in the same transaction after the
    // fast path hits a unique violation.
    let mut savepoint = tx.begin().await?;
    let copied = copy(&mut savepoint, "probe_minute", &csv).await;
    match copied {
        Ok(inserted) => {
            savepoint.commit().await?;
            Ok(Written {
                path: WritePath::Copy,
                inserted,
            })
        }
        Err(error) if is_unique_violation(&error) => {
            savepoint.rollback().await?;
            let inserted = write_through_staging(tx, &csv)
                .await
                .map_err(|e| classify(e, minute))?;
            Ok(Written {
                path: WritePath::ConflictFallback,
                inserted,
            })
        }
        Err(error) => {
            savepoint.rollback().await?;
            Err(classify(error, minute))
        }
    }
}

/// Why a streamed minute stopped before it was written.
#[derive(Debug)]
pub enum StreamError<E> {
    /// The producer gave up (e.g. an unsealed key, Redis gone): nothing written.
    Aborted(E),
    Write(WriteError),
}

impl<E> From<sqlx::Error> for StreamError<E> {
    fn from(error: sqlx::Error) -> Self {
        Self::Write(WriteError::Database(error))
    }
}

/// Writes a minute whose rows arrive in chunks, streaming each chunk into
/// COPY as it comes, so reading Redis overlaps writing Postgres. A producer
/// error aborts the COPY and leaves nothing behind (the savepoint rolls
/// back). On a unique violation the whole minute is rewritten through the
/// staging table, as in [`write_minute`].
pub async fn write_minute_streaming<S, E>(
    tx: &mut PgConnection,
    mut chunks: S,
    minute: DateTime<Utc>,
    archived_at: DateTime<Utc>,
) -> Result<Written, StreamError<E>>
where
    S: futures::Stream<Item = Result<Vec<Verdict>, E>> + Unpin,
{
    use futures::StreamExt;
    let statement = format!("COPY probe_minute ({COLUMNS}) FROM STDIN WITH (FORMAT csv)");
    let mut savepoint = tx.begin().await?;
    let mut all_csv = Vec::new();
    let copied = {
        let mut copy_in = savepoint.copy_in_raw(&statement).await?;
        let mut failure = None;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Err(error) => {
                    failure = Some(StreamError::Aborted(error));
                    break;
                }
                Ok(rows) => {
                    let csv = encode_csv(&rows, archived_at);
                    if let Err(error) = copy_in.send(csv.as_slice()).await {
                        failure = Some(StreamError::Write(classify(error, minute)));
                        break;
                    }
                    all_csv.extend_from_slice(&csv);
                }
            }
        }
        match failure {
            Some(failure) => {
                let _ = copy_in.abort("the minute was abandoned").await;
                Err(failure)
            }
            None => copy_in
                .finish()
                .await
                .map_err(|error| StreamError::Write(WriteError::Database(error))),
        }
    };
    match copied {
        Ok(inserted) => {
            savepoint.commit().await?;
            Ok(Written {
                path: WritePath::Copy,
                inserted,
            })
        }
        Err(StreamError::Write(WriteError::Database(error))) if is_unique_violation(&error) => {
            savepoint.rollback().await?;
            let inserted = write_through_staging(tx, &all_csv)
                .await
                .map_err(|e| StreamError::Write(classify(e, minute)))?;
            Ok(Written {
                path: WritePath::ConflictFallback,
                inserted,
            })
        }
        Err(StreamError::Write(WriteError::Database(error))) => {
            savepoint.rollback().await?;
            Err(StreamError::Write(classify(error, minute)))
        }
        Err(other) => {
            savepoint.rollback().await?;
            Err(other)
        }
    }
}

async fn copy(conn: &mut PgConnection, table: &str, csv: &[u8]) -> Result<u64, sqlx::Error> {
    let statement = format!("COPY {table} ({COLUMNS}) FROM STDIN WITH (FORMAT csv)");
    let mut copy_in = conn.copy_in_raw(&statement).await?;
    if let Err(error) = copy_in.send(csv).await {
        let _ = copy_in.abort("send failed").await;
        return Err(error);
    }
    copy_in.finish().await
}

async fn write_through_staging(tx: &mut PgConnection, csv: &[u8]) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS probe_minute_staging \
         (LIKE probe_minute INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("TRUNCATE probe_minute_staging")
        .execute(&mut *tx)
        .await?;
    copy(tx, "probe_minute_staging", csv).await?;
    let inserted = sqlx::query(
        "INSERT INTO probe_minute SELECT * FROM probe_minute_staging ON CONFLICT DO NOTHING",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted)
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn classify(error: sqlx::Error, minute: DateTime<Utc>) -> WriteError {
    match &error {
        // "no partition of relation ... found for row"
        sqlx::Error::Database(db) if db.message().contains("no partition") => {
            WriteError::PartitionMissing { minute }
        }
        _ => WriteError::Database(error),
    }
}

/// CSV for COPY: NULL is an empty unquoted field, text is always quoted.
pub fn encode_csv(rows: &[Verdict], archived_at: DateTime<Utc>) -> Vec<u8> {
    let archived_at = archived_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut out = String::with_capacity(rows.len() * 160);
    for row in rows {
        let _ = write!(out, "{},", row.tenant_id);
        quoted(&mut out, &row.server_slug);
        out.push(',');
        quoted(&mut out, &row.region);
        let _ = write!(
            out,
            ",{},",
            row.minute.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        quoted(&mut out, &row.state);
        out.push(',');
        if let Some(p95) = row.p95_ms {
            let _ = write!(out, "{p95}");
        }
        out.push(',');
        if let Some(hash) = &row.tool_list_hash {
            let _ = write!(out, "\\x{}", hex::encode(hash));
        }
        out.push(',');
        optional(&mut out, row.error_kind.as_deref());
        out.push(',');
        if let Some(asn) = row.asn {
            let _ = write!(out, "{asn}");
        }
        out.push(',');
        optional(&mut out, row.registry_of_origin.as_deref());
        let _ = write!(out, ",{archived_at},");
        let extra = serde_json::to_string(&row.extra).expect("a string map serializes");
        quoted(&mut out, &extra);
        out.push('\n');
    }
    out.into_bytes()
}

fn quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

fn optional(out: &mut String, text: Option<&str>) {
    if let Some(text) = text {
        quoted(out, text);
    }
}
