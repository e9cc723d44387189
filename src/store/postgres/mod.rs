//! The PostgreSQL backend: for teams that run several Baton replicas on one database.
//!
//! The same transaction layer as SQLite's (`super::tx`) over the same group-commit writer
//! (`super::writer`), here a task on the runtime holding one connection of its own: the
//! writes waiting together are applied in one transaction. Reads go through a pool beside it.
//! The schema matches SQLite's column for column (times in milliseconds, JSON as text), so
//! the two backends differ in SQL only.
//!
//! Several processes may write at once here. The ledger stays one chain because appending
//! takes a transaction-scoped advisory lock before it reads the chain's head, and nothing is
//! remembered between batches (`Session::begin` says `None`). A run is changed by one
//! transaction at a time because `Tx::load_run` locks its row.
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
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _, PgConnection, Row as _};

/// Connections the pool keeps for reads.
const READERS: u32 = 8;
/// How long a read waits for a connection from the pool, and a connection attempt for the
/// server.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long `/readyz` waits for the database to answer.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Baton's advisory locks, each taken as (this number, the schema's hash), so databases in
/// different schemas of one server never wait for each other. Appending to the ledger holds
/// `LEDGER_LOCK` until its transaction ends, so two writers never chain onto the same head.
pub(crate) const LEDGER_LOCK: i32 = 0x6261_7401;

/// The writer's connection, opened again when it was lost (the server restarted).
pub(crate) struct Conn {
    conn: Option<PgConnection>,
    options: PgConnectOptions,
    durability: Durability,
}

impl Conn {
    async fn open(options: PgConnectOptions, durability: Durability) -> StoreResult<Self> {
        let mut c = Self {
            conn: None,
            options,
            durability,
        };
        c.connect().await?;
        Ok(c)
    }

    async fn connect(&mut self) -> StoreResult<&mut PgConnection> {
        let mut conn = self.options.connect().await?;
        // Relaxed: a commit is acknowledged before the server has synced it; a server crash
        // may lose the last moments of commits, but never leaves the database inconsistent.
        if self.durability == Durability::Relaxed {
            conn.execute("SET synchronous_commit = off").await?;
        }
        Ok(self.conn.insert(conn))
    }

    /// The connection; the writer opens it again before a batch when it was lost.
    fn pg(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("the writer's connection is open while a batch runs")
    }
}

impl std::ops::Deref for Conn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("the writer's connection is open while a batch runs")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.pg()
    }
}

pub(crate) use super::writer::write_tx;

impl Session for Conn {
    fn begin(&mut self) -> BoxFuture<'_, StoreResult<Option<i64>>> {
        Box::pin(async move {
            let began = match self.conn.as_mut() {
                Some(c) => c.execute("BEGIN").await.map_err(StoreError::from),
                None => Err(StoreError::Closed),
            };
            match began {
                Ok(_) => {}
                // A connection lost since the last batch (the server restarted, a network
                // blip): open a new one once; if that fails too, this batch fails and the
                // next one tries again.
                Err(StoreError::Unavailable(_) | StoreError::Closed) => {
                    self.conn = None;
                    self.connect().await?.execute("BEGIN").await?;
                }
                Err(e) => return Err(e),
            }
            // Other processes write too: nothing is remembered from one batch to the next.
            Ok(None)
        })
    }

    fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let Some(c) = self.conn.as_mut() else {
                return Err(StoreError::Closed);
            };
            // Without arguments sqlx sends the text as a simple query: several statements
            // in one round trip.
            let result = c.execute(sql).await;
            if let Err(e) = result {
                let e = StoreError::from(e);
                if matches!(e, StoreError::Unavailable(_)) {
                    self.conn = None;
                }
                return Err(e);
            }
            Ok(())
        })
    }

    fn close(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(c) = self.conn
                && let Err(e) = c.close().await
            {
                tracing::warn!(error = %e, "the database's write connection did not close cleanly");
            }
        })
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    writer: Writer<Conn, Rules>,
    rules: Arc<Rules>,
}

impl PostgresStore {
    /// Connects to the database `url` names and brings its schema up to date.
    pub async fn open(url: &str, options: Options) -> anyhow::Result<Self> {
        let connect: PgConnectOptions = url
            .parse()
            .context("DATABASE_URL is not a valid postgres: URL")?;
        // Named in the server's activity view, unless the URL names it otherwise.
        let connect = match connect.get_application_name() {
            Some(_) => connect,
            None => connect.application_name("baton"),
        }
        .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect.clone())
            .await
            .context("could not connect to the PostgreSQL database named by DATABASE_URL")?;
        migrate::run(&pool)
            .await
            .context("could not apply the PostgreSQL migrations")?;
        let conn = Conn::open(connect, options.durability)
            .await
            .context("could not open the database writer's connection")?;
        let rules = Arc::new(Rules::new(&options));
        let writer = Writer::start(conn, rules.clone());
        Ok(Self {
            pool,
            writer,
            rules,
        })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

/// Sorts a database error by what a caller can do about it, keeping the error itself.
fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    let code = match &e {
        E::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    match (&e, code.as_deref()) {
        // A unique key taken; a serialization failure or deadlock: the same write may
        // succeed when tried again.
        (_, Some("23505" | "40001" | "40P01")) => StoreError::Conflict(Arc::new(e)),
        // Connection trouble (class 08), the server shutting down or starting (57P01-57P03),
        // too many connections: later may work.
        (_, Some(c))
            if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300") =>
        {
            StoreError::Unavailable(Arc::new(e))
        }
        (E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed, _) => {
            StoreError::Unavailable(Arc::new(e))
        }
        (E::Protocol(_), _) => StoreError::Unavailable(Arc::new(e)),
        (
            E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. },
            _,
        ) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Database(Arc::new(e)),
    }
}

// Reading columns. Times are milliseconds since the epoch, JSON columns are text.

fn get<'r, T>(r: &'r PgRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    Ok(r.try_get(col)?)
}

fn time(r: &PgRow, col: &str) -> StoreResult<DateTime<Utc>> {
    Ok(tx::at(r.try_get(col)?))
}

fn time_opt(r: &PgRow, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
    Ok(r.try_get::<Option<i64>, _>(col)?.map(tx::at))
}

fn json<T: serde::de::DeserializeOwned>(r: &PgRow, col: &str) -> StoreResult<T> {
    Ok(serde_json::from_str(r.try_get::<&str, _>(col)?)?)
}

fn json_opt<T: serde::de::DeserializeOwned>(r: &PgRow, col: &str) -> StoreResult<Option<T>> {
    match r.try_get::<Option<&str>, _>(col)? {
        Some(s) => Ok(Some(serde_json::from_str(s)?)),
        None => Ok(None),
    }
}

fn parsed<T: FromStr<Err = String>>(r: &PgRow, col: &str) -> StoreResult<T> {
    r.try_get::<&str, _>(col)?
        .parse()
        .map_err(StoreError::Corrupt)
}

/// Every row, each read by `f`.
fn each<T>(rows: Vec<PgRow>, f: impl FnMut(&PgRow) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(f).collect()
}

#[async_trait]
impl Store for PostgresStore {
    fn redactor(&self) -> &Redactor {
        self.rules.redactor()
    }

    async fn metrics(&self) -> StoreResult<StoreMetrics> {
        // One round trip for the counts.
        let r = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM approvals WHERE status = 'pending') AS approvals_pending,
               (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS outbox_pending,
               (SELECT COUNT(*) FROM outbox WHERE status = 'failed') AS outbox_failed,
               (SELECT COUNT(*) FROM outbox WHERE alerted AND status IN ('pending', 'failed')) AS outbox_alerted,
               (SELECT COUNT(*) FROM runs WHERE conversation_lost IS NOT NULL) AS runs_unreachable,
               (SELECT COALESCE(MAX(seq), 0) FROM audit) AS audit_entries",
        )
        .fetch_one(&self.pool)
        .await?;
        let by_status = sqlx::query("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        Ok(StoreMetrics {
            runs_by_status: each(by_status, |r| Ok((get(r, "status")?, get(r, "n")?)))?,
            approvals_pending: get(&r, "approvals_pending")?,
            outbox_pending: get(&r, "outbox_pending")?,
            outbox_failed: get(&r, "outbox_failed")?,
            outbox_alerted: get(&r, "outbox_alerted")?,
            runs_unreachable: get(&r, "runs_unreachable")?,
            // The ledger is numbered from 1 without gaps: its last number is its length.
            audit_entries: get(&r, "audit_entries")?,
            writer: self.writer.stats().snapshot(),
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        // A health check answers promptly: a server that does not answer within this is
        // unavailable (the pool would otherwise keep trying to connect for ACQUIRE_TIMEOUT).
        match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await
        {
            Ok(done) => done.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::from(sqlx::Error::PoolTimedOut)),
        }
    }

    async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}
