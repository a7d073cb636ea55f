//! `/api/webhooks`: registering endpoints, changing, pausing and deleting them, their delivery
//! log, and replaying. Every call needs a full API key (or dev mode): an endpoint can receive
//! any channel's publications.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use herald_storage::outbox::{DeliveryRecord, DeliveryState, EndpointRecord};
use herald_wire::webhook::{
    CreateEndpoint, Delivery, DeliveryLog, Endpoint, EndpointList, Replay, Replayed, UpdateEndpoint,
};
use serde::Deserialize;

use super::caller::{ApiCaller, JsonBody};
use crate::config::KeyScope;
use crate::error::ApiError;
use crate::state::AppState;
use crate::webhooks::rules::{check_description, check_events, check_patterns};
use herald_core::unix_millis;

use crate::webhooks::EndpointState;
use crate::webhooks::signature;
use herald_wire::ErrorBody;

/// Deliveries per log page at most.
const MAX_LOG_PAGE: usize = 1000;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/webhooks", post(create).get(list)),
        ("/webhooks/{id}", get(show).patch(update).delete(remove)),
        ("/webhooks/{id}/deliveries", get(deliveries)),
        ("/webhooks/{id}/replay", post(replay)),
    ]
}

/// Proof of a full API key (or dev mode).
pub struct WebhookAdmin;

impl FromRequestParts<AppState> for WebhookAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        match ApiCaller::from_request_parts(parts, app).await? {
            ApiCaller::Server { scope: KeyScope::Full, .. } => Ok(Self),
            _ => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "managing webhooks needs a full API key"))
            }
        }
    }
}

fn bad_request(error: ErrorBody) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, error.code, error.message)
}

/// The secret given (checked), or a new one.
fn given_or_new_secret(secret: Option<String>) -> Result<String, ApiError> {
    match secret {
        Some(secret) => signature::secret_key(&secret).map(|_| secret).map_err(bad_request),
        None => Ok(signature::generate_secret()),
    }
}

fn store_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outbox_unavailable", error.to_string())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "webhook_not_found", format!("no webhook endpoint {id:?}"))
}

/// An endpoint as the API shows it; the secret only where asked (create, show, rotation).
fn endpoint_view(endpoint: &EndpointRecord, with_secret: bool) -> Endpoint {
    Endpoint {
        id: endpoint.id.clone(),
        url: endpoint.url.clone(),
        channels: endpoint.channels.clone(),
        events: endpoint.events.clone(),
        description: endpoint.description.clone(),
        paused: endpoint.paused,
        active: endpoint.is_active(),
        disabled_reason: endpoint.disabled_reason.clone(),
        failing_since: endpoint.failing_since,
        created_at: endpoint.created_at,
        from_config: endpoint.from_config,
        secret: with_secret.then(|| endpoint.secret.clone()),
        previous_secret_valid_until: endpoint
            .previous_secret_until
            .filter(|until| with_secret && *until > unix_millis()),
    }
}

fn delivery_view(delivery: &DeliveryRecord) -> Delivery {
    Delivery {
        id: format!("msg_{}", delivery.id),
        event_type: delivery.event_type.clone(),
        channel: delivery.channel.clone(),
        state: delivery.state.as_str().to_string(),
        attempts: delivery.attempts,
        created_at: delivery.created_at,
        next_attempt_at: (delivery.state == DeliveryState::Pending).then_some(delivery.next_attempt_at),
        last_status: delivery.last_status,
        last_error: delivery.last_error.clone(),
        last_latency_ms: delivery.last_latency_ms,
        finished_at: delivery.finished_at,
    }
}

async fn create(_admin: WebhookAdmin, State(app): State<AppState>, body: JsonBody) -> Result<Response, ApiError> {
    let body: CreateEndpoint = body.parse()?;
    let url = app.webhooks.policy().check_url(&body.url).await.map_err(bad_request)?;
    check_patterns(&body.channels).map_err(bad_request)?;
    check_events(&body.events).map_err(bad_request)?;
    check_description(body.description.as_deref()).map_err(bad_request)?;
    let secret = given_or_new_secret(body.secret)?;
    let record = EndpointRecord {
        id: format!("wh_{}", crate::presence::ClientId::random()),
        url: url.to_string(),
        channels: body.channels,
        events: body.events,
        secret,
        previous_secret: None,
        previous_secret_until: None,
        description: body.description,
        paused: false,
        disabled_reason: None,
        failing_since: None,
        created_at: unix_millis(),
        from_config: false,
        pusher_key: None,
    };
    app.webhooks.create_endpoint(record.clone()).await.map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(endpoint_view(&record, true))).into_response())
}

async fn list(_admin: WebhookAdmin, State(app): State<AppState>) -> Json<EndpointList> {
    let webhooks = app.webhooks.endpoints().iter().map(|endpoint| endpoint_view(endpoint, false)).collect();
    Json(EndpointList { webhooks })
}

async fn show(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let endpoint = app.webhooks.endpoint(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(endpoint_view(&endpoint, true)))
}

async fn update(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Endpoint>, ApiError> {
    let body: UpdateEndpoint = body.parse()?;
    let current = app.webhooks.endpoint(&id).ok_or_else(|| not_found(&id))?;
    let rotating = body.secret.is_some() || body.rotate_secret == Some(true);
    let configured_only = body.url.is_some()
        || body.channels.is_some()
        || body.events.is_some()
        || body.description.is_some()
        || rotating;
    if current.from_config && configured_only {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_by_config",
            "this endpoint is declared in the configuration file: change it there (only paused may change here)",
        ));
    }
    // Everything checked first; then applied at once to the endpoint as it is by then.
    let url = match &body.url {
        Some(url) => Some(app.webhooks.policy().check_url(url).await.map_err(bad_request)?.to_string()),
        None => None,
    };
    if let Some(channels) = &body.channels {
        check_patterns(channels).map_err(bad_request)?;
    }
    if let Some(events) = &body.events {
        check_events(events).map_err(bad_request)?;
    }
    check_description(body.description.as_deref()).map_err(bad_request)?;
    let new_secret = if rotating { Some(given_or_new_secret(body.secret)?) } else { None };
    let grace = app.settings.webhooks.secret_rotation_grace.as_millis() as u64;
    let changed = app
        .webhooks
        .update_endpoint(&id, |changed| {
            if let Some(url) = url {
                changed.url = url;
            }
            if let Some(channels) = body.channels {
                changed.channels = channels;
            }
            if let Some(events) = body.events {
                changed.events = events;
            }
            if let Some(description) = body.description {
                changed.description = Some(description);
            }
            if let Some(secret) = new_secret {
                changed.previous_secret = Some(std::mem::replace(&mut changed.secret, secret));
                changed.previous_secret_until = Some(unix_millis() + grace);
            }
            if let Some(paused) = body.paused {
                changed.set_paused(paused);
            }
        })
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(endpoint_view(&changed, rotating)))
}

async fn remove(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let endpoint = app.webhooks.endpoint(&id).ok_or_else(|| not_found(&id))?;
    if endpoint.from_config {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_by_config",
            "this endpoint is declared in the configuration file: remove it there",
        ));
    }
    if !app.webhooks.delete_endpoint(&id).await.map_err(store_error)? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    state: Option<String>,
    limit: Option<usize>,
    /// A delivery id (`msg_N`): older ones only, for paging.
    before: Option<String>,
}

async fn deliveries(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<DeliveryLog>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request("bad_request", rejection.body_text()))?;
    app.webhooks.endpoint(&id).ok_or_else(|| not_found(&id))?;
    let state = match query.state.as_deref() {
        None => None,
        Some(text) => Some(
            DeliveryState::parse(text)
                .ok_or_else(|| ApiError::bad_request("invalid_state", "state is one of pending, delivered, dead"))?,
        ),
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LOG_PAGE {
        return Err(ApiError::bad_request("invalid_limit", format!("`limit` must be 1 to {MAX_LOG_PAGE}")));
    }
    let before = match query.before.as_deref() {
        None => None,
        Some(text) => Some(
            text.trim_start_matches("msg_")
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request("invalid_before", "before is a delivery id like msg_42"))?,
        ),
    };
    let page = app.webhooks.outbox().deliveries(&id, state, before, limit).await.map_err(store_error)?;
    let next = (page.len() == limit).then(|| page.last().map(|last| format!("msg_{}", last.id))).flatten();
    let deliveries = page.iter().map(delivery_view).collect();
    Ok(Json(DeliveryLog { deliveries, next_before: next }))
}

async fn replay(
    _admin: WebhookAdmin,
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Replayed>, ApiError> {
    app.webhooks.endpoint(&id).ok_or_else(|| not_found(&id))?;
    let body: Replay = if body.is_empty() { Replay::default() } else { body.parse()? };
    if body.since.is_some_and(|since| since > i64::MAX as u64) {
        return Err(ApiError::bad_request("invalid_since", "since is milliseconds since the Unix epoch"));
    }
    let requeued = app.webhooks.replay(&id, body.since).await.map_err(store_error)?;
    Ok(Json(Replayed { requeued: requeued as u64 }))
}
