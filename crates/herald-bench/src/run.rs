//! One run: ramp subscribers up, measure idle memory, publish at a fixed rate, drain, report.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::payload::{self, Seen};
use crate::procfs;
use crate::report::Report;
use crate::target::{self, Endpoints, Publisher, Target, Transport};

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub label: String,
    pub target: Target,
    pub transport: Transport,
    pub endpoints: Endpoints,
    pub subscribers: usize,
    pub channels: usize,
    /// Messages per second over all channels; 0 only measures idle connections.
    pub rate: u64,
    pub payload_bytes: usize,
    /// Pad payloads with feed-like JSON (compresses like real data) rather than `x`s.
    pub json_payload: bool,
    pub seconds: f64,
    /// New connections per second while ramping up.
    pub ramp_per_second: u64,
    /// Concurrent publishing connections (each channel always uses the same one, in order).
    pub publishers: usize,
    pub publish_over_websocket: bool,
    /// The server's processes, for CPU and RSS (descendants included).
    pub server_pids: Vec<u32>,
    /// Spread subscriber source addresses over 127.0.0.2.. this many addresses (0: default).
    pub source_addresses: u8,
    /// How long to wait for stragglers after the last publish.
    pub drain: Duration,
    /// How long connections sit idle before the server's memory is read.
    pub settle: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            label: String::new(),
            target: Target::Herald,
            transport: Transport::Ws,
            endpoints: Endpoints { subscribe: "http://127.0.0.1:8750".into(), publish: "http://127.0.0.1:8750".into() },
            subscribers: 100,
            channels: 1,
            rate: 10,
            payload_bytes: 100,
            json_payload: false,
            seconds: 5.0,
            ramp_per_second: 5000,
            publishers: 4,
            publish_over_websocket: false,
            server_pids: Vec::new(),
            source_addresses: 0,
            drain: Duration::from_secs(5),
            settle: Duration::from_secs(1),
        }
    }
}

pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(config.channels >= 1 && config.subscribers >= 1, "need at least one subscriber and channel");
    let pids = config.server_pids.clone();
    let rss = || procfs::total_rss_kib(&pids);
    let cpu = || procfs::total_cpu_time(&pids);
    let received = || crate::target::RECEIVED_FRAME_BYTES.load(Ordering::Relaxed);
    let baseline_rss = rss();
    let latencies = payload::latencies();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let http = reqwest::Client::builder().pool_max_idle_per_host(config.subscribers).build()?;

    // Ramp up.
    let mut subscribers = Vec::with_capacity(config.subscribers);
    let mut ready = Vec::with_capacity(config.subscribers);
    let per_tick = (config.ramp_per_second / 100).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for index in 0..config.subscribers {
        if index % per_tick == 0 {
            tick.tick().await;
        }
        let source = (config.source_addresses > 0)
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index % config.source_addresses as usize) as u8)));
        let (ready_sender, ready_receiver) = oneshot::channel();
        ready.push(ready_receiver);
        subscribers.push(tokio::spawn(target::subscriber(
            config.target,
            config.transport,
            config.endpoints.clone(),
            index % config.channels,
            source,
            http.clone(),
            latencies.clone(),
            delivered.clone(),
            stop.clone(),
            ready_sender,
        )));
    }
    let mut connect_errors = 0u64;
    let mut first_error = None;
    let mut is_connected = Vec::with_capacity(config.subscribers);
    for receiver in ready {
        let outcome = tokio::time::timeout(Duration::from_secs(60), receiver).await;
        is_connected.push(matches!(outcome, Ok(Ok(Ok(())))));
        match outcome {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                connect_errors += 1;
                first_error.get_or_insert(error);
            }
            _ => connect_errors += 1,
        }
    }
    if let Some(error) = &first_error {
        eprintln!("herald-bench: {connect_errors} subscriber(s) failed; first: {error}");
    }
    let connected = config.subscribers as u64 - connect_errors;

    // Idle: let the server settle (allocators hand back what the ramp-up left), then read its
    // memory.
    tokio::time::sleep(config.settle).await;
    let idle_rss = rss();
    let idle_kib_per_connection = match (baseline_rss, idle_rss) {
        (Some(baseline), Some(idle)) if connected > 0 => Some((idle as f64 - baseline as f64) / connected as f64),
        _ => None,
    };

    // Publish at a fixed rate, each channel always through the same publisher, in order.
    let cpu_before = cpu();
    let received_before = received();
    let published_per_channel: Arc<Vec<AtomicU64>> =
        Arc::new((0..config.channels).map(|_| AtomicU64::new(0)).collect());
    let publish_errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut peak_rss = idle_rss;
    if config.rate > 0 && config.seconds > 0.0 {
        let workers =
            if config.publish_over_websocket || config.target == Target::Nats { 1 } else { config.publishers.max(1) };
        let mut queues = Vec::with_capacity(workers);
        let mut worker_tasks = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (sender, receiver) = mpsc::channel::<(usize, u64)>(100_000);
            queues.push(sender);
            let mut publisher =
                Publisher::connect(config.target, config.publish_over_websocket, &config.endpoints).await?;
            let published = published_per_channel.clone();
            let errors = publish_errors.clone();
            let (target, size, json_like) = (config.target, config.payload_bytes, config.json_payload);
            worker_tasks.push(tokio::spawn(async move {
                let mut receiver = receiver;
                let mut batch = Vec::with_capacity(64);
                while receiver.recv_many(&mut batch, 64).await > 0 {
                    for (channel, seq) in batch.drain(..) {
                        let data = payload::message(channel, seq, size, json_like);
                        match publisher.publish(&target.channel_name(channel), &data).await {
                            Ok(()) => {
                                published[channel].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(error) => {
                                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("herald-bench: publish failed: {error:#}");
                                }
                            }
                        }
                    }
                    if let Err(error) = publisher.flush().await
                        && errors.fetch_add(1, Ordering::Relaxed) == 0
                    {
                        eprintln!("herald-bench: publish flush failed: {error:#}");
                    }
                }
            }));
        }
        let total = (config.rate as f64 * config.seconds).round() as u64;
        let mut next_seq = vec![0u64; config.channels];
        let mut scheduled = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut last_sample = Instant::now();
        while scheduled < total {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * config.rate as f64) as u64).min(total);
            while scheduled < due {
                let channel = (scheduled % config.channels as u64) as usize;
                let seq = next_seq[channel];
                next_seq[channel] += 1;
                let _ = queues[channel % workers].send((channel, seq)).await;
                scheduled += 1;
            }
            if last_sample.elapsed() >= Duration::from_millis(250) {
                last_sample = Instant::now();
                peak_rss = peak_rss.max(rss());
            }
        }
        drop(queues);
        for task in worker_tasks {
            let _ = task.await;
        }
    }
    let publish_seconds = started.elapsed().as_secs_f64();

    // Drain: wait until everything expected has arrived, or the drain time is up.
    let expected_total: u64 = (0..config.subscribers)
        .filter(|index| is_connected[*index])
        .map(|index| published_per_channel[index % config.channels].load(Ordering::Relaxed))
        .sum();
    let drain_deadline = Instant::now() + config.drain;
    while delivered.load(Ordering::Relaxed) < expected_total && Instant::now() < drain_deadline {
        peak_rss = peak_rss.max(rss());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = cpu();
    let received_after = received();
    stop.cancel();

    let mut report = Report {
        label: config.label.clone(),
        target: format!("{:?}", config.target).to_lowercase(),
        transport: format!("{:?}", config.transport).to_lowercase(),
        subscribers: config.subscribers,
        channels: config.channels,
        rate: config.rate,
        payload_bytes: config.payload_bytes,
        seconds: publish_seconds,
        published: published_per_channel.iter().map(|count| count.load(Ordering::Relaxed)).sum(),
        publish_errors: publish_errors.load(Ordering::Relaxed),
        connect_errors,
        server_rss_kib_baseline: baseline_rss,
        server_rss_kib_idle: idle_rss,
        server_rss_kib_peak: peak_rss,
        idle_kib_per_connection,
        ..Report::default()
    };
    for (index, task) in subscribers.into_iter().enumerate() {
        let seen: Seen = task.await.unwrap_or_default();
        let expected = published_per_channel[index % config.channels].load(Ordering::Relaxed);
        if !is_connected[index] {
            continue;
        }
        report.expected += expected;
        report.delivered += seen.delivered;
        report.lost += seen.lost(expected);
        report.duplicated += seen.duplicated;
        report.out_of_order += seen.out_of_order;
    }
    report.deliveries_per_second = report.delivered as f64 / publish_seconds.max(0.001);
    if let (Some(before), Some(after)) = (cpu_before, cpu_after)
        && report.delivered > 0
    {
        let per_delivery = |spent: Duration| spent.as_micros() as f64 / report.delivered as f64;
        report.server_cpu_us_per_delivery = Some(per_delivery(after.total().saturating_sub(before.total())));
        report.server_user_us_per_delivery = Some(per_delivery(after.user.saturating_sub(before.user)));
    }
    if received_after > received_before && report.delivered > 0 {
        report.wire_bytes_per_delivery = Some((received_after - received_before) as f64 / report.delivered as f64);
    }
    if let Ok(histogram) = latencies.lock()
        && !histogram.is_empty()
    {
        let ms = |micros: u64| micros as f64 / 1000.0;
        report.latency_ms_p50 = ms(histogram.value_at_quantile(0.50));
        report.latency_ms_p90 = ms(histogram.value_at_quantile(0.90));
        report.latency_ms_p99 = ms(histogram.value_at_quantile(0.99));
        report.latency_ms_p999 = ms(histogram.value_at_quantile(0.999));
        report.latency_ms_max = ms(histogram.max());
    }
    Ok(report)
}
