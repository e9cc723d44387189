//! The Events API over HTTP: `/slack/events`, `/slack/commands`, `/slack/interactions`.
//!
//! Every request's signature is checked (HMAC-SHA256 over `v0:timestamp:body`, constant-time
//! compare, at most five minutes old) before anything is parsed or stored. The answer goes back
//! at once; the work continues in the background and private replies go to the request's
//! `response_url`.

use super::Slack;
use crate::core::event::{Actor, ConversationRef, EventKind, InboundEvent};
use crate::core::ids::ActionId;
use crate::engine::Engine;
use crate::http::AppState;
use crate::http::error::ApiError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use slack_morphism::prelude::*;
use slack_morphism::signature_verifier::{
    SlackEventSignatureVerifier, SlackEventSignatureVerifierError,
};
use std::sync::Arc;

/// Largest request Slack may send us: events carrying long messages and blocks are bigger
/// than anything a person types into the console.
const MAX_SLACK_BODY: usize = 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/slack/events", post(events))
        .route("/slack/commands", post(commands))
        .route("/slack/interactions", post(interactions))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_SLACK_BODY))
}

/// Checks the signature; returns the body as text. A refusal is logged without the body.
fn verify(slack: &Slack, headers: &HeaderMap, body: &Bytes) -> Result<String, ApiError> {
    let refuse = |why: &str| {
        tracing::warn!(why, bytes = body.len(), "refused a Slack request");
        ApiError::BadSignature
    };
    let Some(secret) = &slack.settings.signing_secret else {
        return Err(refuse("no signing secret is configured"));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER),
        header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP),
    ) else {
        return Err(refuse("unsigned"));
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(refuse("body is not UTF-8"));
    };
    let verifier =
        SlackEventSignatureVerifier::new(&SlackSigningSecret::new(secret.expose().to_owned()));
    match verifier.verify(signature, text, timestamp) {
        Ok(()) => Ok(text.to_owned()),
        Err(SlackEventSignatureVerifierError::WrongSignatureError(_)) => {
            Err(refuse("wrong signature"))
        }
        Err(_) => Err(refuse("stale or malformed timestamp")),
    }
}

/// A signed, form-encoded request from Slack (slash commands, interactions), read as `T`.
fn verified_form<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    what: &str,
) -> Result<(Arc<Slack>, T), ApiError> {
    let slack = slack_of(state)?;
    let text = verify(&slack, headers, body)?;
    let form = serde_urlencoded::from_str::<T>(&text)
        .map_err(|_| ApiError::BadRequest(format!("unreadable {what}")))?;
    Ok((slack, form))
}

fn slack_of(state: &AppState) -> Result<Arc<Slack>, ApiError> {
    state
        .slack
        .clone()
        .ok_or_else(|| ApiError::NotFound("Slack is not configured".into()))
}

fn actor(user: &str, is_bot: bool) -> Actor {
    Actor {
        platform: "slack".into(),
        id: user.to_owned(),
        display: user.to_owned(),
        is_bot,
        groups: vec![],
    }
}

/// Handles an event in the background and sends any private notices to `response_url`.
pub(super) fn handle_later(
    engine: Arc<Engine>,
    slack: Arc<Slack>,
    event: InboundEvent,
    response_url: Option<String>,
) {
    let guard = slack.inflight.enter();
    tokio::spawn(async move {
        let _guard = guard;
        let mut event = event;
        // Approvers, and who may start a workflow, may be user groups: who is in which is
        // read when someone acts (cached for a few minutes).
        event.actor.groups = slack.groups_of(&event.actor.id).await;
        // Approvers may be a channel's members: whose membership counts is read at the click.
        if matches!(event.kind, EventKind::Action { .. }) {
            let channels: Vec<String> = engine.approver_channels().into_iter().collect();
            for channel in slack.member_of(&event.actor.id, &channels).await {
                event.actor.groups.push(format!("channel:{channel}"));
            }
        }
        // Workflows name channels (`incidents`); Slack sends IDs. Runs record the name where
        // there is one, and posting turns it back into the ID.
        if let Some(name) = slack.channel_name(&event.conversation.channel).await {
            event.conversation.channel = name;
        }
        let id = event.id.clone();
        match engine.handle_acknowledged(event).await {
            Ok(response) => {
                let Some(url) = response_url else { return };
                for notice in response.notices {
                    if !allowed_response_url(&slack, &url) {
                        tracing::warn!("ignored a response_url outside Slack");
                        return;
                    }
                    if let Err(e) = slack.api.respond(&url, &notice).await {
                        tracing::warn!(error = %e, event = %id, "could not send a private reply to Slack");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, event = %id, "could not handle a Slack event"),
        }
    });
}

/// Private replies only go to Slack (or to the Web API's host when `SLACK_API_URL` points
/// elsewhere), never to an address a forged payload names.
fn allowed_response_url(slack: &Slack, url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or_default();
    (u.scheme() == "https" && (host == "slack.com" || host.ends_with(".slack.com")))
        || Some(host) == slack.api.host()
}

async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let slack = slack_of(&state)?;
    let text = verify(&slack, &headers, &body)?;
    let push: SlackPushEvent = match crate::adapters::payload::parse(&text) {
        Ok(p) => p,
        // Acknowledged all the same: Slack would only send it again, and again.
        Err(e) => {
            state
                .engine
                .unreadable("slack", "Events API request", &e.to_string(), &text)
                .await;
            return Ok(StatusCode::OK.into_response());
        }
    };
    Ok(match push {
        SlackPushEvent::UrlVerification(v) => {
            axum::Json(serde_json::json!({"challenge": v.challenge})).into_response()
        }
        SlackPushEvent::EventCallback(cb) => {
            if let Some(event) = message_event(&slack.bot_user(), &cb.event) {
                handle_later(state.engine.clone(), slack, event, None);
            }
            StatusCode::OK.into_response()
        }
        SlackPushEvent::AppRateLimited(_) => {
            tracing::warn!("Slack is rate-limiting event deliveries to this app");
            StatusCode::OK.into_response()
        }
    })
}

/// A channel message or a mention as a core event. Both event types carry the message's
/// `channel` and `ts`, which form the event id: a message delivered as `message` and as
/// `app_mention`, or redelivered by Slack, starts each workflow at most once.
pub fn message_event(me: &str, body: &SlackEventCallbackBody) -> Option<InboundEvent> {
    let (user, is_bot, channel, text, ts, thread) = match body {
        SlackEventCallbackBody::Message(m) => {
            // Edits, joins, deletions and the like are not new messages.
            // A file shared with text, or a thread reply also sent to the channel, is still a
            // person's message.
            let kept = matches!(
                m.subtype,
                None | Some(SlackMessageEventType::FileShare)
                    | Some(SlackMessageEventType::ThreadBroadcast)
            );
            if !kept {
                return None;
            }
            let user = m.sender.user.as_ref().map(|u| u.0.clone())?;
            let text = m
                .content
                .as_ref()
                .and_then(|c| c.text.clone())
                .unwrap_or_default();
            (
                user,
                m.sender.bot_id.is_some(),
                m.origin.channel.as_ref()?.0.clone(),
                text,
                m.origin.ts.0.clone(),
                m.origin.thread_ts.as_ref().map(|t| t.0.clone()),
            )
        }
        SlackEventCallbackBody::AppMention(a) => (
            a.user.0.clone(),
            false,
            a.channel.0.clone(),
            a.content.text.clone().unwrap_or_default(),
            a.origin.ts.0.clone(),
            a.origin.thread_ts.as_ref().map(|t| t.0.clone()),
        ),
        _ => return None,
    };
    // The bot never reacts to itself.
    if user == me {
        return None;
    }
    let mentions_bot = !me.is_empty() && text.contains(&format!("<@{me}>"));
    // A reply in a thread carries the thread's ts; a top-level message has none (or its own).
    let thread = thread
        .filter(|t| *t != ts)
        .map(|t| format!("{channel}:{t}"));
    Some(InboundEvent {
        id: format!("slack:msg:{channel}:{ts}"),
        actor: actor(&user, is_bot),
        conversation: ConversationRef {
            platform: "slack".into(),
            channel,
            thread,
        },
        kind: EventKind::Message { text, mentions_bot },
    })
}

/// The fields of a slash command Baton reads (Slack sends more).
#[derive(Deserialize)]
struct Command {
    command: String,
    #[serde(default)]
    text: String,
    user_id: String,
    channel_id: String,
    response_url: String,
    trigger_id: String,
}

/// A slash command as a core event; the trigger id makes a redelivered command one run.
pub(super) fn command_event(
    command: &str,
    text: &str,
    user: &str,
    channel: &str,
    trigger_id: &str,
) -> InboundEvent {
    InboundEvent {
        id: format!("slack:cmd:{trigger_id}"),
        actor: actor(user, false),
        conversation: ConversationRef {
            platform: "slack".into(),
            channel: channel.to_owned(),
            thread: None,
        },
        kind: EventKind::Slash {
            command: command.trim_start_matches('/').to_owned(),
            text: text.to_owned(),
            options: None,
        },
    }
}

/// Callback id of the modal asking for a reason.
const REASON_MODAL: &str = "baton_reason";

/// What an interaction payload asks Baton to do, read without side effects (so it can be
/// fuzzed and tested on its own).
#[derive(Debug)]
pub enum Interaction {
    /// A click or a submitted modal, as a core event, with where private answers go.
    Event(InboundEvent, Option<String>),
    /// A button that asks for text first: open a modal.
    AskFirst {
        action: ActionId,
        trigger: String,
        question: String,
        metadata: String,
    },
    /// A payload Baton cannot read: recorded.
    Unreadable(String),
}

/// Reads an interaction payload (from HTTP or Socket Mode): button clicks become events (or a
/// modal to open when the button asks for a reason first), a submitted reason modal becomes
/// the click it was asked for, and a click on a button Baton cannot read becomes the event
/// that tells the person so.
pub fn read_interaction(payload: &Value) -> Vec<Interaction> {
    if payload["type"] == "view_submission" {
        return reason_submitted(payload)
            .map(|(event, url)| Interaction::Event(event, url))
            .into_iter()
            .collect();
    }
    let interaction = match serde_json::from_value::<SlackInteractionEvent>(payload.clone()) {
        Ok(i) => i,
        Err(e) => return unreadable_interaction(payload, &e.to_string()),
    };
    // Other interaction kinds (shortcuts, messages actions) are not used.
    let SlackInteractionEvent::BlockActions(ev) = interaction else {
        return vec![];
    };
    let Some(user) = ev.user.as_ref().map(|u| u.id.0.clone()) else {
        return vec![];
    };
    let channel = ev
        .channel
        .as_ref()
        .map(|c| c.id.0.clone())
        .unwrap_or_default();
    let response_url = ev.response_url.as_ref().map(|u| u.0.to_string());
    let mut out = Vec::new();
    for action in ev.actions.iter().flatten() {
        // The trigger id is unique per click: a click delivered twice is applied once.
        let id = format!("slack:action:{}:{}", ev.trigger_id.0, action.action_id.0);
        let Ok(parsed) = action.action_id.0.parse::<ActionId>() else {
            let event = unreadable_click(id, &user, &channel, &action.action_id.0);
            out.push(Interaction::Event(event, response_url.clone()));
            continue;
        };
        let question = action
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
            .and_then(|v| v["ask"].as_str().map(str::to_owned));
        if let Some(question) = question {
            let metadata = json!({"action": action.action_id.0, "channel": channel, "response_url": response_url}).to_string();
            out.push(Interaction::AskFirst {
                action: parsed,
                trigger: ev.trigger_id.0.clone(),
                question,
                metadata,
            });
            continue;
        }
        let event = InboundEvent {
            id,
            actor: actor(&user, false),
            conversation: ConversationRef {
                platform: "slack".into(),
                channel: channel.clone(),
                thread: None,
            },
            kind: EventKind::Action {
                action: parsed,
                reason: None,
            },
        };
        out.push(Interaction::Event(event, response_url.clone()));
    }
    out
}

/// Carries out what an interaction payload asks: events to the engine in the background,
/// modals opened, unreadable payloads recorded.
pub(super) fn dispatch_interaction(engine: &Arc<Engine>, slack: &Arc<Slack>, payload: Value) {
    let read = read_interaction(&payload);
    carry_out(engine, slack, read, &payload.to_string());
}

/// Carries out interactions already read; `payload` is what the ledger keeps of one that
/// cannot be read.
pub(super) fn carry_out(
    engine: &Arc<Engine>,
    slack: &Arc<Slack>,
    interactions: Vec<Interaction>,
    payload: &str,
) {
    for what in interactions {
        match what {
            Interaction::Event(event, url) => {
                handle_later(engine.clone(), slack.clone(), event, url)
            }
            Interaction::AskFirst {
                action,
                trigger,
                question,
                metadata,
            } => {
                let (slack, engine) = (slack.clone(), engine.clone());
                tokio::spawn(async move {
                    // Edit starts from the payload as it stands (read now: a button's value is
                    // too small to carry it).
                    let view = match &action {
                        ActionId::Edit { run, step, .. } => {
                            let current = engine
                                .approval_content(*run, step)
                                .await
                                .unwrap_or_default();
                            text_modal(&trigger, &question, &metadata, TextModal::Edit(&current))
                        }
                        _ => text_modal(&trigger, &question, &metadata, TextModal::Reason),
                    };
                    if let Err(e) = slack.api.call("views.open", &view).await {
                        tracing::warn!(error = %e, "could not open a modal");
                    }
                });
            }
            Interaction::Unreadable(error) => {
                let (engine, text) = (engine.clone(), payload.to_owned());
                tokio::spawn(async move {
                    engine
                        .unreadable("slack", "interaction", &error, &text)
                        .await;
                });
            }
        }
    }
}

/// A click on a button Baton cannot read, as the event that tells the person so.
fn unreadable_click(id: String, user: &str, channel: &str, action: &str) -> InboundEvent {
    InboundEvent {
        id,
        actor: actor(user, false),
        conversation: ConversationRef {
            platform: "slack".into(),
            channel: channel.to_owned(),
            thread: None,
        },
        kind: EventKind::UnreadableAction {
            action: action.to_owned(),
        },
    }
}

/// An interaction whose payload does not have the shape Baton reads. A button click still
/// gets its answer (from the fields every click has); anything else is recorded.
fn unreadable_interaction(payload: &Value, error: &str) -> Vec<Interaction> {
    let user = payload["user"]["id"].as_str();
    if payload["type"] == "block_actions"
        && let Some(user) = user
    {
        let channel = payload["channel"]["id"].as_str().unwrap_or_default();
        let trigger = payload["trigger_id"].as_str().unwrap_or_default();
        let response_url = payload["response_url"].as_str().map(str::to_owned);
        return payload["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|action| {
                let action_id = action["action_id"].as_str().unwrap_or_default();
                let id = format!("slack:action:{trigger}:{action_id}");
                Interaction::Event(
                    unreadable_click(id, user, channel, action_id),
                    response_url.clone(),
                )
            })
            .collect();
    }
    vec![Interaction::Unreadable(error.to_owned())]
}

/// What a text modal asks for.
enum TextModal<'a> {
    /// Why someone rejects.
    Reason,
    /// A new payload, starting from the current one.
    Edit(&'a str),
}

/// Slack's longest `plain_text_input`.
const SLACK_INPUT_LIMIT: usize = 3000;

/// The `views.open` body of a modal asking for text: a reason, or an edited payload.
fn text_modal(trigger_id: &str, question: &str, metadata: &str, kind: TextModal<'_>) -> Value {
    let (title, submit, max) = match kind {
        TextModal::Reason => ("Reject", "Reject", 1000),
        TextModal::Edit(_) => ("Edit the payload", "Save", SLACK_INPUT_LIMIT),
    };
    let mut element = json!({"type": "plain_text_input", "action_id": "reason", "multiline": true, "max_length": max});
    if let TextModal::Edit(current) = kind {
        element["initial_value"] =
            json!(current.chars().take(SLACK_INPUT_LIMIT).collect::<String>());
    }
    json!({
        "trigger_id": trigger_id,
        "view": {
            "type": "modal",
            "callback_id": REASON_MODAL,
            "title": {"type": "plain_text", "text": title},
            "submit": {"type": "plain_text", "text": submit},
            "close": {"type": "plain_text", "text": "Cancel"},
            "private_metadata": metadata,
            "blocks": [{
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": question},
                "element": element
            }]
        }
    })
}

/// A submitted reason modal as the click it was opened for.
fn reason_submitted(payload: &Value) -> Option<(InboundEvent, Option<String>)> {
    let view = &payload["view"];
    if view["callback_id"] != REASON_MODAL {
        return None;
    }
    let metadata: Value = serde_json::from_str(view["private_metadata"].as_str()?).ok()?;
    let action = metadata["action"].as_str()?.parse::<ActionId>().ok()?;
    let reason = view["state"]["values"]["reason"]["reason"]["value"]
        .as_str()
        .map(str::to_owned);
    let user = payload["user"]["id"].as_str()?;
    let event = InboundEvent {
        // One submission of one modal is one decision attempt.
        id: format!("slack:view:{}", view["id"].as_str()?),
        actor: actor(user, false),
        conversation: ConversationRef {
            platform: "slack".into(),
            channel: metadata["channel"].as_str().unwrap_or_default().to_owned(),
            thread: None,
        },
        kind: EventKind::Action { action, reason },
    };
    Some((event, metadata["response_url"].as_str().map(str::to_owned)))
}

async fn commands(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (slack, cmd) = verified_form::<Command>(&state, &headers, &body, "slash command")?;
    let event = command_event(
        &cmd.command,
        &cmd.text,
        &cmd.user_id,
        &cmd.channel_id,
        &cmd.trigger_id,
    );
    handle_later(state.engine.clone(), slack, event, Some(cmd.response_url));
    // An empty 200 acknowledges within Slack's three seconds; replies follow.
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct InteractionForm {
    payload: String,
}

async fn interactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (slack, form) = verified_form::<InteractionForm>(&state, &headers, &body, "interaction")?;
    let payload = match crate::adapters::payload::parse::<Value>(&form.payload) {
        Ok(p) => p,
        Err(e) => {
            state
                .engine
                .unreadable("slack", "interaction", &e.to_string(), &form.payload)
                .await;
            return Ok(StatusCode::OK);
        }
    };
    dispatch_interaction(&state.engine, &slack, payload);
    // An empty 200 also closes a submitted modal.
    Ok(StatusCode::OK)
}
