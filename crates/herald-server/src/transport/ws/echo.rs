//! `GET /ws/echo`: echoes every message on the same WebSocket stack, limits and write path as
//! `/ws`, for the Autobahn conformance suite. Off unless `websocket.echo_route` is set.

use std::collections::VecDeque;

use tokio::time::timeout;

use super::deflate::Deflate;
use super::frames::{self, Incoming, MessageReader, ReadError};
use super::session::{CLOSE_WAIT, Ending, close_and_linger, goodbye_after_error, write_frames};
use super::watched::Socket;
use crate::state::AppState;
use crate::transport::limits::ConnectionPermit;
use herald_wire::close_code;

/// Echoes until the peer or the server closes (compressing what it sends back where
/// permessage-deflate was agreed); `_permit` is the connection's admission.
pub async fn run(app: AppState, mut socket: Socket, deflate: Option<Deflate>, _permit: ConnectionPermit) {
    let max_message = app.settings.limits.max_message_size.get();
    let threshold = app.settings.websocket.compression_threshold;
    let mut reader = MessageReader::new(deflate.is_some());
    let echo = |opcode: u8, payload: &[u8]| {
        deflate
            .and_then(|deflate| frames::compressed_frame(opcode, payload, deflate.server_window_bits, threshold))
            .unwrap_or_else(|| frames::frame(opcode, payload))
    };
    let mut pending = VecDeque::new();
    loop {
        let message = tokio::select! {
            () = app.shutdown.cancelled() => break,
            message = std::future::poll_fn(|context| reader.poll_next(&mut socket, context, max_message)) => message,
        };
        let reply = match message {
            Ok(Incoming::Text(text)) => echo(frames::OPCODE_TEXT, text.as_bytes()),
            Ok(Incoming::Binary(data)) => echo(frames::OPCODE_BINARY, &data),
            Ok(Incoming::Ping(payload)) => frames::frame(frames::OPCODE_PONG, &payload),
            Ok(Incoming::Pong) => continue,
            Ok(Incoming::Close(code)) => {
                pending.push_back(frames::close_reply(code));
                let _ = timeout(CLOSE_WAIT, write_frames(&mut socket, &mut pending)).await;
                return;
            }
            Err(ReadError::Gone) => return,
            Err(error) => {
                goodbye_after_error(&mut socket, &mut reader, max_message, Ending::from_read_error(error)).await;
                return;
            }
        };
        pending.push_back(reply);
        if write_frames(&mut socket, &mut pending).await.is_err() {
            return;
        }
    }
    close_and_linger(&mut socket, &mut reader, max_message, close_code::GOING_AWAY, "server shutting down", false)
        .await;
}
