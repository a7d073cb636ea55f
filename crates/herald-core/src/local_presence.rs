//! This node's side of presence: it counts how many of a client's subscriptions hold each entry
//! (a poll client's requests overlap; a tab may subscribe twice), keeps an entry for a grace
//! period after the client's last subscription ends (a quick reconnect does not flap
//! leave/join), refreshes the leases of its entries, and sends the engine one call at a time per
//! entry, so a leave never overtakes the join it undoes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::channel::ChannelName;
use crate::engine::Engine;
use crate::presence::PresenceEntry;

/// How presence is kept on this node.
#[derive(Debug, Clone, Copy)]
pub struct PresenceTiming {
    /// How long an entry stays after the client's last subscription ended.
    pub grace: Duration,
    /// How long the engine keeps an entry nobody refreshes; refreshed every third of it.
    pub lease: Duration,
}

impl Default for PresenceTiming {
    fn default() -> Self {
        Self { grace: Duration::from_secs(5), lease: Duration::from_secs(30) }
    }
}

type Key = (ChannelName, String);

/// One entry as this node holds it.
struct Held {
    entry: PresenceEntry,
    /// Subscriptions of this client to this channel on this node.
    subscriptions: usize,
    /// When to leave, once `subscriptions` is 0.
    leave_at: Option<Instant>,
    /// Whether the engine has the entry (as far as this node knows).
    joined: bool,
    /// An engine call for this entry is under way; whoever made it settles the entry after.
    busy: bool,
}

/// What [`LocalPresence::settle`] must ask of the engine next.
enum Step {
    Join(PresenceEntry),
    Leave,
}

/// This node's presence entries (see the module docs).
pub struct LocalPresence {
    timing: PresenceTiming,
    held: Mutex<HashMap<Key, Held>>,
    last_refresh: Mutex<Instant>,
}

impl LocalPresence {
    pub fn new(timing: PresenceTiming) -> Self {
        Self { timing, held: Mutex::new(HashMap::new()), last_refresh: Mutex::new(Instant::now()) }
    }

    pub fn timing(&self) -> PresenceTiming {
        self.timing
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Held>> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more subscription of `entry.client` to `channel`; joins the engine's presence unless
    /// the client is already there (or still within its grace period). Refused (`false`) when
    /// that client id is held for another user: a client id does not carry someone's presence
    /// over to whoever presents it.
    pub async fn hold(&self, engine: &dyn Engine, channel: &ChannelName, entry: PresenceEntry) -> bool {
        let key = (channel.clone(), entry.client.clone());
        {
            let mut held = self.held();
            let record = held.entry(key.clone()).or_insert_with(|| Held {
                entry: entry.clone(),
                subscriptions: 0,
                leave_at: None,
                joined: false,
                busy: false,
            });
            if record.entry.user != entry.user {
                return false;
            }
            record.subscriptions += 1;
            record.leave_at = None;
        }
        self.settle(engine, &key).await;
        true
    }

    /// One subscription fewer. When it was the last, the client leaves after the grace period
    /// (`graceful`: the connection ended) or at the next settle (an explicit unsubscribe).
    /// Returns whether a settle is due now. Never waits, so `Drop` can call it.
    pub fn release(&self, channel: &ChannelName, client: &str, graceful: bool) -> bool {
        let key = (channel.clone(), client.to_string());
        let mut held = self.held();
        let Some(record) = held.get_mut(&key) else { return false };
        record.subscriptions = record.subscriptions.saturating_sub(1);
        if record.subscriptions > 0 {
            return false;
        }
        let grace = if graceful { self.timing.grace } else { Duration::ZERO };
        record.leave_at = Some(Instant::now() + grace);
        grace.is_zero()
    }

    /// Brings the engine in line with this node's record of `key`, one call at a time.
    pub async fn settle(&self, engine: &dyn Engine, key: &Key) {
        loop {
            let step = {
                let mut held = self.held();
                let Some(record) = held.get_mut(key) else { return };
                if record.busy {
                    return;
                }
                let leaving = record.subscriptions == 0 && record.leave_at.is_some_and(|at| at <= Instant::now());
                let step = if leaving {
                    Step::Leave
                } else if record.subscriptions > 0 && !record.joined {
                    Step::Join(record.entry.clone())
                } else {
                    return;
                };
                record.busy = true;
                step
            };
            let (channel, client) = key;
            // Should this future be dropped mid-call, the entry must not stay busy for ever.
            let busy = BusyGuard { presence: self, key: Some(key) };
            let done = match &step {
                Step::Join(entry) => engine.presence_join(channel, entry.clone(), self.timing.lease).await,
                Step::Leave => engine.presence_leave(channel, client).await,
            };
            busy.disarm();
            let mut held = self.held();
            let Some(record) = held.get_mut(key) else { return };
            record.busy = false;
            if let Err(error) = done {
                // Kept as it is: the next tick tries again.
                tracing::warn!(%channel, %client, %error, "presence update failed; retrying");
                return;
            }
            match step {
                Step::Join(_) => record.joined = true,
                Step::Leave => {
                    record.joined = false;
                    if record.subscriptions == 0 {
                        held.remove(key);
                        return;
                    }
                }
            }
        }
    }

    /// Leaves what is past its grace, retries failed calls and refreshes the engine's leases:
    /// called about once a second.
    pub async fn tick(&self, engine: &dyn Engine) {
        let now = Instant::now();
        let (due, refresh) = {
            let held = self.held();
            let due: Vec<Key> = held
                .iter()
                .filter(|(_, record)| {
                    !record.busy
                        && ((record.subscriptions == 0 && record.leave_at.is_some_and(|at| at <= now))
                            || (record.subscriptions > 0 && !record.joined))
                })
                .map(|(key, _)| key.clone())
                .collect();
            let mut last_refresh = self.last_refresh.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let refresh: Vec<Key> = if now.duration_since(*last_refresh) >= self.timing.lease / 3 {
                *last_refresh = now;
                held.iter().filter(|(_, record)| record.joined).map(|(key, _)| key.clone()).collect()
            } else {
                Vec::new()
            };
            (due, refresh)
        };
        for key in &due {
            self.settle(engine, key).await;
        }
        if refresh.is_empty() {
            return;
        }
        // Refreshing only extends what the engine still has, so it cannot undo a leave. What
        // the engine lost (a flushed Redis) is joined again by the next tick.
        match engine.presence_refresh(&refresh, self.timing.lease).await {
            Ok(missing) => {
                let mut held = self.held();
                for key in missing.into_iter().filter_map(|index| refresh.get(index)) {
                    if let Some(record) = held.get_mut(key)
                        && record.joined
                        && !record.busy
                    {
                        record.joined = false;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, entries = refresh.len(), "presence lease refresh failed"),
        }
    }

    /// Entries this node holds (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Clears an entry's `busy` flag if a settle is dropped during its engine call (the next tick
/// then settles it again).
struct BusyGuard<'a> {
    presence: &'a LocalPresence,
    key: Option<&'a Key>,
}

impl BusyGuard<'_> {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key
            && let Some(record) = self.presence.held().get_mut(key)
        {
            record.busy = false;
            // Unknown whether the call took effect: the next tick joins (idempotently) or leaves.
            record.joined = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::Hub;
    use crate::inbox::{Inbox, Push};
    use crate::memory::MemoryEngine;
    use crate::namespace::{NamespaceOptions, Namespaces};
    use crate::presence::{ChannelEvent, ChannelEventSink, PresenceChange};

    /// Records every reported event as (kind, channel, client).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(&'static str, String, String)>>);

    impl ChannelEventSink for Recorder {
        fn channel_event(&self, event: ChannelEvent) {
            let client = match &event {
                ChannelEvent::Presence(presence) => presence.entry.client.clone(),
                _ => String::new(),
            };
            self.0.lock().unwrap().push((event.kind(), event.channel().to_string(), client));
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(&'static str, String, String)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    const GRACE: Duration = Duration::from_secs(5);

    fn hub(grace: Duration) -> (Arc<Hub>, Arc<Recorder>) {
        let options = NamespaceOptions { presence: true, join_leave: true, ..Default::default() };
        let namespaces = Arc::new(Namespaces::new(options, HashMap::new()));
        let timing = PresenceTiming { grace, lease: Duration::from_secs(30) };
        let hub = Hub::new(Arc::new(MemoryEngine::new(namespaces.clone())), namespaces, timing);
        let recorder = Arc::new(Recorder::default());
        hub.set_event_sink(recorder.clone());
        (hub, recorder)
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    fn entry(client: &str, user: &str) -> PresenceEntry {
        PresenceEntry { client: client.into(), user: user.into(), info: None, since_ms: 1 }
    }

    fn event(kind: &'static str, client: &str) -> (&'static str, String, String) {
        (kind, "room".to_string(), client.to_string())
    }

    fn pushes(inbox: &mut Inbox) -> Vec<(PresenceChange, String)> {
        let mut seen = Vec::new();
        while let Some(push) = inbox.try_recv() {
            if let Push::Presence(event) = push {
                seen.push((event.change, event.entry.client.clone()));
            }
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn joins_and_leaves_are_pushed_reported_and_listed() {
        let (hub, recorder) = hub(Duration::ZERO);
        let room = channel("room");
        let (watcher, mut inbox) = hub.connect(64);
        hub.subscribe(&watcher, &room, None).await.unwrap();
        hub.join_presence(&room, entry("w", "")).await;
        let (alice, _) = hub.connect(64);
        hub.subscribe(&alice, &room, None).await.unwrap();
        hub.join_presence(&room, entry("a1", "alice")).await;
        hub.join_presence(&room, entry("a2", "alice")).await;

        let snapshot = hub.presence(&room).await.unwrap().unwrap();
        let clients: Vec<&str> = snapshot.clients.iter().map(|entry| entry.client.as_str()).collect();
        assert_eq!(clients, ["w", "a1", "a2"]);
        assert_eq!(snapshot.users(), [("alice", 2)], "anonymous clients are not users");
        assert_eq!(hub.presence_count(&room).await.unwrap(), Some(3));

        assert!(hub.leave_presence(&room, "a1", false), "an unsubscribe leaves at once");
        hub.settle_presence(&room, "a1").await;
        assert_eq!(hub.presence_count(&room).await.unwrap(), Some(2));
        assert_eq!(
            pushes(&mut inbox),
            [
                (PresenceChange::Join, "w".into()),
                (PresenceChange::Join, "a1".into()),
                (PresenceChange::Join, "a2".into()),
                (PresenceChange::Leave, "a1".into())
            ]
        );
        assert_eq!(
            recorder.take(),
            [
                event("channel.occupied", ""),
                event("presence.join", "w"),
                event("presence.join", "a1"),
                event("presence.join", "a2"),
                event("presence.leave", "a1"),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_back_within_the_grace_period_does_not_flap() {
        let (hub, recorder) = hub(GRACE);
        let room = channel("room");
        let (first, _) = hub.connect(16);
        hub.subscribe(&first, &room, None).await.unwrap();
        hub.join_presence(&room, entry("c", "u")).await;
        // The connection drops; the same client is back two seconds later.
        hub.unsubscribe(&first, &room).await;
        assert!(!hub.leave_presence(&room, "c", true));
        tokio::time::advance(Duration::from_secs(2)).await;
        hub.tick().await;
        let (second, _) = hub.connect(16);
        hub.subscribe(&second, &room, None).await.unwrap();
        hub.join_presence(&room, entry("c", "u")).await;
        tokio::time::advance(GRACE * 2).await;
        hub.tick().await;
        assert_eq!(recorder.take(), [event("channel.occupied", ""), event("presence.join", "c")]);

        // Gone for good: the leave and the vacated channel come once the grace has passed.
        hub.unsubscribe(&second, &room).await;
        hub.leave_presence(&room, "c", true);
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        hub.tick().await;
        assert_eq!(recorder.take(), []);
        tokio::time::advance(Duration::from_secs(1)).await;
        hub.tick().await;
        assert_eq!(recorder.take(), [event("presence.leave", "c"), event("channel.vacated", "")]);
        assert_eq!(hub.held_presence_entries(), 0);
        assert_eq!(hub.presence(&room).await.unwrap().unwrap().clients, []);
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_subscriptions_of_one_client_are_one_entry() {
        let (hub, recorder) = hub(Duration::ZERO);
        let room = channel("room");
        hub.join_presence(&room, entry("poller", "")).await;
        hub.join_presence(&room, entry("poller", "")).await;
        assert!(!hub.leave_presence(&room, "poller", false), "one subscription is left");
        assert!(hub.leave_presence(&room, "poller", false));
        hub.settle_presence(&room, "poller").await;
        assert_eq!(recorder.take(), [event("presence.join", "poller"), event("presence.leave", "poller")]);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_nobody_refreshes_expire_and_refreshed_ones_stay() {
        let options = NamespaceOptions { presence: true, join_leave: true, ..Default::default() };
        let namespaces = Arc::new(Namespaces::new(options, HashMap::new()));
        let engine = MemoryEngine::new(namespaces);
        let room = channel("room");
        let lease = Duration::from_secs(30);
        engine.presence_join(&room, entry("kept", ""), lease).await.unwrap();
        engine.presence_join(&room, entry("ghost", ""), lease).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        engine.presence_refresh(&[(room.clone(), "kept".into())], lease).await.unwrap();
        let missing = engine.presence_refresh(&[(room.clone(), "never-joined".into())], lease).await.unwrap();
        assert_eq!(missing, [0]);
        tokio::time::advance(Duration::from_secs(15)).await;
        engine.sweep().await;
        let clients: Vec<String> = engine.presence(&room).await.unwrap().into_iter().map(|e| e.client).collect();
        assert_eq!(clients, ["kept"], "the ghost's node stopped refreshing it; a refresh adds nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn the_hub_refreshes_its_entries_so_they_outlive_the_lease() {
        let (hub, recorder) = hub(Duration::ZERO);
        let room = channel("room");
        hub.join_presence(&room, entry("c", "")).await;
        for _ in 0..120 {
            tokio::time::advance(Duration::from_secs(1)).await;
            hub.tick().await;
            hub.sweep().await;
        }
        assert_eq!(hub.presence_count(&room).await.unwrap(), Some(1));
        assert_eq!(recorder.take(), [event("presence.join", "c")]);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_the_engine_lost_are_joined_again_by_the_next_ticks() {
        let (hub, recorder) = hub(Duration::ZERO);
        let room = channel("room");
        hub.join_presence(&room, entry("c", "")).await;
        // As if the engine's state was wiped behind the node's back (without events).
        hub.engine.presence_leave(&room, "c").await.unwrap();
        recorder.take();
        for _ in 0..12 {
            tokio::time::advance(Duration::from_secs(1)).await;
            hub.tick().await;
        }
        assert_eq!(hub.presence_count(&room).await.unwrap(), Some(1));
        assert_eq!(recorder.take(), [event("presence.join", "c")]);
    }

    /// Many clients subscribing, joining, leaving and coming back at once: every client's
    /// events alternate join/leave and end in a leave, occupied/vacated alternate, and nothing
    /// is left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn churn_leaves_consistent_events_and_no_leaked_entries() {
        let (hub, recorder) = hub(Duration::from_millis(20));
        let room = channel("room");
        let mut tasks = Vec::new();
        for client in 0..500 {
            let (hub, room) = (hub.clone(), room.clone());
            tasks.push(tokio::spawn(async move {
                let client = format!("c{client}");
                for round in 0..3 {
                    let (subscriber, _inbox) = hub.connect(4);
                    hub.subscribe(&subscriber, &room, None).await.unwrap();
                    hub.join_presence(&room, entry(&client, "u")).await;
                    tokio::task::yield_now().await;
                    hub.unsubscribe(&subscriber, &room).await;
                    let graceful = round % 2 == 0;
                    if hub.leave_presence(&room, &client, graceful) {
                        hub.settle_presence(&room, &client).await;
                    }
                }
            }));
        }
        let ticker = {
            let hub = hub.clone();
            tokio::spawn(async move {
                loop {
                    hub.tick().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        for task in tasks {
            task.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ticker.abort();
        hub.tick().await;

        assert_eq!(hub.presence_count(&room).await.unwrap(), Some(0));
        assert_eq!(hub.held_presence_entries(), 0);
        assert!(hub.channels().is_empty());
        let mut per_client: HashMap<String, Vec<&str>> = HashMap::new();
        let mut lifecycle = Vec::new();
        let events = recorder.take();
        for (kind, _, client) in &events {
            match *kind {
                "presence.join" | "presence.leave" => per_client.entry(client.clone()).or_default().push(kind),
                other => lifecycle.push(other),
            }
        }
        assert_eq!(per_client.len(), 500);
        for (client, kinds) in per_client {
            let alternating = kinds
                .iter()
                .enumerate()
                .all(|(index, kind)| *kind == if index % 2 == 0 { "presence.join" } else { "presence.leave" });
            assert!(alternating && kinds.len() % 2 == 0, "{client}: {kinds:?}");
        }
        assert!(!lifecycle.is_empty());
        for (index, kind) in lifecycle.iter().enumerate() {
            assert_eq!(*kind, if index % 2 == 0 { "channel.occupied" } else { "channel.vacated" });
        }
        assert_eq!(lifecycle.last(), Some(&"channel.vacated"));
    }
}
