//! `baton`: parse the command line, load settings, start logging, hand over to the library.

use baton::cli::{self, Cli, Cmd};
use baton::config::Settings;
use baton::core::clock::SystemClock;
use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;

/// jemalloc serves every allocation, SQLite's too (its `malloc` is jemalloc's): under load,
/// glibc's allocator spent a tenth of the store writer's time consolidating and splitting
/// chunks. See ARCHITECTURE.md, "jemalloc".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env is fine; a malformed one is reported.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("baton: cannot read .env: {e}");
        return ExitCode::from(2);
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("baton: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    baton::telemetry::init(
        settings.log_format,
        &settings.log_filter,
        baton::core::audit::Redactor::new(settings.secrets()),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Cmd::Run) {
            Cmd::Run => serve(settings).await.map(|_| true),
            Cmd::Check { dir } => cli::check(&settings, dir).await,
            Cmd::Runs { command } => cli::runs(&settings, command).await.map(|_| true),
            Cmd::Audit { command } => cli::audit(&settings, command).await,
            Cmd::Migrate => cli::migrate(&settings).await.map(|_| true),
            Cmd::Tools => cli::tools(&settings).await,
            Cmd::Slack { command } => cli::slack(&settings, command).map(|_| true),
            Cmd::Discord { command } => cli::discord(&settings, command).map(|_| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "BATON_HTTP_ADDR: cannot listen on {}: {e}",
                settings.http_addr
            )
        })?;
    baton::app::run(
        settings,
        listener,
        Arc::new(SystemClock::default()),
        shutdown_signal(),
    )
    .await
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
