//! Several Herald nodes on one Redis (or one NATS) behave as one server: one ordering, one
//! history, one presence; and they ride out the engine going away. Needs
//! `HERALD_TEST_REDIS_URL` / `HERALD_TEST_NATS_URL` (`.ci/run` sets them); the fault tests start
//! their own `redis-server` / `nats-server` on another loopback port.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestServer, WsClient};

fn redis_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is unset (.ci/run sets it)");
    }
    url
}

fn nats_url() -> Option<String> {
    let url = std::env::var("HERALD_TEST_NATS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: HERALD_TEST_NATS_URL is unset (.ci/run sets it)");
    }
    url
}

/// The engine part of a node's configuration.
fn redis_engine(url: &str) -> String {
    format!("engine = \"redis\"\n[redis]\nurls = [\"{url}\"]\n")
}

fn nats_engine(url: &str) -> String {
    format!("engine = \"nats\"\n[nats]\nurl = \"{url}\"\n")
}

async fn node(engine: &str) -> TestServer {
    TestServer::with_config(&format!("{engine}[namespaces.room]\npresence = true\njoin_leave = true\n")).await
}

async fn wait_ready(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = server.get_json("/readyz").await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "node never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh channel name: runs share the machine's Redis.
fn channel(namespace: &str) -> String {
    format!("{namespace}:c{:x}", fastrand::u64(..))
}

/// Reads publications until `count` arrived; returns their offsets.
async fn read_offsets(client: &mut WsClient, count: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let push = client.next_push().await;
        if let Some(offset) = push.get("offset").and_then(Value::as_u64) {
            offsets.push(offset);
        }
    }
    offsets
}

/// A node on a cluster engine keeps history in the engine: it opens no storage of its own (only
/// the per-node webhook outbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_cluster_engine_opens_no_history_storage() {
    let engines: Vec<String> =
        redis_url().map(|url| redis_engine(&url)).into_iter().chain(nats_url().map(|url| nats_engine(&url))).collect();
    for engine in engines {
        let server = node(&engine).await;
        wait_ready(&server).await;
        let files: Vec<String> = std::fs::read_dir(server.data_dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!files.iter().any(|file| file.starts_with("herald.db")), "{engine}: {files:?}");
        assert!(files.iter().any(|file| file == "webhooks.db"), "{engine}: {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_redis_are_one_server() {
    let Some(url) = redis_url() else { return };
    three_nodes_are_one_server(&redis_engine(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_nats_are_one_server() {
    let Some(url) = nats_url() else { return };
    three_nodes_are_one_server(&nats_engine(&url)).await;
}

async fn three_nodes_are_one_server(engine: &str) {
    let nodes = [node(engine).await, node(engine).await, node(engine).await];
    for node in &nodes {
        wait_ready(node).await;
    }
    let room = channel("room");
    let mut subscribers = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let mut client = node.client().await;
            client.subscribe(&room).await;
            subscribers.push(client);
        }
    }

    // Publishers on all three nodes at once.
    let per_node = 40;
    let urls = nodes.iter().map(|node| node.url("/api/publish")).collect();
    let assigned = publish_from_each(nodes[0].http(), urls, &room, per_node).await;
    let total = 3 * per_node as u64;
    assert_eq!(assigned, (1..=total).collect(), "one gap-free sequence across the nodes");
    for subscriber in &mut subscribers {
        assert_eq!(
            read_offsets(subscriber, total as usize).await,
            (1..=total).collect::<Vec<_>>(),
            "each once, in order"
        );
    }

    // One presence, whichever node is asked.
    for node in &nodes {
        let (status, presence) = node.get_json(&format!("/api/channels/{room}/presence")).await;
        assert_eq!(status, 200, "{presence}");
        assert_eq!(presence["clients"].as_array().unwrap().len(), 6, "{presence}");
    }
    // A join on one node is pushed by all.
    let mut late = nodes[2].client().await;
    late.subscribe(&room).await;
    let joined = late.command(json!({"op": "connect"})).await["result"]["client"].as_str().unwrap().to_string();
    for subscriber in &mut subscribers {
        loop {
            let push = subscriber.next_push().await;
            if push["join"]["client"] == joined.as_str() {
                break;
            }
        }
    }

    // Recovery on another node than the one left.
    let mut leaving = nodes[0].client().await;
    let position = leaving.subscribe(&room).await["position"].clone();
    drop(leaving);
    for n in 0..5 {
        nodes[1].publish(&room, json!({"after": n})).await;
    }
    let mut back = nodes[2].client().await;
    let reply = back.command(json!({"op": "subscribe", "channel": room, "since": position})).await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let from = position["offset"].as_u64().unwrap();
    assert_eq!(read_offsets(&mut back, 5).await, (from + 1..=from + 5).collect::<Vec<_>>());
}

/// A broker of the test's own (`redis-server` with an append-only file, or `nats-server` with
/// JetStream), on a free loopback port, storing in a temporary directory; stopped and started
/// again at will, killed when dropped.
struct OwnService {
    program: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    process: Option<Child>,
}

impl OwnService {
    fn start_redis() -> Option<Self> {
        Self::start("redis-server")
    }

    fn start_nats() -> Option<Self> {
        Self::start("nats-server")
    }

    fn start(program: &'static str) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut service = Self { program, port, dir: tempfile::tempdir().ok()?, process: None };
        service.up().then_some(service)
    }

    fn url(&self) -> String {
        match self.program {
            "redis-server" => format!("redis://127.0.0.1:{}/", self.port),
            _ => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    fn up(&mut self) -> bool {
        let mut command = Command::new(self.program);
        let port = self.port.to_string();
        match self.program {
            "redis-server" => command.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""]).args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ]),
            _ => command.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"]),
        };
        let started = command.arg(self.dir.path()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        let Ok(process) = started else {
            eprintln!("skipped: {} is not installed", self.program);
            return false;
        };
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not start", self.program);
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// `redis-cli` against this Redis.
    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    }
}

impl Drop for OwnService {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_out_redis_dropping_connections_and_restarting() {
    if redis_url().is_none() {
        return;
    }
    let Some(mut redis) = OwnService::start_redis() else { return };
    let (nodes, room, mut subscribers) = two_nodes_subscribed(&redis_engine(&redis.url())).await;
    let mut acknowledged = Vec::new();
    let mut publish = async |node: &TestServer, n: u64| publish_recording(node, &room, n, &mut acknowledged).await;
    // Cut the nodes' Pub/Sub connections before anything was delivered on the channel: what is
    // published while they reconnect still reaches every subscriber.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for n in 0..20 {
        publish(&nodes[n as usize % 2], n).await;
    }
    // Every connection of the nodes cut at once (once both have their Pub/Sub back).
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]).lines().count() < 2 {
        assert!(Instant::now() < deadline, "the nodes never resubscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim().parse::<u32>().unwrap_or(0) >= 1);
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    for n in 20..40 {
        publish(&nodes[n as usize % 2], n).await;
    }
    // Redis itself goes away, and comes back with its data (append-only file).
    redis.kill();
    for n in 40..45 {
        publish(&nodes[n as usize % 2], n).await;
    }
    let (status, _) = nodes[0].get_json("/readyz").await;
    assert_eq!(status, 503, "not ready without Redis");
    assert!(redis.up());
    for node in &nodes {
        wait_ready(node).await;
    }
    for n in 45..60 {
        publish(&nodes[n as usize % 2], n).await;
    }
    assert!(acknowledged.len() >= 50, "publishing resumed: {}", acknowledged.len());
    assert_full_sequence(&mut subscribers, &acknowledged).await;
    let expected_len = *acknowledged.iter().max().unwrap();

    // Redis loses everything: subscribers are told to come back, and hear recovery is impossible.
    redis.cli(&["FLUSHALL"]);
    nodes[0].publish(&room, json!("after the flush")).await;
    for subscriber in &mut subscribers {
        let (pushes, close) = subscriber.read_until_close().await;
        assert_eq!(close.map(|(code, _)| code), Some(4001), "{pushes:?}");
        let position = pushes.last().unwrap()["disconnect"]["positions"][&room].clone();
        assert_eq!(position["offset"], expected_len);
        let mut again = nodes[1].client().await;
        let reply = again.command(json!({"op": "subscribe", "channel": room, "since": position})).await;
        assert_eq!(reply["result"]["recovered"], false, "{reply}");
        assert_eq!(reply["result"]["position"]["offset"], 1, "the new epoch's history: {reply}");
    }
}

/// Two Redis servers as shards: channels spread over both, each channel whole on one, and the
/// nodes agree on which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_spread_over_redis_shards() {
    if redis_url().is_none() {
        return;
    }
    let (Some(first), Some(second)) = (OwnService::start_redis(), OwnService::start_redis()) else { return };
    let urls = format!("[\"{}\", \"{}\"]", first.url(), second.url());
    let config = format!("engine = \"redis\"\n[redis]\nurls = {urls}\n");
    let nodes = [TestServer::with_config(&config).await, TestServer::with_config(&config).await];
    for node in &nodes {
        wait_ready(node).await;
    }
    let channels: Vec<String> = (0..8).map(|n| format!("shard:{n}-{:x}", fastrand::u32(..))).collect();
    let mut clients = Vec::new();
    for node in &nodes {
        let mut client = node.client().await;
        for channel in &channels {
            client.subscribe(channel).await;
        }
        clients.push(client);
    }
    for round in 0..10 {
        for (index, channel) in channels.iter().enumerate() {
            nodes[(round + index) % 2].publish(channel, json!(round)).await;
        }
    }
    for client in &mut clients {
        let mut per_channel: std::collections::HashMap<String, Vec<u64>> = Default::default();
        while per_channel.values().map(Vec::len).sum::<usize>() < 80 {
            let push = client.next_push().await;
            if let Some(offset) = push["offset"].as_u64() {
                per_channel.entry(push["channel"].as_str().unwrap().to_string()).or_default().push(offset);
            }
        }
        for channel in &channels {
            assert_eq!(per_channel[channel], (1..=10).collect::<Vec<_>>(), "{channel}");
        }
    }
    // The server's own control channel (followed by every node) is not one of the test's.
    let count = |redis: &OwnService| {
        redis.cli(&["--scan", "--pattern", "herald:*:meta"]).lines().filter(|key| !key.contains("#herald")).count()
    };
    let (on_first, on_second) = (count(&first), count(&second));
    assert_eq!(on_first + on_second, 8, "each channel on exactly one shard");
    assert!(on_first > 0 && on_second > 0, "both shards used: {on_first} + {on_second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_out_a_nats_restart() {
    if nats_url().is_none() {
        return;
    }
    let Some(mut nats) = OwnService::start_nats() else { return };
    let (nodes, room, mut subscribers) = two_nodes_subscribed(&nats_engine(&nats.url())).await;
    let mut acknowledged = Vec::new();
    let mut publish = async |node: &TestServer, n: u64| publish_recording(node, &room, n, &mut acknowledged).await;
    for n in 0..20 {
        publish(&nodes[n as usize % 2], n).await;
    }
    nats.kill();
    for n in 20..25 {
        publish(&nodes[n as usize % 2], n).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[0].get_json("/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "still ready without NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nats.up());
    for node in &nodes {
        wait_ready(node).await;
    }
    for n in 25..40 {
        publish(&nodes[n as usize % 2], n).await;
    }
    assert!(acknowledged.len() >= 35, "publishing resumed: {}", acknowledged.len());
    assert_full_sequence(&mut subscribers, &acknowledged).await;
}

/// Two nodes on `engine`, ready, and a subscriber on each to a fresh channel.
async fn two_nodes_subscribed(engine: &str) -> ([TestServer; 2], String, Vec<WsClient>) {
    let nodes = [node(engine).await, node(engine).await];
    for node in &nodes {
        wait_ready(node).await;
    }
    let room = channel("room");
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut client = node.client().await;
        client.subscribe(&room).await;
        subscribers.push(client);
    }
    (nodes, room, subscribers)
}

/// Publishes `n` to `room` through `node`: an acknowledged offset is recorded; a refusal must be
/// the clear `engine_unavailable`.
async fn publish_recording(node: &TestServer, room: &str, n: u64, acknowledged: &mut Vec<u64>) {
    let response =
        node.http().post(node.url("/api/publish")).json(&json!({"channel": room, "data": n})).send().await.unwrap();
    if response.status() == 200 {
        acknowledged.push(response.json::<Value>().await.unwrap()["offset"].as_u64().unwrap());
    } else {
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "engine_unavailable", "a clear error: {body}");
    }
}

/// Every subscriber gets one gap-free sequence, in order, holding every acknowledged publish. (A
/// publish refused while the engine was away may still have been stored, as its error says: it
/// is then in the sequence too, never a hole in it.)
async fn assert_full_sequence(subscribers: &mut [WsClient], acknowledged: &[u64]) {
    let top = *acknowledged.iter().max().unwrap();
    let expected: Vec<u64> = (1..=top).collect();
    let unique: BTreeSet<u64> = acknowledged.iter().copied().collect();
    assert_eq!(unique.len(), acknowledged.len(), "no offset acknowledged twice");
    for subscriber in subscribers {
        let delivered = read_offsets(subscriber, expected.len()).await;
        assert_eq!(delivered, expected, "the full sequence, in order");
    }
}

/// Webhooks across a cluster: endpoints declared in every node's configuration, events
/// recorded by the node where they happen, so each publication is delivered once, not once per
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_each_webhook_event_once() {
    let Some(url) = redis_url() else { return };
    let receiver = crate::webhooks::Receiver::start().await;
    let room = channel("hooked");
    let config = format!(
        "{}[[webhooks]]\nurl = \"{}\"\nchannels = [\"hooked:*\"]\nevents = [\"publication\"]\n\
         secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        redis_engine(&url),
        receiver.url()
    );
    let nodes = [TestServer::with_config(&config).await, TestServer::with_config(&config).await];
    for node in &nodes {
        wait_ready(node).await;
    }
    for n in 0..20u64 {
        nodes[(n % 2) as usize].publish(&room, json!(n)).await;
    }
    let calls = receiver
        .wait_for("20 publications", Duration::from_secs(20), |calls| {
            calls.iter().filter(|call| call.status == 200).count() >= 20
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let offsets: BTreeSet<u64> =
        receiver.calls().iter().map(|call| call.json()["data"]["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=20).collect(), "every publication");
    assert_eq!(receiver.calls().len(), 20, "each once, whichever node took it: {}", calls.len());
}

/// A `herald serve` process (the binary, as a user runs it), killed when dropped.
struct Process {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, config).unwrap();
        let (child, address) = crate::helpers::spawn_herald(dir.path(), &path);
        Self { child, address, _dir: dir }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same as `three_nodes_on_redis_are_one_server`, with three `herald` processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_herald_processes_on_redis_are_one_server() {
    let Some(url) = redis_url() else { return };
    let processes: Vec<Process> = (0..3).map(|_| Process::start(&redis_engine(&url))).collect();
    let http = crate::helpers::http_client();
    for process in &processes {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("http://{}/readyz", process.address)).send().await.map(|r| r.status()).ok()
            != Some(reqwest::StatusCode::OK)
        {
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let room = channel("room");
    let mut subscribers = Vec::new();
    for process in &processes {
        let mut client = WsClient::connect(&format!("ws://{}/ws", process.address)).await;
        client.subscribe(&room).await;
        subscribers.push(client);
    }
    let urls = processes.iter().map(|process| format!("http://{}/api/publish", process.address)).collect();
    let assigned = publish_from_each(&http, urls, &room, 30).await;
    assert_eq!(assigned, (1..=90).collect(), "one gap-free sequence across the processes");
    for subscriber in &mut subscribers {
        assert_eq!(read_offsets(subscriber, 90).await, (1..=90).collect::<Vec<_>>());
    }
}

/// Publishes `count` times to `room` through each of `urls` at once; the offsets assigned.
async fn publish_from_each(http: &reqwest::Client, urls: Vec<String>, room: &str, count: usize) -> BTreeSet<u64> {
    let publishers: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let (http, room) = (http.clone(), room.to_string());
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for n in 0..count {
                    let reply: Value = http
                        .post(&url)
                        .json(&json!({"channel": room, "data": n}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    offsets.push(reply["offset"].as_u64().expect("published"));
                }
                offsets
            })
        })
        .collect();
    let mut assigned = BTreeSet::new();
    for publisher in publishers {
        assigned.extend(publisher.await.unwrap());
    }
    assigned
}
