//! Herald's core: the concepts every transport and engine share, and the hub that joins them.
//!
//! - [`channel`]: channel names and their namespaces;
//! - [`clock`]: the wall clock in Unix milliseconds, as publications and leases are stamped;
//! - [`namespace`]: per-namespace options (history size and TTL, client publish, ...);
//! - [`position`]: epochs and positions;
//! - [`tracker`]: the positions one subscription has reached, which pass each publication once;
//! - [`publication`]: the publication as the hub hands it around, with its shared encoded form;
//! - [`engine`]: the trait an engine implements (publish with positions, cross-node fan-out,
//!   history, idempotency), the seam for memory, Redis and NATS;
//! - [`memory`]: the single-node in-memory engine;
//! - [`durable`]: the storage trait for durable history, and the engine that sends durable
//!   namespaces to it;
//! - [`presence`]: presence entries, join/leave and channel lifecycle events;
//! - [`local_presence`]: this node's side of presence (subscription counts, grace period,
//!   leases, one engine call at a time per entry);
//! - [`hub`]: local subscribers, fan-out through bounded per-connection queues, recovery.
//!
//! The core knows no HTTP, no socket, no wire format and no backend: it is pure logic on top of
//! tokio's synchronisation primitives, so it can be tested without any IO.

pub mod channel;
pub mod clock;
pub mod durable;
pub mod engine;
pub mod hub;
pub mod inbox;
pub mod local_presence;
pub mod memory;
pub mod namespace;
pub mod position;
pub mod presence;
pub mod publication;
pub mod tracker;

pub use channel::{ChannelName, InvalidChannelName, MAX_CHANNEL_NAME_LEN};
pub use clock::unix_millis;
pub use durable::{DurableEngine, Storage};
pub use engine::{Engine, EngineError, FanOut, HistoryPage, HistoryQuery, PublishError, PublishRequest, Published};
pub use hub::{Hub, HubError, Subscribed, SubscriberHandle};
pub use inbox::{Control, Inbox, Lagged, Push};
pub use local_presence::{LocalPresence, PresenceTiming};
pub use memory::MemoryEngine;
pub use namespace::{NamespaceOptions, Namespaces};
pub use position::{Epoch, Position};
pub use presence::{
    ChannelEvent, ChannelEventSink, PresenceChange, PresenceEntry, PresenceEvent, PresenceSnapshot, SubscriptionCount,
};
pub use publication::{Payload, Publication};
pub use tracker::PositionTracker;
