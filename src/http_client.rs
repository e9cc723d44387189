//! The one way Baton builds outbound HTTP clients: rustls with ring and the webpki roots, so
//! TLS works the same on every machine whatever certificates it has installed, and no crate
//! picks a different crypto provider behind our back.

use std::sync::{Arc, OnceLock};

/// What Baton tells the servers it calls.
pub const USER_AGENT: &str = concat!("baton/", env!("CARGO_PKG_VERSION"));

fn tls() -> rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            // reqwest is built for HTTP/1.1 only.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            config
        })
        .clone()
}

/// A client builder with Baton's TLS settings and user agent; callers add timeouts, redirect
/// policy and pinned addresses.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls())
        .user_agent(USER_AGENT)
}

/// A client with Baton's defaults, for callers that need nothing else.
pub fn client() -> reqwest::Client {
    builder()
        .build()
        .expect("the TLS settings are fixed and valid")
}

/// A wait as servers write it in `Retry-After` (and Discord in `retry_after` and its
/// `X-RateLimit-Reset-After`): seconds, whole or fractional, capped at `max`. The cap is applied
/// before converting, since a huge number does not fit a `Duration`; a negative or unreadable
/// value (an HTTP date included: no server Baton talks to sends one) is `None`.
pub fn wait_seconds(text: &str, max: std::time::Duration) -> Option<std::time::Duration> {
    let s: f64 = text.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0)
        .then(|| std::time::Duration::from_secs_f64(s.min(max.as_secs_f64())))
}

/// The `Retry-After` header of a response, read with [`wait_seconds`].
pub fn retry_after(
    headers: &reqwest::header::HeaderMap,
    max: std::time::Duration,
) -> Option<std::time::Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| wait_seconds(v, max))
}

/// What went wrong with a request, in words a person can act on: the cause at the bottom of
/// reqwest's error (`connection refused`, a certificate problem, a timeout) rather than its
/// top line ("error sending request"), and never the URL, which may carry a secret.
pub fn describe(e: &reqwest::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        // hyper and reqwest repeat their callers' words; keep each distinct line once.
        if !text.is_empty() && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = s.source();
    }
    let root = causes.last().cloned();
    if e.is_timeout() {
        "it timed out".to_owned()
    } else if e.is_connect() {
        match root {
            Some(r) => format!("could not connect ({r})"),
            None => "could not connect".to_owned(),
        }
    } else if e.is_body() || e.is_decode() {
        match root {
            Some(r) => format!("the answer could not be read ({r})"),
            None => "the answer could not be read".to_owned(),
        }
    } else {
        match root {
            Some(r) => format!("the request failed ({r})"),
            None => "the request failed".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waits_are_read_in_seconds_whole_or_fractional_and_capped() {
        let max = Duration::from_secs(3600);
        assert_eq!(wait_seconds("2", max), Some(Duration::from_secs(2)));
        assert_eq!(
            wait_seconds(" 0.352 ", max),
            Some(Duration::from_millis(352))
        );
        assert_eq!(wait_seconds("1e12", max), Some(max));
        assert_eq!(wait_seconds("1e300", max), Some(max));
        assert_eq!(wait_seconds("-1", max), None);
        assert_eq!(wait_seconds("soon", max), None);
        assert_eq!(wait_seconds("Wed, 21 Oct 2015 07:28:00 GMT", max), None);
    }
}
