//! A fake Slack on loopback speaking the Web API's wire format (JSON over POST with a bearer
//! token, `{"ok": false, "error": …}` failures, HTTP 429 with `Retry-After`), plus a
//! `response_url` sink, and helpers to sign requests the way Slack does.
#![allow(dead_code)]

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use baton::core::clock::{Clock, ManualClock};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub const BOT_TOKEN: &str = "xoxb-test-token";
pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const BOT_USER: &str = "UBATON01";
/// A workflow both Slack suites use: a slash command and a message pattern, an approval by
/// UBEN0001, then a notice.
pub const APPROVE: &str = r#"
name = "ship"
description = "Ship a release"
title = "Ship {{ input.version }}"
[[trigger]]
kind = "slash"
command = "ship"
args = [{ name = "version", required = true }]
[[trigger]]
kind = "message"
pattern = 'ship it: (?P<version>\S+)'
[[step]]
id = "gate"
kind = "approval"
approvers = ["UBEN0001"]
message = "Ship {{ input.version }} to production?"
timeout = "1h"
[[step]]
id = "done"
kind = "notify"
needs = ["gate"]
text = "Shipped {{ input.version }}."
"#;

pub const APP_TOKEN: &str = "xapp-1-test-token";

/// What the fake sends on a Socket Mode connection.
pub enum SocketOut {
    Text(String),
    /// Drop the connection without a close frame, as a network failure would.
    Drop,
}

/// One Web API call the bot made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    /// The message's ts: assigned for a post, the target for an update.
    pub ts: String,
    /// The app's (manual) clock when the call arrived, once the test shared it.
    pub at: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    pub responses: Vec<Value>,
    pub next_ts: u64,
    /// The next this many posts answer 429.
    pub rate_limit: u32,
    /// The next this many updates (`chat.update`) answer 429.
    pub rate_limit_updates: u32,
    /// The `Retry-After` of those 429s, in seconds (2 when unset).
    pub retry_after: Option<&'static str>,
    /// Every call answered 429, in order.
    pub limited: Vec<Call>,
    /// Every `chat.postMessage` and `chat.update` in arrival order: method, channel, the
    /// app's clock, and whether it was answered 429.
    pub chat_log: Vec<(String, String, Option<DateTime<Utc>>, bool)>,
    /// Posts whose text contains one of these answer 500 (Slack having trouble with them).
    pub failing_texts: Vec<String>,
    /// The app's clock, to stamp calls with.
    pub clock: Option<Arc<ManualClock>>,
    pub missing_channels: HashSet<String>,
    /// Channels whose posts answer 500 (Slack having trouble), until taken out.
    pub failing_channels: HashSet<String>,
    /// Socket Mode: how often the bot opened a connection, what it acknowledged, and the
    /// sender to the current connection.
    pub opens: u32,
    pub acks: Vec<String>,
    /// When each envelope was sent and when its acknowledgement came back, by envelope id.
    pub envelopes_sent: std::collections::HashMap<String, std::time::Instant>,
    pub acked_at: std::collections::HashMap<String, std::time::Instant>,
    pub socket: Option<tokio::sync::mpsc::UnboundedSender<SocketOut>>,
    /// Every connection's sender, by its number (1, 2, …).
    pub sockets: Vec<(u32, tokio::sync::mpsc::UnboundedSender<SocketOut>)>,
    /// What happened to connections, in order, with when: `hello N`, `closed by bot N`,
    /// `dropped N`.
    pub socket_log: Vec<(std::time::Instant, String)>,
    /// New connections wait this long before saying hello.
    pub hello_delay: Option<std::time::Duration>,
    /// The next this many connections are dropped (no close frame) right after hello.
    pub drop_after_hello: u32,
    /// WebSocket connections served so far.
    pub connected: u32,
    /// Scopes reported in `x-oauth-scopes`; `None` means every scope Baton asks for.
    pub scopes: Option<String>,
}

#[derive(Clone)]
pub struct FakeSlack {
    pub state: Arc<Mutex<FakeState>>,
    pub base: String,
}

impl FakeSlack {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            next_ts: 1,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/api/{method}", post(api))
            .route("/response/{id}", post(response))
            .route("/link/", axum::routing::get(link))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, base }
    }

    /// Sends a Socket Mode envelope on the current connection.
    pub fn send(&self, envelope: Value) {
        self.send_text(envelope.to_string());
    }

    /// Sends raw text on the current connection (a frame that may not be valid JSON).
    pub fn send_text(&self, text: String) {
        let mut s = self.state.lock().unwrap();
        if let Some(id) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|e| e["envelope_id"].as_str().map(str::to_owned))
        {
            s.envelopes_sent.insert(id, std::time::Instant::now());
        }
        let tx = s.socket.clone().expect("a Socket Mode connection is open");
        tx.send(SocketOut::Text(text)).unwrap();
    }

    /// How long after it was sent the envelope `id` was acknowledged, once it was.
    pub fn ack_latency(&self, id: &str) -> Option<std::time::Duration> {
        let s = self.state.lock().unwrap();
        Some(*s.acked_at.get(id)? - *s.envelopes_sent.get(id)?)
    }

    /// Sends an envelope on connection `n`.
    pub fn send_on(&self, n: u32, envelope: Value) {
        let s = self.state.lock().unwrap();
        let (_, tx) = s
            .sockets
            .iter()
            .find(|(i, _)| *i == n)
            .expect("connection n");
        tx.send(SocketOut::Text(envelope.to_string())).unwrap();
    }

    /// The connection log's entries, without times.
    pub fn socket_log(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .socket_log
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub fn acks(&self) -> Vec<String> {
        self.state.lock().unwrap().acks.clone()
    }

    pub fn opens(&self) -> u32 {
        self.state.lock().unwrap().opens
    }

    pub fn api_url(&self) -> String {
        format!("{}/api/", self.base)
    }

    pub fn response_url(&self, id: &str) -> String {
        format!("{}/response/{id}", self.base)
    }

    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .map(|c| c.body.clone())
            .collect()
    }

    pub fn responses(&self) -> Vec<Value> {
        self.state.lock().unwrap().responses.clone()
    }

    /// Every post with the ts it was given, in order.
    pub fn posts(&self) -> Vec<(String, Value)> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.method == "chat.postMessage")
            .map(|c| (c.ts.clone(), c.body.clone()))
            .collect()
    }

    /// Checks Slack's rule: after a 429, no other call of that method in that channel comes
    /// before `Retry-After` has passed on the app's clock.
    pub fn assert_waits_were_kept(&self, retry_after: chrono::Duration) {
        let s = self.state.lock().unwrap();
        for (i, (method, channel, at, limited)) in s.chat_log.iter().enumerate() {
            if !limited {
                continue;
            }
            let at = at.expect("the fake was given the app's clock");
            if let Some((_, _, next, _)) = s.chat_log[i + 1..]
                .iter()
                .find(|(m, c, _, _)| m == method && c == channel)
            {
                let next = next.unwrap();
                assert!(
                    next >= at + retry_after,
                    "{method} in {channel} went again {}ms after a 429",
                    (next - at).num_milliseconds()
                );
            }
        }
    }

    /// Posts (in order) in a channel's thread, by the root's ts.
    pub fn thread(&self, root_ts: &str) -> Vec<Value> {
        self.calls("chat.postMessage")
            .into_iter()
            .filter(|b| b["thread_ts"] == root_ts)
            .collect()
    }
}

async fn api(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if method == "apps.connections.open" {
        // Only the app-level token may open a Socket Mode connection.
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {APP_TOKEN}"))
        {
            return axum::Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
        }
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut s = state.lock().unwrap();
        s.opens += 1;
        return axum::Json(json!({"ok": true, "url": format!("ws://{host}/link/?ticket=t-{}&app_id=A0BATON", s.opens)})).into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {BOT_TOKEN}"))
    {
        return axum::Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    if method == "usergroups.list" {
        // A read method: form parameters, one group.
        return axum::Json(json!({"ok": true, "usergroups": [
            {"id": "S0RELEASE", "team_id": "T0ACME", "is_usergroup": true, "name": "Release managers", "handle": "release", "users": ["UCY00001", "UEVE0001"], "user_count": 2}
        ]}))
        .into_response();
    }
    if method == "conversations.list" {
        return conversations_list(&headers, &body);
    }
    if method == "conversations.members" {
        // Members of #incidents, two pages of one, as Slack pages with a cursor.
        let params: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(&body).unwrap_or_default();
        if params.get("channel").map(String::as_str) != Some("C0INCIDENTS") {
            return axum::Json(
                json!({"ok": true, "members": [], "response_metadata": {"next_cursor": ""}}),
            )
            .into_response();
        }
        let (members, next) = match params.get("cursor").map(String::as_str) {
            None | Some("") => (json!(["UDEE0001"]), "bWVtYmVyczI="),
            _ => (json!(["UEVE0001"]), ""),
        };
        return axum::Json(
            json!({"ok": true, "members": members, "response_metadata": {"next_cursor": next}}),
        )
        .into_response();
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return axum::Json(json!({"ok": false, "error": "invalid_json"})).into_response();
    };
    let mut s = state.lock().unwrap();
    match method.as_str() {
        "auth.test" => {
            let scopes = s.scopes.clone().unwrap_or_else(|| "chat:write,chat:write.public,commands,app_mentions:read,channels:history,groups:history,channels:read,groups:read,users:read,usergroups:read".into());
            let body = json!({"ok": true, "url": "https://acme.slack.com/", "team": "Acme", "user": "baton", "team_id": "T0ACME", "user_id": BOT_USER, "bot_id": "B0BATON"});
            ([("x-oauth-scopes", scopes)], axum::Json(body)).into_response()
        }

        "views.open" => {
            if body["trigger_id"].as_str().unwrap_or_default().is_empty() {
                return axum::Json(json!({"ok": false, "error": "invalid_trigger_id"}))
                    .into_response();
            }
            s.calls.push(Call {
                method: method.clone(),
                body: body.clone(),
                ts: String::new(),
                at: None,
            });
            let mut view = body["view"].clone();
            view["id"] = json!("V0MODAL01");
            axum::Json(json!({"ok": true, "view": view})).into_response()
        }
        "chat.postMessage" | "chat.update" => {
            let at = s.clock.as_ref().map(|c| c.now());
            let left = if method == "chat.postMessage" {
                &mut s.rate_limit
            } else {
                &mut s.rate_limit_updates
            };
            let limited = *left > 0;
            let channel = body["channel"].as_str().unwrap_or_default().to_owned();
            s.chat_log.push((method.clone(), channel, at, limited));
            let left = if method == "chat.postMessage" {
                &mut s.rate_limit
            } else {
                &mut s.rate_limit_updates
            };
            if limited {
                *left -= 1;
                s.limited.push(Call {
                    method: method.clone(),
                    body: body.clone(),
                    ts: String::new(),
                    at,
                });
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", s.retry_after.unwrap_or("2"))],
                    axum::Json(json!({"ok": false, "error": "ratelimited"})),
                )
                    .into_response();
            }
            let channel = body["channel"].as_str().unwrap_or_default().to_owned();
            let text = body.to_string();
            if method == "chat.postMessage"
                && (s.failing_channels.contains(&channel)
                    || s.failing_texts.iter().any(|t| text.contains(t.as_str())))
            {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"ok": false, "error": "internal_error"})),
                )
                    .into_response();
            }
            if channel.is_empty() {
                return axum::Json(json!({"ok": false, "error": "channel_not_found"}))
                    .into_response();
            }
            if s.missing_channels.contains(&channel) {
                return axum::Json(json!({"ok": false, "error": "channel_not_found"}))
                    .into_response();
            }
            if body["text"].as_str().unwrap_or_default().is_empty() && body["blocks"].is_null() {
                return axum::Json(json!({"ok": false, "error": "no_text"})).into_response();
            }
            let ts = match method.as_str() {
                "chat.update" => body["ts"].as_str().unwrap_or_default().to_owned(),
                _ => {
                    s.next_ts += 1;
                    format!("1700000000.{:06}", s.next_ts)
                }
            };
            s.calls.push(Call {
                method: method.clone(),
                body: body.clone(),
                ts: ts.clone(),
                at,
            });
            axum::Json(json!({"ok": true, "channel": channel, "ts": ts, "message": {"type": "message", "text": body["text"], "ts": ts}})).into_response()
        }
        _ => axum::Json(json!({"ok": false, "error": "unknown_method"})).into_response(),
    }
}

async fn response(
    State(state): State<Arc<Mutex<FakeState>>>,
    Path(_id): Path<String>,
    body: String,
) -> StatusCode {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    state.lock().unwrap().responses.push(body);
    StatusCode::OK
}

/// `conversations.list` takes form parameters and pages with `cursor`; two pages here.
fn conversations_list(headers: &HeaderMap, body: &str) -> Response {
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return axum::Json(json!({"ok": false, "error": "invalid_arguments"})).into_response();
    }
    let params: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(body).unwrap_or_default();
    let page = |channels: Value, next: &str| {
        axum::Json(
            json!({"ok": true, "channels": channels, "response_metadata": {"next_cursor": next}}),
        )
        .into_response()
    };
    match params.get("cursor").map(String::as_str) {
        None | Some("") => page(
            json!([{"id": "C0GENERAL", "name": "general", "is_channel": true}]),
            "dGVhbTpDMDYx",
        ),
        Some("dGVhbTpDMDYx") => page(
            json!([{"id": "C0INCIDENTS", "name": "incidents", "is_channel": true}, {"id": "G0OPS0001", "name": "ops", "is_private": true}]),
            "",
        ),
        Some(_) => axum::Json(json!({"ok": false, "error": "invalid_cursor"})).into_response(),
    }
}

async fn link(
    ws: axum::extract::ws::WebSocketUpgrade,
    State(state): State<Arc<Mutex<FakeState>>>,
) -> Response {
    ws.on_upgrade(move |socket| serve_socket(socket, state))
}

/// One Socket Mode connection: `hello` first, then whatever the test sends; acks are recorded.
async fn serve_socket(mut socket: axum::extract::ws::WebSocket, state: Arc<Mutex<FakeState>>) {
    use axum::extract::ws::Message;
    let (n, delay, drop_it) = {
        let mut s = state.lock().unwrap();
        s.connected += 1;
        let drop_it = s.drop_after_hello > 0;
        if drop_it {
            s.drop_after_hello -= 1;
        }
        (s.connected, s.hello_delay, drop_it)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let hello = json!({"type": "hello", "num_connections": 1, "debug_info": {"host": "applink-7", "build_number": 10, "approximate_connection_time": 18060}, "connection_info": {"app_id": "A0BATON"}});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SocketOut>();
    {
        let mut s = state.lock().unwrap();
        s.socket = Some(tx.clone());
        s.sockets.push((n, tx.clone()));
        s.socket_log
            .push((std::time::Instant::now(), format!("hello {n}")));
    }
    if drop_it {
        let _ = tx.send(SocketOut::Drop);
    }
    let log = |what: String| {
        state
            .lock()
            .unwrap()
            .socket_log
            .push((std::time::Instant::now(), what));
    };
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(SocketOut::Text(text)) => if socket.send(Message::Text(text.into())).await.is_err() { break },
                Some(SocketOut::Drop) => {
                    log(format!("dropped {n}"));
                    return;
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(t))) => {
                    let at = std::time::Instant::now();
                    let mut s = state.lock().unwrap();
                    if let Some(id) = serde_json::from_str::<Value>(&t).ok().and_then(|a| a["envelope_id"].as_str().map(str::to_owned)) {
                        s.acked_at.entry(id).or_insert(at);
                    }
                    s.acks.push(t.to_string());
                }
                Some(Ok(Message::Close(_))) => {
                    log(format!("closed by bot {n}"));
                    break;
                }
                None | Some(Err(_)) => {
                    log(format!("lost {n}"));
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Slack's signature headers for `body` sent at `timestamp` (Unix seconds).
pub fn sign(body: &str, timestamp: i64, secret: &str) -> (String, String) {
    let base = format!("v0:{timestamp}:{body}");
    let sig = format!(
        "v0={}",
        hex::encode(hmac_sha256(secret.as_bytes(), base.as_bytes()))
    );
    (sig, timestamp.to_string())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// POSTs a body to Baton at `url` signed as Slack would, `age` seconds ago.
pub async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: &str,
    age: i64,
    secret: &str,
) -> reqwest::Response {
    let (sig, ts) = sign(body, now() - age, secret);
    http.post(url)
        .header("content-type", content_type)
        .header("x-slack-signature", sig)
        .header("x-slack-request-timestamp", ts)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

/// The form Slack posts for a slash command (`/ship 1.0`) typed by `user` in `channel`.
pub fn command_form(
    fake: &FakeSlack,
    channel: (&str, &str),
    user: &str,
    text: &str,
    trigger: &str,
) -> String {
    let (command, args) = text.split_once(' ').unwrap_or((text, ""));
    form(&[
        ("token", "legacy"),
        ("team_id", "T0ACME"),
        ("team_domain", "acme"),
        ("channel_id", channel.0),
        ("channel_name", channel.1),
        ("user_id", user),
        ("user_name", "someone"),
        ("command", command),
        ("text", args),
        ("api_app_id", "A0BATON"),
        ("response_url", &fake.response_url(trigger)),
        ("trigger_id", trigger),
    ])
}

/// The form Slack posts for a click on a button (`action`) of the message `message_ts` in
/// `channel`; Slack sends the button's `value` along when it has one.
pub fn click_form(
    fake: &FakeSlack,
    channel: (&str, &str),
    user: &str,
    action: &str,
    value: Option<&str>,
    message_ts: &str,
    trigger: &str,
) -> String {
    let payload = json!({
        "type": "block_actions",
        "team": {"id": "T0ACME", "domain": "acme"},
        "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0ACME"},
        "api_app_id": "A0BATON",
        "token": "legacy",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel.0, "is_ephemeral": false},
        "trigger_id": trigger,
        "channel": {"id": channel.0, "name": channel.1},
        "response_url": fake.response_url(trigger),
        "actions": [{"type": "button", "action_id": action, "block_id": "b1", "text": {"type": "plain_text", "text": "Approve"}, "value": value, "action_ts": "1700000100.000200"}]
    });
    form(&[("payload", &payload.to_string())])
}

/// The text of a message's sections, joined.
pub fn blocks_text(body: &Value) -> String {
    body["blocks"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|x| x["text"]["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
