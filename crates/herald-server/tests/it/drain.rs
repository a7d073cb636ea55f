//! Draining on SIGTERM, with the binary as an operator runs it: 200 WebSocket and 200 SSE
//! clients and a publisher. `/readyz` turns 503 at once; each client is told to reconnect
//! elsewhere at its own moment within the drain period (not all at once); new connections get
//! `503 shutting_down`; the process exits 0; and every publication the publisher was told was
//! accepted is in the durable history after a restart, while every client got its
//! publications without a gap until it was told to go.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{KillOnDrop, LineStream, http_client, spawn_herald, spawn_herald_on};

const CLIENTS: usize = 200;
const DRAIN: Duration = Duration::from_secs(2);

/// When a client was told to go (after the signal), and the offsets it got before.
struct Told {
    after: Duration,
    offsets: Vec<u64>,
}

fn contiguous(offsets: &[u64]) -> bool {
    offsets.windows(2).all(|pair| pair[1] == pair[0] + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_client_over_the_period_and_loses_no_acknowledged_publish() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "drain_period = \"2s\"\nshutdown_grace = \"10s\"\n\
         [limits]\nmax_connections_per_ip = 1000\n\
         [namespaces.d]\ndurable = true\nhistory_size = 100000\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (child, address) = spawn_herald(&data, &config);
    let mut server = KillOnDrop(child);
    let (base, ws) = (format!("http://{address}"), format!("ws://{address}/ws"));
    let http = http_client();

    // The clients, each reading until it is told to go; `signalled` is when SIGTERM was sent.
    let signalled = std::sync::Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (mut socket, _) = tokio_tungstenite::connect_async(ws.as_str()).await.unwrap();
        socket.send_text(json!({"id": 1, "op": "subscribe", "channel": "d:feed"})).await;
        let signalled = signalled.clone();
        clients.spawn(async move {
            let mut offsets = Vec::new();
            while let Some(Ok(message)) = socket.next().await {
                match message {
                    Message::Text(text) => {
                        let push: Value = serde_json::from_str(&text).unwrap();
                        if let Some(offset) = push["offset"].as_u64() {
                            offsets.push(offset);
                        }
                        if push.get("disconnect").is_some() {
                            assert_eq!(push["disconnect"]["reconnect"], true, "{push}");
                            let after = signalled.get().expect("told only after the signal").elapsed();
                            return ("websocket", Told { after, offsets });
                        }
                    }
                    Message::Close(frame) => panic!("closed without being told: {frame:?}"),
                    _ => {}
                }
            }
            panic!("the WebSocket ended without a disconnect");
        });
    }
    for _ in 0..CLIENTS {
        let mut stream = LineStream::open(http.get(format!("{base}/sse?channel=d:feed"))).await;
        let signalled = signalled.clone();
        clients.spawn(async move {
            let mut offsets = Vec::new();
            loop {
                let event = stream.next_event().await.expect("the stream ended without a disconnect");
                match event.event.as_deref() {
                    Some("disconnect") => {
                        let after = signalled.get().expect("told only after the signal").elapsed();
                        let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
                        assert_eq!(data["reconnect"], true, "{data}");
                        return ("sse", Told { after, offsets });
                    }
                    None if event.data.is_some() => {
                        let publication: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
                        offsets.push(publication["offset"].as_u64().unwrap());
                    }
                    _ => {}
                }
            }
        });
    }
    // Every client is in before the publisher starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, channels): (u16, Value) = {
            let response = http.get(format!("{base}/api/channels")).send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        };
        let subscribers = channels["channels"][0]["subscribers"].as_u64().unwrap_or(0);
        if subscribers == 2 * CLIENTS as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "{subscribers} subscribers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The publisher: one publish every 5 ms until the server stops taking them.
    let publisher = {
        let (http, url) = (http.clone(), format!("{base}/api/publish"));
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                let sent = http.post(&url).json(&json!({"channel": "d:feed", "data": {"n": n}})).send().await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        let body: Value = response.json().await.unwrap();
                        acknowledged.push(body["offset"].as_u64().unwrap());
                    }
                    // Refused (503 shutting_down) or the listener gone: the server is stopping.
                    _ => return acknowledged,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            unreachable!()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let status = std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    signalled.set(Instant::now()).unwrap();
    // The signal reaches the process a moment later: /readyz says so from then on.
    let not_ready = loop {
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        if ready.status() == 503 {
            assert_eq!(ready.json::<Value>().await.unwrap()["error"]["code"], "shutting_down");
            break signalled.get().unwrap().elapsed();
        }
        assert!(signalled.get().unwrap().elapsed() < Duration::from_secs(1), "/readyz still ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // A new client during the drain gets an answer, not a dropped connection.
    let late = http.get(format!("{base}/sse?channel=d:feed")).send().await.unwrap();
    assert_eq!(late.status(), 503);

    let mut told = Vec::new();
    while let Some(outcome) = clients.join_next().await {
        told.push(outcome.unwrap());
    }
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.0.try_wait().unwrap() {
                return (Some(status), server);
            }
            if Instant::now() > deadline {
                return (None, server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (status, _server) = exit.await.unwrap();
    let exited_after = signalled.get().unwrap().elapsed();
    assert!(status.expect("herald exits within the drain period and the grace").success());
    let acknowledged = publisher.await.unwrap();

    // Told across the drain period, not all at once, and none later than it (with slack for
    // a loaded machine).
    let mut times: Vec<Duration> = told.iter().map(|(_, told)| told.after).collect();
    times.sort();
    let (first, last, median) = (times[0], times[times.len() - 1], times[times.len() / 2]);
    assert_eq!(told.len(), 2 * CLIENTS);
    assert!(last - first >= DRAIN / 2, "told between {first:?} and {last:?}");
    assert!(last <= DRAIN + Duration::from_millis(1500), "the last was told after {last:?}");
    // Each client's publications came without a gap.
    for (transport, told) in &told {
        assert!(contiguous(&told.offsets), "{transport}: {:?}", told.offsets);
    }
    eprintln!(
        "drain: /readyz 503 after {not_ready:?}; {} clients told between {first:?} and {last:?} \
         (median {median:?}) after SIGTERM; exit 0 after {exited_after:?}; {} publications acknowledged",
        told.len(),
        acknowledged.len()
    );

    // After a restart: every acknowledged publication is in the history.
    let (child, address) = spawn_herald_on(&address, &data, &config);
    let _restarted = KillOnDrop(child);
    let mut stored = std::collections::BTreeSet::new();
    let mut since = 0;
    loop {
        let url = format!("http://{address}/api/channels/d:feed/history?since={since}&limit=1000");
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        let publications = page["publications"].as_array().unwrap();
        if publications.is_empty() {
            break;
        }
        for publication in publications {
            since = publication["offset"].as_u64().unwrap();
            stored.insert(since);
        }
    }
    assert!(acknowledged.len() > 10, "the publisher ran: {}", acknowledged.len());
    let lost: Vec<&u64> = acknowledged.iter().filter(|offset| !stored.contains(offset)).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
}

trait SendText {
    async fn send_text(&mut self, value: Value);
}

impl<S> SendText for tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    async fn send_text(&mut self, value: Value) {
        use futures_util::SinkExt as _;
        self.send(Message::text(value.to_string())).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_without_waiting_for_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "drain_period = \"30s\"\n").unwrap();
    let (child, address) = spawn_herald(&dir.path().join("data"), &config);
    let mut server = KillOnDrop(child);
    let http = http_client();
    let pid = server.0.id().to_string();
    let term = || assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    term();
    // Draining: the node answers, not ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http.get(format!("http://{address}/readyz")).send().await.unwrap().status() != 503 {
        assert!(Instant::now() < deadline, "never turned not-ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    term();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap()
    .expect("the second signal ends the process");
    assert!(!status.success(), "a second signal is not a clean drain: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
