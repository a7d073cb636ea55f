//! The hub: which local connections listen to which channels, and fan-out to them.
//!
//! Each connection gets a bounded queue ([`Inbox`]). Fan-out puts a shared `Arc<Publication>`
//! into every subscriber's queue: no allocation per subscriber, no waiting. A subscriber whose
//! queue is full is marked lagged and its session disconnects it with a position it can recover
//! from; publishers and other subscribers never wait for it.
//!
//! A channel whose last local subscriber left keeps the engine's interest for the grace period
//! (see [`PresenceTiming`]), so a reconnect or a poll client's next request neither resubscribes
//! on the engine nor reports the channel vacated and occupied again.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::time::Instant;

use crate::channel::ChannelName;
use crate::engine::{Engine, EngineError, FanOut, HistoryPage, HistoryQuery, PublishRequest, Published};
use crate::inbox::{Control, Inbox, InboxSender, Push, inbox};
use crate::local_presence::{LocalPresence, PresenceTiming};
use crate::namespace::Namespaces;
use crate::position::Position;
use crate::presence::{
    ChannelEvent, ChannelEventSink, PresenceEntry, PresenceEvent, PresenceSnapshot, SubscriptionCount,
};
use crate::publication::Publication;

const SHARDS: usize = 64;

/// A channel's counting subscribers hear of a change in its subscriber count at once, unless
/// they heard of one less than this ago; then at the next [`Hub::tick`]. So a channel that
/// thousands join at once costs about one count a second to each of them, not one per join.
const COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The top bit of a subscriber's id: it asked for subscription counts. Kept in the id so that
/// the handle a channel holds per subscriber stays two words (fan-out walks these).
const COUNTS_BIT: u64 = 1 << 63;

/// One connection as the hub knows it; the session holds it and passes it to every call.
#[derive(Debug, Clone)]
pub struct SubscriberHandle {
    id: u64,
    inbox: InboxSender,
}

impl SubscriberHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    fn wants_counts(&self) -> bool {
        self.id & COUNTS_BIT != 0
    }
}

/// The outcome of a subscribe.
#[derive(Debug)]
pub struct Subscribed {
    /// The channel's position when the subscription started: every later publication is
    /// delivered live, every earlier one missed since `since` is in `missed`.
    pub position: Position,
    /// Present when a `since` position was given: whether `missed` is exactly everything after it.
    pub recovered: Option<bool>,
    /// Publications after `since`, oldest first (empty when not recovered).
    pub missed: Vec<Arc<Publication>>,
}

/// Hub failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The local subscribers of one channel.
#[derive(Default)]
struct ChannelSubscribers {
    subscribers: Vec<SubscriberHandle>,
    /// Set when the last subscriber left: the engine's interest is released after the grace.
    idle_since: Option<Instant>,
    /// Set once the engine took this node's interest in the channel. Every subscriber waits for
    /// it before reading the channel's position (a second subscriber must not read it while
    /// the first one's engine subscribe is still under way: it could miss a publication);
    /// should the subscribe fail, the next waiter tries again.
    interest: Arc<tokio::sync::OnceCell<()>>,
    /// How many of the subscribers asked for counts.
    counting: u32,
    /// The count changed since the counting subscribers last heard it, at `counted_at`.
    count_pending: bool,
    counted_at: Option<Instant>,
}

impl ChannelSubscribers {
    fn add(&mut self, channel: &ChannelName, subscriber: &SubscriberHandle) {
        if self.subscribers.iter().any(|existing| existing.id == subscriber.id) {
            return;
        }
        self.subscribers.push(subscriber.clone());
        self.counting += u32::from(subscriber.wants_counts());
        self.count_changed(channel, Instant::now());
    }

    /// Removes the subscriber; returns whether it was there.
    fn remove(&mut self, channel: &ChannelName, subscriber: &SubscriberHandle) -> bool {
        let Some(index) = self.subscribers.iter().position(|existing| existing.id == subscriber.id) else {
            return false;
        };
        self.subscribers.swap_remove(index);
        self.counting -= u32::from(subscriber.wants_counts());
        self.count_changed(channel, Instant::now());
        true
    }

    /// Tells the counting subscribers the new count now, or marks it for the next tick when
    /// they heard one within [`COUNT_INTERVAL`].
    fn count_changed(&mut self, channel: &ChannelName, now: Instant) {
        if self.counting == 0 {
            return;
        }
        if self.counted_at.is_some_and(|at| now.duration_since(at) < COUNT_INTERVAL) {
            self.count_pending = true;
        } else {
            self.send_count(channel, now);
        }
    }

    fn send_count(&mut self, channel: &ChannelName, now: Instant) {
        self.count_pending = false;
        self.counted_at = Some(now);
        let count = Arc::new(SubscriptionCount::new(channel.clone(), self.subscribers.len()));
        for subscriber in self.subscribers.iter().filter(|subscriber| subscriber.wants_counts()) {
            subscriber.inbox.push(Push::Count(count.clone()));
        }
    }
}

type Subscribers = HashMap<ChannelName, ChannelSubscribers>;

/// The local fan-out hub of one node.
pub struct Hub {
    pub(crate) engine: Arc<dyn Engine>,
    namespaces: Arc<Namespaces>,
    shards: Box<[Mutex<Subscribers>]>,
    hasher: RandomState,
    next_subscriber_id: AtomicU64,
    presence: LocalPresence,
    events: OnceLock<Arc<dyn ChannelEventSink>>,
}

impl Hub {
    /// A hub on `engine`, which it attaches itself to.
    pub fn new(engine: Arc<dyn Engine>, namespaces: Arc<Namespaces>, timing: PresenceTiming) -> Arc<Self> {
        let hub = Arc::new(Self {
            engine,
            namespaces,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_subscriber_id: AtomicU64::new(1),
            presence: LocalPresence::new(timing),
            events: OnceLock::new(),
        });
        let fan_out: Weak<dyn FanOut> = Arc::downgrade(&(hub.clone() as Arc<dyn FanOut>));
        hub.engine.attach(fan_out);
        hub
    }

    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// Where this node's [`ChannelEvent`]s go (webhooks, metrics); set once.
    pub fn set_event_sink(&self, sink: Arc<dyn ChannelEventSink>) {
        let _ = self.events.set(sink);
    }

    /// A new connection with a queue of `queue_capacity` pushes.
    pub fn connect(&self, queue_capacity: usize) -> (SubscriberHandle, Inbox) {
        let (sender, inbox) = inbox(queue_capacity);
        let id = self.next_subscriber_id.fetch_add(1, Ordering::Relaxed);
        (SubscriberHandle { id, inbox: sender }, inbox)
    }

    /// Tells one connection what to do (see [`Control`]), whatever its queue holds.
    pub fn control(&self, subscriber: &SubscriberHandle, control: Arc<Control>) {
        subscriber.inbox.push_control(Push::Control(control));
    }

    /// A new connection that also gets [`Push::Count`]: its channels' local subscriber counts,
    /// when they change (at most about once a second per channel, see [`COUNT_INTERVAL`]).
    pub fn connect_counting(&self, queue_capacity: usize) -> (SubscriberHandle, Inbox) {
        let (SubscriberHandle { id, inbox: sender }, inbox) = self.connect(queue_capacity);
        (SubscriberHandle { id: id | COUNTS_BIT, inbox: sender }, inbox)
    }

    fn shard(&self, channel: &ChannelName) -> std::sync::MutexGuard<'_, Subscribers> {
        let shard = &self.shards[self.hasher.hash_one(channel) as usize % SHARDS];
        shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes `subscriber` to `channel`. Live publications start queueing at once; with
    /// `since`, what was missed after it comes back in [`Subscribed::missed`]. Publications may
    /// appear both there and in the queue: a [`crate::PositionTracker`] passes each once.
    pub async fn subscribe(
        &self,
        subscriber: &SubscriberHandle,
        channel: &ChannelName,
        since: Option<&Position>,
    ) -> Result<Subscribed, HubError> {
        let interest = {
            let mut shard = self.shard(channel);
            let local = shard.entry(channel.clone()).or_default();
            local.add(channel, subscriber);
            // A channel in its grace period keeps the engine's interest.
            local.idle_since = None;
            local.interest.clone()
        };
        let taken = interest.get_or_try_init(|| self.engine.subscribe(std::slice::from_ref(channel))).await;
        if let Err(error) = taken {
            let mut shard = self.shard(channel);
            if let Some(local) = shard.get_mut(channel) {
                local.remove(channel, subscriber);
                // Nobody left, and the engine never took the interest: nothing to release.
                if local.subscribers.is_empty() && !local.interest.initialized() {
                    shard.remove(channel);
                }
            }
            return Err(error.into());
        }
        match self.catch_up(channel, since).await {
            Ok(subscribed) => Ok(subscribed),
            Err(error) => {
                self.unsubscribe(subscriber, channel).await;
                Err(error)
            }
        }
    }

    /// What [`Hub::subscribe`] answers, without subscribing: the channel's position and, with
    /// `since`, what was missed after it. For one-off reads such as a short poll.
    pub async fn catch_up(&self, channel: &ChannelName, since: Option<&Position>) -> Result<Subscribed, HubError> {
        let query = since.map_or(HistoryQuery::top_only(), |since| HistoryQuery::after(since.offset));
        let page = self.engine.history(channel, query).await?;
        Ok(match since {
            None => Subscribed { position: page.top, recovered: None, missed: Vec::new() },
            Some(since) => {
                let recovered = is_recoverable(since, &page);
                let missed = if recovered { page.publications } else { Vec::new() };
                Subscribed { position: page.top, recovered: Some(recovered), missed }
            }
        })
    }

    /// Stops delivering `channel` to `subscriber`; returns whether it was subscribed.
    pub async fn unsubscribe(&self, subscriber: &SubscriberHandle, channel: &ChannelName) -> bool {
        let (was_subscribed, last_here) = self.remove(subscriber, channel);
        if last_here {
            self.release_interest(std::slice::from_ref(channel)).await;
        }
        was_subscribed
    }

    /// Stops local delivery of `channels` to `subscriber` at once, without awaiting: for places
    /// that cannot await (a guard's `Drop`). Returns the channels left with no local subscriber,
    /// whose engine interest the caller releases with [`Hub::release_interest`].
    pub fn detach<'a>(
        &self,
        subscriber: &SubscriberHandle,
        channels: impl IntoIterator<Item = &'a ChannelName>,
    ) -> Vec<ChannelName> {
        channels.into_iter().filter(|channel| self.remove(subscriber, channel).1).cloned().collect()
    }

    /// Tells the engine this node no longer has subscribers on `channels` (see [`Hub::detach`]).
    pub async fn release_interest(&self, channels: &[ChannelName]) {
        if !channels.is_empty() {
            // Failing to drop interest only costs the engine some unneeded traffic.
            let _ = self.engine.unsubscribe(channels).await;
        }
    }

    /// Removes the subscriber locally; returns (was subscribed, the engine's interest is to be
    /// released now). With a grace period, the channel lingers instead and [`Hub::tick`]
    /// releases it later.
    fn remove(&self, subscriber: &SubscriberHandle, channel: &ChannelName) -> (bool, bool) {
        let mut shard = self.shard(channel);
        let Some(local) = shard.get_mut(channel) else {
            return (false, false);
        };
        if !local.remove(channel, subscriber) {
            return (false, false);
        }
        if !local.subscribers.is_empty() {
            return (true, false);
        }
        if !local.interest.initialized() {
            // The engine never took the interest (its subscribe failed or is still running for
            // a subscriber that is going too): nothing to release.
            shard.remove(channel);
            return (true, false);
        }
        // Presence channels always wait for the tick, which makes leaves first: a channel's
        // last client leaves before the channel is vacated.
        if self.presence.timing().grace.is_zero() && !self.namespaces.options_for(channel).presence {
            shard.remove(channel);
            (true, true)
        } else {
            local.idle_since = Some(Instant::now());
            (true, false)
        }
    }

    /// Periodic work, about once a second: releases the engine's interest in channels idle for
    /// the grace period, settles presence (leaves past their grace, lease refreshes), and sends
    /// the subscriber counts held back by [`COUNT_INTERVAL`].
    pub async fn tick(&self) {
        // Leaves first: a channel's last client leaves before the channel is vacated.
        self.presence.tick(&*self.engine).await;
        let grace = self.presence.timing().grace;
        let now = Instant::now();
        let mut released = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.retain(|channel, local| {
                let expired = local.idle_since.is_some_and(|since| now.duration_since(since) >= grace);
                if expired {
                    released.push(channel.clone());
                } else if local.count_pending && local.counting > 0 {
                    local.send_count(channel, now);
                }
                !expired
            });
        }
        self.release_interest(&released).await;
    }

    /// `entry.client` joins `channel`'s presence, if its namespace keeps presence: call after
    /// subscribing it. Each successful call is undone by one [`Hub::leave_presence`]. `false`:
    /// the client id is another user's here; join under a fresh one.
    pub async fn join_presence(&self, channel: &ChannelName, entry: PresenceEntry) -> bool {
        if !self.namespaces.options_for(channel).presence {
            return true;
        }
        self.presence.hold(&*self.engine, channel, entry).await
    }

    /// Undoes one [`Hub::join_presence`]. `graceful`: the connection ended, so the client
    /// leaves only if it is not back within the grace period; otherwise (an unsubscribe) it
    /// leaves now. Never waits on the engine; a leave that is due is made by the next
    /// [`Hub::settle_presence`] or [`Hub::tick`].
    pub fn leave_presence(&self, channel: &ChannelName, client: &str, graceful: bool) -> bool {
        self.namespaces.options_for(channel).presence && self.presence.release(channel, client, graceful)
    }

    /// Makes a leave that [`Hub::leave_presence`] said is due.
    pub async fn settle_presence(&self, channel: &ChannelName, client: &str) {
        self.presence.settle(&*self.engine, &(channel.clone(), client.to_string())).await;
    }

    /// Presence entries this node holds, within their grace period included.
    pub fn held_presence_entries(&self) -> usize {
        self.presence.len()
    }

    /// The channel's presence (across nodes); `None` when its namespace keeps none.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Option<PresenceSnapshot>, HubError> {
        if !self.namespaces.options_for(channel).presence {
            return Ok(None);
        }
        Ok(Some(PresenceSnapshot { clients: self.engine.presence(channel).await? }))
    }

    /// How many clients are present; `None` when the namespace keeps no presence.
    pub async fn presence_count(&self, channel: &ChannelName) -> Result<Option<usize>, HubError> {
        if !self.namespaces.options_for(channel).presence {
            return Ok(None);
        }
        Ok(Some(self.engine.presence_count(channel).await?))
    }

    /// Publishes several requests in one engine call; outcomes in request order.
    pub async fn publish_batch(&self, requests: Vec<PublishRequest>) -> Vec<Result<Published, HubError>> {
        let count = requests.len();
        let mut outcomes: Vec<_> =
            self.engine.publish(requests).await.into_iter().map(|outcome| outcome.map_err(HubError::from)).collect();
        outcomes.resize_with(count, || Err(EngineError::Failed("engine returned too few outcomes".into()).into()));
        outcomes
    }

    pub async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, HubError> {
        Ok(self.engine.history(channel, query).await?)
    }

    /// Local subscriber count of one channel.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        self.shard(channel).get(channel).map_or(0, |local| local.subscribers.len())
    }

    /// Channels with local subscribers and their counts, sorted by name.
    pub fn channels(&self) -> Vec<(ChannelName, usize)> {
        let mut channels: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                shard
                    .iter()
                    .filter(|(_, local)| !local.subscribers.is_empty())
                    .map(|(channel, local)| (channel.clone(), local.subscribers.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        channels.sort_by(|a, b| a.0.cmp(&b.0));
        channels
    }

    /// Whether the engine can serve now.
    pub fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }

    /// Runs the engine's housekeeping.
    pub async fn sweep(&self) {
        self.engine.sweep().await;
    }
}

/// A recovery from `since` is exact when the epoch is the same, the client is not ahead,
/// history still holds everything after `since`, and the publications read are exactly the
/// next offsets with no hole (storage reads and retention can race; this does not trust them).
fn is_recoverable(since: &Position, page: &HistoryPage) -> bool {
    let contiguous = page.publications.iter().zip(since.offset + 1..).all(|(publication, expected)| {
        publication.position.offset == expected && publication.position.epoch == since.epoch
    });
    let reaches_top = page.publications.last().map_or(since.offset, |last| last.position.offset) >= page.top.offset;
    since.epoch == page.top.epoch
        && since.offset <= page.top.offset
        && since.offset + 1 >= page.oldest
        && contiguous
        && reaches_top
}

impl Hub {
    /// Queues `push` for every local subscriber of `channel`.
    fn push_to(&self, channel: &ChannelName, push: impl Fn() -> Push) {
        let shard = self.shard(channel);
        let Some(local) = shard.get(channel) else {
            return;
        };
        for subscriber in &local.subscribers {
            subscriber.inbox.push(push());
        }
    }
}

impl FanOut for Hub {
    fn deliver(&self, publication: Arc<Publication>) {
        self.push_to(&publication.channel, || Push::Publication(publication.clone()));
    }

    fn deliver_presence(&self, event: Arc<PresenceEvent>) {
        self.push_to(&event.channel, || Push::Presence(event.clone()));
    }

    fn report(&self, event: ChannelEvent) {
        if let Some(sink) = self.events.get() {
            sink.channel_event(event);
        }
    }

    /// Disconnects the channel's subscribers as lagging (4001, with their positions): they
    /// resubscribe from their old epoch and hear `recovered: false`.
    fn reset(&self, channel: &ChannelName) {
        let shard = self.shard(channel);
        if let Some(local) = shard.get(channel) {
            for subscriber in &local.subscribers {
                subscriber.inbox.mark_lagged();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryEngine;
    use crate::namespace::NamespaceOptions;
    use crate::tracker::PositionTracker;
    use bytes::Bytes;

    fn hub(options: NamespaceOptions) -> Arc<Hub> {
        let namespaces = Arc::new(Namespaces::new(options, HashMap::new()));
        Hub::new(Arc::new(MemoryEngine::new(namespaces.clone())), namespaces, no_grace())
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    fn no_grace() -> PresenceTiming {
        PresenceTiming { grace: std::time::Duration::ZERO, ..Default::default() }
    }

    async fn publish(hub: &Hub, name: &str, data: &str) -> Published {
        let request =
            PublishRequest { channel: channel(name), data: Bytes::from(data.to_string()), idempotency_key: None };
        hub.publish_batch(vec![request]).await.remove(0).unwrap()
    }

    fn drain(inbox: &mut Inbox) -> Vec<(String, u64)> {
        let mut seen = Vec::new();
        while let Some(push) = inbox.try_recv() {
            if let Push::Publication(p) = push {
                seen.push((p.channel.to_string(), p.position.offset));
            }
        }
        seen
    }

    #[tokio::test]
    async fn fans_out_in_order_to_every_subscriber_of_the_channel() {
        let hub = hub(NamespaceOptions::default());
        let (alice, mut alice_inbox) = hub.connect(16);
        let (bob, mut bob_inbox) = hub.connect(16);
        hub.subscribe(&alice, &channel("a"), None).await.unwrap();
        hub.subscribe(&bob, &channel("a"), None).await.unwrap();
        hub.subscribe(&bob, &channel("b"), None).await.unwrap();
        publish(&hub, "a", "1").await;
        publish(&hub, "b", "1").await;
        publish(&hub, "a", "2").await;
        assert_eq!(drain(&mut alice_inbox), [("a".into(), 1), ("a".into(), 2)]);
        assert_eq!(drain(&mut bob_inbox), [("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]);
        assert_eq!(hub.channels(), [(channel("a"), 2), (channel("b"), 1)]);
    }

    #[tokio::test]
    async fn unsubscribe_stops_delivery_and_forgets_empty_channels() {
        let hub = hub(NamespaceOptions::default());
        let (alice, mut inbox) = hub.connect(16);
        hub.subscribe(&alice, &channel("a"), None).await.unwrap();
        assert!(hub.unsubscribe(&alice, &channel("a")).await);
        assert!(!hub.unsubscribe(&alice, &channel("a")).await);
        publish(&hub, "a", "1").await;
        assert!(drain(&mut inbox).is_empty());
        assert!(hub.channels().is_empty());
    }

    /// The memory engine, recording the interest the hub declares and able to publish in the
    /// middle of a history read (to force a publication into both history and the live queue).
    struct RecordingEngine {
        inner: MemoryEngine,
        interest: Mutex<HashMap<ChannelName, i64>>,
        publish_during_history: Mutex<Option<PublishRequest>>,
        subscribe_delay: Mutex<Option<std::time::Duration>>,
    }

    #[async_trait::async_trait]
    impl Engine for RecordingEngine {
        fn attach(&self, fan_out: Weak<dyn FanOut>) {
            self.inner.attach(fan_out);
        }
        async fn publish(&self, batch: Vec<PublishRequest>) -> Vec<Result<Published, EngineError>> {
            self.inner.publish(batch).await
        }
        async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
            let delay = *self.subscribe_delay.lock().unwrap();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            for channel in channels {
                *self.interest.lock().unwrap().entry(channel.clone()).or_default() += 1;
            }
            self.inner.subscribe(channels).await
        }
        async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
            for channel in channels {
                *self.interest.lock().unwrap().entry(channel.clone()).or_default() -= 1;
            }
            self.inner.unsubscribe(channels).await
        }
        async fn presence_join(
            &self,
            channel: &ChannelName,
            entry: PresenceEntry,
            lease: std::time::Duration,
        ) -> Result<(), EngineError> {
            self.inner.presence_join(channel, entry, lease).await
        }
        async fn presence_leave(&self, channel: &ChannelName, client: &str) -> Result<(), EngineError> {
            self.inner.presence_leave(channel, client).await
        }
        async fn presence_refresh(
            &self,
            entries: &[(ChannelName, String)],
            lease: std::time::Duration,
        ) -> Result<Vec<usize>, EngineError> {
            self.inner.presence_refresh(entries, lease).await
        }
        async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
            self.inner.presence(channel).await
        }
        async fn presence_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
            self.inner.presence_count(channel).await
        }
        async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
            let extra = self.publish_during_history.lock().unwrap().take();
            if let Some(request) = extra {
                self.inner.publish(vec![request]).await;
            }
            self.inner.history(channel, query).await
        }
    }

    fn recording_hub() -> (Arc<Hub>, Arc<RecordingEngine>) {
        let namespaces = Arc::new(Namespaces::default());
        let engine = Arc::new(RecordingEngine {
            inner: MemoryEngine::new(namespaces.clone()),
            interest: Mutex::new(HashMap::new()),
            publish_during_history: Mutex::new(None),
            subscribe_delay: Mutex::new(None),
        });
        (Hub::new(engine.clone(), namespaces, no_grace()), engine)
    }

    #[tokio::test]
    async fn subscribing_twice_delivers_once_and_declares_interest_once() {
        let (hub, engine) = recording_hub();
        let (alice, mut inbox) = hub.connect(16);
        let (bob, _bob_inbox) = hub.connect(16);
        hub.subscribe(&alice, &channel("a"), None).await.unwrap();
        hub.subscribe(&alice, &channel("a"), None).await.unwrap();
        hub.subscribe(&bob, &channel("a"), None).await.unwrap();
        publish(&hub, "a", "1").await;
        assert_eq!(drain(&mut inbox).len(), 1);
        assert_eq!(hub.subscriber_count(&channel("a")), 2);
        assert_eq!(engine.interest.lock().unwrap()[&channel("a")], 1);
        hub.unsubscribe(&alice, &channel("a")).await;
        assert_eq!(engine.interest.lock().unwrap()[&channel("a")], 1, "bob is still here");
        let emptied = hub.detach(&bob, [&channel("a")]);
        assert_eq!(emptied, [channel("a")]);
        hub.release_interest(&emptied).await;
        assert_eq!(engine.interest.lock().unwrap()[&channel("a")], 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_subscriber_waits_for_the_engine_to_take_the_interest() {
        let (hub, engine) = recording_hub();
        *engine.subscribe_delay.lock().unwrap() = Some(std::time::Duration::from_millis(50));
        let (alice, _a) = hub.connect(16);
        let (bob, _b) = hub.connect(16);
        let first = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.subscribe(&alice, &channel("a"), None).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        hub.subscribe(&bob, &channel("a"), None).await.unwrap();
        assert_eq!(
            engine.interest.lock().unwrap().get(&channel("a")).copied(),
            Some(1),
            "bob's subscribe returned only once the engine had the interest"
        );
        first.await.unwrap().unwrap();
        assert_eq!(engine.interest.lock().unwrap()[&channel("a")], 1, "taken once");
    }

    #[tokio::test]
    async fn a_publication_in_both_history_and_the_live_queue_is_delivered_once() {
        let (hub, engine) = recording_hub();
        let since = publish(&hub, "a", "1").await.position;
        publish(&hub, "a", "2").await;
        // Lands after the subscriber is registered and before history is read: in both.
        *engine.publish_during_history.lock().unwrap() =
            Some(PublishRequest { channel: channel("a"), data: Bytes::from_static(b"3"), idempotency_key: None });
        let (alice, mut inbox) = hub.connect(64);
        let subscribed = hub.subscribe(&alice, &channel("a"), Some(&since)).await.unwrap();
        publish(&hub, "a", "4").await;
        let missed: Vec<u64> = subscribed.missed.iter().map(|p| p.position.offset).collect();
        assert_eq!(missed, [2, 3], "history holds the publication made during the read");
        let mut tracker = PositionTracker::default();
        tracker.track(channel("a"), since);
        let mut delivered = Vec::new();
        let queued = std::iter::from_fn(|| match inbox.try_recv() {
            Some(Push::Publication(publication)) => Some(publication),
            _ => None,
        });
        let everything: Vec<Arc<Publication>> = subscribed.missed.iter().cloned().chain(queued).collect();
        assert_eq!(everything.len(), 4, "offset 3 arrives twice: from history and live");
        for publication in everything {
            if tracker.advance(&publication) {
                delivered.push(publication.position.offset);
            }
        }
        assert_eq!(delivered, [2, 3, 4]);
    }

    #[tokio::test]
    async fn recovery_returns_exactly_what_was_missed() {
        let hub = hub(NamespaceOptions::default());
        let first = publish(&hub, "a", "1").await.position;
        publish(&hub, "a", "2").await;
        publish(&hub, "a", "3").await;
        let (alice, _inbox) = hub.connect(16);
        let subscribed = hub.subscribe(&alice, &channel("a"), Some(&first)).await.unwrap();
        assert_eq!(subscribed.recovered, Some(true));
        let offsets: Vec<u64> = subscribed.missed.iter().map(|p| p.position.offset).collect();
        assert_eq!(offsets, [2, 3]);
        assert_eq!(subscribed.position.offset, 3);
    }

    #[tokio::test]
    async fn recovery_fails_plainly_on_a_lost_epoch_or_a_gap() {
        let hub = hub(NamespaceOptions { history_size: 2, ..Default::default() });
        let first = publish(&hub, "a", "1").await.position;
        let (alice, _inbox) = hub.connect(16);
        let stale = Position { epoch: crate::Epoch::new("gone"), offset: 1 };
        let subscribed = hub.subscribe(&alice, &channel("a"), Some(&stale)).await.unwrap();
        assert_eq!((subscribed.recovered, subscribed.missed.len()), (Some(false), 0));

        for data in ["2", "3", "4"] {
            publish(&hub, "a", data).await;
        }
        let subscribed = hub.subscribe(&alice, &channel("a"), Some(&first)).await.unwrap();
        assert_eq!(subscribed.recovered, Some(false), "offset 2 fell out of a history of 2");
        let ahead = Position { epoch: first.epoch.clone(), offset: 99 };
        let subscribed = hub.subscribe(&alice, &channel("a"), Some(&ahead)).await.unwrap();
        assert_eq!(subscribed.recovered, Some(false));
        let at_top = Position { epoch: first.epoch.clone(), offset: 4 };
        let subscribed = hub.subscribe(&alice, &channel("a"), Some(&at_top)).await.unwrap();
        assert_eq!((subscribed.recovered, subscribed.missed.len()), (Some(true), 0));
    }

    #[test]
    fn a_page_with_a_hole_or_short_of_the_top_is_not_a_recovery() {
        let epoch = crate::Epoch::new("e");
        let at = |offset| {
            Arc::new(Publication::new(channel("a"), Position { epoch: epoch.clone(), offset }, Bytes::new(), 0))
        };
        let page = |offsets: &[u64], top| HistoryPage {
            publications: offsets.iter().map(|offset| at(*offset)).collect(),
            top: Position { epoch: epoch.clone(), offset: top },
            oldest: 1,
        };
        let since = Position { epoch: epoch.clone(), offset: 2 };
        assert!(is_recoverable(&since, &page(&[3, 4, 5], 5)));
        assert!(!is_recoverable(&since, &page(&[3, 5], 5)), "a hole");
        assert!(!is_recoverable(&since, &page(&[4, 5], 5)), "the next one is missing");
        assert!(!is_recoverable(&since, &page(&[3, 4], 5)), "short of the top");
        assert!(is_recoverable(&since, &page(&[3, 4, 5, 6], 5)), "newer than the top read is fine");
        assert!(is_recoverable(&Position { epoch: epoch.clone(), offset: 5 }, &page(&[], 5)));
    }

    #[tokio::test]
    async fn a_full_queue_marks_only_that_subscriber_lagged() {
        let hub = hub(NamespaceOptions::default());
        let (slow, slow_inbox) = hub.connect(2);
        let (fast, mut fast_inbox) = hub.connect(64);
        hub.subscribe(&slow, &channel("a"), None).await.unwrap();
        hub.subscribe(&fast, &channel("a"), None).await.unwrap();
        for i in 0..10 {
            publish(&hub, "a", &i.to_string()).await;
        }
        assert!(slow_inbox.is_lagged());
        assert_eq!(drain(&mut fast_inbox).len(), 10);
    }

    #[tokio::test]
    async fn tracker_merges_recovery_and_live_without_gap_or_duplicate() {
        let hub = hub(NamespaceOptions::default());
        let since = publish(&hub, "a", "1").await.position;
        publish(&hub, "a", "2").await;
        let (alice, mut inbox) = hub.connect(64);
        let subscribed = hub.subscribe(&alice, &channel("a"), Some(&since)).await.unwrap();
        publish(&hub, "a", "3").await;
        let mut tracker = PositionTracker::default();
        tracker.track(channel("a"), since);
        let mut delivered = Vec::new();
        for publication in &subscribed.missed {
            if tracker.advance(publication) {
                delivered.push(publication.position.offset);
            }
        }
        while let Some(Push::Publication(publication)) = inbox.try_recv() {
            if tracker.advance(&publication) {
                delivered.push(publication.position.offset);
            }
        }
        assert_eq!(delivered, [2, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishers_keep_contiguous_offsets_in_delivery_order() {
        let hub = hub(NamespaceOptions::default());
        let (alice, mut inbox) = hub.connect(10_000);
        hub.subscribe(&alice, &channel("a"), None).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let hub = hub.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    publish(&hub, "a", "x").await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let offsets: Vec<u64> = drain(&mut inbox).into_iter().map(|(_, offset)| offset).collect();
        assert_eq!(offsets, (1..=4000).collect::<Vec<_>>());
    }

    fn counts(inbox: &mut Inbox) -> Vec<(String, usize)> {
        let mut seen = Vec::new();
        while let Some(push) = inbox.try_recv() {
            if let Push::Count(count) = push {
                seen.push((count.channel.to_string(), count.count));
            }
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn counting_subscribers_hear_count_changes_at_most_about_once_a_second() {
        let hub = hub(NamespaceOptions::default());
        let (counter, mut counter_inbox) = hub.connect_counting(64);
        let (plain, mut plain_inbox) = hub.connect(64);
        hub.subscribe(&counter, &channel("a"), None).await.unwrap();
        assert_eq!(counts(&mut counter_inbox), [("a".into(), 1)], "its own subscription is counted at once");
        hub.subscribe(&plain, &channel("a"), None).await.unwrap();
        let (third, _third_inbox) = hub.connect(64);
        hub.subscribe(&third, &channel("a"), None).await.unwrap();
        assert!(counts(&mut counter_inbox).is_empty(), "held back within the interval");
        hub.tick().await;
        assert_eq!(counts(&mut counter_inbox), [("a".into(), 3)], "the tick sends the latest count, once");
        hub.tick().await;
        assert!(counts(&mut counter_inbox).is_empty(), "nothing changed");

        tokio::time::advance(COUNT_INTERVAL).await;
        hub.unsubscribe(&third, &channel("a")).await;
        assert_eq!(counts(&mut counter_inbox), [("a".into(), 2)], "a quiet channel's change is sent at once");
        assert!(counts(&mut plain_inbox).is_empty(), "only counting subscribers get counts");
    }
}
