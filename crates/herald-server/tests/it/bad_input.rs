//! Bad input over WebSocket: each gets a stable error code or a close code with a reason, and
//! the server keeps serving everyone else.

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Received, TestServer, WsClient};

async fn reply_to(client: &mut WsClient, text: &str) -> Value {
    client.send_text(text).await;
    match client.receive_raw().await {
        Received::Json(value) => value,
        other => panic!("expected a reply to {text:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_incomplete_commands_get_error_replies() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let cases: &[(&str, Option<u64>, &str)] = &[
        ("{not json", None, "bad_request"),
        ("[1,2,3]", None, "bad_request"),
        (r#"{"op":"ping"}"#, None, "missing_id"),
        (r#"{"id":"seven","op":"ping"}"#, None, "bad_request"),
        (r#"{"id":1}"#, Some(1), "missing_field"),
        (r#"{"id":2,"op":"dance"}"#, Some(2), "unknown_op"),
        (r#"{"id":3,"op":"subscribe"}"#, Some(3), "missing_field"),
        (r#"{"id":4,"op":"subscribe","channel":"no spaces"}"#, Some(4), "invalid_channel"),
        (r#"{"id":5,"op":"subscribe","channel":""}"#, Some(5), "invalid_channel"),
        (r#"{"id":6,"op":"publish","channel":"a"}"#, Some(6), "missing_field"),
        (r#"{"id":7,"op":"subscribe","channel":"a","since":{"epoch":1}}"#, Some(7), "bad_request"),
        (r#"{"id":8,"op":"unsubscribe","channel":"never"}"#, Some(8), "not_subscribed"),
        (r#"{"id":9,"op":"presence","channel":"a"}"#, Some(9), "presence_disabled"),
    ];
    for (text, id, code) in cases {
        let reply = reply_to(&mut client, text).await;
        assert_eq!(reply["error"]["code"], *code, "{text} -> {reply}");
        assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
        match id {
            Some(id) => assert_eq!(reply["id"], *id, "{text} -> {reply}"),
            None if reply.get("id").is_some() => panic!("{text} -> {reply} should have no id"),
            None => {}
        }
    }
    client.subscribe("a").await;
    let reply = reply_to(&mut client, r#"{"id":10,"op":"subscribe","channel":"a"}"#).await;
    assert_eq!(reply["error"]["code"], "already_subscribed");
    let reply = reply_to(&mut client, r#"{"id":11,"op":"ping"}"#).await;
    assert_eq!(reply, json!({"id": 11, "result": {}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_data_is_data() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let reply = client.command(json!({"op": "publish", "channel": "a", "data": null})).await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_get_an_error_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.stream.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let Received::Json(reply) = client.receive_raw().await else { panic!("expected an error reply") };
    assert_eq!(reply["error"]["code"], "binary_not_supported");
    assert_eq!(client.command(json!({"op": "ping"})).await["result"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_where_clients_may_not_is_refused() {
    let server = TestServer::with_config("[namespaces.news]\nclient_publish = false").await;
    let mut client = server.client().await;
    let reply = client.command(json!({"op": "publish", "channel": "news:today", "data": 1})).await;
    assert_eq!(reply["error"]["code"], "permission_denied", "{reply}");
    let reply = client.command(json!({"op": "publish", "channel": "chat:today", "data": 1})).await;
    assert_eq!(reply["result"]["offset"], 1, "other namespaces allow it: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_with_1009_and_others_are_unaffected() {
    let server = TestServer::with_config("[limits]\nmax_message_size = 1024").await;
    let mut bystander = server.client().await;
    bystander.subscribe("a").await;
    let mut client = server.client().await;
    let big = json!({"id": 1, "op": "publish", "channel": "a", "data": "x".repeat(2000)}).to_string();
    client.send_text(&big).await;
    let (_, close) = client.read_until_close().await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    assert!(!reason.is_empty());
    let just_fits = json!({"op": "publish", "channel": "a", "data": "x".repeat(900)});
    let reply = bystander.command(just_fits).await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_channels_per_connection_is_refused() {
    let server = TestServer::with_config("[limits]\nmax_channels_per_connection = 2").await;
    let mut client = server.client().await;
    client.subscribe("a").await;
    client.subscribe("b").await;
    let reply = client.command(json!({"op": "subscribe", "channel": "c"})).await;
    assert_eq!(reply["error"]["code"], "too_many_channels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_random_and_mutated_frames_leave_the_server_answering() {
    let server = TestServer::with_config("[limits]\nmax_message_size = 4096").await;
    let valid = [
        r#"{"id":1,"op":"subscribe","channel":"fuzz:a","since":{"epoch":"x","offset":3}}"#,
        r#"{"id":2,"op":"publish","channel":"fuzz:a","data":{"k":[1,2,{"z":null}]}}"#,
        r#"{"id":3,"op":"history","channel":"fuzz:a","limit":5,"reverse":true}"#,
        r#"{"id":4,"op":"unsubscribe","channel":"fuzz:a"}"#,
        r#"{"id":5,"op":"ping"}"#,
    ];
    let mut rng = fastrand::Rng::with_seed(0x4845_5241_4c44);
    let mut client = server.client().await;
    let mut oversized = 0;
    for sent in 1..=3000 {
        let (frame, too_big) = match rng.u8(..4) {
            0 => {
                let len = rng.usize(..300);
                (Message::binary((0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>()), false)
            }
            1 => {
                let len = rng.usize(..200);
                (Message::text((0..len).map(|_| rng.char(' '..='~')).collect::<String>()), false)
            }
            _ => {
                let mut text: Vec<char> = valid[rng.usize(..valid.len())].chars().collect();
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(..text.len().max(1));
                    match rng.u8(..3) {
                        0 if !text.is_empty() => {
                            text.remove(at.min(text.len() - 1));
                        }
                        1 => text.insert(at.min(text.len()), rng.char(' '..='~')),
                        _ if !text.is_empty() => {
                            let last = text.len() - 1;
                            text[at.min(last)] = rng.char(..);
                        }
                        _ => {}
                    }
                }
                let too_big = rng.u8(..50) == 0;
                if too_big {
                    text.extend(std::iter::repeat_n('x', 5000));
                }
                (Message::text(text.into_iter().collect::<String>()), too_big)
            }
        };
        client.stream.send(frame).await.expect("the connection is open");
        if too_big {
            // Only an oversized frame ends a connection, and it ends it with 1009.
            oversized += 1;
            let (_, close) = client.read_until_close().await;
            assert_eq!(close.map(|(code, _)| code), Some(1009), "frame {sent}");
            client = server.client().await;
        } else if sent % 50 == 0 {
            assert!(answers_sync_ping(&mut client).await, "the connection still answers after frame {sent}");
        }
    }
    assert!(oversized > 10, "the mix includes oversized frames: {oversized}");
    assert!(answers_sync_ping(&mut client).await);
    let mut fresh = server.client().await;
    assert_eq!(fresh.command(json!({"op": "ping"})).await["result"], json!({}));
    let reply = fresh.command(json!({"op": "publish", "channel": "fuzz:b", "data": 1})).await;
    assert!(reply["result"]["offset"].is_u64(), "{reply}");
}

/// Sends a ping with a reserved id and reads until its reply; false if the connection ended.
async fn answers_sync_ping(client: &mut WsClient) -> bool {
    if client.stream.send(Message::text(r#"{"id":999999,"op":"ping"}"#)).await.is_err() {
        return false;
    }
    loop {
        match client.receive_raw().await {
            Received::Json(value) if value["id"] == 999999 => return true,
            Received::Json(_) => {}
            Received::Close(_) | Received::Ended => return false,
        }
    }
}
