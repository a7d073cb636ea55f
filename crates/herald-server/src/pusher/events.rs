//! A Herald publication in its Pusher form, encoded once per publication and shared by every
//! Pusher subscriber, like Herald's own frames (the shapes are `herald_wire::pusher`'s).
//!
//! A publication is a Pusher event when its data is `{"event": NAME, "data": DATA}` (what the
//! Pusher HTTP API and client events publish; `socket_id` names a connection that does not get
//! it, `user_id` the sender of a client event on a presence channel). Any other data, such as a
//! publication through Herald's own API, reaches Pusher clients as event `herald:publication`
//! with the data as it is.

use std::sync::Arc;

use bytes::Bytes;
use herald_core::{Publication, SubscriptionCount};
use herald_wire::pusher::{
    HERALD_PUBLICATION, SUBSCRIPTION_COUNT_EVENT, StoredEvent, as_string, event, subscription_count_data,
};

use crate::transport::ws::frames::text_frame;

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

    /// A channel's subscriber count as `pusher_internal:subscription_count`, shared likewise.
    pub fn of_count(count: &SubscriptionCount) -> Self {
        count.encoded(|count| {
            let json = event(
                SUBSCRIPTION_COUNT_EVENT,
                Some(pusher_name(&count.channel)),
                &subscription_count_data(count.count),
                None,
            );
            let (text, ws_frame) = text_frame(json);
            Self { json: Bytes::from(text), ws_frame, exclude: None, event: Some(Arc::from(SUBSCRIPTION_COUNT_EVENT)) }
        })
    }
}

/// A Herald channel's name without its namespace: the Pusher name.
fn pusher_name(channel: &herald_core::ChannelName) -> &str {
    channel.as_str().split_once(':').map_or(channel.as_str(), |(_, name)| name)
}

/// The event JSON of a publication, the socket it excludes, and its event name.
fn pusher_json(publication: &Publication) -> (String, Option<String>, Option<String>) {
    let channel = pusher_name(&publication.channel);
    let data = std::str::from_utf8(&publication.data).unwrap_or("null");
    match serde_json::from_str::<StoredEvent<'_>>(data) {
        // The protocol's own events are the server's to send: a publication naming one reaches
        // Pusher clients as plain data (its name kept for the door, as `terminate_connections`).
        Ok(stored) if stored.event.starts_with("pusher:") || stored.event.starts_with("pusher_internal:") => {
            (event(HERALD_PUBLICATION, Some(channel), data, None), None, Some(stored.event.into_owned()))
        }
        Ok(stored) => {
            let payload = as_string(stored.data);
            let json = event(&stored.event, Some(channel), &payload, stored.user_id.as_deref());
            (json, stored.socket_id.map(|id| id.into_owned()), Some(stored.event.into_owned()))
        }
        Err(_) => (event(HERALD_PUBLICATION, Some(channel), data, None), None, None),
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
    fn a_publication_cannot_pose_as_the_protocol_s_own_events() {
        let forged =
            publication("app:presence-x", r#"{"event":"pusher_internal:member_added","data":"{\"user_id\":\"x\"}"}"#);
        let form = PusherPublication::of(&forged);
        assert!(form.json.starts_with(br#"{"event":"herald:publication""#), "{:?}", form.json);
        assert_eq!(form.event.as_deref(), Some("pusher_internal:member_added"));
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
