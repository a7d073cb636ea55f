//! Delivery: each endpoint and channel is a **lane**, delivered strictly in order by one task
//! while it has pending deliveries; lanes run in parallel up to a concurrency cap per endpoint,
//! so a slow or dead endpoint delays only itself. An attempt is a signed POST; its outcome is
//! committed to the outbox before the lane moves on, and the endpoint's health follows it
//! (`410 Gone` or failing for `disable_after` disables it).
//!
//! A Pusher app's endpoint takes several events per call (`{"time_ms", "events": [...]}`), as
//! Pusher sends them: an attempt carries the lane's due deliveries, in order, up to
//! [`MAX_BATCH_EVENTS`], and its outcome is each one's. Events that pile up while a call is under
//! way, or while the endpoint is failing, so go together in the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::unix_millis;
use herald_storage::SqliteOutbox;
use herald_storage::outbox::{AttemptRecord, DeliveryRecord, DeliveryState, EndpointRecord, Lane};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registry::{EndpointState, Registry};
use super::signature;
use super::target::{self, TargetPolicy};
use crate::config::WebhookSettings;

/// How often the delivery log is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// The most events one call to a Pusher endpoint carries, and about the most bytes.
const MAX_BATCH_EVENTS: usize = 100;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// A lane with a running task.
struct LaneState {
    /// Deliveries were added (or made due) since the task last looked.
    more: bool,
    /// Wakes the task from a wait for a retry.
    wake: Arc<Notify>,
}

/// What an attempt got back.
enum Answer {
    Status(u16),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneEnd {
    /// Nothing pending: the lane is gone.
    Empty,
    /// The endpoint is paused, disabled or deleted, or the server stops.
    Stopped,
}

pub struct Lanes {
    outbox: Arc<SqliteOutbox>,
    registry: Arc<Registry>,
    settings: WebhookSettings,
    policy: TargetPolicy,
    client: reqwest::Client,
    /// Lanes with a running task.
    running: Mutex<HashMap<Lane, LaneState>>,
    concurrency: Mutex<HashMap<String, Arc<Semaphore>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Lanes {
    pub fn new(
        outbox: Arc<SqliteOutbox>,
        registry: Arc<Registry>,
        settings: WebhookSettings,
        policy: TargetPolicy,
        client: reqwest::Client,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            outbox,
            registry,
            settings,
            policy,
            client,
            running: Mutex::new(HashMap::new()),
            concurrency: Mutex::new(HashMap::new()),
            tasks,
            shutdown,
        }
    }

    /// Makes sure a task delivers the lane (or tells the running one there is more, waking it
    /// from a wait for a retry).
    pub fn ensure(self: &Arc<Self>, lane: &Lane) {
        let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = running.get_mut(lane) {
            state.more = true;
            state.wake.notify_one();
            return;
        }
        let wake = Arc::new(Notify::new());
        running.insert(lane.clone(), LaneState { more: false, wake: wake.clone() });
        drop(running);
        self.tasks.spawn(self.clone().run(lane.clone(), wake));
    }

    /// Starts every lane with pending deliveries of `endpoint` (every endpoint with `None`).
    pub async fn resume(self: &Arc<Self>, endpoint: Option<&str>) -> Result<(), herald_storage::outbox::OutboxError> {
        for lane in &self.outbox.pending_lanes(endpoint).await? {
            self.ensure(lane);
        }
        Ok(())
    }

    /// Lets go of a deleted endpoint's concurrency cap.
    pub fn forget(&self, endpoint: &str) {
        self.concurrency.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(endpoint);
    }

    /// Delivers one lane in order until it has nothing due, then ends.
    async fn run(self: Arc<Self>, lane: Lane, wake: Arc<Notify>) {
        if self.deliver(&lane, &wake).await == LaneEnd::Empty {
            return; // deliver removed the lane under the lock
        }
        let state = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&lane);
        // Deliveries added (or the endpoint resumed) while the lane was stopping.
        let active = self.registry.endpoint(&lane.endpoint).is_some_and(|endpoint| endpoint.is_active());
        if state.is_some_and(|state| state.more) && active && !self.shutdown.is_cancelled() {
            self.ensure(&lane);
        }
    }

    async fn deliver(self: &Arc<Self>, lane: &Lane, wake: &Notify) -> LaneEnd {
        let endpoint_id = lane.endpoint.as_str();
        loop {
            if self.shutdown.is_cancelled() {
                return LaneEnd::Stopped;
            }
            let Some(endpoint) = self.registry.endpoint(endpoint_id).filter(|endpoint| endpoint.is_active()) else {
                return LaneEnd::Stopped;
            };
            let delivery = match self.outbox.head(lane).await {
                Ok(Some(delivery)) => delivery,
                Ok(None) => {
                    let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    match running.get_mut(lane) {
                        Some(state) if state.more => {
                            state.more = false;
                            continue;
                        }
                        _ => {
                            running.remove(lane);
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
            let batch =
                if endpoint.pusher_key.is_some() { self.due_batch(lane, delivery).await } else { vec![delivery] };
            let started = std::time::Instant::now();
            let answer = tokio::select! {
                answer = self.attempt(&endpoint, &batch) => answer,
                // Still pending: sent again after the restart.
                () = self.shutdown.cancelled() => return LaneEnd::Stopped,
            };
            self.record(&endpoint, &batch, answer, started.elapsed()).await;
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

    /// The lane's deliveries from its due `head` on that one call may carry: those due now, in
    /// order, within the batch limits.
    async fn due_batch(&self, lane: &Lane, head: DeliveryRecord) -> Vec<DeliveryRecord> {
        let now = unix_millis();
        let Ok(heads) = self.outbox.heads(lane, MAX_BATCH_EVENTS).await else { return vec![head] };
        let mut bytes = 0;
        let batch: Vec<DeliveryRecord> = heads
            .into_iter()
            .take_while(|delivery| {
                bytes += delivery.body.len();
                delivery.next_attempt_at <= now && bytes <= MAX_BATCH_BYTES
            })
            .collect();
        // The lane changed under us (the head went meanwhile): send the head alone.
        if batch.first().is_none_or(|first| first.id != head.id) { vec![head] } else { batch }
    }

    /// One signed POST of a delivery, or of a batch of them to a Pusher endpoint.
    async fn attempt(&self, endpoint: &EndpointRecord, batch: &[DeliveryRecord]) -> Answer {
        let delivery = &batch[0];
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
        let request =
            self.client.post(&endpoint.url).timeout(self.settings.timeout).header("content-type", "application/json");
        let (request, body) = match &endpoint.pusher_key {
            // A Pusher app's webhook: signed the way Pusher's server SDKs check.
            Some(key) => {
                let body = match batch {
                    [one] => one.body.clone(),
                    several => match herald_wire::pusher::webhook_batch(several.iter().map(|d| d.body.as_str())) {
                        Ok(body) => body,
                        Err(error) => {
                            return Answer::Failed(format!("a stored Pusher webhook body is not one: {error}"));
                        }
                    },
                };
                let signed = crate::pusher::webhooks::signature(&endpoint.secret, &body);
                (request.header("x-pusher-key", key).header("x-pusher-signature", signed), body)
            }
            None => (
                request
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature::sign(&secrets, &id, timestamp, &delivery.body)),
                delivery.body.clone(),
            ),
        };
        let request = request.body(body);
        match request.send().await {
            Ok(response) => Answer::Status(response.status().as_u16()),
            // Kept short: it is stored with every attempt.
            Err(error) => Answer::Failed(crate::http_client::describe(&error).chars().take(500).collect()),
        }
    }

    /// Records an attempt: each delivery's new state (the batch's deliveries share its outcome
    /// and its retry time), and the endpoint's health.
    async fn record(&self, endpoint: &EndpointRecord, batch: &[DeliveryRecord], answer: Answer, took: Duration) {
        let now = unix_millis();
        let schedule = &self.settings.retry_schedule;
        let (status, error) = match &answer {
            Answer::Status(status) if (200..300).contains(status) => (Some(*status), None),
            Answer::Status(status) => (Some(*status), Some(format!("the endpoint answered {status}"))),
            Answer::Failed(error) => (None, Some(error.clone())),
        };
        let delivered = error.is_none();
        let gone = matches!(answer, Answer::Status(410));
        let jitter = jitter();
        let attempts: Vec<AttemptRecord> = batch
            .iter()
            .map(|delivery| {
                let attempts = delivery.attempts + 1;
                let (state, next_attempt_at) = if delivered {
                    (DeliveryState::Delivered, now)
                } else if gone {
                    // Kept pending: re-enabling the endpoint sends it.
                    (DeliveryState::Pending, now)
                } else if let Some(delay) = schedule.get(attempts as usize) {
                    (DeliveryState::Pending, now + delay.mul_f64(jitter).as_millis() as u64)
                } else {
                    (DeliveryState::Dead, now)
                };
                crate::metrics::webhook_attempt(match state {
                    DeliveryState::Delivered => "delivered",
                    DeliveryState::Pending => "failed",
                    DeliveryState::Dead => "dead",
                });
                AttemptRecord {
                    id: delivery.id,
                    state,
                    attempts,
                    next_attempt_at,
                    status,
                    error: error.clone(),
                    latency_ms: took.as_millis() as u64,
                    at: now,
                }
            })
            .collect();
        while let Err(failure) = self.outbox.record_attempts(attempts.clone()).await {
            tracing::warn!(error = %failure, "cannot record a webhook attempt; retrying");
            if !self.pause(Duration::from_secs(1)).await {
                return;
            }
        }
        self.update_health(endpoint, delivered, gone, now).await;
    }

    /// Tracks since when an endpoint fails, and disables it on `410 Gone` or after failing for
    /// `disable_after`. (Health only ever stops an endpoint, so no lane needs starting.)
    async fn update_health(&self, endpoint: &EndpointRecord, delivered: bool, gone: bool, now: u64) {
        if delivered && endpoint.failing_since.is_none() {
            return; // the common case: healthy, and staying so
        }
        let disable_after = self.settings.disable_after.as_millis() as u64;
        let updated = self
            .registry
            .update(&endpoint.id, |changed| {
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
            Ok(Some(updated)) if updated.endpoint.disabled_reason.is_some() && endpoint.disabled_reason.is_none() => {
                let (changed, reason) = (&updated.endpoint, updated.endpoint.disabled_reason.as_deref());
                tracing::warn!(
                    endpoint = %changed.id, url = %changed.url, reason = reason.unwrap_or_default(),
                    "webhook endpoint disabled"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot store a webhook endpoint's state"),
        }
    }

    /// Deletes finished deliveries older than the log retention.
    pub async fn prune(&self) {
        let before = unix_millis().saturating_sub(self.settings.log_retention.as_millis() as u64);
        if let Err(error) = self.outbox.prune(before).await {
            tracing::warn!(%error, "cannot prune the webhook delivery log");
        }
    }

    pub async fn prune_periodically(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(PRUNE_INTERVAL) => self.prune().await,
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// A factor of ±10% around a retry delay, so retries of many lanes do not arrive all at once.
fn jitter() -> f64 {
    0.9 + fastrand::f64() * 0.2
}
