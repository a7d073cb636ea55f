//! The Pusher Channels door (issue 18), under construction: so far the protocol's signatures.
//! The WebSocket route, the HTTP API and the HTTP fallbacks come next, onto the same hub.

pub mod signature;
