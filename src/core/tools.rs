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
    /// The arguments as a JSON Schema, for models that call the tool.
    pub parameters: serde_json::Value,
    /// Only agents call it (memory, run context): a tool step cannot.
    pub agent_only: bool,
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
        use serde_json::json;
        let tool = |name: &str,
                    capability,
                    description: &str,
                    parameters: serde_json::Value,
                    agent_only| {
            let required_args = parameters["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect();
            ToolInfo {
                name: name.into(),
                capability,
                description: description.into(),
                required_args,
                parameters,
                agent_only,
            }
        };
        let tools = [
            tool(
                "http.get",
                Capability::Read,
                "GET a URL whose host is on BATON_HTTP_ALLOW",
                json!({"type": "object", "properties": {"url": {"type": "string", "description": "The URL to read"}}, "required": ["url"]}),
                false,
            ),
            tool(
                "webhook.post",
                Capability::External,
                "POST JSON to a webhook endpoint named in BATON_WEBHOOKS",
                json!({"type": "object", "properties": {"endpoint": {"type": "string"}, "body": {"type": "object"}}, "required": ["endpoint", "body"]}),
                false,
            ),
            tool(
                "memory.read",
                Capability::Read,
                "Read the shared memory: one entry by namespace and key, or a namespace's newest entries without a key. Each entry says which run, step and agent wrote it, and when.",
                json!({"type": "object", "properties": {"namespace": {"type": "string", "description": "e.g. company"}, "key": {"type": "string", "description": "e.g. acme.com"}}, "required": ["namespace"]}),
                true,
            ),
            tool(
                "memory.write",
                Capability::WriteInternal,
                "Write an entry to the shared memory, replacing what the key held. Later runs can read it.",
                json!({"type": "object", "properties": {"namespace": {"type": "string"}, "key": {"type": "string"}, "value": {"description": "Any JSON value"}}, "required": ["namespace", "key", "value"]}),
                true,
            ),
            tool(
                "run.context",
                Capability::Read,
                "Read this run's inputs and the outputs of its earlier steps (one step by id, or all).",
                json!({"type": "object", "properties": {"step": {"type": "string", "description": "A step id; leave out for all"}}}),
                true,
            ),
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
