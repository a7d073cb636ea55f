//! `/metrics` after a scripted workload: every counter and gauge equals what the script did.
//! The server is a process of its own (the recorder is process-wide: in this test binary every
//! in-process server would add to the same counters).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{KillOnDrop, LineStream, Received, WsClient, http_client, spawn_herald};

const API_KEY: &str = "metrics-test-key";

/// The series of a Prometheus text scrape: `name{labels}` → value, labels sorted by name.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series = match series.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                }
                None => series.to_string(),
            };
            Some((series, value.parse().ok()?))
        })
        .collect()
}

async fn pusher_event(client: &mut WsClient) -> Value {
    match client.receive_raw().await {
        Received::Json(value) => value,
        other => panic!("expected a Pusher event, got {other:?}"),
    }
}

struct Scrape(BTreeMap<String, f64>, String);

impl Scrape {
    /// The value of one series; 0 when it is absent (a counter never incremented).
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(http: &reqwest::Client, base: &str) -> Scrape {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    Scrape(parse(&text), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_counts_what_a_scripted_workload_did() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    // A webhook endpoint that is down, retried only after an hour: its deliveries stay pending.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!(
            "allow_private_webhook_targets = true\n\
             [api]\nkeys = [\"{API_KEY}\"]\n\
             [auth]\nhmac_secret = \"a-secret-of-at-least-32-bytes-for-hs256!\"\n\
             [namespaces.m]\nanonymous = true\nclient_publish = true\n\
             [limits]\nmax_connections_per_ip = 8\n\
             [webhook_delivery]\ntimeout = \"1s\"\nretry_schedule = [\"0s\", \"1h\"]\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:{dead}/hook\"\nchannels = [\"m:*\"]\nevents = [\"publication\"]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             [[pusher.apps]]\nid = \"1\"\nkey = \"pk\"\nsecret = \"ps\"\nnamespace = \"m\"\n"
        ),
    )
    .unwrap();
    let (child, address) = spawn_herald(&dir.path().join("data"), &config);
    let _server = KillOnDrop(child);
    let (base, ws) = (format!("http://{address}"), format!("ws://{address}"));
    let http = http_client();

    // Connections: 3 WebSocket, 2 SSE, 1 NDJSON, 1 parked long-poll, 1 Pusher WebSocket: 8,
    // the per-address limit.
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect(&format!("{ws}/ws")).await;
        client.subscribe("m:a").await;
        sockets.push(client);
    }
    let mut sse = Vec::new();
    for _ in 0..2 {
        sse.push(LineStream::open(http.get(format!("{base}/sse?channel=m:a"))).await);
    }
    let mut ndjson = LineStream::open(http.get(format!("{base}/stream?channel=m:a"))).await;
    assert_eq!(ndjson.next_json().await.unwrap()["type"], "open");
    let parked = tokio::spawn(http.get(format!("{base}/poll?channel=m:idle&timeout=25")).send());
    let mut pusher = WsClient::connect(&format!("{ws}/app/pk?protocol=7")).await;
    assert_eq!(pusher_event(&mut pusher).await["event"], "pusher:connection_established");
    pusher.send_text(r#"{"event":"pusher:subscribe","data":{"channel":"a"}}"#).await;
    assert_eq!(pusher_event(&mut pusher).await["event"], "pusher_internal:subscription_succeeded");
    // A poll answered at once is a request, not a connection: its cursor is for later.
    let first = http.get(format!("{base}/poll?channel=m:a&timeout=0")).send().await.unwrap();
    assert_eq!(first.status(), 204);
    let cursor = first.headers()["herald-cursor"].to_str().unwrap().to_string();

    // The parked poll is in (its request is sent by a task of its own).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while scrape(&http, &base).await.get("herald_connections{transport=\"poll\"}") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the long-poll never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Refusals: a ninth connection from this address, and a bad token.
    let ninth = http.get(format!("{base}/sse?channel=m:a")).send().await.unwrap();
    assert_eq!(ninth.status(), 429);
    let bad_token = http.get(format!("{base}/sse?channel=m:a&token=not.a.token")).send().await.unwrap();
    assert_eq!(bad_token.status(), 401);

    let before = scrape(&http, &base).await;
    for (transport, open) in [
        ("websocket", 3.0),
        ("sse", 2.0),
        ("ndjson", 1.0),
        ("poll", 1.0),
        ("pusher_websocket", 1.0),
        ("pusher_http", 0.0),
    ] {
        assert_eq!(before.get(&format!("herald_connections{{transport=\"{transport}\"}}")), open, "{transport}");
    }
    assert_eq!(before.get("herald_channels"), 2.0, "m:a and m:idle");
    assert_eq!(before.get("herald_subscriptions"), 8.0);
    assert_eq!(before.get("herald_refused_total{code=\"too_many_connections_from_ip\"}"), 1.0);
    assert_eq!(before.get("herald_token_failures_total{reason=\"invalid_token\"}"), 1.0);
    assert_eq!(before.get("herald_deliveries_total{transport=\"websocket\"}"), 0.0);

    // Publications: 5 through the API, 2 from a WebSocket client.
    for n in 0..5 {
        let response = http
            .post(format!("{base}/api/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({"channel": "m:a", "data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
    for n in 5..7 {
        let reply = sockets[0].command(json!({"op": "publish", "channel": "m:a", "data": {"n": n}})).await;
        assert!(reply.get("error").is_none(), "{reply}");
    }
    // Every subscriber takes all seven before the scrape.
    for client in &mut sockets {
        for _ in 0..7 {
            client.next_push().await;
        }
    }
    for stream in &mut sse {
        for _ in 0..7 {
            stream.next_data_event().await.unwrap();
        }
    }
    for _ in 0..7 {
        assert!(ndjson.next_json().await.unwrap().get("offset").is_some());
    }
    let mut pusher_seen = 0;
    while pusher_seen < 7 {
        if pusher_event(&mut pusher).await["event"] == "herald:publication" {
            pusher_seen += 1;
        }
    }
    let polled = http.get(format!("{base}/poll?channel=m:a&timeout=0&since={cursor}")).send().await.unwrap();
    let polled: Value = polled.json().await.unwrap();
    assert_eq!(polled["messages"].as_array().map(Vec::len), Some(7), "{polled}");
    // One WebSocket client leaves.
    sockets.pop().unwrap().stream.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let after = scrape(&http, &base).await;
    let text = &after.1;
    assert_eq!(after.get("herald_publications_total{via=\"api\"}"), 5.0, "{text}");
    assert_eq!(after.get("herald_publications_total{via=\"websocket\"}"), 2.0, "{text}");
    for (transport, delivered) in
        [("websocket", 21.0), ("sse", 14.0), ("ndjson", 7.0), ("poll", 7.0), ("pusher_websocket", 7.0)]
    {
        let series = format!("herald_deliveries_total{{transport=\"{transport}\"}}");
        assert_eq!(after.get(&series), delivered, "{series}\n{text}");
    }
    // One latency observation per write batch: at least one, at most one per delivery.
    let observed = after.get("herald_delivery_latency_seconds_count");
    assert!((1.0..=56.0).contains(&observed), "{observed}\n{text}");
    assert!(after.get("herald_delivery_latency_seconds_bucket{le=\"+Inf\"}") == observed);
    assert_eq!(after.get("herald_disconnects_total{reason=\"peer_closed\",transport=\"websocket\"}"), 1.0, "{text}");
    assert_eq!(after.get("herald_connections{transport=\"websocket\"}"), 2.0);
    // The engine's publish calls: one per publish here (none was batched with another, or some
    // were), none failed.
    let publish_calls = after.get("herald_backend_call_seconds_count{component=\"engine\",op=\"publish\"}");
    assert!((1.0..=7.0).contains(&publish_calls), "{publish_calls}\n{text}");
    assert!(!text.contains("herald_backend_errors_total"), "{text}");
    // Webhooks: the head delivery tried once and failed, seven pending behind the retry.
    assert_eq!(after.get("herald_webhook_attempts_total{outcome=\"failed\"}"), 1.0, "{text}");
    assert_eq!(after.get("herald_webhook_outbox_pending"), 7.0, "{text}");
    assert_eq!(after.get("herald_webhook_event_queue"), 0.0);
    // No label carries a channel, a user or an address.
    for forbidden in ["m:a", "m:idle", "127.0.0.1", API_KEY] {
        assert!(!text.contains(forbidden), "{forbidden} in\n{text}");
    }
    parked.abort();
    // The scrape, for `--nocapture`.
    println!("{text}");
}
