//! The client commands of the JSON protocol: parsing, and what each does to the session.

use std::borrow::Cow;

use bytes::Bytes;
use herald_core::{ChannelName, HistoryQuery, Position, PublishRequest};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::connection::Connection;
use crate::presence::ClientId;
use crate::wire::{
    ErrorBody, WirePosition, idempotency_key, json_payload, present_raw_value, publications_array, published_json,
    text_frame,
};

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
            Op::Ping => Ok(vec![result_reply(id, "{}".to_string())]),
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

    /// `connect {token?, client?}` (or `refresh {token}`, which must keep the same user): the
    /// connection takes on the token's identity, keeping its subscriptions, and, before any
    /// subscription, may take back the client id of an earlier connection (so a quick
    /// reconnect does not leave and join presence again). The reply says who and which client
    /// this is.
    fn connect(&mut self, id: u64, command: &CommandFrame<'_>, refresh: bool) -> Result<Vec<Bytes>, ErrorBody> {
        if let Some(client) = command.client.as_deref() {
            let client = ClientId::parse(client)?;
            if refresh {
                return Err(ErrorBody::new("bad_request", "a client id is taken back on connect, not refresh"));
            }
            if !self.positions.is_empty() {
                return Err(ErrorBody::new("already_subscribed", "take back a client id before subscribing"));
            }
            self.client = client;
        }
        let Some(token) = command.token.as_deref() else {
            if refresh {
                return Err(ErrorBody::new("missing_field", "missing field \"token\""));
            }
            let result = serde_json::json!({ "client": self.client.to_string(), "user": self.identity.user() });
            return Ok(vec![result_reply(id, result.to_string())]);
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
        // The new token may grant less: it must still grant every open subscription.
        let identity = crate::auth::Identity::User(Box::new(claims.clone()));
        for (channel, _) in self.positions.iter() {
            crate::auth::may_subscribe(&identity, self.app.hub.namespaces().options_for(channel), channel)
                .map_err(|denied| ErrorBody::new(denied.code(), format!("{denied}; unsubscribe first")))?;
        }
        let result =
            serde_json::json!({ "client": self.client.to_string(), "user": claims.sub, "expires": claims.exp });
        self.set_identity(crate::auth::Identity::User(Box::new(claims)));
        Ok(vec![result_reply(id, result.to_string())])
    }

    async fn subscribe(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = command.channel()?;
        if self.positions.is_tracked(&channel) {
            return Err(ErrorBody::new("already_subscribed", format!("already subscribed to {channel}")));
        }
        let limit = self.app.settings.limits.max_channels_per_connection.get();
        if self.positions.len() >= limit {
            return Err(ErrorBody::new("too_many_channels", format!("at most {limit} channels per connection")));
        }
        crate::auth::may_subscribe(&self.identity, self.app.hub.namespaces().options_for(&channel), &channel)
            .map_err(|denied| ErrorBody::new(denied.code(), denied.to_string()))?;
        let since = command.since.as_ref().map(Position::from);
        let subscribed = self
            .app
            .hub
            .subscribe(&self.subscriber, &channel, since.as_ref())
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?;
        let start = match (since, subscribed.recovered) {
            (Some(since), Some(true)) => since,
            _ => subscribed.position.clone(),
        };
        self.positions.track(channel.clone(), start);
        if !self.app.hub.join_presence(&channel, crate::presence::entry(&self.identity, self.client)).await {
            // The id taken back belongs to another user: this connection gets its own.
            self.client = ClientId::random();
            self.app.hub.join_presence(&channel, crate::presence::entry(&self.identity, self.client)).await;
        }
        let mut result = serde_json::json!({
            "channel": channel.as_str(),
            "position": WirePosition::from(&subscribed.position),
        });
        if let Some(recovered) = subscribed.recovered {
            result["recovered"] = recovered.into();
        }
        let mut frames = vec![result_reply(id, result.to_string())];
        frames.extend(subscribed.missed.iter().filter_map(|publication| self.publication_frame(publication)));
        Ok(frames)
    }

    async fn unsubscribe(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = command.channel()?;
        if self.positions.forget(&channel).is_none() {
            return Err(ErrorBody::new("not_subscribed", format!("not subscribed to {channel}")));
        }
        self.app.hub.unsubscribe(&self.subscriber, &channel).await;
        let client = self.client.to_string();
        if self.app.hub.leave_presence(&channel, &client, false) {
            self.app.hub.settle_presence(&channel, &client).await;
        }
        Ok(vec![result_reply(id, "{}".to_string())])
    }

    /// `presence {channel}`: who is there, for clients that may read the channel.
    async fn presence(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = command.channel()?;
        crate::auth::may_subscribe(&self.identity, self.app.hub.namespaces().options_for(&channel), &channel)
            .map_err(|denied| ErrorBody::new(denied.code(), denied.to_string()))?;
        let snapshot = self
            .app
            .hub
            .presence(&channel)
            .await
            .map_err(|error| ErrorBody::new("engine_unavailable", error.to_string()))?
            .ok_or_else(|| crate::presence::not_kept(&channel))?;
        Ok(vec![result_reply(id, crate::presence::snapshot_json(&snapshot).to_string())])
    }

    async fn publish(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = command.channel()?;
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
            data: json_payload(data),
            idempotency_key: idempotency_key(command.idempotency_key.clone())?,
        };
        let published = crate::publish::publish(&self.app, request).await.map_err(|error| error.body)?;
        crate::metrics::published(crate::metrics::PublishedVia::WebSocket);
        Ok(vec![result_reply(id, published_json(&published).to_string())])
    }

    async fn history(&mut self, id: u64, command: &CommandFrame<'_>) -> Result<Vec<Bytes>, ErrorBody> {
        let channel = command.channel()?;
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
        let position = serde_json::to_string(&WirePosition::from(&page.top)).unwrap_or_default();
        let result = format!(
            "{{\"channel\":{},\"publications\":{},\"position\":{position},\"oldest\":{}}}",
            serde_json::Value::from(channel.as_str()),
            publications_array(&page.publications),
            page.oldest,
        );
        Ok(vec![result_reply(id, result)])
    }
}

/// A reply's text frame.
pub(super) fn result_reply(id: u64, result_json: String) -> Bytes {
    text_frame(format!("{{\"id\":{id},\"result\":{result_json}}}")).1
}

pub(super) fn error_reply(id: Option<u64>, error: ErrorBody) -> Bytes {
    let reply = match id {
        Some(id) => serde_json::json!({ "id": id, "error": error }),
        None => serde_json::json!({ "error": error }),
    };
    text_frame(reply.to_string()).1
}

/// The operations of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ping,
    Connect,
    Refresh,
    Subscribe,
    Unsubscribe,
    Publish,
    History,
    Presence,
}

/// Decodes a client text frame: its id, its op and its fields, or the error reply's id (when
/// one could be read) and error. Pure, and never panics, whatever the input (fuzzed).
pub fn decode(text: &str) -> Result<(u64, Op, CommandFrame<'_>), (Option<u64>, ErrorBody)> {
    let command = serde_json::from_str::<CommandFrame<'_>>(text).map_err(|error| {
        let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|frame| frame.id);
        (id, ErrorBody::new("bad_request", format!("invalid command: {error}")))
    })?;
    let Some(id) = command.id else {
        return Err((None, ErrorBody::new("missing_id", "every command needs a numeric \"id\"")));
    };
    let op = match command.op.as_deref() {
        None => return Err((Some(id), ErrorBody::new("missing_field", "missing field \"op\""))),
        Some("ping") => Op::Ping,
        Some("connect") => Op::Connect,
        Some("refresh") => Op::Refresh,
        Some("subscribe") => Op::Subscribe,
        Some("unsubscribe") => Op::Unsubscribe,
        Some("publish") => Op::Publish,
        Some("history") => Op::History,
        Some("presence") => Op::Presence,
        Some(other) => return Err((Some(id), ErrorBody::new("unknown_op", format!("unknown op {other:?}")))),
    };
    if matches!(op, Op::Subscribe | Op::Unsubscribe | Op::Publish | Op::History | Op::Presence) {
        command.channel().map_err(|error| (Some(id), error))?;
    }
    Ok((id, op, command))
}

/// A client command: `{"id":N,"op":"...", ...}`. Fields are checked per op, so an error can
/// say exactly what is missing.
#[derive(Deserialize)]
pub struct CommandFrame<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    since: Option<WirePosition>,
    #[serde(borrow, default, deserialize_with = "present_raw_value")]
    data: Option<&'a RawValue>,
    idempotency_key: Option<String>,
    limit: Option<usize>,
    reverse: Option<bool>,
    token: Option<String>,
    client: Option<String>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

impl CommandFrame<'_> {
    pub fn channel(&self) -> Result<ChannelName, ErrorBody> {
        let name =
            self.channel.as_deref().ok_or_else(|| ErrorBody::new("missing_field", "missing field \"channel\""))?;
        ChannelName::new(name).map_err(|error| ErrorBody::new("invalid_channel", error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property: no input panics the decoder, and every error has a code and a message.
    #[test]
    fn no_input_panics_the_decoder() {
        let valid = [
            r#"{"id":1,"op":"subscribe","channel":"a:b","since":{"epoch":"x","offset":3}}"#,
            r#"{"id":2,"op":"publish","channel":"a","data":{"k":[1,2,{"z":null}]},"idempotency_key":"k"}"#,
            r#"{"id":3,"op":"history","channel":"a","limit":5,"reverse":true}"#,
            r#"{"id":4,"op":"connect","token":"a.b.c"}"#,
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..100_000 {
            let text: String = if round % 3 == 0 {
                (0..rng.usize(..64)).map(|_| rng.char(..)).collect()
            } else {
                let mut chars: Vec<char> = valid[rng.usize(..valid.len())].chars().collect();
                for _ in 0..rng.usize(1..8) {
                    let at = rng.usize(..chars.len());
                    match rng.u8(..3) {
                        0 => {
                            chars.remove(at);
                        }
                        1 => chars.insert(at, rng.char(..)),
                        _ => chars[at] = ['{', '}', '"', ':', ',', '[', ']', '\\', '0', '-'][rng.usize(..10)],
                    }
                    if chars.is_empty() {
                        break;
                    }
                }
                chars.into_iter().collect()
            };
            if let Err((_, error)) = decode(&text) {
                assert!(!error.code.is_empty() && !error.message.is_empty(), "{text:?}");
            }
        }
        assert_eq!(decode(valid[0]).map(|(id, op, _)| (id, op)).ok(), Some((1, Op::Subscribe)));
        assert_eq!(
            decode(r#"{"id":9,"op":"subscribe","channel":"a b"}"#).err().map(|(id, e)| (id, e.code)),
            Some((Some(9), "invalid_channel"))
        );
    }
}
