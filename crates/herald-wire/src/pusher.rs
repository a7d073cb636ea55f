//! The Pusher Channels protocol, as Herald's Pusher door speaks it (`docs/pusher.md`): what
//! pusher-js sends, the events the server sends back, the frames of the HTTP fallbacks, the
//! HTTP API's bodies and replies, the webhook bodies, and the data a Herald publication holds
//! for a Pusher event.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The event name of a publication whose data is not a Pusher event.
pub const HERALD_PUBLICATION: &str = "herald:publication";

// ----- from clients -----

/// An event from a client: `{"event", "channel"?, "data"?}`.
#[derive(Debug, Deserialize)]
pub struct ClientMessage<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(default, borrow)]
    pub channel: Option<Cow<'a, str>>,
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

/// `pusher:unsubscribe`'s data.
#[derive(Debug, Deserialize)]
pub struct UnsubscribeData {
    pub channel: String,
}

/// `pusher:signin`'s data: the app's signature over `user_data`.
#[derive(Debug, Deserialize)]
pub struct SignInData {
    pub auth: String,
    pub user_data: String,
}

/// What a sign-in's `user_data` must hold.
#[derive(Debug, Deserialize)]
pub struct UserData {
    pub id: String,
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

// ----- a Pusher event as a Herald publication -----

/// The data of a Herald publication that is a Pusher event. `socket_id` names the connection
/// that does not get it (the sender of a client event, or one the publisher excluded);
/// `user_id` is a client event's sender on a presence channel. The event name comes first, so
/// a client event is known by its first bytes (see [`is_client_event`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredEvent<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub socket_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub user_id: Option<Cow<'a, str>>,
}

/// Whether a publication's data is a client event, from its first bytes.
pub fn is_client_event(data: &[u8]) -> bool {
    data.starts_with(br#"{"event":"client-"#)
}

/// Event data as Pusher sends it: a JSON string is its text; other JSON, its own text.
pub fn as_string(data: &RawValue) -> Cow<'_, str> {
    match serde_json::from_str::<Cow<'_, str>>(data.get()) {
        Ok(text) => text,
        Err(_) => Cow::Borrowed(data.get()),
    }
}

// ----- to clients -----

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

/// An event's JSON, its data given as JSON text (sent as a JSON string); `user_id` for a
/// client event on a presence channel.
pub fn event(name: &str, channel: Option<&str>, data_json: &str, user_id: Option<&str>) -> String {
    let event = ServerEvent { event: name, channel, data: data_json, user_id };
    serde_json::to_string(&event).unwrap_or_default()
}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: ErrorData<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ErrorData<'a> {
    Connection { code: Option<u16>, message: &'a str },
    Subscription { r#type: &'a str, error: &'a str, status: u16 },
}

/// `pusher:error {code, message}` (its data an object: pusher-js reads it as is).
pub fn error(code: Option<u16>, message: &str) -> String {
    let event = ErrorEvent { event: "pusher:error", channel: None, data: ErrorData::Connection { code, message } };
    serde_json::to_string(&event).unwrap_or_default()
}

/// `pusher:subscription_error` on a channel, with the fields pusher-js gives its listeners.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    let data = ErrorData::Subscription { r#type: kind, error: message, status };
    serde_json::to_string(&ErrorEvent { event: "pusher:subscription_error", channel: Some(channel), data })
        .unwrap_or_default()
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    #[derive(Serialize)]
    struct Established<'a> {
        socket_id: &'a str,
        activity_timeout: u64,
    }
    let data = serde_json::to_string(&Established { socket_id, activity_timeout }).unwrap_or_default();
    event("pusher:connection_established", None, &data, None)
}

/// `pusher:signin_success`, echoing the signed user data.
pub fn signin_success(user_data: &str) -> String {
    #[derive(Serialize)]
    struct Success<'a> {
        user_data: &'a str,
    }
    event("pusher:signin_success", None, &serde_json::to_string(&Success { user_data }).unwrap_or_default(), None)
}

/// A presence member: its user id and info (JSON text, `null` without one).
pub struct Member<'a> {
    pub user_id: &'a str,
    pub user_info: Option<&'a RawValue>,
}

/// `pusher_internal:subscription_succeeded`'s data on a presence channel:
/// `{"presence":{"ids","hash","count"}}`, each user once, in the order given.
pub fn presence_data(members: &[Member<'_>]) -> String {
    #[derive(Serialize)]
    struct Presence<'a> {
        presence: PresenceSet<'a>,
    }
    #[derive(Serialize)]
    struct PresenceSet<'a> {
        ids: Vec<&'a str>,
        hash: BTreeMap<&'a str, &'a RawValue>,
        count: usize,
    }
    let null = RawValue::NULL;
    let mut ids = Vec::with_capacity(members.len());
    let mut hash = BTreeMap::new();
    for member in members {
        if hash.insert(member.user_id, member.user_info.unwrap_or(null)).is_none() {
            ids.push(member.user_id);
        }
    }
    let count = ids.len();
    serde_json::to_string(&Presence { presence: PresenceSet { ids, hash, count } }).unwrap_or_default()
}

/// `pusher_internal:member_added`'s data.
pub fn member_added_data(member: &Member<'_>) -> String {
    #[derive(Serialize)]
    struct Added<'a> {
        user_id: &'a str,
        user_info: &'a RawValue,
    }
    let added = Added { user_id: member.user_id, user_info: member.user_info.unwrap_or(RawValue::NULL) };
    serde_json::to_string(&added).unwrap_or_default()
}

/// The event telling a channel's subscribers how many connections it has (an app's
/// `subscription_count` option; pusher-js passes it on as `pusher:subscription_count`).
pub const SUBSCRIPTION_COUNT_EVENT: &str = "pusher_internal:subscription_count";

/// `pusher_internal:subscription_count`'s data.
pub fn subscription_count_data(count: usize) -> String {
    #[derive(Serialize)]
    struct Count {
        subscription_count: usize,
    }
    serde_json::to_string(&Count { subscription_count: count }).unwrap_or_default()
}

/// `pusher_internal:member_removed`'s data.
pub fn member_removed_data(user_id: &str) -> String {
    #[derive(Serialize)]
    struct Removed<'a> {
        user_id: &'a str,
    }
    serde_json::to_string(&Removed { user_id }).unwrap_or_default()
}

// ----- the HTTP fallbacks' frames -----

pub const OPEN_FRAME: &str = "o\n";
pub const HEARTBEAT_FRAME: &str = "h\n";

/// `a[...]\n`: events, each its JSON as a JSON string (pusher-js parses it once more).
pub fn events_frame<'a>(events: impl IntoIterator<Item = &'a str>) -> String {
    let events: Vec<&str> = events.into_iter().collect();
    format!("a{}\n", serde_json::to_string(&events).unwrap_or_else(|_| "[]".into()))
}

/// `c[code,"reason"]\n`.
pub fn close_frame(code: u16, reason: &str) -> String {
    format!("c{}\n", serde_json::to_string(&(code, reason)).unwrap_or_else(|_| "[]".into()))
}

// ----- the HTTP API -----

/// One event to trigger: the body of `POST /apps/{id}/events`, and each of a batch's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerEvent {
    pub name: String,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub socket_id: Option<String>,
    /// Attributes to answer per channel: `subscription_count`, `user_count`.
    #[serde(default)]
    pub info: Option<String>,
}

/// The body of `POST /apps/{id}/batch_events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerBatch {
    pub batch: Vec<TriggerEvent>,
}

/// A channel's attributes, as the API answers them (each only when asked or known).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ChannelAttributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occupied: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<usize>,
}

/// The reply of `events` (`channels` when `info` was asked) and of `GET /channels`.
#[derive(Debug, Default, Serialize)]
pub struct ChannelsReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeMap<String, ChannelAttributes>>,
}

/// The reply of `batch_events` (`batch` when some event asked for `info`).
#[derive(Debug, Default, Serialize)]
pub struct BatchReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<Vec<ChannelAttributes>>,
}

/// The reply of `GET /channels/{name}/users`.
#[derive(Debug, Serialize)]
pub struct UsersReply {
    pub users: Vec<UserRef>,
}

#[derive(Debug, Serialize)]
pub struct UserRef {
    pub id: String,
}

// ----- webhooks -----

/// A webhook call's body: `{"time_ms", "events": [...]}`.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    pub time_ms: u64,
    pub events: Vec<WebhookEvent<'a>>,
}

/// One webhook event, named as Pusher names them.
#[derive(Debug, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent<'a> {
    ChannelOccupied {
        channel: &'a str,
    },
    ChannelVacated {
        channel: &'a str,
    },
    MemberAdded {
        channel: &'a str,
        user_id: &'a str,
    },
    MemberRemoved {
        channel: &'a str,
        user_id: &'a str,
    },
    ClientEvent {
        channel: &'a str,
        event: &'a str,
        data: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        socket_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    },
    CacheMiss {
        channel: &'a str,
    },
}

/// The body of a call carrying one event.
pub fn webhook_body(time_ms: u64, event: WebhookEvent<'_>) -> String {
    serde_json::to_string(&WebhookBody { time_ms, events: vec![event] }).unwrap_or_default()
}

/// One call's body carrying the events of several bodies, in their order, stamped with the
/// latest one's time. A body that is not a webhook body is an error (nothing is dropped).
pub fn webhook_batch<'a>(bodies: impl IntoIterator<Item = &'a str>) -> Result<String, serde_json::Error> {
    #[derive(Deserialize)]
    struct Stored<'a> {
        time_ms: u64,
        #[serde(borrow)]
        events: Vec<&'a RawValue>,
    }
    #[derive(Serialize)]
    struct Batch<'a> {
        time_ms: u64,
        events: Vec<&'a RawValue>,
    }
    let mut batch = Batch { time_ms: 0, events: Vec::new() };
    for body in bodies {
        let stored: Stored<'_> = serde_json::from_str(body)?;
        batch.time_ms = batch.time_ms.max(stored.time_ms);
        batch.events.extend(stored.events);
    }
    serde_json::to_string(&batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_bodies_batch_into_one_call_in_order() {
        let first = webhook_body(5, WebhookEvent::ChannelOccupied { channel: "a" });
        let second = webhook_body(7, WebhookEvent::MemberAdded { channel: "presence-a", user_id: "u" });
        assert_eq!(
            webhook_batch([first.as_str(), second.as_str()]).unwrap(),
            r#"{"time_ms":7,"events":[{"name":"channel_occupied","channel":"a"},{"name":"member_added","channel":"presence-a","user_id":"u"}]}"#
        );
        assert!(webhook_batch([first.as_str(), "{\"not\":1}"]).is_err());
    }

    #[test]
    fn events_and_frames_are_what_pusher_js_parses() {
        assert_eq!(
            event("greet", Some("news"), "{\"a\":1}", None),
            r#"{"event":"greet","channel":"news","data":"{\"a\":1}"}"#
        );
        assert_eq!(error(Some(4001), "no"), r#"{"event":"pusher:error","data":{"code":4001,"message":"no"}}"#);
        assert_eq!(
            subscription_error("private-x", "AuthError", "bad", 401),
            r#"{"event":"pusher:subscription_error","channel":"private-x","data":{"type":"AuthError","error":"bad","status":401}}"#
        );
        assert_eq!(
            connection_established("1.2", 120),
            r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#
        );
        let info = RawValue::from_string("{\"name\":\"A\"}".into()).unwrap();
        let members = [
            Member { user_id: "a", user_info: Some(&info) },
            Member { user_id: "b", user_info: None },
            Member { user_id: "a", user_info: Some(&info) },
        ];
        assert_eq!(
            presence_data(&members),
            r#"{"presence":{"ids":["a","b"],"hash":{"a":{"name":"A"},"b":null},"count":2}}"#
        );
        assert_eq!(events_frame(["{\"event\":\"x\"}"]), "a[\"{\\\"event\\\":\\\"x\\\"}\"]\n");
        assert_eq!(close_frame(4001, "no \"key\""), "c[4001,\"no \\\"key\\\"\"]\n");
        assert!(is_client_event(br#"{"event":"client-typing","data":1}"#) && !is_client_event(br#"{"event":"x"}"#));
    }

    #[test]
    fn webhook_bodies_name_their_events_as_pusher_does() {
        let body = webhook_body(7, WebhookEvent::MemberAdded { channel: "presence-r", user_id: "u" });
        assert_eq!(body, r#"{"time_ms":7,"events":[{"name":"member_added","channel":"presence-r","user_id":"u"}]}"#);
        let body = webhook_body(7, WebhookEvent::CacheMiss { channel: "cache-x" });
        assert_eq!(body, r#"{"time_ms":7,"events":[{"name":"cache_miss","channel":"cache-x"}]}"#);
    }
}
