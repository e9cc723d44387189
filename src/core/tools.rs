//! The catalogue of tools the engine knows, with each tool's capability class. Implementations
//! live outside the core (`src/tools/`); the core only decides what may run.

use std::collections::BTreeMap;
use std::fmt;

/// What a tool can touch. The engine's rules depend on it, never the prompt's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// Reads information; no side effects outside Baton.
    Read,
    /// Changes Baton's own state (memory, notes).
    WriteInternal,
    /// Acts on the outside world (sends, posts, pays). Needs an approval before it by default.
    External,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Read => "read",
            Capability::WriteInternal => "write-internal",
            Capability::External => "external",
        })
    }
}

/// What the engine knows about one tool.
#[derive(Debug, Clone)]
pub struct ToolInfo {
    pub name: String,
    pub capability: Capability,
    pub description: String,
    /// Arguments the tool requires.
    pub required_args: Vec<String>,
}

/// Every tool available to workflows.
#[derive(Debug, Clone)]
pub struct ToolCatalog {
    tools: BTreeMap<String, ToolInfo>,
}

impl Default for ToolCatalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl ToolCatalog {
    /// The tools every installation has.
    pub fn builtin() -> Self {
        let tools = [
            ToolInfo {
                name: "http.get".into(),
                capability: Capability::Read,
                description: "GET a URL whose host is on BATON_HTTP_ALLOW".into(),
                required_args: vec!["url".into()],
            },
            ToolInfo {
                name: "webhook.post".into(),
                capability: Capability::External,
                description: "POST JSON to a webhook endpoint named in BATON_WEBHOOKS".into(),
                required_args: vec!["endpoint".into(), "body".into()],
            },
        ];
        Self {
            tools: tools.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&ToolInfo> {
        self.tools.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}
