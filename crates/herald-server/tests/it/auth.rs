//! Client tokens on every transport: the exact outcome for no token, a valid one, an expired
//! one, a wrong key, `alg: none`, a channel not granted and a publish not granted; expiry and
//! refresh on a live WebSocket.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::{Received, TestServer, WsClient};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const API_KEY: &str = "server-key-0123456789abcdef";

fn config() -> String {
    format!("[api]\nkeys = [\"{API_KEY}\"]\n[auth]\nhmac_secret = \"{SECRET}\"\nleeway = \"0s\"\n")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn token_with(claims: Value, secret: &str) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

fn alg_none(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims.to_string()))
}

/// The cases of the matrix: a name, the token (if any), and a channel to use.
fn cases() -> Vec<(&'static str, Option<String>, &'static str)> {
    let granted = json!({"sub": "alice", "exp": now() + 600, "channels": ["chat:*"], "publish": ["chat:*"]});
    vec![
        ("no token", None, "chat:a"),
        ("valid", Some(token_with(granted.clone(), SECRET)), "chat:a"),
        (
            "expired",
            Some(token_with(json!({"sub": "alice", "exp": now() - 100, "channels": ["chat:*"]}), SECRET)),
            "chat:a",
        ),
        ("wrong key", Some(token_with(granted.clone(), "not-the-secret-not-the-secret-xx")), "chat:a"),
        ("alg none", Some(alg_none(&granted)), "chat:a"),
        ("channel not granted", Some(token_with(granted.clone(), SECRET)), "news:a"),
        (
            "publish not granted",
            Some(token_with(json!({"sub": "bob", "exp": now() + 600, "publish": []}), SECRET)),
            "chat:a",
        ),
    ]
}

/// (status, error code) of an HTTP call; code is "" on success.
async fn http_outcome(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|body| body["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_gives_the_exact_outcome_for_every_kind_of_token() {
    let server = TestServer::with_config(&config()).await;
    let expected_subscribe: &[(&str, u16, &str)] = &[
        ("no token", 401, "unauthorized"),
        ("valid", 200, ""),
        ("expired", 401, "token_expired"),
        ("wrong key", 401, "invalid_token"),
        ("alg none", 401, "invalid_token"),
        ("channel not granted", 403, "permission_denied"),
        ("publish not granted", 200, ""),
    ];
    let expected_publish: &[(&str, u16, &str)] = &[
        ("no token", 401, "unauthorized"),
        ("valid", 200, ""),
        ("expired", 401, "token_expired"),
        ("wrong key", 401, "invalid_token"),
        ("alg none", 401, "invalid_token"),
        ("channel not granted", 403, "permission_denied"),
        ("publish not granted", 403, "permission_denied"),
    ];
    for ((name, token, channel), (_, status, code)) in cases().into_iter().zip(expected_subscribe) {
        let with_token = |path: &str| match &token {
            Some(token) => format!("{path}&token={token}"),
            None => path.to_string(),
        };
        // SSE, NDJSON and poll take ?token= (what EventSource can send).
        for path in [
            format!("/sse?channel={channel}"),
            format!("/stream?channel={channel}"),
            format!("/poll?channel={channel}&timeout=0"),
        ] {
            let response = server.http().get(server.url(&with_token(&path))).send().await.unwrap();
            let (got_status, got_code) =
                if response.status().is_success() { (200, String::new()) } else { http_outcome(response).await };
            assert_eq!((got_status, got_code.as_str()), (*status, *code), "{name}: {path}");
        }
        // WebSocket: the token with the upgrade; a bad one is refused before the upgrade.
        let url = match &token {
            Some(token) => format!("{}?token={token}", server.ws_url()),
            None => server.ws_url(),
        };
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401, "{name}: upgrade refused with 401");
                assert!(matches!(name, "expired" | "wrong key" | "alg none"), "{name}: refused at upgrade");
            }
            Err(other) => panic!("{name}: {other}"),
            Ok(_) => {
                let mut client = WsClient::connect(&url).await;
                let reply = client.command(json!({"op": "subscribe", "channel": channel})).await;
                let got = reply["error"]["code"].as_str().unwrap_or_default().to_string();
                assert_eq!(got, *code, "{name}: ws subscribe {reply}");
            }
        }
        // The WebSocket `connect` command with the same token.
        let mut client = server.client().await;
        if let Some(token) = &token {
            let reply = client.command(json!({"op": "connect", "token": token})).await;
            let got = reply["error"]["code"].as_str().unwrap_or_default();
            let expected = match name {
                "expired" => "token_expired",
                "wrong key" | "alg none" => "invalid_token",
                _ => "",
            };
            assert_eq!(got, expected, "{name}: connect {reply}");
        }
    }
    for ((name, token, channel), (_, status, code)) in cases().into_iter().zip(expected_publish) {
        // POST /api/publish with the client token instead of an API key.
        let mut request = server.http().post(server.url("/api/publish")).json(&json!({"channel": channel, "data": 1}));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let (got_status, got_code) = http_outcome(request.send().await.unwrap()).await;
        assert_eq!((got_status, got_code.as_str()), (*status, *code), "{name}: api publish");
        // WebSocket publish after connecting with it (where the token is good).
        if matches!(name, "valid" | "channel not granted" | "publish not granted" | "no token") {
            let mut client = server.client().await;
            if let Some(token) = &token {
                client.command(json!({"op": "connect", "token": token})).await;
            }
            let reply = client.command(json!({"op": "publish", "channel": channel, "data": 1})).await;
            assert_eq!(reply["error"]["code"].as_str().unwrap_or_default(), *code, "{name}: ws publish {reply}");
        }
    }
    // The API key still does everything; a client token cannot read the server API.
    let response = server.http().get(server.url("/api/channels")).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let valid = cases()[1].1.clone().unwrap();
    let response = server.http().get(server.url("/api/channels")).bearer_auth(valid).send().await.unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_refreshed_without_dropping_subscriptions_or_ends_the_connection() {
    let server = TestServer::with_config(&config()).await;
    let short = |sub: &str, seconds: u64| {
        token_with(json!({"sub": sub, "exp": now() + seconds, "channels": ["chat:*"]}), SECRET)
    };

    // Refreshed in time: the subscription goes on.
    let mut kept = WsClient::connect(&format!("{}?token={}", server.ws_url(), short("alice", 2))).await;
    kept.subscribe("chat:a").await;
    let reply = kept.command(json!({"op": "refresh", "token": short("alice", 600)})).await;
    assert_eq!(reply["result"]["user"], "alice", "{reply}");
    let reply = kept.command(json!({"op": "refresh", "token": short("mallory", 600)})).await;
    assert_eq!(reply["error"]["code"], "user_mismatch");

    // Not refreshed: closed with 4003, telling the client to get a fresh token.
    let mut dropped = WsClient::connect(&format!("{}?token={}", server.ws_url(), short("alice", 2))).await;
    dropped.subscribe("chat:a").await;
    let (pushes, close) = dropped.read_until_close().await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 4003, "{reason}");
    assert_eq!(pushes.last().unwrap()["disconnect"]["reconnect"], true);

    server.publish_with_key("chat:a", json!("still here"), API_KEY).await.unwrap();
    let push = kept.next_push().await;
    assert_eq!(push["data"], "still here");
    assert!(!matches!(kept.receive_raw_quick().await, Some(Received::Close(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_token_mints_a_token_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, config()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "carol", "--channels", "chat:*", "--publish", "chat:*", "--ttl", "1h", "--config"])
        .arg(&path)
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let server = TestServer::with_config(&config()).await;
    let mut client = WsClient::connect(&format!("{}?token={token}", server.ws_url())).await;
    client.subscribe("chat:lobby").await;
    let reply = client.command(json!({"op": "publish", "channel": "chat:lobby", "data": "hi"})).await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    let reply = client.command(json!({"op": "subscribe", "channel": "news:x"})).await;
    assert_eq!(reply["error"]["code"], "permission_denied");

    let keys = std::process::Command::new(env!("CARGO_BIN_EXE_herald")).arg("keygen").output().unwrap();
    let text = String::from_utf8(keys.stdout).unwrap();
    assert!(text.contains("hmac_secret = \"") && text.contains("keys = [\""), "{text}");
}

/// A JWKS endpoint on loopback whose document the test can change (key rotation).
async fn jwks_server(document: std::sync::Arc<std::sync::Mutex<String>>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let document = document.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{document}",
                    document.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    address
}

fn oct_jwks(kid: &str, secret: &str) -> String {
    use base64::Engine as _;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    json!({"keys": [{"kty": "oct", "alg": "HS256", "kid": kid, "k": k}]}).to_string()
}

fn token_with_kid(kid: &str, secret: &str) -> String {
    let header = Header { kid: Some(kid.to_string()), ..Default::default() };
    let claims = json!({"sub": "dana", "exp": now() + 600});
    encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_are_loaded_and_refreshed_when_an_unknown_key_appears() {
    let first = "first-secret-first-secret-first-secret";
    let second = "second-secret-second-secret-second-se";
    let document = std::sync::Arc::new(std::sync::Mutex::new(oct_jwks("k1", first)));
    let address = jwks_server(document.clone()).await;
    let server = TestServer::with_config(&format!("[auth]\njwks = \"http://{address}/jwks.json\"\n")).await;
    let poll = |token: String| {
        let url = server.url(&format!("/poll?channel=a&timeout=0&token={token}"));
        let http = server.http().clone();
        async move { http_outcome(http.get(url).send().await.unwrap()).await }
    };
    assert_eq!(poll(token_with_kid("k1", first)).await.0, 204, "the URL's key is used");

    // The issuer rotates its key: the first token with the new kid asks for a refresh.
    *document.lock().unwrap() = oct_jwks("k2", second);
    let (status, code) = poll(token_with_kid("k2", second)).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if poll(token_with_kid("k2", second)).await.0 == 204 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new key was not fetched");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(poll(token_with_kid("k1", first)).await.0, 401, "the retired key is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_side_door_history_connect_switch_missing_audience_or_dev_mode() {
    let secret = SECRET;
    let server = TestServer::with_config(&format!("[auth]\nhmac_secret = \"{secret}\"\naudience = \"herald\"\n")).await;
    let token = |claims: Value| token_with(claims, secret);
    let alice = token(json!({"sub": "alice", "aud": "herald", "exp": now() + 600, "channels": ["chat:*"]}));
    let bob = token(json!({"sub": "bob", "aud": ["other", "herald"], "exp": now() + 600}));
    let no_audience = token(json!({"sub": "eve", "exp": now() + 600}));

    // History is reading: the same rule as subscribing.
    server.publish_with_key("chat:a", json!(1), "unused").await.ok();
    let mut anonymous = server.client().await;
    let reply = anonymous.command(json!({"op": "history", "channel": "chat:a"})).await;
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    let reply = anonymous.command(json!({"op": "refresh", "token": alice})).await;
    assert_eq!(reply["error"]["code"], "not_connected");
    let reply = anonymous.command(json!({"op": "connect", "token": no_audience})).await;
    assert_eq!(reply["error"]["code"], "invalid_token", "a configured audience cannot be left out: {reply}");
    let reply = anonymous.command(json!({"op": "connect", "token": alice})).await;
    assert_eq!(reply["result"]["user"], "alice", "{reply}");
    let reply = anonymous.command(json!({"op": "history", "channel": "news:a"})).await;
    assert_eq!(reply["error"]["code"], "permission_denied");
    let reply = anonymous.command(json!({"op": "connect", "token": bob})).await;
    assert_eq!(reply["error"]["code"], "already_connected", "no switching users: {reply}");

    // An array audience is fine.
    let mut bobs = server.client().await;
    assert_eq!(bobs.command(json!({"op": "connect", "token": bob})).await["result"]["user"], "bob");

    // With [auth] the server API is no longer open on loopback, and JSON must say it is JSON.
    let response = server.http().get(server.url("/api/channels")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = server
        .http()
        .post(server.url("/api/publish"))
        .bearer_auth(&alice)
        .header("content-type", "text/plain")
        .body(r#"{"channel":"chat:a","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
}

/// The `connect` result: `{client, user}` without a token; with one, `expires` too, `null` for a
/// token without `exp` (docs/protocol.md).
#[tokio::test]
async fn connect_results_say_when_the_token_expires_even_when_it_never_does() {
    let server = TestServer::with_config(&config()).await;
    let mut client = server.client().await;
    let reply = client.command(json!({"op": "connect"})).await;
    let result = reply["result"].as_object().unwrap_or_else(|| panic!("{reply}"));
    assert!(result.contains_key("client") && result["user"].is_null() && !result.contains_key("expires"), "{reply}");
    let exp = now() + 600;
    let mut with_exp = server.client().await;
    let reply =
        with_exp.command(json!({"op": "connect", "token": token_with(json!({"sub": "a", "exp": exp}), SECRET)})).await;
    assert_eq!((&reply["result"]["user"], &reply["result"]["expires"]), (&json!("a"), &json!(exp)), "{reply}");
    let mut forever = server.client().await;
    let reply = forever.command(json!({"op": "connect", "token": token_with(json!({"sub": "b"}), SECRET)})).await;
    let result = reply["result"].as_object().unwrap_or_else(|| panic!("{reply}"));
    assert!(result.contains_key("expires") && result["expires"].is_null(), "{reply}");
}

/// A parked poll ends at its token's expiry (a 3 s token on a 30 s poll), as a WebSocket or an SSE stream does: an expired
/// token receives nothing more.
#[tokio::test]
async fn a_parked_poll_is_answered_token_expired_when_its_token_runs_out() {
    let server = TestServer::with_config(&config()).await;
    let token = token_with(json!({"sub": "alice", "exp": now() + 3, "channels": ["chat:*"]}), SECRET);
    let started = std::time::Instant::now();
    let response =
        server.http().get(server.url("/poll?channel=chat:a&timeout=30")).bearer_auth(&token).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(http_outcome(response).await, (401, "token_expired".to_string()));
    // It parked (a token refused on arrival would answer at once), then ended at the expiry,
    // well before the poll's own timeout.
    assert!(waited >= std::time::Duration::from_secs(1), "the poll parked first: {waited:?}");
    assert!(waited < std::time::Duration::from_secs(10), "answered at the expiry, not the timeout: {waited:?}");
}
