//! Model providers: any OpenAI-compatible Chat Completions endpoint and the Anthropic Messages
//! API, called with tools over Baton's one reqwest client. One request is one model turn; the
//! engine (`src/engine/agent.rs`) decides what happens with the tool calls that come back.
//!
//! The wire types are Baton's own (see ARCHITECTURE.md, "Choices"): the ledger records each
//! request and response as sent and received, and the retry honours `Retry-After`.

use crate::config::Secret;
use crate::core::agents::{ToolCall, Turn};
use crate::core::tools::ToolInfo;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Which API a model is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

/// A named model from `BATON_MODELS`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub provider: Provider,
    pub model: String,
}

/// Where a provider is and the key to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub base_url: reqwest::Url,
    pub api_key: Option<Secret>,
}

/// Every model setting.
#[derive(Debug, Clone, Default)]
pub struct ModelSettings {
    pub models: BTreeMap<String, ModelRef>,
    pub openai: Option<Endpoint>,
    pub anthropic: Option<Endpoint>,
    /// How long one model request may take.
    pub timeout: Duration,
}

/// What goes to the model for one turn.
pub struct ModelRequest<'a> {
    pub system: &'a str,
    pub turns: &'a [Turn],
    pub tools: &'a [&'a ToolInfo],
    pub max_tokens: u32,
}

/// What came back, with what the ledger records.
#[derive(Debug, Clone)]
pub struct ModelReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub finish_reason: String,
    pub request: Value,
    pub response: Value,
    pub latency_ms: u64,
}

/// Why a model call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    NotConfigured(String),
    #[error("the model request timed out after {0:?}")]
    Timeout(Duration),
    #[error("{}", http_failure(*status, body))]
    Http { status: u16, body: String },
    #[error("the model API could not be reached: {0}")]
    Transport(String),
    #[error("the model's answer could not be read: {0}")]
    Malformed(String),
}

/// A model API's refusal as a sentence: the provider's own message (not its JSON), and what
/// to do about the usual causes.
fn http_failure(status: u16, body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let said = json
        .as_ref()
        .and_then(|j| {
            j["error"]["message"]
                .as_str()
                .or_else(|| j["error"].as_str())
                .or_else(|| j["message"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            if json.is_some() {
                String::new()
            } else {
                body.chars().take(200).collect()
            }
        });
    let hint = match status {
        401 | 403 => " Check the API key (OPENAI_API_KEY / ANTHROPIC_API_KEY).",
        404 => " Check the model name in BATON_MODELS and the base URL.",
        429 => " The provider is rate limiting or the quota is used up; try again later.",
        413 => " The request is too long for the model.",
        500..=599 => " The provider is having trouble; try again later.",
        _ => "",
    };
    let said = said.trim().trim_end_matches('.');
    if said.is_empty() {
        format!("the model API answered HTTP {status}.{hint}")
    } else {
        format!("the model API answered HTTP {status}: {said}.{hint}")
    }
}

/// Attempts per model turn for 429s and 5xx.
const ATTEMPTS: u32 = 4;
/// Longest `Retry-After` Baton waits inside one step.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The configured models and one HTTP client for all of them.
pub struct Models {
    http: reqwest::Client,
    settings: ModelSettings,
}

/// Tool names as providers accept them (`^[a-zA-Z0-9_-]{1,64}$`): `memory.read` becomes
/// `memory__read` on the wire and back.
fn wire_name(name: &str) -> String {
    name.replace('.', "__")
}

fn tool_name(wire: &str) -> String {
    wire.replace("__", ".")
}

impl Models {
    pub fn new(settings: ModelSettings) -> anyhow::Result<Self> {
        let http = crate::http_client::builder()
            .timeout(settings.timeout)
            // A redirect would carry the key (`x-api-key` is not dropped across hosts) and the
            // conversation elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, settings })
    }

    /// What to tell someone whose agent names a model Baton cannot reach.
    pub fn unavailable(&self, name: &str) -> Option<String> {
        if self.settings.models.is_empty() {
            return Some(format!(
                "no model is configured, so agent steps cannot run: set BATON_MODELS (e.g. `{name}=openai:gpt-4o-mini`) with OPENAI_API_KEY, or `{name}=anthropic:claude-sonnet-4-5` with ANTHROPIC_API_KEY (README, \"Agents\")"
            ));
        }
        let Some(m) = self.settings.models.get(name) else {
            let known: Vec<&str> = self.settings.models.keys().map(String::as_str).collect();
            return Some(format!(
                "model `{name}` is not in BATON_MODELS (configured: {})",
                known.join(", ")
            ));
        };
        let endpoint = match m.provider {
            Provider::OpenAi => &self.settings.openai,
            Provider::Anthropic => &self.settings.anthropic,
        };
        endpoint.is_none().then(|| match m.provider {
            Provider::OpenAi => format!("model `{name}` uses OpenAI: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server such as Ollama)"),
            Provider::Anthropic => format!("model `{name}` uses Anthropic: set ANTHROPIC_API_KEY"),
        })
    }

    /// The provider and model behind a name, for the ledger.
    pub fn describe(&self, name: &str) -> (String, String) {
        self.settings
            .models
            .get(name)
            .map(|m| (m.provider.as_str().to_owned(), m.model.clone()))
            .unwrap_or_default()
    }

    /// One model turn, with 429s and 5xx tried again (waiting as long as `Retry-After` says).
    pub async fn call(&self, name: &str, req: &ModelRequest<'_>) -> Result<ModelReply, ModelError> {
        if let Some(why) = self.unavailable(name) {
            return Err(ModelError::NotConfigured(why));
        }
        let m = &self.settings.models[name];
        let (endpoint, url, body) = match m.provider {
            Provider::OpenAi => {
                let e = self.settings.openai.as_ref().expect("checked above");
                (
                    e,
                    join(&e.base_url, "chat/completions"),
                    openai_request(
                        &m.model,
                        req,
                        e.base_url.host_str() == Some("api.openai.com"),
                    ),
                )
            }
            Provider::Anthropic => {
                let e = self.settings.anthropic.as_ref().expect("checked above");
                // The base may be given with or without `/v1`.
                let path = if e.base_url.path().trim_end_matches('/').ends_with("/v1") {
                    "messages"
                } else {
                    "v1/messages"
                };
                (e, join(&e.base_url, path), anthropic_request(&m.model, req))
            }
        };
        let started = Instant::now();
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let mut request = self.http.post(url.clone()).json(&body);
            request = match (m.provider, &endpoint.api_key) {
                (Provider::OpenAi, Some(k)) => request.bearer_auth(k.expose()),
                (Provider::Anthropic, Some(k)) => request.header("x-api-key", k.expose()),
                _ => request,
            };
            if m.provider == Provider::Anthropic {
                request = request.header("anthropic-version", "2023-06-01");
            }
            let sent = request.send().await;
            let r = match sent {
                Ok(r) => r,
                Err(e) if e.is_timeout() => return Err(ModelError::Timeout(self.settings.timeout)),
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(error = %e.without_url(), "model API unreachable; trying again");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(ModelError::Transport(crate::http_client::describe(&e))),
            };
            let status = r.status().as_u16();
            if (status == 429 || status >= 500) && attempt < ATTEMPTS {
                let wait = crate::http_client::retry_after(r.headers(), MAX_WAIT)
                    .unwrap_or_else(|| backoff(attempt));
                let body = r.text().await.unwrap_or_default();
                // An exhausted quota is not a busy server: waiting will not help.
                if body.contains("insufficient_quota") {
                    return Err(ModelError::Http {
                        status,
                        body: body.chars().take(500).collect(),
                    });
                }
                tracing::warn!(status, ?wait, "model API busy; trying again");
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = match r.text().await {
                Ok(t) => t,
                Err(e) if e.is_timeout() => return Err(ModelError::Timeout(self.settings.timeout)),
                Err(e) => return Err(ModelError::Transport(crate::http_client::describe(&e))),
            };
            if !(200..300).contains(&status) {
                return Err(ModelError::Http {
                    status,
                    body: text.chars().take(500).collect(),
                });
            }
            break serde_json::from_str::<Value>(&text)
                .map_err(|e| ModelError::Malformed(format!("not JSON: {e}")))?;
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let mut reply = match m.provider {
            Provider::OpenAi => openai_reply(&response)?,
            Provider::Anthropic => anthropic_reply(&response)?,
        };
        // `__` on the wire may stand for `.` or be part of an MCP tool's own name: the
        // offered tool whose wire name matches is the one meant.
        for call in &mut reply.tool_calls {
            let wire = wire_name(&call.name);
            if let Some(t) = req.tools.iter().find(|t| wire_name(&t.name) == wire) {
                call.name = t.name.clone();
            }
        }
        reply.request = body;
        reply.response = response;
        reply.latency_ms = latency_ms;
        Ok(reply)
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(attempt.min(6)))
}

fn join(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    base.join(path).unwrap_or(base)
}

/// `official`: the server is OpenAI's own API.
fn openai_request(model: &str, req: &ModelRequest<'_>, official: bool) -> Value {
    let mut messages = vec![json!({"role": "system", "content": req.system})];
    for t in req.turns {
        messages.push(match t {
            Turn::User { text } => json!({"role": "user", "content": text}),
            Turn::Assistant {
                text, tool_calls, ..
            } => {
                // `null` content is only valid next to tool calls.
                let content = if text.is_empty() && !tool_calls.is_empty() {
                    Value::Null
                } else {
                    json!(text)
                };
                let mut m = json!({"role": "assistant", "content": content});
                if !tool_calls.is_empty() {
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": wire_name(&c.name), "arguments": c.arguments.to_string()}}))
                        .collect();
                }
                m
            }
            Turn::Tool {
                call_id, content, ..
            } => json!({"role": "tool", "tool_call_id": call_id, "content": content}),
        });
    }
    // OpenAI itself refuses `max_tokens` for its reasoning models and takes
    // `max_completion_tokens` for all; compatible servers (Ollama, vLLM, llama.cpp) know
    // `max_tokens`.
    let limit = if official {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let mut body = json!({"model": model, "messages": messages});
    body[limit] = json!(req.max_tokens);
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": wire_name(&t.name), "description": t.description, "parameters": t.parameters}}))
            .collect();
    }
    body
}

fn openai_reply(r: &Value) -> Result<ModelReply, ModelError> {
    let choice = r["choices"]
        .get(0)
        .ok_or_else(|| ModelError::Malformed("no choices".into()))?;
    let message = &choice["message"];
    let mut tool_calls = Vec::new();
    for c in message["tool_calls"].as_array().into_iter().flatten() {
        // Arguments are a JSON string; some servers send the object itself. Arguments a model
        // wrote badly are handed back to it as a tool error, not lost.
        let arguments = match &c["function"]["arguments"] {
            Value::String(raw) if raw.trim().is_empty() => json!({}),
            Value::String(raw) => {
                serde_json::from_str(raw).unwrap_or_else(|_| json!({"_unparsed": raw}))
            }
            Value::Object(_) => c["function"]["arguments"].clone(),
            _ => json!({}),
        };
        tool_calls.push(ToolCall {
            id: c["id"].as_str().unwrap_or_default().to_owned(),
            name: tool_name(c["function"]["name"].as_str().unwrap_or_default()),
            arguments,
        });
    }
    Ok(ModelReply {
        text: message["content"].as_str().unwrap_or_default().to_owned(),
        tool_calls,
        tokens_in: r["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        tokens_out: r["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        finish_reason: choice["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        request: Value::Null,
        response: Value::Null,
        latency_ms: 0,
    })
}

fn anthropic_request(model: &str, req: &ModelRequest<'_>) -> Value {
    // Anthropic alternates user and assistant; tool results travel in the user's turn.
    let mut messages: Vec<Value> = Vec::new();
    let mut push = |role: &str, block: Value| match messages.last_mut() {
        Some(last) if last["role"] == role => {
            if let Some(c) = last["content"].as_array_mut() {
                c.push(block);
            }
        }
        _ => messages.push(json!({"role": role, "content": [block]})),
    };
    for t in req.turns {
        match t {
            Turn::User { text } => push("user", json!({"type": "text", "text": text})),
            Turn::Assistant {
                text, tool_calls, ..
            } => {
                if !text.is_empty() {
                    push("assistant", json!({"type": "text", "text": text}));
                }
                for c in tool_calls {
                    push(
                        "assistant",
                        json!({"type": "tool_use", "id": c.id, "name": wire_name(&c.name), "input": c.arguments}),
                    );
                }
            }
            Turn::Tool {
                call_id,
                content,
                is_error,
                ..
            } => push(
                "user",
                json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}),
            ),
        }
    }
    let mut body = json!({"model": model, "max_tokens": req.max_tokens, "system": req.system, "messages": messages});
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": wire_name(&t.name), "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    body
}

fn anthropic_reply(r: &Value) -> Result<ModelReply, ModelError> {
    let blocks = r["content"]
        .as_array()
        .ok_or_else(|| ModelError::Malformed("no content".into()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b["type"].as_str() {
            Some("text") => text.push_str(b["text"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_calls.push(ToolCall {
                id: b["id"].as_str().unwrap_or_default().to_owned(),
                name: tool_name(b["name"].as_str().unwrap_or_default()),
                arguments: b["input"].clone(),
            }),
            _ => {}
        }
    }
    Ok(ModelReply {
        text,
        tool_calls,
        tokens_in: r["usage"]["input_tokens"].as_u64().unwrap_or(0),
        tokens_out: r["usage"]["output_tokens"].as_u64().unwrap_or(0),
        finish_reason: r["stop_reason"].as_str().unwrap_or_default().to_owned(),
        request: Value::Null,
        response: Value::Null,
        latency_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tools::ToolCatalog;

    fn conversation() -> Vec<Turn> {
        vec![
            Turn::User {
                text: "Research acme.com".into(),
            },
            Turn::Assistant {
                text: String::new(),
                tool_calls: vec![
                    ToolCall {
                        id: "c1".into(),
                        name: "memory.read".into(),
                        arguments: json!({"namespace": "company", "key": "acme.com"}),
                    },
                    ToolCall {
                        id: "c2".into(),
                        name: "http.get".into(),
                        arguments: json!({"url": "https://acme.com"}),
                    },
                ],
                tokens_in: 1,
                tokens_out: 1,
            },
            Turn::Tool {
                call_id: "c1".into(),
                name: "memory.read".into(),
                content: "{}".into(),
                is_error: false,
            },
            Turn::Tool {
                call_id: "c2".into(),
                name: "http.get".into(),
                content: "refused".into(),
                is_error: true,
            },
        ]
    }

    #[test]
    fn openai_itself_is_sent_max_completion_tokens_and_compatible_servers_max_tokens() {
        let req = ModelRequest {
            system: "s",
            turns: &[],
            tools: &[],
            max_tokens: 64,
        };
        let official = openai_request("o3-mini", &req, true);
        assert_eq!(official["max_completion_tokens"], 64);
        assert!(official.get("max_tokens").is_none());
        let local = openai_request("llama3", &req, false);
        assert_eq!(local["max_tokens"], 64);
        assert!(local.get("max_completion_tokens").is_none());
    }

    #[test]
    fn openai_requests_carry_tools_and_tool_results_in_chat_completions_form() {
        let catalog = ToolCatalog::builtin();
        let read = catalog.get("memory.read").unwrap();
        let tools = [read.as_ref()];
        let turns = conversation();
        let body = openai_request(
            "gpt-4o-mini",
            &ModelRequest {
                system: "You research.",
                turns: &turns,
                tools: &tools,
                max_tokens: 100,
            },
            false,
        );
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "You research."})
        );
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["name"],
            "memory__read"
        );
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["arguments"],
            r#"{"key":"acme.com","namespace":"company"}"#
        );
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "{}"})
        );
        assert_eq!(body["tools"][0]["function"]["name"], "memory__read");
        let reply = openai_reply(&json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "x", "type": "function", "function": {"name": "memory__write", "arguments": "{not json"}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})).unwrap();
        assert_eq!(reply.tool_calls[0].name, "memory.write");
        assert_eq!(reply.tool_calls[0].arguments["_unparsed"], "{not json");
        assert_eq!((reply.tokens_in, reply.tokens_out), (7, 3));
    }

    #[test]
    fn a_refusal_reads_as_the_providers_words_with_what_to_do() {
        let e = ModelError::Http {
            status: 429,
            body: r#"{"error":{"message":"Rate limit reached for gpt-test.","type":"requests"}}"#
                .into(),
        };
        assert_eq!(
            e.to_string(),
            "the model API answered HTTP 429: Rate limit reached for gpt-test. The provider is rate limiting or the quota is used up; try again later."
        );
        let e = ModelError::Http {
            status: 401,
            body: "{}".into(),
        };
        assert!(
            e.to_string()
                .starts_with("the model API answered HTTP 401. Check the API key")
        );
    }

    #[test]
    fn anthropic_requests_alternate_roles_and_group_tool_results() {
        let turns = conversation();
        let body = anthropic_request(
            "claude",
            &ModelRequest {
                system: "s",
                turns: &turns,
                tools: &[],
                max_tokens: 100,
            },
        );
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[1]["role"], "assistant");
        assert_eq!(m[1]["content"][1]["type"], "tool_use");
        assert_eq!(m[2]["role"], "user");
        assert_eq!(
            m[2]["content"].as_array().unwrap().len(),
            2,
            "both results in one user turn"
        );
        assert_eq!(m[2]["content"][1]["is_error"], true);
        let reply = anthropic_reply(&json!({"content": [{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "t1", "name": "run__context", "input": {}}], "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 2}})).unwrap();
        assert_eq!(reply.tool_calls[0].name, "run.context");
        assert_eq!(reply.finish_reason, "tool_use");
    }
}
