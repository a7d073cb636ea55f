//! The client commands of the JSON protocol: parsing, and what each does to the session.

use bytes::Bytes;
use herald_core::{ChannelName, HistoryQuery, Position, PublishRequest};
use herald_wire::ErrorBody;
use herald_wire::command::{Command, Op, decode};
use herald_wire::publication::check_idempotency_key;
use herald_wire::push::SubscribedPush;
use herald_wire::reply::{self, Connected, Subscribed};

use super::connection::Connection;
use super::frames::text_frame;
use crate::encode::{self, hub_position, wire_position};
use crate::presence::ClientId;

/// Publications per `history` reply at most.
const MAX_HISTORY_LIMIT: usize = 100;

impl Connection {
    /// Handles one command; returns the frames to send: the reply, then any pushes it caused.
    pub(super) async fn handle_command(&mut self, text: &str) -> Vec<Bytes> {
        let (id, op, command) = match decode(text) {
            Ok(decoded) => decoded,
            Err((id, error)) => return vec![error_reply(id, error)],
        };
        let outcome = match op {
            Op::Ping => Ok(vec![result_reply(id, reply::EMPTY)]),
            Op::Connect => self.connect(id, &command, false),
            Op::Refresh => self.connect(id, &command, true),
            Op::Subscribe => self.subscribe(id, &command).await,
            Op::Unsubscribe => self.unsubscribe(id, &command).await,
            Op::Publish => self.publish(id, &command).await,
            Op::History => self.history(id, &command).await,
            Op::Presence => self.presence(id, &command).await,
        };
        outcome.unwrap_or_else(|error| vec![error_reply(Some(id), error)])
    }

    /// `connect {token?, client?, positions?}` (or `refresh {token}`, which must keep the same
    /// user): the connection takes on the token's identity, keeping its subscriptions, and,
    /// before any subscription, may take back the client id of an earlier connection (so a
    /// quick reconnect does not leave and join presence again). The reply says who and which
    /// client this is; the token's server-side subscriptions follow as `subscribed` pushes,
    /// resuming from `positions`.
    fn connect(&mut self, id: u64, command: &Command<'_>, refresh: bool) -> Result<Vec<Bytes>, ErrorBody> {
        // Everything is checked before anything changes: a refused connect leaves the
        // connection as it was.
        let taken_back = match command.client.as_deref() {
            None => None,
            Some(client) => {
                let client = ClientId::parse(client)?;
                if refresh {
                    return Err(ErrorBody::new("bad_request", "a client id is taken back on connect, not refresh"));
                }
                if !self.positions.is_empty() {
                    return Err(ErrorBody::new("already_subscribed", "take back a client id before subscribing"));
                }
                Some(client)
            }
        };
        let declared = match command.info {
            None => None,
            Some(info) => {
                if refresh || command.token.is_some() || !matches!(self.identity, crate::auth::Identity::Anonymous) {
                    return Err(crate::presence::info_with_token());
                }
                if !self.positions.is_empty() {
                    return Err(ErrorBody::new("already_subscribed", "give info before subscribing"));
                }
                Some(Box::new(crate::presence::declared_info(info)?))
            }
        };
        let positions = match &command.positions {
            None => Vec::new(),
            Some(positions) => {
                encode::hub_positions(positions).map_err(|message| ErrorBody::new("invalid_positions", message))?
            }
        };
        let Some(token) = command.token.as_deref() else {
            if refresh {
                return Err(ErrorBody::new("missing_field", "missing field \"token\""));
            }
            if let Some(client) = taken_back {
                self.client = client;
                self.register();
            }
            if declared.is_some() {
                self.declared_info = declared;
            }
            let result = Connected {
                client: self.client.to_string(),
                user: self.identity.user().map(str::to_string),
                expires: None,
            };
            return Ok(vec![result_reply(id, &json(&result))]);
        };
        let Some(auth) = self.app.settings.auth.as_deref() else {
            return Err(ErrorBody::new("auth_not_configured", "this server has no [auth]: every client is anonymous"));
        };
        let claims = auth.verify(token).map_err(|error| ErrorBody::new(error.code(), error.to_string()))?;
        match (&self.identity, refresh) {
            (crate::auth::Identity::Anonymous, false) => {}
            (crate::auth::Identity::User(_), false) => {
                return Err(ErrorBody::new("already_connected", "this connection has a token: use refresh"));
            }
            (crate::auth::Identity::Anonymous, true) => {
                return Err(ErrorBody::new("not_connected", "refresh needs a token given earlier: use connect"));
            }
            (crate::auth::Identity::User(current), true) if current.sub.is_none() || current.sub != claims.sub => {
                return Err(ErrorBody::new("user_mismatch", "a refreshed token must be for the same user (sub)"));
            }
            (crate::auth::Identity::User(_), true) => {}
        }
        // The new token may grant less: it must still grant every open subscription (but those
        // the server made and those of its `subs`, which need no grant).
        let identity = crate::auth::Identity::User(Box::new(claims.clone()));
        let subs = identity.server_subscriptions();
        let needs_grant = |channel: &ChannelName| !self.is_server_channel(channel) && !subs.contains(channel);
        for (channel, _) in self.positions.iter().filter(|(channel, _)| needs_grant(channel)) {
            crate::auth::may_subscribe(&identity, self.app.hub.namespaces().options_for(channel), channel)
                .map_err(|denied| ErrorBody::new(denied.code(), format!("{denied}; unsubscribe first")))?;
        }
        if let Some(client) = taken_back {
            self.client = client;
        }
        let result = Connected { client: self.client.to_string(), user: claims.sub.clone(), expires: Some(claims.exp) };
        self.set_identity(identity);
        if !refresh {
            self.subscribe_token_subs(&positions);
        }
        Ok(vec![result_reply(id, &json(&result))])
    }

    async fn subscribe(&mut self, id: u64, command: &Command<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = channel_of(command)?;
        if self.positions.is_tracked(&channel) {
            return Err(ErrorBody::new("already_subscribed", format!("already subscribed to {channel}")));
        }
        let limit = self.app.settings.limits.max_channels_per_connection.get();
        if self.positions.len() >= limit {
            return Err(ErrorBody::new("too_many_channels", format!("at most {limit} channels per connection")));
        }
        // A channel of the token's `subs` needs no grant (the SDK subscribes it again after a gap).
        if !self.identity.server_subscriptions().contains(&channel) {
            crate::auth::may_subscribe(&self.identity, self.app.hub.namespaces().options_for(&channel), &channel)
                .map_err(|denied| ErrorBody::new(denied.code(), denied.to_string()))?;
        }
        let since = match (&command.since, &command.cursor) {
            (Some(since), _) => Some(hub_position(since)),
            (None, Some(cursor)) => crate::cursor::Cursor::decode(cursor)
                .map_err(|error| ErrorBody::new("invalid_cursor", error.to_string()))?
                .position_for(&channel)
                .cloned(),
            (None, None) => None,
        };
        let (result, missed) = self.join(&channel, since).await?;
        let mut frames = vec![result_reply(id, &json(&result))];
        frames.extend(missed);
        Ok(frames)
    }

    /// A server-side subscription (a token's `subs`, the API's `subscribe`): as `subscribe`,
    /// without the grant or the limit, announced by a `subscribed` push before the missed
    /// publications. `None` when the engine cannot take it: the connection is to end, asking
    /// the client to reconnect (its `subs` are made again then).
    pub(super) async fn server_subscribe(
        &mut self,
        channel: &ChannelName,
        since: Option<&Position>,
    ) -> Option<Vec<Bytes>> {
        if self.positions.is_tracked(channel) {
            return Some(Vec::new());
        }
        match self.join(channel, since.cloned()).await {
            Ok((subscribed, missed)) => {
                self.rare().server_channels.push(channel.clone());
                let push = SubscribedPush { subscribed };
                let mut frames = vec![text_frame(serde_json::to_string(&push).unwrap_or_default()).1];
                frames.extend(missed);
                Some(frames)
            }
            Err(error) => {
                tracing::warn!(%channel, code = %error.code, "a server-side subscription failed");
                None
            }
        }
    }

    /// Subscribes to `channel` from `since`, joins its presence; the subscribe result and the
    /// frames of the publications missed since then.
    async fn join(
        &mut self,
        channel: &ChannelName,
        since: Option<Position>,
    ) -> Result<(Subscribed, Vec<Bytes>), ErrorBody> {
        let subscribed = self
            .app
            .hub
            .subscribe(&self.subscriber, channel, since.as_ref())
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?;
        let start = match (since, subscribed.recovered) {
            (Some(since), Some(true)) => since,
            _ => subscribed.position.clone(),
        };
        self.positions.track(channel.clone(), start);
        if !self.app.hub.join_presence(channel, self.presence_entry(channel)).await {
            // The id taken back belongs to another user: this connection gets its own.
            self.client = ClientId::random();
            self.register();
            self.app.hub.join_presence(channel, self.presence_entry(channel)).await;
        }
        let result = Subscribed {
            channel: channel.to_string(),
            position: wire_position(&subscribed.position),
            recovered: subscribed.recovered,
        };
        let missed = subscribed.missed.iter().filter_map(|publication| self.publication_frame(publication)).collect();
        Ok((result, missed))
    }

    async fn unsubscribe(&mut self, id: u64, command: &Command<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = channel_of(command)?;
        if !self.leave(&channel).await {
            return Err(ErrorBody::new("not_subscribed", format!("not subscribed to {channel}")));
        }
        Ok(vec![result_reply(id, reply::EMPTY)])
    }

    /// Stops following `channel` and leaves its presence at once; false if not subscribed.
    pub(super) async fn leave(&mut self, channel: &ChannelName) -> bool {
        if self.positions.forget(channel).is_none() {
            return false;
        }
        if let Some(rare) = &mut self.rare {
            rare.server_channels.retain(|named| named != channel);
        }
        self.app.hub.unsubscribe(&self.subscriber, channel).await;
        let client = self.client.to_string();
        if self.app.hub.leave_presence(channel, &client, false) {
            self.app.hub.settle_presence(channel, &client).await;
        }
        true
    }

    /// `presence {channel}`: who is there, for clients that may read the channel.
    async fn presence(&mut self, id: u64, command: &Command<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = channel_of(command)?;
        crate::auth::may_subscribe(&self.identity, self.app.hub.namespaces().options_for(&channel), &channel)
            .map_err(|denied| ErrorBody::new(denied.code(), denied.to_string()))?;
        let snapshot = self
            .app
            .hub
            .presence(&channel)
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?
            .ok_or_else(|| crate::presence::not_kept(&channel))?;
        Ok(vec![result_reply(id, &json(&encode::presence_list(&snapshot)))])
    }

    async fn publish(&mut self, id: u64, command: &Command<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = channel_of(command)?;
        let data = command.data.ok_or_else(|| ErrorBody::new("missing_field", "missing field \"data\""))?;
        crate::auth::may_publish(&self.identity, self.app.hub.namespaces().options_for(&channel), &channel)
            .map_err(|denied| ErrorBody::new(denied.code(), denied.to_string()))?;
        if let Some(bucket) = &mut self.publish_rate
            && !bucket.try_take()
        {
            let limit = self.app.settings.limits.client_publish_rate.map_or(0, |rate| rate.get());
            crate::metrics::refused("rate_limited");
            return Err(ErrorBody::new(
                "rate_limited",
                format!("at most {limit} publishes a second on one connection"),
            ));
        }
        let request = PublishRequest {
            channel,
            data: encode::payload(data),
            idempotency_key: check_idempotency_key(command.idempotency_key.clone())?,
        };
        let published = crate::publish::publish(&self.app, request).await.map_err(|error| error.body)?;
        crate::metrics::published(crate::metrics::PublishedVia::WebSocket);
        Ok(vec![result_reply(id, &json(&encode::published(&published)))])
    }

    async fn history(&mut self, id: u64, command: &Command<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = channel_of(command)?;
        // Reading history is reading the channel: the same rule as subscribing.
        crate::auth::may_subscribe(&self.identity, self.app.hub.namespaces().options_for(&channel), &channel)
            .map_err(|denied| ErrorBody::new(denied.code(), denied.to_string()))?;
        let limit = command.limit.unwrap_or(MAX_HISTORY_LIMIT).min(MAX_HISTORY_LIMIT);
        let query = HistoryQuery {
            since: command.since.as_ref().map(|since| since.offset),
            limit,
            reverse: command.reverse.unwrap_or(false),
        };
        let page = self
            .app
            .hub
            .history(&channel, query)
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?;
        if let Some(since) = &command.since
            && since.epoch != page.top.epoch.as_str()
        {
            return Err(ErrorBody::new(
                "epoch_mismatch",
                format!("history of {channel} is now epoch {}; the position's epoch is gone", page.top.epoch),
            ));
        }
        let result = reply::history_page(
            channel.as_str(),
            &encode::publications_array(&page.publications),
            &wire_position(&page.top),
            page.oldest,
        );
        Ok(vec![result_reply(id, &result)])
    }
}

/// A reply's text frame.
pub(super) fn result_reply(id: u64, result_json: &str) -> Bytes {
    text_frame(reply::result(id, result_json)).1
}

pub(super) fn error_reply(id: Option<u64>, error: ErrorBody) -> Bytes {
    text_frame(reply::error(id, &error)).1
}

/// The JSON of a result.
fn json(result: &impl serde::Serialize) -> String {
    serde_json::to_string(result).unwrap_or_else(|_| reply::EMPTY.to_string())
}

/// The channel a command names, checked.
fn channel_of(command: &Command<'_>) -> Result<ChannelName, ErrorBody> {
    ChannelName::new(command.channel()?).map_err(|error| ErrorBody::new("invalid_channel", error.to_string()))
}
