//! The command line: `baton` runs the bot; the subcommands check workflows, inspect and cancel
//! runs, verify and export the ledger, and apply migrations.

use crate::app;
use crate::config::Settings;
use crate::core::audit::{Checkpoint, Verification};
use crate::core::clock::{Clock, SystemClock};
use crate::core::engine::{Command, RunStatus};
use crate::core::event::Actor;
use crate::core::ids::RunId;
use crate::core::workflow::{Severity, load_dir, load_mcp_servers};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Baton: durable chat-ops workflows with approvals and an audit ledger.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the bot (the default): console, workflows, schedules.
    Run,
    /// Validate every workflow file; errors name the file and line.
    Check {
        /// The workflow directory (default: BATON_COMMANDS_DIR or ./commands).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Inspect and cancel runs.
    Runs {
        #[command(subcommand)]
        command: RunsCmd,
    },
    /// Verify or export the audit ledger.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Create or update the database schema, then exit.
    Migrate,
    /// List the tools workflows and agents may use, with their capability class.
    Tools,
    /// Slack helpers.
    Slack {
        #[command(subcommand)]
        command: SlackCmd,
    },
    /// Discord helpers.
    Discord {
        #[command(subcommand)]
        command: DiscordCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum DiscordCmd {
    /// Print the link that adds the bot to a server with the `bot` and `applications.commands`
    /// scopes and the permissions Baton needs.
    Invite {
        /// The application ID (General Information → Application ID). Default: read from
        /// DISCORD_TOKEN.
        #[arg(long)]
        app_id: Option<String>,
    },
    /// Print the slash commands (JSON) Baton registers from the workflows.
    Commands,
}

#[derive(Debug, Subcommand)]
pub enum SlackCmd {
    /// Print a Slack app manifest (JSON) with every slash command from the workflows, the bot
    /// scopes, events and interactivity, for "Create New App → From an app manifest".
    Manifest {
        /// Baton's public HTTPS address for the Events API endpoints (default: BATON_PUBLIC_URL;
        /// without either, the manifest is for Socket Mode).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// List recent runs.
    List {
        /// Only runs with this status (running, waiting_approval, succeeded, failed, rejected, cancelled).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one run: steps, attempts, approvals.
    Show { run: String },
    /// Cancel a run. The bot posts the cancellation in its thread.
    Cancel {
        run: String,
        /// Who is cancelling, for the ledger.
        #[arg(long = "as", default_value = "operator")]
        operator: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Walk the hash chain; report intact (with the newest entry's checkpoint) or the first
    /// broken entry (exit code 1). Checkpoints seen before catch deleted or rewritten newest
    /// entries; with BATON_AUDIT_KEY every entry's signature is checked too.
    Verify {
        /// A checkpoint seen before, `SEQ:HASH` or `SEQ:HASH:SIGNATURE` as printed by this
        /// command and the digest (repeatable).
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Vec<String>,
        /// A file of checkpoints, one per line (`#` starts a comment).
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
    },
    /// Write every entry as JSON Lines.
    Export {
        /// File to write (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `baton check`: prints every diagnostic; returns whether there were no errors. MCP servers
/// are connected to, so the tools workflows name are checked against what they list.
pub async fn check(settings: &Settings, dir: Option<PathBuf>) -> anyhow::Result<bool> {
    let dir = dir.unwrap_or_else(|| settings.commands_dir.clone());
    let mcp_dir = dir.join("mcp");
    let (servers, mut diagnostics) = load_mcp_servers(&mcp_dir, &|k| settings.vars.get(k))
        .with_context(|| format!("cannot read {}", mcp_dir.display()))?;
    let (catalog, mcp) = app::connect_tools(servers).await;
    mcp.shutdown().await;
    for (server, why) in catalog.unlisted_servers() {
        eprintln!("warning: MCP server `{server}`: {why}");
    }
    let (set, more) =
        load_dir(&dir, &catalog).with_context(|| format!("cannot read {}", dir.display()))?;
    diagnostics.extend(more);
    let models = settings.models.models.keys().cloned().collect();
    diagnostics.extend(crate::core::workflow::check_models(&set, &models));
    for d in &diagnostics {
        eprintln!("{d}");
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    if errors == 0 {
        println!("{}: {} workflow(s) OK", dir.display(), set.len());
    } else {
        eprintln!("{}: {errors} error(s)", dir.display());
    }
    Ok(errors == 0)
}

pub async fn runs(settings: &Settings, command: RunsCmd) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let engine = app::engine_for_cli(settings, clock).await?;
    let store = engine.store().clone();
    let mut out = std::io::stdout().lock();
    match command {
        RunsCmd::List { status, limit } => {
            let status = status
                .map(|s| s.parse::<RunStatus>())
                .transpose()
                .map_err(anyhow::Error::msg)?;
            writeln!(
                out,
                "{:>6}  {:<18} {:<17} {:<20} {:<10} TITLE",
                "RUN", "WORKFLOW", "STATUS", "STARTED", "BY"
            )?;
            for r in store.list_runs(status, limit).await? {
                writeln!(
                    out,
                    "{:>6}  {:<18} {:<17} {:<20} {:<10} {}",
                    r.id,
                    r.workflow,
                    r.status,
                    r.created_at.format("%Y-%m-%d %H:%M:%S"),
                    r.requested_by,
                    r.title
                )?;
            }
        }
        RunsCmd::Show { run } => {
            let id: RunId = run.parse().map_err(anyhow::Error::msg)?;
            let state = store
                .load_run(id)
                .await?
                .with_context(|| format!("there is no run {id}"))?;
            let r = &state.run;
            writeln!(
                out,
                "run {id}: {}\nworkflow: {}\nstatus:   {}\nstarted:  {} by {} in {} #{}",
                r.title,
                r.workflow,
                r.status,
                r.created_at,
                r.requested_by.display,
                r.conversation.platform,
                r.conversation.channel
            )?;
            if let Some(f) = r.finished_at {
                writeln!(out, "finished: {f}")?;
            }
            if let Some(why) = &r.conversation_lost {
                writeln!(
                    out,
                    "chat:     {}",
                    crate::core::engine::render::conversation_lost(r, why)
                )?;
            }
            for alert in r.alerts.values().filter(|a| a.open && !a.in_channel) {
                writeln!(
                    out,
                    "chat:     {}",
                    crate::core::engine::render::message_missing(alert)
                )?;
            }
            writeln!(
                out,
                "inputs:   {}",
                serde_json::Value::Object(r.inputs.clone())
            )?;
            writeln!(out, "\nsteps:")?;
            for (step, s) in &state.steps {
                writeln!(
                    out,
                    "  {step:<16} {:<10} attempts={} {}",
                    s.status,
                    s.attempt,
                    s.error.as_deref().unwrap_or("")
                )?;
            }
            writeln!(out, "\nattempts:")?;
            for a in store.attempts(id).await? {
                writeln!(
                    out,
                    "  {:<16} #{} {:<10} {}",
                    a.step, a.attempt, a.status, a.started_at
                )?;
            }
            for (step, a) in &state.approvals {
                let by = a
                    .decided_by
                    .as_ref()
                    .map(|x| x.display.clone())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "\napproval {step}: {} {by} (approvers: {})",
                    a.status,
                    a.approvers.join(", ")
                )?;
            }
        }
        RunsCmd::Cancel { run, operator } => {
            let id: RunId = run.parse().map_err(anyhow::Error::msg)?;
            let notice = engine
                .submit(
                    id,
                    Command::Cancel {
                        actor: Actor::operator(&operator),
                    },
                )
                .await?;
            writeln!(
                out,
                "{}",
                notice.unwrap_or_else(|| format!("Run {id} cancelled."))
            )?;
        }
    }
    Ok(())
}

/// `baton audit …`; returns false when verification found a break.
pub async fn audit(settings: &Settings, command: AuditCmd) -> anyhow::Result<bool> {
    let store = app::open_store(settings, &app::load_mcp(settings)?, None).await?;
    match command {
        AuditCmd::Verify {
            expect,
            checkpoints,
        } => {
            let mut seen = expect
                .iter()
                .map(|c| c.parse::<Checkpoint>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(path) = &checkpoints {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                seen.extend(checkpoints_in(&text).with_context(|| path.display().to_string())?);
            }
            let key = settings.audit_key();
            let signed = key.is_some();
            let given = seen.len();
            match crate::store::verify_ledger(store.as_ref(), key, seen).await? {
                Verification::Intact {
                    entries,
                    head,
                    unsigned,
                } => {
                    let mut what = vec!["every hash checks out".to_owned()];
                    if given > 0 {
                        what.push(format!(
                            "{given} checkpoint(s) seen before are on the chain"
                        ));
                    }
                    if signed {
                        what.push(format!(
                            "every signature checks out ({unsigned} early entries written before BATON_AUDIT_KEY was set are unsigned)"
                        ));
                    }
                    println!("intact: {entries} entries, {}", what.join("; "));
                    if let Some(head) = head {
                        println!("head:   {head}");
                    }
                    Ok(true)
                }
                Verification::Broken { seq, reason } => {
                    println!("broken at entry {seq}: {reason}");
                    Ok(false)
                }
            }
        }
        AuditCmd::Export { out } => {
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut after = 0;
            let mut count = 0u64;
            loop {
                let page = store.audit_page(after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    serde_json::to_writer(&mut sink, e)?;
                    sink.write_all(b"\n")?;
                    count += 1;
                }
            }
            sink.flush()?;
            if let Some(path) = out {
                eprintln!("wrote {count} entries to {}", path.display());
            }
            Ok(true)
        }
    }
}

/// `baton slack manifest`.
pub fn slack(settings: &Settings, command: SlackCmd) -> anyhow::Result<()> {
    match command {
        SlackCmd::Manifest { url } => {
            let workflows =
                app::load_workflows(settings, &app::offline_catalog(&app::load_mcp(settings)?))?;
            let url = url.or_else(|| settings.public_url.clone());
            if let Some(u) = &url
                && !u.starts_with("https://")
            {
                anyhow::bail!("--url: Slack only sends requests to https:// addresses, not `{u}`");
            }
            let m = crate::adapters::slack::manifest::manifest(&workflows, url.as_deref());
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(())
        }
    }
}

/// `baton tools`: one line per tool, built-in and from each MCP server (connected to for the
/// listing), with its capability class.
pub async fn tools(settings: &Settings) -> anyhow::Result<bool> {
    let (catalog, mcp) = app::connect_tools(app::load_mcp(settings)?).await;
    mcp.shutdown().await;
    let infos: Vec<_> = catalog.names().filter_map(|n| catalog.get(n)).collect();
    let width = infos.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4) + 2;
    println!("{:<width$}{:<16}{:<15}what", "tool", "class", "used by");
    for t in &infos {
        let who = if t.agent_only {
            "agents"
        } else {
            "steps, agents"
        };
        // One line each: a server's description may run to paragraphs.
        let what = t.description.lines().next().unwrap_or_default();
        let what: String = what.chars().take(100).collect();
        println!(
            "{:<width$}{:<16}{:<15}{what}",
            t.name,
            t.capability.to_string(),
            who
        );
    }
    let mut all_listed = true;
    for (server, why) in catalog.unlisted_servers() {
        all_listed = false;
        eprintln!("MCP server `{server}` could not be listed: {why}");
    }
    Ok(all_listed)
}

/// `baton discord …`.
pub fn discord(settings: &Settings, command: DiscordCmd) -> anyhow::Result<()> {
    use crate::adapters::discord::commands;
    match command {
        DiscordCmd::Invite { app_id } => {
            let app_id = app_id
                .or_else(|| {
                    settings
                        .discord
                        .as_ref()
                        .and_then(|d| commands::application_id_of(d.token.expose()))
                })
                .context("pass --app-id (Developer Portal → General Information → Application ID), or set DISCORD_TOKEN")?;
            println!("{}", commands::invite_url(&app_id));
        }
        DiscordCmd::Commands => {
            let workflows =
                app::load_workflows(settings, &app::offline_catalog(&app::load_mcp(settings)?))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&commands::desired(&workflows))?
            );
        }
    }
    Ok(())
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    app::open_store(settings, &[], None).await?;
    println!("database is up to date");
    Ok(())
}

/// The checkpoints in a file: each line's `SEQ:HASH[:SIGNATURE]`, which may be pasted with the
/// words around it (from a digest, say). Blank lines and `#` comments are skipped.
fn checkpoints_in(text: &str) -> anyhow::Result<Vec<Checkpoint>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let found = line
            .split(|c: char| c.is_whitespace() || c == '`')
            .find_map(|word| word.parse::<Checkpoint>().ok());
        match found {
            Some(c) => out.push(c),
            None => anyhow::bail!("line {}: no checkpoint (SEQ:HASH) in `{line}`", n + 1),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_file_takes_pasted_lines_and_names_a_bad_one() {
        let text = "# saved on Monday\n42:0123456789abcdef\nLedger checkpoint: `43:fedcba9876543210:00ff00ff00ff00ff` (verify…)\n\n";
        let found = checkpoints_in(text).unwrap();
        assert_eq!(found.iter().map(|c| c.seq).collect::<Vec<_>>(), [42, 43]);
        assert_eq!(found[1].mac.as_deref(), Some("00ff00ff00ff00ff"));
        let err = checkpoints_in("42:0123456789abcdef\nsomething else").unwrap_err();
        assert!(
            err.to_string().starts_with("line 2: no checkpoint"),
            "{err}"
        );
    }
}
