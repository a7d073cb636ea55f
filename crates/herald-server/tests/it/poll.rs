//! Long- and short-polling end to end: parking, cursor hand-off, batching, timeouts, scale.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::TestServer;

fn offsets(body: &Value) -> Vec<u64> {
    body["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_poll_answers_at_once_and_a_long_poll_waits_for_a_publication() {
    let server = TestServer::start().await;
    let (status, cursor, body) = server.poll("channel=a&timeout=0").await;
    assert_eq!((status, body), (204, None));
    assert!(!cursor.is_empty(), "a 204 still carries the cursor to use next");

    let parked = {
        let url = server.url(&format!("/poll?channel=a&since={cursor}&timeout=10"));
        let http = server.http().clone();
        tokio::spawn(async move { http.get(url).send().await.unwrap() })
    };
    server.wait_for_subscribers("a", 1).await;
    server.publish("a", json!("wake up")).await;
    let response = parked.await.unwrap();
    assert_eq!(response.status(), 200);
    let header = response.headers()["herald-cursor"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["messages"][0]["data"], "wake up");
    assert_eq!(body["cursor"], header, "the header and the body agree");
    assert_eq!(server.subscriber_count("a").await, 0, "an answered poll leaves no subscriber");

    let (status, next, _) = server.poll(&format!("channel=a&since={header}&timeout=0")).await;
    assert_eq!((status, next), (204, header), "nothing new: the cursor is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_times_out_with_204_and_huge_timeouts_are_capped() {
    let server = TestServer::with_config("[poll]\ndefault_timeout = \"200ms\"\nmax_timeout = \"300ms\"").await;
    let started = std::time::Instant::now();
    let (status, _, _) = server.poll("channel=a").await;
    assert_eq!(status, 204);
    let (status, _, _) = server.poll("channel=a&timeout=100000000").await;
    assert_eq!(status, 204);
    assert!(started.elapsed() < Duration::from_secs(5), "the cap applies");
    for (query, code) in [
        ("channel=a&timeout=-1", "invalid_timeout"),
        ("channel=a&timeout=soon", "invalid_timeout"),
        ("channel=a&timeout=NaN", "invalid_timeout"),
        ("channel=a&since=%%%", "invalid_cursor"),
        ("timeout=1", "missing_channel"),
    ] {
        let (status, body) = server.get_json(&format!("/poll?{query}")).await;
        assert_eq!((status, body["error"]["code"].as_str().unwrap()), (400, code), "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_loop_sees_a_thousand_publications_exactly_once_in_order() {
    let server = TestServer::with_config("[namespaces.default]\nhistory_size = 2000\n[poll]\nmax_messages = 64").await;
    let total = 1000u64;
    let (_, mut cursor, _) = server.poll("channel=a&channel=b&timeout=0").await;
    let publisher = {
        let http = server.http().clone();
        let url = server.url("/api/publish");
        tokio::spawn(async move {
            for n in 0..total {
                // Bursts and pauses: publications land while a poll is parked and between polls.
                if n % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let channel = if n % 3 == 0 { "b" } else { "a" };
                let body = json!({"channel": channel, "data": n});
                assert_eq!(http.post(&url).json(&body).send().await.unwrap().status(), 200);
            }
        })
    };
    let mut seen = Vec::new();
    let mut polls = 0;
    while seen.len() < total as usize {
        let (status, next, body) = server.poll(&format!("channel=a&channel=b&since={cursor}&timeout=5")).await;
        polls += 1;
        assert!(polls < 5000, "the loop makes progress");
        if status == 200 {
            let body = body.unwrap();
            assert!(body["messages"].as_array().unwrap().len() <= 64, "answers are batched up to the limit");
            seen.extend(body["messages"].as_array().unwrap().iter().map(|m| m["data"].as_u64().unwrap()));
        }
        cursor = next;
    }
    publisher.await.unwrap();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..total).collect::<Vec<_>>(), "no loss, no duplicate");
    let per_channel = |channel_of: fn(&u64) -> bool| -> Vec<u64> { seen.iter().copied().filter(channel_of).collect() };
    let on_b = per_channel(|n| n % 3 == 0);
    assert!(on_b.windows(2).all(|pair| pair[0] < pair[1]), "each channel keeps its order");
    let on_a = per_channel(|n| n % 3 != 0);
    assert!(on_a.windows(2).all(|pair| pair[0] < pair[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_answered_in_batches() {
    let server = TestServer::with_config("[namespaces.default]\nhistory_size = 500\n[poll]\nmax_messages = 100").await;
    let (_, mut cursor, _) = server.poll("channel=a&timeout=0").await;
    for n in 0..250 {
        server.publish("a", json!(n)).await;
    }
    let mut sizes = Vec::new();
    loop {
        let (status, next, body) = server.poll(&format!("channel=a&since={cursor}&timeout=0")).await;
        if status == 204 {
            break;
        }
        let body = body.unwrap();
        sizes.push(offsets(&body).len());
        cursor = next;
    }
    assert_eq!(sizes, [100, 100, 50]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_parked_polls_are_all_answered_by_one_publication() {
    let server = TestServer::start().await;
    let (_, cursor, _) = server.poll("channel=crowd&timeout=0").await;
    let parked = 2000;
    // HTTP/1.1 without pipelining: each poll in flight holds a connection of its own.
    let http = crate::helpers::http_client();
    let polls: Vec<_> = (0..parked)
        .map(|_| {
            let http = http.clone();
            let url = server.url(&format!("/poll?channel=crowd&since={cursor}&timeout=20"));
            tokio::spawn(async move {
                let response = http.get(url).send().await.unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    server.wait_for_subscribers("crowd", parked).await;
    server.publish("crowd", json!("everyone")).await;
    for poll in polls {
        let (status, body) = poll.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["messages"][0]["data"], "everyone");
    }
    assert_eq!(server.subscriber_count("crowd").await, 0);
}
