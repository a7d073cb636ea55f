//! SSE (`/sse`) and NDJSON (`/stream`) end to end, read by an HTTP client as a browser or curl
//! would: delivery, cursors and resumption, heartbeats, clean-up, recovery failures, shutdown.

use serde_json::{Value, json};

use crate::helpers::TestServer;

fn publication(event: &crate::helpers::SseEvent) -> Value {
    serde_json::from_str(event.data.as_deref().expect("data")).expect("data is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_publications_with_cursor_ids() {
    let server = TestServer::start().await;
    let mut stream = server.sse("channel=news&channel=sport").await;
    let headers = &stream.response_headers;
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let opening = stream.next_event().await.unwrap();
    assert_eq!(opening.retry, Some(1000));
    // A named event, so `onmessage` does not fire, whose data a page can read: the same cursor.
    assert_eq!(opening.event.as_deref(), Some("cursor"), "{opening:?}");
    let data: Value = serde_json::from_str(opening.data.as_deref().unwrap()).unwrap();
    assert_eq!((data["type"].as_str(), data["cursor"].as_str()), (Some("open"), opening.id.as_deref()), "{opening:?}");

    server.publish("news", json!({"headline": "hi"})).await;
    server.publish("sport", json!(2)).await;
    let first = stream.next_data_event().await.unwrap();
    assert_eq!(first.event, None, "the default type, so EventSource.onmessage fires");
    assert_eq!(publication(&first)["data"], json!({"headline": "hi"}));
    assert_eq!(publication(&first)["offset"], 1);
    let second = stream.next_data_event().await.unwrap();
    assert_eq!(publication(&second)["channel"], "sport");
    assert_ne!(first.id, second.id, "each id is the cursor after its event");
    assert_eq!(server.subscriber_count("news").await, 1, "SSE subscribers are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_after_last_event_id_on_every_channel() {
    let server = TestServer::start().await;
    let mut stream = server.sse("channel=a&channel=b").await;
    server.publish("a", json!("a1")).await;
    server.publish("b", json!("b1")).await;
    stream.next_data_event().await.unwrap();
    let last = stream.next_data_event().await.unwrap();
    drop(stream);
    server.wait_for_subscribers("a", 0).await;

    for data in ["a2", "a3"] {
        server.publish("a", json!(data)).await;
    }
    server.publish("b", json!("b2")).await;
    // What a browser sends when it reconnects: the original URL and Last-Event-ID.
    let request =
        server.http().get(server.url("/sse?channel=a&channel=b")).header("last-event-id", last.id.clone().unwrap());
    let mut resumed = crate::helpers::LineStream::open(request).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(publication(&resumed.next_data_event().await.unwrap())["data"].clone());
    }
    server.publish("b", json!("b3")).await;
    seen.push(publication(&resumed.next_data_event().await.unwrap())["data"].clone());
    assert_eq!(seen, [json!("a2"), json!("a3"), json!("b2"), json!("b3")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_streams_one_publication_per_line_with_its_cursor() {
    let server = TestServer::start().await;
    let mut stream = server.ndjson("channel=feed").await;
    assert_eq!(stream.response_headers["content-type"], "application/x-ndjson");
    let open = stream.next_json().await.unwrap();
    assert_eq!(open["type"], "open");
    // Data with line breaks of its own still fits on one line.
    let body = "{\"channel\":\"feed\",\"data\":{\n  \"multi\": \"line\"\n}}";
    let response = server
        .http()
        .post(server.url("/api/publish"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.publish("feed", json!(2)).await;
    let first = stream.next_json().await.unwrap();
    assert_eq!((first["offset"].clone(), first["data"]["multi"].clone()), (json!(1), json!("line")));
    let cursor = first["cursor"].as_str().unwrap().to_string();
    let second = stream.next_json().await.unwrap();
    assert_eq!(second["offset"], 2);
    drop(stream);

    let mut resumed = server.ndjson(&format!("channel=feed&since={cursor}")).await;
    assert_eq!(resumed.next_json().await.unwrap()["type"], "open");
    assert_eq!(resumed.next_json().await.unwrap()["offset"], 2, "resumes right after the cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_heartbeats() {
    let server = TestServer::with_config("[streaming]\nheartbeat_interval = \"100ms\"").await;
    let mut sse = server.sse("channel=quiet").await;
    sse.next_event().await.unwrap();
    assert_eq!(sse.next_event().await.unwrap().comment.as_deref(), Some("heartbeat"));
    let mut ndjson = server.ndjson("channel=quiet").await;
    ndjson.next_json().await.unwrap();
    assert_eq!(ndjson.next_json().await.unwrap(), json!({"type": "heartbeat"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_is_cleaned_up_at_once() {
    let server = TestServer::start().await;
    let sse = server.sse("channel=x").await;
    let ndjson = server.ndjson("channel=x&channel=y").await;
    assert_eq!(server.subscriber_count("x").await, 2);
    drop(sse);
    server.wait_for_subscribers("x", 1).await;
    drop(ndjson);
    server.wait_for_subscribers("x", 0).await;
    server.wait_for_subscribers("y", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_a_lost_epoch_is_told_so() {
    let server = TestServer::start().await;
    let mut stream = server.ndjson("channel=a").await;
    let cursor = stream.next_json().await.unwrap()["cursor"].as_str().unwrap().to_string();
    drop(stream);
    // Another server (a restart of the memory engine) has other epochs: the cursor cannot fit.
    let other = TestServer::start().await;
    other.publish("a", json!(1)).await;

    let mut ndjson = other.ndjson(&format!("channel=a&since={cursor}")).await;
    ndjson.next_json().await.unwrap();
    let notice = ndjson.next_json().await.unwrap();
    assert_eq!((notice["type"].clone(), notice["recovered"].clone()), (json!("recovery"), json!(false)));
    assert_eq!(notice["channel"], "a");
    assert_eq!(notice["position"]["offset"], 1);

    let request = other.http().get(other.url("/sse?channel=a")).header("last-event-id", &cursor);
    let mut sse = crate::helpers::LineStream::open(request).await;
    sse.next_event().await.unwrap();
    let event = sse.next_event().await.unwrap();
    assert_eq!(event.event.as_deref(), Some("recovery"));
    assert_eq!(serde_json::from_str::<Value>(&event.data.unwrap()).unwrap()["recovered"], false);

    let (status, _, body) = other.poll(&format!("channel=a&since={cursor}&timeout=0")).await;
    assert_eq!(status, 200);
    let body = body.unwrap();
    assert_eq!(body["recovery"][0]["channel"], "a");
    assert_eq!(body["recovery"][0]["recovered"], false);
    assert_eq!(body["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_a_disconnect_notice() {
    let server = TestServer::start().await;
    let mut sse = server.sse("channel=a").await;
    let mut ndjson = server.ndjson("channel=a").await;
    sse.next_event().await.unwrap();
    ndjson.next_json().await.unwrap();
    let stopping = tokio::spawn(server.shutdown());
    let event = sse.next_event().await.unwrap();
    assert_eq!(event.event.as_deref(), Some("disconnect"));
    assert_eq!(serde_json::from_str::<Value>(&event.data.unwrap()).unwrap()["reconnect"], true);
    assert_eq!(sse.next_event().await, None, "the stream ends");
    let line = ndjson.next_json().await.unwrap();
    assert_eq!((line["type"].clone(), line["code"].clone()), (json!("disconnect"), json!(1001)));
    assert_eq!(ndjson.next_line().await, None);
    tokio::time::timeout(crate::helpers::WAIT, stopping).await.expect("shutdown completes").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_requests_get_clear_errors() {
    let server = TestServer::with_config("[limits]\nmax_channels_per_request = 3").await;
    let cases = [
        ("/sse", 400, "missing_channel"),
        ("/sse?channel=", 400, "invalid_channel"),
        ("/stream?channel=a%20b", 400, "invalid_channel"),
        ("/sse?channel=a&channel=b&channel=c&channel=d", 400, "too_many_channels"),
        ("/stream?channel=a&since=garbage!", 400, "invalid_cursor"),
        ("/stream?channel=a&since=AQHot75DCDBjcGZkMnBvAWmOkb5", 400, "invalid_cursor"),
        ("/sse?channel=a&chanel=b", 400, "unknown_parameter"),
        ("/sse?channel=a&timeout=3", 400, "unknown_parameter"),
    ];
    for (path, status, code) in cases {
        let (got_status, body) = server.get_json(path).await;
        assert_eq!((got_status, body["error"]["code"].as_str().unwrap()), (status, code), "{path}");
    }
    // Duplicates are one channel; a never-used channel is fine (it starts empty).
    let stream = server.sse("channel=a&channel=a&channel=b&channel=c&token=ignored-without-auth").await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_ip_are_limited_when_configured() {
    let server = TestServer::with_config("[limits]\nmax_connections_per_ip = 2").await;
    let first = server.sse("channel=a").await;
    let _second = server.ndjson("channel=a").await;
    let (status, body) = server.get_json("/sse?channel=a").await;
    assert_eq!((status, body["error"]["code"].as_str().unwrap()), (429, "too_many_connections_from_ip"));
    drop(first);
    server.wait_for_subscribers("a", 1).await;
    let _third = server.sse("channel=a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_cors_and_foreign_origins_are_refused() {
    let open = TestServer::start().await;
    let response = open
        .http()
        .request(reqwest::Method::OPTIONS, open.url("/poll?channel=a"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let response = open
        .http()
        .get(open.url("/poll?channel=a&timeout=0"))
        .header("origin", "https://x.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-expose-headers"], "herald-cursor");

    let strict = TestServer::with_config("allowed_origins = [\"https://app.example\"]").await;
    for path in ["/sse?channel=a", "/stream?channel=a", "/poll?channel=a&timeout=0"] {
        let response =
            strict.http().get(strict.url(path)).header("origin", "https://evil.example").send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
    }
    let response = strict
        .http()
        .get(strict.url("/poll?channel=a&timeout=0"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["access-control-allow-origin"], "https://app.example");
}
