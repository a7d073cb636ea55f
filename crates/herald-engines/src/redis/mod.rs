//! The Redis engine: several Herald nodes on one Redis (or several, as shards) behave as one
//! server.
//!
//! - **Positions and history**: per channel, a hash (`epoch`, `top`, last time) and a Stream whose
//!   entry ids are `0-<offset>`; a Lua script assigns the next offset, appends, stores the
//!   idempotency key and `PUBLISH`es, atomically, so offsets are contiguous and publications go
//!   out in offset order.
//! - **Fan-out**: one Pub/Sub connection per shard, subscribed to the channels this node has
//!   subscribers on. Its task delivers each channel in offset order: Pub/Sub is at most once,
//!   so a gap (or a reconnect) is closed from history before anything newer is delivered.
//!   Subscribing and unsubscribing are requests to the shard's sink task, the one owner of the
//!   connection's sink (a bounded queue, each answered through a oneshot): no lock is held
//!   across a round trip to Redis. Asked about a channel, that task makes the subscription
//!   match the channel's interest as it is then, so an unsubscribe never overtakes the
//!   subscribe it undoes, nor a subscribe the unsubscribe before it.
//! - **Presence**: a hash of entries and a sorted set of leases per channel; joins, leaves and
//!   expiries are scripts that also publish the event on the channel's Pub/Sub channel.
//! - **Channel lifecycle**: a sorted set of the nodes interested in a channel, with leases.
//! - Channels map to shards by jump consistent hashing of their name.
//!
//! When Redis is away, calls fail with [`EngineError::Unavailable`] (publishes are refused,
//! never acknowledged and lost), `is_ready` is false, and the Pub/Sub tasks reconnect with
//! backoff, resubscribe and catch up from history.

mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{
    ChannelEvent, ChannelName, EngineError, Epoch, FanOut, HistoryPage, HistoryQuery, Namespaces, Position,
    PresenceChange, PresenceEntry, PresenceEvent, Publication, PublishError, PublishRequest, Published,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{Script, Value};

use crate::shared::{
    PerChannel, decode_entry, encode_entry, fnv1a, parse_publication, publish_each, subscribe_each, unsubscribe_each,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// How long a node's interest in a channel lasts unless refreshed (by its sweep).
const NODE_LEASE: Duration = Duration::from_secs(30);
/// Calls that take longer fail: a stalled Redis is reported, not waited on.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle Pub/Sub connection is checked.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// The set of channels with presence, per shard (for expiring leases).
const PRESENCE_INDEX: &str = "herald:presence-channels";
/// Requests waiting for a shard's sink task at most (those who ask wait beyond).
const SINK_QUEUE: usize = 1024;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("invalid Redis URL {url}: {error}")]
    Url { url: String, error: String },
    #[error("no Redis URL given")]
    NoUrl,
}

fn unavailable(error: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {error}"))
}

/// One Redis server and what this node holds on it.
struct Shard {
    url: String,
    client: redis::Client,
    commands: ConnectionManager,
    /// To the shard's [`SinkTask`], which alone subscribes and unsubscribes.
    sink: mpsc::Sender<SinkRequest>,
    /// Channels this node has subscribers on, with the last position delivered.
    interest: Mutex<HashMap<ChannelName, Interest>>,
    ready: AtomicBool,
}

impl Shard {
    fn lock_interest(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Interest>> {
        self.interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Has the sink task make the channel's Pub/Sub subscription match its interest, and waits.
    async fn sync_subscription(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let (done, answer) = oneshot::channel();
        let request = SinkRequest::Sync { channel: channel.clone(), done };
        self.sink.send(request).await.map_err(|_| unavailable("the engine has stopped"))?;
        answer.await.map_err(|_| unavailable("the engine has stopped"))?
    }
}

#[derive(Default)]
struct Interest {
    count: usize,
    last: Option<Position>,
}

struct Scripts {
    publish: Script,
    history: Script,
    presence_join: Script,
    presence_leave: Script,
    presence_refresh: Script,
    presence_expire: Script,
    node_join: Script,
    node_leave: Script,
    node_refresh: Script,
}

/// The engine; see the module docs.
pub struct RedisEngine {
    shards: Vec<Arc<Shard>>,
    namespaces: Arc<Namespaces>,
    scripts: Arc<Scripts>,
    /// This node, in the channels' node sets.
    node: String,
    fan_out: Arc<OnceLock<Weak<dyn FanOut>>>,
    /// Stops the Pub/Sub tasks when the engine goes (or, as a child of it, at shutdown).
    _stop: DropGuard,
    stop: CancellationToken,
}

fn keys(channel: &ChannelName) -> ChannelKeys {
    let tag = format!("herald:{{{channel}}}");
    ChannelKeys {
        meta: format!("{tag}:meta"),
        history: format!("{tag}:history"),
        presence: format!("{tag}:presence"),
        leases: format!("{tag}:presence-leases"),
        nodes: format!("{tag}:nodes"),
        tag,
    }
}

struct ChannelKeys {
    tag: String,
    meta: String,
    history: String,
    presence: String,
    leases: String,
    nodes: String,
}

impl ChannelKeys {
    fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.tag)
    }
}

/// The Pub/Sub channel that carries a channel's publications and presence events.
fn events_channel(channel: &ChannelName) -> String {
    format!("herald.events:{channel}")
}

/// Jump consistent hash (Lamping and Veach): a key's shard, moving few keys when shards change.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut bucket, mut next) = (-1i64, 0i64);
    while next < buckets as i64 {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket.max(0) as usize
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

impl RedisEngine {
    /// Connects to the shards (lazily: a node starts while Redis is away, and is not ready
    /// until it is there) and starts their Pub/Sub tasks, on `tasks`; they end on `shutdown`
    /// (or when the engine is dropped).
    pub async fn start(
        urls: &[String],
        namespaces: Arc<Namespaces>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, RedisStartError> {
        if urls.is_empty() {
            return Err(RedisStartError::NoUrl);
        }
        let stop = shutdown.child_token();
        let mut shards = Vec::new();
        for url in urls {
            let client = redis::Client::open(url.as_str())
                .map_err(|error| RedisStartError::Url { url: url.clone(), error: error.to_string() })?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map_err(|error| RedisStartError::Url { url: url.clone(), error: error.to_string() })?;
            let (sink, requests) = mpsc::channel(SINK_QUEUE);
            let shard = Arc::new(Shard {
                url: url.clone(),
                client,
                commands,
                sink,
                interest: Mutex::new(HashMap::new()),
                ready: AtomicBool::new(false),
            });
            let sink_task = SinkTask {
                shard: Arc::downgrade(&shard),
                requests,
                stop: stop.clone(),
                sink: None,
                subscribed: HashSet::new(),
            };
            tasks.spawn(sink_task.run());
            shards.push(shard);
        }
        let scripts = Arc::new(Scripts {
            publish: Script::new(&scripts::publish()),
            history: Script::new(&scripts::history()),
            presence_join: Script::new(&scripts::presence_join()),
            presence_leave: Script::new(scripts::PRESENCE_LEAVE),
            presence_refresh: Script::new(&scripts::presence_refresh()),
            presence_expire: Script::new(&scripts::presence_expire()),
            node_join: Script::new(&scripts::node_join()),
            node_leave: Script::new(&scripts::node_leave()),
            node_refresh: Script::new(&scripts::node_refresh()),
        });
        let node = format!("node-{:016x}", fastrand::u64(..));
        let fan_out: Arc<OnceLock<Weak<dyn FanOut>>> = Arc::new(OnceLock::new());
        for shard in &shards {
            let reader = Delivery {
                shard: Arc::downgrade(shard),
                scripts: scripts.clone(),
                namespaces: namespaces.clone(),
                fan_out: fan_out.clone(),
                stop: stop.clone(),
            };
            tasks.spawn(reader.run());
        }
        Ok(Arc::new(Self { shards, namespaces, scripts, node, fan_out, _stop: stop.clone().drop_guard(), stop }))
    }

    fn shard(&self, channel: &ChannelName) -> &Arc<Shard> {
        &self.shards[jump_hash(fnv1a(channel.as_str()), self.shards.len())]
    }

    fn fan_out(&self) -> Option<Arc<dyn FanOut>> {
        self.fan_out.get().and_then(Weak::upgrade)
    }

    fn meta_ttl(&self, channel: &ChannelName) -> u64 {
        let options = self.namespaces.options_for(channel);
        millis(options.history_ttl.max(options.idempotency_window) * 2).max(3_600_000)
    }

    fn announces(&self, channel: &ChannelName) -> bool {
        self.namespaces.options_for(channel).join_leave
    }

    /// Reports a presence change this node made (once per cluster: only the node whose script
    /// made it), and nothing else: subscribers hear of it through Pub/Sub.
    fn report_presence(&self, channel: &ChannelName, change: PresenceChange, entry_json: &[u8]) {
        if !self.announces(channel) {
            return;
        }
        if let (Some(fan_out), Some(entry)) = (self.fan_out(), decode_entry(entry_json)) {
            fan_out.report(ChannelEvent::Presence(Arc::new(PresenceEvent::new(channel.clone(), change, entry))));
        }
    }
}

#[async_trait]
impl PerChannel for RedisEngine {
    async fn publish_one(&self, request: PublishRequest) -> Result<Published, PublishError> {
        let options = self.namespaces.options_for(&request.channel);
        let keys = keys(&request.channel);
        let key = request.idempotency_key.as_deref().unwrap_or("");
        let idempotency_key = keys.idempotency(key);
        let mut commands = self.shard(&request.channel).commands.clone();
        let reply: (u64, String, u64, u8) = self
            .scripts
            .publish
            .key(&keys.meta)
            .key(&keys.history)
            .key(&idempotency_key)
            .arg(events_channel(&request.channel))
            .arg(&request.data[..])
            .arg(Epoch::random().as_str())
            .arg(options.history_size)
            .arg(millis(options.history_ttl))
            .arg(key)
            .arg(millis(options.idempotency_window))
            .arg(self.meta_ttl(&request.channel))
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        let (offset, epoch, time_ms, duplicate) = reply;
        Ok(Published {
            channel: request.channel,
            position: Position { epoch: Epoch::new(&epoch), offset },
            time_ms,
            duplicate: duplicate == 1,
        })
    }

    async fn subscribe_one(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let shard = self.shard(channel);
        let first = {
            let mut interest = shard.lock_interest();
            let entry = interest.entry(channel.clone()).or_default();
            entry.count += 1;
            entry.count == 1
        };
        if !first {
            return Ok(());
        }
        if let Err(error) = shard.sync_subscription(channel).await {
            self.forget_interest(shard, channel);
            // A reconnect in between may have subscribed it: match the interest again.
            let _ = shard.sync_subscription(channel).await;
            return Err(error);
        }
        // Delivery starts after the channel's top as of now: what comes next is checked against
        // it, so a gap (a message lost while the connection was away) is closed from history.
        let top = read_history(
            shard,
            &self.scripts,
            &self.namespaces,
            channel,
            HistoryQuery::top_only(),
            self.meta_ttl(channel),
        );
        match top.await {
            Ok(page) => {
                let mut interest = shard.lock_interest();
                if let Some(entry) = interest.get_mut(channel)
                    && entry.last.is_none()
                {
                    entry.last = Some(page.top);
                }
            }
            Err(error) => {
                // The Pub/Sub subscription stays until the next reconnect: only some traffic.
                self.forget_interest(shard, channel);
                return Err(error);
            }
        }
        let keys = keys(channel);
        let mut commands = shard.commands.clone();
        let occupied: Result<u8, _> = self
            .scripts
            .node_join
            .key(&keys.nodes)
            .arg(&self.node)
            .arg(millis(NODE_LEASE))
            .invoke_async(&mut commands)
            .await;
        if occupied.is_ok_and(|occupied| occupied == 1)
            && let Some(fan_out) = self.fan_out()
        {
            fan_out.report(ChannelEvent::Occupied(channel.clone()));
        }
        Ok(())
    }

    async fn unsubscribe_one(&self, channel: &ChannelName) -> Result<(), EngineError> {
        let shard = self.shard(channel);
        if !self.forget_interest(shard, channel) {
            return Ok(());
        }
        // Failing costs only traffic; a reconnect subscribes to what has interest only.
        let _ = shard.sync_subscription(channel).await;
        let keys = keys(channel);
        let mut commands = shard.commands.clone();
        let vacated: u8 = self
            .scripts
            .node_leave
            .key(&keys.nodes)
            .arg(&self.node)
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        if vacated == 1
            && let Some(fan_out) = self.fan_out()
        {
            fan_out.report(ChannelEvent::Vacated(channel.clone()));
        }
        Ok(())
    }
}

#[async_trait]
impl herald_core::Engine for RedisEngine {
    fn attach(&self, fan_out: Weak<dyn FanOut>) {
        let _ = self.fan_out.set(fan_out);
    }

    async fn publish(&self, batch: Vec<PublishRequest>) -> Vec<Result<Published, PublishError>> {
        publish_each(self, batch).await
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        subscribe_each(self, channels).await
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        unsubscribe_each(self, channels).await
    }

    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        let shard = self.shard(channel);
        read_history(shard, &self.scripts, &self.namespaces, channel, query, self.meta_ttl(channel)).await
    }

    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        lease: Duration,
    ) -> Result<(), EngineError> {
        let keys = keys(channel);
        let json = encode_entry(&entry);
        let mut commands = self.shard(channel).commands.clone();
        let added: u8 = self
            .scripts
            .presence_join
            .key(&keys.presence)
            .key(&keys.leases)
            .key(PRESENCE_INDEX)
            .arg(&entry.client)
            .arg(&json)
            .arg(millis(lease))
            .arg(events_channel(channel))
            .arg(channel.as_str())
            .arg(if self.announces(channel) { "1" } else { "0" })
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        if added == 1 {
            self.report_presence(channel, PresenceChange::Join, json.as_bytes());
        }
        Ok(())
    }

    async fn presence_leave(&self, channel: &ChannelName, client: &str) -> Result<(), EngineError> {
        let keys = keys(channel);
        let mut commands = self.shard(channel).commands.clone();
        let entry: Option<Vec<u8>> = self
            .scripts
            .presence_leave
            .key(&keys.presence)
            .key(&keys.leases)
            .arg(client)
            .arg(events_channel(channel))
            .arg(if self.announces(channel) { "1" } else { "0" })
            .invoke_async(&mut commands)
            .await
            .map_err(unavailable)?;
        if let Some(entry) = entry {
            self.report_presence(channel, PresenceChange::Leave, &entry);
        }
        Ok(())
    }

    async fn presence_refresh(
        &self,
        entries: &[(ChannelName, String)],
        lease: Duration,
    ) -> Result<Vec<usize>, EngineError> {
        let mut by_channel: HashMap<&ChannelName, Vec<usize>> = HashMap::new();
        for (index, (channel, _)) in entries.iter().enumerate() {
            by_channel.entry(channel).or_default().push(index);
        }
        let mut missing = Vec::new();
        for (channel, indexes) in by_channel {
            let keys = keys(channel);
            let mut invocation = self.scripts.presence_refresh.key(&keys.presence);
            invocation.key(&keys.leases).arg(millis(lease));
            for index in &indexes {
                invocation.arg(&entries[*index].1);
            }
            let mut commands = self.shard(channel).commands.clone();
            let gone: Vec<usize> = invocation.invoke_async(&mut commands).await.map_err(unavailable)?;
            missing.extend(gone.into_iter().filter_map(|position| indexes.get(position.wrapping_sub(1)).copied()));
        }
        Ok(missing)
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        let mut commands = self.shard(channel).commands.clone();
        let entries: Vec<Vec<u8>> =
            redis::cmd("HVALS").arg(keys(channel).presence).query_async(&mut commands).await.map_err(unavailable)?;
        let mut entries: Vec<PresenceEntry> = entries.iter().filter_map(|json| decode_entry(json)).collect();
        entries.sort_by(|a, b| (a.since_ms, &a.client).cmp(&(b.since_ms, &b.client)));
        Ok(entries)
    }

    async fn presence_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        let mut commands = self.shard(channel).commands.clone();
        redis::cmd("HLEN").arg(keys(channel).presence).query_async(&mut commands).await.map_err(unavailable)
    }

    async fn sweep(&self) {
        for shard in &self.shards {
            if let Err(error) = self.sweep_shard(shard).await {
                tracing::debug!(url = %shard.url, %error, "redis sweep incomplete");
            }
        }
    }

    fn is_ready(&self) -> bool {
        !self.stop.is_cancelled() && self.shards.iter().all(|shard| shard.ready.load(Ordering::Relaxed))
    }
}

impl RedisEngine {
    /// Drops one unit of interest; returns whether it was the last.
    fn forget_interest(&self, shard: &Shard, channel: &ChannelName) -> bool {
        let mut interest = shard.lock_interest();
        let Some(entry) = interest.get_mut(channel) else { return false };
        entry.count = entry.count.saturating_sub(1);
        if entry.count == 0 {
            interest.remove(channel);
            return true;
        }
        false
    }

    /// Expires presence leases and keeps this node's interest (and its channels' positions)
    /// alive.
    async fn sweep_shard(&self, shard: &Shard) -> Result<(), EngineError> {
        let mut commands = shard.commands.clone();
        let channels: Vec<String> =
            redis::cmd("SMEMBERS").arg(PRESENCE_INDEX).query_async(&mut commands).await.map_err(unavailable)?;
        for name in channels {
            let Ok(channel) = ChannelName::new(&name) else { continue };
            let keys = keys(&channel);
            let expired: Vec<Vec<u8>> = self
                .scripts
                .presence_expire
                .key(&keys.presence)
                .key(&keys.leases)
                .key(PRESENCE_INDEX)
                .arg(events_channel(&channel))
                .arg(if self.announces(&channel) { "1" } else { "0" })
                .arg(channel.as_str())
                .invoke_async(&mut commands)
                .await
                .map_err(unavailable)?;
            for entry in expired {
                self.report_presence(&channel, PresenceChange::Leave, &entry);
            }
        }
        let interested: Vec<ChannelName> = shard.lock_interest().keys().cloned().collect();
        for channel in interested {
            let keys = keys(&channel);
            let _: Value = self
                .scripts
                .node_refresh
                .key(&keys.nodes)
                .key(&keys.meta)
                .arg(&self.node)
                .arg(millis(NODE_LEASE))
                .arg(self.meta_ttl(&channel))
                .invoke_async(&mut commands)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

async fn read_history(
    shard: &Shard,
    scripts: &Scripts,
    namespaces: &Namespaces,
    channel: &ChannelName,
    query: HistoryQuery,
    meta_ttl: u64,
) -> Result<HistoryPage, EngineError> {
    let options = namespaces.options_for(channel);
    let keys = keys(channel);
    let limit = query.limit.min(options.history_size);
    let mut commands = shard.commands.clone();
    let reply: Vec<Value> = scripts
        .history
        .key(&keys.meta)
        .key(&keys.history)
        .arg(Epoch::random().as_str())
        .arg(millis(options.history_ttl))
        .arg(if query.reverse { "r" } else { "f" })
        // Lua numbers are exact up to 2^53: a larger `since` is ahead of any channel anyway.
        .arg(query.since.map(|since| since.min(1 << 52).to_string()).unwrap_or_default())
        .arg(limit)
        .arg(meta_ttl)
        .invoke_async(&mut commands)
        .await
        .map_err(unavailable)?;
    parse_history(channel, &reply).ok_or_else(|| EngineError::Failed("redis: malformed history reply".into()))
}

fn parse_history(channel: &ChannelName, reply: &[Value]) -> Option<HistoryPage> {
    let text = |value: &Value| -> Option<String> {
        match value {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    };
    let number = |value: &Value| -> Option<u64> {
        match value {
            Value::Int(number) => u64::try_from(*number).ok(),
            other => text(other)?.parse().ok(),
        }
    };
    let epoch = Epoch::new(&text(reply.first()?)?);
    let top = Position { epoch: epoch.clone(), offset: number(reply.get(1)?)? };
    let oldest = number(reply.get(2)?)?;
    let mut publications = Vec::new();
    for entry in reply[3..].chunks(3) {
        let [offset, time, data] = entry else { return None };
        let data = match data {
            Value::BulkString(bytes) => Bytes::from(bytes.clone()),
            _ => return None,
        };
        let position = Position { epoch: epoch.clone(), offset: number(offset)? };
        publications.push(Arc::new(Publication::new(channel.clone(), position, data, number(time)?)));
    }
    Some(HistoryPage { publications, top, oldest })
}

/// What a shard's [`SinkTask`] is asked.
enum SinkRequest {
    /// A new connection's sink: subscribe every channel with interest on it (before anything
    /// queued after this request).
    Attach { sink: PubSubSink, done: oneshot::Sender<Result<(), EngineError>> },
    /// The connection is gone: subscribing fails until the next one.
    Detach,
    /// Make the channel's subscription match its interest: subscribed while the channel has
    /// some, unsubscribed once it has none.
    Sync { channel: ChannelName, done: oneshot::Sender<Result<(), EngineError>> },
}

/// The one owner of a shard's Pub/Sub sink. Requests arrive over a bounded queue and are
/// handled one at a time, each answered through its oneshot, so no lock is held across the
/// round trips. A `Sync` does what the channel's interest asks for when it is handled, not
/// what it was when asked: requests for one channel may be queued in any order by concurrent
/// callers, and the last one handled still leaves the subscription matching the interest.
struct SinkTask {
    shard: Weak<Shard>,
    requests: mpsc::Receiver<SinkRequest>,
    stop: CancellationToken,
    /// The current connection's sink, if connected.
    sink: Option<PubSubSink>,
    /// What that connection is subscribed to.
    subscribed: HashSet<ChannelName>,
}

impl SinkTask {
    async fn run(mut self) {
        let stop = self.stop.clone();
        loop {
            let request = tokio::select! {
                request = self.requests.recv() => request,
                () = stop.cancelled() => return,
            };
            let (Some(request), Some(shard)) = (request, self.shard.upgrade()) else { return };
            tokio::select! {
                () = self.handle(&shard, request) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn handle(&mut self, shard: &Shard, request: SinkRequest) {
        match request {
            SinkRequest::Attach { sink, done } => {
                self.sink = Some(sink);
                self.subscribed.clear();
                let channels: Vec<ChannelName> = shard.lock_interest().keys().cloned().collect();
                let mut result = Ok(());
                for channel in &channels {
                    result = self.subscribe(channel).await;
                    if result.is_err() {
                        self.sink = None;
                        self.subscribed.clear();
                        break;
                    }
                }
                let _ = done.send(result);
            }
            SinkRequest::Detach => {
                self.sink = None;
                self.subscribed.clear();
            }
            SinkRequest::Sync { channel, done } => {
                let wanted = shard.lock_interest().contains_key(&channel);
                let result = match (wanted, self.subscribed.contains(&channel)) {
                    (true, false) => self.subscribe(&channel).await,
                    (false, true) => {
                        self.unsubscribe(&channel).await;
                        Ok(())
                    }
                    _ => Ok(()),
                };
                let _ = done.send(result);
            }
        }
    }

    async fn subscribe(&mut self, channel: &ChannelName) -> Result<(), EngineError> {
        let sink = self.sink.as_mut().ok_or_else(|| unavailable("not connected"))?;
        tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(events_channel(channel)))
            .await
            .map_err(|_| unavailable("subscribe timed out"))?
            .map_err(unavailable)?;
        self.subscribed.insert(channel.clone());
        Ok(())
    }

    /// Failing costs only traffic (what arrives for a channel without interest is dropped); a
    /// reconnect subscribes to what has interest only.
    async fn unsubscribe(&mut self, channel: &ChannelName) {
        self.subscribed.remove(channel);
        if let Some(sink) = self.sink.as_mut() {
            let _ = tokio::time::timeout(RESPONSE_TIMEOUT, sink.unsubscribe(events_channel(channel))).await;
        }
    }
}

/// A shard's Pub/Sub side: connects (again, with backoff), has the sink task subscribe to the
/// channels with interest, and delivers what arrives, in offset order per channel, closing
/// gaps from history.
struct Delivery {
    shard: Weak<Shard>,
    scripts: Arc<Scripts>,
    namespaces: Arc<Namespaces>,
    fan_out: Arc<OnceLock<Weak<dyn FanOut>>>,
    stop: CancellationToken,
}

impl Delivery {
    async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(shard) = self.shard.upgrade() else { return };
            let connected = tokio::select! {
                connected = self.connect(&shard) => connected,
                () = self.stop.cancelled() => return,
            };
            match connected {
                Ok((sink, stream)) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(url = %shard.url, "redis pub/sub connected");
                    drop(shard);
                    if self.deliver(sink, stream).await {
                        return;
                    }
                    tracing::warn!("redis pub/sub connection lost; reconnecting");
                }
                Err(error) => {
                    shard.ready.store(false, Ordering::Relaxed);
                    tracing::warn!(url = %shard.url, %error, "cannot connect to redis; retrying");
                    drop(shard);
                }
            }
            if let Some(shard) = self.shard.upgrade() {
                shard.ready.store(false, Ordering::Relaxed);
                tokio::select! {
                    _ = shard.sink.send(SinkRequest::Detach) => {}
                    () = self.stop.cancelled() => return,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff + Duration::from_millis(fastrand::u64(..100))) => {}
                () = self.stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Connects, has the sink task subscribe to every channel with interest, and catches up on
    /// what they missed while away. Returns the connection's sink too (for pings).
    async fn connect(&self, shard: &Arc<Shard>) -> Result<(PubSubSink, PubSubStream), EngineError> {
        let pubsub = tokio::time::timeout(RESPONSE_TIMEOUT, shard.client.get_async_pubsub())
            .await
            .map_err(|_| unavailable("connect timed out"))?
            .map_err(unavailable)?;
        let (sink, stream) = pubsub.split();
        // A channel gaining interest from now on is subscribed after these (its request comes
        // later in the sink task's queue).
        let (done, answer) = oneshot::channel();
        let attach = SinkRequest::Attach { sink: sink.clone(), done };
        shard.sink.send(attach).await.map_err(|_| unavailable("the engine has stopped"))?;
        answer.await.map_err(|_| unavailable("the engine has stopped"))??;
        // Whatever was published while this node was away.
        let channels: Vec<ChannelName> = shard.lock_interest().keys().cloned().collect();
        for channel in &channels {
            let last = shard.lock_interest().get(channel).and_then(|interest| interest.last.clone());
            if let Some(last) = last {
                self.catch_up(shard, channel, &last, None).await?;
            }
        }
        shard.ready.store(true, Ordering::Relaxed);
        Ok((sink, stream))
    }

    /// Delivers until the connection ends (`false`) or the engine stops (`true`). A connection
    /// that stops answering pings counts as ended (a half-open one would otherwise go quiet).
    async fn deliver(&self, mut sink: PubSubSink, mut stream: PubSubStream) -> bool {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                () = self.stop.cancelled() => return true,
                _ = ping.tick() => {
                    let answered = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        return false;
                    }
                    continue;
                }
            };
            let Some(message) = message else { return false };
            let Some(shard) = self.shard.upgrade() else { return true };
            let Some(channel) =
                message.get_channel_name().strip_prefix("herald.events:").and_then(|name| ChannelName::new(name).ok())
            else {
                continue;
            };
            if let Err(error) = self.handle(&shard, &channel, message.get_payload_bytes()).await {
                tracing::warn!(%channel, %error, "redis delivery failed; reconnecting to catch up");
                return false;
            }
        }
    }

    async fn handle(&self, shard: &Shard, channel: &ChannelName, payload: &[u8]) -> Result<(), EngineError> {
        let Some(fan_out) = self.fan_out.get().and_then(Weak::upgrade) else { return Ok(()) };
        let (kind, rest) = payload.split_at(payload.len().min(2));
        match kind {
            b"P " => {
                let Some(publication) = parse_publication(channel, rest) else { return Ok(()) };
                let last = shard.lock_interest().get(channel).map(|interest| interest.last.clone());
                let Some(last) = last else { return Ok(()) }; // no interest (any more)
                match last {
                    Some(last) if last.epoch == publication.position.epoch => {
                        if publication.position.offset <= last.offset {
                            return Ok(()); // delivered already (from history)
                        }
                        if publication.position.offset > last.offset + 1 {
                            self.catch_up(shard, channel, &last, Some(publication.position.offset)).await?;
                        }
                    }
                    // Redis lost the channel (a flush, an empty replica): a new epoch.
                    Some(_) => fan_out.reset(channel),
                    None => {}
                }
                set_last(shard, channel, &publication.position);
                fan_out.deliver(publication);
            }
            b"J " | b"L " if self.namespaces.options_for(channel).join_leave => {
                let change = if kind == b"J " { PresenceChange::Join } else { PresenceChange::Leave };
                if let Some(entry) = decode_entry(rest) {
                    fan_out.deliver_presence(Arc::new(PresenceEvent::new(channel.clone(), change, entry)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Delivers from history what came after `last` (up to `before`, exclusive, if given).
    async fn catch_up(
        &self,
        shard: &Shard,
        channel: &ChannelName,
        last: &Position,
        before: Option<u64>,
    ) -> Result<(), EngineError> {
        let Some(fan_out) = self.fan_out.get().and_then(Weak::upgrade) else { return Ok(()) };
        let query = HistoryQuery::after(last.offset);
        let page = read_history(shard, &self.scripts, &self.namespaces, channel, query, 3_600_000).await?;
        // A new epoch, or history no longer reaching back: what was missed cannot be delivered.
        if page.top.epoch != last.epoch || page.oldest > last.offset + 1 {
            set_last(shard, channel, &page.top);
            fan_out.reset(channel);
            return Ok(());
        }
        for publication in page.publications {
            if publication.position.epoch != last.epoch
                || before.is_some_and(|before| publication.position.offset >= before)
            {
                break;
            }
            set_last(shard, channel, &publication.position);
            fan_out.deliver(publication);
        }
        Ok(())
    }
}

fn set_last(shard: &Shard, channel: &ChannelName, position: &Position) {
    if let Some(interest) = shard.lock_interest().get_mut(channel) {
        interest.last = Some(position.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_spreads_and_is_stable() {
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            counts[jump_hash(fnv1a(&format!("chat:{n}")), 4)] += 1;
        }
        assert!(counts.iter().all(|count| *count > 800), "{counts:?}");
        // Growing from 4 to 5 shards moves about a fifth of the keys, never between old shards.
        let moved = (0..4000)
            .filter(|n| {
                let key = fnv1a(&format!("chat:{n}"));
                let (before, after) = (jump_hash(key, 4), jump_hash(key, 5));
                assert!(after == before || after == 4);
                after != before
            })
            .count();
        assert!((600..1000).contains(&moved), "{moved}");
        assert_eq!(jump_hash(7, 1), 0);
    }
}
