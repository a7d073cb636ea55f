//! `herald-bench`: the load generator's command line. One run per invocation; prints a JSON line
//! (and, with `--markdown`, a table row) on stdout.

use std::time::Duration;

use clap::Parser;
use herald_bench::target::Endpoints;
use herald_bench::{Report, RunConfig, Target, Transport};

/// Load generator for Herald and peer servers: N subscribers, R messages/s for S seconds,
/// counting loss, duplicates, order and latency, and the server's CPU per delivery and RSS per
/// idle connection (give --server-pid).
#[derive(Parser)]
#[command(name = "herald-bench", version)]
struct Args {
    #[arg(long, value_enum, default_value = "herald")]
    target: Target,
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Where subscribers connect (http://HOST:PORT).
    #[arg(long, default_value = "http://127.0.0.1:8750")]
    url: String,
    /// Where publishes go: Herald's base URL (default: --url), a peer's http://HOST:PORT/publish,
    /// or NATS's HOST:PORT.
    #[arg(long)]
    publish_url: Option<String>,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Messages per second over all channels (0: idle run, memory only).
    #[arg(long, default_value_t = 10)]
    rate: u64,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Pad payloads with feed-like JSON (compresses like real data) rather than `x`s.
    #[arg(long)]
    json_payload: bool,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 5000)]
    ramp: u64,
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Publish over a WebSocket connection instead of the HTTP API (Herald only).
    #[arg(long)]
    publish_over_websocket: bool,
    /// The server's process (repeat for servers made of several unrelated processes); its
    /// descendants are counted too.
    #[arg(long)]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 0)]
    source_addresses: u8,
    #[arg(long, default_value_t = 5.0)]
    drain_seconds: f64,
    /// Seconds the connections sit idle before the server's memory is read.
    #[arg(long, default_value_t = 1.0)]
    settle_seconds: f64,
    #[arg(long, default_value = "")]
    label: String,
    /// Also print the Markdown table row.
    #[arg(long)]
    markdown: bool,
}

fn main() -> anyhow::Result<()> {
    // reqwest is built with TLS in this workspace (webhooks) and wants a provider chosen.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = RunConfig {
        label: args.label,
        target: args.target,
        transport: args.transport,
        endpoints: Endpoints { publish: args.publish_url.unwrap_or_else(|| args.url.clone()), subscribe: args.url },
        subscribers: args.subscribers,
        channels: args.channels,
        rate: args.rate,
        payload_bytes: args.payload,
        json_payload: args.json_payload,
        seconds: args.seconds,
        ramp_per_second: args.ramp,
        publishers: args.publishers,
        publish_over_websocket: args.publish_over_websocket,
        server_pids: args.server_pid,
        source_addresses: args.source_addresses,
        drain: Duration::from_secs_f64(args.drain_seconds),
        settle: Duration::from_secs_f64(args.settle_seconds),
    };
    // One thread: the generator gets one core, and a single thread wastes none of it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report: Report = runtime.block_on(herald_bench::run(config))?;
    println!("{}", serde_json::to_string(&report)?);
    if args.markdown {
        println!("{}", report.markdown_row());
    }
    Ok(())
}
