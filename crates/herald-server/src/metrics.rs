//! Metrics: what the server does, recorded with the `metrics` facade where it happens, and
//! gauges read at scrape time (`ops::metrics` serves them in the Prometheus text format).
//! `docs/metrics.md` lists every series.
//!
//! Labels are always from small fixed sets (transports, reasons, error codes, operations),
//! never a channel, user or address. Counters on hot paths are looked up once and kept: a
//! lookup by name and labels costs about a thousand instructions. Deliveries are counted per
//! write batch, and the delivery latency is observed once per batch, so fan-out pays one
//! atomic add per connection and batch, not per publication.
//!
//! The recorder is process-wide (installed once, shared by every server in the process).
//! Histograms hold their samples until the next upkeep, which the server's tick runs.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets of the latency histograms, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

/// Installs the recorder on first use; `None` if another one was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .expect("the buckets are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .as_ref()
}

/// Moves histogram samples into their buckets, so they do not pile up between scrapes.
pub fn upkeep() {
    if let Some(handle) = handle() {
        handle.run_upkeep();
    }
}

/// Every metric, in the Prometheus text format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// What carries a connection, as the `transport` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket = 0,
    Sse = 1,
    Ndjson = 2,
    /// Polls: as a connection, a long-poll waiting for publications (a poll answered at once
    /// is a request, not a connection); as deliveries, every poll's answers.
    LongPoll = 3,
    /// The Pusher door's WebSocket route.
    PusherWebSocket = 4,
    /// The Pusher door's HTTP fallbacks (`xhr_streaming`, `xhr`): one session however many
    /// requests carry it.
    PusherHttp = 5,
}

impl Transport {
    pub const ALL: [Transport; 6] =
        [Self::WebSocket, Self::Sse, Self::Ndjson, Self::LongPoll, Self::PusherWebSocket, Self::PusherHttp];

    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::Ndjson => "ndjson",
            Self::LongPoll => "poll",
            Self::PusherWebSocket => "pusher_websocket",
            Self::PusherHttp => "pusher_http",
        }
    }
}

/// A connection or request refused (`code` is the error code it got): limits, rates, bad
/// signatures on the Pusher door, a full event queue.
pub fn refused(code: &'static str) {
    metrics::counter!("herald_refused_total", "code" => code).increment(1);
}

/// A client token refused (`reason`: token_expired, invalid_token).
pub fn token_failed(reason: &'static str) {
    metrics::counter!("herald_token_failures_total", "reason" => reason).increment(1);
}

/// A connection ended, by `reason` (peer_closed, slow_consumer, no_pong, shutdown, ...).
pub fn disconnected(transport: Transport, reason: &'static str) {
    metrics::counter!("herald_disconnects_total", "transport" => transport.label(), "reason" => reason).increment(1);
}

/// Where a publish came in.
#[derive(Clone, Copy)]
pub enum PublishedVia {
    Api = 0,
    WebSocket = 1,
    /// A Pusher client event, or the Pusher HTTP API.
    Pusher = 2,
}

/// A publish accepted.
pub fn published(via: PublishedVia) {
    static COUNTERS: OnceLock<[metrics::Counter; 3]> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        // The recorder first: a counter made before it would count nowhere.
        handle();
        ["api", "websocket", "pusher"].map(|via| metrics::counter!("herald_publications_total", "via" => via))
    });
    counters[via as usize].increment(1);
}

/// Publications written to one client of `transport`: `count` of them in one write, the
/// oldest published at `oldest_ms` (Unix milliseconds), which the latency histogram observes.
pub fn delivered(transport: Transport, count: usize, oldest_ms: u64) {
    struct Series {
        deliveries: [metrics::Counter; 6],
        latency: metrics::Histogram,
    }
    static SERIES: OnceLock<Series> = OnceLock::new();
    if count == 0 {
        return;
    }
    let series = SERIES.get_or_init(|| {
        handle();
        Series {
            deliveries: Transport::ALL
                .map(|transport| metrics::counter!("herald_deliveries_total", "transport" => transport.label())),
            latency: metrics::histogram!("herald_delivery_latency_seconds"),
        }
    });
    series.deliveries[transport as usize].increment(count as u64);
    let age_ms = herald_core::unix_millis().saturating_sub(oldest_ms);
    series.latency.record(Duration::from_millis(age_ms).as_secs_f64());
}

/// One call to the engine or the storage (`component`), by operation, its time and whether it
/// failed.
pub fn backend_call(component: &'static str, op: &'static str, took: Duration, failed: bool) {
    metrics::histogram!("herald_backend_call_seconds", "component" => component, "op" => op).record(took.as_secs_f64());
    if failed {
        metrics::counter!("herald_backend_errors_total", "component" => component, "op" => op).increment(1);
    }
}

/// A channel event (`channel.occupied`, `presence.join`, ...) this node reported.
pub fn channel_event(kind: &'static str) {
    metrics::counter!("herald_channel_events_total", "type" => kind).increment(1);
}

/// A webhook delivery's attempt outcome: delivered, failed (to be retried) or dead.
pub fn webhook_attempt(outcome: &'static str) {
    metrics::counter!("herald_webhook_attempts_total", "outcome" => outcome).increment(1);
}
