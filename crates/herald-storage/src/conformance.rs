//! The conformance suite every storage passes: the same tests against SQLite and PostgreSQL.
//! `suite!(backend)` expands to one test per case; a backend of `None` skips (and says so).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::{
    ChannelName, FanOut, HistoryQuery, NamespaceOptions, Namespaces, Position, Publication, PublishRequest, Published,
    Storage,
};

/// A place to open storage in; opening again on the same place is a restart.
#[async_trait]
pub trait Backend: Send + Sync {
    async fn open(&self, namespaces: Arc<Namespaces>) -> Arc<dyn Storage>;
}

macro_rules! suite {
    ($backend:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn positions_history_and_idempotency_survive_a_restart() {
            if let Some(backend) = $backend {
                crate::conformance::positions_history_and_idempotency_survive_a_restart(&backend).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_new_channel_gets_an_epoch_that_lasts() {
            if let Some(backend) = $backend {
                crate::conformance::a_new_channel_gets_an_epoch_that_lasts(&backend).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retention_keeps_the_newest_and_the_sweep_deletes_the_rest() {
            if let Some(backend) = $backend {
                crate::conformance::retention_keeps_the_newest_and_the_sweep_deletes_the_rest(&backend).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_publishers_get_contiguous_offsets_delivered_in_order() {
            if let Some(backend) = $backend {
                crate::conformance::concurrent_publishers_get_contiguous_offsets_delivered_in_order(&backend).await;
            }
        }
    };
}
pub(crate) use suite;

pub(crate) fn namespaces(history_size: usize) -> Arc<Namespaces> {
    let options = NamespaceOptions { history_size, durable: true, ..Default::default() };
    Arc::new(Namespaces::new(options, HashMap::new()))
}

fn request(channel: &str, data: &str, key: Option<&str>) -> PublishRequest {
    PublishRequest {
        channel: ChannelName::new(channel).unwrap(),
        data: Bytes::from(data.to_string()),
        idempotency_key: key.map(str::to_string),
    }
}

/// Records deliveries, to check they come after commit and in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, u64)>>);

impl FanOut for Recorder {
    fn deliver(&self, publication: Arc<Publication>) {
        self.0.lock().unwrap().push((publication.channel.to_string(), publication.position.offset));
    }

    // Storage deals in publications only.
    fn deliver_presence(&self, _event: Arc<herald_core::PresenceEvent>) {}
    fn report(&self, _event: herald_core::ChannelEvent) {}
}

pub async fn positions_history_and_idempotency_survive_a_restart(backend: &dyn Backend) {
    let recorder = Arc::new(Recorder::default());
    let first_epoch;
    {
        let storage = backend.open(namespaces(100)).await;
        let fan_out: Arc<dyn FanOut> = recorder.clone();
        let outcomes = storage
            .append(vec![request("a", "1", None), request("b", "1", None), request("a", "2", Some("k"))], Some(fan_out))
            .await;
        let offsets: Vec<u64> = outcomes.iter().map(|o| o.as_ref().unwrap().position.offset).collect();
        assert_eq!(offsets, [1, 1, 2]);
        first_epoch = outcomes[0].as_ref().unwrap().position.epoch.clone();
        assert_eq!(*recorder.0.lock().unwrap(), [("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]);
    }
    let storage = backend.open(namespaces(100)).await;
    let again = storage.append(vec![request("a", "2", Some("k")), request("a", "3", None)], None).await;
    let again: Vec<&Published> = again.iter().map(|o| o.as_ref().unwrap()).collect();
    assert!(again[0].duplicate && again[0].position.offset == 2, "the key is remembered across a restart");
    assert_eq!((again[1].position.offset, &again[1].position.epoch), (3, &first_epoch));
    let channel = ChannelName::new("a").unwrap();
    let page = storage.history(&channel, HistoryQuery::after(0)).await.unwrap();
    let data: Vec<&[u8]> = page.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [b"1", b"2", b"3"]);
    assert_eq!((page.top.offset, page.oldest, page.top.epoch), (3, 1, first_epoch));
    let reverse = storage.history(&channel, HistoryQuery { since: Some(3), limit: 1, reverse: true }).await.unwrap();
    assert_eq!(reverse.publications[0].position.offset, 2);
    let forward = storage.history(&channel, HistoryQuery { since: Some(1), limit: 1, reverse: false }).await.unwrap();
    assert_eq!(forward.publications[0].position.offset, 2);
}

pub async fn a_new_channel_gets_an_epoch_that_lasts(backend: &dyn Backend) {
    let channel = ChannelName::new("fresh").unwrap();
    let epoch = {
        let storage = backend.open(namespaces(100)).await;
        let page = storage.history(&channel, HistoryQuery::top_only()).await.unwrap();
        assert_eq!((page.top.offset, page.oldest), (0, 1));
        page.top.epoch
    };
    let storage = backend.open(namespaces(100)).await;
    let published = storage.append(vec![request("fresh", "1", None)], None).await.remove(0).unwrap();
    assert_eq!(published.position, Position { epoch, offset: 1 });
}

pub async fn retention_keeps_the_newest_and_the_sweep_deletes_the_rest(backend: &dyn Backend) {
    let storage = backend.open(namespaces(3)).await;
    for n in 1..=5 {
        storage.append(vec![request("a", &n.to_string(), None)], None).await.remove(0).unwrap();
    }
    let channel = ChannelName::new("a").unwrap();
    let page = storage.history(&channel, HistoryQuery::after(0)).await.unwrap();
    assert_eq!(page.publications.len(), 3, "retention applies before the sweep");
    assert_eq!(page.oldest, 3);
    storage.sweep().await;
    // A storage that no longer keeps the old rows shows the same page.
    let page = storage.history(&channel, HistoryQuery::after(0)).await.unwrap();
    assert_eq!((page.publications.len(), page.oldest, page.top.offset), (3, 3, 5));
    drop(storage);
    let widened = backend.open(namespaces(100)).await;
    let page = widened.history(&channel, HistoryQuery::after(0)).await.unwrap();
    assert_eq!(page.publications.len(), 3, "the sweep deleted the rest for good");
}

pub async fn concurrent_publishers_get_contiguous_offsets_delivered_in_order(backend: &dyn Backend) {
    let storage = backend.open(namespaces(10_000)).await;
    let recorder = Arc::new(Recorder::default());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (storage, recorder) = (storage.clone(), recorder.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let fan_out: Arc<dyn FanOut> = recorder.clone();
                storage.append(vec![request("hot", "x", None)], Some(fan_out)).await.remove(0).unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let delivered: Vec<u64> = recorder.0.lock().unwrap().iter().map(|(_, offset)| *offset).collect();
    assert_eq!(delivered, (1..=500).collect::<Vec<_>>());
}
