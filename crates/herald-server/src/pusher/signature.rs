//! The Pusher protocol's signatures, all HMAC-SHA256 in lowercase hex, checked in constant
//! time: a private or presence channel's subscription (`key:hex(HMAC(secret,
//! "socket_id:channel[:channel_data]"))`), a user's sign-in (`socket_id::user::user_data`),
//! and a server's HTTP API request (`METHOD\nPATH\nsorted query` with `auth_key`,
//! `auth_timestamp` within ±600 s, `auth_version=1.0` and `body_md5`).

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far an API request's `auth_timestamp` may be from now, in seconds.
pub const TIMESTAMP_WINDOW: u64 = 600;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn equal(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The `auth` a subscription to a private or presence channel must carry.
pub fn channel_auth(key: &str, secret: &str, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    format!("{key}:{}", hmac_hex(secret, &message))
}

/// The `auth` of a `pusher:signin`.
pub fn user_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    format!("{key}:{}", hmac_hex(secret, &format!("{socket_id}::user::{user_data}")))
}

/// Whether `given` is the subscription auth for these values.
pub fn channel_auth_matches(
    given: &str,
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> bool {
    equal(given, &channel_auth(key, secret, socket_id, channel, channel_data))
}

/// Whether `given` is the sign-in auth for these values.
pub fn user_auth_matches(given: &str, key: &str, secret: &str, socket_id: &str, user_data: &str) -> bool {
    equal(given, &user_auth(key, secret, socket_id, user_data))
}

/// Why an HTTP API request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("auth_key is not this app's key")]
    WrongKey,
    #[error("auth_version must be 1.0")]
    Version,
    #[error("auth_timestamp is more than {TIMESTAMP_WINDOW} s from the server's clock")]
    Timestamp,
    #[error("body_md5 does not match the body")]
    BodyMd5,
    #[error("auth_signature does not match the request")]
    Signature,
}

/// Checks a signed API request: `query` as sent (decoded pairs), `body` the raw body, `now`
/// in Unix seconds.
pub fn verify_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    now: u64,
) -> Result<(), RequestError> {
    let get = |name: &'static str| query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let signature = get("auth_signature").ok_or(RequestError::Missing("auth_signature"))?;
    if !equal(get("auth_key").ok_or(RequestError::Missing("auth_key"))?, key) {
        return Err(RequestError::WrongKey);
    }
    if get("auth_version").ok_or(RequestError::Missing("auth_version"))? != "1.0" {
        return Err(RequestError::Version);
    }
    let timestamp: u64 = get("auth_timestamp")
        .ok_or(RequestError::Missing("auth_timestamp"))?
        .parse()
        .map_err(|_| RequestError::Timestamp)?;
    if timestamp.abs_diff(now) > TIMESTAMP_WINDOW {
        return Err(RequestError::Timestamp);
    }
    if !body.is_empty() {
        let md5 = get("body_md5").ok_or(RequestError::Missing("body_md5"))?;
        if !equal(md5, &hex(&Md5::digest(body))) {
            return Err(RequestError::BodyMd5);
        }
    }
    if !equal(signature, &request_signature(secret, method, path, query)) {
        return Err(RequestError::Signature);
    }
    Ok(())
}

/// The signature of a request: every query parameter but `auth_signature`, keys lowercased
/// and sorted, joined as `k=v&…`, after the method and the path.
pub fn request_signature(secret: &str, method: &str, path: &str, query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = query
        .iter()
        .filter(|(key, _)| key != "auth_signature")
        .map(|(key, value)| (key.to_ascii_lowercase(), value.as_str()))
        .collect();
    pairs.sort();
    let query = pairs.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join("&");
    hmac_hex(secret, &format!("{}\n{path}\n{query}", method.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The app of Pusher's own signing examples.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn channel_and_user_auths_match_pusher_s_examples() {
        // Pusher's documented private-channel example; the others computed with Node's crypto.
        assert_eq!(
            channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", Some(data)),
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        assert_eq!(
            user_auth(KEY, SECRET, "1234.1234", r#"{"id":"12345"}"#),
            "278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
        let good = channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None);
        assert!(channel_auth_matches(&good, KEY, SECRET, "1234.1234", "private-foobar", None));
        assert!(!channel_auth_matches(&good, KEY, SECRET, "1234.1235", "private-foobar", None), "another socket");
        assert!(!channel_auth_matches(&good, KEY, SECRET, "1234.1234", "private-other", None), "another channel");
    }

    fn query(timestamp: &str, signature: Option<&str>) -> Vec<(String, String)> {
        let mut query = vec![
            ("auth_key".to_string(), KEY.to_string()),
            ("auth_timestamp".to_string(), timestamp.to_string()),
            ("auth_version".to_string(), "1.0".to_string()),
            ("body_md5".to_string(), "ec365a775a4cd0599faeb73354201b6f".to_string()),
        ];
        if let Some(signature) = signature {
            query.push(("auth_signature".to_string(), signature.to_string()));
        }
        query
    }

    #[test]
    fn api_requests_are_verified_as_in_pusher_s_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let signature = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        assert_eq!(request_signature(SECRET, "POST", "/apps/3/events", &query("1353088179", None)), signature);
        let signed = query("1353088179", Some(signature));
        let now = 1353088179 + 100;
        assert_eq!(verify_request(KEY, SECRET, "POST", "/apps/3/events", &signed, body, now), Ok(()));

        let refused = |query: &[(String, String)], body: &[u8], now: u64| {
            verify_request(KEY, SECRET, "POST", "/apps/3/events", query, body, now).unwrap_err()
        };
        assert_eq!(refused(&signed, body, 1353088179 + 601), RequestError::Timestamp);
        assert_eq!(refused(&signed, b"{}", now), RequestError::BodyMd5);
        assert_eq!(refused(&query("1353088179", Some(&"0".repeat(64))), body, now), RequestError::Signature);
        assert_eq!(refused(&query("1353088179", None), body, now), RequestError::Missing("auth_signature"));
        let mut other_key = signed.clone();
        other_key[0].1 = "another".into();
        assert_eq!(refused(&other_key, body, now), RequestError::WrongKey);
        assert_eq!(
            verify_request(KEY, SECRET, "POST", "/apps/4/events", &signed, body, now),
            Err(RequestError::Signature),
            "the path is signed"
        );
    }
}
