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
