//! The tables that hold tenant data, one entry each: what erasure,
//! verification, replay, retention, the partition guard, the deletion and
//! restore drills, the tests and the benchmarks know about a table is read
//! from here. A table added to [`Table`] is then asked for by the compiler
//! where a table needs its own code (the drill's seeding), and found by
//! everything that walks [`Table::ALL`]; a table the migrations add with a
//! `tenant_id` column or tenant hashes that is missing here fails
//! `tests/schema.rs` and, at run time, stops every erasure
//! ([`super::uncatalogued_tables`]).

use crate::api::retention_policy::TierRetention;

/// A table that holds tenant data.
///
/// The order of [`Table::ALL`] is the order of the erasure (DESIGN §5):
/// the tables whose rows are deleted first, probe_minute and its rejects,
/// then the rollups, then the suppression tables, where the tenant's hash
/// is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    ProbeMinute,
    /// Verdicts that failed validation: their raw fields are the verdict;
    /// `tenant_id` and `server_slug` are what their key names, as the drain
    /// reads it (NULL when the key names none).
    ProbeMinuteRejects,
    ProbeDay,
    ProbeMonth,
    /// Rows survive an erasure (the outage happened to others too); the
    /// tenant's salted hash is replaced by `tombstone`.
    SuppressionClusters,
    SuppressionClustersHistory,
}

/// How finely a table's rows are keyed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// `timestamptz` minute buckets (or instants); a row covers one minute.
    Minute,
    /// `date`; a row covers one UTC day.
    Day,
    /// `date` (first of month); a row covers one calendar month.
    Month,
}

/// How a table's rows name a tenant and its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A column of tenant ids and one of server slugs.
    Columns {
        tenant: &'static str,
        server: &'static str,
    },
    /// A `text[]` column of the salted hashes of the tenants that
    /// contributed to the row: a row belongs to several tenants and names
    /// none in the clear (no server either).
    SaltedHashes { column: &'static str },
}

/// What an erasure does to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureMode {
    /// Deletes the scope's rows.
    DeleteRows,
    /// Keeps the rows (they are other tenants' data too) and replaces the
    /// tenant's hash by `tombstone`.
    ReplaceHash,
}

/// One of the three windows of a tier (`spec.tiers.<tier>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    PerMinute,
    Daily,
    Monthly,
}

impl Window {
    /// The window's days in `retention`, before any contract extension.
    pub(crate) fn days(self, retention: &TierRetention) -> u32 {
        match self {
            Self::PerMinute => retention.per_minute_days,
            Self::Daily => retention.daily_days,
            Self::Monthly => retention.monthly_days,
        }
    }
}

/// Which retention window applies to a table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Per tenant: the window of the tier in force at the row's time (a
    /// contract may extend the per-minute window of probe_minute).
    TierWindow(Window),
    /// Cross-tenant, pruned as a whole: the longest daily window of any
    /// tier (rows name tenants only by salted hashes, so no single tier
    /// applies, and a cluster involving an enterprise tenant is evidence
    /// that tenant's daily data may still cite).
    LongestDaily,
    /// Cross-tenant, pruned as a whole: the shortest per-minute window of
    /// any tier (a reject cannot always be tied to a tenant, so it is kept
    /// no longer than any tenant's per-minute history may be).
    ShortestPerMinute,
    /// Retention does not prune the table; `why` says what bounds it.
    NotByRetention { why: &'static str },
}

impl Retention {
    /// The tier window the rule reads; `None` when retention leaves the
    /// table alone.
    pub(crate) const fn window(self) -> Option<Window> {
        match self {
            Self::TierWindow(window) => Some(window),
            Self::LongestDaily => Some(Window::Daily),
            Self::ShortestPerMinute => Some(Window::PerMinute),
            Self::NotByRetention { .. } => None,
        }
    }

    /// Whether retention prunes the table.
    pub(crate) const fn prunes(self) -> bool {
        !matches!(self, Self::NotByRetention { .. })
    }

    /// Whether retention prunes the table as a whole (tier `all`) rather
    /// than tenant by tenant.
    pub(crate) const fn is_cross_tenant(self) -> bool {
        matches!(self, Self::LongestDaily | Self::ShortestPerMinute)
    }

    /// Whether a tenant's contract (`contractMinuteDays` of the `contract`
    /// tier) extends the window: it does for the per-tenant per-minute
    /// window only, the one the contract's term is written for.
    pub(crate) const fn contract_extends(self) -> bool {
        matches!(self, Self::TierWindow(Window::PerMinute))
    }
}

/// Everything the catalogue says about one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// As statuses, receipts and SQL name it (unqualified, lower case).
    pub name: &'static str,
    /// The column that places a row in time: always set, indexed; what
    /// retention prunes by.
    pub time_column: &'static str,
    /// The minute the row's data stands for, when it is another column
    /// that may be NULL (a reject whose key has no readable minute): an
    /// erasure, its verification and replay then read
    /// `coalesce(minute_column, time_column)`.
    pub minute_column: Option<&'static str>,
    pub granularity: Granularity,
    /// How rows name a tenant; what an erasure does follows from it
    /// ([`Table::erasure`]: rows of one tenant are deleted, a hash among
    /// other tenants' is replaced), so the two cannot disagree.
    pub identity: Identity,
    pub retention: Retention,
}

/// The per-tenant probe columns.
const TENANT_AND_SERVER: Identity = Identity::Columns {
    tenant: "tenant_id",
    server: "server_slug",
};
const TENANT_HASHES: Identity = Identity::SaltedHashes {
    column: "contributing_tenant_hashes",
};

impl Table {
    /// Every table that holds tenant data, in the order of the erasure.
    pub const ALL: [Table; 6] = [
        Table::ProbeMinute,
        Table::ProbeMinuteRejects,
        Table::ProbeDay,
        Table::ProbeMonth,
        Table::SuppressionClusters,
        Table::SuppressionClustersHistory,
    ];

    /// The catalogue entry of the table.
    pub(crate) const fn entry(self) -> Entry {
        match self {
            Self::ProbeMinute => Entry {
                name: "probe_minute",
                time_column: "minute_bucket",
                minute_column: None,
                granularity: Granularity::Minute,
                identity: TENANT_AND_SERVER,
                retention: Retention::TierWindow(Window::PerMinute),
            },
            Self::ProbeMinuteRejects => Entry {
                name: "probe_minute_rejects",
                // Always set (a malformed key may have no minute), and indexed.
                time_column: "rejected_at",
                minute_column: Some("minute_bucket"),
                granularity: Granularity::Minute,
                // Retention still prunes the table as a whole: the shortest
                // window is never longer than the window of the reject's own
                // tenant, and a reject whose key names no tenant has no tier
                // to follow.
                identity: TENANT_AND_SERVER,
                retention: Retention::ShortestPerMinute,
            },
            Self::ProbeDay => Entry {
                name: "probe_day",
                time_column: "day",
                minute_column: None,
                granularity: Granularity::Day,
                identity: TENANT_AND_SERVER,
                retention: Retention::TierWindow(Window::Daily),
            },
            Self::ProbeMonth => Entry {
                name: "probe_month",
                time_column: "month",
                minute_column: None,
                granularity: Granularity::Month,
                identity: TENANT_AND_SERVER,
                retention: Retention::TierWindow(Window::Monthly),
            },
            Self::SuppressionClusters => Entry {
                name: "suppression_clusters",
                time_column: "minute_bucket",
                minute_column: None,
                granularity: Granularity::Minute,
                identity: TENANT_HASHES,
                retention: Retention::NotByRetention {
                    why: "the views keep the last 24 hours and move older minutes \
                          to suppression_clusters_history",
                },
            },
            Self::SuppressionClustersHistory => Entry {
                name: "suppression_clusters_history",
                time_column: "minute_bucket",
                minute_column: None,
                granularity: Granularity::Minute,
                identity: TENANT_HASHES,
                retention: Retention::LongestDaily,
            },
        }
    }

    pub const fn name(self) -> &'static str {
        self.entry().name
    }

    pub(crate) const fn time_column(self) -> &'static str {
        self.entry().time_column
    }

    pub(crate) const fn granularity(self) -> Granularity {
        self.entry().granularity
    }

    pub(crate) const fn identity(self) -> Identity {
        self.entry().identity
    }

    /// What an erasure does to the table: deletes the scope's rows where
    /// rows name their tenant, replaces the tenant's hash where rows belong
    /// to several tenants.
    pub const fn erasure(self) -> ErasureMode {
        match self.identity() {
            Identity::Columns { .. } => ErasureMode::DeleteRows,
            Identity::SaltedHashes { .. } => ErasureMode::ReplaceHash,
        }
    }

    pub(crate) const fn retention(self) -> Retention {
        self.entry().retention
    }

    /// The table named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|table| table.name() == name)
    }

    /// The time a row stands for, as an SQL expression over the table's
    /// columns (a reject without a readable minute: when it was rejected).
    pub(crate) fn time_expression(self) -> String {
        let entry = self.entry();
        match entry.minute_column {
            Some(minute) => format!("coalesce({minute}, {})", entry.time_column),
            None => entry.time_column.to_string(),
        }
    }

    /// The columns naming the tenant and the server, when rows name them
    /// in the clear.
    pub const fn owner_columns(self) -> Option<(&'static str, &'static str)> {
        match self.identity() {
            Identity::Columns { tenant, server } => Some((tenant, server)),
            Identity::SaltedHashes { .. } => None,
        }
    }

    /// Every column the entry names, for the check against the migrated
    /// database.
    pub fn columns(self) -> Vec<&'static str> {
        let entry = self.entry();
        let mut columns = vec![entry.time_column];
        columns.extend(entry.minute_column);
        match entry.identity {
            Identity::Columns { tenant, server } => columns.extend([tenant, server]),
            Identity::SaltedHashes { column } => columns.push(column),
        }
        columns
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        for table in Table::ALL {
            assert_eq!(Table::parse(table.name()), Some(table));
            assert_eq!(
                Table::ALL
                    .iter()
                    .filter(|t| t.name() == table.name())
                    .count(),
                1
            );
        }
        assert_eq!(Table::parse("tenant_tier_history"), None);
    }

    /// The erasure deletes rows before it replaces hashes (DESIGN §5), in
    /// the order of `ALL`.
    #[test]
    fn rows_are_deleted_before_hashes_are_replaced() {
        let modes: Vec<ErasureMode> = Table::ALL.iter().map(|t| t.erasure()).collect();
        let first_hash = modes
            .iter()
            .position(|mode| *mode == ErasureMode::ReplaceHash)
            .unwrap_or(modes.len());
        assert!(
            modes[first_hash..]
                .iter()
                .all(|mode| *mode == ErasureMode::ReplaceHash),
            "{modes:?}"
        );
    }

    /// A per-tenant rule needs rows that name their tenant.
    #[test]
    fn per_tenant_retention_reads_tenant_columns() {
        for table in Table::ALL {
            if let Retention::TierWindow(_) = table.retention() {
                assert!(table.owner_columns().is_some(), "{table}");
            }
        }
    }

    #[test]
    fn time_expressions() {
        assert_eq!(Table::ProbeMinute.time_expression(), "minute_bucket");
        assert_eq!(
            Table::ProbeMinuteRejects.time_expression(),
            "coalesce(minute_bucket, rejected_at)"
        );
        assert_eq!(Table::ProbeMonth.time_expression(), "month");
    }

    /// Each entry's table exists after the migrations, with every column
    /// the entry names (time, minute, tenant, server, hashes), so a
    /// misspelt entry fails here instead of in an erasure.
    #[tokio::test]
    async fn every_entry_names_columns_of_the_migrated_database() {
        let db = crate::testing::TestDatabase::new().await;
        for table in Table::ALL {
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
            )
            .bind(table.name())
            .fetch_all(&db.pool)
            .await
            .expect("reading information_schema");
            assert!(!found.is_empty(), "{table} is not in the migrated database");
            for column in table.columns() {
                assert!(
                    found.iter().any(|c| c == column),
                    "{table} has no column {column} (it has {found:?})"
                );
            }
            let time_type: String = sqlx::query_scalar(
                "SELECT data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
            )
            .bind(table.name())
            .bind(table.time_column())
            .fetch_one(&db.pool)
            .await
            .expect("reading the time column's type");
            let expected = match table.granularity() {
                Granularity::Minute => "timestamp with time zone",
                Granularity::Day | Granularity::Month => "date",
            };
            assert_eq!(time_type, expected, "{table}.{}", table.time_column());
        }
    }
}
