//! Webhooks against a real receiver (an HTTP server in the test) that fails, goes away, answers
//! slowly and comes back; signatures checked by the `standardwebhooks` package from PyPI;
//! the management API; a `kill -9` with a thousand deliveries pending.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{TestServer, WsClient};

/// One call as the receiver got it.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// What the receiver answered.
    pub status: u16,
}

impl Call {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// How the receiver answers the next calls.
#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    Answer(u16),
    /// Answers 200 after this long: longer than the sender's timeout (recorded as status 0).
    Slow(Duration),
}

/// An HTTP server recording every call; it can be stopped (connections refused) and started
/// again on the same port.
pub struct Receiver {
    pub port: u16,
    pub calls: Arc<Mutex<Vec<Call>>>,
    behavior: Arc<Mutex<Vec<Behavior>>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let mut receiver = Self {
            port: 0,
            calls: Arc::default(),
            behavior: Arc::new(Mutex::new(vec![Behavior::Answer(200)])),
            server: None,
        };
        receiver.up().await;
        receiver
    }

    /// A receiver that is not listening yet, on a port kept for it.
    pub async fn down() -> Self {
        let mut receiver = Self::start().await;
        receiver.stop();
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answers the next calls with `script` in turn (the last one repeats).
    pub fn behave(&self, script: Vec<Behavior>) {
        *self.behavior.lock().unwrap() = script;
    }

    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort(); // its connections go with it
        }
    }

    pub async fn up(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(([127, 0, 0, 1], self.port).into()).unwrap();
        let listener = socket.listen(1024).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (calls, behavior) = (self.calls.clone(), self.behavior.clone());
        self.server = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (calls, behavior) = (calls.clone(), behavior.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (calls, behavior) = (calls.clone(), behavior.clone());
                        async move {
                            let header = |name: &str| {
                                request.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
                            };
                            // Standard Webhooks' signature, or a Pusher app's.
                            let signature = [header("webhook-signature"), header("x-pusher-signature")].concat();
                            let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let next = {
                                let mut script = behavior.lock().unwrap();
                                if script.len() > 1 { script.remove(0) } else { script[0] }
                            };
                            // Recorded on arrival, so the order of calls is the order they came in.
                            let body = String::from_utf8(body.to_vec()).unwrap();
                            let recorded = match next {
                                Behavior::Answer(status) => status,
                                Behavior::Slow(_) => 0, // the sender gives up first
                            };
                            calls.lock().unwrap().push(Call { id, timestamp, signature, body, status: recorded });
                            if let Behavior::Slow(delay) = next {
                                tokio::time::sleep(delay).await;
                            }
                            let status = recorded.max(200);
                            let response = hyper::Response::builder().status(status).body(String::new()).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the calls so far.
    pub async fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; {} calls so far", calls.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The distinct publications answered 2xx, as (channel, offset).
fn delivered_publications(calls: &[Call]) -> std::collections::BTreeSet<(String, u64)> {
    calls
        .iter()
        .filter(|call| (200..300).contains(&call.status))
        .map(|call| call.json())
        .filter(|body| body["type"] == "publication")
        .map(|body| (body["data"]["channel"].as_str().unwrap().to_string(), body["data"]["offset"].as_u64().unwrap()))
        .collect()
}

/// Verifies every call's signature with the PyPI `standardwebhooks` package.
async fn verify_with_standardwebhooks(calls: &[Call], secret: &str) {
    let Ok(python) = std::env::var("HERALD_TEST_PYTHON") else {
        eprintln!("skipped the standardwebhooks check: HERALD_TEST_PYTHON is unset (scripts/test sets it up)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.json");
    let calls: Vec<Value> = calls
        .iter()
        .map(|call| json!({"id": call.id, "timestamp": call.timestamp, "signature": call.signature, "body": call.body}))
        .collect();
    std::fs::write(&path, serde_json::to_string(&calls).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/verify_webhooks.py");
    let output = tokio::process::Command::new(python).arg(script).arg(&path).arg(secret).output().await.unwrap();
    assert!(output.status.success(), "standardwebhooks refused a call: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), calls.len().to_string());
}

async fn register(server: &TestServer, body: Value) -> Value {
    let response = server.http().post(server.url("/api/webhooks")).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let endpoint: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{endpoint}");
    endpoint
}

/// A schedule that keeps retrying about every 200 ms for a minute: the tests' receivers come
/// back within that.
const FAST_RETRIES: &str = "[webhook_delivery]\ntimeout = \"500ms\"\nretry_schedule = [\"0s\", \"50ms\", \"100ms\", \
    \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \
    \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \
    \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \
    \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \
    \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_and_in_order_through_failures_downtime_and_slowness() {
    let server = TestServer::with_config(FAST_RETRIES).await;
    let mut receiver = Receiver::start().await;
    let endpoint =
        register(&server, json!({"url": receiver.url(), "channels": ["orders:*"], "events": ["publication"]})).await;
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));

    // 500s first, then two answers slower than the timeout, then fine.
    let mut script = vec![Behavior::Answer(500); 5];
    script.extend([Behavior::Slow(Duration::from_millis(800)), Behavior::Slow(Duration::from_millis(800))]);
    script.push(Behavior::Answer(200));
    receiver.behave(script);
    let channels = ["orders:a", "orders:b", "orders:c"];
    for round in 0..20 {
        for channel in channels {
            server.publish(channel, json!({"round": round})).await;
        }
        server.publish("other:x", json!("not for this endpoint")).await;
    }
    // Down for a while in the middle, publishing on.
    receiver.stop();
    for round in 20..40 {
        for channel in channels {
            server.publish(channel, json!({"round": round})).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    receiver.up().await;
    // Concurrent publishers on one channel while deliveries flow: still in offset order.
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (server.http().clone(), server.url("/api/publish"));
            tokio::spawn(async move {
                for n in 0..25 {
                    let body = json!({"channel": "orders:d", "data": n});
                    assert_eq!(http.post(&url).json(&body).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }

    let calls = receiver
        .wait_for("220 publications", Duration::from_secs(60), |calls| delivered_publications(calls).len() == 220)
        .await;
    let delivered = delivered_publications(&calls);
    for (channel, count) in [("orders:a", 40), ("orders:b", 40), ("orders:c", 40), ("orders:d", 100)] {
        let offsets: Vec<u64> = delivered.iter().filter(|(c, _)| c == channel).map(|(_, offset)| *offset).collect();
        assert_eq!(offsets, (1..=count).collect::<Vec<_>>(), "{channel}: every publication, once at least");
    }
    // In order per channel: retries repeat the head, never anything after it.
    let mut per_channel: HashMap<String, Vec<u64>> = HashMap::new();
    let mut bodies: HashMap<String, String> = HashMap::new();
    for call in &calls {
        let body = call.json();
        assert_eq!(body["type"], "publication");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
        assert_ne!(body["data"]["channel"], "other:x");
        per_channel
            .entry(body["data"]["channel"].as_str().unwrap().to_string())
            .or_default()
            .push(body["data"]["offset"].as_u64().unwrap());
        // A webhook-id is stable across retries and always names the same body.
        let previous = bodies.entry(call.id.clone()).or_insert_with(|| call.body.clone());
        assert_eq!(previous, &call.body, "{}", call.id);
    }
    for (channel, offsets) in &per_channel {
        assert!(offsets.windows(2).all(|pair| pair[0] <= pair[1]), "{channel} out of order: {offsets:?}");
    }
    assert!(calls.iter().any(|call| call.status == 500), "the failures happened");
    assert!(calls.len() > 220, "and were retried");
    verify_with_standardwebhooks(&calls, &secret).await;

    // The log says what happened.
    let id = endpoint["id"].as_str().unwrap();
    let (status, log) = server.get_json(&format!("/api/webhooks/{id}/deliveries?limit=1000")).await;
    assert_eq!(status, 200, "{log}");
    let deliveries = log["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 220);
    assert!(deliveries.iter().all(|delivery| delivery["state"] == "delivered"), "{log}");
    assert!(deliveries.iter().any(|delivery| delivery["attempts"].as_u64().unwrap() > 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_pauses_rotates_disables_replays_and_deletes() {
    let server = TestServer::with_config(
        "[webhook_delivery]\ntimeout = \"1s\"\nretry_schedule = [\"0s\", \"50ms\", \"50ms\"]\n\
         [namespaces.room]\npresence = true\njoin_leave = true\n[presence]\ngrace_period = \"0s\"\n",
    )
    .await;
    let receiver = Receiver::start().await;
    let endpoint = register(
        &server,
        json!({"url": receiver.url(), "channels": ["room:*"], "events": ["publication", "channel.occupied",
               "channel.vacated", "presence.join", "presence.leave"], "description": "all room events"}),
    )
    .await;
    let id = endpoint["id"].as_str().unwrap().to_string();
    let (_, list) = server.get_json("/api/webhooks").await;
    assert_eq!(list["webhooks"][0]["id"], id.as_str());
    assert!(list["webhooks"][0].get("secret").is_none(), "the list shows no secrets");
    let (_, shown) = server.get_json(&format!("/api/webhooks/{id}")).await;
    assert_eq!(shown["secret"], endpoint["secret"]);

    // Channel lifecycle and presence: occupied, join, leave, vacated, in that order.
    let mut client = WsClient::connect(&server.ws_url()).await;
    client.subscribe("room:1").await;
    client.command(json!({"op": "unsubscribe", "channel": "room:1"})).await;
    let calls = receiver.wait_for("four channel events", Duration::from_secs(20), |calls| calls.len() >= 4).await;
    let types: Vec<String> = calls.iter().map(|call| call.json()["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["channel.occupied", "presence.join", "presence.leave", "channel.vacated"]);
    assert_eq!(calls[0].json()["data"], json!({"channel": "room:1"}));
    assert_eq!(calls[1].json()["data"]["channel"], "room:1");
    assert_eq!(calls[1].json()["data"]["client"].as_str().unwrap().len(), 22);

    // Paused: events wait in the outbox, and go out on resume.
    let patch = |body: Value| {
        let (http, url) = (server.http().clone(), server.url(&format!("/api/webhooks/{id}")));
        async move {
            let response = http.patch(url).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, paused) = patch(json!({"paused": true})).await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)), "{paused}");
    server.publish("room:1", json!("while paused")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.calls().len(), 4, "nothing sent while paused");
    let (_, rotated) = patch(json!({"rotate_secret": true, "paused": false})).await;
    assert_ne!(rotated["secret"], endpoint["secret"]);
    assert!(rotated["previous_secret_valid_until"].as_u64().is_some(), "{rotated}");
    let calls = receiver.wait_for("the paused publication", Duration::from_secs(20), |calls| calls.len() >= 5).await;
    assert_eq!(calls[4].json()["data"]["data"], "while paused");
    assert_eq!(calls[4].signature.split(' ').count(), 2, "old and new secret both sign during the grace");
    verify_with_standardwebhooks(&calls[4..5], rotated["secret"].as_str().unwrap()).await;
    verify_with_standardwebhooks(&calls[4..5], endpoint["secret"].as_str().unwrap()).await;

    // Failing every attempt: dead after the schedule; a replay sends it again.
    receiver.behave(vec![Behavior::Answer(503)]);
    server.publish("room:1", json!("dies")).await;
    let dead_path = format!("/api/webhooks/{id}/deliveries?state=dead");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.get_json(&dead_path).await.1["deliveries"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "never dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, dead) = server.get_json(&dead_path).await;
    assert_eq!(dead["deliveries"][0]["attempts"], 3);
    assert_eq!(dead["deliveries"][0]["last_status"], 503);
    receiver.behave(vec![Behavior::Answer(200)]);
    let response = server.http().post(server.url(&format!("/api/webhooks/{id}/replay"))).send().await.unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["requeued"], 1);
    receiver
        .wait_for("the replayed delivery", Duration::from_secs(20), |calls| {
            calls.iter().any(|call| call.status == 200 && call.json()["data"]["data"] == "dies")
        })
        .await;

    // 410 Gone disables the endpoint.
    receiver.behave(vec![Behavior::Answer(410)]);
    server.publish("room:1", json!("gone")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, shown) = server.get_json(&format!("/api/webhooks/{id}")).await;
        if shown["active"] == false {
            assert!(shown["disabled_reason"].as_str().unwrap().contains("410"), "{shown}");
            break;
        }
        assert!(Instant::now() < deadline, "never disabled: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let response = server.http().delete(server.url(&format!("/api/webhooks/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let (status, body) = server.get_json(&format!("/api/webhooks/{id}")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("webhook_not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_get_clear_errors_and_internal_targets_are_refused() {
    const KEY: &str = "webhook-admin-key-0123456789";
    let server = TestServer::with_config(&format!(
        "[api]\nkeys = [\"{KEY}\"]\nread_only_keys = [\"reader-0123456789abcdef\"]\n"
    ))
    .await;
    let post = |body: String, key: &'static str| {
        let (http, url) = (server.http().clone(), server.url("/api/webhooks"));
        async move {
            let response = http
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null)["error"]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        }
    };
    // An address, not a name: this machine resolves no public names.
    let good = json!({"url": "https://93.184.216.34/hook", "channels": ["a:*"], "events": ["publication"]});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body.to_string()
    };
    for (body, expected) in [
        (with("url", json!("not a url")), (400, "invalid_url")),
        (with("url", json!("ftp://example.com/")), (400, "invalid_url")),
        (with("url", json!("http://127.0.0.1:9/hook")), (400, "webhook_target_not_allowed")),
        (with("url", json!("http://10.0.0.8/hook")), (400, "webhook_target_not_allowed")),
        (with("url", json!("http://169.254.169.254/latest")), (400, "webhook_target_not_allowed")),
        (with("url", json!("http://localhost:9/hook")), (400, "webhook_target_not_allowed")),
        (with("events", json!(["publication", "message.sent"])), (400, "invalid_events")),
        (with("events", json!([])), (400, "invalid_events")),
        (with("channels", json!(["a b"])), (400, "invalid_channels")),
        (with("channels", json!([])), (400, "invalid_channels")),
        (with("secret", json!("not-a-secret")), (400, "invalid_secret")),
        (with("description", json!("x".repeat(5000))), (400, "invalid_description")),
        (with("unknown", json!(1)), (400, "bad_request")),
        (json!({"url": "https://example.com/"}).to_string(), (400, "bad_request")),
        // Over the limit (192 KiB here) by less than the socket buffers hold, so the client finishes
        // sending and reads the answer rather than meeting a closed connection.
        (format!("{{\"url\":\"{}\"}}", "x".repeat(250_000)), (413, "payload_too_large")),
    ] {
        let (status, code) = post(body.clone(), KEY).await;
        assert_eq!((status, code.as_str()), expected, "{}", &body[..body.len().min(120)]);
    }
    let (status, code) = post(good.to_string(), "reader-0123456789abcdef").await;
    assert_eq!((status, code.as_str()), (403, "permission_denied"), "a read-only key manages no webhooks");
    let response = server.http().get(server.url("/api/webhooks/wh_nope")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_with_a_thousand_pending_deliveries_loses_none() {
    let mut receiver = Receiver::down().await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = data_dir.path().join("herald.toml");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nurl = \"{}\"\nchannels = [\"jobs:*\"]\nevents = [\"publication\"]\nsecret = \"{secret}\"\n\
             [webhook_delivery]\ntimeout = \"1s\"\nretry_schedule = [\"0s\", {}]\n",
            receiver.url(),
            vec!["\"500ms\""; 49].join(", ")
        ),
    )
    .unwrap();
    let start = || crate::helpers::spawn_herald(data_dir.path(), &config);
    let (mut first, address) = start();
    let http = crate::helpers::http_client();
    let publishes: Vec<_> = (0..1000)
        .map(|n| {
            let (http, url) = (http.clone(), format!("http://{address}/api/publish"));
            async move {
                let body = json!({"channel": format!("jobs:{}", n % 10), "data": {"n": n}});
                http.post(url).json(&body).send().await.unwrap().status().as_u16()
            }
        })
        .collect();
    let statuses = futures_util::future::join_all(publishes).await;
    assert!(statuses.iter().all(|status| *status == 200), "every publish acknowledged");
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    let (mut second, _) = start();
    receiver.up().await;
    let calls = receiver
        .wait_for("1000 deliveries after the restart", Duration::from_secs(90), |calls| {
            calls
                .iter()
                .filter(|call| call.status == 200)
                .map(|call| call.id.clone())
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= 1000
        })
        .await;
    let mut per_channel: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for call in &calls {
        let body = call.json();
        per_channel
            .entry(body["data"]["channel"].as_str().unwrap().into())
            .or_default()
            .push(body["data"]["offset"].as_u64().unwrap());
    }
    assert_eq!(per_channel.len(), 10);
    for (channel, mut offsets) in per_channel {
        assert!(offsets.windows(2).all(|pair| pair[0] <= pair[1]), "{channel} in order");
        offsets.dedup();
        assert_eq!(offsets, (1..=100).collect::<Vec<_>>(), "{channel}: all of them");
    }
    verify_with_standardwebhooks(&calls[..50.min(calls.len())], secret).await;
    second.kill().unwrap();
    second.wait().unwrap();
}

/// Endpoints of the configuration file are checked in form only when loaded; where they point
/// is checked at every delivery, so an internal target is never called, by address or by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_targets_are_refused_at_delivery_too() {
    const KEY: &str = "webhook-admin-key-0123456789";
    let receiver = Receiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let server = TestServer::with_config(&format!(
        "[api]\nkeys = [\"{KEY}\"]\n\
         [[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nchannels = [\"a\"]\nevents = [\"publication\"]\nsecret = \"{secret}\"\n\
         [[webhooks]]\nurl = \"http://localhost:{port}/hook\"\nchannels = [\"a\"]\nevents = [\"publication\"]\nsecret = \"{secret}\"\n\
         [webhook_delivery]\nretry_schedule = [\"0s\", \"50ms\"]\n",
        port = receiver.port
    ))
    .await;
    server.publish_with_key("a", json!(1), KEY).await.unwrap();
    let list: Value =
        server.http().get(server.url("/api/webhooks")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    let ids: Vec<String> =
        list["webhooks"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = server.url(&format!("/api/webhooks/{id}/deliveries?state=dead"));
            let log: Value = server.http().get(url).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
            if let Some(dead) = log["deliveries"].as_array().unwrap().first() {
                let error = dead["last_error"].as_str().unwrap();
                assert!(error.contains("webhooks may") || error.contains("internal"), "{error}");
                break;
            }
            assert!(Instant::now() < deadline, "never refused: {log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(receiver.calls().is_empty(), "the receiver was never called");
}

/// A redirect is not followed (it is a failure), and an endpoint failing every attempt for
/// `disable_after` is disabled, with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_failures_and_an_endpoint_failing_too_long_is_disabled() {
    let server = TestServer::with_config(
        "[webhook_delivery]\ndisable_after = \"1s\"\nretry_schedule = [\"0s\", \"200ms\", \"200ms\", \"200ms\", \
         \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]\n",
    )
    .await;
    let receiver = Receiver::start().await;
    receiver.behave(vec![Behavior::Answer(302)]);
    let endpoint =
        register(&server, json!({"url": receiver.url(), "channels": ["a"], "events": ["publication"]})).await;
    let id = endpoint["id"].as_str().unwrap();
    server.publish("a", json!("moved?")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let (_, shown) = server.get_json(&format!("/api/webhooks/{id}")).await;
        if shown["active"] == false {
            break shown;
        }
        assert!(Instant::now() < deadline, "never disabled: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(shown["disabled_reason"].as_str().unwrap().contains("every attempt failed"), "{shown}");
    assert!(shown["failing_since"].as_u64().is_some());
    let calls = receiver.calls();
    assert!(calls.len() >= 2 && calls.iter().all(|call| call.status == 302), "{} calls", calls.len());
    let (_, log) = server.get_json(&format!("/api/webhooks/{id}/deliveries")).await;
    let delivery = &log["deliveries"][0];
    assert_eq!((delivery["state"].as_str(), delivery["last_status"].as_u64()), (Some("pending"), Some(302)), "{log}");

    // Re-enabled, it delivers what waited.
    receiver.behave(vec![Behavior::Answer(200)]);
    let response = server
        .http()
        .patch(server.url(&format!("/api/webhooks/{id}")))
        .json(&json!({"paused": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["active"], true);
    receiver
        .wait_for("the delivery after re-enabling", Duration::from_secs(20), |calls| {
            calls.iter().any(|c| c.status == 200)
        })
        .await;
}
