//! Metrics: counters recorded with the `metrics` facade wherever something is refused or cut
//! off, and gauges read at scrape time (`ops::metrics` serves them in the Prometheus text format).
//!
//! The recorder is process-wide (installed once, shared by every server in the process).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use; `None` if another one was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .as_ref()
}

/// A connection or request refused by a limit (`code` is the error code it got).
pub fn refused(code: &'static str) {
    metrics::counter!("herald_refused_total", "code" => code).increment(1);
}

/// A client token refused (`code`: token_expired, invalid_token).
pub fn token_refused(code: &'static str) {
    metrics::counter!("herald_tokens_refused_total", "code" => code).increment(1);
}

/// A WebSocket connection ended by the server for `reason` (slow_consumer, no_pong, ...).
pub fn websocket_closed(reason: &'static str) {
    metrics::counter!("herald_websocket_closed_total", "reason" => reason).increment(1);
}

/// Where a publish came in.
#[derive(Clone, Copy)]
pub enum PublishedVia {
    Api = 0,
    WebSocket = 1,
    /// A Pusher client event, or the Pusher HTTP API.
    Pusher = 2,
}

/// A publish accepted. The counters are looked up once: a lookup by name and labels costs
/// about a thousand instructions, on every publish.
pub fn published(via: PublishedVia) {
    static COUNTERS: OnceLock<[metrics::Counter; 3]> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        // The recorder first: a counter made before it would count nowhere.
        handle();
        [
            metrics::counter!("herald_publishes_total", "via" => "api"),
            metrics::counter!("herald_publishes_total", "via" => "websocket"),
            metrics::counter!("herald_publishes_total", "via" => "pusher"),
        ]
    });
    counters[via as usize].increment(1);
}

/// A channel event (`channel.occupied`, `presence.join`, ...) this node reported.
pub fn channel_event(kind: &'static str) {
    metrics::counter!("herald_channel_events_total", "type" => kind).increment(1);
}

/// A webhook attempt's outcome: delivered, failed (to be retried) or dead.
pub fn webhook_attempt(outcome: &'static str) {
    metrics::counter!("herald_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// Every metric, in the Prometheus text format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}
