//! The server's logs as an operator reads them: `--log-format json` writes one JSON object a
//! line; at debug every connection's open and close is one line with its transport, reason and
//! duration; and no secret (API key, token, HMAC secret, webhook or Pusher secret) ever appears,
//! whatever the clients do.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{KillOnDrop, LineStream, WsClient, http_client};

const API_KEY: &str = "logs-test-api-key-0123456789";
const HMAC_SECRET: &str = "logs-test-hmac-secret-0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PUSHER_SECRET: &str = "logs-test-pusher-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_say_each_connection_s_story_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!(
            "allow_private_webhook_targets = true\n\
             [log]\nlevel = \"debug\"\n\
             [api]\nkeys = [\"{API_KEY}\"]\n\
             [auth]\nhmac_secret = \"{HMAC_SECRET}\"\n\
             [namespaces.m]\nanonymous = true\n\
             [webhook_delivery]\ntimeout = \"1s\"\nretry_schedule = [\"0s\", \"1h\"]\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:{dead}/hook\"\nchannels = [\"m:*\"]\nevents = [\"publication\"]\n\
             secret = \"{WEBHOOK_SECRET}\"\n\
             [[pusher.apps]]\nid = \"1\"\nkey = \"pk\"\nsecret = \"{PUSHER_SECRET}\"\nnamespace = \"m\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let token = {
        let output = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["token", "--sub", "alice", "--channels", "m:*", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("HERALD_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let address = line.trim().rsplit("http://").next().unwrap().to_string();
    let mut server = KillOnDrop(child);
    let (base, ws) = (format!("http://{address}"), format!("ws://{address}"));
    let http = http_client();

    // A WebSocket client with a token, one with a bad token, an SSE stream, a publish with the
    // API key, one with a wrong key, a Pusher client with a forged signature.
    let mut client = WsClient::connect(&format!("{ws}/ws?token={token}")).await;
    client.subscribe("m:a").await;
    let refused = http.get(format!("{base}/sse?channel=m:a&token={token}x")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let mut sse = LineStream::open(http.get(format!("{base}/sse?channel=m:a")).bearer_auth(&token)).await;
    let published = http
        .post(format!("{base}/api/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"channel": "m:a", "data": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let wrong = http
        .post(format!("{base}/api/publish"))
        .bearer_auth(format!("{API_KEY}-wrong"))
        .json(&json!({"channel": "m:a", "data": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    client.next_push().await;
    sse.next_data_event().await.unwrap();
    let mut pusher = WsClient::connect(&format!("{ws}/app/pk?protocol=7")).await;
    pusher.receive_raw().await;
    pusher.send_text(r#"{"event":"pusher:subscribe","data":{"channel":"private-x","auth":"pk:00"}}"#).await;
    pusher.receive_raw().await;
    drop(client);
    drop(sse);
    drop(pusher);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM: the server ends, and its logs with it.
    let status = Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let lines = tokio::task::spawn_blocking(move || logs.join().unwrap()).await.unwrap();
    server.kill();

    let events: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not a JSON line: {line:?}: {error}")))
        .collect();
    assert!(events.iter().all(|event| event["level"].is_string() && event["timestamp"].is_string()));
    let closed: Vec<&Value> = events.iter().filter(|event| event["message"] == "connection closed").collect();
    let opened = events.iter().filter(|event| event["message"] == "connection opened").count();
    assert!(opened >= 3, "{lines:#?}");
    for (transport, reason) in [("websocket", None), ("sse", None), ("pusher_websocket", None::<&str>)] {
        let found = closed.iter().find(|event| event["transport"] == transport);
        let event = found.unwrap_or_else(|| panic!("no close of a {transport} connection in {lines:#?}"));
        assert!(event["reason"].is_string() && event["duration_ms"].is_u64(), "{event}");
        assert!(event["peer"].as_str().unwrap().starts_with("127.0.0.1"), "{event}");
        if let Some(reason) = reason {
            assert_eq!(event["reason"], reason);
        }
    }
    let all = lines.join("\n");
    for secret in [API_KEY, HMAC_SECRET, WEBHOOK_SECRET, PUSHER_SECRET, token.as_str()] {
        assert!(!all.contains(secret), "a secret was logged: {secret}\n{all}");
    }
    // The token's signature alone is a secret too (a token cut short must not leak it).
    let signature = token.rsplit('.').next().unwrap();
    assert!(!all.contains(signature), "a token's signature was logged\n{all}");
}
