//! Storage behind narrow traits, one implementation per backend, chosen from `DATABASE_URL` at
//! start-up. Only the files of each backend import the database crate.

pub mod postgres;
pub mod sqlite;
mod tx;
mod writer;

use crate::core::audit::{
    AuditEntry, AuditEvent, AuditKey, ChainVerifier, Checkpoint, Verification,
};
use crate::core::digest::DigestFigures;
use crate::core::engine::{RunState, RunStatus, Transition};
use crate::core::event::{Actor, ConversationRef};
use crate::core::ids::{MessageKey, RunId};
use crate::core::message::OutMessage;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

/// Errors from the store. Callers add context; nothing here is shown to chat users verbatim.
/// The kind says what a caller can do about it; the database's own error stays attached as
/// the source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another write got there first (a unique key taken, a serialization failure): the same
    /// write may succeed when tried again.
    #[error("the database refused a conflicting write: {0}")]
    Conflict(#[source] Cause),
    /// The database could not be reached, or the connection was lost: try again later.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// Any other database failure: a bug, or a database in trouble.
    #[error("database error: {0}")]
    Database(#[source] Cause),
    #[error("stored data is not what this version expects: {0}")]
    Corrupt(String),
    /// The store's writer has stopped (the process is shutting down).
    #[error("the store is closed")]
    Closed,
}

/// The database's own error behind a [`StoreError`], shared by the callers of one batch.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

impl StoreError {
    /// A database failure of no particular kind, from a message of the store's own.
    pub fn database(message: impl Into<String>) -> Self {
        StoreError::Database(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
            message.into(),
        )))
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Conflict(_) | StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: String,
    pub event_id: String,
    pub conversation: ConversationRef,
    pub requested_by: Actor,
    pub inputs: Map<String, Value>,
    pub late: bool,
    pub title: String,
    /// The workflow file's path and text, kept with the run.
    pub file: String,
    pub definition: Arc<str>,
    /// The trigger's ledger entry, written first in the same transaction, also when the run
    /// exists already (the event was received again).
    pub received: Option<AuditEvent>,
}

/// The workflow text a run was started with.
#[derive(Debug, Clone)]
pub struct Definition {
    pub file: String,
    pub source: Arc<str>,
}

/// The pure transition function the engine hands to the store. It owns what it needs, since
/// the store's writer runs it inside the transaction of a batch.
pub type ApplyFn = Box<dyn FnOnce(&mut RunState, &Definition) -> Transition + Send>;

/// What `create_run` did.
#[derive(Debug, Clone)]
pub struct Created {
    pub run: RunId,
    /// False when a run already existed for the event id: nothing new was started.
    pub new: bool,
    pub transition: Transition,
}

/// One row of the run list.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: RunId,
    pub workflow: String,
    pub title: String,
    pub status: String,
    pub requested_by: String,
    pub platform: String,
    pub channel: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When the run was flagged as stalled, while it is.
    pub stalled_at: Option<DateTime<Utc>>,
}

/// One attempt of one step.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub step: String,
    pub attempt: u32,
    pub status: String,
    pub input: Value,
    pub detail: Value,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A pending approval, for the approvals page and the digest.
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    pub run: RunId,
    pub workflow: String,
    pub step: String,
    pub approvers: Vec<String>,
    pub summary: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Runs, steps, attempts, approvals and timers.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Creates a run for an inbound event and applies `start` to it in the same transaction.
    /// A second call with the same event id changes nothing and returns the first run.
    async fn create_run(
        &self,
        new: NewRun,
        now: DateTime<Utc>,
        start: ApplyFn,
    ) -> StoreResult<Created>;
    /// Loads a run, applies `f`, and writes the new state and every effect in one transaction
    /// (which may carry other callers' writes too; a failure of theirs does not undo this).
    /// `None` when the run does not exist. With `event_id`, the inbound event is recorded in
    /// the same transaction, and an event seen before changes nothing (an empty transition).
    async fn apply(
        &self,
        run: RunId,
        event_id: Option<&str>,
        f: ApplyFn,
    ) -> StoreResult<Option<Transition>>;
    async fn load_run(&self, run: RunId) -> StoreResult<Option<RunState>>;
    /// Runs flagged as stalled and not finished, longest stalled first.
    async fn stalled_runs(&self, limit: u32) -> StoreResult<Vec<RunSummary>>;
    async fn list_runs(
        &self,
        status: Option<RunStatus>,
        limit: u32,
    ) -> StoreResult<Vec<RunSummary>>;
    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRow>>;
    /// Attempts recorded as started and never ended: after a restart these were lost.
    async fn unfinished_attempts(&self) -> StoreResult<Vec<(RunId, String, u32)>>;
    /// Timers due by `now`: the run, the key and the instant each was set for.
    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(RunId, String, DateTime<Utc>)>>;
    /// The oldest pending approvals, at most `limit`, and how many there are in all.
    async fn pending_approvals(&self, limit: u32) -> StoreResult<(Vec<PendingApproval>, u64)>;
}

/// The state of an outbox entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxOp {
    Post,
    Edit,
}

/// An outbox entry ready for an adapter, with its references resolved.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub id: i64,
    pub run: Option<RunId>,
    pub key: MessageKey,
    pub op: OutboxOp,
    pub platform: String,
    pub channel: String,
    /// For a post in a thread: the key of the thread's root message.
    pub thread_key: Option<MessageKey>,
    /// For a post in a thread: the platform reference of the thread's root message. `None`
    /// while the root goes out ahead of it in the same pass (see `outbox_ready`).
    pub thread_ref: Option<String>,
    /// For an edit: the platform reference of the message to change.
    pub target_ref: Option<String>,
    pub message: OutMessage,
    /// Failed tries in a row (rate limits and pacing do not count).
    pub attempts: u32,
    /// Since when the entry has failed without a break, while it does.
    pub failing_since: Option<DateTime<Utc>>,
    /// Whether the run was told (a delivery alert) that this entry did not go through.
    pub alerted: bool,
    /// Goes out ahead of its conversation's queue: neither held back nor holding back.
    pub urgent: bool,
    /// A post only this person sees (a direct message).
    pub private_to: Option<String>,
}

/// What an outbox entry waits in line behind: its conversation, whose entries go out one
/// after another, or, for an urgent entry, nothing but itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    Conversation { platform: String, channel: String },
    Urgent(i64),
}

impl OutboxEntry {
    pub fn lane(&self) -> Lane {
        if self.urgent {
            Lane::Urgent(self.id)
        } else {
            Lane::Conversation {
                platform: self.platform.clone(),
                channel: self.channel.clone(),
            }
        }
    }
}

/// Every outgoing post and edit, persisted before delivery.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Entries due for delivery, oldest first: at most `per_lane` of each lane, none of the
    /// lanes in `busy` (a delivery is under way there). A conversation's entries stop at the
    /// first that cannot go yet, so a thread never goes out of order; a conversation that
    /// waits (rate-limited, its head not due) costs the others nothing, however deep its
    /// queue. A reply whose root (or an edit whose post) is ahead of it in the same lane is
    /// included without its reference: whoever delivers them in order has it by then.
    async fn outbox_ready(
        &self,
        now: DateTime<Utc>,
        per_lane: u32,
        busy: &HashSet<Lane>,
    ) -> StoreResult<Vec<OutboxEntry>>;
    /// Records the platform's reference: delivery is confirmed.
    async fn outbox_delivered(
        &self,
        id: i64,
        platform_ref: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Puts an entry off until `until` without counting a failed attempt (pacing).
    async fn outbox_defer(&self, id: i64, until: DateTime<Utc>) -> StoreResult<()>;
    /// Records a failure: retried at `retry_at` (and failing since now, unless it already
    /// was), or given up (with everything that depends on it) when `None`. Audited when given
    /// up.
    async fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Records that the run was told this entry did not go through, so it is told once and
    /// hears when it goes through after all.
    async fn outbox_alerted(&self, id: i64) -> StoreResult<()>;
    /// The platform reference of a delivered post.
    async fn message_ref(&self, key: &MessageKey) -> StoreResult<Option<String>>;
    /// The outbox rows of a run, for its page.
    async fn outbox_of_run(&self, run: RunId) -> StoreResult<Vec<OutboxRow>>;
    /// Posts and edits given up on, newest first, with their run and channel.
    async fn failed_deliveries(&self, limit: u32) -> StoreResult<Vec<FailedDelivery>>;
}

/// An outbox row as shown on a run's page.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub key: String,
    pub op: String,
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub platform_ref: Option<String>,
}

/// A post or edit the outbox gave up on.
#[derive(Debug, Clone, Serialize)]
pub struct FailedDelivery {
    pub run: Option<RunId>,
    pub key: String,
    pub platform: String,
    pub channel: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The ledger.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends events that belong to no run transaction (a refused trigger, a schedule firing).
    async fn audit_append(&self, events: Vec<AuditEvent>) -> StoreResult<()>;
    /// Entries after `after_seq`, in order.
    async fn audit_page(&self, after_seq: i64, limit: u32) -> StoreResult<Vec<AuditEntry>>;
    /// The newest entries, newest first, optionally of one run.
    async fn audit_recent(&self, run: Option<RunId>, limit: u32) -> StoreResult<Vec<AuditEntry>>;
    /// Figures for the digest: counts from the ledger, waiting approvals and stalled runs now.
    async fn digest_figures(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        stall_after: Duration,
    ) -> StoreResult<DigestFigures>;
}

/// Schedule bookkeeping.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// The last slot handled for a schedule; `None` before its first sighting.
    async fn schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
    ) -> StoreResult<Option<DateTime<Utc>>>;
    async fn set_schedule_cursor(
        &self,
        workflow: &str,
        key: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// One message in the console's chat.
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleMessage {
    pub id: i64,
    pub channel: String,
    pub thread_id: Option<i64>,
    pub author: String,
    pub is_bot: bool,
    pub message: OutMessage,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub replies: i64,
}

/// A message to add to the console's chat.
#[derive(Debug, Clone, Copy)]
pub struct ConsolePost<'a> {
    pub channel: &'a str,
    pub thread_id: Option<i64>,
    pub author: &'a str,
    pub is_bot: bool,
    pub message: &'a OutMessage,
    /// The outbox entry delivering it, when the bot posts.
    pub outbox_id: Option<i64>,
    /// The sender's own id for the message (the console's `client_id`): the same author
    /// posting the same id again gets the message already posted.
    pub client_id: Option<&'a str>,
}

/// An outbox entry the console delivers: a post, or an edit of an earlier message.
#[derive(Debug, Clone)]
pub struct ConsoleDelivery {
    pub outbox_id: i64,
    /// Who posts it (the bot).
    pub author: &'static str,
    pub key: MessageKey,
    pub op: OutboxOp,
    /// Where a post goes (a channel, or `@name` for a private post).
    pub channel: String,
    /// A post's thread, or an edit's message.
    pub about: Option<ConsoleRef>,
    pub message: OutMessage,
}

/// A console message, by id or as the post of an outbox entry delivered earlier in the same
/// batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleRef {
    Id(i64),
    Post(MessageKey),
}

/// The console platform's own chat history.
#[async_trait]
pub trait ConsoleStore: Send + Sync {
    /// Delivers outbox entries in order in one write: each post stored (once per outbox
    /// entry) or edit applied, and each recorded as delivered with its ledger entry. Stops at
    /// the first that cannot be delivered: one whose message does not exist ends the list
    /// with its reason; one about a post that is neither stored nor earlier in the batch ends
    /// it without a result (it is not due yet). The rest are not tried.
    async fn console_deliver(
        &self,
        batch: Vec<ConsoleDelivery>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Result<ConsoleMessage, String>>>;
    /// Posts a message; says whether it is new. With `outbox_id` (or `client_id`), posting
    /// the same outbox entry (or the author's same message) again returns the message already
    /// posted for it, and `false`. With `outbox_id`, the post delivers that outbox entry, and
    /// it is recorded as delivered (with its ledger entry) in the same write.
    async fn console_post(
        &self,
        post: ConsolePost<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<(ConsoleMessage, bool)>;
    /// Replaces a message's content. With `outbox_id`, the edit delivers that outbox entry,
    /// and it is recorded as delivered in the same write.
    async fn console_edit(
        &self,
        id: i64,
        message: &OutMessage,
        outbox_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ConsoleMessage>>;
    async fn console_get(&self, id: i64) -> StoreResult<Option<ConsoleMessage>>;
    /// The newest top-level messages of a channel, oldest first.
    async fn console_channel(&self, channel: &str, limit: u32) -> StoreResult<Vec<ConsoleMessage>>;
    /// Every channel that has a message, for channels the bot posted to without them being
    /// configured (a channel a run chose, such as a ticket queue).
    async fn console_channel_names(&self) -> StoreResult<Vec<String>>;
    /// Of `channels`, those `author` has written in: the console's members of a channel.
    async fn console_member_of(
        &self,
        author: &str,
        channels: &[String],
    ) -> StoreResult<Vec<String>>;
    /// A thread: its root then the replies, oldest first.
    async fn console_thread(&self, root: i64) -> StoreResult<Vec<ConsoleMessage>>;
    /// The ids of console messages other replicas write or change, as their writes commit,
    /// so browsers connected to this one see them live; `None` where no other process
    /// writes (SQLite). The stream ends when the receiver is dropped.
    async fn console_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<i64>>> {
        None
    }
}

/// One entry of the agents' shared memory, with who wrote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryEntry {
    pub namespace: String,
    pub key: String,
    pub value: Value,
    pub run: Option<RunId>,
    pub step: Option<String>,
    pub agent: Option<String>,
    pub written_at: DateTime<Utc>,
}

/// What agent steps keep: their conversation turn by turn, and the shared memory.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// The turns an agent step has completed so far, in order.
    async fn agent_turns(&self, run: RunId, step: &str) -> StoreResult<Vec<Value>>;
    /// Records a completed turn as number `seq`. Writing the same number twice keeps the
    /// first: a turn repeated after a crash is the same turn.
    async fn agent_turn_append(
        &self,
        run: RunId,
        step: &str,
        seq: u32,
        message: &Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Forgets a step's conversation, so its next attempt starts afresh.
    async fn agent_turns_clear(&self, run: RunId, step: &str) -> StoreResult<()>;
    /// Tokens agents have spent in a run so far (in and out, every step).
    async fn agent_tokens(&self, run: RunId) -> StoreResult<u64>;
    async fn memory_read(&self, namespace: &str, key: &str) -> StoreResult<Option<MemoryEntry>>;
    /// The newest entries of a namespace, or of every namespace, newest first.
    async fn memory_list(
        &self,
        namespace: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<MemoryEntry>>;
    async fn memory_write(&self, entry: &MemoryEntry) -> StoreResult<()>;
}

/// A named lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub until: DateTime<Utc>,
}

/// How replicas share the work of one database: each running attempt is held by the replica
/// running it, each outbox lane and the Discord gateway by a named lease, each for as long
/// as its holder renews it. Whatever a replica holds no other touches; what it stops
/// renewing another takes over.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the leases named for `holder` until `until`: each one free (never held, or let
    /// go), held by `holder` already, or (with `steal`) lapsed by `now` in another holder's
    /// hands. Returns every name asked for as it stands afterwards (the holder of each, and
    /// until when), so a replica knows whose the others are.
    async fn lease_claim(
        &self,
        names: &[String],
        holder: &str,
        steal: bool,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<Vec<Lease>>;
    /// Extends `holder`'s leases among `names`, and those of `attempts` it holds, until
    /// `until`. Returns the names it still holds (a name missing was taken over, or is being
    /// taken) and those of `attempts` another replica took over. Attempts it holds but no
    /// longer runs are left to lapse, so another takes them over.
    async fn lease_renew(
        &self,
        names: &[String],
        attempts: &[AttemptKey],
        holder: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<(Vec<String>, Vec<AttemptKey>)>;
    /// Gives up everything `holder` holds, so other replicas take it over at once: its
    /// leases (free; one with something left for the next holder keeps it) and its running
    /// attempts (lapsed: another runs them again).
    async fn lease_release(&self, holder: &str) -> StoreResult<()>;
    /// What the holder of a lease left for the next one.
    async fn lease_data(&self, name: &str) -> StoreResult<Option<String>>;
    /// Leaves `data` with a lease `holder` holds; false when it does not hold it.
    async fn lease_set_data(&self, name: &str, holder: &str, data: &str) -> StoreResult<bool>;
    /// Takes over running attempts whose lease lapsed by `now` (with `mine`, also those held
    /// under `holder`'s own name: its previous life, at start-up) for `holder` until
    /// `until`, at most `limit`, and returns them: each is taken by one replica, however many
    /// look at once. The one that takes an attempt reports it lost to its run, which runs it
    /// again (unless its own workers still run it: then taking it only renewed it).
    async fn attempts_take_over(
        &self,
        holder: &str,
        mine: bool,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<AttemptKey>>;
}

/// An attempt: its run, step and number.
pub type AttemptKey = (RunId, String, u32);

/// Figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    pub runs_by_status: Vec<(String, i64)>,
    pub approvals_pending: i64,
    pub outbox_pending: i64,
    pub outbox_failed: i64,
    /// Messages a delivery alert was raised about that have not gone through since.
    pub outbox_alerted: i64,
    /// Runs whose root message is not in chat.
    pub runs_unreachable: i64,
    pub audit_entries: i64,
    pub writer: WriterMetrics,
}

/// What the store's writer has done since start-up: how many transactions (batches) it
/// committed, how many writes they carried, and where its time went.
#[derive(Debug, Clone, Default)]
pub struct WriterMetrics {
    pub batches: u64,
    pub writes: u64,
    pub busy_seconds: f64,
    pub commit_seconds: f64,
}

/// Everything, for the app to hold as one `Arc<dyn Store>`.
#[async_trait]
pub trait Store:
    RunStore + OutboxStore + AuditStore + ScheduleStore + ConsoleStore + AgentStore + LeaseStore
{
    async fn metrics(&self) -> StoreResult<StoreMetrics>;
    /// What the store takes out of everything it writes; the engine applies it to what
    /// arrives from outside before the state machine sees it, so both agree.
    fn redactor(&self) -> &crate::core::audit::Redactor;
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
    /// Settles the writes already sent, refuses later ones and closes the database, so a
    /// stopped Baton leaves it tidy (SQLite: its log checkpointed into the file).
    async fn close(&self);
}

/// Walks the whole ledger in pages: every link, hash and (with `key`) signature, then the
/// checkpoints seen before (`expect`), which catch a ledger cut short or rewritten from some
/// entry on.
pub async fn verify_ledger(
    store: &dyn AuditStore,
    key: Option<AuditKey>,
    expect: Vec<Checkpoint>,
) -> StoreResult<Verification> {
    let mut v = ChainVerifier::new(key, expect);
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        page.iter().for_each(|e| v.push(e));
    }
    Ok(v.finish())
}

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A committed write survives a power cut or an operating-system crash: every commit
    /// reaches the disk before anyone hears of it.
    #[default]
    Full,
    /// A committed write survives Baton being killed, but the last moments of commits may be
    /// lost in a power cut (SQLite: `synchronous=NORMAL` in WAL mode).
    Relaxed,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Durability::Full),
            "relaxed" => Ok(Durability::Relaxed),
            _ => Err("is neither full nor relaxed".into()),
        }
    }
}

/// How a store is opened.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Takes secrets out of everything written.
    pub redactor: crate::core::audit::Redactor,
    /// Signs ledger entries, when there is one.
    pub audit_key: Option<AuditKey>,
    pub durability: Durability,
    /// This process serves (delivers the outbox, fires timers and schedules), rather than
    /// being the command line reading or changing a run. On SQLite only one process may
    /// serve a database: two would each deliver every queued post.
    pub serving: bool,
    /// Who this process is among the replicas sharing the database.
    pub replica: Replica,
}

/// A process among those sharing one database, and how long what it claims (the attempts it
/// runs, the outbox lanes it delivers, the Discord gateway) stays its own without renewal.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Unique among the replicas, and kept across restarts when it can be: a replica that
    /// starts again under its name takes back what its previous life held at once, rather
    /// than after the lease.
    pub name: String,
    pub lease: Duration,
}

impl Default for Replica {
    fn default() -> Self {
        Self {
            name: "baton".into(),
            lease: Duration::seconds(30),
        }
    }
}

/// Opens the store named by `url` and brings its schema up to date.
pub async fn open(url: &str, options: Options) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::open(url, options).await?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = postgres::PostgresStore::open(url, options).await?;
        Ok(Arc::new(store))
    } else {
        anyhow::bail!("DATABASE_URL: `{url}` is neither a sqlite: nor a postgres: URL")
    }
}
