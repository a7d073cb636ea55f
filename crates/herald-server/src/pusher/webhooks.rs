//! Webhooks in Pusher's format, for the endpoints of `[[pusher.apps.webhooks]]`: the body
//! (`{"time_ms", "events": [...]}`), the signature (`X-Pusher-Signature`: hex HMAC-SHA256 of
//! the body with the app's secret), and the translation of Herald's events into Pusher's.
//! They travel through Herald's durable outbox like every webhook; only the body and the
//! signing differ.
//!
//! Herald's presence events are per client; Pusher's `member_added` and `member_removed` are
//! per user, so [`MemberCounts`] counts each user's clients per channel from the events
//! themselves (this node's: on a cluster each node reports its own clients).

use std::collections::HashMap;
use std::sync::Mutex;

use herald_core::{ChannelEvent, ChannelName, PresenceChange};
use herald_wire::pusher::{StoredEvent, WebhookEvent, as_string, webhook_body};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::apps::USER_CHANNEL_PREFIX;

/// `X-Pusher-Signature` of a body.
pub fn signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The Pusher name of a channel: what follows its namespace. `None` for the users' own
/// channels, which Pusher reports nothing of.
fn pusher_name(channel: &ChannelName) -> Option<&str> {
    let (_, name) = channel.as_str().split_once(':')?;
    (!name.starts_with(USER_CHANNEL_PREFIX)).then_some(name)
}

/// Each present user's clients per presence channel, as the events have told them.
#[derive(Default)]
pub struct MemberCounts(Mutex<HashMap<(ChannelName, String), usize>>);

impl MemberCounts {
    /// Counts a join or leave; whether it changed the users (a first client, or the last).
    fn changes_users(&self, channel: &ChannelName, user: &str, change: PresenceChange) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (channel.clone(), user.to_string());
        match change {
            PresenceChange::Join => {
                let count = counts.entry(key).or_default();
                *count += 1;
                *count == 1
            }
            PresenceChange::Leave => match counts.get_mut(&key) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    counts.remove(&key);
                    true
                }
                // A client that joined before this node started counting.
                None => true,
            },
        }
    }
}

/// The Pusher event name and body of a channel event, if Pusher sends one for it. Call once
/// per event: a presence event is counted here.
pub fn channel_event_body(
    event: &ChannelEvent,
    members: &MemberCounts,
    time_ms: u64,
) -> Option<(&'static str, String)> {
    let name = pusher_name(event.channel())?;
    match event {
        ChannelEvent::Occupied(_) => {
            Some(("channel_occupied", webhook_body(time_ms, WebhookEvent::ChannelOccupied { channel: name })))
        }
        ChannelEvent::Vacated(_) => {
            Some(("channel_vacated", webhook_body(time_ms, WebhookEvent::ChannelVacated { channel: name })))
        }
        ChannelEvent::Presence(presence) => {
            let user = &presence.entry.user;
            if user.is_empty() || !members.changes_users(event.channel(), user, presence.change) {
                return None;
            }
            let (kind, event) = match presence.change {
                PresenceChange::Join => ("member_added", WebhookEvent::MemberAdded { channel: name, user_id: user }),
                PresenceChange::Leave => {
                    ("member_removed", WebhookEvent::MemberRemoved { channel: name, user_id: user })
                }
            };
            Some((kind, webhook_body(time_ms, event)))
        }
    }
}

/// The Pusher body of a cache channel's miss (a subscriber found no last event).
pub fn cache_miss_body(channel: &ChannelName, time_ms: u64) -> Option<String> {
    Some(webhook_body(time_ms, WebhookEvent::CacheMiss { channel: pusher_name(channel)? }))
}

pub use herald_wire::pusher::is_client_event;

/// The Pusher body of a published client event; `None` for other publications.
pub fn client_event_body(channel: &ChannelName, data: &[u8], time_ms: u64) -> Option<String> {
    if !is_client_event(data) {
        return None;
    }
    let name = pusher_name(channel)?;
    let stored: StoredEvent<'_> = serde_json::from_slice(data).ok()?;
    let data = as_string(stored.data);
    let event = WebhookEvent::ClientEvent {
        channel: name,
        event: &stored.event,
        data: &data,
        socket_id: stored.socket_id.as_deref(),
        user_id: stored.user_id.as_deref(),
    };
    Some(webhook_body(time_ms, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{PresenceEntry, PresenceEvent};
    use std::sync::Arc;

    fn presence(change: PresenceChange, client: &str, user: &str) -> ChannelEvent {
        let entry = PresenceEntry { client: client.into(), user: user.into(), info: None, since_ms: 0 };
        ChannelEvent::Presence(Arc::new(PresenceEvent::new(ChannelName::new("app:presence-r").unwrap(), change, entry)))
    }

    #[test]
    fn members_are_reported_once_per_user() {
        let members = MemberCounts::default();
        let body = |event| channel_event_body(&event, &members, 7);
        let (kind, added) = body(presence(PresenceChange::Join, "c1", "alice")).unwrap();
        assert_eq!(kind, "member_added");
        assert_eq!(
            added,
            r#"{"time_ms":7,"events":[{"name":"member_added","channel":"presence-r","user_id":"alice"}]}"#
        );
        assert_eq!(body(presence(PresenceChange::Join, "c2", "alice")), None);
        assert_eq!(body(presence(PresenceChange::Leave, "c1", "alice")), None);
        assert_eq!(body(presence(PresenceChange::Leave, "c2", "alice")).unwrap().0, "member_removed");
        assert_eq!(body(presence(PresenceChange::Join, "c3", "")), None, "anonymous clients are no members");
    }

    #[test]
    fn client_events_and_signatures() {
        let channel = ChannelName::new("app:private-chat").unwrap();
        let data = br#"{"event":"client-typing","data":{"a":1},"socket_id":"1.2","user_id":"u"}"#;
        let body = client_event_body(&channel, data, 9).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed["events"][0],
            serde_json::json!({"name":"client_event","channel":"private-chat","event":"client-typing","data":"{\"a\":1}","socket_id":"1.2","user_id":"u"})
        );
        assert_eq!(client_event_body(&channel, br#"{"event":"greet","data":"x"}"#, 9), None);
        // HMAC-SHA256 of "hello" with key "key".
        assert_eq!(signature("key", "hello"), "9307b3b915efb5171ff14d8cb55fbcc798c6c0ef1456d66ded1a6aa723a58b7b");
        let user_channel = ChannelName::new("app:#server-to-user-u").unwrap();
        assert_eq!(channel_event_body(&ChannelEvent::Occupied(user_channel), &MemberCounts::default(), 1), None);
    }
}
