//! One Pusher connection, whatever carries it (the WebSocket route, or the HTTP fallbacks):
//! its socket id, the channels it subscribed with their signatures checked, the members of
//! its presence channels, client events and their rate, and what each hub push becomes.
//!
//! The hub's presence is per client; Pusher's members are users. Each presence channel keeps
//! which clients belong to which user, so `member_added` and `member_removed` come once per
//! user however many connections it has, and never for the connection's own joins.
//!
//! A signed-in user (`pusher:signin`) has a channel of its own, `#server-to-user-{id}`, which
//! the session follows from the sign-in on: what the app sends the user arrives there once the
//! client subscribes to it, and the app's `terminate_connections` is an event on it, so it
//! reaches the user's connections on every node.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::{
    ChannelName, HistoryQuery, Inbox, PositionTracker, PresenceChange, PresenceEntry, PublishRequest, Push,
    SubscriberHandle,
};
use serde_json::value::RawValue;

use super::apps::{ChannelKind, PusherApp, USER_CHANNEL_PREFIX, is_cache};
use super::events::PusherPublication;
use crate::presence::ClientId;
use crate::state::AppState;
use crate::transport::limits::TokenBucket;
use herald_wire::pusher::{
    self as events, ChannelData, ClientMessage, Member, SignInData, StoredEvent, SubscribeData, UnsubscribeData,
    UserData,
};

/// The largest `channel_data` a presence subscription may carry, in bytes (Pusher's limit on
/// user info is 1 KB; the id and the JSON around it fit in the rest).
const MAX_CHANNEL_DATA: usize = 2048;
/// Pusher's longest user id.
const MAX_USER_ID: usize = 128;

/// The event on a user's channel that closes that user's connections.
pub const TERMINATE_EVENT: &str = "pusher_internal:terminate_connections";

/// What the connection sends: an event of its own, or a publication's shared form.
pub enum Outgoing {
    Own(String),
    Shared(PusherPublication),
}

/// Why the server closes a Pusher connection: a code in the ranges pusher-js acts on
/// (4000-4099: do not reconnect, 4100-4199: back off, 4200-4299: reconnect now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

pub struct PusherSession {
    app: AppState,
    pusher_app: Arc<PusherApp>,
    subscriber: SubscriberHandle,
    client: ClientId,
    socket_id: Arc<str>,
    positions: PositionTracker,
    channels: Vec<Subscription>,
    /// Client events' rate (made on the first client event: most connections send none).
    client_events: Option<Box<TokenBucket>>,
    /// The signed-in user, if any.
    user: Option<Box<SignedIn>>,
}

struct SignedIn {
    id: String,
    /// `#server-to-user-{id}`, followed from the sign-in on.
    channel: ChannelName,
    /// Whether the client subscribed to it: its events are passed on from then.
    delivering: bool,
}

struct Subscription {
    channel: ChannelName,
    name: Box<str>,
    kind: ChannelKind,
    members: Option<Box<Members>>,
}

/// A presence channel's members as this connection knows them.
struct Members {
    /// This connection's own user.
    me: String,
    /// Present clients and their users.
    clients: HashMap<String, String>,
    /// Users with how many clients each.
    users: HashMap<String, usize>,
}

impl Members {
    /// Adds a client; true when its user is new (and not this connection's own).
    fn add(&mut self, client: &str, user: &str) -> bool {
        if user.is_empty() || self.clients.contains_key(client) {
            return false;
        }
        self.clients.insert(client.to_string(), user.to_string());
        let count = self.users.entry(user.to_string()).or_default();
        *count += 1;
        *count == 1 && user != self.me
    }

    /// Removes a client; the user it was the last client of, if any.
    fn remove(&mut self, client: &str) -> Option<String> {
        let user = self.clients.remove(client)?;
        let count = self.users.get_mut(&user)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.users.remove(&user);
        (user != self.me).then_some(user)
    }
}

impl PusherSession {
    pub fn new(app: AppState, pusher_app: Arc<PusherApp>, queue_capacity: usize) -> (Self, Inbox) {
        let (subscriber, inbox) = if pusher_app.subscription_count {
            app.hub.connect_counting(queue_capacity)
        } else {
            app.hub.connect(queue_capacity)
        };
        let client = ClientId::random();
        let bits = u128::from_be_bytes(client.to_bytes());
        // Pusher's socket ids are two decimal numbers; the server SDKs check that shape.
        let socket_id = Arc::from(format!("{}.{}", (bits >> 64) as u64, bits as u64));
        let session = Self {
            app,
            pusher_app,
            subscriber,
            client,
            socket_id,
            positions: PositionTracker::default(),
            channels: Vec::new(),
            client_events: None,
            user: None,
        };
        (session, inbox)
    }

    pub fn app(&self) -> &AppState {
        &self.app
    }

    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    /// `pusher:connection_established`, the first event of every connection.
    pub fn greeting(&self) -> String {
        let activity_timeout = self.app.settings.pusher.activity_timeout.as_secs();
        events::connection_established(&self.socket_id, activity_timeout)
    }

    /// Handles one message from the client.
    pub async fn on_message(&mut self, text: &str) -> Result<Vec<Outgoing>, Close> {
        let message: ClientMessage<'_> = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(error) => return Ok(own(events::error(None, &format!("an event is a JSON object: {error}")))),
        };
        let outgoing = match &*message.event {
            "pusher:ping" => own(events::event("pusher:pong", None, "{}", None)),
            "pusher:pong" => Vec::new(),
            "pusher:subscribe" => self.subscribe(message.data).await,
            "pusher:unsubscribe" => self.unsubscribe(message.data).await,
            "pusher:signin" => self.sign_in(message.data).await,
            name if name.starts_with("client-") => self.client_event(&message).await,
            name => own(events::error(None, &format!("unknown event {name:?}"))),
        };
        Ok(outgoing)
    }

    async fn subscribe(&mut self, data: Option<&RawValue>) -> Vec<Outgoing> {
        let Some(request) = data.and_then(|data| serde_json::from_str::<SubscribeData>(data.get()).ok()) else {
            return own(events::error(None, "pusher:subscribe needs data {channel, auth?, channel_data?}"));
        };
        let name = request.channel.as_str();
        let refuse =
            |kind: &str, message: &str, status: u16| own(events::subscription_error(name, kind, message, status));
        if let Some(user) = name.strip_prefix(USER_CHANNEL_PREFIX) {
            return match &mut self.user {
                Some(signed_in) if signed_in.id == user => {
                    signed_in.delivering = true;
                    own(events::event("pusher_internal:subscription_succeeded", Some(name), "{}", None))
                }
                _ => refuse("AuthError", "a user's channel is for that user's signed-in connections", 403),
            };
        }
        let channel = match self.pusher_app.channel(name) {
            Ok(channel) => channel,
            Err(reason) => return refuse("InvalidChannel", &reason, 400),
        };
        if self.channels.iter().any(|subscription| subscription.channel == channel) {
            return refuse("AlreadySubscribed", "already subscribed to this channel", 400);
        }
        let limit = self.app.settings.limits.max_channels_per_connection.get();
        if self.channels.len() >= limit {
            return refuse("LimitReached", &format!("at most {limit} channels per connection"), 400);
        }
        let kind = ChannelKind::of(name);
        if kind == ChannelKind::Public && !self.app.hub.namespaces().options_for(&channel).anonymous {
            return refuse(
                "AuthError",
                "this app's namespace is closed to clients without a token: public channels need anonymous = true",
                403,
            );
        }
        if kind.needs_auth() {
            let channel_data = if kind == ChannelKind::Presence { request.channel_data.as_deref() } else { None };
            let app = &self.pusher_app;
            let signed = request.auth.as_deref().is_some_and(|auth| {
                super::signature::channel_auth_matches(auth, &app.key, &app.secret, &self.socket_id, name, channel_data)
            });
            if !signed {
                crate::metrics::refused("pusher_bad_signature");
                return refuse("AuthError", "invalid signature for this socket and channel", 401);
            }
        }
        let member = match kind {
            ChannelKind::Presence => match presence_member(request.channel_data.as_deref()) {
                Ok(member) => Some(member),
                Err(message) => return refuse("InvalidChannelData", &message, 400),
            },
            _ => None,
        };
        let subscribed = match self.app.hub.subscribe(&self.subscriber, &channel, None).await {
            Ok(subscribed) => subscribed,
            Err(error) => return refuse("ServerError", &format!("engine unavailable: {error}"), 503),
        };
        self.positions.track(channel.clone(), subscribed.position.clone());
        let mut subscription = Subscription { channel: channel.clone(), name: name.into(), kind, members: None };
        let max_members = self.app.settings.pusher.max_presence_members;
        let succeeded_data = match member {
            Some((user, info)) => {
                let entry = PresenceEntry {
                    client: self.client.to_string(),
                    user: user.clone(),
                    info,
                    since_ms: herald_core::unix_millis(),
                };
                self.app.hub.join_presence(&channel, entry).await;
                let present = self.app.hub.presence(&channel).await.ok().flatten().map(|snapshot| snapshot.clients);
                let mut members = Members { me: user, clients: HashMap::new(), users: HashMap::new() };
                let present: Vec<_> = present.into_iter().flatten().filter(|entry| !entry.user.is_empty()).collect();
                let mut users: Vec<&str> = present.iter().map(|entry| entry.user.as_str()).collect();
                users.sort_unstable();
                users.dedup();
                if users.len() > max_members {
                    // Full: this connection's join is undone, as is its subscription.
                    let client = self.client.to_string();
                    if self.app.hub.leave_presence(&channel, &client, false) {
                        self.app.hub.settle_presence(&channel, &client).await;
                    }
                    self.positions.forget(&channel);
                    self.app.hub.unsubscribe(&self.subscriber, &channel).await;
                    let message = format!("a presence channel has at most {max_members} members");
                    return refuse("LimitReached", &message, 403);
                }
                let infos: Vec<_> = present.iter().map(user_info).collect();
                let listed: Vec<Member<'_>> = present
                    .iter()
                    .zip(&infos)
                    .map(|(entry, info)| Member { user_id: &entry.user, user_info: info.as_deref() })
                    .collect();
                for entry in &present {
                    members.add(&entry.client, &entry.user);
                }
                subscription.members = Some(Box::new(members));
                events::presence_data(&listed)
            }
            None => "{}".to_string(),
        };
        let mut outgoing =
            own(events::event("pusher_internal:subscription_succeeded", Some(name), &succeeded_data, None));
        self.channels.push(subscription);
        if is_cache(name) {
            outgoing.push(self.cached_event(&channel, name, subscribed.position.offset).await);
        }
        outgoing
    }

    /// A cache channel's last event up to `top` (later ones come live), or `pusher:cache_miss`.
    async fn cached_event(&self, channel: &ChannelName, name: &str, top: u64) -> Outgoing {
        let query = HistoryQuery { since: Some(top.saturating_add(1)), limit: 1, reverse: true };
        match self.app.hub.history(channel, query).await {
            Ok(page) if !page.publications.is_empty() => Outgoing::Shared(PusherPublication::of(&page.publications[0])),
            _ => {
                // Recorded beside the subscribe, not in its way (and at most once a minute per
                // channel: see `Webhooks::cache_miss`).
                let (app, channel) = (self.app.clone(), channel.clone());
                self.app.tasks.spawn(async move {
                    if let Err(error) = app.webhooks.cache_miss(&channel).await {
                        tracing::warn!(%error, "a cache miss could not be recorded for the app's webhooks");
                    }
                });
                Outgoing::Own(events::event("pusher:cache_miss", Some(name), "{}", None))
            }
        }
    }

    async fn unsubscribe(&mut self, data: Option<&RawValue>) -> Vec<Outgoing> {
        let Some(request) = data.and_then(|data| serde_json::from_str::<UnsubscribeData>(data.get()).ok()) else {
            return own(events::error(None, "pusher:unsubscribe needs data {channel}"));
        };
        if let Some(user) = &mut self.user
            && request.channel.strip_prefix(USER_CHANNEL_PREFIX) == Some(user.id.as_str())
        {
            // Still followed, for terminate_connections; its events just stop.
            user.delivering = false;
            return Vec::new();
        }
        let Some(index) = self.channels.iter().position(|subscription| *subscription.name == request.channel) else {
            // Pusher answers nothing either: the client may unsubscribe before the server heard.
            return Vec::new();
        };
        let subscription = self.channels.swap_remove(index);
        self.positions.forget(&subscription.channel);
        self.app.hub.unsubscribe(&self.subscriber, &subscription.channel).await;
        let client = self.client.to_string();
        if self.app.hub.leave_presence(&subscription.channel, &client, false) {
            self.app.hub.settle_presence(&subscription.channel, &client).await;
        }
        Vec::new()
    }

    /// `pusher:signin {auth, user_data}`: the app's signature over the user's data makes this
    /// connection that user's, and its channel is followed from now.
    async fn sign_in(&mut self, data: Option<&RawValue>) -> Vec<Outgoing> {
        let refuse = |message: &str| own(events::error(Some(4009), message));
        let Some(request) = data.and_then(|data| serde_json::from_str::<SignInData>(data.get()).ok()) else {
            return refuse("pusher:signin needs data {auth, user_data}");
        };
        if self.user.is_some() {
            return refuse("this connection has signed in already");
        }
        let app = &self.pusher_app;
        if !super::signature::user_auth_matches(
            &request.auth,
            &app.key,
            &app.secret,
            &self.socket_id,
            &request.user_data,
        ) {
            crate::metrics::refused("pusher_bad_signature");
            return refuse("invalid signature for this socket and user data");
        }
        let Ok(user) = serde_json::from_str::<UserData>(&request.user_data) else {
            return refuse("user_data must be JSON with a string id");
        };
        if user.id.is_empty() || user.id.len() > MAX_USER_ID {
            return refuse(&format!("a user id is 1 to {MAX_USER_ID} characters"));
        }
        let channel = match self.pusher_app.user_channel(&user.id) {
            Ok(channel) => channel,
            Err(reason) => return refuse(&reason),
        };
        match self.app.hub.subscribe(&self.subscriber, &channel, None).await {
            Ok(subscribed) => self.positions.track(channel.clone(), subscribed.position),
            Err(error) => return refuse(&format!("engine unavailable: {error}")),
        }
        self.user = Some(Box::new(SignedIn { id: user.id, channel, delivering: false }));
        own(events::signin_success(&request.user_data))
    }

    /// `client-*` on a private or presence channel this connection subscribed: published to
    /// the channel's other subscribers, at most `client_event_rate` a second.
    async fn client_event(&mut self, message: &ClientMessage<'_>) -> Vec<Outgoing> {
        let name = message.channel.as_deref().unwrap_or_default();
        let Some(subscription) = self.channels.iter().find(|subscription| *subscription.name == *name) else {
            return own(events::error(
                None,
                &format!("client event on {name:?}, which this connection has not subscribed"),
            ));
        };
        if !matches!(subscription.kind, ChannelKind::Private | ChannelKind::Presence) {
            return own(events::error(
                None,
                "client events are for private and presence channels (not encrypted ones)",
            ));
        }
        if !self.app.hub.namespaces().options_for(&subscription.channel).client_publish {
            return own(events::error(None, "client events are off for this app (client_publish = false)"));
        }
        let rate = self.app.settings.pusher.client_event_rate;
        let bucket = self.client_events.get_or_insert_with(|| {
            Box::new(TokenBucket::new(NonZeroUsize::new(rate as usize).unwrap_or(NonZeroUsize::MIN)))
        });
        if !bucket.try_take() {
            crate::metrics::refused("rate_limited");
            return own(events::error(Some(4301), &format!("client event rejected: at most {rate} a second")));
        }
        let user_id = subscription.members.as_ref().map(|members| members.me.as_str());
        let null = RawValue::NULL;
        let stored = StoredEvent {
            event: message.event.clone(),
            data: message.data.unwrap_or(null),
            socket_id: Some(self.socket_id.as_ref().into()),
            user_id: user_id.map(Into::into),
        };
        let data = serde_json::to_string(&stored).unwrap_or_default();
        let max = self.app.settings.limits.max_message_size.get();
        if data.len() > max {
            return own(events::error(None, &format!("client event too large: at most {max} bytes")));
        }
        let request =
            PublishRequest { channel: subscription.channel.clone(), data: Bytes::from(data), idempotency_key: None };
        match crate::publish::publish(&self.app, request).await {
            Ok(_) => {
                crate::metrics::published(crate::metrics::PublishedVia::Pusher);
                Vec::new()
            }
            Err(error) => own(events::error(None, &error.body.message)),
        }
    }

    /// What a push becomes for this connection, if it gets it; `Err`: the app has ended the
    /// connection.
    pub fn on_push(&mut self, push: Push) -> Result<Option<Outgoing>, Close> {
        match push {
            Push::Publication(publication) => {
                if !self.positions.advance(&publication) {
                    return Ok(None);
                }
                let form = PusherPublication::of(&publication);
                if let Some(user) = &self.user
                    && user.channel == publication.channel
                {
                    if form.event.as_deref() == Some(TERMINATE_EVENT) {
                        return Err(Close { code: 4009, reason: "connection terminated by the app" });
                    }
                    if !user.delivering {
                        return Ok(None);
                    }
                }
                if form.exclude.as_deref() == Some(&*self.socket_id) {
                    return Ok(None);
                }
                Ok(Some(Outgoing::Shared(form)))
            }
            Push::Presence(event) => Ok(self.member_event(&event)),
            // The Pusher door's connections end by the app's own terminate_connections.
            Push::Control(_) => Ok(None),
            // Pusher counts every kind of channel but presence ones (which have members).
            Push::Count(count) => Ok(self
                .channels
                .iter()
                .any(|subscription| subscription.channel == count.channel && subscription.kind != ChannelKind::Presence)
                .then(|| Outgoing::Shared(PusherPublication::of_count(&count)))),
        }
    }

    /// A presence channel's join or leave as Pusher's member event, when it changes the users.
    fn member_event(&mut self, event: &herald_core::PresenceEvent) -> Option<Outgoing> {
        let subscription = self.channels.iter_mut().find(|subscription| subscription.channel == event.channel)?;
        let members = subscription.members.as_mut()?;
        let entry = &event.entry;
        let (name, data) = match event.change {
            PresenceChange::Join if members.add(&entry.client, &entry.user) => {
                let info = user_info(entry);
                let member = Member { user_id: &entry.user, user_info: info.as_deref() };
                ("pusher_internal:member_added", events::member_added_data(&member))
            }
            PresenceChange::Leave => {
                ("pusher_internal:member_removed", events::member_removed_data(&members.remove(&entry.client)?))
            }
            PresenceChange::Join => return None,
        };
        Some(Outgoing::Own(events::event(name, Some(&subscription.name), &data, None)))
    }

    /// Leaves every channel: the connection is gone (its members stay for the grace period).
    pub async fn leave_all(&mut self) {
        let client = self.client.to_string();
        for subscription in std::mem::take(&mut self.channels) {
            self.app.hub.leave_presence(&subscription.channel, &client, true);
            self.app.hub.unsubscribe(&self.subscriber, &subscription.channel).await;
        }
        if let Some(user) = self.user.take() {
            self.app.hub.unsubscribe(&self.subscriber, &user.channel).await;
        }
    }
}

fn own(event: String) -> Vec<Outgoing> {
    vec![Outgoing::Own(event)]
}

/// The user and user info of a presence subscription's `channel_data`.
fn presence_member(channel_data: Option<&str>) -> Result<(String, Option<Bytes>), String> {
    let text = channel_data.ok_or("a presence channel's subscription needs channel_data")?;
    if text.len() > MAX_CHANNEL_DATA {
        return Err(format!("channel_data is {} bytes; at most {MAX_CHANNEL_DATA}", text.len()));
    }
    let data: ChannelData =
        serde_json::from_str(text).map_err(|error| format!("channel_data must be {{user_id, user_info?}}: {error}"))?;
    let user = data.user_id.into_string();
    if user.is_empty() || user.len() > MAX_USER_ID {
        return Err(format!("user_id must be 1 to {MAX_USER_ID} characters"));
    }
    // Kept on one line, like every payload of the hub.
    Ok((user, data.user_info.map(|info| crate::encode::payload(&info))))
}

/// A presence entry's user info as JSON, if it has one.
fn user_info(entry: &PresenceEntry) -> Option<Box<RawValue>> {
    entry.info.as_ref().and_then(|info| serde_json::from_slice(info).ok())
}
