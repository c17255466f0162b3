//! Postgres connection and the embedded schema migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The schema migrations under `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL (value hidden): {0}")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot connect to the database at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying schema migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Where a URL points, without user or password, for error messages and logs.
pub fn redacted_target(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// How long a pooled connection serves before it is closed and replaced.
///
/// A PostgreSQL backend keeps the high-water mark of its C heap (sort and
/// COPY buffers, JIT code) until it exits, so a backend that once ran the
/// drain's COPY of a 250,000-row minute stays that large. Measured in the
/// soak: the COPY backend grew from 16 to 29 MiB over its first minutes and
/// then held there, while PostgreSQL's own memory contexts grew by under
/// 0.4 MB; with sqlx's default 30-minute lifetime the sum over the pool rose
/// for a whole half hour. Replacing each connection after 5 minutes bounds
/// that at a reconnect (a few milliseconds) per connection per 5 minutes.
/// sqlx 0.9 checks the lifetime when a connection is released and, for
/// idle connections, in its reaper every min(lifetime, idle timeout) = 5
/// minutes; never while a connection is checked out, so a transaction in
/// flight is never cut (it is closed at its release). Not when one is
/// acquired: an idle connection past its lifetime may still be handed out
/// until the next reaper pass (read in sqlx-core 0.9's pool; a timing test
/// of it was too tight for a loaded CI machine and is not kept).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Opens a pool to `url`. The URL may hold a password, so it never appears in
/// an error; only host, port and database do.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::InvalidUrl)?;
    let target = redacted_target(&options);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .max_lifetime(CONNECTION_LIFETIME)
        .after_release(|conn, _| Box::pin(not_inside_a_transaction(conn)))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { target, source })
}

/// Whether a released connection may go back to the pool: not when the
/// server still has a transaction open on it.
///
/// sqlx 0.9 can return such a connection when a `begin()` is cancelled
/// while waiting for the server (its rollback guard only acts once the
/// transaction has been counted): every later statement on it would then
/// run inside a transaction nobody commits, and be lost. Found by cancelling
/// reconciles at random points (tests/retention.rs); closing the connection
/// makes the server abort that transaction.
///
/// The server reports its transaction status in every ReadyForQuery, but
/// sqlx keeps what it saw private, and its public `is_in_transaction` counts
/// only the transactions it began itself (zero in the case above). So the
/// question goes to the server as a simple query: a simple query outside a
/// transaction block runs in a transaction that starts with it, so
/// `transaction_timestamp()` equals `statement_timestamp()` exactly; inside
/// a block opened by an earlier message it is earlier. It must be a simple
/// query: under the extended protocol (Parse/Bind/Execute) the implicit
/// transaction starts at Bind and the statement time is taken again at
/// Execute, so the two differ outside any block too. A connection in a
/// failed transaction block answers with an error and is closed as well.
async fn not_inside_a_transaction(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    use sqlx::{Connection, Row};
    if conn.is_in_transaction() {
        tracing::warn!("a connection came back inside a transaction; closing it");
        return Ok(false);
    }
    let answer = sqlx::raw_sql(TRANSACTION_BLOCK_OPEN)
        .fetch_one(&mut *conn)
        .await;
    let inside = match answer {
        Ok(row) => row.try_get::<bool, _>(0)?,
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("25P02") => {
            // In a failed transaction block: the server refuses every statement.
            true
        }
        Err(error) => return Err(error),
    };
    if inside {
        tracing::warn!("a connection came back inside a transaction; closing it");
    }
    Ok(!inside)
}

/// True when the session is inside a transaction block; only meaningful as
/// a simple query (see [`not_inside_a_transaction`]).
const TRANSACTION_BLOCK_OPEN: &str = "SELECT transaction_timestamp() <> statement_timestamp()";

/// Applies every pending migration; a no-op when the schema is current.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Advisory-lock keys shared by the modules that must exclude each other.
pub mod locks {
    use sha2::{Digest, Sha256};
    use uuid::Uuid;

    /// Drain ticks take this shared, an erasure exclusive: an erasure waits
    /// for ticks in flight and holds new ones until it commits.
    pub const ERASURE: i64 = 0x6572_6173_6572_0001;

    /// Per-server key: rollup recomputes and the erasure of that server take
    /// it, so a recompute can never recreate rows an erasure removed.
    pub fn server(tenant: Uuid, server_slug: &str) -> i64 {
        let digest = Sha256::digest(format!("server:{tenant}:{server_slug}"));
        i64::from_be_bytes(
            digest[..8]
                .try_into()
                .expect("a SHA-256 digest has 32 bytes"),
        )
    }

    /// Per-tenant key, for whole-tenant erasures.
    pub fn tenant(tenant: Uuid) -> i64 {
        let digest = Sha256::digest(format!("tenant:{tenant}"));
        i64::from_be_bytes(
            digest[..8]
                .try_into()
                .expect("a SHA-256 digest has 32 bytes"),
        )
    }
}
