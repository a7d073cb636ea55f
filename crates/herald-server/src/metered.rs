//! The engine and the storage with their calls measured: each call's time and failure, by
//! operation, in `herald_backend_call_seconds{component,op}` and
//! `herald_backend_errors_total{component,op}`. Wrappers, so that the core and the adapters
//! stay free of metrics; `wiring` puts them around whatever it opens.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::{
    ChannelName, Engine, EngineError, FanOut, HistoryPage, HistoryQuery, PresenceEntry, PublishError, PublishRequest,
    Published, Storage,
};

/// Runs one call, recording its time and whether it failed.
async fn timed<T>(
    component: &'static str,
    op: &'static str,
    call: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    let started = Instant::now();
    let outcome = call.await;
    crate::metrics::backend_call(component, op, started.elapsed(), outcome.is_err());
    outcome
}

/// A batch failed as a call when every request in it failed (one request's own failure, such
/// as an idempotency conflict, is not the backend's).
fn record_batch(
    component: &'static str,
    op: &'static str,
    started: Instant,
    outcomes: &[Result<Published, PublishError>],
) {
    let failed = !outcomes.is_empty() && outcomes.iter().all(Result::is_err);
    crate::metrics::backend_call(component, op, started.elapsed(), failed);
}

pub struct MeteredEngine(pub Arc<dyn Engine>);

#[async_trait]
impl Engine for MeteredEngine {
    fn attach(&self, fan_out: Weak<dyn FanOut>) {
        self.0.attach(fan_out);
    }

    async fn publish(&self, batch: Vec<PublishRequest>) -> Vec<Result<Published, PublishError>> {
        let started = Instant::now();
        let outcomes = self.0.publish(batch).await;
        record_batch("engine", "publish", started, &outcomes);
        outcomes
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        timed("engine", "subscribe", self.0.subscribe(channels)).await
    }

    async fn unsubscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        timed("engine", "unsubscribe", self.0.unsubscribe(channels)).await
    }

    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        timed("engine", "history", self.0.history(channel, query)).await
    }

    async fn presence_join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        lease: Duration,
    ) -> Result<(), EngineError> {
        timed("engine", "presence_join", self.0.presence_join(channel, entry, lease)).await
    }

    async fn presence_leave(&self, channel: &ChannelName, client: &str) -> Result<(), EngineError> {
        timed("engine", "presence_leave", self.0.presence_leave(channel, client)).await
    }

    async fn presence_refresh(
        &self,
        entries: &[(ChannelName, String)],
        lease: Duration,
    ) -> Result<Vec<usize>, EngineError> {
        timed("engine", "presence_refresh", self.0.presence_refresh(entries, lease)).await
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, EngineError> {
        timed("engine", "presence", self.0.presence(channel)).await
    }

    async fn presence_count(&self, channel: &ChannelName) -> Result<usize, EngineError> {
        timed("engine", "presence_count", self.0.presence_count(channel)).await
    }

    async fn sweep(&self) {
        let started = Instant::now();
        self.0.sweep().await;
        crate::metrics::backend_call("engine", "sweep", started.elapsed(), false);
    }

    fn is_ready(&self) -> bool {
        self.0.is_ready()
    }
}

pub struct MeteredStorage(pub Arc<dyn Storage>);

#[async_trait]
impl Storage for MeteredStorage {
    async fn append(
        &self,
        batch: Vec<PublishRequest>,
        fan_out: Option<Arc<dyn FanOut>>,
    ) -> Vec<Result<Published, PublishError>> {
        let started = Instant::now();
        let outcomes = self.0.append(batch, fan_out).await;
        record_batch("storage", "append", started, &outcomes);
        outcomes
    }

    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        timed("storage", "history", self.0.history(channel, query)).await
    }

    async fn sweep(&self) {
        let started = Instant::now();
        self.0.sweep().await;
        crate::metrics::backend_call("storage", "sweep", started.elapsed(), false);
    }
}
