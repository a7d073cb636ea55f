//! The Pusher apps a server serves (`[pusher]` and `[[pusher.apps]]`): their credentials, the
//! Herald namespace each one's channels live in, and the channel rules Pusher's names imply
//! (`private-` and `presence-` need a signature, `presence-` keeps members, `cache-` keeps the
//! last event), registered as prefix options of that namespace so both doors obey them.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{ChannelName, NamespaceOptions, Namespaces};
use serde::{Deserialize, Serialize};

/// `[pusher]` as written.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPusher {
    /// Where pusher-js's HTTP fallbacks are served (its `httpPath`); default `/pusher`.
    pub http_path: Option<String>,
    /// The `activity_timeout` told to clients, in seconds (pusher-js pings after this long idle).
    pub activity_timeout: Option<u64>,
    /// Client events (`client-*`) one connection may send per second; Pusher's own limit is 10.
    pub client_event_rate: Option<u32>,
    /// Users a presence channel holds at most (Pusher's limit is 100).
    pub max_presence_members: Option<usize>,
    #[serde(default)]
    pub apps: Vec<RawPusherApp>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPusherApp {
    pub id: Option<String>,
    pub key: Option<String>,
    pub secret: Option<String>,
    pub namespace: Option<String>,
    /// Tell subscribers of non-presence channels how many connections the channel has
    /// (`pusher_internal:subscription_count`), as Pusher's "subscription counting" option does.
    pub subscription_count: Option<bool>,
    #[serde(default)]
    pub webhooks: Vec<RawPusherWebhook>,
}

/// `[[pusher.apps.webhooks]]`: where the app's webhooks go, in Pusher's format.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPusherWebhook {
    pub url: String,
    /// Pusher's event names; default: all of [`WEBHOOK_EVENTS`].
    pub events: Option<Vec<String>>,
}

/// The webhook events of the Pusher door, and the Herald event each comes from.
pub const WEBHOOK_EVENTS: [(&str, &str); 6] = [
    ("channel_occupied", "channel.occupied"),
    ("channel_vacated", "channel.vacated"),
    ("member_added", "presence.join"),
    ("member_removed", "presence.leave"),
    ("client_event", "publication"),
    ("cache_miss", "pusher.cache_miss"),
];

/// A Pusher app's webhook endpoint, validated.
#[derive(Debug, Clone)]
pub struct PusherWebhook {
    pub url: String,
    /// The Herald event types it takes.
    pub herald_events: Vec<String>,
    /// The Pusher events it asked for.
    pub pusher_events: Vec<String>,
}

/// One Pusher app: its credentials and the Herald namespace of its channels.
pub struct PusherApp {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub namespace: String,
    /// Subscribers hear `pusher_internal:subscription_count` (off by default, as on Pusher).
    pub subscription_count: bool,
    pub webhooks: Vec<PusherWebhook>,
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"(not shown)")
            .field("namespace", &self.namespace)
            .field("subscription_count", &self.subscription_count)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

impl PusherApp {
    /// The Herald channel of Pusher channel `name`, if `name` follows Pusher's rules.
    pub fn channel(&self, name: &str) -> Result<ChannelName, String> {
        check_pusher_channel(name)?;
        ChannelName::new(&format!("{}:{name}", self.namespace)).map_err(|error| error.to_string())
    }

    /// The Herald channel of a signed-in user's `#server-to-user-{id}`.
    pub fn user_channel(&self, user: &str) -> Result<ChannelName, String> {
        check_pusher_channel(user).map_err(|reason| format!("a user id here follows channel-name rules: {reason}"))?;
        ChannelName::new(&format!("{}:{USER_CHANNEL_PREFIX}{user}", self.namespace)).map_err(|error| error.to_string())
    }

    /// The Pusher name of a Herald channel of this app's namespace.
    pub fn pusher_name<'a>(&self, channel: &'a ChannelName) -> Option<&'a str> {
        channel.as_str().strip_prefix(self.namespace.as_str())?.strip_prefix(':')
    }
}

/// The Pusher door's settings; no apps: the door is closed (its routes answer 404).
#[derive(Debug, Clone)]
pub struct PusherSettings {
    pub apps: Vec<Arc<PusherApp>>,
    pub http_path: String,
    pub activity_timeout: Duration,
    pub client_event_rate: u32,
    pub max_presence_members: usize,
}

impl Default for PusherSettings {
    fn default() -> Self {
        Self {
            apps: Vec::new(),
            http_path: "/pusher".to_string(),
            activity_timeout: Duration::from_secs(120),
            client_event_rate: 10,
            max_presence_members: 100,
        }
    }
}

impl PusherSettings {
    pub fn by_key(&self, key: &str) -> Option<&Arc<PusherApp>> {
        self.apps.iter().find(|app| app.key == key)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<PusherApp>> {
        self.apps.iter().find(|app| app.id == id)
    }
}

/// The channel of a signed-in user's events, `#server-to-user-{id}`.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// Pusher's longest channel name.
pub const MAX_PUSHER_CHANNEL_LEN: usize = 200;

/// Pusher's channel name rules: 1 to 200 of `[A-Za-z0-9_\-=@,.;]`; `#` only in the user
/// channels the server makes (`#server-to-user-…`).
pub fn check_pusher_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PUSHER_CHANNEL_LEN {
        return Err(format!("a channel name is 1 to {MAX_PUSHER_CHANNEL_LEN} characters"));
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-=@,.;".contains(*c))) {
        Some(bad) => Err(format!("channel name contains {bad:?}; allowed are letters, digits and _ - = @ , . ;")),
        None => Ok(()),
    }
}

/// What kind of channel a Pusher name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    /// `private-encrypted-`: private, and its payloads are ciphertext the server passes on.
    Encrypted,
    Presence,
}

impl ChannelKind {
    pub fn of(name: &str) -> Self {
        if name.starts_with("private-encrypted-") {
            Self::Encrypted
        } else if name.starts_with("private-") {
            Self::Private
        } else if name.starts_with("presence-") {
            Self::Presence
        } else {
            Self::Public
        }
    }

    /// Subscribing takes a signature from the app's auth endpoint.
    pub fn needs_auth(self) -> bool {
        self != Self::Public
    }
}

/// Whether a Pusher channel keeps its last event for new subscribers (`cache-`, and the
/// private, encrypted and presence forms of it).
pub fn is_cache(name: &str) -> bool {
    ["cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-"].iter().any(|p| name.starts_with(p))
}

/// How long a cache channel keeps its last event (Pusher's figure).
const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Reads `[pusher]`; errors name the key and the reason. Registers each app's channel rules
/// in `namespaces`.
pub fn settings(raw: &RawPusher, namespaces: Namespaces) -> Result<(PusherSettings, Namespaces), (String, String)> {
    let defaults = PusherSettings::default();
    let http_path = raw.http_path.clone().unwrap_or(defaults.http_path);
    if !http_path.starts_with('/') || http_path.len() < 2 || http_path.ends_with('/') || http_path.contains(['?', '#'])
    {
        return Err(("pusher.http_path".into(), "a path like /pusher: a leading /, no trailing /".into()));
    }
    let activity_timeout = match raw.activity_timeout {
        None => defaults.activity_timeout,
        Some(seconds @ 1..=3600) => Duration::from_secs(seconds),
        Some(_) => return Err(("pusher.activity_timeout".into(), "seconds, from 1 to 3600".into())),
    };
    let client_event_rate = match raw.client_event_rate {
        None => defaults.client_event_rate,
        Some(0) => return Err(("pusher.client_event_rate".into(), "at least 1 a second".into())),
        Some(rate) => rate,
    };
    let max_presence_members = match raw.max_presence_members {
        None => defaults.max_presence_members,
        Some(0) => return Err(("pusher.max_presence_members".into(), "at least 1".into())),
        Some(most) => most,
    };
    let mut apps: Vec<Arc<PusherApp>> = Vec::with_capacity(raw.apps.len());
    let mut namespaces = namespaces;
    for (index, raw_app) in raw.apps.iter().enumerate() {
        let key = |field: &str| format!("pusher.apps[{index}].{field}");
        let required = |value: &Option<String>, field: &str| {
            value.clone().filter(|value| !value.is_empty()).ok_or_else(|| (key(field), "required".to_string()))
        };
        let id = required(&raw_app.id, "id")?;
        let app_key = required(&raw_app.key, "key")?;
        let secret = required(&raw_app.secret, "secret")?;
        let namespace = raw_app.namespace.clone().unwrap_or_else(|| id.clone());
        if namespace.len() + 1 + MAX_PUSHER_CHANNEL_LEN > herald_core::MAX_CHANNEL_NAME_LEN {
            let most = herald_core::MAX_CHANNEL_NAME_LEN - 1 - MAX_PUSHER_CHANNEL_LEN;
            return Err((
                key("namespace"),
                format!("at most {most} characters, so Pusher's longest channel names fit"),
            ));
        }
        if namespace.is_empty() || namespace.contains(':') || ChannelName::new(&namespace).is_err() {
            let reason = "a Herald namespace name: a channel-name prefix without ':' (the app id by default)";
            return Err((key("namespace"), reason.into()));
        }
        if app_key.contains(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c))) {
            return Err((key("key"), "letters, digits and _ - . only (it is part of the /app/KEY path)".into()));
        }
        if apps.iter().any(|other| other.id == id) {
            return Err((key("id"), format!("app id {id:?} is given twice")));
        }
        if apps.iter().any(|other| other.key == app_key) {
            return Err((key("key"), "two apps have the same key".into()));
        }
        let mut webhooks = Vec::with_capacity(raw_app.webhooks.len());
        for (number, webhook) in raw_app.webhooks.iter().enumerate() {
            let field = |name: &str| key(&format!("webhooks[{number}].{name}"));
            let names =
                webhook.events.clone().unwrap_or_else(|| WEBHOOK_EVENTS.map(|(name, _)| name.to_string()).to_vec());
            if names.is_empty() {
                return Err((field("events"), "give at least one event, or leave it out for all".into()));
            }
            let mut herald_events = Vec::new();
            for name in &names {
                let Some((_, herald)) = WEBHOOK_EVENTS.iter().find(|(known, _)| known == name) else {
                    let known: Vec<&str> = WEBHOOK_EVENTS.iter().map(|(known, _)| *known).collect();
                    return Err((field("events"), format!("{name:?} is not one of {known:?}")));
                };
                herald_events.push(herald.to_string());
            }
            if webhooks.iter().any(|other: &PusherWebhook| other.url == webhook.url) {
                return Err((field("url"), "this URL is declared twice for this app".into()));
            }
            // Members are counted from joins and leaves alike, so an endpoint taking either
            // takes both from Herald (and is sent only what it asked for).
            if herald_events.iter().any(|event| event.starts_with("presence.")) {
                for needed in ["presence.join", "presence.leave"] {
                    if !herald_events.iter().any(|event| event == needed) {
                        herald_events.push(needed.to_string());
                    }
                }
            }
            webhooks.push(PusherWebhook { url: webhook.url.clone(), herald_events, pusher_events: names });
        }
        if !namespaces.is_named(&namespace) {
            // A namespace of its own: Pusher's public channels are open to whoever has the key,
            // even on a server whose [auth] closes namespaces by default. A namespace the
            // configuration declares keeps its own `anonymous` (closed: no public channels).
            let options = NamespaceOptions { anonymous: true, ..namespaces.options_of_namespace(&namespace).clone() };
            namespaces = namespaces.with_named(namespace.clone(), options);
        }
        namespaces = channel_rules(namespaces, &namespace);
        let subscription_count = raw_app.subscription_count.unwrap_or(false);
        apps.push(Arc::new(PusherApp { id, key: app_key, secret, namespace, subscription_count, webhooks }));
    }
    Ok((PusherSettings { apps, http_path, activity_timeout, client_event_rate, max_presence_members }, namespaces))
}

/// The options Pusher's channel prefixes imply, on top of the namespace's own.
fn channel_rules(namespaces: Namespaces, namespace: &str) -> Namespaces {
    let base = namespaces.options_of_namespace(namespace).clone();
    let private = NamespaceOptions { anonymous: false, ..base.clone() };
    let presence = NamespaceOptions { presence: true, join_leave: true, ..private.clone() };
    let cached = |options: &NamespaceOptions| NamespaceOptions {
        history_size: options.history_size.max(1),
        history_ttl: options.history_ttl.max(CACHE_TTL),
        ..options.clone()
    };
    let rules = [
        ("private-", private.clone()),
        ("presence-", presence.clone()),
        ("cache-", cached(&base)),
        ("private-cache-", cached(&private)),
        ("private-encrypted-cache-", cached(&private)),
        ("presence-cache-", cached(&presence)),
        // Users' own channels: only the door's signed-in sessions, or a token granting them.
        (USER_CHANNEL_PREFIX, private.clone()),
    ];
    rules.into_iter().fold(namespaces, |namespaces, (prefix, options)| {
        namespaces.with_prefix(format!("{namespace}:{prefix}"), options)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps(toml: &str) -> Result<(PusherSettings, Namespaces), (String, String)> {
        use figment::providers::Format as _;
        let raw: RawPusher = figment::Figment::from(figment::providers::Toml::string(toml)).extract().unwrap();
        settings(&raw, Namespaces::default())
    }

    #[test]
    fn apps_are_read_and_their_channels_get_pusher_s_rules() {
        let (pusher, namespaces) =
            apps("[[apps]]\nid = \"42\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"b\"\nkey = \"k2\"\nsecret = \"s\"\nnamespace = \"shop\"")
                .unwrap();
        assert_eq!(pusher.by_key("k").unwrap().namespace, "42");
        assert_eq!(pusher.by_id("b").unwrap().namespace, "shop");
        let app = pusher.by_key("k2").unwrap();
        let options = |name: &str| namespaces.options_for(&app.channel(name).unwrap()).clone();
        assert!(options("news").anonymous && !options("news").presence);
        assert!(!options("private-x").anonymous);
        assert!(options("presence-room").presence && options("presence-room").join_leave);
        assert!(options("presence-cache-room").presence && options("presence-cache-room").history_ttl >= CACHE_TTL);
        assert_eq!(app.pusher_name(&app.channel("private-x").unwrap()), Some("private-x"));
        let user = app.user_channel("bob").unwrap();
        assert_eq!(user.as_str(), "shop:#server-to-user-bob");
        assert!(!namespaces.options_for(&user).anonymous);
        assert!(app.user_channel("a b").is_err() && app.channel("#server-to-user-bob").is_err());
        assert!(!format!("{app:?}").contains("\"s\""), "the secret is not shown");
    }

    #[test]
    fn bad_apps_and_channel_names_are_refused_with_their_key() {
        assert_eq!(apps("[[apps]]\nid = \"a\"\nkey = \"k\"").unwrap_err().0, "pusher.apps[0].secret");
        let twice =
            "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n[[apps]]\nid = \"b\"\nkey = \"k\"\nsecret = \"s\"";
        assert_eq!(apps(twice).unwrap_err().0, "pusher.apps[1].key");
        let colon = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\nnamespace = \"a:b\"";
        assert_eq!(apps(colon).unwrap_err().0, "pusher.apps[0].namespace");
        assert!(check_pusher_channel("private-a;b=c@d,e.f_g-h").is_ok());
        assert!(check_pusher_channel("a:b").is_err() && check_pusher_channel("").is_err());
        assert!(check_pusher_channel(&"a".repeat(201)).is_err());
        assert_eq!(ChannelKind::of("private-encrypted-x"), ChannelKind::Encrypted);
        assert_eq!(ChannelKind::of("presence-x"), ChannelKind::Presence);
        assert!(is_cache("private-encrypted-cache-x") && !is_cache("x-cache-"));
    }
}
