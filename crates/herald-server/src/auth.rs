//! Client authentication and authorization.
//!
//! Tokens are JWTs: HS256 with the shared `hmac_secret`, RS256 or ES256 with `public_key_pem`,
//! or the keys of a JWKS file. Each key accepts only its own algorithm (no `none`, no HS/RS
//! confusion); `exp`, `nbf`, `aud` and `iss` are checked with a bounded clock leeway. Claims:
//! `sub` (user), `channels` (patterns it may subscribe to), `publish` (patterns it may publish
//! to), `info` (presence info). A pattern is a channel name in which `*` matches any run of
//! characters within one `:`-separated segment (`chat:*` matches `chat:lobby`, not `chat:a:b`).
//!
//! Rules: a namespace says whether anonymous clients may come (`anonymous`) and whether clients
//! may publish (`client_publish`); a token only ever narrows that, never widens it.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use herald_core::{ChannelName, NamespaceOptions};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Longest clock leeway accepted for `exp`/`nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// The claims Herald reads from a client token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// A string or an array of strings (RFC 7519); checked by the verifier when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subscribe patterns; absent: whatever the namespaces allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Publish patterns; absent: whatever the namespaces allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Server-side subscriptions: channels the connection is subscribed to as it connects, on
    /// every transport, without a command of the client's and whatever `channels` grants (the
    /// token's issuer chose them). Checked when the token is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subs: Option<Vec<String>>,
}

/// Who a client is.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Identity {
    #[default]
    Anonymous,
    User(Box<Claims>),
}

impl Identity {
    /// When the identity stops being valid (the token's `exp`), if ever.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Self::Anonymous => None,
            Self::User(claims) => claims.exp,
        }
    }

    /// The token's server-side subscriptions (its `subs`, checked when it was verified).
    pub fn server_subscriptions(&self) -> Vec<ChannelName> {
        match self {
            Self::Anonymous => Vec::new(),
            Self::User(claims) => server_subscriptions(claims).unwrap_or_default(),
        }
    }

    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Anonymous => None,
            Self::User(claims) => claims.sub.as_deref(),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired: get a fresh one")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Expired => "token_expired",
            Self::Invalid(_) => "invalid_token",
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, error.code(), error.to_string())
    }
}

/// One key with the one algorithm it verifies.
#[derive(Clone)]
struct VerifyingKey {
    key: DecodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

/// Verifies client tokens; built from `[auth]` when the configuration is read.
pub struct Authenticator {
    keys: Vec<VerifyingKey>,
    /// Keys fetched from `jwks` when it is a URL, refreshed while the server runs.
    remote: Option<RemoteKeys>,
    /// The HS256 secret, kept to mint development tokens (`herald token`).
    hmac_secret: Option<String>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<Algorithm> = self.keys.iter().map(|key| key.algorithm).collect();
        f.debug_struct("Authenticator")
            .field("algorithms", &algorithms)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// `[auth]` as written, for [`Authenticator::new`].
#[derive(Debug, Default, Clone)]
pub struct AuthKeys {
    pub hmac_secret: Option<String>,
    pub public_key_pem: Option<String>,
    /// A JWKS document (JSON text).
    pub jwks: Option<String>,
    /// Where to fetch a JWKS document from (refreshed while running).
    pub jwks_url: Option<String>,
}

/// Keys from a JWKS URL: replaced on each refresh; a token naming an unknown key asks for one.
struct RemoteKeys {
    url: String,
    keys: std::sync::RwLock<Vec<VerifyingKey>>,
    refresh_wanted: tokio::sync::Notify,
}

/// The keys of a JWKS document.
fn parse_jwks(document: &str) -> Result<Vec<VerifyingKey>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(document).map_err(|error| format!("not a JWKS document: {error}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        use jsonwebtoken::jwk::AlgorithmParameters;
        let algorithm = match (jwk.common.key_algorithm.map(|alg| alg.to_string()).as_deref(), &jwk.algorithm) {
            (Some("RS256"), _) => Algorithm::RS256,
            (Some("ES256"), _) => Algorithm::ES256,
            (Some("HS256"), _) => Algorithm::HS256,
            // No `alg` (several identity providers omit it): what the key type implies.
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
            (None, AlgorithmParameters::OctetKey(_)) => Algorithm::HS256,
            (other, _) => {
                tracing::warn!(alg = ?other, kid = ?jwk.common.key_id, "JWKS key skipped: not RS256, ES256 or HS256");
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(VerifyingKey { key, algorithm, kid: jwk.common.key_id.clone() }),
            Err(error) => tracing::warn!(%error, kid = ?jwk.common.key_id, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable RS256, ES256 or HS256 key".into());
    }
    Ok(keys)
}

impl Authenticator {
    /// Builds the verifier; an error names what is wrong with which key.
    pub fn new(
        keys: &AuthKeys,
        audience: Option<String>,
        issuer: Option<String>,
        leeway: Duration,
    ) -> Result<Self, (&'static str, String)> {
        let mut verifying = Vec::new();
        if let Some(secret) = &keys.hmac_secret {
            if secret.len() < 32 {
                return Err(("hmac_secret", "must be at least 32 characters".into()));
            }
            let key =
                DecodingKey::from_secret(secret.as_bytes()).map_err(|error| ("hmac_secret", error.to_string()))?;
            verifying.push(VerifyingKey { key, algorithm: Algorithm::HS256, kid: None });
        }
        if let Some(pem) = &keys.public_key_pem {
            let (key, algorithm) = match DecodingKey::from_rsa_pem(pem.as_bytes()) {
                Ok(key) => (key, Algorithm::RS256),
                Err(_) => (
                    DecodingKey::from_ec_pem(pem.as_bytes())
                        .map_err(|error| ("public_key_pem", format!("not an RSA or EC public key in PEM: {error}")))?,
                    Algorithm::ES256,
                ),
            };
            verifying.push(VerifyingKey { key, algorithm, kid: None });
        }
        if let Some(jwks) = &keys.jwks {
            verifying.extend(parse_jwks(jwks).map_err(|error| ("jwks", error))?);
        }
        let remote = keys.jwks_url.as_ref().map(|url| RemoteKeys {
            url: url.clone(),
            keys: std::sync::RwLock::new(Vec::new()),
            refresh_wanted: tokio::sync::Notify::new(),
        });
        if verifying.is_empty() && remote.is_none() {
            return Err(("hmac_secret", "[auth] needs hmac_secret, public_key_pem or jwks".into()));
        }
        Ok(Self {
            keys: verifying,
            remote,
            hmac_secret: keys.hmac_secret.clone(),
            audience,
            issuer,
            leeway: leeway.min(MAX_LEEWAY),
        })
    }

    /// Signs `claims` with the HS256 secret (for development tokens); the configured audience
    /// and issuer are filled in when the claims have none.
    pub fn mint(&self, mut claims: Claims) -> Result<String, String> {
        let secret = self.hmac_secret.as_ref().ok_or("minting needs [auth] hmac_secret")?;
        server_subscriptions(&claims)?;
        claims.aud = claims.aud.or_else(|| self.audience.clone().map(serde_json::Value::from));
        claims.iss = claims.iss.or_else(|| self.issuer.clone());
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).map_err(|error| error.to_string())?;
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).map_err(|error| error.to_string())
    }

    /// Checks a token; returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.check(token).inspect_err(|error| {
            tracing::debug!(%error, "token refused");
            crate::metrics::token_failed(error.code());
        })
    }

    /// Fetches the JWKS URL's keys now, if there is one.
    pub async fn refresh_remote_keys(&self) -> Result<(), String> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let keys = parse_jwks(&crate::jwks::fetch(&remote.url).await?)?;
        tracing::info!(url = %remote.url, keys = keys.len(), "JWKS keys loaded");
        *remote.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
        Ok(())
    }

    /// Resolves when a token named a key id that is not known (time to refresh).
    pub async fn unknown_key_seen(&self) {
        match &self.remote {
            Some(remote) => remote.refresh_wanted.notified().await,
            None => std::future::pending().await,
        }
    }

    pub fn has_remote_keys(&self) -> bool {
        self.remote.is_some()
    }

    fn check(&self, token: &str) -> Result<Claims, TokenError> {
        let header = decode_header(token).map_err(|error| TokenError::Invalid(format!("malformed token ({error})")))?;
        let remote: Vec<VerifyingKey> = self.remote.as_ref().map_or_else(Vec::new, |remote| {
            remote.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
        });
        let matching = |key: &&VerifyingKey| {
            key.algorithm == header.alg && (header.kid.is_none() || key.kid.is_none() || key.kid == header.kid)
        };
        if let (Some(remote_keys), Some(_)) = (&self.remote, &header.kid)
            && !self.keys.iter().chain(&remote).any(|key| matching(&key))
        {
            // Perhaps the issuer rotated its keys: ask for a refresh.
            remote_keys.refresh_wanted.notify_one();
            return Err(TokenError::Invalid("unknown key id (kid); keys are being refreshed".into()));
        }
        let candidates = self.keys.iter().chain(&remote).filter(matching);
        let mut last_error = TokenError::Invalid(format!("algorithm {:?} is not accepted here", header.alg));
        for key in candidates {
            let mut validation = Validation::new(key.algorithm);
            validation.leeway = self.leeway.as_secs();
            validation.validate_nbf = true;
            validation.required_spec_claims.clear();
            let mut required = Vec::new();
            match &self.audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    required.push("aud");
                }
                None => validation.validate_aud = false,
            }
            if let Some(issuer) = &self.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            // Configured checks cannot be dodged by leaving the claim out.
            validation.set_required_spec_claims(&required);
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    server_subscriptions(&data.claims).map_err(TokenError::Invalid)?;
                    return Ok(data.claims);
                }
                Err(error) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last_error = match error.kind() {
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => TokenError::Invalid("token not valid yet (nbf)".into()),
                        ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience".into()),
                        ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer".into()),
                        ErrorKind::InvalidSignature => TokenError::Invalid("bad signature".into()),
                        _ => TokenError::Invalid(error.to_string()),
                    };
                }
            }
        }
        Err(last_error)
    }
}

/// A fresh random secret from the operating system's generator, URL-safe, `bytes` long before
/// encoding.
pub fn random_secret(bytes: usize) -> Result<String, String> {
    use base64::Engine as _;
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| error.to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer))
}

/// Seconds since the Unix epoch, the unit of `exp`.
pub fn unix_seconds() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The identity a token gives, or anonymous without one (anonymity is then a namespace rule).
pub fn identify(auth: Option<&Authenticator>, token: Option<&str>) -> Result<Identity, TokenError> {
    match (auth, token) {
        (_, None) | (None, _) => Ok(Identity::Anonymous),
        (Some(auth), Some(token)) => Ok(Identity::User(Box::new(auth.verify(token)?))),
    }
}

/// A bearer token from `Authorization`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `pattern` grants `channel`: equal segment counts, `*` any run within a segment.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    let mut patterns = pattern.split(':');
    let mut segments = channel.split(':');
    loop {
        match (patterns.next(), segments.next()) {
            (None, None) => return true,
            (Some(pattern), Some(segment)) if glob(pattern.as_bytes(), segment.as_bytes()) => {}
            _ => return false,
        }
    }
}

/// `*` matches any run. Greedy with one backtrack point (the last `*`): O(pattern × text) at
/// worst, never exponential, whatever the pattern.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last `*` take one more character and try again from there.
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

fn granted(patterns: &Option<Vec<String>>, channel: &ChannelName) -> bool {
    patterns.as_ref().is_none_or(|patterns| patterns.iter().any(|pattern| pattern_matches(pattern, channel.as_str())))
}

/// Why an operation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0} needs a token (anonymous clients are not allowed in its namespace)")]
    NeedsToken(String),
    #[error("the token does not grant {0}")]
    NotGranted(String),
    #[error("clients may not publish to {0}")]
    NoClientPublish(String),
}

impl Denied {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NeedsToken(_) => "unauthorized",
            Self::NotGranted(_) | Self::NoClientPublish(_) => "permission_denied",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NeedsToken(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        ApiError::new(denied.status(), denied.code(), denied.to_string())
    }
}

/// The most server-side subscriptions a token may name.
pub const MAX_SERVER_SUBSCRIPTIONS: usize = 64;

/// A token's `subs`: valid channel names outside the server's own namespace, at most
/// [`MAX_SERVER_SUBSCRIPTIONS`], without repeats.
fn server_subscriptions(claims: &Claims) -> Result<Vec<ChannelName>, String> {
    let Some(subs) = &claims.subs else { return Ok(Vec::new()) };
    if subs.len() > MAX_SERVER_SUBSCRIPTIONS {
        return Err(format!("subs names {} channels; at most {MAX_SERVER_SUBSCRIPTIONS}", subs.len()));
    }
    let mut channels: Vec<ChannelName> = Vec::with_capacity(subs.len());
    for name in subs {
        let channel = ChannelName::new(name).map_err(|error| format!("subs: {name:?}: {error}"))?;
        if crate::control::reserved::is_reserved(&channel) {
            return Err(format!("subs: {channel} is the server's own"));
        }
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    Ok(channels)
}

pub fn may_subscribe(identity: &Identity, options: &NamespaceOptions, channel: &ChannelName) -> Result<(), Denied> {
    if crate::control::reserved::is_reserved(channel) {
        return Err(Denied::NotGranted(format!("subscribing to {channel}: it is the server's own")));
    }
    match identity {
        Identity::Anonymous if !options.anonymous => Err(Denied::NeedsToken(channel.to_string())),
        Identity::Anonymous => Ok(()),
        Identity::User(claims) if granted(&claims.channels, channel) => Ok(()),
        Identity::User(_) => Err(Denied::NotGranted(format!("subscribing to {channel}"))),
    }
}

pub fn may_publish(identity: &Identity, options: &NamespaceOptions, channel: &ChannelName) -> Result<(), Denied> {
    if crate::control::reserved::is_reserved(channel) {
        return Err(Denied::NotGranted(format!("publishing to {channel}: it is the server's own")));
    }
    if !options.client_publish {
        return Err(Denied::NoClientPublish(channel.to_string()));
    }
    match identity {
        Identity::Anonymous if !options.anonymous => Err(Denied::NeedsToken(channel.to_string())),
        Identity::Anonymous => Ok(()),
        Identity::User(claims) if granted(&claims.publish, channel) => Ok(()),
        Identity::User(_) => Err(Denied::NotGranted(format!("publishing to {channel}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn authenticator() -> Authenticator {
        let keys = AuthKeys { hmac_secret: Some(SECRET.into()), ..Default::default() };
        Authenticator::new(&keys, Some("herald".into()), None, Duration::from_secs(5)).unwrap()
    }

    fn token(claims: &Claims, secret: &str) -> String {
        encode(&Header::default(), claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn patterns_match_within_segments() {
        assert!(pattern_matches("chat:*", "chat:lobby"));
        assert!(!pattern_matches("chat:*", "chat:a:b"));
        assert!(!pattern_matches("chat:*", "news:x"));
        assert!(pattern_matches("*", "lobby"));
        assert!(pattern_matches("room:a*z", "room:abcz"));
        assert!(!pattern_matches("room:a*z", "room:abc"));
        assert!(pattern_matches("exact", "exact"));
        assert!(pattern_matches("a*b*c", "axxbyyc") && !pattern_matches("a*b*c", "axxbyy"));
        assert!(pattern_matches("**", "") && pattern_matches("*x", "xxx") && !pattern_matches("x*", "yx"));
        // Patterns that would take exponential time with naive backtracking answer at once.
        let pathological = format!("{}b", "*a".repeat(60));
        assert!(!pattern_matches(&pathological, &"a".repeat(250)));
    }

    #[test]
    fn valid_expired_wrong_key_wrong_audience_and_alg_none() {
        let auth = authenticator();
        let good = Claims {
            sub: Some("alice".into()),
            exp: Some(now() + 60),
            aud: Some("herald".into()),
            ..Default::default()
        };
        assert_eq!(auth.verify(&token(&good, SECRET)).unwrap().sub.as_deref(), Some("alice"));
        let expired = Claims { exp: Some(now() - 120), ..good.clone() };
        assert_eq!(auth.verify(&token(&expired, SECRET)), Err(TokenError::Expired));
        assert!(matches!(auth.verify(&token(&good, "another-secret-another-secret-xx")), Err(TokenError::Invalid(_))));
        let other_audience = Claims { aud: Some("elsewhere".into()), ..good.clone() };
        assert_eq!(auth.verify(&token(&other_audience, SECRET)), Err(TokenError::Invalid("wrong audience".into())));
        let early = Claims { nbf: Some(now() + 600), ..good.clone() };
        assert!(matches!(auth.verify(&token(&early, SECRET)), Err(TokenError::Invalid(_))));
        // alg "none": a header and payload with an empty signature.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&good).unwrap())
        );
        assert!(matches!(auth.verify(&none), Err(TokenError::Invalid(_))));
        assert!(matches!(auth.verify("garbage"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn tokens_narrow_what_namespaces_allow() {
        let open = NamespaceOptions { anonymous: true, client_publish: true, ..Default::default() };
        let closed = NamespaceOptions { anonymous: false, client_publish: true, ..Default::default() };
        let read_only = NamespaceOptions { client_publish: false, ..open.clone() };
        let chat = ChannelName::new("chat:lobby").unwrap();
        let user = Identity::User(Box::new(Claims {
            channels: Some(vec!["chat:*".into()]),
            publish: Some(vec![]),
            ..Default::default()
        }));
        assert!(may_subscribe(&Identity::Anonymous, &open, &chat).is_ok());
        assert_eq!(may_subscribe(&Identity::Anonymous, &closed, &chat), Err(Denied::NeedsToken("chat:lobby".into())));
        assert!(may_subscribe(&user, &closed, &chat).is_ok());
        let news = ChannelName::new("news:x").unwrap();
        assert!(matches!(may_subscribe(&user, &open, &news), Err(Denied::NotGranted(_))));
        assert!(
            matches!(may_publish(&user, &open, &chat), Err(Denied::NotGranted(_))),
            "an empty publish list grants nothing"
        );
        assert!(matches!(may_publish(&Identity::Anonymous, &read_only, &chat), Err(Denied::NoClientPublish(_))));
        let publisher = Identity::User(Box::new(Claims { publish: Some(vec!["chat:*".into()]), ..Default::default() }));
        assert!(may_publish(&publisher, &closed, &chat).is_ok());
        assert!(matches!(may_publish(&publisher, &read_only, &chat), Err(Denied::NoClientPublish(_))), "never widens");
    }
}
