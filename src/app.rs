//! Wiring: settings in, a running bot out. `run` serves on a listener the caller bound, so tests
//! run the real app on port 0.

use crate::adapters::Platform;
use crate::adapters::console::Console;
use crate::adapters::discord::{self, Discord};
use crate::adapters::slack::Slack;
use crate::config::Settings;
use crate::core::audit::Redactor;
use crate::core::clock::Clock;
use crate::core::tools::ToolCatalog;
use crate::core::workflow::{
    Diagnostic, McpServer, Severity, WorkflowSet, load_dir, load_mcp_servers,
};
use crate::engine::{Engine, EngineSettings};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::store::{self, Store};
use crate::tools::{Mcp, ToolBox};
use anyhow::{Context as _, bail};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// How long start-up waits for the Discord gateway to say READY.
const GATEWAY_READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Loads and checks the workflows; any error stops start-up with every problem listed.
pub fn load_workflows(settings: &Settings, catalog: &ToolCatalog) -> anyhow::Result<WorkflowSet> {
    let dir = &settings.commands_dir;
    let (set, mut diagnostics) = load_dir(dir, catalog)
        .with_context(|| format!("BATON_COMMANDS_DIR: cannot read {}", dir.display()))?;
    let models = settings.models.models.keys().cloned().collect();
    diagnostics.extend(crate::core::workflow::check_models(&set, &models));
    stop_on_errors(dir, &diagnostics)?;
    Ok(set)
}

/// Logs the warnings; errors stop start-up with every one listed.
fn stop_on_errors(dir: &std::path::Path, diagnostics: &[Diagnostic]) -> anyhow::Result<()> {
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect();
    for d in diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        tracing::warn!("{d}");
    }
    if !errors.is_empty() {
        bail!(
            "the workflows in {} have {} error(s):\n{}\n(`baton check` lists them too)",
            dir.display(),
            errors.len(),
            errors.join("\n")
        );
    }
    Ok(())
}

/// The MCP servers `commands/mcp/*.toml` declares; a mistake in one stops start-up.
pub fn load_mcp(settings: &Settings) -> anyhow::Result<Vec<McpServer>> {
    let dir = settings.commands_dir.join("mcp");
    let (servers, diagnostics) = load_mcp_servers(&dir, &|k| settings.vars.get(k))
        .with_context(|| format!("cannot read {}", dir.display()))?;
    stop_on_errors(&dir, &diagnostics)?;
    Ok(servers)
}

/// Connects to the MCP servers and lists their tools: the catalogue with them, and the
/// servers for the tool box. A server that cannot be reached does not stop Baton: its tools
/// are taken on trust by name until it answers.
pub async fn connect_tools(servers: Vec<McpServer>) -> (ToolCatalog, Arc<Mcp>) {
    let mcp = Arc::new(Mcp::new(servers));
    let mut catalog = ToolCatalog::builtin();
    for (server, listed) in mcp.connect_all().await {
        catalog = catalog.with_mcp(server, listed);
    }
    (catalog, mcp)
}

/// The catalogue without connecting to any MCP server, for commands that only need to read
/// stored runs: every server's tools are taken on trust.
pub fn offline_catalog(servers: &[McpServer]) -> ToolCatalog {
    servers.iter().fold(ToolCatalog::builtin(), |c, s| {
        c.with_mcp(s, Err("not connected from the command line".into()))
    })
}

/// Opens the store named by the settings. The ledger redacts the settings' secrets and
/// `more_secrets` (what MCP files expand from the environment).
pub async fn open_store(
    settings: &Settings,
    more_secrets: &[McpServer],
    serving: Option<store::Replica>,
) -> anyhow::Result<Arc<dyn Store>> {
    let secrets = settings
        .secrets()
        .into_iter()
        .chain(more_secrets.iter().flat_map(|s| s.secrets.iter().cloned()));
    let redactor = Redactor::new(secrets);
    // Log lines leave out the same values, MCP files' included.
    crate::telemetry::set_redactor(redactor.clone());
    store::open(
        settings.database_url.expose(),
        store::Options {
            redactor,
            audit_key: settings.audit_key(),
            durability: settings.durability,
            serving: serving.is_some(),
            replica: serving.unwrap_or_else(|| command_line(settings)),
        },
    )
    .await
}

/// The engine with its store, without platforms or background loops: what the CLI needs to
/// apply a command.
pub async fn engine_for_cli(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<Engine>> {
    let servers = load_mcp(settings).unwrap_or_default();
    let catalog = Arc::new(offline_catalog(&servers));
    let workflows = Arc::new(load_workflows(settings, &catalog).unwrap_or_default());
    let store = open_store(settings, &servers, None).await?;
    let engine_settings = engine_settings(settings, settings.http_addr);
    let tools = Arc::new(ToolBox::new(
        settings.tool_settings(&engine_settings.local_url),
    )?);
    Ok(Engine::new(
        store,
        workflows,
        catalog,
        tools,
        Arc::new(crate::agents::Models::new(settings.models.clone())?),
        clock,
        engine_settings,
        Arc::new(Metrics::default()),
        vec![],
    ))
}

/// Where Baton reaches itself: the address it listens on, or loopback when that is every
/// interface (`0.0.0.0`, `[::]`), which is not an address one can connect to.
pub fn local_url(listening: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match listening.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listening.port()))
}

/// Where people reach Baton: `BATON_PUBLIC_URL`, else the address it listens on (loopback for
/// every interface). Beyond loopback without the setting, links may not open for others: the
/// start-up log says so once.
fn public_url(settings: &Settings, listening: std::net::SocketAddr) -> String {
    match &settings.public_url {
        Some(url) => url.clone(),
        None => local_url(listening),
    }
}

/// Who this process is among the replicas sharing a database: `BATON_REPLICA_NAME`, else the
/// host's name and the HTTP port, which stay the same when it starts again on the same host,
/// and differ between replicas on one host.
pub fn replica(settings: &Settings, port: u16) -> store::Replica {
    let name = settings.replica_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "baton".into());
        format!("{host}:{port}")
    });
    store::Replica {
        name,
        lease: settings.lease,
    }
}

/// The command line among replicas: what it starts (a step Retry asks for) it holds only
/// until a server takes it over, a lease later.
fn command_line(settings: &Settings) -> store::Replica {
    store::Replica {
        name: format!("cli-{}", std::process::id()),
        lease: settings.lease,
    }
}

fn engine_settings(settings: &Settings, listening: std::net::SocketAddr) -> EngineSettings {
    EngineSettings {
        replica: command_line(settings),
        base_url: public_url(settings, listening),
        local_url: local_url(listening),
        workers: settings.workers,
        poll_interval: settings.poll_interval,
        stall_after: settings.stall_after,
        // Schedules post where people are: Slack or Discord when configured.
        default_platform: if settings.slack.is_some() {
            "slack"
        } else if settings.discord.is_some() {
            "discord"
        } else {
            "console"
        }
        .into(),
        shutdown_grace: settings.shutdown_grace,
        delivery_alert_after: settings.delivery_alert_after,
    }
}

/// Runs the bot until `shutdown` resolves, then stops taking events, lets running steps finish
/// (within the grace period) and flushes the outbox.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let servers = load_mcp(&settings)?;
    let replica = replica(&settings, listener.local_addr()?.port());
    crate::telemetry::set_replica(&replica.name);
    tracing::info!(replica = %replica.name, "serving as this replica");
    let store = open_store(&settings, &servers, Some(replica.clone())).await?;
    let (catalog, mcp) = connect_tools(servers).await;
    let catalog = Arc::new(catalog);
    let workflows = Arc::new(load_workflows(&settings, &catalog)?);
    let addr = listener.local_addr()?;
    if settings.public_url.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "BATON_PUBLIC_URL is unset while Baton listens on {addr}: links in chat point at {}, which people on other machines may not reach; set BATON_PUBLIC_URL to the address they use",
            local_url(addr)
        );
    }
    let engine_settings = EngineSettings {
        replica,
        ..engine_settings(&settings, addr)
    };
    let tools = Arc::new(
        ToolBox::new(settings.tool_settings(&engine_settings.local_url))?.with_mcp(mcp.clone()),
    );
    let metrics = Arc::new(Metrics::default());
    let console = Console::new(store.clone(), clock.clone());
    console
        .healthcheck()
        .await
        .context("the console's store does not answer")?;
    let mut platforms: Vec<Arc<dyn Platform>> = vec![console.clone()];
    let slack = match &settings.slack {
        Some(s) => {
            let slack = Slack::new(s.clone(), clock.clone())?;
            slack.healthcheck().await?;
            platforms.push(slack.clone());
            Some(slack)
        }
        None => None,
    };
    let discord = match &settings.discord {
        Some(d) => {
            let discord = Discord::new(d.clone(), clock.clone())?;
            discord.healthcheck().await?;
            platforms.push(discord.clone());
            Some(discord)
        }
        None => None,
    };
    let store_to_close = store.clone();
    let engine = Engine::new(
        store,
        workflows.clone(),
        catalog,
        tools,
        Arc::new(crate::agents::Models::new(settings.models.clone())?),
        clock.clone(),
        engine_settings,
        metrics.clone(),
        platforms,
    );
    let background = engine
        .start_background()
        .await
        .context("could not resume the runs that were under way")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Browsers connected here see what other replicas write too.
    let following = store_to_close
        .console_changes()
        .await
        .map(|changes| tokio::spawn(console.clone().follow(changes, stop_rx.clone())));
    let slack_for_shutdown = slack.clone();
    // Socket Mode receives Slack's events over a WebSocket Baton opens itself.
    let socket = slack
        .as_ref()
        .filter(|s| s.settings.app_token.is_some())
        .map(|s| crate::adapters::slack::socket::spawn(s.clone(), engine.clone(), stop_rx.clone()));
    // Discord's events arrive over the gateway; start-up waits for READY so a bad token or a
    // missing intent stops Baton here, then registers the slash commands.
    let gateway = match &discord {
        Some(d) => {
            let (task, ready) = discord::gateway::spawn(
                d.clone(),
                engine.clone(),
                discord::gateway::intents(&workflows),
                stop_rx.clone(),
            );
            let connected = async {
                tokio::time::timeout(GATEWAY_READY_LIMIT, ready)
                    .await
                    .context("the Discord gateway sent no READY within 30 s")?
                    .context("the Discord gateway stopped before READY")??;
                // Without its slash commands Baton still serves messages and the buttons of
                // runs under way, so a refused registration is reported, not fatal.
                if let Err(e) = discord::commands::register(d, &workflows).await {
                    tracing::error!(error = %format!("{e:#}"), "Discord slash commands are not registered");
                }
                anyhow::Ok(())
            };
            if d.settings.guild_ids.is_empty() {
                tracing::warn!(
                    "DISCORD_GUILD_IDS is unset: every server the bot is added to may start workflows; keep the bot private (Developer Portal → Bot → Public Bot off) or list the servers"
                );
            }
            if let Err(e) = connected.await {
                let _ = stop_tx.send(true);
                let _ = task.await;
                background.shutdown().await;
                return Err(e);
            }
            Some(task)
        }
        None => None,
    };
    let state = AppState {
        engine,
        console,
        slack,
        discord: discord.clone(),
        settings: Arc::new(settings),
        metrics,
        clock,
        shutdown: stop_rx,
    };
    tracing::info!(%addr, workflows = workflows.len(), "Baton is up: open http://{addr} for the console");
    let server = axum::serve(listener, http::router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new events; finishing running steps");
        let _ = stop_tx.send(true);
    });
    server.await.context("the HTTP server stopped")?;
    if let Some(socket) = socket {
        let _ = socket.await;
    }
    if let Some(gateway) = gateway {
        let _ = gateway.await;
    }
    // Events Slack got an acknowledgement for are handled before the engine stops.
    if let Some(slack) = &slack_for_shutdown
        && tokio::time::timeout(std::time::Duration::from_secs(10), slack.inflight.drained())
            .await
            .is_err()
    {
        tracing::warn!("some acknowledged Slack events were still being handled at shutdown");
    }
    if let Some(discord) = &discord
        && tokio::time::timeout(
            std::time::Duration::from_secs(10),
            discord.inflight.drained(),
        )
        .await
        .is_err()
    {
        tracing::warn!("some acknowledged Discord events were still being handled at shutdown");
    }
    background.shutdown().await;
    if let Some(following) = following {
        let _ = following.await;
    }
    mcp.shutdown().await;
    store_to_close.close().await;
    tracing::info!("stopped");
    Ok(())
}
