//! The server API under `/api`, for backends holding an API key (`Authorization: Bearer
//! <key>`): publish, broadcast, channels, history and presence ([`channels`]), and the webhook
//! endpoints ([`webhooks`]); [`caller`] says who is calling and reads JSON bodies.

pub mod caller;
pub mod channels;
pub mod webhooks;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/publish", post(channels::publish))
        .route("/broadcast", post(channels::broadcast))
        .route("/channels", get(channels::channels))
        // A wildcard, since channel names may contain '/': `/api/channels/a/b/history`.
        .route("/channels/{*channel_and_action}", get(channels::channel_resource))
        .nest("/webhooks", webhooks::router())
}
