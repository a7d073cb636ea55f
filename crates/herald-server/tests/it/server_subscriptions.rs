//! Server-side subscriptions: a token's `subs` claim subscribes the connection as it connects,
//! on WebSocket (token on the upgrade or in `connect`), SSE, NDJSON and poll, without a client
//! command and whatever `channels` grants, and recovers across a reconnect like any
//! subscription; `POST /api/subscribe {user|client, channel}` adds one to live connections, on
//! any node of a cluster; bad `subs` and bad requests are refused clearly.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::{LineStream, Received, TestServer, WsClient};

const SECRET: &str = "server-subs-test-secret-0123456789";
const API_KEY: &str = "server-subs-test-key-0123456789";

fn config() -> String {
    format!(
        "[api]\nkeys = [\"{API_KEY}\"]\n[auth]\nhmac_secret = \"{SECRET}\"\n\
         [namespaces.u]\nhistory_size = 100\npresence = true\n"
    )
}

/// A token for `user` whose `channels` grant nothing, with `subs`.
fn token(user: &str, subs: Value) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = json!({"sub": user, "exp": exp, "channels": [], "subs": subs});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

async fn publish(server: &TestServer, channel: &str, data: &str) -> Value {
    server.publish_with_key(channel, json!(data), API_KEY).await.unwrap()
}

async fn api(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = server.http().post(server.url(path)).bearer_auth(API_KEY).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// The next `count` pushes (presence skipped).
async fn pushes(client: &mut WsClient, count: usize) -> Vec<Value> {
    let mut pushes = Vec::new();
    while pushes.len() < count {
        let push = client.next_push().await;
        if push.get("join").is_none() && push.get("leave").is_none() {
            pushes.push(push);
        }
    }
    pushes
}

fn data_of(pushes: &[Value]) -> Vec<(String, String)> {
    pushes
        .iter()
        .filter(|push| push.get("offset").is_some())
        .map(|push| (push["channel"].as_str().unwrap().to_string(), push["data"].as_str().unwrap().to_string()))
        .collect()
}

fn pair(channel: &str, data: &str) -> (String, String) {
    (channel.to_string(), data.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_subscribed_to_its_token_s_subs_and_recovers_them_after_a_reconnect() {
    let server = TestServer::with_config(&config()).await;
    let token = token("alice", json!(["u:alice", "u:news"]));

    // The token on the upgrade: subscribed without a command.
    let mut first = WsClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    let announced = pushes(&mut first, 2).await;
    let channels: Vec<&str> = announced.iter().map(|push| push["subscribed"]["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["u:alice", "u:news"], "{announced:?}");
    publish(&server, "u:alice", "one").await;
    publish(&server, "u:news", "two").await;
    let received = pushes(&mut first, 2).await;
    assert_eq!(data_of(&received), [pair("u:alice", "one"), pair("u:news", "two")]);
    let positions: serde_json::Map<String, Value> = received
        .iter()
        .map(|push| {
            (push["channel"].as_str().unwrap().to_string(), json!({"epoch": push["epoch"], "offset": push["offset"]}))
        })
        .collect();
    // Without a grant in `channels`, a client may still subscribe again to one of its `subs`
    // (as an SDK does after a gap), but not to another channel of the namespace.
    let reply = first.command(json!({"op": "unsubscribe", "channel": "u:news"})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = first.command(json!({"op": "subscribe", "channel": "u:news", "since": positions["u:news"]})).await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let reply = first.command(json!({"op": "subscribe", "channel": "u:bob"})).await;
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");
    drop(first);

    // Published while away; then back with `connect {token, positions}`: each missed once.
    publish(&server, "u:alice", "three").await;
    publish(&server, "u:news", "four").await;
    let mut second = WsClient::connect(&server.ws_url()).await;
    let reply = second.command(json!({"op": "connect", "token": token, "positions": positions})).await;
    assert_eq!(reply["result"]["user"], "alice", "{reply}");
    let after = pushes(&mut second, 4).await;
    let announced: Vec<&Value> = after.iter().filter(|push| push.get("subscribed").is_some()).collect();
    assert_eq!(announced.len(), 2, "{after:?}");
    assert!(announced.iter().all(|push| push["subscribed"]["recovered"] == true), "{after:?}");
    assert_eq!(data_of(&after), [pair("u:alice", "three"), pair("u:news", "four")]);

    // A refresh keeps them, though `channels` grants none of them, and does not bring back
    // one the client left.
    let reply = second.command(json!({"op": "unsubscribe", "channel": "u:news"})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = second.command(json!({"op": "refresh", "token": token})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    publish(&server, "u:news", "after the refresh").await;
    publish(&server, "u:alice", "five").await;
    assert_eq!(data_of(&pushes(&mut second, 1).await), [pair("u:alice", "five")], "u:news stays left");

    // The same positions on the upgrade URL: recovered there too.
    let encoded: String = form_urlencoded::byte_serialize(Value::Object(positions).to_string().as_bytes()).collect();
    let mut third = WsClient::connect(&format!("{}?token={token}&positions={encoded}", server.ws_url())).await;
    let after = pushes(&mut third, 6).await;
    let expected = [
        pair("u:alice", "three"),
        pair("u:alice", "five"),
        pair("u:news", "four"),
        pair("u:news", "after the refresh"),
    ];
    assert_eq!(data_of(&after), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_polls_follow_the_token_s_subs_without_naming_them() {
    let server = TestServer::with_config(&config()).await;
    let token = token("carol", json!(["u:carol"]));

    // SSE without `channel=`: the opening names the server's subscription.
    let mut sse = LineStream::open(server.http().get(server.url(&format!("/sse?token={token}")))).await;
    let opening = sse.next_event().await.unwrap();
    let open: Value = serde_json::from_str(opening.data.as_deref().unwrap()).unwrap();
    assert_eq!(open["subscribed"][0]["channel"], "u:carol", "{open}");
    publish(&server, "u:carol", "one").await;
    let event = sse.next_data_event().await.unwrap();
    let cursor = event.id.clone().unwrap();
    assert_eq!(serde_json::from_str::<Value>(event.data.as_deref().unwrap()).unwrap()["data"], "one");
    drop(sse);
    publish(&server, "u:carol", "two").await;
    // The browser's reconnect: `Last-Event-ID` resumes it.
    let request = server.http().get(server.url(&format!("/sse?token={token}"))).header("last-event-id", &cursor);
    let mut sse = LineStream::open(request).await;
    let event = sse.next_data_event().await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(event.data.as_deref().unwrap()).unwrap()["data"], "two");

    // NDJSON, beside a channel it names itself (a channel of an anonymous-free namespace needs
    // a grant, so it names none): the server's subscription alone.
    let mut ndjson = LineStream::open(server.http().get(server.url(&format!("/stream?token={token}")))).await;
    let open = ndjson.next_json().await.unwrap();
    assert_eq!(open["subscribed"][0]["channel"], "u:carol", "{open}");
    publish(&server, "u:carol", "three").await;
    assert_eq!(ndjson.next_json().await.unwrap()["data"], "three");

    // A poll: from the cursor on, what was published since.
    let (status, _, body) = server.poll(&format!("token={token}&since={cursor}&timeout=0")).await;
    assert_eq!(status, 200);
    let messages: Vec<&str> = body.as_ref().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["data"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["two", "three"]);

    // Without a token that has `subs`, a stream still needs a channel.
    let (status, body) = server.get_json("/sse").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("missing_channel")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subs_are_refused_with_the_token() {
    let server = TestServer::with_config(&config()).await;
    for subs in
        [json!(["has space"]), json!(["#herald:control"]), json!((0..65).map(|n| format!("u:{n}")).collect::<Vec<_>>())]
    {
        let bad = token("dave", subs.clone());
        let (status, body) = server.get_json(&format!("/sse?token={bad}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")), "{subs}: {body}");
        let mut client = WsClient::connect(&server.ws_url()).await;
        let reply = client.command(json!({"op": "connect", "token": bad})).await;
        assert_eq!(reply["error"]["code"], "invalid_token", "{subs}: {reply}");
    }
    let good = token("dave", json!(["u:dave"]));
    let mut client = WsClient::connect(&server.ws_url()).await;
    let reply = client
        .command(json!({"op": "connect", "token": good, "positions": {"bad name": {"epoch": "e", "offset": 1}}}))
        .await;
    assert_eq!(reply["error"]["code"], "invalid_positions", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_subscribes_a_user_s_live_connections_to_a_channel() {
    let server = TestServer::with_config(&config()).await;
    let token = token("erin", json!(["u:erin"]));
    let mut ws = WsClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    assert_eq!(pushes(&mut ws, 1).await[0]["subscribed"]["channel"], "u:erin");
    let mut sse = LineStream::open(server.http().get(server.url(&format!("/sse?token={token}")))).await;
    let opening = sse.next_event().await.unwrap();

    for (bad, code) in [
        (json!({"user": "erin"}), "bad_request"),
        (json!({"user": "erin", "channel": "#herald:control"}), "invalid_channel"),
        (json!({"user": "erin", "channel": "has space"}), "invalid_channel"),
        (json!({"channel": "u:room"}), "invalid_request"),
    ] {
        let (status, body) = api(&server, "/api/subscribe", bad.clone()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{bad}: {body}");
    }

    let (status, body) = api(&server, "/api/subscribe", json!({"user": "erin", "channel": "u:room"})).await;
    assert_eq!(status, 200, "{body}");
    let push = pushes(&mut ws, 1).await.remove(0);
    assert_eq!(push["subscribed"]["channel"], "u:room", "{push}");
    let event = sse.next_data_event().await.unwrap();
    assert_eq!(event.event.as_deref(), Some("subscribed"));
    let notice: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(notice["channel"], "u:room", "{notice}");
    assert!(notice["position"].is_object(), "{notice}");
    assert_eq!(event.id.as_deref(), notice["cursor"].as_str());
    assert_ne!(event.id, opening.id, "the cursor now names the channel too");
    publish(&server, "u:room", "hello").await;
    assert_eq!(data_of(&pushes(&mut ws, 1).await), [pair("u:room", "hello")]);
    let event = sse.next_data_event().await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(event.data.as_deref().unwrap()).unwrap()["data"], "hello");
    // Said twice: the connection already follows it, and hears nothing more of it.
    let (status, _) = api(&server, "/api/subscribe", json!({"user": "erin", "channel": "u:room"})).await;
    assert_eq!(status, 200);
    publish(&server, "u:room", "again").await;
    assert_eq!(data_of(&pushes(&mut ws, 1).await), [pair("u:room", "again")]);
    // And the server's unsubscribe ends it.
    let (status, _) = api(&server, "/api/unsubscribe", json!({"user": "erin", "channel": "u:room"})).await;
    assert_eq!(status, 200);
    assert_eq!(pushes(&mut ws, 1).await[0]["unsubscribed"]["channel"], "u:room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_sent_to_one_node_reaches_the_user_s_connection_on_another() {
    let Ok(url) = std::env::var("HERALD_TEST_REDIS_URL") else {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is unset (.ci/run sets it)");
        return;
    };
    let config = format!("engine = \"redis\"\n[redis]\nurls = [\"{url}\"]\n{}", config());
    let (a, b) = (TestServer::with_config(&config).await, TestServer::with_config(&config).await);
    let user = format!("gina-{:x}", fastrand::u64(..));
    let channel = format!("u:room-{:x}", fastrand::u64(..));
    let mut on_b = WsClient::connect(&format!("{}?token={}", b.ws_url(), token(&user, json!([])))).await;
    // Node A's control subscription may still be settling on Redis: repeat until heard (the
    // connection subscribes once; a repeat finds it subscribed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = api(&a, "/api/subscribe", json!({"user": user, "channel": channel})).await;
        assert_eq!(status, 200);
        match tokio::time::timeout(std::time::Duration::from_millis(500), on_b.next_push()).await {
            Ok(push) => {
                assert_eq!(push["subscribed"]["channel"], channel.as_str(), "{push}");
                break;
            }
            Err(_) => assert!(std::time::Instant::now() < deadline, "node B never heard node A's subscribe"),
        }
    }
    // A publication through node A reaches the connection on node B.
    publish(&a, &channel, "across").await;
    assert_eq!(data_of(&pushes(&mut on_b, 1).await), [pair(&channel, "across")]);
    match on_b.receive_raw_quick().await {
        None => {}
        Some(Received::Json(extra)) => assert!(extra.get("subscribed").is_none(), "subscribed once: {extra}"),
        Some(other) => panic!("{other:?}"),
    }
}
