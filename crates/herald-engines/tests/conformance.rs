//! One suite for every engine: the memory engine always, Redis when `HERALD_TEST_REDIS_URL` is
//! set (`.ci/run` sets it; elsewhere the Redis cases skip, saying so). Each case uses channels of
//! its own, so runs never see each other's data on a shared Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use herald_core::{
    ChannelEvent, ChannelName, Engine, FanOut, HistoryQuery, MemoryEngine, NamespaceOptions, Namespaces,
    PresenceChange, PresenceEntry, PresenceEvent, Publication, PublishRequest,
};
use herald_engines::{NatsEngine, RedisEngine};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What an engine handed to its node.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<(String, u64)>>,
    presence: Mutex<Vec<(PresenceChange, String)>>,
    reports: Mutex<Vec<(&'static str, String)>>,
}

impl FanOut for Recorder {
    fn deliver(&self, publication: Arc<Publication>) {
        self.delivered.lock().unwrap().push((publication.channel.to_string(), publication.position.offset));
    }
    fn deliver_presence(&self, event: Arc<PresenceEvent>) {
        self.presence.lock().unwrap().push((event.change, event.entry.client.clone()));
    }
    fn report(&self, event: ChannelEvent) {
        self.reports.lock().unwrap().push((event.kind(), event.channel().to_string()));
    }
}

impl Recorder {
    fn offsets(&self, channel: &ChannelName) -> Vec<u64> {
        self.delivered.lock().unwrap().iter().filter(|(c, _)| c == channel.as_str()).map(|(_, o)| *o).collect()
    }
}

fn namespaces() -> Arc<Namespaces> {
    let default = NamespaceOptions {
        history_size: 5,
        history_ttl: Duration::from_secs(60),
        presence: true,
        join_leave: true,
        ..Default::default()
    };
    Arc::new(Namespaces::new(default, HashMap::new()))
}

/// A fresh channel name for one case.
fn channel(name: &str) -> ChannelName {
    ChannelName::new(&format!("t{:x}:{name}", fastrand::u64(..))).unwrap()
}

fn request(channel: &ChannelName, data: &str, key: Option<&str>) -> PublishRequest {
    PublishRequest {
        channel: channel.clone(),
        data: Bytes::from(data.to_string()),
        idempotency_key: key.map(str::to_string),
    }
}

fn entry(client: &str, user: &str) -> PresenceEntry {
    PresenceEntry {
        client: client.into(),
        user: user.into(),
        info: Some(Bytes::from_static(b"{\"n\":1}")),
        since_ms: 5,
    }
}

/// A node: an engine attached to a recorder.
struct Node {
    engine: Arc<dyn Engine>,
    recorder: Arc<Recorder>,
}

impl Node {
    fn new(engine: Arc<dyn Engine>) -> Self {
        let recorder = Arc::new(Recorder::default());
        let fan_out: Weak<dyn FanOut> = Arc::downgrade(&(recorder.clone() as Arc<dyn FanOut>));
        engine.attach(fan_out);
        Self { engine, recorder }
    }
}

async fn memory() -> Option<Node> {
    Some(Node::new(Arc::new(MemoryEngine::new(namespaces()))))
}

async fn redis() -> Option<Node> {
    redis_on(TaskTracker::new(), CancellationToken::new()).await
}

/// A Redis node whose tasks run on `tasks` and end on `shutdown`.
async fn redis_on(tasks: TaskTracker, shutdown: CancellationToken) -> Option<Node> {
    let Ok(url) = std::env::var("HERALD_TEST_REDIS_URL") else {
        eprintln!("skipped: HERALD_TEST_REDIS_URL is unset (.ci/run sets it)");
        return None;
    };
    let engine = RedisEngine::start(&[url], namespaces(), tasks, shutdown).await.expect("redis engine starts");
    let node = Node::new(engine);
    wait_until("redis ready", || node.engine.is_ready()).await;
    Some(node)
}

async fn nats() -> Option<Node> {
    nats_on(TaskTracker::new(), CancellationToken::new()).await
}

/// A NATS node whose tasks run on `tasks` and end on `shutdown`.
async fn nats_on(tasks: TaskTracker, shutdown: CancellationToken) -> Option<Node> {
    let Ok(url) = std::env::var("HERALD_TEST_NATS_URL") else {
        eprintln!("skipped: HERALD_TEST_NATS_URL is unset (.ci/run sets it)");
        return None;
    };
    let engine = NatsEngine::start(&url, namespaces(), tasks, shutdown).await.expect("nats engine starts");
    let node = Node::new(engine);
    wait_until("nats ready", || node.engine.is_ready()).await;
    Some(node)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn offsets_are_contiguous_and_history_keeps_the_newest(node: Node) {
    let (a, b) = (channel("a"), channel("b"));
    let mut offsets = Vec::new();
    for n in 0..7 {
        offsets.push(node.engine.publish(vec![request(&a, &n.to_string(), None)]).await.remove(0).unwrap().position);
    }
    assert_eq!(offsets.iter().map(|p| p.offset).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    assert!(offsets.iter().all(|p| p.epoch == offsets[0].epoch));
    let other = node.engine.publish(vec![request(&b, "x", None)]).await.remove(0).unwrap();
    assert_eq!(other.position.offset, 1);

    let page = node.engine.history(&a, HistoryQuery::after(0)).await.unwrap();
    let kept: Vec<u64> = page.publications.iter().map(|p| p.position.offset).collect();
    assert_eq!(kept, [3, 4, 5, 6, 7], "a history of 5");
    assert_eq!((page.top.offset, page.oldest), (7, 3));
    assert_eq!(&page.publications[0].data[..], b"2");
    let reverse = node.engine.history(&a, HistoryQuery { since: Some(7), limit: 2, reverse: true }).await.unwrap();
    assert_eq!(reverse.publications.iter().map(|p| p.position.offset).collect::<Vec<_>>(), [6, 5]);
    let top = node.engine.history(&channel("never"), HistoryQuery::top_only()).await.unwrap();
    assert_eq!((top.top.offset, top.oldest, top.publications.len()), (0, 1, 0));
}

async fn idempotency_keys_publish_once(node: Node) {
    let a = channel("a");
    let first = node.engine.publish(vec![request(&a, "1", Some("k"))]).await.remove(0).unwrap();
    let again = node.engine.publish(vec![request(&a, "1", Some("k"))]).await.remove(0).unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(again.position, first.position);
    let next = node.engine.publish(vec![request(&a, "2", Some("other"))]).await.remove(0).unwrap();
    assert_eq!(next.position.offset, 2);
}

async fn subscribed_nodes_get_every_publication_in_order(node: Node) {
    let a = channel("a");
    node.engine.subscribe(std::slice::from_ref(&a)).await.unwrap();
    let batch: Vec<_> = (0..50).map(|n| request(&a, &n.to_string(), None)).collect();
    let outcomes = node.engine.publish(batch).await;
    assert!(outcomes.iter().all(Result::is_ok));
    wait_until("50 deliveries", || node.recorder.offsets(&a).len() == 50).await;
    assert_eq!(node.recorder.offsets(&a), (1..=50).collect::<Vec<_>>());
    assert!(node.recorder.reports.lock().unwrap().contains(&("channel.occupied", a.to_string())));
    node.engine.unsubscribe(std::slice::from_ref(&a)).await.unwrap();
    assert!(node.recorder.reports.lock().unwrap().contains(&("channel.vacated", a.to_string())));
}

/// Subscribes and unsubscribes of one channel racing each other (their engine calls queued
/// in any order) leave the node subscribed exactly while it has interest.
async fn racing_subscribes_and_unsubscribes_leave_the_interest_in_force(node: Node) {
    let a = channel("a");
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (engine, a) = (node.engine.clone(), a.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    engine.subscribe(std::slice::from_ref(&a)).await.unwrap();
                    engine.unsubscribe(std::slice::from_ref(&a)).await.unwrap();
                }
            })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap();
    }
    node.engine.subscribe(std::slice::from_ref(&a)).await.unwrap();
    for n in 0..3 {
        node.engine.publish(vec![request(&a, &n.to_string(), None)]).await.remove(0).unwrap();
    }
    wait_until("3 deliveries", || node.recorder.offsets(&a).len() == 3).await;
    assert_eq!(node.recorder.offsets(&a), [1, 2, 3]);
}

/// Publishers of one channel at once on one node get contiguous offsets, each once; other
/// channels publish beside them.
async fn concurrent_publishers_get_contiguous_offsets(node: Node) {
    let (a, others) = (channel("a"), (0..4).map(|n| channel(&format!("other{n}"))).collect::<Vec<_>>());
    let mut publishers = Vec::new();
    for n in 0..8 {
        let (engine, target) = (node.engine.clone(), if n % 2 == 0 { a.clone() } else { others[n / 2].clone() });
        publishers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for m in 0..10 {
                let published = engine.publish(vec![request(&target, &m.to_string(), None)]).await.remove(0).unwrap();
                offsets.push(published.position.offset);
            }
            (target, offsets)
        }));
    }
    let mut on_a = Vec::new();
    for publisher in publishers {
        let (target, offsets) = publisher.await.unwrap();
        if target == a {
            on_a.extend(offsets);
        } else {
            assert_eq!(offsets, (1..=10).collect::<Vec<_>>());
        }
    }
    on_a.sort_unstable();
    assert_eq!(on_a, (1..=40).collect::<Vec<_>>());
}

async fn presence_joins_leaves_and_expires(node: Node) {
    let room = channel("room");
    node.engine.subscribe(std::slice::from_ref(&room)).await.unwrap();
    let lease = Duration::from_secs(30);
    node.engine.presence_join(&room, entry("c1", "alice"), lease).await.unwrap();
    node.engine.presence_join(&room, entry("c1", "alice"), lease).await.unwrap();
    node.engine.presence_join(&room, entry("c2", ""), Duration::from_millis(200)).await.unwrap();
    let present = node.engine.presence(&room).await.unwrap();
    assert_eq!(present.iter().map(|e| e.client.as_str()).collect::<Vec<_>>(), ["c1", "c2"]);
    assert_eq!(present[0], entry("c1", "alice"));
    assert_eq!(node.engine.presence_count(&room).await.unwrap(), 2);
    let missing = node
        .engine
        .presence_refresh(&[(room.clone(), "c1".into()), (room.clone(), "ghost".into())], lease)
        .await
        .unwrap();
    assert_eq!(missing, [1]);
    node.engine.presence_leave(&room, "c1").await.unwrap();
    node.engine.presence_leave(&room, "c1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    node.engine.sweep().await;
    assert_eq!(node.engine.presence_count(&room).await.unwrap(), 0, "c2's lease ran out");
    let expected = [
        (PresenceChange::Join, "c1"),
        (PresenceChange::Join, "c2"),
        (PresenceChange::Leave, "c1"),
        (PresenceChange::Leave, "c2"),
    ];
    wait_until("four presence events", || node.recorder.presence.lock().unwrap().len() == 4).await;
    let seen: Vec<(PresenceChange, String)> = node.recorder.presence.lock().unwrap().clone();
    assert_eq!(seen, expected.map(|(change, client)| (change, client.to_string())));
    let reports: Vec<&str> = node
        .recorder
        .reports
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, c)| c == room.as_str())
        .map(|(kind, _)| *kind)
        .collect();
    assert_eq!(reports, ["channel.occupied", "presence.join", "presence.join", "presence.leave", "presence.leave"]);
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(node) = super::memory().await {
                        super::$case(node).await;
                    }
                }
            )*
        }
        mod redis_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(node) = super::redis().await {
                        super::$case(node).await;
                    }
                }
            )*
        }
        mod nats_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(node) = super::nats().await {
                        super::$case(node).await;
                    }
                }
            )*
        }
    };
}

suite!(
    offsets_are_contiguous_and_history_keeps_the_newest,
    idempotency_keys_publish_once,
    subscribed_nodes_get_every_publication_in_order,
    racing_subscribes_and_unsubscribes_leave_the_interest_in_force,
    concurrent_publishers_get_contiguous_offsets,
    presence_joins_leaves_and_expires,
);

/// Two Redis engines are two nodes: a publish on one reaches the other, once, in order, and
/// what one missed while it was not subscribed is not pushed (that is recovery's job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_nodes_share_publications_presence_and_positions() {
    let (Some(first), Some(second)) = (redis().await, redis().await) else { return };
    two_nodes(first, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nats_nodes_share_publications_presence_and_positions() {
    let (Some(first), Some(second)) = (nats().await, nats().await) else { return };
    two_nodes(first, second).await;
}

/// Two nodes publishing to one channel at once: every offset is handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_nodes_publishing_at_once_keep_offsets_contiguous() {
    let (Some(first), Some(second)) = (redis().await, redis().await) else { return };
    two_nodes_publishing_at_once(first, second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nats_nodes_publishing_at_once_keep_offsets_contiguous() {
    let (Some(first), Some(second)) = (nats().await, nats().await) else { return };
    two_nodes_publishing_at_once(first, second).await;
}

async fn two_nodes_publishing_at_once(first: Node, second: Node) {
    let a = channel("a");
    let publishers: Vec<_> = [&first, &second, &first, &second]
        .into_iter()
        .map(|node| {
            let (engine, a) = (node.engine.clone(), a.clone());
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for n in 0..10 {
                    offsets.push(engine.publish(vec![request(&a, &n.to_string(), None)]).await.remove(0).unwrap());
                }
                offsets
            })
        })
        .collect();
    let mut offsets = Vec::new();
    for publisher in publishers {
        offsets.extend(publisher.await.unwrap().into_iter().map(|published| published.position.offset));
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=40).collect::<Vec<_>>());
}

async fn two_nodes(first: Node, second: Node) {
    let a = channel("a");
    second.engine.subscribe(std::slice::from_ref(&a)).await.unwrap();
    for n in 0..20 {
        let node = if n % 2 == 0 { &first } else { &second };
        node.engine.publish(vec![request(&a, &n.to_string(), None)]).await.remove(0).unwrap();
    }
    wait_until("20 deliveries on the second node", || second.recorder.offsets(&a).len() == 20).await;
    assert_eq!(second.recorder.offsets(&a), (1..=20).collect::<Vec<_>>());
    assert!(first.recorder.offsets(&a).is_empty(), "the first node has no interest");

    first.engine.presence_join(&a, entry("x", "u"), Duration::from_secs(30)).await.unwrap();
    wait_until("the join on the second node", || !second.recorder.presence.lock().unwrap().is_empty()).await;
    assert_eq!(second.engine.presence(&a).await.unwrap().len(), 1);
    assert!(
        second.recorder.reports.lock().unwrap().iter().all(|(kind, _)| *kind != "presence.join"),
        "reported once, by the first"
    );
    assert!(first.recorder.reports.lock().unwrap().contains(&("presence.join", a.to_string())));
}

/// Every task an engine starts runs on the tracker it was given and ends on the token, while
/// the engine itself is still there: server shutdown waits for them, and need not wait long.
async fn tasks_end_at_shutdown(node: Node, tasks: TaskTracker, shutdown: CancellationToken) {
    let a = channel("a");
    node.engine.subscribe(std::slice::from_ref(&a)).await.unwrap();
    node.engine.publish(vec![request(&a, "1", None)]).await.remove(0).unwrap();
    wait_until("the delivery", || node.recorder.offsets(&a) == [1]).await;
    assert!(!tasks.is_empty(), "the engine's tasks are tracked");
    shutdown.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.expect("the engine's tasks end at shutdown");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_engine_s_tasks_end_at_shutdown() {
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let Some(node) = redis_on(tasks.clone(), shutdown.clone()).await else { return };
    tasks_end_at_shutdown(node, tasks, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_engine_s_tasks_end_at_shutdown() {
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let Some(node) = nats_on(tasks.clone(), shutdown.clone()).await else { return };
    tasks_end_at_shutdown(node, tasks, shutdown).await;
}
