//! A client nobody here wrote: the npm `eventsource` package, through a proxy that is cut to
//! force a disconnect; the automatic reconnect must resume with Last-Event-ID, losing nothing.
//!
//! Runs when `HERALD_TEST_NODE_MODULES` names a `node_modules` folder holding `eventsource`
//! (set by `scripts/test`, which installs it); skips, saying so, when it is unset.

use serde_json::Value;

use crate::helpers::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_eventsource_resumes_after_a_network_drop_without_loss_or_duplicate() {
    let Ok(modules) = std::env::var("HERALD_TEST_NODE_MODULES") else {
        eprintln!("skipped: HERALD_TEST_NODE_MODULES is unset (scripts/test sets it up)");
        return;
    };
    let server = TestServer::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sse_resume.cjs");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new("node")
            .arg(script)
            .arg(format!("http://{}", server.addr))
            .env("HERALD_TEST_NODE_MODULES", modules)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node finishes in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("node printed {stdout:?}, stderr {:?}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(report["ok"], true, "{report}");
    assert!(output.status.success());
    let mut offsets: Vec<(String, u64)> = report["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| (entry["channel"].as_str().unwrap().to_string(), entry["offset"].as_u64().unwrap()))
        .collect();
    offsets.sort();
    let expected = [("es:a", 1), ("es:a", 2), ("es:a", 3), ("es:b", 1), ("es:b", 2), ("es:b", 3)];
    assert_eq!(offsets, expected.map(|(channel, offset)| (channel.to_string(), offset)));
}
