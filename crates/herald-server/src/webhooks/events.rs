//! Events into the outbox: a publication's events are handed to the outbox writer in offset
//! order per channel and committed before the publish is acknowledged
//! ([`Intake::submit_publications`]); channel events (occupied, vacated, join, leave) come from
//! the hub through a bounded queue and are written in batches as they are reported. A Pusher
//! app's endpoints get the same events in Pusher's format ([`crate::pusher::webhooks`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use herald_core::{ChannelEvent, ChannelEventSink, ChannelName, Published, unix_millis};
use herald_storage::SqliteOutbox;
use herald_storage::outbox::{Lane, NewDelivery, OutboxError, Submitted};
use herald_wire::webhook::{ChannelEventData, PresenceEventData};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lanes::Lanes;
use super::registry::Registry;

/// Channel events waiting to be written to the outbox, at most.
const EVENT_QUEUE: usize = 65_536;
/// Locks keeping each channel's publication events in offset order (channels hash onto them).
const ORDER_LOCKS: usize = 256;

/// `{"type","timestamp","data"}`, the body of every call.
fn envelope(event_type: &str, at_ms: u64, data: &str) -> String {
    let timestamp = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms));
    herald_wire::webhook::envelope(event_type, &timestamp.to_string(), data)
}

/// Events handed to the outbox, waiting for its commit.
pub struct PendingEvents {
    submitted: Submitted,
    lanes: Vec<Lane>,
    delivery: Arc<Lanes>,
}

impl PendingEvents {
    /// Waits for the commit, then has the lanes deliver.
    pub async fn wait(self) -> Result<(), OutboxError> {
        self.submitted.wait().await?;
        for lane in &self.lanes {
            self.delivery.ensure(lane);
        }
        Ok(())
    }
}

pub struct Intake {
    outbox: Arc<SqliteOutbox>,
    registry: Arc<Registry>,
    delivery: Arc<Lanes>,
    events: mpsc::Sender<ChannelEvent>,
    event_keys: AtomicU64,
    order_locks: Box<[tokio::sync::Mutex<()>]>,
    /// Users' clients per presence channel, for the Pusher format's per-user member events.
    members: crate::pusher::webhooks::MemberCounts,
    /// When each channel's last cache miss was recorded (bounded: cleared when it grows large).
    cache_misses: std::sync::Mutex<std::collections::HashMap<ChannelName, std::time::Instant>>,
}

impl Intake {
    /// The intake, and the queue of reported channel events for [`Intake::write_channel_events`].
    pub fn new(
        outbox: Arc<SqliteOutbox>,
        registry: Arc<Registry>,
        delivery: Arc<Lanes>,
    ) -> (Self, mpsc::Receiver<ChannelEvent>) {
        let (events, queue) = mpsc::channel(EVENT_QUEUE);
        let intake = Self {
            outbox,
            registry,
            delivery,
            events,
            event_keys: AtomicU64::new(0),
            order_locks: (0..ORDER_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            members: Default::default(),
            cache_misses: Default::default(),
        };
        (intake, queue)
    }

    /// Holds the ordering locks of `channels`: whoever publishes to a channel with publication
    /// webhooks holds its lock from the publish until its events are handed to the outbox
    /// ([`Intake::submit_publications`]), so they reach it in offset order (the wait for the
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
        &self,
        published: &[(&Published, &bytes::Bytes, &[String])],
    ) -> Result<PendingEvents, OutboxError> {
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
            let pusher_body =
                || crate::pusher::webhooks::client_event_body(&published.channel, data, published.time_ms);
            let key = format!("pub:{}:{}:{}", published.channel, published.position.epoch, published.position.offset);
            for endpoint in endpoints {
                let body = match self.registry.is_pusher(endpoint) {
                    false => body.clone(),
                    true => match pusher_body() {
                        Some(body) => body,
                        None => continue,
                    },
                };
                deliveries.push(NewDelivery {
                    endpoint: endpoint.clone(),
                    channel: published.channel.to_string(),
                    event_type: "publication".into(),
                    event_key: key.clone(),
                    seq: published.position.offset,
                    body,
                    created_at: published.time_ms,
                });
            }
        }
        let lanes = deliveries.iter().map(NewDelivery::lane).collect();
        let submitted = self.outbox.submit(deliveries).await?;
        Ok(PendingEvents { submitted, lanes, delivery: self.delivery.clone() })
    }

    /// Whether a cache miss of `channel` is the first in a minute (and so recorded).
    pub fn first_cache_miss_in_a_while(&self, channel: &ChannelName) -> bool {
        const QUIET: Duration = Duration::from_secs(60);
        const MOST: usize = 10_000;
        let mut seen = self.cache_misses.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        if seen.get(channel).is_some_and(|last| now.duration_since(*last) < QUIET) {
            return false;
        }
        if seen.len() >= MOST {
            seen.retain(|_, last| now.duration_since(*last) < QUIET);
        }
        if seen.len() >= MOST {
            // Ten thousand channels missed within a minute: the rest go unrecorded for now.
            return false;
        }
        seen.insert(channel.clone(), now);
        true
    }

    /// Records a Pusher cache channel's miss for the Pusher endpoints that want it.
    pub async fn submit_cache_miss(&self, channel: &ChannelName) -> Result<(), OutboxError> {
        const KIND: &str = "pusher.cache_miss";
        let endpoints = self.registry.matching(KIND, channel);
        let now = unix_millis();
        let Some(body) = crate::pusher::webhooks::cache_miss_body(channel, now) else {
            return Ok(());
        };
        let key = format!("evt:{now}:{}", self.event_keys.fetch_add(1, Ordering::Relaxed));
        let deliveries = endpoints
            .into_iter()
            .filter(|endpoint| self.registry.is_pusher(endpoint))
            .map(|endpoint| NewDelivery {
                endpoint,
                channel: channel.to_string(),
                event_type: KIND.into(),
                event_key: key.clone(),
                seq: 0,
                body: body.clone(),
                created_at: now,
            })
            .collect();
        self.enqueue(deliveries).await
    }

    /// Channel events waiting to be written to the outbox.
    pub fn queued_events(&self) -> usize {
        self.events.max_capacity() - self.events.capacity()
    }

    /// Takes a channel event the hub reported, if some endpoint wants its type. Never waits.
    fn take(&self, event: ChannelEvent) {
        crate::metrics::channel_event(event.kind());
        if !self.registry.wants(event.kind()) {
            return;
        }
        if self.events.try_send(event).is_err() {
            // Only when the outbox has been failing or far behind for a long while.
            crate::metrics::refused("webhook_event_queue_full");
            tracing::error!("webhook event queue is full: a channel event was not recorded");
        }
    }

    /// Writes reported channel events to the outbox, in batches, retrying while it fails.
    pub async fn write_channel_events(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<ChannelEvent>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                received = queue.recv_many(&mut batch, 256) => if received == 0 { return },
                () = shutdown.cancelled() => return,
            }
            let deliveries: Vec<NewDelivery> =
                batch.drain(..).flat_map(|event| self.channel_event_deliveries(&event)).collect();
            while let Err(error) = self.enqueue(deliveries.clone()).await {
                tracing::warn!(%error, "cannot write channel events to the webhook outbox; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }

    async fn enqueue(&self, deliveries: Vec<NewDelivery>) -> Result<(), OutboxError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let lanes: Vec<Lane> = deliveries.iter().map(NewDelivery::lane).collect();
        self.outbox.enqueue(deliveries).await?;
        for lane in &lanes {
            self.delivery.ensure(lane);
        }
        Ok(())
    }

    fn channel_event_deliveries(&self, event: &ChannelEvent) -> Vec<NewDelivery> {
        let endpoints = self.registry.matching(event.kind(), event.channel());
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
        // Counted once per event, whatever number of Pusher endpoints take it.
        let pusher_body = endpoints
            .iter()
            .any(|endpoint| self.registry.is_pusher(endpoint))
            .then(|| crate::pusher::webhooks::channel_event_body(event, &self.members, now))
            .flatten();
        let key = format!("evt:{now}:{}", self.event_keys.fetch_add(1, Ordering::Relaxed));
        endpoints
            .into_iter()
            .filter_map(|endpoint| {
                let body = match self.registry.is_pusher(&endpoint) {
                    false => body.clone(),
                    true => {
                        let (name, body) = pusher_body.as_ref()?;
                        if !self.registry.pusher_wants(&endpoint, name) {
                            return None;
                        }
                        body.clone()
                    }
                };
                Some(NewDelivery {
                    endpoint,
                    channel: event.channel().to_string(),
                    event_type: event.kind().into(),
                    event_key: key.clone(),
                    seq: 0,
                    body,
                    created_at: now,
                })
            })
            .collect()
    }
}

/// The hub's sink for channel events: counts them and hands those some endpoint wants to the
/// outbox writer.
pub struct ChannelEventRouter(pub Arc<Intake>);

impl ChannelEventSink for ChannelEventRouter {
    fn channel_event(&self, event: ChannelEvent) {
        self.0.take(event);
    }
}
