//! The hand-off from a long-lived HTTP transport's handler to Herald's HTTP/1 front
//! ([`crate::front`]): when the front serves the connection, the request carries a `Handoff`
//! and the handler leaves its open stream or parked poll in it, to be run on the socket without
//! hyper's per-connection buffers.

use std::sync::{Arc, Mutex};

/// One request's slot for the work its handler leaves to the front.
pub struct Handoff<T>(Arc<Mutex<Option<T>>>);

impl<T> Clone for Handoff<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }
}

impl<T> Handoff<T> {
    pub fn put(&self, work: T) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(work);
    }

    pub fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}
