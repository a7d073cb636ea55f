//! The Pusher door's events on the wire: what clients send, the events the server sends, and a
//! Herald publication in its Pusher form, encoded once per publication and shared by every
//! Pusher subscriber, like Herald's own frames.
//!
//! A publication is a Pusher event when its data is `{"event": NAME, "data": DATA}` (what the
//! Pusher HTTP API and client events publish; `socket_id` names a connection that does not get
//! it, `user_id` the sender of a client event on a presence channel). Any other data, such as a
//! publication through Herald's own API, reaches Pusher clients as event `herald:publication`
//! with the data as it is.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::Publication;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::transport::ws::frames::text_frame;

/// The event name of a publication whose data is not a Pusher event.
pub const HERALD_PUBLICATION: &str = "herald:publication";

/// An event from a client: `{"event", "channel"?, "data"?}`.
#[derive(Debug, Deserialize)]
pub struct ClientMessage<'a> {
    #[serde(borrow)]
    pub event: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

/// `pusher:subscribe`'s data.
#[derive(Debug, Deserialize)]
pub struct SubscribeData {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// A presence channel's `channel_data`, as the app's auth endpoint signed it.
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    pub user_id: UserId,
    #[serde(default)]
    pub user_info: Option<Box<RawValue>>,
}

/// Pusher user ids are strings, though many apps send numbers.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UserId {
    Text(String),
    Number(serde_json::Number),
}

impl UserId {
    pub fn into_string(self) -> String {
        match self {
            Self::Text(text) => text,
            Self::Number(number) => number.to_string(),
        }
    }
}

/// The data a Herald publication holds for a Pusher event.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredEvent<'a> {
    #[serde(borrow)]
    pub event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub socket_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub user_id: Option<std::borrow::Cow<'a, str>>,
}

/// One event as the server sends it: `data` is a JSON string, as Pusher's servers send it.
#[derive(Serialize)]
struct ServerEvent<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// An event's JSON, its data given as JSON text (sent as a JSON string).
pub fn event(name: &str, channel: Option<&str>, data_json: &str) -> String {
    encode(name, channel, data_json, None)
}

fn encode(name: &str, channel: Option<&str>, data: &str, user_id: Option<&str>) -> String {
    serde_json::to_string(&ServerEvent { event: name, channel, data, user_id }).unwrap_or_default()
}

/// `pusher:error {code, message}` (its data is an object: pusher-js reads it as is).
pub fn error(code: Option<u16>, message: &str) -> String {
    serde_json::json!({"event": "pusher:error", "data": {"code": code, "message": message}}).to_string()
}

/// `pusher:subscription_error` on a channel, with pusher-js's fields.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    let data = serde_json::json!({"type": kind, "error": message, "status": status});
    serde_json::json!({"event": "pusher:subscription_error", "channel": channel, "data": data}).to_string()
}

/// A publication in its Pusher form, shared by every Pusher subscriber.
#[derive(Clone)]
pub struct PusherPublication {
    /// The event's JSON.
    pub json: Bytes,
    /// The same JSON as a WebSocket text frame.
    pub ws_frame: Bytes,
    /// The socket that sent it (or was excluded by the publisher): it does not get it.
    pub exclude: Option<Arc<str>>,
    /// The event's name, when the publication is a Pusher event.
    pub event: Option<Arc<str>>,
}

impl PusherPublication {
    pub fn of(publication: &Publication) -> Self {
        publication.encoded(|publication| {
            let (json, exclude, event) = pusher_json(publication);
            let (text, ws_frame) = text_frame(json);
            Self { json: Bytes::from(text), ws_frame, exclude: exclude.map(Arc::from), event: event.map(Arc::from) }
        })
    }
}

/// The event JSON of a publication, the socket it excludes, and its event name.
fn pusher_json(publication: &Publication) -> (String, Option<String>, Option<String>) {
    let channel = publication.channel.as_str().split_once(':').map_or(publication.channel.as_str(), |(_, name)| name);
    let data = std::str::from_utf8(&publication.data).unwrap_or("null");
    match serde_json::from_str::<StoredEvent<'_>>(data) {
        Ok(stored) => {
            let payload = as_string(stored.data);
            let json = encode(&stored.event, Some(channel), &payload, stored.user_id.as_deref());
            (json, stored.socket_id.map(|id| id.into_owned()), Some(stored.event.into_owned()))
        }
        Err(_) => (encode(HERALD_PUBLICATION, Some(channel), data, None), None, None),
    }
}

/// Event data as Pusher sends it: a JSON string is its text; other JSON, its own text.
pub fn as_string(data: &RawValue) -> std::borrow::Cow<'_, str> {
    match serde_json::from_str::<std::borrow::Cow<'_, str>>(data.get()) {
        Ok(text) => text,
        Err(_) => std::borrow::Cow::Borrowed(data.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{ChannelName, Epoch, Position};

    fn publication(channel: &str, data: &'static str) -> Publication {
        Publication::new(
            ChannelName::new(channel).unwrap(),
            Position { epoch: Epoch::new("e"), offset: 1 },
            Bytes::from_static(data.as_bytes()),
            0,
        )
    }

    #[test]
    fn a_stored_event_becomes_the_event_with_string_data() {
        let stored = publication("app:news", r#"{"event":"greet","data":"{\"a\":1}","socket_id":"1.2"}"#);
        let form = PusherPublication::of(&stored);
        assert_eq!(form.json, r#"{"event":"greet","channel":"news","data":"{\"a\":1}"}"#);
        assert_eq!(form.exclude.as_deref(), Some("1.2"));
        let object = publication("app:presence-x", r#"{"event":"client-typing","data":{"b":[2]},"user_id":"u1"}"#);
        let form = PusherPublication::of(&object);
        assert_eq!(
            form.json,
            r#"{"event":"client-typing","channel":"presence-x","data":"{\"b\":[2]}","user_id":"u1"}"#
        );
        assert!(form.exclude.is_none());
    }

    #[test]
    fn other_data_arrives_as_a_herald_publication() {
        let form = PusherPublication::of(&publication("app:news", r#"{"text":"hi"}"#));
        assert_eq!(form.json, r#"{"event":"herald:publication","channel":"news","data":"{\"text\":\"hi\"}"}"#);
        // Both doors' forms live side by side in the publication.
        let both = publication("app:news", r#"[1]"#);
        let herald = crate::encode::EncodedPublication::of(&both);
        assert_eq!(
            PusherPublication::of(&both).json,
            r#"{"event":"herald:publication","channel":"news","data":"[1]"}"#
        );
        assert_eq!(crate::encode::EncodedPublication::of(&both).ws_frame, herald.ws_frame);
    }
}
