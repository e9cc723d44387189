//! The Discord gateway: one WebSocket (one shard) that Baton keeps open. The URL comes from
//! `GET /gateway` on the REST base, so under the test seam the gateway is the test server's.
//!
//! HELLO gives the heartbeat interval; Baton IDENTIFYs (or RESUMEs a session it had), sends a
//! heartbeat with the last sequence number every interval (the first after a random part of
//! it) and takes a missing HEARTBEAT_ACK for a dead connection. RECONNECT, a dropped socket or
//! a resumable close code resume the session on `resume_gateway_url`, so Discord replays what
//! was missed; INVALID_SESSION (not resumable) starts a new one. What arrives twice is
//! de-duplicated by the message or interaction ID in the engine. Close codes that no retry
//! fixes (bad token, intents not enabled) stop Baton with what to change.
//!
//! One replica at a time holds the gateway (the role `discord:gateway`, a lease in the
//! database): the others stand by, and one of them takes over within a lease of the holder
//! stopping. The holder leaves its session (id, resume URL, last sequence number) with the
//! lease, so the next one resumes it and Discord replays what was missed; a session that
//! cannot be resumed is replaced by a new one.

use super::Discord;
use super::inbound;
use crate::config::is_loopback;
use crate::core::workflow::{Trigger, WorkflowSet};
use crate::engine::Engine;
use anyhow::{Context as _, anyhow};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Gateway intents, as Discord numbers them.
pub const GUILDS: u64 = 1 << 0;
pub const GUILD_MESSAGES: u64 = 1 << 9;
/// Privileged: must be switched on in the Developer Portal.
pub const MESSAGE_CONTENT: u64 = 1 << 15;

/// The intents the workflows need: guilds and guild messages always (mentions and message IDs
/// arrive without message content); message content only when a workflow matches a pattern.
pub fn intents(workflows: &WorkflowSet) -> u64 {
    let patterns = workflows.iter().any(|wf| {
        wf.triggers
            .iter()
            .any(|t| matches!(t, Trigger::Message(m) if m.pattern.is_some()))
    });
    GUILDS | GUILD_MESSAGES | if patterns { MESSAGE_CONTENT } else { 0 }
}

/// Longest a WebSocket handshake, or the wait for HELLO, may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Shortest and longest wait between reconnection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Close code Baton sends when it means to resume: 1000 and 1001 would end the session.
const RESUMING: u16 = 4000;

/// The role of the replica that holds the gateway connection.
const ROLE: &str = "discord:gateway";
/// How often a replica standing by looks whether the gateway is its own now, and the holder
/// whether it still is.
const ROLE_CHECK: Duration = Duration::from_secs(1);

/// A session that can be resumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    id: String,
    resume_url: String,
    seq: Option<u64>,
    /// What READY said about the bot (its application, user and guilds), for a replica that
    /// resumes the session without having seen READY.
    #[serde(default)]
    ready: Value,
}

/// How a connection ended.
enum End {
    /// Shutdown began.
    Stop,
    /// Connect again (resuming when there is a session).
    Again,
}

/// Why a connection failed.
enum Failure {
    /// Retrying will not help: say what to change.
    Fatal(anyhow::Error),
    /// Try again after a pause.
    Retry(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Retry(e)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Failure {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Failure::Retry(anyhow!(e).context("the gateway connection failed"))
    }
}

/// One gateway frame.
#[derive(Deserialize)]
struct Frame {
    op: u8,
    #[serde(default)]
    d: Value,
    s: Option<u64>,
    t: Option<String>,
}

/// Keeps the gateway connection open until shutdown. The receiver resolves once the first
/// READY arrived, or with the error that stopped the gateway before it did.
pub fn spawn(
    discord: Arc<Discord>,
    engine: Arc<Engine>,
    intents: u64,
    mut shutdown: watch::Receiver<bool>,
) -> (JoinHandle<()>, oneshot::Receiver<anyhow::Result<()>>) {
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut session: Option<Session> = None;
        let mut backoff = MIN_BACKOFF;
        let mut holding = false;
        let mut asked = false;
        while !*shutdown.borrow() {
            // Only the replica holding the gateway connects; the others stand by.
            let holds = match asked {
                false => {
                    asked = true;
                    engine.want(ROLE).await
                }
                true => engine.holds(ROLE),
            };
            if !holds {
                if holding || ready.is_some() {
                    tracing::info!(
                        "another replica holds the Discord gateway; this one stands by to take over"
                    );
                }
                holding = false;
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Ok(()));
                }
                tokio::select! {
                    _ = tokio::time::sleep(ROLE_CHECK) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
                continue;
            }
            if !holding {
                holding = true;
                // Where the last holder stopped: resumed, so Discord replays what it missed.
                session = engine
                    .left_by_last(ROLE)
                    .await
                    .and_then(|d| serde_json::from_str::<Session>(&d).ok());
                if let Some(s) = &session {
                    on_ready(&discord, &s.ready);
                }
            }
            // Set once READY or RESUMED arrives: only a connection that worked earns an
            // immediate reconnect and a fresh backoff. One that fails before that waits
            // longer each time, so an outage cannot spend Discord's daily IDENTIFY allowance.
            let mut healthy = false;
            let outcome = connect_once(
                &discord,
                &engine,
                intents,
                &mut session,
                &mut ready,
                &mut shutdown,
                &mut healthy,
            )
            .await;
            if healthy {
                backoff = MIN_BACKOFF;
            }
            let wait = match outcome {
                Ok(End::Stop) => break,
                Ok(End::Again) if healthy => None,
                Ok(End::Again) => Some(backoff),
                Err(Failure::Fatal(e)) => {
                    match ready.take() {
                        Some(tx) => {
                            let _ = tx.send(Err(e));
                        }
                        None => {
                            tracing::error!(error = %format!("{e:#}"), "the Discord gateway refused Baton; Discord events stop until Baton is restarted");
                            discord.gateway_stopped(format!("{e:#}"));
                        }
                    }
                    return;
                }
                Err(Failure::Retry(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), wait = ?backoff, "Discord gateway connection failed; reconnecting");
                    Some(backoff)
                }
            };
            if let Some(wait) = wait {
                let wait = wait.mul_f64(0.5 + jitter() / 2.0);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    });
    (task, ready_rx)
}

/// The gateway URL with the version and encoding Baton speaks. Plain `ws://` only for this
/// machine, as with the REST base.
fn gateway_url(base: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(base).with_context(|| format!("gateway URL `{base}`"))?;
    match url.scheme() {
        "wss" => {}
        "ws" if is_loopback(&url) => {}
        other => anyhow::bail!("gateway URL `{base}`: scheme {other} is not allowed here"),
    }
    url.query_pairs_mut()
        .clear()
        .append_pair("v", "10")
        .append_pair("encoding", "json");
    Ok(url.to_string())
}

/// A random fraction in [0, 1) for the heartbeat's and the reconnects' jitter, as Discord
/// asks, from the standard library's randomly keyed hasher rather than a random number crate.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// What a close code from Discord means.
fn on_close(code: u16, reason: &str, session: &mut Option<Session>) -> Result<End, Failure> {
    let fatal = |what: &str| {
        Err(Failure::Fatal(anyhow!(
            "Discord closed the gateway ({code} {reason}): {what}"
        )))
    };
    match code {
        4004 => fatal(
            "DISCORD_TOKEN was refused; copy the bot token from the Developer Portal (your application → Bot → Reset Token)",
        ),
        4014 => fatal(
            "a privileged intent is not enabled. Open the Developer Portal → your application → Bot → Privileged Gateway Intents and switch on MESSAGE CONTENT INTENT (the workflows' message patterns need it)",
        ),
        4013 => fatal("the intents Baton asked for are not valid"),
        4010 | 4011 => {
            fatal("the bot is in too many guilds for one connection; Baton opens one shard")
        }
        4012 => fatal("the gateway does not speak API v10"),
        // Sequence or session no longer valid: a fresh session.
        4007 | 4009 => {
            *session = None;
            Err(Failure::Retry(anyhow!(
                "Discord closed the gateway ({code} {reason}); starting a new session"
            )))
        }
        _ => Ok(End::Again),
    }
}

async fn connect_once(
    discord: &Arc<Discord>,
    engine: &Arc<Engine>,
    intents: u64,
    session: &mut Option<Session>,
    ready: &mut Option<oneshot::Sender<anyhow::Result<()>>>,
    shutdown: &mut watch::Receiver<bool>,
    healthy: &mut bool,
) -> Result<End, Failure> {
    let base = match session {
        Some(s) => s.resume_url.clone(),
        None => {
            let answer = discord.api.get("gateway").await.context("GET /gateway")?;
            answer["url"]
                .as_str()
                .context("GET /gateway answered without a url")?
                .to_owned()
        }
    };
    let url = gateway_url(&base).map_err(Failure::Fatal)?;
    let (socket, _) = tokio::time::timeout(CONNECT_LIMIT, tokio_tungstenite::connect_async(&url))
        .await
        .context("opening the gateway WebSocket timed out")?
        .context("opening the gateway WebSocket")?;
    let (mut sink, mut stream) = socket.split();
    let token = discord.settings.token.expose().to_owned();

    // HELLO comes first, with the heartbeat interval.
    let hello = tokio::time::timeout(CONNECT_LIMIT, stream.next())
        .await
        .context("no HELLO from the gateway")?
        .context("the gateway closed before HELLO")??;
    let interval = match hello {
        Message::Text(t) => serde_json::from_str::<Frame>(t.as_str())
            .ok()
            .filter(|f| f.op == 10)
            .and_then(|f| f.d["heartbeat_interval"].as_u64()),
        Message::Close(frame) => {
            let (code, reason) = close_parts(frame.as_ref());
            return on_close(code, &reason, session);
        }
        _ => None,
    }
    .context("the gateway's first frame was not HELLO")?;
    let interval = Duration::from_millis(interval.max(100));

    let opening = match session {
        Some(s) => {
            json!({"op": 6, "d": {"token": token, "session_id": s.id, "seq": s.seq}})
        }
        None => json!({"op": 2, "d": {
            "token": token,
            "intents": intents,
            "properties": {"os": std::env::consts::OS, "browser": "baton", "device": "baton"},
        }}),
    };
    sink.send(Message::Text(opening.to_string().into()))
        .await
        .context("sending IDENTIFY")?;

    let start = tokio::time::Instant::now() + interval.mul_f64(jitter());
    let mut beat = tokio::time::interval_at(start, interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut role = tokio::time::interval(ROLE_CHECK);
    let mut lost_once = false;
    let mut acked = true;
    loop {
        let frame = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    // A normal close ends the session: nothing is left to resume.
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "shutting down".into() }))).await;
                    engine.leave_for_next(ROLE, "").await;
                    return Ok(End::Stop);
                }
                continue;
            }
            _ = role.tick() => {
                // Twice in a row: a clock moved by hand is renewed for in between.
                let lost = !engine.holds(ROLE) && lost_once;
                lost_once = !engine.holds(ROLE);
                if lost {
                    // Another replica takes over (this one could not renew its lease): the
                    // session stays resumable for it.
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::from(RESUMING), reason: "handing over".into() }))).await;
                    return Ok(End::Again);
                }
                continue;
            }
            _ = beat.tick() => {
                leave_session(engine, session).await;
                if !acked {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::from(RESUMING), reason: "no heartbeat ack".into() }))).await;
                    return Err(Failure::Retry(anyhow!("no HEARTBEAT_ACK within {interval:?}: the connection is dead")));
                }
                let seq = session.as_ref().and_then(|s| s.seq);
                sink.send(Message::Text(json!({"op": 1, "d": seq}).to_string().into())).await.context("sending a heartbeat")?;
                acked = false;
                continue;
            }
            frame = stream.next() => frame,
        };
        let text = match frame {
            None => return Ok(End::Again),
            Some(Err(e)) => {
                return Err(Failure::Retry(
                    anyhow!(e).context("reading from the gateway"),
                ));
            }
            Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Ping(p))) => {
                sink.send(Message::Pong(p))
                    .await
                    .context("answering a ping")?;
                continue;
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = close_parts(frame.as_ref());
                return on_close(code, &reason, session);
            }
            Some(Ok(_)) => continue,
        };
        let frame: Frame = match crate::adapters::payload::parse(&text) {
            Ok(f) => f,
            Err(e) => {
                engine
                    .unreadable("discord", "gateway frame", &e.to_string(), &text)
                    .await;
                continue;
            }
        };
        match frame.op {
            0 => {
                if let (Some(s), Some(session)) = (frame.s, session.as_mut()) {
                    session.seq = Some(s);
                }
                let kind = frame.t.unwrap_or_default();
                if kind == "READY" {
                    *session = Some(Session {
                        id: frame.d["session_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        // Resume where Discord says; without it, where this connection went.
                        resume_url: frame.d["resume_gateway_url"]
                            .as_str()
                            .unwrap_or(&base)
                            .to_owned(),
                        seq: frame.s,
                        ready: json!({
                            "application": frame.d["application"],
                            "user": frame.d["user"],
                            "guilds": frame.d["guilds"],
                        }),
                    });
                    on_ready(discord, &frame.d);
                    leave_session(engine, session).await;
                    *healthy = true;
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                } else {
                    if kind == "RESUMED" {
                        leave_session(engine, session).await;
                        *healthy = true;
                        // A session another process left, resumed: as good as READY.
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    inbound::dispatch(discord, engine, &kind, frame.d);
                }
            }
            // Discord asks for a heartbeat now.
            1 => {
                let seq = session.as_ref().and_then(|s| s.seq);
                sink.send(Message::Text(json!({"op": 1, "d": seq}).to_string().into()))
                    .await
                    .context("sending a heartbeat")?;
            }
            7 => {
                tracing::info!("Discord asked to reconnect");
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(RESUMING),
                        reason: "reconnect".into(),
                    })))
                    .await;
                return Ok(End::Again);
            }
            9 => {
                let resumable = frame.d.as_bool() == Some(true);
                if !resumable {
                    *session = None;
                }
                let code = if resumable { RESUMING } else { 1000 };
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: "invalid session".into(),
                    })))
                    .await;
                // Discord asks for a pause of one to five seconds before identifying again.
                let pause = Duration::from_millis(1000 + (jitter() * 4000.0) as u64);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|s| *s) => return Ok(End::Stop),
                }
                return Ok(End::Again);
            }
            11 => acked = true,
            _ => {}
        }
    }
}

/// Leaves the session with the gateway's lease, for whichever replica holds it next (this
/// one after a crash included): the sequence number is as of the last heartbeat, and Discord
/// replays from there; what arrives twice is recognised by its ID.
async fn leave_session(engine: &Engine, session: &Option<Session>) {
    if let Some(s) = session
        && let Ok(text) = serde_json::to_string(s)
    {
        engine.leave_for_next(ROLE, &text).await;
    }
}

fn close_parts(frame: Option<&CloseFrame>) -> (u16, String) {
    frame
        .map(|f| (u16::from(f.code), f.reason.to_string()))
        .unwrap_or((1005, String::new()))
}

/// Logs who Baton is and where, and remembers the application and its guilds.
fn on_ready(discord: &Discord, d: &Value) {
    if let Some(app) = d["application"]["id"].as_str() {
        discord.set_application_id(app);
    }
    let guilds: Vec<&str> = d["guilds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["id"].as_str())
        .collect();
    for g in &guilds {
        discord.joined_guild(g);
    }
    tracing::info!(
        bot_user = d["user"]["username"].as_str().unwrap_or_default(),
        guilds = ?guilds,
        "connected to the Discord gateway"
    );
    if guilds.is_empty()
        && let Some(app) = discord.application_id()
    {
        tracing::warn!(
            "the bot is in no Discord server yet; add it with {}",
            super::commands::invite_url(&app)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_url_carries_version_and_encoding_and_plain_ws_only_for_loopback() {
        assert_eq!(
            gateway_url("wss://gateway.discord.gg").unwrap(),
            "wss://gateway.discord.gg/?v=10&encoding=json"
        );
        assert_eq!(
            gateway_url("ws://127.0.0.1:9/gw?v=9").unwrap(),
            "ws://127.0.0.1:9/gw?v=10&encoding=json"
        );
        assert!(gateway_url("ws://gateway.example.com").is_err());
        assert!(gateway_url("https://discord.com").is_err());
    }

    #[test]
    fn close_codes_that_no_retry_fixes_say_what_to_change() {
        let mut session = None;
        let Err(Failure::Fatal(e)) = on_close(4014, "Disallowed intent(s).", &mut session) else {
            panic!("4014 is fatal")
        };
        assert!(e.to_string().contains("MESSAGE CONTENT INTENT"), "{e}");
        let Err(Failure::Fatal(e)) = on_close(4004, "Authentication failed.", &mut session) else {
            panic!("4004 is fatal")
        };
        assert!(e.to_string().contains("DISCORD_TOKEN"), "{e}");
        let mut session = Some(Session {
            id: "s".into(),
            resume_url: "ws://127.0.0.1:1".into(),
            seq: Some(3),
            ready: Value::Null,
        });
        assert!(matches!(
            on_close(4009, "", &mut session),
            Err(Failure::Retry(_))
        ));
        assert!(session.is_none(), "a timed-out session is not resumed");
        let mut session = Some(Session {
            id: "s".into(),
            resume_url: "ws://127.0.0.1:1".into(),
            seq: Some(3),
            ready: Value::Null,
        });
        assert!(matches!(on_close(4000, "", &mut session), Ok(End::Again)));
        assert!(session.is_some(), "an unknown error resumes");
    }
}
