//! `webhook-bench`: webhook delivery throughput and publish→webhook latency against a running
//! Herald. Starts a fast receiver on loopback (answers 200 at once), registers it for
//! `publication` events of `bench:*` channels, publishes at a fixed rate over several channels,
//! and reports deliveries per second, loss and duplicates, per-channel order, and the latency
//! from publish to the receiver, as one JSON line.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "webhook-bench")]
struct Args {
    /// Herald's base URL (dev mode, or give --api-key).
    #[arg(long, default_value = "http://127.0.0.1:8750")]
    url: String,
    #[arg(long)]
    api_key: Option<String>,
    /// Publications per second over all channels.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Channels published to (each its own lane).
    #[arg(long, default_value_t = 16)]
    channels: usize,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Concurrent publishers (HTTP keep-alive connections).
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    #[arg(long, default_value_t = 30.0)]
    drain_seconds: f64,
    #[arg(long, default_value = "")]
    label: String,
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// What the receiver saw: webhook ids, per-channel offsets in arrival order, latencies.
#[derive(Default)]
struct Seen {
    ids: HashMap<String, u32>,
    offsets: HashMap<String, Vec<u64>>,
    latency_us: Vec<u64>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_url = format!("http://{}/hook", listener.local_addr()?);
    let receiver_seen = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let seen = receiver_seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let id =
                            request.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let arrived = now_micros();
                        if let Ok(body) = serde_json::from_slice::<Value>(&body) {
                            let data = &body["data"];
                            let channel = data["channel"].as_str().unwrap_or("").to_string();
                            let offset = data["offset"].as_u64().unwrap_or(0);
                            let sent = data["data"]["sent_us"].as_u64().unwrap_or(arrived);
                            let mut seen = seen.lock().unwrap();
                            *seen.ids.entry(id).or_default() += 1;
                            seen.offsets.entry(channel).or_default().push(offset);
                            seen.latency_us.push(arrived.saturating_sub(sent));
                            let at = Instant::now();
                            seen.first_at.get_or_insert(at);
                            seen.last_at = Some(at);
                        }
                        Ok::<_, Infallible>(hyper::Response::new(String::new()))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });

    let http = reqwest::Client::builder().pool_max_idle_per_host(args.publishers).build()?;
    let with_key = |request: reqwest::RequestBuilder| match &args.api_key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    let registered: Value = with_key(http.post(format!("{}/api/webhooks", args.url)))
        .json(&json!({"url": receiver_url, "channels": ["bench:*"], "events": ["publication"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let endpoint = registered["id"].as_str().unwrap_or_default().to_string();

    let total = (args.rate as f64 * args.seconds) as u64;
    let interval = Duration::from_secs_f64(args.publishers as f64 / args.rate as f64);
    let padding = "x".repeat(args.payload.saturating_sub(40));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for publisher in 0..args.publishers as u64 {
        let (http, url, padding) = (http.clone(), format!("{}/api/publish", args.url), padding.clone());
        let (api_key, channels, publishers) = (args.api_key.clone(), args.channels as u64, args.publishers as u64);
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let (mut published, mut failed) = (0u64, 0u64);
            let mut n = publisher;
            while n < total {
                ticker.tick().await;
                let body = json!({"channel": format!("bench:{}", n % channels),
                                  "data": {"sent_us": now_micros(), "pad": padding}});
                let mut request = http.post(&url).json(&body);
                if let Some(key) = &api_key {
                    request = request.bearer_auth(key);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => published += 1,
                    _ => failed += 1,
                }
                n += publishers;
            }
            (published, failed)
        }));
    }
    let (mut published, mut publish_failed) = (0, 0);
    for task in tasks {
        let (ok, failed) = task.await?;
        published += ok;
        publish_failed += failed;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_seconds);
    while Instant::now() < drain_deadline && (seen.lock().unwrap().ids.len() as u64) < published {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = with_key(http.delete(format!("{}/api/webhooks/{endpoint}", args.url))).send().await;

    let seen = seen.lock().unwrap();
    let delivered = seen.ids.len() as u64;
    let duplicates: u64 = seen.ids.values().map(|count| u64::from(count.saturating_sub(1))).sum();
    let out_of_order: usize =
        seen.offsets.values().map(|offsets| offsets.windows(2).filter(|pair| pair[1] < pair[0]).count()).sum();
    let span = match (seen.first_at, seen.last_at) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64().max(0.001),
        _ => 0.001,
    };
    let mut histogram = Histogram::<u64>::new(3)?;
    for latency in &seen.latency_us {
        let _ = histogram.record(*latency);
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let report = json!({
        "label": args.label,
        "rate": args.rate,
        "channels": args.channels,
        "published": published,
        "publish_failed": publish_failed,
        "publish_seconds": publish_seconds,
        "delivered": delivered,
        "lost": published.saturating_sub(delivered),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "deliveries_per_second": delivered as f64 / span,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": histogram.max() as f64 / 1000.0},
    });
    println!("{report}");
    Ok(())
}
