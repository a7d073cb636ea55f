//! Behind trusted proxies the per-address limit counts clients by their forwarded address;
//! from an untrusted peer the same headers change nothing.

use crate::helpers::{TestServer, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // 127.0.0.1 is the "proxy"; clients connecting from 127.0.0.2 are not trusted.
    let server =
        TestServer::with_config("trusted_proxies = [\"127.0.0.1/32\"]\n[limits]\nmax_connections_per_ip = 1\n").await;
    // The test's HTTP client connects from 127.0.0.1: the proxy.
    let sse = |header: (&'static str, &'static str)| {
        let (http, url) = (server.http().clone(), server.url("/sse?channel=p"));
        async move { http.get(url).header(header.0, header.1).send().await.unwrap() }
    };
    // Through the proxy: two clients with two addresses are two; the same address twice is one.
    let alice = sse(("x-forwarded-for", "203.0.113.1")).await;
    assert_eq!(alice.status(), 200);
    let bob = sse(("forwarded", "for=\"[2001:db8::2]:1234\"")).await;
    assert_eq!(bob.status(), 200, "another client");
    let alice_again = sse(("x-forwarded-for", "6.6.6.6, 203.0.113.1")).await;
    assert_eq!(alice_again.status(), 429, "the same client, whatever it wrote itself");

    // From an untrusted peer the headers are ignored: its own address counts.
    let url = format!("ws://{}/ws", server.addr);
    let _first = WsClient::connect_from(&url, [127, 0, 0, 2]).await;
    let second = tokio_tungstenite_with_header(&url, [127, 0, 0, 2], "198.51.100.9").await;
    assert_eq!(second, 429, "a forged X-Forwarded-For from an untrusted peer does not get past the limit");
    drop((alice, bob));
}

/// A WebSocket handshake from `source` with an `X-Forwarded-For`; the HTTP status it got.
async fn tokio_tungstenite_with_header(url: &str, source: [u8; 4], forwarded: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let address = url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
    let stream = socket.connect(address).await.unwrap();
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", forwarded.parse().unwrap());
    match tokio_tungstenite::client_async(request, stream).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("{error}"),
    }
}
