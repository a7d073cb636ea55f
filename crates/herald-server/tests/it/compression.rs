//! permessage-deflate (RFC 7692) with `[websocket] compression = true`: agreed with clients
//! that offer it (never when it is off), publications past the threshold compressed (RSV1) and
//! the same bytes for every connection, small ones plain; the client's compressed messages
//! understood; and bad input closed with the right code: a compressed frame where nothing was
//! agreed, data that does not inflate, a bomb that inflates past the message limit. Python's
//! `websockets`, which compresses by default, round-trips through it.

use std::io::Write;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::{TestServer, WAIT};

const CONFIG: &str = "[websocket]\ncompression = true\ncompression_threshold = 256\n";

/// A WebSocket opened by hand, offering `extensions`: the socket and the response head.
async fn open(server: &TestServer, extensions: Option<&str>) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let offer = extensions.map(|value| format!("Sec-WebSocket-Extensions: {value}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n",
        server.addr
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, socket.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (socket, head)
}

/// A masked client frame with the first byte given (FIN, RSV1, opcode).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 2, 3];
    let mut frame = vec![first];
    match payload.len() {
        length @ 0..=125 => frame.push(0x80 | length as u8),
        length @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
    frame
}

/// The next server frame: its first byte and payload.
async fn server_frame(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await.unwrap();
        let length = match head[1] & 0x7f {
            126 => u64::from(socket.read_u16().await.unwrap()),
            127 => socket.read_u64().await.unwrap(),
            short => u64::from(short),
        };
        let mut payload = vec![0u8; length as usize];
        socket.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    };
    tokio::time::timeout(WAIT, read).await.expect("a frame in time")
}

/// Raw deflate as RFC 7692 sends it: sync-flushed, without the 00 00 ff ff tail.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut compressor = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    compressor.write_all(payload).unwrap();
    compressor.flush().unwrap();
    let mut out = compressor.finish().unwrap();
    // `finish` adds a final empty block after the sync flush: cut back to the flush's tail.
    let tail = out.windows(4).rposition(|window| window == [0, 0, 0xff, 0xff]).unwrap();
    out.truncate(tail);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut decoder = flate2::write::DeflateDecoder::new(Vec::new());
    decoder.write_all(&input).unwrap();
    decoder.flush().unwrap();
    decoder.get_ref().clone()
}

fn big_data() -> Value {
    // About 2 KB of JSON that compresses like a real feed item.
    json!({"items": (0..40).map(|n| json!({"id": n, "title": "an item", "price": 12.5})).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_go_compressed_to_clients_that_agreed_and_plain_to_others() {
    let server = TestServer::with_config(CONFIG).await;
    let (mut first, head) = open(&server, Some("permessage-deflate; client_max_window_bits")).await;
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    let (mut second, _) = open(&server, Some("permessage-deflate")).await;
    let (mut plain, head) = open(&server, None).await;
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "{head}");

    // The first client subscribes with a compressed command; the others plainly.
    let subscribe = br#"{"id":1,"op":"subscribe","channel":"z:feed"}"#;
    first.write_all(&client_frame(0x80 | 0x40 | 0x1, &deflate(subscribe))).await.unwrap();
    for socket in [&mut second, &mut plain] {
        socket.write_all(&client_frame(0x81, subscribe)).await.unwrap();
    }
    for socket in [&mut first, &mut second, &mut plain] {
        let (first_byte, reply) = server_frame(socket).await;
        assert_eq!(first_byte, 0x81, "small replies go plain");
        assert!(String::from_utf8(reply).unwrap().contains("\"result\""));
    }

    server.publish("z:feed", big_data()).await;
    server.publish("z:feed", json!("small")).await;
    let (byte_one, compressed_one) = server_frame(&mut first).await;
    let (byte_two, compressed_two) = server_frame(&mut second).await;
    assert_eq!((byte_one, byte_two), (0xC1, 0xC1), "FIN, RSV1, text");
    assert_eq!(compressed_one, compressed_two, "one compression for both");
    let json: Value = serde_json::from_slice(&inflate(&compressed_one)).unwrap();
    assert_eq!(json["data"], big_data());
    let (plain_byte, plain_payload) = server_frame(&mut plain).await;
    assert_eq!(plain_byte, 0x81);
    assert_eq!(serde_json::from_slice::<Value>(&plain_payload).unwrap()["data"], big_data());
    assert!(
        compressed_one.len() * 4 < plain_payload.len(),
        "{} of {} bytes",
        compressed_one.len(),
        plain_payload.len()
    );
    // Under the threshold: plain, even where compression was agreed.
    let (small_byte, small) = server_frame(&mut first).await;
    assert_eq!(small_byte, 0x81);
    assert_eq!(serde_json::from_slice::<Value>(&small).unwrap()["data"], "small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_never_agreed_when_it_is_off() {
    let server = TestServer::start().await;
    let (mut socket, head) = open(&server, Some("permessage-deflate")).await;
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "{head}");
    // A compressed frame where nothing was agreed is a protocol error.
    socket.write_all(&client_frame(0xC1, &deflate(b"{\"id\":1,\"op\":\"ping\"}"))).await.unwrap();
    let close = next_close(&mut socket).await;
    assert_eq!(close, 1002);
}

/// Reads past the `disconnect` push to the close frame; its code.
async fn next_close(socket: &mut TcpStream) -> u16 {
    loop {
        let (first_byte, payload) = server_frame(socket).await;
        if first_byte == 0x88 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
        assert_eq!(first_byte, 0x81, "text frames before the close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_does_not_inflate_and_bombs_are_closed_with_their_codes() {
    let server = TestServer::with_config(CONFIG).await;
    for (payload, code) in [
        (vec![0xffu8; 40], 1007),
        // 1 MiB of spaces, about a kilobyte compressed: past the 64 KiB message limit inflated.
        (deflate(&vec![b' '; 1 << 20]), 1009),
    ] {
        let (mut socket, _) = open(&server, Some("permessage-deflate")).await;
        socket.write_all(&client_frame(0xC1, &payload)).await.unwrap();
        assert_eq!(next_close(&mut socket).await, code);
    }
    // The server is fine after both.
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_round_trips_through_compression() {
    let Ok(python) = std::env::var("HERALD_TEST_PYTHON") else {
        eprintln!("skipped: HERALD_TEST_PYTHON is unset (scripts/test sets it up)");
        return;
    };
    let server = TestServer::with_config(CONFIG).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_ws_compressed.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(server.ws_url())
        .arg("3")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || -> Value {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("python answers in time");
        serde_json::from_str(&line.unwrap().expect("a line")).expect("the script prints JSON")
    };
    let opened = next_line().await;
    let extensions = opened["extensions"].as_str().unwrap_or_default();
    assert!(extensions.starts_with("permessage-deflate"), "{opened}");
    assert!(opened["reply"]["result"].is_object(), "the compressed subscribe was understood: {opened}");
    server.publish("py:deflate", big_data()).await;
    server.publish("py:deflate", json!("small")).await;
    server.publish("py:deflate", big_data()).await;
    let received = next_line().await;
    let data: Vec<Value> = received["received"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, [big_data(), json!("small"), big_data()]);
    let closed = next_line().await;
    assert_eq!(closed["closed"], 1009, "a message that inflates past the limit: {closed}");
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}
