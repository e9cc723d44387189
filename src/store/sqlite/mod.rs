//! The SQLite backend: the default, a single file, nothing to install.
//!
//! SQLite allows one writer at a time. Every write goes through the store's one writer
//! (`super::writer`), which runs on a thread of its own and calls SQLite directly: the writes
//! waiting together are applied in one `BEGIN IMMEDIATE` transaction (group commit), each
//! statement a function call rather than a hand-off to another thread. Reads run on
//! connections of their own beside it (WAL), on the caller's thread: a read in WAL mode never
//! waits for the writer, and the queries are indexed. A second process (the CLI cancelling a
//! run) waits on the busy timeout.
//!
//! The files: `migrate.rs` (the embedded schema), `write.rs` (the transaction layer's
//! primitives, [`super::tx::Tx`]), then one file per store trait.

mod agents;
mod audit;
mod console;
mod leases;
mod migrate;
mod outbox;
mod runs;
mod write;

use super::tx::Rules;
use super::writer::{Session, Writer};
use super::*;
use crate::core::audit::Redactor;
use anyhow::Context as _;
use futures_util::future::BoxFuture;
use rusqlite::types::{FromSql, FromSqlError};
use rusqlite::{Connection, ErrorCode, OpenFlags, Row};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Distinct statements a connection keeps prepared.
const PREPARED: usize = 96;
/// Pages the writer keeps cached, in KiB.
const WRITER_CACHE_KIB: u32 = 16 * 1024;
/// Read connections kept open between reads.
const IDLE_READERS: usize = 8;

/// The writer's connection: the one that writes, on the writer's thread.
pub(crate) struct Conn(Connection);

impl std::ops::Deref for Conn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

pub(crate) use super::writer::write_tx;

impl Session for Conn {
    fn begin(&mut self) -> BoxFuture<'_, StoreResult<Option<i64>>> {
        // `data_version` changes exactly when another connection (the CLI, say) has
        // committed since this one last looked.
        let version = self
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| self.query_row("PRAGMA data_version", [], |r| r.get(0)));
        Box::pin(std::future::ready(
            version.map(Some).map_err(StoreError::from),
        ))
    }

    fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, StoreResult<()>> {
        // A few fixed texts, run for every write of a batch: each statement is prepared once.
        let run = || -> StoreResult<()> {
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                self.prepare_cached(statement)?.execute([])?;
            }
            Ok(())
        };
        Box::pin(std::future::ready(run()))
    }

    fn close(self) -> BoxFuture<'static, ()> {
        if let Err((_, e)) = self.0.close() {
            tracing::warn!(error = %e, "the database's write connection did not close cleanly");
        }
        Box::pin(std::future::ready(()))
    }
}

/// The SQLite store.
pub struct SqliteStore {
    readers: Readers,
    writer: Writer<Conn, Rules>,
    rules: Arc<Rules>,
    /// Held while this process serves the database (see [`Options::serving`]); released on
    /// close.
    serving: Mutex<Option<std::fs::File>>,
}

/// Takes the lock that says a process serves the database at `path`: a file beside it,
/// locked for as long as it is held (the operating system lets go when the process ends, so
/// a killed Baton leaves nothing stale).
fn claim_serving(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .with_context(|| format!("could not open {}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another Baton is already running on the SQLite database {}: two would each deliver every queued post. Stop the other one first; to run several replicas, use PostgreSQL (DATABASE_URL=postgres://...)",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("could not lock {}", lock.display()))
        }
    }
}

/// Connections for reads, opened when needed and kept for the next read.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl Readers {
    /// Runs `f` on a read connection, on this thread.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let idle = self.idle.lock().expect("readers lock").pop();
        let conn = match idle {
            Some(c) => c,
            None => connect(&self.path, Durability::Full, true)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().expect("readers lock");
        if idle.len() < IDLE_READERS && !self.closed.load(Ordering::Acquire) {
            idle.push(conn);
        }
        result
    }

    /// Closes the idle connections; reads after this are refused.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle.lock().expect("readers lock").clear();
    }
}

/// Opens a connection to `path` with Baton's settings.
fn connect(path: &Path, durability: Durability, read_only: bool) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(path, flags)?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    c.set_prepared_statement_cache_capacity(PREPARED);
    // In WAL mode, NORMAL syncs only at checkpoints: a commit survives the process being
    // killed but not a power cut. FULL syncs the log at every commit, which group commit
    // makes cheap: one sync carries a whole batch.
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    // Savepoints and statements keep their undo pages in memory, not in temporary files.
    c.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = {synchronous}; PRAGMA temp_store = MEMORY;"
    ))?;
    if read_only {
        c.execute_batch("PRAGMA query_only = ON")?;
    } else {
        // The writer keeps the pages it touches (the ends of tables and indexes) between
        // batches; a reader's cache is emptied whenever the writer commits, so a large one
        // would only cost memory.
        c.execute_batch(&format!("PRAGMA cache_size = -{WRITER_CACHE_KIB}"))?;
    }
    Ok(c)
}

/// The file a `sqlite:` URL names: `sqlite://baton.db`, `sqlite:baton.db` or
/// `sqlite:///var/lib/baton/baton.db`, with any `?options` after it ignored.
fn file_of(url: &str) -> anyhow::Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .with_context(|| format!("DATABASE_URL `{url}` is not a sqlite: URL"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        anyhow::bail!(
            "DATABASE_URL must name a database file (sqlite://baton.db): a database in memory would lose every run at exit"
        );
    }
    Ok(PathBuf::from(path))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    pub async fn open(url: &str, options: Options) -> anyhow::Result<Self> {
        let path = file_of(url)?;
        let serving = match options.serving {
            true => Some(claim_serving(&path)?),
            false => None,
        };
        let conn = connect(&path, options.durability, false).with_context(|| {
            format!(
                "could not open the SQLite database {} named by DATABASE_URL",
                path.display()
            )
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .context("could not switch the SQLite database to WAL mode")?;
        migrate::run(&conn).context("could not apply the SQLite migrations")?;
        if serving.is_some() {
            // Only one process serves the file, and it holds the lock: whatever an earlier
            // one held (attempts it was running, lanes it was delivering) is free at once,
            // rather than when its leases run out.
            conn.execute_batch(
                "UPDATE leases SET holder = '', until = 0; UPDATE attempts SET lease_until = 0 WHERE status = 'running';",
            )
            .context("could not free what an earlier process held")?;
        }
        let rules = Arc::new(Rules::new(&options));
        let writer = Writer::start_on_thread(Conn(conn), rules.clone(), "baton-sqlite-writer")
            .context("could not start the database writer")?;
        Ok(Self {
            readers: Readers {
                path,
                idle: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            },
            writer,
            rules,
            serving: Mutex::new(serving),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        self.readers.read(f)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        classify(e)
    }
}

impl From<FromSqlError> for StoreError {
    fn from(e: FromSqlError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Sorts a database error by what a caller can do about it, keeping the error itself.
fn classify(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    // SQLite's extended codes for a unique or primary key taken.
    const UNIQUE: i32 = 2067;
    const PRIMARY_KEY: i32 = 1555;
    match &e {
        E::SqliteFailure(f, _) => match f.code {
            // Someone else holds the database past the busy timeout, or the file cannot be
            // reached: later may work.
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull => StoreError::Unavailable(Arc::new(e)),
            ErrorCode::ConstraintViolation if matches!(f.extended_code, UNIQUE | PRIMARY_KEY) => {
                StoreError::Conflict(Arc::new(e))
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Database(Arc::new(e)),
        },
        E::FromSqlConversionFailure(..)
        | E::InvalidColumnType(..)
        | E::InvalidColumnName(_)
        | E::IntegralValueOutOfRange(..)
        | E::Utf8Error(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Database(Arc::new(e)),
    }
}

// Reading columns. Times are milliseconds since the epoch, JSON columns are text.

fn get<T: FromSql>(r: &Row<'_>, col: &str) -> StoreResult<T> {
    Ok(r.get(col)?)
}

fn time(r: &Row<'_>, col: &str) -> StoreResult<DateTime<Utc>> {
    Ok(tx::at(r.get(col)?))
}

fn time_opt(r: &Row<'_>, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
    Ok(r.get::<_, Option<i64>>(col)?.map(tx::at))
}

fn json<T: serde::de::DeserializeOwned>(r: &Row<'_>, col: &str) -> StoreResult<T> {
    Ok(serde_json::from_str(r.get_ref(col)?.as_str()?)?)
}

fn json_opt<T: serde::de::DeserializeOwned>(r: &Row<'_>, col: &str) -> StoreResult<Option<T>> {
    match r.get_ref(col)?.as_str_or_null()? {
        Some(s) => Ok(Some(serde_json::from_str(s)?)),
        None => Ok(None),
    }
}

fn parsed<T: FromStr<Err = String>>(r: &Row<'_>, col: &str) -> StoreResult<T> {
    r.get_ref(col)?
        .as_str()?
        .parse()
        .map_err(StoreError::Corrupt)
}

/// Every row a prepared statement yields for `params`, each read by `f`.
fn all<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut f: impl FnMut(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// The first row a prepared statement yields, read by `f`; `None` when there is none.
fn one<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(r) => Ok(Some(f(r)?)),
        None => Ok(None),
    }
}

/// A single number (a count, a sum) from a prepared statement.
fn number(c: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<i64> {
    Ok(c.prepare_cached(sql)?.query_row(params, |r| r.get(0))?)
}

/// Runs a prepared `INSERT`; the new row's id, or `None` when it inserted nothing (`ON
/// CONFLICT DO NOTHING`). Cheaper than `RETURNING`, which SQLite collects in a table of its own.
fn insert(c: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<Option<i64>> {
    let n = c.prepare_cached(sql)?.execute(params)?;
    Ok((n == 1).then(|| c.last_insert_rowid()))
}

/// Runs a prepared statement that returns no rows; how many rows it changed.
fn exec(c: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<usize> {
    Ok(c.prepare_cached(sql)?.execute(params)?)
}

#[async_trait]
impl Store for SqliteStore {
    fn redactor(&self) -> &Redactor {
        self.rules.redactor()
    }

    async fn metrics(&self) -> StoreResult<StoreMetrics> {
        self.read(|c| {
            let count = |sql: &str| number(c, sql, []);
            Ok(StoreMetrics {
                runs_by_status: all(
                    c,
                    "SELECT status, COUNT(*) AS n FROM runs GROUP BY status",
                    [],
                    |r| Ok((get(r, "status")?, get(r, "n")?)),
                )?,
                approvals_pending: count(
                    "SELECT COUNT(*) FROM approvals WHERE status = 'pending'",
                )?,
                outbox_pending: count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")?,
                outbox_failed: count("SELECT COUNT(*) FROM outbox WHERE status = 'failed'")?,
                outbox_alerted: count(
                    "SELECT COUNT(*) FROM outbox WHERE alerted = 1 AND status IN ('pending', 'failed')",
                )?,
                runs_unreachable: count(
                    "SELECT COUNT(*) FROM runs WHERE conversation_lost IS NOT NULL",
                )?,
                // The ledger is numbered from 1 without gaps: its last number is its length.
                audit_entries: count("SELECT COALESCE(MAX(seq), 0) FROM audit")?,
                writer: self.writer.stats().snapshot(),
            })
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| number(c, "SELECT 1", []).map(drop))
    }

    async fn close(&self) {
        // The writer's connection closes last, so SQLite checkpoints its log into the file.
        self.readers.close();
        self.writer.close().await;
        // Another process may serve the database from here on.
        self.serving.lock().expect("serving lock").take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::audit::{AuditEvent, AuditKind, Verification};

    fn event(n: u32) -> AuditEvent {
        AuditEvent::new(
            Utc::now(),
            AuditKind::ScheduleFired,
            None,
            serde_json::json!({"n": n}),
        )
    }

    #[tokio::test]
    async fn two_processes_appending_to_one_ledger_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("l.db").display());
        // The server and the CLI: two stores, each with its own writer, on one file.
        let server = SqliteStore::open(&url, Options::default()).await.unwrap();
        let cli = SqliteStore::open(&url, Options::default()).await.unwrap();
        for n in 0..10 {
            let store = if n % 3 == 0 { &cli } else { &server };
            store
                .audit_append(vec![event(n), event(n + 100)])
                .await
                .unwrap();
        }
        match verify_ledger(&server, None, vec![]).await.unwrap() {
            Verification::Intact { entries, .. } => assert_eq!(entries, 20),
            broken => panic!("the chain forked: {broken:?}"),
        }
    }

    #[tokio::test]
    async fn a_ledger_append_that_is_rolled_back_is_not_chained_onto() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("l.db").display());
        let store = SqliteStore::open(&url, Options::default()).await.unwrap();
        store.audit_append(vec![event(1)]).await.unwrap();
        // A write that appends and then fails is undone, the entry with it.
        let failed = write_tx!(store, |c, rules| {
            rules.append(c, &[event(2)]).await?;
            Err::<(), _>(StoreError::Corrupt("refused".into()))
        });
        assert!(failed.is_err());
        store.audit_append(vec![event(3)]).await.unwrap();
        match verify_ledger(&store, None, vec![]).await.unwrap() {
            Verification::Intact { entries, .. } => assert_eq!(entries, 2),
            broken => panic!("the chain is broken: {broken:?}"),
        }
    }

    #[tokio::test]
    async fn a_second_process_serving_one_file_is_refused_but_the_command_line_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let serving = Options {
            serving: true,
            ..Options::default()
        };
        let first = SqliteStore::open(&url, serving.clone()).await.unwrap();
        let second = SqliteStore::open(&url, serving.clone())
            .await
            .err()
            .unwrap();
        assert!(
            second
                .to_string()
                .contains("another Baton is already running"),
            "{second:#}"
        );
        // The command line reads and changes runs beside the server.
        let cli = SqliteStore::open(&url, Options::default()).await.unwrap();
        cli.close().await;
        // Once the first has stopped, another may serve.
        first.close().await;
        SqliteStore::open(&url, serving).await.unwrap();
    }

    #[tokio::test]
    async fn a_database_in_memory_or_without_a_name_is_refused_with_a_reason() {
        for url in ["sqlite::memory:", "sqlite://", "sqlite:"] {
            let e = SqliteStore::open(url, Options::default())
                .await
                .err()
                .unwrap_or_else(|| panic!("{url} was accepted"));
            assert!(
                e.to_string().contains("must name a database file"),
                "{url}: {e:#}"
            );
        }
    }

    #[test]
    fn a_taken_key_is_a_conflict_and_a_busy_database_is_unavailable() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY); INSERT INTO t VALUES ('a');")
            .unwrap();
        let taken = c.execute("INSERT INTO t VALUES ('a')", []).unwrap_err();
        assert!(matches!(classify(taken), StoreError::Conflict(_)));
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let e = classify(busy);
        assert!(matches!(e, StoreError::Unavailable(_)) && e.is_transient());
        let bug = c.execute("INSERT INTO nowhere VALUES (1)", []).unwrap_err();
        // The database's own error stays attached as the cause.
        match classify(bug) {
            StoreError::Database(cause) => assert!(cause.to_string().contains("nowhere")),
            other => panic!("{other:?}"),
        }
    }
}
