//! The bounded worker pool: a fixed number of tasks take step attempts from the queue.

use super::Engine;
use crate::core::audit::{AuditEvent, AuditKind};
use crate::core::digest;
use crate::core::engine::{Command, Job, Work};
use crate::core::workflow::format_duration;
use crate::tools::ToolError;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;

impl Engine {
    /// Starts the workers. They stop taking jobs when `shutdown` turns true and finish the one
    /// they hold; queued jobs stay recorded as running and are re-run after the next start.
    pub(crate) fn spawn_workers(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let rx = self
            .job_rx
            .lock()
            .expect("job queue lock")
            .take()
            .expect("workers start once");
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        (0..self.settings.workers.max(1))
            .map(|_| {
                let engine = self.clone();
                let rx = rx.clone();
                let mut shutdown = shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        let job = {
                            let mut rx = rx.lock().await;
                            tokio::select! {
                                biased;
                                _ = shutdown.wait_for(|s| *s) => None,
                                job = rx.recv() => job,
                            }
                        };
                        let Some(job) = job else { break };
                        engine.execute(job).await;
                    }
                })
            })
            .collect()
    }

    #[tracing::instrument(skip_all, fields(run_id = %job.run, step = %job.step, attempt = job.attempt))]
    async fn execute(self: &Arc<Self>, job: Job) {
        let _running = self.running((job.run, job.step.clone(), job.attempt));
        let started = Instant::now();
        let limit = job
            .timeout
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(300));
        let result = match tokio::time::timeout(limit, self.perform(&job)).await {
            Ok(Some(r)) => r,
            // Paused for a decision: the machine already knows, and a new attempt follows it.
            Ok(None) => return,
            Err(_) => Err(format!("timed out after {}", format_duration(job.timeout))),
        };
        self.metrics.observe_step(started.elapsed().as_secs_f64());
        let cmd = Command::StepFinished {
            step: job.step.clone(),
            attempt: job.attempt,
            result,
        };
        // The result must reach the store, also across a database restart. If it never does,
        // the attempt stays recorded as running, its lease lapses, and it runs again.
        if let Err(e) = super::durably("a step result", || self.submit(job.run, cmd.clone())).await
        {
            tracing::error!(error = %e, "gave up recording a step result; the step runs again once its lease lapses");
        }
    }

    /// Carries out a job: its result, or `None` when it paused for a decision.
    async fn perform(self: &Arc<Self>, job: &Job) -> Option<Result<Value, String>> {
        match &job.work {
            Work::Agent {
                agent,
                prompt,
                context,
                decision,
                fresh,
            } => self
                .run_agent(job, agent, prompt, context, decision.as_ref(), *fresh)
                .await
                .transpose(),
            _ => Some(self.perform_step(job).await),
        }
    }

    async fn perform_step(self: &Arc<Self>, job: &Job) -> Result<Value, String> {
        match &job.work {
            Work::Tool {
                tool,
                args,
                declared,
            } => {
                let started = Instant::now();
                let result = self.tools.call(tool, args, declared).await;
                let ms = started.elapsed().as_millis() as u64;
                let now = self.clock.now();
                let (kind, data) = match &result {
                    Ok(out) => (
                        AuditKind::ToolCalled,
                        json!({"tool": tool, "args": args, "ok": true, "ms": ms, "output": out}),
                    ),
                    Err(ToolError::Refused(why)) => (
                        AuditKind::ToolRefused,
                        json!({"tool": tool, "args": args, "why": why}),
                    ),
                    Err(e) => (
                        AuditKind::ToolCalled,
                        json!({"tool": tool, "args": args, "ok": false, "ms": ms, "error": e.to_string()}),
                    ),
                };
                let ev = AuditEvent::new(now, kind, Some(job.run), data).step(&job.step);
                let recorded = super::durably("a tool call in the ledger", || {
                    self.store.audit_append(vec![ev.clone()])
                });
                if let Err(e) = recorded.await {
                    return Err(format!("could not record the tool call in the ledger: {e}"));
                }
                result.map_err(|e| e.to_string())
            }
            Work::Agent { .. } => unreachable!("agents are performed above"),
            Work::Digest { period, narrative } => {
                let now = self.clock.now();
                let figures = self
                    .store
                    .digest_figures(now - *period, now, self.settings.stall_after)
                    .await
                    .map_err(|e| format!("could not read the ledger: {e}"))?;
                let text = digest::render(&figures);
                let story = match narrative {
                    Some(agent) => self.narrate(job, agent, &figures).await,
                    None => None,
                };
                let text = match &story {
                    Some(s) => format!("{s}\n\n{text}"),
                    None => text,
                };
                Ok(json!({"text": text, "figures": figures, "narrative": story}))
            }
        }
    }
}
