//! Presence and join/leave across transports: who is listed, which events arrive in which
//! order, clients that vanish without a goodbye, quick reconnects, and churn.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::{LineStream, Received, TestServer, WAIT, WsClient};

const SECRET: &str = "presence-secret-0123456789abcdef";
const API_KEY: &str = "presence-api-key-0123456789";

fn token(user: &str, info: Value) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 600, "info": info});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

/// A server with `chat:*` keeping presence with join/leave, behind tokens.
async fn server(extra: &str) -> TestServer {
    TestServer::with_config(&format!(
        "[api]\nkeys = [\"{API_KEY}\"]\n[auth]\nhmac_secret = \"{SECRET}\"\n\
         [namespaces.chat]\npresence = true\njoin_leave = true\n{extra}"
    ))
    .await
}

async fn api_get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server.http().get(server.url(path)).bearer_auth(API_KEY).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn presence(server: &TestServer, channel: &str) -> Value {
    let (status, body) = api_get(server, &format!("/api/channels/{channel}/presence")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn users_of(presence: &Value) -> Vec<String> {
    let mut users: Vec<String> =
        presence["clients"].as_array().unwrap().iter().map(|c| c["user"].as_str().unwrap_or("").to_string()).collect();
    users.sort();
    users
}

/// The next join or leave push: (change, user).
async fn next_presence(client: &mut WsClient) -> (String, String) {
    loop {
        let push = client.next_push().await;
        for change in ["join", "leave"] {
            if let Some(entry) = push.get(change) {
                return (change.to_string(), entry["user"].as_str().unwrap_or("").to_string());
            }
        }
    }
}

async fn next_sse_presence(stream: &mut LineStream) -> (String, Value) {
    loop {
        let event = stream.next_event().await.expect("the stream stays open");
        if let Some(kind @ ("join" | "leave")) = event.event.as_deref() {
            let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
            return (kind.to_string(), data);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sse_and_poll_clients_join_and_leave_in_order() {
    // Long enough for Carol's next poll to come within it on a loaded machine.
    let server = server("[presence]\ngrace_period = \"3s\"\n").await;
    let room = "chat:room";
    let alice_info = json!({"name": "Alice"});
    let mut alice =
        WsClient::connect(&format!("{}?token={}", server.ws_url(), token("alice", alice_info.clone()))).await;
    alice.subscribe(room).await;
    assert_eq!(next_presence(&mut alice).await, ("join".into(), "alice".into()), "her own join");

    let mut bob = server.sse(&format!("channel={room}&token={}", token("bob", Value::Null))).await;
    assert_eq!(next_presence(&mut alice).await, ("join".into(), "bob".into()));
    let (kind, data) = next_sse_presence(&mut bob).await;
    assert_eq!((kind.as_str(), &data["join"]["user"]), ("join", &json!("bob")), "SSE: a named event");
    assert_eq!(data["channel"], room);

    // Carol polls: her first poll answers at once with her own join.
    let carol_token = token("carol", Value::Null);
    let (status, cursor, body) = server.poll(&format!("channel={room}&token={carol_token}&timeout=5")).await;
    assert_eq!(status, 200, "{body:?}");
    let body = body.unwrap();
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["events"][0]["type"], "join");
    assert_eq!(body["events"][0]["join"]["user"], "carol");
    assert_eq!(next_presence(&mut alice).await, ("join".into(), "carol".into()));
    assert_eq!(next_sse_presence(&mut bob).await.1["join"]["user"], "carol");

    let listed = presence(&server, room).await;
    assert_eq!(users_of(&listed), ["alice", "bob", "carol"]);
    let alice_entry = listed["clients"].as_array().unwrap().iter().find(|c| c["user"] == "alice").unwrap();
    assert_eq!(alice_entry["info"], alice_info);
    assert!(alice_entry["since"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(alice_entry["client"].as_str().unwrap().len(), 22);
    assert_eq!(listed["users"].as_array().unwrap().len(), 3);
    let (_, channels) = api_get(&server, "/api/channels").await;
    let entry = channels["channels"].as_array().unwrap().iter().find(|c| c["channel"] == room).unwrap().clone();
    assert_eq!(entry["presence"], 3, "{channels}");

    // Carol polls again with her cursor (the same client: no new join) and parks; Bob goes.
    let parked = {
        let (http, url) = (
            server.http().clone(),
            server.url(&format!("/poll?channel={room}&since={cursor}&timeout=8&token={carol_token}")),
        );
        tokio::spawn(async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(bob);
    assert_eq!(next_presence(&mut alice).await, ("leave".into(), "bob".into()));
    let answer = parked.await.unwrap();
    assert_eq!(answer["events"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!((&answer["events"][0]["type"], &answer["events"][0]["leave"]["user"]), (&json!("leave"), &json!("bob")));

    // Carol stops polling: she leaves once her grace period is over.
    assert_eq!(next_presence(&mut alice).await, ("leave".into(), "carol".into()));
    assert_eq!(users_of(&presence(&server, room).await), ["alice"]);

    // NDJSON: typed lines.
    let mut dave = server.ndjson(&format!("channel={room}&token={}", token("dave", Value::Null))).await;
    loop {
        let line = dave.next_json().await.unwrap();
        if line["type"] == "join" {
            assert_eq!(line["join"]["user"], "dave");
            break;
        }
    }
    assert_eq!(next_presence(&mut alice).await, ("join".into(), "dave".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_without_a_goodbye_leave_within_the_bound() {
    let server =
        server("[presence]\ngrace_period = \"1s\"\n[websocket]\nping_interval = \"1s\"\npong_timeout = \"1s\"\n").await;
    let room = "chat:vanish";
    let mut watcher = WsClient::connect(&format!("{}?token={}", server.ws_url(), token("watcher", Value::Null))).await;
    watcher.subscribe(room).await;
    next_presence(&mut watcher).await;

    // A killed process: the socket is closed by the OS, no close frame.
    let mut killed = WsClient::connect(&format!("{}?token={}", server.ws_url(), token("killed", Value::Null))).await;
    killed.subscribe(room).await;
    assert_eq!(next_presence(&mut watcher).await, ("join".into(), "killed".into()));
    let started = Instant::now();
    drop(killed);
    assert_eq!(next_presence(&mut watcher).await, ("leave".into(), "killed".into()));
    // Grace (1 s) plus the once-a-second settling, with room for a loaded machine.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "left before its grace period: {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");

    // A lost network: the client stops answering but the socket stays open; the missing
    // pongs (ping 1 s + timeout 1 s) end it, then the grace period.
    let mut frozen = WsClient::connect(&format!("{}?token={}", server.ws_url(), token("frozen", Value::Null))).await;
    frozen.subscribe(room).await;
    assert_eq!(next_presence(&mut watcher).await, ("join".into(), "frozen".into()));
    let started = Instant::now();
    // Not read from again: its pings go unanswered.
    let (kind, user) = tokio::time::timeout(WAIT, next_presence(&mut watcher)).await.unwrap();
    assert_eq!((kind.as_str(), user.as_str()), ("leave", "frozen"));
    assert!(started.elapsed() < Duration::from_secs(9), "took {:?}", started.elapsed());
    drop(frozen);
    assert_eq!(users_of(&presence(&server, room).await), ["watcher"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_reconnect_keeps_the_client_without_leave_or_join() {
    let server = server("[presence]\ngrace_period = \"3s\"\n").await;
    let room = "chat:flap";
    let mut watcher = WsClient::connect(&format!("{}?token={}", server.ws_url(), token("watcher", Value::Null))).await;
    watcher.subscribe(room).await;
    next_presence(&mut watcher).await;

    // WebSocket: the reconnect takes back its client id before subscribing.
    let erin_url = format!("{}?token={}", server.ws_url(), token("erin", Value::Null));
    let mut erin = WsClient::connect(&erin_url).await;
    let client = erin.command(json!({"op": "connect"})).await["result"]["client"].as_str().unwrap().to_string();
    erin.subscribe(room).await;
    assert_eq!(next_presence(&mut watcher).await, ("join".into(), "erin".into()));
    drop(erin);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut erin = WsClient::connect(&erin_url).await;
    let reply = erin.command(json!({"op": "connect", "client": client})).await;
    assert_eq!(reply["result"]["client"], client.as_str(), "{reply}");
    erin.subscribe(room).await;
    let reply = erin.command(json!({"op": "connect", "client": client})).await;
    assert_eq!(reply["error"]["code"], "already_subscribed", "{reply}");
    let reply = erin.command(json!({"op": "presence", "channel": room})).await;
    let clients: Vec<&str> =
        reply["result"]["clients"].as_array().unwrap().iter().map(|c| c["client"].as_str().unwrap()).collect();
    assert!(clients.contains(&client.as_str()) && clients.len() == 2, "{reply}");

    // SSE: an EventSource reconnecting with Last-Event-ID is the same client.
    let frank_token = token("frank", Value::Null);
    let mut frank = server.sse(&format!("channel={room}&token={frank_token}")).await;
    let opening = frank.next_event().await.unwrap();
    let cursor = opening.id.expect("the opening event carries the cursor");
    assert_eq!(next_presence(&mut watcher).await, ("join".into(), "frank".into()));
    drop(frank);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let request = server
        .http()
        .get(server.url(&format!("/sse?channel={room}&token={frank_token}")))
        .header("last-event-id", cursor);
    let _frank = LineStream::open(request).await;

    // Nothing flapped, past the grace period.
    tokio::time::sleep(Duration::from_secs(5)).await;
    while let Some(received) = watcher.receive_raw_quick().await {
        if let Received::Json(push) = received {
            assert!(push.get("join").is_none() && push.get("leave").is_none(), "flapped: {push}");
        }
    }
    assert_eq!(users_of(&presence(&server, room).await), ["erin", "frank", "watcher"]);

    // An unsubscribe leaves at once.
    erin.command(json!({"op": "unsubscribe", "channel": room})).await;
    assert_eq!(next_presence(&mut watcher).await, ("leave".into(), "erin".into()));
}

/// 500 clients subscribe and go at once, some of them twice: the events and the final presence
/// agree, with no duplicate join, no leave without a join, and nothing left over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_500_clients_leaves_events_and_presence_in_agreement() {
    let server = TestServer::with_config(
        "[namespaces.chat]\npresence = true\njoin_leave = true\n[presence]\ngrace_period = \"0s\"\n\
         [websocket]\noutbox_capacity = 8192\n",
    )
    .await;
    let room = "chat:churn";
    let mut watcher = server.client().await;
    watcher.subscribe(room).await;
    let watcher_id = watcher.command(json!({"op": "connect"})).await["result"]["client"].as_str().unwrap().to_string();

    let mut tasks = Vec::new();
    for index in 0..500 {
        let url = server.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut client = WsClient::connect(&url).await;
            client.subscribe("chat:churn").await;
            if index % 2 == 0 {
                client.command(json!({"op": "unsubscribe", "channel": "chat:churn"})).await;
                client.subscribe("chat:churn").await;
            }
            drop(client);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Read events until presence holds only the watcher and the stream has gone quiet.
    let mut per_client: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        while let Some(received) = watcher.receive_raw_quick().await {
            let Received::Json(push) = received else { panic!("watcher lost: {received:?}") };
            for change in ["join", "leave"] {
                if let Some(entry) = push.get(change) {
                    let client = entry["client"].as_str().unwrap().to_string();
                    per_client.entry(client).or_default().push(change.to_string());
                }
            }
        }
        let listed = presence_anonymous(&server, room).await;
        if listed["clients"].as_array().unwrap().len() == 1 {
            assert_eq!(listed["clients"][0]["client"], watcher_id.as_str());
            assert_eq!(listed["users"], json!([]), "anonymous clients are not users");
            break;
        }
        assert!(Instant::now() < deadline, "presence never settled: {listed}");
    }
    while let Some(Received::Json(push)) = watcher.receive_raw_quick().await {
        assert!(push.get("join").is_none() && push.get("leave").is_none(), "late event {push}");
    }
    per_client.remove(&watcher_id);
    assert_eq!(per_client.len(), 500, "every client joined");
    for (client, changes) in &per_client {
        let alternating = changes.iter().enumerate().all(|(i, c)| c == if i % 2 == 0 { "join" } else { "leave" });
        assert!(alternating && changes.len() % 2 == 0, "{client}: {changes:?}");
    }
    let joins: usize = per_client.values().map(|changes| changes.len() / 2).sum();
    assert_eq!(joins, 750, "250 clients joined twice (unsubscribe then subscribe)");
}

async fn presence_anonymous(server: &TestServer, channel: &str) -> Value {
    let (status, body) = server.get_json(&format!("/api/channels/{channel}/presence")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_where_it_is_not_kept_is_a_clear_error() {
    let server = TestServer::start().await;
    let (status, body) = server.get_json("/api/channels/news/presence").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("presence_disabled")), "{body}");
    let mut client = server.client().await;
    let reply = client.command(json!({"op": "presence", "channel": "news"})).await;
    assert_eq!(reply["error"]["code"], "presence_disabled");
    let reply = client.command(json!({"op": "connect", "client": "not-an-id"})).await;
    assert_eq!(reply["error"]["code"], "invalid_client");
}

/// A client id is not a credential, but it never carries one user's presence over to another:
/// taking back an id held for someone else gets a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_take_over_a_client_id() {
    let server = server("[presence]\ngrace_period = \"3s\"\n").await;
    let room = "chat:takeover";
    let mut alice = WsClient::connect(&format!("{}?token={}", server.ws_url(), token("alice", Value::Null))).await;
    let alice_id = alice.command(json!({"op": "connect"})).await["result"]["client"].as_str().unwrap().to_string();
    alice.subscribe(room).await;
    drop(alice);
    let mut mallory = WsClient::connect(&format!("{}?token={}", server.ws_url(), token("mallory", Value::Null))).await;
    mallory.command(json!({"op": "connect", "client": alice_id})).await;
    mallory.subscribe(room).await;
    let listed = presence(&server, room).await;
    let clients: Vec<(&str, &str)> = listed["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["client"].as_str().unwrap(), c["user"].as_str().unwrap()))
        .collect();
    assert_eq!(clients.len(), 2, "{listed}");
    assert!(clients.contains(&(alice_id.as_str(), "alice")), "alice's entry stays hers: {listed}");
    assert!(clients.iter().any(|(id, user)| *user == "mallory" && *id != alice_id), "{listed}");
    // And alice's entry goes when her grace period ends, whatever mallory does.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(users_of(&presence(&server, room).await), ["mallory"]);
}
