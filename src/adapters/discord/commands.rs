//! Slash-command registration: every slash trigger in `commands/` plus `/baton`, to the guilds
//! in `DISCORD_GUILD_IDS` (they appear at once) or globally. What Discord already has is read
//! first and compared by shape (names, descriptions, option types, required flags, choices);
//! when nothing changed nothing is written, so restarts cause no churn and no rate limiting.

use super::Discord;
use super::api::DiscordError;
use crate::core::workflow::{ArgType, SlashTrigger, Trigger, WorkflowSet};
use anyhow::Context as _;
use serde_json::{Value, json};
use serenity::all::{CommandOptionType, InstallationContext, InteractionContext};
use serenity::builder::{CreateCommand, CreateCommandOption};
use std::time::Duration;

/// The permissions Baton needs where it works: View Channels, Send Messages, Embed Links, Read
/// Message History, Create Public Threads, Send Messages in Threads.
pub const PERMISSIONS: u64 = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 16) | (1 << 35) | (1 << 38);

/// The link that adds the bot to a server with its slash commands and those permissions.
pub fn invite_url(application_id: &str) -> String {
    format!(
        "https://discord.com/oauth2/authorize?client_id={application_id}&scope=bot+applications.commands&permissions={PERMISSIONS}"
    )
}

/// The application (bot user) ID a bot token starts with: its first part is that ID in
/// base64.
pub fn application_id_of(token: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let first = token.split('.').next()?;
    let (mut bits, mut count, mut out) = (0u32, 0u32, Vec::new());
    for c in first.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    let id = String::from_utf8(out).ok()?;
    super::is_snowflake(&id).then_some(id)
}

/// Discord's limits on commands.
const DESCRIPTION_LIMIT: usize = 100;
const OPTION_LIMIT: usize = 25;
const CHOICE_LIMIT: usize = 25;

/// Whether Discord takes this as a command or option name: lowercase letters, digits, `-`
/// and `_`, 1 to 32 of them.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
        && name.chars().all(|c| {
            c == '-' || c == '_' || c.is_numeric() || (c.is_alphabetic() && !c.is_uppercase())
        })
}

fn description(text: &str, fallback: &str) -> String {
    let text = text.trim();
    let text = if text.is_empty() { fallback } else { text };
    text.chars().take(DESCRIPTION_LIMIT).collect()
}

fn option(arg: &crate::core::workflow::ArgSpec) -> CreateCommandOption {
    let kind = match arg.ty {
        ArgType::String | ArgType::Choice(_) => CommandOptionType::String,
        ArgType::Int => CommandOptionType::Integer,
        ArgType::Number => CommandOptionType::Number,
        ArgType::Bool => CommandOptionType::Boolean,
    };
    let mut o = CreateCommandOption::new(kind, &arg.name, description(&arg.description, &arg.name))
        .required(arg.required);
    // More choices than Discord lists are still checked by Baton when the command arrives.
    if let ArgType::Choice(choices) = &arg.ty
        && choices.len() <= CHOICE_LIMIT
        && choices
            .iter()
            .all(|c| (1..=100).contains(&c.chars().count()))
    {
        for c in choices {
            o = o.add_string_choice(c, c);
        }
    }
    o
}

fn command(name: &str, about: &str, slash: &SlashTrigger) -> Option<CreateCommand> {
    if !valid_name(name) {
        tracing::warn!(
            command = name,
            "not registered on Discord: command names there are 1-32 lowercase letters, digits, - or _"
        );
        return None;
    }
    if let Some(bad) = slash.args.iter().find(|a| !valid_name(&a.name)) {
        tracing::warn!(command = name, argument = %bad.name, "not registered on Discord: argument names there are 1-32 lowercase letters, digits, - or _");
        return None;
    }
    if slash.args.len() > OPTION_LIMIT {
        tracing::warn!(
            command = name,
            "not registered on Discord: it takes at most 25 arguments"
        );
        return None;
    }
    // Discord lists required options before optional ones.
    let mut args: Vec<_> = slash.args.iter().collect();
    args.sort_by_key(|a| !a.required);
    Some(
        CreateCommand::new(name)
            .description(description(about, &format!("Run /{name}")))
            .contexts(vec![InteractionContext::Guild])
            .integration_types(vec![InstallationContext::Guild])
            .set_options(args.into_iter().map(option).collect()),
    )
}

/// The commands Baton should have on Discord, as JSON bodies.
pub fn desired(workflows: &WorkflowSet) -> Vec<Value> {
    let mut out: Vec<CreateCommand> = workflows
        .iter()
        .flat_map(|wf| {
            wf.triggers.iter().filter_map(move |t| match t {
                Trigger::Slash(s) => command(&s.command, &wf.description, s),
                _ => None,
            })
        })
        .collect();
    out.push(
        CreateCommand::new("baton")
            .description("Baton: cancel a run, or list the commands")
            .contexts(vec![InteractionContext::Guild])
            .integration_types(vec![InstallationContext::Guild])
            .add_option(
                CreateCommandOption::new(CommandOptionType::SubCommand, "cancel", "Cancel a run")
                    .add_sub_option(
                        CreateCommandOption::new(
                            CommandOptionType::Integer,
                            "run",
                            "The run's number",
                        )
                        .required(true),
                    ),
            )
            .add_option(CreateCommandOption::new(
                CommandOptionType::SubCommand,
                "help",
                "List the commands",
            )),
    );
    out.into_iter()
        .map(|c| serde_json::to_value(c).expect("a command serializes"))
        .collect()
}

/// What decides whether two command lists are the same for people using them.
fn shape(commands: &Value) -> Vec<Value> {
    fn option(o: &Value) -> Value {
        json!({
            "type": o["type"],
            "name": o["name"],
            "description": o["description"],
            "required": o["required"].as_bool().unwrap_or(false),
            "choices": o["choices"].as_array().map(|cs| cs.iter().map(|c| json!([c["name"], c["value"]])).collect::<Vec<_>>()).unwrap_or_default(),
            "options": o["options"].as_array().map(|os| os.iter().map(option).collect::<Vec<_>>()).unwrap_or_default(),
        })
    }
    let mut out: Vec<Value> = commands
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "type": c["type"].as_u64().unwrap_or(1),
                "name": c["name"],
                "description": c["description"],
                // Where the command may be used, and by which install: Baton's are guild-only.
                "contexts": c["contexts"],
                "integration_types": c["integration_types"],
                "options": c["options"].as_array().map(|os| os.iter().map(option).collect::<Vec<_>>()).unwrap_or_default(),
            })
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

/// Registers the commands where they belong, writing only what changed.
pub async fn register(discord: &Discord, workflows: &WorkflowSet) -> anyhow::Result<()> {
    let app = discord
        .application_id()
        .context("the Discord application ID is not known yet")?;
    let wanted = Value::Array(desired(workflows));
    let targets: Vec<(String, String)> = if discord.settings.guild_ids.is_empty() {
        vec![(
            format!("applications/{app}/commands"),
            "globally".to_owned(),
        )]
    } else {
        discord
            .settings
            .guild_ids
            .iter()
            .map(|g| {
                (
                    format!("applications/{app}/guilds/{g}/commands"),
                    format!("in guild {g}"),
                )
            })
            .collect()
    };
    for (path, place) in targets {
        let explain = |e: DiscordError| match e {
            DiscordError::Api { status: 403, .. } => anyhow::anyhow!(
                "Discord refused Baton's slash commands {place} ({e}): invite the bot with the applications.commands scope (README → Discord setup)"
            ),
            e => anyhow::anyhow!("registering slash commands {place}: {e}"),
        };
        // Without the current list nothing can be compared: then the list is written.
        match with_retries(|| discord.api.get(&path)).await {
            Ok(current) if shape(&current) == shape(&wanted) => {
                tracing::info!(place = %place, "Discord slash commands unchanged");
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, place = %place, "could not read the registered slash commands")
            }
        }
        with_retries(|| discord.api.put(&path, &wanted))
            .await
            .map_err(explain)?;
        tracing::info!(place = %place, commands = wanted.as_array().map_or(0, Vec::len), "registered Discord slash commands");
    }
    // Moving from global commands to guild ones would otherwise list every command twice.
    if !discord.settings.guild_ids.is_empty() {
        let global = format!("applications/{app}/commands");
        match discord.api.get(&global).await {
            Ok(Value::Array(old)) if !old.is_empty() => {
                let none = json!([]);
                match with_retries(|| discord.api.put(&global, &none)).await {
                    Ok(_) => tracing::info!(
                        removed = old.len(),
                        "removed global slash commands registered before DISCORD_GUILD_IDS was set"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not remove the old global slash commands")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the global slash commands"),
        }
    }
    Ok(())
}

/// Start-up calls wait out a rate limit or a hiccup a few times before giving up.
async fn with_retries<F, Fut>(mut call: F) -> Result<Value, DiscordError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value, DiscordError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if !e.is_permanent() && attempt < 4 => {
                attempt += 1;
                let wait = match e {
                    DiscordError::RateLimited(w) | DiscordError::BucketEmpty(w) => {
                        w.min(Duration::from_secs(60))
                    }
                    _ => Duration::from_millis(500 * attempt),
                };
                tracing::warn!(error = %e, ?wait, "retrying a Discord call");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_application_id_is_read_from_the_token_and_goes_into_the_invite() {
        assert_eq!(
            application_id_of("MTA5ODc2NTQzMjEwOTg3NjU0Mw.GxYzAb.secret").as_deref(),
            Some("1098765432109876543")
        );
        assert_eq!(application_id_of("not a token"), None);
        let url = invite_url("1098765432109876543");
        assert!(url.contains("scope=bot+applications.commands"));
        assert!(url.contains("permissions=309237730304"), "{url}");
    }

    #[test]
    fn names_follow_discords_rules() {
        assert!(valid_name("incident"));
        assert!(valid_name("daily-digest_2"));
        assert!(!valid_name("Incident"));
        assert!(!valid_name("two words"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"x".repeat(33)));
    }

    #[test]
    fn a_listing_with_discords_extra_fields_has_the_same_shape() {
        let wanted = json!([{"name": "demo", "description": "Demo", "options": [{"type": 3, "name": "who", "description": "who", "required": false}]}]);
        let listed = json!([{"id": "1", "application_id": "2", "version": "3", "type": 1, "name": "demo", "description": "Demo", "default_member_permissions": null, "nsfw": false, "options": [{"type": 3, "name": "who", "description": "who"}]}]);
        assert_eq!(shape(&wanted), shape(&listed));
        let changed = json!([{"type": 1, "name": "demo", "description": "Demo!", "options": [{"type": 3, "name": "who", "description": "who"}]}]);
        assert_ne!(shape(&wanted), shape(&changed));
    }
}
