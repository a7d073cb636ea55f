//! Herald's own HTTP/1 front for the long-lived requests: `GET /sse`, `/stream` and `/poll`.
//!
//! hyper keeps a read and a write buffer of 8 KiB each for as long as a connection lives: most
//! of what an open stream or a parked poll would cost. So a new connection's first request
//! head is read here, into a small buffer. A long-lived request is answered here: the router
//! still answers it (its layers, errors and handlers are the same), but the response is written
//! to the socket directly, and a stream's handler leaves its stream
//! (a [`Handoff`]) to be written straight to the socket after the head. The connection then stays here for its
//! next requests (a poll client's next poll). Anything else (the API, pages, WebSocket
//! upgrades, HTTP/1.0, a head this front does not take) is handed to hyper together with the
//! bytes already read, for the rest of the connection's life.

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{self, HeaderName, HeaderValue, Method, Request, Version, header};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::transport::handoff::Handoff;
use crate::transport::poll::OpenPoll;
use crate::transport::streaming::{OpenStream, StreamSink};

/// Paths answered here when they are a plain `GET` (the query aside).
const DIRECT_PATHS: [&str; 3] = ["/sse", "/stream", "/poll"];
/// How much a head read asks for at a time.
const READ_SIZE: usize = 1024;
/// A head longer than this goes to hyper, which has its own limits; so do bytes a client sends
/// while its stream or poll is open.
const MAX_HEAD: usize = 16 * 1024;
/// Headers per request at most (more goes to hyper, which answers 431).
const MAX_HEADERS: usize = 64;
/// How long a closing connection waits for the client to close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What a handler left to the front when the connection is served here.
enum DirectWork {
    /// The front writes the response head, then runs the stream on the socket.
    Stream(OpenStream),
    /// The front waits for the poll's answer (or the client leaving), then writes it with the
    /// router's response headers (CORS).
    Poll(OpenPoll),
}

/// Where the handler of a direct path leaves its work: the request carries it as an extension.
#[derive(Clone)]
enum DirectSlot {
    Stream(Handoff<OpenStream>),
    Poll(Handoff<OpenPoll>),
}

impl DirectSlot {
    fn for_path(path: &str) -> Self {
        if path == "/poll" { Self::Poll(Handoff::default()) } else { Self::Stream(Handoff::default()) }
    }

    fn insert_into(&self, extensions: &mut http::Extensions) {
        match self {
            Self::Stream(handoff) => {
                extensions.insert(handoff.clone());
            }
            Self::Poll(handoff) => {
                extensions.insert(handoff.clone());
            }
        }
    }

    fn take(&self) -> Option<DirectWork> {
        match self {
            Self::Stream(handoff) => handoff.take().map(DirectWork::Stream),
            Self::Poll(handoff) => handoff.take().map(DirectWork::Poll),
        }
    }
}

/// Timeouts of the front.
#[derive(Debug, Clone, Copy)]
pub struct FrontTimeouts {
    /// For a request head to arrive (slowloris), and for an idle keep-alive connection.
    pub header: Duration,
    /// For a response to be taken by the client.
    pub write: Duration,
}

/// Serves the connection's long-lived requests. Returns the bytes already read when hyper is to
/// take the connection over; `None` when it is done with.
pub async fn serve<IO>(
    io: &mut IO,
    peer: SocketAddr,
    router: &Router,
    timeouts: FrontTimeouts,
    shutdown: &CancellationToken,
) -> Option<Bytes>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = BytesMut::new();
    loop {
        let head = tokio::select! {
            () = shutdown.cancelled() => return None,
            head = timeout(timeouts.header, read_head(io, &mut buffer)) => head,
        };
        let (request, keep_alive, slot) = match head {
            Ok(Head::Direct { request, keep_alive, slot }) => (request, keep_alive, slot),
            Ok(Head::Other) => return Some(buffer.freeze()),
            Ok(Head::Closed) | Err(_) => return None,
        };
        if buffer.is_empty() {
            // An open stream or a parked poll holds no read buffer.
            buffer = BytesMut::new();
        }
        let response = respond(router, peer, *request, &slot);
        let close = !keep_alive || shutdown.is_cancelled();
        if !answer(io, &mut buffer, response, slot, timeouts.write, close).await || close {
            close_gracefully(io).await;
            return None;
        }
    }
}

/// Ends the connection the way a client can read to the end: what is buffered (TLS) is
/// flushed, our side is shut (FIN, TLS close_notify), and the client's late input is read and
/// dropped for a moment, so that closing with unread input does not reset the connection and
/// destroy the end of the response before the client has read it.
async fn close_gracefully<IO>(io: &mut IO)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let linger = async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut discard = [0u8; 512];
        while matches!(io.read(&mut discard).await, Ok(read) if read > 0) {}
    };
    let _ = timeout(CLOSE_LINGER, Box::pin(linger)).await;
}

enum Head {
    /// A request this front answers.
    Direct { request: Box<Request<Body>>, keep_alive: bool, slot: DirectSlot },
    /// Something for hyper: the buffer holds what was read.
    Other,
    /// The client closed, or the connection failed.
    Closed,
}

/// Reads until a whole request head is buffered, and sorts it; the head leaves the buffer when
/// it is answered here.
async fn read_head<IO>(io: &mut IO, buffer: &mut BytesMut) -> Head
where
    IO: AsyncRead + Unpin,
{
    loop {
        if !buffer.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(buffer) {
                Ok(httparse::Status::Complete(length)) => {
                    let Some((request, keep_alive, slot)) = direct_request(&parsed) else {
                        return Head::Other;
                    };
                    buffer.advance(length);
                    return Head::Direct { request: Box::new(request), keep_alive, slot };
                }
                Ok(httparse::Status::Partial) => {}
                // hyper answers it (400, 431).
                Err(_) => return Head::Other,
            }
        }
        if buffer.len() >= MAX_HEAD {
            return Head::Other;
        }
        buffer.reserve(READ_SIZE);
        match io.read_buf(buffer).await {
            Ok(0) if buffer.is_empty() => return Head::Closed,
            // A head cut short: hyper reads the rest (or the end) and answers.
            Ok(0) => return Head::Other,
            Ok(_) => {}
            Err(_) => return Head::Closed,
        }
    }
}

/// The request, when it is one this front answers: an HTTP/1.1 `GET` of a direct path with no
/// body and no upgrade; whether the connection may be kept alive after it; and the slot its
/// handler leaves its work in.
fn direct_request(parsed: &httparse::Request<'_, '_>) -> Option<(Request<Body>, bool, DirectSlot)> {
    let (Some("GET"), Some(1), Some(target)) = (parsed.method, parsed.version, parsed.path) else {
        return None;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if !DIRECT_PATHS.contains(&path) {
        return None;
    }
    let mut request = Request::builder().method(Method::GET).uri(target).version(Version::HTTP_11);
    let mut keep_alive = true;
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        let has_body =
            (name == header::CONTENT_LENGTH && value.as_bytes() != b"0") || name == header::TRANSFER_ENCODING;
        if has_body || name == header::UPGRADE {
            return None;
        }
        if name == header::CONNECTION && has_token(&value, "close") {
            keep_alive = false;
        }
        request = request.header(name, value);
    }
    Some((request.body(Body::empty()).ok()?, keep_alive, DirectSlot::for_path(path)))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
}

/// The router's answer to `request`, boxed: the request then lives in it alone, not also in
/// the state of every open stream.
fn respond(
    router: &Router,
    peer: SocketAddr,
    mut request: Request<Body>,
    slot: &DirectSlot,
) -> Pin<Box<impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + use<>>> {
    request.extensions_mut().insert(ConnectInfo(peer));
    slot.insert_into(request.extensions_mut());
    Box::pin(router.clone().oneshot(request))
}

/// Answers one request; whether the connection can take another. With `close`, the response
/// says the connection closes after it.
async fn answer<IO, R>(
    io: &mut IO,
    buffer: &mut BytesMut,
    response: Pin<Box<R>>,
    slot: DirectSlot,
    write_timeout: Duration,
    close: bool,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
    R: Future<Output = Result<axum::response::Response, std::convert::Infallible>>,
{
    // A client that leaves while its poll is parked is let go at once.
    let response = tokio::select! {
        response = response => match response {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        },
        () = peer_gone(io, buffer) => return false,
    };
    let (mut parts, body) = response.into_parts();
    match slot.take() {
        Some(DirectWork::Stream(stream)) => {
            drop(slot);
            // Only the stream is kept while it runs: the response's parts go once written.
            // The connection closes after a stream, and says so.
            let head = response_head(&parts, Framing::Chunked, true);
            drop((parts, body));
            let mut sink = SocketSink { io, buffer, intact: true };
            if !write_all(sink.io, head, write_timeout).await {
                return false;
            }
            stream.run(&mut sink).await;
            if sink.intact {
                // The end of the chunked body.
                let _ = write_all(sink.io, b"0\r\n\r\n".to_vec(), write_timeout).await;
            }
            false
        }
        Some(DirectWork::Poll(poll)) => {
            drop((slot, body));
            let answer = tokio::select! {
                answer = poll.answer() => answer.unwrap_or_else(IntoResponse::into_response),
                () = peer_gone(io, buffer) => return false,
            };
            // The router's headers (CORS) with the answer's status, headers and body: each of the
            // answer's header names replaces the router's, with all its values.
            let (answer_parts, body) = answer.into_parts();
            parts.status = answer_parts.status;
            let mut name = None;
            for (next, value) in answer_parts.headers {
                if let Some(next) = next {
                    parts.headers.remove(&next);
                    name = Some(next);
                }
                if let Some(name) = &name {
                    parts.headers.append(name.clone(), value);
                }
            }
            Box::pin(write_response(io, parts, body, write_timeout, close)).await
        }
        // Every other answer here (an error, a poll with something at once) has its whole
        // body at hand. Boxed, so what writing it takes is not kept in every stream's state.
        None => Box::pin(write_response(io, parts, body, write_timeout, close)).await,
    }
}

/// Writes a response whose body is complete; whether it all went.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    parts: http::response::Parts,
    body: Body,
    write_timeout: Duration,
    close: bool,
) -> bool {
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return false;
    };
    let mut response = response_head(&parts, Framing::Length(body.len()), close);
    response.extend_from_slice(&body);
    write_all(io, response, write_timeout).await
}

/// Writes `bytes` and flushes (TLS buffers what it is given) within the write timeout; whether
/// they all went.
async fn write_all<IO: AsyncWrite + Unpin>(io: &mut IO, bytes: Vec<u8>, write_timeout: Duration) -> bool {
    let write = async {
        io.write_all(&bytes).await?;
        io.flush().await
    };
    matches!(timeout(write_timeout, write).await, Ok(Ok(())))
}

/// How a response's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
}

/// The status line and headers, with `date`, the body's framing and, with `close`,
/// `connection: close`.
fn response_head(parts: &http::response::Parts, framing: Framing, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION | header::DATE) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    let bodiless = parts.status.is_informational()
        || parts.status == http::StatusCode::NO_CONTENT
        || parts.status == http::StatusCode::NOT_MODIFIED;
    match framing {
        Framing::Length(_) if bodiless => {}
        Framing::Length(length) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Resolves when the client has closed its side or the connection failed. What it sends
/// meanwhile (a pipelined next request) is kept in `buffer`, up to the head limit.
async fn peer_gone<IO>(io: &mut IO, buffer: &mut BytesMut)
where
    IO: AsyncRead + Unpin,
{
    // A poll function: the scratch space lives on the stack of each poll, not in the state of
    // every open connection.
    std::future::poll_fn(|context| {
        loop {
            let mut scratch = [0u8; 512];
            let mut read = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut *io).poll_read(context, &mut read)) {
                Ok(()) if !read.filled().is_empty() && buffer.len() + read.filled().len() <= MAX_HEAD => {
                    buffer.extend_from_slice(read.filled());
                }
                _ => return Poll::Ready(()),
            }
        }
    })
    .await
}

/// A stream written to the socket as a chunked body.
struct SocketSink<'a, IO> {
    io: &'a mut IO,
    buffer: &'a mut BytesMut,
    /// False once a chunk was cut short: nothing more can be written.
    intact: bool,
}

impl<IO> StreamSink for SocketSink<'_, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    async fn send(&mut self, chunk: Bytes) -> bool {
        if chunk.is_empty() {
            // An empty chunk would end the body.
            return self.intact;
        }
        self.intact = false;
        let mut size = [0u8; CHUNK_SIZE_LINE];
        let mut parts: [&[u8]; 3] = [chunk_size_line(chunk.len(), &mut size), &chunk, b"\r\n"];
        let written = std::future::poll_fn(|context| {
            ready!(poll_write_parts(&mut *self.io, &mut parts, context))?;
            // TLS holds what it is given until flushed.
            Pin::new(&mut *self.io).poll_flush(context)
        })
        .await;
        self.intact = written.is_ok();
        self.intact
    }

    fn send_last(&mut self, chunk: Bytes) {
        // One attempt that does not wait; the connection closes after it either way.
        let mut size = [0u8; CHUNK_SIZE_LINE];
        let mut parts: [&[u8]; 3] = [chunk_size_line(chunk.len(), &mut size), &chunk, b"\r\n"];
        let mut context = Context::from_waker(std::task::Waker::noop());
        self.intact = matches!(poll_write_parts(&mut *self.io, &mut parts, &mut context), Poll::Ready(Ok(())))
            && matches!(Pin::new(&mut *self.io).poll_flush(&mut context), Poll::Ready(Ok(())));
    }

    async fn gone(&mut self) {
        peer_gone(self.io, self.buffer).await;
    }
}

/// The longest chunk size line: 16 hex digits and CRLF.
const CHUNK_SIZE_LINE: usize = 18;

/// A chunk's size line (`<hex>\r\n`), written into `buffer`: no allocation per chunk, which is
/// per subscriber and per message.
fn chunk_size_line(length: usize, buffer: &mut [u8; CHUNK_SIZE_LINE]) -> &[u8] {
    let digits = (usize::BITS - length.leading_zeros()).div_ceil(4).max(1) as usize;
    for (index, byte) in buffer[..digits].iter_mut().enumerate() {
        let nibble = (length >> (4 * (digits - 1 - index))) & 0xf;
        *byte = b"0123456789abcdef"[nibble];
    }
    buffer[digits..digits + 2].copy_from_slice(b"\r\n");
    &buffer[..digits + 2]
}

/// Writes all of `parts` in as few system calls as the socket allows; the parts are advanced
/// past what was written, so a call resumes where the last stopped.
fn poll_write_parts<IO>(io: &mut IO, parts: &mut [&[u8]; 3], context: &mut Context<'_>) -> Poll<std::io::Result<()>>
where
    IO: AsyncWrite + Unpin,
{
    while parts.iter().any(|part| !part.is_empty()) {
        let slices = parts.map(IoSlice::new);
        let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(context, &slices))?;
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        for part in parts.iter_mut() {
            let taken = written.min(part.len());
            *part = &part[taken..];
            written -= taken;
        }
    }
    Poll::Ready(Ok(()))
}

/// An IO that first gives back bytes already read from it: hyper takes over a connection whose
/// first head this front has read.
pub struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    pub fn new(prefix: Bytes, io: IO) -> Self {
        Self { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let count = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..count]);
            self.prefix.advance(count);
            if self.prefix.is_empty() {
                // Let the read buffer go: an upgraded connection keeps this IO for its life.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(context, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    crate::transport::delegate_async_write!(io);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open stream and parked poll holds this future: what only some requests need
    /// (hyper, TLS, complete responses) is boxed elsewhere, so it stays small.
    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut buffer = [0u8; CHUNK_SIZE_LINE];
        for length in [1usize, 9, 10, 15, 16, 255, 256, 4096, 0xdead_beef, usize::MAX] {
            assert_eq!(chunk_size_line(length, &mut buffer), format!("{length:x}\r\n").as_bytes(), "{length}");
        }
    }

    #[tokio::test]
    async fn a_direct_connection_s_state_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut io = tokio::net::TcpStream::connect(address).await.unwrap();
        let (router, shutdown) = (Router::new(), CancellationToken::new());
        let timeouts = FrontTimeouts { header: Duration::from_secs(1), write: Duration::from_secs(1) };
        let size = std::mem::size_of_val(&serve(&mut io, address, &router, timeouts, &shutdown));
        eprintln!("direct connection future: {size} bytes");
        assert!(size < 2048, "the direct connection's future grew to {size} bytes");
    }
}
