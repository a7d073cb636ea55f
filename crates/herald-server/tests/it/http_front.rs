//! Herald's own HTTP/1 front (streams and polls answered without hyper), driven over raw TCP so
//! the bytes on the wire are what is checked: chunked framing, CORS headers, keep-alive and
//! pipelining, the hand-over to hyper, and clients that leave.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::TestServer;

const WAIT: Duration = Duration::from_secs(10);

/// One response: status, lower-cased headers, body (a `content-length` one; none for 204).
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut status_line)).await.expect("a response in time").unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "status line {status_line:?}");
    let status = status_line[9..12].parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            return (status, headers);
        }
        let (name, value) = line.split_once(':').expect("a header line");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

async fn read_response(reader: &mut BufReader<TcpStream>) -> Response {
    let (status, headers) = read_head(reader).await;
    let length =
        headers.iter().find(|(name, _)| name == "content-length").map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    Response { status, headers, body }
}

/// Reads one chunk of a chunked body.
async fn read_chunk(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut size = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut size)).await.expect("a chunk in time").unwrap();
    let size = usize::from_str_radix(size.trim_end(), 16).expect("a chunk size line");
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await.unwrap();
    assert_eq!(&chunk[size..], b"\r\n", "a chunk ends with CRLF");
    chunk.truncate(size);
    chunk
}

fn poll_request(channel: &str, extra: &str) -> String {
    format!("GET /poll?channel={channel}&timeout=0 HTTP/1.1\r\nHost: herald\r\n{extra}\r\n")
}

#[tokio::test]
async fn a_stream_is_a_chunked_body_with_the_router_s_headers_and_is_released_when_the_client_leaves() {
    let server = TestServer::start().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"GET /sse?channel=front:a HTTP/1.1\r\nHost: herald\r\nOrigin: https://app.example\r\n\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(socket);
    let (status, headers) = read_head(&mut reader).await;
    let header = |name: &str| headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    assert_eq!(status, 200);
    assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream; charset=utf-8"));
    assert!(header("access-control-allow-origin").is_some(), "the CORS layer's header: {headers:?}");
    assert!(header("date").is_some());
    let opening = String::from_utf8(read_chunk(&mut reader).await).unwrap();
    assert!(opening.starts_with("retry: "), "{opening:?}");

    server.wait_for_subscribers("front:a", 1).await;
    server.publish("front:a", json!({"n": 1})).await;
    let event = String::from_utf8(read_chunk(&mut reader).await).unwrap();
    assert!(event.starts_with("id: ") && event.contains("\"data\":{\"n\":1}"), "{event:?}");

    drop(reader);
    server.wait_for_subscribers("front:a", 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn pipelined_polls_are_answered_in_order_and_a_later_request_goes_to_hyper_on_the_same_connection() {
    let server = TestServer::start().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    // Two polls in one write: the second waits in the front's buffer for the first's answer.
    let pipelined = format!("{}{}", poll_request("front:b", ""), poll_request("front:b", ""));
    socket.write_all(pipelined.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(socket);
    for _ in 0..2 {
        // A short poll with no cursor: nothing yet, and the cursor to come back with.
        let response = read_response(&mut reader).await;
        assert_eq!((response.status, response.body.len()), (204, 0));
        assert!(response.header("herald-cursor").is_some());
    }

    // Not a long-lived request: hyper takes the connection over from here, keep-alive intact.
    reader.get_mut().write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n").await.unwrap();
    let health = read_response(&mut reader).await;
    assert_eq!((health.status, health.body.as_slice()), (200, br#"{"status":"ok"}"#.as_slice()));
    reader.get_mut().write_all(poll_request("front:b", "").as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut reader).await.status, 204);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_a_parked_poll_is_let_go_at_once() {
    let server = TestServer::start().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /poll?channel=front:c&timeout=60 HTTP/1.1\r\nHost: herald\r\n\r\n").await.unwrap();
    server.wait_for_subscribers("front:c", 1).await;
    drop(socket);
    server.wait_for_subscribers("front:c", 0).await;

    // A parked poll that is answered keeps its connection for the next one.
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /poll?channel=front:c&timeout=60 HTTP/1.1\r\nHost: herald\r\n\r\n").await.unwrap();
    server.wait_for_subscribers("front:c", 1).await;
    server.publish("front:c", json!(7)).await;
    let mut reader = BufReader::new(socket);
    let answer = read_response(&mut reader).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let cursor = answer.header("herald-cursor").unwrap().to_string();
    reader
        .get_mut()
        .write_all(format!("GET /poll?channel=front:c&timeout=0&since={cursor} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let next = read_response(&mut reader).await;
    assert_eq!((next.status, next.body.len()), (204, 0), "nothing new since the cursor");
    server.shutdown().await;
}

#[tokio::test]
async fn heads_the_front_does_not_take_are_answered_by_hyper() {
    let server = TestServer::start().await;
    // A head larger than the front reads: hyper gets it whole, bytes already read included.
    let cookie = format!("Cookie: {}\r\n", "a".repeat(20 * 1024));
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(poll_request("front:d", &cookie).as_bytes()).await.unwrap();
    let mut reader = BufReader::new(socket);
    let response = read_response(&mut reader).await;
    assert_eq!(response.status, 204);
    assert!(response.header("herald-cursor").is_some());

    // Malformed: hyper's 400.
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /poll?channel=front:d HTTP/1.1\r\nBad Header\r\n\r\n").await.unwrap();
    let mut reader = BufReader::new(socket);
    assert_eq!(read_response(&mut reader).await.status, 400);

    // Bad input on the front's own path: the router's JSON error, with a length.
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /sse?channel=bad%20name HTTP/1.1\r\nHost: herald\r\n\r\n").await.unwrap();
    let mut reader = BufReader::new(socket);
    let error = read_response(&mut reader).await;
    assert_eq!(error.status, 400);
    let body: serde_json::Value = serde_json::from_slice(&error.body).unwrap();
    assert_eq!(body["error"]["code"], "invalid_channel");
    server.shutdown().await;
}
