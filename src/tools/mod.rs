//! Built-in tool implementations. The engine decides whether a tool may run (see
//! `core::tools` for capability classes); this module only runs it, within its own guards.

mod http_get;
pub mod mcp;
mod webhook_post;

pub use http_get::HostAllowList;
pub use mcp::Mcp;

use serde_json::Value;
use std::collections::BTreeMap;

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The call was not allowed; the engine audits it as a refusal.
    #[error("refused: {0}")]
    Refused(String),
    /// The arguments were wrong.
    #[error("bad arguments: {0}")]
    BadArgs(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// What went wrong, without the kind's prefix.
    pub fn reason(&self) -> &str {
        match self {
            ToolError::Refused(r) | ToolError::BadArgs(r) | ToolError::Failed(r) => r,
        }
    }
}

/// Settings for the built-in tools.
#[derive(Debug, Clone, Default)]
pub struct ToolSettings {
    pub http_allow: HostAllowList,
    /// Named webhook endpoints (`BATON_WEBHOOKS`). The URLs are secrets.
    pub webhooks: BTreeMap<String, String>,
}

/// Runs built-in tools and the tools of MCP servers.
pub struct ToolBox {
    settings: ToolSettings,
    client: reqwest::Client,
    mcp: std::sync::Arc<Mcp>,
}

impl ToolBox {
    pub fn new(settings: ToolSettings) -> anyhow::Result<Self> {
        let client = crate::http_client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            settings,
            client,
            mcp: Default::default(),
        })
    }

    /// The same tools plus those of these MCP servers.
    pub fn with_mcp(self, mcp: std::sync::Arc<Mcp>) -> Self {
        Self { mcp, ..self }
    }

    /// A fresher description of an MCP tool whose server could not be listed when the
    /// catalogue was made, once the server has listed it.
    pub fn describe(
        &self,
        info: &crate::core::tools::ToolInfo,
    ) -> Option<crate::core::tools::ToolInfo> {
        let origin = info.mcp.as_ref().filter(|o| o.unlisted.is_some())?;
        let live = self.mcp.describe(&info.name)?;
        let mut fresh = info.clone();
        fresh.description = live.description;
        fresh.parameters = live.input_schema;
        fresh.mcp = Some(crate::core::tools::McpOrigin {
            unlisted: None,
            ..origin.clone()
        });
        Some(fresh)
    }

    /// Calls `tool` with `args`. `declared` is what the step may use: any other tool is refused
    /// here, whatever asked for it.
    pub async fn call(
        &self,
        tool: &str,
        args: &Value,
        declared: &[String],
    ) -> Result<Value, ToolError> {
        if !declared.iter().any(|d| d == tool) {
            return Err(ToolError::Refused(format!(
                "tool `{tool}` is not declared by this step"
            )));
        }
        match tool {
            _ if self.mcp.owns(tool) => self.mcp.call(tool, args).await,
            "http.get" => http_get::call(&self.settings.http_allow, args).await,
            "webhook.post" => webhook_post::call(&self.client, &self.settings.webhooks, args).await,
            other => Err(ToolError::Refused(format!("unknown tool `{other}`"))),
        }
    }
}

/// Reads a response body up to `limit` bytes; longer bodies are cut, not buffered whole.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(String, bool), ToolError> {
    let mut body = Vec::new();
    let mut cut = false;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ToolError::Failed(format!("reading the response: {e}")))?
    {
        let room = limit.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok((String::from_utf8_lossy(&body).into_owned(), cut))
}

/// Reads a response (body cut at `limit`) into the JSON a tool returns, with its status.
async fn response_value(
    response: reqwest::Response,
    limit: usize,
) -> Result<(reqwest::StatusCode, Value), ToolError> {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (body, cut) = read_limited(response, limit).await?;
    let json = if content_type.as_deref().is_some_and(|c| c.contains("json")) && !cut {
        serde_json::from_str::<Value>(&body).ok()
    } else {
        None
    };
    let value = serde_json::json!({"status": status.as_u16(), "content_type": content_type, "body": body, "json": json, "truncated": cut});
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_tool_the_step_did_not_declare_is_refused() {
        let tools = ToolBox::new(ToolSettings::default()).unwrap();
        let err = tools
            .call(
                "webhook.post",
                &json!({"endpoint": "pager", "body": {}}),
                &["http.get".to_owned()],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, ToolError::Refused(ref m) if m.contains("not declared")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unconfigured_webhook_endpoint_is_refused_with_what_to_set() {
        let tools = ToolBox::new(ToolSettings::default()).unwrap();
        let err = tools
            .call(
                "webhook.post",
                &json!({"endpoint": "crm", "body": {}}),
                &["webhook.post".to_owned()],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, ToolError::Refused(ref m) if m.contains("BATON_WEBHOOKS")),
            "{err}"
        );
    }
}
