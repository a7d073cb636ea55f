//! What the HTTP transports (SSE, NDJSON, poll) share: reading `channel=`, `since=` (or
//! `Last-Event-ID`) and `positions=`, subscribing every channel with recovery, presence, the cursor, and
//! cleaning up at once when the subscription is dropped, wherever that happens.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use herald_core::{ChannelName, Inbox, Position, PositionTracker, Publication, SubscriberHandle};

use crate::auth::Identity;
use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::presence::ClientId;
use crate::state::AppState;

/// A parsed `?channel=A&channel=B&since=CURSOR[&positions=JSON][&timeout=S][&token=JWT][&info=JSON]`
/// query.
#[derive(Debug)]
pub struct SubscriptionQuery {
    pub channels: Vec<ChannelName>,
    /// `Last-Event-ID`, else `since`.
    pub cursor: Option<Cursor>,
    /// `positions={"chat:a":{"epoch":"..","offset":N},..}`: where to resume each channel, as a
    /// WebSocket client knows it (a client falling back from WebSocket has positions, not a
    /// cursor). It wins over `since` for its channels; `Last-Event-ID` (newer, from the
    /// browser's own reconnect) wins over it.
    pub positions: Vec<(ChannelName, Position)>,
    pub timeout: Option<String>,
    /// From `?token=` (what `EventSource` can send) or `Authorization: Bearer`.
    pub identity: Identity,
    /// `info=`: the presence info a client without a token gives for itself.
    pub declared_info: Option<bytes::Bytes>,
}

impl SubscriptionQuery {
    /// Parses the query; `Last-Event-ID` (what a reconnecting `EventSource` sends) wins over
    /// `since`, since the browser keeps the original URL.
    pub fn parse(
        query: Option<&str>,
        headers: &HeaderMap,
        app: &AppState,
        accepts_timeout: bool,
    ) -> Result<Self, ApiError> {
        let mut channels: Vec<ChannelName> = Vec::new();
        let mut since = None;
        let mut positions = None;
        let mut timeout = None;
        let mut token = None;
        let mut info = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "channel" => {
                    let channel = ChannelName::new(&value)
                        .map_err(|error| ApiError::bad_request("invalid_channel", format!("{:?}: {error}", &*value)))?;
                    if !channels.contains(&channel) {
                        channels.push(channel);
                    }
                }
                "since" => since = Some(value.into_owned()),
                "positions" => positions = Some(value.into_owned()),
                "timeout" if accepts_timeout => timeout = Some(value.into_owned()),
                "token" => token = Some(value.into_owned()),
                "info" => info = Some(value.into_owned()),
                other => {
                    return Err(ApiError::bad_request(
                        "unknown_parameter",
                        format!("unknown query parameter {other:?}"),
                    ));
                }
            }
        }
        let last_event_id = headers.get("last-event-id").and_then(|value| value.to_str().ok());
        let cursor = match last_event_id.filter(|id| !id.is_empty()).or(since.as_deref().filter(|s| !s.is_empty())) {
            Some(text) => Some(
                Cursor::decode(text)
                    .map_err(|error| ApiError::bad_request("invalid_cursor", format!("{error}; start without one")))?,
            ),
            None => None,
        };
        let token = token.or_else(|| crate::auth::bearer(headers).map(str::to_string));
        let declared_info = match info {
            None => None,
            Some(_) if token.is_some() => {
                let refusal = crate::presence::info_with_token();
                return Err(ApiError::bad_request("invalid_info", refusal.message));
            }
            Some(text) => {
                let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&text)
                    .map_err(|error| ApiError::bad_request("invalid_info", format!("info must be JSON: {error}")))?;
                Some(
                    crate::presence::declared_info(&raw)
                        .map_err(|error| ApiError::bad_request("invalid_info", error.message))?,
                )
            }
        };
        let identity = crate::auth::identify(app.settings.auth.as_deref(), token.as_deref())?;
        // The token's server-side subscriptions need no grant, and no `channel=`.
        let server_channels = identity.server_subscriptions();
        for channel in channels.iter().filter(|channel| !server_channels.contains(channel)) {
            crate::auth::may_subscribe(&identity, app.hub.namespaces().options_for(channel), channel)?;
        }
        // The limit is on what the client asks for: the token's `subs` have a bound of their own.
        let limit = app.settings.limits.max_channels_per_request.get();
        if channels.len() > limit {
            return Err(ApiError::bad_request("too_many_channels", format!("at most {limit} channels per request")));
        }
        for channel in server_channels {
            if !channels.contains(&channel) {
                channels.push(channel);
            }
        }
        if channels.is_empty() {
            return Err(ApiError::bad_request("missing_channel", "give at least one channel: ?channel=NAME"));
        }
        let positions = match positions.filter(|text| !text.is_empty()) {
            Some(text) => parse_positions(&text)?,
            None => Vec::new(),
        };
        if let Some((channel, _)) = positions.iter().find(|(channel, _)| !channels.contains(channel)) {
            return Err(ApiError::bad_request(
                "invalid_positions",
                format!("positions names {channel:?}, which is not one of the request's channels"),
            ));
        }
        let cursor_is_the_browsers = last_event_id.is_some_and(|id| !id.is_empty());
        let mut query = Self { channels, cursor, positions, timeout, identity, declared_info };
        if cursor_is_the_browsers {
            let cursor = query.cursor.as_ref();
            query.positions.retain(|(channel, _)| cursor.is_none_or(|cursor| cursor.position_for(channel).is_none()));
        }
        Ok(query)
    }

    /// Where `channel` resumes: its entry in `positions`, else the cursor's.
    pub fn since(&self, channel: &ChannelName) -> Option<&Position> {
        self.positions
            .iter()
            .find(|(named, _)| named == channel)
            .map(|(_, position)| position)
            .or_else(|| self.cursor.as_ref().and_then(|cursor| cursor.position_for(channel)))
    }
}

/// Reads `positions=`: a JSON object of channel → `{"epoch","offset"}`.
pub fn parse_positions(text: &str) -> Result<Vec<(ChannelName, Position)>, ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_positions", message);
    let parsed: std::collections::BTreeMap<String, herald_wire::Position> =
        serde_json::from_str(text).map_err(|error| {
            invalid(format!("positions must be a JSON object of channel to {{\"epoch\",\"offset\"}}: {error}"))
        })?;
    crate::encode::hub_positions(&parsed).map_err(invalid)
}

/// A channel whose position could not be recovered: the client should reload its state.
#[derive(Debug, Clone)]
pub struct Unrecovered {
    pub channel: ChannelName,
    pub position: Position,
}

impl Unrecovered {
    /// The notice on the wire: `{"channel":..,"recovered":false,"position":{..}}`.
    pub fn wire(&self) -> herald_wire::http::Unrecovered {
        herald_wire::http::Unrecovered {
            kind: None,
            channel: self.channel.to_string(),
            recovered: false,
            position: crate::encode::wire_position(&self.position),
            cursor: None,
        }
    }
}

/// A subscription of one HTTP request to its channels.
pub struct HttpSubscription {
    app: AppState,
    subscriber: SubscriberHandle,
    /// Channels in request order; those registered in the hub when `live`.
    channels: Vec<ChannelName>,
    live: bool,
    pub positions: PositionTracker,
    /// The client, kept across requests in the cursor.
    client: ClientId,
    /// Channels whose presence this subscription holds, and under which client id.
    present: Vec<(ChannelName, ClientId)>,
}

/// What following one channel found: its subscribe result, its position now, and the
/// publications missed since the position it resumed from.
pub struct Followed {
    pub subscribed: herald_wire::reply::Subscribed,
    pub position: Position,
    pub missed: Vec<Arc<Publication>>,
}

/// What opening found: publications missed since the cursor (oldest first per channel) and
/// channels that could not be recovered.
pub struct Opening {
    pub missed: Vec<Arc<Publication>>,
    pub unrecovered: Vec<Unrecovered>,
    /// Each channel's subscribe result, in request order.
    pub subscribed: Vec<herald_wire::reply::Subscribed>,
}

impl HttpSubscription {
    /// Subscribes to every channel of `query`. When `live`, publications start queueing in the
    /// returned inbox at once; otherwise (short poll) only the missed ones are read.
    pub async fn open(
        app: &AppState,
        query: &SubscriptionQuery,
        live: bool,
        queue_capacity: usize,
    ) -> Result<(Self, Inbox, Opening), ApiError> {
        let (subscriber, inbox) = app.hub.connect(queue_capacity);
        let client = query.cursor.as_ref().and_then(|cursor| cursor.client).unwrap_or_else(ClientId::random);
        let mut subscription = Self {
            app: app.clone(),
            subscriber,
            // Sized exactly: a parked poll or an open stream keeps these for its whole life.
            channels: Vec::with_capacity(query.channels.len()),
            live,
            positions: PositionTracker::default(),
            client,
            present: Vec::with_capacity(if live { query.channels.len() } else { 0 }),
        };
        let mut opening = Opening {
            missed: Vec::new(),
            unrecovered: Vec::new(),
            subscribed: Vec::with_capacity(query.channels.len()),
        };
        let mut missed_per_channel = Vec::with_capacity(query.channels.len());
        for channel in &query.channels {
            let followed = subscription
                .follow(channel, query.since(channel), &query.identity, query.declared_info.as_ref())
                .await?;
            if followed.subscribed.recovered == Some(false) {
                opening.unrecovered.push(Unrecovered { channel: channel.clone(), position: followed.position });
            }
            opening.subscribed.push(followed.subscribed);
            missed_per_channel.push(followed.missed);
        }
        opening.missed = merge_by_time(missed_per_channel);
        Ok((subscription, inbox, opening))
    }

    /// Follows one more channel from `since`: subscribed in the hub when live (read once
    /// otherwise), tracked, and present when live.
    pub async fn follow(
        &mut self,
        channel: &ChannelName,
        since: Option<&Position>,
        identity: &Identity,
        declared_info: Option<&bytes::Bytes>,
    ) -> Result<Followed, ApiError> {
        let app = self.app.clone();
        // Registered before the await, so a failure or a drop midway still cleans up.
        self.channels.push(channel.clone());
        let subscribed = if self.live {
            app.hub.subscribe(&self.subscriber, channel, since).await?
        } else {
            app.hub.catch_up(channel, since).await?
        };
        let start = match (since, subscribed.recovered) {
            (Some(since), Some(true)) => since.clone(),
            _ => subscribed.position.clone(),
        };
        self.positions.track(channel.clone(), start);
        if self.live {
            // Registered before the await, like the channel, for the same reason.
            let options = app.hub.namespaces().options_for(channel);
            self.present.push((channel.clone(), self.client));
            if !app
                .hub
                .join_presence(channel, crate::presence::entry(identity, declared_info, options, self.client))
                .await
            {
                // The cursor's client id is another user's: this client gets its own.
                self.client = ClientId::random();
                self.present.pop();
                self.present.push((channel.clone(), self.client));
                app.hub
                    .join_presence(channel, crate::presence::entry(identity, declared_info, options, self.client))
                    .await;
            }
        }
        Ok(Followed {
            subscribed: herald_wire::reply::Subscribed {
                channel: channel.to_string(),
                position: crate::encode::wire_position(&subscribed.position),
                recovered: subscribed.recovered,
            },
            position: subscribed.position,
            missed: subscribed.missed,
        })
    }

    /// Lets the server API's `disconnect` reach this subscription (an open stream's).
    pub fn register_controls(&self, identity: &crate::auth::Identity) {
        self.app.controls.set(&self.subscriber, identity.user(), self.client);
    }

    /// Stops following `channel` (the server API's `unsubscribe`) and leaves its presence now;
    /// false if this subscription does not follow it.
    pub fn remove(&mut self, channel: &ChannelName) -> bool {
        let Some(index) = self.channels.iter().position(|named| named == channel) else {
            return false;
        };
        self.channels.remove(index);
        self.positions.forget(channel);
        let left = self.present.iter().position(|(named, _)| named == channel).map(|index| self.present.remove(index));
        let emptied = self.app.hub.detach(&self.subscriber, std::slice::from_ref(channel));
        let hub = self.app.hub.clone();
        self.app.tasks.spawn(async move {
            if let Some((channel, client)) = left {
                let client = client.to_string();
                if hub.leave_presence(&channel, &client, false) {
                    hub.settle_presence(&channel, &client).await;
                }
            }
            hub.release_interest(&emptied).await;
        });
        true
    }

    /// The cursor after everything delivered so far.
    pub fn cursor(&self) -> String {
        Cursor::encode(&self.positions, &self.channels, self.client)
    }
}

impl Drop for HttpSubscription {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        self.app.controls.remove(&self.subscriber);
        // Local delivery stops now; the engine hears of it from a tracked task. The client
        // stays present for the grace period: its next poll or reconnect keeps it there.
        for (channel, client) in &self.present {
            self.app.hub.leave_presence(channel, &client.to_string(), true);
        }
        let emptied = self.app.hub.detach(&self.subscriber, &self.channels);
        if !emptied.is_empty() {
            let hub = self.app.hub.clone();
            self.app.tasks.spawn(async move { hub.release_interest(&emptied).await });
        }
    }
}

/// Interleaves per-channel lists of missed publications by publication time, the order they
/// were published in across channels, while keeping each channel's own order whatever the
/// clocks say (a merge, never a sort within a channel).
fn merge_by_time(mut lists: Vec<Vec<Arc<Publication>>>) -> Vec<Arc<Publication>> {
    if lists.len() == 1 {
        return lists.pop().unwrap_or_default();
    }
    let total = lists.iter().map(Vec::len).sum();
    let mut merged = Vec::with_capacity(total);
    let mut heads = vec![0usize; lists.len()];
    while merged.len() < total {
        let next = (0..lists.len())
            .filter(|&list| heads[list] < lists[list].len())
            .min_by_key(|&list| lists[list][heads[list]].time_ms)
            .expect("some list has publications left");
        merged.push(lists[next][heads[next]].clone());
        heads[next] += 1;
    }
    merged
}

/// `400 invalid_timeout` for what is not a number of seconds.
pub fn parse_timeout(
    text: Option<&str>,
    default: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, ApiError> {
    let Some(text) = text else { return Ok(default) };
    let seconds: f64 = text.trim().parse().map_err(|_| {
        ApiError::bad_request("invalid_timeout", format!("timeout {text:?} is not a number of seconds"))
    })?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
            format!("timeout {text:?} must be 0 (short poll) or a positive number of seconds"),
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds.min(max.as_secs_f64())))
}
