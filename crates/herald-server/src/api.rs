//! The server API under `/api`: publish, broadcast, channels, history and presence, for
//! backends holding an API key (`Authorization: Bearer <key>`).

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use herald_core::{ChannelName, HistoryQuery, PublishRequest};
use serde::Deserialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::auth::Identity;
use crate::config::KeyScope;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{WirePosition, idempotency_key, json_payload, present_raw_value, publications_array, published_json};

/// Publications per history page at most.
const MAX_HISTORY_PAGE: usize = 1000;
/// Channels per broadcast at most.
const MAX_BROADCAST_CHANNELS: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/publish", post(publish))
        .route("/broadcast", post(broadcast))
        .route("/channels", get(channels))
        // A wildcard, since channel names may contain '/': `/api/channels/a/b/history`.
        .route("/channels/{*channel_and_action}", get(channel_resource))
        .nest("/webhooks", crate::webhooks::api::router())
}

/// Who is calling the server API: a backend with an API key (or anyone in dev mode), or, for
/// publishing only, a client whose token grants it.
pub enum ApiCaller {
    /// `key` is the key's index (none in dev mode), for its publish rate.
    Server {
        key: Option<usize>,
        scope: KeyScope,
    },
    Client(Identity),
}

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        if app.settings.api_dev_mode() {
            return Ok(Self::Server { key: None, scope: KeyScope::Full });
        }
        let Some(presented) = crate::auth::bearer(&parts.headers) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the server API needs `Authorization: Bearer <api key>`",
            ));
        };
        // Every key is compared, in constant time, so timing tells nothing about which matched.
        let mut matched = None;
        for (index, (key, scope)) in app.settings.api_keys.iter().enumerate() {
            if bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
                matched = Some((index, *scope));
            }
        }
        if let Some((index, scope)) = matched {
            return Ok(Self::Server { key: Some(index), scope });
        }
        match app.settings.auth.as_deref() {
            Some(auth) if presented.matches('.').count() == 2 => {
                Ok(Self::Client(Identity::User(Box::new(auth.verify(presented)?))))
            }
            _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the API key is not valid")),
        }
    }
}

impl ApiCaller {
    /// May this caller publish to `channels`? Takes one publish per channel from its rate.
    fn check_publish(&self, app: &AppState, channels: &[ChannelName]) -> Result<(), ApiError> {
        match self {
            Self::Server { scope, .. } if !scope.may_publish() => Err(read_only()),
            Self::Server { key, .. } => key.map_or(Ok(()), |key| app.api_rates.take(key, channels.len())),
            Self::Client(identity) => {
                for channel in channels {
                    crate::auth::may_publish(identity, app.hub.namespaces().options_for(channel), channel)?;
                }
                let user = identity.user().unwrap_or_default().to_string();
                app.client_api_rates.take(user, channels.len())
            }
        }
    }
}

fn read_only() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "this API key may only read")
}

/// Proof that the request may read through the server API: a key that may read, or dev mode.
pub struct ApiAccess;

impl FromRequestParts<AppState> for ApiAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        match ApiCaller::from_request_parts(parts, app).await? {
            ApiCaller::Server { scope, .. } if scope.may_read() => Ok(Self),
            ApiCaller::Server { .. } => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "this API key may only publish"))
            }
            ApiCaller::Client(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "a client token may only publish (POST /api/publish); this needs an API key",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow, default, deserialize_with = "present_raw_value")]
    data: Option<&'a RawValue>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    channels: Vec<String>,
    #[serde(borrow, default, deserialize_with = "present_raw_value")]
    data: Option<&'a RawValue>,
    idempotency_key: Option<String>,
}

/// Bodies must be declared JSON: a cross-site form or `text/plain` POST (which browsers send
/// without asking) is refused before it is read.
/// A JSON request body, parsed by the handler (so that the value may borrow from it). The
/// content type is checked on the request's own headers: a `HeaderMap` extractor would copy
/// them all on every publish.
pub(crate) struct JsonBody {
    json: bool,
    body: Result<Bytes, BytesRejection>,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
        let json =
            content_type.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        Ok(Self { json, body: Bytes::from_request(request, state).await })
    }
}

impl JsonBody {
    /// Whether the request came without a body (whatever its content type).
    pub(crate) fn is_empty(&self) -> bool {
        self.body.as_ref().is_ok_and(Bytes::is_empty)
    }

    /// The body as `T`: `415` unless sent as JSON, `413` over the body limit, `400` if invalid.
    pub(crate) fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        if !self.json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let body = self.body.as_ref().map_err(|rejection| {
            let code =
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_request" };
            ApiError::new(rejection.status(), code, rejection.body_text())
        })?;
        serde_json::from_slice(body)
            .map_err(|error| ApiError::bad_request("bad_request", format!("invalid body: {error}")))
    }
}

fn checked_idempotency_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    idempotency_key(key).map_err(|body| ApiError { status: StatusCode::BAD_REQUEST, body, headers: Vec::new() })
}

fn channel_name(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::new(name).map_err(|error| ApiError::bad_request("invalid_channel", format!("{name:?}: {error}")))
}

fn payload(app: &AppState, data: Option<&RawValue>) -> Result<Bytes, ApiError> {
    let data = data.ok_or_else(|| ApiError::bad_request("missing_field", "missing field `data`"))?;
    let limit = app.settings.limits.max_message_size.get();
    if data.get().len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("data is {} bytes; the limit is {limit}", data.get().len()),
        ));
    }
    Ok(json_payload(data))
}

async fn publish(
    caller: ApiCaller,
    State(app): State<AppState>,
    body: JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: PublishBody = body.parse()?;
    let channel = channel_name(&body.channel)?;
    caller.check_publish(&app, std::slice::from_ref(&channel))?;
    let request = PublishRequest {
        channel,
        data: payload(&app, body.data)?,
        idempotency_key: checked_idempotency_key(body.idempotency_key)?,
    };
    let published = crate::publish::publish(&app, request).await?;
    crate::metrics::published(crate::metrics::PublishedVia::Api);
    Ok(Json(published_json(&published)))
}

async fn broadcast(
    caller: ApiCaller,
    State(app): State<AppState>,
    body: JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: BroadcastBody = body.parse()?;
    if body.channels.is_empty() || body.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::bad_request(
            "invalid_channels",
            format!("`channels` must list 1 to {MAX_BROADCAST_CHANNELS} channels"),
        ));
    }
    let channels = body.channels.iter().map(|name| channel_name(name)).collect::<Result<Vec<_>, _>>()?;
    if matches!(caller, ApiCaller::Client(_)) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "broadcast needs an API key"));
    }
    caller.check_publish(&app, &channels)?;
    let data = payload(&app, body.data)?;
    let key = checked_idempotency_key(body.idempotency_key)?;
    let requests = channels
        .into_iter()
        .map(|channel| PublishRequest { channel, data: data.clone(), idempotency_key: key.clone() })
        .collect();
    let results: Vec<serde_json::Value> = crate::publish::publish_batch(&app, requests)
        .await
        .into_iter()
        .zip(&body.channels)
        .map(|(outcome, channel)| match outcome {
            Ok(published) => published_json(&published),
            Err(error) => serde_json::json!({ "channel": channel, "error": error.body }),
        })
        .collect();
    Ok(Json(serde_json::json!({ "results": results })))
}

/// Channels with subscribers on this node, with their counts, and the (cluster-wide) number of
/// present clients where the namespace keeps presence.
async fn channels(_access: ApiAccess, State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut channels = Vec::new();
    for (channel, subscribers) in app.hub.channels() {
        let mut entry = serde_json::json!({ "channel": channel.as_str(), "subscribers": subscribers });
        if let Some(present) = app.hub.presence_count(&channel).await? {
            entry["presence"] = present.into();
        }
        channels.push(entry);
    }
    Ok(Json(serde_json::json!({ "channels": channels })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
    reverse: Option<bool>,
}

async fn channel_resource(
    access: ApiAccess,
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(channel_and_action) =
        path.map_err(|rejection| ApiError::bad_request("bad_request", rejection.body_text()))?;
    let Some((channel, action)) = channel_and_action.rsplit_once('/') else {
        return Err(ApiError::not_found());
    };
    match action {
        "history" => {
            let Query(params) =
                query.map_err(|rejection| ApiError::bad_request("bad_request", rejection.body_text()))?;
            history(access, app, channel_name(channel)?, params).await
        }
        "presence" => {
            let channel = channel_name(channel)?;
            let snapshot = app.hub.presence(&channel).await?.ok_or_else(|| {
                let error = crate::presence::not_kept(&channel);
                ApiError::new(StatusCode::BAD_REQUEST, error.code, error.message)
            })?;
            Ok(Json(crate::presence::snapshot_json(&snapshot)).into_response())
        }
        _ => Err(ApiError::not_found()),
    }
}

async fn history(
    _access: ApiAccess,
    app: AppState,
    channel: ChannelName,
    params: HistoryParams,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_HISTORY_PAGE {
        return Err(ApiError::bad_request("invalid_limit", format!("`limit` must be 1 to {MAX_HISTORY_PAGE}")));
    }
    let query = HistoryQuery { since: params.since, limit, reverse: params.reverse.unwrap_or(false) };
    let page = app.hub.history(&channel, query).await?;
    if let Some(epoch) = &params.epoch
        && epoch != page.top.epoch.as_str()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "epoch_mismatch",
            format!("history of {channel} is now epoch {}; epoch {epoch} is gone", page.top.epoch),
        ));
    }
    let body = format!(
        "{{\"channel\":{},\"publications\":{},\"position\":{},\"oldest\":{}}}",
        serde_json::Value::from(channel.as_str()),
        publications_array(&page.publications),
        serde_json::to_string(&WirePosition::from(&page.top)).unwrap_or_default(),
        page.oldest,
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
