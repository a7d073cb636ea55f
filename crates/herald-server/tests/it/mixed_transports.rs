//! One publisher, subscribers on every transport at once: all see the same sequence with the
//! same offsets.

use serde_json::{Value, json};

use crate::helpers::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sse_ndjson_and_poll_see_the_same_sequence() {
    let server = TestServer::with_config("[namespaces.default]\nhistory_size = 1000").await;
    let total = 200u64;
    let mut ws = server.client().await;
    ws.subscribe("shared").await;
    let mut sse = server.sse("channel=shared").await;
    let mut ndjson = server.ndjson("channel=shared").await;
    let (_, start_cursor, _) = server.poll("channel=shared&timeout=0").await;

    let publisher = {
        let http = server.http().clone();
        let url = server.url("/api/publish");
        tokio::spawn(async move {
            for n in 0..total {
                let body = json!({"channel": "shared", "data": {"n": n}});
                http.post(&url).json(&body).send().await.unwrap();
            }
        })
    };
    let key =
        |publication: &Value| (publication["offset"].as_u64().unwrap(), publication["data"]["n"].as_u64().unwrap());
    let mut via_ws = Vec::new();
    let mut via_sse = Vec::new();
    let mut via_ndjson = Vec::new();
    for _ in 0..total {
        via_ws.push(key(&ws.next_push().await));
        let event = sse.next_data_event().await.unwrap();
        via_sse.push(key(&serde_json::from_str(&event.data.unwrap()).unwrap()));
        let line = loop {
            let line = ndjson.next_json().await.unwrap();
            if line.get("offset").is_some() {
                break line;
            }
        };
        via_ndjson.push(key(&line));
    }
    publisher.await.unwrap();
    let mut via_poll = Vec::new();
    let mut cursor = start_cursor;
    while via_poll.len() < total as usize {
        let (status, next, body) = server.poll(&format!("channel=shared&since={cursor}&timeout=5")).await;
        assert_eq!(status, 200);
        via_poll.extend(body.unwrap()["messages"].as_array().unwrap().iter().map(key));
        cursor = next;
    }
    let expected: Vec<(u64, u64)> = (0..total).map(|n| (n + 1, n)).collect();
    assert_eq!(via_ws, expected);
    assert_eq!(via_sse, expected);
    assert_eq!(via_ndjson, expected);
    assert_eq!(via_poll, expected);
}
