//! The shared store: PostgreSQL, for several coordinators on one database
//! (`shoal serve --store postgres://…`).
//!
//! Every write runs in one transaction at READ COMMITTED that first locks its
//! cluster's row (`SELECT … FOR UPDATE`): writes to one cluster, from any coordinator,
//! run one after another, each seeing everything committed before it, which is the
//! serial order SQLite's single writer gives. A transaction locks one cluster row and
//! then only rows of that cluster, so two transactions never wait on each other in a
//! cycle (no deadlock), and none can fail on a serialization conflict that would need a
//! retry. The one write that takes no lock is a liveness report (the report already
//! stored, sent again): a single `UPDATE` guarded by the stored fingerprint, which
//! PostgreSQL re-checks on the row's newest version, so a concurrent change of the node
//! makes it fall through to the locked path.
//!
//! The schema is versioned in a `schema_version` table and migrated on open under an
//! advisory lock (two coordinators starting together migrate once); a database of a
//! newer schema is refused ([`StoreError::SchemaTooNew`]).
//!
//! The connection is plain TCP or a Unix socket, without TLS: run the database on the
//! coordinators' private network or on their machine (docs/several-coordinators.md).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_protocol::{NodeStatus, Phase, Plan};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, Config, GenericClient, IsolationLevel, NoTls, Row, Transaction};

use super::raw::{self, RawCluster, RawNode};
use super::{
    degraded_reason, now_ms, status_fingerprint, ChangeKind, ChangeRow, ChangeSpec, ClusterEvent,
    ClusterRow, ClusterState, GenerationRow, History, Lease, NewChange, NodeRow, Notice,
    ReportOutcome, SilentNode, Store, StoreError, StoreFuture, StoreStats, StoredPlan, VmRecord,
    KEPT_GENERATIONS, MAX_EVENTS,
};

/// The environment variable `serve` and `doctor` read the database URL from, so the
/// password never sits in a command line (`ps` shows those to every user).
pub const URL_ENV: &str = "SHOAL_STORE_URL";

/// Connections each coordinator keeps open to the database.
const POOL_SIZE: usize = 8;

/// The advisory lock held while migrating (an arbitrary constant: "shoal" in ASCII).
const MIGRATION_LOCK: i64 = 0x73_686f_616c;

/// Each migration, in order; the version a database is at is the number applied.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    key TEXT NOT NULL UNIQUE,
    generation BIGINT NOT NULL DEFAULT 0,
    plan TEXT,
    blueprint TEXT NOT NULL,
    params TEXT NOT NULL,
    metadata_url TEXT NOT NULL,
    node_count BIGINT NOT NULL,
    overlay TEXT NOT NULL,
    vni BIGINT NOT NULL,
    domain TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    available_ms BIGINT,
    ready_nodes BIGINT NOT NULL DEFAULT 0,
    next_index BIGINT NOT NULL DEFAULT 0,
    auto_repair_secs BIGINT,
    change_id BIGINT,
    change_seq BIGINT NOT NULL DEFAULT 0,
    event_seq BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE nodes (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    idx BIGINT NOT NULL,
    grp TEXT NOT NULL DEFAULT '',
    token TEXT NOT NULL,
    incarnation BIGINT NOT NULL DEFAULT 0,
    leaving BOOLEAN NOT NULL DEFAULT FALSE,
    instance_id TEXT,
    private_ip TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    phase TEXT NOT NULL,
    status TEXT,
    status_hash BIGINT,
    generation BIGINT NOT NULL DEFAULT 0,
    converged_ms BIGINT,
    last_seen_ms BIGINT,
    lost_ms BIGINT,
    requested_ms BIGINT,
    running_ms BIGINT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (cluster, id)
);
CREATE INDEX nodes_last_seen ON nodes(last_seen_ms) WHERE last_seen_ms IS NOT NULL;
CREATE INDEX nodes_lost ON nodes(lost_ms) WHERE lost_ms IS NOT NULL;
CREATE TABLE changes (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    asked_ms BIGINT NOT NULL,
    step TEXT NOT NULL,
    generation BIGINT,
    published_ms BIGINT,
    done_ms BIGINT,
    failure TEXT,
    PRIMARY KEY (cluster, id)
);
CREATE TABLE generations (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    generation BIGINT NOT NULL,
    published_ms BIGINT NOT NULL,
    change_id BIGINT,
    PRIMARY KEY (cluster, generation)
);
CREATE TABLE convergences (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    generation BIGINT NOT NULL,
    node TEXT NOT NULL,
    converged_ms BIGINT NOT NULL,
    PRIMARY KEY (cluster, generation, node)
);
CREATE TABLE events (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (cluster, seq)
);
",
    "
CREATE TABLE leader (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    since_ms BIGINT NOT NULL
);
",
];

/// The channel every write that another coordinator must hear of is announced on; the
/// payload is `<instance> <cluster>`.
const CHANNEL: &str = "shoal_clusters";

/// How often the listener checks its connection is alive (a dropped connection that
/// sent no FIN would otherwise go unnoticed, and notices with it).
const LISTEN_CHECK: Duration = Duration::from_secs(5);

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn db(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Database {
        context,
        message: pg_message(&e),
    }
}

/// The server's own message (with its SQLSTATE) when it sent one; the client's
/// otherwise. Neither carries the password.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// A parsed database URL and the part of it safe to show.
#[derive(Clone)]
pub struct DbUrl {
    config: Config,
    shown: String,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl DbUrl {
    /// Parses a `postgres://user:password@host:port/db` URL (or a `key=value`
    /// connection string); `host=/dir` reaches a Unix socket. The error never repeats
    /// the URL, which may hold a password.
    pub fn parse(url: &str) -> Result<DbUrl, StoreError> {
        let mut config = Config::from_str(url).map_err(|e| {
            StoreError::Invalid(format!(
                "the PostgreSQL URL is not valid ({e}): expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(StoreError::Invalid(
                "the PostgreSQL URL names no host: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE".into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("shoal");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres://{}@{}:{port}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config.get_dbname().unwrap_or("")
        );
        Ok(DbUrl { config, shown })
    }

    /// Whether `s` is a PostgreSQL URL (what `--store` tells apart from a path).
    pub fn is_postgres(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }
}

/// Opens connections as they are needed, up to [`POOL_SIZE`], and keeps them.
struct Pool {
    url: DbUrl,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
}

/// A connection taken from the pool; given back when dropped (unless it broke).
struct Conn<'p> {
    pool: &'p Pool,
    client: Option<Client>,
    _permit: SemaphorePermit<'p>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(c);
            }
        }
    }
}

/// Opens one connection; its I/O runs on a task of its own until it closes.
pub(crate) async fn connect(url: &DbUrl) -> Result<Client, StoreError> {
    let (client, connection) =
        url.config
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::Database {
                context: "connect",
                message: format!("{url}: {}", pg_message(&e)),
            })?;
    let shown = url.shown.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(database = %shown, "a PostgreSQL connection ended: {}", pg_message(&e));
        }
    });
    Ok(client)
}

impl Pool {
    async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let idle = loop {
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let client = match idle {
            Some(c) => c,
            // A broken connection is dropped, not given back: this opens its successor.
            None => connect(&self.url).await?,
        };
        Ok(Conn {
            pool: self,
            client: Some(client),
            _permit: permit,
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
}

/// The PostgreSQL store. Cheap to share.
#[derive(Clone)]
pub struct PgStore {
    pool: Arc<Pool>,
    counters: Arc<Counters>,
    /// This store's own id in the notices it sends, so it can skip its own.
    instance: Arc<str>,
    notices: tokio::sync::broadcast::Sender<Notice>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.pool.url.shown)
            .finish_non_exhaustive()
    }
}

/// What `doctor` reports of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbInfo {
    /// The server's version string.
    pub server_version: String,
    /// The schema version found (0: never migrated).
    pub schema_version: i64,
}

impl PgStore {
    /// Connects to the database at `url` and brings its schema to [`SCHEMA_VERSION`].
    pub async fn open(url: &DbUrl) -> Result<PgStore, StoreError> {
        let mut client = connect(url).await?;
        migrate(&mut client).await?;
        let (notices, _) = tokio::sync::broadcast::channel(4096);
        let instance: Arc<str> = crate::keys::random_hex(8).into();
        tokio::spawn(listen(url.clone(), notices.clone(), instance.clone()));
        Ok(PgStore {
            pool: Arc::new(Pool {
                url: url.clone(),
                idle: Mutex::new(vec![client]),
                permits: Semaphore::new(POOL_SIZE),
            }),
            counters: Arc::new(Counters::default()),
            instance,
            notices,
        })
    }

    /// Announces, at commit, that `cluster` changed.
    async fn notify(&self, t: &Transaction<'_>, cluster: &str) -> Result<(), StoreError> {
        t.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &format!("{} {cluster}", self.instance)],
        )
        .await
        .map_err(db("announce a change"))?;
        Ok(())
    }

    /// Where this store's database is (without the password).
    pub fn url(&self) -> &DbUrl {
        &self.pool.url
    }

    /// Runs one write transaction: `body` gets the transaction, and it is committed
    /// when `body` succeeds (rolled back, by dropping it, when it fails).
    async fn write<'a, T>(
        &'a self,
        // The second argument only bounds 't by 'a (what `body` borrows outlives the
        // transaction); it is always `&&()`.
        body: impl for<'t> FnOnce(&'t Transaction<'t>, &'t &'a ()) -> StoreFuture<'t, T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool.get().await?;
        let t = conn
            .transaction()
            .await
            .map_err(db("begin a transaction"))?;
        let out = body(&t, &&()).await?;
        t.commit().await.map_err(db("commit"))?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }
}

/// Listens for other coordinators' notices until the store is dropped, connecting
/// again (after a pause) whenever the connection drops; after each (re)connection it
/// sends [`Notice::Resync`], since what was committed meanwhile was not heard.
async fn listen(url: DbUrl, tx: tokio::sync::broadcast::Sender<Notice>, me: Arc<str>) {
    loop {
        if let Err(e) = listen_once(&url, &tx, &me).await {
            tracing::warn!(database = %url, error = %e, "listening for other coordinators' changes stopped; connecting again");
        }
        if tx.receiver_count() == 0 && Arc::strong_count(&me) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(
    url: &DbUrl,
    tx: &tokio::sync::broadcast::Sender<Notice>,
    me: &Arc<str>,
) -> Result<(), StoreError> {
    let (client, mut connection) =
        url.config
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::Database {
                context: "connect the listener",
                message: format!("{url}: {}", pg_message(&e)),
            })?;
    let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The connection delivers notifications only to whoever polls it for messages.
    let driver = tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if ntx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("the listener's connection failed: {}", pg_message(&e));
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(db("listen"))?;
        let _ = tx.send(Notice::Resync);
        let mut check = tokio::time::interval(LISTEN_CHECK);
        loop {
            tokio::select! {
                payload = nrx.recv() => {
                    let Some(payload) = payload else {
                        return Err(StoreError::Database {
                            context: "listen",
                            message: "the connection closed".into(),
                        });
                    };
                    if let Some((from, cluster)) = payload.split_once(' ') {
                        if from != &**me {
                            let _ = tx.send(Notice::Cluster(cluster.to_string()));
                        }
                    }
                }
                _ = check.tick() => {
                    match tokio::time::timeout(LISTEN_CHECK, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(db("check the listener's connection")(e)),
                        Err(_) => {
                            return Err(StoreError::Database {
                                context: "check the listener's connection",
                                message: format!("no answer within {}s", LISTEN_CHECK.as_secs()),
                            })
                        }
                    }
                    if Arc::strong_count(me) == 1 {
                        // The store is gone: stop listening.
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Reads the lease (who drives provisioning) of the database at `url`, for `doctor`.
pub async fn current_lease(url: &DbUrl) -> Result<Option<Lease>, StoreError> {
    let client = connect(url).await?;
    let row = client
        .query_opt(READ_LEASE, &[])
        .await
        .map_err(db("read the lease"))?;
    row.map(|r| lease_of(&r)).transpose()
}

/// The lease row with the database's clock, as [`lease_of`] reads it.
const READ_LEASE: &str = "SELECT holder, expires_ms, since_ms,
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms
     FROM leader WHERE id = 1";

fn lease_of(r: &Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        holder: col(r, "holder")?,
        expires_ms: col::<i64>(r, "expires_ms")?.max(0) as u64,
        since_ms: col::<i64>(r, "since_ms")?.max(0) as u64,
        now_ms: col::<i64>(r, "now_ms")?.max(0) as u64,
    })
}

/// Reads what `doctor` shows of the database at `url`, without migrating it.
pub async fn inspect(url: &DbUrl) -> Result<DbInfo, StoreError> {
    let client = connect(url).await?;
    let server_version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(db("read the server version"))
        .and_then(|r| col(&r, "server_version"))?;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('schema_version') IS NOT NULL AS present",
            &[],
        )
        .await
        .map_err(db("look for the schema version"))
        .and_then(|r| col(&r, "present"))?;
    let schema_version = if exists {
        schema_version(&client).await?
    } else {
        0
    };
    Ok(DbInfo {
        server_version,
        schema_version,
    })
}

async fn schema_version(c: &impl GenericClient) -> Result<i64, StoreError> {
    let row = c
        .query_one("SELECT MAX(version) AS v FROM schema_version", &[])
        .await
        .map_err(db("read the schema version"))?;
    Ok(col::<Option<i64>>(&row, "v")?.unwrap_or(0))
}

/// Applies the migrations the database lacks, in one transaction, under an advisory
/// lock so coordinators starting together do not race.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let t = client
        .transaction()
        .await
        .map_err(db("begin the migration"))?;
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("take the migration lock"))?;
    t.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version BIGINT PRIMARY KEY,
            applied_ms BIGINT NOT NULL
        )",
    )
    .await
    .map_err(db("create the schema version table"))?;
    let found = schema_version(&t).await?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let now = now_ms() as i64;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        t.batch_execute(sql)
            .await
            .map_err(db("migrate the schema"))?;
        t.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES ($1, $2)",
            &[&(i as i64 + 1), &now],
        )
        .await
        .map_err(db("record the schema version"))?;
    }
    t.commit().await.map_err(db("commit the migration"))?;
    Ok(())
}

/// A column of `row`; a missing column or one of another type is a corrupt value.
fn col<'r, T: FromSql<'r>>(row: &'r Row, name: &str) -> Result<T, StoreError> {
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

fn ms(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn to_json<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Serialise {
        what,
        message: e.to_string(),
    })
}

/// Locks the cluster's row for the rest of the transaction and returns it; `None` if
/// there is no such cluster. Every write that reads before it writes takes this first.
async fn lock(t: &Transaction<'_>, name: &str) -> Result<Option<Row>, StoreError> {
    t.query_opt(
        "SELECT * FROM clusters WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await
    .map_err(db("lock the cluster"))
}

/// Moves `name` to `state` with `reason`, and records the event (keeping the latest
/// [`MAX_EVENTS`]). Becoming AVAILABLE records the time once.
async fn set_state(
    t: &Transaction<'_>,
    name: &str,
    state: ClusterState,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let available = (state == ClusterState::Available).then_some(now);
    let row = t
        .query_one(
            "UPDATE clusters SET state = $2, reason = $3, updated_ms = $4,
                available_ms = COALESCE(available_ms, $5), event_seq = event_seq + 1
             WHERE name = $1 RETURNING event_seq",
            &[&name, &state.as_str(), &reason, &now, &available],
        )
        .await
        .map_err(db("set cluster state"))?;
    let seq: i64 = col(&row, "event_seq")?;
    t.execute(
        "INSERT INTO events (cluster, seq, at_ms, state, reason) VALUES ($1, $2, $3, $4, $5)",
        &[&name, &seq, &now, &state.as_str(), &reason],
    )
    .await
    .map_err(db("record an event"))?;
    if seq > MAX_EVENTS as i64 {
        t.execute(
            "DELETE FROM events WHERE cluster = $1 AND seq <= $2",
            &[&name, &(seq - MAX_EVENTS as i64)],
        )
        .await
        .map_err(db("trim events"))?;
    }
    Ok(())
}

/// Ends the change `id` of `name` with `outcome`.
async fn close_change(
    t: &Transaction<'_>,
    name: &str,
    id: i64,
    outcome: Result<(), &str>,
    now: i64,
) -> Result<(), StoreError> {
    t.execute(
        "UPDATE changes SET done_ms = $3, failure = $4, step = 'done'
         WHERE cluster = $1 AND id = $2 AND done_ms IS NULL",
        &[&name, &id, &now, &outcome.err()],
    )
    .await
    .map_err(db("end a change"))?;
    t.execute(
        "UPDATE clusters SET change_id = NULL WHERE name = $1 AND change_id = $2",
        &[&name, &id],
    )
    .await
    .map_err(db("end a change"))?;
    Ok(())
}

/// Recounts the nodes ready on the cluster's current generation.
async fn recount_ready(t: &Transaction<'_>, name: &str) -> Result<(), StoreError> {
    t.execute(
        "UPDATE clusters SET ready_nodes = (SELECT COUNT(*) FROM nodes
             WHERE cluster = $1 AND phase = 'ready' AND generation = clusters.generation),
             node_count = (SELECT COUNT(*) FROM nodes WHERE cluster = $1)
         WHERE name = $1",
        &[&name],
    )
    .await
    .map_err(db("count ready nodes"))?;
    Ok(())
}

async fn insert_node(t: &Transaction<'_>, cluster: &str, n: &NodeRow) -> Result<(), StoreError> {
    t.execute(
        "INSERT INTO nodes (cluster, id, idx, grp, token, incarnation, leaving, phase,
            requested_ms, updated_ms, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, '{}')",
        &[
            &cluster,
            &n.id,
            &i64::from(n.index),
            &n.group,
            &n.token,
            &i64::from(n.incarnation),
            &n.leaving,
            &n.phase.as_str(),
            &n.requested_ms.map(|v| v as i64),
            &(n.updated_ms as i64),
        ],
    )
    .await
    .map_err(db("insert node"))?;
    Ok(())
}

fn raw_cluster(r: &Row) -> Result<RawCluster, StoreError> {
    Ok(RawCluster {
        name: col(r, "name")?,
        uid: col(r, "uid")?,
        provider: col(r, "provider")?,
        state: col(r, "state")?,
        reason: col(r, "reason")?,
        key: col(r, "key")?,
        generation: col::<i64>(r, "generation")?.max(0) as u64,
        plan: col(r, "plan")?,
        blueprint: col(r, "blueprint")?,
        params: col(r, "params")?,
        metadata_url: col(r, "metadata_url")?,
        node_count: col::<i64>(r, "node_count")?.max(0) as u32,
        overlay: col(r, "overlay")?,
        vni: col::<i64>(r, "vni")?.max(0) as u32,
        domain: col(r, "domain")?,
        created_ms: col::<i64>(r, "created_ms")?.max(0) as u64,
        updated_ms: col::<i64>(r, "updated_ms")?.max(0) as u64,
        available_ms: ms(col(r, "available_ms")?),
        ready_nodes: col::<i64>(r, "ready_nodes")?.max(0) as u32,
        next_index: col::<i64>(r, "next_index")?.max(0) as u32,
        auto_repair_secs: ms(col(r, "auto_repair_secs")?),
        change: ms(col(r, "change_id")?),
    })
}

fn raw_node(r: &Row) -> Result<RawNode, StoreError> {
    Ok(RawNode {
        id: col(r, "id")?,
        index: col::<i64>(r, "idx")?.max(0) as u32,
        group: col(r, "grp")?,
        token: col(r, "token")?,
        incarnation: col::<i64>(r, "incarnation")?.max(0) as u32,
        leaving: col(r, "leaving")?,
        instance_id: col(r, "instance_id")?,
        private_ip: col(r, "private_ip")?,
        details: col(r, "details")?,
        phase: col(r, "phase")?,
        status: col(r, "status")?,
        generation: col::<i64>(r, "generation")?.max(0) as u64,
        converged_ms: ms(col(r, "converged_ms")?),
        last_seen_ms: ms(col(r, "last_seen_ms")?),
        lost_ms: ms(col(r, "lost_ms")?),
        requested_ms: ms(col(r, "requested_ms")?),
        running_ms: ms(col(r, "running_ms")?),
        updated_ms: col::<i64>(r, "updated_ms")?.max(0) as u64,
    })
}

/// The cluster's state and counts, from its locked row, as a report's outcome.
fn outcome_of(row: &Row, moved: Option<ClusterState>) -> Result<ReportOutcome, StoreError> {
    Ok(raw::outcome(
        raw::parse_state(&col::<String>(row, "state")?)?,
        col(row, "generation")?,
        col(row, "ready_nodes")?,
        col(row, "node_count")?,
        moved,
        moved.is_some(),
    ))
}

impl Store for PgStore {
    fn insert_cluster<'a>(
        &'a self,
        c: &'a ClusterRow,
        nodes: &'a [NodeRow],
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                if let Some(row) = lock(t, &c.name).await? {
                    if col::<String>(&row, "state")? != ClusterState::Deleted.as_str() {
                        return Err(StoreError::Exists(c.name.clone()));
                    }
                    t.execute("DELETE FROM clusters WHERE name = $1", &[&c.name])
                        .await
                        .map_err(db("replace deleted cluster"))?;
                }
                let plan = c
                    .plan
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.json).into_owned());
                let next_index = nodes
                    .iter()
                    .map(|n| n.index + 1)
                    .max()
                    .unwrap_or(0)
                    .max(c.next_index);
                let inserted = t
                    .execute(
                        "INSERT INTO clusters (name, uid, provider, state, reason, key, generation,
                        plan, blueprint, params, metadata_url, node_count, overlay, vni, domain,
                        created_ms, updated_ms, available_ms, ready_nodes, next_index,
                        auto_repair_secs, change_id, change_seq, event_seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                        $16, $17, $18, 0, $19, $20, 1, 1, 0)",
                        &[
                            &c.name,
                            &c.uid,
                            &c.provider,
                            &c.state.as_str(),
                            &c.reason,
                            &c.key,
                            &(c.generation as i64),
                            &plan,
                            &to_json("the blueprint", &c.blueprint)?,
                            &to_json("the provider parameters", &c.params)?,
                            &c.metadata_url,
                            &i64::from(c.node_count),
                            &c.overlay.to_string(),
                            &i64::from(c.vni),
                            &c.domain,
                            &(c.created_ms as i64),
                            &(c.updated_ms as i64),
                            &c.available_ms.map(|v| v as i64),
                            &i64::from(next_index),
                            &c.auto_repair_secs.map(|v| v as i64),
                        ],
                    )
                    .await;
                if let Err(e) = inserted {
                    // Another coordinator inserted the same name meanwhile (no row to
                    // lock existed): its insert won.
                    let taken = e.as_db_error().is_some_and(|d| {
                        *d.code() == SqlState::UNIQUE_VIOLATION
                            && d.constraint() == Some("clusters_pkey")
                    });
                    return Err(if taken {
                        StoreError::Exists(c.name.clone())
                    } else {
                        db("insert cluster")(e)
                    });
                }
                for n in nodes {
                    insert_node(t, &c.name, n).await?;
                }
                let spec = ChangeSpec {
                    summary: format!("create {} node(s)", nodes.len()),
                    add: nodes.iter().map(|n| n.id.clone()).collect(),
                    ..ChangeSpec::default()
                };
                t.execute(
                    "INSERT INTO changes (cluster, id, kind, spec, asked_ms, step)
                     VALUES ($1, 1, 'create', $2, $3, 'recorded')",
                    &[
                        &c.name,
                        &to_json("the change", &spec)?,
                        &(c.created_ms as i64),
                    ],
                )
                .await
                .map_err(db("record the creation"))?;
                set_state(
                    t,
                    &c.name,
                    c.state,
                    c.reason.as_deref(),
                    c.created_ms as i64,
                )
                .await?;
                self.notify(t, &c.name).await
            })
        }))
    }

    fn cluster<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ClusterRow>> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let row = conn
                .query_opt("SELECT * FROM clusters WHERE name = $1", &[&name])
                .await
                .map_err(db("read cluster"))?;
            row.map(|r| raw_cluster(&r)?.parse()).transpose()
        })
    }

    fn clusters(&self) -> StoreFuture<'_, Vec<ClusterRow>> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let rows = conn
                .query("SELECT * FROM clusters ORDER BY name COLLATE \"C\"", &[])
                .await
                .map_err(db("list clusters"))?;
            rows.iter().map(|r| raw_cluster(r)?.parse()).collect()
        })
    }

    fn nodes<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Vec<NodeRow>> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let rows = conn
                .query(
                    "SELECT * FROM nodes WHERE cluster = $1 ORDER BY idx",
                    &[&cluster],
                )
                .await
                .map_err(db("list nodes"))?;
            rows.iter().map(|r| raw_node(r)?.parse(cluster)).collect()
        })
    }

    fn transition<'a>(
        &'a self,
        name: &'a str,
        from: &'a [ClusterState],
        to: ClusterState,
        reason: Option<&'a str>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                let Some(row) = lock(t, name).await? else {
                    return Err(StoreError::NotFound(name.to_string()));
                };
                let current = raw::parse_state(&col::<String>(&row, "state")?)?;
                if !from.contains(&current) {
                    return Ok(false);
                }
                let change: Option<i64> = col(&row, "change_id")?;
                let now = now_ms() as i64;
                set_state(t, name, to, reason, now).await?;
                if let Some(id) = change {
                    let kind: Option<String> = t
                        .query_opt(
                            "SELECT kind FROM changes WHERE cluster = $1 AND id = $2",
                            &[&name, &id],
                        )
                        .await
                        .map_err(db("read the change in flight"))?
                        .map(|r| col(&r, "kind"))
                        .transpose()?;
                    if let Some(outcome) = raw::transition_ends_change(kind.as_deref(), to, reason)
                    {
                        close_change(t, name, id, outcome, now).await?;
                    }
                }
                self.notify(t, name).await?;
                Ok(true)
            })
        }))
    }

    fn set_node_vm<'a>(&'a self, cluster: &'a str, vm: &'a VmRecord) -> StoreFuture<'a, ()> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                let now = now_ms() as i64;
                t.execute(
                    "UPDATE nodes SET instance_id = $3, private_ip = COALESCE($4, private_ip),
                        details = $5, updated_ms = $6,
                        running_ms = CASE WHEN $7 AND running_ms IS NULL THEN $6 ELSE running_ms END,
                        phase = CASE WHEN $7 AND phase = 'pending' THEN 'vm-running' ELSE phase END
                     WHERE cluster = $1 AND id = $2",
                    &[
                        &cluster,
                        &vm.node_id,
                        &vm.instance_id,
                        &vm.private_ip.map(|ip| ip.to_string()),
                        &to_json("node details", &vm.details)?,
                        &now,
                        &vm.running,
                    ],
                )
                .await
                .map_err(db("record node VM"))?;
                Ok(())
            })
        }))
    }

    fn publish_plan<'a>(&'a self, cluster: &'a str, plan: Plan) -> StoreFuture<'a, StoredPlan> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                let Some(row) = lock(t, cluster).await? else {
                    return Err(StoreError::NotFound(cluster.to_string()));
                };
                let current: i64 = col(&row, "generation")?;
                let change: Option<i64> = col(&row, "change_id")?;
                let mut plan = plan;
                plan.generation = current.max(0) as u64 + 1;
                let generation = plan.generation as i64;
                let json = to_json("the plan", &plan)?;
                let now = now_ms() as i64;
                t.execute(
                    "UPDATE clusters SET generation = $2, plan = $3, updated_ms = $4
                     WHERE name = $1",
                    &[&cluster, &generation, &json, &now],
                )
                .await
                .map_err(db("store plan"))?;
                t.execute(
                    "INSERT INTO generations (cluster, generation, published_ms, change_id)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (cluster, generation) DO UPDATE
                     SET published_ms = EXCLUDED.published_ms, change_id = EXCLUDED.change_id",
                    &[&cluster, &generation, &now, &change],
                )
                .await
                .map_err(db("record the generation"))?;
                if let Some(id) = change {
                    t.execute(
                        "UPDATE changes SET generation = $3, published_ms = $4
                         WHERE cluster = $1 AND id = $2",
                        &[&cluster, &id, &generation, &now],
                    )
                    .await
                    .map_err(db("record the change's generation"))?;
                }
                let oldest = generation - KEPT_GENERATIONS as i64;
                for table in ["convergences", "generations"] {
                    t.execute(
                        &format!("DELETE FROM {table} WHERE cluster = $1 AND generation <= $2"),
                        &[&cluster, &oldest],
                    )
                    .await
                    .map_err(db("trim past generations"))?;
                }
                recount_ready(t, cluster).await?;
                self.notify(t, cluster).await?;
                Ok(StoredPlan {
                    plan,
                    json: json.into_bytes().into(),
                })
            })
        }))
    }

    fn record_report<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> StoreFuture<'a, ReportOutcome> {
        Box::pin(async move {
            let json = to_json("the node status", status)?;
            let fingerprint = status_fingerprint(json.as_bytes());
            if let Some(outcome) = self.liveness(cluster, node, fingerprint).await? {
                return Ok(outcome);
            }
            self.write(move |t, _| {
                Box::pin(async move {
                    let Some(crow) = lock(t, cluster).await? else {
                        return Err(StoreError::NotFound(format!("{cluster}/{node}")));
                    };
                    let Some(nrow) = t
                        .query_opt(
                            "SELECT phase, generation, status_hash FROM nodes
                             WHERE cluster = $1 AND id = $2",
                            &[&cluster, &node],
                        )
                        .await
                        .map_err(db("read a node"))?
                    else {
                        return Err(StoreError::NotFound(format!("{cluster}/{node}")));
                    };
                    let old_phase: String = col(&nrow, "phase")?;
                    let old_gen: i64 = col(&nrow, "generation")?;
                    let status_hash: Option<i64> = col(&nrow, "status_hash")?;
                    let now = now_ms() as i64;
                    if status_hash == Some(fingerprint) && old_phase != Phase::Lost.as_str() {
                        // The same report arrived twice at once: the other one counted.
                        t.execute(
                            "UPDATE nodes SET last_seen_ms = $3 WHERE cluster = $1 AND id = $2",
                            &[&cluster, &node, &now],
                        )
                        .await
                        .map_err(db("record liveness"))?;
                        return outcome_of(&crow, None);
                    }
                    let cgen: i64 = col(&crow, "generation")?;
                    let mut ready: i64 = col(&crow, "ready_nodes")?;
                    let nodes: i64 = col(&crow, "node_count")?;
                    let step = raw::ReportStep::new(&old_phase, old_gen, cgen, status);
                    t.execute(
                        "UPDATE nodes SET phase = $3, status = $4, generation = $5, updated_ms = $6,
                            last_seen_ms = $6, lost_ms = NULL, status_hash = $9,
                            converged_ms = CASE WHEN $7 THEN $6 WHEN $8 THEN converged_ms
                                ELSE NULL END
                         WHERE cluster = $1 AND id = $2",
                        &[
                            &cluster,
                            &node,
                            &status.phase.as_str(),
                            &json,
                            &step.generation,
                            &now,
                            &step.first_ready,
                            &step.is_ready,
                            &fingerprint,
                        ],
                    )
                    .await
                    .map_err(db("record node status"))?;
                    if step.ready_delta != 0 {
                        ready += step.ready_delta;
                        t.execute(
                            "UPDATE clusters SET ready_nodes = $2 WHERE name = $1",
                            &[&cluster, &ready],
                        )
                        .await
                        .map_err(db("count ready nodes"))?;
                    }
                    if step.first_ready {
                        t.execute(
                            "INSERT INTO convergences (cluster, generation, node, converged_ms)
                             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&cluster, &step.generation, &node, &now],
                        )
                        .await
                        .map_err(db("record a convergence"))?;
                    }
                    let mut state = raw::parse_state(&col::<String>(&crow, "state")?)?;
                    let mut moved = None;
                    if let Some(want) = raw::health_moves(state, cgen, ready, nodes) {
                        let reason =
                            (want == ClusterState::Degraded).then(|| degraded_reason(node, status));
                        set_state(t, cluster, want, reason.as_deref(), now).await?;
                        state = want;
                        moved = Some(want);
                    }
                    // The driving coordinator waits on reports that another one took.
                    self.notify(t, cluster).await?;
                    Ok(raw::outcome(state, cgen, ready, nodes, moved, true))
                })
            })
            .await
        })
    }

    fn silent_nodes(&self, before_ms: u64, limit: usize) -> StoreFuture<'_, Vec<SilentNode>> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let rows = conn
                .query(
                    "SELECT n.cluster, n.id, n.last_seen_ms FROM nodes n
                     JOIN clusters c ON c.name = n.cluster
                     WHERE n.last_seen_ms < $1 AND n.phase <> 'lost' AND NOT n.leaving
                       AND c.state IN ('AVAILABLE', 'DEGRADED', 'UPDATING')
                     LIMIT $2",
                    &[&(before_ms as i64), &(limit as i64)],
                )
                .await
                .map_err(db("find silent nodes"))?;
            rows.iter()
                .map(|r| {
                    Ok(SilentNode {
                        cluster: col(r, "cluster")?,
                        node: col(r, "id")?,
                        last_seen_ms: col::<i64>(r, "last_seen_ms")?.max(0) as u64,
                    })
                })
                .collect()
        })
    }

    fn mark_lost<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        before_ms: u64,
        message: &'a str,
    ) -> StoreFuture<'a, Option<ReportOutcome>> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                let Some(crow) = lock(t, cluster).await? else {
                    return Ok(None);
                };
                let Some(nrow) = t
                    .query_opt(
                        "SELECT phase, generation, last_seen_ms, status FROM nodes
                         WHERE cluster = $1 AND id = $2",
                        &[&cluster, &node],
                    )
                    .await
                    .map_err(db("read a node"))?
                else {
                    return Ok(None);
                };
                let phase: String = col(&nrow, "phase")?;
                let gen: i64 = col(&nrow, "generation")?;
                let last_seen: Option<i64> = col(&nrow, "last_seen_ms")?;
                let silent = last_seen.is_some_and(|t| t < before_ms as i64);
                if phase == Phase::Lost.as_str() || !silent {
                    return Ok(None);
                }
                let st = raw::lost_status(
                    col::<Option<String>>(&nrow, "status")?.as_deref(),
                    gen,
                    message,
                    &format!("{cluster}/{node}"),
                )?;
                let now = now_ms() as i64;
                t.execute(
                    "UPDATE nodes SET phase = 'lost', status = $3, lost_ms = $4, updated_ms = $4,
                        converged_ms = NULL, status_hash = NULL
                     WHERE cluster = $1 AND id = $2",
                    &[&cluster, &node, &to_json("the node status", &st)?, &now],
                )
                .await
                .map_err(db("mark a node lost"))?;
                let cgen: i64 = col(&crow, "generation")?;
                let mut ready: i64 = col(&crow, "ready_nodes")?;
                let nodes: i64 = col(&crow, "node_count")?;
                if phase == Phase::Ready.as_str() && gen == cgen {
                    ready -= 1;
                    t.execute(
                        "UPDATE clusters SET ready_nodes = $2 WHERE name = $1",
                        &[&cluster, &ready],
                    )
                    .await
                    .map_err(db("count ready nodes"))?;
                }
                let mut state = raw::parse_state(&col::<String>(&crow, "state")?)?;
                let mut moved = None;
                if state == ClusterState::Available {
                    set_state(
                        t,
                        cluster,
                        ClusterState::Degraded,
                        Some(&degraded_reason(node, &st)),
                        now,
                    )
                    .await?;
                    state = ClusterState::Degraded;
                    moved = Some(state);
                }
                self.notify(t, cluster).await?;
                Ok(Some(raw::outcome(state, cgen, ready, nodes, moved, true)))
            })
        }))
    }

    fn due_repairs(&self, now_ms: u64) -> StoreFuture<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            let rows = conn
                .query(
                    "SELECT n.cluster, n.id FROM nodes n JOIN clusters c ON c.name = n.cluster
                     WHERE n.lost_ms IS NOT NULL AND n.phase = 'lost'
                       AND c.auto_repair_secs IS NOT NULL AND c.state = 'DEGRADED'
                       AND c.change_id IS NULL
                       AND n.lost_ms + c.auto_repair_secs * 1000 <= $1
                     ORDER BY n.cluster COLLATE \"C\", n.idx",
                    &[&(now_ms as i64)],
                )
                .await
                .map_err(db("find nodes to repair"))?;
            rows.iter()
                .map(|r| Ok((col(r, "cluster")?, col(r, "id")?)))
                .collect()
        })
    }

    fn begin_change<'a>(
        &'a self,
        cluster: &'a str,
        from: &'a [ClusterState],
        change: &'a NewChange,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                let Some(row) = lock(t, cluster).await? else {
                    return Err(StoreError::NotFound(cluster.to_string()));
                };
                let state = raw::parse_state(&col::<String>(&row, "state")?)?;
                let in_flight: Option<i64> = col(&row, "change_id")?;
                let next_index: i64 = col(&row, "next_index")?;
                let seq: i64 = col(&row, "change_seq")?;
                if !from.contains(&state) || in_flight.is_some() {
                    return Ok(None);
                }
                let id = seq + 1;
                let now = now_ms() as i64;
                t.execute(
                    "INSERT INTO changes (cluster, id, kind, spec, asked_ms, step)
                     VALUES ($1, $2, $3, $4, $5, 'recorded')",
                    &[
                        &cluster,
                        &id,
                        &change.kind.as_str(),
                        &to_json("the change", &change.spec)?,
                        &(change.asked_ms as i64),
                    ],
                )
                .await
                .map_err(db("record a change"))?;
                let mut next = next_index;
                for n in &change.add {
                    raw::check_new_index(n, next_index)?;
                    insert_node(t, cluster, n).await?;
                    next = next.max(i64::from(n.index) + 1);
                }
                for id in &change.leaving {
                    let changed = t
                        .execute(
                            "UPDATE nodes SET leaving = TRUE WHERE cluster = $1 AND id = $2",
                            &[&cluster, id],
                        )
                        .await
                        .map_err(db("mark a node leaving"))?;
                    if changed == 0 {
                        return Err(StoreError::NotFound(format!("{cluster}/{id}")));
                    }
                }
                for (node, token) in &change.replace {
                    let changed = t
                        .execute(
                            "UPDATE nodes SET token = $3, incarnation = incarnation + 1,
                                phase = 'pending', status = NULL, status_hash = NULL,
                                generation = 0, converged_ms = NULL, last_seen_ms = NULL,
                                lost_ms = NULL, instance_id = NULL, private_ip = NULL,
                                details = '{}', requested_ms = $4, running_ms = NULL,
                                updated_ms = $4
                             WHERE cluster = $1 AND id = $2",
                            &[&cluster, node, token, &now],
                        )
                        .await
                        .map_err(db("reset a node for a new VM"))?;
                    if changed == 0 {
                        return Err(StoreError::NotFound(format!("{cluster}/{node}")));
                    }
                }
                t.execute(
                    "UPDATE clusters SET change_id = $2, change_seq = $2, next_index = $3
                     WHERE name = $1",
                    &[&cluster, &id, &next],
                )
                .await
                .map_err(db("record a change"))?;
                recount_ready(t, cluster).await?;
                set_state(t, cluster, ClusterState::Updating, None, now).await?;
                self.notify(t, cluster).await?;
                Ok(Some(id as u64))
            })
        }))
    }

    fn change_step<'a>(&'a self, cluster: &'a str, id: u64, step: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                let changed = t
                    .execute(
                        "UPDATE changes SET step = $3 WHERE cluster = $1 AND id = $2",
                        &[&cluster, &(id as i64), &step],
                    )
                    .await
                    .map_err(db("record a change's step"))?;
                if changed == 0 {
                    return Err(StoreError::NotFound(format!("{cluster} change {id}")));
                }
                Ok(())
            })
        }))
    }

    fn set_leaving<'a>(
        &'a self,
        cluster: &'a str,
        nodes: &'a [String],
        leaving: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                t.execute(
                    "UPDATE nodes SET leaving = $3 WHERE cluster = $1 AND id = ANY($2)",
                    &[&cluster, &nodes, &leaving],
                )
                .await
                .map_err(db("mark a node leaving"))?;
                self.notify(t, cluster).await
            })
        }))
    }

    fn remove_nodes<'a>(&'a self, cluster: &'a str, nodes: &'a [String]) -> StoreFuture<'a, ()> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                // Locked first: the recount below must see every report committed.
                if lock(t, cluster).await?.is_none() {
                    return Ok(());
                }
                t.execute(
                    "DELETE FROM nodes WHERE cluster = $1 AND id = ANY($2)",
                    &[&cluster, &nodes],
                )
                .await
                .map_err(db("remove a node"))?;
                t.execute(
                    "DELETE FROM convergences WHERE cluster = $1 AND node = ANY($2)",
                    &[&cluster, &nodes],
                )
                .await
                .map_err(db("remove a node"))?;
                recount_ready(t, cluster).await?;
                self.notify(t, cluster).await
            })
        }))
    }

    fn finish_change<'a>(
        &'a self,
        cluster: &'a str,
        id: u64,
        outcome: Result<(), &'a str>,
    ) -> StoreFuture<'a, ClusterState> {
        Box::pin(self.write(move |t, _| {
            Box::pin(async move {
                let Some(row) = lock(t, cluster).await? else {
                    return Err(StoreError::NotFound(cluster.to_string()));
                };
                let now = now_ms() as i64;
                close_change(t, cluster, id as i64, outcome, now).await?;
                let state = raw::parse_state(&col::<String>(&row, "state")?)?;
                if state != ClusterState::Updating {
                    self.notify(t, cluster).await?;
                    return Ok(state);
                }
                let gen: i64 = col(&row, "generation")?;
                let to = raw::health(gen, col(&row, "ready_nodes")?, col(&row, "node_count")?);
                let reason = match (outcome, to) {
                    (Err(f), _) => Some(f.to_string()),
                    (Ok(()), ClusterState::Degraded) => {
                        let rows = t
                            .query(
                                "SELECT id, phase FROM nodes WHERE cluster = $1
                                   AND NOT (phase = 'ready' AND generation = $2)
                                 ORDER BY idx LIMIT 5",
                                &[&cluster, &gen],
                            )
                            .await
                            .map_err(db("list nodes not ready"))?;
                        let names = rows
                            .iter()
                            .map(|r| Ok((col(r, "id")?, col(r, "phase")?)))
                            .collect::<Result<Vec<(String, String)>, StoreError>>()?;
                        Some(raw::not_ready_reason(&names))
                    }
                    (Ok(()), _) => None,
                };
                set_state(t, cluster, to, reason.as_deref(), now).await?;
                self.notify(t, cluster).await?;
                Ok(to)
            })
        }))
    }

    fn history<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, History> {
        Box::pin(async move {
            let mut conn = self.pool.get().await?;
            // One snapshot for the three tables, so they agree with each other.
            let t = conn
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db("begin a read"))?;
            let rows = t
                .query(
                    "SELECT id, kind, spec, asked_ms, step, generation, published_ms, done_ms,
                        failure
                     FROM changes WHERE cluster = $1 ORDER BY id",
                    &[&cluster],
                )
                .await
                .map_err(db("read changes"))?;
            let mut changes = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = col(r, "id")?;
                let bad = || StoreError::Corrupt(format!("change {id} of cluster {cluster}"));
                let done = ms(col(r, "done_ms")?);
                let failure: Option<String> = col(r, "failure")?;
                changes.push(ChangeRow {
                    id: id as u64,
                    kind: ChangeKind::parse(&col::<String>(r, "kind")?).ok_or_else(bad)?,
                    spec: serde_json::from_str(&col::<String>(r, "spec")?).map_err(|_| bad())?,
                    asked_ms: col::<i64>(r, "asked_ms")?.max(0) as u64,
                    step: col(r, "step")?,
                    generation: ms(col(r, "generation")?),
                    published_ms: ms(col(r, "published_ms")?),
                    done_ms: done,
                    outcome: done.map(|_| match failure {
                        Some(f) => Err(f),
                        None => Ok(()),
                    }),
                });
            }
            let rows = t
                .query(
                    "SELECT generation, published_ms, change_id FROM generations
                     WHERE cluster = $1 ORDER BY generation",
                    &[&cluster],
                )
                .await
                .map_err(db("read generations"))?;
            let mut generations = rows
                .iter()
                .map(|r| {
                    Ok(GenerationRow {
                        generation: col::<i64>(r, "generation")?.max(0) as u64,
                        published_ms: col::<i64>(r, "published_ms")?.max(0) as u64,
                        change: ms(col(r, "change_id")?),
                        converged: vec![],
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let rows = t
                .query(
                    "SELECT v.generation, v.node, v.converged_ms FROM convergences v
                     LEFT JOIN nodes n ON n.cluster = v.cluster AND n.id = v.node
                     WHERE v.cluster = $1 ORDER BY v.generation, n.idx, v.node COLLATE \"C\"",
                    &[&cluster],
                )
                .await
                .map_err(db("read convergences"))?;
            for r in &rows {
                let g = col::<i64>(r, "generation")?.max(0) as u64;
                if let Some(row) = generations.iter_mut().find(|x| x.generation == g) {
                    row.converged.push((
                        col(r, "node")?,
                        col::<i64>(r, "converged_ms")?.max(0) as u64,
                    ));
                }
            }
            let rows = t
                .query(
                    "SELECT at_ms, state, reason FROM events WHERE cluster = $1 ORDER BY seq",
                    &[&cluster],
                )
                .await
                .map_err(db("read events"))?;
            let mut events = Vec::with_capacity(rows.len());
            for r in &rows {
                events.push(ClusterEvent {
                    at_ms: col::<i64>(r, "at_ms")?.max(0) as u64,
                    state: raw::parse_state(&col::<String>(r, "state")?)?,
                    reason: col(r, "reason")?,
                });
            }
            t.commit().await.map_err(db("end a read"))?;
            Ok(History {
                changes,
                generations,
                events,
            })
        })
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }

    fn lease<'a>(&'a self, holder: &'a str, ttl_ms: u64) -> StoreFuture<'a, Option<Lease>> {
        Box::pin(async move {
            let conn = self.pool.get().await?;
            // The database's clock, not each coordinator's: their skew cannot make two
            // of them both see the lease as theirs.
            conn.execute(
                "INSERT INTO leader (id, holder, expires_ms, since_ms)
                 SELECT 1, $1, now_ms + $2, now_ms FROM
                    (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms) n
                 ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder,
                    expires_ms = EXCLUDED.expires_ms,
                    since_ms = CASE WHEN leader.holder = EXCLUDED.holder THEN leader.since_ms
                        ELSE EXCLUDED.since_ms END
                 WHERE leader.holder = EXCLUDED.holder OR leader.expires_ms < EXCLUDED.since_ms",
                &[&holder, &(ttl_ms as i64)],
            )
            .await
            .map_err(db("take the lease"))?;
            let row = conn
                .query_one(READ_LEASE, &[])
                .await
                .map_err(db("read the lease"))?;
            lease_of(&row).map(Some)
        })
    }
}

impl PgStore {
    /// A liveness report (the report stored, sent again, of a node not lost) as one
    /// statement without the cluster's lock: only the time is written. `None` when the
    /// report is not one, and must take the locked path.
    async fn liveness(
        &self,
        cluster: &str,
        node: &str,
        fingerprint: i64,
    ) -> Result<Option<ReportOutcome>, StoreError> {
        let conn = self.pool.get().await?;
        let now = now_ms() as i64;
        let row = conn
            .query_opt(
                "UPDATE nodes n SET last_seen_ms = $3 FROM clusters c
                 WHERE c.name = n.cluster AND n.cluster = $1 AND n.id = $2
                   AND n.status_hash = $4 AND n.phase <> 'lost'
                 RETURNING c.state, c.generation, c.ready_nodes, c.node_count",
                &[&cluster, &node, &now, &fingerprint],
            )
            .await
            .map_err(db("record liveness"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        outcome_of(&row, None).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use shoal_e2e::postgres::Postgres;

    /// Stores on fresh databases of `pg`, opened before the suite runs (its factory
    /// is synchronous).
    async fn fresh_stores(pg: &Postgres, prefix: &str, n: usize) -> Mutex<Vec<PgStore>> {
        let mut stores = Vec::new();
        for i in 0..n {
            let db = format!("{prefix}{i}");
            pg.create_database(&db);
            let url = DbUrl::parse(&pg.url(&db)).expect("url");
            stores.push(PgStore::open(&url).await.expect("open"));
        }
        Mutex::new(stores)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root, postgresql"]
    async fn postgres_passes_the_conformance_suite() {
        let pg = Postgres::start();
        let stores = fresh_stores(&pg, "conf", 12).await;
        conformance::run(&|| {
            let s = stores.lock().expect("lock").pop();
            Box::new(s.expect("more stores than the suite asks for"))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root, postgresql"]
    async fn migrations_are_versioned_and_a_newer_schema_is_refused() {
        let pg = Postgres::start();
        pg.create_database("mig");
        let url = DbUrl::parse(&pg.url("mig")).expect("url");
        assert_eq!(inspect(&url).await.expect("inspect").schema_version, 0);
        // Two coordinators starting together: both open, the schema is made once.
        let (a, b) = tokio::join!(PgStore::open(&url), PgStore::open(&url));
        a.expect("first open");
        b.expect("second open");
        assert_eq!(
            pg.psql(
                "mig",
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version"
            ),
            // Each migration recorded once, in order.
            (1..=SCHEMA_VERSION)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let info = inspect(&url).await.expect("inspect");
        assert_eq!(info.schema_version, SCHEMA_VERSION);
        assert!(
            info.server_version.starts_with(char::is_numeric),
            "{info:?}"
        );
        // Reopening an up-to-date database keeps its data.
        let s = PgStore::open(&url).await.expect("reopen");
        s.insert_cluster(&conformance::cluster("kept"), &[conformance::node(0)])
            .await
            .expect("insert");
        let s = PgStore::open(&url).await.expect("reopen");
        assert_eq!(s.clusters().await.expect("list").len(), 1);
        // A database a newer shoal migrated: refused, and left as it was.
        pg.psql(
            "mig",
            &format!(
                "INSERT INTO schema_version VALUES ({}, 0)",
                SCHEMA_VERSION + 1
            ),
        );
        match PgStore::open(&url).await {
            Err(e @ StoreError::SchemaTooNew { .. }) => {
                assert!(e.to_string().contains("upgrade shoal"), "{e}")
            }
            other => panic!("a newer schema was not refused: {other:?}"),
        }
        assert_eq!(
            pg.psql("mig", "SELECT count(*) FROM clusters"),
            "1",
            "the refused database is untouched"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root, postgresql"]
    async fn a_wrong_password_is_a_clear_error_that_does_not_repeat_it() {
        let pg = Postgres::start();
        let wrong = pg
            .url("postgres")
            .replace(shoal_e2e::postgres::PASSWORD, "not-the-password-91c2");
        let url = DbUrl::parse(&wrong).expect("url");
        let e = PgStore::open(&url)
            .await
            .expect_err("a wrong password connects");
        let msg = e.to_string();
        assert!(msg.contains("password authentication failed"), "{msg}");
        assert!(!msg.contains("not-the-password-91c2"), "{msg}");
        assert!(!format!("{url:?} {url}").contains("not-the-password"));
    }

    #[test]
    fn a_malformed_url_is_refused_without_repeating_it() {
        for bad in [
            "postgres://user:s3cret@host:notaport/db",
            "postgres://user:s3cret@/db",
        ] {
            let e = DbUrl::parse(bad).expect_err(bad).to_string();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.contains("PostgreSQL URL"), "{e}");
        }
        let ok = DbUrl::parse("postgres://shoal:s3cret@db.example:6432/shoal").expect("valid");
        assert_eq!(ok.to_string(), "postgres://shoal@db.example:6432/shoal");
        assert!(!format!("{ok:?}").contains("s3cret"));
    }
}
