//! Slack: the bot's Web API calls (outbound, through the outbox) and the Events API endpoints
//! (inbound, in `inbound.rs`). Same shape as the console adapter; the core does not know Slack.
//!
//! Message references are `CHANNEL_ID:TS`, which is what `chat.update` and `thread_ts` need.

pub mod api;
pub mod blocks;
pub mod inbound;
pub mod manifest;
pub mod pace;
pub mod socket;

use super::{DeliveryError, Platform};
use crate::config::SlackSettings;
use crate::core::clock::Clock;
use crate::store::{OutboxEntry, OutboxOp};
use anyhow::Context as _;
use api::{SlackApi, SlackError};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Who Baton is in the workspace, from `auth.test`.
#[derive(Debug, Clone)]
pub struct Identity {
    pub team: String,
    pub team_id: String,
    pub user_id: String,
    pub bot_id: Option<String>,
}

/// The Slack platform.
pub struct Slack {
    pub(crate) api: SlackApi,
    pub(crate) settings: SlackSettings,
    identity: OnceLock<Identity>,
    pacer: pace::Pacer,
    /// Channel names from workflows, resolved to IDs once.
    channels: Mutex<ChannelCache>,
    /// User-group membership (user → group ids), refreshed at most once a minute.
    groups: tokio::sync::Mutex<Option<GroupCache>>,
    /// Channel members by channel name, each read at most once a minute.
    members: tokio::sync::Mutex<HashMap<String, MemberCache>>,
    clock: Arc<dyn Clock>,
    /// Events acknowledged and still being handled.
    pub inflight: Arc<super::Inflight>,
}

/// Channel names and IDs, both ways, and when they were read.
#[derive(Default)]
struct ChannelCache {
    by_name: HashMap<String, String>,
    by_id: HashMap<String, String>,
    refreshed: Option<chrono::DateTime<chrono::Utc>>,
}

/// When a channel's members were read, and who they are.
type MemberCache = (
    chrono::DateTime<chrono::Utc>,
    std::collections::HashSet<String>,
);

/// How long a channel listing answers misses before it is read again.
const CHANNELS_TTL_SECONDS: i64 = 60;

/// When membership was read, and each user's groups.
type GroupCache = (chrono::DateTime<chrono::Utc>, HashMap<String, Vec<String>>);

/// How long user-group membership is trusted before it is read again.
const GROUPS_TTL_SECONDS: i64 = 60;

/// Whether a channel reference is already a Slack conversation ID (`C…`, `G…`, `D…`).
fn is_channel_id(s: &str) -> bool {
    s.len() >= 9
        && s.starts_with(['C', 'G', 'D'])
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl Slack {
    pub fn new(settings: SlackSettings, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<Self>> {
        let api = SlackApi::new(
            settings.api_url.clone(),
            settings.bot_token.clone(),
            clock.clone(),
        )?;
        Ok(Arc::new(Self {
            api,
            settings,
            identity: OnceLock::new(),
            pacer: pace::Pacer::new(clock.clone()),
            channels: Mutex::new(ChannelCache::default()),
            groups: tokio::sync::Mutex::new(None),
            members: tokio::sync::Mutex::new(HashMap::new()),
            inflight: Arc::new(super::Inflight::default()),
            clock,
        }))
    }

    /// The bot's identity once `healthcheck` ran.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    /// The bot's own user id (empty before `healthcheck`), so it never reacts to itself.
    pub fn bot_user(&self) -> String {
        self.identity()
            .map(|i| i.user_id.clone())
            .unwrap_or_default()
    }

    /// The user groups (`S…` ids) a user belongs to, from `usergroups.list`, cached for a
    /// minute. Workspaces without user groups (or without the `usergroups:read` scope) simply
    /// have none; a failed lookup keeps what was known and is tried again on the next click.
    pub async fn groups_of(&self, user: &str) -> Vec<String> {
        let now = self.clock.now();
        let mut cache = self.groups.lock().await;
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| (now - *at).num_seconds() < GROUPS_TTL_SECONDS);
        if !fresh {
            let params = [
                ("include_users", "true".to_owned()),
                ("include_disabled", "false".to_owned()),
            ];
            match self.api.call_form("usergroups.list", &params).await {
                Ok(answer) => {
                    let mut members: HashMap<String, Vec<String>> = HashMap::new();
                    for g in answer["usergroups"].as_array().into_iter().flatten() {
                        let Some(id) = g["id"].as_str() else { continue };
                        for u in g["users"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|u| u.as_str())
                        {
                            members.entry(u.to_owned()).or_default().push(id.to_owned());
                        }
                    }
                    *cache = Some((now, members));
                }
                Err(e) => tracing::warn!(error = %e, "could not read Slack user groups"),
            }
        }
        cache
            .as_ref()
            .and_then(|(_, m)| m.get(user).cloned())
            .unwrap_or_default()
    }

    /// Of `channels` (names from workflows), those `user` is a member of, read through
    /// `conversations.members` and kept for a minute. A channel that cannot be read counts as
    /// one the user is not in.
    pub async fn member_of(&self, user: &str, channels: &[String]) -> Vec<String> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for name in channels {
            let mut cache = self.members.lock().await;
            let fresh = cache
                .get(name)
                .is_some_and(|(at, _)| (now - *at).num_seconds() < GROUPS_TTL_SECONDS);
            if !fresh {
                match self.read_members(name).await {
                    Ok(members) => {
                        cache.insert(name.clone(), (now, members));
                    }
                    Err(e) => {
                        tracing::warn!(channel = %name, error = %e, "could not read the channel's members")
                    }
                }
            }
            if cache.get(name).is_some_and(|(_, m)| m.contains(user)) {
                out.push(name.clone());
            }
        }
        out
    }

    async fn read_members(&self, name: &str) -> anyhow::Result<std::collections::HashSet<String>> {
        let id = self
            .channel_id(name)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut members = std::collections::HashSet::new();
        let mut cursor = String::new();
        // Slack pages members; a few pages cover any channel people approve from.
        for _ in 0..20 {
            let mut params = vec![("channel", id.clone()), ("limit", "1000".to_owned())];
            if !cursor.is_empty() {
                params.push(("cursor", cursor.clone()));
            }
            let answer = self.api.call_form("conversations.members", &params).await?;
            members.extend(
                answer["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str().map(str::to_owned)),
            );
            cursor = answer["response_metadata"]["next_cursor"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if cursor.is_empty() {
                break;
            }
        }
        Ok(members)
    }

    /// Reads every channel Baton can see into the cache. Misses refresh it at most once a
    /// minute, so a stream of DMs (never listed) costs no API calls.
    async fn refresh_channels(&self) -> Result<(), DeliveryError> {
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
        let mut cursor = String::new();
        let mut by_name = HashMap::new();
        loop {
            let mut params = vec![
                ("types", "public_channel,private_channel".to_owned()),
                ("exclude_archived", "true".to_owned()),
                ("limit", "1000".to_owned()),
            ];
            if !cursor.is_empty() {
                params.push(("cursor", cursor.clone()));
            }
            let answer = self
                .api
                .call_form("conversations.list", &params)
                .await
                .map_err(delivery_error)?;
            for c in answer["channels"].as_array().into_iter().flatten() {
                if let (Some(n), Some(id)) = (c["name"].as_str(), c["id"].as_str()) {
                    by_name.insert(n.to_owned(), id.to_owned());
                }
            }
            cursor = answer["response_metadata"]["next_cursor"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if cursor.is_empty() {
                break;
            }
        }
        let mut cache = self.channels.lock().expect("channel cache lock");
        cache.by_id = by_name
            .iter()
            .map(|(n, id)| (id.clone(), n.clone()))
            .collect();
        cache.by_name = by_name;
        cache.refreshed = Some(now);
        Ok(())
    }

    /// The ID of a channel named in a workflow (`general`, `#general` or an ID).
    async fn channel_id(&self, channel: &str) -> Result<String, DeliveryError> {
        let name = channel.trim_start_matches('#');
        if is_channel_id(name) {
            return Ok(name.to_owned());
        }
        if let Some(id) = self
            .channels
            .lock()
            .expect("channel cache lock")
            .by_name
            .get(name)
        {
            return Ok(id.clone());
        }
        self.refresh_channels().await?;
        self.channels
            .lock()
            .expect("channel cache lock")
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| DeliveryError::Permanent(format!("channel #{name} not found: check the name in the workflow, or invite the bot to the private channel")))
    }

    /// The name of a channel Slack gave by ID, when it has one (DMs do not).
    pub async fn channel_name(&self, id: &str) -> Option<String> {
        if !is_channel_id(id) {
            return None;
        }
        if let Some(name) = self
            .channels
            .lock()
            .expect("channel cache lock")
            .by_id
            .get(id)
        {
            return Some(name.clone());
        }
        if let Err(e) = self.refresh_channels().await {
            tracing::warn!(error = %e, "could not list Slack channels");
        }
        self.channels
            .lock()
            .expect("channel cache lock")
            .by_id
            .get(id)
            .cloned()
    }
}

fn delivery_error(e: SlackError) -> DeliveryError {
    match e {
        // A rate limit is a wait, never a failed try.
        SlackError::RateLimited(wait) => DeliveryError::RateLimited(wait),
        e => DeliveryError::from_failure(e.to_string(), e.is_permanent(), None),
    }
}

/// Splits `CHANNEL:TS`.
fn split_ref(reference: &str) -> Result<(&str, &str), DeliveryError> {
    super::split_ref(reference, "Slack")
}

#[async_trait]
impl Platform for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    async fn deliver(&self, entry: &OutboxEntry) -> Result<String, DeliveryError> {
        let (text, blocks) = blocks::render(&entry.message);
        match entry.op {
            OutboxOp::Post => {
                // Slack delivers a post to a user ID as a direct message from the app.
                let channel = match &entry.private_to {
                    Some(user) => user.clone(),
                    None => self.channel_id(&entry.channel).await?,
                };
                self.pacer.take(&channel).map_err(DeliveryError::NotYet)?;
                let mut body = json!({"channel": channel, "text": text, "blocks": blocks, "unfurl_links": false, "unfurl_media": false});
                if let Some(thread) = &entry.thread_ref {
                    body["thread_ts"] = Value::String(split_ref(thread)?.1.to_owned());
                }
                let answer = self
                    .api
                    .call("chat.postMessage", &body)
                    .await
                    .map_err(delivery_error)?;
                let channel = answer["channel"].as_str().unwrap_or(&channel);
                let ts = answer["ts"].as_str().ok_or_else(|| {
                    DeliveryError::Permanent("chat.postMessage answered without a ts".into())
                })?;
                Ok(format!("{channel}:{ts}"))
            }
            OutboxOp::Edit => {
                let target = entry.target_ref.as_deref().unwrap_or_default();
                let (channel, ts) = split_ref(target)?;
                let body = json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks});
                self.api
                    .call("chat.update", &body)
                    .await
                    .map_err(delivery_error)?;
                Ok(target.to_owned())
            }
        }
    }

    /// Calls `auth.test`: a bad token stops start-up with Slack's reason.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        let (answer, scopes) = self.api.auth_test().await.map_err(|e| match e {
            SlackError::Api(code) if matches!(code.as_str(), "invalid_auth" | "not_authed" | "account_inactive" | "token_revoked" | "token_expired") => {
                anyhow::anyhow!("SLACK_BOT_TOKEN: Slack refused the token ({code}); copy the Bot User OAuth Token from the app's OAuth & Permissions page")
            }
            other => anyhow::anyhow!("SLACK_BOT_TOKEN: auth.test failed: {other}"),
        })?;
        if let Some(granted) = scopes {
            let missing: Vec<&str> = manifest::REQUIRED_SCOPES
                .iter()
                .copied()
                .filter(|s| !granted.iter().any(|g| g == s))
                .collect();
            if !missing.is_empty() {
                anyhow::bail!(
                    "SLACK_BOT_TOKEN: the Slack app lacks the scopes {}; add them under OAuth & Permissions (or recreate the app from `baton slack manifest`) and reinstall it",
                    missing.join(", ")
                );
            }
        }
        let field = |k: &str| answer[k].as_str().map(str::to_owned);
        let identity = Identity {
            team: field("team").unwrap_or_default(),
            team_id: field("team_id").unwrap_or_default(),
            user_id: field("user_id").context("auth.test answered without a user_id")?,
            bot_id: field("bot_id"),
        };
        tracing::info!(team = %identity.team, bot_user = %identity.user_id, "connected to Slack");
        let _ = self.identity.set(identity);
        Ok(())
    }
}
