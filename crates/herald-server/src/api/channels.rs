//! The server API's channel endpoints: publish, broadcast, the channel list, a channel's
//! history and presence.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{ChannelName, HistoryQuery, PublishRequest};
use herald_wire::http::{BroadcastBody, BroadcastOutcome, BroadcastResults, ChannelList, ChannelSummary, PublishBody};
use herald_wire::publication::{Published, check_idempotency_key};
use herald_wire::reply::history_page;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::caller::{ApiAccess, ApiCaller, JsonBody};
use crate::encode;
use crate::error::ApiError;
use crate::state::AppState;

/// Publications per history page at most.
const MAX_HISTORY_PAGE: usize = 1000;
/// Channels per broadcast at most.
const MAX_BROADCAST_CHANNELS: usize = 1000;

fn checked_idempotency_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    check_idempotency_key(key).map_err(|body| ApiError { status: StatusCode::BAD_REQUEST, body, headers: Vec::new() })
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
    Ok(encode::payload(data))
}

pub(super) async fn publish(
    caller: ApiCaller,
    State(app): State<AppState>,
    body: JsonBody,
) -> Result<Json<Published>, ApiError> {
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
    Ok(Json(encode::published(&published)))
}

pub(super) async fn broadcast(
    caller: ApiCaller,
    State(app): State<AppState>,
    body: JsonBody,
) -> Result<Json<BroadcastResults>, ApiError> {
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
    let results = crate::publish::publish_batch(&app, requests)
        .await
        .into_iter()
        .zip(&body.channels)
        .map(|(outcome, channel)| match outcome {
            Ok(published) => BroadcastOutcome::Published(encode::published(&published)),
            Err(error) => BroadcastOutcome::Failed { channel: channel.clone(), error: error.body },
        })
        .collect();
    Ok(Json(BroadcastResults { results }))
}

/// Channels with subscribers on this node, with their counts, and the (cluster-wide) number of
/// present clients where the namespace keeps presence.
pub(super) async fn channels(_access: ApiAccess, State(app): State<AppState>) -> Result<Json<ChannelList>, ApiError> {
    let mut channels = Vec::new();
    for (channel, subscribers) in crate::control::reserved::visible(app.hub.channels()) {
        let presence = app.hub.presence_count(&channel).await?;
        channels.push(ChannelSummary { channel: channel.to_string(), subscribers, presence });
    }
    Ok(Json(ChannelList { channels }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryParams {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
    reverse: Option<bool>,
}

pub(super) async fn channel_resource(
    headers: HeaderMap,
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
            let channel = channel_name(channel)?;
            ApiCaller::check_reader(&headers, &app, &channel)?;
            history(app, channel, params).await
        }
        "presence" => {
            let channel = channel_name(channel)?;
            ApiCaller::check_reader(&headers, &app, &channel)?;
            let snapshot = app.hub.presence(&channel).await?.ok_or_else(|| {
                let error = crate::presence::not_kept(&channel);
                ApiError::new(StatusCode::BAD_REQUEST, error.code, error.message)
            })?;
            Ok(Json(encode::presence_list(&snapshot)).into_response())
        }
        _ => Err(ApiError::not_found()),
    }
}

async fn history(app: AppState, channel: ChannelName, params: HistoryParams) -> Result<Response, ApiError> {
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
    let body = history_page(
        channel.as_str(),
        &encode::publications_array(&page.publications),
        &encode::wire_position(&page.top),
        page.oldest,
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
