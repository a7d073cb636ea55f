//! The server API under `/api`, for backends holding an API key (`Authorization: Bearer
//! <key>`): publish, broadcast, channels, history and presence ([`channels`]), and the webhook
//! endpoints ([`webhooks`]); [`caller`] says who is calling and reads JSON bodies. Its OpenAPI
//! document (`openapi.json`, served at `/api/openapi.json`) is checked against [`routes`].

pub mod caller;
pub mod channels;
pub mod connections;
pub mod webhooks;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get, post};

use crate::state::AppState;

/// The OpenAPI 3.1 document of every route here.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route of the server API, under `/api`: the router is made of these, and the test of
/// the OpenAPI document checks that it describes exactly them.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    let mut routes = vec![
        ("/publish", post(channels::publish)),
        ("/broadcast", post(channels::broadcast)),
        ("/channels", get(channels::channels)),
        // A wildcard, since channel names may contain '/': `/api/channels/a/b/history`.
        ("/channels/{*channel_and_action}", get(channels::channel_resource)),
        ("/disconnect", post(connections::disconnect)),
        ("/subscribe", post(connections::subscribe)),
        ("/unsubscribe", post(connections::unsubscribe)),
        ("/openapi.json", get(openapi)),
    ];
    routes.extend(webhooks::routes());
    routes
}

pub fn router() -> Router<AppState> {
    routes().into_iter().fold(Router::new(), |router, (path, route)| router.route(path, route))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
