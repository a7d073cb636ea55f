//! The NATS engine: several Herald nodes on one NATS server (with JetStream) behave as one
//! server.
//!
//! - **History and positions**: one JetStream stream, a subject per channel
//!   (`herald.history.<channel>`). Each message carries its channel's epoch, offset and time in
//!   headers. A publish reads the subject's last message and appends with
//!   `Nats-Expected-Last-Subject-Sequence` set to it, retrying on conflict: offsets stay
//!   contiguous whoever publishes. On a node, appends to a channel take turns under that
//!   channel's own append lock (there while someone holds or waits for it), which is released
//!   for the back-off after a conflict: other channels never wait on it. The stream keeps
//!   `max history_size` messages per subject and never ages out the last one, so a channel's
//!   offsets and epoch live as long as the stream.
//!   Idempotency keys are JetStream message ids (the stream's duplicate window).
//! - **Fan-out**: core NATS subjects (`herald.events.<channel>`), one subscription per channel
//!   with local subscribers; its task delivers in offset order, closing gaps (and what a
//!   reconnect missed) from history.
//! - **Presence and channel lifecycle**: JetStream key-value buckets, entries with expiry times
//!   checked by every node's sweep; changes by create/compare-and-set, so each join, leave,
//!   occupied and vacated happens once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{
    ChannelEvent, ChannelName, EngineError, Epoch, FanOut, HistoryPage, HistoryQuery, Namespaces, Position,
    PresenceChange, PresenceEntry, PresenceEvent, Publication, PublishError, PublishRequest, Published, unix_millis,
};
use tokio::sync::watch;

use crate::shared::{
    PerChannel, decode_entry, encode_entry, parse_publication, publication_message, publish_each, subscribe_each,
    unsubscribe_each,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

const STREAM: &str = "HERALD";
const PRESENCE_BUCKET: &str = "herald-presence";
const NODES_BUCKET: &str = "herald-nodes";
/// How long a node's interest in a channel lasts unless refreshed (by its sweep).
const NODE_LEASE: Duration = Duration::from_secs(30);
/// Attempts at appending when other nodes keep taking the next offset first.
const APPEND_ATTEMPTS: usize = 100;
/// Channel tails remembered at most (forgotten all at once beyond).
const TAILS: usize = 256 * 1024;

/// The last message of a channel as this node last appended or read it.
#[derive(Clone)]
struct Tail {
    position: Position,
    time: u64,
    sequence: u64,
}

/// This node's append locks: one per channel, in the map only while some publish holds or
/// waits for it (so never more than the publishes in flight).
#[derive(Default)]
struct AppendLocks(Mutex<HashMap<ChannelName, Arc<tokio::sync::Mutex<()>>>>);

impl AppendLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A claim on the channel's lock, which keeps the lock in the map while it lives.
    fn claim<'a>(&'a self, channel: &'a ChannelName) -> AppendClaim<'a> {
        let mut map = self.map();
        let lock = match map.get(channel) {
            Some(lock) => lock.clone(),
            None => map.entry(channel.clone()).or_default().clone(),
        };
        AppendClaim { locks: self, channel, lock }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

struct AppendClaim<'a> {
    locks: &'a AppendLocks,
    channel: &'a ChannelName,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl AppendClaim<'_> {
    /// Takes the channel's lock: one append at a time per channel on this node.
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }
}

impl Drop for AppendClaim<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map();
        // Claims are made and dropped under the map's lock: the map's reference and this one
        // alone mean no one else holds or waits for the lock.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(self.channel);
        }
    }
}

/// How one append attempt went.
enum Attempt {
    Appended {
        position: Position,
        time_ms: u64,
    },
    /// An idempotent repeat of the message at this stream sequence.
    Duplicate {
        sequence: u64,
    },
    /// Another node appended first.
    Conflict,
}

const EPOCH_HEADER: &str = "Herald-Epoch";
const OFFSET_HEADER: &str = "Herald-Offset";
const TIME_HEADER: &str = "Herald-Time";

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsStartError {
    #[error("cannot connect to NATS at {url}: {error}")]
    Connect { url: String, error: String },
    #[error("cannot set up JetStream ({what}): {error}")]
    JetStream { what: &'static str, error: String },
}

fn unavailable(error: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("nats: {error}"))
}

/// Subjects name channels in hex: a channel name may hold dots, even several in a row or one
/// at the end, which a subject may not.
fn history_subject(channel: &ChannelName) -> String {
    format!("herald.history.{}", channel_key(channel))
}

fn events_subject(channel: &ChannelName) -> String {
    format!("herald.events.{}", channel_key(channel))
}

/// Key-value keys allow fewer characters than channel names: channels are hex-encoded.
fn channel_key(channel: &ChannelName) -> String {
    channel.as_str().bytes().map(|byte| format!("{byte:02x}")).collect()
}

fn channel_from_key(key: &str) -> Option<ChannelName> {
    let bytes: Option<Vec<u8>> = (0..key.len())
        .step_by(2)
        .map(|at| key.get(at..at + 2).and_then(|hex| u8::from_str_radix(hex, 16).ok()))
        .collect();
    ChannelName::new(&String::from_utf8(bytes?).ok()?).ok()
}

/// A channel this node has subscribers on.
struct Interest {
    count: usize,
    /// Stops the channel's delivery task.
    _task: DropGuard,
}

/// The engine; see the module docs.
pub struct NatsEngine {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: stream::Stream,
    presence: kv::Store,
    nodes: kv::Store,
    namespaces: Arc<Namespaces>,
    node: String,
    fan_out: Arc<OnceLock<Weak<dyn FanOut>>>,
    interest: Mutex<HashMap<ChannelName, Interest>>,
    append_locks: AppendLocks,
    /// Each channel's tail as this node last saw it (read and written under its append lock).
    tails: Mutex<HashMap<ChannelName, Tail>>,
    connected: Arc<AtomicBool>,
    /// Bumped at each reconnect: channel tasks then catch up on what they missed.
    reconnects: watch::Receiver<u64>,
    /// Where the engine's tasks run (so shutdown waits for them).
    tasks: TaskTracker,
    /// Stops them: cancelled at shutdown (a child of its token) or when the engine goes.
    stop: CancellationToken,
    _stop: DropGuard,
}

impl NatsEngine {
    /// Connects and sets up the streams and buckets. The engine's tasks (the streams' check
    /// after a reconnect, one delivery task per channel with subscribers) run on `tasks` and
    /// end on `shutdown` (or when the engine is dropped).
    pub async fn start(
        url: &str,
        namespaces: Arc<Namespaces>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, NatsStartError> {
        let connected = Arc::new(AtomicBool::new(false));
        let (bump, reconnects) = watch::channel(0u64);
        let events = connected.clone();
        let options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(Duration::from_secs(3)))
            .event_callback(move |event| {
                let (connected, bump) = (events.clone(), bump.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            connected.store(true, Ordering::Relaxed);
                            bump.send_modify(|count| *count += 1);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            connected.store(false, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            });
        let client = options
            .connect(url)
            .await
            .map_err(|error| NatsStartError::Connect { url: url.to_string(), error: error.to_string() })?;
        let context = jetstream::new(client.clone());
        let largest_history = namespaces.largest(|options| options.history_size).max(1);
        let window = namespaces.largest(|options| options.idempotency_window).max(Duration::from_secs(1));
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec!["herald.history.>".into()],
            max_messages_per_subject: largest_history as i64,
            storage: stream::StorageType::File,
            allow_direct: true,
            duplicate_window: window,
            ..Default::default()
        };
        let jetstream_error = |error: &dyn std::fmt::Display| NatsStartError::JetStream {
            what: "history stream",
            error: error.to_string(),
        };
        let mut stream = context.get_or_create_stream(config.clone()).await.map_err(|error| jetstream_error(&error))?;
        // Nodes configured for longer histories (or windows) than the stream has widen it.
        let current = stream.info().await.map_err(|error| jetstream_error(&error))?.config.clone();
        if current.max_messages_per_subject < config.max_messages_per_subject
            || current.duplicate_window < config.duplicate_window
        {
            let wider = stream::Config {
                max_messages_per_subject: current.max_messages_per_subject.max(config.max_messages_per_subject),
                duplicate_window: current.duplicate_window.max(config.duplicate_window),
                ..current
            };
            context.update_stream(wider).await.map_err(|error| jetstream_error(&error))?;
            stream = context.get_stream(STREAM).await.map_err(|error| jetstream_error(&error))?;
        }
        let bucket = |name: &'static str| {
            let context = context.clone();
            async move {
                let fail =
                    |error: &dyn std::fmt::Display| NatsStartError::JetStream { what: name, error: error.to_string() };
                context.get_or_create_stream(bucket_stream(name)).await.map_err(|error| fail(&error))?;
                context.get_key_value(name).await.map_err(|error| fail(&error))
            }
        };
        let presence = bucket(PRESENCE_BUCKET).await?;
        let nodes = bucket(NODES_BUCKET).await?;
        // A NATS server that comes back without its store (a new machine, a wiped volume) gets
        // the streams again; channels then start new epochs, and their subscribers are reset.
        let stop = shutdown.child_token();
        {
            let (context, history, mut reconnects) =
                (context.clone(), stream.cached_info().config.clone(), reconnects.clone());
            let stop = stop.clone();
            tasks.spawn(async move {
                while tokio::select! {
                    changed = reconnects.changed() => changed.is_ok(),
                    () = stop.cancelled() => false,
                } {
                    for config in [history.clone(), bucket_stream(PRESENCE_BUCKET), bucket_stream(NODES_BUCKET)] {
                        if let Err(error) = context.get_or_create_stream(config).await {
                            tracing::warn!(%error, "cannot check the NATS streams after a reconnect");
                        }
                    }
                }
            });
        }
        connected.store(client.connection_state() == async_nats::connection::State::Connected, Ordering::Relaxed);
        Ok(Arc::new(Self {
            client,
            context,
            stream,
            presence,
            nodes,
            namespaces,
            node: format!("node-{:016x}", fastrand::u64(..)),
            fan_out: Arc::new(OnceLock::new()),
            interest: Mutex::new(HashMap::new()),
            append_locks: AppendLocks::default(),
            tails: Mutex::new(HashMap::new()),
            connected,
            reconnects,
            tasks,
            _stop: stop.clone().drop_guard(),
            stop,
        }))
    }

    fn fan_out(&self) -> Option<Arc<dyn FanOut>> {
        self.fan_out.get().and_then(Weak::upgrade)
    }

    fn announces(&self, channel: &ChannelName) -> bool {
        self.namespaces.options_for(channel).join_leave
    }

    fn lock_tails(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, Tail>> {
        self.tails.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a publication; returns its position, time and whether it was a repeat. One
    /// append at a time per channel on this node, from the tail it remembers: other nodes'
    /// appends are the only conflicts left, and a known tail saves a read. After a conflict the
    /// channel's lock is released for the back-off and taken again.
    async fn append(&self, request: &PublishRequest) -> Result<(Position, u64, bool), EngineError> {
        let subject = history_subject(&request.channel);
        let claim = self.append_locks.claim(&request.channel);
        for _ in 0..APPEND_ATTEMPTS {
            let turn = claim.lock().await;
            match self.try_append(request, &subject).await? {
                Attempt::Appended { position, time_ms } => return Ok((position, time_ms, false)),
                Attempt::Duplicate { sequence } => {
                    drop(turn);
                    let original = self.stream.get_raw_message(sequence).await.map_err(unavailable)?;
                    let (position, time_ms) =
                        position_of(&original).ok_or_else(|| unavailable("a message without position"))?;
                    return Ok((position, time_ms, true));
                }
                Attempt::Conflict => {
                    drop(turn);
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(50..500))).await;
                }
            }
        }
        Err(unavailable("too many concurrent publishers on one channel; try again"))
    }

    /// One attempt at appending, under the channel's append lock.
    async fn try_append(&self, request: &PublishRequest, subject: &str) -> Result<Attempt, EngineError> {
        let channel = &request.channel;
        let known = self.lock_tails().get(channel).cloned();
        let tail = match known {
            Some(tail) => tail,
            None => match last_message(&self.stream, subject).await? {
                Some(message) => {
                    let (position, time) =
                        position_of(&message).ok_or_else(|| unavailable("a message without position"))?;
                    Tail { position, time, sequence: message.sequence }
                }
                None => Tail { position: Position { epoch: Epoch::random(), offset: 0 }, time: 0, sequence: 0 },
            },
        };
        let time_ms = unix_millis().max(tail.time);
        let position = Position { epoch: tail.position.epoch.clone(), offset: tail.position.offset + 1 };
        let mut headers = HeaderMap::new();
        headers.insert(EPOCH_HEADER, position.epoch.as_str());
        headers.insert(OFFSET_HEADER, position.offset.to_string().as_str());
        headers.insert(TIME_HEADER, time_ms.to_string().as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence", tail.sequence.to_string().as_str());
        if let Some(key) = &request.idempotency_key {
            headers.insert("Nats-Msg-Id", format!("{channel}|{key}").as_str());
        }
        let sent = self.context.publish_with_headers(subject.to_string(), headers, request.data.clone()).await;
        let ack = match sent {
            Ok(pending) => pending.await,
            Err(error) => {
                self.lock_tails().remove(channel);
                return Err(unavailable(error));
            }
        };
        if let Err(error) = &ack
            && error.kind() == jetstream::context::PublishErrorKind::TimedOut
        {
            self.lock_tails().remove(channel);
            return Err(unavailable(format!(
                "{error}: the publish may still be stored; publish again with the same idempotency key"
            )));
        }
        match ack {
            Ok(ack) if ack.duplicate => Ok(Attempt::Duplicate { sequence: ack.sequence }),
            Ok(ack) => {
                {
                    let mut tails = self.lock_tails();
                    if tails.len() >= TAILS && !tails.contains_key(channel) {
                        tails.clear();
                    }
                    tails.insert(
                        channel.clone(),
                        Tail { position: position.clone(), time: time_ms, sequence: ack.sequence },
                    );
                }
                // Announced before the next append of this node: its own publications reach
                // the other nodes in order. (Fan-out is at most once: a node that misses one
                // closes the gap from history.)
                let message = publication_message(&position, time_ms, &request.data);
                let _ = self.client.publish(events_subject(channel), message).await;
                Ok(Attempt::Appended { position, time_ms })
            }
            Err(error) if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                // Another node appended: read the tail again.
                self.lock_tails().remove(channel);
                Ok(Attempt::Conflict)
            }
            Err(error) => {
                self.lock_tails().remove(channel);
                Err(unavailable(error))
            }
        }
    }

    /// Adds (or removes) this node in the channel's node set; returns whether the set went from
    /// empty to not (or back).
    async fn change_nodes(&self, channel: &ChannelName, join: bool) -> Result<bool, EngineError> {
        let key = channel_key(channel);
        for _ in 0..APPEND_ATTEMPTS {
            let entry = self.nodes.entry(&key).await.map_err(unavailable)?;
            let now = unix_millis();
            let (mut set, revision) = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    (serde_json::from_slice::<HashMap<String, u64>>(&entry.value).unwrap_or_default(), entry.revision)
                }
                Some(entry) => (HashMap::new(), entry.revision),
                None => (HashMap::new(), 0),
            };
            set.retain(|_, expires| *expires > now);
            let was_empty = set.is_empty();
            if join {
                set.insert(self.node.clone(), now + NODE_LEASE.as_millis() as u64);
            } else if set.remove(&self.node).is_none() {
                return Ok(false);
            }
            let value = Bytes::from(serde_json::to_vec(&set).unwrap_or_default());
            let written = if revision == 0 {
                self.nodes.create(&key, value).await.map(|_| ()).map_err(|error| error.to_string())
            } else {
                self.nodes.update(&key, value, revision).await.map(|_| ()).map_err(|error| error.to_string())
            };
            if written.is_ok() {
                return Ok(if join { was_empty } else { set.is_empty() });
            }
        }
        Err(unavailable("the channel's node set keeps changing"))
    }

    fn presence_key(channel: &ChannelName, client: &str) -> String {
        format!("{}.{client}", channel_key(channel))
    }

    /// Every present entry of one channel (or of all, with `None`), with its key and revision.
    async fn presence_entries(
        &self,
        channel: Option<&ChannelName>,
    ) -> Result<Vec<(String, u64, StoredEntry)>, EngineError> {
        let prefix = channel.map(|channel| format!("{}.", channel_key(channel)));
        let mut keys = self.presence.keys().await.map_err(unavailable)?;
        let mut entries = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(unavailable)?;
            if prefix.as_ref().is_some_and(|prefix| !key.starts_with(prefix.as_str())) {
                continue;
            }
            if let Some(entry) = self.presence.entry(&key).await.map_err(unavailable)?
                && entry.operation == kv::Operation::Put
                && let Ok(stored) = serde_json::from_slice::<StoredEntry>(&entry.value)
            {
                entries.push((key, entry.revision, stored));
            }
        }
        Ok(entries)
    }

    async fn announce(&self, channel: &ChannelName, change: PresenceChange, entry: PresenceEntry) {
        if !self.announces(channel) {
            return;
        }
        let kind = if change == PresenceChange::Join { "J" } else { "L" };
        let json = encode_entry(&entry);
        // Handed to the client before this call returns, so a node's join and its later leave
        // of one client go out in that order.
        let _ = self.client.publish(events_subject(channel), format!("{kind} {json}").into()).await;
        if let Some(fan_out) = self.fan_out() {
            fan_out.report(ChannelEvent::Presence(Arc::new(PresenceEvent::new(channel.clone(), change, entry))));
        }
    }
}

/// A presence entry as the bucket keeps it, with the end of its lease.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    client: String,
    user: String,
    info: Option<serde_json::Value>,
    since: u64,
    expires: u64,
}

impl StoredEntry {
    fn new(entry: &PresenceEntry, expires: u64) -> Self {
        Self {
            client: entry.client.clone(),
            user: entry.user.clone(),
            info: entry.info.as_ref().and_then(|info| serde_json::from_slice(info).ok()),
            since: entry.since_ms,
            expires,
        }
    }

    fn entry(&self) -> PresenceEntry {
        PresenceEntry {
            client: self.client.clone(),
            user: self.user.clone(),
            info: self.info.as_ref().map(|info| Bytes::from(info.to_string())),
            since_ms: self.since,
        }
    }
}

/// The stream of a key-value bucket, laid out as the client lays one out (its own bucket
/// creation asks for settings this server version does not answer in a form it reads).
fn bucket_stream(name: &str) -> stream::Config {
    stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// A message's position and time, from its headers.
fn position_of(message: &jetstream::message::StreamMessage) -> Option<(Position, u64)> {
    let header = |name: &str| message.headers.get(name).map(|value| value.as_str().to_string());
    let epoch = Epoch::new(&header(EPOCH_HEADER)?);
    let offset = header(OFFSET_HEADER)?.parse().ok()?;
    let time = header(TIME_HEADER)?.parse().ok()?;
    Some((Position { epoch, offset }, time))
}

async fn last_message(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<jetstream::message::StreamMessage>, EngineError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(unavailable(error)),
    }
}

/// Gives a channel that was never published to its epoch, for good: a marker message at offset
/// 0 (only if the subject is still empty: whoever comes first sets it). Someone may subscribe
/// before anyone publishes, and must not then miss the first publication as another epoch's.
async fn start_epoch(context: &jetstream::Context, subject: &str) -> Result<(), EngineError> {
    let mut headers = HeaderMap::new();
    headers.insert(EPOCH_HEADER, Epoch::random().as_str());
    headers.insert(OFFSET_HEADER, "0");
    headers.insert(TIME_HEADER, unix_millis().to_string().as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
    let ack =
        context.publish_with_headers(subject.to_string(), headers, Bytes::new()).await.map_err(unavailable)?.await;
    match ack {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(()),
        Err(error) => Err(unavailable(error)),
    }
}

/// A channel's history: every message its subject keeps, oldest first (at most the largest
/// history size), as publications, and the channel's top.
async fn read_history(
    context: &jetstream::Context,
    stream: &stream::Stream,
    namespaces: &Namespaces,
    channel: &ChannelName,
    query: HistoryQuery,
) -> Result<HistoryPage, EngineError> {
    read_history_within(context, stream, namespaces, channel, query, true).await
}

/// [`read_history`], with the namespace's size and age limits or (`limits: false`, to close a
/// node's delivery gaps) everything the stream still holds.
async fn read_history_within(
    context: &jetstream::Context,
    stream: &stream::Stream,
    namespaces: &Namespaces,
    channel: &ChannelName,
    query: HistoryQuery,
    limits: bool,
) -> Result<HistoryPage, EngineError> {
    let unlimited;
    let options = if limits {
        namespaces.options_for(channel)
    } else {
        unlimited = herald_core::NamespaceOptions {
            history_size: usize::MAX,
            history_ttl: Duration::from_secs(u64::MAX / 4),
            ..namespaces.options_for(channel).clone()
        };
        &unlimited
    };
    let subject = history_subject(channel);
    let last = match last_message(stream, &subject).await? {
        Some(last) => last,
        None => {
            start_epoch(context, &subject).await?;
            last_message(stream, &subject).await?.ok_or_else(|| unavailable("the channel's epoch did not stick"))?
        }
    };
    let (top, _) = position_of(&last).ok_or_else(|| unavailable("a message without position"))?;
    if query.limit == 0 {
        // The position alone (what every subscribe asks): no need to read the history, only
        // where it starts (the first message kept, the epoch marker aside).
        let oldest = match stream.direct_get_next_for_subject(&subject, None).await {
            Ok(first) => position_of(&first).map_or(top.offset + 1, |(position, _)| position.offset.max(1)),
            Err(_) => top.offset + 1,
        };
        return Ok(HistoryPage { publications: Vec::new(), top: top.clone(), oldest: oldest.min(top.offset + 1) });
    }
    let ttl_ms = u64::try_from(options.history_ttl.as_millis()).unwrap_or(u64::MAX);
    let oldest_time = unix_millis().saturating_sub(ttl_ms);
    let mut kept = Vec::new();
    if options.history_size > 0 {
        let mut next = None;
        loop {
            let message = match stream.direct_get_next_for_subject(&subject, next).await {
                Ok(message) => message,
                Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(error) => return Err(unavailable(error)),
            };
            next = Some(message.sequence + 1);
            let Some((position, time)) = position_of(&message) else { continue };
            // Offset 0 is the epoch's marker, not a publication.
            if position.offset > 0 && time >= oldest_time && position.epoch == top.epoch {
                kept.push(Arc::new(Publication::new(channel.clone(), position, message.payload.clone(), time)));
            }
            if message.sequence >= last.sequence {
                break;
            }
        }
        let excess = kept.len().saturating_sub(options.history_size);
        kept.drain(..excess);
    }
    let oldest = kept.first().map_or(top.offset + 1, |first| first.position.offset);
    let publications = if query.reverse {
        let before = query.since.unwrap_or(u64::MAX);
        kept.iter().rev().filter(|p| p.position.offset < before).take(query.limit).cloned().collect()
    } else {
        let after = query.since.unwrap_or(0);
        kept.iter().filter(|p| p.position.offset > after).take(query.limit).cloned().collect()
    };
    Ok(HistoryPage { publications, top, oldest })
}

#[async_trait]
impl PerChannel for NatsEngine {
    async fn publish_one(&self, request: PublishRequest) -> Result<Published, PublishError> {
        // The client would hold a publish while disconnected and send it on reconnect, after we
        // told the publisher it failed: refuse it now instead.
        if !self.connected.load(Ordering::Relaxed) {
            return Err(unavailable("not connected"));
        }
        let (position, time_ms, duplicate) = self.append(&request).await?;
        Ok(Published { channel: request.channel, position, time_ms, duplicate })
    }

    async fn subscribe_one(&self, channel: &ChannelName) -> Result<(), EngineError> {
        {
            let mut interest = self.interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(entry) = interest.get_mut(channel) {
                entry.count += 1;
                return Ok(());
            }
        }
        let subscriber = self.client.subscribe(events_subject(channel)).await.map_err(unavailable)?;
        // The subscription is made: the server has it once this flush returns.
        self.client.flush().await.map_err(unavailable)?;
        // Delivery starts after the channel's top as of now (before the hub reads it for the
        // subscriber). Publishes of several nodes reach the subject in any order: without a
        // start, the first to arrive would hide those before it; with one, anything ahead of
        // the last delivered is a gap, closed from history.
        let top =
            read_history(&self.context, &self.stream, &self.namespaces, channel, HistoryQuery::top_only()).await?.top;
        let task = self.stop.child_token();
        let delivery = ChannelDelivery {
            channel: channel.clone(),
            context: self.context.clone(),
            stream: self.stream.clone(),
            namespaces: self.namespaces.clone(),
            fan_out: self.fan_out.clone(),
            reconnects: self.reconnects.clone(),
            last: Some(top),
        };
        self.tasks.spawn(delivery.run(subscriber, task.clone()));
        {
            let mut interest = self.interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match interest.get_mut(channel) {
                // Another subscribe raced us and won: keep its task.
                Some(entry) => {
                    entry.count += 1;
                    task.cancel();
                    return Ok(());
                }
                None => {
                    interest.insert(channel.clone(), Interest { count: 1, _task: task.drop_guard() });
                }
            }
        }
        if self.change_nodes(channel, true).await.unwrap_or(false)
            && let Some(fan_out) = self.fan_out()
        {
            fan_out.report(ChannelEvent::Occupied(channel.clone()));
        }
        Ok(())
    }

    async fn unsubscribe_one(&self, channel: &ChannelName) -> Result<(), EngineError> {
        {
            let mut interest = self.interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(entry) = interest.get_mut(channel) else { return Ok(()) };
            entry.count -= 1;
            if entry.count > 0 {
                return Ok(());
            }
            interest.remove(channel); // its task stops, and its subscription with it
        }
        if self.change_nodes(channel, false).await?
            && let Some(fan_out) = self.fan_out()
        {
            fan_out.report(ChannelEvent::Vacated(channel.clone()));
        }
        Ok(())
    }
}

#[async_trait]
impl herald_core::Engine for NatsEngine {
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
        read_history(&self.context, &self.stream, &self.namespaces, channel, query).await
    }

    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        lease: Duration,
    ) -> Result<(), EngineError> {
        let key = Self::presence_key(channel, &entry.client);
        let expires = unix_millis() + lease.as_millis() as u64;
        let value = Bytes::from(serde_json::to_vec(&StoredEntry::new(&entry, expires)).unwrap_or_default());
        match self.presence.create(&key, value.clone()).await {
            Ok(_) => {
                self.announce(channel, PresenceChange::Join, entry).await;
                Ok(())
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                // There already: only the lease moves (the entry stays as it joined).
                let Some(current) = self.presence.entry(&key).await.map_err(unavailable)? else { return Ok(()) };
                if let Ok(mut stored) = serde_json::from_slice::<StoredEntry>(&current.value) {
                    stored.expires = expires;
                    let value = Bytes::from(serde_json::to_vec(&stored).unwrap_or_default());
                    let _ = self.presence.update(&key, value, current.revision).await;
                }
                Ok(())
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn presence_leave(&self, channel: &ChannelName, client: &str) -> Result<(), EngineError> {
        let key = Self::presence_key(channel, client);
        let Some(current) = self.presence.entry(&key).await.map_err(unavailable)? else { return Ok(()) };
        if current.operation != kv::Operation::Put {
            return Ok(());
        }
        let Ok(stored) = serde_json::from_slice::<StoredEntry>(&current.value) else { return Ok(()) };
        // Only the one whose delete lands announces the leave.
        if self.presence.delete_expect_revision(&key, Some(current.revision)).await.is_ok() {
            self.announce(channel, PresenceChange::Leave, stored.entry()).await;
        }
        Ok(())
    }

    async fn presence_refresh(
        &self,
        entries: &[(ChannelName, String)],
        lease: Duration,
    ) -> Result<Vec<usize>, EngineError> {
        let expires = unix_millis() + lease.as_millis() as u64;
        let mut missing = Vec::new();
        for (index, (channel, client)) in entries.iter().enumerate() {
            let key = Self::presence_key(channel, client);
            match self.presence.entry(&key).await.map_err(unavailable)? {
                Some(current) if current.operation == kv::Operation::Put => {
                    if let Ok(mut stored) = serde_json::from_slice::<StoredEntry>(&current.value) {
                        stored.expires = expires;
                        let value = Bytes::from(serde_json::to_vec(&stored).unwrap_or_default());
                        let _ = self.presence.update(&key, value, current.revision).await;
                    }
                }
                _ => missing.push(index),
            }
        }
        Ok(missing)
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        let now = unix_millis();
        let mut entries: Vec<PresenceEntry> = self
            .presence_entries(Some(channel))
            .await?
            .into_iter()
            .filter(|(_, _, stored)| stored.expires > now)
            .map(|(_, _, stored)| stored.entry())
            .collect();
        entries.sort_by(|a, b| (a.since_ms, &a.client).cmp(&(b.since_ms, &b.client)));
        Ok(entries)
    }

    async fn presence_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        Ok(self.presence(channel).await?.len())
    }

    async fn sweep(&self) {
        let now = unix_millis();
        match self.presence_entries(None).await {
            Ok(entries) => {
                for (key, revision, stored) in entries.into_iter().filter(|(_, _, stored)| stored.expires <= now) {
                    let Some(channel) = key.split('.').next().and_then(channel_from_key) else { continue };
                    if self.presence.delete_expect_revision(&key, Some(revision)).await.is_ok() {
                        self.announce(&channel, PresenceChange::Leave, stored.entry()).await;
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "nats presence sweep incomplete"),
        }
        let interested: Vec<ChannelName> =
            self.interest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).keys().cloned().collect();
        for channel in interested {
            let _ = self.change_nodes(&channel, true).await;
        }
    }

    fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// One channel's delivery: what arrives on its subject, in offset order, gaps closed from
/// history; after a reconnect, what was missed meanwhile.
struct ChannelDelivery {
    channel: ChannelName,
    context: jetstream::Context,
    stream: stream::Stream,
    namespaces: Arc<Namespaces>,
    fan_out: Arc<OnceLock<Weak<dyn FanOut>>>,
    reconnects: watch::Receiver<u64>,
    last: Option<Position>,
}

impl ChannelDelivery {
    async fn run(mut self, mut subscriber: async_nats::Subscriber, stop: CancellationToken) {
        self.reconnects.mark_unchanged();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = self.reconnects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if let Err(error) = self.catch_up(None).await {
                        tracing::warn!(channel = %self.channel, %error, "cannot catch up after a reconnect");
                    }
                }
                message = subscriber.next() => {
                    let Some(message) = message else { return };
                    if let Err(error) = self.handle(&message.payload).await {
                        tracing::warn!(channel = %self.channel, %error, "cannot close a gap from history");
                    }
                }
            }
        }
    }

    fn fan_out(&self) -> Option<Arc<dyn FanOut>> {
        self.fan_out.get().and_then(Weak::upgrade)
    }

    async fn handle(&mut self, payload: &[u8]) -> Result<(), EngineError> {
        let Some(fan_out) = self.fan_out() else { return Ok(()) };
        let (kind, rest) = payload.split_at(payload.len().min(2));
        match kind {
            b"P " => {
                let Some(publication) = parse_publication(&self.channel, rest) else { return Ok(()) };
                match &self.last {
                    Some(last) if last.epoch == publication.position.epoch => {
                        if publication.position.offset <= last.offset {
                            return Ok(());
                        }
                        if publication.position.offset > last.offset + 1 {
                            self.catch_up(Some(publication.position.offset)).await?;
                            if self.last.as_ref().is_some_and(|last| last.offset >= publication.position.offset) {
                                return Ok(());
                            }
                        }
                    }
                    Some(_) => fan_out.reset(&self.channel),
                    None => {}
                }
                self.last = Some(publication.position.clone());
                fan_out.deliver(publication);
            }
            b"J " | b"L " if self.namespaces.options_for(&self.channel).join_leave => {
                let change = if kind == b"J " { PresenceChange::Join } else { PresenceChange::Leave };
                if let Some(entry) = decode_entry(rest) {
                    fan_out.deliver_presence(Arc::new(PresenceEvent::new(self.channel.clone(), change, entry)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Delivers from history what came after the last delivered (up to `before`, exclusive).
    async fn catch_up(&mut self, before: Option<u64>) -> Result<(), EngineError> {
        let (Some(fan_out), Some(last)) = (self.fan_out(), self.last.clone()) else { return Ok(()) };
        let query = HistoryQuery::after(last.offset);
        let page =
            read_history_within(&self.context, &self.stream, &self.namespaces, &self.channel, query, false).await?;
        if page.top.epoch != last.epoch || page.oldest > last.offset + 1 {
            self.last = Some(page.top.clone());
            fan_out.reset(&self.channel);
            return Ok(());
        }
        for publication in page.publications {
            if before.is_some_and(|before| publication.position.offset >= before) {
                break;
            }
            self.last = Some(publication.position.clone());
            fan_out.deliver(publication);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_keys_round_trip() {
        let channel = ChannelName::new("chat:room/1@x=y,z.w").unwrap();
        let key = channel_key(&channel);
        assert!(key.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(channel_from_key(&key), Some(channel));
        assert_eq!(channel_from_key("zz"), None);
    }

    #[tokio::test]
    async fn append_locks_are_per_channel_and_go_when_unused() {
        let locks = AppendLocks::default();
        let (a, b) = (ChannelName::new("a").unwrap(), ChannelName::new("b").unwrap());
        let first = locks.claim(&a);
        let turn = first.lock().await;
        // Another channel's lock is free meanwhile, and gone once unclaimed.
        let other = locks.claim(&b);
        drop(other.lock().await);
        assert_eq!(locks.len(), 2);
        drop(other);
        assert_eq!(locks.len(), 1);
        // The same channel's lock is taken: a second publish waits for its turn.
        let second = locks.claim(&a);
        assert!(tokio::time::timeout(Duration::from_millis(20), second.lock()).await.is_err());
        drop(turn);
        drop(second.lock().await);
        drop(first);
        assert_eq!(locks.len(), 1, "kept while someone claims it");
        drop(second);
        assert_eq!(locks.len(), 0, "nothing left behind");
    }
}
