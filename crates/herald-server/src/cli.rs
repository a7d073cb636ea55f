//! `herald subscribe` and `herald publish`: Herald from a shell. Part of the binary only.
//!
//! `subscribe` reads the NDJSON stream (`GET /stream`), whose cursors resume a multi-channel
//! subscription exactly: it prints each publication as one line (the publication with its
//! `cursor`), and when the stream ends or the connection is lost it reconnects with backoff from
//! the last cursor, so every publication is printed once and in order. `--since` takes a cursor
//! printed earlier.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_client::Backoff;
use serde_json::Value;

/// The Herald a command talks to when none is named.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8750";
/// A stream that sends nothing for this long is taken for lost (Herald sends a heartbeat line
/// every 15 s by default).
const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// Why a request failed: Herald's own error, or no answer at all.
enum Failure {
    /// Herald answered with an error status: said, and final.
    Refused(String),
    /// No answer (refused connection, reset, a stream cut short): worth another try.
    Lost(String),
}

pub async fn subscribe(
    url: &str,
    channels: &[String],
    token: Option<&str>,
    since: Option<String>,
) -> anyhow::Result<()> {
    if channels.is_empty() {
        bail!("name at least one channel");
    }
    let client = http_client()?;
    let base = url.trim_end_matches('/');
    // Less any the server unsubscribes.
    let mut channels = channels.to_vec();
    let mut cursor = since;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
    let mut connected_once = false;
    loop {
        let mut request = client.get(format!("{base}/stream?{}", stream_query(&channels, cursor.as_deref())));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let mut progress =
            Progress { cursor: &mut cursor, channels: &mut channels, connected_once: &mut connected_once };
        match stream(request, &mut progress, &mut backoff).await {
            Failure::Refused(why) => match &cursor {
                Some(cursor) if connected_once => bail!("{why} (resume with --since {cursor})"),
                _ => bail!("{why}"),
            },
            Failure::Lost(why) if !connected_once => bail!("cannot reach Herald at {base}: {why}"),
            Failure::Lost(why) => eprintln!("herald: connection lost ({why}); reconnecting"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn stream_query(channels: &[String], cursor: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for channel in channels {
        query.append_pair("channel", channel);
    }
    if let Some(cursor) = cursor {
        query.append_pair("since", cursor);
    }
    query.finish()
}

/// What a subscriber keeps from one stream to the next.
struct Progress<'a> {
    cursor: &'a mut Option<String>,
    /// The channels still followed: the server may unsubscribe some.
    channels: &'a mut Vec<String>,
    connected_once: &'a mut bool,
}

/// Reads one stream until it ends, printing publications and keeping the cursor; says how it
/// ended.
async fn stream(request: reqwest::RequestBuilder, progress: &mut Progress<'_>, backoff: &mut Backoff) -> Failure {
    let Progress { cursor, channels, connected_once } = progress;
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Failure::Lost(herald_server::http_client::describe(&error)),
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        // A server restarting behind a proxy (502, 504), shutting down (503) or at a connection
        // limit (429): try again. Anything else is an answer about this request.
        let transient = status.is_server_error() || status == 429 || status == 408;
        let why = herald_error(status, &body);
        return if transient { Failure::Lost(why) } else { Failure::Refused(why) };
    }
    **connected_once = true;
    backoff.reset();
    let mut buffer = Vec::new();
    let mut stdout = std::io::stdout().lock();
    loop {
        let chunk = match tokio::time::timeout(STREAM_SILENCE, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Failure::Lost("the stream ended".into()),
            Ok(Err(error)) => return Failure::Lost(herald_server::http_client::describe(&error)),
            Err(_) => return Failure::Lost(format!("nothing for {}s", STREAM_SILENCE.as_secs())),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(value) = serde_json::from_slice::<Value>(&line) else { continue };
            if let Some(next) = value.get("cursor").and_then(Value::as_str) {
                **cursor = Some(next.to_string());
            }
            match value.get("type").and_then(Value::as_str) {
                // A publication: printed as it came, one line.
                None => {
                    let printed = stdout.write_all(&line).and_then(|()| stdout.flush());
                    if printed.is_err() {
                        // stdout is gone (a closed pipe): nothing left to do.
                        std::process::exit(0);
                    }
                }
                Some("recovery") => {
                    let channel = value.get("channel").and_then(Value::as_str).unwrap_or_default();
                    eprintln!("herald: {channel}: history no longer covers the gap (recovered: false); from now on");
                }
                Some("unsubscribed") => {
                    let channel = value.get("channel").and_then(Value::as_str).unwrap_or_default();
                    let reason = value.get("reason").and_then(Value::as_str).unwrap_or_default();
                    eprintln!("herald: {channel}: unsubscribed by the server ({reason})");
                    channels.retain(|followed| followed != channel);
                    if channels.is_empty() {
                        return Failure::Refused("Herald unsubscribed every channel".to_string());
                    }
                }
                Some("disconnect") => {
                    let reason = value.get("reason").and_then(Value::as_str).unwrap_or_default();
                    if value.get("reconnect").and_then(Value::as_bool) == Some(false) {
                        return Failure::Refused(format!("Herald ended the stream: {reason}"));
                    }
                    return Failure::Lost(reason.to_string());
                }
                _ => {}
            }
        }
    }
}

pub async fn publish(url: &str, channel: &str, data: &str, api_key: Option<&str>) -> anyhow::Result<()> {
    let data: Value = serde_json::from_str(data)
        .with_context(|| format!("DATA must be JSON (a string is quoted: '\"hi\"'), not {data:?}"))?;
    let base = url.trim_end_matches('/');
    let mut request = http_client()?
        .post(format!("{base}/api/publish"))
        .json(&serde_json::json!({ "channel": channel, "data": data }));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    print_answer(request, base).await
}

/// `herald health`: whether the server at `url` is up (`/healthz`) or, with `ready`, ready to
/// take clients (`/readyz`); for container health checks, which have no curl.
pub async fn health(url: &str, ready: bool) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let path = if ready { "readyz" } else { "healthz" };
    print_answer(http_client()?.get(format!("{base}/{path}")).timeout(Duration::from_secs(5)), base).await
}

/// Sends the request and prints Herald's answer; an error says why when it is not a success.
async fn print_answer(request: reqwest::RequestBuilder, base: &str) -> anyhow::Result<()> {
    let response = request.send().await.map_err(|error| {
        anyhow::anyhow!("cannot reach Herald at {base}: {}", herald_server::http_client::describe(&error))
    })?;
    let status = response.status();
    let body = response.text().await.context("reading Herald's answer")?;
    if !status.is_success() {
        bail!("{}", herald_error(status, &body));
    }
    println!("{}", body.trim_end());
    Ok(())
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    herald_server::http_client::builder(concat!("herald-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("cannot make an HTTP client")
}

/// Herald's `{"error":{"code","message"}}` as one line, or the status and body if it is not one.
fn herald_error(status: reqwest::StatusCode, body: &str) -> String {
    match serde_json::from_str::<herald_wire::error::ErrorResponse>(body) {
        Ok(response) => format!("{} ({}): {}", response.error.code, status.as_u16(), response.error.message),
        Err(_) => format!("Herald answered {status}: {}", body.trim()),
    }
}
