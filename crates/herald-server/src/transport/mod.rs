//! One module per transport. Transports are thin: they translate between the wire and the hub.

pub mod origin;
pub mod ws;
