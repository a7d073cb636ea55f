//! The server API over real HTTP: keys, publish, broadcast, channels, history, errors.

use serde_json::{Value, json};

use crate::helpers::TestServer;

const KEY: &str = "test-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_configured_the_api_needs_one() {
    let server = TestServer::with_config(&format!("[api]\nkeys = [\"another-key-0123456789\", \"{KEY}\"]")).await;
    let body = json!({"channel": "a", "data": 1});
    let url = server.url("/api/publish");
    let response = server.http().post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unauthorized");

    let response = server.http().post(&url).bearer_auth("wrong-key-0123456789abcdef").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);

    let response = server.http().post(&url).bearer_auth(KEY).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = server.http().get(server.url("/api/channels")).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = server.http().get(server.url("/api/channels")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_channel_offset_and_epoch_and_honours_idempotency_keys() {
    let server = TestServer::start().await;
    let first = server.publish("orders", json!({"id": 1})).await;
    assert_eq!(first["channel"], "orders");
    assert_eq!(first["offset"], 1);
    assert!(first["epoch"].as_str().is_some_and(|epoch| !epoch.is_empty()));

    let body = json!({"channel": "orders", "data": {"id": 2}, "idempotency_key": "order-2"});
    let url = server.url("/api/publish");
    let once: Value = server.http().post(&url).json(&body).send().await.unwrap().json().await.unwrap();
    let twice: Value = server.http().post(&url).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(once["offset"], 2);
    assert_eq!(twice["offset"], 2, "a retried publish is not published twice");
    assert_eq!(twice["duplicate"], true);
    let (_, history) = server.get_json("/api/channels/orders/history").await;
    assert_eq!(history["publications"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_publishes_to_every_channel() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("x").await;
    client.subscribe("y").await;
    let body = json!({"channels": ["x", "y"], "data": "all"});
    let reply: Value =
        server.http().post(server.url("/api/broadcast")).json(&body).send().await.unwrap().json().await.unwrap();
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!((results[0]["channel"].clone(), results[0]["offset"].clone()), (json!("x"), json!(1)));
    assert_eq!((results[1]["channel"].clone(), results[1]["offset"].clone()), (json!("y"), json!(1)));
    let mut channels = vec![client.next_push().await["channel"].clone(), client.next_push().await["channel"].clone()];
    channels.sort_by_key(|c| c.to_string());
    assert_eq!(channels, [json!("x"), json!("y")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_lists_subscriber_counts() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("room:1").await;
    b.subscribe("room:1").await;
    b.subscribe("room:2").await;
    let (status, body) = server.get_json("/api/channels").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [{"channel": "room:1", "subscribers": 2}, {"channel": "room:2", "subscribers": 1}]})
    );
    drop(b);
    server.wait_for_subscribers("room:2", 0).await;
    assert_eq!(server.subscriber_count("room:1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_paginates_forward_and_backward() {
    let server = TestServer::start().await;
    for n in 1..=7 {
        server.publish("feed/main", json!(n)).await;
    }
    let offsets = |body: &Value| -> Vec<u64> {
        body["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect()
    };
    // Channel names may contain '/', encoded or not.
    let (status, page) = server.get_json("/api/channels/feed/main/history?limit=3").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(offsets(&page), [1, 2, 3]);
    assert_eq!(page["position"]["offset"], 7);
    let (_, page) = server.get_json("/api/channels/feed%2Fmain/history?since=3&limit=3").await;
    assert_eq!(offsets(&page), [4, 5, 6]);
    let (_, page) = server.get_json("/api/channels/feed/main/history?reverse=true&limit=2").await;
    assert_eq!(offsets(&page), [7, 6]);
    let (_, page) = server.get_json("/api/channels/feed/main/history?reverse=true&since=6&limit=2").await;
    assert_eq!(offsets(&page), [5, 4]);
    let epoch = page["position"]["epoch"].as_str().unwrap().to_string();
    let (status, _) = server.get_json(&format!("/api/channels/feed/main/history?since=6&epoch={epoch}")).await;
    assert_eq!(status, 200);
    let (status, body) = server.get_json("/api/channels/feed/main/history?since=6&epoch=other").await;
    assert_eq!((status, body["error"]["code"].clone()), (409, json!("epoch_mismatch")));
    let (status, body) = server.get_json("/api/channels/feed/main/history?limit=0").await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("invalid_limit")));
    let (status, body) = server.get_json("/api/channels/feed/main/history?limit=lots").await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("bad_request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let server = TestServer::with_config("[limits]\nmax_message_size = 1024").await;
    let post = |body: String| {
        let request = server.http().post(server.url("/api/publish")).header("content-type", "application/json");
        async move {
            let response = request.body(body).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
        }
    };
    assert_eq!(post("{".into()).await, (400, "bad_request".into()));
    assert_eq!(post(r#"{"channel":"a"}"#.into()).await, (400, "missing_field".into()));
    assert_eq!(post(r#"{"channel":"a b","data":1}"#.into()).await, (400, "invalid_channel".into()));
    assert_eq!(post(r#"{"channel":"a","data":1,"extra":2}"#.into()).await, (400, "bad_request".into()));
    let big = json!({"channel": "a", "data": "x".repeat(1500)}).to_string();
    assert_eq!(post(big).await, (413, "message_too_large".into()));
    // Over the body limit (twice the message limit plus 64 KiB), yet small enough for the
    // socket buffers to take whole: the server answers 413 without reading it, and a client
    // still sending when the connection closes would see a reset instead of the answer.
    let huge = json!({"channel": "a", "data": "x".repeat(70_000)}).to_string();
    assert_eq!(post(huge).await, (413, "payload_too_large".into()));
    let body = json!({"channels": [], "data": 1});
    let response = server.http().post(server.url("/api/broadcast")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 400);

    let (status, body) = server.get_json("/api/nothing-here").await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")));
    let response = server.http().get(server.url("/api/publish")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let response = server.http().get(server.url("/ws")).send().await.unwrap();
    assert_eq!(response.status().as_u16() / 100, 4, "a plain GET on /ws is refused");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_upgrade_required");
    let response = server
        .http()
        .get(server.url("/ws"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["sec-websocket-version"], "13", "RFC 6455 4.4: say which version we speak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_the_front_page_answer() {
    let server = TestServer::start().await;
    assert_eq!(server.get_json("/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(server.get_json("/readyz").await, (200, json!({"status": "ready"})));
    let page = server.http().get(server.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Herald is running"), "{page}");
    // The WebSocket URL to connect to (HTML-escaped, as every value in a page is).
    assert!(page.contains(&format!("ws:&#x2f;&#x2f;{}&#x2f;ws", server.addr)), "{page}");
    for link in ["/demo/chat", "/admin", "/docs/protocol", "/metrics"] {
        assert!(page.contains(&format!("href=\"{link}\"")), "a link to {link}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_when_origins_are_configured() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::with_config("allowed_origins = [\"https://app.example\"]").await;
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let error = tokio_tungstenite::connect_async(request).await.expect_err("refused");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other}"),
    }
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://app.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
    // No Origin header: not a browser, not refused for that.
    assert!(tokio_tungstenite::connect_async(server.ws_url()).await.is_ok());
}

/// The API's CORS allows only the configured origins, never "any": in dev mode (no
/// `allowed_origins`) the transports answer every origin, but a web page a developer happens to
/// visit must not be able to drive their local Herald's API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_browsers_only_from_configured_origins() {
    async fn preflight(server: &TestServer, path: &str, origin: &str, method: &str) -> Option<String> {
        let response = server
            .http()
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        response.headers().get("access-control-allow-origin").map(|value| value.to_str().unwrap().to_string())
    }
    async fn publish_from(server: &TestServer, origin: &str) -> Option<String> {
        let response = server
            .http()
            .post(server.url("/api/publish"))
            .header("origin", origin)
            .json(&json!({"channel": "cors", "data": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.headers().get("access-control-allow-origin").map(|value| value.to_str().unwrap().to_string())
    }

    let dev = TestServer::start().await;
    assert_eq!(preflight(&dev, "/sse", "https://page.example", "GET").await.as_deref(), Some("*"));
    assert_eq!(preflight(&dev, "/api/publish", "https://page.example", "POST").await, None);
    assert_eq!(preflight(&dev, "/api/nothing/here", "https://page.example", "GET").await, None);
    assert_eq!(publish_from(&dev, "https://page.example").await, None);
    // A page may still read why a path it tried does not exist.
    let response = dev.http().get(dev.url("/nope")).header("origin", "https://page.example").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");

    let configured = TestServer::with_config("allowed_origins = [\"https://app.example\"]").await;
    assert_eq!(
        preflight(&configured, "/api/publish", "https://app.example", "POST").await.as_deref(),
        Some("https://app.example")
    );
    assert_eq!(publish_from(&configured, "https://app.example").await.as_deref(), Some("https://app.example"));
    assert_eq!(preflight(&configured, "/api/publish", "https://evil.example", "POST").await, None);
}
