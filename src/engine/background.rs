//! The loops that wake runs up: due timers, schedule slots, and outbox delivery.

use super::{Engine, StartOutcome, StartRequest};
use crate::adapters::DeliveryError;
use crate::core::audit::{AuditEvent, AuditKind};
use crate::core::engine::Command;
use crate::core::event::{Actor, ConversationRef};
use crate::core::workflow::Trigger;
use chrono::Duration;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Transient failures in a row after which an outbox entry is given up (and reported).
const MAX_DELIVERY_ATTEMPTS: u32 = 25;
/// Transient failures in a row after which the run's thread is told, while retries go on.
const FLAG_DELIVERY_AFTER: u32 = 5;
/// Longest wait a platform may ask for before the next try.
const MAX_RETRY_WAIT_SECONDS: i64 = 3600;

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
        let loops = vec![
            tokio::spawn(self.clone().timer_loop(rx.clone())),
            tokio::spawn(self.clone().schedule_loop(rx.clone())),
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

    async fn timer_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match self.store.due_timers(self.clock.now(), 200).await {
                Ok(due) => {
                    for (run, key) in due {
                        if let Err(e) = self
                            .submit(run, Command::TimerFired { key: key.clone() })
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

    async fn schedule_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
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

    async fn outbox_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let delivered = self.deliver_ready().await;
            if *shutdown.borrow() {
                break;
            }
            if delivered == 0 {
                self.pause(&mut shutdown, true).await;
            }
        }
    }

    /// Delivers what is ready now; returns how many entries were tried.
    pub async fn deliver_ready(self: &Arc<Self>) -> usize {
        let now = self.clock.now();
        let entries = match self.store.outbox_ready(now, 50).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the outbox");
                return 0;
            }
        };
        // A conversation whose entry did not go out holds back its later entries in this
        // batch too, so a thread never goes out of order.
        let mut held: std::collections::HashSet<(String, String)> =
            std::collections::HashSet::new();
        for entry in &entries {
            let conversation = (entry.platform.clone(), entry.channel.clone());
            if held.contains(&conversation) {
                continue;
            }
            let result = match self.platforms.get(entry.platform.as_str()) {
                Some(p) => p.deliver(entry).await,
                None => Err(DeliveryError::Permanent(format!(
                    "no `{}` platform is configured",
                    entry.platform
                ))),
            };
            let now = self.clock.now();
            let result = match result {
                Err(DeliveryError::Transient { message, .. })
                    if entry.attempts + 1 >= MAX_DELIVERY_ATTEMPTS =>
                {
                    Err(DeliveryError::Permanent(format!(
                        "gave up after {MAX_DELIVERY_ATTEMPTS} attempts: {message}"
                    )))
                }
                other => other,
            };
            if result.is_err() {
                held.insert(conversation);
            }
            match result {
                Ok(reference) => {
                    self.metrics.delivered();
                    // The platform has the message now: recording that must not be skipped, or
                    // the next pass would post it again.
                    for wait in [0u64, 100, 500, 2000] {
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                        match self.store.outbox_delivered(entry.id, &reference, now).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, key = %entry.key, "could not record a delivery; trying again")
                            }
                        }
                    }
                }
                Err(DeliveryError::Transient {
                    message,
                    retry_after,
                }) => {
                    self.metrics.delivery_failed();
                    let backoff = retry_after
                        .and_then(|d| Duration::from_std(d).ok())
                        .unwrap_or_else(|| Duration::seconds(1i64 << entry.attempts.min(8)))
                        .min(Duration::seconds(MAX_RETRY_WAIT_SECONDS));
                    tracing::warn!(key = %entry.key, error = %message, "delivery failed; retrying later");
                    self.record(
                        self.store
                            .outbox_failed(entry.id, &message, Some(now + backoff), now)
                            .await,
                    );
                    // Failing again and again: people hear of it long before Baton gives up,
                    // and Retry tries at once.
                    if entry.attempts + 1 == FLAG_DELIVERY_AFTER
                        && let Some(run) = entry.run
                    {
                        let cmd = Command::DeliveryFailed {
                            key: entry.key.0.clone(),
                            channel: entry.channel.clone(),
                            error: format!(
                                "{FLAG_DELIVERY_AFTER} tries failed in a row, still trying: {message}"
                            ),
                        };
                        if let Err(e) = self.submit(run, cmd).await {
                            tracing::warn!(run = %run, error = %e, "could not flag a failing delivery");
                        }
                    }
                }
                Err(DeliveryError::NotYet(wait)) => {
                    let wait = Duration::from_std(wait)
                        .unwrap_or_else(|_| Duration::seconds(1))
                        .min(Duration::seconds(MAX_RETRY_WAIT_SECONDS));
                    self.record(self.store.outbox_defer(entry.id, now + wait).await);
                }
                Err(DeliveryError::Permanent(message)) => {
                    self.metrics.delivery_failed();
                    tracing::error!(key = %entry.key, error = %message, "delivery failed for good");
                    self.record(
                        self.store
                            .outbox_failed(entry.id, &message, None, now)
                            .await,
                    );
                    // The run's thread says so, with Retry for when the cause is fixed.
                    if let Some(run) = entry.run {
                        let cmd = Command::DeliveryFailed {
                            key: entry.key.0.clone(),
                            channel: entry.channel.clone(),
                            error: message.clone(),
                        };
                        if let Err(e) = self.submit(run, cmd).await {
                            tracing::warn!(run = %run, error = %e, "could not flag a failed delivery");
                        }
                    }
                }
            }
        }
        entries.len()
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
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
