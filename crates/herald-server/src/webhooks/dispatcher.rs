//! The webhooks of one server, started together: the endpoint registry, the event intake and
//! the delivery lanes, over one outbox. The API, the publish path and the hub talk to this.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{ChannelEventSink, ChannelName, Published, unix_millis};
use herald_storage::outbox::{EndpointRecord, OutboxError};
use herald_storage::{SqliteOutbox, StorageOpenError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{ChannelEventRouter, Intake, PendingEvents};
use super::lanes::Lanes;
use super::registry::{EndpointState, Registry};
use super::target::{GuardedResolver, TargetPolicy};
use crate::config::Settings;

pub struct Webhooks {
    outbox: Arc<SqliteOutbox>,
    policy: TargetPolicy,
    registry: Arc<Registry>,
    delivery: Arc<Lanes>,
    intake: Arc<Intake>,
}

impl Webhooks {
    /// Syncs the endpoints declared in the configuration into `outbox` (opened by
    /// [`crate::wiring`]), and starts delivering what is pending (what a crash or restart left).
    pub async fn start(
        outbox: SqliteOutbox,
        settings: &Settings,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StorageOpenError> {
        let outbox = Arc::new(outbox);
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
        let store_error = |error: OutboxError| StorageOpenError::Corrupt {
            path: crate::wiring::OUTBOX_FILE.into(),
            detail: error.to_string(),
        };
        let registry =
            Arc::new(Registry::load(outbox.clone(), &settings.webhooks.endpoints).await.map_err(store_error)?);
        let delivery = Arc::new(Lanes::new(
            outbox.clone(),
            registry.clone(),
            settings.webhooks.clone(),
            policy,
            client,
            tasks.clone(),
            shutdown.clone(),
        ));
        delivery.resume(None).await.map_err(store_error)?;
        let (intake, queue) = Intake::new(outbox.clone(), registry.clone(), delivery.clone());
        let intake = Arc::new(intake);
        tasks.spawn(intake.clone().write_channel_events(queue, shutdown));
        tasks.spawn(delivery.clone().prune_periodically());
        Ok(Arc::new(Self { outbox, policy, registry, delivery, intake }))
    }

    pub fn policy(&self) -> TargetPolicy {
        self.policy
    }

    /// Where the hub reports channel events.
    pub fn event_sink(&self) -> Arc<dyn ChannelEventSink> {
        Arc::new(ChannelEventRouter(self.intake.clone()))
    }

    pub fn endpoint(&self, id: &str) -> Option<Arc<EndpointRecord>> {
        self.registry.endpoint(id)
    }

    /// Every endpoint, oldest first.
    pub fn endpoints(&self) -> Vec<Arc<EndpointRecord>> {
        self.registry.endpoints()
    }

    /// Stores a new endpoint.
    pub async fn create_endpoint(&self, record: EndpointRecord) -> Result<(), OutboxError> {
        let (id, active) = (record.id.clone(), record.is_active());
        self.registry.create(record).await?;
        if active {
            self.resume(&id).await;
        }
        Ok(())
    }

    /// Changes an endpoint with `change` (on its current state); `None` when there is no such
    /// endpoint. Resuming one makes its pending deliveries due now and delivers them.
    pub async fn update_endpoint(
        &self,
        id: &str,
        change: impl FnOnce(&mut EndpointRecord),
    ) -> Result<Option<EndpointRecord>, OutboxError> {
        let Some(updated) = self.registry.update(id, change).await? else { return Ok(None) };
        if updated.stored && updated.endpoint.is_active() {
            self.resume(id).await;
        }
        Ok(Some(updated.endpoint))
    }

    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, OutboxError> {
        let deleted = self.registry.delete(id).await?;
        self.delivery.forget(id);
        Ok(deleted)
    }

    /// Channel events reported and not yet in the outbox.
    pub fn queued_events(&self) -> usize {
        self.intake.queued_events()
    }

    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    async fn resume(&self, endpoint: &str) {
        if let Err(error) = self.delivery.resume(Some(endpoint)).await {
            tracing::warn!(%error, endpoint, "cannot list pending webhook deliveries");
        }
    }

    /// Re-sends an endpoint's dead deliveries (or, with `since`, all created since then).
    pub async fn replay(&self, endpoint: &str, since: Option<u64>) -> Result<usize, OutboxError> {
        let count = self.outbox.requeue(endpoint, since, unix_millis()).await?;
        self.resume(endpoint).await;
        Ok(count)
    }

    /// The endpoints that want publications of `channel` (usually none, answered from one
    /// atomic load): found once per publish, before it, and handed on to
    /// [`Webhooks::submit_publications`].
    /// A Pusher app's endpoints take only client events: other publications skip them here,
    /// so they do not wait for an outbox commit that records nothing.
    pub fn publication_endpoints(&self, channel: &ChannelName, data: &[u8]) -> Vec<String> {
        let mut endpoints = self.registry.matching("publication", channel);
        if !endpoints.is_empty() && !crate::pusher::webhooks::is_client_event(data) {
            endpoints.retain(|endpoint| !self.registry.is_pusher(endpoint));
        }
        endpoints
    }

    /// A Pusher cache channel's miss, for the endpoints that want it (one atomic load when
    /// none does), at most once a minute per channel: subscribing again and again to an empty
    /// cache channel does not fill the outbox.
    pub async fn cache_miss(&self, channel: &ChannelName) -> Result<(), OutboxError> {
        if !self.registry.wants("pusher.cache_miss") || !self.intake.first_cache_miss_in_a_while(channel) {
            return Ok(());
        }
        self.intake.submit_cache_miss(channel).await
    }

    /// See [`Intake::order_guard`].
    pub async fn order_guard<'a>(
        &self,
        channels: impl Iterator<Item = &'a ChannelName>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        self.intake.order_guard(channels).await
    }

    /// See [`Intake::submit_publications`].
    pub async fn submit_publications(
        &self,
        published: &[(&Published, &bytes::Bytes, &[String])],
    ) -> Result<PendingEvents, OutboxError> {
        self.intake.submit_publications(published).await
    }
}
