//! Server-rendered pages: the chat workspace shell, runs, pending approvals and the ledger.
//! Every piece of user-supplied text goes through [`esc`].

use crate::core::audit::Verification;
use crate::core::engine::RunStatus;
use crate::core::ids::RunId;
use crate::core::workflow::format_duration;
use crate::http::AppState;
use crate::http::error::ApiError;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use std::fmt::Write;

/// Rows a list page shows at most.
const PAGE_ROWS: u32 = 500;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/assets/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP_JS,
                )
            }),
        )
        .route(
            "/assets/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/approvals", get(approvals))
        .route("/audit", get(audit))
        .route("/memory", get(memory))
        .route("/stalled", get(stalled))
}

/// Escapes text for HTML bodies and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Response {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Baton</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body class=\"page\">\
         <nav class=\"top\"><a href=\"/\">Chat</a><a href=\"/runs\">Runs</a><a href=\"/approvals\">Approvals</a><a href=\"/stalled\">Stalled</a><a href=\"/audit\">Audit ledger</a><a href=\"/memory\">Memory</a></nav>\
         <main>{body}</main></body></html>",
        esc(title)
    ))
    .into_response()
}

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[derive(Deserialize)]
struct RunsQuery {
    status: Option<String>,
}

async fn runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<RunStatus>().map_err(ApiError::BadRequest)?),
        None => None,
    };
    let runs = state.engine.store().list_runs(status, 200).await?;
    let mut body = String::from("<h1>Runs</h1><p class=\"filters\">");
    for s in std::iter::once(None).chain(RunStatus::ALL.iter().map(Some)) {
        let (href, label) = match s {
            Some(s) => (format!("/runs?status={}", s.as_str()), s.label()),
            None => ("/runs".to_owned(), "all"),
        };
        let _ = write!(body, "<a href=\"{href}\">{label}</a> ");
    }
    body.push_str("</p><table><thead><tr><th>Run</th><th>Workflow</th><th>Title</th><th>Status</th><th>Started by</th><th>Channel</th><th>Started</th><th>Took</th></tr></thead><tbody>");
    for r in &runs {
        let took = r
            .finished_at
            .map(|f| format_duration(f - r.created_at))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td class=\"status {st}\">{st}</td><td>{}</td><td>#{}</td><td>{}</td><td>{took}</td></tr>",
            esc(&r.workflow),
            esc(&r.title),
            esc(&r.requested_by),
            esc(&r.channel),
            when(r.created_at),
            id = r.id,
            st = esc(&r.status),
        );
    }
    if runs.is_empty() {
        body.push_str("<tr><td colspan=\"8\">No runs yet. Type a command such as <code>/demo</code> in the chat.</td></tr>");
    }
    body.push_str("</tbody></table>");
    Ok(page("Runs", &body))
}

async fn run(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id: RunId = id.parse().map_err(ApiError::BadRequest)?;
    let store = state.engine.store();
    let Some(run) = store.load_run(id).await? else {
        return Err(ApiError::NotFound(format!("there is no run {id}")));
    };
    let r = &run.run;
    let mut body = format!(
        "<h1>Run {id}: {}</h1><dl><dt>Workflow</dt><dd>{}</dd><dt>Status</dt><dd class=\"status {st}\">{st}</dd><dt>Started by</dt><dd>{}</dd>\
         <dt>Channel</dt><dd>{} #{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd><dt>Inputs</dt><dd><pre>{}</pre></dd>",
        esc(&r.title),
        esc(&r.workflow),
        esc(&r.requested_by.display),
        esc(&r.conversation.platform),
        esc(&r.conversation.channel),
        when(r.created_at),
        r.finished_at.map(when).unwrap_or_else(|| "–".into()),
        esc(&serde_json::to_string_pretty(&r.inputs).unwrap_or_default()),
        st = r.status.as_str(),
    );
    if let Some(e) = &r.error {
        let _ = write!(body, "<dt>Note</dt><dd>{}</dd>", esc(e));
    }
    if let Some(why) = &r.conversation_lost {
        let _ = write!(
            body,
            "<dt>Chat</dt><dd class=\"status failed\">{}</dd>",
            esc(&crate::core::engine::render::conversation_lost(r, why))
        );
    }
    for alert in r.alerts.values().filter(|a| a.open && !a.in_channel) {
        let _ = write!(
            body,
            "<dt>Chat</dt><dd class=\"status failed\">{}</dd>",
            esc(&crate::core::engine::render::message_missing(alert))
        );
    }
    if let Some(root) = store
        .message_ref(&crate::core::ids::MessageKey::root(id))
        .await?
        && r.conversation.platform == "console"
    {
        let _ = write!(
            body,
            "<dt>Thread</dt><dd><a href=\"/#{}/{}\">open the thread in the chat</a></dd>",
            esc(&r.conversation.channel),
            esc(&root)
        );
    }
    body.push_str("</dl><h2>Steps</h2><table><thead><tr><th>Step</th><th>Status</th><th>Attempts</th><th>Took</th><th>Output or error</th></tr></thead><tbody>");
    for (step, s) in &run.steps {
        let took = match (s.started_at, s.finished_at) {
            (Some(a), Some(b)) => format_duration(b - a),
            _ => String::new(),
        };
        let out = match (&s.error, &s.output) {
            (Some(e), _) => esc(e),
            (None, Some(o)) => format!(
                "<pre>{}</pre>",
                esc(&serde_json::to_string_pretty(o).unwrap_or_default())
            ),
            _ => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"status {st}\">{st}</td><td>{}</td><td>{took}</td><td>{out}</td></tr>",
            esc(step),
            s.attempt,
            st = s.status.as_str()
        );
    }
    body.push_str("</tbody></table><h2>Attempts</h2><table><thead><tr><th>Step</th><th>#</th><th>Status</th><th>Started</th><th>Finished</th><th>Input</th></tr></thead><tbody>");
    for a in store.attempts(id).await? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"status {st}\">{st}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            esc(&a.step),
            a.attempt,
            when(a.started_at),
            a.finished_at.map(when).unwrap_or_default(),
            esc(&serde_json::to_string(&a.input).unwrap_or_default()),
            st = esc(&a.status),
        );
    }
    body.push_str("</tbody></table><h2>Messages</h2><table><thead><tr><th>Key</th><th>Op</th><th>Status</th><th>Tries</th><th>Error</th></tr></thead><tbody>");
    for o in store.outbox_of_run(id).await? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"status {st}\">{st}</td><td>{}</td><td>{}</td></tr>",
            esc(&o.key),
            esc(&o.op),
            o.attempts,
            esc(o.last_error.as_deref().unwrap_or("")),
            st = esc(&o.status),
        );
    }
    body.push_str("</tbody></table><h2>Ledger</h2>");
    audit_table(&mut body, &store.audit_recent(Some(id), 500).await?);
    Ok(page(&format!("Run {id}"), &body))
}

async fn approvals(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let (pending, total) = state.engine.store().pending_approvals(PAGE_ROWS).await?;
    let mut body = String::from(
        "<h1>Pending approvals</h1><table><thead><tr><th>Run</th><th>Workflow</th><th>Step</th><th>Approvers</th><th>Waiting for</th><th>Expires</th><th>What</th></tr></thead><tbody>",
    );
    for p in &pending {
        let _ = write!(
            body,
            "<tr><td><a href=\"/runs/{run}\">{run}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            esc(&p.workflow),
            esc(&p.step),
            esc(&p.approvers.join(", ")),
            format_duration(now - p.requested_at),
            when(p.expires_at),
            esc(&p.summary),
            run = p.run,
        );
    }
    if pending.is_empty() {
        body.push_str("<tr><td colspan=\"7\">Nothing is waiting for a decision.</td></tr>");
    }
    body.push_str("</tbody></table>");
    if total > pending.len() as u64 {
        let _ = write!(
            body,
            "<p>The {} oldest of {total} pending approvals.</p>",
            pending.len()
        );
    }
    Ok(page("Approvals", &body))
}

/// Runs flagged as stalled: no progress for their workflow's threshold. Each run's thread has
/// the alert with Retry and Cancel.
async fn stalled(State(state): State<AppState>) -> Result<Response, ApiError> {
    let runs = state.engine.store().stalled_runs(PAGE_ROWS).await?;
    let now = state.clock.now();
    let mut body = String::from(
        "<h1>Stalled runs</h1><table><thead><tr><th>Run</th><th>Workflow</th><th>Title</th><th>Channel</th><th>Started by</th><th>Stalled since</th><th>For</th></tr></thead><tbody>",
    );
    for r in &runs {
        let since = r.stalled_at.unwrap_or(r.updated_at);
        let _ = write!(
            body,
            "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>#{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.workflow),
            esc(&r.title),
            esc(&r.channel),
            esc(&r.requested_by),
            when(since),
            format_duration(now - since),
            id = r.id,
        );
    }
    if runs.is_empty() {
        body.push_str("<tr><td colspan=\"7\">Nothing is stalled.</td></tr>");
    }
    body.push_str("</tbody></table><p>A run is stalled when it has made no progress for its workflow's <code>stall_after</code> (default <code>BATON_STALL_AFTER</code>). Its thread has Retry and Cancel.</p>");
    let failed = state.engine.store().failed_deliveries(PAGE_ROWS).await?;
    body.push_str("<h2>Messages that could not be delivered</h2><table><thead><tr><th>Run</th><th>Where</th><th>Message</th><th>Error</th><th>Written</th></tr></thead><tbody>");
    for f in &failed {
        let run = f
            .run
            .map(|r| format!("<a href=\"/runs/{r}\">{r}</a>"))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td>{run}</td><td>{} #{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.platform),
            esc(&f.channel),
            esc(&f.key),
            esc(f.error.as_deref().unwrap_or("")),
            when(f.created_at),
        );
    }
    if failed.is_empty() {
        body.push_str("<tr><td colspan=\"5\">Every message was delivered.</td></tr>");
    }
    body.push_str("</tbody></table><p>The run's thread has Retry, which sends them again once the cause is fixed.</p>");
    Ok(page("Stalled runs", &body))
}

#[derive(Deserialize)]
struct MemoryQuery {
    namespace: Option<String>,
}

/// The agents' shared memory, newest first, each entry with the run, step and agent that
/// wrote it and when.
async fn memory(
    State(state): State<AppState>,
    Query(q): Query<MemoryQuery>,
) -> Result<Response, ApiError> {
    let namespace = q
        .namespace
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let entries = state
        .engine
        .store()
        .memory_list(namespace, PAGE_ROWS)
        .await?;
    let mut body = format!(
        "<h1>Memory</h1><form method=\"get\" class=\"filters\"><label>Namespace <input name=\"namespace\" value=\"{}\"></label> <button>Show</button> <a href=\"/memory\">all</a></form>\
         <table><thead><tr><th>Namespace</th><th>Key</th><th>Value</th><th>Written by</th><th>Run</th><th>Step</th><th>When</th></tr></thead><tbody>",
        esc(namespace.unwrap_or_default())
    );
    for e in &entries {
        let value = serde_json::to_string_pretty(&e.value).unwrap_or_default();
        let value: String = value.chars().take(2000).collect();
        let run = e
            .run
            .map(|r| format!("<a href=\"/runs/{r}\">{r}</a>"))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td><td>{}</td><td>{run}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.namespace),
            esc(&e.key),
            esc(&value),
            esc(e.agent.as_deref().unwrap_or("")),
            esc(e.step.as_deref().unwrap_or("")),
            when(e.written_at),
        );
    }
    if entries.is_empty() {
        body.push_str("<tr><td colspan=\"7\">Nothing remembered yet: agents with <code>memory.write</code> fill this.</td></tr>");
    }
    body.push_str("</tbody></table>");
    Ok(page("Memory", &body))
}

async fn audit(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.engine.store();
    let verification =
        crate::store::verify_ledger(store.as_ref(), state.settings.audit_key(), vec![]).await?;
    let mut body = String::from("<h1>Audit ledger</h1>");
    match verification {
        Verification::Intact { entries, head, .. } => {
            let _ = write!(
                body,
                "<p class=\"verify ok\" id=\"verification\">Intact: {entries} entries, every hash checks out.</p>"
            );
            if let Some(head) = head {
                let _ = write!(
                    body,
                    "<p>Checkpoint of the newest entry: <code id=\"head\">{}</code>. Keep it outside Baton; <code>baton audit verify --expect {}</code> later proves nothing before it was deleted or changed.</p>",
                    esc(&head.to_string()),
                    esc(&head.to_string())
                );
            }
        }
        Verification::Broken { seq, reason } => {
            let _ = write!(
                body,
                "<p class=\"verify broken\" id=\"verification\">Broken at entry {seq}: {}</p>",
                esc(&reason)
            );
        }
    }
    body.push_str("<p>The newest 500 entries. <code>baton audit export</code> writes them all as JSON Lines.</p>");
    audit_table(&mut body, &store.audit_recent(None, 500).await?);
    Ok(page("Audit ledger", &body))
}

fn audit_table(body: &mut String, entries: &[crate::core::audit::AuditEntry]) {
    body.push_str("<table class=\"audit\"><thead><tr><th>#</th><th>At</th><th>Kind</th><th>Run</th><th>Step</th><th>Actor</th><th>Data</th><th>Hash</th></tr></thead><tbody>");
    for e in entries {
        let run = e
            .run
            .map(|r| format!("<a href=\"/runs/{r}\">{r}</a>"))
            .unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{run}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code title=\"{h}\">{}</code></td></tr>",
            e.seq,
            when(e.at),
            esc(&e.kind),
            esc(e.step.as_deref().unwrap_or("")),
            esc(e.actor.as_deref().unwrap_or("")),
            esc(&e.data),
            esc(&e.hash[..12.min(e.hash.len())]),
            h = esc(&e.hash),
        );
    }
    body.push_str("</tbody></table>");
}
