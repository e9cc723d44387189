//! The engine's driver: applies commands through the store (one transaction each), then carries
//! out the effects: jobs go to the worker pool, posts to the outbox deliverer. Background loops
//! fire timers and schedule slots. A run that waits holds no task here: only its rows.

mod agent;
mod background;
mod inbound;
mod leases;
mod workers;

pub use inbound::Response;

use crate::adapters::Platform;
use crate::core::audit::{AuditEvent, AuditKind};
use crate::core::clock::Clock;
use crate::core::engine::{self as machine, Command, Job, Transition};
use crate::core::event::{Actor, ConversationRef};
use crate::core::ids::RunId;
use crate::core::template;
use crate::core::tools::ToolCatalog;
use crate::core::workflow::{Workflow, WorkflowSet, parse_workflow};
use crate::metrics::Metrics;
use crate::store::{Definition, NewRun, Store, StoreError};
use crate::tools::ToolBox;
use anyhow::Context as _;
use chrono::Duration;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};

/// Engine settings, from `crate::config`.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Worker tasks running step attempts at once.
    pub workers: usize,
    /// How often timers, schedules and the outbox are polled when nothing wakes them.
    pub poll_interval: std::time::Duration,
    /// A running run with no change for this long is listed as stalled.
    pub stall_after: Duration,
    /// The console's address people use, for `{{ baton.url }}` in templates and links in chat.
    pub base_url: String,
    /// The address Baton reaches itself at, for `{{ baton.local_url }}`.
    pub local_url: String,
    /// The platform schedules post on when their channel names none.
    pub default_platform: String,
    /// How long shutdown waits for running steps.
    pub shutdown_grace: std::time::Duration,
    /// How long a message may keep failing before its run is told (rate limits never count).
    pub delivery_alert_after: Duration,
    /// This process among the replicas sharing the database.
    pub replica: crate::store::Replica,
}

/// Errors the engine reports to adapters; mapped to replies in one place (`crate::http::error`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unexpected(#[from] anyhow::Error),
}

/// What happened to a start request.
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    Started(RunId),
    /// The same inbound event already started this run.
    Duplicate(RunId),
    /// The actor may not start this workflow here; the notice says so.
    Refused(String),
}

/// A request to start a run.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub workflow: Arc<Workflow>,
    pub inputs: Map<String, Value>,
    pub actor: Actor,
    pub conversation: ConversationRef,
    pub event_id: String,
    pub late: bool,
    /// The ledger entry of the trigger that asked for the run, written in the same
    /// transaction as the run (or as its refusal).
    pub received: Option<AuditEvent>,
}

/// The driver.
pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    workflows: Arc<WorkflowSet>,
    catalog: Arc<ToolCatalog>,
    tools: Arc<ToolBox>,
    models: Arc<crate::agents::Models>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: EngineSettings,
    pub(crate) metrics: Arc<Metrics>,
    platforms: HashMap<&'static str, Arc<dyn Platform>>,
    jobs: mpsc::UnboundedSender<Job>,
    job_rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    pub(crate) outbox_wake: Notify,
    /// Lanes with a delivery under way (see `background::outbox_loop`).
    in_flight: Mutex<std::collections::HashSet<crate::store::Lane>>,
    /// What this replica holds among those sharing the database (see `leases`).
    held: Mutex<leases::Held>,
    /// Parsed workflow definitions by the hash of their text, so each run's own definition is
    /// parsed once, not on every command.
    definitions: Mutex<HashMap<[u8; 32], Arc<Workflow>>>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        workflows: Arc<WorkflowSet>,
        catalog: Arc<ToolCatalog>,
        tools: Arc<ToolBox>,
        models: Arc<crate::agents::Models>,
        clock: Arc<dyn Clock>,
        settings: EngineSettings,
        metrics: Arc<Metrics>,
        platforms: Vec<Arc<dyn Platform>>,
    ) -> Arc<Self> {
        let (jobs, job_rx) = mpsc::unbounded_channel();
        let mut definitions = HashMap::new();
        for wf in workflows.iter() {
            definitions.insert(hash_of(&wf.source), wf.clone());
        }
        Arc::new(Self {
            store,
            workflows,
            catalog,
            tools,
            models,
            clock,
            settings,
            metrics,
            platforms: platforms.into_iter().map(|p| (p.name(), p)).collect(),
            jobs,
            job_rx: Mutex::new(Some(job_rx)),
            outbox_wake: Notify::new(),
            in_flight: Mutex::default(),
            held: Mutex::default(),
            definitions: Mutex::new(definitions),
        })
    }

    pub fn workflows(&self) -> &WorkflowSet {
        &self.workflows
    }

    /// Channels whose members approve some step (`channel:NAME` approvers), so a platform
    /// knows whose membership to look up when someone clicks.
    pub fn approver_channels(&self) -> std::collections::BTreeSet<String> {
        use crate::core::workflow::StepKind;
        let mut out = std::collections::BTreeSet::new();
        for wf in self.workflows.iter() {
            for step in &wf.steps {
                let spec = match &step.kind {
                    StepKind::Approval(spec) => spec,
                    StepKind::Agent {
                        approval: Some(spec),
                        ..
                    } => spec,
                    _ => continue,
                };
                for a in spec.approvers.iter().chain(&spec.escalate_to.approvers) {
                    if let Some((_, name)) = a.split_once("channel:") {
                        out.insert(name.to_owned());
                    }
                }
            }
        }
        out
    }

    /// An approval's payload as it stands, for a platform opening an Edit dialog.
    pub async fn approval_content(&self, run: RunId, step: &str) -> Option<String> {
        let state = self.store.load_run(run).await.ok()??;
        state.approvals.get(step)?.content.clone()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What the state machine reads besides a run's rows, for a run of `workflow` at `now`.
    fn context<'a>(
        &'a self,
        workflow: &'a Workflow,
        now: chrono::DateTime<chrono::Utc>,
    ) -> machine::Context<'a> {
        machine::Context {
            workflow,
            tools: &self.catalog,
            now,
            base_url: &self.settings.base_url,
            local_url: &self.settings.local_url,
            stall_after: self.settings.stall_after,
        }
    }

    /// The workflow a run was started with, parsed from its stored text.
    fn definition(&self, def: &Definition) -> Result<Arc<Workflow>, String> {
        let key = hash_of(&def.source);
        if let Some(wf) = self.definitions.lock().expect("definitions lock").get(&key) {
            return Ok(wf.clone());
        }
        let (wf, diags) = parse_workflow(Path::new(&def.file), &def.source, &self.catalog);
        let wf = Arc::new(wf.ok_or_else(|| {
            let errors: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            format!(
                "the run's workflow definition no longer parses: {}",
                errors.join("; ")
            )
        })?);
        self.definitions
            .lock()
            .expect("definitions lock")
            .insert(key, wf.clone());
        Ok(wf)
    }

    /// Starts a run, unless the actor may not or the event already started one.
    #[tracing::instrument(skip_all, fields(workflow = %req.workflow.name, event_id = %req.event_id))]
    pub async fn start_run(
        self: &Arc<Self>,
        req: StartRequest,
    ) -> Result<StartOutcome, EngineError> {
        let now = self.clock.now();
        let mut req = req;
        // What a person typed may hold a secret too; the run never keeps it.
        let mut inputs = Value::Object(std::mem::take(&mut req.inputs));
        self.store.redactor().redact_values(&mut inputs);
        if let Value::Object(m) = inputs {
            req.inputs = m;
        }
        let wf = req.workflow.clone();
        if !wf.may_start(&req.actor, &req.conversation.channel) {
            let ev = AuditEvent::new(now, AuditKind::TriggerRefused, None, json!({"workflow": wf.name, "channel": req.conversation.channel, "event_id": req.event_id}))
                .actor(&req.actor);
            let events = req.received.take().into_iter().chain([ev]).collect();
            self.store.audit_append(events).await?;
            let how = wf
                .slash()
                .map(|s| format!("/{}", s.command))
                .unwrap_or_else(|| wf.name.clone());
            return Ok(StartOutcome::Refused(format!(
                "You are not allowed to start {how} here."
            )));
        }
        let title_ctx = json!({"input": req.inputs, "run": {"started_by": req.actor.display, "channel": req.conversation.channel}, "trigger": {"late": req.late}, "baton": {"url": self.settings.base_url, "local_url": self.settings.local_url}});
        let title = match &wf.title {
            Some(t) => template::render(t, &title_ctx).unwrap_or_else(|_| wf.description.clone()),
            None if !wf.description.is_empty() => wf.description.clone(),
            None => wf.name.clone(),
        };
        let new = NewRun {
            workflow: wf.name.clone(),
            event_id: req.event_id.clone(),
            conversation: req.conversation.clone(),
            requested_by: req.actor.clone(),
            inputs: req.inputs.clone(),
            late: req.late,
            title,
            file: wf.file.display().to_string(),
            definition: wf.source.clone(),
            received: req.received.take(),
        };
        let created = conflicts_retried(|| {
            let (engine, wf) = (self.clone(), wf.clone());
            self.store.create_run(
                new.clone(),
                now,
                Box::new(move |state, _def| machine::start(state, &engine.context(&wf, now))),
            )
        })
        .await?;
        if !created.new {
            return Ok(StartOutcome::Duplicate(created.run));
        }
        tracing::info!(run = %created.run, "run started");
        self.carry_out(created.transition);
        Ok(StartOutcome::Started(created.run))
    }

    /// Applies a command to a run and carries out what it asks for. Returns the private notice
    /// for whoever sent it, if any.
    pub async fn submit(
        self: &Arc<Self>,
        run: RunId,
        cmd: Command,
    ) -> Result<Option<String>, EngineError> {
        self.submit_event(run, None, cmd).await
    }

    /// Like [`Engine::submit`], for a command caused by an inbound event (a click): the event
    /// id is recorded with the change, and a redelivered event changes nothing.
    #[tracing::instrument(skip_all, fields(run_id = %run))]
    pub async fn submit_event(
        self: &Arc<Self>,
        run: RunId,
        event_id: Option<&str>,
        cmd: Command,
    ) -> Result<Option<String>, EngineError> {
        let now = self.clock.now();
        let cmd = cmd.redacted(self.store.redactor());
        let transition = conflicts_retried(|| {
            let (engine, cmd) = (self.clone(), cmd.clone());
            self.store.apply(
                run,
                event_id,
                Box::new(move |state, def| match engine.definition(def) {
                    Ok(wf) => machine::apply(state, cmd, &engine.context(&wf, now)),
                    Err(e) => {
                        tracing::error!(error = %e, "a run's workflow does not parse; the run fails");
                        machine::abandon(state, &e, now)
                    }
                }),
            )
        })
        .await?;
        let Some(transition) = transition else {
            return Ok(Some(format!("There is no run {run}.")));
        };
        let notice = transition.notice.clone();
        self.carry_out(transition);
        Ok(notice)
    }

    /// Hands jobs to the workers and wakes the outbox. Everything here was persisted by the
    /// transaction that produced it, so a crash between commit and this call loses nothing:
    /// recovery re-runs the attempts and the outbox is read from the store.
    fn carry_out(&self, t: Transition) {
        for job in t.jobs() {
            let key = (job.run, job.step.clone(), job.attempt);
            self.hold(key.clone());
            if self.jobs.send(job.clone()).is_err() {
                // Not renewed, its lease lapses and another replica (or this one's next
                // start) runs it.
                self.let_go(&key);
                tracing::warn!(run = %job.run, step = %job.step, "worker pool is shut down; the attempt runs after restart");
            }
        }
        self.outbox_wake.notify_one();
    }

    /// Re-runs attempts that were in flight when this replica last stopped, and those of
    /// replicas that stopped renewing theirs.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = self
                .take_over(true)
                .await
                .context("taking over attempts interrupted by a stop")?;
            total += n;
            if n < leases::TAKE_OVER_BATCH as usize {
                return Ok(total);
            }
        }
    }
}

/// How long a write the engine cannot do without (a step's result, a tool call's ledger
/// entry, a delivery's record, an event the platform was told arrived) is tried again while
/// the database is out of reach (restarting, failing over), before it is given up.
const DURABLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);
/// Longest pause between two tries of such a write: well within a lease, so a delivery is
/// recorded before another replica may take its conversation over.
const DURABLE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// An error that may go away when the same thing is tried again later.
pub(crate) trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

impl Transient for EngineError {
    fn is_transient(&self) -> bool {
        matches!(self, EngineError::Store(e) if e.is_transient())
    }
}

/// Does `write` until it goes through or fails for good, waiting longer between tries (up to
/// `DURABLE_BACKOFF`) while the database is out of reach, for up to `DURABLE_PATIENCE`.
pub(crate) async fn durably<T, E, F, Fut>(what: &str, mut write: F) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let give_up = std::time::Instant::now() + DURABLE_PATIENCE;
    let mut wait = std::time::Duration::from_millis(100);
    loop {
        match write().await {
            Err(e) if e.is_transient() && std::time::Instant::now() + wait < give_up => {
                tracing::warn!(error = %e, "could not record {what}; trying again shortly");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(DURABLE_BACKOFF);
            }
            other => return other,
        }
    }
}

/// How often a change to a run is tried when another write got in its way.
const CONFLICT_TRIES: u32 = 3;

/// Runs a store write again when it lost a conflict (replicas changing the same run at the
/// same moment may deadlock, and the database then refuses one of them): the next try reads
/// the run as the other write left it.
async fn conflicts_retried<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 1;
    loop {
        match write().await {
            Err(StoreError::Conflict(cause)) if tries < CONFLICT_TRIES => {
                tracing::debug!(error = %cause, "a write lost a conflict; trying again");
                tries += 1;
            }
            other => return other,
        }
    }
}

fn hash_of(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

pub use background::Background;
