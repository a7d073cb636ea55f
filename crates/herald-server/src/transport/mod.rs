//! One module per transport. Transports are thin: they translate between the wire and the hub.
//!
//! - [`ws`]: `GET /ws`, the bidirectional JSON protocol;
//! - [`streaming`]: `GET /sse` and `GET /stream` (NDJSON);
//! - [`poll`]: `GET /poll`, long- and short-polling;
//! - [`subscription`]: what the HTTP transports share (query, cursor, recovery, clean-up);
//! - [`origin`], [`limits`]: the Origin allow-list and per-IP stream admission.

pub mod limits;
pub mod origin;
pub mod poll;
pub mod streaming;
pub mod subscription;
pub mod ws;
