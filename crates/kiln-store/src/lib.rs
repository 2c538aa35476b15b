//! kiln's state: the catalogue (components, image recipes, images with their build
//! numbers and state history, their inventories, vulnerability scans and findings, and the
//! images a rescan marked as needing a rebuild, launch permissions, names per region, usage
//! per account), the audit log of API calls and threat findings, the API's users, access keys
//! (sealed), resources, client tokens, executions and the runs of lifecycle policies, the
//! job queue that `kiln worker`s claim from, and the index of the layer cache, all behind one storage interface, [`Store`]. It holds names,
//! versions, digests, states and opaque JSON bodies; it does not know what a component
//! document says, how a sandbox runs or what a disk holds. Today the backend is SQLite
//! (WAL, `busy_timeout`, foreign keys) through `sqlx`, with schema migrations embedded from
//! `migrations/sqlite/`. The SQL is written to be portable (numbered `$N` parameters,
//! `INSERT … ON CONFLICT … RETURNING`, `UPDATE … RETURNING`, RFC 3339 UTC text timestamps of
//! fixed width, JSON as text, integer ids), and every method reaches the database through
//! one dispatch point (`with_pool!`) over a private `Backend` enum, whose arms compile the
//! same method body against each pool type. A PostgreSQL backend slots in by adding a
//! `Backend::Postgres(PgPool)` variant and its arm (behind sqlx's `postgres` feature), a
//! `migrations/postgres/` copy of the schema (identity columns and BIGINT are the only
//! differences), the `Dialect::Postgres` job claim, which adds `FOR UPDATE SKIP LOCKED`, and
//! running the conformance suite in `tests/conformance/` against it.

#![forbid(unsafe_code)]

mod api;
mod audit;
mod components;
mod error;
mod images;
mod jobs;
mod layers;
mod leadership;
mod lifecycle;
mod recipes;
mod regions;
mod scans;
mod schedules;
mod sharing;
mod state_feed;
mod threats;
mod usage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use time::OffsetDateTime;

pub use api::{ApiCredential, ApiExecution, ApiResource, ApiUser, ClientTokenRecord};
pub use audit::{AUDIT_SUCCESS, AuditEntry, AuditFilter, AuditRecord, AuditResult, MAX_AUDIT_PAGE};
pub use components::{Component, ComponentSource, NewComponent};
pub use error::{Result, StoreError};
pub use images::{Image, ImageFilter, ImageState, NewImage, StateChange, image_arn};
pub use jobs::{DEFAULT_MAX_ATTEMPTS, Job, JobState, NewJob};
/// Versions and filters are kiln-model's (one implementation of Image Builder's rules);
/// the catalogue calls a [`kiln_model::SemVer`] a `Version`.
pub use kiln_model::version::{MAX_VERSION_PART, SemVer as Version, VersionError, VersionFilter};
pub use layers::Layer;
pub use lifecycle::{LifecycleExecution, LifecycleExecutionState};
pub use recipes::{NewRecipe, Recipe};
pub use regions::ImageRegion;
pub use scans::{FindingFilter, NewScan, NewScanFinding, RebuildMark, Scan, ScanFinding, ScanTrigger};
pub use schedules::PipelineScheduleState;
pub use sharing::{ALL_ACCOUNTS, is_account_id, is_valid_principal, may_use};
pub use state_feed::ImageStateEvent;
pub use threats::{NewThreatFinding, THREAT_SEVERITIES, ThreatFinding, ThreatFindingFilter};
pub use usage::{UsageEvent, UsageSummary};

/// Resource tags: key → value, kept sorted.
pub type Tags = BTreeMap<String, String>;

/// How long a connection waits for another writer before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The state database: open it once and clone it freely (clones share one pool).
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    location: String,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(sqlx::SqlitePool),
}

/// The SQL dialect, for the few statements that differ between backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
}

/// Run `$body` with `$pool` bound to the backend's pool. Each arm compiles the same body
/// against its own pool type; a new backend adds an arm here and nowhere else.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::Backend::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

impl Store {
    /// Open (creating if needed) the state database at `url_or_path`: a file path, or a
    /// `sqlite://PATH[?mode=rwc]` URL (`sqlite::memory:` for a private in-memory database).
    /// Missing parent directories are created, and pending migrations are applied.
    pub async fn open(url_or_path: &str) -> Result<Store> {
        let lower = url_or_path.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Err(StoreError::UnsupportedLocation {
                location: url_or_path.to_owned(),
                reason: "this kiln has no PostgreSQL backend yet".into(),
            });
        }
        if lower.contains("://") && !lower.starts_with("sqlite://") {
            return Err(StoreError::UnsupportedLocation {
                location: url_or_path.to_owned(),
                reason: "unknown URL scheme".into(),
            });
        }
        let open_err = |source| StoreError::Open { location: url_or_path.to_owned(), source };
        let memory =
            lower.starts_with("sqlite:") && (lower.contains(":memory:") || lower.contains("mode=memory"));
        let options = if lower.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(open_err)?
        } else if url_or_path.is_empty() {
            return Err(StoreError::UnsupportedLocation {
                location: String::new(),
                reason: "the location is empty".into(),
            });
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let mut options = options.create_if_missing(true).busy_timeout(BUSY_TIMEOUT).foreign_keys(true);
        let mut pool = SqlitePoolOptions::new();
        if memory {
            // One connection: every connection to a private in-memory database is its own
            // database, and a shared cache would turn waits into SQLITE_LOCKED errors.
            pool = pool.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
        } else {
            options = options.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal);
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source })?;
                }
            }
            pool = pool.max_connections(8);
        }
        let pool = pool.connect_with(options).await.map_err(open_err)?;
        SQLITE_MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { location: url_or_path.to_owned(), source })?;
        Ok(Store { backend: Backend::Sqlite(pool), location: url_or_path.to_owned() })
    }

    /// Open the embedded default database, [`default_database_path`] under `kiln_home`.
    pub async fn open_default(kiln_home: &Path) -> Result<Store> {
        let path = default_database_path(kiln_home);
        let Some(path) = path.to_str() else {
            return Err(StoreError::UnsupportedLocation {
                location: path.display().to_string(),
                reason: "the path is not valid UTF-8".into(),
            });
        };
        Store::open(path).await
    }

    /// Where this store was opened from, as given to [`Store::open`].
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The backend's name: `"sqlite"` (later also `"postgres"`).
    pub fn backend_name(&self) -> &'static str {
        match self.dialect() {
            Dialect::Sqlite => "sqlite",
        }
    }

    /// Close every connection; waits for in-flight queries. Clones become unusable.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// The newest schema migration applied (the migration files' numeric prefix).
    pub async fn schema_version(&self) -> Result<i64> {
        let (v,): (Option<i64>,) = with_pool!(self, pool => {
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(pool)
                .await
                .map_err(error::db("read the schema version"))?
        });
        Ok(v.unwrap_or(0))
    }

    fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
        }
    }
}

/// `KILN_HOME/state/kiln.db`: where the embedded state database lives.
pub fn default_database_path(kiln_home: &Path) -> PathBuf {
    kiln_home.join("state").join("kiln.db")
}

// ---- shared encoding helpers -------------------------------------------------------

const TS_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The current time in UTC, at the microsecond precision it is stored with.
pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// RFC 3339 in UTC with six fractional digits: fixed width, so text order is time order.
pub(crate) fn fmt_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(TS_FORMAT).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub(crate) fn parse_ts(s: &str, what: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Corrupt { what: what.to_owned(), detail: format!("timestamp {s:?}: {e}") })
}

pub(crate) fn parse_opt_ts(s: Option<String>, what: &str) -> Result<Option<OffsetDateTime>> {
    s.map(|s| parse_ts(&s, what)).transpose()
}

pub(crate) fn tags_to_json(tags: &Tags) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn tags_from_json(s: &str, what: &str) -> Result<Tags> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Corrupt { what: what.to_owned(), detail: format!("tags: {e}") })
}

pub(crate) fn json_from_text(s: &str, what: &str, field: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Corrupt { what: what.to_owned(), detail: format!("{field}: {e}") })
}

pub(crate) fn version_from_row(s: &str, what: &str) -> Result<Version> {
    Version::parse(s).map_err(|e| StoreError::Corrupt { what: what.to_owned(), detail: e.to_string() })
}

/// Whether a database error is a unique-constraint violation (an "already exists").
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
