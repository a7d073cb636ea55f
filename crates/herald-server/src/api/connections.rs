//! The server API acting on live connections, on every node of a cluster:
//! - `POST /api/disconnect {user|client, reason?, reconnect?}` ends a user's connections (every
//!   WebSocket and SSE/NDJSON stream it has) or one client's, telling them why and whether to
//!   come back;
//! - `POST /api/subscribe {user|client, channel}` subscribes them to a channel from now on (a
//!   server-side subscription, whatever their tokens grant), each told with a `subscribed` push
//!   or event;
//! - `POST /api/unsubscribe {user|client, channel, reason?}` ends their subscription to one
//!   channel, telling them why; the connections stay.
//!
//! Both need a full API key: they reach anyone's connections. Polls hold no connection: each
//! poll names its channels afresh.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use herald_core::{ChannelName, PublishRequest};
use serde::Deserialize;

use super::caller::JsonBody;
use super::webhooks::WebhookAdmin;
use crate::control::{CONTROL_CHANNEL, ControlMessage, Order, Target};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    user: Option<String>,
    client: Option<String>,
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeRequest {
    user: Option<String>,
    client: Option<String>,
    channel: String,
    reason: Option<String>,
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
    let target = target(request.user, request.client)?;
    let reason = reason(request.reason, "disconnected by the server")?;
    let order = Order::Disconnect { reason, reconnect: request.reconnect.unwrap_or(false) };
    send(&app, ControlMessage { target, order }).await
}

pub(super) async fn subscribe(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    body: JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: SubscribeRequest = body.parse()?;
    let target = target(request.user, request.client)?;
    let channel = channel(&request.channel)?;
    send(&app, ControlMessage { target, order: Order::Subscribe { channel: channel.to_string() } }).await
}

pub(super) async fn unsubscribe(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    body: JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: UnsubscribeRequest = body.parse()?;
    let target = target(request.user, request.client)?;
    let channel = channel(&request.channel)?;
    let reason = reason(request.reason, "unsubscribed by the server")?;
    send(&app, ControlMessage { target, order: Order::Unsubscribe { channel: channel.to_string(), reason } }).await
}

/// The connections a request names: a user's, or one client's.
fn target(user: Option<String>, client: Option<String>) -> Result<Target, ApiError> {
    match (user, client) {
        (Some(user), None) if !user.is_empty() && user.len() <= MAX_FIELD => Ok(Target::User(user)),
        (None, Some(client)) => {
            crate::presence::ClientId::parse(&client)
                .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.code, error.message))?;
            Ok(Target::Client(client))
        }
        (Some(_), Some(_)) => Err(invalid("give either user or client, not both")),
        (None, None) => Err(invalid("give the user (a token's sub) or the client id")),
        (Some(_), None) => Err(invalid(format!("user is 1 to {MAX_FIELD} characters"))),
    }
}

/// A channel a connection may be subscribed to by the server: any but the server's own.
fn channel(name: &str) -> Result<ChannelName, ApiError> {
    let channel = ChannelName::new(name)
        .map_err(|error| ApiError::bad_request("invalid_channel", format!("{name:?}: {error}")))?;
    if crate::control::reserved::is_reserved(&channel) {
        return Err(ApiError::bad_request("invalid_channel", format!("{channel} is the server's own")));
    }
    Ok(channel)
}

fn reason(given: Option<String>, default: &str) -> Result<String, ApiError> {
    let reason = given.unwrap_or_else(|| default.to_string());
    if reason.is_empty() || reason.len() > MAX_FIELD {
        return Err(invalid(format!("reason is 1 to {MAX_FIELD} characters")));
    }
    Ok(reason)
}

/// Publishes the message on the control channel, through the engine, so that every node (this
/// one included) acts on it.
async fn send(app: &AppState, message: ControlMessage) -> Result<Json<serde_json::Value>, ApiError> {
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
