//! The Pusher Channels door: pusher-js, Laravel Echo and Pusher's server SDKs talk to Herald
//! unchanged, onto the same hub as Herald's own protocol (see `docs/pusher.md`).
//!
//! - [`apps`]: the apps of `[[pusher.apps]]`, and the channel rules their names imply;
//! - [`signature`]: the protocol's signatures (channel and user auth, HTTP API requests);
//! - [`events`]: the door's events on the wire, and publications in their Pusher form;
//! - [`session`]: one Pusher connection's state machine, whatever carries it;
//! - [`socket`]: `GET /app/{key}`, the WebSocket route;
//! - [`http`]: the HTTP fallbacks (`xhr_streaming`, `xhr`, `xhr_send`) under `httpPath`;
//! - [`api`]: the HTTP API under `/apps/{id}`;
//! - [`webhooks`]: webhooks in Pusher's format, through Herald's outbox.

pub mod api;
pub mod apps;
pub mod events;
pub mod http;
pub mod session;
pub mod signature;
pub mod socket;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The door's routes for clients: the WebSocket route (at the root, and under `httpPath`, where
/// pusher-js puts it when `httpPath` is set), and the HTTP fallbacks under `httpPath`.
pub fn client_routes(http_path: &str) -> Router<AppState> {
    let session = format!("{http_path}/app/{{key}}/{{server}}/{{session}}");
    Router::new()
        .route("/app/{key}", get(socket::upgrade))
        .route(&format!("{http_path}/app/{{key}}"), get(socket::upgrade))
        // `xhr_streaming` and `xhr` (a static segment wins over the parameter).
        .route(&format!("{session}/{{receiver}}"), post(http::receiving))
        .route(&format!("{session}/xhr_send"), post(http::xhr_send))
        .layer(axum::Extension(Arc::new(http::HttpSessions::default())))
}

/// The door's HTTP API for server SDKs.
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/apps/{id}/events", post(api::events))
        .route("/apps/{id}/batch_events", post(api::batch_events))
        .route("/apps/{id}/channels", get(api::channels))
        .route("/apps/{id}/channels/{name}", get(api::channel))
        .route("/apps/{id}/channels/{name}/users", get(api::users))
        .route("/apps/{id}/users/{user}/terminate_connections", post(api::terminate_connections))
}
