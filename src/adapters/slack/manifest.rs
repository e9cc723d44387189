//! `baton slack manifest`: a Slack app manifest built from `commands/`, ready for "Create New
//! App → From an app manifest".

use crate::core::workflow::WorkflowSet;
use serde_json::{Value, json};

/// Bot scopes Baton needs, each for a reason.
pub const BOT_SCOPES: &[&str] = &[
    "chat:write",        // post and edit progress threads, approvals, summaries
    "chat:write.public", // post digests and notifications in public channels it has not joined
    "commands",          // slash commands
    "app_mentions:read", // mention triggers
    "channels:history",  // message-pattern triggers in public channels
    "groups:history",    // … and in private channels it was invited to
    "channels:read",     // resolve channel names in workflows to IDs
    "groups:read",
    "users:read",      // show people by name
    "usergroups:read", // user groups as approvers
];

/// Scopes without which Baton cannot work at all; start-up stops when one is missing.
pub const REQUIRED_SCOPES: &[&str] = &[
    "chat:write",
    "commands",
    "app_mentions:read",
    "channels:history",
    "channels:read",
    "groups:read",
];

/// Builds the manifest. With `public_url`, Slack sends events, commands and clicks to Baton's
/// HTTP endpoints there; without, the app is set up for Socket Mode.
pub fn manifest(workflows: &WorkflowSet, public_url: Option<&str>) -> Value {
    let base = public_url.map(|u| u.trim_end_matches('/').to_owned());
    let mut commands: Vec<Value> = workflows
        .iter()
        .filter_map(|w| {
            let s = w.slash()?;
            let hint = s.usage.strip_prefix(&format!("/{}", s.command)).unwrap_or("").trim().to_owned();
            let description = if w.description.is_empty() { w.name.clone() } else { w.description.chars().take(100).collect() };
            Some((s.command.clone(), description, hint))
        })
        .chain(std::iter::once(("baton".to_owned(), "Baton: cancel a run, help".to_owned(), "cancel <run> | help".to_owned())))
        .map(|(command, description, hint)| {
            let mut c = json!({"command": format!("/{command}"), "description": description, "should_escape": false});
            if !hint.is_empty() {
                c["usage_hint"] = Value::String(hint);
            }
            if let Some(base) = &base {
                c["url"] = Value::String(format!("{base}/slack/commands"));
            }
            c
        })
        .collect();
    commands.sort_by(|a, b| a["command"].as_str().cmp(&b["command"].as_str()));
    let mut events = json!({"bot_events": ["app_mention", "message.channels", "message.groups"]});
    let mut interactivity = json!({"is_enabled": true});
    if let Some(base) = &base {
        events["request_url"] = Value::String(format!("{base}/slack/events"));
        interactivity["request_url"] = Value::String(format!("{base}/slack/interactions"));
    }
    json!({
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": "Baton",
            "description": "Runs your team's workflows and agents, with approvals and an audit ledger.",
            "background_color": "#3f0e40"
        },
        "features": {
            "bot_user": {"display_name": "baton", "always_online": true},
            "slash_commands": commands
        },
        "oauth_config": {"scopes": {"bot": BOT_SCOPES}},
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": false,
            "socket_mode_enabled": base.is_none(),
            "token_rotation_enabled": false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tools::ToolCatalog;
    use std::path::Path;

    #[test]
    fn the_manifest_lists_every_command_scope_and_endpoint() {
        let (set, _) = crate::core::workflow::load_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("commands"),
            &ToolCatalog::builtin(),
        )
        .unwrap();
        let m = manifest(&set, Some("https://baton.example.com/"));
        let commands: Vec<&str> = m["features"]["slash_commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["command"].as_str().unwrap())
            .collect();
        assert_eq!(
            commands,
            [
                "/baton",
                "/demo",
                "/digest",
                "/incident",
                "/lead",
                "/triage"
            ]
        );
        let demo = &m["features"]["slash_commands"][1];
        assert_eq!(demo["usage_hint"], "[topic]");
        assert_eq!(demo["url"], "https://baton.example.com/slack/commands");
        assert_eq!(
            m["settings"]["event_subscriptions"]["request_url"],
            "https://baton.example.com/slack/events"
        );
        assert_eq!(
            m["settings"]["interactivity"]["request_url"],
            "https://baton.example.com/slack/interactions"
        );
        assert_eq!(m["settings"]["socket_mode_enabled"], false);
        assert!(
            m["oauth_config"]["scopes"]["bot"]
                .as_array()
                .unwrap()
                .contains(&json!("chat:write"))
        );
        let socket = manifest(&set, None);
        assert_eq!(socket["settings"]["socket_mode_enabled"], true);
        assert!(socket["features"]["slash_commands"][0].get("url").is_none());
    }
}
