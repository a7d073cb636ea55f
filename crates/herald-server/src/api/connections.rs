//! `POST /api/disconnect {user|client, reason?, reconnect?}`: ends a user's connections (every
//! WebSocket and SSE/NDJSON stream it has, on every node) or one client's, telling them why
//! and whether to come back. Needs a full API key: it can end anyone's connections.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use herald_core::{ChannelName, PublishRequest};
use serde::Deserialize;

use super::caller::JsonBody;
use super::webhooks::WebhookAdmin;
use crate::control::{CONTROL_CHANNEL, ControlMessage, Target};
use crate::error::ApiError;
use crate::state::AppState;

/// The longest user id, client id or reason taken.
const MAX_FIELD: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user: Option<String>,
    client: Option<String>,
    reason: Option<String>,
    /// Whether the client should reconnect (default: no, as for a ban).
    reconnect: Option<bool>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

pub(super) async fn disconnect(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    body: JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: DisconnectRequest = body.parse()?;
    let target = match (request.user, request.client) {
        (Some(user), None) if !user.is_empty() && user.len() <= MAX_FIELD => Target::User(user),
        (None, Some(client)) => {
            crate::presence::ClientId::parse(&client)
                .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.code, error.message))?;
            Target::Client(client)
        }
        (Some(_), Some(_)) => return Err(invalid("give either user or client, not both")),
        (None, None) => return Err(invalid("give the user (a token's sub) or the client id to disconnect")),
        (Some(_), None) => return Err(invalid(format!("user is 1 to {MAX_FIELD} characters"))),
    };
    let reason = request.reason.unwrap_or_else(|| "disconnected by the server".to_string());
    if reason.is_empty() || reason.len() > MAX_FIELD {
        return Err(invalid(format!("reason is 1 to {MAX_FIELD} characters")));
    }
    let message = ControlMessage { target, reason, reconnect: request.reconnect.unwrap_or(false) };
    // Through the engine, so every node (this one included) acts on it.
    let channel = ChannelName::new(CONTROL_CHANNEL).expect("the control channel's name is valid");
    let data = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
    let published = app.hub.publish_batch(vec![PublishRequest { channel, data, idempotency_key: None }]).await;
    match published.into_iter().next() {
        Some(Ok(_)) => Ok(Json(serde_json::json!({}))),
        Some(Err(error)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", error.to_string()))
        }
        None => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the engine gave no outcome")),
    }
}
