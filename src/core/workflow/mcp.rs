//! MCP servers as declared in `commands/mcp/*.toml`: how to reach each one and the capability
//! class of each of its tools. Connecting is not the core's business (`src/tools/mcp.rs`
//! does it); the core decides which class a tool has, and the class comes from this file,
//! never from what the server says about itself.

use super::parse::{Report, toml_files};
use super::{Diagnostic, parse_duration};
use crate::core::tools::Capability;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// How long one tool call may take unless the file says otherwise.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting (starting the process, the handshake, listing tools) may take.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Tool names the built-in tools use; a server named like one would shadow them.
const RESERVED: [&str; 4] = ["http", "webhook", "memory", "run"];

/// One MCP server Baton may call tools on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    /// Its tools are `NAME.tool` in workflows and agents.
    pub name: String,
    pub transport: McpTransport,
    /// Capability classes by the server's own tool name.
    pub classes: BTreeMap<String, Capability>,
    /// The class of every tool `classes` does not name: external unless `"*"` says otherwise.
    pub default_class: Capability,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// The values `${VAR}` references expanded to, for the ledger's redaction.
    pub secrets: Vec<String>,
    pub file: PathBuf,
}

/// How Baton reaches a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A process Baton starts and talks to over stdin and stdout. It gets only `env` (plus
    /// PATH, HOME and the locale), not Baton's own environment with its tokens.
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A server reached over MCP's streamable HTTP transport.
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

impl McpServer {
    /// The class the file gives `tool`.
    pub fn class_of(&self, tool: &str) -> Capability {
        self.classes
            .get(tool)
            .copied()
            .unwrap_or(self.default_class)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    tools: BTreeMap<String, Spanned<String>>,
}

/// Reads `dir/*.toml`, one server per file, named by `name` or by the file. `env` looks up
/// the variables `${VAR}` refers to. A missing directory means no servers.
pub fn load_mcp_servers(
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::io::Result<(Vec<McpServer>, Vec<Diagnostic>)> {
    let mut servers: Vec<McpServer> = Vec::new();
    let mut diagnostics = Vec::new();
    for file in toml_files(dir) {
        let text = std::fs::read_to_string(&file)?;
        let (server, mut found) = parse_mcp_server(&file, &text, env);
        if let Some(server) = server {
            if let Some(first) = servers.iter().find(|s| s.name == server.name) {
                let mut r = Report::new(&file, &text);
                r.error(
                    0,
                    format!(
                        "MCP server `{}` is also defined in {}",
                        server.name,
                        first.file.display()
                    ),
                );
                found.extend(r.into_diagnostics());
            } else {
                servers.push(server);
            }
        }
        diagnostics.extend(found);
    }
    Ok((servers, diagnostics))
}

/// One MCP server file's text as a server, with what is wrong with it (file and line).
pub fn parse_mcp_server(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<McpServer>, Vec<Diagnostic>) {
    let mut r = Report::new(file, text);
    let server = match toml::from_str::<RawServer>(text) {
        Err(e) => {
            r.error(
                e.span().map(|s| s.start).unwrap_or(0),
                e.message().to_string(),
            );
            None
        }
        Ok(raw) => build(&mut r, file, raw, env),
    };
    (server, r.into_diagnostics())
}

fn build(
    r: &mut Report<'_>,
    file: &Path,
    raw: RawServer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<McpServer> {
    let errors_before = r.error_count();
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let (name, name_at) = match &raw.name {
        Some(n) => (n.get_ref().clone(), n.span().start),
        None => (stem, 0),
    };
    let valid_name = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid_name {
        r.error(
            name_at,
            format!(
                "MCP server name `{name}` must be lowercase letters, digits, `_` or `-`, starting with a letter, at most 32 characters (its tools are `{name}.TOOL`)"
            ),
        );
    } else if RESERVED.contains(&name.as_str()) {
        r.error(
            name_at,
            format!("MCP server name `{name}` is taken by the built-in `{name}.*` tools"),
        );
    }
    let mut secrets = Vec::new();
    let mut expand = |r: &mut Report<'_>, value: &Spanned<String>| -> String {
        match expand_vars(value.get_ref(), env) {
            Ok((text, used)) => {
                secrets.extend(used);
                text
            }
            Err(e) => {
                r.error(value.span().start, e);
                String::new()
            }
        }
    };
    let transport = match (&raw.command, &raw.url) {
        (Some(command), None) => {
            if !raw.headers.is_empty() {
                r.error(
                    0,
                    "`headers` is for servers reached by `url`; a `command` server gets `env`",
                );
            }
            if command.get_ref().trim().is_empty() {
                r.error(command.span().start, "`command` is empty");
            }
            let env_vars = raw
                .env
                .iter()
                .map(|(k, v)| (k.clone(), expand(r, v)))
                .collect();
            McpTransport::Stdio {
                command: command.get_ref().clone(),
                args: raw.args.iter().map(|a| a.get_ref().clone()).collect(),
                env: env_vars,
            }
        }
        (None, Some(url)) => {
            if !raw.args.is_empty() || !raw.env.is_empty() {
                r.error(
                    0,
                    "`args` and `env` are for servers Baton starts with `command`; a `url` server gets `headers`",
                );
            }
            if let Err(e) = check_url(url.get_ref()) {
                r.error(url.span().start, e);
            }
            let headers = raw
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), expand(r, v)))
                .collect();
            McpTransport::Http {
                url: url.get_ref().clone(),
                headers,
            }
        }
        (Some(_), Some(url)) => {
            r.error(
                url.span().start,
                "give either `command` (a server Baton starts) or `url` (a streamable HTTP server), not both",
            );
            return None;
        }
        (None, None) => {
            r.error(
                0,
                "an MCP server needs `command` (a server Baton starts) or `url` (a streamable HTTP server)",
            );
            return None;
        }
    };
    let duration = |r: &mut Report<'_>, d: &Option<Spanned<String>>, default| match d {
        None => default,
        Some(d) => match parse_duration(d.get_ref()).map(|d| d.to_std()) {
            Ok(Ok(d)) => d,
            Ok(Err(_)) | Err(_) => {
                r.error(
                    d.span().start,
                    format!("`{}` is not a duration like 30s or 2m", d.get_ref()),
                );
                default
            }
        },
    };
    let call_timeout = duration(r, &raw.timeout, DEFAULT_CALL_TIMEOUT);
    let connect_timeout = duration(r, &raw.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    let mut classes = BTreeMap::new();
    let mut default_class = Capability::External;
    for (tool, class) in &raw.tools {
        let Some(capability) = Capability::parse(class.get_ref()) else {
            r.error(
                class.span().start,
                format!(
                    "`{}` is not a capability class: use read, write-internal or external",
                    class.get_ref()
                ),
            );
            continue;
        };
        if tool == "*" {
            default_class = capability;
        } else {
            classes.insert(tool.clone(), capability);
        }
    }
    (r.error_count() == errors_before).then(|| McpServer {
        name,
        transport,
        classes,
        default_class,
        call_timeout,
        connect_timeout,
        secrets,
        file: file.to_path_buf(),
    })
}

/// Replaces each `${VAR}` with the variable's value, returning the text and the values used.
/// `$$` is a literal `$`. A variable that is not set is an error naming it.
fn expand_vars(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), String> {
    let mut out = String::new();
    let mut used = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("`{text}`: `${{` without a closing `}}`"))?;
            let var = &after[..end];
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{var}}}` is not an environment variable name"));
            }
            let value = env(var).ok_or_else(|| {
                format!("environment variable {var} is not set (set it in .env or the environment)")
            })?;
            out.push_str(&value);
            used.push(value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok((out, used))
}

/// `https://`, or `http://` to this machine only: a bearer token must not cross a network in
/// the clear.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "`{url}`: use https:// (http:// is accepted only for this machine)"
                ))
            }
        }
        other => Err(format!(
            "`{url}`: an MCP server URL is https://, not {other}://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> (Vec<McpServer>, Vec<Diagnostic>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let env = |k: &str| (k == "GH_TOKEN").then(|| "ghp_secret123".to_owned());
        load_mcp_servers(dir.path(), &env).unwrap()
    }

    #[test]
    fn a_stdio_server_gets_its_env_expanded_and_tools_default_to_external() {
        let (servers, diags) = load(&[(
            "github.toml",
            "command = \"npx\"\nargs = [\"-y\", \"server-github\"]\nenv = { TOKEN = \"${GH_TOKEN}\", PRICE = \"$$5\" }\ntimeout = \"2m\"\n[tools]\nsearch = \"read\"\n",
        )]);
        assert!(diags.is_empty(), "{diags:?}");
        let s = &servers[0];
        assert_eq!(s.name, "github");
        assert_eq!(
            s.transport,
            McpTransport::Stdio {
                command: "npx".into(),
                args: vec!["-y".into(), "server-github".into()],
                env: [
                    ("PRICE".to_owned(), "$5".to_owned()),
                    ("TOKEN".to_owned(), "ghp_secret123".to_owned())
                ]
                .into()
            }
        );
        assert_eq!(s.class_of("search"), Capability::Read);
        assert_eq!(s.class_of("create_issue"), Capability::External);
        assert_eq!(s.call_timeout, Duration::from_secs(120));
        assert_eq!(s.secrets, vec!["ghp_secret123".to_owned()]);
    }

    #[test]
    fn a_star_entry_changes_the_default_class() {
        let (servers, diags) = load(&[(
            "docs.toml",
            "url = \"https://mcp.example.com/mcp\"\nheaders = { Authorization = \"Bearer ${GH_TOKEN}\" }\n[tools]\n\"*\" = \"read\"\npublish = \"external\"\n",
        )]);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(servers[0].class_of("anything"), Capability::Read);
        assert_eq!(servers[0].class_of("publish"), Capability::External);
    }

    #[test]
    fn mistakes_are_reported_with_their_line() {
        let (servers, diags) = load(&[
            ("a.toml", "command = \"x\"\nenv = { T = \"${MISSING}\" }\n"),
            ("b.toml", "url = \"http://example.com/mcp\"\n"),
            ("c.toml", "command = \"x\"\n[tools]\nsend = \"dangerous\"\n"),
            ("memory.toml", "command = \"x\"\n"),
            (
                "e.toml",
                "command = \"x\"\nurl = \"https://a.example/mcp\"\n",
            ),
            ("f.toml", "comand = \"x\"\n"),
        ]);
        assert!(servers.is_empty(), "{servers:?}");
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let has = |file: &str, line: usize, words: &str| {
            assert!(
                diags
                    .iter()
                    .any(|d| d.file.ends_with(file) && d.line == line && d.message.contains(words)),
                "no `{words}` at {file}:{line} in {text:#?}"
            )
        };
        has("a.toml", 2, "MISSING is not set");
        has("b.toml", 1, "use https://");
        has("c.toml", 3, "not a capability class");
        has("memory.toml", 1, "built-in");
        has("e.toml", 2, "not both");
        has("f.toml", 1, "comand");
    }

    #[test]
    fn a_missing_directory_means_no_servers() {
        let (servers, diags) =
            load_mcp_servers(Path::new("/nonexistent/mcp"), &|_: &str| None).unwrap();
        assert!(servers.is_empty() && diags.is_empty());
    }
}
