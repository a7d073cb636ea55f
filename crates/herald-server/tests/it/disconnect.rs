//! `POST /api/disconnect`: a user's WebSocket connections and SSE streams end with the reason
//! and the reconnect flag given, other users' stay; one client is ended by its id; bad
//! requests and weaker keys are refused; no client can reach the control channel; and on two
//! nodes sharing Redis, a disconnect sent to one node ends the user's connection on the other.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::{LineStream, Received, TestServer, WsClient};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const API_KEY: &str = "disconnect-test-key-0123456789";
const READ_ONLY_KEY: &str = "disconnect-test-read-only-key";

fn config() -> String {
    format!(
        "[api]\nkeys = [\"{API_KEY}\"]\nread_only_keys = [\"{READ_ONLY_KEY}\"]\n\
         [auth]\nhmac_secret = \"{SECRET}\"\n[namespaces.m]\nanonymous = true\n"
    )
}

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 3600, "channels": ["m:*"]});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

async fn disconnect(server: &TestServer, key: &str, body: Value) -> (u16, Value) {
    let response = server.http().post(server.url("/api/disconnect")).bearer_auth(key).json(&body).send().await.unwrap();
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
