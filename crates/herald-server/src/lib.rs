//! The Herald server: configuration, the HTTP router, one module per transport, the server API.
//!
//! The binary (`main.rs`) parses flags and calls [`server::start`]; tests call it too, on an
//! ephemeral port.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod cursor;
pub mod error;
pub mod jwks;
pub mod metrics;
pub mod pages;
pub mod presence;
pub mod server;
pub mod transport;
pub mod wire;
pub mod wiring;
