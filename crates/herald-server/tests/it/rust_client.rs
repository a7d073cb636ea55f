//! The Rust client (`herald-client`) against the real server: commands and their errors, data
//! as published, recovery from a position, a subscription whose app reads slowly, an expired
//! token, tokens renewed on the live connection (and after a renewal failed), TLS with a
//! self-signed certificate, and every publication of a durable channel once and in order across
//! a `kill -9` and restart of the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use herald_client::{Client, ClientError, Event, HistoryQuery, Options, Position, State, Subscription, TokenSource};
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
    assert!(matches!(Client::connect("ftp://h", options()).await, Err(ClientError::InvalidUrl(_))));
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

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A server terminating TLS with the certificate and key of these fixture files.
async fn tls_server(cert: &str, key: &str) -> TestServer {
    TestServer::with_config(&format!("[tls]\ncert = {:?}\nkey = {:?}\n", fixture(cert), fixture(key))).await
}

/// `https://`: the client trusts a self-signed certificate it is given, subscribes and receives;
/// without it the connection fails, saying the certificate is not trusted and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_tls_to_a_server_whose_certificate_it_trusts() {
    let server = tls_server("end-entity.pem", "end-entity-key.pem").await;
    let url = format!("https://{}", server.addr);
    let roots = herald_client::pem_certificates(&std::fs::read(fixture("end-entity.pem")).unwrap()).unwrap();
    let client = Client::connect(&url, Options { root_certificates: roots, ..options() }).await.unwrap();
    let mut secure = client.subscribe("chat:secure", None).await.unwrap();
    assert!(matches!(next(&mut secure).await, Event::Subscribed { .. }));
    client.publish("chat:secure", json!({"over": "tls"})).await.unwrap();
    let Event::Publication(publication) = next(&mut secure).await else { panic!("a publication") };
    assert_eq!((publication.offset, publication.data.get()), (1, r#"{"over":"tls"}"#));
    client.close().await;

    match Client::connect(&url, options()).await {
        Err(error @ ClientError::Connect { .. }) => {
            let text = error.to_string();
            assert!(text.contains("certificate") && text.contains("UnknownIssuer"), "{text}");
            assert!(text.contains("root_certificates"), "says what to do: {text}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected trusting nothing but the web's roots"),
    }
}

/// rustls refuses a CA certificate (CA:TRUE) as the server's own even when it is trusted (the
/// certificate `tls.rs` serves is one): the error says so rather than "unknown issuer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_ca_certificate_is_refused_with_the_reason() {
    let server = tls_server("cert.pem", "key.pem").await;
    let roots = herald_client::pem_certificates(&std::fs::read(fixture("cert.pem")).unwrap()).unwrap();
    let options = Options { root_certificates: roots, ..options() };
    match Client::connect(&format!("https://{}", server.addr), options).await {
        Err(error @ ClientError::Connect { .. }) => assert!(error.to_string().contains("CA:FALSE"), "{error}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("rustls took a CA certificate as a server's own"),
    }
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const API_KEY: &str = "server-key-0123456789abcdef";

/// Client tokens checked to the second; the server API needs a key then.
fn auth_config() -> String {
    format!("[api]\nkeys = [\"{API_KEY}\"]\n[auth]\nhmac_secret = \"{SECRET}\"\nleeway = \"0s\"\n")
}

async fn publish_with_key(server: &TestServer, channel: &str, data: serde_json::Value) {
    server.publish_with_key(channel, data, API_KEY).await.expect("published");
}

/// An HS256 token for user `a`, granting `chat:*`, valid for `seconds` more.
fn token(seconds: u64) -> String {
    let claims = json!({"sub": "a", "exp": jsonwebtoken::get_current_timestamp() + seconds, "channels": ["chat:*"]});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A token source handing out tokens valid for `seconds`, counting its calls, and failing while
/// `failing` says so.
fn token_source(seconds: u64, calls: &Arc<AtomicUsize>, failing: &Arc<AtomicBool>) -> TokenSource {
    let (calls, failing) = (calls.clone(), failing.clone());
    TokenSource::new(move || {
        calls.fetch_add(1, Ordering::SeqCst);
        let outcome =
            if failing.load(Ordering::SeqCst) { Err("the token service is down") } else { Ok(token(seconds)) };
        async move { outcome }
    })
}

/// Tokens valid for 4 s over 9 s of publications: the client renews them on the live connection
/// (`refresh`), so the one connection and its subscription go on, every publication once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_on_the_live_connection() {
    let server = TestServer::with_config(&auth_config()).await;
    let (calls, failing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let options = Options { get_token: Some(token_source(4, &calls, &failing)), ..options() };
    let client = Client::connect(&format!("http://{}", server.addr), options).await.unwrap();
    let mut state = client.state();
    assert_eq!(*state.borrow_and_update(), State::Connected);
    let mut lobby = client.subscribe("chat:lobby", None).await.unwrap();
    for n in 1..=30 {
        publish_with_key(&server, "chat:lobby", json!(n)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (mut seen, mut subscribed) = (Vec::new(), 0);
    while seen.len() < 30 {
        match next(&mut lobby).await {
            Event::Publication(publication) => seen.push(publication.offset),
            Event::Subscribed { .. } => subscribed += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, (1..=30).collect::<Vec<u64>>(), "each once, in order");
    assert_eq!(subscribed, 1, "never subscribed again");
    assert!(!state.has_changed().unwrap(), "one connection all along: {:?}", *state.borrow());
    let calls = calls.load(Ordering::SeqCst);
    assert!(calls >= 3, "the first token and at least two renewals: {calls} calls");
}

/// A renewal that cannot be had in time: the server closes the connection at expiry (4003); the
/// client gets a new token as soon as the source gives one, reconnects and recovers, so the
/// subscription goes on with nothing lost (where a fixed token would end it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_at_expiry_is_made_again_with_a_new_token() {
    let server = TestServer::with_config(&auth_config()).await;
    let (calls, failing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let options = Options { get_token: Some(token_source(4, &calls, &failing)), ..options() };
    let client = Client::connect(&format!("http://{}", server.addr), options).await.unwrap();
    let mut lobby = client.subscribe("chat:lobby", None).await.unwrap();
    failing.store(true, Ordering::SeqCst);
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(|state| *state != State::Connected)).await.unwrap().unwrap();
    for n in 1..=5 {
        publish_with_key(&server, "chat:lobby", json!(n)).await;
    }
    failing.store(false, Ordering::SeqCst);
    tokio::time::timeout(WAIT, state.wait_for(|state| *state == State::Connected)).await.unwrap().unwrap();
    for n in 6..=10 {
        publish_with_key(&server, "chat:lobby", json!(n)).await;
    }
    let (mut seen, mut recovered) = (Vec::new(), Vec::new());
    while seen.len() < 10 {
        match next(&mut lobby).await {
            Event::Publication(publication) => seen.push(publication.offset),
            Event::Subscribed { recovered: was, .. } => recovered.push(was),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>(), "each once, in order");
    assert_eq!(recovered, vec![None, Some(true)], "subscribed, then recovered after the reconnect");
}

/// A token source that fails at first is tried again (with the backoff) until it gives a
/// token; one that never does fails `connect` with its reason, after `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_source_that_fails_is_tried_again() {
    let server = TestServer::with_config(&auth_config()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let flaky = TokenSource::new(move || {
        let call = counted.fetch_add(1, Ordering::SeqCst);
        async move { if call == 0 { Err("not yet".to_string()) } else { Ok(token(60)) } }
    });
    let url = format!("http://{}", server.addr);
    let client = Client::connect(&url, Options { get_token: Some(flaky), ..options() }).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let mut lobby = client.subscribe("chat:lobby", None).await.unwrap();
    publish_with_key(&server, "chat:lobby", json!("hi")).await;
    assert_eq!(offsets(&mut lobby, 1).await, vec![1]);

    let broken = TokenSource::new(|| async { Err::<String, _>("the token service is down") });
    let options = Options { get_token: Some(broken), request_timeout: Duration::from_secs(1), ..options() };
    match Client::connect(&url, options).await {
        Err(error @ ClientError::Token(_)) => assert!(error.to_string().contains("the token service is down")),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected without a token"),
    }
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
            Event::Unsubscribed { reason } => panic!("unsubscribed: {reason}"),
            Event::Join(_) | Event::Leave(_) => {}
        }
    }
    assert_eq!(seen, (1..=60).collect::<Vec<u64>>(), "each once, in order");
    assert_eq!(recovered, vec![Some(true)], "one resubscribe, recovered from history");
    client.close().await;
}
