//! Socket Mode: Baton opens a WebSocket to Slack (the URL comes from `apps.connections.open`,
//! called with the app-level token) and receives `events_api`, `slash_commands` and
//! `interactive` envelopes on it. Each envelope with an id is acknowledged at once, even one
//! whose payload cannot be read; the work continues in the background exactly as for the
//! Events API over HTTP.
//!
//! A supervisor keeps one connection live. When Slack warns that a connection will close
//! (`disconnect` with `refresh_requested` or `warning`), a new one is opened first and the
//! old one is closed only once the new one said `hello`, so there is no moment without a
//! connection; an envelope that arrives on both is handled once (by its envelope id, and
//! the engine's event ids behind that). A connection that drops is replaced after a backoff
//! that starts over with every `hello`.

use super::Slack;
use super::inbound::{
    Interaction, carry_out, command_event, handle_later, message_event, read_interaction,
};
use crate::adapters::payload;
use crate::core::event::InboundEvent;
use crate::engine::Engine;
use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use slack_morphism::prelude::*;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Silence after which the connection is taken for dead and opened again.
const SILENCE_LIMIT: Duration = Duration::from_secs(120);
/// Longest a WebSocket handshake may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// The pause before reconnecting after a connection that ended unplanned: it doubles with
/// each failure in a row, up to a minute, and starts over once a connection says `hello`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(60);

    /// The pause to take now; the one after is twice as long.
    pub fn pause(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    /// A connection works again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// Envelope ids seen lately, so an envelope delivered twice (on two connections while one
/// replaces the other, or redelivered) is acknowledged twice and handled once.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl RecentIds {
    const KEEP: usize = 2048;

    /// Whether `id` is new; remembers it.
    fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.seen.insert(id.to_owned());
        true
    }
}

/// What a connection tells the supervisor.
enum Report {
    /// Slack said `hello`: the connection works.
    Hello(u64),
    /// Slack warned that the connection will close: open its successor now.
    Replace(u64),
    /// The connection is over.
    Ended(u64, anyhow::Result<()>),
}

/// A connection the supervisor started.
struct Link {
    id: u64,
    close: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Link {
    fn close(&mut self) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
    }
}

/// Keeps a Socket Mode connection open until shutdown.
pub fn spawn(
    slack: Arc<Slack>,
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(supervise(slack, engine, shutdown))
}

async fn supervise(slack: Arc<Slack>, engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(RecentIds::default()));
    let mut backoff = Backoff::default();
    let mut ids = 0u64;
    let mut open = |delay: Duration| {
        ids += 1;
        let (close_tx, close_rx) = oneshot::channel();
        let task = tokio::spawn(connection(
            ids,
            delay,
            slack.clone(),
            engine.clone(),
            tx.clone(),
            close_rx,
            seen.clone(),
        ));
        Link {
            id: ids,
            close: Some(close_tx),
            task,
        }
    };
    let mut live = open(Duration::ZERO);
    // Connections Slack is about to close, kept serving until their successor said hello.
    let mut retiring: Vec<Link> = Vec::new();
    loop {
        tokio::select! {
            report = rx.recv() => match report {
                Some(Report::Hello(id)) if id == live.id => {
                    backoff.reset();
                    for old in &mut retiring {
                        old.close();
                    }
                }
                Some(Report::Replace(id)) if id == live.id => {
                    tracing::info!("Slack will close the Socket Mode connection; opening the next one first");
                    let next = open(Duration::ZERO);
                    retiring.push(std::mem::replace(&mut live, next));
                }
                Some(Report::Ended(id, result)) if id == live.id => {
                    let wait = backoff.pause();
                    match result {
                        Ok(()) => tracing::info!(wait = ?wait, "the Slack Socket Mode connection closed; reconnecting"),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), wait = ?wait, "the Slack Socket Mode connection failed; reconnecting"),
                    }
                    live = open(wait);
                }
                Some(Report::Ended(id, _)) => retiring.retain(|l| l.id != id),
                Some(_) => {}
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    live.close();
    for old in &mut retiring {
        old.close();
    }
    let _ = live.task.await;
    for old in retiring {
        let _ = old.task.await;
    }
}

/// One connection, from `apps.connections.open` to its end, after `delay`. `Ok` means it was
/// closed on purpose (by Baton, or cleanly by Slack); `Err` that something failed.
async fn connection(
    id: u64,
    delay: Duration,
    slack: Arc<Slack>,
    engine: Arc<Engine>,
    reports: mpsc::UnboundedSender<Report>,
    mut close: oneshot::Receiver<()>,
    seen: Arc<Mutex<RecentIds>>,
) {
    let result = async {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut close => return Ok(()),
        }
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
        let (socket, _) =
            tokio::time::timeout(CONNECT_LIMIT, tokio_tungstenite::connect_async(url))
                .await
                .context("opening the Socket Mode WebSocket timed out")?
                .context("opening the Socket Mode WebSocket")?;
        let (mut sink, mut stream) = socket.split();
        loop {
            let frame = tokio::select! {
                _ = &mut close => {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(());
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
                    let (ack, control) = on_envelope(&slack, &engine, &seen, text.as_str()).await;
                    if let Some(ack) = ack {
                        sink.send(Message::Text(ack.into()))
                            .await
                            .context("acknowledging an envelope")?;
                    }
                    match control {
                        Some(Control::Hello) => {
                            let _ = reports.send(Report::Hello(id));
                        }
                        // Keep serving until the successor is up (or Slack closes this one).
                        Some(Control::Replace) => {
                            let _ = reports.send(Report::Replace(id));
                        }
                        None => {}
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
    .await;
    let _ = reports.send(Report::Ended(id, result));
}

/// What an envelope asks of the connection.
enum Control {
    Hello,
    Replace,
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

/// What one Socket Mode frame says, read without side effects (so it can be fuzzed).
#[derive(Debug)]
pub struct Frame {
    /// The envelope id to acknowledge, when there is one (even in a frame that cannot be
    /// read otherwise).
    pub envelope_id: Option<String>,
    pub what: FrameKind,
}

#[derive(Debug)]
pub enum FrameKind {
    Hello {
        connections: u32,
    },
    /// Slack will close this connection (`refresh_requested`, `warning`, `link_disabled`).
    Disconnect {
        reason: String,
    },
    /// Core events to hand to the engine, with where private answers go.
    Events(Vec<(InboundEvent, Option<String>)>),
    Interactions(Vec<Interaction>),
    /// A payload Baton cannot read: acknowledged and recorded.
    Unreadable {
        what: &'static str,
        error: String,
    },
    /// Something Baton does not use (other event types, other envelope types).
    Ignored,
}

/// Reads one frame. `me` is the bot's own user id, so its own messages start nothing.
pub fn read_frame(me: &str, text: &str) -> Frame {
    let envelope: Envelope = match payload::parse(text) {
        Ok(e) => e,
        Err(e) => {
            return Frame {
                envelope_id: payload::field_of_unreadable(text, "envelope_id"),
                what: FrameKind::Unreadable {
                    what: "Socket Mode envelope",
                    error: e.to_string(),
                },
            };
        }
    };
    let what = match envelope.kind.as_str() {
        "hello" => FrameKind::Hello {
            connections: envelope.num_connections.unwrap_or(1),
        },
        "disconnect" => FrameKind::Disconnect {
            reason: envelope.reason.unwrap_or_default(),
        },
        // Slack sends many event types Baton does not model: those are ignored, not errors.
        "events_api" => match serde_json::from_value::<SlackPushEventCallback>(envelope.payload) {
            Ok(cb) => FrameKind::Events(
                message_event(me, &cb.event)
                    .map(|e| (e, None))
                    .into_iter()
                    .collect(),
            ),
            Err(_) => FrameKind::Ignored,
        },
        "slash_commands" => match serde_json::from_value::<SlackCommandEvent>(envelope.payload) {
            Ok(p) => {
                let event = command_event(
                    &p.command.0,
                    p.text.as_deref().unwrap_or(""),
                    &p.user_id.0,
                    &p.channel_id.0,
                    &p.trigger_id.0,
                );
                FrameKind::Events(vec![(event, Some(p.response_url.0.to_string()))])
            }
            Err(e) => FrameKind::Unreadable {
                what: "slash command",
                error: e.to_string(),
            },
        },
        "interactive" => FrameKind::Interactions(read_interaction(&envelope.payload)),
        _ => FrameKind::Ignored,
    };
    Frame {
        envelope_id: envelope.envelope_id,
        what,
    }
}

/// Handles one envelope: returns the acknowledgement to send, and what it asks of the
/// connection. Every envelope with an id is acknowledged, even one Baton cannot read, so
/// Slack does not deliver it again and again and the person sees no timeout.
async fn on_envelope(
    slack: &Arc<Slack>,
    engine: &Arc<Engine>,
    seen: &Mutex<RecentIds>,
    text: &str,
) -> (Option<String>, Option<Control>) {
    let frame = read_frame(&slack.bot_user(), text);
    let ack = frame
        .envelope_id
        .as_deref()
        .map(|id| serde_json::json!({ "envelope_id": id }).to_string());
    let first_time = frame
        .envelope_id
        .as_deref()
        .is_none_or(|id| seen.lock().expect("envelope ids lock").first_time(id));
    match frame.what {
        FrameKind::Hello { connections } => {
            tracing::info!(connections, "Slack Socket Mode connected");
            (None, Some(Control::Hello))
        }
        FrameKind::Disconnect { reason } => {
            if reason == "link_disabled" {
                tracing::error!(
                    "Slack turned Socket Mode off for this app; switch it on under Socket Mode in the app's settings"
                );
            } else {
                tracing::info!(reason = %reason, "Slack will close the Socket Mode connection");
            }
            (None, Some(Control::Replace))
        }
        FrameKind::Unreadable { what, error } => {
            engine.unreadable("slack", what, &error, text).await;
            (ack, None)
        }
        _ if !first_time => (ack, None),
        FrameKind::Events(events) => {
            for (event, url) in events {
                handle_later(engine.clone(), slack.clone(), event, url);
            }
            (ack, None)
        }
        FrameKind::Interactions(interactions) => {
            carry_out(engine, slack, interactions, text);
            (ack, None)
        }
        FrameKind::Ignored => (ack, None),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_while_connections_fail_and_starts_over_after_hello() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..9).map(|_| b.pause().as_millis()).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        b.reset();
        assert_eq!(b.pause(), Duration::from_millis(500));
    }

    #[test]
    fn an_envelope_seen_before_is_recognised() {
        let mut ids = RecentIds::default();
        assert!(ids.first_time("a"));
        assert!(!ids.first_time("a"));
        for n in 0..RecentIds::KEEP {
            ids.first_time(&n.to_string());
        }
        assert!(ids.first_time("a"), "old ids are forgotten");
    }
}
