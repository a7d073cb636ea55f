//! What the storages share: the append queue's shape and limits, the SQLite reading
//! connection (history storage and outbox), and small helpers.

use std::sync::{Arc, Mutex};

use herald_core::{EngineError, FanOut, Publication, PublishError, PublishRequest, Published};
use rusqlite::Connection;
use tokio::sync::oneshot;

/// Appends waiting at most before the writer takes them (bounded: publishers wait beyond it).
pub const QUEUE: usize = 4096;
/// Requests in one transaction at most.
pub const GROUP: usize = 1024;

pub type Outcomes = Vec<Result<Published, PublishError>>;

/// One append as the writer receives it.
pub struct Append {
    pub batch: Vec<PublishRequest>,
    pub fan_out: Option<Arc<dyn FanOut>>,
    pub reply: oneshot::Sender<Outcomes>,
}

/// What one request did inside the transaction: its outcome, and the publication to deliver
/// after commit (none for an idempotent repeat).
pub type Appended = (Published, Option<Arc<Publication>>);

pub fn storage_error(error: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(format!("storage: {error}"))
}

/// After a commit: hands each new publication to its fan-out, in order, then answers each
/// append. The one place where "delivered only once committed" happens, for every storage.
pub fn complete(group: Vec<Append>, outcomes: Vec<Vec<Appended>>) {
    for (Append { fan_out, reply, .. }, appended) in group.into_iter().zip(outcomes) {
        let mut answers = Vec::with_capacity(appended.len());
        for (published, publication) in appended {
            if let (Some(fan_out), Some(publication)) = (&fan_out, publication) {
                fan_out.deliver(publication);
            }
            answers.push(Ok(published));
        }
        let _ = reply.send(answers);
    }
}

/// Nothing was committed: every request of every append gets `error`.
pub fn fail(group: Vec<Append>, error: EngineError) {
    for Append { batch, reply, .. } in group {
        let _ = reply.send(batch.iter().map(|_| Err(error.clone())).collect());
    }
}

/// An SQLite connection used beside the writer (WAL lets it read while the writer commits),
/// off the async threads: each call runs in tokio's blocking pool, one at a time.
#[derive(Clone)]
pub struct ReadConnection(Arc<Mutex<Connection>>);

/// Why a call on the [`ReadConnection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task panicked (or the runtime is shutting down).
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl ReadConnection {
    pub fn new(connection: Connection) -> Self {
        Self(Arc::new(Mutex::new(connection)))
    }

    /// Runs `call` on the connection in the blocking pool, and waits for it.
    pub async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ReadError> {
        let connection = self.0.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            call(&connection)
        })
        .await?;
        Ok(outcome?)
    }
}
