//! The one way Herald makes outgoing HTTPS clients (webhook deliveries, JWKS fetches): reqwest
//! over rustls with ring and Mozilla's root certificates, no proxy from the environment.

use std::sync::Arc;

use tokio_rustls::rustls;

/// A reqwest client builder with Herald's TLS set up; callers add their own timeouts, resolver
/// and redirect policy.
pub fn builder(user_agent: &'static str) -> reqwest::ClientBuilder {
    crate::install_crypto_provider();
    reqwest::Client::builder().tls_backend_preconfigured(tls_config()).no_proxy().user_agent(user_agent)
}

/// A transport error in a few words: its chain of sources, whose last names the real cause
/// (refused, reset, a certificate).
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() { "timed out".to_string() } else { error.to_string() };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
