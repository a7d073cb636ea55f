//! Herald's durable storage, behind the core's [`herald_core::Storage`] trait.
//!
//! - [`sqlite`]: the embedded default, a file in the data directory (WAL, group commit);
//! - [`postgres`]: PostgreSQL, for storage shared by several nodes;
//! - [`outbox`]: the webhook outbox and endpoint registry (SQLite).
//!
//! Both keep the same tables (channels with epoch and top, publications, idempotency keys) and
//! pass the same conformance suite (`tests` in each module).

pub mod outbox;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;
mod shared;

pub use outbox::SqliteOutbox;
pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;

/// Why the database could not be opened: reported at start, before anything is served.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("{path} is damaged or not a Herald database: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("cannot start the storage writer: {0}")]
    Thread(std::io::Error),
    #[error("cannot use the PostgreSQL storage: {0}")]
    Postgres(String),
    #[error("cannot lock {path}: {detail}")]
    Locked { path: String, detail: String },
}
