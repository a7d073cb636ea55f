//! Abuse limits on loopback: connections per IP, publish floods, API key rates and scopes;
//! the clients that stay within them are served throughout.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpSocket;

use crate::helpers::{TestServer, WsClient};

const KEY: &str = "full-key-0123456789abcdef";
const READ_KEY: &str = "read-key-0123456789abcdef";
const PUBLISH_KEY: &str = "publish-key-0123456789abcdef";

/// A WebSocket handshake from a chosen loopback source address; the HTTP status if refused.
async fn connect_from(source: [u8; 4], url: &str) -> Result<(), u16> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let address = url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
    let stream = socket.connect(address).await.unwrap();
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((socket, _)) => {
            // Keep it open for the rest of the test.
            std::mem::forget(socket);
            Ok(())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_from_one_ip_meet_the_per_ip_limit_and_others_are_served() {
    let server = TestServer::with_config("[limits]\nmax_connections_per_ip = 100").await;
    let url = server.ws_url();
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..1000 {
        match connect_from([127, 0, 0, 1], &url).await {
            Ok(()) => accepted += 1,
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
    }
    assert_eq!((accepted, refused), (100, 900));
    // Another address is not affected, and gets answers at normal speed.
    assert!(connect_from([127, 0, 0, 2], &url).await.is_ok());
    let mut other = WsClient::connect_from(&url, [127, 0, 0, 3]).await;
    let started = Instant::now();
    assert_eq!(other.command(json!({"op": "ping"})).await["result"], json!({}));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_flood_is_rate_limited_and_others_are_served() {
    let server = TestServer::with_config("[limits]\nclient_publish_rate = 10").await;
    let mut flooder = server.client().await;
    let mut bystander = server.client().await;
    bystander.subscribe("room").await;
    let mut accepted = 0;
    let mut limited = 0;
    for n in 0..200 {
        let reply = flooder.command(json!({"op": "publish", "channel": "room", "data": n})).await;
        match reply["error"]["code"].as_str() {
            None => accepted += 1,
            Some("rate_limited") => limited += 1,
            Some(other) => panic!("{other}"),
        }
    }
    assert!((10..=15).contains(&accepted), "about one second's worth passes: {accepted}");
    assert_eq!(accepted + limited, 200);
    for _ in 0..accepted {
        bystander.next_push().await;
    }
    let started = Instant::now();
    assert_eq!(bystander.command(json!({"op": "ping"})).await["result"], json!({}));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_have_rates_and_scopes() {
    let config = format!(
        "[api]\nkeys = [\"{KEY}\"]\nread_only_keys = [\"{READ_KEY}\"]\npublish_only_keys = [\"{PUBLISH_KEY}\"]\n\
         [limits]\napi_publish_rate = 5\n"
    );
    let server = TestServer::with_config(&config).await;
    let publish = |key: &'static str| {
        let request = server.http().post(server.url("/api/publish")).bearer_auth(key);
        async move { request.json(&json!({"channel": "a", "data": 1})).send().await.unwrap() }
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(publish(KEY).await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 5, "{statuses:?}");
    let limited = publish(KEY).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    // Each key has its own bucket.
    assert_eq!(publish(PUBLISH_KEY).await.status(), 200);
    assert_eq!(publish(READ_KEY).await.status(), 403, "a read-only key cannot publish");
    let read = |key: &'static str| server.http().get(server.url("/api/channels")).bearer_auth(key).send();
    assert_eq!(read(READ_KEY).await.unwrap().status(), 200);
    assert_eq!(read(PUBLISH_KEY).await.unwrap().status(), 403, "a publish-only key cannot read");
    assert_eq!(read(KEY).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::with_config("[limits]\nheader_timeout = \"500ms\"").await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Headers that never end, a byte at a time.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n").await.unwrap();
    let started = Instant::now();
    let closed = async {
        let mut buffer = [0u8; 1024];
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the slow client is cut off");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(server.get_json("/healthz").await.0, 200, "others are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_show_in_the_metrics() {
    let server = TestServer::with_config("[limits]\nmax_connections_per_ip = 1\nclient_publish_rate = 1").await;
    let mut client = server.client().await;
    assert_eq!(connect_from([127, 0, 0, 1], &server.ws_url()).await, Err(429));
    for n in 0..3 {
        client.command(json!({"op": "publish", "channel": "m", "data": n})).await;
    }
    let metrics = server.http().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(line_start))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
    };
    assert!(value("herald_refused_total{code=\"too_many_connections_from_ip\"}") >= 1.0);
    assert!(value("herald_refused_total{code=\"rate_limited\"}") >= 2.0);
    assert!(value("herald_publications_total{via=\"websocket\"}") >= 1.0);
    assert!(value("herald_connections{transport=\"websocket\"}") >= 1.0);
}
