//! Herald's durable storage, behind the core's [`herald_core::Storage`] trait.
//!
//! - [`sqlite`]: the embedded default, a file in the data directory (WAL, group commit).

pub mod sqlite;

pub use sqlite::{SqliteStorage, StorageOpenError};
