//! Webhooks: Herald calling other backends, signed, from a durable outbox, at least once.
//!
//! - Events enter the outbox ([`herald_storage::SqliteOutbox`]) before they count as done: a
//!   publication's event is committed before its publish is acknowledged; channel events
//!   (occupied, vacated, join, leave) are written as they are reported.
//! - Each endpoint and channel is a **lane** delivered strictly in order by one task; lanes run
//!   in parallel, up to a concurrency cap per endpoint, so a slow or dead endpoint delays only
//!   itself. A lane task lives while its lane has pending deliveries.
//! - Attempts follow the retry schedule (with jitter); after the last one a delivery is dead
//!   (replayable). `2xx` is delivered; `410 Gone` disables the endpoint, as does failing for
//!   longer than `disable_after`. Redirects are not followed; targets are checked
//!   ([`target`]) at registration and at every delivery.
//!
//! [`rules`] checks what an endpoint asks for; [`signature`] is the Standard Webhooks signing;
//! the management API under `/api/webhooks` is [`crate::api::webhooks`].

pub mod rules;
pub mod signature;
pub mod target;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::{ChannelEvent, ChannelEventSink, ChannelName, Published};
use herald_storage::outbox::{
    AttemptRecord, DeliveryRecord, DeliveryState, EndpointRecord, Lane, NewDelivery, OutboxError,
};
use herald_storage::{SqliteOutbox, StorageOpenError};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, WebhookSettings};
use herald_wire::webhook::{ChannelEventData, PresenceEventData};
use rules::event_bit;
use target::{GuardedResolver, TargetPolicy};

/// The outbox's file in the data directory.
pub const OUTBOX_FILE: &str = "webhooks.db";
/// Channel events waiting to be written to the outbox, at most.
const EVENT_QUEUE: usize = 65_536;
/// Locks keeping each channel's publication events in offset order (channels hash onto them).
const ORDER_LOCKS: usize = 256;

/// How often the delivery log is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Events handed to the outbox, waiting for its commit.
pub struct PendingEvents {
    submitted: herald_storage::outbox::Submitted,
    lanes: Vec<Lane>,
    webhooks: Arc<Webhooks>,
}

impl PendingEvents {
    /// Waits for the commit, then has the lanes deliver.
    pub async fn wait(self) -> Result<(), OutboxError> {
        self.submitted.wait().await?;
        for lane in &self.lanes {
            self.webhooks.ensure_lane(lane);
        }
        Ok(())
    }
}

/// A lane with a running task.
struct LaneState {
    /// Deliveries were added (or made due) since the task last looked.
    more: bool,
    /// Wakes the task from a wait for a retry.
    wake: Arc<Notify>,
}

pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// `{"type","timestamp","data"}`, the body of every call.
fn envelope(event_type: &str, at_ms: u64, data: &str) -> String {
    let timestamp = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms));
    herald_wire::webhook::envelope(event_type, &timestamp.to_string(), data)
}

/// The webhooks of one server: endpoints, the outbox and the lanes delivering it.
pub struct Webhooks {
    outbox: SqliteOutbox,
    settings: WebhookSettings,
    policy: TargetPolicy,
    endpoints: RwLock<HashMap<String, Arc<EndpointRecord>>>,
    /// Event types some enabled endpoint wants (bits of [`rules::EVENT_TYPES`]): a cheap "anyone?".
    wanted: AtomicU8,
    /// Lanes with a running task.
    lanes: Mutex<HashMap<Lane, LaneState>>,
    /// Serializes changes to endpoints (API, health, config), so none overwrites another and a
    /// deleted endpoint stays deleted.
    endpoint_writes: tokio::sync::Mutex<()>,
    concurrency: Mutex<HashMap<String, Arc<Semaphore>>>,
    client: reqwest::Client,
    events: mpsc::Sender<ChannelEvent>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    event_keys: AtomicU64,
    order_locks: Box<[tokio::sync::Mutex<()>]>,
}

impl Webhooks {
    /// Opens the outbox, syncs the endpoints declared in the configuration, and starts
    /// delivering what is pending (what a crash or restart left).
    pub async fn start(
        settings: &Settings,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StorageOpenError> {
        let path = settings.data_dir.join(OUTBOX_FILE);
        let outbox = tokio::task::spawn_blocking(move || SqliteOutbox::open(&path))
            .await
            .map_err(|error| StorageOpenError::Thread(std::io::Error::other(error)))??;
        let policy = TargetPolicy {
            allow_private: settings.webhooks.allow_private_targets,
            allow_loopback: settings.api_dev_mode(),
        };
        let client = crate::http_client::builder(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver(policy)))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.webhooks.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| StorageOpenError::Thread(std::io::Error::other(error)))?;
        let (events, queue) = mpsc::channel(EVENT_QUEUE);
        let webhooks = Arc::new(Self {
            outbox,
            settings: settings.webhooks.clone(),
            policy,
            endpoints: RwLock::new(HashMap::new()),
            wanted: AtomicU8::new(0),
            lanes: Mutex::new(HashMap::new()),
            endpoint_writes: tokio::sync::Mutex::new(()),
            concurrency: Mutex::new(HashMap::new()),
            client,
            events,
            tasks: tasks.clone(),
            shutdown,
            event_keys: AtomicU64::new(0),
            order_locks: (0..ORDER_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
        });
        let store_error = |error: herald_storage::outbox::OutboxError| StorageOpenError::Corrupt {
            path: OUTBOX_FILE.into(),
            detail: error.to_string(),
        };
        webhooks.sync_config_endpoints().await.map_err(store_error)?;
        for lane in webhooks.outbox.pending_lanes(None).await.map_err(store_error)? {
            webhooks.ensure_lane(&lane);
        }
        tasks.spawn(webhooks.clone().write_channel_events(queue));
        tasks.spawn(webhooks.clone().prune_periodically());
        Ok(webhooks)
    }

    pub fn policy(&self) -> TargetPolicy {
        self.policy
    }

    /// Loads the stored endpoints, and makes those of the configuration match it (keeping
    /// their state: paused, disabled, failing since).
    async fn sync_config_endpoints(&self) -> Result<(), herald_storage::outbox::OutboxError> {
        let stored = self.outbox.endpoints().await?;
        let mut declared = Vec::new();
        for config in &self.settings.endpoints {
            // From the URL (unique in the file), so reordering the file keeps every id.
            let id = format!("cfg_{:08x}", crc32fast::hash(config.url.as_bytes()));
            let previous = stored.iter().find(|endpoint| endpoint.id == id);
            let record = EndpointRecord {
                id: id.clone(),
                url: config.url.clone(),
                channels: config.channels.clone(),
                events: config.events.clone(),
                secret: config.secret.clone(),
                previous_secret: None,
                previous_secret_until: None,
                description: config.description.clone(),
                paused: previous.is_some_and(|previous| previous.paused),
                disabled_reason: previous.and_then(|previous| previous.disabled_reason.clone()),
                failing_since: previous.and_then(|previous| previous.failing_since),
                created_at: previous.map_or_else(unix_millis, |previous| previous.created_at),
                from_config: true,
            };
            if previous != Some(&record) {
                self.outbox.put_endpoint(record.clone()).await?;
            }
            declared.push(record);
        }
        for gone in
            stored.iter().filter(|endpoint| endpoint.from_config && !declared.iter().any(|d| d.id == endpoint.id))
        {
            let pending = self.outbox.pending_lanes(Some(&gone.id)).await?.len();
            tracing::warn!(
                endpoint = %gone.id, url = %gone.url, pending_lanes = pending,
                "a webhook endpoint left the configuration file: it and its deliveries are removed"
            );
            self.outbox.delete_endpoint(&gone.id).await?;
        }
        let mut endpoints = HashMap::new();
        for record in stored.into_iter().filter(|endpoint| !endpoint.from_config).chain(declared) {
            endpoints.insert(record.id.clone(), Arc::new(record));
        }
        *self.endpoints.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = endpoints;
        self.refresh_wanted();
        Ok(())
    }

    fn refresh_wanted(&self) {
        let endpoints = self.endpoints.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let wanted = endpoints
            .values()
            .filter(|endpoint| endpoint.disabled_reason.is_none())
            .flat_map(|endpoint| endpoint.events.iter())
            .fold(0, |bits, event| bits | event_bit(event));
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    pub fn endpoint(&self, id: &str) -> Option<Arc<EndpointRecord>> {
        self.endpoints.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(id).cloned()
    }

    /// Every endpoint, oldest first.
    pub fn endpoints(&self) -> Vec<Arc<EndpointRecord>> {
        let mut endpoints: Vec<_> =
            self.endpoints.read().unwrap_or_else(|poisoned| poisoned.into_inner()).values().cloned().collect();
        endpoints.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        endpoints
    }

    /// Stores a new endpoint.
    pub async fn create_endpoint(self: &Arc<Self>, record: EndpointRecord) -> Result<(), OutboxError> {
        let _writing = self.endpoint_writes.lock().await;
        self.store(record).await
    }

    /// Changes an endpoint with `change` (under the endpoint write lock, on its current state);
    /// `None` when there is no such endpoint. Resuming one makes its pending deliveries due now.
    pub async fn update_endpoint(
        self: &Arc<Self>,
        id: &str,
        change: impl FnOnce(&mut EndpointRecord),
    ) -> Result<Option<EndpointRecord>, OutboxError> {
        let _writing = self.endpoint_writes.lock().await;
        let Some(current) = self.endpoint(id) else { return Ok(None) };
        let mut changed = (*current).clone();
        change(&mut changed);
        if changed == *current {
            return Ok(Some(changed));
        }
        if changed.is_active() && !current.is_active() {
            self.outbox.retry_now(id, unix_millis()).await?;
        }
        self.store(changed.clone()).await?;
        Ok(Some(changed))
    }

    /// Writes an endpoint to the outbox, then to the map; starts its lanes if it is active.
    async fn store(self: &Arc<Self>, record: EndpointRecord) -> Result<(), OutboxError> {
        self.outbox.put_endpoint(record.clone()).await?;
        let id = record.id.clone();
        let active = record.is_active();
        self.endpoints.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id.clone(), Arc::new(record));
        self.refresh_wanted();
        if active {
            self.resume_lanes(&id).await;
        }
        Ok(())
    }

    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, OutboxError> {
        let _writing = self.endpoint_writes.lock().await;
        let deleted = self.outbox.delete_endpoint(id).await?;
        self.endpoints.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
        self.refresh_wanted();
        self.concurrency.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
        Ok(deleted)
    }

    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    async fn resume_lanes(self: &Arc<Self>, endpoint: &str) {
        match self.outbox.pending_lanes(Some(endpoint)).await {
            Ok(lanes) => {
                for lane in &lanes {
                    self.ensure_lane(lane);
                }
            }
            Err(error) => tracing::warn!(%error, endpoint, "cannot list pending webhook deliveries"),
        }
    }

    /// Re-sends an endpoint's dead deliveries (or, with `since`, all created since then).
    pub async fn replay(
        self: &Arc<Self>,
        endpoint: &str,
        since: Option<u64>,
    ) -> Result<usize, herald_storage::outbox::OutboxError> {
        let count = self.outbox.requeue(endpoint, since, unix_millis()).await?;
        self.resume_lanes(endpoint).await;
        Ok(count)
    }

    /// Endpoints that want `event_type` on `channel` (paused ones included: they catch up on
    /// resume; disabled ones are not).
    fn matching(&self, event_type: &str, channel: &ChannelName) -> Vec<String> {
        if self.wanted.load(Ordering::Relaxed) & event_bit(event_type) == 0 {
            return Vec::new();
        }
        let endpoints = self.endpoints.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        endpoints
            .values()
            .filter(|endpoint| endpoint.disabled_reason.is_none())
            .filter(|endpoint| endpoint.events.iter().any(|event| event == event_type))
            .filter(|endpoint| {
                endpoint.channels.iter().any(|pattern| crate::auth::pattern_matches(pattern, channel.as_str()))
            })
            .map(|endpoint| endpoint.id.clone())
            .collect()
    }

    /// The endpoints that want publications of `channel` (usually none, answered from one
    /// atomic load): found once per publish, before it, and handed on to
    /// [`Webhooks::submit_publications`].
    pub fn publication_endpoints(&self, channel: &ChannelName) -> Vec<String> {
        self.matching("publication", channel)
    }

    /// Holds the ordering locks of `channels`: whoever publishes to a channel with publication
    /// webhooks holds its lock from the publish until its events are handed to the outbox
    /// ([`Webhooks::submit_publications`]), so they reach it in offset order (the wait for the
    /// commit happens after the lock is released).
    pub async fn order_guard<'a>(
        &self,
        channels: impl Iterator<Item = &'a ChannelName>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut shards: Vec<usize> =
            channels.map(|channel| crc32fast::hash(channel.as_str().as_bytes()) as usize % ORDER_LOCKS).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut guards = Vec::with_capacity(shards.len());
        for shard in shards {
            guards.push(self.order_locks[shard].lock().await);
        }
        guards
    }

    /// Hands the `publication` events of publishes just made to the outbox, for the endpoints
    /// found before each publish; the returned [`PendingEvents::wait`] waits for their commit.
    /// `data` is each publish's JSON data.
    pub async fn submit_publications(
        self: &Arc<Self>,
        published: &[(&Published, &bytes::Bytes, &[String])],
    ) -> Result<PendingEvents, herald_storage::outbox::OutboxError> {
        let mut deliveries = Vec::new();
        for &(published, data, endpoints) in published {
            let publication = herald_core::Publication::new(
                published.channel.clone(),
                published.position.clone(),
                data.clone(),
                published.time_ms,
            );
            let body =
                envelope("publication", published.time_ms, &crate::encode::EncodedPublication::of(&publication).json);
            let key = format!("pub:{}:{}:{}", published.channel, published.position.epoch, published.position.offset);
            for endpoint in endpoints {
                deliveries.push(NewDelivery {
                    endpoint: endpoint.clone(),
                    channel: published.channel.to_string(),
                    event_type: "publication".into(),
                    event_key: key.clone(),
                    seq: published.position.offset,
                    body: body.clone(),
                    created_at: published.time_ms,
                });
            }
        }
        let lanes = deliveries.iter().map(NewDelivery::lane).collect();
        let submitted = self.outbox.submit(deliveries).await?;
        Ok(PendingEvents { submitted, lanes, webhooks: self.clone() })
    }

    async fn enqueue(
        self: &Arc<Self>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<(), herald_storage::outbox::OutboxError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let lanes: Vec<Lane> = deliveries.iter().map(NewDelivery::lane).collect();
        self.outbox.enqueue(deliveries).await?;
        for lane in &lanes {
            self.ensure_lane(lane);
        }
        Ok(())
    }

    /// Writes reported channel events to the outbox, in batches, retrying while it fails.
    async fn write_channel_events(self: Arc<Self>, mut queue: mpsc::Receiver<ChannelEvent>) {
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                received = queue.recv_many(&mut batch, 256) => if received == 0 { return },
                () = self.shutdown.cancelled() => return,
            }
            let deliveries: Vec<NewDelivery> =
                batch.drain(..).flat_map(|event| self.channel_event_deliveries(&event)).collect();
            while let Err(error) = self.enqueue(deliveries.clone()).await {
                tracing::warn!(%error, "cannot write channel events to the webhook outbox; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = self.shutdown.cancelled() => return,
                }
            }
        }
    }

    fn channel_event_deliveries(&self, event: &ChannelEvent) -> Vec<NewDelivery> {
        let endpoints = self.matching(event.kind(), event.channel());
        if endpoints.is_empty() {
            return Vec::new();
        }
        let channel = event.channel().to_string();
        let data = match event {
            ChannelEvent::Occupied(_) | ChannelEvent::Vacated(_) => {
                serde_json::to_string(&ChannelEventData { channel })
            }
            ChannelEvent::Presence(presence) => serde_json::to_string(&PresenceEventData {
                channel,
                entry: crate::encode::presence_entry(&presence.entry),
            }),
        }
        .unwrap_or_default();
        let now = unix_millis();
        let body = envelope(event.kind(), now, &data);
        let key = format!("evt:{now}:{}", self.event_keys.fetch_add(1, Ordering::Relaxed));
        endpoints
            .into_iter()
            .map(|endpoint| NewDelivery {
                endpoint,
                channel: event.channel().to_string(),
                event_type: event.kind().into(),
                event_key: key.clone(),
                seq: 0,
                body: body.clone(),
                created_at: now,
            })
            .collect()
    }

    /// Makes sure a task delivers the lane (or tells the running one there is more, waking it
    /// from a wait for a retry).
    fn ensure_lane(self: &Arc<Self>, lane: &Lane) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = lanes.get_mut(lane) {
            state.more = true;
            state.wake.notify_one();
            return;
        }
        let wake = Arc::new(Notify::new());
        lanes.insert(lane.clone(), LaneState { more: false, wake: wake.clone() });
        drop(lanes);
        self.tasks.spawn(self.clone().run_lane(lane.clone(), wake));
    }

    async fn prune_periodically(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(PRUNE_INTERVAL) => self.prune().await,
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// Whether an endpoint is being delivered to.
pub trait EndpointState {
    fn is_active(&self) -> bool;
}

impl EndpointState for EndpointRecord {
    fn is_active(&self) -> bool {
        !self.paused && self.disabled_reason.is_none()
    }
}

/// rustls with the ring provider and Mozilla's roots, as the rest of Herald uses.
/// Counts channel events and hands those some endpoint wants to the outbox writer.
pub struct ChannelEventRouter(pub Arc<Webhooks>);

impl ChannelEventSink for ChannelEventRouter {
    fn channel_event(&self, event: ChannelEvent) {
        crate::metrics::channel_event(event.kind());
        if self.0.wanted.load(Ordering::Relaxed) & event_bit(event.kind()) == 0 {
            return;
        }
        if self.0.events.try_send(event).is_err() {
            // Only when the outbox has been failing or far behind for a long while.
            crate::metrics::refused("webhook_event_queue_full");
            tracing::error!("webhook event queue is full: a channel event was not recorded");
        }
    }
}

/// What an attempt got back.
enum Answer {
    Status(u16),
    Failed(String),
}

impl Webhooks {
    /// Delivers one lane in order until it has nothing due, then ends.
    async fn run_lane(self: Arc<Self>, lane: Lane, wake: Arc<Notify>) {
        if self.deliver_lane(&lane, &wake).await == LaneEnd::Empty {
            return; // deliver_lane removed the lane under the lock
        }
        let state = self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&lane);
        // Deliveries added (or the endpoint resumed) while the lane was stopping.
        let active = self.endpoint(&lane.endpoint).is_some_and(|endpoint| endpoint.is_active());
        if state.is_some_and(|state| state.more) && active && !self.shutdown.is_cancelled() {
            self.ensure_lane(&lane);
        }
    }

    async fn deliver_lane(self: &Arc<Self>, lane: &Lane, wake: &Notify) -> LaneEnd {
        let endpoint_id = lane.endpoint.as_str();
        loop {
            if self.shutdown.is_cancelled() {
                return LaneEnd::Stopped;
            }
            let Some(endpoint) = self.endpoint(endpoint_id).filter(|endpoint| endpoint.is_active()) else {
                return LaneEnd::Stopped;
            };
            let delivery = match self.outbox.head(lane).await {
                Ok(Some(delivery)) => delivery,
                Ok(None) => {
                    let mut lanes = self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    match lanes.get_mut(lane) {
                        Some(state) if state.more => {
                            state.more = false;
                            continue;
                        }
                        _ => {
                            lanes.remove(lane);
                            return LaneEnd::Empty;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the webhook outbox; retrying");
                    if !self.pause(Duration::from_secs(1)).await {
                        return LaneEnd::Stopped;
                    }
                    continue;
                }
            };
            let wait = delivery.next_attempt_at.saturating_sub(unix_millis());
            if wait > 0 {
                // A replay or a resume wakes the lane early.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    () = wake.notified() => {}
                    () = self.shutdown.cancelled() => return LaneEnd::Stopped,
                }
                continue; // the endpoint or the head may have changed meanwhile
            }
            let permit = {
                let semaphore = self.semaphore(endpoint_id);
                tokio::select! {
                    permit = semaphore.acquire_owned() => permit.ok(),
                    () = self.shutdown.cancelled() => None,
                }
            };
            let Some(_permit) = permit else { return LaneEnd::Stopped };
            let started = std::time::Instant::now();
            let answer = tokio::select! {
                answer = self.attempt(&endpoint, &delivery) => answer,
                // Still pending: sent again after the restart.
                () = self.shutdown.cancelled() => return LaneEnd::Stopped,
            };
            self.record(&endpoint, &delivery, answer, started.elapsed()).await;
        }
    }

    /// Sleeps, unless the server stops first (then `false`).
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    fn semaphore(&self, endpoint: &str) -> Arc<Semaphore> {
        let mut limits = self.concurrency.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        limits
            .entry(endpoint.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.max_concurrency.get())))
            .clone()
    }

    /// One signed POST of a delivery.
    async fn attempt(&self, endpoint: &EndpointRecord, delivery: &DeliveryRecord) -> Answer {
        // An address in the URL itself never reaches the resolver: check it here.
        if let Ok(url) = target::parse_url(&endpoint.url)
            && let Some(host) = url.host_str()
            && let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse()
            && !self.policy.allows(ip)
        {
            return Answer::Failed(format!("{host} is not an address webhooks may reach"));
        }
        let id = format!("msg_{}", delivery.id);
        let timestamp = unix_millis() / 1000;
        let now = unix_millis();
        let mut secrets = vec![endpoint.secret.as_str()];
        if let (Some(previous), Some(until)) = (&endpoint.previous_secret, endpoint.previous_secret_until)
            && until > now
        {
            secrets.push(previous);
        }
        let request = self
            .client
            .post(&endpoint.url)
            .timeout(self.settings.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature::sign(&secrets, &id, timestamp, &delivery.body))
            .body(delivery.body.clone());
        match request.send().await {
            Ok(response) => Answer::Status(response.status().as_u16()),
            Err(error) => Answer::Failed(describe(&error)),
        }
    }

    /// Records an attempt: the delivery's new state, and the endpoint's health.
    async fn record(
        self: &Arc<Self>,
        endpoint: &EndpointRecord,
        delivery: &DeliveryRecord,
        answer: Answer,
        took: Duration,
    ) {
        let now = unix_millis();
        let attempts = delivery.attempts + 1;
        let schedule = &self.settings.retry_schedule;
        let (status, error) = match &answer {
            Answer::Status(status) if (200..300).contains(status) => (Some(*status), None),
            Answer::Status(status) => (Some(*status), Some(format!("the endpoint answered {status}"))),
            Answer::Failed(error) => (None, Some(error.clone())),
        };
        let delivered = error.is_none();
        let gone = matches!(answer, Answer::Status(410));
        let (state, next_attempt_at) = if delivered {
            (DeliveryState::Delivered, now)
        } else if gone {
            // Kept pending: re-enabling the endpoint sends it.
            (DeliveryState::Pending, now)
        } else if let Some(delay) = schedule.get(attempts as usize) {
            (DeliveryState::Pending, now + jittered(*delay).as_millis() as u64)
        } else {
            (DeliveryState::Dead, now)
        };
        crate::metrics::webhook_attempt(match state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "failed",
            DeliveryState::Dead => "dead",
        });
        let attempt = AttemptRecord {
            id: delivery.id,
            state,
            attempts,
            next_attempt_at,
            status,
            error,
            latency_ms: took.as_millis() as u64,
            at: now,
        };
        while let Err(failure) = self.outbox.record_attempt(attempt.clone()).await {
            tracing::warn!(error = %failure, "cannot record a webhook attempt; retrying");
            if !self.pause(Duration::from_secs(1)).await {
                return;
            }
        }
        self.update_health(endpoint, delivered, gone, now).await;
    }

    /// Tracks since when an endpoint fails, and disables it on `410 Gone` or after failing for
    /// `disable_after`.
    async fn update_health(self: &Arc<Self>, endpoint: &EndpointRecord, delivered: bool, gone: bool, now: u64) {
        if delivered && endpoint.failing_since.is_none() {
            return; // the common case: healthy, and staying so
        }
        let disable_after = self.settings.disable_after.as_millis() as u64;
        let updated = self
            .update_endpoint(&endpoint.id, |changed| {
                if delivered {
                    changed.failing_since = None;
                    return;
                }
                let since = *changed.failing_since.get_or_insert(now);
                if gone {
                    changed.disabled_reason = Some("the endpoint answered 410 Gone".into());
                } else if changed.disabled_reason.is_none() && now.saturating_sub(since) >= disable_after {
                    changed.disabled_reason = Some(format!(
                        "every attempt failed for {}",
                        humantime::format_duration(Duration::from_secs((now - since) / 1000))
                    ));
                }
            })
            .await;
        match updated {
            Ok(Some(changed)) if changed.disabled_reason.is_some() && endpoint.disabled_reason.is_none() => {
                let reason = changed.disabled_reason.as_deref().unwrap_or_default();
                tracing::warn!(endpoint = %changed.id, url = %changed.url, reason, "webhook endpoint disabled");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot store a webhook endpoint's state"),
        }
    }

    /// Deletes finished deliveries older than the log retention; called periodically.
    pub async fn prune(&self) {
        let before = unix_millis().saturating_sub(self.settings.log_retention.as_millis() as u64);
        if let Err(error) = self.outbox.prune(before).await {
            tracing::warn!(%error, "cannot prune the webhook delivery log");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneEnd {
    /// Nothing pending: the lane is gone.
    Empty,
    /// The endpoint is paused, disabled or deleted, or the server stops.
    Stopped,
}

/// ±10% around `delay`, so retries of many deliveries do not arrive all at once.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// A transport error in a few words (the chain of sources, which names the real cause).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() { "timed out".to_string() } else { error.to_string() };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(500).collect()
}
