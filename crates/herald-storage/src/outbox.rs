//! The webhook outbox: registered endpoints and their deliveries, durable in SQLite.
//!
//! A delivery is one event for one endpoint. It is written (and committed) before the publish
//! that caused it is acknowledged, stays `pending` through its attempts, and ends `delivered` or
//! `dead`; its row id is the stable `webhook-id` receivers deduplicate on. The publications of
//! one endpoint and channel form a **lane** delivered in offset order (arrival order would not
//! do: a publish retried after a failure reaches the outbox late); its other events (occupied,
//! vacated, joins, leaves) form a second lane, in the order they were recorded.
//!
//! One writer thread commits new deliveries and attempt outcomes in groups (one fsync for many);
//! reads and the rare endpoint changes use a second connection (WAL).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::StorageOpenError;
use crate::shared::{GROUP, QUEUE, ReadConnection};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    channels TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until INTEGER,
    description TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    failing_since INTEGER,
    created_at INTEGER NOT NULL,
    from_config INTEGER NOT NULL DEFAULT 0,
    pusher_key TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    channel TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_key TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    last_latency_ms INTEGER,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_lane ON deliveries (endpoint, channel, state, seq, id);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (state, finished_at);
CREATE INDEX IF NOT EXISTS deliveries_log ON deliveries (endpoint, id);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_event ON deliveries (endpoint, event_key);
";

/// Why an outbox operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("webhook outbox: {0}")]
pub struct OutboxError(pub String);

fn outbox_error(error: impl std::fmt::Display) -> OutboxError {
    OutboxError(error.to_string())
}

/// A registered endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    pub id: String,
    pub url: String,
    pub channels: Vec<String>,
    pub events: Vec<String>,
    pub secret: String,
    /// The secret before the last rotation, still signed with until `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<u64>,
    pub description: Option<String>,
    pub paused: bool,
    /// Why Herald disabled it (410 Gone, failing too long); `None` while enabled.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed (milliseconds), if they do.
    pub failing_since: Option<u64>,
    pub created_at: u64,
    /// Declared in the configuration file (managed there, not through the API).
    pub from_config: bool,
    /// A Pusher app's webhook: Pusher's format, signed with the app's secret (`secret`) and
    /// named by its key (`X-Pusher-Key`, `X-Pusher-Signature`); `None`: Standard Webhooks.
    pub pusher_key: Option<String>,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Every attempt failed; kept for the log and for replay.
    Dead,
}

impl DeliveryState {
    fn code(self) -> i64 {
        match self {
            Self::Pending => 0,
            Self::Delivered => 1,
            Self::Dead => 2,
        }
    }

    fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Delivered,
            2 => Self::Dead,
            _ => Self::Pending,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// An event to deliver to one endpoint.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub endpoint: String,
    pub channel: String,
    pub event_type: String,
    /// What makes the event itself unique (a publication's channel, epoch and offset): an
    /// event already in the outbox for this endpoint is not added twice, so a publisher's
    /// retry with an idempotency key does not send its publication twice.
    pub event_key: String,
    /// A publication's offset (its order in its lane); 0 for other events.
    pub seq: u64,
    /// The JSON body, exactly as it will be sent and signed.
    pub body: String,
    /// The event's time (a publication's), milliseconds since the Unix epoch.
    pub created_at: u64,
}

/// Deliveries delivered one after another, in order: an endpoint's publications of one
/// channel, or its other events of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    pub endpoint: String,
    pub channel: String,
    pub publications: bool,
}

impl NewDelivery {
    pub fn lane(&self) -> Lane {
        Lane {
            endpoint: self.endpoint.clone(),
            channel: self.channel.clone(),
            publications: self.event_type == "publication",
        }
    }
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: i64,
    pub endpoint: String,
    pub channel: String,
    pub event_type: String,
    pub body: String,
    pub created_at: u64,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    pub finished_at: Option<u64>,
}

/// The outcome of one attempt, recorded on its delivery.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: i64,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    pub at: u64,
}

/// Deliveries handed to the writer, not yet known to be committed.
pub struct Submitted(oneshot::Receiver<Result<Vec<i64>, OutboxError>>);

impl Submitted {
    /// The ids of the deliveries added, once committed.
    pub async fn wait(self) -> Result<Vec<i64>, OutboxError> {
        self.0.await.map_err(|_| outbox_error("writer stopped"))?
    }
}

enum Write {
    Enqueue(Vec<NewDelivery>, oneshot::Sender<Result<Vec<i64>, OutboxError>>),
    Attempts(Vec<AttemptRecord>, oneshot::Sender<Result<(), OutboxError>>),
}

/// The outbox in an SQLite file of its own (its writes never wait on publication appends).
pub struct SqliteOutbox {
    writes: mpsc::Sender<Write>,
    reader: ReadConnection,
}

impl SqliteOutbox {
    pub fn open(path: &Path) -> Result<Self, StorageOpenError> {
        let display = path.display().to_string();
        let open = || {
            let connection =
                Connection::open(path).map_err(|source| StorageOpenError::Open { path: display.clone(), source })?;
            connection
                .busy_timeout(Duration::from_secs(5))
                .and_then(|()| connection.pragma_update(None, "journal_mode", "WAL"))
                .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
                .map_err(|source| StorageOpenError::Open { path: display.clone(), source })?;
            Ok::<_, StorageOpenError>(connection)
        };
        let writer = open()?;
        writer
            .execute_batch(SCHEMA)
            .and_then(|()| add_missing_columns(&writer))
            .map_err(|error| StorageOpenError::Corrupt { path: display.clone(), detail: error.to_string() })?;
        let reader = open()?;
        let (writes, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("herald-outbox".into())
            .spawn(move || write_loop(writer, queue))
            .map_err(StorageOpenError::Thread)?;
        Ok(Self { writes, reader: ReadConnection::new(reader) })
    }

    /// Stores new deliveries (skipping events an endpoint already has); returns the ids of those
    /// added, once committed.
    pub async fn enqueue(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<i64>, OutboxError> {
        self.submit(deliveries).await?.wait().await
    }

    /// Hands new deliveries to the writer, which adds them in the order they were submitted;
    /// [`Submitted::wait`] waits for the commit. (Submitting in order under a lock, then
    /// waiting without it, keeps an order without holding the lock through the fsync.)
    pub async fn submit(&self, deliveries: Vec<NewDelivery>) -> Result<Submitted, OutboxError> {
        let (reply, answer) = oneshot::channel();
        if !deliveries.is_empty() {
            self.writes.send(Write::Enqueue(deliveries, reply)).await.map_err(|_| outbox_error("writer stopped"))?;
        } else {
            let _ = reply.send(Ok(Vec::new()));
        }
        Ok(Submitted(answer))
    }

    /// Records an attempt's outcome (committed when this returns).
    pub async fn record_attempt(&self, attempt: AttemptRecord) -> Result<(), OutboxError> {
        self.record_attempts(vec![attempt]).await
    }

    /// Records the outcomes of one attempt that carried several deliveries, in one commit.
    pub async fn record_attempts(&self, attempts: Vec<AttemptRecord>) -> Result<(), OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.writes.send(Write::Attempts(attempts, reply)).await.map_err(|_| outbox_error("writer stopped"))?;
        answer.await.map_err(|_| outbox_error("writer stopped"))?
    }

    /// Runs `f` on the second connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, OutboxError> {
        self.reader.run(f).await.map_err(outbox_error)
    }

    /// The next pending delivery of a lane.
    pub async fn head(&self, lane: &Lane) -> Result<Option<DeliveryRecord>, OutboxError> {
        Ok(self.heads(lane, 1).await?.pop())
    }

    /// The next `limit` pending deliveries of a lane, in the lane's order.
    pub async fn heads(&self, lane: &Lane, limit: usize) -> Result<Vec<DeliveryRecord>, OutboxError> {
        let lane = lane.clone();
        self.read(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries
                 WHERE endpoint = ?1 AND channel = ?2 AND state = 0 AND (event_type = 'publication') = ?3
                 ORDER BY seq, id LIMIT ?4"
            ))?;
            statement
                .query_map(params![lane.endpoint, lane.channel, lane.publications, limit as i64], delivery_from_row)?
                .collect()
        })
        .await
    }

    /// How many deliveries are pending, across endpoints (the backlog).
    pub async fn pending_count(&self) -> Result<u64, OutboxError> {
        self.read(|connection| {
            connection.query_row("SELECT COUNT(*) FROM deliveries WHERE state = 0", [], |row| row.get::<_, i64>(0))
        })
        .await
        .map(|count| count as u64)
    }

    /// Every lane with pending deliveries (of `endpoint` only, if given).
    pub async fn pending_lanes(&self, endpoint: Option<&str>) -> Result<Vec<Lane>, OutboxError> {
        let endpoint = endpoint.map(str::to_string);
        self.read(move |connection| {
            let mut statement = connection.prepare(
                "SELECT DISTINCT endpoint, channel, event_type = 'publication' FROM deliveries
                 WHERE state = 0 AND (?1 IS NULL OR endpoint = ?1)",
            )?;
            statement
                .query_map(params![endpoint], |row| {
                    Ok(Lane { endpoint: row.get(0)?, channel: row.get(1)?, publications: row.get(2)? })
                })?
                .collect()
        })
        .await
    }

    /// Makes an endpoint's pending deliveries due now (it was resumed after a long pause).
    pub async fn retry_now(&self, endpoint: &str, now: u64) -> Result<(), OutboxError> {
        let endpoint = endpoint.to_string();
        self.read(move |connection| {
            connection.execute(
                "UPDATE deliveries SET next_attempt_at = ?2 WHERE endpoint = ?1 AND state = 0 AND next_attempt_at > ?2",
                params![endpoint, now as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// An endpoint's deliveries, newest first: at most `limit`, with ids below `before`, in
    /// `state` if given.
    pub async fn deliveries(
        &self,
        endpoint: &str,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, OutboxError> {
        let endpoint = endpoint.to_string();
        self.read(move |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries
                 WHERE endpoint = ?1 AND id < ?2 AND (?3 IS NULL OR state = ?3) ORDER BY id DESC LIMIT ?4"
            ))?;
            statement
                .query_map(
                    params![endpoint, before.unwrap_or(i64::MAX), state.map(DeliveryState::code), limit as i64],
                    delivery_from_row,
                )?
                .collect()
        })
        .await
    }

    /// Makes deliveries of an endpoint pending again, to be sent now: the dead ones, or with
    /// `since` every one created since then. Returns how many.
    pub async fn requeue(&self, endpoint: &str, since: Option<u64>, now: u64) -> Result<usize, OutboxError> {
        let endpoint = endpoint.to_string();
        self.read(move |connection| {
            let changed = connection.execute(
                "UPDATE deliveries SET state = 0, attempts = 0, next_attempt_at = ?2, finished_at = NULL
                 WHERE endpoint = ?1 AND ((?3 IS NULL AND state = 2) OR created_at >= ?3)",
                params![endpoint, now as i64, since.map(|since| since.min(i64::MAX as u64) as i64)],
            )?;
            Ok(changed)
        })
        .await
    }

    /// Deletes finished deliveries (delivered or dead) that finished before `before`.
    pub async fn prune(&self, before: u64) -> Result<usize, OutboxError> {
        self.read(move |connection| {
            connection.execute("DELETE FROM deliveries WHERE state != 0 AND finished_at < ?1", params![before as i64])
        })
        .await
    }

    pub async fn endpoints(&self) -> Result<Vec<EndpointRecord>, OutboxError> {
        self.read(|connection| {
            let mut statement =
                connection.prepare(&format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY created_at, id"))?;
            statement.query_map([], endpoint_from_row)?.collect()
        })
        .await
    }

    /// Creates or replaces an endpoint.
    pub async fn put_endpoint(&self, endpoint: EndpointRecord) -> Result<(), OutboxError> {
        self.read(move |connection| {
            connection.execute(
                &format!(
                    "INSERT OR REPLACE INTO endpoints ({ENDPOINT_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ),
                params![
                    endpoint.id,
                    endpoint.url,
                    join_list(&endpoint.channels),
                    join_list(&endpoint.events),
                    endpoint.secret,
                    endpoint.previous_secret,
                    endpoint.previous_secret_until.map(|at| at as i64),
                    endpoint.description,
                    endpoint.paused,
                    endpoint.disabled_reason,
                    endpoint.failing_since.map(|at| at as i64),
                    endpoint.created_at as i64,
                    endpoint.from_config,
                    endpoint.pusher_key,
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes an endpoint and its deliveries; returns whether it existed.
    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, OutboxError> {
        let id = id.to_string();
        self.read(move |connection| {
            let deleted = connection.execute("DELETE FROM endpoints WHERE id = ?1", params![id])?;
            connection.execute("DELETE FROM deliveries WHERE endpoint = ?1", params![id])?;
            Ok(deleted > 0)
        })
        .await
    }
}

const DELIVERY_COLUMNS: &str = "id, endpoint, channel, event_type, body, created_at, state, attempts, \
    next_attempt_at, last_status, last_error, last_latency_ms, finished_at";
const ENDPOINT_COLUMNS: &str = "id, url, channels, events, secret, previous_secret, previous_secret_until, \
    description, paused, disabled_reason, failing_since, created_at, from_config, pusher_key";

/// Columns added since the first schema, for outboxes made before them.
fn add_missing_columns(connection: &Connection) -> rusqlite::Result<()> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info('endpoints')")?;
    let columns: Vec<String> = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    if !columns.iter().any(|column| column == "pusher_key") {
        connection.execute_batch("ALTER TABLE endpoints ADD COLUMN pusher_key TEXT")?;
    }
    Ok(())
}

fn delivery_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: row.get(0)?,
        endpoint: row.get(1)?,
        channel: row.get(2)?,
        event_type: row.get(3)?,
        body: row.get(4)?,
        created_at: row.get::<_, i64>(5)? as u64,
        state: DeliveryState::from_code(row.get(6)?),
        attempts: row.get::<_, i64>(7)? as u32,
        next_attempt_at: row.get::<_, i64>(8)? as u64,
        last_status: row.get::<_, Option<i64>>(9)?.map(|status| status as u16),
        last_error: row.get(10)?,
        last_latency_ms: row.get::<_, Option<i64>>(11)?.map(|ms| ms as u64),
        finished_at: row.get::<_, Option<i64>>(12)?.map(|at| at as u64),
    })
}

fn endpoint_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EndpointRecord> {
    Ok(EndpointRecord {
        id: row.get(0)?,
        url: row.get(1)?,
        channels: split_list(&row.get::<_, String>(2)?),
        events: split_list(&row.get::<_, String>(3)?),
        secret: row.get(4)?,
        previous_secret: row.get(5)?,
        previous_secret_until: row.get::<_, Option<i64>>(6)?.map(|at| at as u64),
        description: row.get(7)?,
        paused: row.get(8)?,
        disabled_reason: row.get(9)?,
        failing_since: row.get::<_, Option<i64>>(10)?.map(|at| at as u64),
        created_at: row.get::<_, i64>(11)? as u64,
        from_config: row.get(12)?,
        pusher_key: row.get(13)?,
    })
}

/// Channel patterns and event types never contain a newline: one per line.
fn join_list(items: &[String]) -> String {
    items.join("\n")
}

fn split_list(text: &str) -> Vec<String> {
    text.split('\n').filter(|item| !item.is_empty()).map(str::to_string).collect()
}

fn write_loop(mut connection: Connection, mut queue: mpsc::Receiver<Write>) {
    let mut group = Vec::with_capacity(GROUP);
    while queue.blocking_recv().map(|write| group.push(write)).is_some() {
        while group.len() < GROUP
            && let Ok(write) = queue.try_recv()
        {
            group.push(write);
        }
        let outcome = write_group(&mut connection, &group);
        for (write, result) in group.drain(..).zip(outcome) {
            match write {
                Write::Enqueue(_, reply) => {
                    let _ = reply.send(result);
                }
                Write::Attempts(_, reply) => {
                    let _ = reply.send(result.map(|_| ()));
                }
            }
        }
    }
}

/// Writes a group in one transaction; every write gets the group's fate.
fn write_group(connection: &mut Connection, group: &[Write]) -> Vec<Result<Vec<i64>, OutboxError>> {
    let written = (|| {
        let transaction = connection.transaction()?;
        let mut ids = Vec::with_capacity(group.len());
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR IGNORE INTO deliveries
                 (endpoint, channel, event_type, event_key, seq, body, created_at, state, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?7)",
            )?;
            let mut update = transaction.prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = ?3, next_attempt_at = ?4, last_status = ?5,
                 last_error = ?6, last_latency_ms = ?7, finished_at = CASE WHEN ?2 = 0 THEN NULL ELSE ?8 END
                 WHERE id = ?1",
            )?;
            for write in group {
                match write {
                    Write::Enqueue(deliveries, _) => {
                        let mut these = Vec::with_capacity(deliveries.len());
                        for delivery in deliveries {
                            let added = insert.execute(params![
                                delivery.endpoint,
                                delivery.channel,
                                delivery.event_type,
                                delivery.event_key,
                                delivery.seq as i64,
                                delivery.body,
                                delivery.created_at as i64
                            ])?;
                            if added > 0 {
                                these.push(transaction.last_insert_rowid());
                            }
                        }
                        ids.push(these);
                    }
                    Write::Attempts(attempts, _) => {
                        for attempt in attempts {
                            update.execute(params![
                                attempt.id,
                                attempt.state.code(),
                                attempt.attempts as i64,
                                attempt.next_attempt_at as i64,
                                attempt.status.map(i64::from),
                                attempt.error,
                                attempt.latency_ms as i64,
                                attempt.at as i64,
                            ])?;
                        }
                        ids.push(Vec::new());
                    }
                }
            }
        }
        transaction.commit()?;
        Ok::<_, rusqlite::Error>(ids)
    })();
    match written {
        Ok(ids) => ids.into_iter().map(Ok).collect(),
        Err(error) => group.iter().map(|_| Err(outbox_error(&error))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(endpoint: &str, channel: &str) -> Lane {
        Lane { endpoint: endpoint.into(), channel: channel.into(), publications: true }
    }

    fn delivery(endpoint: &str, channel: &str, body: &str) -> NewDelivery {
        NewDelivery {
            endpoint: endpoint.into(),
            channel: channel.into(),
            event_type: "publication".into(),
            event_key: format!("{channel}:{body}"),
            seq: body.parse().unwrap_or(0),
            body: body.into(),
            created_at: 1_000,
        }
    }

    fn endpoint(id: &str) -> EndpointRecord {
        EndpointRecord {
            id: id.into(),
            url: "https://example.com/hook".into(),
            channels: vec!["chat:*".into(), "news".into()],
            events: vec!["publication".into()],
            secret: "whsec_c2VjcmV0".into(),
            previous_secret: None,
            previous_secret_until: None,
            description: Some("d".into()),
            paused: false,
            disabled_reason: None,
            failing_since: None,
            created_at: 5,
            from_config: false,
            pusher_key: None,
        }
    }

    #[tokio::test]
    async fn lanes_deliver_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhooks.db");
        {
            let outbox = SqliteOutbox::open(&path).unwrap();
            outbox.put_endpoint(endpoint("e1")).await.unwrap();
            let ids = outbox
                .enqueue(vec![delivery("e1", "a", "1"), delivery("e1", "b", "1"), delivery("e1", "a", "2")])
                .await
                .unwrap();
            assert_eq!(ids.len(), 3);
            let again = outbox.enqueue(vec![delivery("e1", "a", "2"), delivery("e2", "a", "2")]).await.unwrap();
            assert_eq!(again.len(), 1, "e1 has that event already; e2 does not");
            let head = outbox.head(&lane("e1", "a")).await.unwrap().unwrap();
            assert_eq!((head.id, head.body.as_str(), head.state), (ids[0], "1", DeliveryState::Pending));
            let attempt = AttemptRecord {
                id: head.id,
                state: DeliveryState::Delivered,
                attempts: 1,
                next_attempt_at: 0,
                status: Some(200),
                error: None,
                latency_ms: 3,
                at: 2_000,
            };
            outbox.record_attempt(attempt).await.unwrap();
            assert_eq!(outbox.head(&lane("e1", "a")).await.unwrap().unwrap().body, "2");
        }
        let outbox = SqliteOutbox::open(&path).unwrap();
        let mut lanes = outbox.pending_lanes(None).await.unwrap();
        lanes.sort();
        assert_eq!(lanes, [lane("e1", "a"), lane("e1", "b"), lane("e2", "a")]);
        assert_eq!(outbox.pending_lanes(Some("e2")).await.unwrap(), [lane("e2", "a")]);
        assert_eq!(outbox.endpoints().await.unwrap(), [endpoint("e1")]);
        let log = outbox.deliveries("e1", None, None, 10).await.unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[2].last_status, Some(200), "newest first");
        let delivered = outbox.deliveries("e1", Some(DeliveryState::Delivered), None, 10).await.unwrap();
        assert_eq!(delivered.len(), 1);
    }

    #[tokio::test]
    async fn an_outbox_made_before_pusher_endpoints_gains_their_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhooks.db");
        let old_schema = SCHEMA.replace(",\n    pusher_key TEXT", "");
        assert_ne!(old_schema, SCHEMA);
        Connection::open(&path).unwrap().execute_batch(&old_schema).unwrap();
        let outbox = SqliteOutbox::open(&path).unwrap();
        let pusher = EndpointRecord { pusher_key: Some("app-key".into()), ..endpoint("p1") };
        outbox.put_endpoint(pusher.clone()).await.unwrap();
        drop(outbox);
        let reopened = SqliteOutbox::open(&path).unwrap();
        assert_eq!(reopened.endpoints().await.unwrap(), [pusher]);
    }

    #[tokio::test]
    async fn dead_deliveries_are_replayed_and_old_finished_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = SqliteOutbox::open(&dir.path().join("webhooks.db")).unwrap();
        let ids = outbox.enqueue(vec![delivery("e1", "a", "1"), delivery("e1", "a", "2")]).await.unwrap();
        for (id, state) in [(ids[0], DeliveryState::Dead), (ids[1], DeliveryState::Delivered)] {
            let attempt = AttemptRecord {
                id,
                state,
                attempts: 8,
                next_attempt_at: 0,
                status: Some(500),
                error: Some("boom".into()),
                latency_ms: 1,
                at: 3_000,
            };
            outbox.record_attempt(attempt).await.unwrap();
        }
        assert_eq!(outbox.head(&lane("e1", "a")).await.unwrap(), None);
        assert_eq!(outbox.requeue("e1", None, 4_000).await.unwrap(), 1);
        let head = outbox.head(&lane("e1", "a")).await.unwrap().unwrap();
        assert_eq!((head.id, head.attempts, head.next_attempt_at), (ids[0], 0, 4_000));
        assert_eq!(outbox.requeue("e1", Some(0), 5_000).await.unwrap(), 2, "since a time: delivered ones too");
        assert_eq!(outbox.prune(10_000).await.unwrap(), 0, "pending ones are never pruned");
        outbox.put_endpoint(endpoint("e1")).await.unwrap();
        assert!(outbox.delete_endpoint("e1").await.unwrap());
        assert_eq!(outbox.head(&lane("e1", "a")).await.unwrap(), None, "its deliveries went with it");
        assert!(!outbox.delete_endpoint("e1").await.unwrap());
    }
}
