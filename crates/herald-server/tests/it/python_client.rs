//! A client nobody here wrote: Python's `websockets` library subscribes, Herald delivers.
//!
//! Runs with the interpreter named by `HERALD_TEST_PYTHON` (set by `scripts/test`, which
//! installs `websockets` into a virtualenv); skips, saying so, when it is unset.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{TestServer, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_receives_publications_and_recovers() {
    let Ok(python) = std::env::var("HERALD_TEST_PYTHON") else {
        eprintln!("skipped: HERALD_TEST_PYTHON is unset (scripts/test sets it up)");
        return;
    };
    let server = TestServer::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_ws_client.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(server.ws_url())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("python answers in time");
        serde_json::from_str(&line.unwrap().expect("a line")).expect("the script prints JSON")
    };
    let ready = next_line().await;
    assert_eq!(ready["subscribed"]["position"]["offset"], 0, "{ready}");
    for n in 1..=3 {
        server.publish("py:room", json!({"n": n})).await;
    }
    let received = next_line().await;
    let data: Vec<Value> = received["received"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
    // The script reconnects with the position of the first message and recovers the rest.
    let recovered = next_line().await;
    assert_eq!(recovered["recovered"], true, "{recovered}");
    let offsets: Vec<Value> = recovered["missed"].as_array().unwrap().iter().map(|p| p["offset"].clone()).collect();
    assert_eq!(offsets, [json!(2), json!(3)]);
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}
