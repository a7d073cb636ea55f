//! The one place that turns settings into concrete adapters: the engine, the storage that
//! durable namespaces keep their history in (with the memory engine; the cluster engines keep
//! history themselves), and the webhook outbox.

use std::sync::Arc;

use herald_core::{DurableEngine, Engine, Hub, Storage};
use herald_storage::{PostgresStorage, SqliteOutbox, SqliteStorage, StorageOpenError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{EngineKind, Settings, StorageKind};

/// The database file of the embedded storage, inside the data directory.
pub const SQLITE_FILE: &str = "herald.db";
/// The webhook outbox's file in the data directory.
pub const OUTBOX_FILE: &str = "webhooks.db";

/// Why an adapter could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Storage(#[from] StorageOpenError),
    #[error("cannot start the Redis engine: {0}")]
    Redis(#[from] herald_engines::redis::RedisStartError),
    #[error("cannot start the NATS engine: {0}")]
    Nats(#[from] herald_engines::nats::NatsStartError),
}

/// The hub on the configured adapters; their tasks run on `tasks` and end on `shutdown`.
pub async fn hub(
    settings: &Settings,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Arc<Hub>, WiringError> {
    let namespaces = Arc::new(settings.namespaces.clone());
    let engine: Arc<dyn Engine> = match &settings.engine {
        EngineKind::Memory => {
            Arc::new(DurableEngine::new(namespaces.clone(), storage(settings, tasks, shutdown).await?))
        }
        // Every namespace lives in Redis: durable ones are as durable as Redis is (AOF).
        EngineKind::Redis { urls } => {
            herald_engines::RedisEngine::start(urls, namespaces.clone(), tasks.clone(), shutdown.clone()).await?
        }
        // History in JetStream: as durable as its storage (file) and replication.
        EngineKind::Nats { url } => {
            herald_engines::NatsEngine::start(url, namespaces.clone(), tasks.clone(), shutdown.clone()).await?
        }
    };
    Ok(Hub::new(Arc::new(crate::metered::MeteredEngine(engine)), namespaces, settings.presence))
}

/// The storage of durable namespaces: SQLite in the data directory, or PostgreSQL.
async fn storage(
    settings: &Settings,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn Storage>, StorageOpenError> {
    let namespaces = Arc::new(settings.namespaces.clone());
    let storage: Arc<dyn Storage> = match &settings.storage {
        StorageKind::Sqlite => {
            // Opening checks the whole file (quick_check): off the async threads.
            let path = settings.data_dir.join(SQLITE_FILE);
            Arc::new(blocking(move || SqliteStorage::open(&path, namespaces)).await?)
        }
        StorageKind::Postgres { url, schema } => {
            let (tasks, shutdown) = (tasks.clone(), shutdown.clone());
            Arc::new(PostgresStorage::open(url, schema.as_deref(), namespaces, tasks, shutdown).await?)
        }
    };
    Ok(Arc::new(crate::metered::MeteredStorage(storage)))
}

/// The webhook outbox, in its own SQLite file in the data directory (per node).
pub async fn outbox(settings: &Settings) -> Result<SqliteOutbox, StorageOpenError> {
    let path = settings.data_dir.join(OUTBOX_FILE);
    blocking(move || SqliteOutbox::open(&path)).await
}

async fn blocking<T: Send + 'static>(
    open: impl FnOnce() -> Result<T, StorageOpenError> + Send + 'static,
) -> Result<T, StorageOpenError> {
    tokio::task::spawn_blocking(open).await.map_err(|error| StorageOpenError::Thread(std::io::Error::other(error)))?
}
