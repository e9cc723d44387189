//! A small MCP server on loopback speaking the streamable HTTP transport with plain JSON
//! responses (the reference server answers with SSE streams, so between the two both response
//! forms are covered). It records each request's headers, issues a session id at
//! `initialize`, answers 404 to a session it has forgotten, as the specification says, and
//! offers two tools: `lookup` (answers `found Q`) and `broken` (a tool error).
#![allow(dead_code)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct McpState {
    /// Method and headers of each POST.
    pub requests: Vec<(String, HeaderMap)>,
    pub sessions: BTreeSet<String>,
    pub issued: usize,
}

#[derive(Clone)]
pub struct FakeMcp {
    pub state: Arc<Mutex<McpState>>,
    pub url: String,
}

impl FakeMcp {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(McpState::default()));
        let app = Router::new()
            .route(
                "/mcp",
                post(handle)
                    // No server-initiated stream; the spec's answer is 405.
                    .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                    .delete(forget),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, url }
    }

    /// Forgets every session, as a server does when it restarts.
    pub fn forget_sessions(&self) {
        self.state.lock().unwrap().sessions.clear();
    }

    /// The requests with `method`, by their headers.
    pub fn requests(&self, method: &str) -> Vec<HeaderMap> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, h)| h.clone())
            .collect()
    }
}

async fn forget(State(state): State<Arc<Mutex<McpState>>>, headers: HeaderMap) -> StatusCode {
    if let Some(id) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
        state.lock().unwrap().sessions.remove(id);
    }
    StatusCode::OK
}

async fn handle(
    State(state): State<Arc<Mutex<McpState>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "parse error"}}),
            ),
        )
            .into_response();
    };
    let method = message["method"].as_str().unwrap_or_default().to_owned();
    let id = message.get("id").cloned();
    let mut s = state.lock().unwrap();
    s.requests.push((method.clone(), headers.clone()));
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if method == "initialize" {
        s.issued += 1;
        let sid = format!("session-{}", s.issued);
        s.sessions.insert(sid.clone());
        let asked = message["params"]["protocolVersion"]
            .as_str()
            .unwrap_or("2025-06-18");
        let version = if asked == "2025-06-18" || asked == "2025-11-25" {
            asked
        } else {
            "2025-06-18"
        };
        let mut response = axum::Json(json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "fake-mcp", "version": "1.0.0"}
            }
        }))
        .into_response();
        response
            .headers_mut()
            .insert("mcp-session-id", sid.parse().unwrap());
        return response;
    }
    match &session {
        Some(sid) if s.sessions.contains(sid) => {}
        Some(_) => return StatusCode::NOT_FOUND.into_response(),
        None => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "no session"}})),
            )
                .into_response();
        }
    }
    let Some(id) = id else {
        // A notification or a response: nothing to answer.
        return StatusCode::ACCEPTED.into_response();
    };
    let result = match method.as_str() {
        "tools/list" => json!({"tools": [
            {"name": "lookup", "description": "Look a thing up", "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}},
            {"name": "broken", "description": "Always fails", "inputSchema": {"type": "object"}}
        ]}),
        "tools/call" => match message["params"]["name"].as_str() {
            Some("lookup") => {
                json!({"content": [{"type": "text", "text": format!("found {}", message["params"]["arguments"]["q"].as_str().unwrap_or_default())}], "isError": false})
            }
            Some("broken") => {
                json!({"content": [{"type": "text", "text": "the backend is down"}], "isError": true})
            }
            _ => {
                return axum::Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": "unknown tool"}}))
                    .into_response();
            }
        },
        "ping" => json!({}),
        _ => {
            return axum::Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "method not found"}}))
                .into_response();
        }
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}
