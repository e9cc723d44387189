//! The SQLite backend: the default, a single file, nothing to install.
//!
//! SQLite allows one writer at a time. Every write goes through the store's one writer
//! (`super::writer`), which applies the writes waiting together in one `BEGIN IMMEDIATE`
//! transaction (group commit); a second process (the CLI cancelling a run) waits on the busy
//! timeout.

use super::tx::{self, Head, Pending, Rows, Rules, Settled, Tx, at, ms};
use super::writer::{Session, Writer};
use super::*;
use crate::core::audit::{Checkpoint, Redactor};
use crate::core::digest::{LISTED, StalledRun, WaitingApproval};
use crate::core::engine::{Approval, Run, StepState};
use anyhow::Context as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};
use std::collections::BTreeMap;
use std::str::FromStr;

/// The migrations, embedded in the binary so it runs anywhere.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "agents",
        include_str!("../../migrations/sqlite/0002_agents.sql"),
    ),
    (
        3,
        "governance",
        include_str!("../../migrations/sqlite/0003_governance.sql"),
    ),
    (
        4,
        "reliability",
        include_str!("../../migrations/sqlite/0004_reliability.sql"),
    ),
];

/// The embedded migrations as a source for sqlx's migrator, which records them in
/// `_sqlx_migrations` and refuses a database changed behind its back.
#[derive(Debug)]
struct Embedded;

impl sqlx::migrate::MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
                > + Send,
        >,
    > {
        use sqlx::migrate::{Migration, MigrationType};
        use std::borrow::Cow;
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Runs a block as one write of the writer's next batch: kept when it returns `Ok`, rolled
/// back alone when it returns an error. The block owns what it uses.
macro_rules! write_tx {
    ($self:ident, |$c:ident, $rules:ident| $body:block) => {
        $self
            .writer
            .run(move |$c: &mut SqliteConnection, $rules: &Rules| {
                Box::pin(async move {
                    let result: StoreResult<_> = async { $body }.await;
                    result
                })
            })
            .await
    };
}

impl Session for SqliteConnection {
    fn begin(&mut self) -> futures_util::future::BoxFuture<'_, StoreResult<Option<i64>>> {
        // `data_version` changes exactly when another connection (the CLI, say) has
        // committed; read in the same round trip as the BEGIN that takes the write lock.
        Box::pin(async move {
            let r = sqlx::Executor::fetch_one(
                &mut *self,
                sqlx::raw_sql("BEGIN IMMEDIATE; PRAGMA data_version"),
            )
            .await?;
            Ok(Some(r.get::<i64, _>(0)))
        })
    }

    fn close(self) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = sqlx::Connection::close(self).await {
                tracing::warn!(error = %e, "the database's write connection did not close cleanly");
            }
        })
    }

    fn execute<'a>(
        &'a mut self,
        sql: &'static str,
    ) -> futures_util::future::BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            sqlx::Executor::execute(&mut *self, sqlx::raw_sql(sql)).await?;
            Ok(())
        })
    }
}

/// The SQLite store.
pub struct SqliteStore {
    /// For reads; WAL lets them run beside the writer.
    pool: SqlitePool,
    writer: Writer<SqliteConnection, Rules>,
    rules: Arc<Rules>,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

/// Sorts a database error by what a caller can do about it, keeping the error itself.
fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    use sqlx::error::ErrorKind;
    let conflict = match &e {
        E::Database(db) => {
            // SQLite: SQLITE_BUSY and SQLITE_LOCKED (the busy timeout ran out) mean someone
            // else holds the database; PostgreSQL: serialization failure, deadlock.
            let code = db.code();
            let busy = matches!(code.as_deref(), Some("5" | "6" | "517" | "262"));
            let lost = matches!(code.as_deref(), Some(c) if c.starts_with("08") || c == "57P01");
            if lost || busy {
                return StoreError::Unavailable(Arc::new(e));
            }
            matches!(db.kind(), ErrorKind::UniqueViolation)
                || matches!(code.as_deref(), Some("40001" | "40P01"))
        }
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            return StoreError::Unavailable(Arc::new(e));
        }
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. } => {
            return StoreError::Corrupt(e.to_string());
        }
        _ => false,
    };
    if conflict {
        StoreError::Conflict(Arc::new(e))
    } else {
        StoreError::Database(Arc::new(e))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

fn opt_at(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.map(at)
}

fn parse<T: FromStr<Err = String>>(s: &str) -> StoreResult<T> {
    s.parse().map_err(StoreError::Corrupt)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    pub async fn open(url: &str, options: Options) -> anyhow::Result<Self> {
        // In WAL mode, NORMAL syncs only at checkpoints: a commit survives the process being
        // killed but not a power cut. FULL syncs the log at every commit, which group commit
        // makes cheap: one sync carries a whole batch.
        let synchronous = match options.durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Relaxed => SqliteSynchronous::Normal,
        };
        let connect = SqliteConnectOptions::from_str(url)
            .with_context(|| "DATABASE_URL is not a valid sqlite: URL".to_string())?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(connect)
            .await
            .context("could not open the SQLite database named by DATABASE_URL")?;
        sqlx::migrate::Migrator::new(Embedded)
            .await
            .context("could not read the embedded migrations")?
            .run(&pool)
            .await
            .context("could not apply the SQLite migrations")?;
        let rules = Arc::new(Rules::new(options.redactor, options.audit_key));
        // The writer keeps a connection of its own, outside the readers' pool.
        let conn = pool
            .acquire()
            .await
            .context("could not open the SQLite database named by DATABASE_URL")?
            .detach();
        Ok(Self {
            pool,
            writer: Writer::start(conn, rules.clone()),
            rules,
        })
    }
}

async fn load_state(
    c: &mut SqliteConnection,
    id: RunId,
) -> StoreResult<Option<(RunState, Definition)>> {
    let Some(r) = sqlx::query("SELECT * FROM runs WHERE id = ?")
        .bind(id.0)
        .fetch_optional(&mut *c)
        .await?
    else {
        return Ok(None);
    };
    let inputs: Map<String, Value> = serde_json::from_str(r.get::<&str, _>("inputs"))?;
    let run = Run {
        id,
        workflow: r.get("workflow"),
        status: parse(r.get::<&str, _>("status"))?,
        event_id: r.get("event_id"),
        conversation: ConversationRef {
            platform: r.get("platform"),
            channel: r.get("channel"),
            thread: r.get("thread"),
        },
        requested_by: Actor {
            platform: r.get("actor_platform"),
            id: r.get("actor_id"),
            display: r.get("actor_display"),
            is_bot: r.get::<i64, _>("actor_is_bot") != 0,
            groups: vec![],
        },
        inputs,
        late: r.get::<i64, _>("late") != 0,
        title: r.get("title"),
        error: r.get("error"),
        created_at: at(r.get("created_at")),
        updated_at: at(r.get("updated_at")),
        finished_at: opt_at(r.get("finished_at")),
        stalled_at: opt_at(r.get("stalled_at")),
        conversation_lost: r.get("conversation_lost"),
        alerts: serde_json::from_str(r.get::<&str, _>("alerts"))?,
    };
    let def = Definition {
        file: r.get("file"),
        source: Arc::from(r.get::<&str, _>("definition")),
    };
    let mut steps = BTreeMap::new();
    for s in sqlx::query("SELECT * FROM steps WHERE run_id = ?")
        .bind(id.0)
        .fetch_all(&mut *c)
        .await?
    {
        steps.insert(
            s.get::<String, _>("step_id"),
            StepState {
                status: parse(s.get::<&str, _>("status"))?,
                attempt: s.get::<i64, _>("attempt") as u32,
                retries_used: s.get::<i64, _>("retries_used") as u32,
                output: s
                    .get::<Option<&str>, _>("output")
                    .map(serde_json::from_str)
                    .transpose()?,
                error: s.get("error"),
                started_at: opt_at(s.get("started_at")),
                finished_at: opt_at(s.get("finished_at")),
            },
        );
    }
    let mut approvals = BTreeMap::new();
    for a in sqlx::query("SELECT * FROM approvals WHERE run_id = ?")
        .bind(id.0)
        .fetch_all(&mut *c)
        .await?
    {
        approvals.insert(a.get::<String, _>("step_id"), approval_from_row(&a)?);
    }
    let mut timers = BTreeMap::new();
    for t in sqlx::query("SELECT key, due_at FROM timers WHERE run_id = ?")
        .bind(id.0)
        .fetch_all(&mut *c)
        .await?
    {
        timers.insert(t.get::<String, _>("key"), at(t.get("due_at")));
    }
    Ok(Some((
        RunState {
            run,
            steps,
            approvals,
            timers,
        },
        def,
    )))
}

fn approval_from_row(a: &SqliteRow) -> StoreResult<Approval> {
    Ok(Approval {
        status: parse(a.get::<&str, _>("status"))?,
        approvers: serde_json::from_str(a.get::<&str, _>("approvers"))?,
        summary: a.get("summary"),
        requested_at: at(a.get("requested_at")),
        expires_at: at(a.get("expires_at")),
        decided_by: a
            .get::<Option<&str>, _>("decided_by")
            .map(serde_json::from_str)
            .transpose()?,
        decided_at: opt_at(a.get("decided_at")),
        reason: a.get("reason"),
        payload: a
            .get::<Option<&str>, _>("payload")
            .map(serde_json::from_str)
            .transpose()?,
        quorum: u32::try_from(a.get::<i64, _>("quorum")).unwrap_or(1),
        votes: serde_json::from_str(a.get::<&str, _>("votes"))?,
        reminded_at: opt_at(a.get("reminded_at")),
        escalated_at: opt_at(a.get("escalated_at")),
        content: a.get("content"),
        editors: serde_json::from_str(a.get::<&str, _>("editors"))?,
        round: u32::try_from(a.get::<i64, _>("round")).unwrap_or(1),
    })
}

impl Tx for SqliteConnection {
    async fn insert_run(&mut self, r: &tx::NewRunRow) -> StoreResult<Option<RunId>> {
        let row = sqlx::query(
            "INSERT INTO runs (workflow, event_id, status, platform, channel, thread, actor_platform, actor_id, actor_display,
               actor_is_bot, inputs, late, title, file, definition, created_at, updated_at)
             VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (event_id) DO NOTHING RETURNING id",
        )
        .bind(&r.workflow)
        .bind(&r.event_id)
        .bind(&r.platform)
        .bind(&r.channel)
        .bind(&r.thread)
        .bind(&r.actor_platform)
        .bind(&r.actor_id)
        .bind(&r.actor_display)
        .bind(r.actor_is_bot)
        .bind(&r.inputs)
        .bind(r.late)
        .bind(&r.title)
        .bind(&r.file)
        .bind(&*r.definition)
        .bind(r.created_at)
        .bind(r.created_at)
        .fetch_optional(&mut *self)
        .await?;
        Ok(row.map(|r| RunId(r.get("id"))))
    }

    async fn run_for_event(&mut self, event_id: &str) -> StoreResult<Option<RunId>> {
        let row = sqlx::query("SELECT id FROM runs WHERE event_id = ?")
            .bind(event_id)
            .fetch_optional(&mut *self)
            .await?;
        Ok(row.map(|r| RunId(r.get("id"))))
    }

    async fn load_run(&mut self, run: RunId) -> StoreResult<Option<(RunState, Definition)>> {
        load_state(self, run).await
    }

    async fn first_sighting(&mut self, event_id: &str, at: i64) -> StoreResult<bool> {
        let seen = sqlx::query(
            "INSERT INTO inbound_events (event_id, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(event_id)
        .bind(at)
        .execute(&mut *self)
        .await?;
        Ok(seen.rows_affected() == 1)
    }

    async fn ledger_head(&mut self) -> StoreResult<Option<Head>> {
        let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *self)
            .await?;
        Ok(last.map(|r| Head {
            seq: r.get("seq"),
            hash: r.get("hash"),
        }))
    }

    async fn mark_delivered(
        &mut self,
        id: i64,
        platform_ref: &str,
        at: i64,
    ) -> StoreResult<Option<Settled>> {
        let row = sqlx::query(
            "UPDATE outbox SET status = 'delivered', platform_ref = ?, delivered_at = ?, attempts = attempts + 1
             WHERE id = ? AND status <> 'delivered' RETURNING run_id, key, op, platform, channel, body",
        )
        .bind(platform_ref)
        .bind(at)
        .bind(id)
        .fetch_optional(&mut *self)
        .await?;
        Ok(row.as_ref().map(settled))
    }

    async fn write(&mut self, rows: &Rows) -> StoreResult<()> {
        // Each table in one statement: the rows go in as one JSON array, which `json_each`
        // turns back into rows, so a change costs a statement per table, not per row, and
        // every statement's text (and prepared form) is the same whatever the row count.
        if let Some(r) = &rows.run {
            sqlx::query(
                "UPDATE runs SET status = ?, error = ?, updated_at = ?, finished_at = ?, stalled_at = ?, conversation_lost = ?, alerts = ? WHERE id = ?",
            )
            .bind(r.status)
            .bind(&r.error)
            .bind(r.updated_at)
            .bind(r.finished_at)
            .bind(r.stalled_at)
            .bind(&r.conversation_lost)
            .bind(&r.alerts)
            .bind(r.id)
            .execute(&mut *self)
            .await?;
        }
        if !rows.steps.is_empty() {
            sqlx::query(
                "INSERT INTO steps (run_id, step_id, status, attempt, retries_used, output, error, started_at, finished_at)
                 SELECT value->>'run', value->>'step', value->>'status', value->>'attempt', value->>'retries_used',
                        value->>'output', value->>'error', value->>'started_at', value->>'finished_at'
                 FROM json_each(?) WHERE true
                 ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
                   retries_used = excluded.retries_used, output = excluded.output, error = excluded.error,
                   started_at = excluded.started_at, finished_at = excluded.finished_at",
            )
            .bind(serde_json::to_string(&rows.steps)?)
            .execute(&mut *self)
            .await?;
        }
        if !rows.approvals.is_empty() {
            sqlx::query(
                "INSERT INTO approvals (run_id, step_id, status, approvers, summary, requested_at, expires_at, decided_by, decided_at,
                   reason, payload, quorum, votes, reminded_at, escalated_at, content, editors, round)
                 SELECT value->>'run', value->>'step', value->>'status', value->>'approvers', value->>'summary',
                        value->>'requested_at', value->>'expires_at', value->>'decided_by', value->>'decided_at',
                        value->>'reason', value->>'payload', value->>'quorum', value->>'votes', value->>'reminded_at',
                        value->>'escalated_at', value->>'content', value->>'editors', value->>'round'
                 FROM json_each(?) WHERE true
                 ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, approvers = excluded.approvers,
                   summary = excluded.summary, requested_at = excluded.requested_at, expires_at = excluded.expires_at,
                   decided_by = excluded.decided_by, decided_at = excluded.decided_at, reason = excluded.reason,
                   payload = excluded.payload, quorum = excluded.quorum, votes = excluded.votes,
                   reminded_at = excluded.reminded_at, escalated_at = excluded.escalated_at,
                   content = excluded.content, editors = excluded.editors, round = excluded.round",
            )
            .bind(serde_json::to_string(&rows.approvals)?)
            .execute(&mut *self)
            .await?;
        }
        if !rows.timers.is_empty() {
            let timers = serde_json::to_string(&rows.timers)?;
            if rows.timers.iter().any(|t| t.due_at.is_none()) {
                sqlx::query(
                    "DELETE FROM timers WHERE (run_id, key) IN
                       (SELECT value->>'run', value->>'key' FROM json_each(?) WHERE value->>'due_at' IS NULL)",
                )
                .bind(&timers)
                .execute(&mut *self)
                .await?;
            }
            if rows.timers.iter().any(|t| t.due_at.is_some()) {
                sqlx::query(
                    "INSERT INTO timers (run_id, key, due_at)
                     SELECT value->>'run', value->>'key', value->>'due_at' FROM json_each(?) WHERE value->>'due_at' IS NOT NULL
                     ON CONFLICT (run_id, key) DO UPDATE SET due_at = excluded.due_at",
                )
                .bind(&timers)
                .execute(&mut *self)
                .await?;
            }
        }
        if !rows.attempts.is_empty() {
            let attempts = serde_json::to_string(&rows.attempts)?;
            if rows.attempts.iter().any(|a| a.input.is_some()) {
                sqlx::query(
                    "INSERT OR REPLACE INTO attempts (run_id, step_id, attempt, status, input, started_at, detail, finished_at)
                     SELECT value->>'run', value->>'step', value->>'attempt', COALESCE(value->>'status', 'running'),
                            value->>'input', value->>'started_at', value->>'detail', value->>'finished_at'
                     FROM json_each(?) WHERE value->>'input' IS NOT NULL",
                )
                .bind(&attempts)
                .execute(&mut *self)
                .await?;
            }
            if rows.attempts.iter().any(|a| a.input.is_none()) {
                sqlx::query(
                    "UPDATE attempts SET status = j.value->>'status', detail = j.value->>'detail', finished_at = j.value->>'finished_at'
                     FROM json_each(?) AS j
                     WHERE j.value->>'input' IS NULL AND attempts.run_id = j.value->>'run'
                       AND attempts.step_id = j.value->>'step' AND attempts.attempt = j.value->>'attempt'",
                )
                .bind(&attempts)
                .execute(&mut *self)
                .await?;
            }
        }
        if !rows.outbox.is_empty() {
            // An edit without a target goes where its post went; one whose post does not
            // exist is dropped. Rows go in in the order given, so ids keep it.
            sqlx::query(
                "INSERT INTO outbox (run_id, key, op, platform, channel, thread_key, body, status, next_attempt_at, created_at,
                   urgent, private_to)
                 SELECT j.value->>'run', j.value->>'key', j.value->>'op',
                        CASE WHEN j.value->>'target' IS NULL THEN p.platform ELSE j.value->>'$.target.platform' END,
                        CASE WHEN j.value->>'target' IS NULL THEN p.channel ELSE j.value->>'$.target.channel' END,
                        j.value->>'thread_key', j.value->>'body', 'pending', j.value->>'at', j.value->>'at',
                        CASE WHEN j.value->>'target' IS NULL THEN p.urgent ELSE j.value->>'$.target.urgent' END,
                        CASE WHEN j.value->>'target' IS NULL THEN p.private_to ELSE j.value->>'$.target.private_to' END
                 FROM json_each(?) AS j
                 LEFT JOIN outbox AS p ON j.value->>'target' IS NULL AND p.key = j.value->>'key' AND p.op = 'post'
                 WHERE j.value->>'target' IS NOT NULL OR p.id IS NOT NULL
                 ORDER BY j.key
                 ON CONFLICT DO NOTHING",
            )
            .bind(serde_json::to_string(&rows.outbox)?)
            .execute(&mut *self)
            .await?;
        }
        for (run, now) in &rows.redeliver {
            sqlx::query(
                "UPDATE outbox SET status = 'pending', attempts = 0, last_error = NULL, failing_since = NULL, next_attempt_at = ?
                 WHERE run_id = ? AND (status = 'failed' OR (status = 'pending' AND attempts > 0))",
            )
            .bind(now)
            .bind(run)
            .execute(&mut *self)
            .await?;
        }
        if !rows.audit.is_empty() {
            sqlx::query(
                "INSERT INTO audit (seq, at, kind, run_id, step_id, actor, data, prev_hash, hash, mac)
                 SELECT value->>'seq', value->>'at', value->>'kind', value->>'run_id', value->>'step_id', value->>'actor',
                        value->>'data', value->>'prev_hash', value->>'hash', value->>'mac'
                 FROM json_each(?) ORDER BY key",
            )
            .bind(serde_json::to_string(&rows.audit)?)
            .execute(&mut *self)
            .await?;
        }
        Ok(())
    }
}

/// An outbox row whose delivery was just settled (`RETURNING run_id, key, op, platform,
/// channel`, and `body` when asked for).
fn settled(r: &SqliteRow) -> Settled {
    Settled {
        run: r.get::<Option<i64>, _>("run_id").map(RunId),
        key: r.get("key"),
        op: r.get("op"),
        platform: r.get("platform"),
        channel: r.get("channel"),
        body: r.try_get("body").unwrap_or_default(),
    }
}

fn audit_from_row(r: &SqliteRow) -> AuditEntry {
    AuditEntry {
        seq: r.get("seq"),
        at: at(r.get("at")),
        kind: r.get("kind"),
        run: r.get("run_id"),
        step: r.get("step_id"),
        actor: r.get("actor"),
        data: r.get("data"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
        mac: r.get("mac"),
    }
}

fn summary_from_row(r: &SqliteRow) -> RunSummary {
    RunSummary {
        id: RunId(r.get("id")),
        workflow: r.get("workflow"),
        title: r.get("title"),
        status: r.get("status"),
        requested_by: r.get("actor_display"),
        platform: r.get("platform"),
        channel: r.get("channel"),
        created_at: at(r.get("created_at")),
        updated_at: at(r.get("updated_at")),
        finished_at: opt_at(r.get("finished_at")),
        stalled_at: opt_at(r.get("stalled_at")),
    }
}

fn console_from_row(r: &SqliteRow) -> StoreResult<ConsoleMessage> {
    Ok(ConsoleMessage {
        id: r.get("id"),
        channel: r.get("channel"),
        thread_id: r.get("thread_id"),
        author: r.get("author"),
        is_bot: r.get::<i64, _>("is_bot") != 0,
        message: serde_json::from_str(r.get::<&str, _>("body"))?,
        created_at: at(r.get("created_at")),
        updated_at: at(r.get("updated_at")),
        replies: r.try_get("replies").unwrap_or(0),
    })
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn create_run(
        &self,
        new: NewRun,
        now: DateTime<Utc>,
        start: ApplyFn,
    ) -> StoreResult<Created> {
        write_tx!(self, |c, rules| {
            tx::create_run(c, rules, new, now, start).await
        })
    }

    async fn apply(
        &self,
        run: RunId,
        event_id: Option<&str>,
        f: ApplyFn,
    ) -> StoreResult<Option<Transition>> {
        let event_id = event_id.map(str::to_owned);
        write_tx!(self, |c, rules| {
            tx::apply(c, rules, run, event_id.as_deref(), f).await
        })
    }

    async fn load_run(&self, run: RunId) -> StoreResult<Option<RunState>> {
        let mut c = self.pool.acquire().await?;
        Ok(load_state(&mut c, run).await?.map(|(s, _)| s))
    }

    async fn stalled_runs(&self, limit: u32) -> StoreResult<Vec<RunSummary>> {
        let rows = sqlx::query(
            "SELECT * FROM runs WHERE stalled_at IS NOT NULL AND finished_at IS NULL ORDER BY stalled_at LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(summary_from_row).collect())
    }

    async fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
    ) -> StoreResult<Vec<RunSummary>> {
        let rows = match status {
            Some(s) => {
                sqlx::query("SELECT * FROM runs WHERE status = ? ORDER BY id DESC LIMIT ?")
                    .bind(s.as_str())
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM runs ORDER BY id DESC LIMIT ?")
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(summary_from_row).collect())
    }

    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT * FROM attempts WHERE run_id = ? ORDER BY started_at, step_id, attempt",
        )
        .bind(run.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    step: r.get("step_id"),
                    attempt: r.get::<i64, _>("attempt") as u32,
                    status: r.get("status"),
                    input: serde_json::from_str(r.get::<&str, _>("input"))?,
                    detail: r
                        .get::<Option<&str>, _>("detail")
                        .map(serde_json::from_str)
                        .transpose()?
                        .unwrap_or(Value::Null),
                    started_at: at(r.get("started_at")),
                    finished_at: opt_at(r.get("finished_at")),
                })
            })
            .collect()
    }

    async fn unfinished_attempts(&self) -> StoreResult<Vec<(RunId, String, u32)>> {
        let rows = sqlx::query("SELECT run_id, step_id, attempt FROM attempts WHERE status = 'running' ORDER BY run_id, step_id").fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    RunId(r.get("run_id")),
                    r.get("step_id"),
                    r.get::<i64, _>("attempt") as u32,
                )
            })
            .collect())
    }

    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(RunId, String, DateTime<Utc>)>> {
        let rows = sqlx::query(
            "SELECT run_id, key, due_at FROM timers WHERE due_at <= ? ORDER BY due_at LIMIT ?",
        )
        .bind(ms(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (RunId(r.get("run_id")), r.get("key"), at(r.get("due_at"))))
            .collect())
    }

    async fn pending_approvals(&self, limit: u32) -> StoreResult<(Vec<PendingApproval>, u64)> {
        let rows = sqlx::query(
            "SELECT a.*, r.workflow FROM approvals a JOIN runs r ON r.id = a.run_id
             WHERE a.status = 'pending' ORDER BY a.requested_at LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM approvals WHERE status = 'pending'")
                .fetch_one(&self.pool)
                .await?
                .get("n");
        let listed = rows
            .iter()
            .map(|r| {
                Ok(PendingApproval {
                    run: RunId(r.get("run_id")),
                    workflow: r.get("workflow"),
                    step: r.get("step_id"),
                    approvers: serde_json::from_str(r.get::<&str, _>("approvers"))?,
                    summary: r.get("summary"),
                    requested_at: at(r.get("requested_at")),
                    expires_at: at(r.get("expires_at")),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((listed, total as u64))
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_ready(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT o.*,
                    (SELECT p.platform_ref FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post') AS thread_ref,
                                        (SELECT p.platform_ref FROM outbox p WHERE p.key = o.key AND p.op = 'post') AS target_ref,
                    (SELECT p.status FROM outbox p WHERE p.key = o.thread_key AND p.op = 'post') AS thread_status,
                    (SELECT p.status FROM outbox p WHERE p.key = o.key AND p.op = 'post') AS target_status
             FROM outbox o WHERE o.status = 'pending' ORDER BY o.id LIMIT ?",
        )
        .bind((limit as i64) * 4)
        .fetch_all(&self.pool)
        .await?;
        let pending = rows
            .iter()
            .map(|r| {
                Ok(Pending {
                    entry: OutboxEntry {
                        id: r.get("id"),
                        run: r.get::<Option<i64>, _>("run_id").map(RunId),
                        key: MessageKey(r.get("key")),
                        op: if r.get::<&str, _>("op") == "edit" {
                            OutboxOp::Edit
                        } else {
                            OutboxOp::Post
                        },
                        platform: r.get("platform"),
                        channel: r.get("channel"),
                        thread_key: r.get::<Option<String>, _>("thread_key").map(MessageKey),
                        thread_ref: r.get("thread_ref"),
                        target_ref: r.get("target_ref"),
                        message: serde_json::from_str(r.get::<&str, _>("body"))?,
                        attempts: r.get::<i64, _>("attempts") as u32,
                        failing_since: opt_at(r.get("failing_since")),
                        alerted: r.get::<i64, _>("alerted") != 0,
                        urgent: r.get::<i64, _>("urgent") != 0,
                        private_to: r.get("private_to"),
                    },
                    next_attempt_at: r.get("next_attempt_at"),
                    thread_status: r.get("thread_status"),
                    target_status: r.get("target_status"),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let tx::Ready {
            entries,
            superseded,
            orphaned,
        } = tx::ready(pending, now, limit);
        if !orphaned.is_empty() || !superseded.is_empty() {
            write_tx!(self, |c, _rules| {
                for id in orphaned {
                    sqlx::query("UPDATE outbox SET status = 'failed', last_error = 'depends on a message that could not be delivered' WHERE id = ? AND status = 'pending'")
                        .bind(id)
                        .execute(&mut *c)
                        .await?;
                }
                for id in superseded {
                    sqlx::query(
                        "UPDATE outbox SET status = 'superseded' WHERE id = ? AND status = 'pending'",
                    )
                    .bind(id)
                    .execute(&mut *c)
                    .await?;
                }
                Ok(())
            })?;
        }
        Ok(entries)
    }

    async fn outbox_delivered(
        &self,
        id: i64,
        platform_ref: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let platform_ref = platform_ref.to_owned();
        write_tx!(self, |c, rules| {
            tx::delivered(c, rules, id, &platform_ref, now).await
        })
    }

    async fn outbox_defer(&self, id: i64, until: DateTime<Utc>) -> StoreResult<()> {
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "UPDATE outbox SET next_attempt_at = ? WHERE id = ? AND status = 'pending'",
            )
            .bind(ms(until))
            .bind(id)
            .execute(&mut *c)
            .await?;
            Ok(())
        })
    }

    async fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let error = error.to_owned();
        write_tx!(self, |c, rules| {
            match retry_at {
                Some(next) => {
                    sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, failing_since = COALESCE(failing_since, ?) WHERE id = ?")
                            .bind(&error)
                            .bind(ms(next))
                            .bind(ms(now))
                            .bind(id)
                            .execute(&mut *c)
                            .await?;
                }
                None => {
                    let row = sqlx::query("UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ? RETURNING run_id, key, op, platform, channel")
                            .bind(&error)
                            .bind(id)
                            .fetch_optional(&mut *c)
                            .await?;
                    let Some(r) = row else { return Ok(()) };
                    let key: String = r.get("key");
                    let op: String = r.get("op");
                    // Replies and edits that depend on a post that will never exist cannot be
                    // delivered either; they fail with it rather than wait forever.
                    if op == "post" {
                        sqlx::query("UPDATE outbox SET status = 'failed', last_error = ? WHERE status = 'pending' AND (thread_key = ? OR (key = ? AND op = 'edit'))")
                                .bind(format!("depends on {key}, which could not be delivered"))
                                .bind(&key)
                                .bind(&key)
                                .execute(&mut *c)
                                .await?;
                    }
                    let ev = tx::failed_event(now, &settled(&r), &error);
                    rules.append(c, &[ev]).await?;
                }
            }
            Ok(())
        })
    }

    async fn outbox_alerted(&self, id: i64) -> StoreResult<()> {
        write_tx!(self, |c, _rules| {
            sqlx::query("UPDATE outbox SET alerted = 1 WHERE id = ?")
                .bind(id)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
    }

    async fn message_ref(&self, key: &MessageKey) -> StoreResult<Option<String>> {
        let r = sqlx::query("SELECT platform_ref FROM outbox WHERE key = ? AND op = 'post'")
            .bind(&key.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.and_then(|r| r.get("platform_ref")))
    }

    async fn failed_deliveries(&self, limit: u32) -> StoreResult<Vec<FailedDelivery>> {
        let rows = sqlx::query(
            "SELECT run_id, key, platform, channel, last_error, created_at FROM outbox WHERE status = 'failed' ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| FailedDelivery {
                run: r.get::<Option<i64>, _>("run_id").map(RunId),
                key: r.get("key"),
                platform: r.get("platform"),
                channel: r.get("channel"),
                error: r.get("last_error"),
                created_at: at(r.get("created_at")),
            })
            .collect())
    }

    async fn outbox_of_run(&self, run: RunId) -> StoreResult<Vec<OutboxRow>> {
        let rows = sqlx::query("SELECT * FROM outbox WHERE run_id = ? ORDER BY id")
            .bind(run.0)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow {
                id: r.get("id"),
                key: r.get("key"),
                op: r.get("op"),
                status: r.get("status"),
                attempts: r.get::<i64, _>("attempts") as u32,
                last_error: r.get("last_error"),
                platform_ref: r.get("platform_ref"),
            })
            .collect())
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_append(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        write_tx!(self, |c, rules| { rules.append(c, &events).await })
    }

    async fn audit_page(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after_seq)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(audit_from_row).collect())
    }

    async fn audit_recent(&self, run: Option<RunId>, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        let rows = match run {
            Some(r) => {
                sqlx::query("SELECT * FROM audit WHERE run_id = ? ORDER BY seq DESC LIMIT ?")
                    .bind(r.0)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM audit ORDER BY seq DESC LIMIT ?")
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(audit_from_row).collect())
    }

    async fn digest_figures(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        stall_after: Duration,
    ) -> StoreResult<DigestFigures> {
        let mut f = DigestFigures {
            since,
            until,
            ..Default::default()
        };
        // Outcomes come from the ledger: the status changes recorded in the period.
        let rows = sqlx::query(
            "SELECT json_extract(data, '$.to') AS outcome, COUNT(*) AS n FROM audit
             WHERE kind = 'run.status' AND at > ? AND at <= ? GROUP BY outcome",
        )
        .bind(ms(since))
        .bind(ms(until))
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let n = r.get::<i64, _>("n") as u64;
            match r.get::<Option<String>, _>("outcome").as_deref() {
                Some("succeeded") => f.succeeded = n,
                Some("failed") => f.failed = n,
                Some("rejected") => f.rejected = n,
                Some("cancelled") => f.cancelled = n,
                _ => {}
            }
        }
        f.started = sqlx::query(
            "SELECT COUNT(*) AS n FROM audit WHERE kind = 'run.started' AND at > ? AND at <= ?",
        )
        .bind(ms(since))
        .bind(ms(until))
        .fetch_one(&self.pool)
        .await?
        .get::<i64, _>("n") as u64;
        let (waiting, waiting_count) = self.pending_approvals(LISTED as u32).await?;
        f.waiting_count = waiting_count;
        f.waiting = waiting
            .into_iter()
            .map(|p| WaitingApproval {
                run: p.run,
                workflow: p.workflow,
                step: p.step,
                approvers: p.approvers,
                since: p.requested_at,
            })
            .collect();
        let idle_before = ms(until - stall_after);
        // Flagged runs (their thread has the alert), and running ones idle past the
        // threshold that have not been flagged yet.
        let stalled = sqlx::query(
            "SELECT id, workflow, status, COALESCE(stalled_at, updated_at) AS idle_since FROM runs
             WHERE finished_at IS NULL AND (stalled_at IS NOT NULL OR (status = 'running' AND updated_at < ?1))
             ORDER BY idle_since LIMIT ?2",
        )
        .bind(idle_before)
        .bind(LISTED as i64)
        .fetch_all(&self.pool)
        .await?;
        f.stalled_count = sqlx::query(
            "SELECT COUNT(*) AS n FROM runs WHERE finished_at IS NULL AND (stalled_at IS NOT NULL OR (status = 'running' AND updated_at < ?))",
        )
        .bind(idle_before)
        .fetch_one(&self.pool)
        .await?
        .get::<i64, _>("n") as u64;
        f.undelivered = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE status = 'failed'")
            .fetch_one(&self.pool)
            .await?
            .get::<i64, _>("n") as u64;
        f.ledger_head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .map(|r| {
                Checkpoint::of(
                    r.get("seq"),
                    r.get::<&str, _>("hash"),
                    self.rules.audit_key(),
                )
                .to_string()
            });
        f.stalled = stalled
            .iter()
            .map(|r| StalledRun {
                run: RunId(r.get("id")),
                workflow: r.get("workflow"),
                status: r.get("status"),
                idle_since: at(r.get("idle_since")),
            })
            .collect();
        Ok(f)
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let r =
            sqlx::query("SELECT last_slot FROM schedule_cursors WHERE workflow = ? AND key = ?")
                .bind(workflow)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(|r| at(r.get("last_slot"))))
    }

    async fn set_schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
        slot: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (workflow, key) = (workflow.to_owned(), key.to_owned());
        write_tx!(self, |c, _rules| {
            sqlx::query("INSERT INTO schedule_cursors (workflow, key, last_slot) VALUES (?, ?, ?) ON CONFLICT (workflow, key) DO UPDATE SET last_slot = MAX(last_slot, excluded.last_slot)")
                .bind(&workflow)
                .bind(&key)
                .bind(ms(slot))
                .execute(&mut *c)
                .await?;
            Ok(())
        })
    }
}

/// Changes a console message's body (`body`, `updated_at`, `id`) and returns it as
/// [`CONSOLE_SELECT`] would.
const CONSOLE_EDIT: &str = "UPDATE console_messages SET body = ?, updated_at = ? WHERE id = ?
     RETURNING *, (SELECT COUNT(*) FROM console_messages r WHERE r.thread_id = console_messages.id) AS replies";

const CONSOLE_SELECT: &str = "SELECT m.*, (SELECT COUNT(*) FROM console_messages r WHERE r.thread_id = m.id) AS replies FROM console_messages m";

#[async_trait]
impl ConsoleStore for SqliteStore {
    async fn console_deliver(
        &self,
        batch: Vec<ConsoleDelivery>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Result<ConsoleMessage, String>>> {
        let bodies = batch
            .iter()
            .map(|d| self.rules.message(&d.message))
            .collect::<StoreResult<Vec<_>>>()?;
        write_tx!(self, |c, rules| {
            let mut out = Vec::with_capacity(batch.len());
            // Ids of the posts this batch stored, for the replies and edits behind them.
            let mut posted: BTreeMap<String, i64> = BTreeMap::new();
            for (d, body) in batch.into_iter().zip(bodies) {
                let about = match &d.about {
                    None => None,
                    Some(ConsoleRef::Id(id)) => Some(*id),
                    Some(ConsoleRef::Post(key)) => match posted.get(&key.0) {
                        Some(id) => Some(*id),
                        // Not in this batch: it stops here, and the next pass has it.
                        None => break,
                    },
                };
                let row = match d.op {
                    OutboxOp::Post => {
                        let inserted = sqlx::query(
                            "INSERT INTO console_messages (channel, thread_id, author, is_bot, body, outbox_id, created_at, updated_at)
                             VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT DO NOTHING
                             RETURNING *, 0 AS replies",
                        )
                        .bind(&d.channel)
                        .bind(about)
                        .bind(d.author)
                        .bind(&body)
                        .bind(d.outbox_id)
                        .bind(ms(now))
                        .bind(ms(now))
                        .fetch_optional(&mut *c)
                        .await?;
                        match inserted {
                            Some(r) => Some(r),
                            // Delivered before (a crash before the engine heard of it): the
                            // message already posted for it.
                            None => {
                                sqlx::query(&format!("{CONSOLE_SELECT} WHERE m.outbox_id = ?"))
                                    .bind(d.outbox_id)
                                    .fetch_optional(&mut *c)
                                    .await?
                            }
                        }
                    }
                    OutboxOp::Edit => {
                        sqlx::query(CONSOLE_EDIT)
                            .bind(&body)
                            .bind(ms(now))
                            .bind(about)
                            .fetch_optional(&mut *c)
                            .await?
                    }
                };
                let Some(row) = row else {
                    out.push(Err(match about {
                        Some(id) => format!("message {id} no longer exists"),
                        None => "there is no message to edit".to_owned(),
                    }));
                    break;
                };
                let m = console_from_row(&row)?;
                tx::delivered(c, rules, d.outbox_id, &m.id.to_string(), now).await?;
                if d.op == OutboxOp::Post {
                    posted.insert(d.key.0, m.id);
                }
                out.push(Ok(m));
            }
            Ok(out)
        })
    }

    async fn console_post(
        &self,
        post: ConsolePost<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<(ConsoleMessage, bool)> {
        let ConsolePost {
            channel,
            thread_id,
            author,
            is_bot,
            message,
            outbox_id,
            client_id,
        } = post;
        let body = self.rules.message(message)?;
        let (channel, author) = (channel.to_owned(), author.to_owned());
        let client_id = client_id.map(str::to_owned);
        let stored: OutMessage = serde_json::from_str(&body)?;
        // Written, or found to be there already, in one write: a message sent twice at once
        // is stored once. A new message is not read back: it is what was just written.
        let (id, new): (i64, bool) = write_tx!(self, |c, rules| {
            let inserted = sqlx::query(
                "INSERT INTO console_messages (channel, thread_id, author, is_bot, body, outbox_id, client_id, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(&channel)
            .bind(thread_id)
            .bind(&author)
            .bind(is_bot)
            .bind(&body)
            .bind(outbox_id)
            .bind(&client_id)
            .bind(ms(now))
            .bind(ms(now))
            .fetch_optional(&mut *c)
            .await?;
            if let Some(r) = inserted {
                let id: i64 = r.get("id");
                // Posting an outbox entry is delivering it: recorded in the same write, so no
                // crash can separate the two.
                if let Some(entry) = outbox_id {
                    tx::delivered(c, rules, entry, &id.to_string(), now).await?;
                }
                return Ok((id, true));
            }
            let earlier = sqlx::query(
                "SELECT id FROM console_messages WHERE outbox_id = ? OR (author = ? AND client_id = ?)",
            )
            .bind(outbox_id)
            .bind(&author)
            .bind(&client_id)
            .fetch_optional(&mut *c)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a console message was refused as a duplicate of none".into()))?;
            Ok((earlier.get("id"), false))
        })?;
        if !new {
            let m = self
                .console_get(id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("message vanished".into()))?;
            return Ok((m, false));
        }
        let m = ConsoleMessage {
            id,
            channel: post.channel.to_owned(),
            thread_id,
            author: post.author.to_owned(),
            is_bot,
            message: stored,
            created_at: at(ms(now)),
            updated_at: at(ms(now)),
            replies: 0,
        };
        Ok((m, true))
    }

    async fn console_edit(
        &self,
        id: i64,
        message: &OutMessage,
        outbox_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ConsoleMessage>> {
        let body = self.rules.message(message)?;
        write_tx!(self, |c, rules| {
            let row = sqlx::query(CONSOLE_EDIT)
                .bind(&body)
                .bind(ms(now))
                .bind(id)
                .fetch_optional(&mut *c)
                .await?;
            if row.is_some()
                && let Some(entry) = outbox_id
            {
                tx::delivered(c, rules, entry, &id.to_string(), now).await?;
            }
            row.as_ref().map(console_from_row).transpose()
        })
    }

    async fn console_get(&self, id: i64) -> StoreResult<Option<ConsoleMessage>> {
        let r = sqlx::query(&format!("{CONSOLE_SELECT} WHERE m.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(console_from_row).transpose()
    }

    async fn console_member_of(
        &self,
        author: &str,
        channels: &[String],
    ) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for channel in channels {
            let found = sqlx::query(
                "SELECT 1 FROM console_messages WHERE channel = ? AND author = ? AND is_bot = 0 LIMIT 1",
            )
            .bind(channel)
            .bind(author)
            .fetch_optional(&self.pool)
            .await?;
            if found.is_some() {
                out.push(channel.clone());
            }
        }
        Ok(out)
    }

    async fn console_channel_names(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT channel FROM console_messages ORDER BY channel")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| r.get("channel")).collect())
    }

    async fn console_channel(&self, channel: &str, limit: u32) -> StoreResult<Vec<ConsoleMessage>> {
        let rows = sqlx::query(&format!("{CONSOLE_SELECT} WHERE m.channel = ? AND m.thread_id IS NULL ORDER BY m.id DESC LIMIT ?"))
            .bind(channel)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<ConsoleMessage> = rows
            .iter()
            .map(console_from_row)
            .collect::<StoreResult<_>>()?;
        out.reverse();
        Ok(out)
    }

    async fn console_thread(&self, root: i64) -> StoreResult<Vec<ConsoleMessage>> {
        let rows = sqlx::query(&format!(
            "{CONSOLE_SELECT} WHERE m.id = ? OR m.thread_id = ? ORDER BY m.id"
        ))
        .bind(root)
        .bind(root)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(console_from_row).collect()
    }
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn agent_turns(&self, run: RunId, step: &str) -> StoreResult<Vec<Value>> {
        let rows = sqlx::query(
            "SELECT message FROM agent_turns WHERE run_id = ? AND step_id = ? ORDER BY seq",
        )
        .bind(run.0)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(serde_json::from_str(r.get::<&str, _>("message"))?))
            .collect()
    }

    async fn agent_turn_append(
        &self,
        run: RunId,
        step: &str,
        seq: u32,
        message: &Value,
        when: DateTime<Utc>,
    ) -> StoreResult<()> {
        let text = self.rules.json(message);
        let step = step.to_owned();
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "INSERT INTO agent_turns (run_id, step_id, seq, message, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(run.0)
            .bind(&step)
            .bind(i64::from(seq))
            .bind(&text)
            .bind(ms(when))
            .execute(&mut *c)
            .await?;
            Ok(())
        })
    }

    async fn agent_turns_clear(&self, run: RunId, step: &str) -> StoreResult<()> {
        let step = step.to_owned();
        write_tx!(self, |c, _rules| {
            sqlx::query("DELETE FROM agent_turns WHERE run_id = ? AND step_id = ?")
                .bind(run.0)
                .bind(&step)
                .execute(&mut *c)
                .await?;
            Ok(())
        })
    }

    async fn agent_tokens(&self, run: RunId) -> StoreResult<u64> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(COALESCE(json_extract(message, '$.tokens_in'), 0) + COALESCE(json_extract(message, '$.tokens_out'), 0)), 0) AS n FROM agent_turns WHERE run_id = ?",
        )
        .bind(run.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64, _>("n").max(0) as u64)
    }

    async fn memory_read(&self, namespace: &str, key: &str) -> StoreResult<Option<MemoryEntry>> {
        let row = sqlx::query("SELECT * FROM memory WHERE namespace = ? AND key = ?")
            .bind(namespace)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(memory_from_row).transpose()
    }

    async fn memory_list(
        &self,
        namespace: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<MemoryEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM memory WHERE ?1 IS NULL OR namespace = ?1 ORDER BY written_at DESC, namespace, key LIMIT ?2",
        )
        .bind(namespace)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(memory_from_row).collect()
    }

    async fn memory_write(&self, e: &MemoryEntry) -> StoreResult<()> {
        let value = self.rules.json(&e.value);
        let e = e.clone();
        write_tx!(self, |c, _rules| {
            sqlx::query(
                "INSERT INTO memory (namespace, key, value, run_id, step_id, agent, written_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, run_id = excluded.run_id, step_id = excluded.step_id, agent = excluded.agent, written_at = excluded.written_at",
            )
            .bind(&e.namespace)
            .bind(&e.key)
            .bind(&value)
            .bind(e.run.map(|r| r.0))
            .bind(&e.step)
            .bind(&e.agent)
            .bind(ms(e.written_at))
            .execute(&mut *c)
            .await?;
            Ok(())
        })
    }
}

fn memory_from_row(r: &sqlx::sqlite::SqliteRow) -> StoreResult<MemoryEntry> {
    Ok(MemoryEntry {
        namespace: r.get("namespace"),
        key: r.get("key"),
        value: serde_json::from_str(r.get::<&str, _>("value"))?,
        run: r.get::<Option<i64>, _>("run_id").map(RunId),
        step: r.get("step_id"),
        agent: r.get("agent"),
        written_at: at(r.get("written_at")),
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn redactor(&self) -> &Redactor {
        self.rules.redactor()
    }

    async fn metrics(&self) -> StoreResult<StoreMetrics> {
        let runs = sqlx::query("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let one = |sql: &'static str| async move {
            sqlx::query(sql)
                .fetch_one(&self.pool)
                .await
                .map(|r| r.get::<i64, _>("n"))
        };
        Ok(StoreMetrics {
            runs_by_status: runs.iter().map(|r| (r.get("status"), r.get("n"))).collect(),
            approvals_pending: one("SELECT COUNT(*) AS n FROM approvals WHERE status = 'pending'")
                .await?,
            outbox_pending: one("SELECT COUNT(*) AS n FROM outbox WHERE status = 'pending'")
                .await?,
            outbox_failed: one("SELECT COUNT(*) AS n FROM outbox WHERE status = 'failed'").await?,
            outbox_alerted: one(
                "SELECT COUNT(*) AS n FROM outbox WHERE alerted = 1 AND status IN ('pending', 'failed')",
            )
            .await?,
            runs_unreachable: one(
                "SELECT COUNT(*) AS n FROM runs WHERE conversation_lost IS NOT NULL",
            )
            .await?,
            audit_entries: one("SELECT COUNT(*) AS n FROM audit").await?,
        })
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::audit::{AuditKind, Verification};

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
}
