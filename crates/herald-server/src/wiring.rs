//! The one place that turns settings into concrete adapters: the engine, and the storage that
//! durable namespaces keep their history in.

use std::sync::Arc;

use herald_core::{DurableEngine, Engine, Hub, Storage};
use herald_storage::{PostgresStorage, SqliteStorage, StorageOpenError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{EngineKind, Settings, StorageKind};

/// The database file of the embedded storage, inside the data directory.
pub const SQLITE_FILE: &str = "herald.db";

/// The hub on the configured adapters; their tasks run on `tasks` and end on `shutdown`.
pub async fn hub(
    settings: &Settings,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Arc<Hub>, StorageOpenError> {
    let namespaces = Arc::new(settings.namespaces.clone());
    let storage: Arc<dyn Storage> = match &settings.storage {
        StorageKind::Sqlite => {
            // Opening checks the whole file (quick_check): off the async threads.
            let (path, namespaces) = (settings.data_dir.join(SQLITE_FILE), namespaces.clone());
            let opened = tokio::task::spawn_blocking(move || SqliteStorage::open(&path, namespaces))
                .await
                .map_err(|error| StorageOpenError::Thread(std::io::Error::other(error)))?;
            Arc::new(opened?)
        }
        StorageKind::Postgres { url, schema } => {
            let (tasks, shutdown) = (tasks.clone(), shutdown.clone());
            Arc::new(PostgresStorage::open(url, schema.as_deref(), namespaces.clone(), tasks, shutdown).await?)
        }
    };
    let engine: Arc<dyn Engine> = match &settings.engine {
        EngineKind::Memory => Arc::new(DurableEngine::new(namespaces.clone(), storage)),
        // Every namespace lives in Redis: durable ones are as durable as Redis is (AOF).
        EngineKind::Redis { urls } => {
            herald_engines::RedisEngine::start(urls, namespaces.clone(), tasks.clone(), shutdown.clone())
                .await
                .map_err(|error| StorageOpenError::Thread(std::io::Error::other(error)))?
        }
        // History in JetStream: as durable as its storage (file) and replication.
        EngineKind::Nats { url } => {
            herald_engines::NatsEngine::start(url, namespaces.clone(), tasks.clone(), shutdown.clone())
                .await
                .map_err(|error| StorageOpenError::Thread(std::io::Error::other(error)))?
        }
    };
    Ok(Hub::new(engine, namespaces, settings.presence))
}
