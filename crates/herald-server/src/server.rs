//! Running the server: bind, serve, and shut down gracefully.
//!
//! Herald runs its own accept loop rather than `axum::serve`: every connection is a tracked
//! task, headers have a read timeout (slowloris), and a connection's long-lived requests are
//! answered by Herald's own HTTP/1 front ([`crate::front`]), the rest by hyper's
//! HTTP/1 server.
//!
//! Shutdown: stop accepting, let in-flight requests finish, tell WebSocket clients to reconnect
//! (each session watches the cancellation token), then wait for every tracked task, at most the
//! grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Settings;
use crate::front::{self, FrontTimeouts, Rewind};
use crate::router;
use crate::state::AppState;
use crate::webhooks::Webhooks;
use crate::wiring;

/// How often the hub's periodic work runs (presence grace and leases, idle channels).
const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the engine's housekeeping runs, in ticks.
const SWEEP_EVERY_TICKS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Storage(#[from] herald_storage::StorageOpenError),
    #[error(transparent)]
    Wiring(#[from] wiring::WiringError),
    #[error("cannot load the [auth] JWKS: {0}")]
    Jwks(String),
}

/// A server that is accepting connections.
pub struct RunningServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    done: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Shuts down gracefully and waits until it is complete.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        self.done.await.map_err(std::io::Error::other)?
    }
}

/// How often remote JWKS keys are fetched again; and the least time between two fetches asked
/// for by unknown key ids.
const JWKS_REFRESH: Duration = Duration::from_secs(600);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

/// Keeps the JWKS URL's keys fresh: periodically, and soon after a token names an unknown key.
async fn refresh_remote_keys(auth: Arc<crate::auth::Authenticator>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(JWKS_REFRESH) => {}
            () = auth.unknown_key_seen() => {}
        }
        if let Err(error) = auth.refresh_remote_keys().await {
            tracing::warn!(%error, "JWKS refresh failed; keeping the keys we have");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(JWKS_MIN_REFRESH) => {}
        }
    }
}

/// Serves one connection until it ends: its long-lived requests (streams, polls) in Herald's
/// own front, anything else in hyper's HTTP/1 server (upgrades included). On shutdown the
/// request in flight finishes and idle keep-alives close.
async fn serve_io<I>(
    mut io: I,
    peer: SocketAddr,
    http: Arc<http1::Builder>,
    router: Router,
    timeouts: FrontTimeouts,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(read) = front::serve(&mut io, peer, &router, timeouts, &shutdown).await else {
        return;
    };
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    // Boxed: hyper's connection state is large, and a connection served by the front alone
    // (an open stream) should not carry room for it.
    let connection = Box::pin(http.serve_connection(TokioIo::new(Rewind::new(read, io)), service).with_upgrades());
    let mut connection = connection;
    tokio::select! {
        _ = &mut connection => {}
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Prepares the data directory, binds the configured address and starts serving.
pub async fn start(settings: Settings) -> Result<RunningServer, StartError> {
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|source| StartError::DataDir { path: settings.data_dir.display().to_string(), source })?;
    // Storage is opened (and checked), and remote token keys loaded, before the port is bound.
    if let Some(auth) = &settings.auth {
        auth.refresh_remote_keys().await.map_err(StartError::Jwks)?;
    }
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    // The engine's and the storage's own tasks stop last, once every connection has finished:
    // in-flight requests still read history and publish during the grace period.
    let adapters = Adapters { tasks: TaskTracker::new(), stop: CancellationToken::new() };
    let started = async {
        let hub = wiring::hub(&settings, &adapters.tasks, &adapters.stop).await?;
        // Pending webhook deliveries resume now, whatever happens to the rest of the start.
        let outbox = wiring::outbox(&settings).await?;
        let webhooks = Webhooks::start(outbox, &settings, tasks.clone(), shutdown.clone()).await?;
        Ok::<_, StartError>((hub, webhooks))
    };
    let (hub, webhooks) = match started.await {
        Ok(started) => started,
        Err(error) => {
            abandon(&shutdown, &tasks, adapters, settings.shutdown_grace).await;
            return Err(error);
        }
    };
    hub.set_event_sink(webhooks.event_sink());
    let addr = settings.listen;
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(source) => {
            abandon(&shutdown, &tasks, adapters, settings.shutdown_grace).await;
            return Err(StartError::Bind { addr, source });
        }
    };
    let app = AppState::new(hub, webhooks, Arc::new(settings), shutdown, tasks);
    start_on(listener, app, adapters).map_err(|source| StartError::Bind { addr, source })
}

/// A start that failed: what did start (pending webhooks, an engine's tasks) stops.
async fn abandon(shutdown: &CancellationToken, tasks: &TaskTracker, adapters: Adapters, grace: Duration) {
    shutdown.cancel();
    tasks.close();
    let _ = tokio::time::timeout(grace, tasks.wait()).await;
    adapters.stop(grace).await;
}

/// The tasks of the engine and the storage, and what stops them.
struct Adapters {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Adapters {
    async fn stop(self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(grace = ?grace, "the engine's or the storage's tasks did not stop within the grace period");
        }
    }
}

/// The next connection; a failed accept (out of file descriptors and the like) waits a little
/// rather than spin.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What serving an accepted connection takes.
struct Acceptor {
    router: Router,
    timeouts: FrontTimeouts,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    tasks: TaskTracker,
}

impl Acceptor {
    /// Serves the connection in a task of its own, with `http`'s settings, until `shutdown`.
    fn spawn(
        &self,
        (stream, peer): (tokio::net::TcpStream, SocketAddr),
        http: &Arc<http1::Builder>,
        shutdown: &CancellationToken,
    ) {
        let _ = stream.set_nodelay(true);
        let (http, router, connection_shutdown, timeouts) =
            (http.clone(), self.router.clone(), shutdown.clone(), self.timeouts);
        // Built outside an `async` block, whose captured variables would sit in every
        // connection's state beside the futures they were moved into.
        match self.tls.clone() {
            None => {
                self.tasks.spawn(serve_io(stream, peer, http, router, timeouts, connection_shutdown));
            }
            // Boxed: a TLS connection's state is much larger, and plain connections should
            // not carry room for it. The handshake gets the header timeout too: a silent
            // client is not held.
            Some(acceptor) => {
                let header_timeout = self.header_timeout;
                self.tasks.spawn(Box::pin(async move {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_io(stream, peer, http, router, timeouts, connection_shutdown).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }));
            }
        }
    }
}

/// Serves `app` on an already bound listener.
fn start_on(listener: TcpListener, app: AppState, adapters: Adapters) -> std::io::Result<RunningServer> {
    let local_addr = listener.local_addr()?;
    let settings = &app.settings;
    let grace = settings.shutdown_grace;
    let header_timeout = settings.limits.header_timeout;
    let timeouts = FrontTimeouts { header: header_timeout, write: settings.websocket.write_timeout };
    let tls = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (shutdown, tasks, hub) = (app.shutdown.clone(), app.tasks.clone(), app.hub.clone());

    let sweeper_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(TICK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for count in 0u32.. {
            tokio::select! {
                () = sweeper_shutdown.cancelled() => break,
                _ = tick.tick() => {
                    hub.tick().await;
                    crate::metrics::upkeep();
                    if count % SWEEP_EVERY_TICKS == 0 {
                        hub.sweep().await;
                    }
                }
            }
        }
    });

    if app.settings.demos.enabled {
        tasks.spawn(crate::demo::ticker::run(app.clone()));
    }
    tasks.spawn(crate::control::follow(app.hub.clone(), app.controls.clone(), shutdown.clone()));
    if let Some(auth) = app.settings.auth.clone().filter(|auth| auth.has_remote_keys()) {
        tasks.spawn(refresh_remote_keys(auth, shutdown.clone()));
    }
    let drain_period = app.settings.drain_period;
    let router = router::router(app);
    let serve_shutdown = shutdown.clone();
    let done = tokio::spawn(async move {
        let mut http = http1::Builder::new();
        // Headers must arrive within the timeout: a slowloris client is cut off.
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
        let acceptor = Acceptor { router, timeouts, tls, header_timeout, tasks: tasks.clone() };
        // Shared: every connection's task keeps a handle to it.
        let http = Arc::new(http);
        // HTTP connections close once the drain is over, not at the signal: a client's next
        // request on a kept-alive connection gets its 503 rather than a reset.
        let connections_stop = CancellationToken::new();
        loop {
            tokio::select! {
                () = serve_shutdown.cancelled() => break,
                accepted = accept(&listener) => acceptor.spawn(accepted, &http, &connections_stop),
            }
        }
        // Draining: connected clients are told to go, spread over the drain period, while new
        // connections get one answer each (503 `shutting_down`, `/readyz` included), so a load
        // balancer sees the node leave and no client is refused without a word.
        if !drain_period.is_zero() {
            let mut one_answer = http1::Builder::new();
            one_answer.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(false);
            let one_answer = Arc::new(one_answer);
            let drained = tokio::time::sleep(drain_period);
            tokio::pin!(drained);
            loop {
                tokio::select! {
                    () = &mut drained => break,
                    accepted = accept(&listener) => acceptor.spawn(accepted, &one_answer, &connections_stop),
                }
            }
        }
        connections_stop.cancel();
        // Stop accepting; let in-flight requests finish, then wait for every tracked task.
        drop(listener);
        tasks.close();
        let drained = tokio::time::timeout(grace, async {
            tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?grace, "shutdown grace period over; closing the remaining connections");
        }
        // Connections are done: now the engine's and the storage's tasks (the PostgreSQL writer
        // commits what is queued).
        adapters.stop(grace).await;
        Ok(())
    });
    Ok(RunningServer { local_addr, shutdown, done })
}
