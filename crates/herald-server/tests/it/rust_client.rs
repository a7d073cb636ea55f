//! The Rust client (`herald-client`) against the real server: commands and their errors, data
//! as published, recovery from a position, a subscription whose app reads slowly, an expired
//! token, and every publication of a durable channel once and in order across a `kill -9` and
//! restart of the server.

use std::time::Duration;

use futures_util::StreamExt;
use herald_client::{Client, ClientError, Event, HistoryQuery, Options, Position, State, Subscription};
use serde_json::json;

use crate::helpers::{DurableHerald, TestServer, WAIT};

fn options() -> Options {
    Options {
        min_reconnect_delay: Duration::from_millis(50),
        max_reconnect_delay: Duration::from_millis(500),
        ..Options::default()
    }
}

/// The next event, within the test's patience.
async fn next(subscription: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, subscription.next()).await.expect("an event in time").expect("the subscription goes on")
}

/// The offsets of the next `count` publications (other events skipped).
async fn offsets(subscription: &mut Subscription, count: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < count {
        match next(subscription).await {
            Event::Publication(publication) => offsets.push(publication.offset),
            Event::Error(error) => panic!("the subscription failed: {error:?}"),
            _ => {}
        }
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_subscribes_publishes_and_reads_history_and_errors() {
    let server = TestServer::start().await;
    let client = Client::connect(&format!("http://{}", server.addr), options()).await.unwrap();
    assert_eq!(*client.state().borrow(), State::Connected);
    let mut lobby = client.subscribe("chat:lobby", None).await.unwrap();
    let Event::Subscribed { position, recovered } = next(&mut lobby).await else { panic!("subscribed first") };
    assert_eq!((position.offset, recovered), (0, None));

    // Data arrives as it was published: key order, number spelling.
    let published = client.publish("chat:lobby", json!({"text": "hi"})).await.unwrap();
    assert_eq!((published.offset, published.duplicate), (1, false));
    server.publish_raw("chat:lobby", r#"{"z":1,"a":1.10}"#).await;
    let Event::Publication(first) = next(&mut lobby).await else { panic!("a publication") };
    let Event::Publication(second) = next(&mut lobby).await else { panic!("a publication") };
    assert_eq!((first.offset, first.data.get()), (1, r#"{"text":"hi"}"#));
    assert_eq!((second.offset, second.data.get()), (2, r#"{"z":1,"a":1.10}"#));

    let page = client.history("chat:lobby", HistoryQuery::default()).await.unwrap();
    assert_eq!((page.publications.len(), page.position.offset), (2, 2));
    assert_eq!(page.publications[1].data.get(), r#"{"z":1,"a":1.10}"#);
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

    // From a position: what came after it first, then live; a position of another epoch is
    // not recoverable, and said so.
    for n in 1..=3 {
        server.publish("chat:other", json!(n)).await;
    }
    let epoch = page.position.epoch.clone();
    let other_epoch = client.history("chat:other", HistoryQuery::default()).await.unwrap().position.epoch;
    let mut from_one = client.subscribe("chat:other", Some(Position { epoch: other_epoch, offset: 1 })).await.unwrap();
    let Event::Subscribed { recovered, .. } = next(&mut from_one).await else { panic!("subscribed first") };
    assert_eq!(recovered, Some(true));
    server.publish("chat:other", json!(4)).await;
    assert_eq!(offsets(&mut from_one, 3).await, vec![2, 3, 4]);
    drop(from_one); // dropping unsubscribes: the channel may be subscribed again
    let mut foreign = loop {
        match client.subscribe("chat:other", Some(Position { epoch: epoch.clone(), offset: 1 })).await {
            Ok(subscription) => break subscription,
            Err(ClientError::Server(error)) if error.code == "already_subscribed" => tokio::task::yield_now().await,
            Err(other) => panic!("{other}"),
        }
    };
    let Event::Subscribed { recovered, .. } = next(&mut foreign).await else { panic!("subscribed first") };
    assert_eq!(recovered, Some(false));

    client.close().await;
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(|state| *state == State::Disconnected)).await.unwrap().unwrap();
    assert!(tokio::time::timeout(WAIT, lobby.next()).await.unwrap().is_none(), "a closed client's streams end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_connect_says_why() {
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    match Client::connect(&format!("http://{address}"), options()).await {
        Err(error @ ClientError::Connect { .. }) => assert!(error.to_string().contains(&address.to_string())),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(matches!(Client::connect("127.0.0.1:8750", options()).await, Err(ClientError::InvalidUrl(_))));
    assert!(matches!(Client::connect("https://h", options()).await, Err(ClientError::TlsNotSupported(_))));
}

/// An app that does not read for a while misses nothing and holds nobody up: its subscription
/// falls behind, then catches up from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_everything_once_and_others_are_not_held_up() {
    let server = TestServer::with_config("[namespaces.feed]\nhistory_size = 5000\n").await;
    let client = Client::connect(&format!("http://{}", server.addr), options()).await.unwrap();
    let mut slow = client.subscribe("feed:slow", None).await.unwrap();
    let mut brisk = client.subscribe("feed:brisk", None).await.unwrap();
    for n in 1..=1500 {
        server.publish("feed:slow", json!(n)).await;
    }
    server.publish("feed:brisk", json!("meanwhile")).await;
    assert_eq!(offsets(&mut brisk, 1).await, vec![1], "another subscription is not held up");
    assert_eq!(offsets(&mut slow, 1500).await, (1..=1500).collect::<Vec<u64>>());
}

/// A token that expires: the server closes the connection (4003) and refuses the reconnect;
/// the subscription ends saying why, rather than retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_the_subscriptions_with_the_reason() {
    let secret = "0123456789abcdef0123456789abcdef";
    let server = TestServer::with_config(&format!("[auth]\nhmac_secret = \"{secret}\"\nleeway = \"0s\"\n")).await;
    let claims = json!({"sub": "a", "exp": jsonwebtoken::get_current_timestamp() + 2, "channels": ["chat:*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let client =
        Client::connect(&format!("http://{}", server.addr), Options { token: Some(token), ..options() }).await.unwrap();
    let mut lobby = client.subscribe("chat:lobby", None).await.unwrap();
    let ending = loop {
        match next(&mut lobby).await {
            Event::Error(error) => break error,
            Event::Subscribed { .. } => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ending.code, "token_expired", "{ending:?}");
    assert!(tokio::time::timeout(WAIT, lobby.next()).await.unwrap().is_none(), "and then it ends");
}

/// A durable channel across a `kill -9`: the client reconnects to the restarted server on the
/// same port, resubscribes from its position, and sees offsets 1..=60 each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_gets_every_publication_once_across_a_kill_9_and_restart() {
    let mut herald = DurableHerald::start();
    let client = Client::connect(&herald.url(), options()).await.unwrap();
    let mut orders = client.subscribe("orders:1", None).await.unwrap();
    for n in 1..=30 {
        herald.publish(n).await;
    }
    let mut seen = offsets(&mut orders, 10).await;
    herald.kill_and_restart(); // no goodbye
    for n in 31..=60 {
        herald.publish(n).await;
    }
    let mut recovered = Vec::new();
    while seen.len() < 60 {
        match next(&mut orders).await {
            Event::Publication(publication) => seen.push(publication.offset),
            Event::Subscribed { recovered: was, .. } => recovered.push(was),
            Event::Error(error) => panic!("{error:?}"),
            Event::Join(_) | Event::Leave(_) => {}
        }
    }
    assert_eq!(seen, (1..=60).collect::<Vec<u64>>(), "each once, in order");
    assert_eq!(recovered, vec![Some(true)], "one resubscribe, recovered from history");
    client.close().await;
}
