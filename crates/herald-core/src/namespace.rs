//! Namespace options: what the channels of one namespace keep and allow.

use std::collections::HashMap;
use std::time::Duration;

use crate::channel::ChannelName;

/// Options of the channels of one namespace (`chat:*` for namespace `chat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceOptions {
    /// Publications kept per channel for recovery and history; 0 keeps none.
    pub history_size: usize,
    /// How long a publication stays in history.
    pub history_ttl: Duration,
    /// History kept in durable storage: survives restarts, acknowledged after commit.
    pub durable: bool,
    /// Whether clients (not only the server API) may publish.
    pub client_publish: bool,
    /// Whether clients without a token may subscribe (and publish, if clients may).
    pub anonymous: bool,
    /// How long an idempotency key is remembered after its publish.
    pub idempotency_window: Duration,
    /// Whether the channels keep track of who is subscribed.
    pub presence: bool,
    /// Whether joins and leaves are pushed to subscribers (needs `presence`).
    pub join_leave: bool,
    /// Whether a client without a token may give the `info` its presence entry shows (a
    /// token's identity is the server's word; this one is the client's own).
    pub anonymous_info: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            durable: false,
            client_publish: true,
            anonymous: true,
            idempotency_window: Duration::from_secs(300),
            presence: false,
            join_leave: false,
            anonymous_info: false,
        }
    }
}

/// All namespaces: the default one (channels without `:`) and the named ones.
///
/// A channel whose namespace is not configured gets the default namespace's options, so a
/// fresh server accepts `chat:lobby` without any configuration.
///
/// Within a namespace, channels whose names start with a given prefix may have options of
/// their own (the Pusher door's `private-`, `presence-` and `cache-` channels): the longest
/// matching prefix wins.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    default: NamespaceOptions,
    named: HashMap<String, NamespaceOptions>,
    /// Full channel-name prefixes (`app:presence-`) and their options, longest first.
    prefixed: Vec<(String, NamespaceOptions)>,
}

impl Namespaces {
    pub fn new(default: NamespaceOptions, named: HashMap<String, NamespaceOptions>) -> Self {
        Self { default, named, prefixed: Vec::new() }
    }

    /// Channels starting with `prefix` (which includes the namespace and its `:`) take `options`.
    pub fn with_prefix(mut self, prefix: String, options: NamespaceOptions) -> Self {
        self.prefixed.retain(|(existing, _)| *existing != prefix);
        self.prefixed.push((prefix, options));
        self.prefixed.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        self
    }

    /// Whether `namespace` has options of its own (rather than the default namespace's).
    pub fn is_named(&self, namespace: &str) -> bool {
        self.named.contains_key(namespace)
    }

    /// Gives `namespace` options of its own.
    pub fn with_named(mut self, namespace: String, options: NamespaceOptions) -> Self {
        self.named.insert(namespace, options);
        self
    }

    /// The options of a namespace's channels without a prefix of their own.
    pub fn options_of_namespace(&self, namespace: &str) -> &NamespaceOptions {
        self.named.get(namespace).unwrap_or(&self.default)
    }

    /// The largest value of an option over every namespace (to size shared structures).
    pub fn largest<T: Ord>(&self, option: impl Fn(&NamespaceOptions) -> T) -> T {
        let prefixed = self.prefixed.iter().map(|(_, options)| options);
        self.named.values().chain(prefixed).map(&option).fold(option(&self.default), std::cmp::max)
    }

    pub fn options_for(&self, channel: &ChannelName) -> &NamespaceOptions {
        if let Some((_, options)) =
            self.prefixed.iter().find(|(prefix, _)| channel.as_str().starts_with(prefix.as_str()))
        {
            return options;
        }
        channel.namespace().and_then(|namespace| self.named.get(namespace)).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_pick_their_namespace_or_the_default() {
        let chat = NamespaceOptions { history_size: 7, ..Default::default() };
        let namespaces =
            Namespaces::new(NamespaceOptions::default(), HashMap::from([("chat".to_string(), chat.clone())]));
        assert_eq!(namespaces.options_for(&ChannelName::new("chat:lobby").unwrap()), &chat);
        assert_eq!(namespaces.options_for(&ChannelName::new("news:x").unwrap()), &NamespaceOptions::default());
        assert_eq!(namespaces.options_for(&ChannelName::new("chat").unwrap()), &NamespaceOptions::default());
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        let base = NamespaceOptions { history_size: 1, ..Default::default() };
        let private = NamespaceOptions { history_size: 2, ..Default::default() };
        let encrypted = NamespaceOptions { history_size: 3, ..Default::default() };
        let namespaces =
            Namespaces::new(NamespaceOptions::default(), HashMap::from([("app".to_string(), base.clone())]))
                .with_prefix("app:private-".into(), private.clone())
                .with_prefix("app:private-encrypted-".into(), encrypted.clone());
        let options = |name: &str| namespaces.options_for(&ChannelName::new(name).unwrap()).history_size;
        assert_eq!(options("app:news"), 1);
        assert_eq!(options("app:private-x"), 2);
        assert_eq!(options("app:private-encrypted-x"), 3);
        assert_eq!(options("other:private-x"), 100);
        assert_eq!(namespaces.largest(|options| options.history_size), 100);
        assert_eq!(namespaces.options_of_namespace("app"), &base);
    }
}
