//! A fake Discord on loopback speaking API v10's wire formats: REST under `/api/v10` (bot
//! token in `Authorization: Bot …`, JSON error bodies with Discord's codes, 429 with
//! `retry_after` and `Retry-After`, rate-limit headers) and the gateway on a WebSocket (HELLO,
//! IDENTIFY, READY, heartbeats and ACKs, dispatches with sequence numbers, RECONNECT, RESUME
//! with replay of what was missed, INVALID_SESSION, close codes).
#![allow(dead_code)]

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use baton::core::clock::{Clock, ManualClock};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

pub const TOKEN: &str = "MTA5ODc2NTQzMjEwOTg3NjU0Mw.GxYzAb.test-bot-token";
pub const BOT_ID: &str = "1098765432109876543";
pub const APP_ID: &str = "1098765432109876543";
pub const GUILD: &str = "300000000000000001";
pub const GENERAL: &str = "200000000000000001";
pub const RELEASES: &str = "200000000000000002";
pub const ANA: &str = "400000000000000001";
pub const BEN: &str = "400000000000000002";
pub const CY: &str = "400000000000000003";
pub const OTHER_BOT: &str = "400000000000000009";
pub const RELEASE_ROLE: &str = "500000000000000001";
/// Owns the guild: every permission, whatever the overwrites say.
pub const OWNER: &str = "400000000000000008";

/// One REST call the bot made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub at: Instant,
    /// The app's (manual) clock when the call arrived, once the test shared it.
    pub clock_at: Option<DateTime<Utc>>,
    /// Answered 429.
    pub limited: bool,
}

/// A message as the fake keeps it: where it is and what it says now.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: String,
    pub channel: String,
    pub body: Value,
    pub edits: u32,
}

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    pub messages: Vec<Msg>,
    pub next_id: u64,
    /// Threads, by their ID (the root message's), with their parent channel.
    pub threads: HashMap<String, String>,
    /// Registered commands by route.
    pub commands: HashMap<String, Value>,
    /// The next this many channel posts answer 429.
    pub rate_limit: u32,
    /// The `retry_after` of those 429s, in seconds (1.5 when unset).
    pub retry_after: Option<f64>,
    /// The next this many channel posts answer 429 for the global limit.
    pub global_rate_limit: u32,
    /// Posts whose content contains one of these answer 500 (Discord having trouble).
    pub failing_texts: Vec<String>,
    /// Direct-message channels opened, with whom.
    pub dms: HashMap<String, String>,
    /// The app's clock, to stamp calls with.
    pub clock: Option<Arc<ManualClock>>,
    /// Channel posts report their bucket empty for this many seconds.
    pub empty_bucket_for: Option<&'static str>,
    /// Channels that answer 404 Unknown Channel / 403 Missing Access.
    pub missing_channels: HashSet<String>,
    pub forbidden_channels: HashSet<String>,
    /// Gateway: what the bot sent, and the current connection.
    pub identifies: Vec<Value>,
    pub resumes: Vec<Value>,
    pub heartbeats: u32,
    pub connections: u32,
    /// Connections made to the `resume_gateway_url` READY gave.
    pub resume_connections: u32,
    /// Interactions already answered: Discord takes one initial response each.
    pub answered: HashSet<String>,
    pub socket: Option<mpsc::UnboundedSender<Outgoing>>,
    pub heartbeat_interval: u64,
    /// Close the connection with this code on IDENTIFY (4004 bad token, 4014 intents).
    pub close_on_identify: Option<u16>,
    /// Stop answering heartbeats (a zombie connection).
    pub no_acks: bool,
    pub session: String,
    pub seq: u64,
    /// Every dispatch sent, with its sequence number, for replay on RESUME.
    pub history: Vec<(u64, Value)>,
    /// Interaction callbacks take this long to answer.
    pub callback_delay: std::time::Duration,
    /// When each interaction was dispatched, to measure the answer.
    pub interactions_sent: HashMap<String, Instant>,
}

pub enum Outgoing {
    Text(String),
    Close(u16),
}

#[derive(Clone)]
pub struct FakeDiscord {
    pub state: Arc<Mutex<FakeState>>,
    pub base: String,
}

fn discord_error(status: StatusCode, code: u64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"message": message, "code": code})),
    )
        .into_response()
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            next_id: 600_000_000_000_000_000,
            heartbeat_interval: 41_250,
            session: "sess-1".into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/ws", get(gateway))
            .route("/resume", get(gateway_resume))
            .route("/api/v10/{*path}", any(rest))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, base }
    }

    pub fn s(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Sends a dispatch (or keeps it for the replay when no connection is open).
    pub fn dispatch(&self, t: &str, d: Value) {
        let mut s = self.s();
        s.seq += 1;
        let frame = json!({"op": 0, "s": s.seq, "t": t, "d": d});
        let seq = s.seq;
        s.history.push((seq, frame.clone()));
        if t == "INTERACTION_CREATE"
            && let Some(id) = d["id"].as_str()
        {
            s.interactions_sent.insert(id.to_owned(), Instant::now());
        }
        if let Some(tx) = &s.socket {
            let _ = tx.send(Outgoing::Text(frame.to_string()));
        }
    }

    /// Sends a raw gateway frame on the current connection.
    pub fn send_op(&self, frame: Value) {
        if let Some(tx) = &self.s().socket {
            let _ = tx.send(Outgoing::Text(frame.to_string()));
        }
    }

    /// Sends RECONNECT and stops using the connection: what is dispatched next waits for the
    /// bot to resume.
    pub fn reconnect(&self) {
        let tx = self.s().socket.take();
        if let Some(tx) = tx {
            let _ = tx.send(Outgoing::Text(
                json!({"op": 7, "s": null, "t": null, "d": null}).to_string(),
            ));
        }
    }

    /// Closes the current connection with a code.
    pub fn close(&self, code: u16) {
        let tx = self.s().socket.take();
        if let Some(tx) = tx {
            let _ = tx.send(Outgoing::Close(code));
        }
    }

    /// Checks Discord's rule: after a 429 on a route's bucket, no call to that route comes
    /// before `retry_after` has passed on the app's clock.
    pub fn assert_waits_were_kept(&self, retry_after: chrono::Duration) {
        let s = self.s();
        for (i, c) in s.calls.iter().enumerate() {
            if !c.limited {
                continue;
            }
            let at = c.clock_at.expect("the fake was given the app's clock");
            if let Some(next) = s.calls[i + 1..]
                .iter()
                .find(|n| n.method == c.method && n.path == c.path)
            {
                let next_at = next.clock_at.unwrap();
                assert!(
                    next_at >= at + retry_after,
                    "{} {} went again {}ms after a 429",
                    c.method,
                    c.path,
                    (next_at - at).num_milliseconds()
                );
            }
        }
    }

    pub fn calls(&self, method: &str, path_part: &str) -> Vec<Call> {
        self.s()
            .calls
            .iter()
            .filter(|c| c.method == method && c.path.contains(path_part))
            .cloned()
            .collect()
    }

    /// Messages in a channel (or thread), in order.
    pub fn messages_in(&self, channel: &str) -> Vec<Msg> {
        self.s()
            .messages
            .iter()
            .filter(|m| m.channel == channel)
            .cloned()
            .collect()
    }

    pub fn message(&self, id: &str) -> Option<Msg> {
        self.s().messages.iter().find(|m| m.id == id).cloned()
    }

    /// Interaction callbacks for an interaction, with how long after its dispatch each came.
    pub fn callbacks(&self, interaction: &str) -> Vec<(Value, std::time::Duration)> {
        let s = self.s();
        let sent = s.interactions_sent.get(interaction).copied();
        s.calls
            .iter()
            .filter(|c| c.path.starts_with(&format!("interactions/{interaction}/")))
            .map(|c| (c.body.clone(), sent.map(|t| c.at - t).unwrap_or_default()))
            .collect()
    }

    /// Follow-ups and edits of the original reply sent with an interaction's token.
    pub fn webhook_calls(&self, token: &str) -> Vec<Call> {
        self.s()
            .calls
            .iter()
            .filter(|c| c.path.starts_with(&format!("webhooks/{APP_ID}/{token}")))
            .cloned()
            .collect()
    }
}

fn user(id: &str, name: &str, bot: bool) -> Value {
    json!({"id": id, "username": name, "discriminator": "0", "global_name": name, "avatar": null, "bot": bot, "public_flags": 0})
}

/// A MESSAGE_CREATE payload as Discord sends it.
pub fn message_create(id: &str, channel: &str, author: &str, content: &str, bot: bool) -> Value {
    json!({
        "type": 0, "tts": false, "timestamp": "2026-03-02T07:00:00.000000+00:00", "pinned": false,
        "mentions": [], "mention_roles": [], "mention_everyone": false, "member": {"roles": [], "joined_at": "2025-01-01T00:00:00+00:00", "deaf": false, "mute": false, "flags": 0},
        "id": id, "flags": 0, "embeds": [], "edited_timestamp": null, "content": content, "components": [],
        "channel_id": channel, "author": user(author, "someone", bot), "attachments": [], "guild_id": GUILD, "nonce": id
    })
}

fn member(id: &str, roles: &[&str]) -> Value {
    json!({"user": user(id, "someone", false), "roles": roles, "premium_since": null, "permissions": "2248473465835073", "pending": false, "nick": null, "mute": false, "joined_at": "2025-01-01T00:00:00+00:00", "flags": 0, "deaf": false, "communication_disabled_until": null, "avatar": null})
}

fn interaction(id: &str, kind: u8, data: Value, who: &str, roles: &[&str], channel: &str) -> Value {
    json!({
        "version": 1, "type": kind, "token": format!("tok-{id}"), "member": member(who, roles), "locale": "en-US",
        "id": id, "guild_locale": "en-US", "guild_id": GUILD, "guild": {"id": GUILD, "locale": "en-US", "features": []},
        "entitlements": [], "data": data, "context": 0, "channel_id": channel,
        "channel": {"id": channel, "type": 0, "name": "general", "guild_id": GUILD},
        "authorizing_integration_owners": {"0": GUILD}, "application_id": APP_ID, "app_permissions": "2248473465835073",
        "attachment_size_limit": 10485760
    })
}

/// An APPLICATION_COMMAND interaction.
pub fn slash(id: &str, name: &str, options: Value, who: &str) -> Value {
    slash_with_roles(id, name, options, who, &[])
}

/// A slash command from a member with `roles` in the guild.
pub fn slash_with_roles(id: &str, name: &str, options: Value, who: &str, roles: &[&str]) -> Value {
    interaction(
        id,
        2,
        json!({"type": 1, "name": name, "id": "700000000000000001", "options": options}),
        who,
        roles,
        GENERAL,
    )
}

/// A button click on a message.
pub fn click(id: &str, custom_id: &str, who: &str, roles: &[&str], channel: &str) -> Value {
    let mut i = interaction(
        id,
        3,
        json!({"custom_id": custom_id, "component_type": 2}),
        who,
        roles,
        channel,
    );
    i["message"] = json!({"id": "1", "channel_id": channel, "content": "", "components": []});
    i
}

/// A submitted modal with one paragraph input.
pub fn modal_submit(id: &str, custom_id: &str, reason: &str, who: &str, channel: &str) -> Value {
    interaction(
        id,
        5,
        json!({"custom_id": custom_id, "components": [{"type": 1, "components": [{"type": 4, "custom_id": "reason", "value": reason}]}]}),
        who,
        &[],
        channel,
    )
}

fn channels() -> Value {
    json!([
        {"id": "200000000000000000", "type": 4, "name": "Text Channels", "guild_id": GUILD, "position": 0},
        {"id": GENERAL, "type": 0, "name": "general", "guild_id": GUILD, "parent_id": "200000000000000000", "position": 0},
        {"id": RELEASES, "type": 0, "name": "releases", "guild_id": GUILD, "parent_id": "200000000000000000", "position": 1},
        {"id": "200000000000000003", "type": 2, "name": "voice", "guild_id": GUILD, "position": 2},
        // Private: only the release role may see it.
        {"id": "200000000000000004", "type": 0, "name": "release-room", "guild_id": GUILD, "parent_id": "200000000000000000", "position": 3,
         "permission_overwrites": [
            {"id": GUILD, "type": 0, "allow": "0", "deny": "1024"},
            {"id": RELEASE_ROLE, "type": 0, "allow": "1024", "deny": "0"}
         ]}
    ])
}

async fn rest(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(_) => {
                return discord_error(
                    StatusCode::BAD_REQUEST,
                    50109,
                    "The request body contains invalid JSON.",
                );
            }
        }
    };
    if path.starts_with("interactions/") {
        let delay = state.lock().unwrap().callback_delay;
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().unwrap();
    let clock_at = s.clock.as_ref().map(|c| c.now());
    s.calls.push(Call {
        method: method.to_string(),
        path: path.clone(),
        body: body.clone(),
        at: Instant::now(),
        clock_at,
        limited: false,
    });
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Interaction callbacks and webhooks are authorised by their token, and GET /gateway by
    // nothing; everything else needs the bot token.
    let open =
        path == "gateway" || path.starts_with("interactions/") || path.starts_with("webhooks/");
    if !open
        && headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bot {TOKEN}"))
    {
        return discord_error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized");
    }
    let parts: Vec<&str> = path.split('/').collect();
    let m = method.as_str();
    match (m, parts.as_slice()) {
        ("GET", ["gateway"]) => {
            axum::Json(json!({"url": format!("ws://{host}/ws")})).into_response()
        }
        ("GET", ["users", "@me"]) => axum::Json(user(BOT_ID, "baton", true)).into_response(),
        ("GET", ["guilds", g, "channels"]) if *g == GUILD => axum::Json(channels()).into_response(),
        ("GET", ["guilds", g]) if *g == GUILD => {
            axum::Json(json!({"id": GUILD, "name": "Acme", "owner_id": OWNER})).into_response()
        }
        ("GET", ["guilds", g, "roles"]) if *g == GUILD => axum::Json(json!([
            {"id": GUILD, "name": "@everyone", "position": 0, "permissions": "68608", "managed": false, "mentionable": false, "hoist": false, "color": 0, "flags": 0},
            {"id": RELEASE_ROLE, "name": "Release Managers", "position": 1, "permissions": "0", "managed": false, "mentionable": true, "hoist": false, "color": 0, "flags": 0}
        ]))
        .into_response(),
        ("GET", ["guilds", _, "channels"]) => {
            discord_error(StatusCode::FORBIDDEN, 50001, "Missing Access")
        }
        ("GET", ["channels", id]) => {
            if let Some(parent) = s.threads.get(*id) {
                return axum::Json(json!({"id": id, "type": 11, "name": "Run", "parent_id": parent, "guild_id": GUILD})).into_response();
            }
            match channels()
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == *id)
            {
                Some(c) => axum::Json(c.clone()).into_response(),
                None => discord_error(StatusCode::NOT_FOUND, 10003, "Unknown Channel"),
            }
        }
        ("GET", ["applications", _, .., "commands"]) => {
            axum::Json(s.commands.get(&path).cloned().unwrap_or(json!([]))).into_response()
        }
        ("PUT", ["applications", _, .., "commands"]) => {
            let registered: Vec<Value> = body
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, mut c)| {
                    c["id"] = json!(format!("70000000000000{i:04}"));
                    c["application_id"] = json!(APP_ID);
                    c["version"] = json!("1");
                    c["type"] = c.get("type").cloned().unwrap_or(json!(1));
                    c["default_member_permissions"] = Value::Null;
                    c
                })
                .collect();
            s.commands
                .insert(path.clone(), Value::Array(registered.clone()));
            axum::Json(Value::Array(registered)).into_response()
        }
        ("POST", ["users", "@me", "channels"]) => {
            let Some(recipient) = body["recipient_id"].as_str() else {
                return discord_error(StatusCode::BAD_REQUEST, 50035, "Invalid Form Body");
            };
            let id = format!("6{}", &recipient[1..]);
            s.dms.insert(id.clone(), recipient.to_owned());
            axum::Json(json!({"id": id, "type": 1, "recipients": [user(recipient, "someone", false)]}))
                .into_response()
        }
        ("POST", ["channels", ch, "messages", mid, "threads"]) => {
            if s.threads.contains_key(*mid) {
                return discord_error(
                    StatusCode::BAD_REQUEST,
                    160004,
                    "A thread has already been created for this message",
                );
            }
            s.threads.insert(mid.to_string(), ch.to_string());
            axum::Json(json!({"id": mid, "type": 11, "parent_id": ch, "guild_id": GUILD, "name": body["name"], "thread_metadata": {"archived": false, "auto_archive_duration": body["auto_archive_duration"], "locked": false}})).into_response()
        }
        ("POST", ["channels", ch, "messages"]) => {
            let ch = ch.to_string();
            if s.global_rate_limit > 0 {
                s.global_rate_limit -= 1;
                s.calls.last_mut().unwrap().limited = true;
                let retry_after = s.retry_after.unwrap_or(1.5);
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [
                        ("retry-after", (retry_after.ceil() as u64).to_string()),
                        ("x-ratelimit-global", "true".into()),
                        ("x-ratelimit-scope", "global".into()),
                    ],
                    axum::Json(json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": true})),
                )
                    .into_response();
            }
            if s.rate_limit > 0 {
                s.rate_limit -= 1;
                s.calls.last_mut().unwrap().limited = true;
                let retry_after = s.retry_after.unwrap_or(1.5);
                let header = (retry_after.ceil() as u64).to_string();
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [
                        ("retry-after", header),
                        ("x-ratelimit-scope", "user".into()),
                        ("x-ratelimit-bucket", "abcd1234".into()),
                    ],
                    axum::Json(json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": false})),
                )
                    .into_response();
            }
            let text = body.to_string();
            if s.failing_texts.iter().any(|t| text.contains(t.as_str())) {
                return discord_error(StatusCode::INTERNAL_SERVER_ERROR, 0, "500: Internal Server Error");
            }
            if s.missing_channels.contains(&ch) {
                return discord_error(StatusCode::NOT_FOUND, 10003, "Unknown Channel");
            }
            if s.forbidden_channels.contains(&ch) {
                return discord_error(StatusCode::FORBIDDEN, 50001, "Missing Access");
            }
            let known = s.threads.contains_key(&ch)
                || s.dms.contains_key(&ch)
                || channels().as_array().unwrap().iter().any(|c| c["id"] == ch);
            if !known {
                return discord_error(StatusCode::NOT_FOUND, 10003, "Unknown Channel");
            }
            let content = body["content"].as_str().unwrap_or_default();
            if content.is_empty() && body["embeds"].as_array().is_none_or(Vec::is_empty) {
                return discord_error(
                    StatusCode::BAD_REQUEST,
                    50006,
                    "Cannot send an empty message",
                );
            }
            if content.chars().count() > 2000 {
                return discord_error(StatusCode::BAD_REQUEST, 50035, "Invalid Form Body");
            }
            // `enforce_nonce`: the same nonce from the same author returns the first message.
            if body["enforce_nonce"] == true
                && let Some(nonce) = body["nonce"].as_str()
                && let Some(first) = s
                    .messages
                    .iter()
                    .find(|m| m.channel == ch && m.body["nonce"] == nonce)
            {
                let mut answer = first.body.clone();
                answer["id"] = json!(first.id);
                answer["channel_id"] = json!(ch);
                return axum::Json(answer).into_response();
            }
            s.next_id += 1;
            let id = s.next_id.to_string();
            s.messages.push(Msg {
                id: id.clone(),
                channel: ch.clone(),
                body: body.clone(),
                edits: 0,
            });
            let mut answer = body.clone();
            answer["id"] = json!(id);
            answer["channel_id"] = json!(ch);
            answer["author"] = user(BOT_ID, "baton", true);
            answer["type"] = json!(0);
            let (remaining, reset_after) = match s.empty_bucket_for {
                Some(after) => ("0", after),
                None => ("4", "1.0"),
            };
            (
                [
                    ("x-ratelimit-limit", "5"),
                    ("x-ratelimit-remaining", remaining),
                    ("x-ratelimit-reset-after", reset_after),
                    ("x-ratelimit-bucket", "abcd1234"),
                ],
                axum::Json(answer),
            )
                .into_response()
        }
        ("PATCH", ["channels", ch, "messages", mid]) => {
            let Some(msg) = s
                .messages
                .iter_mut()
                .find(|m| m.id == *mid && m.channel == *ch)
            else {
                return discord_error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
            };
            for (k, v) in body.as_object().cloned().unwrap_or_default() {
                msg.body[k] = v;
            }
            msg.edits += 1;
            let mut answer = msg.body.clone();
            answer["id"] = json!(mid);
            axum::Json(answer).into_response()
        }
        ("POST", ["interactions", id, token, "callback"]) => {
            let valid = matches!(body["type"].as_u64(), Some(4 | 5 | 6 | 7 | 9));
            // Three seconds for the first answer, with the interaction's own token.
            let in_time = s
                .interactions_sent
                .get(*id)
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3));
            if !valid || !in_time || *token != format!("tok-{id}") {
                return discord_error(StatusCode::NOT_FOUND, 10062, "Unknown interaction");
            }
            if !s.answered.insert(id.to_string()) {
                return discord_error(
                    StatusCode::BAD_REQUEST,
                    40060,
                    "Interaction has already been acknowledged.",
                );
            }
            StatusCode::NO_CONTENT.into_response()
        }
        // Follow-ups need an answered interaction's token, under the right application.
        ("PATCH" | "POST", ["webhooks", app, token, ..])
            if *app != APP_ID
                || !token
                    .strip_prefix("tok-")
                    .is_some_and(|id| s.answered.contains(id)) =>
        {
            discord_error(StatusCode::NOT_FOUND, 10015, "Unknown Webhook")
        }
        ("PATCH", ["webhooks", _, _token, "messages", "@original"]) => {
            axum::Json(json!({"id": "1", "content": body["content"]})).into_response()
        }
        ("POST", ["webhooks", _, _token]) => {
            axum::Json(json!({"id": "2", "content": body["content"], "flags": body["flags"]}))
                .into_response()
        }
        _ => discord_error(StatusCode::NOT_FOUND, 0, "404: Not Found"),
    }
}

async fn gateway_resume(
    ws: WebSocketUpgrade,
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
) -> Response {
    state.lock().unwrap().resume_connections += 1;
    gateway(ws, State(state), headers).await
}

async fn gateway(
    ws: WebSocketUpgrade,
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: HeaderMap,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ws.on_upgrade(move |socket| serve_gateway(socket, state, host))
}

async fn serve_gateway(mut socket: WebSocket, state: Arc<Mutex<FakeState>>, host: String) {
    let interval = state.lock().unwrap().heartbeat_interval;
    let hello = json!({"op": 10, "s": null, "t": null, "d": {"heartbeat_interval": interval, "_trace": ["gateway-prd"]}});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    {
        let mut s = state.lock().unwrap();
        s.connections += 1;
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outgoing::Text(t)) => if socket.send(Message::Text(t.into())).await.is_err() { break },
                Some(Outgoing::Close(code)) => {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: "closed by the fake".into() }))).await;
                    break;
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(t))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&t) else { break };
                    let replies = on_frame(&state, &frame, &host, &tx);
                    for r in replies {
                        match r {
                            Outgoing::Text(t) => { let _ = socket.send(Message::Text(t.into())).await; }
                            Outgoing::Close(code) => {
                                let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: "closed by the fake".into() }))).await;
                                return;
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut s = state.lock().unwrap();
    if s.socket.as_ref().is_some_and(|t| t.same_channel(&tx)) {
        s.socket = None;
    }
}

/// What the fake answers to one frame from the bot.
fn on_frame(
    state: &Arc<Mutex<FakeState>>,
    frame: &Value,
    host: &str,
    tx: &mpsc::UnboundedSender<Outgoing>,
) -> Vec<Outgoing> {
    let mut s = state.lock().unwrap();
    match frame["op"].as_u64() {
        Some(1) => {
            s.heartbeats += 1;
            if s.no_acks {
                return vec![];
            }
            vec![Outgoing::Text(
                json!({"op": 11, "s": null, "t": null, "d": null}).to_string(),
            )]
        }
        Some(2) => {
            s.identifies.push(frame["d"].clone());
            if frame["d"]["token"] != TOKEN {
                return vec![Outgoing::Close(4004)];
            }
            if let Some(code) = s.close_on_identify {
                return vec![Outgoing::Close(code)];
            }
            s.session = format!("sess-{}", s.identifies.len());
            s.seq += 1;
            let ready = json!({"op": 0, "s": s.seq, "t": "READY", "d": {
                "v": 10, "user": user(BOT_ID, "baton", true), "guilds": [{"id": GUILD, "unavailable": true}],
                "session_id": s.session, "resume_gateway_url": format!("ws://{host}/resume"), "shard": [0, 1],
                "application": {"id": APP_ID, "flags": 8953856}, "session_type": "normal", "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [], "geo_ordered_rtc_regions": [], "user_settings": {}, "_trace": []
            }});
            let seq = s.seq;
            s.history.push((seq, ready.clone()));
            s.socket = Some(tx.clone());
            vec![Outgoing::Text(ready.to_string())]
        }
        Some(6) => {
            s.resumes.push(frame["d"].clone());
            if frame["d"]["session_id"] != s.session.as_str() {
                return vec![Outgoing::Text(
                    json!({"op": 9, "s": null, "t": null, "d": false}).to_string(),
                )];
            }
            let from = frame["d"]["seq"].as_u64().unwrap_or(0);
            let mut out: Vec<Outgoing> = s
                .history
                .iter()
                .filter(|(seq, _)| *seq > from)
                .map(|(_, f)| Outgoing::Text(f.to_string()))
                .collect();
            s.seq += 1;
            out.push(Outgoing::Text(
                json!({"op": 0, "s": s.seq, "t": "RESUMED", "d": {"_trace": []}}).to_string(),
            ));
            s.socket = Some(tx.clone());
            out
        }
        _ => vec![],
    }
}
