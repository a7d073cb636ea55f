//! The admin console at `/admin`: server-rendered pages behind a login with an API key (a
//! session cookie: HttpOnly, SameSite=Strict; forms carry a CSRF token and must come from this
//! origin). On a dev-mode server (no API keys, no `[auth]`, loopback) it is open and says so.
//! What it shows comes from the same places as the server API: the hub, the connection
//! limiter, the webhook dispatcher and the settings.

pub mod pages;
pub mod session;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::console))
        .route("/login", post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/stats.json", get(pages::stats))
        .route("/channel", get(pages::channel))
        .route("/channel.json", get(pages::channel_json))
        .route("/publish", post(pages::publish))
        .route("/webhooks/{id}", get(pages::webhook))
        .route("/webhooks/{id}/{action}", post(pages::webhook_action))
}
