//! A run's result: one JSON line for machines, one Markdown row for people.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub label: String,
    pub target: String,
    pub transport: String,
    pub subscribers: usize,
    pub channels: usize,
    pub rate: u64,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub connect_errors: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub deliveries_per_second: f64,
    /// Server CPU (user + system) per delivered message, in microseconds.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The user-space part of it (the rest is the kernel: mostly one socket write a delivery).
    pub server_user_us_per_delivery: Option<f64>,
    /// WebSocket bytes (frame headers included) the subscribers read per delivered message;
    /// counted by the `ws-deflate` subscribers only.
    pub wire_bytes_per_delivery: Option<f64>,
    /// Server RSS growth per open connection when idle, in KiB.
    pub idle_kib_per_connection: Option<f64>,
    pub server_rss_kib_baseline: Option<u64>,
    pub server_rss_kib_idle: Option<u64>,
    pub server_rss_kib_peak: Option<u64>,
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".to_string(), |value| format!("{value:.digits$}"))
}

impl Report {
    pub const MARKDOWN_HEADER: &'static str = "| run | server | transport | subs × ch | msg/s | delivered | lost | dup | ooo | p50 ms | p99 ms | max ms | CPU µs/delivery | idle KiB/conn |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {} × {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} |",
            self.label,
            self.target,
            self.transport,
            self.subscribers,
            self.channels,
            self.rate,
            self.delivered,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.latency_ms_p50,
            self.latency_ms_p99,
            self.latency_ms_max,
            optional(self.server_cpu_us_per_delivery, 2),
            optional(self.idle_kib_per_connection, 2),
        )
    }
}
