//! How to subscribe and publish on each server the generator can drive.
//!
//! Herald over all its transports (and its Pusher door: the Pusher protocol on `/app/{key}`, app
//! `bench` whose channel `N` is Herald's `bench:N`); and peers for side-by-side runs: a plain WebSocket
//! broadcast server (every text frame is a message; publish by HTTP POST), NATS over WebSocket
//! (subjects; publish over NATS's TCP protocol), Socket.IO (engine.io v4 over WebSocket; publish
//! by HTTP POST).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

use crate::payload::{Latencies, Seen};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Herald,
    WsBroadcast,
    Nats,
    Socketio,
    /// Pushpin in front of a GRIP backend (bench/peers/grip-backend.js): SSE and long-poll.
    Pushpin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    Ws,
    Sse,
    Ndjson,
    Poll,
    /// Herald's Pusher door over WebSocket (app key `bench-key`, namespace `bench`).
    Pusher,
    /// Herald's WebSocket offering permessage-deflate (taken where the server has compression
    /// on), read by a small client of the generator's own: tungstenite has no compression.
    WsDeflate,
}

/// Where a target listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Subscribers connect here: `http://HOST:PORT` (WebSocket URLs are derived from it).
    pub subscribe: String,
    /// Publishes go here: Herald's base URL, a peer's `http://HOST:PORT/publish`, or NATS's
    /// `HOST:PORT`.
    pub publish: String,
}

impl Target {
    pub fn channel_name(self, channel: usize) -> String {
        match self {
            Self::Nats => format!("bench.{channel}"),
            _ => format!("bench:{channel}"),
        }
    }
}

type Socket = WebSocketStream<TcpStream>;

fn host_port(url: &str) -> anyhow::Result<SocketAddr> {
    let without_scheme = url.split("://").nth(1).unwrap_or(url);
    let authority = without_scheme.split('/').next().unwrap_or(without_scheme);
    authority.parse().with_context(|| format!("{authority:?} is not IP:PORT"))
}

/// A WebSocket client with small buffers (thousands of them share one process), optionally
/// from a given loopback source address so runs can exceed one address's ports.
async fn ws_connect(url: &str, source: Option<IpAddr>) -> anyhow::Result<Socket> {
    let stream = tcp_connect(host_port(url)?, source).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).max_write_buffer_size(1 << 20);
    let (socket, _) = client_async_with_config(url, stream, Some(config)).await?;
    Ok(socket)
}

/// A TCP connection to `address`, from `source` when given, with Nagle off.
async fn tcp_connect(address: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn ws_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.replacen("http://", "ws://", 1))
}

/// One subscriber: connects, subscribes, says it is ready, then records what arrives until
/// `stop`. Returns what it saw.
#[allow(clippy::too_many_arguments)]
pub async fn subscriber(
    target: Target,
    transport: Transport,
    endpoints: Endpoints,
    channel: usize,
    source: Option<IpAddr>,
    http: reqwest::Client,
    latencies: Latencies,
    delivered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<(), String>>,
) -> Seen {
    let mut seen = Seen::default();
    let mut ready = Some(ready);
    let result = async {
        let mut sink = Recorder { seen: &mut seen, latencies: &latencies, delivered: &delivered };
        match (target, transport) {
            (Target::Herald, Transport::Ws) => {
                herald_ws(&endpoints, target.channel_name(channel), source, &mut ready, &mut sink, &stop).await
            }
            (Target::Herald, Transport::Sse) => {
                let url = format!("{}/sse?channel={}", endpoints.subscribe, target.channel_name(channel));
                http_stream(&http, &url, b"\n\n", &mut ready, &mut sink, &stop).await
            }
            (Target::Herald, Transport::Ndjson) => {
                let url = format!("{}/stream?channel={}", endpoints.subscribe, target.channel_name(channel));
                http_stream(&http, &url, b"\n", &mut ready, &mut sink, &stop).await
            }
            (Target::Herald, Transport::Poll) => {
                herald_poll(&http, &endpoints, &target.channel_name(channel), &mut ready, &mut sink, &stop).await
            }
            (Target::Herald, Transport::WsDeflate) => {
                herald_ws_deflate(&endpoints, target.channel_name(channel), source, &mut ready, &mut sink, &stop).await
            }
            (Target::Herald, Transport::Pusher) => {
                herald_pusher(&endpoints, channel, source, &mut ready, &mut sink, &stop).await
            }
            (Target::WsBroadcast, Transport::Ws) => {
                let mut socket = ws_connect(&ws_url(&endpoints.subscribe, "/"), source).await?;
                signal(&mut ready);
                read_frames(&mut socket, &mut sink, &stop, |_| None).await
            }
            (Target::Nats, Transport::Ws) => {
                nats_ws(&endpoints, &target.channel_name(channel), source, &mut ready, &mut sink, &stop).await
            }
            (Target::Socketio, Transport::Ws) => socketio(&endpoints, source, &mut ready, &mut sink, &stop).await,
            (Target::Pushpin, Transport::Sse) => {
                let url = format!("{}/sse?channel={}", endpoints.subscribe, target.channel_name(channel));
                http_stream(&http, &url, b"\n\n", &mut ready, &mut sink, &stop).await
            }
            (Target::Pushpin, Transport::Poll) => {
                pushpin_poll(&http, &endpoints, &target.channel_name(channel), &mut ready, &mut sink, &stop).await
            }
            (target, transport) => bail!("{target:?} over {transport:?} is not supported"),
        }
    }
    .await;
    if let (Err(error), Some(ready)) = (result, ready.take()) {
        let _ = ready.send(Err(format!("{error:#}")));
    }
    seen
}

fn signal(ready: &mut Option<oneshot::Sender<Result<(), String>>>) {
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }
}

struct Recorder<'a> {
    seen: &'a mut Seen,
    latencies: &'a Latencies,
    delivered: &'a std::sync::atomic::AtomicU64,
}

impl Recorder<'_> {
    fn record(&mut self, bytes: &[u8]) {
        let before = self.seen.delivered;
        if bytes.windows(2).any(|pair| pair == b"\\\"") {
            // The payload arrived as an escaped JSON string (Socket.IO events).
            let unescaped = String::from_utf8_lossy(bytes).replace("\\\"", "\"");
            self.seen.record_all(unescaped.as_bytes(), self.latencies);
        } else {
            self.seen.record_all(bytes, self.latencies);
        }
        self.delivered.fetch_add(self.seen.delivered - before, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads frames until `stop`, recording each; `reply` may answer a frame (keep-alives).
async fn read_frames(
    socket: &mut Socket,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
    reply: impl Fn(&[u8]) -> Option<Message>,
) -> anyhow::Result<()> {
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            frame = socket.next() => frame,
        };
        let bytes = match frame {
            Some(Ok(Message::Text(text))) => bytes::Bytes::from(text),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => return Ok(()),
        };
        if let Some(answer) = reply(&bytes) {
            socket.send(answer).await?;
        }
        sink.record(&bytes);
    }
}

async fn herald_ws(
    endpoints: &Endpoints,
    channel: String,
    source: Option<IpAddr>,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut socket = ws_connect(&ws_url(&endpoints.subscribe, "/ws"), source).await?;
    let subscribe = serde_json::json!({"id": 1, "op": "subscribe", "channel": channel});
    socket.send(Message::text(subscribe.to_string())).await?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with("{\"id\":1,") => {
                if !text.contains("\"result\"") {
                    bail!("subscribe refused: {text}");
                }
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => bail!("closed before the subscribe reply"),
        }
    }
    signal(ready);
    read_frames(&mut socket, sink, stop, |_| None).await
}

/// Herald's WebSocket with permessage-deflate offered: the handshake by hand, a masked
/// `subscribe`, then every frame read, compressed ones (RSV1) inflated, pings answered.
async fn herald_ws_deflate(
    endpoints: &Endpoints,
    channel: String,
    source: Option<IpAddr>,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let address = host_port(&endpoints.subscribe)?;
    let mut stream = tokio::io::BufReader::with_capacity(4096, tcp_connect(address, source).await?);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
    }
    let subscribe = serde_json::json!({"id": 1, "op": "subscribe", "channel": channel}).to_string();
    stream.get_mut().write_all(&masked_frame(0x81, subscribe.as_bytes())).await?;
    let mut inflater = flate2::Decompress::new(false);
    let mut subscribed = false;
    loop {
        let (first, mut payload) = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            frame = read_server_frame(&mut stream) => frame?,
        };
        match first & 0x0f {
            0x9 => stream.get_mut().write_all(&masked_frame(0x8A, &payload)).await?,
            0x8 => return Ok(()),
            0x1 => {
                if first & 0x40 != 0 {
                    payload = inflate(&mut inflater, &payload)?;
                }
                if !subscribed {
                    if payload.starts_with(b"{\"id\":1,") {
                        if !payload.windows(8).any(|window| window == b"\"result\"") {
                            bail!("subscribe refused: {}", String::from_utf8_lossy(&payload));
                        }
                        subscribed = true;
                        signal(ready);
                    }
                    continue;
                }
                sink.record(&payload);
            }
            _ => {}
        }
    }
}

/// Bytes of the frames `ws-deflate` subscribers have read, headers included.
pub static RECEIVED_FRAME_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A masked client frame (the mask is fixed: this client's frames are not under test).
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    match payload.len() {
        length @ 0..=125 => frame.push(0x80 | length as u8),
        length => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
    frame
}

/// One unmasked server frame: its first byte and payload.
async fn read_server_frame(stream: &mut tokio::io::BufReader<TcpStream>) -> anyhow::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let first = stream.read_u8().await?;
    let length = match stream.read_u8().await? & 0x7f {
        126 => u64::from(stream.read_u16().await?),
        127 => stream.read_u64().await?,
        short => u64::from(short),
    };
    let mut payload = vec![0u8; usize::try_from(length)?];
    stream.read_exact(&mut payload).await?;
    let header = 2 + match length {
        0..=125 => 0,
        126..=0xffff => 2,
        _ => 8,
    };
    RECEIVED_FRAME_BYTES.fetch_add(header + length, std::sync::atomic::Ordering::Relaxed);
    Ok((first, payload))
}

/// A compressed message inflated on its own (the server keeps no context between messages).
fn inflate(inflater: &mut flate2::Decompress, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    inflater.reset(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 8 + 64);
    loop {
        let before = inflater.total_in();
        inflater.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)?;
        input.drain(..(inflater.total_in() - before) as usize);
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity());
    }
}

/// The Pusher door: `connection_established`, subscribe to channel `N` of app `bench`, then
/// every event (publications arrive as `herald:publication` with their data as a JSON string).
async fn herald_pusher(
    endpoints: &Endpoints,
    channel: usize,
    source: Option<IpAddr>,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut socket = ws_connect(&ws_url(&endpoints.subscribe, "/app/bench-key?protocol=7"), source).await?;
    let subscribe = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel.to_string()}});
    let mut subscribed = false;
    while !subscribed {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.contains("pusher:connection_established") => {
                socket.send(Message::text(subscribe.to_string())).await?;
            }
            Some(Ok(Message::Text(text))) if text.contains("pusher_internal:subscription_succeeded") => {
                subscribed = true
            }
            Some(Ok(Message::Text(text))) if text.contains("pusher:error") || text.contains("subscription_error") => {
                bail!("the Pusher door refused: {text}")
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => bail!("closed before the subscription succeeded"),
        }
    }
    signal(ready);
    read_frames(&mut socket, sink, stop, |_| None).await
}

/// SSE or NDJSON: records every complete event (`separator`-terminated) in the body.
async fn http_stream(
    http: &reqwest::Client,
    url: &str,
    separator: &[u8],
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let response = http.get(url).send().await?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            chunk = body.next() => chunk,
        };
        let Some(chunk) = chunk else { return Ok(()) };
        buffer.extend_from_slice(&chunk?);
        // The first bytes are the stream's opening (retry/id or the open line): subscribed.
        signal(ready);
        if let Some(end) = buffer.windows(separator.len()).rposition(|window| window == separator) {
            let complete: Vec<u8> = buffer.drain(..end + separator.len()).collect();
            sink.record(&complete);
        }
    }
}

async fn herald_poll(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    channel: &str,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let cursor_of = |response: &reqwest::Response| -> anyhow::Result<String> {
        Ok(response.headers().get("herald-cursor").ok_or_else(|| anyhow!("no cursor"))?.to_str()?.to_string())
    };
    let first = http.get(format!("{}/poll?channel={channel}&timeout=0", endpoints.subscribe)).send().await?;
    let mut cursor = cursor_of(&first)?;
    signal(ready);
    loop {
        let url = format!("{}/poll?channel={channel}&since={cursor}&timeout=25", endpoints.subscribe);
        let response = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            response = http.get(url).send() => response?,
        };
        let next = cursor_of(&response)?;
        let status = response.status();
        let body = response.bytes().await?;
        if status == reqwest::StatusCode::OK {
            sink.record(&body);
        } else if status != reqwest::StatusCode::NO_CONTENT {
            bail!("poll answered {status}");
        }
        cursor = next;
    }
}

/// Pushpin's long-poll has no cursor: a held request answers with what is published while it
/// is held, and what is published between two polls is not seen.
async fn pushpin_poll(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    channel: &str,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let url = format!("{}/poll?channel={channel}", endpoints.subscribe);
    let mut first = true;
    loop {
        let request = http.get(&url).send();
        if first {
            first = false;
            // The request is on its way to being held; give Pushpin a moment to subscribe it.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            signal(ready);
        }
        let response = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            response = request => response?,
        };
        if !response.status().is_success() {
            bail!("pushpin poll answered {}", response.status());
        }
        sink.record(&response.bytes().await?);
    }
}

async fn nats_ws(
    endpoints: &Endpoints,
    subject: &str,
    source: Option<IpAddr>,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut socket = ws_connect(&ws_url(&endpoints.subscribe, "/"), source).await?;
    let hello =
        format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {subject} 1\r\nPING\r\n");
    socket.send(Message::binary(hello.into_bytes())).await?;
    loop {
        let frame = socket.next().await.ok_or_else(|| anyhow!("closed during handshake"))??;
        if frame.into_data().windows(4).any(|window| window == b"PONG") {
            break;
        }
    }
    signal(ready);
    read_frames(&mut socket, sink, stop, |bytes| {
        bytes.starts_with(b"PING").then(|| Message::binary(b"PONG\r\n".to_vec()))
    })
    .await
}

async fn socketio(
    endpoints: &Endpoints,
    source: Option<IpAddr>,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    sink: &mut Recorder<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let url = ws_url(&endpoints.subscribe, "/socket.io/?EIO=4&transport=websocket");
    let mut socket = ws_connect(&url, source).await?;
    // engine.io open ("0{...}"), then connect to the default namespace ("40").
    socket.next().await.ok_or_else(|| anyhow!("no engine.io open packet"))??;
    socket.send(Message::text("40")).await?;
    loop {
        let frame = socket.next().await.ok_or_else(|| anyhow!("closed during connect"))??;
        if let Message::Text(text) = frame
            && text.starts_with("40")
        {
            break;
        }
    }
    signal(ready);
    read_frames(&mut socket, sink, stop, |bytes| (bytes == b"2").then(|| Message::text("3"))).await
}

/// Publishes messages to one target.
pub enum Publisher {
    HeraldHttp { http: reqwest::Client, url: String },
    HeraldWs { socket: Box<Socket>, next_id: u64 },
    HttpPost { http: reqwest::Client, url: String },
    PushpinPublish { http: reqwest::Client, url: String },
    Nats { stream: tokio::io::BufWriter<TcpStream> },
}

impl Publisher {
    pub async fn connect(target: Target, via_ws: bool, endpoints: &Endpoints) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        Ok(match target {
            Target::Herald if via_ws => {
                let socket = ws_connect(&ws_url(&endpoints.publish, "/ws"), None).await?;
                Self::HeraldWs { socket: Box::new(socket), next_id: 1 }
            }
            Target::Herald => Self::HeraldHttp { http, url: format!("{}/api/publish", endpoints.publish) },
            Target::WsBroadcast | Target::Socketio => Self::HttpPost { http, url: endpoints.publish.clone() },
            Target::Pushpin => Self::PushpinPublish { http, url: endpoints.publish.clone() },
            Target::Nats => {
                let stream = TcpStream::connect(host_port(&endpoints.publish)?).await?;
                stream.set_nodelay(true)?;
                let mut stream = tokio::io::BufWriter::new(stream);
                stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").await?;
                Self::Nats { stream }
            }
        })
    }

    /// Sends one message; for WebSocket and NATS it is written now and flushed by `flush`.
    pub async fn publish(&mut self, channel_name: &str, data: &str) -> anyhow::Result<()> {
        match self {
            Self::HeraldHttp { http, url } => {
                let body = format!("{{\"channel\":\"{channel_name}\",\"data\":{data}}}");
                let response =
                    http.post(url.as_str()).header("content-type", "application/json").body(body).send().await?;
                if !response.status().is_success() {
                    bail!("publish answered {}", response.status());
                }
                let _ = response.bytes().await;
            }
            Self::HeraldWs { socket, next_id } => {
                let command =
                    format!("{{\"id\":{next_id},\"op\":\"publish\",\"channel\":\"{channel_name}\",\"data\":{data}}}");
                *next_id += 1;
                socket.feed(Message::text(command)).await?;
            }
            Self::HttpPost { http, url } => {
                let response = http.post(url.as_str()).body(data.to_string()).send().await?;
                if !response.status().is_success() {
                    bail!("publish answered {}", response.status());
                }
                let _ = response.bytes().await;
            }
            Self::PushpinPublish { http, url } => {
                // One item in both formats: an SSE event for streams, a body for held polls.
                let item = serde_json::json!({"items": [{
                    "channel": channel_name,
                    "formats": {
                        "http-stream": {"content": format!("data: {data}\n\n")},
                        "http-response": {"body": format!("{{\"messages\":[{data}]}}\n")},
                    },
                }]});
                let response = http.post(url.as_str()).json(&item).send().await?;
                if !response.status().is_success() {
                    bail!("pushpin publish answered {}", response.status());
                }
                let _ = response.bytes().await;
            }
            Self::Nats { stream } => {
                stream.write_all(format!("PUB {channel_name} {}\r\n{data}\r\n", data.len()).as_bytes()).await?;
            }
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Self::HeraldWs { socket, .. } => {
                socket.flush().await?;
                // Replies are read so the server never waits on us; a refused publish is an error.
                while let Ok(Some(frame)) = tokio::time::timeout(std::time::Duration::ZERO, socket.next()).await {
                    if let Message::Text(reply) = frame?
                        && reply.contains("\"error\"")
                    {
                        bail!("publish refused: {reply}");
                    }
                }
            }
            Self::Nats { stream } => stream.flush().await?,
            _ => {}
        }
        Ok(())
    }
}
