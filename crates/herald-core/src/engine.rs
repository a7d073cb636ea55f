//! The engine trait: the seam between the hub and whatever assigns positions, keeps history and
//! carries publications between nodes (memory on one node; Redis or NATS for many).
//!
//! Designed for a remote engine from the start: every call is async and fallible, publishing is
//! batched, and publications reach the hub through [`FanOut`] whichever node published them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;

use crate::channel::ChannelName;
use crate::position::Position;
use crate::presence::{ChannelEvent, PresenceEntry, PresenceEvent};
use crate::publication::{Payload, Publication};

/// One publish asked of the engine.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: ChannelName,
    pub data: Payload,
    /// A key seen before within the namespace's idempotency window returns the original
    /// position instead of publishing twice.
    pub idempotency_key: Option<String>,
}

/// What a publish produced.
#[derive(Debug, Clone)]
pub struct Published {
    pub channel: ChannelName,
    pub position: Position,
    /// When the engine accepted it (milliseconds since the Unix epoch); for a duplicate, when
    /// the repeat was seen.
    pub time_ms: u64,
    /// True when the idempotency key was seen before and nothing new was published.
    pub duplicate: bool,
}

/// A read of one channel's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Forward: publications after this offset. Reverse: publications before it. `None`: from
    /// the oldest (forward) or the newest (reverse).
    pub since: Option<u64>,
    /// At most this many publications.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryQuery {
    /// Everything after `offset`, oldest first: what a recovery needs.
    pub fn after(offset: u64) -> Self {
        Self { since: Some(offset), limit: usize::MAX, reverse: false }
    }

    /// No publications, only the channel's current position.
    pub fn top_only() -> Self {
        Self { since: None, limit: 0, reverse: false }
    }
}

/// The answer to a [`HistoryQuery`].
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub publications: Vec<Arc<Publication>>,
    /// The channel's current position: epoch and last offset assigned.
    pub top: Position,
    /// The oldest offset still in history (`top.offset + 1` when history is empty). A recovery
    /// from offset `n` is complete when `n + 1 >= oldest`.
    pub oldest: u64,
}

/// Failures of an engine; a remote engine may be away for a while.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("engine failed: {0}")]
    Failed(String),
}

/// Per-request publish failure inside a batch.
pub type PublishError = EngineError;

/// Where an engine delivers publications, from this node or any other, in offset order per
/// channel. Implemented by the hub. Must not block: it runs on the engine's delivery path.
pub trait FanOut: Send + Sync {
    fn deliver(&self, publication: Arc<Publication>);

    /// A join or leave in a `join_leave` namespace, from this node or any other.
    fn deliver_presence(&self, event: Arc<PresenceEvent>);

    /// Something that happened to a channel because of this node (its first subscriber, its
    /// last one gone, a join or leave it caused): reported on this node only, so a cluster
    /// reports each event once.
    fn report(&self, event: ChannelEvent);

    /// The channel's history was lost and it goes on in a new epoch (a remote engine flushed):
    /// its subscribers must come back, and will be told recovery is impossible.
    fn reset(&self, _channel: &ChannelName) {}
}

/// An engine: positions, history, cross-node fan-out and idempotency.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Called once by the hub it serves, before any other call.
    fn attach(&self, fan_out: Weak<dyn FanOut>);

    /// Publishes a batch; each request gets its own outcome, in order. Each publication reaches
    /// [`FanOut::deliver`] of every node subscribed to its channel.
    async fn publish(&self, batch: Vec<PublishRequest>) -> Vec<Result<Published, PublishError>>;

    /// This node has gained local subscribers on `channels` (the hub calls this when a channel
    /// goes from none to one). Engines count interest, since calls for one channel may race;
    /// a channel whose interest goes from none to some, anywhere, is reported occupied, and
    /// vacated when it goes back to none.
    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError>;

    /// This node has lost its last local subscriber on `channels`.
    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError>;

    /// Reads a channel's history and current position.
    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError>;

    /// Adds `entry` to the channel's presence, or extends its lease if it is there already (no
    /// event then). A new entry is a join: delivered to every node in `join_leave` namespaces.
    /// Entries not refreshed within `lease` leave by themselves.
    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        lease: Duration,
    ) -> Result<(), EngineError>;

    /// Removes a client from the channel's presence (a leave, if it was there).
    async fn presence_leave(&self, channel: &ChannelName, client: &str) -> Result<(), EngineError>;

    /// Extends the leases of entries that are still there; never adds one back. Returns the
    /// indexes (into `entries`) of those that were missing, so their node can join them again.
    async fn presence_refresh(
        &self,
        entries: &[(ChannelName, String)],
        lease: Duration,
    ) -> Result<Vec<usize>, EngineError>;

    /// The channel's present clients, oldest first.
    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError>;

    /// How many clients are present: cheaper than [`Engine::presence`].
    async fn presence_count(&self, channel: &ChannelName) -> Result<usize, EngineError>;

    /// Housekeeping (expiring history and presence leases, forgetting idle channels), called
    /// periodically.
    async fn sweep(&self) {}

    /// Whether the engine can serve now (a remote engine is connected); `/readyz` says so.
    fn is_ready(&self) -> bool {
        true
    }
}
