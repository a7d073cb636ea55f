//! The endpoint registry: every endpoint (from the configuration and the API), kept in the
//! outbox and mirrored in memory, which event types anyone wants (one atomic load answers "no
//! one" on every publish), and which endpoints an event goes to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use herald_core::{ChannelName, unix_millis};
use herald_storage::SqliteOutbox;
use herald_storage::outbox::{EndpointRecord, OutboxError};

use super::rules::event_bit;
use crate::config::ConfigEndpoint;

/// Whether an endpoint is being delivered to.
pub trait EndpointState {
    fn is_active(&self) -> bool;
    /// Pauses, or resumes: resuming also lifts a disable for failing and its failure streak.
    fn set_paused(&mut self, paused: bool);
}

impl EndpointState for EndpointRecord {
    fn is_active(&self) -> bool {
        !self.paused && self.disabled_reason.is_none()
    }

    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.disabled_reason = None;
            self.failing_since = None;
        }
    }
}

/// An endpoint changed by [`Registry::update`].
pub struct Updated {
    pub endpoint: EndpointRecord,
    /// Whether the change stored anything (a change to the same state stores nothing).
    pub stored: bool,
}

pub struct Registry {
    outbox: Arc<SqliteOutbox>,
    endpoints: RwLock<HashMap<String, Arc<EndpointRecord>>>,
    /// Event types some enabled endpoint wants (bits of [`super::rules::EVENT_TYPES`]).
    wanted: AtomicU8,
    /// Serializes changes to endpoints (API, health, config), so none overwrites another and a
    /// deleted endpoint stays deleted.
    writes: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Loads the stored endpoints, and makes those of the configuration match it (keeping
    /// their state: paused, disabled, failing since).
    pub async fn load(outbox: Arc<SqliteOutbox>, configured: &[ConfigEndpoint]) -> Result<Self, OutboxError> {
        let stored = outbox.endpoints().await?;
        let mut declared = Vec::new();
        for config in configured {
            // From the URL (unique in the file), so reordering the file keeps every id; a Pusher
            // app's endpoint of the same URL is another one.
            let id = match &config.pusher_key {
                None => format!("cfg_{:08x}", crc32fast::hash(config.url.as_bytes())),
                Some(key) => format!("pusher_{:08x}", crc32fast::hash(format!("{key} {}", config.url).as_bytes())),
            };
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
                pusher_key: config.pusher_key.clone(),
            };
            if previous != Some(&record) {
                outbox.put_endpoint(record.clone()).await?;
            }
            declared.push(record);
        }
        for gone in
            stored.iter().filter(|endpoint| endpoint.from_config && !declared.iter().any(|d| d.id == endpoint.id))
        {
            let pending = outbox.pending_lanes(Some(&gone.id)).await?.len();
            tracing::warn!(
                endpoint = %gone.id, url = %gone.url, pending_lanes = pending,
                "a webhook endpoint left the configuration file: it and its deliveries are removed"
            );
            outbox.delete_endpoint(&gone.id).await?;
        }
        let mut endpoints = HashMap::new();
        for record in stored.into_iter().filter(|endpoint| !endpoint.from_config).chain(declared) {
            endpoints.insert(record.id.clone(), Arc::new(record));
        }
        let registry = Self {
            outbox,
            endpoints: RwLock::new(endpoints),
            wanted: AtomicU8::new(0),
            writes: tokio::sync::Mutex::new(()),
        };
        registry.refresh_wanted();
        Ok(registry)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<EndpointRecord>>> {
        self.endpoints.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<EndpointRecord>>> {
        self.endpoints.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn refresh_wanted(&self) {
        let wanted = self
            .read()
            .values()
            .filter(|endpoint| endpoint.disabled_reason.is_none())
            .flat_map(|endpoint| endpoint.events.iter())
            .fold(0, |bits, event| bits | event_bit(event));
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    /// Whether some enabled endpoint wants `event_type` (one atomic load).
    pub fn wants(&self, event_type: &str) -> bool {
        self.wanted.load(Ordering::Relaxed) & event_bit(event_type) != 0
    }

    pub fn endpoint(&self, id: &str) -> Option<Arc<EndpointRecord>> {
        self.read().get(id).cloned()
    }

    /// Every endpoint, oldest first.
    pub fn endpoints(&self) -> Vec<Arc<EndpointRecord>> {
        let mut endpoints: Vec<_> = self.read().values().cloned().collect();
        endpoints.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        endpoints
    }

    /// Whether the endpoint takes Pusher's format (a Pusher app's webhook).
    pub fn is_pusher(&self, id: &str) -> bool {
        self.read().get(id).is_some_and(|endpoint| endpoint.pusher_key.is_some())
    }

    /// Whether a Pusher app's endpoint asked for Pusher event `name` (its events list the
    /// Pusher names beside the Herald types that select them).
    pub fn pusher_wants(&self, id: &str, name: &str) -> bool {
        self.read().get(id).is_some_and(|endpoint| endpoint.events.iter().any(|event| event == name))
    }

    /// Endpoints that want `event_type` on `channel` (paused ones included: they catch up on
    /// resume; disabled ones are not).
    pub fn matching(&self, event_type: &str, channel: &ChannelName) -> Vec<String> {
        if !self.wants(event_type) {
            return Vec::new();
        }
        self.read()
            .values()
            .filter(|endpoint| endpoint.disabled_reason.is_none())
            .filter(|endpoint| endpoint.events.iter().any(|event| event == event_type))
            .filter(|endpoint| {
                endpoint.channels.iter().any(|pattern| crate::auth::pattern_matches(pattern, channel.as_str()))
            })
            .map(|endpoint| endpoint.id.clone())
            .collect()
    }

    /// Stores a new endpoint.
    pub async fn create(&self, record: EndpointRecord) -> Result<(), OutboxError> {
        let _writing = self.writes.lock().await;
        self.store(record).await
    }

    /// Changes an endpoint with `change` (under the write lock, on its current state); `None`
    /// when there is no such endpoint. Resuming one makes its pending deliveries due now.
    pub async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut EndpointRecord),
    ) -> Result<Option<Updated>, OutboxError> {
        let _writing = self.writes.lock().await;
        let Some(current) = self.endpoint(id) else { return Ok(None) };
        let mut changed = (*current).clone();
        change(&mut changed);
        if changed == *current {
            return Ok(Some(Updated { endpoint: changed, stored: false }));
        }
        if changed.is_active() && !current.is_active() {
            self.outbox.retry_now(id, unix_millis()).await?;
        }
        self.store(changed.clone()).await?;
        Ok(Some(Updated { endpoint: changed, stored: true }))
    }

    /// Writes an endpoint to the outbox, then to the map. The caller holds the write lock.
    async fn store(&self, record: EndpointRecord) -> Result<(), OutboxError> {
        self.outbox.put_endpoint(record.clone()).await?;
        self.write().insert(record.id.clone(), Arc::new(record));
        self.refresh_wanted();
        Ok(())
    }

    pub async fn delete(&self, id: &str) -> Result<bool, OutboxError> {
        let _writing = self.writes.lock().await;
        let deleted = self.outbox.delete_endpoint(id).await?;
        self.write().remove(id);
        self.refresh_wanted();
        Ok(deleted)
    }
}
