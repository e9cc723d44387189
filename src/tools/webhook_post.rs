//! `webhook.post` (external): POST JSON to an endpoint configured by name in
//! `BATON_WEBHOOKS`. Workflows name the endpoint, never the URL, so a workflow file cannot send
//! data anywhere the operator did not configure.

use super::{ToolError, response_value};
use serde_json::Value;
use std::collections::BTreeMap;

const MAX_BODY: usize = 64 * 1024;

pub(super) async fn call(
    client: &reqwest::Client,
    endpoints: &BTreeMap<String, String>,
    args: &Value,
) -> Result<Value, ToolError> {
    let name = args
        .get("endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::BadArgs("`endpoint` must be a string".into()))?;
    let url = endpoints.get(name).ok_or_else(|| {
        ToolError::Refused(format!(
            "webhook endpoint `{name}` is not configured (add {name}=URL to BATON_WEBHOOKS)"
        ))
    })?;
    let body = args.get("body").cloned().unwrap_or(Value::Null);
    let response = client.post(url).json(&body).send().await.map_err(|e| {
        ToolError::Failed(format!(
            "POST to webhook `{name}` failed: {}",
            crate::http_client::describe(&e)
        ))
    })?;
    let (status, value) = response_value(response, MAX_BODY).await?;
    if !status.is_success() {
        return Err(ToolError::Failed(format!(
            "webhook `{name}` answered {status}, so the call did not go through"
        )));
    }
    Ok(value)
}
