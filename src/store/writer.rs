//! Group commit: one writer task owns the write connection and applies the writes that arrive
//! together in one transaction.
//!
//! Each write is a closure over the connection. The writer takes the first that arrives and
//! every other already waiting (up to [`MAX_BATCH`]), opens one transaction, runs each write
//! inside its own savepoint, and commits once. A write that fails (or panics) is rolled back to
//! its savepoint alone, so its neighbours in the batch are kept. Every caller hears its own
//! result only after the commit, so nothing is acted on before it is durable. A batch is as
//! large as the queue that built up while the previous one committed: under light load a write
//! waits for no one; under heavy load one commit (one fsync) carries many.
//!
//! The writer knows nothing of the schema; a backend supplies the connection and its `BEGIN`.
//! What a backend remembers between writes (the ledger's newest entry) lives in the writer's
//! context and is forgotten whenever it may be wrong: after a write was rolled back, and when
//! another process has committed since the last batch.

use super::{StoreError, StoreResult};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Runs a block as one write of a store's writer's next batch (`$self.writer`): kept when it
/// returns `Ok`, rolled back alone when it returns an error. The block owns what it uses;
/// `$c` is the backend's connection, `$rules` the transaction layer's [`super::tx::Rules`].
macro_rules! write_tx {
    ($self:expr, |$c:ident, $rules:ident| $body:block) => {
        $self
            .writer
            .run(move |$c, $rules| {
                Box::pin(async move {
                    let result: $crate::store::StoreResult<_> = async move { $body }.await;
                    result
                })
            })
            .await
    };
}
pub(crate) use write_tx;

/// Most writes one transaction carries.
pub(crate) const MAX_BATCH: usize = 256;

/// A connection the writer can open transactions and savepoints on.
pub(crate) trait Session: Send + 'static {
    /// Opens a transaction that holds the write lock from the start, and says the database's
    /// version inside it: a number that changes whenever another connection has committed, or
    /// `None` when the backend cannot tell (then nothing is remembered across batches).
    fn begin(&mut self) -> BoxFuture<'_, StoreResult<Option<i64>>>;
    /// Runs statements without arguments or results (savepoints, commit, rollback), several
    /// separated by `;` in one round trip.
    fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, StoreResult<()>>;
    /// Closes the connection cleanly (SQLite checkpoints its log then).
    fn close(self) -> BoxFuture<'static, ()>;
}

/// What a backend's writes remember between them, and forget on the writer's word.
pub(crate) trait Memory: Send + Sync + 'static {
    fn forget(&self) {}
}

impl Memory for () {}

/// Tells a caller its result, given the batch's commit error if the commit failed.
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// What ran in a batch and waits for the commit to hear its result.
struct Ran {
    kept: bool,
    reply: Reply,
}

/// One write, its result sent to its caller once the batch is settled.
trait Job<C, X>: Send {
    fn run<'a>(self: Box<Self>, c: &'a mut C, x: &'a X) -> BoxFuture<'a, Ran>;
    /// The batch failed before this write ran.
    fn fail(self: Box<Self>, e: &StoreError);
}

struct JobOf<F, T> {
    work: F,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<C, X, F, T> Job<C, X> for JobOf<F, T>
where
    C: Send + 'static,
    X: Memory,
    T: Send + 'static,
    F: for<'a> FnOnce(&'a mut C, &'a X) -> BoxFuture<'a, StoreResult<T>> + Send + 'static,
{
    fn run<'a>(self: Box<Self>, c: &'a mut C, x: &'a X) -> BoxFuture<'a, Ran> {
        let JobOf { work, reply } = *self;
        Box::pin(async move {
            match AssertUnwindSafe(work(c, x)).catch_unwind().await {
                Ok(Ok(value)) => Ran {
                    kept: true,
                    reply: Box::new(move |commit| {
                        let _ = reply.send(match commit {
                            None => Ok(value),
                            Some(e) => Err(e.clone()),
                        });
                    }),
                },
                Ok(Err(e)) => Ran {
                    kept: false,
                    reply: Box::new(move |_| {
                        let _ = reply.send(Err(e));
                    }),
                },
                Err(_) => {
                    tracing::error!("a store write panicked; it was rolled back alone");
                    Ran {
                        kept: false,
                        reply: Box::new(move |_| {
                            let _ = reply.send(Err(StoreError::database(
                                "a write failed unexpectedly and was rolled back",
                            )));
                        }),
                    }
                }
            }
        })
    }

    fn fail(self: Box<Self>, e: &StoreError) {
        let _ = self.reply.send(Err(e.clone()));
    }
}

/// What the writer has done since it started, for `/metrics` and the throughput bench.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    writes: AtomicU64,
    /// Time spent running batches, commits included.
    busy_ns: AtomicU64,
    /// Time spent committing (and syncing to disk).
    commit_ns: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> super::WriterMetrics {
        let seconds = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e9;
        super::WriterMetrics {
            batches: self.batches.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            busy_seconds: seconds(&self.busy_ns),
            commit_seconds: seconds(&self.commit_ns),
        }
    }
}

/// The handle writes are sent through; the task behind it stops when the last handle goes,
/// or when it is closed.
pub(crate) struct Writer<C, X> {
    queue: mpsc::UnboundedSender<Box<dyn Job<C, X>>>,
    close: mpsc::UnboundedSender<oneshot::Sender<()>>,
    stats: Arc<Stats>,
}

impl<C: Session, X: Memory> Writer<C, X> {
    /// Starts the writer on a thread of its own, for a connection whose statements block
    /// (SQLite called directly): a batch runs start to end on that thread, so its statements
    /// cost function calls, not hand-offs between threads, and nothing else waits behind it.
    pub(crate) fn start_on_thread(conn: C, context: Arc<X>, name: &str) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        let (close, close_rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let stats = Arc::new(Stats::default());
        let counted = stats.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || runtime.block_on(write_loop(conn, context, counted, rx, close_rx)))?;
        Ok(Self {
            queue,
            close,
            stats,
        })
    }

    /// Starts the writer as a task on the runtime, for a connection whose statements are
    /// asynchronous (a database server over the network).
    pub(crate) fn start(conn: C, context: Arc<X>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let (close, close_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        tokio::spawn(write_loop(conn, context, stats.clone(), rx, close_rx));
        Self {
            queue,
            close,
            stats,
        }
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Settles every write already sent, refuses later ones (`StoreError::Closed`) and closes
    /// the connection; returns once it is closed.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.close.send(done).is_ok() {
            let _ = closed.await;
        }
    }

    /// Runs `work` in the next batch; its result once that batch has committed.
    pub(crate) async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut C, &'a X) -> BoxFuture<'a, StoreResult<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Box::new(JobOf { work, reply }))
            .map_err(|_| StoreError::Closed)?;
        // The writer settles every write it took before it stops; a dropped reply means the
        // process is going down mid-batch, and the batch was not committed.
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn write_loop<C: Session, X: Memory>(
    mut conn: C,
    context: Arc<X>,
    stats: Arc<Stats>,
    mut rx: mpsc::UnboundedReceiver<Box<dyn Job<C, X>>>,
    mut close: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let mut batch: Vec<Box<dyn Job<C, X>>> = Vec::with_capacity(MAX_BATCH);
    let mut version = None;
    let mut done = None;
    loop {
        tokio::select! {
            // Writes first: a close waits for those already sent.
            biased;
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
                let alone = batch.len() == 1;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.writes.fetch_add(n as u64, Ordering::Relaxed);
                let started = Instant::now();
                version = settle(&mut conn, &*context, &stats, batch.drain(..), alone, version).await;
                stats.busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            Some(reply) = close.recv(), if done.is_none() => {
                // No new writes from here; the loop settles those queued, then ends.
                rx.close();
                done = Some(reply);
            }
        }
    }
    conn.close().await;
    if let Some(reply) = done {
        let _ = reply.send(());
    }
}

/// One transaction for a batch: each job in its savepoint (a job alone needs none: the
/// transaction is its savepoint), one commit, then every reply. Closing one savepoint and
/// opening the next is one round trip, and so is closing the last with the commit.
/// Returns the database's version as this batch left it, when it committed.
async fn settle<C: Session, X: Memory>(
    conn: &mut C,
    context: &X,
    stats: &Stats,
    jobs: impl Iterator<Item = Box<dyn Job<C, X>>>,
    alone: bool,
    seen: Option<i64>,
) -> Option<i64> {
    let mut jobs = jobs.peekable();
    // Holding the write lock once this returns: nobody else commits until the batch is done.
    let version = match conn.begin().await {
        Ok(v) => v,
        Err(e) => {
            context.forget();
            // In case the transaction opened and what followed failed.
            let _ = conn.execute("ROLLBACK").await;
            jobs.for_each(|j| j.fail(&e));
            return None;
        }
    };
    if version.is_none() || version != seen {
        context.forget();
    }
    let mut ran: Vec<Ran> = Vec::new();
    let mut broken = None;
    if !alone && let Err(e) = conn.execute("SAVEPOINT write").await {
        broken = Some(e);
    }
    while broken.is_none() {
        let Some(job) = jobs.next() else { break };
        let r = job.run(conn, context).await;
        let kept = r.kept;
        ran.push(r);
        if !kept {
            context.forget();
        }
        let last = jobs.peek().is_none();
        let close = match (alone, kept, last) {
            (true, true, _) => "COMMIT",
            (true, false, _) => "ROLLBACK",
            (false, true, true) => "RELEASE write; COMMIT",
            (false, false, true) => "ROLLBACK TO write; RELEASE write; COMMIT",
            (false, true, false) => "RELEASE write; SAVEPOINT write",
            (false, false, false) => "ROLLBACK TO write; RELEASE write; SAVEPOINT write",
        };
        let closing = Instant::now();
        let closed = conn.execute(close).await;
        if last {
            stats
                .commit_ns
                .fetch_add(closing.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        match closed {
            Ok(()) if last => {
                // Committed (or, for a job alone that failed, rolled back: nothing to keep).
                ran.into_iter().for_each(|r| (r.reply)(None));
                return version;
            }
            Ok(()) => {}
            Err(e) => broken = Some(e),
        }
    }
    let e = broken.unwrap_or_else(|| StoreError::database("a batch ended without a commit"));
    context.forget();
    tracing::warn!(error = %e, "a batch of writes could not be committed; none of it was kept");
    let _ = conn.execute("ROLLBACK").await;
    ran.into_iter().for_each(|r| (r.reply)(Some(&e)));
    jobs.for_each(|j| j.fail(&e));
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A SQLite connection that counts the transactions it opens.
    struct Counting {
        conn: Connection,
        begins: Arc<AtomicUsize>,
    }

    fn failed(e: rusqlite::Error) -> StoreError {
        StoreError::database(e.to_string())
    }

    impl Session for Counting {
        fn begin(&mut self) -> BoxFuture<'_, StoreResult<Option<i64>>> {
            self.begins.fetch_add(1, Ordering::SeqCst);
            let r = self.conn.execute_batch("BEGIN IMMEDIATE").map_err(failed);
            Box::pin(std::future::ready(r.map(|()| None)))
        }
        fn close(self) -> BoxFuture<'static, ()> {
            let _ = self.conn.close();
            Box::pin(std::future::ready(()))
        }
        fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, StoreResult<()>> {
            Box::pin(std::future::ready(
                self.conn.execute_batch(sql).map_err(failed),
            ))
        }
    }

    fn writer_on(conn: Connection) -> (Writer<Counting, ()>, Arc<AtomicUsize>) {
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (v TEXT NOT NULL)")
            .unwrap();
        let begins = Arc::new(AtomicUsize::new(0));
        let counting = Counting {
            conn,
            begins: begins.clone(),
        };
        let w = Writer::start_on_thread(counting, Arc::new(()), "test-writer").unwrap();
        (w, begins)
    }

    fn writer() -> (Writer<Counting, ()>, Arc<AtomicUsize>) {
        writer_on(Connection::open_in_memory().unwrap())
    }

    async fn insert(w: &Writer<Counting, ()>, v: &str, fail: bool) -> StoreResult<String> {
        let v = v.to_owned();
        w.run(move |c: &mut Counting, _: &()| {
            Box::pin(async move {
                c.conn
                    .execute("INSERT INTO t (v) VALUES (?)", [&v])
                    .map_err(failed)?;
                if fail {
                    return Err(StoreError::Corrupt(format!("{v} refused")));
                }
                Ok(v)
            })
        })
        .await
    }

    async fn values(w: &Writer<Counting, ()>) -> Vec<String> {
        w.run(|c: &mut Counting, _: &()| {
            Box::pin(async move {
                let mut stmt = c
                    .conn
                    .prepare("SELECT v FROM t ORDER BY rowid")
                    .map_err(failed)?;
                let rows = stmt.query_map([], |r| r.get(0)).map_err(failed)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(failed)
            })
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn writes_waiting_together_share_one_transaction_and_each_caller_gets_its_own_result() {
        let (w, begins) = writer();
        // A write that holds the writer until told, so the next twenty queue behind it.
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let first = w.run(move |_: &mut Counting, _: &()| {
            Box::pin(async move {
                let _ = started.send(());
                let _ = hold.recv();
                Ok(())
            })
        });
        let names: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
        let rest = async {
            running.await.unwrap();
            let queued = futures_util::future::join_all(names.iter().map(|n| insert(&w, n, false)));
            let let_go = async {
                // Long enough for the twenty to be queued.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                release.send(()).unwrap();
            };
            tokio::join!(queued, let_go).0
        };
        let (first, results) = tokio::join!(first, rest);
        first.unwrap();
        let got: Vec<String> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, names);
        assert_eq!(
            begins.load(Ordering::SeqCst),
            2,
            "one transaction for the first write, one for the twenty queued behind it"
        );
        assert_eq!(values(&w).await, names);
    }

    #[tokio::test]
    async fn a_failing_write_is_rolled_back_alone_and_its_neighbours_are_kept() {
        let (w, _) = writer();
        let (a, b, c) = tokio::join!(
            insert(&w, "a", false),
            insert(&w, "b", true),
            insert(&w, "c", false)
        );
        assert_eq!(a.unwrap(), "a");
        assert_eq!(
            b.unwrap_err().to_string(),
            "stored data is not what this version expects: b refused"
        );
        assert_eq!(c.unwrap(), "c");
        assert_eq!(values(&w).await, ["a", "c"]);
    }

    #[tokio::test]
    async fn a_failing_write_with_no_neighbours_leaves_nothing_behind() {
        let (w, _) = writer();
        assert!(insert(&w, "lonely", true).await.is_err());
        assert_eq!(insert(&w, "next", false).await.unwrap(), "next");
        assert_eq!(values(&w).await, ["next"]);
    }

    #[tokio::test]
    async fn a_write_that_panics_is_rolled_back_alone_and_the_writer_goes_on() {
        let (w, _) = writer();
        let boom = w.run(|c: &mut Counting, _: &()| {
            Box::pin(async move {
                c.conn
                    .execute("INSERT INTO t (v) VALUES ('boom')", [])
                    .map_err(failed)?;
                if c.begins.load(Ordering::SeqCst) > 0 {
                    panic!("a bug in a write");
                }
                Ok(())
            })
        });
        let (a, boom, c) = tokio::join!(insert(&w, "a", false), boom, insert(&w, "c", false));
        assert!(boom.is_err());
        assert_eq!((a.unwrap(), c.unwrap()), ("a".into(), "c".into()));
        assert_eq!(values(&w).await, ["a", "c"]);
        assert_eq!(insert(&w, "after", false).await.unwrap(), "after");
    }

    #[tokio::test]
    async fn closing_settles_the_writes_already_sent_and_refuses_later_ones() {
        let (w, _) = writer();
        // Sent before the close: settled, and the close waits for them.
        let (a, b, ()) = tokio::join!(insert(&w, "a", false), insert(&w, "b", false), w.close());
        assert_eq!((a.unwrap(), b.unwrap()), ("a".into(), "b".into()));
        let after = insert(&w, "after", false).await;
        assert!(matches!(after, Err(StoreError::Closed)), "{after:?}");
        // Closing again is harmless.
        w.close().await;
    }

    #[tokio::test]
    async fn a_caller_hears_of_its_write_only_once_it_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let (w, _) = writer_on(Connection::open(&path).unwrap());
        insert(&w, "kept", false).await.unwrap();
        // Another connection sees it at once: it was committed before the answer came.
        let other = Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row("SELECT COUNT(*) FROM t WHERE v = 'kept'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
