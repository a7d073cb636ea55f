//! Herald's wire protocol, the one definition the server and its clients share: what a client
//! sends (commands), what it gets back (replies and pushes), and the JSON forms every transport
//! carries (publications, positions, errors, presence), with the close codes.
//!
//! - [`position`]: a place in a channel's stream, `{"epoch","offset"}`;
//! - [`error`]: `{"code","message"}`, the inside of every error;
//! - [`publication`]: a publication's JSON, written once and shared by every subscriber;
//! - [`command`]: client commands on the WebSocket, `{"id","op",...}`;
//! - [`reply`]: replies to commands and the results they carry;
//! - [`push`]: what the server sends unasked: disconnects, joins and leaves;
//! - [`presence`]: presence entries and lists;
//! - [`http`]: the framing pieces of the HTTP transports and the server API;
//! - [`webhook`]: the body of webhook calls and the webhook management API;
//! - [`pusher`]: the Pusher Channels protocol of the Pusher door;
//! - [`close_code`]: the WebSocket close codes Herald uses.
//!
//! No transport, no IO: types and encoders only. The server's transports translate between
//! these forms and its hub; `docs/protocol.md` describes them for people.

pub mod close_code;
pub mod command;
pub mod error;
pub mod http;
pub mod position;
pub mod presence;
pub mod publication;
pub mod push;
pub mod pusher;
pub mod reply;
pub mod webhook;

pub use command::{Command, Op};
pub use error::ErrorBody;
pub use position::Position;

/// `text` as a JSON string literal, quotes and escapes included.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string())
}
