//! The WebSocket transport end to end: delivery, ordering, fan-out, recovery, slow consumers,
//! keep-alive.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{TestServer, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_from_the_api_reaches_a_websocket_subscriber() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let subscribed = client.subscribe("chat:lobby").await;
    assert_eq!(subscribed["channel"], "chat:lobby");
    assert_eq!(subscribed["position"]["offset"], 0);
    assert!(subscribed.get("recovered").is_none(), "no since, no recovered: {subscribed}");

    let published = server.publish("chat:lobby", json!({"text": "hi"})).await;
    let push = client.next_push().await;
    assert_eq!(push["channel"], "chat:lobby");
    assert_eq!(push["data"], json!({"text": "hi"}));
    assert_eq!(push["offset"], 1);
    assert_eq!(push["epoch"], published["epoch"]);
    assert_eq!(push["epoch"], subscribed["position"]["epoch"]);
    assert!(push["time"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(push.get("id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_from_a_websocket_client_reach_other_clients() {
    let server = TestServer::start().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    bob.subscribe("room").await;
    let reply = alice.command(json!({"op": "publish", "channel": "room", "data": [1, "two", null]})).await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    assert_eq!(reply["result"]["channel"], "room");
    let push = bob.next_push().await;
    assert_eq!(push["data"], json!([1, "two", null]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_delivered_in_offset_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("ticker").await;
    let publishers = 4;
    let per_publisher = 100;
    let mut tasks = Vec::new();
    for publisher in 0..publishers {
        let http = server.http().clone();
        let url = server.url("/api/publish");
        tasks.push(tokio::spawn(async move {
            for seq in 0..per_publisher {
                let body = json!({"channel": "ticker", "data": {"publisher": publisher, "seq": seq}});
                let response = http.post(&url).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut last_seq = vec![-1i64; publishers];
    for expected_offset in 1..=(publishers * per_publisher) as u64 {
        let push = client.next_push().await;
        assert_eq!(push["offset"], expected_offset);
        let publisher = push["data"]["publisher"].as_u64().unwrap() as usize;
        let seq = push["data"]["seq"].as_i64().unwrap();
        assert_eq!(seq, last_seq[publisher] + 1, "each publisher's order is kept");
        last_seq[publisher] = seq;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_all_receive_every_message() {
    let server = TestServer::start().await;
    let subscribers = 1000;
    let messages = 20u64;
    let mut clients = Vec::new();
    // Connect in waves so the listen backlog is never the limit.
    for _ in 0..(subscribers / 100) {
        let wave: Vec<_> = (0..100)
            .map(|_| {
                let url = server.ws_url();
                tokio::spawn(async move {
                    let mut client = WsClient::connect(&url).await;
                    client.subscribe("crowd").await;
                    client
                })
            })
            .collect();
        for task in wave {
            clients.push(task.await.unwrap());
        }
    }
    assert_eq!(server.subscriber_count("crowd").await, subscribers as u64);
    for n in 0..messages {
        server.publish("crowd", json!(n)).await;
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for _ in 0..messages {
                    offsets.push(client.next_push().await["offset"].as_u64().unwrap());
                }
                offsets
            })
        })
        .collect();
    let expected: Vec<u64> = (1..=messages).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("a").await;
    client.subscribe("b").await;
    let reply = client.command(json!({"op": "unsubscribe", "channel": "a"})).await;
    assert_eq!(reply["result"], json!({}));
    server.publish("a", json!("not for you")).await;
    server.publish("b", json!("for you")).await;
    let push = client.next_push().await;
    assert_eq!((push["channel"].clone(), push["data"].clone()), (json!("b"), json!("for you")));
    assert_eq!(server.subscriber_count("a").await, 0);
    let reply = client.command(json!({"op": "unsubscribe", "channel": "a"})).await;
    assert_eq!(reply["error"]["code"], "not_subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_since_returns_exactly_the_missed_publications() {
    let server = TestServer::start().await;
    let mut first = server.client().await;
    first.subscribe("news").await;
    server.publish("news", json!(1)).await;
    let seen = first.next_push().await;
    drop(first);

    for n in 2..=5 {
        server.publish("news", json!(n)).await;
    }
    let mut again = server.client().await;
    let since = json!({"epoch": seen["epoch"], "offset": seen["offset"]});
    let reply = again.command(json!({"op": "subscribe", "channel": "news", "since": since})).await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert_eq!(reply["result"]["position"]["offset"], 5);
    server.publish("news", json!(6)).await;
    let mut received = Vec::new();
    for _ in 0..5 {
        received.push(again.next_push().await["data"].clone());
    }
    assert_eq!(received, [json!(2), json!(3), json!(4), json!(5), json!(6)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_from_a_lost_epoch_says_recovered_false() {
    let server = TestServer::start().await;
    server.publish("news", json!(1)).await;
    let mut client = server.client().await;
    let since = json!({"epoch": "long-gone", "offset": 1});
    let reply = client.command(json!({"op": "subscribe", "channel": "news", "since": since})).await;
    assert_eq!(reply["result"]["recovered"], false, "{reply}");
    assert_eq!(reply["result"]["position"]["offset"], 1);
    server.publish("news", json!(2)).await;
    assert_eq!(client.next_push().await["data"], 2, "live delivery continues from the current position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_a_channel() {
    let server = TestServer::start().await;
    for n in 1..=5 {
        server.publish("log", json!(n)).await;
    }
    let mut client = server.client().await;
    let reply = client.command(json!({"op": "history", "channel": "log", "limit": 2})).await;
    let offsets: Vec<u64> =
        reply["result"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [1, 2]);
    let epoch = reply["result"]["position"]["epoch"].clone();
    let reply = client
        .command(json!({"op": "history", "channel": "log", "since": {"epoch": epoch, "offset": 2}, "limit": 10}))
        .await;
    let offsets: Vec<u64> =
        reply["result"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [3, 4, 5]);
    let reply =
        client.command(json!({"op": "history", "channel": "log", "since": {"epoch": "other", "offset": 2}})).await;
    assert_eq!(reply["error"]["code"], "epoch_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_with_a_recoverable_position_and_hurts_nobody() {
    // The default write timeout (10 s) is longer than this test takes: the cut-off must come
    // from the overflowing queue even while a write to the slow client is blocked. A queue of 64
    // absorbs scheduling hiccups of the fast subscriber's task on a busy machine; the slow one,
    // which never reads, fills its socket buffers and then any queue.
    let server =
        TestServer::with_config("[websocket]\noutbox_capacity = 64\n[namespaces.default]\nhistory_size = 5000").await;
    let mut slow = server.client().await;
    slow.subscribe("firehose").await;
    let mut fast = server.client().await;
    fast.subscribe("firehose").await;

    // Enough data to fill the slow client's socket buffers and then its queue.
    let payload = "x".repeat(16 * 1024);
    let total = 800u64;
    let fast_reader = tokio::spawn(async move {
        let mut offsets = Vec::new();
        for _ in 0..total {
            offsets.push(fast.next_push().await["offset"].as_u64().unwrap());
        }
        offsets
    });
    // The slow client reads again once the server has cut it off (it leaves the channel's
    // subscribers first): a client that never reads again gets no goodbye, as the server
    // waits for its socket only a second, and on a loaded machine the publishing could outlast it.
    let (http, channels_url) = (server.http().clone(), server.url("/api/channels"));
    let slow_reader = tokio::spawn(async move {
        loop {
            let body: Value = http.get(&channels_url).send().await.unwrap().json().await.unwrap();
            let count = body["channels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["channel"] == "firehose")
                .map_or(0, |c| c["subscribers"].as_u64().unwrap());
            if count < 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        slow.read_until_close().await
    });
    for _ in 0..total {
        server.publish("firehose", json!(payload)).await;
    }
    assert_eq!(fast_reader.await.unwrap(), (1..=total).collect::<Vec<_>>(), "the fast subscriber got everything");

    let (pushes, close) = slow_reader.await.unwrap();
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("recover"), "{reason}");
    let disconnect = pushes.last().expect("a disconnect push")["disconnect"].clone();
    assert_eq!(disconnect["code"], 4001);
    assert_eq!(disconnect["reconnect"], true);
    let publications: Vec<&Value> = pushes.iter().filter(|push| push.get("offset").is_some()).collect();
    let last_seen = publications.last().expect("some publications arrived before the cut-off");
    let expected: Vec<u64> = (1..=publications.len() as u64).collect();
    let got: Vec<u64> = publications.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(got, expected, "what arrived had no gap");
    assert!((publications.len() as u64) < total, "the slow client was cut off early");
    assert_eq!(disconnect["positions"]["firehose"]["offset"], last_seen["offset"]);

    // The position recovers everything it missed.
    let mut back = server.client().await;
    let since = json!({"epoch": last_seen["epoch"], "offset": last_seen["offset"]});
    let reply = back.command(json!({"op": "subscribe", "channel": "firehose", "since": since})).await;
    assert_eq!(reply["result"]["recovered"], true, "{}", reply);
    let mut next = last_seen["offset"].as_u64().unwrap() + 1;
    while next <= total {
        assert_eq!(back.next_push().await["offset"], next);
        next += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_and_an_answering_one_is_kept() {
    let server = TestServer::with_config("[websocket]\nping_interval = \"200ms\"\npong_timeout = \"200ms\"").await;
    // This client never reads, so it never answers the server's pings.
    let mut silent = server.client().await;
    silent.subscribe("quiet").await;
    let mut answering = server.client().await;
    answering.subscribe("loud").await;
    let keep_reading = tokio::spawn(async move {
        // Reading makes the client library answer pings.
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, answering.stream.next()).await {}
        answering
    });
    server.wait_for_subscribers("quiet", 0).await;
    let mut answering = keep_reading.await.unwrap();
    assert_eq!(server.subscriber_count("loud").await, 1, "a client answering pings stays");
    let reply = answering.command(json!({"op": "ping"})).await;
    assert_eq!(reply["result"], json!({}));
    drop(silent);
}
