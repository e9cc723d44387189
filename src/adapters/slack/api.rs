//! A small Slack Web API client over reqwest: JSON in, JSON out, Slack's error codes and 429s
//! turned into typed errors. The request and response shapes are Slack's own (see the method
//! docs at api.slack.com/methods).

use crate::adapters::limits::Buckets;
use crate::config::Secret;
use crate::core::clock::Clock;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Why a Web API call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SlackError {
    /// HTTP 429 or `ratelimited`, or a call not sent because its bucket is still closed from
    /// an earlier one: wait this long.
    #[error("rate limited by Slack (retry after {0:?})")]
    RateLimited(Duration),
    /// `"ok": false` with Slack's error code, such as `channel_not_found`.
    #[error("{}", api_words(.0))]
    Api(String),
    /// Network trouble or a 5xx: worth trying again.
    #[error("Slack could not be reached: {0}")]
    Transport(String),
}

impl SlackError {
    /// Errors that no retry will fix. Unknown codes count as permanent, so an unexpected
    /// answer is reported in the run rather than retried forever.
    pub fn is_permanent(&self) -> bool {
        match self {
            SlackError::RateLimited(_) | SlackError::Transport(_) => false,
            SlackError::Api(code) => !matches!(
                code.as_str(),
                "internal_error"
                    | "fatal_error"
                    | "service_unavailable"
                    | "request_timeout"
                    | "team_added_to_org"
            ),
        }
    }
}

/// Slack's error code, with what it means for the person reading it where Baton knows.
fn api_words(code: &str) -> String {
    let meaning = match code {
        "channel_not_found" => {
            "the channel does not exist, or it is private and the bot is not in it (invite it with /invite @baton)"
        }
        "not_in_channel" => "the bot is not in the channel (invite it with /invite @baton)",
        "is_archived" => "the channel is archived",
        "msg_too_long" => "the message is too long for Slack",
        "invalid_blocks" | "invalid_blocks_format" => "Slack would not take the message's layout",
        "message_not_found" | "cant_update_message" => {
            "the message to change is gone, or the bot did not post it"
        }
        "invalid_auth" | "not_authed" | "token_revoked" | "token_expired" | "account_inactive" => {
            "the bot token is no longer valid (SLACK_BOT_TOKEN)"
        }
        "missing_scope" => {
            "the Slack app lacks a permission it needs (reinstall it from `baton slack manifest`)"
        }
        "restricted_action" => "the workspace does not let the bot post there",
        _ => "",
    };
    if meaning.is_empty() {
        format!("Slack answered `{code}`")
    } else {
        format!("Slack answered `{code}`: {meaning}")
    }
}

/// Longest wait taken from Slack: a bigger number is a broken header, not a wait.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// How long to wait when Slack says `ratelimited` without saying how long.
const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// The Web API client.
#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Secret,
    /// Slack rate-limits a method (and `chat.postMessage` / `chat.update` per channel): once it
    /// said wait, no call in that bucket goes before the wait is over.
    buckets: Arc<Buckets>,
}

/// The bucket of a call: the method, and the channel when the call names one.
fn bucket(method: &str, channel: Option<&str>) -> String {
    match channel {
        Some(c) if !c.is_empty() => format!("{method}:{c}"),
        _ => method.to_owned(),
    }
}

impl SlackApi {
    pub fn new(base: reqwest::Url, token: Secret, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let http = crate::http_client::builder()
            .timeout(Duration::from_secs(20))
            .build()?;
        Ok(Self {
            http,
            base,
            token,
            buckets: Arc::new(Buckets::new(clock)),
        })
    }

    /// The host the Web API lives on, for checking `response_url`s in tests behind the seam.
    pub fn host(&self) -> Option<&str> {
        self.base.host_str()
    }

    /// A POST to a Web API method, authorised with `token`.
    fn request(&self, method: &str, token: &Secret) -> Result<reqwest::RequestBuilder, SlackError> {
        let url = self
            .base
            .join(method)
            .map_err(|e| SlackError::Transport(e.to_string()))?;
        Ok(self.http.post(url).bearer_auth(token.expose()))
    }

    /// Calls a Web API method with a JSON body (write methods); returns the response when `ok`
    /// is true.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Value, SlackError> {
        let bucket = bucket(method, body["channel"].as_str());
        self.finish(&bucket, self.request(method, &self.token)?.json(body))
            .await
    }

    /// Calls a Web API method with form parameters, as Slack's read methods (such as
    /// `conversations.list`) expect.
    pub async fn call_form(
        &self,
        method: &str,
        params: &[(&str, String)],
    ) -> Result<Value, SlackError> {
        let channel = params
            .iter()
            .find(|(k, _)| *k == "channel")
            .map(|(_, v)| v.as_str());
        let bucket = bucket(method, channel);
        self.finish(&bucket, self.request(method, &self.token)?.form(params))
            .await
    }

    /// Calls a method with another token: `apps.connections.open` takes the app-level token.
    /// It takes form parameters, like Slack's other methods that accept no JSON.
    pub async fn call_with_token(
        &self,
        method: &str,
        token: &Secret,
        params: &[(&str, String)],
    ) -> Result<Value, SlackError> {
        self.finish(method, self.request(method, token)?.form(params))
            .await
    }

    /// `auth.test`, with the scopes the token was granted (Slack lists them in the
    /// `x-oauth-scopes` header; `None` when a proxy dropped it).
    pub async fn auth_test(&self) -> Result<(Value, Option<Vec<String>>), SlackError> {
        let (value, headers) = self
            .exchange(
                "auth.test",
                self.request("auth.test", &self.token)?
                    .json(&serde_json::json!({})),
            )
            .await?;
        let scopes = headers
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
        Ok((value, scopes))
    }

    async fn finish(
        &self,
        bucket: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, SlackError> {
        self.exchange(bucket, request).await.map(|(value, _)| value)
    }

    /// Sends a request in `bucket` and reads Slack's answer: 429s, 5xx and `"ok": false` become
    /// errors. A bucket Slack closed is not asked again before it opens.
    async fn exchange(
        &self,
        bucket: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(Value, reqwest::header::HeaderMap), SlackError> {
        if let Some(wait) = self.buckets.wait(&[bucket]) {
            return Err(SlackError::RateLimited(wait));
        }
        let response = request
            .send()
            .await
            .map_err(|e| SlackError::Transport(crate::http_client::describe(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let limited = |buckets: &Buckets| {
            let wait = crate::http_client::retry_after(&headers, MAX_WAIT).unwrap_or(DEFAULT_WAIT);
            buckets.close(bucket, wait);
            SlackError::RateLimited(wait)
        };
        if status.as_u16() == 429 {
            return Err(limited(&self.buckets));
        }
        if status.is_server_error() {
            return Err(SlackError::Transport(format!("HTTP {status}")));
        }
        if status.is_client_error()
            && !headers
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.contains("json"))
        {
            // Not Slack's JSON error but a proxy's or a wrong URL's page: retrying will not help.
            return Err(SlackError::Api(format!("http_{}", status.as_u16())));
        }
        let value: Value = response.json().await.map_err(|e| {
            SlackError::Transport(format!("unreadable answer: {}", e.without_url()))
        })?;
        if value.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok((value, headers));
        }
        let code = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error");
        // Slack also says `ratelimited` in a 200 answer; it is the same wait.
        if code == "ratelimited" {
            return Err(limited(&self.buckets));
        }
        Err(SlackError::Api(code.to_owned()))
    }

    /// Posts a private reply to a slash command or an interaction through its `response_url`.
    /// A 429 or a network error is tried again (waiting as Slack says) for as long as
    /// [`RESPOND_PATIENCE`] allows: the person is waiting for this answer, and the URL stays
    /// valid for half an hour.
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), SlackError> {
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            let wait = match self.respond_once(response_url, text).await {
                Err(SlackError::RateLimited(wait)) => wait,
                Err(SlackError::Transport(_)) => backoff,
                other => return other,
            };
            if started.elapsed() + wait > RESPOND_PATIENCE {
                return self.respond_once(response_url, text).await;
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn respond_once(&self, response_url: &str, text: &str) -> Result<(), SlackError> {
        let body = serde_json::json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        let r = self
            .http
            .post(response_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| SlackError::Transport(crate::http_client::describe(&e)))?;
        if r.status().as_u16() == 429 {
            let wait =
                crate::http_client::retry_after(r.headers(), MAX_WAIT).unwrap_or(DEFAULT_WAIT);
            return Err(SlackError::RateLimited(wait));
        }
        if r.status().is_server_error() {
            return Err(SlackError::Transport(format!("HTTP {}", r.status())));
        }
        if !r.status().is_success() {
            return Err(SlackError::Api(format!("http_{}", r.status().as_u16())));
        }
        Ok(())
    }
}

/// How long a private reply keeps being tried through rate limits and network errors.
const RESPOND_PATIENCE: Duration = Duration::from_secs(120);
