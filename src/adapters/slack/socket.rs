//! Socket Mode: Baton opens a WebSocket to Slack (the URL comes from `apps.connections.open`,
//! called with the app-level token) and receives `events_api`, `slash_commands` and
//! `interactive` envelopes on it. Each envelope is acknowledged at once with its
//! `envelope_id`; the work continues in the background exactly as for the Events API over HTTP.
//! On `disconnect`, a closed socket or an error, Baton connects again (backing off on errors).
//! What arrives twice across a reconnect is de-duplicated by the same event ids.

use super::Slack;
use super::inbound::{command_event, dispatch_interaction, handle_later, message_event};
use crate::engine::Engine;
use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use slack_morphism::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Silence after which the connection is taken for dead and opened again.
const SILENCE_LIMIT: Duration = Duration::from_secs(120);
/// Longest a WebSocket handshake may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Keeps a Socket Mode connection open until shutdown.
pub fn spawn(
    slack: Arc<Slack>,
    engine: Arc<Engine>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        while !*shutdown.borrow() {
            match connect_once(&slack, &engine, &mut shutdown).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), wait = ?backoff, "Slack Socket Mode connection failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

/// One connection, from `apps.connections.open` to its end. `Ok` means Slack asked us to
/// reconnect (or shutdown began); `Err` means something failed.
async fn connect_once(
    slack: &Arc<Slack>,
    engine: &Arc<Engine>,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let token = slack
        .settings
        .app_token
        .clone()
        .context("SLACK_APP_TOKEN is not set")?;
    let answer = slack
        .api
        .call_with_token("apps.connections.open", &token, &[])
        .await
        .context("apps.connections.open")?;
    let url = answer["url"]
        .as_str()
        .context("apps.connections.open answered without a url")?;
    let (socket, _) = tokio::time::timeout(CONNECT_LIMIT, tokio_tungstenite::connect_async(url))
        .await
        .context("opening the Socket Mode WebSocket timed out")?
        .context("opening the Socket Mode WebSocket")?;
    let (mut sink, mut stream) = socket.split();
    loop {
        if *shutdown.borrow() {
            let _ = sink.send(Message::Close(None)).await;
            return Ok(());
        }
        let frame = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    // The app is gone: nothing will ever tell us to stop.
                    return Ok(());
                }
                continue;
            }
            // Slack pings the connection regularly; this long in silence means it is dead.
            frame = tokio::time::timeout(SILENCE_LIMIT, stream.next()) => match frame {
                Ok(f) => f,
                Err(_) => anyhow::bail!("no traffic on the Socket Mode connection for {SILENCE_LIMIT:?}"),
            },
        };
        let frame = match frame {
            None => return Ok(()),
            Some(Err(e)) => return Err(e).context("reading from the Socket Mode WebSocket"),
            Some(Ok(f)) => f,
        };
        match frame {
            Message::Text(text) => {
                let (ack, reconnect) = on_envelope(slack, engine, text.as_str());
                if let Some(ack) = ack {
                    sink.send(Message::Text(ack.into()))
                        .await
                        .context("acknowledging an envelope")?;
                }
                if reconnect {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(());
                }
            }
            Message::Ping(data) => sink
                .send(Message::Pong(data))
                .await
                .context("answering a ping")?,
            Message::Close(_) => return Ok(()),
            _ => {}
        }
    }
}

/// A Socket Mode frame as Slack sends it. (slack-morphism models these too, but does not
/// export them without its own WebSocket client, which would bring a second HTTP stack.)
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Value,
    reason: Option<String>,
    num_connections: Option<u32>,
}

/// Handles one envelope: returns the acknowledgement to send, and whether to reconnect.
fn on_envelope(slack: &Arc<Slack>, engine: &Arc<Engine>, text: &str) -> (Option<String>, bool) {
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable Socket Mode frame");
            return (None, false);
        }
    };
    // Every envelope with an id is acknowledged, even one we cannot use, so Slack does not
    // deliver it again and again.
    let ack = envelope
        .envelope_id
        .as_ref()
        .map(|id| serde_json::json!({ "envelope_id": id }).to_string());
    match envelope.kind.as_str() {
        "hello" => {
            tracing::info!(
                connections = envelope.num_connections.unwrap_or(1),
                "Slack Socket Mode connected"
            );
            (None, false)
        }
        "disconnect" => {
            tracing::info!(reason = %envelope.reason.unwrap_or_default(), "Slack asked to reconnect");
            (None, true)
        }
        "events_api" => {
            match serde_json::from_value::<SlackPushEventCallback>(envelope.payload) {
                Ok(cb) => {
                    if let Some(event) = message_event(slack, &cb.event) {
                        handle_later(engine.clone(), slack.clone(), event, None);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable events_api payload"),
            }
            (ack, false)
        }
        "slash_commands" => {
            match serde_json::from_value::<SlackCommandEvent>(envelope.payload) {
                Ok(p) => {
                    let event = command_event(
                        &p.command.0,
                        p.text.as_deref().unwrap_or(""),
                        &p.user_id.0,
                        &p.channel_id.0,
                        &p.trigger_id.0,
                    );
                    handle_later(
                        engine.clone(),
                        slack.clone(),
                        event,
                        Some(p.response_url.0.to_string()),
                    );
                }
                Err(e) => tracing::warn!(error = %e, "unreadable slash_commands payload"),
            }
            (ack, false)
        }
        "interactive" => {
            dispatch_interaction(engine, slack, envelope.payload);
            (ack, false)
        }
        other => {
            tracing::debug!(kind = other, "ignored a Socket Mode envelope");
            (ack, false)
        }
    }
}
