//! The `herald` binary as a user runs it: help, config errors, serve, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::WsClient;

fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.env_remove("HERALD_LISTEN").env_remove("HERALD_CONFIG").env("RUST_LOG", "warn");
    command
}

#[test]
fn help_explains_every_subcommand() {
    let output = herald().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success());
    for subcommand in ["serve", "check-config"] {
        assert!(help.contains(subcommand), "{help}");
    }
    let output = herald().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in ["--listen", "--data-dir", "--config", "HERALD_LISTEN"] {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn version_names_the_release_and_the_commit() {
    let output = herald().arg("--version").output().unwrap();
    assert!(output.status.success());
    let version = String::from_utf8(output.stdout).unwrap();
    let expected = format!("herald {} (", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected), "{version}");
    // The commit: hex digits (a checkout) or "unknown" (a tarball).
    let commit = version.trim().trim_start_matches(&expected).trim_end_matches(')');
    assert!(commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{version}");
}

#[test]
fn a_bad_config_file_is_reported_with_its_key_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "[namespaces.chat]\nhistory_ttl = \"forever\"\n").unwrap();
    let output = herald().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("namespaces.chat.history_ttl") && stderr.contains("forever"), "{stderr}");

    std::fs::write(&path, "listen = 8750\n").unwrap();
    let output = herald().args(["check-config", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("listen"), "{stderr}");

    let output = herald().args(["check-config", "--config"]).arg(dir.path().join("missing.toml")).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:1111\"\n[limits]\nmax_message_size = 100\n").unwrap();
    let output = herald()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("HERALD_LISTEN", "127.0.0.1:2222")
        .env("HERALD_LIMITS__MAX_MESSAGE_SIZE", "300")
        .env("HERALD_TEST_SOMETHING_ELSE", "ignored")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("127.0.0.1:2222") && stdout.contains("300"), "{stdout}");
    let output = herald()
        .args(["check-config", "--listen", "127.0.0.1:3333", "--config"])
        .arg(&path)
        .env("HERALD_LISTEN", "127.0.0.1:2222")
        .output()
        .unwrap();
    assert!(String::from_utf8(output.stdout).unwrap().contains("127.0.0.1:3333"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_its_address_and_sigterm_stops_it_gracefully() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut child = herald()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path().join("nested"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first_line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        // The pipe closes here, before the server is done printing: it must carry on regardless.
        line
    })
    .await
    .unwrap();
    let address = first_line.trim().rsplit("http://").next().unwrap().to_string();
    assert!(first_line.contains("listening on http://127.0.0.1:"), "{first_line}");
    assert!(data_dir.path().join("nested").is_dir(), "a missing data directory is created");

    let mut client = WsClient::connect(&format!("ws://{address}/ws")).await;
    client.subscribe("a").await;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (pushes, close) = client.read_until_close().await;
    assert_eq!(pushes.last().unwrap()["disconnect"]["reconnect"], json!(true));
    assert_eq!(close.unwrap().0, 1001);
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(exit.expect("herald exits after SIGTERM").success());
}
