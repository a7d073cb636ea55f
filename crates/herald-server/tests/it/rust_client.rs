//! The Rust client (`herald-client`) against the real server: commands and their errors, and a
//! subscription that gets every publication of a durable channel once and in order across a
//! `kill -9` and restart of the server.

use std::time::Duration;

use futures_util::StreamExt;
use herald_client::{Client, ClientError, Event, HistoryQuery, Options, State};
use serde_json::json;

use crate::helpers::{TestServer, WAIT, spawn_herald_on};

fn options() -> Options {
    Options {
        min_reconnect_delay: Duration::from_millis(50),
        max_reconnect_delay: Duration::from_millis(500),
        ..Options::default()
    }
}

/// The next event, within the test's patience.
async fn next(subscription: &mut herald_client::Subscription) -> Event {
    tokio::time::timeout(WAIT, subscription.next()).await.expect("an event in time").expect("the subscription goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_subscribes_publishes_and_reads_history_and_errors() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    let client = Client::connect(&url, options()).await.unwrap();
    assert_eq!(*client.state().borrow(), State::Connected);
    let mut lobby = client.subscribe("chat:lobby", None).await.unwrap();
    let Event::Subscribed { position, recovered } = next(&mut lobby).await else { panic!("subscribed first") };
    assert_eq!((position.offset, recovered), (0, None));

    let published = client.publish("chat:lobby", json!({"text": "hi"})).await.unwrap();
    assert_eq!((published.offset, published.duplicate), (1, false));
    let Event::Publication(publication) = next(&mut lobby).await else { panic!("a publication") };
    assert_eq!((publication.offset, publication.data.get()), (1, r#"{"text":"hi"}"#));

    let page = client.history("chat:lobby", HistoryQuery::default()).await.unwrap();
    assert_eq!((page.publications.len(), page.position.offset), (1, 1));
    match client.presence("chat:lobby").await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, "presence_disabled"),
        other => panic!("presence is not kept in this namespace: {other:?}"),
    }
    match client.subscribe("chat:lobby", None).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, "already_subscribed"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("subscribed twice"),
    }
    match client.subscribe("not a channel", None).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, "invalid_channel"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("an invalid channel was taken"),
    }

    // Subscribing from a position gets what came after it first.
    let mut again = client.subscribe("chat:other", None).await.unwrap();
    next(&mut again).await;
    for n in 1..=3 {
        server.publish("chat:other", json!(n)).await;
    }
    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        if let Event::Publication(publication) = next(&mut again).await {
            offsets.push(publication.offset);
        }
    }
    again.unsubscribe().await;
    let mut recovering = client
        .subscribe("chat:other", Some(herald_client::Position { epoch: publication.epoch.clone(), offset: 1 }))
        .await;
    // A different epoch than chat:other's: not recoverable, and said so.
    let Event::Subscribed { recovered, .. } = next(recovering.as_mut().unwrap()).await else { panic!() };
    assert_eq!(recovered, Some(false));
    assert_eq!(offsets, vec![1, 2, 3]);

    client.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut state = client.state();
    while *state.borrow() != State::Disconnected {
        tokio::time::timeout_at(deadline, state.changed()).await.expect("closed in time").ok();
    }
    assert!(lobby.next().await.is_none(), "a closed client's subscriptions end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_connect_says_why() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    match Client::connect(&format!("http://{address}"), options()).await {
        Err(error @ ClientError::Connect { .. }) => assert!(error.to_string().contains(&address.to_string())),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(matches!(Client::connect("127.0.0.1:8750", options()).await, Err(ClientError::InvalidUrl(_))));
}

/// A durable channel across a `kill -9`: the client reconnects to the restarted server on the
/// same port, resubscribes from its position, and sees offsets 1..=60 each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_gets_every_publication_once_across_a_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "[namespaces.orders]\ndurable = true\nhistory_size = 1000\n").unwrap();
    let data_dir = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let (mut herald, address) = spawn_herald_on(&listen, &data_dir, &config);
    let http = crate::helpers::http_client();
    let publish = |n: u64| {
        let (http, address) = (http.clone(), address.clone());
        async move {
            let response = http
                .post(format!("http://{address}/api/publish"))
                .json(&json!({"channel": "orders:1", "data": {"n": n}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };

    let client = Client::connect(&format!("http://{address}"), options()).await.unwrap();
    let mut orders = client.subscribe("orders:1", None).await.unwrap();
    for n in 1..=30 {
        publish(n).await;
    }
    let mut offsets = Vec::new();
    while offsets.len() < 10 {
        if let Event::Publication(publication) = next(&mut orders).await {
            offsets.push(publication.offset);
        }
    }
    herald.kill().unwrap(); // SIGKILL: no goodbye
    herald.wait().unwrap();
    let (mut restarted, _) = spawn_herald_on(&listen, &data_dir, &config);
    for n in 31..=60 {
        publish(n).await;
    }
    let mut recovered = Vec::new();
    while offsets.len() < 60 {
        match next(&mut orders).await {
            Event::Publication(publication) => offsets.push(publication.offset),
            Event::Subscribed { recovered: was, .. } => recovered.push(was),
            Event::Join(_) | Event::Leave(_) => {}
        }
    }
    assert_eq!(offsets, (1..=60).collect::<Vec<u64>>(), "each once, in order");
    assert_eq!(recovered, vec![Some(true)], "one resubscribe, recovered from history");
    client.close().await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}
