//! The WebSocket close codes Herald uses (documented in `docs/protocol.md`). Codes 4000-4099
//! ask a client to reconnect and recover from the positions it has.

pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The client fell too far behind; reconnect and recover from the last position seen.
pub const SLOW_CONSUMER: u16 = 4001;
/// Nothing heard from the client within the ping interval plus the pong timeout.
pub const NO_PONG: u16 = 4002;
/// The client's token expired and was not refreshed: get a fresh one, then reconnect.
pub const TOKEN_EXPIRED: u16 = 4003;
/// The server API disconnected the client, asking it to come back (`reconnect: true`).
pub const DISCONNECTED: u16 = 4004;
/// A server-side subscription could not be made (the engine failed): reconnect, and the
/// server subscribes it again.
pub const SUBSCRIBE_FAILED: u16 = 4005;
/// The server API disconnected the client for good (`reconnect: false`): do not reconnect
/// without a change (a new token, a user's action).
pub const DISCONNECTED_FOR_GOOD: u16 = 4500;
