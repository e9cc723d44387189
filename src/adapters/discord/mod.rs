//! Discord: REST calls (outbound, through the outbox), the gateway connection (inbound, in
//! `gateway.rs` and `inbound.rs`) and slash-command registration (`commands.rs`). Same shape
//! as the console and Slack adapters; the core does not know Discord.
//!
//! Message references are `CHANNEL_ID:MESSAGE_ID`. A run's progress thread is a Discord thread
//! started from its root message, so the thread's channel ID is the root message's ID.

pub mod api;
pub mod commands;
pub mod gateway;
pub mod inbound;
pub mod render;

use super::{DeliveryError, Inflight, Platform};
use crate::config::DiscordSettings;
use crate::core::clock::Clock;
use crate::store::{OutboxEntry, OutboxOp};
use api::{DiscordApi, DiscordError};
use async_trait::async_trait;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Who Baton is on Discord.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: String,
    pub username: String,
}

/// Discord's error code when a thread already exists for a message.
const THREAD_EXISTS: i64 = 160004;

/// Channel types Baton posts in and resolves by name: text and announcement channels.
const POSTABLE_TYPES: [u64; 2] = [0, 5];
/// Thread channel types: announcement, public and private threads.
const THREAD_TYPES: [u64; 3] = [10, 11, 12];

/// What Baton knows of a channel.
#[derive(Debug, Clone)]
struct ChannelInfo {
    name: String,
    /// For a thread, the channel it belongs to.
    parent: Option<String>,
    thread: bool,
    guild: Option<String>,
}

/// Channel names and IDs, and when the guilds' channel lists were read.
#[derive(Default)]
struct ChannelCache {
    /// A name seen in two guilds maps to `None`: only its ID can name it then.
    by_name: HashMap<String, Option<String>>,
    info: HashMap<String, ChannelInfo>,
    refreshed: Option<chrono::DateTime<chrono::Utc>>,
}

/// How long a channel listing answers misses before it is read again.
const CHANNELS_TTL_SECONDS: i64 = 60;

/// How long a guild's role names are trusted before they are read again.
const ROLES_TTL_SECONDS: i64 = 60;

/// A guild's roles by ID, with when they were read.
type RoleNames = (chrono::DateTime<chrono::Utc>, HashMap<String, String>);

/// Whether a reference is a Discord ID (a snowflake).
pub fn is_snowflake(s: &str) -> bool {
    (15..=21).contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
}

/// The Discord platform.
pub struct Discord {
    pub(crate) api: DiscordApi,
    pub(crate) settings: DiscordSettings,
    identity: OnceLock<Identity>,
    /// The application's ID, from the gateway's READY.
    application_id: OnceLock<String>,
    /// Guilds the bot is in, from READY and GUILD_CREATE.
    guilds: Mutex<Vec<String>>,
    channels: Mutex<ChannelCache>,
    /// Root messages known to have their thread already, and the thread's ID.
    threads: Mutex<HashMap<String, String>>,
    /// Role names per guild, so workflows may name roles as well as give their IDs.
    roles: tokio::sync::Mutex<HashMap<String, RoleNames>>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Events acknowledged and still being handled.
    pub inflight: Arc<Inflight>,
    /// Why the gateway stopped for good after start-up, for `/readyz`.
    gateway_failure: Mutex<Option<String>>,
}

impl Discord {
    pub fn new(settings: DiscordSettings, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<Self>> {
        let api = DiscordApi::new(
            settings.api_url.clone(),
            settings.token.clone(),
            clock.clone(),
        )?;
        Ok(Arc::new(Self {
            api,
            guilds: Mutex::new(settings.guild_ids.clone()),
            settings,
            identity: OnceLock::new(),
            application_id: OnceLock::new(),
            channels: Mutex::new(ChannelCache::default()),
            threads: Mutex::new(HashMap::new()),
            roles: tokio::sync::Mutex::new(HashMap::new()),
            inflight: Arc::new(Inflight::default()),
            gateway_failure: Mutex::new(None),
            clock,
        }))
    }

    /// The bot's identity once `healthcheck` ran.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    /// The application's ID once the gateway said READY (the bot's user ID before that, which
    /// is the same for every application made since 2016).
    pub fn application_id(&self) -> Option<String> {
        self.application_id
            .get()
            .cloned()
            .or_else(|| self.identity().map(|i| i.user_id.clone()))
    }

    pub(crate) fn set_application_id(&self, id: &str) {
        let _ = self.application_id.set(id.to_owned());
    }

    pub(crate) fn gateway_stopped(&self, why: String) {
        *self.gateway_failure.lock().expect("gateway state lock") = Some(why);
    }

    /// Why the gateway stopped for good, if it did.
    pub fn gateway_failure(&self) -> Option<String> {
        self.gateway_failure
            .lock()
            .expect("gateway state lock")
            .clone()
    }

    /// Forgets a guild the bot was removed from.
    pub(crate) fn left_guild(&self, id: &str) {
        self.guilds
            .lock()
            .expect("guild list lock")
            .retain(|g| g != id || self.settings.guild_ids.iter().any(|c| c == id));
    }

    /// Remembers a guild the bot is in (when no guilds are configured, every one it is in
    /// counts).
    pub(crate) fn joined_guild(&self, id: &str) {
        if !self.settings.guild_ids.is_empty() {
            return;
        }
        let mut guilds = self.guilds.lock().expect("guild list lock");
        if !guilds.iter().any(|g| g == id) {
            guilds.push(id.to_owned());
        }
    }

    /// Whether events from this guild are for Baton: every guild, unless `DISCORD_GUILD_IDS`
    /// names some.
    pub fn serves_guild(&self, guild: Option<&str>) -> bool {
        match guild {
            Some(g) => {
                self.settings.guild_ids.is_empty() || self.settings.guild_ids.iter().any(|x| x == g)
            }
            // Direct messages are not a place Baton works in.
            None => false,
        }
    }

    /// A guild's role names by role ID, read at most once a minute. A failed read keeps what
    /// was known: IDs still work without names.
    pub(crate) async fn role_names(&self, guild: &str) -> HashMap<String, String> {
        let now = self.clock.now();
        let mut roles = self.roles.lock().await;
        let fresh = roles
            .get(guild)
            .is_some_and(|(at, _)| (now - *at).num_seconds() < ROLES_TTL_SECONDS);
        if !fresh {
            match self.api.get(&format!("guilds/{guild}/roles")).await {
                Ok(list) => {
                    let names = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| {
                            Some((r["id"].as_str()?.to_owned(), r["name"].as_str()?.to_owned()))
                        })
                        .collect();
                    roles.insert(guild.to_owned(), (now, names));
                }
                Err(e) => tracing::warn!(error = %e, guild, "could not read the guild's roles"),
            }
        }
        roles.get(guild).map(|(_, n)| n.clone()).unwrap_or_default()
    }

    /// Roles named in a message's mentions (`group:Release Managers`) become role IDs, so
    /// they are pinged and shown as roles. A name no guild has stays as it is written.
    async fn resolve_role_names(&self, message: &mut crate::core::message::OutMessage) {
        let named: Vec<String> = message
            .mentions
            .iter()
            .filter_map(|m| {
                m.strip_prefix("discord:")
                    .unwrap_or(m)
                    .strip_prefix("group:")
            })
            .filter(|r| !is_snowflake(r))
            .map(str::to_owned)
            .collect();
        if named.is_empty() {
            return;
        }
        // Names are looked up only in the guilds the operator listed (see `handle`).
        let guilds = self.settings.guild_ids.clone();
        for name in named {
            let mut id = None;
            for g in &guilds {
                if let Some((rid, _)) = self
                    .role_names(g)
                    .await
                    .into_iter()
                    .find(|(_, n)| *n == name)
                {
                    id = Some(rid);
                    break;
                }
            }
            let Some(id) = id else { continue };
            message.text = message
                .text
                .replace(&format!("@group:{name}"), &format!("@group:{id}"));
            for m in &mut message.mentions {
                if m.strip_prefix("discord:")
                    .unwrap_or(m)
                    .strip_prefix("group:")
                    == Some(name.as_str())
                {
                    *m = format!("group:{id}");
                }
            }
        }
    }

    /// Reads every guild's channels into the cache. Misses refresh it at most once a minute.
    async fn refresh_channels(&self) -> Result<(), DiscordError> {
        let now = self.clock.now();
        if self
            .channels
            .lock()
            .expect("channel cache lock")
            .refreshed
            .is_some_and(|at| (now - at).num_seconds() < CHANNELS_TTL_SECONDS)
        {
            return Ok(());
        }
        let guilds = self.guilds.lock().expect("guild list lock").clone();
        let mut by_name: HashMap<String, Option<String>> = HashMap::new();
        let mut info = HashMap::new();
        for guild in guilds {
            // One guild Baton cannot read (removed, or a wrong ID) must not hide the others.
            let list = match self.api.get(&format!("guilds/{guild}/channels")).await {
                Ok(list) => list,
                Err(e) if e.is_permanent() => {
                    tracing::warn!(error = %e, guild, "cannot list this guild's channels");
                    continue;
                }
                Err(e) => return Err(e),
            };
            for c in list.as_array().into_iter().flatten() {
                let (Some(id), Some(name)) = (c["id"].as_str(), c["name"].as_str()) else {
                    continue;
                };
                let kind = c["type"].as_u64().unwrap_or(0);
                if POSTABLE_TYPES.contains(&kind) {
                    by_name
                        .entry(name.to_owned())
                        .and_modify(|seen| {
                            if seen.as_deref() != Some(id) {
                                *seen = None;
                            }
                        })
                        .or_insert_with(|| Some(id.to_owned()));
                }
                info.insert(
                    id.to_owned(),
                    ChannelInfo {
                        name: name.to_owned(),
                        parent: c["parent_id"].as_str().map(str::to_owned),
                        thread: THREAD_TYPES.contains(&kind),
                        guild: Some(guild.clone()),
                    },
                );
            }
        }
        let mut cache = self.channels.lock().expect("channel cache lock");
        // Threads learned one by one stay known.
        for (id, known) in cache.info.drain() {
            info.entry(id).or_insert(known);
        }
        cache.by_name = by_name;
        cache.info = info;
        cache.refreshed = Some(now);
        Ok(())
    }

    /// The ID of a channel named in a workflow (`general`, `#general` or an ID).
    async fn channel_id(&self, channel: &str) -> Result<String, DeliveryError> {
        let name = channel.trim_start_matches('#');
        if is_snowflake(name) {
            return Ok(name.to_owned());
        }
        let lookup = |cache: &ChannelCache| cache.by_name.get(name).cloned();
        let mut found = lookup(&self.channels.lock().expect("channel cache lock"));
        if found.is_none() {
            self.refresh_channels().await.map_err(delivery_error)?;
            found = lookup(&self.channels.lock().expect("channel cache lock"));
        }
        match found {
            Some(Some(id)) => Ok(id),
            Some(None) => Err(DeliveryError::Permanent(format!(
                "channel #{name} exists in more than one guild: name it by its ID in the workflow"
            ))),
            None => Err(DeliveryError::Permanent(format!(
                "channel #{name} not found in the bot's guilds: check the name in the workflow, or give the bot access to the channel"
            ))),
        }
    }

    /// Of `channels` (names or IDs from workflows), those the member can see: a channel's
    /// members on Discord are whoever has View Channel there, from the guild's role
    /// permissions and the channel's overwrites, as Discord computes it. Read at the click.
    pub(crate) async fn member_of(
        &self,
        guild: &str,
        user: &str,
        member_roles: &[String],
        channels: &[String],
    ) -> Vec<String> {
        // The guild's owner has every permission everywhere.
        if let Ok(g) = self.api.get(&format!("guilds/{guild}")).await
            && g["owner_id"] == user
        {
            return channels.to_vec();
        }
        let roles = match self.api.get(&format!("guilds/{guild}/roles")).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, guild, "could not read the guild's roles");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for name in channels {
            let Ok(id) = self.channel_id(name).await else {
                continue;
            };
            match self.api.get(&format!("channels/{id}")).await {
                Ok(channel) if channel["guild_id"] == guild => {
                    if can_view(guild, user, member_roles, &roles, &channel) {
                        out.push(name.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, channel = %name, "could not read the channel"),
            }
        }
        out
    }

    /// What Baton knows of a channel Discord gave by ID, asking Discord once when it is new
    /// (a thread, or a channel made since the last listing).
    async fn channel_info(&self, id: &str) -> Option<ChannelInfo> {
        if let Some(info) = self
            .channels
            .lock()
            .expect("channel cache lock")
            .info
            .get(id)
        {
            return Some(info.clone());
        }
        if let Err(e) = self.refresh_channels().await {
            tracing::warn!(error = %e, "could not list Discord channels");
        }
        if let Some(info) = self
            .channels
            .lock()
            .expect("channel cache lock")
            .info
            .get(id)
        {
            return Some(info.clone());
        }
        let c = match self.api.get(&format!("channels/{id}")).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, channel = id, "could not read a Discord channel");
                return None;
            }
        };
        let info = ChannelInfo {
            name: c["name"].as_str().unwrap_or(id).to_owned(),
            parent: c["parent_id"].as_str().map(str::to_owned),
            thread: THREAD_TYPES.contains(&c["type"].as_u64().unwrap_or(0)),
            guild: c["guild_id"].as_str().map(str::to_owned),
        };
        self.channels
            .lock()
            .expect("channel cache lock")
            .info
            .insert(id.to_owned(), info.clone());
        Some(info)
    }

    /// The guild a channel belongs to, when Baton can find out.
    pub(crate) async fn guild_of(&self, channel_id: &str) -> Option<String> {
        self.channel_info(channel_id).await.and_then(|i| i.guild)
    }

    /// How a channel ID is named in runs and matched against workflows: its name when that
    /// names it alone, its ID otherwise (a name in two guilds, an unreadable channel).
    async fn workflow_name(&self, id: &str) -> String {
        let Some(info) = self.channel_info(id).await else {
            return id.to_owned();
        };
        let unique = self
            .channels
            .lock()
            .expect("channel cache lock")
            .by_name
            .get(&info.name)
            .is_some_and(|x| x.as_deref() == Some(id));
        if unique { info.name } else { id.to_owned() }
    }

    /// Where a message in `channel_id` happened, as the core sees it: the channel's name, and
    /// for a thread the thread's parent with the thread as `CHANNEL:THREAD` (a thread started
    /// from a message has that message's ID).
    pub(crate) async fn conversation(&self, channel_id: &str) -> (String, Option<String>) {
        match self.channel_info(channel_id).await {
            Some(ChannelInfo {
                thread: true,
                parent: Some(parent),
                ..
            }) => (
                self.workflow_name(&parent).await,
                Some(format!("{parent}:{channel_id}")),
            ),
            _ => (self.workflow_name(channel_id).await, None),
        }
    }

    /// The direct-message channel with a person, which Discord opens (or returns, when it is
    /// open already) on request.
    async fn direct_channel(&self, user: &str) -> Result<String, DeliveryError> {
        let dm = self
            .api
            .post("users/@me/channels", &json!({"recipient_id": user}))
            .await
            .map_err(delivery_error)?;
        dm["id"].as_str().map(str::to_owned).ok_or_else(|| {
            DeliveryError::Permanent("Discord opened a direct message without an id".into())
        })
    }

    /// The thread of a run's root message, started on first use.
    async fn thread_of(&self, root: &str, run: Option<i64>) -> Result<String, DeliveryError> {
        let (channel, message) = split_ref(root)?;
        if let Some(thread) = self.threads.lock().expect("thread map lock").get(message) {
            return Ok(thread.clone());
        }
        let name = match run {
            Some(n) => format!("Run #{n}"),
            None => "Baton".to_owned(),
        };
        // A week: approvals may wait that long, and a reply reopens an archived thread anyway.
        let body = json!({"name": name, "auto_archive_duration": 10080});
        let thread = match self
            .api
            .post(
                &format!("channels/{channel}/messages/{message}/threads"),
                &body,
            )
            .await
        {
            Ok(t) => t["id"].as_str().unwrap_or(message).to_owned(),
            // Made before a restart, or by a delivery that was not recorded. A thread started
            // from a message has the message's ID.
            Err(e) if e.code() == Some(THREAD_EXISTS) => message.to_owned(),
            Err(e) => return Err(delivery_error(e)),
        };
        self.threads
            .lock()
            .expect("thread map lock")
            .insert(message.to_owned(), thread.clone());
        Ok(thread)
    }
}

fn delivery_error(e: DiscordError) -> DeliveryError {
    match e {
        // Waiting for a bucket Discord announced as empty is pacing, not failing.
        DiscordError::BucketEmpty(wait) => DeliveryError::NotYet(wait),
        // A rate limit is a wait, never a failed try.
        DiscordError::RateLimited(wait) => DeliveryError::RateLimited(wait),
        e => DeliveryError::from_failure(e.to_string(), e.is_permanent(), None),
    }
}

/// Splits `CHANNEL:MESSAGE`.
fn split_ref(reference: &str) -> Result<(&str, &str), DeliveryError> {
    super::split_ref(reference, "Discord")
}

#[async_trait]
impl Platform for Discord {
    fn name(&self) -> &'static str {
        "discord"
    }

    async fn deliver(&self, entry: &OutboxEntry) -> Result<String, DeliveryError> {
        let mut message = entry.message.clone();
        self.resolve_role_names(&mut message).await;
        match entry.op {
            OutboxOp::Post => {
                let channel = match (&entry.private_to, &entry.thread_ref) {
                    (Some(user), _) => self.direct_channel(user).await?,
                    (None, Some(root)) => self.thread_of(root, entry.run.map(|r| r.0)).await?,
                    (None, None) => self.channel_id(&entry.channel).await?,
                };
                let mut body = render::post(&message);
                // Discord's idempotency key: a post repeated with the same nonce within a few
                // minutes (after a crash between posting and recording it) returns the first
                // message instead of making a second one.
                body["nonce"] = json!(format!("baton:{}", entry.id));
                body["enforce_nonce"] = json!(true);
                let answer = self
                    .api
                    .post(&format!("channels/{channel}/messages"), &body)
                    .await
                    .map_err(delivery_error)?;
                let id = answer["id"].as_str().ok_or_else(|| {
                    DeliveryError::Permanent("Discord answered a post without a message id".into())
                })?;
                Ok(format!("{channel}:{id}"))
            }
            OutboxOp::Edit => {
                let target = entry.target_ref.as_deref().unwrap_or_default();
                let (channel, message_id) = split_ref(target)?;
                self.api
                    .patch(
                        &format!("channels/{channel}/messages/{message_id}"),
                        &render::edit(&message),
                    )
                    .await
                    .map_err(delivery_error)?;
                Ok(target.to_owned())
            }
        }
    }

    /// Reads `/users/@me`: a bad token stops start-up with Discord's reason.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        let me = self.api.get("users/@me").await.map_err(|e| match e {
            DiscordError::Api { status: 401, .. } => anyhow::anyhow!(
                "DISCORD_TOKEN: Discord refused the token (401 Unauthorized); copy the bot token from the Developer Portal (your application → Bot → Reset Token)"
            ),
            other => anyhow::anyhow!("DISCORD_TOKEN: reading the bot user failed: {other}"),
        })?;
        let identity = Identity {
            user_id: me["id"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("/users/@me answered without an id"))?
                .to_owned(),
            username: me["username"].as_str().unwrap_or_default().to_owned(),
        };
        if me["bot"].as_bool() == Some(false) {
            anyhow::bail!(
                "DISCORD_TOKEN: the token belongs to a user account, not a bot; use the bot token from the Developer Portal"
            );
        }
        tracing::info!(bot_user = %identity.username, id = %identity.user_id, "Discord token accepted");
        let _ = self.identity.set(identity);
        Ok(())
    }
}

/// Discord's View Channel and Administrator permission bits.
const VIEW_CHANNEL: u64 = 1 << 10;
const ADMINISTRATOR: u64 = 1 << 3;

/// Whether a member with `member_roles` may view `channel`: the guild's base permissions
/// (@everyone, whose role ID is the guild's, and the member's roles), then the channel's
/// overwrites for @everyone, for the member's roles together, and for the member.
fn can_view(
    guild: &str,
    user: &str,
    member_roles: &[String],
    roles: &serde_json::Value,
    channel: &serde_json::Value,
) -> bool {
    let bits = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut perms = 0;
    for r in roles.as_array().into_iter().flatten() {
        let id = r["id"].as_str().unwrap_or_default();
        if id == guild || member_roles.iter().any(|m| m == id) {
            perms |= bits(&r["permissions"]);
        }
    }
    if perms & ADMINISTRATOR != 0 {
        return true;
    }
    let overwrites: Vec<&serde_json::Value> = channel["permission_overwrites"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let apply = |perms: u64, allow: u64, deny: u64| (perms & !deny) | allow;
    if let Some(o) = overwrites.iter().find(|o| o["id"] == guild) {
        perms = apply(perms, bits(&o["allow"]), bits(&o["deny"]));
    }
    let (mut allow, mut deny) = (0, 0);
    for o in &overwrites {
        let id = o["id"].as_str().unwrap_or_default();
        if o["type"] == 0 && id != guild && member_roles.iter().any(|m| m == id) {
            allow |= bits(&o["allow"]);
            deny |= bits(&o["deny"]);
        }
    }
    perms = apply(perms, allow, deny);
    if let Some(o) = overwrites
        .iter()
        .find(|o| o["type"] == 1 && o["id"] == user)
    {
        perms = apply(perms, bits(&o["allow"]), bits(&o["deny"]));
    }
    perms & VIEW_CHANNEL != 0
}

#[cfg(test)]
mod permission_tests {
    use super::*;
    use serde_json::json;

    const GUILD: &str = "1";

    fn roles() -> serde_json::Value {
        json!([
            {"id": GUILD, "name": "@everyone", "permissions": (VIEW_CHANNEL).to_string()},
            {"id": "10", "name": "finance", "permissions": "0"},
            {"id": "11", "name": "admins", "permissions": (ADMINISTRATOR).to_string()}
        ])
    }

    #[test]
    fn a_private_channel_is_seen_by_the_roles_and_people_its_overwrites_let_in() {
        let channel = json!({"permission_overwrites": [
            {"id": GUILD, "type": 0, "allow": "0", "deny": VIEW_CHANNEL.to_string()},
            {"id": "10", "type": 0, "allow": VIEW_CHANNEL.to_string(), "deny": "0"},
            {"id": "77", "type": 1, "allow": VIEW_CHANNEL.to_string(), "deny": "0"},
            {"id": "78", "type": 1, "allow": "0", "deny": VIEW_CHANNEL.to_string()}
        ]});
        let sees = |user: &str, roles_of: &[&str]| {
            let r: Vec<String> = roles_of.iter().map(|s| s.to_string()).collect();
            can_view(GUILD, user, &r, &roles(), &channel)
        };
        assert!(!sees("50", &[]), "@everyone is denied");
        assert!(sees("51", &["10"]), "the finance role is let in");
        assert!(sees("77", &[]), "a member let in by name");
        assert!(
            !sees("78", &["10"]),
            "a member shut out by name, whatever the role"
        );
        assert!(sees("79", &["11"]), "administrators see everything");
    }

    #[test]
    fn a_channel_without_overwrites_is_seen_by_whoever_the_guild_lets_view() {
        let open = json!({"permission_overwrites": []});
        assert!(can_view(GUILD, "50", &[], &roles(), &open));
        let closed_guild = json!([{"id": GUILD, "permissions": "0"}]);
        assert!(!can_view(GUILD, "50", &[], &closed_guild, &open));
    }
}
