//! The server API acting on live connections.
//! - `POST /api/disconnect`: a user's WebSocket connections and SSE streams end with the reason
//!   and the reconnect flag given, other users' stay; one client is ended by its id; bad
//!   requests and weaker keys are refused; no client can reach the control channel; and on two
//!   nodes sharing Redis, a disconnect sent to one node ends the user's connection on the other.
//! - `POST /api/unsubscribe`: a user's WebSockets and SSE/NDJSON streams stop getting one
//!   channel, are told so, leave its presence, and keep their other channels; one client by its
//!   id; bad requests refused; across two nodes on Redis.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::{LineStream, Received, TestServer, WsClient};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const API_KEY: &str = "disconnect-test-key-0123456789";
const READ_ONLY_KEY: &str = "disconnect-test-read-only-key";

fn config() -> String {
    format!(
        "[api]\nkeys = [\"{API_KEY}\"]\nread_only_keys = [\"{READ_ONLY_KEY}\"]\n\
         [auth]\nhmac_secret = \"{SECRET}\"\n[namespaces.m]\nanonymous = true\npresence = true\n"
    )
}

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 3600, "channels": ["m:*"]});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

async fn disconnect(server: &TestServer, key: &str, body: Value) -> (u16, Value) {
    post(server, "/api/disconnect", key, body).await
}

async fn post(server: &TestServer, path: &str, key: &str, body: Value) -> (u16, Value) {
    let response = server.http().post(server.url(path)).bearer_auth(key).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Reads until the server closes: the `disconnect` push and the close code.
async fn told(client: &mut WsClient) -> (Value, u16) {
    let mut push = Value::Null;
    loop {
        match client.receive_raw().await {
            Received::Json(value) if value.get("disconnect").is_some() => push = value["disconnect"].clone(),
            Received::Json(_) => {}
            Received::Close(Some((code, _))) => return (push, code),
            other => panic!("expected a disconnect and a close, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_s_connections_end_with_the_reason_given_and_others_stay() {
    let server = TestServer::with_config(&config()).await;
    let ws = |user: &str| format!("{}?token={}", server.ws_url(), token(user));
    let mut alice_one = WsClient::connect(&ws("alice")).await;
    let mut alice_two = WsClient::connect(&ws("alice")).await;
    let mut bob = WsClient::connect(&ws("bob")).await;
    for client in [&mut alice_one, &mut alice_two, &mut bob] {
        client.subscribe("m:room").await;
    }
    let mut alice_stream =
        LineStream::open(server.http().get(server.url("/sse?channel=m:room")).bearer_auth(token("alice"))).await;
    let mut anonymous = WsClient::connect(&server.ws_url()).await;
    let connected = anonymous.command(json!({"op": "connect"})).await;
    let client_id = connected["result"]["client"].as_str().unwrap().to_string();
    anonymous.subscribe("m:room").await;

    // Refused: a weaker key, no target, both targets, a client id that is not one.
    let (status, body) = disconnect(&server, READ_ONLY_KEY, json!({"user": "alice"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("permission_denied")));
    for (bad, code) in [
        (json!({}), "invalid_request"),
        (json!({"user": "alice", "client": client_id}), "invalid_request"),
        (json!({"client": "nope"}), "invalid_client"),
        (json!({"user": "alice", "ban": true}), "bad_request"),
    ] {
        let (status, body) = disconnect(&server, API_KEY, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], code, "{bad}: {body}");
    }

    let (status, body) = disconnect(&server, API_KEY, json!({"user": "alice", "reason": "banned"})).await;
    assert_eq!(status, 200, "{body}");
    for alice in [&mut alice_one, &mut alice_two] {
        let (push, code) = told(alice).await;
        assert_eq!((push["code"].as_u64(), push["reason"].as_str()), (Some(4500), Some("banned")), "{push}");
        assert_eq!(push["reconnect"], false);
        assert!(push["positions"]["m:room"].is_object(), "positions to recover from: {push}");
        assert_eq!(code, 4500, "not to reconnect");
    }
    let event = loop {
        let event = alice_stream.next_event().await.expect("the stream is told before it ends");
        if event.event.as_deref() == Some("disconnect") {
            break event;
        }
    };
    let notice: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!((notice["code"].as_u64(), notice["reason"].as_str()), (Some(4500), Some("banned")));
    assert_eq!(notice["reconnect"], false);
    assert!(alice_stream.next_line().await.is_none(), "then the stream ends");

    // Bob is still here and still gets publications.
    server.publish_with_key("m:room", json!("still here"), API_KEY).await.unwrap();
    assert_eq!(bob.next_push().await["data"], "still here");

    // One client, by its id, asked to come back.
    let (status, _) = disconnect(&server, API_KEY, json!({"client": client_id, "reconnect": true})).await;
    assert_eq!(status, 200);
    let (push, code) = told(&mut anonymous).await;
    assert_eq!((push["code"].as_u64(), push["reconnect"].as_bool()), (Some(4004), Some(true)), "{push}");
    assert_eq!(push["reason"], "disconnected by the server");
    assert_eq!(code, 4004);

    // The control channel is the server's: no client subscribes or publishes there.
    let reply = bob.command(json!({"op": "subscribe", "channel": "#herald:control"})).await;
    assert!(reply.get("error").is_some(), "{reply}");
    let reply = bob.command(json!({"op": "publish", "channel": "#herald:control", "data": {}})).await;
    assert!(reply.get("error").is_some(), "{reply}");
    let (status, _) = server.get_json("/sse?channel=%23herald:control").await;
    assert_ne!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_sent_to_one_node_ends_the_user_s_connection_on_another() {
    let Ok(url) = std::env::var("HERALD_TEST_REDIS_URL") else {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is unset (.ci/run sets it)");
        return;
    };
    let config = format!("engine = \"redis\"\n[redis]\nurls = [\"{url}\"]\n{}", config());
    let (a, b) = (TestServer::with_config(&config).await, TestServer::with_config(&config).await);
    // A user of its own: runs share the machine's Redis.
    let user = format!("carol-{:x}", fastrand::u64(..));
    let mut on_b = WsClient::connect(&format!("{}?token={}", b.ws_url(), token(&user))).await;
    on_b.subscribe("m:room").await;
    // Both nodes follow the control channel from their start; give node A's subscription a
    // moment to be in place on Redis.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = disconnect(&a, API_KEY, json!({"user": user, "reason": "moved", "reconnect": true})).await;
        assert_eq!(status, 200);
        match tokio::time::timeout(std::time::Duration::from_millis(500), told(&mut on_b)).await {
            Ok((push, code)) => {
                assert_eq!((push["reason"].as_str(), code), (Some("moved"), 4004), "{push}");
                break;
            }
            Err(_) => assert!(std::time::Instant::now() < deadline, "node B never heard node A's disconnect"),
        }
    }
}

/// The next push that is not a presence event.
async fn next_push_skipping_presence(client: &mut WsClient) -> Value {
    loop {
        let push = client.next_push().await;
        if push.get("join").is_none() && push.get("leave").is_none() {
            return push;
        }
    }
}

/// The next SSE event of a type (or a publication, for `None`).
async fn next_sse(stream: &mut LineStream, kind: Option<&str>) -> Value {
    loop {
        let event = stream.next_event().await.expect("the stream goes on");
        if event.event.as_deref() == kind && event.data.is_some() {
            return serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
        }
    }
}

/// The next NDJSON line of a type (or a publication, for `None`).
async fn next_ndjson(stream: &mut LineStream, kind: Option<&str>) -> Value {
    loop {
        let line = stream.next_json().await.expect("the stream goes on");
        if line.get("type").and_then(Value::as_str) == kind {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_ends_one_channel_of_a_user_s_connections_and_leaves_the_rest() {
    let server = TestServer::with_config(&config()).await;
    let ws = |user: &str| format!("{}?token={}", server.ws_url(), token(user));
    let mut alice_one = WsClient::connect(&ws("alice")).await;
    let mut alice_two = WsClient::connect(&ws("alice")).await;
    let mut bob = WsClient::connect(&ws("bob")).await;
    for client in [&mut alice_one, &mut alice_two, &mut bob] {
        client.subscribe("m:room").await;
        client.subscribe("m:other").await;
    }
    let open = |path: &str| {
        LineStream::open(
            server
                .http()
                .get(server.url(&format!("{path}?channel=m:room&channel=m:other")))
                .bearer_auth(token("alice")),
        )
    };
    let (mut alice_sse, mut alice_ndjson) = (open("/sse").await, open("/stream").await);
    let presence_users = |server: &TestServer| {
        let url = server.url("/api/channels/m:room/presence");
        let request = server.http().get(url).bearer_auth(API_KEY);
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            let mut users: Vec<String> = body["clients"]
                .as_array()
                .unwrap_or_else(|| panic!("a presence list: {body}"))
                .iter()
                .map(|client| client["user"].as_str().unwrap_or_default().to_string())
                .collect();
            users.sort();
            users
        }
    };
    assert_eq!(presence_users(&server).await, ["alice", "alice", "alice", "alice", "bob"]);

    // Refused: a weaker key, no channel, a bad channel, no target, an unknown field.
    let (status, body) =
        post(&server, "/api/unsubscribe", READ_ONLY_KEY, json!({"user": "alice", "channel": "m:room"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("permission_denied")));
    for (bad, code) in [
        (json!({"user": "alice"}), "bad_request"),
        (json!({"user": "alice", "channel": "has space"}), "invalid_channel"),
        (json!({"channel": "m:room"}), "invalid_request"),
        (json!({"user": "alice", "channel": "m:room", "ban": true}), "bad_request"),
        (json!({"user": "alice", "channel": "m:room", "reason": ""}), "invalid_request"),
    ] {
        let (status, body) = post(&server, "/api/unsubscribe", API_KEY, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], code, "{bad}: {body}");
    }

    let request = json!({"user": "alice", "channel": "m:room", "reason": "removed from the room"});
    let (status, body) = post(&server, "/api/unsubscribe", API_KEY, request).await;
    assert_eq!(status, 200, "{body}");
    for alice in [&mut alice_one, &mut alice_two] {
        let push = next_push_skipping_presence(alice).await;
        assert_eq!(push, json!({"unsubscribed": {"channel": "m:room", "reason": "removed from the room"}}));
    }
    let notice = next_sse(&mut alice_sse, Some("unsubscribed")).await;
    assert_eq!(
        (notice["channel"].as_str(), notice["reason"].as_str()),
        (Some("m:room"), Some("removed from the room"))
    );
    let notice = next_ndjson(&mut alice_ndjson, Some("unsubscribed")).await;
    assert_eq!(notice["channel"], "m:room");
    assert!(notice["cursor"].is_string(), "{notice}");
    // Alice's four connections left the room's presence (the streams' leave is a task of its
    // own, so give it a moment); Bob stays.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while presence_users(&server).await != ["bob"] {
        assert!(std::time::Instant::now() < deadline, "Alice still present: {:?}", presence_users(&server).await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The room's publications no longer reach Alice; the other channel's still do, and Bob gets both.
    server.publish_with_key("m:room", json!("room"), API_KEY).await.unwrap();
    server.publish_with_key("m:other", json!("other"), API_KEY).await.unwrap();
    for alice in [&mut alice_one, &mut alice_two] {
        let push = next_push_skipping_presence(alice).await;
        assert_eq!((push["channel"].as_str(), push["data"].as_str()), (Some("m:other"), Some("other")), "{push}");
    }
    assert_eq!(next_sse(&mut alice_sse, None).await["channel"], "m:other");
    assert_eq!(next_ndjson(&mut alice_ndjson, None).await["channel"], "m:other");
    assert_eq!(next_push_skipping_presence(&mut bob).await["data"], "room");
    assert_eq!(next_push_skipping_presence(&mut bob).await["data"], "other");

    // The connection knows it is no longer subscribed, and may subscribe again if it wants.
    let reply = alice_one.command(json!({"op": "unsubscribe", "channel": "m:room"})).await;
    assert_eq!(reply["error"]["code"], "not_subscribed", "{reply}");
    alice_one.subscribe("m:room").await;

    // One client, by its id; a connection not subscribed to the channel is left alone.
    let mut anonymous = WsClient::connect(&server.ws_url()).await;
    let connected = anonymous.command(json!({"op": "connect"})).await;
    let client_id = connected["result"]["client"].as_str().unwrap().to_string();
    anonymous.subscribe("m:other").await;
    let (status, _) =
        post(&server, "/api/unsubscribe", API_KEY, json!({"client": client_id, "channel": "m:room"})).await;
    assert_eq!(status, 200);
    let (status, _) =
        post(&server, "/api/unsubscribe", API_KEY, json!({"client": client_id, "channel": "m:other"})).await;
    assert_eq!(status, 200);
    let push = next_push_skipping_presence(&mut anonymous).await;
    assert_eq!(push["unsubscribed"]["channel"], "m:other", "only the channel it had: {push}");
    assert_eq!(push["unsubscribed"]["reason"], "unsubscribed by the server");
    let reply = anonymous.command(json!({"op": "ping"})).await;
    assert!(reply.get("result").is_some(), "the connection stays: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_sent_to_one_node_reaches_the_user_s_connection_on_another() {
    let Ok(url) = std::env::var("HERALD_TEST_REDIS_URL") else {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is unset (.ci/run sets it)");
        return;
    };
    let config = format!("engine = \"redis\"\n[redis]\nurls = [\"{url}\"]\n{}", config());
    let (a, b) = (TestServer::with_config(&config).await, TestServer::with_config(&config).await);
    let user = format!("dave-{:x}", fastrand::u64(..));
    let channel = format!("m:room-{:x}", fastrand::u64(..));
    let mut on_b = WsClient::connect(&format!("{}?token={}", b.ws_url(), token(&user))).await;
    on_b.subscribe(&channel).await;
    // Node A's control subscription may still be settling on Redis: repeat until heard (a
    // repeat is harmless: the connection is told once, when it still had the channel).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = post(&a, "/api/unsubscribe", API_KEY, json!({"user": user, "channel": channel})).await;
        assert_eq!(status, 200);
        match tokio::time::timeout(std::time::Duration::from_millis(500), next_push_skipping_presence(&mut on_b)).await
        {
            Ok(push) => {
                assert_eq!(push["unsubscribed"]["channel"], channel.as_str(), "{push}");
                break;
            }
            Err(_) => assert!(std::time::Instant::now() < deadline, "node B never heard node A's unsubscribe"),
        }
    }
    let reply = on_b.command(json!({"op": "unsubscribe", "channel": channel})).await;
    assert_eq!(reply["error"]["code"], "not_subscribed", "{reply}");
}

/// `herald subscribe` follows what the server says: a channel unsubscribed is said on stderr
/// and dropped (not asked for again); when none is left it exits non-zero, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_subscriber_drops_a_channel_the_server_unsubscribes() {
    use std::io::{BufRead, BufReader};
    let server = TestServer::with_config(&config()).await;
    let mut subscriber = crate::helpers::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["subscribe", "m:a", "m:b", "--url", &server.url(""), "--token", &token("erin")])
            .env_remove("HERALD_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (sender, lines) = std::sync::mpsc::channel();
    for reader in [
        Box::new(subscriber.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(subscriber.0.stderr.take().unwrap()),
    ] {
        let sender = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
    }
    let next = || lines.recv_timeout(crate::helpers::WAIT).expect("a line in time");
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    loop {
        let response = server.http().get(server.url("/api/channels")).bearer_auth(API_KEY).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        if body["channels"].as_array().is_some_and(|channels| channels.len() == 2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the subscriber never subscribed: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = post(&server, "/api/unsubscribe", API_KEY, json!({"user": "erin", "channel": "m:a"})).await;
    assert_eq!(status, 200);
    assert_eq!(next(), "herald: m:a: unsubscribed by the server (unsubscribed by the server)");
    server.publish_with_key("m:a", json!("a"), API_KEY).await.unwrap();
    server.publish_with_key("m:b", json!("b"), API_KEY).await.unwrap();
    let line: Value = serde_json::from_str(&next()).unwrap();
    assert_eq!((line["channel"].as_str(), line["data"].as_str()), (Some("m:b"), Some("b")), "{line}");

    let (status, _) = post(&server, "/api/unsubscribe", API_KEY, json!({"user": "erin", "channel": "m:b"})).await;
    assert_eq!(status, 200);
    assert_eq!(next(), "herald: m:b: unsubscribed by the server (unsubscribed by the server)");
    assert!(next().contains("Herald unsubscribed every channel"));
    let exit = subscriber.0.wait().unwrap();
    assert!(!exit.success(), "{exit:?}");
}

async fn next_event(subscription: &mut herald_client::Subscription) -> Option<herald_client::Event> {
    use futures_util::StreamExt;
    tokio::time::timeout(crate::helpers::WAIT, subscription.next()).await.expect("an event in time")
}

/// The Rust SDK ends the subscription the server unsubscribes, with the reason, and keeps the
/// others; the subscription is not made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_ends_a_subscription_the_server_unsubscribes() {
    use herald_client::{Client, Event, Options};
    let server = TestServer::with_config(&config()).await;
    let options = Options { token: Some(token("frank")), ..Options::default() };
    let client = Client::connect(&server.url(""), options).await.unwrap();
    let (mut gone, mut kept) =
        (client.subscribe("m:gone", None).await.unwrap(), client.subscribe("m:kept", None).await.unwrap());
    assert!(matches!(next_event(&mut gone).await, Some(Event::Subscribed { .. })));
    assert!(matches!(next_event(&mut kept).await, Some(Event::Subscribed { .. })));
    let request = json!({"user": "frank", "channel": "m:gone", "reason": "room closed"});
    assert_eq!(post(&server, "/api/unsubscribe", API_KEY, request).await.0, 200);
    match next_event(&mut gone).await {
        Some(Event::Unsubscribed { reason }) => assert_eq!(reason, "room closed"),
        other => panic!("expected the unsubscribe, got {other:?}"),
    }
    assert!(next_event(&mut gone).await.is_none(), "then the subscription ends");
    server.publish_with_key("m:kept", json!("still"), API_KEY).await.unwrap();
    match next_event(&mut kept).await {
        Some(Event::Publication(publication)) => assert_eq!(publication.data.get(), "\"still\""),
        other => panic!("expected a publication, got {other:?}"),
    }
    client.close().await;
}
