//! Fetching a JWKS document from a URL (`[auth] jwks = "https://…"`): a plain HTTP/1 GET over
//! rustls (Mozilla's roots) or, for loopback only, plain HTTP. The authenticator keeps the keys
//! and refreshes them periodically and when a token names a key it does not know.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// A fetch gives up after this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches the document at `url`.
pub async fn fetch(url: &str) -> Result<String, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_now(url)).await.map_err(|_| format!("{url}: timed out"))?
}

async fn fetch_now(url: &str) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|error| format!("{url}: {error}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: only https:// (or http:// to loopback) is supported")),
    };
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addresses: Vec<_> =
        tokio::net::lookup_host((host.as_str(), port)).await.map_err(|error| format!("{url}: {error}"))?.collect();
    if !https && !addresses.iter().all(|address| address.ip().is_loopback()) {
        return Err(format!("{url}: plain http:// is only allowed to loopback; use https://"));
    }
    let stream = TcpStream::connect(&addresses[..]).await.map_err(|error| format!("{url}: {error}"))?;
    let path = uri.path_and_query().map_or("/", |path| path.as_str()).to_string();
    if https {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|error| format!("{url}: {error}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|error| format!("{url}: TLS: {error}"))?;
        get(stream, &host, &path, url).await
    } else {
        get(stream, &host, &path, url).await
    }
}

async fn get<I>(io: I, host: &str, path: &str, url: &str) -> Result<String, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|error| format!("{url}: {error}"))?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|error| error.to_string())?;
    let response = sender.send_request(request).await.map_err(|error| format!("{url}: {error}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|error| format!("{url}: {error}"))?
        .to_bytes();
    connection.abort();
    if !status.is_success() {
        return Err(format!("{url}: answered {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
}
