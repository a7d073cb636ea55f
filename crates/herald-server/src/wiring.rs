//! The one place that turns settings into concrete adapters (engine now; storage later).

use std::sync::Arc;

use herald_core::{Engine, Hub, MemoryEngine};

use crate::config::{EngineKind, Settings};

pub fn hub(settings: &Settings) -> Arc<Hub> {
    let namespaces = Arc::new(settings.namespaces.clone());
    let engine: Arc<dyn Engine> = match settings.engine {
        EngineKind::Memory => Arc::new(MemoryEngine::new(namespaces.clone())),
    };
    Hub::new(engine, namespaces)
}
