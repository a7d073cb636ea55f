//! The `herald` binary: command-line flags, logging, signals. Everything else is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_server::config::{DEFAULT_LOG_FILTER, LogFormat, LogSettings, Overrides, Settings};
use herald_server::server;

mod cli;

/// jemalloc: with many small, long-lived allocations per connection it keeps an idle WebSocket
/// about 0.5 KiB smaller than the system allocator does (15,000 connections, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `herald --version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HERALD_GIT_COMMIT"), ")");

/// Herald: a real-time messaging server. Backends publish to channels; Herald delivers each
/// publication to every subscriber over WebSocket, SSE, NDJSON streaming, polling and webhooks,
/// with history so reconnecting clients miss nothing.
#[derive(Parser)]
#[command(name = "herald", version = VERSION, propagate_version = true)]
struct Cli {
    /// How log lines are written: human or json (one JSON object a line) [config: log.format]
    #[arg(long, global = true, value_name = "FORMAT", env = "HERALD_LOG_FORMAT", value_parser = ["human", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. With no configuration it listens on 127.0.0.1:8750 with the in-memory
    /// engine, an open server API (loopback only), and prints the address to open.
    Serve(ConfigArgs),
    /// Read and validate the configuration, print the effective settings, and exit.
    CheckConfig(ConfigArgs),
    /// Mint a client token (HS256) from the configured [auth] hmac_secret, for development.
    Token(TokenArgs),
    /// Print every publication of CHANNELs as one NDJSON line each, resuming by itself from the
    /// last cursor when the connection is lost.
    Subscribe(SubscribeArgs),
    /// Publish DATA (JSON) to CHANNEL through the server API, and print the reply.
    Publish(PublishArgs),
    /// Print fresh random secrets: an [auth] hmac_secret, an [api] key and a webhook secret.
    Keygen,
    /// Check that a server is up (GET /healthz; with --ready, GET /readyz): exit 0 if so, 1 if
    /// not. For container health checks, which have no curl.
    Health(HealthArgs),
}

#[derive(Args)]
struct HealthArgs {
    /// Herald's URL.
    #[arg(long, env = "HERALD_URL", default_value = cli::DEFAULT_URL)]
    url: String,
    /// Ask whether it is ready to take clients (not draining, engine connected).
    #[arg(long)]
    ready: bool,
}

#[derive(Args)]
struct TokenArgs {
    /// The user (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Channel patterns it may subscribe to (`*` within a segment), comma-separated.
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Channel patterns it may publish to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// Channels the connection is subscribed to by the server as it connects (server-side
    /// subscriptions), comma-separated.
    #[arg(long, value_delimiter = ',')]
    subs: Vec<String>,
    /// How long it is valid, e.g. 1h, 30m.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Presence info, as JSON.
    #[arg(long)]
    info: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct SubscribeArgs {
    /// The channels, one or more.
    #[arg(required = true, value_name = "CHANNEL")]
    channels: Vec<String>,
    /// Herald's URL.
    #[arg(long, env = "HERALD_URL", default_value = cli::DEFAULT_URL)]
    url: String,
    /// A client token (JWT), when the server has [auth].
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Resume after this cursor (the `cursor` of a line printed earlier).
    #[arg(long, value_name = "CURSOR")]
    since: Option<String>,
}

#[derive(Args)]
struct PublishArgs {
    channel: String,
    /// The data, as JSON (a string is quoted: '"hi"').
    data: String,
    /// Herald's URL.
    #[arg(long, env = "HERALD_URL", default_value = cli::DEFAULT_URL)]
    url: String,
    /// A server API key (none needed in dev mode on loopback).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Args)]
struct ConfigArgs {
    /// Address to listen on [env: HERALD_LISTEN] [default: 127.0.0.1:8750]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory for Herald's data, created if missing [env: HERALD_DATA_DIR] [default: ./herald-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file. Environment variables HERALD_<KEY> (nested keys joined by `__`,
    /// e.g. HERALD_API__KEYS='["..."]') override it; flags override both.
    #[arg(long, value_name = "FILE", env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Serve /ws/echo, an echo route on the WebSocket stack, for conformance test runs only.
    #[arg(long)]
    ws_echo_route: bool,
    /// Terminate TLS with this PEM certificate chain (with --tls-key) [config: tls.cert]
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [config: tls.key]
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

impl ConfigArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let overrides = Overrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            ws_echo_route: self.ws_echo_route,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        };
        Ok(Settings::load(self.config.as_deref(), &overrides)?)
    }
}

fn main() -> ExitCode {
    herald_server::install_crypto_provider();
    let cli = Cli::parse();
    let log_format = cli.log_format.as_deref().and_then(LogFormat::parse);
    // A failed health check exits 1, as container runtimes read it (2 is reserved there).
    let failure = if matches!(cli.command, Command::Health(_)) { 1 } else { 2 };
    let outcome = match cli.command {
        Command::Serve(args) => args.settings().and_then(|settings| {
            init_logging(log_format, Some(&settings.log));
            serve(settings)
        }),
        Command::CheckConfig(args) => args.settings().map(|settings| {
            init_logging(log_format, Some(&settings.log));
            println!("configuration is valid:\n{settings:#?}")
        }),
        command => {
            init_logging(log_format, None);
            run_tool(command)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(failure)
        }
    }
}

/// Logs to stderr: the filter from `RUST_LOG`, else `[log] level`; the format from
/// `--log-format`, else `[log] format`.
fn init_logging(format: Option<LogFormat>, settings: Option<&LogSettings>) {
    use tracing_subscriber::EnvFilter;
    let configured = settings.map_or(DEFAULT_LOG_FILTER, |settings| settings.filter.as_str());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(configured));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format.or(settings.map(|settings| settings.format)).unwrap_or(LogFormat::Human) {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// The commands that are not the server: tokens, keys, a subscriber, a publisher.
fn run_tool(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::CheckConfig(_) => unreachable!("handled by main"),
        Command::Token(args) => mint_token(args),
        Command::Keygen => keygen(),
        Command::Subscribe(args) => runtime().and_then(|runtime| {
            runtime.block_on(cli::subscribe(&args.url, &args.channels, args.token.as_deref(), args.since))
        }),
        Command::Publish(args) => runtime().and_then(|runtime| {
            runtime.block_on(cli::publish(&args.url, &args.channel, &args.data, args.api_key.as_deref()))
        }),
        Command::Health(args) => runtime().and_then(|runtime| runtime.block_on(cli::health(&args.url, args.ready))),
    }
}

fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    let settings = args.config.settings()?;
    let auth = settings.auth.as_deref().context("no [auth] in the configuration: nothing to sign with")?;
    let ttl =
        humantime::parse_duration(&args.ttl).with_context(|| format!("--ttl {:?} is not a duration", args.ttl))?;
    let now = herald_server::auth::unix_seconds();
    let info = args.info.as_deref().map(serde_json::from_str).transpose().context("--info is not JSON")?;
    let claims = herald_server::auth::Claims {
        sub: Some(args.sub),
        exp: Some(now + ttl.as_secs()),
        iat: Some(now),
        channels: (!args.channels.is_empty()).then_some(args.channels),
        publish: Some(args.publish),
        info,
        subs: (!args.subs.is_empty()).then_some(args.subs),
        ..Default::default()
    };
    println!("{}", auth.mint(claims).map_err(anyhow::Error::msg)?);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn keygen() -> anyhow::Result<()> {
    let hmac = herald_server::auth::random_secret(32).map_err(anyhow::Error::msg)?;
    let api_key = herald_server::auth::random_secret(24).map_err(anyhow::Error::msg)?;
    let webhook = herald_server::webhooks::signature::generate_secret();
    println!(
        "[auth]\nhmac_secret = \"{hmac}\"\n\n[api]\nkeys = [\"{api_key}\"]\n\n# a [[webhooks]] endpoint's secret:\n# secret = \"{webhook}\""
    );
    Ok(())
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let dev_mode = settings.api_dev_mode();
        let (http, ws) = if settings.tls.is_some() { ("https", "wss") } else { ("http", "ws") };
        let no_keys = settings.api_keys.is_empty();
        let running = server::start(settings).await?;
        let address = running.local_addr();
        if dev_mode {
            tracing::warn!(
                "DEV MODE: no [api] keys configured; the server API (/api/*) is open to anyone who can reach {address}"
            );
        } else if no_keys {
            tracing::warn!("no [api] keys configured on a non-loopback address: the server API refuses every call");
        }
        // Not println!: a closed stdout (a supervisor that stopped reading) must not stop us.
        let banner = format!(
            "Herald is listening on {http}://{address}\n\
             Open {http}://{address}/ in a browser; WebSocket clients connect to {ws}://{address}/ws\n"
        );
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush());
        drop(stdout);
        let shutdown = running.shutdown_token();
        tokio::select! {
            () = terminate_signal() => {
                tracing::info!("shutting down: draining connections, finishing in-flight work");
                // A second signal does not wait for the drain.
                tokio::spawn(async {
                    terminate_signal().await;
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(1);
                });
            }
            () = shutdown.cancelled() => {}
        }
        running.shutdown().await.context("shutdown failed")?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn terminate_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
