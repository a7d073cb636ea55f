//! What a client SDK needs to move between transports without losing its place: HTTP
//! transports resuming from per-channel `positions=`, a WebSocket subscribe resuming from an
//! HTTP cursor, each stream's opening naming every channel's subscribe result, subscribers
//! reading history through the API with their own credentials, and `/client.js` itself.

use serde_json::{Value, json};

use crate::helpers::TestServer;

fn offsets(messages: &Value) -> Vec<u64> {
    messages.as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

/// `positions=` as a query value: `{"channel":{"epoch","offset"}}`, URL-encoded.
fn positions(entries: &[(&str, &str, u64)]) -> String {
    let map: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(channel, epoch, offset)| (channel.to_string(), json!({"epoch": epoch, "offset": offset})))
        .collect();
    form_urlencoded::byte_serialize(Value::Object(map).to_string().as_bytes()).collect()
}

/// Publishes `data` on `channel` in turn; returns the channel's epoch.
async fn publish_all(server: &TestServer, channel: &str, data: &[&str]) -> String {
    let mut epoch = String::new();
    for item in data {
        epoch = server.publish(channel, json!(item)).await["epoch"].as_str().unwrap().to_string();
    }
    epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_resumes_each_channel_from_its_own_position() {
    let server = TestServer::start().await;
    let epoch_a = publish_all(&server, "a", &["a1", "a2", "a3"]).await;
    let epoch_b = publish_all(&server, "b", &["b1", "b2"]).await;
    // `a` known up to 1, `b` up to 2 (nothing missed), `c` unknown: it starts live.
    let query = format!(
        "channel=a&channel=b&channel=c&positions={}&timeout=0",
        positions(&[("a", &epoch_a, 1), ("b", &epoch_b, 2)])
    );
    let (status, _, body) = server.poll(&query).await;
    assert_eq!(status, 200);
    let body = body.unwrap();
    assert_eq!(offsets(&body["messages"]), [2, 3]);
    assert!(body["messages"].as_array().unwrap().iter().all(|m| m["channel"] == "a"));
    assert!(body.get("recovery").is_none_or(|notices| notices.as_array().unwrap().is_empty()), "{body}");

    // A position of another epoch cannot be recovered: the answer says where the channel is.
    let query = format!("channel=a&positions={}&timeout=0", positions(&[("a", "not-the-epoch", 1)]));
    let (_, _, body) = server.poll(&query).await;
    let body = body.unwrap();
    let notice = &body["recovery"][0];
    assert_eq!((notice["channel"].as_str(), notice["position"]["offset"].as_u64()), (Some("a"), Some(3)), "{body}");
    assert_eq!(notice["position"]["epoch"], epoch_a.as_str());
    assert_eq!(offsets(&body["messages"]), Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_that_are_not_an_object_of_the_requests_channels_are_refused() {
    let server = TestServer::start().await;
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    for (positions, why) in [
        (encode("[1,2]"), "not an object"),
        (encode("{\"a\":{\"epoch\":\"e\"}}"), "no offset"),
        (encode("{\"a\":{\"epoch\":\"e\",\"offset\":-1}}"), "a negative offset"),
        (encode("{\"b\":{\"epoch\":\"e\",\"offset\":1}}"), "a channel not asked for"),
        ("%7B".to_string(), "not JSON"),
    ] {
        for path in ["/poll?timeout=0&", "/sse?", "/stream?"] {
            let (status, body) = server.get_json(&format!("{path}channel=a&positions={positions}")).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (400, Some("invalid_positions")),
                "{path} {why}: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opening_names_each_channels_subscribe_result() {
    let server = TestServer::start().await;
    let epoch = publish_all(&server, "a", &["a1", "a2", "a3"]).await;
    let query = format!("channel=a&channel=fresh&positions={}", positions(&[("a", &epoch, 1)]));

    let mut sse = server.sse(&query).await;
    let opening = sse.next_event().await.unwrap();
    assert_eq!(opening.event.as_deref(), Some("cursor"));
    let open: Value = serde_json::from_str(opening.data.as_deref().unwrap()).unwrap();
    assert_eq!(open["type"], "open");
    let subscribed = open["subscribed"].as_array().unwrap();
    assert_eq!(subscribed.len(), 2, "{open}");
    assert_eq!((subscribed[0]["channel"].as_str(), subscribed[0]["recovered"].as_bool()), (Some("a"), Some(true)));
    assert_eq!(subscribed[0]["position"], json!({"epoch": epoch, "offset": 3}), "the channel's top");
    assert_eq!(subscribed[1]["channel"], "fresh");
    assert_eq!(subscribed[1]["position"]["offset"], 0);
    assert!(subscribed[1].get("recovered").is_none_or(Value::is_null), "nothing to recover: {open}");
    for expected in [2, 3] {
        let event = sse.next_data_event().await.unwrap();
        let publication: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
        assert_eq!(publication["offset"], expected);
    }

    // NDJSON: the same opening as its first line.
    let mut ndjson = server.ndjson(&query).await;
    let first = ndjson.next_json().await.unwrap();
    assert_eq!(
        (first["type"].as_str(), first["subscribed"].as_array().map(Vec::len)),
        (Some("open"), Some(2)),
        "{first}"
    );
    assert_eq!(ndjson.next_json().await.unwrap()["offset"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_last_event_id_wins_over_the_positions_in_its_url() {
    let server = TestServer::start().await;
    let epoch = publish_all(&server, "a", &["a1", "a2"]).await;
    let query = format!("channel=a&positions={}", positions(&[("a", &epoch, 0)]));
    let mut sse = server.sse(&query).await;
    sse.next_event().await.unwrap();
    sse.next_data_event().await.unwrap();
    let last = sse.next_data_event().await.unwrap();
    drop(sse);
    server.wait_for_subscribers("a", 0).await;
    publish_all(&server, "a", &["a3"]).await;
    // EventSource reconnects to the very URL it was given (positions at 0), with Last-Event-ID.
    let request = server.http().get(server.url(&format!("/sse?{query}"))).header("last-event-id", last.id.unwrap());
    let mut resumed = crate::helpers::LineStream::open(request).await;
    resumed.next_event().await.unwrap();
    let next: Value = serde_json::from_str(&resumed.next_data_event().await.unwrap().data.unwrap()).unwrap();
    assert_eq!(next["offset"], 3, "resumed after the last event, not from the URL's stale position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_subscribe_resumes_from_an_http_cursor() {
    let server = TestServer::start().await;
    publish_all(&server, "a", &["a1"]).await;
    let (status, cursor, _) = server.poll("channel=a&timeout=0").await;
    assert_eq!(status, 204, "a first poll starts live");
    let (_, cursor, _) = {
        publish_all(&server, "a", &["a2"]).await;
        server.poll(&format!("channel=a&since={cursor}&timeout=0")).await
    };
    publish_all(&server, "a", &["a3", "a4"]).await;

    // Fallen back to poll, now upgrading: the WebSocket takes up where the poll left off.
    let mut client = server.client().await;
    let reply = client.command(json!({"op": "subscribe", "channel": "a", "cursor": cursor})).await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let pushed: Vec<Value> =
        vec![client.next_push().await["offset"].clone(), client.next_push().await["offset"].clone()];
    assert_eq!(pushed, [json!(3), json!(4)]);

    let reply = client.command(json!({"op": "subscribe", "channel": "b", "cursor": "%%%"})).await;
    assert_eq!(reply["error"]["code"], "invalid_cursor", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_read_history_and_presence_through_the_api_with_their_own_credentials() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let config = format!(
        "[api]\nkeys = [\"full-key-0123456789\"]\npublish_only_keys = [\"publish-key-0123456789\"]\n\
         [auth]\nhmac_secret = \"{SECRET}\"\n\
         [namespaces.open]\nanonymous = true\npresence = true\n[namespaces.closed]\npresence = true\n"
    );
    let server = TestServer::with_config(&config).await;
    for channel in ["open:a", "closed:a"] {
        server.publish_with_key(channel, json!("hello"), "full-key-0123456789").await.unwrap();
    }
    let token = |channels: Value| {
        let claims = json!({"sub": "ann", "exp": jsonwebtoken::get_current_timestamp() + 600, "channels": channels});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let granted = token(json!(["closed:*"]));
    let other = token(json!(["elsewhere:*"]));
    let get = |path: &str, bearer: Option<&str>| {
        let mut request = server.http().get(server.url(path));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    for resource in ["history", "presence"] {
        let open = format!("/api/channels/open:a/{resource}");
        let closed = format!("/api/channels/closed:a/{resource}");
        let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("").to_string();
        let (status, body) = get(&open, None).await;
        assert_eq!(status, 200, "anonymous, where anonymous clients subscribe: {body}");
        if resource == "history" {
            assert_eq!(body["publications"][0]["data"], "hello");
        }
        let (status, body) = get(&closed, None).await;
        assert_eq!((status, code(&body)), (401, "unauthorized".into()), "anonymous, where they may not: {body}");
        assert_eq!(get(&closed, Some(&granted)).await.0, 200, "a token granting the channel");
        let (status, body) = get(&closed, Some(&other)).await;
        assert_eq!(status, 403, "a token that does not grant it: {body}");
        let (status, body) = get(&closed, Some("publish-key-0123456789")).await;
        assert_eq!(status, 403, "a key that may only publish: {body}");
        assert_eq!(get(&closed, Some("full-key-0123456789")).await.0, 200);
        let (status, body) = get(&closed, Some("not-a-key")).await;
        assert_eq!((status, code(&body)), (401, "unauthorized".into()), "a wrong key is not taken for anonymous");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_is_the_sdk_with_cache_validators_and_cors() {
    let server = TestServer::start().await;
    let response =
        server.http().get(server.url("/client.js")).header("origin", "http://app.example").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers["cache-control"].to_str().unwrap().contains("must-revalidate"));
    assert!(headers.contains_key("access-control-allow-origin"), "importable cross-origin: {headers:?}");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let body = response.text().await.unwrap();
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/js/herald.js")).unwrap();
    assert_eq!(body, source, "the served module is the repository's clients/js/herald.js");
    assert!(body.contains("export class Herald"));

    let revalidated = server.http().get(server.url("/client.js")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(revalidated.status(), 304);
    assert_eq!(revalidated.headers()["etag"], etag.as_str());
    assert!(revalidated.bytes().await.unwrap().is_empty());
    let changed =
        server.http().get(server.url("/client.js")).header("if-none-match", "\"other\"").send().await.unwrap();
    assert_eq!(changed.status(), 200);

    // A browser accepts gzip: the same file, a quarter of the size, with its own validator.
    let gzipped =
        server.http().get(server.url("/client.js")).header("accept-encoding", "br, gzip;q=0.9").send().await.unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(gzipped.headers()["vary"], "accept-encoding");
    let gzip_etag = gzipped.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(gzip_etag, etag, "each encoding has its own ETag");
    let compressed = gzipped.bytes().await.unwrap();
    assert!(compressed.len() * 3 < source.len(), "{} bytes gzipped of {}", compressed.len(), source.len());
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut unzipped).unwrap();
    assert_eq!(unzipped, source);
    let refused =
        server.http().get(server.url("/client.js")).header("accept-encoding", "gzip;q=0").send().await.unwrap();
    assert!(refused.headers().get("content-encoding").is_none(), "q=0 refuses gzip");
}
