//! PostgreSQL storage, for deployments that share one database.
//!
//! One writer task takes every append waiting in its queue into one transaction (group
//! commit). Offsets are assigned by `UPDATE … SET top = top + 1 … RETURNING`, whose row lock
//! serializes appends to a channel even across several nodes on one database; new publications
//! reach the fan-out only after commit, in offset order. Reads go through a second connection.
//!
//! The writer and the connections' IO tasks run on the caller's `TaskTracker` and end on its
//! `CancellationToken`: the writer then takes no new appends, commits those already queued and
//! ends, and its connection with it; the reading connection closes at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::{
    ChannelName, EngineError, Epoch, FanOut, HistoryPage, HistoryQuery, Namespaces, Position, Publication,
    PublishRequest, Published, Storage, unix_millis,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::StorageOpenError;
use crate::shared::{Append, Appended, GROUP, Outcomes, QUEUE, complete, fail, storage_error};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    top BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS publications (
    channel TEXT NOT NULL,
    \"offset\" BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (channel, \"offset\")
);
CREATE TABLE IF NOT EXISTS idempotency (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    \"offset\" BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, key)
);
";

/// The first offset retention keeps (as in the SQLite storage: the newest `history_size`, and
/// of those the run from the oldest one younger than the TTL on, so age never cuts a hole).
async fn first_kept(
    client: &Client,
    channel: &str,
    top: u64,
    options: &herald_core::NamespaceOptions,
) -> Result<i64, EngineError> {
    let by_size = (top + 1).saturating_sub(options.history_size as u64).max(1) as i64;
    let cutoff = unix_millis().saturating_sub(options.history_ttl.as_millis() as u64) as i64;
    let by_age: Option<i64> = client
        .query_one(
            "SELECT MIN(\"offset\") FROM publications WHERE channel = $1 AND \"offset\" >= $2 AND time_ms >= $3",
            &[&channel, &by_size, &cutoff],
        )
        .await
        .map_err(storage_error)?
        .get(0);
    Ok(by_age.unwrap_or(top as i64 + 1).max(by_size))
}

/// Durable history in PostgreSQL.
pub struct PostgresStorage {
    appends: mpsc::Sender<Append>,
    /// The reading connection; replaced when the database dropped it.
    reader: std::sync::RwLock<Arc<Client>>,
    target: Target,
    namespaces: Arc<Namespaces>,
    /// Ends the reading connection's IO task (shutdown).
    stop: CancellationToken,
}

/// Where to connect (again, after the database restarted or dropped us), and where the
/// connections' IO tasks run.
#[derive(Clone)]
struct Target {
    url: String,
    schema: Option<String>,
    tasks: TaskTracker,
}

impl Target {
    async fn connect(&self, stop: &CancellationToken) -> Result<Client, tokio_postgres::Error> {
        connect(&self.url, self.schema.as_deref(), &self.tasks, stop).await
    }
}

/// Connects; the connection's IO task (on `tasks`) ends when the client is dropped or `stop`
/// is cancelled.
async fn connect(
    url: &str,
    schema: Option<&str>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if let Some(schema) = schema {
        config.options(format!("-c search_path={schema}"));
    }
    config.application_name(format!("herald:{}", schema.unwrap_or("public")));
    let (client, connection) = config.connect(NoTls).await?;
    let stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = connection => {}
            () = stop.cancelled() => {}
        }
    });
    Ok(client)
}

impl PostgresStorage {
    /// Connects (twice: writer and reader), creates the tables if needed, starts the writer.
    /// `schema` (created if missing) lets several deployments or tests share one database.
    /// The writer and the connections run on `tasks` and stop on `shutdown` (see the module
    /// docs).
    pub async fn open(
        url: &str,
        schema: Option<&str>,
        namespaces: Arc<Namespaces>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, StorageOpenError> {
        let failed = |error: tokio_postgres::Error| StorageOpenError::Postgres(error.to_string());
        let target = Target { url: url.to_string(), schema: schema.map(str::to_string), tasks: tasks.clone() };
        if let Some(schema) = schema {
            let setup = connect(url, None, &tasks, &shutdown).await.map_err(failed)?;
            setup.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await.map_err(failed)?;
        }
        // The writer's connections live as long as the writer, which commits what is queued
        // when shutdown comes before it ends.
        let writer_done = CancellationToken::new();
        let writer = target.connect(&writer_done).await.map_err(failed)?;
        writer.batch_execute(SCHEMA).await.map_err(failed)?;
        let reader = target.connect(&shutdown).await.map_err(failed)?;
        let (appends, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            client: writer,
            target: target.clone(),
            namespaces: namespaces.clone(),
            stop: shutdown.clone(),
            done: writer_done,
        };
        tasks.spawn(writer.run(queue));
        Ok(Self { appends, reader: std::sync::RwLock::new(Arc::new(reader)), target, namespaces, stop: shutdown })
    }

    /// The reading connection, connected again first if the database dropped it.
    async fn reader(&self) -> Result<Arc<Client>, EngineError> {
        let current = self.reader.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = Arc::new(
            self.target
                .connect(&self.stop)
                .await
                .map_err(|error| EngineError::Unavailable(format!("database: {error}")))?,
        );
        *self.reader.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    async fn ensure_channel(&self, channel: &ChannelName) -> Result<(), EngineError> {
        self.reader()
            .await?
            .execute(
                "INSERT INTO channels (name, epoch, top) VALUES ($1, $2, 0) ON CONFLICT (name) DO NOTHING",
                &[&channel.as_str(), &Epoch::random().as_str()],
            )
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    async fn read_page(&self, channel: &ChannelName, query: HistoryQuery) -> Result<Option<HistoryPage>, EngineError> {
        let reader = self.reader().await?;
        let Some(row) = reader
            .query_opt("SELECT epoch, top FROM channels WHERE name = $1", &[&channel.as_str()])
            .await
            .map_err(storage_error)?
        else {
            return Ok(None);
        };
        let epoch = Epoch::new(row.get::<_, &str>(0));
        let top = row.get::<_, i64>(1) as u64;
        let first_kept = first_kept(&reader, channel.as_str(), top, self.namespaces.options_for(channel)).await?;
        let oldest: Option<i64> = reader
            .query_one(
                "SELECT MIN(\"offset\") FROM publications WHERE channel = $1 AND \"offset\" >= $2",
                &[&channel.as_str(), &first_kept],
            )
            .await
            .map_err(storage_error)?
            .get(0);
        let limit = query.limit.min(i64::MAX as usize) as i64;
        let (sql, bound) = match (query.reverse, query.since) {
            (true, since) => (
                "SELECT \"offset\", time_ms, data FROM publications WHERE channel = $1 AND \"offset\" >= $2 \
                 AND \"offset\" < $3 ORDER BY \"offset\" DESC LIMIT $4",
                since.map_or(i64::MAX, |since| since.min(i64::MAX as u64) as i64),
            ),
            (false, since) => (
                "SELECT \"offset\", time_ms, data FROM publications WHERE channel = $1 AND \"offset\" >= $2 \
                 AND \"offset\" > $3 ORDER BY \"offset\" ASC LIMIT $4",
                since.unwrap_or(0).min(i64::MAX as u64) as i64,
            ),
        };
        let rows = reader.query(sql, &[&channel.as_str(), &first_kept, &bound, &limit]).await.map_err(storage_error)?;
        let publications = rows
            .iter()
            .map(|row| {
                Arc::new(Publication::new(
                    channel.clone(),
                    Position { epoch: epoch.clone(), offset: row.get::<_, i64>(0) as u64 },
                    Bytes::from(row.get::<_, Vec<u8>>(2)),
                    row.get::<_, i64>(1) as u64,
                ))
            })
            .collect();
        Ok(Some(HistoryPage {
            publications,
            top: Position { epoch, offset: top },
            oldest: oldest.map_or(top + 1, |oldest| oldest as u64),
        }))
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn append(&self, batch: Vec<PublishRequest>, fan_out: Option<Arc<dyn FanOut>>) -> Outcomes {
        let count = batch.len();
        let (reply, answer) = oneshot::channel();
        let stopped = || (0..count).map(|_| Err(storage_error("the writer has stopped"))).collect();
        if self.appends.send(Append { batch, fan_out, reply }).await.is_err() {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }

    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        if let Some(page) = self.read_page(channel, query).await? {
            return Ok(page);
        }
        // A channel never published to gets its epoch now, for good (first writer wins).
        self.ensure_channel(channel).await?;
        self.read_page(channel, query).await?.ok_or_else(|| storage_error(format!("channel {channel} vanished")))
    }

    async fn sweep(&self) {
        let Ok(reader) = self.reader().await else { return };
        let Ok(rows) = reader.query("SELECT name, top FROM channels", &[]).await else {
            return;
        };
        let now = unix_millis();
        for row in rows {
            let Ok(channel) = ChannelName::new(row.get::<_, &str>(0)) else { continue };
            let top = row.get::<_, i64>(1) as u64;
            let options = self.namespaces.options_for(&channel);
            let Ok(first_kept) = first_kept(&reader, channel.as_str(), top, options).await else { continue };
            let idempotency_cutoff = now.saturating_sub(options.idempotency_window.as_millis() as u64) as i64;
            let _ = reader
                .execute(
                    "DELETE FROM publications WHERE channel = $1 AND \"offset\" < $2",
                    &[&channel.as_str(), &first_kept],
                )
                .await;
            let _ = reader
                .execute(
                    "DELETE FROM idempotency WHERE channel = $1 AND time_ms < $2",
                    &[&channel.as_str(), &idempotency_cutoff],
                )
                .await;
        }
    }
}

struct Writer {
    client: Client,
    target: Target,
    namespaces: Arc<Namespaces>,
    /// Shutdown: take no new appends, commit those queued, end.
    stop: CancellationToken,
    /// Cancelled when the writer ends: its connections' IO tasks end then.
    done: CancellationToken,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Append>) {
        let _done = self.done.clone().drop_guard();
        let mut closed = false;
        loop {
            let first = tokio::select! {
                biased;
                first = queue.recv() => first,
                () = self.stop.cancelled(), if !closed => {
                    // Publishers from now on are told the writer stopped; the queue drains.
                    queue.close();
                    closed = true;
                    continue;
                }
            };
            let Some(first) = first else { return };
            let mut group = vec![first];
            while group.iter().map(|append| append.batch.len()).sum::<usize>() < GROUP {
                match queue.try_recv() {
                    Ok(append) => group.push(append),
                    Err(_) => break,
                }
            }
            self.commit_group(group).await;
        }
    }

    async fn commit_group(&mut self, group: Vec<Append>) {
        // The database restarted or dropped us: connect again, or fail this group plainly (the
        // publishers get an error, nothing is acknowledged) and try again with the next one.
        if self.client.is_closed() {
            match self.target.connect(&self.done).await {
                Ok(client) => self.client = client,
                Err(error) => return fail(group, EngineError::Unavailable(format!("database: {error}"))),
            }
        }
        let now = unix_millis();
        let result: Result<Vec<Vec<Appended>>, tokio_postgres::Error> = async {
            let transaction = self.client.transaction().await?;
            let mut outcomes = Vec::with_capacity(group.len());
            for append in &group {
                let mut appended = Vec::with_capacity(append.batch.len());
                for request in &append.batch {
                    let window = self.namespaces.options_for(&request.channel).idempotency_window;
                    appended.push(append_one(&transaction, request, now, window).await?);
                }
                outcomes.push(appended);
            }
            transaction.commit().await?;
            Ok(outcomes)
        }
        .await;
        match result {
            Ok(outcomes) => complete(group, outcomes),
            Err(error) => fail(group, storage_error(error)),
        }
    }
}

async fn append_one(
    transaction: &tokio_postgres::Transaction<'_>,
    request: &PublishRequest,
    now: u64,
    idempotency_window: Duration,
) -> Result<Appended, tokio_postgres::Error> {
    let channel = request.channel.as_str();
    // The channel's row lock first, held until commit: offsets stay contiguous and an
    // idempotency key is checked and recorded atomically, even across nodes.
    transaction
        .execute(
            "INSERT INTO channels (name, epoch, top) VALUES ($1, $2, 0) ON CONFLICT (name) DO NOTHING",
            &[&channel, &Epoch::random().as_str()],
        )
        .await?;
    let row = transaction.query_one("SELECT epoch, top FROM channels WHERE name = $1 FOR UPDATE", &[&channel]).await?;
    let epoch = Epoch::new(row.get::<_, &str>(0));
    let offset = row.get::<_, i64>(1) + 1;
    if let Some(key) = &request.idempotency_key {
        let since = now.saturating_sub(idempotency_window.as_millis() as u64) as i64;
        let seen = transaction
            .query_opt(
                "SELECT \"offset\" FROM idempotency WHERE channel = $1 AND key = $2 AND time_ms >= $3",
                &[&channel, key, &since],
            )
            .await?;
        if let Some(row) = seen {
            let position = Position { epoch, offset: row.get::<_, i64>(0) as u64 };
            return Ok((Published { channel: request.channel.clone(), position, time_ms: now, duplicate: true }, None));
        }
    }
    transaction.execute("UPDATE channels SET top = $2 WHERE name = $1", &[&channel, &offset]).await?;
    transaction
        .execute(
            "INSERT INTO publications (channel, \"offset\", time_ms, data) VALUES ($1, $2, $3, $4)",
            &[&channel, &offset, &(now as i64), &&request.data[..]],
        )
        .await?;
    if let Some(key) = &request.idempotency_key {
        transaction
            .execute(
                "INSERT INTO idempotency (channel, key, \"offset\", time_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (channel, key) DO UPDATE SET \"offset\" = EXCLUDED.\"offset\", time_ms = EXCLUDED.time_ms",
                &[&channel, key, &offset, &(now as i64)],
            )
            .await?;
    }
    let position = Position { epoch, offset: offset as u64 };
    let publication = Arc::new(Publication::new(request.channel.clone(), position.clone(), request.data.clone(), now));
    Ok((Published { channel: request.channel.clone(), position, time_ms: now, duplicate: false }, Some(publication)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh schema in the database named by `HERALD_TEST_POSTGRES_URL`; opening it again is
    /// a restart of the node.
    struct PostgresSchema {
        url: String,
        schema: String,
    }

    impl PostgresSchema {
        fn from_env() -> Option<Self> {
            let Ok(url) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
                eprintln!("skipped: HERALD_TEST_POSTGRES_URL is unset (.ci/run sets it)");
                return None;
            };
            let schema = format!("herald_test_{}_{}", std::process::id(), fastrand::u64(..));
            Some(Self { url, schema })
        }
    }

    #[async_trait]
    impl crate::conformance::Backend for PostgresSchema {
        async fn open(&self, namespaces: Arc<Namespaces>) -> Arc<dyn Storage> {
            let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
            Arc::new(PostgresStorage::open(&self.url, Some(&self.schema), namespaces, tasks, shutdown).await.unwrap())
        }
    }

    impl Drop for PostgresSchema {
        fn drop(&mut self) {
            // Best effort: leave the test database as it was.
            let (url, schema) = (self.url.clone(), self.schema.clone());
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                runtime.block_on(async {
                    let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
                    let client = connect(&url, None, &tasks, &stop).await.ok()?;
                    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.ok()
                })
            })
            .join();
        }
    }

    crate::conformance::suite!(PostgresSchema::from_env());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connects_again_after_the_database_drops_its_connections() {
        use crate::conformance::Backend;
        let Some(backend) = PostgresSchema::from_env() else { return };
        let options = herald_core::NamespaceOptions { durable: true, ..Default::default() };
        let namespaces = Arc::new(Namespaces::new(options, std::collections::HashMap::new()));
        let storage = backend.open(namespaces).await;
        let request = || PublishRequest {
            channel: ChannelName::new("a").unwrap(),
            data: Bytes::from_static(b"1"),
            idempotency_key: None,
        };
        assert_eq!(storage.append(vec![request()], None).await.remove(0).unwrap().position.offset, 1);
        // What a database restart does to Herald's connections.
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let admin = connect(&backend.url, None, &tasks, &stop).await.unwrap();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("herald:{}", backend.schema)],
            )
            .await
            .unwrap();
        let mut outcome = None;
        for _ in 0..50 {
            match storage.append(vec![request()], None).await.remove(0) {
                Ok(published) => {
                    outcome = Some(published.position.offset);
                    break;
                }
                // Until the client notices the connection is gone, a publish fails plainly.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert_eq!(outcome, Some(2), "publishing works again, offsets continue");
        let page = storage.history(&ChannelName::new("a").unwrap(), HistoryQuery::after(0)).await.unwrap();
        assert_eq!(page.publications.len(), 2, "reads work again");
    }

    /// The writer and the connections run on the tracker given and end on the token, while the
    /// storage is still there; appends after that are refused, not left waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn its_tasks_end_at_shutdown() {
        let Some(backend) = PostgresSchema::from_env() else { return };
        let options = herald_core::NamespaceOptions { durable: true, ..Default::default() };
        let namespaces = Arc::new(Namespaces::new(options, std::collections::HashMap::new()));
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let storage =
            PostgresStorage::open(&backend.url, Some(&backend.schema), namespaces, tasks.clone(), shutdown.clone())
                .await
                .unwrap();
        let channel = ChannelName::new("a").unwrap();
        let request =
            || PublishRequest { channel: channel.clone(), data: Bytes::from_static(b"1"), idempotency_key: None };
        assert!(storage.append(vec![request()], None).await.remove(0).is_ok());
        assert!(storage.history(&channel, HistoryQuery::after(0)).await.is_ok());
        assert!(!tasks.is_empty(), "the storage's tasks are tracked");
        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.expect("the storage's tasks end at shutdown");
        assert!(storage.append(vec![request()], None).await.remove(0).is_err(), "the writer has stopped");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_clear_error() {
        let namespaces = Arc::new(Namespaces::default());
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let error = PostgresStorage::open("postgres://nobody@127.0.0.1:1/none", None, namespaces, tasks, shutdown)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("PostgreSQL"), "{error}");
    }
}
