//! Entry points for the fuzz targets in `fuzz/` (and for the seed-corpus test that runs them
//! in the test command): each feeds arbitrary bytes to one reader of input Baton does not
//! control, the same functions the adapters and the workflow loader use. None may panic,
//! loop, or take more than a moment on any input.

use crate::adapters::{discord, payload, slack};
use crate::core::event::EventKind;
use crate::core::tools::ToolCatalog;
use crate::core::trigger::{self, MessageFacts};
use crate::core::workflow::{WorkflowSet, parse_workflow};
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

/// The bot's own user id, as the readers are given it.
const ME: &str = "UBATON01";

/// A workflow file (`commands/*.toml`) and an MCP server file (`commands/mcp/*.toml`).
pub fn workflow(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let catalog = ToolCatalog::builtin();
    let (wf, diagnostics) = parse_workflow(Path::new("fuzz.toml"), text, &catalog);
    // Every diagnostic names a line that exists.
    let lines = text.lines().count().max(1);
    for d in &diagnostics {
        assert!(d.line <= lines + 1, "line {} of {lines}: {d}", d.line);
    }
    if let Some(wf) = wf {
        // What parsed can be matched against.
        let set = WorkflowSet::new([wf]);
        for text in ["", "x", "a b c"] {
            let _ = trigger::match_slash(&set, "x", text, None);
        }
    }
    let _ = crate::core::workflow::parse_mcp_server(Path::new("fuzz.toml"), text, &|_| {
        Some("value".into())
    });
}

/// A Slack Socket Mode frame, an Events API body, a slash command form and an interaction.
pub fn slack(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = slack::socket::read_frame(ME, text);
    // An unreadable frame's id is found by a scan: it is text of the frame itself.
    if let (Some(id), slack::socket::FrameKind::Unreadable { .. }) =
        (&frame.envelope_id, &frame.what)
    {
        assert!(
            text.contains(id.as_str()),
            "an envelope id comes from the frame"
        );
    }
    if let slack::socket::FrameKind::Events(events) = &frame.what {
        for (event, _) in events {
            assert!(event.id.starts_with("slack:"));
        }
    }
    let _ = payload::parse::<slack_morphism::prelude::SlackPushEvent>(text);
    if let Ok(v) = payload::parse::<Value>(text) {
        let _ = slack::inbound::read_interaction(&v);
    }
    let _ = serde_urlencoded::from_str::<Vec<(String, String)>>(text);
}

/// A Discord gateway frame and the dispatches in it.
pub fn discord(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = payload::parse::<Value>(text) else {
        return;
    };
    let kind = frame["t"].as_str().unwrap_or_default();
    let _ = discord::inbound::read_dispatch("1098765432109876543", kind, &frame["d"]);
    for kind in ["MESSAGE_CREATE", "INTERACTION_CREATE"] {
        let _ = discord::inbound::read_dispatch("1098765432109876543", kind, &frame);
    }
}

/// The workflows the console body target matches commands and messages against.
fn examples() -> &'static WorkflowSet {
    static SET: OnceLock<WorkflowSet> = OnceLock::new();
    SET.get_or_init(|| {
        let catalog = ToolCatalog::builtin();
        let files = [
            include_str!("../commands/demo.toml"),
            include_str!("../commands/incident.toml"),
        ];
        WorkflowSet::new(
            files
                .into_iter()
                .filter_map(|text| parse_workflow(Path::new("example.toml"), text, &catalog).0),
        )
    })
}

/// A console API body: a message (matched against the example workflows, as a command or a
/// message) and a click.
pub fn console(data: &[u8]) {
    use crate::adapters::console::inbound::{Click, SendMessage, client_id, message_kind};
    if let Ok(m) = serde_json::from_slice::<SendMessage>(data) {
        let _ = client_id(m.client_id.as_deref());
        match message_kind(m.text.trim()) {
            EventKind::Slash { command, text, .. } => {
                let _ = trigger::match_slash(examples(), &command, &text, None);
            }
            EventKind::Message { text, mentions_bot } => {
                let facts = MessageFacts {
                    channel: &m.channel,
                    text: &text,
                    mentions_bot,
                    from_bot: false,
                    in_thread: m.thread_id.is_some(),
                };
                let _ = trigger::match_message(examples(), facts);
            }
            _ => {}
        }
    }
    if let Ok(c) = serde_json::from_slice::<Click>(data) {
        let _ = client_id(c.client_id.as_deref());
        let _ = c.action.parse::<crate::core::ids::ActionId>();
    }
}
