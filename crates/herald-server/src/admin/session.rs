//! The admin console's sessions: a random id in an HttpOnly, SameSite=Strict cookie, each with
//! the scope of the API key that opened it and a CSRF token its forms carry. Held in memory
//! (a restart logs everyone out), bounded, and expiring.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use crate::config::KeyScope;

/// How long a session lasts from login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions; a login past it drops the oldest.
const MAX_SESSIONS: usize = 1000;
pub const COOKIE_NAME: &str = "herald_admin";

/// Who is looking at the console: a session, or anyone on a dev-mode server.
#[derive(Debug, Clone)]
pub struct Access {
    pub scope: KeyScope,
    /// The token forms must send back.
    pub csrf: String,
    /// Dev mode: no key was asked for.
    pub open: bool,
}

#[derive(Debug)]
struct Session {
    scope: KeyScope,
    csrf: String,
    expires: Instant,
}

#[derive(Debug)]
pub struct AdminSessions {
    sessions: Mutex<HashMap<String, Session>>,
    /// The CSRF token of a dev-mode console (no session, but forms still need proof that they
    /// came from the console's own pages).
    open_csrf: String,
}

impl Default for AdminSessions {
    fn default() -> Self {
        Self { sessions: Mutex::new(HashMap::new()), open_csrf: random_token() }
    }
}

/// 256 random bits, URL-safe.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // Without the OS's randomness there is no safe session: make it unguessable anyway.
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

impl AdminSessions {
    /// Opens a session; returns its cookie value.
    pub fn open(&self, scope: KeyScope) -> String {
        let id = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, session)| session.expires).map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), Session { scope, csrf: random_token(), expires: now + SESSION_LIFETIME });
        id
    }

    /// The session of a cookie value, while it lasts.
    pub fn find(&self, id: &str) -> Option<Access> {
        let sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let session = sessions.get(id).filter(|session| session.expires > Instant::now())?;
        Some(Access { scope: session.scope, csrf: session.csrf.clone(), open: false })
    }

    pub fn close(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
    }

    /// Access on a dev-mode server, where the console asks for no key.
    pub fn open_access(&self) -> Access {
        Access { scope: KeyScope::Full, csrf: self.open_csrf.clone(), open: true }
    }
}

/// Whether a form's CSRF token is the session's, compared in constant time.
pub fn csrf_matches(access: &Access, given: &str) -> bool {
    bool::from(access.csrf.as_bytes().ct_eq(given.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_until_closed_and_tokens_differ() {
        let sessions = AdminSessions::default();
        let id = sessions.open(KeyScope::ReadOnly);
        let access = sessions.find(&id).unwrap();
        assert_eq!(access.scope, KeyScope::ReadOnly);
        assert!(csrf_matches(&access, &access.csrf.clone()));
        assert!(!csrf_matches(&access, "forged"));
        assert_ne!(sessions.open(KeyScope::Full), id);
        assert!(sessions.find("made-up").is_none());
        sessions.close(&id);
        assert!(sessions.find(&id).is_none());
    }

    #[test]
    fn the_oldest_session_goes_past_the_bound() {
        let sessions = AdminSessions::default();
        let first = sessions.open(KeyScope::Full);
        for _ in 0..MAX_SESSIONS {
            sessions.open(KeyScope::Full);
        }
        assert!(sessions.find(&first).is_none());
        assert_eq!(sessions.sessions.lock().unwrap().len(), MAX_SESSIONS);
    }
}
