//! The agent loop, inside the engine's boundaries: the model proposes, the engine disposes.
//!
//! Each model turn and each tool result is persisted before the next step of the loop, so a
//! crash resumes from the last completed turn (a tool call whose result was not recorded runs
//! again, as any step attempt would). Every tool call is checked against the agent's allow-list
//! and the tool's capability class before it runs; a refusal goes back to the model as a tool
//! error and into the ledger. Every model call lands in the ledger with provider, model,
//! tokens, latency, finish reason, and the request and response (secrets redacted by the
//! store). The thread shows the agent's start, its tool calls, refusals and result.

use super::Engine;
use crate::agents::{ModelError, ModelRequest};
use crate::core::agents::{
    AgentDecision, AgentDef, ToolCall, Turn, json_in, payload_hash, validate,
};
use crate::core::audit::{AuditEvent, AuditKind};
use crate::core::engine::{Command, Job, render};
use crate::core::message::OutMessage;
use crate::core::tools::Capability;
use crate::core::tools::ToolInfo;
use crate::store::MemoryEntry;
use serde_json::{Value, json};
use std::sync::Arc;

/// Tool calls one model turn may make; the rest are refused.
const MAX_CALLS_PER_TURN: usize = 8;

/// Longest tool result handed back to a model, in characters.
const TOOL_RESULT_LIMIT: usize = 20_000;

/// Largest memory value, as JSON bytes.
const MEMORY_VALUE_LIMIT: usize = 16 * 1024;

/// Newest entries `memory.read` lists for a namespace.
const MEMORY_LISTED: u32 = 20;

impl Engine {
    pub(crate) async fn run_agent(
        self: &Arc<Self>,
        job: &Job,
        agent: &AgentDef,
        prompt: &str,
        context: &Value,
        decision: Option<&AgentDecision>,
        fresh: bool,
    ) -> Result<Option<Value>, String> {
        if let Some(why) = self.models.unavailable(&agent.model) {
            self.note(
                job,
                "unavailable",
                render::agent_unavailable(&agent.role, &why),
                None,
            )
            .await;
            return Err(why);
        }
        let (provider, model) = self.models.describe(&agent.model);
        if fresh {
            // A retry after a failure starts the conversation over: the old one ended badly.
            self.store
                .agent_turns_clear(job.run, &job.step)
                .await
                .map_err(|e| format!("could not start the agent afresh: {e}"))?;
        }
        let mut turns: Vec<Turn> = self
            .store
            .agent_turns(job.run, &job.step)
            .await
            .map_err(|e| format!("could not read the agent's turns: {e}"))?
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("a stored turn of this agent is unreadable: {e}"))?;
        if turns.is_empty() {
            let task = format!(
                "{prompt}\n\nInput:\n{}\n\nOutputs of the steps before this one:\n{}",
                context["input"], context["steps"]
            );
            self.record_turn(job, &mut turns, Turn::User { text: task })
                .await?;
            self.note(
                job,
                "start",
                render::agent_started(&agent.role, &provider, &model),
                None,
            )
            .await;
        } else {
            self.note(
                job,
                &format!("resume:{}", turns.len()),
                render::agent_resumed(&agent.role, turns.len()),
                None,
            )
            .await;
        }
        // An MCP server that could not be listed at start-up may have answered since: its
        // own description of the tool then goes to the model.
        let described: Vec<std::borrow::Cow<'_, ToolInfo>> = agent
            .tools
            .iter()
            .filter_map(|t| self.catalog.get(t))
            .map(|info| match self.tools.describe(&info) {
                Some(live) => std::borrow::Cow::Owned(live),
                None => info,
            })
            .collect();
        let tools: Vec<&ToolInfo> = described.iter().map(|t| t.as_ref()).collect();
        let mut schema_retried = turns
            .iter()
            .any(|t| matches!(t, Turn::User { text } if text.starts_with(SCHEMA_RETRY)));
        loop {
            // A tool call whose result was not recorded before a crash runs now. Results
            // count only after the turn that asked for them.
            let last = turns
                .iter()
                .rposition(|t| matches!(t, Turn::Assistant { .. }));
            let pending: Vec<(usize, ToolCall)> = match last.map(|l| (l, &turns[l])) {
                Some((last, Turn::Assistant { tool_calls, .. })) => {
                    let answered: Vec<&str> = turns[last..]
                        .iter()
                        .filter_map(|t| match t {
                            Turn::Tool { call_id, .. } => Some(call_id.as_str()),
                            _ => None,
                        })
                        .collect();
                    tool_calls
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| !answered.contains(&c.id.as_str()))
                        .map(|(i, c)| (i, c.clone()))
                        .collect()
                }
                _ => vec![],
            };
            {
                for (index, call) in pending {
                    if index >= MAX_CALLS_PER_TURN {
                        let why =
                            format!("refused: at most {MAX_CALLS_PER_TURN} tool calls per turn");
                        let turn = Turn::Tool {
                            call_id: call.id.clone(),
                            name: call.name.clone(),
                            content: why,
                            is_error: true,
                        };
                        self.record_turn(job, &mut turns, turn).await?;
                        continue;
                    }
                    let external = agent.tools.contains(&call.name)
                        && call.arguments.get("_unparsed").is_none()
                        && self
                            .catalog
                            .get(&call.name)
                            .is_some_and(|i| i.capability == Capability::External);
                    let (content, is_error) = if external {
                        // An external call waits for people, and runs only as they saw it.
                        let hash = payload_hash(&call.name, &call.arguments);
                        match decision.filter(|d| d.call_id == call.id && d.payload_hash == hash) {
                            Some(d) if d.approved => {
                                self.agent_tool(job, agent, &call, context).await
                            }
                            Some(d) => {
                                let why = match &d.reason {
                                    Some(r) => format!("rejected by {}: {r}", d.by),
                                    None => format!("rejected by {}", d.by),
                                };
                                self.note(
                                    job,
                                    &format!("call:{}", call.id),
                                    render::agent_call_rejected(&agent.role, &call.name),
                                    Some(why.clone()),
                                )
                                .await;
                                (why, true)
                            }
                            None => {
                                self.note(
                                    job,
                                    &format!("ask:{}", call.id),
                                    render::agent_waiting(&agent.role, &call.name),
                                    Some(summarize(&call.arguments)),
                                )
                                .await;
                                let cmd = Command::AgentWantsTool {
                                    step: job.step.clone(),
                                    attempt: job.attempt,
                                    call: call.clone(),
                                    payload_hash: hash,
                                };
                                self.submit(job.run, cmd)
                                    .await
                                    .map_err(|e| format!("could not ask for the approval: {e}"))?;
                                return Ok(None);
                            }
                        }
                    } else {
                        self.agent_tool(job, agent, &call, context).await
                    };
                    let turn = Turn::Tool {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        content,
                        is_error,
                    };
                    self.record_turn(job, &mut turns, turn).await?;
                }
            }
            let model_turns = turns
                .iter()
                .filter(|t| matches!(t, Turn::Assistant { .. }))
                .count() as u32;
            // After a crash between recording an answer and reporting it, the recorded answer
            // is the answer: no new model call.
            let recorded = match turns.last() {
                Some(Turn::Assistant {
                    text, tool_calls, ..
                }) if tool_calls.is_empty() => Some(text.clone()),
                _ => None,
            };
            let text = match recorded {
                Some(text) => text,
                None => {
                    if model_turns >= agent.max_turns {
                        return Err(format!(
                            "the agent used its {} model turns without a final answer",
                            agent.max_turns
                        ));
                    }
                    if let Some(budget) = agent.token_budget {
                        let spent = self
                            .store
                            .agent_tokens(job.run)
                            .await
                            .map_err(|e| format!("could not count the tokens spent: {e}"))?;
                        if spent >= budget {
                            return Err(format!(
                                "the run's token budget for agents ({budget}) is spent ({spent} used)"
                            ));
                        }
                    }
                    let request = ModelRequest {
                        system: &agent.instructions,
                        turns: &turns,
                        tools: &tools,
                        max_tokens: agent.max_output_tokens,
                    };
                    let mut reply = match self.models.call(&agent.model, &request).await {
                        Ok(r) => r,
                        Err(e) => {
                            self.audit_model_error(job, agent, &provider, &model, &e)
                                .await;
                            return Err(e.to_string());
                        }
                    };
                    unique_call_ids(&mut reply.tool_calls, &turns);
                    let ev = AuditEvent::new(
                        self.clock.now(),
                        AuditKind::ModelCalled,
                        Some(job.run),
                        json!({
                            "agent": agent.name, "provider": provider, "model": model,
                            "tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out,
                            "latency_ms": reply.latency_ms, "finish_reason": reply.finish_reason,
                            "tool_calls": reply.tool_calls.iter().map(|c| &c.name).collect::<Vec<_>>(),
                            "request": reply.request, "response": reply.response,
                        }),
                    )
                    .step(&job.step);
                    super::durably("a model call in the ledger", || {
                        self.store.audit_append(vec![ev.clone()])
                    })
                    .await
                    .map_err(|e| format!("could not record the model call in the ledger: {e}"))?;
                    let answer = Turn::Assistant {
                        text: reply.text.clone(),
                        tool_calls: reply.tool_calls.clone(),
                        tokens_in: reply.tokens_in,
                        tokens_out: reply.tokens_out,
                    };
                    self.record_turn(job, &mut turns, answer).await?;
                    if !reply.tool_calls.is_empty() {
                        // The calls run at the top of the loop, one by one, each recorded.
                        continue;
                    }
                    // An answer cut off by the token limit is not an answer.
                    if matches!(reply.finish_reason.as_str(), "length" | "max_tokens") {
                        return Err(format!(
                            "the answer was cut off at max_output_tokens ({})",
                            agent.max_output_tokens
                        ));
                    }
                    reply.text
                }
            };
            // A final answer: checked against the schema when the agent has one.
            let parsed = match &agent.output_schema {
                None => json_in(&text),
                Some(schema) => {
                    let checked = json_in(&text)
                        .ok_or_else(|| "the answer is not JSON".to_owned())
                        .and_then(|v| validate(&v, schema).map(|_| v));
                    match checked {
                        Ok(v) => Some(v),
                        Err(e) if !schema_retried => {
                            schema_retried = true;
                            let text =
                                format!("{SCHEMA_RETRY} {e}. Answer again with only the JSON.");
                            self.note(
                                job,
                                &format!("schema:{}", turns.len()),
                                render::agent_schema_retry(&agent.role, &e),
                                None,
                            )
                            .await;
                            self.record_turn(job, &mut turns, Turn::User { text })
                                .await?;
                            continue;
                        }
                        Err(e) => {
                            return Err(format!(
                                "the agent's answer does not match its output schema: {e}"
                            ));
                        }
                    }
                }
            };
            let tokens: u64 = turns.iter().map(Turn::tokens).sum();
            self.note(
                job,
                "answer",
                render::agent_answered(&agent.role),
                Some(text.clone()),
            )
            .await;
            return Ok(Some(json!({
                "text": text,
                "json": parsed,
                "agent": agent.name,
                "model": model,
                "turns": turns.iter().filter(|t| matches!(t, Turn::Assistant { .. })).count(),
                "tokens": tokens,
            })));
        }
    }

    /// Persists a turn and keeps it, with every configured secret taken out first: what the
    /// agent goes on with (its next request, the hash of a call it wants approved) is what is
    /// stored, so a resumed conversation is the same conversation.
    async fn record_turn(
        &self,
        job: &Job,
        turns: &mut Vec<Turn>,
        turn: Turn,
    ) -> Result<(), String> {
        let mut value = serde_json::to_value(&turn).expect("a turn serializes");
        self.store.redactor().redact_values(&mut value);
        let turn: Turn = serde_json::from_value(value.clone()).unwrap_or(turn);
        let at = self.clock.now();
        super::durably("an agent's turn", || {
            self.store
                .agent_turn_append(job.run, &job.step, turns.len() as u32, &value, at)
        })
        .await
        .map_err(|e| format!("could not record the agent's turn: {e}"))?;
        turns.push(turn);
        Ok(())
    }

    /// A line in the run's thread. Failing to post is not failing the step.
    async fn note(self: &Arc<Self>, job: &Job, key: &str, text: String, detail: Option<String>) {
        let cmd = Command::StepNote {
            step: job.step.clone(),
            attempt: job.attempt,
            key: key.to_owned(),
            message: OutMessage {
                text,
                detail,
                ..Default::default()
            },
        };
        if let Err(e) = self.submit(job.run, cmd).await {
            tracing::warn!(error = %e, "could not post an agent note");
        }
    }

    async fn audit_model_error(
        self: &Arc<Self>,
        job: &Job,
        agent: &AgentDef,
        provider: &str,
        model: &str,
        e: &ModelError,
    ) {
        let ev = AuditEvent::new(
            self.clock.now(),
            AuditKind::ModelCalled,
            Some(job.run),
            json!({"agent": agent.name, "provider": provider, "model": model, "error": e.to_string()}),
        )
        .step(&job.step);
        if let Err(e) = self.store.audit_append(vec![ev]).await {
            tracing::warn!(error = %e, "could not record a failed model call");
        }
    }

    /// Runs one tool call the model proposed, if the agent may: the result, or the refusal
    /// or error as text for the model, and whether it is an error.
    async fn agent_tool(
        self: &Arc<Self>,
        job: &Job,
        agent: &AgentDef,
        call: &ToolCall,
        context: &Value,
    ) -> (String, bool) {
        let key = format!("call:{}", call.id);
        let summary = summarize(&call.arguments);
        let audit = |kind: AuditKind, data: Value| {
            AuditEvent::new(self.clock.now(), kind, Some(job.run), data).step(&job.step)
        };
        // The allow-list and the capability class decide, never the prompt.
        let refusal = if !agent.tools.contains(&call.name) {
            Some(format!(
                "`{}` is not one of this agent's tools ({})",
                call.name,
                agent.tools.join(", ")
            ))
        } else if call.arguments.get("_unparsed").is_some() {
            Some("the arguments are not valid JSON".to_owned())
        } else {
            None
        };
        if let Some(why) = refusal {
            let ev = audit(
                AuditKind::ToolRefused,
                json!({"tool": call.name, "args": call.arguments, "why": why, "agent": agent.name}),
            );
            if let Err(e) = self.store.audit_append(vec![ev]).await {
                tracing::warn!(error = %e, "could not record a refusal");
            }
            self.note(
                job,
                &key,
                // What the model wrote goes in the code block, where no platform turns it into
                // a mention.
                render::agent_refused(&agent.role),
                Some(format!("{}({summary}): {why}", call.name)),
            )
            .await;
            return (format!("refused: {why}"), true);
        }
        self.note(
            job,
            &key,
            render::agent_calls(&agent.role, &call.name),
            Some(summary),
        )
        .await;
        let result = match call.name.as_str() {
            "memory.read" | "memory.write"
                if !agent.may_use_memory(call.arguments["namespace"].as_str().unwrap_or("")) =>
            {
                Err(format!(
                    "namespace `{}` is not one this agent may use ({})",
                    call.arguments["namespace"].as_str().unwrap_or(""),
                    agent.memory.join(", ")
                ))
            }
            "memory.read" => self.memory_read(&call.arguments).await,
            "memory.write" => self.memory_write(job, agent, &call.arguments).await,
            "run.context" => Ok(match call.arguments["step"].as_str() {
                Some(step) => context["all_steps"][step].clone(),
                None => {
                    json!({"input": context["input"], "steps": context["all_steps"], "run": context["run"]})
                }
            }),
            name => self
                .tools
                .call(name, &call.arguments, &agent.tools)
                .await
                .map_err(|e| e.to_string()),
        };
        let ev = audit(
            AuditKind::ToolCalled,
            match &result {
                Ok(out) => {
                    json!({"tool": call.name, "args": call.arguments, "ok": true, "output": out, "agent": agent.name})
                }
                Err(e) => {
                    json!({"tool": call.name, "args": call.arguments, "ok": false, "error": e, "agent": agent.name})
                }
            },
        );
        if let Err(e) = self.store.audit_append(vec![ev]).await {
            tracing::warn!(error = %e, "could not record a tool call");
        }
        match result {
            Ok(v) => {
                let text = v.to_string();
                (text.chars().take(TOOL_RESULT_LIMIT).collect(), false)
            }
            Err(e) => (format!("error: {e}"), true),
        }
    }

    /// A few sentences about a digest's figures, when a model can write them. Without a model,
    /// or when the call fails, the digest goes out with its figures alone.
    pub(crate) async fn narrate(
        self: &Arc<Self>,
        job: &Job,
        agent: &AgentDef,
        figures: &crate::core::digest::DigestFigures,
    ) -> Option<String> {
        if self.models.unavailable(&agent.model).is_some() {
            return None;
        }
        let (provider, model) = self.models.describe(&agent.model);
        let task = format!(
            "These figures come from Baton's audit ledger:\n{}\n\nWrite two or three sentences for the team's channel about what stands out. Use no number that is not in the figures; they are posted under your text.",
            serde_json::to_string_pretty(figures).unwrap_or_default()
        );
        let turns = [Turn::User { text: task }];
        let request = ModelRequest {
            system: &agent.instructions,
            turns: &turns,
            tools: &[],
            max_tokens: agent.max_output_tokens,
        };
        match self.models.call(&agent.model, &request).await {
            Ok(reply) => {
                let ev = AuditEvent::new(
                    self.clock.now(),
                    AuditKind::ModelCalled,
                    Some(job.run),
                    json!({
                        "agent": agent.name, "provider": provider, "model": model, "purpose": "digest narrative",
                        "tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out,
                        "latency_ms": reply.latency_ms, "finish_reason": reply.finish_reason,
                        "request": reply.request, "response": reply.response,
                    }),
                )
                .step(&job.step);
                if let Err(e) = self.store.audit_append(vec![ev]).await {
                    tracing::warn!(error = %e, "could not record the narrative's model call");
                    return None;
                }
                let text = reply.text.trim().to_owned();
                (!text.is_empty()).then_some(text)
            }
            Err(e) => {
                self.audit_model_error(job, agent, &provider, &model, &e)
                    .await;
                tracing::warn!(error = %e, "the digest goes out without its narrative");
                None
            }
        }
    }

    async fn memory_read(self: &Arc<Self>, args: &Value) -> Result<Value, String> {
        let namespace = args["namespace"]
            .as_str()
            .ok_or("`namespace` is required")?;
        let shown = |e: &MemoryEntry| {
            json!({
                "namespace": e.namespace, "key": e.key, "value": e.value,
                "written_by": {"run": e.run.map(|r| r.0), "step": e.step, "agent": e.agent, "at": e.written_at.to_rfc3339()},
            })
        };
        match args["key"].as_str() {
            Some(key) => match self.store.memory_read(namespace, key).await {
                Ok(Some(e)) => Ok(shown(&e)),
                Ok(None) => Ok(json!({"namespace": namespace, "key": key, "found": false})),
                Err(e) => Err(format!("could not read memory: {e}")),
            },
            None => self
                .store
                .memory_list(Some(namespace), MEMORY_LISTED)
                .await
                .map(|entries| Value::Array(entries.iter().map(shown).collect()))
                .map_err(|e| format!("could not read memory: {e}")),
        }
    }

    async fn memory_write(
        self: &Arc<Self>,
        job: &Job,
        agent: &AgentDef,
        args: &Value,
    ) -> Result<Value, String> {
        let (Some(namespace), Some(key)) = (args["namespace"].as_str(), args["key"].as_str())
        else {
            return Err("`namespace` and `key` are required".into());
        };
        let (n, k) = (namespace.chars().count(), key.chars().count());
        if !(1..=200).contains(&n) || !(1..=500).contains(&k) {
            return Err("`namespace` and `key` must be 1-200 and 1-500 characters".into());
        }
        // Memory is shared by every later run: one entry may not crowd it.
        if args["value"].to_string().len() > MEMORY_VALUE_LIMIT {
            return Err(format!(
                "the value is larger than {} KiB; store a summary",
                MEMORY_VALUE_LIMIT / 1024
            ));
        }
        let entry = MemoryEntry {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value: args["value"].clone(),
            run: Some(job.run),
            step: Some(job.step.clone()),
            agent: Some(agent.name.clone()),
            written_at: self.clock.now(),
        };
        self.store
            .memory_write(&entry)
            .await
            .map_err(|e| format!("could not write memory: {e}"))?;
        Ok(json!({"written": true, "namespace": namespace, "key": key}))
    }
}

/// The start of the message that asks again after a schema mismatch.
const SCHEMA_RETRY: &str = "Your answer did not match the required output schema:";

/// Gives every call of a turn an id no earlier call had: some servers leave ids out or reuse
/// them, and results are matched to calls by id.
fn unique_call_ids(calls: &mut [ToolCall], turns: &[Turn]) {
    let mut seen: Vec<String> = turns
        .iter()
        .flat_map(|t| match t {
            Turn::Assistant { tool_calls, .. } => tool_calls.iter().map(|c| c.id.clone()).collect(),
            _ => vec![],
        })
        .collect();
    for (i, call) in calls.iter_mut().enumerate() {
        if call.id.is_empty() || seen.contains(&call.id) {
            call.id = format!("call_{}_{i}", turns.len());
        }
        seen.push(call.id.clone());
    }
}

/// A short summary of arguments for the thread: `key=value` pairs, cut.
fn summarize(args: &Value) -> String {
    let text = match args.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => args.to_string(),
    };
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_without_ids_or_with_reused_ones_get_their_own() {
        let earlier = vec![Turn::Assistant {
            text: String::new(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "memory.read".into(),
                arguments: json!({}),
            }],
            tokens_in: 0,
            tokens_out: 0,
        }];
        let call = |id: &str| ToolCall {
            id: id.into(),
            name: "run.context".into(),
            arguments: json!({}),
        };
        let mut calls = vec![call("call_1"), call(""), call("x"), call("x")];
        unique_call_ids(&mut calls, &earlier);
        let ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["call_1_0", "call_1_1", "x", "call_1_3"]);
    }

    #[test]
    fn argument_summaries_are_short() {
        let long = json!({"text": "x".repeat(200)});
        assert!(summarize(&long).chars().count() <= 81);
        assert_eq!(summarize(&json!({"a": 1, "b": "two"})), "a=1, b=two");
    }
}
