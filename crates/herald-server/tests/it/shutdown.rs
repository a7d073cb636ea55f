//! Graceful shutdown: WebSocket clients are told to reconnect, then closed; nothing hangs.

use serde_json::json;

use crate::helpers::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_websocket_clients_to_reconnect_then_closes() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        client.subscribe("news").await;
        clients.push(client);
    }
    let published = server.publish("news", json!("before")).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.shutdown());
    for client in &mut clients {
        let (pushes, close) = client.read_until_close().await;
        assert_eq!(pushes[0]["data"], "before", "in-flight work is finished first");
        let disconnect = &pushes.last().unwrap()["disconnect"];
        assert_eq!(disconnect["code"], 1001);
        assert_eq!(disconnect["reconnect"], true);
        assert_eq!(disconnect["positions"]["news"]["offset"], published["offset"]);
        let (code, reason) = close.expect("a close frame");
        assert_eq!(code, 1001);
        assert!(reason.contains("shutting down"), "{reason}");
    }
    tokio::time::timeout(crate::helpers::WAIT, stopping).await.expect("shutdown completes").unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_even_when_a_client_never_reads() {
    let server = TestServer::start().await;
    let mut deaf = server.client().await;
    deaf.subscribe("a").await;
    // Fill the deaf client's socket buffers, so the server's writes to it block.
    let payload = "x".repeat(32 * 1024);
    for _ in 0..200 {
        server.publish("a", json!(payload)).await;
    }
    tokio::time::timeout(crate::helpers::WAIT, server.shutdown()).await.expect("shutdown completes in time");
    drop(deaf);
}
