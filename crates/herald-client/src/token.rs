//! Tokens that renew themselves: a [`TokenSource`] the client calls for a fresh client JWT, and
//! when to call it, read from the token's `exp` claim. The claim is decoded, not verified: the
//! server verifies tokens; the client only needs to know when to ask for the next one.
//!
//! The rules are the JavaScript SDK's (`clients/js/herald.js`), so both behave alike.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// What a token source returns: a token, or why there is none (in words).
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where fresh client tokens come from (your backend's token endpoint, say). The client calls it
/// for its first token, before each reconnect when the token it holds is about to expire, and
/// ahead of each expiry to renew the token on the live connection. A call that fails (or takes
/// longer than `request_timeout`) is tried again after a backoff pause.
///
/// ```
/// use herald_client::{Options, TokenSource};
///
/// let options = Options {
///     get_token: Some(TokenSource::new(|| async {
///         // e.g. ask your backend; any error that displays will do
///         Ok::<_, std::io::Error>("eyJhbGciOi…".to_string())
///     })),
///     ..Options::default()
/// };
/// ```
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenSource {
    pub fn new<F, Fut, E>(get: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        Self(Arc::new(move || {
            let token = get();
            Box::pin(async move { token.await.map_err(|error| error.to_string()) })
        }))
    }

    pub(crate) fn get(&self) -> TokenFuture {
        (self.0)()
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("TokenSource(..)")
    }
}

/// A held token is used to (re)connect only if it holds for longer than this; else a new one is
/// asked for first, so the connection does not open just to be closed at expiry.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// A renewal is never due later than this before expiry.
const RENEW_BEFORE: Duration = Duration::from_secs(3);

/// No renewal is scheduled further ahead than this (tokio's timers reach about two years; a
/// token valid for longer is simply renewed early).
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The `exp` claim of a JWT in Unix seconds, read without verifying it; `None` when it has
/// none, or is not a JWT this client can read (the server will say what is wrong with it).
pub(crate) fn expiry(token: &str) -> Option<f64> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).ok()?;
    // The claims must be an object (a derived struct would also take `[exp]`).
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json).ok()?.get("exp")?.as_f64()
}

/// How long `token` still holds, in seconds (negative once it has expired); `None` without `exp`.
fn remaining(token: &str) -> Option<f64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    expiry(token).map(|exp| exp - now)
}

/// Whether `token` may be used for a new connection as it is (a token without `exp` always).
pub(crate) fn is_fresh(token: &str) -> bool {
    remaining(token).is_none_or(|remaining| remaining > FRESH_FOR.as_secs_f64())
}

/// How long to wait before renewing `token`: most of its life, and never later than 3 s before it
/// ends (at once if that has passed); `None` for a token without `exp`, which needs no renewal.
pub(crate) fn renewal_delay(token: &str) -> Option<Duration> {
    remaining(token).map(delay_for)
}

fn delay_for(remaining: f64) -> Duration {
    let seconds = (remaining * 0.85).min(remaining - RENEW_BEFORE.as_secs_f64()).max(0.0);
    Duration::try_from_secs_f64(seconds).unwrap_or(MAX_DELAY).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.signature", b64.encode(r#"{"alg":"HS256"}"#), b64.encode(claims))
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn expiry_is_read_from_the_claims_and_anything_else_has_none() {
        assert_eq!(expiry(&jwt(r#"{"sub":"a","exp":1764355200}"#)), Some(1_764_355_200.0));
        // Padded base64url is read too.
        let padded = format!("x.{}.y", base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":7}"#));
        assert_eq!(expiry(&padded), Some(7.0));
        for bad in ["", "abc", "a.b.c", "a.!!!.c", &jwt(r#"{"sub":"a"}"#), &jwt(r#"{"exp":"soon"}"#), &jwt("[1]")] {
            assert_eq!(expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn renewal_comes_at_85_percent_of_the_life_left_and_at_least_3_s_before_the_end() {
        assert_eq!(delay_for(100.0), Duration::from_secs(85));
        assert_eq!(delay_for(10.0), Duration::from_secs(7));
        assert_eq!(delay_for(4.0), Duration::from_secs(1));
        assert_eq!(delay_for(2.0), Duration::ZERO);
        assert_eq!(delay_for(-50.0), Duration::ZERO);
        assert_eq!(delay_for(1e300), MAX_DELAY);
        assert_eq!(renewal_delay(&jwt(r#"{"sub":"a"}"#)), None);
    }

    #[test]
    fn a_token_is_fresh_while_it_holds_for_more_than_5_s() {
        assert!(is_fresh(&jwt(&format!(r#"{{"exp":{}}}"#, now() + 60))));
        assert!(!is_fresh(&jwt(&format!(r#"{{"exp":{}}}"#, now() + 4))));
        assert!(!is_fresh(&jwt(&format!(r#"{{"exp":{}}}"#, now() - 60))));
        assert!(is_fresh(&jwt(r#"{"sub":"a"}"#)), "a token without exp does not expire");
        assert!(is_fresh("not a jwt"), "the server judges what the client cannot read");
    }
}
