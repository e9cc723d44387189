//! Logging through tracing: human-readable by default, JSON when `BATON_LOG_FORMAT=json`.
//! Every line passes the same redactor as the store, so a secret that reaches a log message
//! (in an error from a server, say) is not written out.

use crate::config::LogFormat;
use crate::core::audit::Redactor;
use std::io::Write;
use std::sync::{Arc, RwLock};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber. Logs go to stderr so command output stays clean.
pub fn init(format: LogFormat, filter: &str, redactor: Redactor) {
    // rmcp logs each MCP session's whole handshake at info; Baton logs what matters of it.
    let filter = if filter.contains("rmcp") {
        filter.to_owned()
    } else {
        format!("{filter},rmcp=warn")
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr);
    set_redactor(redactor);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// What log lines are redacted with: the settings' secrets from the start, and everything
/// the store redacts (values MCP files expand included) once it is open.
static REDACTOR: RwLock<Option<Arc<Redactor>>> = RwLock::new(None);

/// Log lines from now on are redacted with `redactor`.
pub fn set_redactor(redactor: Redactor) {
    if let Ok(mut r) = REDACTOR.write() {
        *r = Some(Arc::new(redactor));
    }
}

/// The replica this process is, named on every log line once it is known.
static REPLICA: RwLock<Option<String>> = RwLock::new(None);

/// Log lines from now on name this replica (`replica=NAME`, or a `replica` field in JSON), so
/// the logs of several replicas can be read together.
pub fn set_replica(name: &str) {
    if let Ok(mut r) = REPLICA.write() {
        *r = Some(name.to_owned());
    }
}

/// A log line naming the replica it comes from.
fn with_replica(line: String) -> String {
    let Some(name) = REPLICA.read().ok().and_then(|r| r.clone()) else {
        return line;
    };
    match line.strip_prefix('{') {
        Some(rest) => format!("{{\"replica\":{},{rest}", serde_json::Value::String(name)),
        None => format!("replica={name} {line}"),
    }
}

/// Makes a writer per log event that redacts the event's text before it reaches stderr.
struct RedactedStderr;

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedLine;
    fn make_writer(&'a self) -> RedactedLine {
        let redactor = REDACTOR
            .read()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_default();
        RedactedLine {
            redactor,
            buf: Vec::new(),
        }
    }
}

/// One event's text, written to stderr whole (and redacted) when the event is done.
struct RedactedLine {
    redactor: Arc<Redactor>,
    buf: Vec<u8>,
}

impl Write for RedactedLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let line = with_replica(self.take());
        std::io::stderr().lock().write_all(line.as_bytes())
    }
}

impl RedactedLine {
    /// The event's text so far, redacted, leaving the buffer empty.
    fn take(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.buf);
        let line = if self.redactor.is_empty() {
            text.into_owned()
        } else {
            self.redactor.redact_text(&text)
        };
        self.buf.clear();
        line
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_in_a_log_line_is_written_redacted() {
        let mut line = RedactedLine {
            redactor: Arc::new(Redactor::new(["sk-in-a-log-123".to_owned()])),
            buf: Vec::new(),
        };
        write!(line, "GET https://x/?key=sk-in-a-log-123 failed").unwrap();
        assert_eq!(line.take(), "GET https://x/?key=[redacted] failed");
    }

    #[test]
    fn once_known_the_replica_is_named_on_text_and_json_lines() {
        set_replica("baton-\"2\"");
        assert_eq!(
            with_replica("INFO up\n".into()),
            "replica=baton-\"2\" INFO up\n"
        );
        let json = with_replica("{\"level\":\"INFO\"}\n".into());
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["replica"], "baton-\"2\"");
        assert_eq!(v["level"], "INFO");
    }
}
