//! TLS terminated by Herald itself (`--tls-cert`, `--tls-key`): HTTPS and WSS with clients
//! nobody here wrote (Python's `ssl`, and `websockets` when available). The certificate in
//! tests/fixtures/tls is a self-signed test certificate for 127.0.0.1, nothing else.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn herald_serves_https_and_wss_with_its_own_certificate() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut herald = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &fixture("cert.pem"),
            "--tls-key",
            &fixture("key.pem"),
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("RUST_LOG", "warn")
        .env_remove("HERALD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(herald.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    assert!(line.contains("listening on https://"), "{line}");
    let address = line.trim().rsplit("https://").next().unwrap().to_string();

    let https = format!(
        "import ssl, urllib.request\n\
         context = ssl.create_default_context(cafile='{}')\n\
         print(urllib.request.urlopen('https://{address}/healthz', context=context, timeout=10).read().decode())",
        fixture("cert.pem")
    );
    let output = Command::new("python3").args(["-c", &https]).output().unwrap();
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(body.contains("\"ok\""), "{body} {}", String::from_utf8_lossy(&output.stderr));

    // The long-lived requests Herald's own front answers, over TLS: two polls on one
    // connection, then a stream's first chunk.
    let (host, port) = address.rsplit_once(':').unwrap();
    let front = format!(
        "import http.client, ssl\n\
         context = ssl.create_default_context(cafile='{}')\n\
         polls = http.client.HTTPSConnection('{host}', {port}, context=context, timeout=10)\n\
         for _ in range(2):\n\
         \x20   polls.request('GET', '/poll?channel=tls:b&timeout=0')\n\
         \x20   answer = polls.getresponse()\n\
         \x20   answer.read()\n\
         \x20   print('poll', answer.status, answer.getheader('herald-cursor') is not None)\n\
         stream = http.client.HTTPSConnection('{host}', {port}, context=context, timeout=10)\n\
         stream.request('GET', '/sse?channel=tls:b')\n\
         answer = stream.getresponse()\n\
         print('sse', answer.status, answer.getheader('content-type'), answer.readline().decode().strip())",
        fixture("cert.pem")
    );
    let output = Command::new("python3").args(["-c", &front]).output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        ["poll 204 True", "poll 204 True", "sse 200 text/event-stream; charset=utf-8 retry: 1000"],
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Plain HTTP on the TLS port gets nothing useful (and no panic).
    let plain = std::net::TcpStream::connect(&address).unwrap();
    drop(plain);

    if let Ok(python) = std::env::var("HERALD_TEST_PYTHON") {
        let wss = format!(
            "import asyncio, json, ssl, websockets\n\
             async def main():\n\
             \x20   context = ssl.create_default_context(cafile='{}')\n\
             \x20   async with websockets.connect('wss://{address}/ws', ssl=context) as ws:\n\
             \x20       await ws.send(json.dumps({{'id': 1, 'op': 'subscribe', 'channel': 'tls:a'}}))\n\
             \x20       print(await ws.recv())\n\
             asyncio.run(asyncio.wait_for(main(), 10))",
            fixture("cert.pem")
        );
        let output = Command::new(python).args(["-c", &wss]).output().unwrap();
        let reply = String::from_utf8_lossy(&output.stdout);
        assert!(reply.contains("\"result\""), "{reply} {}", String::from_utf8_lossy(&output.stderr));
    } else {
        eprintln!("skipped the WSS half: HERALD_TEST_PYTHON is unset (scripts/test sets it up)");
    }
    herald.kill().unwrap();
    herald.wait().unwrap();
}

#[test]
fn a_certificate_without_its_key_is_a_config_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--tls-cert", &fixture("cert.pem")])
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("tls.key"));
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--tls-cert", &fixture("key.pem"), "--tls-key", &fixture("key.pem")])
        .env_remove("HERALD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a key is not a certificate");
}
