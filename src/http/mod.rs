//! The HTTP server: the console and its API, the webhook inbox, `/healthz`, `/readyz` and
//! `/metrics`, on one address.

pub mod error;

use crate::adapters::console::{self, Console};
use crate::config::Settings;
use crate::core::clock::Clock;
use crate::engine::Engine;
use crate::metrics::{self, Metrics};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::fmt::Write;
use std::sync::Arc;

/// Largest request body accepted anywhere.
pub const MAX_BODY: usize = 64 * 1024;

/// Shared state for every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub console: Arc<Console>,
    /// Slack, when configured.
    pub slack: Option<Arc<crate::adapters::slack::Slack>>,
    /// Discord, when configured.
    pub discord: Option<Arc<crate::adapters::discord::Discord>>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Turns true when the server is shutting down; long-lived streams end on it.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    // Slack signs its requests; the console token does not apply to them.
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    // Slack signs its requests itself; the console token does not apply to them.
    let open = if state.slack.is_some() {
        open.merge(crate::adapters::slack::inbound::routes())
    } else {
        open
    };
    let guarded = console::inbound::routes()
        .merge(console::pages::routes())
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    open.merge(guarded)
        .fallback(|uri: axum::http::Uri| async move {
            let path: String = uri.path().chars().take(200).collect();
            error::ApiError::NotFound(format!("there is no page {path}"))
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// With `BATON_CONSOLE_TOKEN` set, every guarded route needs it: as a bearer token, as the
/// `baton_token` cookie, or once as `?token=` (which sets the cookie).
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.settings.console_token else {
        return next.run(request).await;
    };
    let expected = token.expose();
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = cookie_value(headers, "baton_token");
    let query = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("token=")));
    let ok =
        |v: Option<&str>| v.is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()));
    if ok(bearer) || ok(cookie.as_deref()) {
        return next.run(request).await;
    }
    if ok(query) {
        let mut response = next.run(request).await;
        let cookie = format!("baton_token={expected}; HttpOnly; SameSite=Strict; Path=/");
        if let Ok(v) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        return response;
    }
    error::ApiError::Unauthorized.into_response()
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|p| {
            p.trim()
                .strip_prefix(&format!("{name}="))
                .map(str::to_owned)
        })
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    // A gateway Discord refused for good (a reset token) is not coming back by itself.
    if let Some(why) = state.discord.as_ref().and_then(|d| d.gateway_failure()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Discord gateway stopped: {why}"),
        )
            .into_response();
    }
    match state.engine.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

async fn metrics_text(State(state): State<AppState>) -> Result<Response, error::ApiError> {
    let m = state.engine.store().metrics().await?;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP {} Runs by status.", metrics::RUNS);
    let _ = writeln!(out, "# TYPE {} gauge", metrics::RUNS);
    for status in crate::core::engine::RunStatus::ALL {
        let n = m
            .runs_by_status
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "{}{{status=\"{}\"}} {n}",
            metrics::RUNS,
            status.as_str()
        );
    }
    for (name, help, value) in [
        (
            metrics::APPROVALS_PENDING,
            "Approvals waiting for a decision.",
            m.approvals_pending,
        ),
        (
            metrics::OUTBOX_DEPTH,
            "Outgoing messages not yet delivered.",
            m.outbox_pending,
        ),
        (
            metrics::OUTBOX_FAILED,
            "Outgoing messages given up on.",
            m.outbox_failed,
        ),
        (
            metrics::DELIVERY_ALERTS_OPEN,
            "Outgoing messages a delivery alert was raised about that have not gone through since.",
            m.outbox_alerted,
        ),
        (
            metrics::RUNS_UNREACHABLE,
            "Runs whose first message could not be posted, so their conversation is not in chat.",
            m.runs_unreachable,
        ),
        (
            metrics::AUDIT_ENTRIES,
            "Entries in the audit ledger.",
            m.audit_entries,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let w = &m.writer;
    for (name, help, value) in [
        (
            metrics::STORE_BATCHES,
            "Transactions the store's writer committed (each carries the writes that arrived together).",
            w.batches as f64,
        ),
        (
            metrics::STORE_WRITES,
            "Writes the store's writer applied.",
            w.writes as f64,
        ),
        (
            metrics::STORE_BUSY,
            "Time the store's writer spent running batches, commits included.",
            w.busy_seconds,
        ),
        (
            metrics::STORE_COMMIT,
            "Time the store's writer spent committing (and syncing to disk).",
            w.commit_seconds,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    state
        .metrics
        .render(&mut out, &state.engine.settings.replica.name);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
