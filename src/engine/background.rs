//! The loops that wake runs up: due timers, schedule slots, and outbox delivery.

use super::{Engine, StartOutcome, StartRequest};
use crate::adapters::DeliveryError;
use crate::core::audit::{AuditEvent, AuditKind};
use crate::core::engine::Command;
use crate::core::event::{Actor, ConversationRef};
use crate::core::workflow::Trigger;
use crate::store::{Lane, OutboxEntry, OutboxOp};
use chrono::Duration;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long a message may keep failing (network trouble, 5xx: never rate limits) before it is
/// given up and reported as failed for good.
const GIVE_UP_AFTER_HOURS: i64 = 24;
/// Longest pause between two tries of a message that keeps failing, unless the platform asks
/// for a longer one.
const MAX_BACKOFF_SECONDS: i64 = 300;
/// Shortest wait before an entry a platform put off is tried again.
const MIN_WAIT_MS: i64 = 100;
/// Longest wait a platform may ask for before the next try.
const MAX_RETRY_WAIT_SECONDS: i64 = 3600;
/// Most entries of one lane handed to its delivery at once (the console writes them all in
/// one transaction; chat platforms take them one after another).
const LANE_BATCH: u32 = 100;

/// A slot handled within this long of its time is on time; later, it is marked late.
const LATE_AFTER_SECONDS: i64 = 60;

/// The running background tasks, stopped together.
pub struct Background {
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    loops: Vec<JoinHandle<()>>,
    outbox: Option<JoinHandle<()>>,
    engine: Arc<Engine>,
}

impl Engine {
    /// Recovers interrupted attempts, then starts the workers and the loops.
    pub async fn start_background(self: &Arc<Self>) -> anyhow::Result<Background> {
        let (tx, rx) = watch::channel(false);
        let workers = self.spawn_workers(rx.clone());
        let recovered = self.recover().await?;
        if recovered > 0 {
            tracing::info!(
                attempts = recovered,
                "resumed runs interrupted by the last stop"
            );
        }
        // The clock is claimed before the loops start, so the first look at the schedules
        // (where slots count from) is taken at start-up by whoever holds it.
        self.renew().await;
        let loops = vec![
            tokio::spawn(self.clone().timer_loop(rx.clone())),
            tokio::spawn(self.clone().schedule_loop(rx.clone())),
            tokio::spawn(self.clone().lease_loop(rx.clone())),
        ];
        let outbox = Some(tokio::spawn(self.clone().outbox_loop(rx)));
        Ok(Background {
            shutdown: tx,
            workers,
            loops,
            outbox,
            engine: self.clone(),
        })
    }

    /// Waits for the poll interval, a clock change, new outbox work, or shutdown.
    async fn pause(&self, shutdown: &mut watch::Receiver<bool>, wake_on_outbox: bool) {
        let changed = self.clock.changed();
        tokio::select! {
            _ = tokio::time::sleep(self.settings.poll_interval) => {}
            _ = changed.notified() => {}
            _ = self.outbox_wake.notified(), if wake_on_outbox => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }

    /// Fires due timers, on the replica holding the clock (a timer acts once either way:
    /// the run's state says whether it is still set).
    async fn timer_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if !self.holds_clock() {
                self.pause(&mut shutdown, false).await;
                continue;
            }
            match self.store.due_timers(self.clock.now(), 200).await {
                Ok(due) => {
                    for (run, key, at) in due {
                        if let Err(e) = self
                            .submit(
                                run,
                                Command::TimerFired {
                                    key: key.clone(),
                                    due: at,
                                },
                            )
                            .await
                        {
                            tracing::warn!(run = %run, timer = %key, error = %e, "could not fire a timer; trying again");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not read due timers"),
            }
            self.pause(&mut shutdown, false).await;
        }
    }

    /// Fires schedule slots, on the replica holding the clock (a slot starts one run either
    /// way: the slot is in the run's event id).
    async fn schedule_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if !self.holds_clock() {
                self.pause(&mut shutdown, false).await;
                continue;
            }
            if let Err(e) = self.schedule_tick().await {
                tracing::warn!(error = %e, "schedule check failed; trying again");
            }
            self.pause(&mut shutdown, false).await;
        }
    }

    /// Fires each schedule's latest due slot once. A slot missed while Baton was down fires
    /// once at the next tick, marked late; older missed slots are not replayed one by one.
    pub async fn schedule_tick(self: &Arc<Self>) -> anyhow::Result<()> {
        for wf in self.workflows.iter() {
            for t in &wf.triggers {
                let Trigger::Schedule(s) = t else { continue };
                let now = self.clock.now();
                let Some(cursor) = self.store.schedule_cursor(&wf.name, &s.key).await? else {
                    // First sighting: slots count from now on.
                    self.store
                        .set_schedule_cursor(&wf.name, &s.key, now)
                        .await?;
                    continue;
                };
                let Some(slot) = s.latest_slot(cursor, now) else {
                    continue;
                };
                let late = now - slot > Duration::seconds(LATE_AFTER_SECONDS);
                let mut inputs = wf.inputs.clone();
                inputs.extend(s.inputs.clone());
                inputs.insert("slot".into(), Value::String(slot.to_rfc3339()));
                inputs.insert("text".into(), Value::String(String::new()));
                let req = StartRequest {
                    workflow: wf.clone(),
                    inputs,
                    actor: Actor::scheduler(),
                    conversation: ConversationRef {
                        platform: self.settings.default_platform.clone(),
                        channel: s.channel.clone(),
                        thread: None,
                    },
                    // The slot is in the event id, so the run for a slot is created once, even
                    // if this tick is repeated after a crash.
                    event_id: format!("schedule:{}:{}:{}", wf.name, s.key, slot.timestamp()),
                    late,
                    received: None,
                };
                let outcome = self.start_run(req).await?;
                if let StartOutcome::Started(run) = outcome {
                    let ev = AuditEvent::new(
                        now,
                        AuditKind::ScheduleFired,
                        Some(run),
                        json!({"workflow": wf.name, "schedule": s.key, "slot": slot, "late": late}),
                    );
                    self.store.audit_append(vec![ev]).await?;
                    tracing::info!(workflow = %wf.name, %slot, late, run = %run, "schedule slot fired");
                }
                self.store
                    .set_schedule_cursor(&wf.name, &s.key, slot)
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts a delivery in every lane that has something ready and no delivery under way,
    /// without waiting for any: a conversation that is slow (a platform taking its time to
    /// answer) or waiting (rate-limited) holds up no other. A lane that finishes makes the
    /// loop look again, as does new work.
    async fn outbox_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut lanes = JoinSet::new();
        loop {
            let started = self.dispatch(&mut lanes).await;
            if *shutdown.borrow() {
                break;
            }
            if started == 0 {
                tokio::select! {
                    Some(_) = lanes.join_next(), if !lanes.is_empty() => {}
                    () = self.pause(&mut shutdown, true) => {}
                }
            }
            while lanes.try_join_next().is_some() {}
        }
        // Deliveries under way finish and are recorded before the outbox is read again.
        while lanes.join_next().await.is_some() {}
    }

    /// Delivers what is ready now, every lane side by side, and waits for all of them;
    /// returns how many entries were tried. (The running loop does not wait: see
    /// `outbox_loop`.)
    ///
    /// A rate limit or the platform's pacing puts an entry off without counting a failed try.
    /// Other transient trouble is tried again with backoff, and the run is told once it has
    /// lasted past `delivery_alert_after`; a permanent refusal is reported at once. When a
    /// message the run was told about goes through after all, the run hears that too.
    pub async fn deliver_ready(self: &Arc<Self>) -> usize {
        let mut lanes = JoinSet::new();
        self.dispatch(&mut lanes).await;
        let mut tried = 0;
        while let Some(n) = lanes.join_next().await {
            tried += n.unwrap_or(0);
        }
        tried
    }

    /// Reads what is ready in lanes with no delivery under way and starts one task per lane;
    /// returns how many it started. A lane is under way until its deliveries are recorded,
    /// so nothing is read (and sent) twice.
    async fn dispatch(self: &Arc<Self>, lanes: &mut JoinSet<usize>) -> usize {
        let mut busy = self.in_flight.lock().expect("lanes lock").clone();
        busy.extend(self.lanes_of_others());
        let entries = match self
            .store
            .outbox_ready(self.clock.now(), LANE_BATCH, &busy)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the outbox");
                return 0;
            }
        };
        let mut ready: Vec<(Lane, Vec<OutboxEntry>)> = Vec::new();
        for entry in entries {
            let lane = entry.lane();
            match ready.iter_mut().find(|(l, _)| *l == lane) {
                Some((_, queue)) => queue.push(entry),
                None => ready.push((lane, vec![entry])),
            }
        }
        // A conversation goes out from one replica at a time.
        let ours = self
            .claim_lanes(ready.iter().map(|(lane, _)| lane.clone()).collect())
            .await;
        ready.retain(|(lane, _)| ours.contains(lane));
        let started = ready.len();
        for (lane, queue) in ready {
            // Taken before the task starts, so the next read already passes it by.
            self.in_flight
                .lock()
                .expect("lanes lock")
                .insert(lane.clone());
            let engine = self.clone();
            lanes.spawn(async move {
                let _free = Underway {
                    engine: &engine,
                    lane,
                };
                let (tried, recording) = engine.deliver_lane(queue).await;
                for handle in recording {
                    let _ = handle.await;
                }
                tried
            });
        }
        started
    }

    /// Delivers one conversation's ready entries in order, up to the first that does not go
    /// out (which holds back the rest, so a thread never goes out of order). A platform that
    /// delivers a batch at once (the console: one write for the lot) gets the whole lane;
    /// others get one entry at a time, each reply or edit with the reference of the post it
    /// depends on when that went out earlier in the lane. Deliveries are recorded without
    /// waiting, so the next message goes out meanwhile and the records of many conversations
    /// share a commit; returns how many were tried, and the recording tasks.
    async fn deliver_lane(
        self: &Arc<Self>,
        lane: Vec<OutboxEntry>,
    ) -> (usize, Vec<JoinHandle<()>>) {
        let mut recording = Vec::new();
        let mut tried = 0;
        let platform = lane
            .first()
            .and_then(|e| self.platforms.get(e.platform.as_str()))
            .cloned();
        if let Some(p) = &platform
            && let Some(results) = p.deliver_all(&lane).await
        {
            for (entry, result) in lane.into_iter().zip(results) {
                tried += 1;
                if !self.settle_delivery(entry, result, &mut recording).await {
                    break;
                }
            }
            return (tried, recording);
        }
        // References of the posts this lane delivered, for the replies and edits behind them.
        let mut posted: std::collections::HashMap<String, String> = Default::default();
        for mut entry in lane {
            // A lane this replica can no longer renew (the database is out of reach) may soon
            // be another's: nothing more goes out from here, so nothing goes out twice.
            if !self.holds_lane(&entry.lane()) {
                break;
            }
            if let (Some(root), None) = (&entry.thread_key, &entry.thread_ref) {
                entry.thread_ref = posted.get(&root.0).cloned();
            }
            if entry.op == OutboxOp::Edit && entry.target_ref.is_none() {
                entry.target_ref = posted.get(&entry.key.0).cloned();
            }
            let unresolved = (entry.thread_key.is_some() && entry.thread_ref.is_none())
                || (entry.op == OutboxOp::Edit && entry.target_ref.is_none());
            if unresolved {
                // What it depends on did not go out in this pass; the next pass has it.
                break;
            }
            tried += 1;
            let result = match &platform {
                Some(p) => p.deliver(&entry).await,
                None => Err(DeliveryError::Permanent(format!(
                    "no `{}` platform is configured",
                    entry.platform
                ))),
            };
            if let (Ok(reference), OutboxOp::Post) = (&result, entry.op) {
                posted.insert(entry.key.0.clone(), reference.clone());
            }
            if !self.settle_delivery(entry, result, &mut recording).await {
                break;
            }
        }
        (tried, recording)
    }

    /// Acts on how one delivery went; says whether the lane goes on to the next entry.
    async fn settle_delivery(
        self: &Arc<Self>,
        entry: OutboxEntry,
        result: Result<String, DeliveryError>,
        recording: &mut Vec<JoinHandle<()>>,
    ) -> bool {
        let now = self.clock.now();
        match result {
            Ok(reference) => {
                let engine = self.clone();
                recording.push(tokio::spawn(async move {
                    engine.delivered(&entry, &reference, now).await
                }));
                return true;
            }
            Err(DeliveryError::NotYet(wait) | DeliveryError::RateLimited(wait)) => {
                if matches!(result, Err(DeliveryError::RateLimited(_))) {
                    self.metrics.rate_limited();
                    tracing::debug!(key = %entry.key, ?wait, "rate limited; waiting");
                }
                // A platform that says "wait 0" a hundred times in a row is not asked a
                // hundred times in a tight loop.
                let wait = Duration::from_std(wait)
                    .unwrap_or_else(|_| Duration::seconds(1))
                    .clamp(
                        Duration::milliseconds(MIN_WAIT_MS),
                        Duration::seconds(MAX_RETRY_WAIT_SECONDS),
                    );
                self.record(self.store.outbox_defer(entry.id, now + wait).await);
            }
            Err(DeliveryError::Transient {
                message,
                retry_after,
            }) => {
                self.metrics.delivery_failed();
                let failing_for = now - entry.failing_since.unwrap_or(now);
                if failing_for >= Duration::hours(GIVE_UP_AFTER_HOURS) {
                    let message = format!(
                        "gave up after {GIVE_UP_AFTER_HOURS} hours of failed tries: {message}"
                    );
                    self.give_up(&entry, &message, now).await;
                    return false;
                }
                let backoff = retry_after
                    .and_then(|d| Duration::from_std(d).ok())
                    .map(|d| d.min(Duration::seconds(MAX_RETRY_WAIT_SECONDS)))
                    .unwrap_or_else(|| {
                        Duration::seconds(1i64 << entry.attempts.min(9))
                            .min(Duration::seconds(MAX_BACKOFF_SECONDS))
                    });
                tracing::warn!(key = %entry.key, error = %message, "delivery failed; retrying later");
                self.record(
                    self.store
                        .outbox_failed(entry.id, &message, Some(now + backoff), now)
                        .await,
                );
                // Failing for long: a person hears of it long before Baton gives up, and
                // Retry tries at once.
                if !entry.alerted && failing_for >= self.settings.delivery_alert_after {
                    let minutes = failing_for.num_minutes().max(1);
                    let why = format!("failing for {minutes} min, still trying: {message}");
                    self.alert(&entry, why, false).await;
                }
            }
            Err(DeliveryError::Permanent(message)) => {
                self.metrics.delivery_failed();
                self.give_up(&entry, &message, now).await
            }
        }
        false
    }

    /// The platform has the message now: recording that must not be skipped, or the next
    /// pass would post it again. A message the run was told about is reported as through.
    async fn delivered(self: &Arc<Self>, entry: &OutboxEntry, reference: &str, now: DateTimeUtc) {
        self.metrics.delivered();
        // The console records its deliveries itself, in the write that delivers them.
        let recorded = self
            .platforms
            .get(entry.platform.as_str())
            .is_some_and(|p| p.records_deliveries());
        if !recorded {
            let record = super::durably("a delivery", || {
                self.store.outbox_delivered(entry.id, reference, now)
            });
            if let Err(e) = record.await {
                tracing::error!(error = %e, key = %entry.key, "could not record a delivery; it may be posted again");
            }
        }
        if entry.alerted
            && let Some(run) = entry.run
        {
            let cmd = Command::DeliveryRecovered {
                outbox: entry.id,
                key: entry.key.0.clone(),
            };
            if let Err(e) = self.submit(run, cmd).await {
                tracing::warn!(run = %run, error = %e, "could not report a delivery that went through after all");
            }
        }
    }

    /// A message that will not go through: recorded (with everything that depends on it) and
    /// reported to its run.
    async fn give_up(self: &Arc<Self>, entry: &OutboxEntry, message: &str, now: DateTimeUtc) {
        tracing::error!(key = %entry.key, error = %message, "delivery failed for good");
        self.record(self.store.outbox_failed(entry.id, message, None, now).await);
        self.alert(entry, message.to_owned(), true).await;
    }

    /// Tells the entry's run that it did not go through (its thread, or the channel for a
    /// root message), with Retry.
    async fn alert(self: &Arc<Self>, entry: &OutboxEntry, error: String, permanent: bool) {
        let Some(run) = entry.run else { return };
        let cmd = Command::DeliveryFailed {
            outbox: entry.id,
            key: entry.key.0.clone(),
            channel: entry.channel.clone(),
            error,
            permanent,
        };
        match self.submit(run, cmd).await {
            Ok(_) => self.record(self.store.outbox_alerted(entry.id).await),
            Err(e) => tracing::warn!(run = %run, error = %e, "could not report a failed delivery"),
        }
    }
}

type DateTimeUtc = chrono::DateTime<chrono::Utc>;

/// A lane with a delivery under way, free again when this is dropped (the delivery ended,
/// or its task was cancelled or panicked).
struct Underway<'a> {
    engine: &'a Engine,
    lane: Lane,
}

impl Drop for Underway<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.engine.in_flight.lock() {
            busy.remove(&self.lane);
        }
    }
}

impl Engine {
    fn record(&self, result: Result<(), crate::store::StoreError>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record a delivery outcome");
        }
    }
}

impl Background {
    /// Stops taking new work, lets running steps finish within the grace period (the rest
    /// re-run after restart), then flushes the outbox.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for h in self.loops {
            let _ = h.await;
        }
        let grace = self.engine.settings.shutdown_grace;
        let workers = futures_join(self.workers);
        if tokio::time::timeout(grace, workers).await.is_err() {
            tracing::warn!("steps still running after the grace period; they re-run after restart");
        }
        if let Some(h) = self.outbox {
            let _ = h.await;
        }
        // One last pass for posts produced by the steps that just finished.
        while self.engine.deliver_ready().await > 0 {}
        // Other replicas take over at once what this one held.
        self.engine.release().await;
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
