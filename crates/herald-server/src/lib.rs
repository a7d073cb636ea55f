//! The Herald server: configuration, the HTTP router, one module per transport, the server API.
//!
//! The binary (`main.rs`) parses flags and calls [`server::start`]; tests call it too, on an
//! ephemeral port.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod control;
pub mod cursor;
pub mod demo;
pub mod encode;
pub mod error;
pub mod front;
pub mod http_client;
pub mod jwks;
pub mod metered;
pub mod metrics;
pub mod ops;
pub mod presence;
pub mod proxy;
pub mod publish;
pub mod pusher;
pub mod router;
pub mod server;
pub mod state;
pub mod transport;
pub mod web;
pub mod webhooks;
pub mod wiring;

/// Makes ring the process's TLS crypto provider (Herald's choice everywhere), which the
/// HTTP client (reqwest, for webhooks) requires before any client is built. Idempotent.
pub fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}
