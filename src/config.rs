//! Settings: defaults, then the environment (with `.env` loaded into it by `main`), then
//! `validate`. Every setting is listed with a comment in `.env.example`.

use crate::tools::{HostAllowList, ToolSettings};
use chrono::Duration;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// A value that must not reach logs. Debug and Display print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A setting that is wrong, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting Baton reads.
/// Where settings came from, kept for the variables MCP files name (`${VAR}`).
#[derive(Clone)]
pub struct Vars(Arc<Lookup>);

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Vars {
    pub fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values may be secrets.
        f.write_str("Vars(..)")
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`: where runs and the ledger live.
    pub database_url: Secret,
    /// `BATON_DURABILITY`: whether a commit must survive a power cut (`full`) or only Baton
    /// being killed (`relaxed`).
    pub durability: crate::store::Durability,
    /// `BATON_REPLICA_NAME`: this process among replicas sharing one database, in logs and
    /// metrics. Unset, it is the host's name and the HTTP port.
    pub replica_name: Option<String>,
    /// `BATON_LEASE`: how long what a replica claims (running steps, a conversation's
    /// deliveries, the Discord gateway) stays its own without renewal; another replica takes
    /// it over this long after its holder stopped.
    pub lease: Duration,
    /// `BATON_HTTP_ADDR`: console, health, metrics and webhooks.
    pub http_addr: SocketAddr,
    /// `BATON_PUBLIC_URL`: how people reach the console, for links in chat. Unset, it is the
    /// address the server actually listens on.
    pub public_url: Option<String>,
    /// `BATON_COMMANDS_DIR`: the workflow files.
    pub commands_dir: PathBuf,
    /// `BATON_CONSOLE_TOKEN`: required when the console is bound beyond loopback.
    pub console_token: Option<Secret>,
    /// `BATON_CONSOLE_USERS`: the people one can act as in the console.
    pub console_users: Vec<String>,
    /// `BATON_CONSOLE_GROUPS`: console groups and their members (`release=ben,cy;finance=dee`),
    /// for approvers and permissions written `group:release`.
    pub console_groups: BTreeMap<String, Vec<String>>,
    /// `BATON_CONSOLE_CHANNELS`: channels the console shows besides those workflows name.
    pub console_channels: Vec<String>,
    /// `BATON_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `BATON_LOG`: a tracing filter such as `info` or `baton=debug`.
    pub log_filter: String,
    /// `BATON_WORKERS`: step attempts running at once.
    pub workers: usize,
    /// `BATON_POLL_INTERVAL`: how often timers, schedules and the outbox are checked.
    pub poll_interval: std::time::Duration,
    /// `BATON_STALL_AFTER`: a running run with no progress this long is listed as stalled.
    pub stall_after: Duration,
    /// `BATON_SHUTDOWN_GRACE`: how long shutdown waits for running steps.
    pub shutdown_grace: std::time::Duration,
    /// `BATON_DELIVERY_ALERT_AFTER`: how long a message may keep failing (network trouble,
    /// 5xx; never rate limits) before its run's thread is told, while Baton keeps trying.
    pub delivery_alert_after: Duration,
    /// `BATON_HTTP_ALLOW` and `BATON_HTTP_ALLOW_PRIVATE`.
    pub http_allow: HostAllowList,
    /// `BATON_WEBHOOKS`: `name=url` pairs.
    pub webhooks: BTreeMap<String, Secret>,
    /// `BATON_AUDIT_KEY`: signs every ledger entry and printed checkpoint (HMAC-SHA256), so
    /// someone with the database file alone cannot write a tail that verifies.
    pub audit_key: Option<Secret>,
    /// `BATON_SECRETS`: extra values to redact from the ledger and logs.
    pub extra_secrets: Vec<Secret>,
    /// Every variable, for `${VAR}` in `commands/mcp/*.toml`.
    pub vars: Vars,
    /// Slack, when `SLACK_BOT_TOKEN` is set.
    pub slack: Option<SlackSettings>,
    /// Discord, when `DISCORD_TOKEN` is set.
    pub discord: Option<DiscordSettings>,
    /// `BATON_MODELS` and the providers' keys: what agent steps talk to.
    pub models: crate::agents::ModelSettings,
}

/// `BATON_MODELS` (`name=provider:model`, comma-separated), `OPENAI_API_KEY` /
/// `OPENAI_BASE_URL`, `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL`, `BATON_MODEL_TIMEOUT`.
fn model_settings(
    var: &dyn Fn(&str) -> Option<String>,
    timeout: std::time::Duration,
) -> Result<crate::agents::ModelSettings, ConfigError> {
    use crate::agents::{Endpoint, ModelRef, ModelSettings, Provider};
    let mut models = BTreeMap::new();
    for pair in var("BATON_MODELS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let bad = |why: &str| ConfigError {
            setting: "BATON_MODELS",
            problem: format!(
                "`{pair}`: {why}; write name=provider:model, e.g. default=openai:gpt-4o-mini or fast=anthropic:claude-haiku-4-5"
            ),
        };
        let (name, target) = pair.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (provider, model) = target.split_once(':').ok_or_else(|| bad("no provider"))?;
        let provider = match provider.trim() {
            "openai" => Provider::OpenAi,
            "anthropic" => Provider::Anthropic,
            other => {
                return Err(bad(&format!(
                    "provider `{other}` is not openai or anthropic"
                )));
            }
        };
        if name.trim().is_empty() || model.trim().is_empty() {
            return Err(bad("empty name or model"));
        }
        models.insert(
            name.trim().to_owned(),
            ModelRef {
                provider,
                model: model.trim().to_owned(),
            },
        );
    }
    // A provider is configured by its key, or by a base URL alone (a local server without one).
    let endpoint = |key: &'static str,
                    base: &'static str,
                    default: &str|
     -> Result<Option<Endpoint>, ConfigError> {
        let api_key = var(key).filter(|k| !k.trim().is_empty());
        let Some(text) = var(base).or_else(|| api_key.as_ref().map(|_| default.to_owned())) else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(&text).map_err(|_| ConfigError {
            setting: base,
            problem: format!("`{text}` is not a URL"),
        })?;
        // A key travels only over https (or to this machine); a keyless local server
        // (Ollama, vLLM on the LAN) may use plain http.
        let plain_ok = api_key.is_none() || is_loopback(&url);
        match url.scheme() {
            "https" => {}
            "http" if plain_ok => {}
            "http" => {
                return Err(ConfigError {
                    setting: base,
                    problem: format!(
                        "{key} is set, so the URL must be https:// (http:// only for loopback)"
                    ),
                });
            }
            other => {
                return Err(ConfigError {
                    setting: base,
                    problem: format!("scheme `{other}` is not http or https"),
                });
            }
        }
        Ok(Some(Endpoint {
            base_url: url,
            api_key: api_key.map(Secret::new),
        }))
    };
    Ok(ModelSettings {
        models,
        openai: endpoint(
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "https://api.openai.com/v1",
        )?,
        anthropic: endpoint(
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "https://api.anthropic.com",
        )?,
        timeout,
    })
}

/// How Baton reaches Slack.
#[derive(Debug, Clone)]
pub struct SlackSettings {
    /// `SLACK_BOT_TOKEN` (`xoxb-…`): the bot's Web API token.
    pub bot_token: Secret,
    /// `SLACK_APP_TOKEN` (`xapp-…`): the app-level token Socket Mode connects with.
    pub app_token: Option<Secret>,
    /// `SLACK_SIGNING_SECRET`: verifies requests to the Events API endpoints over HTTP.
    pub signing_secret: Option<Secret>,
    /// `SLACK_API_URL`: the Web API base URL, ending in `/`.
    pub api_url: reqwest::Url,
}

impl SlackSettings {
    fn from_lookup(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(bot_token) = var("SLACK_BOT_TOKEN") else {
            for other in ["SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"] {
                if var(other).is_some() {
                    return Err(ConfigError {
                        setting: "SLACK_BOT_TOKEN",
                        problem: format!("must be set too when {other} is set"),
                    });
                }
            }
            return Ok(None);
        };
        if !bot_token.starts_with("xoxb-") {
            return Err(ConfigError {
                setting: "SLACK_BOT_TOKEN",
                problem: "must be a bot token starting with xoxb- (OAuth & Permissions → Bot User OAuth Token)".into(),
            });
        }
        let app_token = var("SLACK_APP_TOKEN");
        if app_token
            .as_deref()
            .is_some_and(|t| !t.starts_with("xapp-"))
        {
            return Err(ConfigError {
                setting: "SLACK_APP_TOKEN",
                problem: "must be an app-level token starting with xapp- (Basic Information → App-Level Tokens, scope connections:write)".into(),
            });
        }
        let signing_secret = var("SLACK_SIGNING_SECRET");
        // Events reach Baton over Socket Mode (app token) or over HTTP (signed requests).
        if signing_secret.is_none() && app_token.is_none() {
            return Err(ConfigError {
                setting: "SLACK_APP_TOKEN",
                problem: "or SLACK_SIGNING_SECRET must be set: the app token (xapp-…, Basic Information → App-Level Tokens, scope connections:write) for Socket Mode, or the signing secret for the Events API over HTTP".into(),
            });
        }
        let api_text = var("SLACK_API_URL").unwrap_or_else(|| "https://slack.com/api/".into());
        let mut api_url = api_url("SLACK_API_URL", &api_text)?;
        if !api_url.path().ends_with('/') {
            let path = format!("{}/", api_url.path());
            api_url.set_path(&path);
        }
        Ok(Some(Self {
            bot_token: Secret::new(bot_token),
            app_token: app_token.map(Secret::new),
            signing_secret: signing_secret.map(Secret::new),
            api_url,
        }))
    }
}

/// An API base URL: https, or http only for loopback (a local test server or proxy), so a
/// token never crosses the network in clear text.
fn api_url(setting: &'static str, text: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(text).map_err(|_| ConfigError {
        setting,
        problem: format!("`{text}` is not a URL"),
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(ConfigError {
            setting,
            problem: "http:// is accepted only for loopback addresses; use https://".into(),
        }),
        other => Err(ConfigError {
            setting,
            problem: format!("scheme `{other}` is not http or https"),
        }),
    }
}

/// Whether a URL names this machine.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// How Baton reaches Discord.
#[derive(Debug, Clone)]
pub struct DiscordSettings {
    /// `DISCORD_TOKEN`: the bot token (Developer Portal → the application → Bot → Reset Token).
    pub token: Secret,
    /// `DISCORD_API_URL`: the REST base URL, ending in `/`. A bare origin (a proxy, a test
    /// server) gets Discord's own path, `/api/v10/`, as serenity's proxy setting does.
    pub api_url: reqwest::Url,
    /// `DISCORD_GUILD_IDS`: guilds to register slash commands in (instantly) and to resolve
    /// channel names in. Empty: commands are global and names resolve in every guild the bot
    /// is in.
    pub guild_ids: Vec<String>,
}

impl DiscordSettings {
    fn from_lookup(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(token) = var("DISCORD_TOKEN") else {
            for other in ["DISCORD_GUILD_IDS", "DISCORD_API_URL"] {
                if var(other).is_some() {
                    return Err(ConfigError {
                        setting: "DISCORD_TOKEN",
                        problem: format!("must be set too when {other} is set"),
                    });
                }
            }
            return Ok(None);
        };
        // Tokens are pasted from the portal; "Bot " is added by Baton, not by the operator.
        let token = token.trim().trim_start_matches("Bot ").trim().to_owned();
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError {
                setting: "DISCORD_TOKEN",
                problem: "must be the bot token from the Developer Portal (Bot → Reset Token), with no spaces".into(),
            });
        }
        let api_text =
            var("DISCORD_API_URL").unwrap_or_else(|| "https://discord.com/api/v10/".into());
        let mut api_url = api_url("DISCORD_API_URL", &api_text)?;
        if api_url.path() == "/" {
            api_url.set_path("/api/v10/");
        } else if !api_url.path().ends_with('/') {
            let path = format!("{}/", api_url.path());
            api_url.set_path(&path);
        }
        let mut guild_ids = Vec::new();
        for id in var("DISCORD_GUILD_IDS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if id.parse::<u64>().is_err() {
                return Err(ConfigError {
                    setting: "DISCORD_GUILD_IDS",
                    problem: format!(
                        "`{id}` is not a guild ID (a number: Developer Mode on, then right-click the server → Copy Server ID)"
                    ),
                });
            }
            guild_ids.push(id.to_owned());
        }
        Ok(Some(Self {
            token: Secret::new(token),
            api_url,
            guild_ids,
        }))
    }
}

impl Settings {
    /// Reads settings through `get` (the process environment in production, a map in tests).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        let get = Vars(Arc::new(get));
        let var = |k: &str| {
            get.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let list = |k: &str, default: &str| -> Vec<String> {
            var(k)
                .unwrap_or_else(|| default.to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let http_addr: SocketAddr = parse(
            "BATON_HTTP_ADDR",
            var("BATON_HTTP_ADDR")
                .as_deref()
                .unwrap_or("127.0.0.1:8080"),
            |s| {
                s.parse()
                    .map_err(|_| "must be an address and port, like 127.0.0.1:8080".to_string())
            },
        )?;
        let duration = |k: &'static str, default: &str| -> Result<Duration, ConfigError> {
            let text = var(k).unwrap_or_else(|| default.to_owned());
            if let Some(ms) = text.strip_suffix("ms") {
                return ms
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::milliseconds)
                    .ok_or_else(|| ConfigError {
                        setting: k,
                        problem: format!("`{text}` is not a duration like 500ms, 30s or 5m"),
                    });
            }
            crate::core::workflow::parse_duration(&text).map_err(|problem| ConfigError {
                setting: k,
                problem,
            })
        };
        let console_token = var("BATON_CONSOLE_TOKEN").map(Secret::new);
        if !http_addr.ip().is_loopback() && console_token.is_none() {
            return Err(ConfigError {
                setting: "BATON_CONSOLE_TOKEN",
                problem: format!(
                    "must be set when BATON_HTTP_ADDR ({http_addr}) is not a loopback address, so the console is not open to the network"
                ),
            });
        }
        if let Some(t) = &console_token
            && t.expose().len() < 16
        {
            return Err(ConfigError {
                setting: "BATON_CONSOLE_TOKEN",
                problem: "must be at least 16 characters".into(),
            });
        }
        let public_url = var("BATON_PUBLIC_URL");
        let mut webhooks = BTreeMap::new();
        // Without BATON_WEBHOOKS, `pager` is the console's own inbox (see `tool_settings`), so
        // the example workflows work with nothing else running.
        if let Some(text) = var("BATON_WEBHOOKS") {
            for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let Some((name, url)) = pair.split_once('=') else {
                    return Err(ConfigError {
                        setting: "BATON_WEBHOOKS",
                        problem: format!(
                            "`{}` is not name=url",
                            pair.split('=').next().unwrap_or_default()
                        ),
                    });
                };
                let parsed = reqwest::Url::parse(url.trim()).map_err(|_| ConfigError {
                    setting: "BATON_WEBHOOKS",
                    problem: format!("the URL for `{name}` is not a valid URL"),
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError {
                        setting: "BATON_WEBHOOKS",
                        problem: format!("the URL for `{name}` must be http or https"),
                    });
                }
                webhooks.insert(name.trim().to_owned(), Secret::new(url.trim()));
            }
        }
        let workers = parse(
            "BATON_WORKERS",
            var("BATON_WORKERS").as_deref().unwrap_or("8"),
            |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| "must be a whole number from 1 to 256".to_string())
            },
        )?;
        let log_format = match var("BATON_LOG_FORMAT").as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError {
                    setting: "BATON_LOG_FORMAT",
                    problem: format!("`{other}` is neither text nor json"),
                });
            }
        };
        let allow_private = match var("BATON_HTTP_ALLOW_PRIVATE")
            .as_deref()
            .unwrap_or("false")
        {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                return Err(ConfigError {
                    setting: "BATON_HTTP_ALLOW_PRIVATE",
                    problem: format!("`{other}` is neither true nor false"),
                });
            }
        };
        let database_url = var("DATABASE_URL").unwrap_or_else(|| "sqlite://baton.db".to_owned());
        if !database_url.starts_with("sqlite:") && !database_url.starts_with("postgres") {
            return Err(ConfigError {
                setting: "DATABASE_URL",
                problem: "must start with sqlite: or postgres:".into(),
            });
        }
        let durability = parse(
            "BATON_DURABILITY",
            var("BATON_DURABILITY").as_deref().unwrap_or("full"),
            str::parse,
        )?;
        let to_std = |d: Duration| d.to_std().unwrap_or_default();
        let lease = duration("BATON_LEASE", "30s")?;
        if lease < Duration::milliseconds(300) || lease > Duration::hours(1) {
            return Err(ConfigError {
                setting: "BATON_LEASE",
                problem: "must be from 300ms to 1h".into(),
            });
        }
        let replica_name = match var("BATON_REPLICA_NAME") {
            None => None,
            Some(name) => Some(parse("BATON_REPLICA_NAME", name.trim(), |n| {
                let fits =
                    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_graphic());
                fits.then(|| n.to_owned())
                    .ok_or_else(|| "must be 1 to 64 visible characters, no spaces".to_string())
            })?),
        };
        Ok(Self {
            database_url: Secret::new(database_url),
            durability,
            replica_name,
            lease,
            http_addr,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            commands_dir: PathBuf::from(
                var("BATON_COMMANDS_DIR").unwrap_or_else(|| "./commands".into()),
            ),
            console_token,
            console_users: list("BATON_CONSOLE_USERS", "ana,ben,cy,dee"),
            console_groups: match var("BATON_CONSOLE_GROUPS") {
                None => BTreeMap::new(),
                Some(text) => parse("BATON_CONSOLE_GROUPS", &text, console_groups)?,
            },
            console_channels: list("BATON_CONSOLE_CHANNELS", "general"),
            log_format,
            log_filter: var("BATON_LOG").unwrap_or_else(|| "info".into()),
            workers,
            poll_interval: to_std(duration("BATON_POLL_INTERVAL", "1s")?),
            stall_after: duration("BATON_STALL_AFTER", "1h")?,
            shutdown_grace: to_std(duration("BATON_SHUTDOWN_GRACE", "10s")?),
            delivery_alert_after: duration("BATON_DELIVERY_ALERT_AFTER", "10m")?,
            http_allow: HostAllowList {
                hosts: list("BATON_HTTP_ALLOW", "127.0.0.1"),
                allow_private,
                own: None,
            },
            webhooks,
            slack: SlackSettings::from_lookup(&var)?,
            discord: DiscordSettings::from_lookup(&var)?,
            models: model_settings(&var, to_std(duration("BATON_MODEL_TIMEOUT", "60s")?))?,
            extra_secrets: list("BATON_SECRETS", "")
                .into_iter()
                .map(Secret::new)
                .collect(),
            audit_key: match var("BATON_AUDIT_KEY") {
                None => None,
                Some(k) if k.chars().count() >= 16 => Some(Secret::new(k)),
                Some(_) => {
                    return Err(ConfigError {
                        setting: "BATON_AUDIT_KEY",
                        problem: "must be at least 16 characters (a long random string; keep it out of the database's reach)".into(),
                    });
                }
            },
            vars: get.clone(),
        })
    }

    /// The ledger's signing key, when one is set.
    pub fn audit_key(&self) -> Option<crate::core::audit::AuditKey> {
        self.audit_key
            .as_ref()
            .map(|k| crate::core::audit::AuditKey::new(k.expose().as_bytes()))
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Every secret value, for the ledger's redactor.
    pub fn secrets(&self) -> Vec<String> {
        let slack = self
            .slack
            .iter()
            .flat_map(|s| {
                [
                    Some(&s.bot_token),
                    s.app_token.as_ref(),
                    s.signing_secret.as_ref(),
                ]
            })
            .flatten();
        let mut out: Vec<String> = slack.map(|s| s.expose().to_owned()).collect();
        out.extend(self.discord.iter().map(|d| d.token.expose().to_owned()));
        out.extend(
            [&self.models.openai, &self.models.anthropic]
                .into_iter()
                .flatten()
                .filter_map(|e| e.api_key.as_ref())
                .map(|k| k.expose().to_owned()),
        );
        out.extend(self.webhooks.values().map(|s| s.expose().to_owned()));
        out.extend(self.console_token.iter().map(|s| s.expose().to_owned()));
        out.extend(self.extra_secrets.iter().map(|s| s.expose().to_owned()));
        out.extend(self.audit_key.iter().map(|s| s.expose().to_owned()));
        // A database URL carries a password only with a scheme like postgres://user:pw@host.
        if let Ok(u) = reqwest::Url::parse(self.database_url.expose())
            && let Some(pw) = u.password()
        {
            out.push(pw.to_owned());
        }
        out
    }

    /// Tool settings for a server that reaches itself at `base_url`. With no `BATON_WEBHOOKS`,
    /// the `pager` endpoint is the console's inbox. `http.get` may always call Baton's own
    /// address, whatever the allow-list says.
    pub fn tool_settings(&self, base_url: &str) -> ToolSettings {
        let mut webhooks: BTreeMap<String, String> = self
            .webhooks
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect();
        if webhooks.is_empty() {
            let token = self
                .console_token
                .as_ref()
                .map(|t| format!("?token={}", t.expose()))
                .unwrap_or_default();
            webhooks.insert("pager".into(), format!("{base_url}/inbox/pager{token}"));
            webhooks.insert("crm".into(), format!("{base_url}/inbox/crm{token}"));
        }
        let own = reqwest::Url::parse(base_url)
            .ok()
            .and_then(|u| u.socket_addrs(|| None).ok())
            .and_then(|a| a.into_iter().next());
        ToolSettings {
            http_allow: HostAllowList {
                own,
                ..self.http_allow.clone()
            },
            webhooks,
        }
    }
}

/// `release=ben,cy;finance=dee`: groups by name, each with its members.
fn console_groups(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, members) = part
            .split_once('=')
            .ok_or("must be groups like release=ben,cy;finance=dee")?;
        let name = name.trim();
        if name.is_empty() || name.contains([':', ',', ' ']) {
            return Err(format!(
                "has a group name `{name}` that is empty or has `:`, `,` or a space"
            ));
        }
        let members: Vec<String> = members
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        out.insert(name.to_owned(), members);
    }
    Ok(out)
}

fn parse<T>(
    setting: &'static str,
    text: &str,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    f(text).map_err(|problem| ConfigError {
        setting,
        problem: format!("`{text}` {problem}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(move |k| map.get(k).cloned())
    }

    #[test]
    fn every_default_works() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database_url.expose(), "sqlite://baton.db");
        assert_eq!(s.commands_dir, PathBuf::from("./commands"));
        assert!(
            s.tool_settings("http://127.0.0.1:8080").webhooks["pager"].ends_with("/inbox/pager")
        );
    }

    #[test]
    fn durability_is_full_unless_relaxed_on_purpose() {
        use crate::store::Durability;
        assert_eq!(settings(&[]).unwrap().durability, Durability::Full);
        let relaxed = settings(&[("BATON_DURABILITY", "relaxed")]).unwrap();
        assert_eq!(relaxed.durability, Durability::Relaxed);
        let err = settings(&[("BATON_DURABILITY", "fast")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BATON_DURABILITY: `fast` is neither full nor relaxed"
        );
    }

    #[test]
    fn a_bad_setting_names_itself() {
        for (k, v) in [
            ("BATON_HTTP_ADDR", "nowhere"),
            ("BATON_WORKERS", "0"),
            ("BATON_LOG_FORMAT", "xml"),
            ("BATON_WEBHOOKS", "pager"),
            ("DATABASE_URL", "mysql://x"),
            ("BATON_POLL_INTERVAL", "soon"),
            ("BATON_DURABILITY", "sometimes"),
            ("BATON_LEASE", "100ms"),
            ("BATON_LEASE", "2h"),
            ("BATON_REPLICA_NAME", "two words"),
        ] {
            let err = settings(&[(k, v)]).unwrap_err();
            assert_eq!(err.setting, k, "{err}");
        }
    }

    #[test]
    fn a_replica_has_a_thirty_second_lease_and_the_name_it_is_given() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.lease, Duration::seconds(30));
        assert_eq!(s.replica_name, None);
        let s = settings(&[("BATON_REPLICA_NAME", "baton-2"), ("BATON_LEASE", "5s")]).unwrap();
        assert_eq!(s.replica_name.as_deref(), Some("baton-2"));
        assert_eq!(s.lease, Duration::seconds(5));
    }

    #[test]
    fn discord_settings_are_checked_and_a_bare_origin_gets_discords_api_path() {
        let d = settings(&[("DISCORD_TOKEN", "Bot abc.def")])
            .unwrap()
            .discord
            .unwrap();
        assert_eq!(d.token.expose(), "abc.def");
        assert_eq!(d.api_url.as_str(), "https://discord.com/api/v10/");
        assert!(d.guild_ids.is_empty());
        let d = settings(&[
            ("DISCORD_TOKEN", "t"),
            ("DISCORD_API_URL", "http://127.0.0.1:9"),
            ("DISCORD_GUILD_IDS", "1, 2"),
        ])
        .unwrap()
        .discord
        .unwrap();
        assert_eq!(d.api_url.as_str(), "http://127.0.0.1:9/api/v10/");
        assert_eq!(d.guild_ids, ["1", "2"]);
        let d = settings(&[
            ("DISCORD_TOKEN", "t"),
            ("DISCORD_API_URL", "http://localhost:9/discord"),
        ])
        .unwrap()
        .discord
        .unwrap();
        assert_eq!(d.api_url.as_str(), "http://localhost:9/discord/");
        let refused = |pairs: &[(&str, &str)]| settings(pairs).unwrap_err().setting;
        assert_eq!(
            refused(&[
                ("DISCORD_TOKEN", "t"),
                ("DISCORD_API_URL", "http://10.0.0.5/")
            ]),
            "DISCORD_API_URL"
        );
        assert_eq!(
            refused(&[("DISCORD_TOKEN", "t"), ("DISCORD_GUILD_IDS", "my-server")]),
            "DISCORD_GUILD_IDS"
        );
        assert_eq!(refused(&[("DISCORD_GUILD_IDS", "1")]), "DISCORD_TOKEN");
        assert_eq!(refused(&[("DISCORD_TOKEN", "two words")]), "DISCORD_TOKEN");
        let s = settings(&[("DISCORD_TOKEN", "sekrit.token")]).unwrap();
        assert!(s.secrets().iter().any(|x| x == "sekrit.token"));
    }

    #[test]
    fn slack_settings_are_checked_and_the_api_url_must_be_https_unless_loopback() {
        let base = [("SLACK_BOT_TOKEN", "xoxb-1"), ("SLACK_SIGNING_SECRET", "s")];
        let with = |extra: &[(&'static str, &'static str)]| settings(&[&base[..], extra].concat());
        let s = with(&[]).unwrap().slack.unwrap();
        assert_eq!(s.api_url.as_str(), "https://slack.com/api/");
        assert_eq!(
            with(&[("SLACK_API_URL", "http://127.0.0.1:9/api")])
                .unwrap()
                .slack
                .unwrap()
                .api_url
                .as_str(),
            "http://127.0.0.1:9/api/"
        );
        assert_eq!(
            with(&[("SLACK_API_URL", "http://proxy.internal/api/")])
                .unwrap_err()
                .setting,
            "SLACK_API_URL"
        );
        assert_eq!(
            settings(&[("SLACK_BOT_TOKEN", "xoxp-user")])
                .unwrap_err()
                .setting,
            "SLACK_BOT_TOKEN"
        );
        assert_eq!(
            settings(&[("SLACK_BOT_TOKEN", "xoxb-1")])
                .unwrap_err()
                .setting,
            "SLACK_APP_TOKEN"
        );
        assert!(
            settings(&[("SLACK_BOT_TOKEN", "xoxb-1"), ("SLACK_APP_TOKEN", "xapp-1")])
                .unwrap()
                .slack
                .unwrap()
                .signing_secret
                .is_none()
        );
        assert_eq!(
            settings(&[("SLACK_SIGNING_SECRET", "s")])
                .unwrap_err()
                .setting,
            "SLACK_BOT_TOKEN"
        );
        assert_eq!(
            with(&[("SLACK_APP_TOKEN", "xoxb-no")]).unwrap_err().setting,
            "SLACK_APP_TOKEN"
        );
        assert!(with(&[]).unwrap().secrets().contains(&"xoxb-1".to_owned()));
    }

    #[test]
    fn binding_beyond_loopback_requires_a_console_token() {
        let err = settings(&[("BATON_HTTP_ADDR", "0.0.0.0:8080")]).unwrap_err();
        assert_eq!(err.setting, "BATON_CONSOLE_TOKEN");
        assert!(
            settings(&[
                ("BATON_HTTP_ADDR", "0.0.0.0:8080"),
                ("BATON_CONSOLE_TOKEN", "0123456789abcdef")
            ])
            .is_ok()
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = settings(&[(
            "BATON_WEBHOOKS",
            "pager=https://hooks.example.com/T0/secret-path",
        )])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret-path"), "{shown}");
        assert!(s.secrets().iter().any(|x| x.contains("secret-path")));
    }

    #[test]
    fn console_groups_are_read_with_their_members_and_a_malformed_list_is_refused() {
        let s = settings(&[("BATON_CONSOLE_GROUPS", "release=ben, cy; finance=dee")]).unwrap();
        assert_eq!(s.console_groups["release"], ["ben", "cy"]);
        assert_eq!(s.console_groups["finance"], ["dee"]);
        let e = settings(&[("BATON_CONSOLE_GROUPS", "release")]).unwrap_err();
        assert_eq!(e.setting, "BATON_CONSOLE_GROUPS");
        assert!(settings(&[("BATON_CONSOLE_GROUPS", "a b=ben")]).is_err());
    }
}
