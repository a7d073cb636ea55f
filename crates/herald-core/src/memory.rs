//! The in-memory engine: one node, history in a ring per channel (size and TTL from the
//! namespace), positions assigned under the channel's lock so fan-out follows offset order.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::channel::ChannelName;
use crate::clock::unix_millis;
use crate::engine::{Engine, EngineError, FanOut, HistoryPage, HistoryQuery, PublishError, PublishRequest, Published};
use crate::namespace::{NamespaceOptions, Namespaces};
use crate::position::{Epoch, Position};
use crate::presence::{ChannelEvent, PresenceChange, PresenceEntry, PresenceEvent};
use crate::publication::Publication;

const SHARDS: usize = 64;

/// The single-node engine. History is lost on restart, so every channel starts a new epoch.
pub struct MemoryEngine {
    namespaces: Arc<Namespaces>,
    shards: Box<[Mutex<HashMap<ChannelName, ChannelStream>>]>,
    hasher: RandomState,
    fan_out: OnceLock<Weak<dyn FanOut>>,
}

/// One channel's stream: its epoch, last offset, recent history and idempotency keys.
struct ChannelStream {
    epoch: Epoch,
    top: u64,
    history: VecDeque<(Instant, Arc<Publication>)>,
    idempotency: IdempotencyKeys,
    /// Local subscribers' interest; a channel with interest is never forgotten.
    interest: usize,
    last_used: Instant,
    /// The last publication's time: times never go backwards within a channel, so ordering
    /// by time (history merges, webhook lanes) keeps offset order when the clock steps back.
    last_time_ms: u64,
    /// Present clients by client id, each with its lease's end and its join number.
    presence: HashMap<String, PresentClient>,
    joins: u64,
}

struct PresentClient {
    entry: PresenceEntry,
    expires: Instant,
    joined: u64,
}

/// Idempotency keys in arrival order, so expired ones leave from the front.
#[derive(Default)]
struct IdempotencyKeys {
    offsets: HashMap<String, u64>,
    arrival: VecDeque<(Instant, String)>,
}

impl IdempotencyKeys {
    fn expire(&mut self, now: Instant, window: std::time::Duration) {
        while let Some((seen, _)) = self.arrival.front() {
            if now.duration_since(*seen) < window {
                break;
            }
            let (_, key) = self.arrival.pop_front().expect("front exists");
            self.offsets.remove(&key);
        }
    }
}

impl ChannelStream {
    fn new(now: Instant) -> Self {
        Self {
            epoch: Epoch::random(),
            top: 0,
            history: VecDeque::new(),
            idempotency: IdempotencyKeys::default(),
            interest: 0,
            last_used: now,
            last_time_ms: 0,
            presence: HashMap::new(),
            joins: 0,
        }
    }

    fn top(&self) -> Position {
        Position { epoch: self.epoch.clone(), offset: self.top }
    }

    fn oldest(&self) -> u64 {
        self.history.front().map_or(self.top + 1, |(_, publication)| publication.position.offset)
    }

    fn expire(&mut self, now: Instant, options: &NamespaceOptions) {
        while self.history.len() > options.history_size {
            self.history.pop_front();
        }
        while let Some((at, _)) = self.history.front() {
            if now.duration_since(*at) < options.history_ttl {
                break;
            }
            self.history.pop_front();
        }
        self.idempotency.expire(now, options.idempotency_window);
    }

    /// Forgettable: nobody listens, nothing is kept, and it has been idle for the TTL.
    fn is_idle(&self, now: Instant, options: &NamespaceOptions) -> bool {
        self.interest == 0
            && self.presence.is_empty()
            && self.history.is_empty()
            && self.idempotency.arrival.is_empty()
            && now.duration_since(self.last_used) >= options.history_ttl
    }
}

impl MemoryEngine {
    pub fn new(namespaces: Arc<Namespaces>) -> Self {
        Self {
            namespaces,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            fan_out: OnceLock::new(),
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, ChannelStream>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Runs `f` on the channel's stream (created if new) under its shard's lock.
    fn with_stream<R>(&self, channel: &ChannelName, f: impl FnOnce(&mut ChannelStream, Instant) -> R) -> R {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let stream = shard.entry(channel.clone()).or_insert_with(|| ChannelStream::new(now));
        stream.last_used = now;
        f(stream, now)
    }

    fn publish_one(&self, request: PublishRequest, fan_out: Option<&Arc<dyn FanOut>>) -> Published {
        let options = self.namespaces.options_for(&request.channel);
        self.with_stream(&request.channel, |stream, now| {
            stream.expire(now, options);
            if let Some(key) = &request.idempotency_key
                && let Some(&offset) = stream.idempotency.offsets.get(key)
            {
                return Published {
                    channel: request.channel.clone(),
                    position: Position { epoch: stream.epoch.clone(), offset },
                    time_ms: unix_millis(),
                    duplicate: true,
                };
            }
            stream.top += 1;
            let position = stream.top();
            let time_ms = unix_millis().max(stream.last_time_ms);
            stream.last_time_ms = time_ms;
            let publication =
                Arc::new(Publication::new(request.channel.clone(), position.clone(), request.data, time_ms));
            if options.history_size > 0 {
                stream.history.push_back((now, publication.clone()));
                stream.expire(now, options);
            }
            if let Some(key) = request.idempotency_key {
                stream.idempotency.offsets.insert(key.clone(), position.offset);
                stream.idempotency.arrival.push_back((now, key));
            }
            // Delivered under the channel's lock, so every node sees offset order.
            if let Some(fan_out) = fan_out {
                fan_out.deliver(publication);
            }
            Published { channel: request.channel.clone(), position, time_ms, duplicate: false }
        })
    }
}

impl MemoryEngine {
    fn fan_out(&self) -> Option<Arc<dyn FanOut>> {
        self.fan_out.get().and_then(Weak::upgrade)
    }

    /// Changes interest by `delta` on each channel, reporting a channel occupied or vacated as
    /// its interest leaves or reaches zero (under its lock, so the reports alternate).
    fn change_interest(&self, channels: &[ChannelName], delta: isize) {
        let fan_out = self.fan_out();
        for channel in channels {
            self.with_stream(channel, |stream, _| {
                let before = stream.interest;
                stream.interest = before.saturating_add_signed(delta);
                let event = match (before, stream.interest) {
                    (0, 1..) => ChannelEvent::Occupied(channel.clone()),
                    (1.., 0) => ChannelEvent::Vacated(channel.clone()),
                    _ => return,
                };
                if let Some(fan_out) = &fan_out {
                    fan_out.report(event);
                }
            });
        }
    }

    /// Tells every subscriber (and the reports) that `entry` joined or left `channel`, when its
    /// namespace wants to hear it.
    fn announce(
        &self,
        fan_out: Option<&Arc<dyn FanOut>>,
        channel: &ChannelName,
        change: PresenceChange,
        entry: PresenceEntry,
    ) {
        if !self.namespaces.options_for(channel).join_leave {
            return;
        }
        let Some(fan_out) = fan_out else { return };
        let event = Arc::new(PresenceEvent::new(channel.clone(), change, entry));
        fan_out.deliver_presence(event.clone());
        fan_out.report(ChannelEvent::Presence(event));
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn attach(&self, fan_out: Weak<dyn FanOut>) {
        let _ = self.fan_out.set(fan_out);
    }

    async fn publish(&self, batch: Vec<PublishRequest>) -> Vec<Result<Published, PublishError>> {
        let fan_out = self.fan_out();
        batch.into_iter().map(|request| Ok(self.publish_one(request, fan_out.as_ref()))).collect()
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        self.change_interest(channels, 1);
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        self.change_interest(channels, -1);
        Ok(())
    }

    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        lease: Duration,
    ) -> Result<(), EngineError> {
        let fan_out = self.fan_out();
        self.with_stream(channel, |stream, now| {
            if let Some(present) = stream.presence.get_mut(&entry.client) {
                present.expires = now + lease;
                return;
            }
            stream.joins += 1;
            let present = PresentClient { entry: entry.clone(), expires: now + lease, joined: stream.joins };
            stream.presence.insert(entry.client.clone(), present);
            self.announce(fan_out.as_ref(), channel, PresenceChange::Join, entry);
        });
        Ok(())
    }

    async fn presence_leave(&self, channel: &ChannelName, client: &str) -> Result<(), EngineError> {
        let fan_out = self.fan_out();
        self.with_stream(channel, |stream, _| {
            if let Some(present) = stream.presence.remove(client) {
                self.announce(fan_out.as_ref(), channel, PresenceChange::Leave, present.entry);
            }
        });
        Ok(())
    }

    async fn presence_refresh(
        &self,
        entries: &[(ChannelName, String)],
        lease: Duration,
    ) -> Result<Vec<usize>, EngineError> {
        let mut missing = Vec::new();
        for (index, (channel, client)) in entries.iter().enumerate() {
            let found = self.with_stream(channel, |stream, now| match stream.presence.get_mut(client) {
                Some(present) => {
                    present.expires = now + lease;
                    true
                }
                None => false,
            });
            if !found {
                missing.push(index);
            }
        }
        Ok(missing)
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        Ok(self.with_stream(channel, |stream, _| {
            let mut present: Vec<&PresentClient> = stream.presence.values().collect();
            present.sort_unstable_by_key(|present| present.joined);
            present.into_iter().map(|present| present.entry.clone()).collect()
        }))
    }

    async fn presence_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        Ok(self.with_stream(channel, |stream, _| stream.presence.len()))
    }

    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        let options = self.namespaces.options_for(channel);
        Ok(self.with_stream(channel, |stream, now| {
            stream.expire(now, options);
            let kept = stream.history.iter().map(|(_, publication)| publication);
            let publications: Vec<_> = if query.reverse {
                let before = query.since.unwrap_or(u64::MAX);
                kept.rev().filter(|p| p.position.offset < before).take(query.limit).cloned().collect()
            } else {
                let after = query.since.unwrap_or(0);
                kept.filter(|p| p.position.offset > after).take(query.limit).cloned().collect()
            };
            HistoryPage { publications, top: stream.top(), oldest: stream.oldest() }
        }))
    }

    async fn sweep(&self) {
        let now = Instant::now();
        let fan_out = self.fan_out();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.retain(|channel, stream| {
                let options = self.namespaces.options_for(channel);
                stream.expire(now, options);
                // Entries whose node stopped refreshing them (it crashed, or lost track) leave.
                let expired: Vec<String> = stream
                    .presence
                    .iter()
                    .filter(|(_, present)| present.expires <= now)
                    .map(|(client, _)| client.clone())
                    .collect();
                for client in expired {
                    if let Some(present) = stream.presence.remove(&client) {
                        self.announce(fan_out.as_ref(), channel, PresenceChange::Leave, present.entry);
                    }
                }
                !stream.is_idle(now, options)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use bytes::Bytes;

    fn engine(options: NamespaceOptions) -> MemoryEngine {
        MemoryEngine::new(Arc::new(Namespaces::new(options, HashMap::new())))
    }

    fn request(channel: &str, data: &'static str, key: Option<&str>) -> PublishRequest {
        PublishRequest {
            channel: ChannelName::new(channel).unwrap(),
            data: Bytes::from_static(data.as_bytes()),
            idempotency_key: key.map(str::to_string),
        }
    }

    async fn publish(engine: &MemoryEngine, channel: &str, data: &'static str) -> Published {
        engine.publish(vec![request(channel, data, None)]).await.remove(0).unwrap()
    }

    #[tokio::test]
    async fn offsets_start_at_one_and_grow_by_one_per_channel() {
        let engine = engine(NamespaceOptions::default());
        assert_eq!(publish(&engine, "a", "1").await.position.offset, 1);
        assert_eq!(publish(&engine, "a", "2").await.position.offset, 2);
        assert_eq!(publish(&engine, "b", "1").await.position.offset, 1);
        let a = publish(&engine, "a", "3").await.position;
        let b = publish(&engine, "b", "2").await.position;
        assert_eq!(a.offset, 3);
        assert_ne!(a.epoch, b.epoch, "each channel has its own epoch");
    }

    #[tokio::test]
    async fn history_keeps_the_newest_up_to_the_size() {
        let engine = engine(NamespaceOptions { history_size: 3, ..Default::default() });
        for data in ["1", "2", "3", "4", "5"] {
            publish(&engine, "a", data).await;
        }
        let channel = ChannelName::new("a").unwrap();
        let page = engine.history(&channel, HistoryQuery::after(0)).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.position.offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!((page.top.offset, page.oldest), (5, 3));

        let reverse = HistoryQuery { since: Some(5), limit: 1, reverse: true };
        let page = engine.history(&channel, reverse).await.unwrap();
        assert_eq!(page.publications[0].position.offset, 4);
        let forward = HistoryQuery { since: Some(3), limit: 1, reverse: false };
        assert_eq!(engine.history(&channel, forward).await.unwrap().publications[0].position.offset, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn history_expires_after_the_ttl_and_idle_channels_are_forgotten() {
        let engine = engine(NamespaceOptions { history_ttl: Duration::from_secs(10), ..Default::default() });
        let first = publish(&engine, "a", "1").await.position;
        tokio::time::advance(Duration::from_secs(6)).await;
        publish(&engine, "a", "2").await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let channel = ChannelName::new("a").unwrap();
        let page = engine.history(&channel, HistoryQuery::after(0)).await.unwrap();
        assert_eq!(page.publications.len(), 1);
        assert_eq!(page.oldest, 2);

        tokio::time::advance(Duration::from_secs(11)).await;
        engine.sweep().await;
        let page = engine.history(&channel, HistoryQuery::top_only()).await.unwrap();
        assert_eq!(page.top.offset, 0, "an idle channel is forgotten");
        assert_ne!(page.top.epoch, first.epoch, "and comes back with a new epoch");
    }

    #[tokio::test(start_paused = true)]
    async fn channels_with_interest_are_kept() {
        let engine = engine(NamespaceOptions { history_ttl: Duration::from_secs(1), ..Default::default() });
        let channel = ChannelName::new("a").unwrap();
        engine.subscribe(std::slice::from_ref(&channel)).await.unwrap();
        let first = publish(&engine, "a", "1").await.position;
        tokio::time::advance(Duration::from_secs(5)).await;
        engine.sweep().await;
        let page = engine.history(&channel, HistoryQuery::top_only()).await.unwrap();
        assert_eq!(page.top, first);
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_key_returns_the_original_offset_within_the_window() {
        let engine = engine(NamespaceOptions { idempotency_window: Duration::from_secs(60), ..Default::default() });
        let first = engine.publish(vec![request("a", "1", Some("k"))]).await.remove(0).unwrap();
        let again = engine.publish(vec![request("a", "1", Some("k"))]).await.remove(0).unwrap();
        assert_eq!((again.position.clone(), again.duplicate), (first.position.clone(), true));
        tokio::time::advance(Duration::from_secs(61)).await;
        let later = engine.publish(vec![request("a", "1", Some("k"))]).await.remove(0).unwrap();
        assert_eq!((later.position.offset, later.duplicate), (2, false));
    }
}
