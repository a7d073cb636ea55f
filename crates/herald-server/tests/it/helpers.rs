//! Shared test helpers: a server on port 0, a small WebSocket client, HTTP shortcuts.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_server::config::{Overrides, Settings};
use herald_server::server::{self, RunningServer};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Long enough for a loaded 2-core machine, short enough that a hang fails fast.
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts the `herald` binary as a user runs it (`serve` on a free loopback port with this
/// data directory and config file); returns the process and the address it printed.
pub fn spawn_herald(data_dir: &std::path::Path, config: &std::path::Path) -> (std::process::Child, String) {
    spawn_herald_on("127.0.0.1:0", data_dir, config)
}

/// [`spawn_herald`] on a given address (a restart on the same port, for clients that reconnect).
pub fn spawn_herald_on(
    listen: &str,
    data_dir: &std::path::Path,
    config: &std::path::Path,
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .env_remove("HERALD_LISTEN")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // Keep reading in the background so the pipe stays open.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    assert!(line.contains("listening on http://"), "herald did not start: {line:?}");
    let address = line.trim().rsplit("http://").next().unwrap().to_string();
    (child, address)
}

/// A child process that is killed when the test ends, passing or failing.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// `kill -9` now, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `herald` binary on a port of its own with a durable `orders` namespace, to be killed
/// (`kill -9`) and restarted on the same port and data directory: what reconnecting clients see.
pub struct DurableHerald {
    dir: tempfile::TempDir,
    listen: String,
    process: KillOnDrop,
    http: reqwest::Client,
}

impl DurableHerald {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("herald.toml"), "[namespaces.orders]\ndurable = true\nhistory_size = 1000\n")
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let process = Self::spawn(dir.path(), &listen);
        Self { dir, listen, process, http: http_client() }
    }

    fn spawn(dir: &std::path::Path, listen: &str) -> KillOnDrop {
        KillOnDrop(spawn_herald_on(listen, &dir.join("data"), &dir.join("herald.toml")).0)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `kill -9` (no goodbye, no flush), then the same server again on the same port.
    pub fn kill_and_restart(&mut self) {
        self.process.kill();
        self.process = Self::spawn(self.dir.path(), &self.listen);
    }

    /// Publishes `{"n": n}` to `orders:1` through the server API.
    pub async fn publish(&self, n: u64) {
        let response = self
            .http
            .post(format!("{}/api/publish", self.url()))
            .json(&json!({"channel": "orders:1", "data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// An HTTP client for tests (with the TLS provider the workspace's reqwest needs chosen).
pub fn http_client() -> reqwest::Client {
    herald_server::install_crypto_provider();
    reqwest::Client::new()
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    running: Option<RunningServer>,
    data_dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config("").await
    }

    pub async fn with_config(toml: &str) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir.path().to_path_buf()),
            ..Default::default()
        };
        let settings = Settings::from_toml(toml, &overrides).expect("test config is valid");
        let running = server::start(settings).await.expect("server starts");
        Self { addr: running.local_addr(), running: Some(running), data_dir, http: http_client() }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.ws_url()).await
    }

    /// Publishes through the server API; returns the reply body.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let response = self
            .http
            .post(self.url("/api/publish"))
            .json(&json!({ "channel": channel, "data": data }))
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 200, "publish failed");
        response.json().await.expect("publish reply is JSON")
    }

    /// Publishes `data_json` exactly as written (key order, number spelling).
    pub async fn publish_raw(&self, channel: &str, data_json: &str) -> Value {
        let body = format!("{{\"channel\":{},\"data\":{data_json}}}", Value::from(channel));
        let response = self
            .http
            .post(self.url("/api/publish"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 200, "publish failed");
        response.json().await.expect("publish reply is JSON")
    }

    /// Publishes through the server API with an API key; the reply, or the status if refused.
    pub async fn publish_with_key(&self, channel: &str, data: Value, key: &str) -> Result<Value, u16> {
        let response = self
            .http
            .post(self.url("/api/publish"))
            .bearer_auth(key)
            .json(&json!({ "channel": channel, "data": data }))
            .send()
            .await
            .expect("publish request");
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        Ok(response.json().await.expect("publish reply is JSON"))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Subscriber count of `channel` per `GET /api/channels`.
    pub async fn subscriber_count(&self, channel: &str) -> u64 {
        let (_, body) = self.get_json("/api/channels").await;
        body["channels"]
            .as_array()
            .expect("channels array")
            .iter()
            .find(|entry| entry["channel"] == channel)
            .map_or(0, |entry| entry["subscribers"].as_u64().expect("count"))
    }

    /// Polls until `channel` has `count` subscribers, or fails after [`WAIT`].
    pub async fn wait_for_subscribers(&self, channel: &str, count: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.subscriber_count(channel).await;
            if now == count {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{channel} has {now} subscribers, expected {count}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }
}

/// A WebSocket client speaking Herald's JSON protocol, holding pushes that arrive while it
/// waits for a reply.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pushes: VecDeque<Value>,
}

/// What the server sent, as the client saw it.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Close(Option<(u16, String)>),
    Ended,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connects");
        Self { stream, next_id: 1, pushes: VecDeque::new() }
    }

    /// Connects from a chosen loopback source address (for per-IP limits).
    pub async fn connect_from(url: &str, source: [u8; 4]) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let address = url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
        let stream = MaybeTlsStream::Plain(socket.connect(address).await.expect("TCP connects"));
        let (stream, _) = tokio_tungstenite::client_async(url, stream).await.expect("WebSocket connects");
        Self { stream, next_id: 1, pushes: VecDeque::new() }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    /// Sends `command` with a fresh id; returns the reply with that id.
    pub async fn command(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = id.into();
        self.send_text(&command.to_string()).await;
        loop {
            match self.receive_raw().await {
                Received::Json(value) if value["id"] == id => return value,
                Received::Json(value) => self.pushes.push_back(value),
                other => panic!("connection ended while waiting for reply {id}: {other:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self.command(json!({ "op": "subscribe", "channel": channel })).await;
        assert!(reply.get("result").is_some(), "subscribe failed: {reply}");
        reply["result"].clone()
    }

    /// The next push (a message without `id`).
    pub async fn next_push(&mut self) -> Value {
        if let Some(push) = self.pushes.pop_front() {
            return push;
        }
        match self.receive_raw().await {
            Received::Json(value) => value,
            other => panic!("expected a push, got {other:?}"),
        }
    }

    /// The next frame from the server, within [`WAIT`].
    pub async fn receive_raw(&mut self) -> Received {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next()).await.expect("server answered in time");
            return match frame {
                Some(Ok(Message::Text(text))) => {
                    Received::Json(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    Received::Close(frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Err(error)) => {
                    eprintln!("client read error: {error}");
                    Received::Ended
                }
                None => Received::Ended,
            };
        }
    }

    /// The next frame if one arrives within 200 ms.
    pub async fn receive_raw_quick(&mut self) -> Option<Received> {
        match tokio::time::timeout(Duration::from_millis(200), self.stream.next()).await {
            Err(_) => None,
            Ok(Some(Ok(Message::Close(frame)))) => {
                Some(Received::Close(frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()))))
            }
            Ok(Some(Ok(Message::Text(text)))) => Some(Received::Json(serde_json::from_str(&text).expect("JSON"))),
            Ok(_) => Some(Received::Ended),
        }
    }

    /// Reads until the close frame; returns the pushes before it and the close code and reason.
    pub async fn read_until_close(&mut self) -> (Vec<Value>, Option<(u16, String)>) {
        let mut pushes: Vec<Value> = self.pushes.drain(..).collect();
        loop {
            match self.receive_raw().await {
                Received::Json(value) => pushes.push(value),
                Received::Close(frame) => return (pushes, frame),
                Received::Ended => return (pushes, None),
            }
        }
    }
}

/// One Server-Sent Event as a client parses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

/// A streaming HTTP response read as lines: enough for SSE and NDJSON clients in tests.
pub struct LineStream {
    pub response_headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl LineStream {
    pub async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), 200, "stream refused: {:?}", response.text().await);
        let response_headers = response.headers().clone();
        Self { response_headers, body: Box::pin(response.bytes_stream()), buffer: Vec::new() }
    }

    /// The next line without its `\n`, within [`WAIT`]; `None` when the body ended.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(String::from_utf8(line[..line.len() - 1].to_vec()).expect("UTF-8 line"));
            }
            match tokio::time::timeout(WAIT, self.body.next()).await.expect("the stream answered in time") {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next JSON line (NDJSON).
    pub async fn next_json(&mut self) -> Option<Value> {
        let line = self.next_line().await?;
        Some(serde_json::from_str(&line).unwrap_or_else(|error| panic!("line {line:?} is not JSON: {error}")))
    }

    /// The next SSE event (comments and `retry:` included, as their own events).
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        let mut event = SseEvent::default();
        loop {
            let line = self.next_line().await?;
            if line.is_empty() {
                if event != SseEvent::default() {
                    return Some(event);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "" => event.comment = Some(value),
                "event" => event.event = Some(value),
                "id" => event.id = Some(value),
                "data" => event.data = Some(value),
                "retry" => event.retry = value.parse().ok(),
                other => panic!("unexpected SSE field {other:?}"),
            }
        }
    }

    /// The next SSE event that carries data (skipping heartbeats and the opening cursor).
    pub async fn next_data_event(&mut self) -> Option<SseEvent> {
        loop {
            let event = self.next_event().await?;
            if event.data.is_some() && event.event.as_deref() != Some("cursor") {
                return Some(event);
            }
        }
    }
}

impl TestServer {
    pub async fn sse(&self, query: &str) -> LineStream {
        LineStream::open(self.http.get(self.url(&format!("/sse?{query}")))).await
    }

    pub async fn ndjson(&self, query: &str) -> LineStream {
        LineStream::open(self.http.get(self.url(&format!("/stream?{query}")))).await
    }

    /// `GET /poll?{query}`: the status, the `Herald-Cursor` header, and the body if any.
    pub async fn poll(&self, query: &str) -> (u16, String, Option<Value>) {
        let response = self.http.get(self.url(&format!("/poll?{query}"))).send().await.expect("poll");
        let status = response.status().as_u16();
        let cursor = response
            .headers()
            .get("herald-cursor")
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.bytes().await.expect("poll body");
        let body = (!body.is_empty()).then(|| serde_json::from_slice(&body).expect("poll body is JSON"));
        (status, cursor, body)
    }
}
