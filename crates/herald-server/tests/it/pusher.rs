//! The Pusher door's refusals, from a raw WebSocket and raw HTTP: every bad input gets a
//! Pusher error or close code pusher-js acts on, the HTTP API's signing is enforced, and the
//! server keeps serving. (pusher-js, laravel-echo and the server SDK are in `e2e/pusher*.js`.)

use serde_json::{Value, json};

use std::time::Duration;

use crate::helpers::{Received, TestServer, WsClient};
use crate::webhooks::{Call, Receiver};

const CONFIG: &str = r#"
[limits]
max_message_size = 4096

[pusher]
max_presence_members = 2

[[pusher.apps]]
id = "7"
key = "the-key"
secret = "the-secret"
namespace = "p"

[namespaces.closed]
anonymous = false
client_publish = false

[[pusher.apps]]
id = "8"
key = "closed-key"
secret = "closed-secret"
namespace = "closed"
"#;

async fn event(client: &mut WsClient) -> Value {
    match client.receive_raw().await {
        Received::Json(value) => value,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The event's `data`, decoded when it is a JSON string (as Pusher sends it).
fn data(event: &Value) -> Value {
    match &event["data"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
        other => other.clone(),
    }
}

async fn connect(server: &TestServer, path: &str) -> WsClient {
    WsClient::connect(&format!("ws://{}{path}", server.addr)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_and_protocol_versions_are_refused_with_pusher_s_codes() {
    let server = TestServer::with_config(CONFIG).await;
    for (path, code) in [
        ("/app/no-such-key?protocol=7", 4001),
        ("/app/the-key", 4008),
        ("/app/the-key?protocol=3", 4007),
        ("/app/the-key?protocol=seven", 4006),
    ] {
        let mut client = connect(&server, path).await;
        let error = event(&mut client).await;
        assert_eq!(error["event"], "pusher:error", "{path}: {error}");
        assert_eq!(error["data"]["code"], code, "{path}: {error}");
        match client.receive_raw().await {
            Received::Close(Some((closed, reason))) => {
                assert_eq!(closed, code, "{path}");
                assert!(!reason.is_empty());
            }
            other => panic!("{path}: expected a close, got {other:?}"),
        }
    }
    // Under the fallbacks' path too, as pusher-js connects when `httpPath` is set.
    let mut client = connect(&server, "/pusher/app/the-key?protocol=7").await;
    assert_eq!(event(&mut client).await["event"], "pusher:connection_established");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_get_errors_and_the_connection_goes_on() {
    let server = TestServer::with_config(CONFIG).await;
    let mut client = connect(&server, "/app/the-key?protocol=7").await;
    let established = event(&mut client).await;
    assert_eq!(established["event"], "pusher:connection_established");
    let socket_id = data(&established)["socket_id"].as_str().unwrap().to_string();
    assert!(socket_id.split_once('.').is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()));
    assert_eq!(data(&established)["activity_timeout"], 120);
    let cases: &[(&str, &str)] = &[
        ("{not json", "pusher:error"),
        (r#"{"event":"pusher:dance"}"#, "pusher:error"),
        (r#"{"event":"pusher:subscribe"}"#, "pusher:error"),
        (r#"{"event":"pusher:subscribe","data":{"channel":"a:b"}}"#, "pusher:subscription_error"),
        (
            r#"{"event":"pusher:subscribe","data":{"channel":"private-x","auth":"the-key:00"}}"#,
            "pusher:subscription_error",
        ),
        (r#"{"event":"client-x","channel":"never-subscribed","data":{}}"#, "pusher:error"),
        (r#"{"event":"pusher:signin","data":{"auth":"the-key:00","user_data":"{\"id\":\"u\"}"}}"#, "pusher:error"),
    ];
    for (text, expected) in cases {
        client.send_text(text).await;
        let reply = event(&mut client).await;
        assert_eq!(reply["event"], *expected, "{text} -> {reply}");
    }
    // A presence subscription with a valid signature but no user id in its data.
    let channel_data = r#"{"user_info":{}}"#;
    let auth = herald_server::pusher::signature::channel_auth(
        "the-key",
        "the-secret",
        &socket_id,
        "presence-room",
        Some(channel_data),
    );
    let subscribe =
        json!({"event":"pusher:subscribe","data":{"channel":"presence-room","auth":auth,"channel_data":channel_data}});
    client.send_text(&subscribe.to_string()).await;
    let refused = event(&mut client).await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["data"]["type"], "InvalidChannelData");
    // Still serving: ping, then a public subscription and an event through Herald's own API.
    client.send_text(r#"{"event":"pusher:ping","data":{}}"#).await;
    assert_eq!(event(&mut client).await["event"], "pusher:pong");
    client.send_text(r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#).await;
    assert_eq!(event(&mut client).await["event"], "pusher_internal:subscription_succeeded");
    server.publish("p:news", json!({"event": "hello", "data": "{\"n\":1}"})).await;
    let hello = event(&mut client).await;
    assert_eq!((hello["event"].as_str(), hello["channel"].as_str()), (Some("hello"), Some("news")));
    assert_eq!(data(&hello), json!({"n": 1}));
    // A frame over the message size limit closes with WebSocket's own code.
    client.send_text(&"x".repeat(5000)).await;
    match client.receive_raw().await {
        Received::Close(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_refuses_what_is_not_signed_right() {
    let server = TestServer::with_config(CONFIG).await;
    let sign = |method: &str, path: &str, body: &str, timestamp: u64, secret: &str| -> String {
        let md5 = md5_hex(body.as_bytes());
        let mut query = vec![
            ("auth_key".to_string(), "the-key".to_string()),
            ("auth_timestamp".to_string(), timestamp.to_string()),
            ("auth_version".to_string(), "1.0".to_string()),
        ];
        if !body.is_empty() {
            query.push(("body_md5".to_string(), md5));
        }
        let signature = herald_server::pusher::signature::request_signature(secret, method, path, &query);
        let pairs: Vec<String> = query.iter().map(|(key, value)| format!("{key}={value}")).collect();
        format!("{path}?{}&auth_signature={signature}", pairs.join("&"))
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let body = r#"{"name":"e","channel":"news","data":"{}"}"#;
    let post = |url: String, body: &'static str| {
        let request = server.http().post(server.url(&url)).header("content-type", "application/json").body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, reply) = post(sign("POST", "/apps/7/events", body, now, "the-secret"), body).await;
    assert_eq!((status, reply.clone()), (200, json!({})), "{reply}");
    for (url, code, status_expected) in [
        (sign("POST", "/apps/7/events", body, now, "wrong"), "invalid_signature", 401),
        (sign("POST", "/apps/7/events", body, now - 3600, "the-secret"), "invalid_signature", 401),
        (sign("POST", "/apps/7/events", "{}", now, "the-secret"), "invalid_signature", 401),
        (sign("POST", "/apps/9/events", body, now, "the-secret"), "app_not_found", 404),
    ] {
        let (status, reply) = post(url, body).await;
        assert_eq!(status, status_expected, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    for (bad, code) in [
        (r#"{"name":"e","data":"{}"}"#, "invalid_event"),
        (r#"{"name":"e","channel":"a b","data":"{}"}"#, "invalid_channel"),
        (r#"{"name":"e","channel":"news","data":"{}","socket_id":"abc"}"#, "invalid_socket_id"),
        (r#"{"name":"e","channel":"news"}"#, "invalid_json"),
    ] {
        let bad: &'static str = Box::leak(bad.to_string().into_boxed_str());
        let (status, reply) = post(sign("POST", "/apps/7/events", bad, now, "the-secret"), bad).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (400, Some(code)), "{bad}: {reply}");
    }
    let big: &'static str =
        Box::leak(format!(r#"{{"name":"e","channel":"news","data":"{}"}}"#, "x".repeat(5000)).into_boxed_str());
    let (status, reply) = post(sign("POST", "/apps/7/events", big, now, "the-secret"), big).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (413, Some("message_too_big")), "{reply}");
    // Nothing refused reached history.
    let (_, history) = server.get_json("/api/channels/p:news/history").await;
    assert_eq!(history["publications"].as_array().map(Vec::len), Some(1), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallbacks_refuse_unknown_sessions_and_bad_sends() {
    let server = TestServer::with_config(CONFIG).await;
    let send = server
        .http()
        .post(server.url("/pusher/app/the-key/1/abc/xhr_send"))
        .body(r#"["{\"event\":\"pusher:ping\"}"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(send.status().as_u16(), 404);
    let open = server.http().post(server.url("/pusher/app/the-key/1/abc/xhr?protocol=7")).send().await.unwrap();
    assert_eq!(open.text().await.unwrap(), "o\n");
    let bad = server.http().post(server.url("/pusher/app/the-key/1/abc/xhr_send")).body("{}").send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let greeting = server.http().post(server.url("/pusher/app/the-key/1/abc/xhr?protocol=7")).send().await.unwrap();
    let text = greeting.text().await.unwrap();
    assert!(text.starts_with("a[") && text.contains("pusher:connection_established"), "{text}");
    let refused =
        server.http().post(server.url("/pusher/app/nope/1/abc/xhr_streaming?protocol=7")).send().await.unwrap();
    assert_eq!(refused.text().await.unwrap(), "c[4001,\"no app with this key on this server\"]\n");
}

/// Subscribes with a signature made here, as the app's auth endpoint would.
async fn subscribe_signed(
    client: &mut WsClient,
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    user: Option<&str>,
) -> Value {
    let channel_data = user.map(|user| json!({"user_id": user}).to_string());
    let auth = herald_server::pusher::signature::channel_auth(key, secret, socket_id, channel, channel_data.as_deref());
    let subscribe =
        json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":channel_data}});
    client.send_text(&subscribe.to_string()).await;
    event(client).await
}

async fn established(server: &TestServer, key: &str) -> (WsClient, String) {
    let mut client = connect(server, &format!("/app/{key}?protocol=7")).await;
    let socket_id = data(&event(&mut client).await)["socket_id"].as_str().unwrap().to_string();
    (client, socket_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_rules_and_the_member_cap_hold_on_the_door() {
    let server = TestServer::with_config(CONFIG).await;
    // A declared namespace closed to clients without a token has no public channels, and
    // without client_publish no client events.
    let (mut closed, socket_id) = established(&server, "closed-key").await;
    closed.send_text(r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#).await;
    let refused = event(&mut closed).await;
    assert_eq!(
        (refused["event"].as_str(), refused["data"]["status"].as_u64()),
        (Some("pusher:subscription_error"), Some(403))
    );
    let ok = subscribe_signed(&mut closed, "closed-key", "closed-secret", &socket_id, "private-x", None).await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    closed.send_text(r#"{"event":"client-x","channel":"private-x","data":{}}"#).await;
    let refused = event(&mut closed).await;
    assert!(refused["data"]["message"].as_str().unwrap().contains("client_publish"), "{refused}");
    // Two members at most: a third user is refused, a second connection of a member is not.
    let mut members = Vec::new();
    for user in ["a", "b"] {
        let (mut client, socket_id) = established(&server, "the-key").await;
        let reply =
            subscribe_signed(&mut client, "the-key", "the-secret", &socket_id, "presence-full", Some(user)).await;
        assert_eq!(reply["event"], "pusher_internal:subscription_succeeded", "{reply}");
        members.push(client);
    }
    let (mut third, socket_id) = established(&server, "the-key").await;
    let reply = subscribe_signed(&mut third, "the-key", "the-secret", &socket_id, "presence-full", Some("c")).await;
    assert_eq!(
        (reply["event"].as_str(), reply["data"]["type"].as_str()),
        (Some("pusher:subscription_error"), Some("LimitReached"))
    );
    let reply = subscribe_signed(&mut third, "the-key", "the-secret", &socket_id, "presence-full", Some("a")).await;
    assert_eq!(reply["event"], "pusher_internal:subscription_succeeded", "{reply}");
    assert_eq!(data(&reply)["presence"]["count"], 2);
    // The refused join left no trace: the users are still a and b.
    let (_, body) = server.get_json("/api/channels/p:presence-full/presence").await;
    let mut users: Vec<&str> =
        body["clients"].as_array().unwrap().iter().filter_map(|entry| entry["user"].as_str()).collect();
    users.sort_unstable();
    users.dedup();
    assert_eq!(users, ["a", "b"], "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_that_pile_up_go_in_one_call_in_order_signed() {
    let mut receiver = Receiver::down().await;
    let config = format!(
        "allow_private_webhook_targets = true\n\
         [webhook_delivery]\ntimeout = \"1s\"\nretry_schedule = [\"0s\", {}]\n\
         [presence]\ngrace_period = \"0s\"\n\
         [[pusher.apps]]\nid = \"7\"\nkey = \"the-key\"\nsecret = \"the-secret\"\nnamespace = \"p\"\n\
         [[pusher.apps.webhooks]]\nurl = \"{}\"\n",
        vec!["\"200ms\""; 49].join(", "),
        receiver.url()
    );
    let server = TestServer::with_config(&config).await;
    // While the receiver is down: the channel is occupied and five users join it.
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let (mut client, socket_id) = established(&server, "the-key").await;
        let reply =
            subscribe_signed(&mut client, "the-key", "the-secret", &socket_id, "presence-pile", Some(user)).await;
        assert_eq!(reply["event"], "pusher_internal:subscription_succeeded", "{reply}");
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.up().await;
    let names = |calls: &[Call]| -> Vec<String> {
        calls
            .iter()
            .flat_map(|call| call.json()["events"].as_array().unwrap().clone())
            .map(|event| format!("{} {}", event["name"].as_str().unwrap(), event["user_id"].as_str().unwrap_or("")))
            .collect()
    };
    let calls = receiver.wait_for("six events", Duration::from_secs(20), |calls| names(calls).len() >= 6).await;
    let expected = ["channel_occupied ", "member_added u1", "member_added u2", "member_added u3", "member_added u4"];
    assert_eq!(names(&calls)[..5], expected, "in order");
    assert_eq!(names(&calls)[5], "member_added u5");
    assert!(calls.len() < 6, "{} calls for 6 events: they were batched", calls.len());
    for call in &calls {
        let expected = herald_server::pusher::webhooks::signature("the-secret", &call.body);
        assert_eq!(call.signature, expected, "the whole batch is signed");
        let time_ms = call.json()["time_ms"].as_u64().unwrap();
        assert!(time_ms.abs_diff(herald_core::unix_millis()) < 60_000);
    }
    // The outbox's log: every event delivered, each once.
    let (_, log) = server.get_json("/api/webhooks").await;
    let id = log["webhooks"][0]["id"].as_str().unwrap().to_string();
    let (_, deliveries) = server.get_json(&format!("/api/webhooks/{id}/deliveries")).await;
    let deliveries = deliveries["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 6, "{deliveries:?}");
    assert!(deliveries.iter().all(|delivery| delivery["state"] == "delivered"));
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}
