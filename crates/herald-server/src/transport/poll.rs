//! Long- and short-polling: `GET /poll?channel=..[&since=CURSOR][&timeout=S]`.
//!
//! A poll answers at once with what was missed after the cursor; otherwise it parks (an async
//! wait on its queue: no thread, no busy loop) until a publication (or a join or leave, in
//! `join_leave` namespaces: the answer's `events`) arrives or the timeout ends.
//! `timeout=0` is the short poll: it only reads, never subscribes (nor joins presence).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::{Inbox, PresenceEvent, Publication, Push};

use crate::error::ApiError;
use bytes::Bytes;

use crate::encode::EncodedPresence;
use crate::encode::publications_array;
use crate::metrics::Transport;
use crate::state::AppState;
use crate::transport::handoff::Handoff;
use crate::transport::limits::ConnectionPermit;
use crate::transport::origin::check_origin;
use crate::transport::subscription::{HttpSubscription, SubscriptionQuery, Unrecovered, parse_timeout};

pub const CURSOR_HEADER: HeaderName = HeaderName::from_static("herald-cursor");

pub async fn poll(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    direct: Option<Extension<Handoff<OpenPoll>>>,
) -> Response {
    let poll = match OpenPoll::open(&app, peer, &headers, query.as_deref()).await {
        Ok(poll) => poll,
        Err(error) => return error.into_response(),
    };
    // On a connection Herald serves itself, a poll that waits does so there, outside the
    // router: only the poll's own state is kept while it is parked.
    if let Some(Extension(slot)) = direct
        && poll.will_wait()
    {
        slot.put(poll);
        return StatusCode::OK.into_response();
    }
    poll.answer().await.unwrap_or_else(IntoResponse::into_response)
}

/// A poll whose subscription is open: it answers with what it has, or waits for something.
pub struct OpenPoll {
    app: AppState,
    subscription: HttpSubscription,
    inbox: Inbox,
    unrecovered: Vec<Unrecovered>,
    messages: Vec<Arc<Publication>>,
    live: bool,
    wait: Duration,
    max: usize,
    /// When the client's token expires, if it does: a parked poll is answered then.
    expiry: crate::transport::Expiry,
    _permit: Option<ConnectionPermit>,
}

impl OpenPoll {
    async fn open(
        app: &AppState,
        peer: SocketAddr,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Self, ApiError> {
        check_origin(&app.settings, headers)?;
        let query = SubscriptionQuery::parse(query, headers, app, true)?;
        let settings = &app.settings.poll;
        let wait = parse_timeout(query.timeout.as_deref(), settings.default_timeout, settings.max_timeout)?;
        let live = !wait.is_zero() && !app.shutdown.is_cancelled();
        let permit = if live { Some(app.connections.admit(peer.ip(), Transport::LongPoll)?) } else { None };
        let max = settings.max_messages.get();
        let expiry = crate::transport::expiry(&query.identity);
        // Room for a full answer plus what arrives while it is taken, so a prefix is never lost.
        // Boxed: opening is done once, and its state need not stay in a parked poll's.
        let (mut subscription, inbox, opening) = Box::pin(HttpSubscription::open(app, &query, live, max + 16)).await?;
        let mut messages = Vec::new();
        take(&mut subscription, &mut messages, opening.missed.into_iter(), max);
        Ok(Self {
            app: app.clone(),
            subscription,
            inbox,
            unrecovered: opening.unrecovered,
            messages,
            live,
            wait,
            max,
            expiry,
            _permit: permit,
        })
    }

    /// Whether the poll waits for something to answer with.
    fn will_wait(&self) -> bool {
        self.live && self.messages.is_empty() && self.unrecovered.is_empty()
    }

    /// Waits if it must, then answers.
    pub async fn answer(mut self) -> Result<Response, ApiError> {
        let (app, max) = (self.app.clone(), self.max);
        let subscription = &mut self.subscription;
        let mut messages = std::mem::take(&mut self.messages);
        let mut events: Vec<Arc<PresenceEvent>> = Vec::new();
        if messages.is_empty() && self.unrecovered.is_empty() && self.live {
            let deadline = tokio::time::Instant::now() + self.wait;
            let before_wait = subscription.positions.clone();
            let mut batch = Vec::new();
            while messages.is_empty() && events.is_empty() {
                tokio::select! {
                    biased;
                    () = app.shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    // As on WebSocket and SSE: an expired token receives nothing more.
                    () = crate::transport::until_expiry(&mut self.expiry) => {
                        return Err(crate::auth::TokenError::Expired.into());
                    }
                    received = self.inbox.recv_many(&mut batch, max) => {
                        if received.is_err() {
                            // Lagged: answered from history below.
                            break;
                        }
                        let publications = batch.drain(..).filter_map(|push| match push {
                            Push::Publication(publication) => Some(publication),
                            Push::Presence(event) => {
                                events.push(event);
                                None
                            }
                            // Polls are requests, not connections: no control reaches them.
                            Push::Count(_) | Push::Control(_) => None,
                        });
                        take(subscription, &mut messages, publications, max);
                    }
                }
            }
            if self.inbox.is_lagged() {
                // The queue overflowed while we were away, so what it holds may have a gap: take
                // the answer from history instead, which has everything in order.
                messages.clear();
                subscription.positions = before_wait.clone();
                for (channel, position) in before_wait.iter() {
                    let caught_up = Box::pin(app.hub.catch_up(channel, Some(position))).await?;
                    take(subscription, &mut messages, caught_up.missed.into_iter(), max);
                }
            }
        }
        let unrecovered = &self.unrecovered;

        let cursor = subscription.cursor();
        let cursor_header = HeaderValue::from_str(&cursor).map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "cursor is not a valid header value")
        })?;
        if messages.is_empty() && events.is_empty() && unrecovered.is_empty() {
            return Ok((StatusCode::NO_CONTENT, [(CURSOR_HEADER, cursor_header)]).into_response());
        }
        let encoded_events: Vec<Bytes> = events.iter().map(|event| EncodedPresence::of(event).typed).collect();
        let events_json = (!events.is_empty()).then(|| {
            herald_wire::publication::array(
                encoded_events.iter().map(|typed| std::str::from_utf8(typed).unwrap_or("null")),
            )
        });
        let oldest_ms = messages.iter().map(|publication| publication.time_ms).min().unwrap_or_default();
        crate::metrics::delivered(Transport::LongPoll, messages.len(), oldest_ms);
        let notices: Vec<_> = unrecovered.iter().map(Unrecovered::wire).collect();
        let body =
            herald_wire::http::poll_answer(&publications_array(&messages), &cursor, events_json.as_deref(), &notices);
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (CURSOR_HEADER, cursor_header)],
            body,
        )
            .into_response())
    }
}

/// Moves publications new to the subscription into `messages`, in order, up to `max`.
fn take(
    subscription: &mut HttpSubscription,
    messages: &mut Vec<Arc<Publication>>,
    publications: impl Iterator<Item = Arc<Publication>>,
    max: usize,
) {
    for publication in publications {
        if messages.len() >= max {
            break;
        }
        if subscription.positions.advance(&publication) {
            messages.push(publication);
        }
    }
}
