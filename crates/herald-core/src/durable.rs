//! Durable history: the [`Storage`] trait that durable namespaces keep their history in, and
//! [`DurableEngine`], which sends each publish and history read to storage or to the in-memory
//! engine according to the channel's namespace.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;

use crate::channel::ChannelName;
use crate::engine::{Engine, EngineError, FanOut, HistoryPage, HistoryQuery, PublishError, PublishRequest, Published};
use crate::memory::MemoryEngine;
use crate::namespace::Namespaces;
use crate::presence::PresenceEntry;

/// Durable history with positions. Implementations keep each channel's epoch and offsets across
/// restarts.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Appends a batch. A request's outcome is returned only once it is committed. After the
    /// commit, each new publication is handed to `fan_out`, in offset order per channel (an
    /// idempotent repeat returns the original position and is not delivered again).
    async fn append(
        &self,
        batch: Vec<PublishRequest>,
        fan_out: Option<Arc<dyn FanOut>>,
    ) -> Vec<Result<Published, PublishError>>;

    /// Reads history and the channel's position (a channel never seen gets its epoch now, for
    /// good).
    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError>;

    /// Deletes what the namespaces' retention (size and age) no longer keeps, and expired
    /// idempotency keys, without holding publishers up for long.
    async fn sweep(&self);
}

/// The engine of a single node with durable namespaces: `durable = true` channels live in
/// [`Storage`], the others in the [`MemoryEngine`]; local interest and presence are kept by the
/// latter.
pub struct DurableEngine {
    memory: MemoryEngine,
    storage: Arc<dyn Storage>,
    namespaces: Arc<Namespaces>,
    fan_out: OnceLock<Weak<dyn FanOut>>,
}

impl DurableEngine {
    pub fn new(namespaces: Arc<Namespaces>, storage: Arc<dyn Storage>) -> Self {
        Self { memory: MemoryEngine::new(namespaces.clone()), storage, namespaces, fan_out: OnceLock::new() }
    }

    fn is_durable(&self, channel: &ChannelName) -> bool {
        self.namespaces.options_for(channel).durable
    }
}

#[async_trait]
impl Engine for DurableEngine {
    fn attach(&self, fan_out: Weak<dyn FanOut>) {
        self.memory.attach(fan_out.clone());
        let _ = self.fan_out.set(fan_out);
    }

    async fn publish(&self, batch: Vec<PublishRequest>) -> Vec<Result<Published, PublishError>> {
        let count = batch.len();
        let (mut durable, mut volatile) = (Vec::new(), Vec::new());
        for (index, request) in batch.into_iter().enumerate() {
            if self.is_durable(&request.channel) {
                durable.push((index, request));
            } else {
                volatile.push((index, request));
            }
        }
        let mut outcomes: Vec<Option<Result<Published, PublishError>>> = (0..count).map(|_| None).collect();
        if !durable.is_empty() {
            let (indexes, requests): (Vec<usize>, Vec<PublishRequest>) = durable.into_iter().unzip();
            let fan_out = self.fan_out.get().and_then(Weak::upgrade);
            for (index, outcome) in indexes.into_iter().zip(self.storage.append(requests, fan_out).await) {
                outcomes[index] = Some(outcome);
            }
        }
        if !volatile.is_empty() {
            let (indexes, requests): (Vec<usize>, Vec<PublishRequest>) = volatile.into_iter().unzip();
            for (index, outcome) in indexes.into_iter().zip(self.memory.publish(requests).await) {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(EngineError::Failed("no outcome for a publish".into()))))
            .collect()
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        self.memory.subscribe(channels).await
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        self.memory.unsubscribe(channels).await
    }

    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        lease: Duration,
    ) -> Result<(), EngineError> {
        self.memory.presence_join(channel, entry, lease).await
    }

    async fn presence_leave(&self, channel: &ChannelName, client: &str) -> Result<(), EngineError> {
        self.memory.presence_leave(channel, client).await
    }

    async fn presence_refresh(
        &self,
        entries: &[(ChannelName, String)],
        lease: Duration,
    ) -> Result<Vec<usize>, EngineError> {
        self.memory.presence_refresh(entries, lease).await
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        self.memory.presence(channel).await
    }

    async fn presence_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        self.memory.presence_count(channel).await
    }

    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        if self.is_durable(channel) {
            self.storage.history(channel, query).await
        } else {
            self.memory.history(channel, query).await
        }
    }

    async fn sweep(&self) {
        self.memory.sweep().await;
        self.storage.sweep().await;
    }
}
