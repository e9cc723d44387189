//! Console requests to core events. The console is a trusted local tool: the user picker says
//! who is acting, limited to `BATON_CONSOLE_USERS`.

use super::{BOT_NAME, ConsoleUpdate, INBOX_CHANNEL, valid_channel};
use crate::core::event::{Actor, ConversationRef, EventKind, InboundEvent};
use crate::core::ids::ActionId;
use crate::core::message::OutMessage;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::ConsoleMessage;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::convert::Infallible;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

/// Longest message a person may type.
const MAX_TEXT: usize = 4000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/state", get(state))
        .route("/api/channels/{channel}/messages", get(channel_messages))
        .route("/api/threads/{id}", get(thread))
        .route("/api/messages", post(send_message))
        .route("/api/actions", post(click))
        .route("/api/stream", get(stream))
        .route("/inbox/{name}", post(inbox))
}

/// Channels the console shows: configured ones, every one a workflow names, and the inbox.
pub fn channels(state: &AppState) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = state.settings.console_channels.iter().cloned().collect();
    out.extend(state.engine.workflows().channels());
    out.insert(INBOX_CHANNEL.to_owned());
    out.retain(|c| valid_channel(c));
    out
}

/// The configured channels and every channel a message was posted to.
async fn known_channels(state: &AppState) -> Result<BTreeSet<String>, ApiError> {
    let mut out = channels(state);
    out.extend(state.engine.store().console_channel_names().await?);
    out.retain(|c| valid_channel(c));
    Ok(out)
}

async fn state(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let commands: Vec<Value> = state
        .engine
        .workflows()
        .iter()
        .filter_map(|w| {
            w.slash().map(
                |s| json!({"command": s.command, "usage": s.usage, "description": w.description}),
            )
        })
        .collect();
    Ok(Json(json!({
        "bot": BOT_NAME,
        "users": state.settings.console_users,
        "channels": known_channels(&state).await?,
        "commands": commands,
    })))
}

async fn channel_messages(
    State(state): State<AppState>,
    Path(channel): Path<String>,
) -> Result<Json<Vec<ConsoleMessage>>, ApiError> {
    if !known_channels(&state).await?.contains(&channel) {
        return Err(ApiError::NotFound(format!(
            "there is no channel #{}",
            truncate(&channel, 80)
        )));
    }
    Ok(Json(
        state.engine.store().console_channel(&channel, 200).await?,
    ))
}

async fn thread(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ConsoleMessage>>, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "`{}` is not a message number; threads are named by their first message's number",
            truncate(&id, 40)
        ))
    })?;
    let messages = state.engine.store().console_thread(id).await?;
    if messages.is_empty() {
        return Err(ApiError::NotFound(format!("there is no message {id}")));
    }
    Ok(Json(messages))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendMessage {
    pub(crate) channel: String,
    pub(crate) user: String,
    pub(crate) text: String,
    pub(crate) thread_id: Option<i64>,
    /// Set by the page per submission so a resent request is recognised.
    pub(crate) client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Click {
    pub(crate) user: String,
    pub(crate) message_id: i64,
    pub(crate) action: String,
    pub(crate) reason: Option<String>,
    pub(crate) client_id: Option<String>,
}

/// Longest text a click may carry: a reason, or an edited payload (the engine's own limit).
const TEXT_LIMIT: usize = 4000;

fn actor(state: &AppState, user: &str) -> Result<Actor, ApiError> {
    if !state.settings.console_users.iter().any(|u| u == user) {
        return Err(ApiError::BadRequest(format!(
            "`{}` is not a console user (BATON_CONSOLE_USERS)",
            truncate(user, 40)
        )));
    }
    Ok(Actor {
        platform: "console".into(),
        id: user.to_owned(),
        display: user.to_owned(),
        is_bot: false,
        groups: state
            .settings
            .console_groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == user))
            .map(|(name, _)| name.clone())
            .collect(),
    })
}

/// What a person's console message is: a slash command (`/name rest`) or a plain message.
pub(crate) fn message_kind(text: &str) -> EventKind {
    match text.strip_prefix('/') {
        Some(rest) => {
            let (command, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            EventKind::Slash {
                command: command.to_owned(),
                text: args.trim().to_owned(),
                options: None,
            }
        }
        None => EventKind::Message {
            text: text.to_owned(),
            mentions_bot: text.contains(&format!("@{BOT_NAME}")),
        },
    }
}

pub(crate) fn client_id(id: Option<&str>) -> Result<Option<&str>, ApiError> {
    match id {
        Some(id)
            if id.is_empty()
                || id.len() > 64
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            Err(ApiError::BadRequest(
                "client_id must be 1-64 letters, digits or dashes".into(),
            ))
        }
        other => Ok(other),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

async fn send_message(
    State(state): State<AppState>,
    body: Result<Json<SendMessage>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body?;
    let actor = actor(&state, &req.user)?;
    let client = client_id(req.client_id.as_deref())?;
    if !channels(&state).contains(&req.channel) {
        return Err(ApiError::BadRequest(format!(
            "there is no channel #{}",
            truncate(&req.channel, 80)
        )));
    }
    let text = req.text.trim();
    if text.is_empty() {
        return Err(ApiError::BadRequest("the message is empty".into()));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(ApiError::BadRequest(format!(
            "messages are limited to {MAX_TEXT} characters"
        )));
    }
    let thread = match req.thread_id {
        Some(id) => match state.engine.store().console_get(id).await? {
            Some(root) if root.thread_id.is_none() && root.channel == req.channel => Some(id),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "message {id} is not a thread in #{}",
                    req.channel
                )));
            }
        },
        None => None,
    };
    let kind = message_kind(text);
    let event = InboundEvent {
        id: message_event_id(&actor.id, client),
        actor: actor.clone(),
        conversation: ConversationRef {
            platform: "console".into(),
            channel: req.channel.clone(),
            thread: thread.map(|t| t.to_string()),
        },
        kind,
    };
    let posted = OutMessage {
        text: text.to_owned(),
        ..Default::default()
    };
    // The message and the runs it starts are written side by side, the message first: the
    // store's writer takes writes in the order they are sent, so both share a commit (or the
    // message's commits first), and the person waits for one commit, not two.
    let (message, response) = tokio::join!(
        state
            .console
            .post(&req.channel, thread, &actor.id, false, &posted, client),
        state.engine.handle(event)
    );
    let (message, response) = (message?, response?);
    Ok(Json(
        json!({"message": message, "notices": response.notices, "started": response.started}),
    ))
}

/// The event a person's console message is: named by the browser's id for it when it sent
/// one (a message sent again is the same event, and starts nothing twice), else new.
fn message_event_id(user: &str, client: Option<&str>) -> String {
    static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    match client {
        Some(c) => format!("console:msg:{user}:{c}"),
        None => format!(
            "console:msg:{}:{}",
            STARTED.get_or_init(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            }),
            SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ),
    }
}

async fn click(
    State(state): State<AppState>,
    body: Result<Json<Click>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body?;
    let actor = actor(&state, &req.user)?;
    let client = client_id(req.client_id.as_deref())?;
    let message = state
        .engine
        .store()
        .console_get(req.message_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no message {}", req.message_id)))?;
    let conversation = ConversationRef {
        platform: "console".into(),
        channel: message.channel.clone(),
        thread: message.thread_id.map(|t| t.to_string()),
    };
    // A button Baton cannot read gets its answer, and the ledger keeps it.
    let Ok(action) = req.action.parse::<ActionId>() else {
        let event = InboundEvent {
            id: format!(
                "console:action:{}:{}",
                actor.id,
                client.unwrap_or("unreadable")
            ),
            actor,
            conversation,
            kind: EventKind::UnreadableAction { action: req.action },
        };
        let response = state.engine.handle(event).await?;
        return Ok(Json(json!({"notices": response.notices})));
    };
    // A button only works on the message that shows it: a click on a message whose buttons
    // are gone (decided, expired) gets the current state instead of acting.
    if !message
        .message
        .buttons
        .iter()
        .any(|b| b.action == req.action)
    {
        return Ok(Json(
            json!({"notices": ["This button is no longer active."]}),
        ));
    }
    if req
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > TEXT_LIMIT)
    {
        return Err(ApiError::BadRequest(format!(
            "the text sent with a click (a reason, an edited payload) is limited to {TEXT_LIMIT} characters"
        )));
    }
    // Without the browser's own id every click is a new event: two clicks in the same
    // instant (a test's clock stands still) are still two.
    static CLICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = match client {
        Some(c) => format!("console:action:{}:{c}", actor.id),
        None => format!(
            "console:action:{}:{}:{}:{}",
            req.message_id,
            actor.id,
            state.clock.now().timestamp_nanos_opt().unwrap_or_default(),
            CLICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ),
    };
    // Approvers may be a channel's members: in the console, the people who write there.
    let mut actor = actor;
    let channels: Vec<String> = state.engine.approver_channels().into_iter().collect();
    if !channels.is_empty() {
        for channel in state
            .engine
            .store()
            .console_member_of(&actor.id, &channels)
            .await?
        {
            actor.groups.push(format!("channel:{channel}"));
        }
    }
    let event = InboundEvent {
        id,
        actor,
        conversation,
        kind: EventKind::Action {
            action,
            reason: req.reason,
        },
    };
    let response = state.engine.handle(event).await?;
    Ok(Json(json!({"notices": response.notices})))
}

async fn stream(
    State(state): State<AppState>,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>> {
    let mut updates = BroadcastStream::new(state.console.subscribe());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut shutdown = state.shutdown.clone();
    // Forward until the client leaves or the server shuts down; ending the stream closes the
    // connection, so a graceful shutdown is not held up by open consoles.
    tokio::spawn(async move {
        loop {
            let update = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                u = updates.next() => u,
            };
            let Some(update) = update else { break };
            let event = match update {
                Ok(ConsoleUpdate::Message { message }) => Event::default()
                    .event("message")
                    .json_data(&message)
                    .unwrap_or_default(),
                // Fell behind: the page reloads what it shows.
                Err(_) => Event::default().event("resync").data("{}"),
            };
            if tx.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

/// The console's webhook inbox: what `webhook.post` sends to `/inbox/NAME` appears in #inbox,
/// so workflows with external steps can be tried with nothing else running.
async fn inbox(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(payload) = body?;
    if !valid_channel(&name) {
        return Err(ApiError::BadRequest(
            "inbox names are lowercase letters, digits, - or _".into(),
        ));
    }
    let pretty = serde_json::to_string_pretty(&payload).unwrap_or_default();
    let message = OutMessage {
        text: format!("Webhook *{name}* received:"),
        detail: Some(pretty),
        ..Default::default()
    };
    let m = state
        .console
        .post(
            INBOX_CHANNEL,
            None,
            &format!("webhook:{name}"),
            true,
            &message,
            None,
        )
        .await?;
    Ok(Json(json!({"ok": true, "id": m.id})))
}
