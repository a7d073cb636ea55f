//! The server's own namespace, `#herald`, and the channel control messages travel on: closed
//! to every client whatever its token grants. A leaf, so that the checks of client access
//! (`auth`) and the configuration can use it.

use herald_core::{ChannelName, NamespaceOptions, Namespaces};

/// The server's own namespace.
pub const RESERVED_NAMESPACE: &str = "#herald";
/// Where control messages go, to every node.
pub const CONTROL_CHANNEL: &str = "#herald:control";

/// Whether a channel is the server's (no client may use it).
pub fn is_reserved(channel: &ChannelName) -> bool {
    channel.as_str().split_once(':').is_some_and(|(namespace, _)| namespace == RESERVED_NAMESPACE)
}

/// The namespaces with the server's own: closed to clients, a short memory-only history.
pub fn reserve(namespaces: Namespaces) -> Namespaces {
    let options = NamespaceOptions {
        history_size: 16,
        history_ttl: std::time::Duration::from_secs(60),
        durable: false,
        client_publish: false,
        anonymous: false,
        presence: false,
        join_leave: false,
        anonymous_info: false,
        ..NamespaceOptions::default()
    };
    namespaces.with_named(RESERVED_NAMESPACE.to_string(), options)
}

/// The channels with local subscribers that are the applications' (the server's own left
/// out: every node follows its control channel), as listings and gauges show them.
pub fn visible(channels: Vec<(ChannelName, usize)>) -> Vec<(ChannelName, usize)> {
    channels.into_iter().filter(|(channel, _)| !is_reserved(channel)).collect()
}
