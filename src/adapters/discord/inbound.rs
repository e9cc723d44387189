//! Gateway dispatches to core events: channel messages, slash commands, button clicks and
//! submitted reason modals.
//!
//! Every interaction is answered at once, before any work: a slash command with a deferred
//! private reply ("Baton is thinking…"), a click with a deferred update, a Reject that wants a
//! reason with the modal itself. The work continues in the background; what the person should
//! read privately goes back through the interaction's token while it is valid (15 minutes),
//! and into the channel after that. Run progress never depends on the token: it goes through
//! the outbox to the channel and the run's thread.
//!
//! Payloads are read with Baton's own lenient structs, not serenity's model types: those
//! require every field Discord has ever added (an interaction without `attachment_size_limit`
//! fails to parse), and a click must not be lost to a field Baton does not read.

use super::Discord;
use super::api::DiscordError;
use super::render::ASK_PREFIX;
use crate::core::engine::render::REJECT_QUESTION;
use crate::core::event::{Actor, ConversationRef, EventKind, InboundEvent};
use crate::core::ids::ActionId;
use crate::engine::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use serenity::all::InputTextStyle;
use serenity::builder::{
    CreateActionRow, CreateInputText, CreateInteractionResponse, CreateInteractionResponseMessage,
    CreateModal,
};
use std::sync::Arc;

/// How long an interaction token may be used for follow-ups.
const TOKEN_LIFETIME_MINUTES: i64 = 15;
/// Custom id prefix of the modal asking for a reason.
const REASON_MODAL: &str = "reason:";
/// Custom id of the modal's text input.
const REASON_INPUT: &str = "reason";
/// What a person reads when an event could not be handled.
const FAILED: &str = "Baton could not handle that; the error is in its log.";

#[derive(Deserialize, Default)]
struct User {
    id: String,
    #[serde(default)]
    bot: bool,
}

#[derive(Deserialize)]
struct Member {
    user: Option<User>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct MessageCreate {
    id: String,
    channel_id: String,
    guild_id: Option<String>,
    author: User,
    #[serde(default)]
    content: String,
    #[serde(default)]
    mentions: Vec<User>,
    webhook_id: Option<String>,
    #[serde(rename = "type", default)]
    kind: u64,
    /// The author's roles in the guild (guild messages only).
    member: Option<Member>,
}

#[derive(Deserialize)]
struct Interaction {
    id: String,
    application_id: Option<String>,
    #[serde(rename = "type")]
    kind: u8,
    token: String,
    #[serde(default)]
    data: Value,
    guild_id: Option<String>,
    channel_id: Option<String>,
    member: Option<Member>,
    user: Option<User>,
    /// Who installed the app for this interaction: `"0"` is a guild install.
    authorizing_integration_owners: Option<Map<String, Value>>,
}

/// When a snowflake was made, from its top bits.
fn snowflake_time(id: &str) -> Option<DateTime<Utc>> {
    const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;
    let ms = (id.parse::<u64>().ok()? >> 22) as i64 + DISCORD_EPOCH_MS;
    DateTime::from_timestamp_millis(ms)
}

/// Message types that are people writing: default messages and replies.
const PERSON_MESSAGE_TYPES: [u64; 2] = [0, 19];

/// Handles one gateway dispatch.
pub fn dispatch(discord: &Arc<Discord>, engine: &Arc<Engine>, kind: &str, d: Value) {
    match kind {
        "MESSAGE_CREATE" => match serde_json::from_value::<MessageCreate>(d.clone()) {
            Ok(m) => on_message(discord, engine, m),
            Err(e) => record_unreadable(engine, kind, &e.to_string(), &d),
        },
        "INTERACTION_CREATE" => match serde_json::from_value::<Interaction>(d.clone()) {
            Ok(i) => on_interaction(discord, engine, i),
            Err(e) => {
                // The person still hears something, when the interaction can be answered.
                if let (Some(id), Some(token)) = (d["id"].as_str(), d["token"].as_str()) {
                    let path = format!("interactions/{id}/{token}/callback");
                    let body = json!({"type": 4, "data": {"content": crate::core::engine::render::button_not_valid(), "flags": 64}});
                    let discord = discord.clone();
                    tokio::spawn(async move {
                        if let Err(e) = discord.api.post(&path, &body).await {
                            tracing::warn!(error = %e, "could not answer a Discord interaction");
                        }
                    });
                }
                record_unreadable(engine, kind, &e.to_string(), &d)
            }
        },
        "GUILD_CREATE" => {
            if let Some(id) = d["id"].as_str() {
                discord.joined_guild(id);
            }
        }
        // Without `unavailable`, the bot was removed; with it, Discord has an outage.
        "GUILD_DELETE" if d.get("unavailable").is_none() => {
            if let Some(id) = d["id"].as_str() {
                discord.left_guild(id);
            }
        }
        "RESUMED" => tracing::info!("Discord gateway session resumed"),
        _ => {}
    }
}

/// A dispatch whose payload Baton cannot read: the ledger keeps it.
fn record_unreadable(engine: &Arc<Engine>, kind: &str, error: &str, d: &Value) {
    let (engine, kind, error, text) = (
        engine.clone(),
        kind.to_owned(),
        error.to_owned(),
        d.to_string(),
    );
    tokio::spawn(async move { engine.unreadable("discord", &kind, &error, &text).await });
}

fn actor(user: &User, roles: Vec<String>) -> Actor {
    Actor {
        platform: "discord".into(),
        id: user.id.clone(),
        // Written as `@ID`, which Discord shows as the person's name.
        display: user.id.clone(),
        is_bot: user.bot,
        groups: roles,
    }
}

/// A person's message as a core event, or `None` for what starts nothing (the bot's own
/// messages, joins, pins and other system messages). `me` is the bot's user id.
fn message_event(me: &str, m: MessageCreate) -> Option<InboundEvent> {
    // The bot never reacts to itself, nor to what is not a person writing.
    if m.author.id == me || !PERSON_MESSAGE_TYPES.contains(&m.kind) {
        return None;
    }
    let mentions_bot = !me.is_empty()
        && (m.mentions.iter().any(|u| u.id == me)
            || m.content.contains(&format!("<@{me}>"))
            || m.content.contains(&format!("<@!{me}>")));
    // Roles decide who may start a workflow, so a message's author carries theirs.
    let roles = m.member.map(|mm| mm.roles).unwrap_or_default();
    let mut author = actor(&m.author, roles);
    // Webhooks post as bots would.
    author.is_bot |= m.webhook_id.is_some();
    Some(InboundEvent {
        // Message IDs are unique: a message replayed on resume starts nothing twice.
        id: format!("discord:msg:{}", m.id),
        actor: author,
        conversation: ConversationRef {
            platform: "discord".into(),
            channel: m.channel_id,
            thread: None,
        },
        kind: EventKind::Message {
            text: m.content,
            mentions_bot,
        },
    })
}

/// What a gateway dispatch means for Baton, read without side effects (so it can be fuzzed):
/// a message's event, or the kind of event an interaction is (a command with its arguments,
/// a click, a submitted modal; `None` for a button that asks for text first). `Err` is a
/// payload Baton cannot read.
pub fn read_dispatch(me: &str, kind: &str, d: &Value) -> Result<Option<EventKind>, String> {
    match kind {
        "MESSAGE_CREATE" => {
            let m =
                serde_json::from_value::<MessageCreate>(d.clone()).map_err(|e| e.to_string())?;
            Ok(message_event(me, m).map(|e| e.kind))
        }
        "INTERACTION_CREATE" => {
            let i = serde_json::from_value::<Interaction>(d.clone()).map_err(|e| e.to_string())?;
            Ok(interaction_kind(&i))
        }
        _ => Ok(None),
    }
}

/// The event an interaction is: a slash command with its arguments, a click (on a button
/// Baton can read or not), a submitted reason. `None` for a button that asks for text first
/// (a modal opens instead) and for interaction types Baton does not use.
fn interaction_kind(i: &Interaction) -> Option<EventKind> {
    match i.kind {
        2 => {
            let name = i.data["name"].as_str().unwrap_or_default().to_owned();
            let (text, options) = command_arguments(&name, &i.data["options"]);
            Some(EventKind::Slash {
                command: name,
                text,
                options,
            })
        }
        3 => {
            let custom_id = i.data["custom_id"].as_str().unwrap_or_default();
            if custom_id
                .strip_prefix(ASK_PREFIX)
                .is_some_and(|a| a.parse::<ActionId>().is_ok())
            {
                return None;
            }
            // A button Baton cannot read (not its own, or of an older format) is answered too.
            Some(match custom_id.parse::<ActionId>() {
                Ok(action) => EventKind::Action {
                    action,
                    reason: None,
                },
                Err(_) => EventKind::UnreadableAction {
                    action: custom_id.to_owned(),
                },
            })
        }
        5 => {
            let custom_id = i.data["custom_id"].as_str().unwrap_or_default();
            let parsed = custom_id
                .strip_prefix(REASON_MODAL)
                .and_then(|a| a.parse::<ActionId>().ok());
            Some(match parsed {
                Some(action) => {
                    let reason = find_input(&i.data["components"], REASON_INPUT)
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned);
                    EventKind::Action { action, reason }
                }
                None => EventKind::UnreadableAction {
                    action: custom_id.to_owned(),
                },
            })
        }
        _ => None,
    }
}

fn on_message(discord: &Arc<Discord>, engine: &Arc<Engine>, m: MessageCreate) {
    if m.guild_id.is_some() && !discord.serves_guild(m.guild_id.as_deref()) {
        return;
    }
    // Most messages start nothing: without a message trigger, they cost no lookups at all.
    let listening = engine.workflows().iter().any(|wf| {
        wf.triggers
            .iter()
            .any(|t| matches!(t, crate::core::workflow::Trigger::Message(_)))
    });
    if !listening {
        return;
    }
    let me = discord
        .identity()
        .map(|i| i.user_id.clone())
        .unwrap_or_default();
    let guild = m.guild_id.clone();
    let Some(event) = message_event(&me, m) else {
        return;
    };
    // Discord names the guild of every guild message. A payload without one (Baton asks for no
    // direct messages) is placed by its channel before it counts.
    let guard = discord.inflight.enter();
    let (discord, engine) = (discord.clone(), engine.clone());
    tokio::spawn(async move {
        let _guard = guard;
        let guild = match guild {
            Some(g) => Some(g),
            None => discord.guild_of(&event.conversation.channel).await,
        };
        if discord.serves_guild(guild.as_deref()) {
            handle(&engine, &discord, event, None, guild.as_deref()).await;
        }
    });
}

/// Where private answers to an interaction go.
#[derive(Clone)]
struct Reply {
    application_id: String,
    token: String,
    channel: String,
    user: String,
    received: DateTime<Utc>,
    guild: Option<String>,
    /// Slash commands edit their deferred reply; clicks send a private follow-up.
    edit_original: bool,
}

fn on_interaction(discord: &Arc<Discord>, engine: &Arc<Engine>, i: Interaction) {
    let Some(user) = i
        .member
        .as_ref()
        .and_then(|m| m.user.as_ref())
        .or(i.user.as_ref())
    else {
        return tracing::warn!("an interaction without a user");
    };
    let roles = i
        .member
        .as_ref()
        .map(|m| m.roles.clone())
        .unwrap_or_default();
    let actor = actor(user, roles);
    let application_id = i
        .application_id
        .clone()
        .or_else(|| discord.application_id())
        .unwrap_or_default();
    let channel = i.channel_id.clone().unwrap_or_default();
    let now = discord.clock.now();
    // The token's 15 minutes run from when Discord made the interaction: one replayed after a
    // reconnect may be older than its arrival says. (Far from now means a clock that is not
    // Discord's, as in tests: then the arrival counts.)
    let received = snowflake_time(&i.id)
        .filter(|t| *t <= now && now - *t < chrono::Duration::days(1))
        .unwrap_or(now);
    let reply = Reply {
        application_id,
        token: i.token.clone(),
        channel: channel.clone(),
        user: user.id.clone(),
        received,
        guild: i.guild_id.clone(),
        edit_original: i.kind == 2,
    };
    // A user install (not a guild install) could reach Baton from servers it was never set up
    // for; only interactions of the guild install count.
    let guild_install = i
        .authorizing_integration_owners
        .as_ref()
        .is_none_or(|owners| owners.contains_key("0"));
    let in_guild = guild_install && discord.serves_guild(i.guild_id.as_deref());
    let event = |kind: EventKind| InboundEvent {
        // Interaction IDs are unique: one replayed on resume is applied once.
        id: format!("discord:interaction:{}", i.id),
        actor: actor.clone(),
        conversation: ConversationRef {
            platform: "discord".into(),
            channel: channel.clone(),
            thread: None,
        },
        kind,
    };
    match i.kind {
        // A slash command.
        2 => {
            let ack = CreateInteractionResponse::Defer(
                CreateInteractionResponseMessage::new().ephemeral(true),
            );
            let ev = interaction_kind(&i).map(event).filter(|_| in_guild);
            respond_then(discord, engine, &i, ack, ev, reply);
        }
        // A button.
        3 => {
            let custom_id = i.data["custom_id"].as_str().unwrap_or_default();
            if let Some(action) = custom_id.strip_prefix(ASK_PREFIX)
                && in_guild
                && let Ok(parsed) = action.parse::<ActionId>()
            {
                if let ActionId::Edit { run, step, .. } = parsed {
                    // Edit starts from the payload as it stands, read now.
                    let (discord, engine) = (discord.clone(), engine.clone());
                    let (action, path) = (
                        action.to_owned(),
                        format!("interactions/{}/{}/callback", i.id, i.token),
                    );
                    tokio::spawn(async move {
                        let current = engine
                            .approval_content(run, &step)
                            .await
                            .unwrap_or_default();
                        let body = serde_json::to_value(edit_modal(&action, &current))
                            .expect("a modal serializes");
                        if let Err(e) = discord.api.post(&path, &body).await {
                            tracing::warn!(error = %e, "could not open the edit modal");
                        }
                    });
                    return;
                }
                let modal = reason_modal(action);
                respond_then(discord, engine, &i, modal, None, reply);
                return;
            }
            let ev = interaction_kind(&i).map(event).filter(|_| in_guild);
            respond_then(
                discord,
                engine,
                &i,
                CreateInteractionResponse::Acknowledge,
                ev,
                reply,
            );
        }
        // A submitted modal.
        5 => {
            let ev = interaction_kind(&i).map(event).filter(|_| in_guild);
            respond_then(
                discord,
                engine,
                &i,
                CreateInteractionResponse::Acknowledge,
                ev,
                reply,
            );
        }
        _ => {}
    }
}

/// The text and typed options of a command. `/baton cancel 12` arrives as a subcommand with an
/// option; it becomes the text the core reads. A workflow's options are handed over by name.
fn command_arguments(name: &str, options: &Value) -> (String, Option<Map<String, Value>>) {
    let options = options.as_array().cloned().unwrap_or_default();
    let value_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if name == "baton" {
        let mut words = Vec::new();
        for sub in &options {
            words.push(sub["name"].as_str().unwrap_or_default().to_owned());
            for o in sub["options"].as_array().into_iter().flatten() {
                words.push(value_text(&o["value"]));
            }
        }
        return (words.join(" "), None);
    }
    let mut named = Map::new();
    let mut words = Vec::new();
    for o in &options {
        if let Some(n) = o["name"].as_str() {
            words.push(value_text(&o["value"]));
            named.insert(n.to_owned(), o["value"].clone());
        }
    }
    (words.join(" "), Some(named))
}

/// The modal asking why, for the action the button stands for.
fn reason_modal(action: &str) -> CreateInteractionResponse {
    let rejecting = action.starts_with("reject:");
    let question = if rejecting { REJECT_QUESTION } else { "Why?" };
    let input = CreateInputText::new(InputTextStyle::Paragraph, question, REASON_INPUT)
        .max_length(1000)
        .required(true);
    CreateInteractionResponse::Modal(
        CreateModal::new(
            format!("{REASON_MODAL}{action}"),
            if rejecting { "Reject" } else { "Baton" },
        )
        .components(vec![CreateActionRow::InputText(input)]),
    )
}

/// Discord's longest text input value.
const DISCORD_INPUT_LIMIT: usize = 4000;

/// The modal for editing an approval's payload, starting from the current one. The answer
/// comes back through the same submission path as a reason.
fn edit_modal(action: &str, current: &str) -> CreateInteractionResponse {
    let current: String = current.chars().take(DISCORD_INPUT_LIMIT).collect();
    // Discord allows 45 characters for an input's label.
    let input = CreateInputText::new(InputTextStyle::Paragraph, "Payload", REASON_INPUT)
        .max_length(DISCORD_INPUT_LIMIT as u16)
        .value(current)
        .required(true);
    CreateInteractionResponse::Modal(
        CreateModal::new(format!("{REASON_MODAL}{action}"), "Edit the payload")
            .components(vec![CreateActionRow::InputText(input)]),
    )
}

/// The value of the text input `id` in a submitted modal, in an action row or in a label.
fn find_input<'a>(components: &'a Value, id: &str) -> Option<&'a str> {
    for c in components.as_array().into_iter().flatten() {
        // A label holds its input as `component`.
        for c in [c, &c["component"]] {
            if c["custom_id"] == id
                && let Some(v) = c["value"].as_str()
            {
                return Some(v);
            }
        }
        if let Some(v) = find_input(&c["components"], id) {
            return Some(v);
        }
    }
    None
}

/// Answers the interaction at once, then handles the event in the background.
fn respond_then(
    discord: &Arc<Discord>,
    engine: &Arc<Engine>,
    i: &Interaction,
    response: CreateInteractionResponse,
    event: Option<InboundEvent>,
    reply: Reply,
) {
    let guard = discord.inflight.enter();
    let discord = discord.clone();
    let engine = engine.clone();
    let path = format!("interactions/{}/{}/callback", i.id, i.token);
    let mut body = serde_json::to_value(response).expect("an interaction response serializes");
    // Serenity writes `"data": null` for a bare acknowledgement; Discord's documented form
    // leaves it out.
    if let Some(o) = body.as_object_mut()
        && o.get("data").is_some_and(Value::is_null)
    {
        o.remove("data");
    }
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(e) = discord.api.post(&path, &body).await {
            // Replayed after a reconnect, the interaction is too old to answer; the click
            // still counts.
            tracing::warn!(error = %e, "could not answer a Discord interaction");
        }
        match event {
            Some(event) => {
                let guild = reply.guild.clone();
                handle(&engine, &discord, event, Some(reply), guild.as_deref()).await
            }
            // A deferred command with nothing to handle came from outside Baton's guilds.
            None if body["type"] == 5 => {
                send_reply(
                    &discord,
                    &reply,
                    "Baton works in the server channels it was set up for.",
                )
                .await;
            }
            None => {}
        }
    });
}

/// Hands an event to the engine and tells the person what they should know.
async fn handle(
    engine: &Arc<Engine>,
    discord: &Arc<Discord>,
    event: InboundEvent,
    reply: Option<Reply>,
    guild: Option<&str>,
) {
    let mut event = event;
    // Approvers and who may start a workflow may be roles, by ID or by name: the event
    // carries the role IDs, and the names are looked up now.
    // Names count only in the guilds `DISCORD_GUILD_IDS` names, where the operator trusts
    // who may name roles; a name that looks like an ID never counts.
    if let Some(guild) = guild
        && discord.settings.guild_ids.iter().any(|g| g == guild)
        && !event.actor.groups.is_empty()
    {
        let names = discord.role_names(guild).await;
        let named: Vec<String> = event
            .actor
            .groups
            .iter()
            .filter_map(|id| names.get(id).cloned())
            .filter(|name| !super::is_snowflake(name))
            .collect();
        event.actor.groups.extend(named);
    }
    // Approvers may be a channel's members: who can see it is worked out at the click.
    if matches!(event.kind, EventKind::Action { .. })
        && let Some(guild) = guild
    {
        let channels: Vec<String> = engine.approver_channels().into_iter().collect();
        if !channels.is_empty() {
            let roles: Vec<String> = event
                .actor
                .groups
                .iter()
                .filter(|g| super::is_snowflake(g))
                .cloned()
                .collect();
            for channel in discord
                .member_of(guild, &event.actor.id, &roles, &channels)
                .await
            {
                event.actor.groups.push(format!("channel:{channel}"));
            }
        }
    }
    // Workflows name channels (`incidents`); Discord sends IDs. Runs record the name where it
    // names one channel, and posting turns it back into the ID.
    let (channel, thread) = discord.conversation(&event.conversation.channel).await;
    event.conversation.channel = channel;
    event.conversation.thread = thread;
    let id = event.id.clone();
    let answer = match engine.handle_acknowledged(event).await {
        Ok(response) => {
            let mut lines = response.notices;
            if lines.is_empty() && reply.as_ref().is_some_and(|r| r.edit_original) {
                lines = response
                    .started
                    .iter()
                    .map(|run| {
                        format!(
                            "Started run #{run}. Its progress is in the thread under its message."
                        )
                    })
                    .collect();
                if lines.is_empty() {
                    lines.push("Done.".into());
                }
            }
            lines.join("\n")
        }
        Err(e) => {
            tracing::error!(error = %e, event = %id, "could not handle a Discord event");
            FAILED.to_owned()
        }
    };
    if let Some(reply) = reply
        && !answer.is_empty()
    {
        send_reply(discord, &reply, &answer).await;
    }
}

/// Sends a private answer through the interaction token, or into the channel once the token
/// has expired (or Discord no longer takes it).
async fn send_reply(discord: &Discord, reply: &Reply, text: &str) {
    let fit = |s: String| -> String { s.chars().take(super::render::CONTENT_LIMIT).collect() };
    let age = discord.clock.now() - reply.received;
    if age < chrono::Duration::minutes(TOKEN_LIFETIME_MINUTES) {
        let (method, path, body) = if reply.edit_original {
            (
                reqwest::Method::PATCH,
                format!(
                    "webhooks/{}/{}/messages/@original",
                    reply.application_id, reply.token
                ),
                json!({"content": fit(text.to_owned()), "allowed_mentions": {"parse": []}}),
            )
        } else {
            (
                reqwest::Method::POST,
                format!("webhooks/{}/{}", reply.application_id, reply.token),
                json!({"content": fit(text.to_owned()), "flags": 64, "allowed_mentions": {"parse": []}}),
            )
        };
        match with_patience(|| discord.api.call(method.clone(), &path, Some(&body))).await {
            Ok(_) => return,
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, "the interaction token was refused; answering in the channel");
            }
            Err(e) => return tracing::warn!(error = %e, "could not answer on Discord"),
        }
    }
    let body = json!({
        "content": fit(format!("<@{}> {text}", reply.user)),
        "allowed_mentions": {"parse": [], "users": [reply.user]},
    });
    let path = format!("channels/{}/messages", reply.channel);
    if let Err(e) = with_patience(|| discord.api.post(&path, &body)).await {
        tracing::warn!(error = %e, "could not answer on Discord");
    }
}

/// A private answer is worth waiting for: a rate limit is waited out (it is not a failure)
/// for up to two minutes in all, and a network hiccup is tried again a few times.
async fn with_patience<F, Fut>(mut call: F) -> Result<Value, DiscordError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value, DiscordError>>,
{
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
    let started = std::time::Instant::now();
    let mut hiccups = 0u32;
    loop {
        let wait = match call().await {
            Err(DiscordError::RateLimited(w) | DiscordError::BucketEmpty(w)) => w,
            Err(DiscordError::Transport(_)) if hiccups < 3 => {
                hiccups += 1;
                std::time::Duration::from_millis(300 * u64::from(hiccups))
            }
            other => return other,
        };
        // Waits are at least a little, so a bucket on a clock that does not move (or one that
        // says zero) is not asked in a tight loop.
        let wait = wait.clamp(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(10),
        );
        if started.elapsed() + wait > PATIENCE {
            return call().await;
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baton_subcommands_become_text_and_workflow_options_stay_typed() {
        let (text, named) = command_arguments(
            "baton",
            &json!([{"name": "cancel", "type": 1, "options": [{"name": "run", "type": 4, "value": 12}]}]),
        );
        assert_eq!(text, "cancel 12");
        assert!(named.is_none());
        let (text, named) = command_arguments(
            "incident",
            &json!([{"name": "summary", "type": 3, "value": "db down"}, {"name": "sev", "type": 4, "value": 2}]),
        );
        assert_eq!(text, "db down 2");
        let named = named.unwrap();
        assert_eq!(named["summary"], "db down");
        assert_eq!(named["sev"], 2);
        let (_, named) = command_arguments("demo", &Value::Null);
        assert!(named.unwrap().is_empty());
    }

    #[test]
    fn the_reason_is_found_in_an_action_row_or_a_label() {
        let rows = json!([{"type": 1, "components": [{"type": 4, "custom_id": "reason", "value": "too risky"}]}]);
        assert_eq!(find_input(&rows, "reason"), Some("too risky"));
        let labels =
            json!([{"type": 18, "component": {"type": 4, "custom_id": "reason", "value": "no"}}]);
        assert_eq!(find_input(&labels, "reason"), Some("no"));
        assert_eq!(find_input(&json!([]), "reason"), None);
    }

    #[test]
    fn responses_have_discords_callback_types() {
        let defer = serde_json::to_value(CreateInteractionResponse::Defer(
            CreateInteractionResponseMessage::new().ephemeral(true),
        ))
        .unwrap();
        assert_eq!(defer["type"], 5);
        assert_eq!(defer["data"]["flags"], 64);
        let ack = serde_json::to_value(CreateInteractionResponse::Acknowledge).unwrap();
        assert_eq!(ack["type"], 6);
        let modal = serde_json::to_value(reason_modal("reject:7:gate")).unwrap();
        assert_eq!(modal["type"], 9);
        assert_eq!(modal["data"]["custom_id"], "reason:reject:7:gate");
        let input = &modal["data"]["components"][0]["components"][0];
        assert_eq!(input["type"], 4);
        assert_eq!(input["custom_id"], "reason");
        assert_eq!(input["label"], REJECT_QUESTION);
    }
}
