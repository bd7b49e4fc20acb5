//! The `clickhouse` sink: one inserter thread per sink, fed by every shard.
//!
//! Shards encode their batches to RowBinary (`encode.rs`) and hand the bytes to the
//! sink's thread through a bounded channel. The thread gathers each table's rows and
//! sends an insert when `batch.max_rows`, `batch.max_bytes` or `batch.max_delay` is
//! reached, retrying with exponential backoff while the server is unreachable. While it
//! retries it reads nothing, the channel fills, and the shards block on it: the job slows
//! down to what ClickHouse takes, memory stays bounded (the channel plus one batch per
//! table), and nothing is dropped. A writer's `close` waits until everything it sent is
//! inserted, so the runtime commits Kafka offsets only after the rows are in ClickHouse.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use super::config::{ClickHouseSinkConfig, Compression};
use super::ddl::{self, Features, ServerVersion};
use super::encode::{ServerColumn, TablePlan};
use crate::runtime::io::{ConnectorError, Position, Sink, TableWriter};

/// Encoded batches that may wait in the channel (each at most one shard batch, about
/// 1,024 rows), on top of one `max_bytes` buffer per table in the thread.
const CHANNEL_BATCHES: usize = 64;

/// A ClickHouse sink's table as the planner resolved it; the connection and the sink's
/// thread are created on first use, so planning (and `spanflow validate`) never connects.
#[derive(Debug, Clone)]
pub struct ClickHouseTarget {
    /// The sink's settings.
    pub config: Arc<ClickHouseSinkConfig>,
    /// Sink node name.
    pub sink: String,
    /// Output written by this target.
    pub output: String,
    /// `database.table`, for messages.
    pub qualified: String,
    /// Every table of the sink (created and checked together).
    tables: Arc<Vec<SinkTable>>,
    shared: Arc<Mutex<Option<Arc<SinkHandle>>>>,
}

/// One table of a sink: the output it holds, the schema of its rows and its layout.
#[derive(Debug, Clone)]
pub struct SinkTable {
    /// Output name.
    pub output: String,
    /// The rows' schema.
    pub schema: SchemaRef,
    /// Key, partitioning and column types.
    pub layout: ddl::TableLayout,
}

impl SinkTable {
    /// The table of one of spanflow's built-in outputs.
    pub fn builtin(output: &str) -> Result<SinkTable, ConnectorError> {
        let layout = ddl::layout(output).ok_or_else(|| {
            ConnectorError::user(format!(
                "`{output}` is not an output spanflow can write to ClickHouse"
            ))
        })?;
        let schema = crate::tables::schema(output)
            .ok_or_else(|| ConnectorError::internal(format!("no schema for `{output}`")))?;
        Ok(SinkTable {
            output: output.to_owned(),
            schema,
            layout,
        })
    }

    /// A built-in table of kind `builtin` (`traces`, ...) written under the output name
    /// `output` (`<node>_<port>` when two nodes of a job write that kind).
    pub fn builtin_as(builtin: &str, output: &str) -> Result<SinkTable, ConnectorError> {
        Ok(SinkTable {
            output: output.to_owned(),
            ..SinkTable::builtin(builtin)?
        })
    }

    /// The table of a rollup whose result has `schema` and natural `key`.
    pub fn rollup(
        name: &str,
        schema: &SchemaRef,
        key: &[String],
    ) -> Result<SinkTable, ConnectorError> {
        Ok(SinkTable {
            output: name.to_owned(),
            schema: schema.clone(),
            layout: ddl::TableLayout::of_rollup(name, schema, key)?,
        })
    }
}

/// A running sink: the channel to its thread (which ends when the last sender is
/// dropped, after inserting what it holds) and each table's encoding plan.
#[derive(Debug)]
pub struct SinkHandle {
    tx: SyncSender<Msg>,
    plans: HashMap<String, (usize, Arc<TablePlan>)>,
    failed: Arc<Mutex<Option<ConnectorError>>>,
    /// Inserts that failed and were retried.
    retries: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Msg {
    Rows {
        table: usize,
        rows: usize,
        data: Vec<u8>,
    },
    /// Insert everything buffered, then answer.
    Flush(mpsc::Sender<Result<(), ConnectorError>>),
}

impl ClickHouseTarget {
    /// A target for `output` of the sink `sink` (whose tables are `tables`); `shared` is
    /// shared by the sink's targets.
    pub fn new(
        config: Arc<ClickHouseSinkConfig>,
        sink: &str,
        output: &str,
        tables: Arc<Vec<SinkTable>>,
        shared: Arc<Mutex<Option<Arc<SinkHandle>>>>,
    ) -> Self {
        ClickHouseTarget {
            qualified: format!("{}.{}", config.database, config.table_of(output)),
            config,
            sink: sink.to_owned(),
            output: output.to_owned(),
            tables,
            shared,
        }
    }

    /// The slot a sink's targets share.
    pub fn new_shared() -> Arc<Mutex<Option<Arc<SinkHandle>>>> {
        Arc::new(Mutex::new(None))
    }

    /// The sink's running handle, started (tables created and checked) on first use.
    fn handle(&self) -> Result<Arc<SinkHandle>, ConnectorError> {
        let mut slot = self
            .shared
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?;
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let h = Arc::new(start(&self.config, &self.sink, &self.tables)?);
        *slot = Some(h.clone());
        Ok(h)
    }
}

impl Sink for ClickHouseTarget {
    fn location(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("clickhouse:{}", self.qualified))
    }

    fn open(
        &self,
        _part: usize,
        _schema: SchemaRef,
    ) -> Result<Box<dyn TableWriter>, ConnectorError> {
        Ok(Box::new(ClickHouseTableWriter::create(self)?))
    }

    fn failed_attempts(&self) -> u64 {
        self.shared
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|h| h.retries.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
}

/// Writes one table's batches of one shard.
pub struct ClickHouseTableWriter {
    handle: Arc<SinkHandle>,
    table: usize,
    plan: Arc<TablePlan>,
    rows: u64,
}

/// Runs `f`, which may block for long (the sink is behind), telling the job's tokio
/// runtime first so that its other tasks (the Ctrl-C handler among them) keep running.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl ClickHouseTableWriter {
    /// A writer of `target`'s rows (in the schema of its output's table).
    pub fn create(target: &ClickHouseTarget) -> Result<Self, ConnectorError> {
        let handle = target.handle()?;
        let (table, plan) = handle.plans.get(&target.output).cloned().ok_or_else(|| {
            ConnectorError::internal(format!("no plan for output `{}`", target.output))
        })?;
        Ok(ClickHouseTableWriter {
            handle,
            table,
            plan,
            rows: 0,
        })
    }

    fn failure(&self) -> Option<ConnectorError> {
        self.handle.failed.lock().ok().and_then(|f| f.clone())
    }

    fn flush(&self) -> Result<(), ConnectorError> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.handle
            .tx
            .send(Msg::Flush(ack_tx))
            .map_err(|_| self.inserter_stopped())?;
        match blocking(|| ack_rx.recv()) {
            Ok(r) => r,
            Err(_) => Err(self.inserter_stopped()),
        }
    }

    fn inserter_stopped(&self) -> ConnectorError {
        self.failure()
            .unwrap_or_else(|| ConnectorError::internal("the sink's inserter stopped"))
    }
}

impl TableWriter for ClickHouseTableWriter {
    /// Encodes `batch` and queues it; blocks while the sink is behind (backpressure).
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let mut data = Vec::with_capacity(batch.get_array_memory_size());
        self.plan.encode(batch, &mut data)?;
        let (tx, table, rows) = (&self.handle.tx, self.table, batch.num_rows());
        blocking(|| tx.send(Msg::Rows { table, rows, data }))
            .map_err(|_| self.inserter_stopped())?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Waits until every row queued so far is inserted: a checkpoint never covers a
    /// row that could still be lost (a replay collapses in the ReplacingMergeTree).
    fn precommit(&mut self) -> Result<Option<Position>, ConnectorError> {
        self.flush()?;
        Ok(None)
    }

    /// Waits until every row queued so far is inserted.
    fn close(self: Box<Self>) -> Result<u64, ConnectorError> {
        self.flush()?;
        Ok(self.rows)
    }
}

/// The connection settings of a sink.
pub(crate) fn client_of(
    config: &ClickHouseSinkConfig,
) -> Result<clickhouse::Client, ConnectorError> {
    let mut c = clickhouse::Client::default()
        .with_url(config.resolved_url())
        // 18.16 has no RowBinaryWithNamesAndTypes; `TablePlan` checks the schema instead.
        .with_validation(false)
        .with_compression(match config.compression {
            Compression::Lz4 => clickhouse::Compression::Lz4,
            Compression::None => clickhouse::Compression::None,
        });
    if let Some(u) = config.resolved_user()? {
        c = c.with_user(u);
    }
    if let Some(p) = config.resolved_password()? {
        c = c.with_password(p);
    }
    for (k, v) in &config.settings {
        c = c.with_setting(k, v);
    }
    Ok(c)
}

/// ClickHouse error codes that pass with time (overload, timeouts, network).
const RETRIABLE_CODES: &[u32] = &[
    159, // TIMEOUT_EXCEEDED
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    236, // ABORTED
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY (a replica starting)
    252, // TOO_MANY_PARTS (but see `retriable`)
    319, // UNKNOWN_STATUS_OF_INSERT
    394, // QUERY_WAS_CANCELLED
    425, // SYSTEM_ERROR
    439, // CANNOT_SCHEDULE_TASK
    999, // KEEPER_EXCEPTION
];

/// The ClickHouse error code in a server message (`Code: 53, e.displayText() = ...` on
/// old servers, `Code: 53. DB::Exception: ...` on new ones), or a bare code.
pub fn error_code(message: &str) -> Option<u32> {
    if let Ok(c) = message.trim().parse() {
        return Some(c);
    }
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether a failed request may succeed when repeated.
pub fn retriable(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error;
    match e {
        Error::Network(_) | Error::TimedOut => true,
        Error::BadResponse(msg) => {
            if msg.contains("Code:") {
                // 252 is also "too many partitions for single INSERT block", which
                // repeating cannot fix.
                !msg.contains("partitions for single INSERT")
                    && error_code(msg).is_some_and(|c| RETRIABLE_CODES.contains(&c))
            } else if let Ok(code) = msg.trim().parse::<u32>() {
                // The bare code of the X-ClickHouse-Exception-Code header.
                RETRIABLE_CODES.contains(&code)
            } else {
                // No ClickHouse error: an HTTP status line or a proxy's page. Only a 4xx
                // status (a wrong URL or path) is not worth repeating.
                let status = msg
                    .trim()
                    .get(..3)
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
                !status.is_some_and(|s| s.starts_with('4'))
            }
        }
        _ => false,
    }
}

/// Retries `op` per the sink's retry settings while it fails with a retriable error.
async fn with_retries<T, F, Fut>(
    config: &ClickHouseSinkConfig,
    sink: &str,
    what: &str,
    retries: Option<&AtomicU64>,
    mut op: F,
) -> Result<T, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, clickhouse::error::Error>>,
{
    let started = Instant::now();
    let mut backoff = config.retry.initial_backoff.0;
    let mut attempts = 0u32;
    let mut last_warning: Option<Instant> = None;
    loop {
        match op().await {
            Ok(v) => {
                if attempts > 0 {
                    tracing::info!(
                        "clickhouse sink `{sink}`: {what} succeeded after {attempts} retries ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(v);
            }
            Err(e) => {
                let url = config.display_url();
                if !retriable(&e) {
                    // What does not pass with time is the job's to fix (credentials, a
                    // table's definition, a query the server refuses).
                    return Err(ConnectorError::user(format!("{what} at {url}: {e}")));
                }
                if let Some(max) = config.retry.max_elapsed
                    && started.elapsed() >= max.0
                {
                    return Err(ConnectorError::external(format!(
                        "{what} at {url}: still failing after {:.1} s and {attempts} retries \
                         (retry.max_elapsed): {e}",
                        started.elapsed().as_secs_f64()
                    )));
                }
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        "clickhouse sink `{sink}`: {what} at {url} failed ({e}); retrying \
                         (backoff up to {:?}); the job waits for the server",
                        config.retry.max_backoff.0
                    );
                    last_warning = Some(Instant::now());
                }
                attempts += 1;
                if let Some(r) = retries {
                    r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry.max_backoff.0);
            }
        }
    }
}

/// Runs a query and returns its TabSeparated output.
async fn query_text(
    client: &clickhouse::Client,
    sql: &str,
    timeout: Duration,
) -> Result<String, clickhouse::error::Error> {
    let fetch = async {
        client
            .query(sql)
            .fetch_bytes("TabSeparated")?
            .collect()
            .await
    };
    let bytes = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| clickhouse::error::Error::TimedOut)??;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs a statement, giving up after `timeout`.
async fn execute(
    client: &clickhouse::Client,
    sql: &str,
    timeout: Duration,
) -> Result<(), clickhouse::error::Error> {
    tokio::time::timeout(timeout, client.query(sql).execute())
        .await
        .map_err(|_| clickhouse::error::Error::TimedOut)?
}
/// A SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What the server is and which features its DDL may use.
pub async fn server_features(
    client: &clickhouse::Client,
    timeout: Duration,
) -> Result<(String, Features), clickhouse::error::Error> {
    let v = query_text(client, "SELECT version()", timeout).await?;
    let v = v.trim().to_owned();
    let features = ServerVersion::parse(&v)
        .map(Features::of)
        .unwrap_or_else(Features::legacy);
    Ok((v, features))
}

/// Starts the sink's thread, which connects, creates the tables when asked and checks
/// every table's columns (answering here), then inserts what the writers send.
fn start(
    config: &ClickHouseSinkConfig,
    sink: &str,
    tables: &[SinkTable],
) -> Result<SinkHandle, ConnectorError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::sync_channel(CHANNEL_BATCHES);
    let failed = Arc::new(Mutex::new(None));
    let (config, sink_name, tables) = (config.clone(), sink.to_owned(), tables.to_vec());
    let outputs: Vec<String> = tables.iter().map(|t| t.output.clone()).collect();
    let thread_failed = failed.clone();
    let retries = Arc::new(AtomicU64::new(0));
    let thread_retries = retries.clone();
    std::thread::Builder::new()
        .name(format!("clickhouse-{sink}"))
        .spawn(move || {
            // Its own runtime: the job's runtime threads block on this sink's channel.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(ConnectorError::internal(format!(
                        "cannot start the sink's runtime: {e}"
                    ))));
                    return;
                }
            };
            let client = match client_of(&config) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            match rt.block_on(prepare(&config, &sink_name, &tables, &client)) {
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
                Ok(plans) => {
                    let inserter =
                        Inserter::new(config, sink_name, client, &outputs, &plans, thread_failed);
                    let inserter = Inserter {
                        retries: thread_retries,
                        ..inserter
                    };
                    let _ = ready_tx.send(Ok(plans));
                    inserter.run(rt, rx);
                }
            }
        })
        .map_err(|e| ConnectorError::internal(format!("cannot start the sink's thread: {e}")))?;
    let plans = ready_rx
        .recv()
        .map_err(|_| ConnectorError::internal("the sink's thread stopped during start"))??;
    Ok(SinkHandle {
        tx,
        plans,
        failed,
        retries,
    })
}

type Plans = HashMap<String, (usize, Arc<TablePlan>)>;

/// Connects, creates the database and tables when asked, and plans each table's
/// encoding from its columns.
async fn prepare(
    config: &ClickHouseSinkConfig,
    sink: &str,
    tables: &[SinkTable],
    client: &clickhouse::Client,
) -> Result<Plans, ConnectorError> {
    let timeout = config.request_timeout.0;
    let (version, features) = with_retries(config, sink, "connecting", None, || {
        server_features(client, timeout)
    })
    .await?;
    tracing::info!(
        "clickhouse sink `{sink}`: server {version} at {}",
        config.display_url()
    );
    if config.create_tables {
        let sql = format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            ddl::quote(&config.database)
        );
        with_retries(config, sink, "creating the database", None, || {
            execute(client, &sql, timeout)
        })
        .await?;
        if !features.ttl && tables.iter().any(|t| config.ttl_of(&t.output).is_some()) {
            tracing::warn!(
                "clickhouse sink `{sink}`: server {version} has no TTL (19.6 and later do): \
                 the tables are created without one and keep their rows until deleted"
            );
        }
        for SinkTable {
            output,
            schema,
            layout,
        } in tables
        {
            let ttl = config.ttl_of(output);
            let sql = ddl::create_table(
                layout,
                schema,
                &config.database,
                &config.table_of(output),
                ttl,
                features,
            );
            with_retries(
                config,
                sink,
                &format!("creating table for `{output}`"),
                None,
                || execute(client, &sql, timeout),
            )
            .await?;
        }
    }
    let mut plans = HashMap::new();
    for (
        i,
        SinkTable {
            output,
            schema,
            layout,
        },
    ) in tables.iter().enumerate()
    {
        let table = config.table_of(output);
        let qualified = format!("{}.{}", config.database, table);
        let sql = format!(
            "SELECT name, type FROM system.columns WHERE database = {} AND table = {}",
            literal(&config.database),
            literal(&table)
        );
        let text = with_retries(config, sink, "reading the table's columns", None, || {
            query_text(client, &sql, timeout)
        })
        .await?;
        let columns: Vec<ServerColumn> = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, t)| ServerColumn {
                name: n.to_owned(),
                ty: t.replace("\\'", "'"),
            })
            .collect();
        if columns.is_empty() {
            let how = if ddl::layout(output).is_some() {
                format!("create it with schemas/clickhouse/{output}.sql")
            } else {
                // A rollup's table depends on its query: show the DDL for this server.
                format!(
                    "create it with\n{};",
                    ddl::create_table(
                        layout,
                        schema,
                        &config.database,
                        &table,
                        config.ttl_of(output),
                        features
                    )
                )
            };
            return Err(ConnectorError::user(format!(
                "table `{qualified}` does not exist: set `create_tables: true` on the sink, or \
                 {how}"
            )));
        }
        let plan = TablePlan::new(&qualified, schema, &columns, config.version)?;
        // Replays collapse only in a ReplacingMergeTree: say so when the table is not one
        // (created by hand, say); the rows are still written.
        let engine_sql = format!(
            "SELECT engine FROM system.tables WHERE database = {} AND name = {}",
            literal(&config.database),
            literal(&table)
        );
        let engine = with_retries(config, sink, "reading the table's engine", None, || {
            query_text(client, &engine_sql, timeout)
        })
        .await?;
        if !engine.contains("ReplacingMergeTree") {
            tracing::warn!(
                "clickhouse sink `{sink}`: table `{qualified}` is {}, not a ReplacingMergeTree: \
                 a replay of the same input will duplicate its rows",
                engine.trim()
            );
        }
        plans.insert(output.clone(), (i, Arc::new(plan)));
    }
    Ok(plans)
}

/// Rows of one table waiting for their insert.
#[derive(Default)]
struct Buffer {
    data: Vec<u8>,
    rows: usize,
    since: Option<Instant>,
}

/// The sink's thread.
struct Inserter {
    config: ClickHouseSinkConfig,
    sink: String,
    client: clickhouse::Client,
    sql: Vec<String>,
    names: Vec<String>,
    buffers: Vec<Buffer>,
    failed: Arc<Mutex<Option<ConnectorError>>>,
    retries: Arc<AtomicU64>,
}

impl Inserter {
    fn new(
        config: ClickHouseSinkConfig,
        sink: String,
        client: clickhouse::Client,
        outputs: &[String],
        plans: &Plans,
        failed: Arc<Mutex<Option<ConnectorError>>>,
    ) -> Inserter {
        let sql = outputs
            .iter()
            .map(|o| {
                let cols: Vec<String> = plans
                    .get(o)
                    .map(|(_, p)| p.insert_columns.iter().map(|c| ddl::quote(c)).collect())
                    .unwrap_or_default();
                format!(
                    "INSERT INTO {}.{} ({}) FORMAT RowBinary",
                    ddl::quote(&config.database),
                    ddl::quote(&config.table_of(o)),
                    cols.join(", ")
                )
            })
            .collect();
        Inserter {
            sql,
            names: outputs.to_vec(),
            buffers: outputs.iter().map(|_| Buffer::default()).collect(),
            config,
            sink,
            client,
            failed,
            retries: Arc::default(),
        }
    }

    fn run(mut self, rt: tokio::runtime::Runtime, rx: Receiver<Msg>) {
        let max_delay = self.config.batch.max_delay.0;
        loop {
            let wait = self
                .buffers
                .iter()
                .filter_map(|b| b.since)
                .map(|s| max_delay.saturating_sub(s.elapsed()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(Msg::Rows { table, rows, data }) => {
                    if self.is_failed() {
                        continue;
                    }
                    let Some(b) = self.buffers.get_mut(table) else {
                        continue;
                    };
                    if b.rows == 0 {
                        b.since = Some(Instant::now());
                        // The first chunk becomes the buffer: no copy, and no buffer of
                        // `max_bytes` held per table while it fills.
                        b.data = data;
                    } else {
                        b.data.extend_from_slice(&data);
                    }
                    b.rows += rows;
                    if b.rows >= self.config.batch.max_rows
                        || b.data.len() >= self.config.batch.max_bytes
                    {
                        self.insert(&rt, table);
                    }
                    // While the channel never runs dry (backpressure), the timeout arm
                    // below never fires: small tables must still go out on time.
                    self.insert_overdue(&rt, max_delay);
                }
                Ok(Msg::Flush(ack)) => {
                    for t in 0..self.buffers.len() {
                        self.insert(&rt, t);
                    }
                    let r = match self.failed.lock().ok().and_then(|f| f.clone()) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                    let _ = ack.send(r);
                }
                Err(RecvTimeoutError::Timeout) => self.insert_overdue(&rt, max_delay),
                Err(RecvTimeoutError::Disconnected) => {
                    for t in 0..self.buffers.len() {
                        self.insert(&rt, t);
                    }
                    return;
                }
            }
        }
    }

    /// Inserts every table whose oldest row has waited `max_delay`.
    fn insert_overdue(&mut self, rt: &tokio::runtime::Runtime, max_delay: Duration) {
        for t in 0..self.buffers.len() {
            if self.buffers[t]
                .since
                .is_some_and(|s| s.elapsed() >= max_delay)
            {
                self.insert(rt, t);
            }
        }
    }

    fn is_failed(&self) -> bool {
        self.failed.lock().map_or(true, |f| f.is_some())
    }

    /// Inserts table `t`'s buffered rows (retrying as configured); a failure that cannot
    /// pass is kept and reported to every writer.
    fn insert(&mut self, rt: &tokio::runtime::Runtime, t: usize) {
        let b = &mut self.buffers[t];
        if b.rows == 0 {
            return;
        }
        let rows = b.rows;
        let data = Bytes::from(std::mem::take(&mut b.data));
        b.rows = 0;
        b.since = None;
        if self.is_failed() {
            return;
        }
        let sql = &self.sql[t];
        let client = &self.client;
        let timeout = self.config.request_timeout.0;
        let what = format!("inserting {rows} rows of `{}`", self.names[t]);
        let r = rt.block_on(with_retries(
            &self.config,
            &self.sink,
            &what,
            Some(&self.retries),
            || {
                let data = data.clone();
                async move {
                    let mut insert = client
                        .insert_formatted_with(sql.clone())
                        .with_timeouts(Some(timeout), Some(timeout));
                    // One send per insert: every compressed block then holds whole rows
                    // (old servers mis-read RowBinary rows split across blocks).
                    insert.send(data).await?;
                    insert.end().await
                }
            },
        ));
        if let Err(e) = r
            && let Ok(mut f) = self.failed.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    }
}
