//! Tools from MCP servers, through the rmcp client: a process Baton starts (stdio) or a server
//! it reaches over streamable HTTP. Each server gets one session, opened at start-up and again
//! whenever it has closed; its tools are listed once per session. Which tools may run, and
//! with what approval, is the engine's decision (`core::tools`); this module only calls them.

use super::ToolError;
use crate::core::tools::ListedTool;
use crate::core::workflow::{McpServer, McpTransport};
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::common::client_side_sse::BoxedSseResponse;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, ServiceExt as _};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use tokio::io::AsyncBufReadExt as _;

/// Text a tool returns beyond this is cut, so one call cannot flood the ledger.
const MAX_TEXT: usize = 100_000;
/// Variables a started server inherits from Baton's environment; everything else it gets
/// comes from its file's `env`, so Baton's own tokens stay with Baton.
const INHERITED_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TZ"];

type Session = RunningService<RoleClient, ClientConfig>;

/// The configured MCP servers and their sessions.
#[derive(Default)]
pub struct Mcp {
    servers: BTreeMap<String, Server>,
}

struct Server {
    def: McpServer,
    session: tokio::sync::Mutex<Option<Session>>,
    /// The tools the current session listed.
    listed: RwLock<Option<Vec<ListedTool>>>,
}

impl Mcp {
    pub fn new(defs: Vec<McpServer>) -> Self {
        Self {
            servers: defs
                .into_iter()
                .map(|def| {
                    let server = Server {
                        def,
                        session: tokio::sync::Mutex::new(None),
                        listed: RwLock::new(None),
                    };
                    (server.def.name.clone(), server)
                })
                .collect(),
        }
    }

    /// Connects to every server at once and lists its tools: each server's listing, or why
    /// there is none. A server that fails here is tried again on its first call.
    pub async fn connect_all(&self) -> Vec<(&McpServer, Result<Vec<ListedTool>, String>)> {
        let tries = self.servers.values().map(|s| async move {
            let result = s.connected().await.map(|_| s.listing());
            match &result {
                Ok(tools) => tracing::info!(server = %s.def.name, tools = tools.len(), "MCP server ready"),
                Err(why) => tracing::warn!(server = %s.def.name, error = %why, "MCP server not available; its tools are tried again when called"),
            }
            (&s.def, result)
        });
        futures_util::future::join_all(tries).await
    }

    /// Whether `tool` (`SERVER.name`) belongs to a configured server.
    pub fn owns(&self, tool: &str) -> bool {
        tool.split_once('.')
            .is_some_and(|(server, _)| self.servers.contains_key(server))
    }

    /// How the server describes `tool` now, if its session has listed it.
    pub fn describe(&self, tool: &str) -> Option<ListedTool> {
        let (server, name) = tool.split_once('.')?;
        let listed = self.servers.get(server)?.listed.read().ok()?;
        listed.as_ref()?.iter().find(|t| t.name == name).cloned()
    }

    /// Calls `tool` (`SERVER.name`) with `args`, within the server's call timeout.
    pub async fn call(&self, tool: &str, args: &Value) -> Result<Value, ToolError> {
        let (server, name) = tool
            .split_once('.')
            .and_then(|(s, n)| Some((self.servers.get(s)?, n)))
            .ok_or_else(|| ToolError::Refused(format!("unknown tool `{tool}`")))?;
        let arguments = match args {
            Value::Object(map) => map.clone(),
            Value::Null => Default::default(),
            _ => {
                return Err(ToolError::BadArgs(
                    "the arguments must be a JSON object".into(),
                ));
            }
        };
        let peer = server.connected().await.map_err(ToolError::Failed)?;
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        // Dropping the call on timeout tells the server it was cancelled.
        let result = tokio::time::timeout(server.def.call_timeout, peer.call_tool(params))
            .await
            .map_err(|_| {
                ToolError::Failed(format!(
                    "`{tool}` did not answer within {} s",
                    server.def.call_timeout.as_secs()
                ))
            })?
            .map_err(|e| ToolError::Failed(format!("`{tool}`: {e}")))?;
        let result = serde_json::to_value(&result).map_err(|e| {
            ToolError::Failed(format!("`{tool}` answered something unreadable: {e}"))
        })?;
        tool_output(&result)
    }

    /// Ends every session: stdio servers are stopped, HTTP sessions deleted.
    pub async fn shutdown(&self) {
        for s in self.servers.values() {
            if let Some(mut session) = s.session.lock().await.take() {
                let _ = session
                    .close_with_timeout(std::time::Duration::from_secs(5))
                    .await;
            }
        }
    }
}

impl Server {
    /// The session's peer, opening a session first when there is none or it has closed.
    async fn connected(&self) -> Result<Peer<RoleClient>, String> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref()
            && !session.is_closed()
            && !session.peer().is_transport_closed()
        {
            return Ok(session.peer().clone());
        }
        *slot = None;
        let session = tokio::time::timeout(self.def.connect_timeout, self.open())
            .await
            .map_err(|_| {
                format!(
                    "MCP server `{}` did not finish connecting within {} s",
                    self.def.name,
                    self.def.connect_timeout.as_secs()
                )
            })??;
        let tools =
            session.peer().list_all_tools().await.map_err(|e| {
                format!("MCP server `{}` did not list its tools: {e}", self.def.name)
            })?;
        let listed = tools
            .into_iter()
            .map(|t| ListedTool {
                name: t.name.into_owned(),
                description: t.description.map(|d| d.into_owned()).unwrap_or_default(),
                input_schema: Value::Object((*t.input_schema).clone()),
            })
            .collect();
        if let Ok(mut l) = self.listed.write() {
            *l = Some(listed);
        }
        let peer = session.peer().clone();
        *slot = Some(session);
        Ok(peer)
    }

    fn listing(&self) -> Vec<ListedTool> {
        self.listed
            .read()
            .ok()
            .and_then(|l| l.clone())
            .unwrap_or_default()
    }

    async fn open(&self) -> Result<Session, String> {
        let name = &self.def.name;
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("baton", env!("CARGO_PKG_VERSION")),
        );
        match &self.def.transport {
            McpTransport::Stdio { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args)
                    .env_clear()
                    .envs(
                        INHERITED_ENV
                            .iter()
                            .filter_map(|k| Some((*k, std::env::var(k).ok()?))),
                    )
                    .envs(env)
                    .kill_on_drop(true);
                let (transport, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        format!("MCP server `{name}`: could not start `{command}`: {e}")
                    })?;
                if let Some(stderr) = stderr {
                    let server = name.clone();
                    // What the server says on stderr is its log; it goes to ours.
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let line: String = line.chars().take(2000).collect();
                            tracing::info!(server = %server, "mcp: {line}");
                        }
                    });
                }
                info.serve(transport)
                    .await
                    .map_err(|e| format!("MCP server `{name}` (`{command}`): {e}"))
            }
            McpTransport::Http { url, headers } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                config.custom_headers =
                    header_map(headers).map_err(|e| format!("MCP server `{name}`: {e}"))?;
                let client = crate::http_client::builder()
                    // A redirect would carry the headers, tokens included, elsewhere.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("MCP server `{name}`: {e}"))?;
                let transport =
                    StreamableHttpClientTransport::with_client(SessionAware(client), config);
                info.serve(transport)
                    .await
                    .map_err(|e| format!("MCP server `{name}` ({url}): {e}"))
            }
        }
    }
}

/// rmcp's reqwest client, plus one reading of what servers do in practice: MCP says a server
/// answers 404 to a session it no longer has, and the client starts a new one; servers built
/// from the TypeScript SDK's example answer 400 with an error that carries no request id. That
/// answer to a request sent in a session is taken as the same news, so rmcp opens a new
/// session and sends the request again (once) instead of waiting for an answer that will
/// never come.
#[derive(Clone)]
struct SessionAware(reqwest::Client);

impl StreamableHttpClient for SessionAware {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let asks = matches!(message, ClientJsonRpcMessage::Request(_));
        let in_session = session_id.is_some();
        let response = self
            .0
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await?;
        if asks
            && in_session
            && let StreamableHttpPostResponse::Json(ServerJsonRpcMessage::Error(e), _) = &response
            && e.id.is_none()
        {
            return Err(StreamableHttpError::SessionExpired);
        }
        Ok(response)
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxedSseResponse, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxedSseResponse, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

fn header_map(
    headers: &BTreeMap<String, String>,
) -> Result<HashMap<HeaderName, HeaderValue>, String> {
    headers
        .iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("`{k}` is not a header name"))?;
            let mut value = HeaderValue::from_str(v)
                .map_err(|_| format!("the value of header `{k}` is not valid in a header"))?;
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect()
}

/// A tool's result as workflows and models read it: the text it returned, its structured
/// content when it gave some, and a short description of anything else (images, resources).
/// A result the server marks as an error is a failed call with that text.
fn tool_output(result: &Value) -> Result<Value, ToolError> {
    let mut text = String::new();
    let mut other = Vec::new();
    for block in result["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(block["text"].as_str().unwrap_or_default());
            }
            Some(kind @ ("image" | "audio")) => other.push(json!({
                "type": kind,
                "mime_type": block["mimeType"],
                "bytes": block["data"].as_str().map(|d| d.len() / 4 * 3),
            })),
            Some("resource") => other.push(json!({
                "type": "resource",
                "uri": block["resource"]["uri"],
                "text": block["resource"]["text"],
            })),
            Some("resource_link") => other.push(json!({
                "type": "resource_link",
                "uri": block["uri"],
                "name": block["name"],
            })),
            _ => other.push(json!({"type": block["type"]})),
        }
    }
    let truncated = text.len() > MAX_TEXT;
    if truncated {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    if result["isError"].as_bool() == Some(true) {
        return Err(ToolError::Failed(if text.is_empty() {
            "the tool reported an error".into()
        } else {
            text
        }));
    }
    let mut out = json!({"text": text});
    if let Some(structured) = result.get("structuredContent") {
        out["structured"] = structured.clone();
    }
    if !other.is_empty() {
        out["other"] = Value::Array(other);
    }
    if truncated {
        out["truncated"] = Value::Bool(true);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_keeps_its_text_and_structured_content_and_describes_the_rest() {
        let out = tool_output(&json!({
            "content": [
                {"type": "text", "text": "3 issues"},
                {"type": "image", "mimeType": "image/png", "data": "AAAA"},
                {"type": "text", "text": "done"}
            ],
            "structuredContent": {"count": 3}
        }))
        .unwrap();
        assert_eq!(out["text"], "3 issues\ndone");
        assert_eq!(out["structured"]["count"], 3);
        assert_eq!(out["other"][0]["type"], "image");
        assert_eq!(out["other"][0]["bytes"], 3);
    }

    #[test]
    fn a_result_marked_as_an_error_is_a_failed_call_with_its_text() {
        let err = tool_output(
            &json!({"content": [{"type": "text", "text": "no such repo"}], "isError": true}),
        )
        .unwrap_err();
        assert!(
            matches!(err, ToolError::Failed(ref m) if m == "no such repo"),
            "{err}"
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let out = tool_output(&json!({"content": [{"type": "text", "text": long}]})).unwrap();
        assert!(out["text"].as_str().unwrap().len() <= MAX_TEXT);
        assert_eq!(out["truncated"], true);
    }
}
