//! A fake model server on loopback speaking OpenAI's Chat Completions (`POST
//! /v1/chat/completions`) and Anthropic's Messages API (`POST /v1/messages`). Each answers from
//! a script of replies, in order, and records every request with its headers. A scripted
//! reply may be an HTTP error with `Retry-After`, a body that is not JSON, or a hang.
#![allow(dead_code)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One scripted answer.
#[derive(Clone)]
pub enum Reply {
    Json(Value),
    Status(u16, Option<&'static str>),
    NotJson,
    /// Never answers (until the client gives up).
    Hang,
}

#[derive(Default)]
pub struct LlmState {
    pub script: VecDeque<Reply>,
    pub requests: Vec<(String, HeaderMap, Value)>,
}

#[derive(Clone)]
pub struct FakeLlm {
    pub state: Arc<Mutex<LlmState>>,
    pub base: String,
}

impl FakeLlm {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(LlmState::default()));
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .route("/v1/messages", post(answer))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, base }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn requests(&self) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|r| r.2.clone())
            .collect()
    }

    pub fn headers(&self, i: usize) -> HeaderMap {
        self.state.lock().unwrap().requests[i].1.clone()
    }
}

async fn answer(
    State(state): State<Arc<Mutex<LlmState>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let reply = {
        let mut s = state.lock().unwrap();
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        s.requests.push((uri.path().to_owned(), headers, body));
        s.script.pop_front()
    };
    match reply {
        Some(Reply::Json(v)) => axum::Json(v).into_response(),
        Some(Reply::Status(code, retry_after)) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({"error": {"message": "busy", "type": "rate_limit_error"}})),
            )
                .into_response();
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", s.parse().unwrap());
            }
            r
        }
        Some(Reply::NotJson) => (StatusCode::OK, "<html>oops</html>").into_response(),
        Some(Reply::Hang) => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "the test scripted no more replies"}})),
        )
            .into_response(),
    }
}

/// An OpenAI Chat Completions answer with text.
pub fn openai_text(text: &str) -> Reply {
    Reply::Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    }))
}

/// An OpenAI answer calling one tool (names as sent on the wire, e.g. `memory__write`).
pub fn openai_tool_call(id: &str, wire_name: &str, arguments: Value) -> Reply {
    Reply::Json(json!({
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": wire_name, "arguments": arguments.to_string()}}
        ]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 80, "completion_tokens": 10, "total_tokens": 90}
    }))
}

/// An Anthropic Messages answer with text.
pub fn anthropic_text(text: &str) -> Reply {
    Reply::Json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 50, "output_tokens": 12}
    }))
}

/// An Anthropic answer using one tool.
pub fn anthropic_tool_use(id: &str, wire_name: &str, input: Value) -> Reply {
    Reply::Json(json!({
        "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": id, "name": wire_name, "input": input}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 40, "output_tokens": 8}
    }))
}

/// The tool messages of a Chat Completions request.
pub fn tool_messages(request: &Value) -> Vec<Value> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}
