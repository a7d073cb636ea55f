//! What every handler shares: the hub, the settings, the shutdown signal and task tracker, the
//! admission limits and the webhook dispatcher. Below every handler and above none of them: the
//! router assembles handlers around it, and nothing here knows a route.

use std::sync::Arc;

use herald_core::Hub;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::session::AdminSessions;
use crate::config::Settings;
use crate::transport::limits::{ConnectionLimiter, KeyRates};
use crate::webhooks::Webhooks;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    /// Cancelled when the server begins to shut down; every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Admission of long-lived connections (in all, per client IP, parked polls).
    pub connections: Arc<ConnectionLimiter>,
    /// Publish rate per API key.
    pub api_rates: KeyRates<usize>,
    /// Publish rate per client user publishing through the server API (the WebSocket rate).
    pub client_api_rates: KeyRates<String>,
    pub webhooks: Arc<Webhooks>,
    /// The admin console's logins.
    pub admin_sessions: AdminSessions,
    /// This node's connections that the server API's `disconnect` can reach.
    pub controls: Arc<crate::control::Registry>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        hub: Arc<Hub>,
        webhooks: Arc<Webhooks>,
        settings: Arc<Settings>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let limits = &settings.limits;
        let connections =
            ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip, limits.max_pending_polls);
        let api_rates = KeyRates::new(limits.api_publish_rate);
        let client_api_rates = KeyRates::new(limits.client_publish_rate);
        crate::metrics::handle();
        Self(Arc::new(AppInner {
            hub,
            settings,
            shutdown,
            tasks,
            connections,
            api_rates,
            client_api_rates,
            webhooks,
            admin_sessions: AdminSessions::default(),
            controls: Arc::default(),
        }))
    }
}
