//! The console's pages and the two JSON feeds its script polls: login and logout, the overview
//! (nodes, connections by transport, channels, webhooks, metrics, the effective settings), a
//! channel (recent publications, presence, a publish form) and a webhook endpoint (its delivery
//! log; pause, resume, replay).

use axum::Json;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use herald_core::{ChannelName, HistoryQuery, PublishRequest};
use serde::Deserialize;
use serde_json::json;

use crate::admin::session::{Access, COOKIE_NAME, SESSION_LIFETIME, csrf_matches};
use crate::config::KeyScope;
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::state::AppState;
use crate::web::templates::render;
use crate::webhooks::registry::EndpointState;

/// Channels listed on the overview at most (the busiest first).
const CHANNELS_SHOWN: usize = 200;
const RECENT_PUBLICATIONS: usize = 50;

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Who may look: dev mode lets everyone in; otherwise the session of the cookie.
fn access(app: &AppState, headers: &HeaderMap) -> Option<Access> {
    if app.settings.api_dev_mode() {
        return Some(app.admin_sessions.open_access());
    }
    app.admin_sessions.find(cookie_value(headers, COOKIE_NAME)?)
}

/// A form posted from this very origin: the browser's `Origin` (or `Sec-Fetch-Site`) says so.
/// With the SameSite cookie and the CSRF token, a third check that costs nothing.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|value| value.to_str().ok()) {
        return site == "same-origin" || site == "none";
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) else {
        return true; // not a browser's cross-site form: nothing to compare
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = host.to_str().unwrap_or_default();
    origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], message.to_string()).into_response()
}

/// What a refused request is answered (boxed: a `Response` is large, the path is rare).
type Refused = Box<Response>;

/// A posted form's access: a session (or dev mode), from this origin, with its CSRF token.
fn form_access(app: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Access, Refused> {
    let Some(access) = access(app, headers) else {
        return Err(Box::new(Redirect::to("/admin").into_response()));
    };
    if !same_origin(headers) || !csrf_matches(&access, csrf) {
        let message = "This form did not come from the console: reload it and try again.";
        return Err(Box::new(refusal(StatusCode::FORBIDDEN, message)));
    }
    Ok(access)
}

fn login_page(app: &AppState, error: Option<&str>, status: StatusCode) -> Response {
    let mut response = render(app, "admin/login.html", "admin", minijinja::context! { title => "Admin", error });
    *response.status_mut() = status;
    response
}

fn scope_name(scope: KeyScope) -> &'static str {
    match scope {
        KeyScope::Full => "full",
        KeyScope::ReadOnly => "read-only",
        KeyScope::PublishOnly => "publish-only",
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    api_key: String,
}

pub async fn login(State(app): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return refusal(StatusCode::FORBIDDEN, "A login must come from the console's own page.");
    }
    let Some((_, scope)) = crate::api::caller::key_scope(&app, form.api_key.trim()) else {
        tracing::info!("an admin console login was refused: not an API key");
        return login_page(&app, Some("That is not an API key of this server."), StatusCode::UNAUTHORIZED);
    };
    if scope == KeyScope::PublishOnly {
        return login_page(&app, Some("A publish-only key cannot read the console."), StatusCode::FORBIDDEN);
    }
    let id = app.admin_sessions.open(scope);
    let secure = if app.settings.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE_NAME}={id}; HttpOnly; SameSite=Strict; Path=/admin; Max-Age={}{secure}",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/admin").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(State(app): State<AppState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Err(refused) = form_access(&app, &headers, &form.csrf) {
        return *refused;
    }
    if let Some(id) = cookie_value(&headers, COOKIE_NAME) {
        app.admin_sessions.close(id);
    }
    let mut response = Redirect::to("/admin").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("herald_admin=; HttpOnly; SameSite=Strict; Path=/admin; Max-Age=0"),
    );
    response
}

/// The sum of every series of `name` in the Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, value| sum + value) // not sum(): an empty f64 sum is -0
}

fn connections(app: &AppState) -> serde_json::Value {
    // The console's three kinds: the Pusher door's connections count with what carries them.
    let (mut websocket, mut streams, mut polls) = (0, 0, 0);
    for (transport, count) in app.connections.open_by_transport() {
        match transport {
            Transport::WebSocket | Transport::PusherWebSocket => websocket += count,
            Transport::Sse | Transport::Ndjson | Transport::PusherHttp => streams += count,
            Transport::LongPoll => polls += count,
        }
    }
    let mut by_kind = serde_json::Map::new();
    by_kind.insert("websocket".to_string(), websocket.into());
    by_kind.insert("sse_ndjson".to_string(), streams.into());
    by_kind.insert("long_poll".to_string(), polls.into());
    by_kind.insert("total".to_string(), app.connections.open_connections().into());
    serde_json::Value::Object(by_kind)
}

/// What the overview's charts plot, read now.
fn stats_now(app: &AppState) -> serde_json::Value {
    let metrics = crate::metrics::render();
    json!({
        "time": herald_core::unix_millis(),
        "connections": connections(app),
        "channels": crate::control::reserved::visible(app.hub.channels()).len(),
        "publishes": metric_sum(&metrics, "herald_publications_total"),
        "refused": metric_sum(&metrics, "herald_refused_total"),
        "webhook_attempts": metric_sum(&metrics, "herald_webhook_attempts_total"),
        "presence_held": app.hub.held_presence_entries(),
    })
}

pub async fn stats(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if access(&app, &headers).is_none() {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in to the console first").into_response();
    }
    Json(stats_now(&app)).into_response()
}

/// The effective settings as `herald check-config` prints them (secrets are hidden by their
/// types' `Debug`), with the TLS keys left out and passwords in URLs masked.
fn settings_text(app: &AppState) -> String {
    let mut settings = (*app.settings).clone();
    let tls = settings.tls.take().is_some();
    let text = format!("{settings:#?}\ntls: {}", if tls { "on" } else { "off" });
    mask_url_passwords(&text)
}

/// `scheme://user:secret@host` → `scheme://user:***@host`, everywhere in `text`.
fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let authority_end = after.find(['/', '"', ' ', '\n', ',']).unwrap_or(after.len());
        let authority = &after[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

pub async fn console(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let Some(access) = access(&app, &headers) else {
        return login_page(&app, None, StatusCode::OK);
    };
    let mut channels = crate::control::reserved::visible(app.hub.channels());
    channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total_channels = channels.len();
    let mut rows = Vec::new();
    for (channel, subscribers) in channels.into_iter().take(CHANNELS_SHOWN) {
        let present = if app.hub.namespaces().options_for(&channel).presence {
            app.hub.presence_count(&channel).await.ok().flatten()
        } else {
            None
        };
        rows.push(minijinja::context! { name => channel.to_string(), subscribers, present });
    }
    // Webhook URLs (which may hold tokens) and the settings are for full keys, as in the API.
    let full = access.scope == KeyScope::Full;
    let webhooks: Vec<_> = app
        .webhooks
        .endpoints()
        .iter()
        .filter(|_| full)
        .map(|endpoint| {
            minijinja::context! {
                id => endpoint.id, url => endpoint.url, channels => endpoint.channels.join(", "),
                events => endpoint.events.join(", "), paused => endpoint.paused, active => endpoint.is_active(),
                disabled_reason => endpoint.disabled_reason,
            }
        })
        .collect();
    let engine = match &app.settings.engine {
        crate::config::EngineKind::Memory => "memory (this node alone)",
        crate::config::EngineKind::Redis { .. } => "redis",
        crate::config::EngineKind::Nats { .. } => "nats",
    };
    render(
        &app,
        "admin/console.html",
        "admin",
        minijinja::context! {
            title => "Admin",
            access => minijinja::context! { open => access.open, scope => scope_name(access.scope), csrf => access.csrf },
            node => minijinja::context! {
                listen => app.settings.listen.to_string(), engine,
                ready => app.hub.is_ready(), version => env!("CARGO_PKG_VERSION"),
            },
            connections => connections(&app),
            channels => rows,
            total_channels,
            webhooks,
            full,
            settings => full.then(|| settings_text(&app)),
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct ChannelQuery {
    name: String,
    published: Option<u64>,
    error: Option<String>,
    /// `channel.json`: publications after this offset.
    after: Option<u64>,
}

fn channel_name(text: &str) -> Result<ChannelName, Refused> {
    ChannelName::new(text)
        .map_err(|error| Box::new(refusal(StatusCode::BAD_REQUEST, &format!("{text:?} is not a channel: {error}"))))
}

/// A publication as the console shows it: data as the JSON text it was published as.
fn publication_view(publication: &herald_core::Publication) -> serde_json::Value {
    json!({
        "offset": publication.position.offset,
        "epoch": publication.position.epoch.to_string(),
        "time": publication.time_ms,
        "data": String::from_utf8_lossy(&publication.data),
    })
}

pub async fn channel(State(app): State<AppState>, headers: HeaderMap, Query(query): Query<ChannelQuery>) -> Response {
    let Some(access) = access(&app, &headers) else {
        return Redirect::to("/admin").into_response();
    };
    let channel = match channel_name(&query.name) {
        Ok(channel) => channel,
        Err(refused) => return *refused,
    };
    let options = app.hub.namespaces().options_for(&channel).clone();
    let history =
        app.hub.history(&channel, HistoryQuery { since: None, limit: RECENT_PUBLICATIONS, reverse: true }).await;
    let (publications, top) = match &history {
        Ok(page) => (page.publications.iter().map(|p| publication_view(p)).collect::<Vec<_>>(), page.top.offset),
        Err(_) => (Vec::new(), 0),
    };
    let presence = if options.presence {
        app.hub.presence(&channel).await.ok().flatten().map(|snapshot| {
            snapshot
                .clients
                .iter()
                .map(|entry| {
                    let info = entry.info.as_ref().map(|info| String::from_utf8_lossy(info).into_owned());
                    minijinja::context! { client => entry.client, user => entry.user, info }
                })
                .collect::<Vec<_>>()
        })
    } else {
        None
    };
    render(
        &app,
        "admin/channel.html",
        "admin",
        minijinja::context! {
            title => format!("{channel} · Admin"),
            channel => channel.to_string(),
            access => minijinja::context! { open => access.open, scope => scope_name(access.scope), csrf => access.csrf,
                may_publish => access.scope.may_publish() },
            subscribers => app.hub.subscriber_count(&channel),
            history_size => options.history_size,
            engine_error => history.err().map(|error| error.to_string()),
            publications, top, presence,
            published => query.published, error => query.error,
        },
    )
}

pub async fn channel_json(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ChannelQuery>,
) -> Response {
    if access(&app, &headers).is_none() {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in to the console first").into_response();
    }
    let channel = match channel_name(&query.name) {
        Ok(channel) => channel,
        Err(refused) => return *refused,
    };
    let history = app
        .hub
        .history(
            &channel,
            HistoryQuery { since: query.after, limit: RECENT_PUBLICATIONS, reverse: query.after.is_none() },
        )
        .await;
    match history {
        Ok(page) => Json(json!({
            "publications": page.publications.iter().map(|p| publication_view(p)).collect::<Vec<_>>(),
            "top": page.top.offset,
            "subscribers": app.hub.subscriber_count(&channel),
            "present": app.hub.presence_count(&channel).await.ok().flatten(),
        }))
        .into_response(),
        // The API's answer for an engine away: 503 engine_unavailable.
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct PublishForm {
    csrf: String,
    channel: String,
    data: String,
}

pub async fn publish(State(app): State<AppState>, headers: HeaderMap, Form(form): Form<PublishForm>) -> Response {
    let access = match form_access(&app, &headers, &form.csrf) {
        Ok(access) => access,
        Err(refused) => return *refused,
    };
    let back = |outcome: &str| {
        let name: String = form_urlencoded::byte_serialize(form.channel.as_bytes()).collect();
        Redirect::to(&format!("/admin/channel?name={name}&{outcome}")).into_response()
    };
    let error = |message: String| {
        let message: String = form_urlencoded::byte_serialize(message.as_bytes()).collect();
        back(&format!("error={message}"))
    };
    if !access.scope.may_publish() {
        return error("this session's key is read-only".to_string());
    }
    let channel = match ChannelName::new(&form.channel) {
        Ok(channel) => channel,
        Err(problem) => return error(format!("not a channel: {problem}")),
    };
    let data = match serde_json::from_str::<Box<serde_json::value::RawValue>>(&form.data) {
        Ok(data) => data,
        Err(problem) => return error(format!("the data is not JSON: {problem}")),
    };
    if data.get().len() > app.settings.limits.max_message_size.get() {
        return error(format!(
            "the data is larger than limits.max_message_size ({})",
            app.settings.limits.max_message_size
        ));
    }
    let request = PublishRequest { channel, data: crate::encode::payload(&data), idempotency_key: None };
    match crate::publish::publish(&app, request).await {
        Ok(published) => {
            crate::metrics::published(crate::metrics::PublishedVia::Api);
            back(&format!("published={}", published.position.offset))
        }
        Err(problem) => error(problem.body.message),
    }
}

pub async fn webhook(State(app): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(access) = access(&app, &headers) else {
        return Redirect::to("/admin").into_response();
    };
    if access.scope != KeyScope::Full {
        return refusal(StatusCode::FORBIDDEN, "Webhook endpoints need a full API key, as in the server API.");
    }
    let Some(endpoint) = app.webhooks.endpoint(&id) else {
        return refusal(StatusCode::NOT_FOUND, "No such webhook endpoint.");
    };
    let deliveries = match app.webhooks.outbox().deliveries(&id, None, None, 100).await {
        Ok(page) => page,
        Err(error) => return refusal(StatusCode::SERVICE_UNAVAILABLE, &format!("The outbox cannot be read: {error}")),
    };
    let deliveries: Vec<_> = deliveries
        .iter()
        .map(|delivery| {
            minijinja::context! {
                id => format!("msg_{}", delivery.id), event_type => delivery.event_type, channel => delivery.channel,
                state => delivery.state.as_str(), attempts => delivery.attempts, created_at => delivery.created_at,
                last_status => delivery.last_status, last_error => delivery.last_error, last_latency_ms => delivery.last_latency_ms,
            }
        })
        .collect();
    render(
        &app,
        "admin/webhook.html",
        "admin",
        minijinja::context! {
            title => format!("{id} · Admin"),
            access => minijinja::context! { open => access.open, scope => scope_name(access.scope), csrf => access.csrf,
                may_manage => access.scope == KeyScope::Full },
            endpoint => minijinja::context! {
                id => endpoint.id, url => endpoint.url, channels => endpoint.channels.join(", "),
                events => endpoint.events.join(", "), paused => endpoint.paused, active => endpoint.is_active(),
                disabled_reason => endpoint.disabled_reason, from_config => endpoint.from_config,
            },
            deliveries,
        },
    )
}

pub async fn webhook_action(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let access = match form_access(&app, &headers, &form.csrf) {
        Ok(access) => access,
        Err(refused) => return *refused,
    };
    if access.scope != KeyScope::Full {
        return refusal(StatusCode::FORBIDDEN, "Managing webhooks needs a full API key.");
    }
    let outcome = match action.as_str() {
        "pause" | "resume" => {
            let paused = action == "pause";
            app.webhooks
                .update_endpoint(&id, |endpoint| endpoint.set_paused(paused))
                .await
                .map(|changed| changed.is_some())
                .map_err(|error| error.to_string())
        }
        "replay" => app.webhooks.replay(&id, None).await.map(|_| true).map_err(|error| error.to_string()),
        _ => return refusal(StatusCode::NOT_FOUND, "No such action: pause, resume or replay."),
    };
    match outcome {
        Ok(true) => Redirect::to(&format!("/admin/webhooks/{id}")).into_response(),
        Ok(false) => refusal(StatusCode::NOT_FOUND, "No such webhook endpoint."),
        Err(error) => refusal(StatusCode::SERVICE_UNAVAILABLE, &format!("The outbox failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked_and_the_rest_kept() {
        assert_eq!(
            mask_url_passwords(
                "urls: [\"redis://:s3cret@10.0.0.1:6379/\", \"redis://cache:6379\"] postgres://herald:pw@db/herald"
            ),
            "urls: [\"redis://:***@10.0.0.1:6379/\", \"redis://cache:6379\"] postgres://herald:***@db/herald"
        );
        assert_eq!(mask_url_passwords("no urls here"), "no urls here");
    }

    #[test]
    fn metric_sums_add_up_every_series_of_a_name() {
        let text = "# TYPE herald_publishes_total counter\nherald_publishes_total{via=\"api\"} 3\n\
                    herald_publishes_total{via=\"websocket\"} 4\nherald_publishes_total_other 100\n";
        assert_eq!(metric_sum(text, "herald_publishes_total"), 7.0);
    }
}
