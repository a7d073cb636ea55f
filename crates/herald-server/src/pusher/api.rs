//! The Pusher HTTP API under `/apps/{id}`, for Pusher's server SDKs: every request signed with
//! the app's secret (see [`super::signature::verify_request`]). Events are published through
//! Herald's one publish path, so they reach both doors' subscribers, history and webhooks.
//!
//! Channel counts are this node's (`subscription_count`: its connections to the channel, of
//! either door); `user_count` and `users` come from presence, which spans the cluster.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use herald_core::{ChannelName, PublishRequest};
use herald_wire::pusher::{
    BatchReply, ChannelAttributes, ChannelsReply, StoredEvent, TriggerBatch, TriggerEvent, UserRef, UsersReply,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::apps::{ChannelKind, PusherApp, USER_CHANNEL_PREFIX, check_pusher_channel};
use crate::error::ApiError;
use crate::state::AppState;

/// Pusher's limits: channels per event, events per batch.
const MAX_CHANNELS_PER_EVENT: usize = 100;
const MAX_BATCH: usize = 10;
const MAX_EVENT_NAME: usize = 200;

/// A checked request: the app it is for, its query, and its body.
struct Signed {
    app: std::sync::Arc<PusherApp>,
    query: Vec<(String, String)>,
}

/// Finds the app and checks the request's signature.
fn verify(
    app_state: &AppState,
    id: &str,
    method: &Method,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<Signed, ApiError> {
    let app = app_state.settings.pusher.by_id(id).cloned().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "app_not_found", format!("no Pusher app with id {id:?}"))
    })?;
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    super::signature::verify_request(&app.key, &app.secret, method.as_str(), uri.path(), &query, body, now()).map_err(
        |error| {
            crate::metrics::refused("pusher_bad_signature");
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", error.to_string())
        },
    )?;
    Ok(Signed { app, query })
}

fn now() -> u64 {
    crate::auth::unix_seconds()
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| bad("invalid_json", format!("the body is not the JSON expected: {error}")))
}

/// `POST /apps/{id}/events`.
pub async fn events(
    State(app_state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<ChannelsReply>, ApiError> {
    let signed = verify(&app_state, &id, &method, &uri, &body)?;
    let event: TriggerEvent = parse_json(&body)?;
    let channels = event_channels(&signed.app, &event)?;
    let info = trigger(&app_state, &signed.app, vec![(event, channels)]).await?;
    Ok(Json(ChannelsReply { channels: info.into_iter().next().flatten() }))
}

/// `POST /apps/{id}/batch_events`: up to 10 events, published in one batch.
pub async fn batch_events(
    State(app_state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<BatchReply>, ApiError> {
    let signed = verify(&app_state, &id, &method, &uri, &body)?;
    let batch: TriggerBatch = parse_json(&body)?;
    if batch.batch.len() > MAX_BATCH {
        return Err(bad("batch_too_large", format!("at most {MAX_BATCH} events per batch")));
    }
    let mut events = Vec::with_capacity(batch.batch.len());
    for event in batch.batch {
        if event.channels.is_some() {
            return Err(bad("invalid_event", "a batch event names one channel (channel, not channels)"));
        }
        let channels = event_channels(&signed.app, &event)?;
        events.push((event, channels));
    }
    let asked_info = events.iter().any(|(event, _)| event.info.is_some());
    let info = trigger(&app_state, &signed.app, events).await?;
    if !asked_info {
        return Ok(Json(BatchReply::default()));
    }
    // Each entry's info is its one channel's attributes.
    let batch = info
        .into_iter()
        .map(|channels| channels.and_then(|map| map.into_values().next()).unwrap_or_default())
        .collect();
    Ok(Json(BatchReply { batch: Some(batch) }))
}

/// The Herald channels an event names, each checked.
fn event_channels(app: &PusherApp, event: &TriggerEvent) -> Result<Vec<(String, ChannelName)>, ApiError> {
    if event.name.is_empty() || event.name.len() > MAX_EVENT_NAME {
        return Err(bad("invalid_event", format!("an event name is 1 to {MAX_EVENT_NAME} characters")));
    }
    let names: Vec<String> = match (&event.channel, &event.channels) {
        (Some(channel), None) => vec![channel.clone()],
        (None, Some(channels)) => channels.clone(),
        _ => return Err(bad("invalid_event", "give channel or channels (one of them)")),
    };
    if names.is_empty() || names.len() > MAX_CHANNELS_PER_EVENT {
        return Err(bad("invalid_event", format!("an event goes to 1 to {MAX_CHANNELS_PER_EVENT} channels")));
    }
    if let Some(socket_id) = &event.socket_id
        && !is_socket_id(socket_id)
    {
        return Err(bad("invalid_socket_id", format!("{socket_id:?} is not a socket id (two numbers: 123.456)")));
    }
    if names.len() > 1 && names.iter().any(|name| ChannelKind::of(name) == ChannelKind::Encrypted) {
        return Err(bad("invalid_event", "an event to an encrypted channel goes to that channel alone"));
    }
    names
        .into_iter()
        .map(|name| {
            // `#server-to-user-{id}`: an event for a signed-in user (the SDKs' sendToUser).
            let channel = match name.strip_prefix(USER_CHANNEL_PREFIX) {
                Some(user) => app.user_channel(user),
                None => app.channel(&name),
            }
            .map_err(|reason| bad("invalid_channel", format!("{name:?}: {reason}")))?;
            Ok((name, channel))
        })
        .collect()
}

fn is_socket_id(text: &str) -> bool {
    text.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// Publishes every event to each of its channels in one batch; per event, the channel info
/// it asked for.
async fn trigger(
    app_state: &AppState,
    app: &PusherApp,
    events: Vec<(TriggerEvent, Vec<(String, ChannelName)>)>,
) -> Result<Vec<Option<BTreeMap<String, ChannelAttributes>>>, ApiError> {
    let max = app_state.settings.limits.max_message_size.get();
    let mut requests = Vec::new();
    for (event, channels) in &events {
        let stored = StoredEvent {
            event: event.name.as_str().into(),
            data: &event.data,
            socket_id: event.socket_id.as_deref().map(Into::into),
            user_id: None,
        };
        let data = serde_json::to_string(&stored).unwrap_or_default();
        if data.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_big",
                format!("event {:?} is {} bytes; at most {max}", event.name, data.len()),
            ));
        }
        let data = Bytes::from(data);
        for (_, channel) in channels {
            requests.push(PublishRequest { channel: channel.clone(), data: data.clone(), idempotency_key: None });
        }
    }
    for outcome in crate::publish::publish_batch(app_state, requests).await {
        outcome?;
        crate::metrics::published(crate::metrics::PublishedVia::Pusher);
    }
    let mut answers = Vec::with_capacity(events.len());
    for (event, channels) in &events {
        let Some(info) = &event.info else {
            answers.push(None);
            continue;
        };
        let attributes = Attributes::parse(info)?;
        let mut map = BTreeMap::new();
        for (name, channel) in channels {
            map.insert(name.clone(), attributes.of(app_state, app, channel).await?);
        }
        answers.push(Some(map));
    }
    Ok(answers)
}

/// The channel attributes a request asks for with `info=`.
#[derive(Default)]
struct Attributes {
    subscription_count: bool,
    user_count: bool,
}

impl Attributes {
    fn parse(info: &str) -> Result<Self, ApiError> {
        let mut attributes = Self::default();
        for name in info.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            match name {
                "subscription_count" => attributes.subscription_count = true,
                "user_count" => attributes.user_count = true,
                other => return Err(bad("invalid_info", format!("unknown attribute {other:?} in info"))),
            }
        }
        Ok(attributes)
    }

    async fn of(
        &self,
        app_state: &AppState,
        app: &PusherApp,
        channel: &ChannelName,
    ) -> Result<ChannelAttributes, ApiError> {
        let mut attributes = ChannelAttributes::default();
        // Only presence channels have users to count.
        let name = app.pusher_name(channel).unwrap_or_default();
        if self.user_count && ChannelKind::of(name) == ChannelKind::Presence {
            attributes.user_count = Some(user_ids(app_state, channel).await?.len());
        }
        if self.subscription_count {
            attributes.subscription_count = Some(app_state.hub.subscriber_count(channel));
        }
        Ok(attributes)
    }
}

/// The distinct users present in a channel, in order of joining.
async fn user_ids(app_state: &AppState, channel: &ChannelName) -> Result<Vec<String>, ApiError> {
    let snapshot = app_state.hub.presence(channel).await?;
    Ok(snapshot
        .map(|snapshot| snapshot.users().into_iter().map(|(user, _)| user.to_string()).collect())
        .unwrap_or_default())
}

fn query_value<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// `GET /apps/{id}/channels[?filter_by_prefix=P&info=user_count]`: the occupied channels.
pub async fn channels(
    State(app_state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
) -> Result<Json<ChannelsReply>, ApiError> {
    let signed = verify(&app_state, &id, &method, &uri, &[])?;
    let prefix = query_value(&signed.query, "filter_by_prefix").unwrap_or_default();
    let attributes = Attributes::parse(query_value(&signed.query, "info").unwrap_or_default())?;
    if attributes.subscription_count {
        return Err(bad("invalid_info", "the channel list answers user_count only"));
    }
    if attributes.user_count && !prefix.starts_with("presence-") {
        return Err(bad("invalid_info", "user_count needs filter_by_prefix=presence-"));
    }
    let mut listed = BTreeMap::new();
    for (channel, _) in app_state.hub.channels() {
        let Some(name) = signed.app.pusher_name(&channel).filter(|name| name.starts_with(prefix)) else {
            continue;
        };
        listed.insert(name.to_string(), attributes.of(&app_state, &signed.app, &channel).await?);
    }
    Ok(Json(ChannelsReply { channels: Some(listed) }))
}

/// `GET /apps/{id}/channels/{name}[?info=subscription_count,user_count]`.
pub async fn channel(
    State(app_state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    OriginalUri(uri): OriginalUri,
) -> Result<Json<ChannelAttributes>, ApiError> {
    let signed = verify(&app_state, &id, &method, &uri, &[])?;
    let channel = checked_channel(&signed.app, &name)?;
    let attributes = Attributes::parse(query_value(&signed.query, "info").unwrap_or_default())?;
    let mut answer = attributes.of(&app_state, &signed.app, &channel).await?;
    answer.occupied = Some(app_state.hub.subscriber_count(&channel) > 0);
    Ok(Json(answer))
}

/// `GET /apps/{id}/channels/{name}/users`: a presence channel's users.
pub async fn users(
    State(app_state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    method: Method,
    OriginalUri(uri): OriginalUri,
) -> Result<Json<UsersReply>, ApiError> {
    let signed = verify(&app_state, &id, &method, &uri, &[])?;
    let channel = checked_channel(&signed.app, &name)?;
    if ChannelKind::of(&name) != ChannelKind::Presence {
        return Err(bad("not_presence", "users are listed for presence channels only"));
    }
    let users = user_ids(&app_state, &channel).await?.into_iter().map(|id| UserRef { id }).collect();
    Ok(Json(UsersReply { users }))
}

fn checked_channel(app: &PusherApp, name: &str) -> Result<ChannelName, ApiError> {
    check_pusher_channel(name).map_err(|reason| bad("invalid_channel", reason))?;
    app.channel(name).map_err(|reason| bad("invalid_channel", reason))
}

/// `POST /apps/{id}/users/{user}/terminate_connections`: closes every connection the user has
/// signed in on, on every node (an event on the user's channel, which its sessions follow).
pub async fn terminate_connections(
    State(app_state): State<AppState>,
    Path((id, user)): Path<(String, String)>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<ChannelsReply>, ApiError> {
    let signed = verify(&app_state, &id, &method, &uri, &body)?;
    let empty = RawValue::from_string("\"{}\"".to_string()).map_err(|error| bad("internal", error.to_string()))?;
    let channel = signed.app.user_channel(&user).map_err(|reason| bad("invalid_user", reason))?;
    let stored =
        StoredEvent { event: super::session::TERMINATE_EVENT.into(), data: &empty, socket_id: None, user_id: None };
    let data = Bytes::from(serde_json::to_string(&stored).unwrap_or_default());
    crate::publish::publish(&app_state, PublishRequest { channel, data, idempotency_key: None }).await?;
    Ok(Json(ChannelsReply::default()))
}
