//! WebSocket transport: `GET /ws`, the native JSON protocol (see `docs/protocol.md`), and
//! `GET /ws/echo` for the conformance suite.
//!
//! The RFC 6455 handshake is answered here on hyper's upgrade, and frames are read and written
//! by Herald itself (with tungstenite's header parsing), so that Herald owns the socket: each
//! connection's task is tracked from the start (shutdown waits for it), an idle connection
//! holds no buffer, and a connection closed for bad input can linger on its raw socket until
//! the peer has read the close frame.
//!
//! - [`handshake`]: the opening handshake and the connection's task;
//! - [`session`]: the per-connection loop, bounded writes, goodbyes, for any [`Protocol`]
//!   (Herald's own here, the Pusher door's in [`crate::pusher`]);
//! - [`connection`]: what the client is apart from its socket (identity, positions, rates);
//! - [`commands`]: the client commands, acting on the connection;
//! - [`frames`]: client messages in, server frames out;
//! - [`echo`]: the echo route;
//! - [`watched`]: the socket, noting when it may have input.

pub mod commands;
mod connection;
pub mod deflate;
mod echo;
pub mod frames;
mod handshake;
mod session;
mod watched;

pub(crate) use handshake::accept;
pub use handshake::{echo, upgrade};
pub(crate) use session::{Ending, Goodbye, Protocol, refuse, run_protocol};
pub use watched::{Socket, WatchedIo};
