//! Configuration in two steps: a raw shape read from TOML, `HERALD_*` environment variables and
//! command-line flags (in that order of precedence, lowest first), then [`Settings`]: validated,
//! typed, and complete before any port is bound. A bad value is reported with its key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use herald_core::{NamespaceOptions, Namespaces};
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";
pub const DEFAULT_DATA_DIR: &str = "./herald-data";

/// The configuration file and environment as written, before validation.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub allowed_origins: Option<Vec<String>>,
    pub allow_private_webhook_targets: Option<bool>,
    pub engine: Option<String>,
    pub shutdown_grace: Option<String>,
    pub drain_period: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    pub api: RawApi,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub namespaces: HashMap<String, RawNamespace>,
    #[serde(default)]
    pub websocket: RawWebSocket,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub streaming: RawStreaming,
    #[serde(default)]
    pub poll: RawPoll,
    #[serde(default)]
    pub presence: RawPresence,
    pub redis: Option<RawRedis>,
    pub nats: Option<RawNats>,
    pub storage: Option<RawStorage>,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    #[serde(default)]
    pub webhook_delivery: RawWebhookDelivery,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub demo: RawDemo,
    #[serde(default)]
    pub pusher: crate::pusher::apps::RawPusher,
    #[serde(default)]
    pub log: RawLog,
}

/// `[log]`: what the server logs, and how.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `tracing`'s filter: a level (`info`) or directives (`info,herald_server=debug`);
    /// `RUST_LOG` overrides it.
    pub level: Option<String>,
    /// `human` (default) or `json` (one JSON object a line); `--log-format` overrides it.
    pub format: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "human" => Some(Self::Human),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub filter: String,
    pub format: LogFormat,
}

/// The filter when neither `RUST_LOG` nor `[log] level` says otherwise.
pub const DEFAULT_LOG_FILTER: &str = "info,tower_http=warn";

fn log(raw: &RawLog) -> Result<LogSettings, ConfigError> {
    let filter = raw.level.clone().unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string());
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&filter) {
        return Err(invalid("log.level", format!("a level (error, warn, info, debug, trace) or directives: {error}")));
    }
    let format = match raw.format.as_deref() {
        None => LogFormat::Human,
        Some(text) => LogFormat::parse(text).ok_or_else(|| invalid("log.format", "human or json"))?,
    };
    Ok(LogSettings { filter, format })
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// Keys that may use the whole server API.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Keys that may only read (channels, history).
    #[serde(default)]
    pub read_only_keys: Vec<String>,
    /// Keys that may only publish (publish, broadcast).
    #[serde(default)]
    pub publish_only_keys: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub hmac_secret: Option<String>,
    pub public_key_pem: Option<String>,
    pub jwks: Option<String>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub history_size: Option<usize>,
    pub history_ttl: Option<String>,
    pub durable: Option<bool>,
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub client_publish: Option<bool>,
    pub anonymous: Option<bool>,
    pub anonymous_info: Option<bool>,
    pub idempotency_window: Option<String>,
}

/// `[demo]`: the demo apps under `/demo/`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    /// Default: on without `[auth]` on a loopback address, off otherwise.
    pub enabled: Option<bool>,
    pub max_file_size: Option<usize>,
    pub max_total_file_size: Option<usize>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    pub ping_interval: Option<String>,
    pub pong_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub outbox_capacity: Option<usize>,
    pub echo_route: Option<bool>,
    pub compression: Option<bool>,
    pub compression_threshold: Option<usize>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_message_size: Option<usize>,
    pub max_channels_per_connection: Option<usize>,
    pub max_channels_per_request: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_pending_polls: Option<usize>,
    pub client_publish_rate: Option<usize>,
    pub api_publish_rate: Option<usize>,
    pub header_timeout: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreaming {
    pub heartbeat_interval: Option<String>,
    pub retry: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    pub default_timeout: Option<String>,
    pub max_timeout: Option<String>,
    pub max_messages: Option<usize>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPresence {
    pub grace_period: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    #[serde(default)]
    pub urls: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    pub url: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub schema: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub events: Vec<String>,
    pub secret: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookDelivery {
    pub timeout: Option<String>,
    pub retry_schedule: Option<Vec<String>>,
    pub max_concurrency: Option<usize>,
    pub disable_after: Option<String>,
    pub log_retention: Option<String>,
    pub secret_rotation_grace: Option<String>,
}

/// Command-line flags that override the file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub ws_echo_route: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Read(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// Validated, typed settings: everything the server needs, checked before anything starts.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: any origin (dev). Otherwise browser requests from other origins get `403`.
    pub allowed_origins: Option<Vec<String>>,
    pub engine: EngineKind,
    pub storage: StorageKind,
    /// Client token verification; `None`: every client is anonymous (dev).
    pub auth: Option<std::sync::Arc<crate::auth::Authenticator>>,
    pub api_keys: ApiKeys,
    pub namespaces: Namespaces,
    pub websocket: WebSocketSettings,
    pub streaming: StreamingSettings,
    pub poll: PollSettings,
    pub limits: Limits,
    /// Presence's grace period (also how long an empty channel waits to be vacated) and lease.
    pub presence: herald_core::PresenceTiming,
    pub webhooks: WebhookSettings,
    /// How long shutdown waits for connections to finish before giving up on them.
    pub shutdown_grace: Duration,
    /// Over how long shutdown tells connected clients to reconnect elsewhere (each at a random
    /// moment within it, so they do not all come back at once); zero: all at once.
    pub drain_period: Duration,
    /// Proxies whose `Forwarded`/`X-Forwarded-For` name the client (none: never believed).
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// TLS termination by Herald itself; `None`: plain HTTP (or a proxy in front terminates).
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    pub demos: DemoSettings,
    /// The Pusher door: its apps (none: closed) and options.
    pub pusher: crate::pusher::apps::PusherSettings,
    pub log: LogSettings,
}

/// `[demo]`, validated.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// The pages under `/demo/`, the ticker publisher and the built-in `demo` and `demo-signal`
    /// namespaces (which a `[namespaces.demo]` of the config replaces).
    pub enabled: bool,
    /// The largest file the file-sharing demo takes.
    pub max_file_size: usize,
    /// What its store keeps at most, the oldest files removed first.
    pub max_total_file_size: usize,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    Full,
    ReadOnly,
    PublishOnly,
}

impl KeyScope {
    pub fn may_read(self) -> bool {
        self != Self::PublishOnly
    }

    pub fn may_publish(self) -> bool {
        self != Self::ReadOnly
    }
}

/// Server API keys with their scopes; their `Debug` form shows how many, never the keys.
#[derive(Clone, Default)]
pub struct ApiKeys(pub Vec<(String, KeyScope)>);

impl ApiKeys {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, KeyScope)> {
        self.0.iter()
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key(s), not shown", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineKind {
    Memory,
    /// Redis servers, one per shard (channels spread over them by consistent hashing).
    Redis {
        urls: Vec<String>,
    },
    /// A NATS server (or cluster) with JetStream.
    Nats {
        url: String,
    },
}

/// Where durable namespaces keep their history.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageKind {
    /// A file in the data directory.
    Sqlite,
    /// A PostgreSQL database, optionally in its own schema.
    Postgres { url: String, schema: Option<String> },
}

impl std::fmt::Debug for StorageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("Sqlite"),
            // The URL may hold a password.
            Self::Postgres { schema, .. } => write!(f, "Postgres {{ url: (not shown), schema: {schema:?} }}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebSocketSettings {
    /// A ping is sent after this long without one.
    pub ping_interval: Duration,
    /// A peer heard from neither this long after a ping is considered dead.
    pub pong_timeout: Duration,
    /// A write that does not complete in this time ends the connection (slow or dead reader).
    pub write_timeout: Duration,
    /// Pushes queued per connection before it counts as too slow.
    pub outbox_capacity: NonZeroUsize,
    /// Serves `/ws/echo`, an echo route on the same WebSocket stack, for conformance runs.
    pub echo_route: bool,
    /// Negotiates permessage-deflate (RFC 7692) with clients that offer it.
    pub compression: bool,
    /// Messages shorter than this many bytes go uncompressed.
    pub compression_threshold: usize,
}

/// SSE and NDJSON streams.
#[derive(Debug, Clone)]
pub struct StreamingSettings {
    /// How often a heartbeat (SSE comment, NDJSON heartbeat line) is sent.
    pub heartbeat_interval: Duration,
    /// The reconnect delay suggested to `EventSource` clients (`retry:`).
    pub retry: Duration,
}

/// Long- and short-polling.
#[derive(Debug, Clone)]
pub struct PollSettings {
    /// How long a poll without `timeout` waits.
    pub default_timeout: Duration,
    /// Longer `timeout` values are cut to this.
    pub max_timeout: Duration,
    /// Publications per poll response at most.
    pub max_messages: NonZeroUsize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest client message (WebSocket message, publish body data) in bytes.
    pub max_message_size: NonZeroUsize,
    pub max_channels_per_connection: NonZeroUsize,
    /// Channels in one SSE, NDJSON or poll request at most.
    pub max_channels_per_request: NonZeroUsize,
    /// Open connections (WebSockets, streams, parked polls) in all; `None`: no limit.
    pub max_connections: Option<NonZeroUsize>,
    /// The same per client IP; `None`: no limit (behind a proxy every client shares one IP).
    pub max_connections_per_ip: Option<NonZeroUsize>,
    /// Long-polls waiting at once; `None`: no limit.
    pub max_pending_polls: Option<NonZeroUsize>,
    /// Publishes a second per WebSocket connection (token bucket); `None`: no limit.
    pub client_publish_rate: Option<NonZeroUsize>,
    /// Publishes a second per API key (token bucket); `None`: no limit.
    pub api_publish_rate: Option<NonZeroUsize>,
    /// A client must send a request's headers within this time (slowloris).
    pub header_timeout: Duration,
}

impl Settings {
    /// Reads the optional file, then `HERALD_*` variables, then `overrides`, and validates.
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(ConfigError::Read(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(herald_env());
        let raw: RawConfig = figment.extract().map_err(describe_figment_error)?;
        Self::from_raw(raw, overrides)
    }

    /// Parses a TOML document (no environment), for tests and tools.
    pub fn from_toml(toml: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let raw: RawConfig = Figment::from(Serialized::defaults(RawConfig::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(describe_figment_error)?;
        Self::from_raw(raw, overrides)
    }

    pub fn from_raw(raw: RawConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let listen_text = overrides.listen.clone().or(raw.listen.clone()).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| invalid("listen", format!("{listen_text:?} is not an address like 127.0.0.1:8750")))?;
        let auth = match &raw.auth {
            None => None,
            Some(raw_auth) => Some(std::sync::Arc::new(authenticator(raw_auth)?)),
        };
        check_origins(raw.allowed_origins.as_ref())?;
        let namespaces = namespaces(
            &raw.namespaces,
            auth.is_some(),
            demos_enabled(&raw.demo, auth.is_some(), listen.ip().is_loopback()),
        )?;
        let (pusher, namespaces) =
            crate::pusher::apps::settings(&raw.pusher, namespaces).map_err(|(key, reason)| invalid(key, reason))?;
        let reserved = crate::control::reserved::RESERVED_NAMESPACE;
        if namespaces.is_named(reserved) {
            return Err(invalid(format!("namespaces.{reserved}"), "the server's own namespace; choose another name"));
        }
        let namespaces = crate::control::reserved::reserve(namespaces);
        let mut webhooks = webhook_settings(&raw)?;
        webhooks.endpoints.extend(pusher_webhook_endpoints(&pusher)?);
        Ok(Self {
            listen,
            data_dir: overrides
                .data_dir
                .clone()
                .or(raw.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            engine: engine_kind(&raw)?,
            storage: storage_kind(raw.storage.clone())?,
            tls: tls(raw.tls.clone(), overrides)?,
            api_keys: api_keys(&raw.api)?,
            demos: demos(&raw.demo, auth.is_some(), listen.ip().is_loopback())?,
            namespaces,
            pusher,
            auth,
            websocket: websocket(&raw.websocket, overrides)?,
            streaming: streaming(&raw.streaming)?,
            poll: poll(&raw.poll)?,
            presence: presence(&raw.presence)?,
            webhooks,
            limits: limits(&raw.limits)?,
            shutdown_grace: duration("shutdown_grace", raw.shutdown_grace.as_deref(), "10s")?,
            drain_period: duration_or_zero("drain_period", raw.drain_period.as_deref(), "0s")?,
            trusted_proxies: crate::proxy::TrustedProxies::parse(raw.trusted_proxies.as_deref().unwrap_or_default())
                .map_err(|reason| invalid("trusted_proxies", reason))?,
            log: log(&raw.log)?,
            allowed_origins: raw.allowed_origins,
        })
    }

    /// No API keys and a loopback address: the server API is open to local callers.
    /// No API keys, no `[auth]` and a loopback address: the server API is open to local
    /// callers. Configuring `[auth]` means clients are checked, so the API is too.
    pub fn api_dev_mode(&self) -> bool {
        self.api_keys.is_empty() && self.auth.is_none() && self.listen.ip().is_loopback()
    }
}

/// `engine`, with `[redis]` or `[nats]`.
fn engine_kind(raw: &RawConfig) -> Result<EngineKind, ConfigError> {
    let engine = match raw.engine.as_deref().unwrap_or("memory") {
        "memory" => EngineKind::Memory,
        "redis" => {
            let urls = raw.redis.as_ref().map(|redis| redis.urls.clone()).unwrap_or_default();
            if urls.is_empty() {
                return Err(invalid("redis.urls", "engine = \"redis\" needs [redis] urls = [\"redis://…\"]"));
            }
            for (index, url) in urls.iter().enumerate() {
                if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                    return Err(invalid(format!("redis.urls[{index}]"), format!("{url:?} is not a redis:// URL")));
                }
            }
            EngineKind::Redis { urls }
        }
        "nats" => {
            let url = raw
                .nats
                .as_ref()
                .and_then(|nats| nats.url.clone())
                .ok_or_else(|| invalid("nats.url", "engine = \"nats\" needs [nats] url = \"nats://…\""))?;
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err(invalid("nats.url", format!("{url:?} is not a nats:// URL")));
            }
            EngineKind::Nats { url }
        }
        other => return Err(invalid("engine", format!("{other:?} is not one of \"memory\", \"redis\", \"nats\""))),
    };
    Ok(engine)
}

/// `[tls]` (or `--tls-cert`/`--tls-key`): both or neither.
fn tls(
    raw: Option<RawTls>,
    overrides: &Overrides,
) -> Result<Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>, ConfigError> {
    let raw_tls = raw.unwrap_or_default();
    let tls = match (overrides.tls_cert.clone().or(raw_tls.cert), overrides.tls_key.clone().or(raw_tls.key)) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(tls_config(&cert, &key)?)),
        (Some(_), None) => return Err(invalid("tls.key", "a certificate needs its key (--tls-key)")),
        (None, Some(_)) => return Err(invalid("tls.cert", "a key needs its certificate (--tls-cert)")),
    };
    Ok(tls)
}

/// `[storage]`: SQLite in the data directory, or PostgreSQL.
fn storage_kind(raw: Option<RawStorage>) -> Result<StorageKind, ConfigError> {
    let raw_storage = raw.unwrap_or_default();
    let storage = match raw_storage.kind.as_deref().unwrap_or("sqlite") {
        "sqlite" => StorageKind::Sqlite,
        "postgres" => {
            let url = raw_storage
                .url
                .filter(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"))
                .ok_or_else(|| invalid("storage.url", "kind = \"postgres\" needs url = \"postgres://…\""))?;
            if let Some(schema) = &raw_storage.schema
                && (schema.is_empty() || !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(invalid("storage.schema", "a schema name is letters, digits and _"));
            }
            StorageKind::Postgres { url, schema: raw_storage.schema }
        }
        other => return Err(invalid("storage.kind", format!("{other:?} is not one of \"sqlite\", \"postgres\""))),
    };
    Ok(storage)
}

/// `allowed_origins`: each a scheme and host, no path.
fn check_origins(origins: Option<&Vec<String>>) -> Result<(), ConfigError> {
    if let Some(origins) = origins {
        for (index, origin) in origins.iter().enumerate() {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) || origin.ends_with('/') {
                return Err(invalid(
                    format!("allowed_origins[{index}]"),
                    format!("{origin:?} is not an origin like https://app.example (scheme and host, no path)"),
                ));
            }
        }
    }
    Ok(())
}

/// `[api]`: keys of at least 16 characters, each with its scope.
fn api_keys(raw: &RawApi) -> Result<ApiKeys, ConfigError> {
    for (list, keys) in
        [("keys", &raw.keys), ("read_only_keys", &raw.read_only_keys), ("publish_only_keys", &raw.publish_only_keys)]
    {
        for (index, key) in keys.iter().enumerate() {
            if key.len() < 16 {
                return Err(invalid(format!("api.{list}[{index}]"), "an API key must be at least 16 characters"));
            }
        }
    }
    Ok(ApiKeys(
        raw.keys
            .iter()
            .map(|key| (key.clone(), KeyScope::Full))
            .chain(raw.read_only_keys.iter().map(|key| (key.clone(), KeyScope::ReadOnly)))
            .chain(raw.publish_only_keys.iter().map(|key| (key.clone(), KeyScope::PublishOnly)))
            .collect(),
    ))
}

fn demos_enabled(raw: &RawDemo, auth: bool, loopback: bool) -> bool {
    // The demos' channels (and their file store) are open to anyone: only on a development
    // server (no [auth], loopback) unless the operator says so.
    raw.enabled.unwrap_or(!auth && loopback)
}

fn demos(raw: &RawDemo, auth: bool, loopback: bool) -> Result<DemoSettings, ConfigError> {
    let max_file_size = raw.max_file_size.unwrap_or(8 * 1024 * 1024);
    let max_total_file_size = raw.max_total_file_size.unwrap_or(128 * 1024 * 1024);
    if max_file_size == 0 || max_file_size > 1024 * 1024 * 1024 {
        return Err(invalid("demo.max_file_size", "between 1 byte and 1 GiB"));
    }
    if max_total_file_size < max_file_size {
        return Err(invalid("demo.max_total_file_size", "at least demo.max_file_size"));
    }
    Ok(DemoSettings { enabled: demos_enabled(raw, auth, loopback), max_file_size, max_total_file_size })
}

/// The namespaces the demos use when the configuration does not define them: `demo` (history,
/// presence with joins and leaves, clients' own presence info) and `demo-signal` (the same
/// without history, for what matters only while it is fresh: typing, cursors, call signalling).
fn demo_namespaces() -> [(&'static str, NamespaceOptions); 2] {
    let demo = NamespaceOptions {
        history_size: 1000,
        history_ttl: Duration::from_secs(24 * 3600),
        client_publish: true,
        anonymous: true,
        presence: true,
        join_leave: true,
        anonymous_info: true,
        ..NamespaceOptions::default()
    };
    let signal = NamespaceOptions { history_size: 0, ..demo.clone() };
    [("demo", demo), ("demo-signal", signal)]
}

/// `[namespaces.*]`; without `[auth]` (`auth` false) namespaces allow anonymous clients.
fn namespaces(raw: &HashMap<String, RawNamespace>, auth: bool, demos: bool) -> Result<Namespaces, ConfigError> {
    let mut default_namespace = NamespaceOptions { anonymous: !auth, ..NamespaceOptions::default() };
    let mut named = HashMap::new();
    if demos {
        named.extend(demo_namespaces().map(|(name, options)| (name.to_string(), options)));
    }
    for (name, raw_namespace) in raw {
        let key = format!("namespaces.{name}");
        if name != "default" && (name.is_empty() || name.contains(':') || herald_core::ChannelName::new(name).is_err())
        {
            return Err(invalid(key, "a namespace name is a channel-name prefix without ':'"));
        }
        let options = namespace_options(&key, raw_namespace, auth)?;
        if name == "default" {
            default_namespace = options;
        } else {
            named.insert(name.clone(), options);
        }
    }
    Ok(Namespaces::new(default_namespace, named))
}

/// `[websocket]`.
fn websocket(raw: &RawWebSocket, overrides: &Overrides) -> Result<WebSocketSettings, ConfigError> {
    let websocket = WebSocketSettings {
        ping_interval: duration("websocket.ping_interval", raw.ping_interval.as_deref(), "25s")?,
        pong_timeout: duration("websocket.pong_timeout", raw.pong_timeout.as_deref(), "10s")?,
        write_timeout: duration("websocket.write_timeout", raw.write_timeout.as_deref(), "10s")?,
        outbox_capacity: non_zero("websocket.outbox_capacity", raw.outbox_capacity.unwrap_or(1024))?,
        echo_route: overrides.ws_echo_route || raw.echo_route.unwrap_or(false),
        compression: raw.compression.unwrap_or(false),
        compression_threshold: raw.compression_threshold.unwrap_or(256),
    };
    Ok(websocket)
}

/// `[limits]`.
fn limits(raw: &RawLimits) -> Result<Limits, ConfigError> {
    let limits = Limits {
        max_message_size: non_zero("limits.max_message_size", raw.max_message_size.unwrap_or(64 * 1024))?,
        max_channels_per_connection: non_zero(
            "limits.max_channels_per_connection",
            raw.max_channels_per_connection.unwrap_or(1024),
        )?,
        max_channels_per_request: non_zero(
            "limits.max_channels_per_request",
            raw.max_channels_per_request.unwrap_or(64),
        )?,
        max_connections: optional_limit("limits.max_connections", raw.max_connections)?,
        max_connections_per_ip: optional_limit("limits.max_connections_per_ip", raw.max_connections_per_ip)?,
        max_pending_polls: optional_limit("limits.max_pending_polls", raw.max_pending_polls)?,
        client_publish_rate: optional_limit("limits.client_publish_rate", raw.client_publish_rate)?,
        api_publish_rate: optional_limit("limits.api_publish_rate", raw.api_publish_rate)?,
        header_timeout: duration("limits.header_timeout", raw.header_timeout.as_deref(), "10s")?,
    };
    Ok(limits)
}

/// `[streaming]` (SSE and NDJSON).
fn streaming(raw: &RawStreaming) -> Result<StreamingSettings, ConfigError> {
    let streaming = StreamingSettings {
        heartbeat_interval: duration("streaming.heartbeat_interval", raw.heartbeat_interval.as_deref(), "15s")?,
        retry: duration("streaming.retry", raw.retry.as_deref(), "1s")?,
    };
    Ok(streaming)
}

/// `[poll]`.
fn poll(raw: &RawPoll) -> Result<PollSettings, ConfigError> {
    let poll = PollSettings {
        default_timeout: duration("poll.default_timeout", raw.default_timeout.as_deref(), "25s")?,
        max_timeout: duration("poll.max_timeout", raw.max_timeout.as_deref(), "60s")?,
        max_messages: non_zero("poll.max_messages", raw.max_messages.unwrap_or(100))?,
    };
    if poll.default_timeout > poll.max_timeout {
        return Err(invalid("poll.default_timeout", "must not be longer than poll.max_timeout"));
    }
    Ok(poll)
}

/// `[presence]`.
fn presence(raw: &RawPresence) -> Result<herald_core::PresenceTiming, ConfigError> {
    let presence = herald_core::PresenceTiming {
        grace: duration_or_zero("presence.grace_period", raw.grace_period.as_deref(), "5s")?,
        lease: duration("presence.lease", raw.lease.as_deref(), "30s")?,
    };
    if presence.lease < Duration::from_secs(3) {
        return Err(invalid("presence.lease", "must be at least 3s (it is refreshed every third of it)"));
    }
    Ok(presence)
}

fn tls_config(cert: &Path, key: &Path) -> Result<tokio_rustls::rustls::ServerConfig, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(cert).and_then(|certs| certs.collect::<Result<Vec<_>, _>>()).map_err(
        |error| invalid("tls.cert", format!("cannot read a PEM certificate chain from {}: {error}", cert.display())),
    )?;
    if certs.is_empty() {
        return Err(invalid("tls.cert", format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        invalid("tls.key", format!("cannot read a PEM private key from {}: {error}", key.display()))
    })?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid("tls", error.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|error| invalid("tls.key", format!("does not match the certificate: {error}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn authenticator(raw: &RawAuth) -> Result<crate::auth::Authenticator, ConfigError> {
    let (jwks, jwks_url) = match &raw.jwks {
        None => (None, None),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => (None, Some(url.clone())),
        Some(path) => {
            let document = std::fs::read_to_string(path)
                .map_err(|error| invalid("auth.jwks", format!("cannot read {path}: {error}")))?;
            (Some(document), None)
        }
    };
    let keys = crate::auth::AuthKeys {
        hmac_secret: raw.hmac_secret.clone(),
        public_key_pem: raw.public_key_pem.clone(),
        jwks,
        jwks_url,
    };
    let leeway = duration_or_zero("auth.leeway", raw.leeway.as_deref(), "30s")?;
    if leeway > crate::auth::MAX_LEEWAY {
        return Err(invalid("auth.leeway", "at most 60s"));
    }
    crate::auth::Authenticator::new(&keys, raw.audience.clone(), raw.issuer.clone(), leeway)
        .map_err(|(key, reason)| invalid(format!("auth.{key}"), reason))
}

fn duration_or_zero(key: &str, text: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    match text.unwrap_or(default) {
        "0" | "0s" => Ok(Duration::ZERO),
        text => parse_duration(key, text),
    }
}

fn namespace_options(key: &str, raw: &RawNamespace, auth: bool) -> Result<NamespaceOptions, ConfigError> {
    // With [auth], namespaces are closed to anonymous clients unless they say otherwise.
    let defaults = NamespaceOptions { anonymous: !auth, ..NamespaceOptions::default() };
    let presence = raw.presence.unwrap_or(defaults.presence);
    let join_leave = raw.join_leave.unwrap_or(defaults.join_leave);
    if join_leave && !presence {
        return Err(invalid(format!("{key}.join_leave"), "join and leave events need presence = true"));
    }
    Ok(NamespaceOptions {
        presence,
        join_leave,
        history_size: raw.history_size.unwrap_or(defaults.history_size),
        history_ttl: match &raw.history_ttl {
            Some(text) => parse_duration(&format!("{key}.history_ttl"), text)?,
            None => defaults.history_ttl,
        },
        durable: raw.durable.unwrap_or(defaults.durable),
        client_publish: raw.client_publish.unwrap_or(defaults.client_publish),
        anonymous: raw.anonymous.unwrap_or(defaults.anonymous),
        anonymous_info: raw.anonymous_info.unwrap_or(defaults.anonymous_info),
        idempotency_window: match &raw.idempotency_window {
            Some(text) => parse_duration(&format!("{key}.idempotency_window"), text)?,
            None => defaults.idempotency_window,
        },
    })
}

/// The Pusher apps' webhook endpoints: every channel of the app's namespace, signed with the
/// app's secret in Pusher's way.
fn pusher_webhook_endpoints(pusher: &crate::pusher::apps::PusherSettings) -> Result<Vec<ConfigEndpoint>, ConfigError> {
    let mut endpoints = Vec::new();
    for (index, app) in pusher.apps.iter().enumerate() {
        for (number, webhook) in app.webhooks.iter().enumerate() {
            crate::webhooks::target::parse_url(&webhook.url)
                .map_err(|error| invalid(format!("pusher.apps[{index}].webhooks[{number}].url"), error.message))?;
            endpoints.push(ConfigEndpoint {
                url: webhook.url.clone(),
                channels: vec![format!("{}:*", app.namespace)],
                // The Herald types select the events; the Pusher names beside them (which no
                // Herald type matches) say which of them the endpoint is sent.
                events: webhook.herald_events.iter().chain(&webhook.pusher_events).cloned().collect(),
                secret: app.secret.clone(),
                description: Some(format!("Pusher app {}", app.id)),
                pusher_key: Some(app.key.clone()),
            });
        }
    }
    Ok(endpoints)
}

/// How webhooks are delivered, and the endpoints the file declares.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `allow_private_webhook_targets`: loopback, private and link-local targets allowed.
    pub allow_private_targets: bool,
    /// Per attempt, connecting included.
    pub timeout: Duration,
    /// The delay before each attempt, the first included (usually 0); its length is the
    /// number of attempts before a delivery is dead.
    pub retry_schedule: Vec<Duration>,
    /// Attempts in flight per endpoint at most.
    pub max_concurrency: NonZeroUsize,
    /// An endpoint failing every attempt for this long is disabled.
    pub disable_after: Duration,
    /// How long finished deliveries stay in the log.
    pub log_retention: Duration,
    /// How long a rotated-out secret still signs.
    pub secret_rotation_grace: Duration,
    pub endpoints: Vec<ConfigEndpoint>,
}

/// A `[[webhooks]]` entry, validated.
#[derive(Clone)]
pub struct ConfigEndpoint {
    pub url: String,
    pub channels: Vec<String>,
    pub events: Vec<String>,
    pub secret: String,
    pub description: Option<String>,
    /// A Pusher app's webhook (`[[pusher.apps.webhooks]]`): Pusher's format for this key.
    pub pusher_key: Option<String>,
}

/// Without the secret: `check-config` prints the settings.
impl std::fmt::Debug for ConfigEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigEndpoint")
            .field("url", &self.url)
            .field("channels", &self.channels)
            .field("events", &self.events)
            .field("secret", &"(set)")
            .field("description", &self.description)
            .finish()
    }
}

fn webhook_settings(raw: &RawConfig) -> Result<WebhookSettings, ConfigError> {
    let delivery = &raw.webhook_delivery;
    let retry_schedule = match &delivery.retry_schedule {
        None => ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
            .iter()
            .map(|text| duration_or_zero("webhook_delivery.retry_schedule", Some(text), "0s"))
            .collect::<Result<Vec<_>, _>>()?,
        Some(list) if list.is_empty() || list.len() > 50 => {
            return Err(invalid(
                "webhook_delivery.retry_schedule",
                "list 1 to 50 delays, like [\"0s\", \"5s\", \"5m\"]",
            ));
        }
        Some(list) => list
            .iter()
            .map(|text| duration_or_zero("webhook_delivery.retry_schedule", Some(text), "0s"))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let mut endpoints: Vec<ConfigEndpoint> = Vec::new();
    for (index, endpoint) in raw.webhooks.iter().enumerate() {
        let key = |field: &str| format!("webhooks[{index}].{field}");
        if endpoints.iter().any(|declared| declared.url == endpoint.url) {
            // The URL names the endpoint (its id), so each appears once.
            return Err(invalid(key("url"), "this URL is declared twice"));
        }
        let check = |field: &str, result: Result<(), herald_wire::ErrorBody>| {
            result.map_err(|error| invalid(key(field), error.message))
        };
        check("url", crate::webhooks::target::parse_url(&endpoint.url).map(|_| ()))?;
        check("channels", crate::webhooks::rules::check_patterns(&endpoint.channels))?;
        check("events", crate::webhooks::rules::check_events(&endpoint.events))?;
        let secret = endpoint.secret.clone().ok_or_else(|| {
            invalid(key("secret"), "an endpoint in the file needs its secret (herald keygen makes one)")
        })?;
        check("secret", crate::webhooks::signature::secret_key(&secret).map(|_| ()))?;
        check("description", crate::webhooks::rules::check_description(endpoint.description.as_deref()))?;
        endpoints.push(ConfigEndpoint {
            url: endpoint.url.clone(),
            channels: endpoint.channels.clone(),
            events: endpoint.events.clone(),
            secret,
            description: endpoint.description.clone(),
            pusher_key: None,
        });
    }
    Ok(WebhookSettings {
        allow_private_targets: raw.allow_private_webhook_targets.unwrap_or(false),
        timeout: duration("webhook_delivery.timeout", delivery.timeout.as_deref(), "15s")?,
        retry_schedule,
        max_concurrency: non_zero("webhook_delivery.max_concurrency", delivery.max_concurrency.unwrap_or(16))?,
        disable_after: duration("webhook_delivery.disable_after", delivery.disable_after.as_deref(), "5d")?,
        log_retention: duration("webhook_delivery.log_retention", delivery.log_retention.as_deref(), "72h")?,
        secret_rotation_grace: duration(
            "webhook_delivery.secret_rotation_grace",
            delivery.secret_rotation_grace.as_deref(),
            "24h",
        )?,
        endpoints,
    })
}

fn duration(key: &str, text: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    parse_duration(key, text.unwrap_or(default))
}

fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let duration = humantime::parse_duration(text)
        .map_err(|error| invalid(key, format!("{text:?} is not a duration like \"30s\" or \"24h\" ({error})")))?;
    if duration.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(duration)
}

fn optional_limit(key: &str, value: Option<usize>) -> Result<Option<NonZeroUsize>, ConfigError> {
    value.map(|value| non_zero(key, value)).transpose()
}

fn non_zero(key: &str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| invalid(key, "must be at least 1"))
}

/// `HERALD_LISTEN`, `HERALD_DATA_DIR`, `HERALD_API__KEYS=[...]`, ...: nested keys split on `__`.
/// Only configuration keys are read, so unrelated `HERALD_*` variables (tests') are ignored.
fn herald_env() -> Env {
    const TOP_LEVEL_KEYS: &[&str] = &[
        "listen",
        "data_dir",
        "allowed_origins",
        "allow_private_webhook_targets",
        "engine",
        "shutdown_grace",
        "drain_period",
        "trusted_proxies",
        "api",
        "auth",
        "namespaces",
        "websocket",
        "limits",
        "streaming",
        "poll",
        "presence",
        "webhook_delivery",
        "redis",
        "nats",
        "storage",
        "tls",
        "pusher",
        "log",
    ];
    Env::prefixed("HERALD_").split("__").filter(|key| {
        // Keys are lowercased after this filter runs.
        let top = key.as_str().split('.').next().unwrap_or_default().to_ascii_lowercase();
        TOP_LEVEL_KEYS.contains(&top.as_str())
    })
}

fn describe_figment_error(error: figment::Error) -> ConfigError {
    let mut messages = Vec::new();
    for error in error {
        let key = error.path.join(".");
        let source = error.metadata.as_ref().map(|metadata| metadata.name.to_string());
        let kind = error.kind.to_string();
        messages.push(match (key.is_empty(), source) {
            (false, Some(source)) => format!("config key `{key}` (from {source}): {kind}"),
            (false, None) => format!("config key `{key}`: {kind}"),
            (true, Some(source)) => format!("{source}: {kind}"),
            (true, None) => kind,
        });
    }
    ConfigError::Read(messages.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Settings, String> {
        Settings::from_toml(toml, &Overrides::default()).map_err(|error| error.to_string())
    }

    #[test]
    fn defaults_run_on_loopback_with_the_memory_engine() {
        let settings = parse("").unwrap();
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(settings.engine, EngineKind::Memory);
        assert!(settings.api_dev_mode());
        assert_eq!(settings.limits.max_message_size.get(), 65536);
    }

    #[test]
    fn the_brief_s_keys_are_read() {
        let settings = parse(
            r#"
            listen = "127.0.0.1:9000"
            data_dir = "/tmp/x"
            allowed_origins = ["https://app.example"]
            engine = "memory"
            [api]
            keys = ["0123456789abcdef"]
            [namespaces.chat]
            history_size = 7
            history_ttl = "24h"
            client_publish = false
            [namespaces.default]
            history_size = 3
            [storage]
            kind = "sqlite"
            "#,
        )
        .unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert!(!settings.api_dev_mode());
        let chat = settings.namespaces.options_for(&herald_core::ChannelName::new("chat:a").unwrap());
        assert_eq!((chat.history_size, chat.client_publish), (7, false));
        assert_eq!(chat.history_ttl, Duration::from_secs(86400));
        let other = settings.namespaces.options_for(&herald_core::ChannelName::new("a").unwrap());
        assert_eq!(other.history_size, 3);
    }

    #[test]
    fn errors_name_the_key_and_the_reason() {
        let error = parse("[namespaces.chat]\nhistory_ttl = \"soon\"").unwrap_err();
        assert!(error.contains("namespaces.chat.history_ttl") && error.contains("not a duration"), "{error}");
        let error = parse("listen = \"nowhere\"").unwrap_err();
        assert!(error.contains("`listen`"), "{error}");
        let error = parse("[namespaces.chat]\nhistory_size = \"big\"").unwrap_err();
        assert!(error.contains("namespaces.chat.history_size"), "{error}");
        let error = parse("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(error.contains("lisen"), "{error}");
        let error = parse("engine = \"kafka\"").unwrap_err();
        assert!(error.contains("`engine`") && error.contains("kafka"), "{error}");
        let error = parse("[api]\nkeys = [\"short\"]").unwrap_err();
        assert!(error.contains("api.keys[0]"), "{error}");
        let error = parse("[storage]\nkind = \"postgres\"").unwrap_err();
        assert!(error.contains("storage.url"), "{error}");
        let error = parse("[websocket]\noutbox_capacity = 0").unwrap_err();
        assert!(error.contains("websocket.outbox_capacity"), "{error}");
    }

    #[test]
    fn flags_override_the_file() {
        let overrides = Overrides { listen: Some("127.0.0.1:0".into()), ..Default::default() };
        let settings = Settings::from_toml("listen = \"127.0.0.1:9000\"", &overrides).unwrap();
        assert_eq!(settings.listen.port(), 0);
    }
}
