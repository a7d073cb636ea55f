//! `herald publish` and `herald subscribe` as a user runs them: the real binary, its output and
//! exit codes, and a subscription that prints every publication once across a `kill -9` and
//! restart of the server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{DurableHerald, KillOnDrop, TestServer};

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald")).args(args).env_remove("HERALD_URL").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_the_reply_and_bad_input_is_one_clear_line() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    let output = tokio::task::spawn_blocking({
        let url = url.clone();
        move || herald(&["publish", "chat:a", r#"{"text":"hi"}"#, "--url", &url])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((reply["channel"].as_str(), reply["offset"].as_u64()), (Some("chat:a"), Some(1)));

    let cases: [(&[&str], &str); 3] = [
        (&["publish", "chat:a", "not json"], "DATA must be JSON"),
        (&["publish", "bad channel", "1"], "invalid_channel (400)"),
        (&["subscribe", "bad channel"], "invalid_channel (400)"),
    ];
    for (args, expected) in cases {
        let mut args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        args.extend(["--url".to_string(), url.clone()]);
        let output = tokio::task::spawn_blocking(move || herald(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let output = herald(&["subscribe", "chat:a", "--url", &format!("http://{nobody}")]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("cannot reach Herald"));
}

/// The lines a child prints, as they come (read on a thread of their own).
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// One publication line of `herald subscribe`, within the test's patience.
fn next_line(lines: &std::sync::mpsc::Receiver<String>) -> Value {
    let line = lines.recv_timeout(crate::helpers::WAIT).expect("a line in time");
    serde_json::from_str(&line).unwrap_or_else(|error| panic!("{line:?}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_every_publication_once_across_a_kill_9_and_resumes_from_since() {
    let mut server = DurableHerald::start();
    let url = server.url();
    let http = crate::helpers::http_client();
    let mut subscriber = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["subscribe", "orders:1", "--url", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = lines_of(subscriber.0.stdout.take().unwrap());
    // The subscriber is streaming once the channel counts it.
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    while http.get(format!("{url}/api/channels")).send().await.unwrap().json::<Value>().await.unwrap()["channels"]
        .as_array()
        .is_none_or(|channels| channels.is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "the subscriber never subscribed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for n in 1..=30 {
        server.publish(n).await;
    }
    let first_half: Vec<Value> = (0..30).map(|_| next_line(&lines)).collect();
    server.kill_and_restart(); // the stream is cut without a goodbye
    for n in 31..=60 {
        server.publish(n).await;
    }
    let second_half: Vec<Value> = (0..30).map(|_| next_line(&lines)).collect();
    subscriber.kill();
    let all: Vec<Value> = first_half.iter().chain(&second_half).cloned().collect();
    let offsets: Vec<u64> = all.iter().map(|line| line["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=60).collect::<Vec<_>>(), "each once, in order");
    assert!(
        all.iter().all(|line| line["channel"] == "orders:1" && line["cursor"].is_string() && line["time"].is_u64())
    );

    // --since: the cursor of line 30 resumes at 31.
    let since = all[29]["cursor"].as_str().unwrap().to_string();
    let mut resumed = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["subscribe", "orders:1", "--url", &url, "--since", &since])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let resumed_lines = lines_of(resumed.0.stdout.take().unwrap());
    let replayed: Vec<Value> = (0..30).map(|_| next_line(&resumed_lines)).collect();
    drop(resumed);
    assert_eq!(
        replayed.iter().map(|line| line["offset"].as_u64().unwrap()).collect::<Vec<_>>(),
        (31..=60).collect::<Vec<_>>()
    );
}
