//! A small Discord REST client over reqwest: JSON in, JSON out, Discord's error codes, 429s and
//! rate-limit buckets turned into typed errors. The shapes are Discord's own (API v10); request
//! bodies come from serenity's builders.
//!
//! Serenity's own HTTP client is not used: its rate limiter sleeps inside the request on the
//! wall clock, while Baton's outbox must decide when to try again (on the injected clock, per
//! conversation, surviving restarts). So this client reads Discord's bucket headers and 429s
//! and reports them; the outbox waits. It behaves the same against Discord, a proxy or a test
//! server.

use crate::adapters::limits::Buckets;
use crate::config::Secret;
use crate::core::clock::Clock;
use crate::http_client::wait_seconds;
use reqwest::Method;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a REST call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscordError {
    /// HTTP 429: wait this long. The route's bucket (or every route, for the global limit) is
    /// closed for as long.
    #[error("rate limited by Discord (retry after {0:?})")]
    RateLimited(Duration),
    /// Not sent: Discord said this route's bucket is empty until then. Not a failure.
    #[error("Discord's rate-limit bucket for this route refills in {0:?}")]
    BucketEmpty(Duration),
    /// Discord refused the request: HTTP status, Discord's JSON error code and message.
    #[error("Discord answered HTTP {status}: {message} (code {code}){}", code_words(*code))]
    Api {
        status: u16,
        code: i64,
        message: String,
    },
    /// Network trouble or a 5xx: worth trying again.
    #[error("Discord could not be reached: {0}")]
    Transport(String),
}

impl DiscordError {
    /// Errors no retry will fix: every 4xx but 429 (missing access, unknown channel, a body
    /// Discord will not take).
    pub fn is_permanent(&self) -> bool {
        matches!(self, DiscordError::Api { status, .. } if *status < 500)
    }

    /// Discord's JSON error code, when it gave one.
    pub fn code(&self) -> Option<i64> {
        match self {
            DiscordError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What a Discord error code means for the person reading it, where Baton knows.
fn code_words(code: i64) -> &'static str {
    match code {
        10003 => ": the channel does not exist, or the bot is not in its server",
        10008 => ": the message to change is gone",
        50001 => ": the bot cannot see the channel (give it View Channel there)",
        50013 => {
            ": the bot lacks a permission there (Send Messages, Create Public Threads, Send Messages in Threads)"
        }
        50035 => ": Discord would not take the message as written",
        _ => "",
    }
}

/// Longest wait taken from Discord: a bigger number is a broken header, not a wait.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// How long to wait after a 429 that says nothing readable about how long.
const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// The REST client.
pub struct DiscordApi {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Secret,
    /// Buckets Discord closed (an empty bucket, a 429), by bucket key; the global limit is
    /// the bucket [`GLOBAL`].
    buckets: Buckets,
    /// Discord's own bucket id for each route, from `X-RateLimit-Bucket`: routes that share a
    /// bucket id (with the same major parameters) share their limit.
    route_buckets: Mutex<HashMap<String, String>>,
}

/// The bucket every route shares when Discord says the whole bot is rate limited.
const GLOBAL: &str = "global";

impl DiscordApi {
    pub fn new(base: reqwest::Url, token: Secret, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let http = crate::http_client::builder()
            // Discord asks bots to identify themselves this way.
            .user_agent(concat!(
                "DiscordBot (baton, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .timeout(Duration::from_secs(20))
            .build()?;
        Ok(Self {
            http,
            base,
            token,
            buckets: Buckets::new(clock),
            route_buckets: Mutex::new(HashMap::new()),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, DiscordError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, DiscordError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, DiscordError> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, DiscordError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// The key a route's limit is kept under: Discord's bucket id with the route's major
    /// parameters once Discord named it, the route itself before.
    fn bucket_key(&self, route: &Route) -> String {
        match self
            .route_buckets
            .lock()
            .expect("bucket lock")
            .get(&route.route)
        {
            Some(id) => format!("{id}:{}", route.major),
            None => route.route.clone(),
        }
    }

    /// Sends one request. A bucket Discord closed is not asked again before it opens, and
    /// neither is any route while the global limit holds.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DiscordError> {
        let route = route_of(&method, path);
        let key = self.bucket_key(&route);
        // Interaction callbacks are exempt from the global limit, as Discord documents.
        let global = !route.route.starts_with("POST interactions/");
        let keys: &[&str] = if global { &[&key, GLOBAL] } else { &[&key] };
        if let Some(wait) = self.buckets.wait(keys) {
            return Err(DiscordError::BucketEmpty(wait));
        }
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| DiscordError::Transport(e.to_string()))?;
        let mut request = self.http.request(method, url).header(
            reqwest::header::AUTHORIZATION,
            format!("Bot {}", self.token.expose()),
        );
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DiscordError::Transport(crate::http_client::describe(&e)))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // Learn the route's bucket id first, so the limits below land on the shared bucket.
        let key = match header("x-ratelimit-bucket") {
            Some(id) if !id.is_empty() => {
                self.route_buckets
                    .lock()
                    .expect("bucket lock")
                    .insert(route.route.clone(), id.to_owned());
                format!("{id}:{}", route.major)
            }
            _ => key,
        };
        if header("x-ratelimit-remaining") == Some("0")
            && let Some(reset) =
                header("x-ratelimit-reset-after").and_then(|v| wait_seconds(v, MAX_WAIT))
        {
            self.buckets.close(&key, reset);
        }
        let text = response.text().await.map_err(|e| {
            DiscordError::Transport(format!("unreadable answer: {}", e.without_url()))
        })?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if status == 429 {
            // The body's float is the precise wait; the header is whole seconds.
            let wait = json
                .as_ref()
                .and_then(|j| j["retry_after"].as_f64())
                .and_then(|s| wait_seconds(&s.to_string(), MAX_WAIT))
                .or_else(|| header("retry-after").and_then(|v| wait_seconds(v, MAX_WAIT)))
                .unwrap_or(DEFAULT_WAIT);
            // A global limit holds back every route, not only this one: requests that hit
            // it anyway count towards Discord's invalid-request ban. Any other 429 closes the
            // route's bucket, so no other call in it goes early either.
            let is_global = json.as_ref().is_some_and(|j| j["global"] == true)
                || header("x-ratelimit-global").is_some_and(|v| v == "true")
                || header("x-ratelimit-scope") == Some("global");
            self.buckets
                .close(if is_global { GLOBAL } else { &key }, wait);
            return Err(DiscordError::RateLimited(wait));
        }
        if status >= 500 {
            return Err(DiscordError::Transport(format!("HTTP {status}")));
        }
        if status >= 400 {
            let (code, message) = match &json {
                Some(j) => {
                    let mut message = j["message"].as_str().unwrap_or("no message").to_owned();
                    // "Invalid Form Body" says which field only in `errors`.
                    if let Some(errors) = j.get("errors") {
                        let mut found = Vec::new();
                        field_errors(errors, "", &mut found);
                        if !found.is_empty() {
                            message = format!("{message}: {}", found.join("; "));
                        }
                    }
                    (j["code"].as_i64().unwrap_or(0), message)
                }
                // Not Discord's JSON but a proxy's or a wrong URL's page.
                None => (0, "not a Discord API answer".to_owned()),
            };
            return Err(DiscordError::Api {
                status,
                code,
                message,
            });
        }
        // 204 No Content and other empty successes.
        Ok(json.unwrap_or(Value::Null))
    }
}

/// Discord's nested `errors` object as `field: what is wrong` lines (`embeds.0.description:
/// Must be 4096 or fewer in length.`), at most a few, so a refusal reads as words.
fn field_errors(v: &Value, path: &str, out: &mut Vec<String>) {
    const MOST: usize = 5;
    let Some(map) = v.as_object() else { return };
    for (key, value) in map {
        if out.len() >= MOST {
            return;
        }
        if key == "_errors" {
            for e in value.as_array().into_iter().flatten() {
                if let Some(m) = e["message"].as_str() {
                    let field = if path.is_empty() { "body" } else { path };
                    out.push(format!("{field}: {m}"));
                }
            }
            continue;
        }
        let inner = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        field_errors(value, &inner, out);
    }
}

/// A route as Discord's rate limits see it.
struct Route {
    /// The method and the path with every ID but the major parameters folded.
    route: String,
    /// The major parameters' values (a channel, a guild, a webhook with its token, an
    /// interaction with its token): routes with the same bucket id share a limit only for
    /// the same major parameters.
    major: String,
}

/// The rate-limit route of a request, the way Discord groups them: the method and the path
/// with the "major parameters" kept and every other ID folded.
fn route_of(method: &Method, path: &str) -> Route {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    let mut major = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let before = |n: usize| i.checked_sub(n).map(|j| parts[j]);
        let is_major = matches!(
            before(1),
            Some("channels" | "guilds" | "webhooks" | "interactions")
        ) || matches!(before(2), Some("webhooks" | "interactions"));
        let id = !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
        if is_major {
            major.push(*part);
        }
        out.push(if id && !is_major { ":id" } else { part });
    }
    Route {
        route: format!("{method} {}", out.join("/")),
        major: major.join("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> String {
        route_of(&method, path).route
    }

    #[test]
    fn each_interactions_follow_ups_have_their_own_bucket() {
        assert_ne!(
            route(Method::POST, "webhooks/1/tokenA"),
            route(Method::POST, "webhooks/1/tokenB")
        );
        assert_eq!(
            route(Method::PUT, "applications/1/guilds/2/commands"),
            "PUT applications/:id/guilds/2/commands"
        );
    }

    #[test]
    fn a_form_body_refusal_names_each_field_in_words() {
        let errors = serde_json::json!({"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]},
            "embeds": {"0": {"description": {"_errors": [{"code": "X", "message": "Must be 4096 or fewer in length."}]}}}});
        let mut found = Vec::new();
        field_errors(&errors, "", &mut found);
        assert_eq!(
            found,
            [
                "content: Must be 2000 or fewer in length.",
                "embeds.0.description: Must be 4096 or fewer in length."
            ]
        );
    }

    #[test]
    fn buckets_keep_the_major_parameter_and_fold_the_rest() {
        assert_eq!(
            route(Method::PATCH, "channels/12/messages/34"),
            "PATCH channels/12/messages/:id"
        );
        assert_eq!(
            route(Method::POST, "/channels/12/messages"),
            "POST channels/12/messages"
        );
        assert_ne!(
            route(Method::POST, "channels/12/messages"),
            route(Method::POST, "channels/13/messages")
        );
        assert_eq!(
            route_of(&Method::PATCH, "channels/12/messages/34").major,
            "12"
        );
    }
}
