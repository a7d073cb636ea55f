//! Fetching a JWKS document from a URL (`[auth] jwks = "https://…"`) over HTTPS or, for
//! loopback only, plain HTTP. The authenticator keeps the keys and refreshes them periodically
//! and when a token names a key it does not know.

use std::time::Duration;

/// Largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// A fetch gives up after this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches the document at `url`.
pub async fn fetch(url: &str) -> Result<String, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_now(url)).await.map_err(|_| format!("{url}: timed out"))?
}

async fn fetch_now(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("{url}: {error}"))?;
    let https = match parsed.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(format!("{url}: only https:// (or http:// to loopback) is supported")),
    };
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_string();
    let port = parsed.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
    let addresses: Vec<_> =
        tokio::net::lookup_host((host.as_str(), port)).await.map_err(|error| format!("{url}: {error}"))?.collect();
    if !https && !addresses.iter().all(|address| address.ip().is_loopback()) {
        return Err(format!("{url}: plain http:// is only allowed to loopback; use https://"));
    }
    // The addresses checked are the ones connected to.
    let client = crate::http_client::builder(concat!("Herald/", env!("CARGO_PKG_VERSION")))
        .resolve_to_addrs(&host, &addresses)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| format!("{url}: {error}"))?;
    let mut response = client
        .get(parsed)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| format!("{url}: {error}"))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| format!("{url}: {error}"))? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!("{url}: the document is larger than {MAX_DOCUMENT} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(format!("{url}: answered {status}"));
    }
    String::from_utf8(body).map_err(|_| format!("{url}: not UTF-8"))
}
