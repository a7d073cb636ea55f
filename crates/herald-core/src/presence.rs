//! Presence: who is subscribed to a channel now, and the join/leave and channel lifecycle events
//! (occupied, vacated) this node reports.
//!
//! The engine holds the shared truth (one set per channel, across nodes, with entries that
//! expire unless refreshed, so a crashed node leaves no ghosts); [`crate::local_presence`] is
//! this node's side of it.

use crate::channel::ChannelName;
use crate::publication::{EncodedSlot, Payload};
use std::collections::HashMap;
use std::sync::Arc;

/// One present client of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The client: one connection, or one HTTP client across its requests.
    pub client: String,
    /// The user (the token's `sub`); empty for an anonymous client.
    pub user: String,
    /// The token's `info`, as JSON text, if any.
    pub info: Option<Payload>,
    /// Milliseconds since the Unix epoch when the client joined.
    pub since_ms: u64,
}

/// Whether a presence event is a join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceChange {
    Join,
    Leave,
}

impl PresenceChange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// A client joined or left a channel; pushed to its subscribers when the namespace has
/// `join_leave`, encoded once for all of them.
pub struct PresenceEvent {
    pub channel: ChannelName,
    pub change: PresenceChange,
    pub entry: PresenceEntry,
    encoded: EncodedSlot,
}

impl PresenceEvent {
    pub fn new(channel: ChannelName, change: PresenceChange, entry: PresenceEntry) -> Self {
        Self { channel, change, entry, encoded: EncodedSlot::default() }
    }

    /// The encoded form, made on first use and shared after (see [`EncodedSlot`]).
    pub fn encoded<T>(&self, encode: impl FnOnce(&PresenceEvent) -> T) -> T
    where
        T: std::any::Any + Clone + Send + Sync,
    {
        self.encoded.get_or_encode(|| encode(self))
    }
}

impl std::fmt::Debug for PresenceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceEvent")
            .field("channel", &self.channel)
            .field("change", &self.change)
            .field("entry", &self.entry)
            .finish()
    }
}

/// How many local connections a channel has now; pushed, at most about once a second per
/// channel, to its subscribers that asked for counts ([`crate::Hub::connect_counting`]), encoded
/// once for all of them.
pub struct SubscriptionCount {
    pub channel: ChannelName,
    pub count: usize,
    encoded: EncodedSlot,
}

impl SubscriptionCount {
    pub fn new(channel: ChannelName, count: usize) -> Self {
        Self { channel, count, encoded: EncodedSlot::default() }
    }

    /// The encoded form, made on first use and shared after (see [`EncodedSlot`]).
    pub fn encoded<T>(&self, encode: impl FnOnce(&SubscriptionCount) -> T) -> T
    where
        T: std::any::Any + Clone + Send + Sync,
    {
        self.encoded.get_or_encode(|| encode(self))
    }
}

impl std::fmt::Debug for SubscriptionCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionCount").field("channel", &self.channel).field("count", &self.count).finish()
    }
}

/// Something that happened to a channel, reported once (by the node where it happened), for
/// webhooks and metrics.
#[derive(Debug, Clone)]
pub enum ChannelEvent {
    /// The channel got its first subscriber.
    Occupied(ChannelName),
    /// The channel lost its last subscriber (after the grace period).
    Vacated(ChannelName),
    /// A client joined or left (namespaces with `join_leave`).
    Presence(Arc<PresenceEvent>),
}

impl ChannelEvent {
    pub fn channel(&self) -> &ChannelName {
        match self {
            Self::Occupied(channel) | Self::Vacated(channel) => channel,
            Self::Presence(event) => &event.channel,
        }
    }

    /// The event's type name, as webhooks and metrics spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Occupied(_) => "channel.occupied",
            Self::Vacated(_) => "channel.vacated",
            Self::Presence(event) => match event.change {
                PresenceChange::Join => "presence.join",
                PresenceChange::Leave => "presence.leave",
            },
        }
    }
}

/// Receives the [`ChannelEvent`]s this node reports. Must not block.
pub trait ChannelEventSink: Send + Sync {
    fn channel_event(&self, event: ChannelEvent);
}

/// A channel's presence, as the API answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceSnapshot {
    /// Present clients, oldest first.
    pub clients: Vec<PresenceEntry>,
}

impl PresenceSnapshot {
    /// Distinct users with how many clients each, in order of first appearance; anonymous
    /// clients (no user) are not users.
    pub fn users(&self) -> Vec<(&str, usize)> {
        let mut users: Vec<(&str, usize)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for entry in self.clients.iter().filter(|entry| !entry.user.is_empty()) {
            match index.get(entry.user.as_str()) {
                Some(&at) => users[at].1 += 1,
                None => {
                    index.insert(&entry.user, users.len());
                    users.push((&entry.user, 1));
                }
            }
        }
        users
    }
}
