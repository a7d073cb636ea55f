//! WebSocket frames in and out, server side (RFC 6455).
//!
//! Client messages are read here rather than through a WebSocket library's stream, so that an
//! idle connection holds no read buffer: input is kept only while a frame or a fragmented
//! message is incomplete, and let go as soon as it is whole. Header parsing and the close code
//! rules are tungstenite's; server frames (never masked) are encoded by [`frame`].

use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::deflate;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;

/// Bytes asked of the socket per read when no frame in progress says how many it needs.
const READ_CHUNK: usize = 4096;

/// A frame header is 14 bytes at most.
const MAX_HEADER: usize = 14;
/// A control frame's payload is 125 bytes at most.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// A ping's payload, to send back in the pong.
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame, with the code it gave.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The connection ended (or failed) without a close frame.
    Gone,
    /// A frame or message larger than the limit.
    TooBig,
    /// A text message (or a close reason) that is not UTF-8.
    InvalidUtf8,
    /// Anything else the protocol forbids: unmasked or reserved-bit frames, unknown opcodes,
    /// fragmented or oversized control frames, a stray continuation, a bad close code.
    Protocol,
    /// A compressed message that does not decompress (permessage-deflate).
    InvalidData,
}

/// Assembles the client's messages from the socket's bytes.
#[derive(Default)]
pub struct MessageReader {
    /// Input read but not yet taken as frames, from `start` on. Empty, with no allocation,
    /// whenever input ends on a frame boundary: the usual state of an open connection.
    input: Vec<u8>,
    start: u32,
    /// Whether permessage-deflate was agreed: messages may come compressed (RSV1).
    inflate: bool,
    /// The data message being put together from fragments.
    fragments: Option<Box<Fragments>>,
}

struct Fragments {
    text: bool,
    /// Compressed: checked as UTF-8 once decompressed, not fragment by fragment.
    compressed: bool,
    payload: Vec<u8>,
    /// How much of a text payload is known to be UTF-8: a message is failed at its first
    /// invalid fragment, not when it ends.
    checked: usize,
}

impl MessageReader {
    /// A reader of a connection that agreed permessage-deflate (`inflate`) or not.
    pub fn new(inflate: bool) -> Self {
        Self { inflate, ..Self::default() }
    }

    /// The next message, reading the socket as needed. `max_message` bounds a frame and a
    /// whole message alike.
    pub fn poll_next<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        context: &mut Context<'_>,
        max_message: usize,
    ) -> Poll<Result<Incoming, ReadError>> {
        loop {
            let needed = match self.next_buffered(max_message)? {
                Parsed::Message(message) => return Poll::Ready(Ok(message)),
                Parsed::Fragment => continue,
                Parsed::NeedInput(needed) => needed,
            };
            ready!(self.fill(io, context, needed))?;
        }
    }

    /// Reads once, into room for at least `needed` unread bytes.
    fn fill<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        context: &mut Context<'_>,
        needed: usize,
    ) -> Poll<Result<(), ReadError>> {
        if self.start > 0 {
            self.input.drain(..self.start as usize);
            self.start = 0;
        }
        let unread = self.input.len();
        // A large frame's buffer grows with what has arrived (doubling at most per read), not
        // to the length its header claims: a header alone must not buy a large buffer.
        let room = needed.saturating_sub(unread).min(unread.max(READ_CHUNK));
        self.input.reserve(room.max(READ_CHUNK.saturating_sub(unread)));
        let read = tokio_util::io::poll_read_buf(Pin::new(io), context, &mut self.input);
        if self.input.is_empty() {
            // Nothing came (yet): an idle connection keeps no buffer.
            self.input = Vec::new();
        }
        match read {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Err(ReadError::Gone)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes the next whole frame from the input, if there is one.
    fn next_buffered(&mut self, max_message: usize) -> Result<Parsed, ReadError> {
        let unread = &self.input[self.start as usize..];
        if unread.len() < 2 {
            return Ok(Parsed::NeedInput(2));
        }
        let mut cursor = Cursor::new(unread);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Parsed::NeedInput(MAX_HEADER)),
            Err(_) => return Err(ReadError::Protocol),
        };
        let Some(mask) = header.mask else {
            // RFC 6455 5.1: a server closes the connection on an unmasked frame.
            return Err(ReadError::Protocol);
        };
        // RSV1 marks a compressed message, on its first frame only (RFC 7692 6.1).
        let compressed = header.rsv1;
        let may_be_compressed = self.inflate && matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if header.rsv2 || header.rsv3 || (compressed && !may_be_compressed) {
            return Err(ReadError::Protocol);
        }
        let header_len = cursor.position() as usize;
        let length = usize::try_from(length).map_err(|_| ReadError::TooBig)?;
        match header.opcode {
            OpCode::Control(_) if !header.is_final || length > MAX_CONTROL_PAYLOAD => {
                return Err(ReadError::Protocol);
            }
            OpCode::Data(_) => {
                let so_far = self.fragments.as_ref().map_or(0, |fragments| fragments.payload.len());
                if length > max_message.saturating_sub(so_far) {
                    return Err(ReadError::TooBig);
                }
            }
            OpCode::Control(_) => {}
        }
        let frame_len = header_len.checked_add(length).ok_or(ReadError::TooBig)?;
        if unread.len() < frame_len {
            return Ok(Parsed::NeedInput(frame_len));
        }
        let payload_start = self.start as usize + header_len;
        let payload = &mut self.input[payload_start..payload_start + length];
        unmask(payload, mask);
        let parsed = self.take_frame(header.opcode, header.is_final, compressed, payload_start, length, max_message);
        // Frames are at most a message (bounded by the limit) plus a header.
        self.start = u32::try_from(self.start as usize + frame_len).map_err(|_| ReadError::TooBig)?;
        if self.start as usize == self.input.len() {
            // Input ended on this frame: let the buffer go.
            self.input = Vec::new();
            self.start = 0;
        }
        parsed
    }

    /// What the frame whose (unmasked) payload is at `input[at..at + length]` means.
    fn take_frame(
        &mut self,
        opcode: OpCode,
        is_final: bool,
        compressed: bool,
        at: usize,
        length: usize,
        max_message: usize,
    ) -> Result<Parsed, ReadError> {
        let payload = &self.input[at..at + length];
        let message = match (opcode, self.fragments.as_mut()) {
            (OpCode::Control(Control::Ping), _) => Incoming::Ping(payload.to_vec()),
            (OpCode::Control(Control::Pong), _) => Incoming::Pong,
            (OpCode::Control(Control::Close), _) => Incoming::Close(close_code(payload)?),
            (OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)), _) => {
                return Err(ReadError::Protocol);
            }
            (OpCode::Data(Data::Continue), None) | (OpCode::Data(Data::Text | Data::Binary), Some(_)) => {
                return Err(ReadError::Protocol);
            }
            (OpCode::Data(Data::Continue), Some(fragments)) => {
                fragments.payload.extend_from_slice(payload);
                fragments.check_utf8()?;
                if !is_final {
                    return Ok(Parsed::Fragment);
                }
                let Fragments { text, compressed, payload, .. } = *self.fragments.take().expect("matched above");
                complete(text, compressed, payload, max_message)?
            }
            (OpCode::Data(data @ (Data::Text | Data::Binary)), None) => {
                let text = data == Data::Text;
                if !is_final {
                    let mut fragments = Box::new(Fragments { text, compressed, payload: payload.to_vec(), checked: 0 });
                    fragments.check_utf8()?;
                    self.fragments = Some(fragments);
                    return Ok(Parsed::Fragment);
                }
                complete(text, compressed, payload.to_vec(), max_message)?
            }
        };
        Ok(Parsed::Message(message))
    }
}

enum Parsed {
    Message(Incoming),
    /// A fragment taken into the message being assembled.
    Fragment,
    /// No whole frame yet: this many unread bytes are needed at least.
    NeedInput(usize),
}

impl Fragments {
    fn check_utf8(&mut self) -> Result<(), ReadError> {
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.payload[self.checked..]) {
            Ok(_) => self.checked = self.payload.len(),
            // A character cut at the end of a fragment is completed by the next one.
            Err(error) if error.error_len().is_none() => self.checked += error.valid_up_to(),
            Err(_) => return Err(ReadError::InvalidUtf8),
        }
        Ok(())
    }
}

fn complete(text: bool, compressed: bool, payload: Vec<u8>, max_message: usize) -> Result<Incoming, ReadError> {
    let payload = if compressed {
        deflate::decompress(&payload, max_message).map_err(|error| match error {
            deflate::InflateError::TooBig => ReadError::TooBig,
            deflate::InflateError::Invalid => ReadError::InvalidData,
        })?
    } else {
        payload
    };
    if text {
        String::from_utf8(payload).map(Incoming::Text).map_err(|_| ReadError::InvalidUtf8)
    } else {
        Ok(Incoming::Binary(payload))
    }
}

/// A close frame's code: none, or one a peer may send, followed by a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                return Err(ReadError::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| ReadError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, mask_byte) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= mask_byte;
    }
}

/// A final, unmasked frame: header and payload in one buffer.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    push_header(&mut frame, opcode, payload.len());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// The RSV1 bit of a frame's first byte: "this message is compressed" (permessage-deflate).
pub const RSV1: u8 = 0x40;

/// `payload` as one compressed, final, unmasked frame of `opcode` (RSV1 set); `None` when it
/// is shorter than `threshold` or would not get smaller (it goes plain then).
pub fn compressed_frame(opcode: u8, payload: &[u8], window_bits: u8, threshold: usize) -> Option<Bytes> {
    if payload.len() < threshold {
        return None;
    }
    let compressed = deflate::compress(payload, window_bits);
    if compressed.len() >= payload.len() {
        return None;
    }
    let mut frame = Vec::with_capacity(compressed.len() + 10);
    push_header_with(&mut frame, 0x80 | RSV1 | opcode, compressed.len());
    frame.extend_from_slice(&compressed);
    Some(Bytes::from(frame))
}

/// The answer to the client's close frame: its code back, or an empty close frame.
pub fn close_reply(code: Option<u16>) -> Bytes {
    match code {
        Some(code) => close_frame(code, ""),
        None => frame(OPCODE_CLOSE, &[]),
    }
}

/// A close frame with a code and a reason (cut to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OPCODE_CLOSE, &payload)
}

/// Writes a final, unmasked frame's header for a payload of `length` bytes.
fn push_header(frame: &mut Vec<u8>, opcode: u8, length: usize) {
    push_header_with(frame, 0x80 | opcode, length);
}

/// Writes an unmasked frame's header: its first byte (FIN, RSV and opcode bits) and length.
fn push_header_with(frame: &mut Vec<u8>, first: u8, length: usize) {
    frame.push(first);
    match length {
        0..=125 => frame.push(length as u8),
        126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
}

/// `json` as an unmasked, final WebSocket text frame (header + payload), and the JSON itself as
/// a view into the same allocation: a server's frame is the same bytes for every connection.
pub fn text_frame(json: String) -> (Utf8Bytes, Bytes) {
    let ws_frame = frame(OPCODE_TEXT, json.as_bytes());
    let header_len = ws_frame.len() - json.len();
    let json = Utf8Bytes::try_from(ws_frame.slice(header_len..)).unwrap_or_else(|_| Utf8Bytes::from(json));
    (json, ws_frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_compressed_only_past_the_threshold_and_when_smaller() {
        let json =
            br#"{"channel":"a","offset":1,"epoch":"e","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","time":1}"#;
        assert_eq!(compressed_frame(1, json, 15, json.len() + 1), None);
        let compressed = compressed_frame(1, json, 15, 0).unwrap();
        assert_eq!(compressed[0], 0x80 | RSV1 | 1);
        assert!(compressed.len() < json.len());
        let random: Vec<u8> = (0..300).map(|_| fastrand::u8(..)).collect();
        assert_eq!(compressed_frame(2, &random, 15, 0), None, "incompressible: sent plain");
    }

    const LIMIT: usize = 1024;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
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

    /// Reads every message from `input`, fed to the reader `step` bytes at a time.
    async fn read_all(input: Vec<u8>, step: usize) -> (Vec<Incoming>, ReadError, MessageReader) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in input.chunks(step) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut reader = MessageReader::default();
        let mut messages = Vec::new();
        let error = loop {
            match std::future::poll_fn(|context| reader.poll_next(&mut server, context, LIMIT)).await {
                Ok(message) => messages.push(message),
                Err(error) => break error,
            }
        };
        writer.await.unwrap();
        (messages, error, reader)
    }

    #[tokio::test]
    async fn messages_come_whole_however_the_input_is_cut() {
        let mut input = client_frame(0x81, b"hello");
        input.extend(client_frame(0x01, "caf".as_bytes()));
        input.extend(client_frame(0x89, b"ping!"));
        input.extend(client_frame(0x80, "\u{e9} au lait".as_bytes()));
        input.extend(client_frame(0x82, &[0u8; 300]));
        input.extend(client_frame(0x8A, b""));
        input.extend(client_frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        for step in [1, 3, 7, 64, 4096] {
            let (messages, error, reader) = read_all(input.clone(), step).await;
            assert_eq!(
                messages,
                vec![
                    Incoming::Text("hello".into()),
                    Incoming::Ping(b"ping!".to_vec()),
                    Incoming::Text("caf\u{e9} au lait".into()),
                    Incoming::Binary(vec![0; 300]),
                    Incoming::Pong,
                    Incoming::Close(Some(1000)),
                ],
                "step {step}"
            );
            assert_eq!(error, ReadError::Gone);
            assert_eq!(reader.input.capacity(), 0, "nothing kept between messages");
        }
    }

    #[tokio::test]
    async fn a_character_split_across_fragments_is_valid_but_invalid_utf8_fails_at_once() {
        let euro = "\u{20ac}".as_bytes();
        let mut input = client_frame(0x01, &euro[..1]);
        input.extend(client_frame(0x80, &euro[1..]));
        let (messages, _, _) = read_all(input, 4096).await;
        assert_eq!(messages, vec![Incoming::Text("\u{20ac}".into())]);

        // The first fragment is already invalid: no need to wait for the rest.
        let input = client_frame(0x01, &[b'a', 0xff]);
        let (messages, error, _) = read_all(input, 4096).await;
        assert!(messages.is_empty());
        assert_eq!(error, ReadError::InvalidUtf8);
    }

    #[tokio::test]
    async fn what_the_protocol_forbids_is_refused() {
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], ReadError::Protocol),  // unmasked
            (client_frame(0xC1, b"x"), ReadError::Protocol),      // reserved bit
            (client_frame(0x83, b"x"), ReadError::Protocol),      // reserved data opcode
            (client_frame(0x8B, b"x"), ReadError::Protocol),      // reserved control opcode
            (client_frame(0x09, b"x"), ReadError::Protocol),      // fragmented ping
            (client_frame(0x89, &[0; 126]), ReadError::Protocol), // ping too long
            (client_frame(0x80, b"x"), ReadError::Protocol),      // continuation of nothing
            ([client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(), ReadError::Protocol),
            (client_frame(0x88, &[0x03]), ReadError::Protocol), // one-byte close payload
            (client_frame(0x88, &[0x03, 0xed]), ReadError::Protocol), // close code 1005
            (client_frame(0x88, &[0x03, 0xe8, 0xff]), ReadError::InvalidUtf8),
            (client_frame(0x81, &[0xc3, 0x28]), ReadError::InvalidUtf8),
            (client_frame(0x82, &[0; LIMIT + 1]), ReadError::TooBig),
            ([client_frame(0x02, &[0; LIMIT]), client_frame(0x80, &[0])].concat(), ReadError::TooBig),
        ];
        for (input, expected) in cases {
            let (messages, error, _) = read_all(input.clone(), 4096).await;
            assert!(messages.is_empty(), "{input:02x?}");
            assert_eq!(error, expected, "{input:02x?}");
        }
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_read_chunk_arrives_whole() {
        let payload: Vec<u8> = (0..100_000u32).map(|index| index as u8).collect();
        let input = client_frame(0x82, &payload);
        let (mut client, mut server) = tokio::io::duplex(256 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &input).await.unwrap();
        let mut reader = MessageReader::default();
        let message = std::future::poll_fn(|context| reader.poll_next(&mut server, context, 1 << 20)).await.unwrap();
        assert_eq!(message, Incoming::Binary(payload));
    }

    /// A header may claim any length: with no limit to stop it, the buffer still grows only
    /// with what arrives (about a thousand bytes here).
    #[tokio::test]
    async fn a_frame_claiming_to_be_huge_allocates_only_what_arrives() {
        let mut input = vec![0x82, 0x80 | 127];
        input.extend_from_slice(&(1u64 << 62).to_be_bytes());
        input.extend_from_slice(&[1, 2, 3, 4]);
        input.extend_from_slice(&[0; 1000]);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &input).await.unwrap();
        drop(client);
        let mut reader = MessageReader::default();
        let outcome = std::future::poll_fn(|context| reader.poll_next(&mut server, context, usize::MAX)).await;
        assert_eq!(outcome, Err(ReadError::Gone));
        assert!(reader.input.capacity() <= 4 * READ_CHUNK, "{}", reader.input.capacity());
    }

    #[test]
    fn server_frames_have_the_right_header() {
        assert_eq!(&frame(OPCODE_PONG, b"ab")[..], &[0x8A, 2, b'a', b'b']);
        assert_eq!(&frame(OPCODE_BINARY, &[0; 200])[..4], &[0x82, 126, 0, 200]);
        assert_eq!(&frame(OPCODE_TEXT, &[0; 70_000])[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let close = close_frame(1001, &"\u{e9}".repeat(100));
        assert_eq!(close[1] as usize, close.len() - 2);
        assert!(close.len() - 2 <= 125);
        assert!(std::str::from_utf8(&close[4..]).is_ok());
    }
}
