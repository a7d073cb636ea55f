//! SQLite storage: one file in the data directory, WAL mode, `synchronous = FULL`.
//!
//! One writer thread owns the writing connection. It takes every append waiting in its queue
//! into one transaction (group commit: one fsync for many publishes under load), assigns
//! offsets from each channel's stored top, commits, and only then hands the new publications to
//! the fan-out, in offset order, and answers the publishers: a publish that was acknowledged is
//! on disk. Reads use a second connection (WAL lets them run beside the writer).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::{
    ChannelName, EngineError, Epoch, FanOut, HistoryPage, HistoryQuery, Namespaces, Position, Publication,
    PublishError, PublishRequest, Published, Storage, unix_millis,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::StorageOpenError;
use crate::shared::{Append, Appended, GROUP, QUEUE, ReadConnection, complete, fail, storage_error};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    top INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS publications (
    channel TEXT NOT NULL,
    offset INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (channel, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    offset INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
";

enum Job {
    Append(Append),
    EnsureChannel {
        channel: ChannelName,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Deletes what retention no longer keeps (below `up_to`, when given), a chunk at a time;
    /// answers how far the trim goes when more is left.
    Trim {
        channel: ChannelName,
        up_to: Option<i64>,
        reply: oneshot::Sender<Option<i64>>,
    },
}

/// Durable history in an SQLite file.
pub struct SqliteStorage {
    jobs: mpsc::Sender<Job>,
    reader: ReadConnection,
    namespaces: Arc<Namespaces>,
    /// Held while open: two processes appending to one file would hand out the same offsets.
    _lock: std::fs::File,
}

impl SqliteStorage {
    /// Opens (or creates) the database at `path`, checks it, and starts the writer thread.
    pub fn open(path: &Path, namespaces: Arc<Namespaces>) -> Result<Self, StorageOpenError> {
        let display = path.display().to_string();
        let open = |path: &Path| {
            let connection =
                Connection::open(path).map_err(|source| StorageOpenError::Open { path: display.clone(), source })?;
            connection
                .busy_timeout(Duration::from_secs(5))
                .map_err(|source| StorageOpenError::Open { path: display.clone(), source })?;
            Ok::<_, StorageOpenError>(connection)
        };
        let corrupt = |detail: String| StorageOpenError::Corrupt { path: display.clone(), detail };
        let lock_path = path.with_extension("db.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|error| StorageOpenError::Locked {
            path: lock_path.display().to_string(),
            detail: error.to_string(),
        })?;
        lock.try_lock().map_err(|_| StorageOpenError::Locked {
            path: lock_path.display().to_string(),
            detail: "another Herald process is using this data directory".into(),
        })?;
        let writer = open(path)?;
        writer
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(|error| corrupt(error.to_string()))?;
        let check: String =
            writer.query_row("PRAGMA quick_check", [], |row| row.get(0)).map_err(|error| corrupt(error.to_string()))?;
        if check != "ok" {
            return Err(corrupt(check));
        }
        writer.execute_batch(SCHEMA).map_err(|error| corrupt(error.to_string()))?;
        let reader = open(path)?;

        let (jobs, queue) = mpsc::channel(QUEUE);
        let writer_namespaces = namespaces.clone();
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || {
                Writer { connection: writer, namespaces: writer_namespaces, tops: HashMap::new() }.run(queue)
            })
            .map_err(StorageOpenError::Thread)?;
        Ok(Self { jobs, reader: ReadConnection::new(reader), namespaces, _lock: lock })
    }

    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(job(reply)).await.map_err(|_| storage_error("the writer has stopped"))?;
        answer.await.map_err(|_| storage_error("the writer has stopped"))
    }

    /// Runs `read` on the reading connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, EngineError> {
        self.reader.run(read).await.map_err(storage_error)
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn append(
        &self,
        batch: Vec<PublishRequest>,
        fan_out: Option<Arc<dyn FanOut>>,
    ) -> Vec<Result<Published, PublishError>> {
        let count = batch.len();
        match self.ask(|reply| Job::Append(Append { batch, fan_out, reply })).await {
            Ok(outcomes) => outcomes,
            Err(error) => (0..count).map(|_| Err(error.clone())).collect(),
        }
    }

    async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        let options = self.namespaces.options_for(channel).clone();
        for attempt in 0..2 {
            let (name, options) = (channel.clone(), options.clone());
            let page = self
                .read(move |connection| {
                    // One snapshot for the position, the bounds and the rows.
                    let connection = connection.unchecked_transaction()?;
                    let Some((epoch, top)) = stored_channel(&connection, &name)? else {
                        return Ok(None);
                    };
                    let first_kept = first_kept(&connection, name.as_str(), top, &options)?;
                    let oldest: Option<i64> = connection.query_row(
                        "SELECT MIN(offset) FROM publications WHERE channel = ?1 AND offset >= ?2",
                        params![name.as_str(), first_kept],
                        |row| row.get(0),
                    )?;
                    let limit = query.limit.min(i64::MAX as usize) as i64;
                    let sql = if query.reverse {
                        "SELECT offset, time_ms, data FROM publications WHERE channel = ?1 AND offset >= ?2 \
                         AND offset < ?3 ORDER BY offset DESC LIMIT ?4"
                    } else {
                        "SELECT offset, time_ms, data FROM publications WHERE channel = ?1 AND offset >= ?2 \
                         AND offset > ?3 ORDER BY offset ASC LIMIT ?4"
                    };
                    let bound = match (query.reverse, query.since) {
                        (true, Some(since)) => since.min(i64::MAX as u64) as i64,
                        (true, None) => i64::MAX,
                        (false, since) => since.unwrap_or(0).min(i64::MAX as u64) as i64,
                    };
                    let mut statement = connection.prepare_cached(sql)?;
                    let rows = statement.query_map(params![name.as_str(), first_kept, bound, limit], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, Vec<u8>>(2)?))
                    })?;
                    let mut publications = Vec::new();
                    for row in rows {
                        let (offset, time_ms, data) = row?;
                        publications.push(Arc::new(Publication::new(
                            name.clone(),
                            Position { epoch: epoch.clone(), offset: offset as u64 },
                            Bytes::from(data),
                            time_ms as u64,
                        )));
                    }
                    Ok(Some(HistoryPage {
                        publications,
                        top: Position { epoch, offset: top },
                        oldest: oldest.map_or(top + 1, |oldest| oldest as u64),
                    }))
                })
                .await?;
            match page {
                Some(page) => return Ok(page),
                // A channel never published to: give it its epoch now (through the writer,
                // durably), so positions handed out for it stay valid.
                None if attempt == 0 => {
                    self.ask(|reply| Job::EnsureChannel { channel: channel.clone(), reply }).await??;
                }
                None => break,
            }
        }
        Err(storage_error(format!("channel {channel} vanished while being read")))
    }

    async fn sweep(&self) {
        let Ok(channels) = self
            .read(|connection| {
                let mut statement = connection.prepare_cached("SELECT name FROM channels")?;
                let names = statement.query_map([], |row| row.get::<_, String>(0))?;
                names.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await
        else {
            return;
        };
        // Small jobs (a channel's trim is cut into chunks), so appends queued meanwhile go in
        // between: one large delete held every publisher for over 100 ms under load. The first
        // job fixes how far this sweep goes, so a busy channel cannot keep it going.
        for name in channels {
            if let Ok(channel) = ChannelName::new(&name) {
                let mut up_to = None;
                while let Ok(Some(target)) =
                    self.ask(|reply| Job::Trim { channel: channel.clone(), up_to, reply }).await
                {
                    up_to = Some(target);
                }
            }
        }
    }
}

/// Publications deleted per trim job at most: a few milliseconds of the writer's time.
const TRIM_CHUNK: i64 = 2_000;

const INSERT_PUBLICATION: &str = "INSERT INTO publications (channel, offset, time_ms, data) VALUES (?1, ?2, ?3, ?4)";

/// The writer thread's state: the connection and each channel's (epoch, top).
struct Writer {
    connection: Connection,
    namespaces: Arc<Namespaces>,
    tops: HashMap<ChannelName, (Epoch, u64)>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut appends = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Append(append) => appends.push(append),
                    Job::EnsureChannel { channel, reply } => {
                        let _ = reply.send(self.ensure_channel(&channel));
                    }
                    Job::Trim { channel, up_to, reply } => {
                        let _ = reply.send(self.trim(&channel, up_to));
                    }
                }
                if appends.iter().map(|append| append.batch.len()).sum::<usize>() < GROUP {
                    next = queue.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.commit_group(appends);
            }
        }
    }

    fn ensure_channel(&mut self, channel: &ChannelName) -> Result<(), EngineError> {
        let transaction =
            self.connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(storage_error)?;
        channel_state(&transaction, &mut self.tops, channel).map_err(storage_error)?;
        transaction.commit().map_err(|error| {
            self.tops.remove(channel);
            storage_error(error)
        })
    }

    /// One transaction for all waiting appends; outcomes and deliveries only after commit.
    fn commit_group(&mut self, appends: Vec<Append>) {
        let now = unix_millis();
        let result = (|| -> rusqlite::Result<Vec<Vec<Appended>>> {
            let transaction = self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(appends.len());
            let mut appended_to = HashSet::new();
            {
                // Looked up in the statement cache once per group, not once per publication.
                let mut insert = transaction.prepare_cached(INSERT_PUBLICATION)?;
                for Append { batch, .. } in &appends {
                    let mut job_outcomes = Vec::with_capacity(batch.len());
                    for request in batch {
                        let window = self.namespaces.options_for(&request.channel).idempotency_window;
                        let outcome = append_one(&transaction, &mut insert, &mut self.tops, request, now, window)?;
                        if outcome.1.is_some() && !appended_to.contains(&request.channel) {
                            appended_to.insert(request.channel.clone());
                        }
                        job_outcomes.push(outcome);
                    }
                    outcomes.push(job_outcomes);
                }
            }
            // Each channel's top once per group, not once per publication: a hot channel's
            // group commit is then one row update, however many publications it holds.
            for channel in &appended_to {
                if let Some((_, top)) = self.tops.get(channel) {
                    transaction
                        .prepare_cached("UPDATE channels SET top = ?2 WHERE name = ?1")?
                        .execute(params![channel.as_str(), *top as i64])?;
                }
            }
            transaction.commit()?;
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => complete(appends, outcomes),
            Err(error) => {
                // Nothing was committed: forget the cached tops, which may include offsets handed
                // out in this transaction; they are read again from the database.
                self.tops.clear();
                fail(appends, storage_error(error));
            }
        }
    }

    /// Deletes the channel's oldest publications that retention no longer keeps (below
    /// `up_to` too, when given), at most [`TRIM_CHUNK`] of them; the first job of a sweep
    /// (`up_to` absent) also deletes expired idempotency keys. Returns the offset the trim goes
    /// up to when more is left.
    fn trim(&mut self, channel: &ChannelName, up_to: Option<i64>) -> Option<i64> {
        let options = self.namespaces.options_for(channel);
        if up_to.is_none() {
            let now = unix_millis();
            let idempotency_cutoff = now.saturating_sub(options.idempotency_window.as_millis() as u64) as i64;
            let _ = self.connection.execute(
                "DELETE FROM idempotency WHERE channel = ?1 AND time_ms < ?2",
                params![channel.as_str(), idempotency_cutoff],
            );
        }
        let (_, top) = match self.tops.get(channel) {
            Some(state) => state.clone(),
            None => stored_channel(&self.connection, channel).ok()??,
        };
        let first_kept = first_kept(&self.connection, channel.as_str(), top, options).ok()?;
        let target = up_to.map_or(first_kept, |up_to| up_to.min(first_kept));
        let oldest: Option<i64> = self
            .connection
            .query_row("SELECT MIN(offset) FROM publications WHERE channel = ?1", [channel.as_str()], |row| row.get(0))
            .ok()?;
        let bound = target.min(oldest?.saturating_add(TRIM_CHUNK));
        self.connection
            .execute("DELETE FROM publications WHERE channel = ?1 AND offset < ?2", params![channel.as_str(), bound])
            .ok()?;
        (bound < target).then_some(target)
    }
}

/// The first offset retention keeps: the newest `history_size`, and of those the run from the
/// oldest one younger than the TTL on, so age never cuts a hole in the middle (clocks may step).
fn first_kept(
    connection: &Connection,
    channel: &str,
    top: u64,
    options: &herald_core::NamespaceOptions,
) -> rusqlite::Result<i64> {
    let by_size = (top + 1).saturating_sub(options.history_size as u64).max(1) as i64;
    let cutoff = unix_millis().saturating_sub(options.history_ttl.as_millis() as u64) as i64;
    let by_age: Option<i64> = connection.query_row(
        "SELECT MIN(offset) FROM publications WHERE channel = ?1 AND offset >= ?2 AND time_ms >= ?3",
        params![channel, by_size, cutoff],
        |row| row.get(0),
    )?;
    Ok(by_age.unwrap_or(top as i64 + 1).max(by_size))
}

/// The channel's stored (epoch, top), if it has a row.
fn stored_channel(connection: &Connection, channel: &ChannelName) -> rusqlite::Result<Option<(Epoch, u64)>> {
    connection
        .query_row("SELECT epoch, top FROM channels WHERE name = ?1", [channel.as_str()], |row| {
            Ok((Epoch::new(&row.get::<_, String>(0)?), row.get::<_, i64>(1)? as u64))
        })
        .optional()
}

/// The channel's (epoch, top), from the cache, the table, or created with a fresh epoch.
fn channel_state(
    connection: &Connection,
    tops: &mut HashMap<ChannelName, (Epoch, u64)>,
    channel: &ChannelName,
) -> rusqlite::Result<(Epoch, u64)> {
    if let Some(state) = tops.get(channel) {
        return Ok(state.clone());
    }
    let state = match stored_channel(connection, channel)? {
        Some(state) => state,
        None => {
            let epoch = Epoch::random();
            connection.execute(
                "INSERT INTO channels (name, epoch, top) VALUES (?1, ?2, 0)",
                params![channel.as_str(), epoch.as_str()],
            )?;
            (epoch, 0)
        }
    };
    tops.insert(channel.clone(), state.clone());
    Ok(state)
}

/// Appends one request inside the open transaction; returns its outcome and, unless it was an
/// idempotent repeat, the new publication to deliver after commit. The channel's new top is
/// kept in `tops`; the caller writes it to the channel's row before committing.
fn append_one(
    connection: &Connection,
    insert: &mut rusqlite::CachedStatement<'_>,
    tops: &mut HashMap<ChannelName, (Epoch, u64)>,
    request: &PublishRequest,
    now: u64,
    idempotency_window: Duration,
) -> rusqlite::Result<Appended> {
    let (epoch, top) = channel_state(connection, tops, &request.channel)?;
    if let Some(key) = &request.idempotency_key {
        let since = now.saturating_sub(idempotency_window.as_millis() as u64) as i64;
        let seen: Option<i64> = connection
            .prepare_cached("SELECT offset FROM idempotency WHERE channel = ?1 AND key = ?2 AND time_ms >= ?3")?
            .query_row(params![request.channel.as_str(), key, since], |row| row.get(0))
            .optional()?;
        if let Some(offset) = seen {
            let position = Position { epoch, offset: offset as u64 };
            return Ok((Published { channel: request.channel.clone(), position, time_ms: now, duplicate: true }, None));
        }
    }
    let offset = top + 1;
    insert.execute(params![request.channel.as_str(), offset as i64, now as i64, &request.data[..]])?;
    if let Some(key) = &request.idempotency_key {
        connection
            .prepare_cached(
                "INSERT OR REPLACE INTO idempotency (channel, key, offset, time_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![request.channel.as_str(), key, offset as i64, now as i64])?;
    }
    tops.insert(request.channel.clone(), (epoch.clone(), offset));
    let position = Position { epoch, offset };
    let publication = Arc::new(Publication::new(request.channel.clone(), position.clone(), request.data.clone(), now));
    Ok((Published { channel: request.channel.clone(), position, time_ms: now, duplicate: false }, Some(publication)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a temporary directory; opening it again is a restart.
    struct SqliteFile(tempfile::TempDir);

    #[async_trait]
    impl crate::conformance::Backend for SqliteFile {
        async fn open(&self, namespaces: Arc<Namespaces>) -> Arc<dyn Storage> {
            Arc::new(SqliteStorage::open(&self.0.path().join("herald.db"), namespaces).unwrap())
        }
    }

    crate::conformance::suite!(Some(SqliteFile(tempfile::tempdir().unwrap())));

    #[test]
    fn a_second_process_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let namespaces = Arc::new(Namespaces::default());
        let first = SqliteStorage::open(&path, namespaces.clone()).unwrap();
        let error = SqliteStorage::open(&path, namespaces.clone()).err().expect("refused").to_string();
        assert!(error.contains("another Herald process"), "{error}");
        drop(first);
        assert!(SqliteStorage::open(&path, namespaces).is_ok(), "free again once closed");
    }

    /// A trim larger than one chunk is done in several jobs, all of it, and keeps the newest.
    #[tokio::test]
    async fn the_sweep_trims_a_long_history_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let storage = SqliteStorage::open(&path, crate::conformance::namespaces(10)).unwrap();
        let total = 2 * TRIM_CHUNK as usize + 500;
        let channel = ChannelName::new("long").unwrap();
        for _ in 0..total / 500 {
            let batch = (0..500)
                .map(|_| PublishRequest {
                    channel: channel.clone(),
                    data: Bytes::from_static(b"1"),
                    idempotency_key: None,
                })
                .collect();
            assert!(storage.append(batch, None).await.iter().all(Result::is_ok));
        }
        storage.sweep().await;
        let stored: i64 = storage
            .read(|connection| connection.query_row("SELECT COUNT(*) FROM publications", [], |row| row.get(0)))
            .await
            .unwrap();
        assert_eq!(stored, 10);
        let page = storage.history(&channel, HistoryQuery::after(0)).await.unwrap();
        assert_eq!((page.publications.len(), page.oldest, page.top.offset), (10, total as u64 - 9, total as u64));
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        std::fs::write(&path, b"this is not a database, and never was one, no matter how long it gets").unwrap();
        let namespaces = Arc::new(Namespaces::default());
        let error = SqliteStorage::open(&path, namespaces).err().expect("refused").to_string();
        assert!(error.contains("damaged or not a Herald database"), "{error}");
    }
}
