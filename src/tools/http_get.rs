//! `http.get` (read): GET a URL whose host is on the allow-list. Loopback, private, link-local
//! and other internal addresses are refused unless the allow-list names that address itself or
//! `BATON_HTTP_ALLOW_PRIVATE` is set, so a public name that resolves inward (DNS rebinding) is
//! still refused. The request goes to the address that was checked, not to a second lookup.

use super::{ToolError, response_value};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

/// Largest body returned to the workflow.
const MAX_BODY: usize = 256 * 1024;

/// Hosts `http.get` may reach.
#[derive(Debug, Clone, Default)]
pub struct HostAllowList {
    /// Exact host names or IP literals, or `*.example.com` for a domain and its subdomains.
    pub hosts: Vec<String>,
    /// Let allow-listed names resolve to internal addresses.
    pub allow_private: bool,
    /// Baton's own address, which steps may always call (`{{ baton.local_url }}`).
    pub own: Option<SocketAddr>,
}

impl HostAllowList {
    fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(domain) => host == domain || host.ends_with(&format!(".{domain}")),
                None => host == h,
            }
        })
    }
}

/// Addresses that lead inside: loopback, private, link-local, unspecified, multicast, CGNAT,
/// unique-local IPv6, and IPv4 mapped into IPv6.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Redirects `http.get` follows at most; each hop is checked like the first URL.
const MAX_REDIRECTS: usize = 5;

/// Where a request may go after the checks: the URL, its host as written, and the address
/// that was checked (the request goes there, not to a second lookup).
struct Target {
    url: reqwest::Url,
    host: String,
    addr: SocketAddr,
}

/// Checks a URL against the scheme rule, the allow-list and the address rules.
async fn check(allow: &HostAllowList, url: reqwest::Url) -> Result<Target, ToolError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ToolError::Refused(format!(
            "scheme `{}` is not allowed (http, https)",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ToolError::Refused(
            "credentials in URLs are not allowed".into(),
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ToolError::BadArgs("the URL has no host".into()))?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let literal: Option<IpAddr> = bare.parse().ok();
    // Baton's own address is allowed as it is: the console's own endpoints.
    if let (Some(ip), Some(own)) = (literal, allow.own)
        && SocketAddr::new(ip, port) == own
    {
        return Ok(Target {
            url,
            host: bare,
            addr: own,
        });
    }
    if !allow.allows(&bare) {
        return Err(ToolError::Refused(format!(
            "host `{bare}` is not on BATON_HTTP_ALLOW"
        )));
    }
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|e| ToolError::Failed(format!("could not resolve `{bare}`: {e}")))?
            .collect(),
    };
    // An IP literal on the allow-list is an explicit permission for that address.
    let explicit = literal.is_some();
    let addr = addrs
        .iter()
        .copied()
        .find(|a| explicit || allow.allow_private || !is_internal(a.ip()))
        .ok_or_else(|| ToolError::Refused(format!("`{bare}` resolves to an internal address; set BATON_HTTP_ALLOW_PRIVATE=true to allow it")))?;
    Ok(Target {
        url,
        host: bare,
        addr,
    })
}

/// The statuses a step accepts (`accept = [200, 404]`); `None` means any 2xx.
fn accepted(args: &Value) -> Result<Option<Vec<u16>>, ToolError> {
    let Some(list) = args.get("accept") else {
        return Ok(None);
    };
    let bad =
        || ToolError::BadArgs("`accept` must be a list of HTTP statuses, like [200, 404]".into());
    let list = list.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|v| {
            v.as_u64()
                .filter(|n| (100..600).contains(n))
                .map(|n| n as u16)
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(super) async fn call(allow: &HostAllowList, args: &Value) -> Result<Value, ToolError> {
    let url = args
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::BadArgs("`url` must be a string".into()))?;
    let accept = accepted(args)?;
    let first = reqwest::Url::parse(url)
        .map_err(|e| ToolError::BadArgs(format!("`{url}` is not a URL: {e}")))?;
    let mut target = check(allow, first).await?;
    let mut hops: Vec<String> = Vec::new();
    loop {
        let client = crate::http_client::builder()
            // Redirects are followed here, one checked hop at a time.
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&target.host, target.addr)
            .build()
            .map_err(|e| ToolError::Failed(format!("could not build the HTTP client: {e}")))?;
        let url = target.url.clone();
        let response = client.get(url.clone()).send().await.map_err(|e| {
            ToolError::Failed(format!(
                "GET {url} failed: {}",
                crate::http_client::describe(&e)
            ))
        })?;
        let status = response.status();
        let is_accepted = |s: reqwest::StatusCode| match &accept {
            Some(list) => list.contains(&s.as_u16()),
            None => s.is_success(),
        };
        if status.is_redirection() && !is_accepted(status) {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    ToolError::Failed(format!("GET {url} answered {status} without a Location"))
                })?;
            let next = url.join(location).map_err(|e| {
                ToolError::Failed(format!(
                    "GET {url} redirected to `{location}`, which is not a URL: {e}"
                ))
            })?;
            if hops.len() >= MAX_REDIRECTS {
                return Err(ToolError::Failed(format!(
                    "GET {} was redirected more than {MAX_REDIRECTS} times; not followed further",
                    hops.first().map(String::as_str).unwrap_or(url.as_str())
                )));
            }
            hops.push(url.to_string());
            target = check(allow, next.clone()).await.map_err(|e| {
                ToolError::Refused(format!(
                    "GET {url} redirected to {next}, which is not followed: {}",
                    e.reason()
                ))
            })?;
            continue;
        }
        let (status, mut value) = response_value(response, MAX_BODY).await?;
        if !is_accepted(status) {
            let expected = match &accept {
                Some(list) => format!(
                    "the step accepts {}",
                    list.iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "only a 2xx counts as success; list others in `accept`".to_owned(),
            };
            return Err(ToolError::Failed(format!(
                "GET {url} answered {status} ({expected})"
            )));
        }
        value["url"] = Value::String(url.to_string());
        if !hops.is_empty() {
            value["redirected_from"] = Value::from(hops);
        }
        return Ok(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(hosts: &[&str]) -> HostAllowList {
        HostAllowList {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allow_private: false,
            own: None,
        }
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard_domain() {
        let l = list(&["status.example.com", "*.acme.io"]);
        assert!(l.allows("status.example.com"));
        assert!(l.allows("api.acme.io") && l.allows("acme.io"));
        assert!(
            !l.allows("example.com")
                && !l.allows("evilacme.io")
                && !l.allows("status.example.com.evil.org")
        );
    }

    #[test]
    fn internal_ranges_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860:4860::8888"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_host_not_on_the_list_is_refused_before_any_request() {
        let err = call(
            &list(&["example.com"]),
            &json!({"url": "http://127.0.0.1:9/x"}),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ToolError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_private_is_allowed() {
        let err = call(
            &list(&["localhost"]),
            &json!({"url": "http://localhost:9/x"}),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ToolError::Refused(ref m) if m.contains("internal")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn other_schemes_and_credentials_are_refused() {
        for url in ["file:///etc/passwd", "http://user:pw@example.com/"] {
            let err = call(&list(&["example.com"]), &json!({ "url": url }))
                .await
                .unwrap_err();
            assert!(matches!(err, ToolError::Refused(_)), "{url}: {err}");
        }
    }

    /// A server on loopback: `/ok`, `/missing` (404), `/to-ok` (302 to /ok), `/loop`
    /// (302 to itself), `/away` (302 to a host not on the list).
    async fn server() -> String {
        use axum::http::{StatusCode, header};
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/missing",
                get(|| async { (StatusCode::NOT_FOUND, "no such page") }),
            )
            .route(
                "/to-ok",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/ok")]) }),
            )
            .route(
                "/loop",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
            )
            .route(
                "/away",
                get(|| async {
                    (
                        StatusCode::FOUND,
                        [(header::LOCATION, "http://169.254.169.254/latest/meta-data")],
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    #[tokio::test]
    async fn a_redirect_is_followed_only_to_where_the_first_url_could_go() {
        let base = server().await;
        let allow = list(&["127.0.0.1"]);
        let v = call(&allow, &json!({"url": format!("{base}/to-ok")}))
            .await
            .unwrap();
        assert_eq!(
            (v["status"].as_u64(), v["body"].as_str()),
            (Some(200), Some("fine"))
        );
        assert_eq!(v["redirected_from"][0], format!("{base}/to-ok"));
        let err = call(&allow, &json!({"url": format!("{base}/away")}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Refused(m) if m.contains("redirected to http://169.254.169.254/latest/meta-data, which is not followed: host `169.254.169.254` is not on BATON_HTTP_ALLOW")),
            "{err}"
        );
        let err = call(&allow, &json!({"url": format!("{base}/loop")}))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("redirected more than 5 times"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_status_that_is_not_2xx_fails_unless_the_step_accepts_it() {
        let base = server().await;
        let allow = list(&["127.0.0.1"]);
        let err = call(&allow, &json!({"url": format!("{base}/missing")}))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("answered 404 Not Found (only a 2xx counts"),
            "{err}"
        );
        let v = call(
            &allow,
            &json!({"url": format!("{base}/missing"), "accept": [200, 404]}),
        )
        .await
        .unwrap();
        assert_eq!(v["status"], 404);
        let v = call(
            &allow,
            &json!({"url": format!("{base}/to-ok"), "accept": [302]}),
        )
        .await
        .unwrap();
        assert_eq!(
            v["status"], 302,
            "an accepted redirect is the answer itself"
        );
        let err = call(
            &allow,
            &json!({"url": format!("{base}/ok"), "accept": "200"}),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ToolError::BadArgs(_)), "{err}");
    }
}
