//! The catalogue of tools the engine knows, with each tool's capability class. Implementations
//! live outside the core (`src/tools/`); the core only decides what may run.

use crate::core::workflow::McpServer;
use std::borrow::Cow;
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

impl Capability {
    /// The class named as in workflow and MCP files: `read`, `write-internal`, `external`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Capability::Read),
            "write-internal" => Some(Capability::WriteInternal),
            "external" => Some(Capability::External),
            _ => None,
        }
    }
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
    /// For a tool from an MCP server: where it comes from.
    pub mcp: Option<McpOrigin>,
}

/// Which MCP server a tool belongs to, and its name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpOrigin {
    pub server: String,
    pub tool: String,
    /// Why the server's tools could not be listed, when they could not: the tool is then
    /// taken on trust by name, with the class the server's file gives it.
    pub unlisted: Option<String>,
}

/// A tool as an MCP server lists it.
#[derive(Debug, Clone)]
pub struct ListedTool {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
}

/// Every tool available to workflows.
#[derive(Debug, Clone)]
pub struct ToolCatalog {
    tools: BTreeMap<String, ToolInfo>,
    /// MCP servers whose tools could not be listed, with why: any `SERVER.tool` name is
    /// accepted for them.
    unlisted: BTreeMap<String, (McpServer, String)>,
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
                mcp: None,
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
            unlisted: BTreeMap::new(),
        }
    }

    /// Adds an MCP server's tools as `SERVER.tool`, each with the class the server's file
    /// gives it; or, when they could not be listed, remembers why and takes names on trust.
    pub fn with_mcp(mut self, server: &McpServer, listed: Result<Vec<ListedTool>, String>) -> Self {
        match listed {
            Ok(tools) => {
                for t in tools {
                    let name = format!("{}.{}", server.name, t.name);
                    let required_args = t.input_schema["required"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect();
                    let info = ToolInfo {
                        name: name.clone(),
                        capability: server.class_of(&t.name),
                        description: t.description,
                        required_args,
                        parameters: t.input_schema,
                        agent_only: false,
                        mcp: Some(McpOrigin {
                            server: server.name.clone(),
                            tool: t.name,
                            unlisted: None,
                        }),
                    };
                    self.tools.insert(name, info);
                }
            }
            Err(why) => {
                self.unlisted
                    .insert(server.name.clone(), (server.clone(), why));
            }
        }
        self
    }

    /// The tool called `name`: a built-in, a listed MCP tool, or a tool of an MCP server that
    /// could not be listed (see [`McpOrigin::unlisted`]).
    pub fn get(&self, name: &str) -> Option<Cow<'_, ToolInfo>> {
        if let Some(t) = self.tools.get(name) {
            return Some(Cow::Borrowed(t));
        }
        let (server, tool) = name.split_once('.')?;
        let (def, why) = self.unlisted.get(server)?;
        if tool.is_empty() {
            return None;
        }
        Some(Cow::Owned(ToolInfo {
            name: name.to_owned(),
            capability: def.class_of(tool),
            description: format!("`{tool}` from the MCP server `{server}`"),
            required_args: Vec::new(),
            parameters: serde_json::json!({"type": "object"}),
            agent_only: false,
            mcp: Some(McpOrigin {
                server: server.to_owned(),
                tool: tool.to_owned(),
                unlisted: Some(why.clone()),
            }),
        }))
    }

    /// MCP servers whose tools could not be listed, with why.
    pub fn unlisted_servers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.unlisted
            .iter()
            .map(|(name, (_, why))| (name.as_str(), why.as_str()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}
