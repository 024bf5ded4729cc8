//! The embedded store: SQLite in one file of the state directory, WAL mode,
//! `synchronous=FULL` (a commit is on disk when it returns), foreign keys on.
//!
//! One dedicated thread owns the connection; async callers send it closures and await
//! the answer, so no database work (and no fsync) runs on a tokio worker. The thread
//! takes every call that is waiting when it wakes and runs them in one transaction,
//! each inside a savepoint of its own (a call that fails is rolled back alone): many
//! status reports arriving together share one commit, one fsync (group commit). A call
//! is answered only after the commit that holds it, so an acknowledged write is durable.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::{params, Connection, OptionalExtension, Row};
use shoal_protocol::{NodeStatus, Phase, Plan};

use super::raw::{self, RawCluster, RawNode};
use tokio::sync::oneshot;

use super::{
    degraded_reason, now_ms, status_fingerprint, ChangeKind, ChangeRow, ChangeSpec, ClusterEvent,
    ClusterRow, ClusterState, GenerationRow, History, NewChange, NodeRow, ReportOutcome,
    SilentNode, Store, StoreError, StoreFuture, StoreStats, StoredPlan, VmRecord, KEPT_GENERATIONS,
    MAX_EVENTS,
};

/// Most calls one transaction takes: bounds how long the first caller of a burst waits.
const MAX_BATCH: usize = 512;

/// The database file in the state directory.
pub const DB_FILE: &str = "shoal.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    provider TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    key TEXT NOT NULL UNIQUE,
    generation INTEGER NOT NULL DEFAULT 0,
    plan TEXT,
    blueprint TEXT NOT NULL,
    params TEXT NOT NULL,
    metadata_url TEXT NOT NULL,
    node_count INTEGER NOT NULL,
    overlay TEXT NOT NULL,
    vni INTEGER NOT NULL,
    domain TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    available_ms INTEGER
);
CREATE TABLE IF NOT EXISTS nodes (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    token TEXT NOT NULL,
    instance_id TEXT,
    private_ip TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    phase TEXT NOT NULL,
    status TEXT,
    requested_ms INTEGER,
    running_ms INTEGER,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (cluster, id)
);
CREATE TABLE IF NOT EXISTS changes (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    asked_ms INTEGER NOT NULL,
    step TEXT NOT NULL,
    generation INTEGER,
    published_ms INTEGER,
    done_ms INTEGER,
    failure TEXT,
    PRIMARY KEY (cluster, id)
);
CREATE TABLE IF NOT EXISTS generations (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    generation INTEGER NOT NULL,
    published_ms INTEGER NOT NULL,
    change_id INTEGER,
    PRIMARY KEY (cluster, generation)
);
CREATE TABLE IF NOT EXISTS convergences (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    generation INTEGER NOT NULL,
    node TEXT NOT NULL,
    converged_ms INTEGER NOT NULL,
    PRIMARY KEY (cluster, generation, node)
);
CREATE TABLE IF NOT EXISTS plans (
    cluster TEXT PRIMARY KEY REFERENCES clusters(name) ON DELETE CASCADE,
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (cluster, seq)
);
";

/// Columns added after the first release, with their definitions: a database made by
/// an older coordinator gets them on open (`ALTER TABLE … ADD COLUMN`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("clusters", "ready_nodes", "INTEGER NOT NULL DEFAULT 0"),
    ("clusters", "next_index", "INTEGER NOT NULL DEFAULT 0"),
    ("clusters", "auto_repair_secs", "INTEGER"),
    ("clusters", "change_id", "INTEGER"),
    ("clusters", "change_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("clusters", "event_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "grp", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "incarnation", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "leaving", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "generation", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "converged_ms", "INTEGER"),
    ("nodes", "last_seen_ms", "INTEGER"),
    ("nodes", "lost_ms", "INTEGER"),
    ("nodes", "status_hash", "INTEGER"),
];

/// The schema version this code writes (`PRAGMA user_version`). 3: plans live in a
/// table of their own. In the cluster's row, a plan (350 KiB for 1,000 nodes) sat
/// before the columns every status report reads and writes (`node_count`,
/// `ready_nodes`), and SQLite walks a row's overflow pages to reach the columns after
/// a large value: each report read, and each ready count rewrote, the whole plan.
const SCHEMA_VERSION: i64 = 3;

/// Brings a database of an older coordinator up to [`SCHEMA_VERSION`]: the columns
/// it lacks, the indexes, and the values the new columns derive from the old ones.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("read the schema version"))?;
    for (table, column, def) in ADDED_COLUMNS {
        let has = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))
            .and_then(|mut st| st.exists([column]))
            .map_err(db("read the schema"))?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))
                .map_err(db("add a column"))?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS nodes_last_seen ON nodes(last_seen_ms)
             WHERE last_seen_ms IS NOT NULL;
         CREATE INDEX IF NOT EXISTS nodes_lost ON nodes(lost_ms) WHERE lost_ms IS NOT NULL;",
    )
    .map_err(db("create indexes"))?;
    if version < 2 {
        // Rows written before the counters existed: derive them once.
        conn.execute_batch(
            "UPDATE nodes SET generation = COALESCE(json_extract(status, '$.generation'), 0)
                 WHERE status IS NOT NULL AND generation = 0;
             UPDATE clusters SET
                 next_index = (SELECT COALESCE(MAX(idx) + 1, 0) FROM nodes WHERE cluster = name),
                 ready_nodes = (SELECT COUNT(*) FROM nodes WHERE cluster = name
                     AND phase = 'ready' AND nodes.generation = clusters.generation);",
        )
        .map_err(db("derive the new columns"))?;
    }
    if version < 3 {
        conn.execute_batch(
            "INSERT OR REPLACE INTO plans (cluster, plan)
                 SELECT name, plan FROM clusters WHERE plan IS NOT NULL;
             UPDATE clusters SET plan = NULL WHERE plan IS NOT NULL;",
        )
        .map_err(db("move the plans to their table"))?;
    }
    if version < SCHEMA_VERSION {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db("write the schema version"))?;
    }
    Ok(())
}

fn db(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::Database {
        context,
        message: e.to_string(),
    }
}

type Finish = Box<dyn FnOnce(Option<&str>) + Send>;
type Run = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

/// One call for the database thread: runs against the connection and says whether it
/// succeeded; its answer is delivered by the returned closure once the batch is
/// committed (with the commit's error, if it failed).
struct Call {
    write: bool,
    run: Run,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
}

/// The SQLite store. Cheap to share: it is a handle on the database thread, which ends
/// when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    calls: mpsc::Sender<Call>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("write", &self.write).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) [`DB_FILE`] in `dir`, made mode 0700.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let conn = Connection::open(dir.join(DB_FILE)).map_err(db("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db("enable WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db("synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db("busy timeout"))?;
        let store = Self::start(conn)?;
        // The WAL and shared-memory files exist by now; none may be world-readable.
        for f in [DB_FILE, "shoal.db-wal", "shoal.db-shm"] {
            let p = dir.join(f);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(io(&p))?;
            }
        }
        Ok(store)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::start(Connection::open_in_memory().map_err(db("open"))?)
    }

    fn start(conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db("foreign keys"))?;
        conn.execute_batch(SCHEMA).map_err(db("create schema"))?;
        migrate(&conn)?;
        let (tx, rx) = mpsc::channel::<Call>();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("shoal-sqlite".into())
            .spawn(move || worker(conn, rx, &c))
            .map_err(|e| StoreError::Io {
                path: "the database thread".into(),
                source: e,
            })?;
        Ok(SqliteStore {
            calls: tx,
            counters,
        })
    }

    /// Runs `f` on the database thread, in a transaction when `write`.
    fn call<T: Send + 'static>(
        &self,
        write: bool,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let (tx, rx) = oneshot::channel();
        let run = Box::new(move |conn: &Connection| {
            let result = f(conn);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit_error: Option<&str>| {
                let result = match commit_error {
                    Some(message) => Err(StoreError::Database {
                        context: "commit",
                        message: message.to_string(),
                    }),
                    None => result,
                };
                let _ = tx.send(result);
            });
            (ok, finish)
        });
        let sent = self.calls.send(Call { write, run });
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

/// The database thread: takes every waiting call, runs them in one transaction (each in
/// a savepoint), commits once, then answers them all.
fn worker(conn: Connection, calls: mpsc::Receiver<Call>, counters: &Counters) {
    while let Ok(first) = calls.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match calls.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let writes = batch.iter().filter(|c| c.write).count() as u64;
        let mut failure: Option<String> = None;
        if writes > 0 {
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                failure = Some(e.to_string());
            }
        }
        let mut finishes = Vec::with_capacity(batch.len());
        for call in batch {
            if failure.is_some() {
                // The transaction could not begin: nothing runs, every call hears why.
                let (_, finish) = (call.run)(&conn);
                finishes.push(finish);
                continue;
            }
            if call.write {
                if let Err(e) = conn.execute_batch("SAVEPOINT call") {
                    failure = Some(e.to_string());
                }
            }
            let (ok, finish) = (call.run)(&conn);
            if call.write && failure.is_none() {
                let end = if ok {
                    "RELEASE call"
                } else {
                    "ROLLBACK TO call; RELEASE call"
                };
                if let Err(e) = conn.execute_batch(end) {
                    failure = Some(e.to_string());
                }
            }
            finishes.push(finish);
        }
        if writes > 0 {
            if failure.is_none() {
                match conn.execute_batch("COMMIT") {
                    Ok(()) => {
                        counters.commits.fetch_add(1, Ordering::Relaxed);
                        counters.writes.fetch_add(writes, Ordering::Relaxed);
                    }
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            if failure.is_some() && !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for finish in finishes {
            finish(failure.as_deref());
        }
    }
}

fn to_json<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Serialise {
        what,
        message: e.to_string(),
    })
}

/// Moves `name` to `state` with `reason`, and records the event (keeping the latest
/// [`MAX_EVENTS`]). Becoming AVAILABLE records the time once.
fn set_state(
    conn: &Connection,
    name: &str,
    state: ClusterState,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let available = (state == ClusterState::Available).then_some(now);
    let seq: i64 = conn
        .prepare_cached(
            "UPDATE clusters SET state = ?2, reason = ?3, updated_ms = ?4,
                available_ms = COALESCE(available_ms, ?5), event_seq = event_seq + 1
             WHERE name = ?1 RETURNING event_seq",
        )
        .and_then(|mut st| {
            st.query_row(params![name, state.as_str(), reason, now, available], |r| {
                r.get(0)
            })
        })
        .map_err(db("set cluster state"))?;
    conn.prepare_cached(
        "INSERT INTO events (cluster, seq, at_ms, state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| st.execute(params![name, seq, now, state.as_str(), reason]))
    .map_err(db("record an event"))?;
    if seq > MAX_EVENTS as i64 {
        conn.prepare_cached("DELETE FROM events WHERE cluster = ?1 AND seq <= ?2")
            .and_then(|mut st| st.execute(params![name, seq - MAX_EVENTS as i64]))
            .map_err(db("trim events"))?;
    }
    Ok(())
}

/// Ends the change `id` of `name` with `outcome`.
fn close_change(
    conn: &Connection,
    name: &str,
    id: i64,
    outcome: Result<(), &str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE changes SET done_ms = ?3, failure = ?4, step = 'done'
         WHERE cluster = ?1 AND id = ?2 AND done_ms IS NULL",
        params![name, id, now, outcome.err()],
    )
    .map_err(db("end a change"))?;
    conn.execute(
        "UPDATE clusters SET change_id = NULL WHERE name = ?1 AND change_id = ?2",
        params![name, id],
    )
    .map_err(db("end a change"))?;
    Ok(())
}

/// Recounts the nodes ready on the cluster's current generation.
fn recount_ready(conn: &Connection, name: &str) -> Result<u32, StoreError> {
    conn.query_row(
        "UPDATE clusters SET ready_nodes = (SELECT COUNT(*) FROM nodes
             WHERE cluster = ?1 AND phase = 'ready' AND generation = clusters.generation),
             node_count = (SELECT COUNT(*) FROM nodes WHERE cluster = ?1)
         WHERE name = ?1 RETURNING ready_nodes",
        [name],
        |r| r.get(0),
    )
    .map_err(db("count ready nodes"))
}

/// Runs a query and collects its rows; `context` names it in errors.
fn rows<T, P: rusqlite::Params>(
    conn: &Connection,
    context: &'static str,
    sql: &str,
    params: P,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(db(context))?;
    let out = st
        .query_map(params, f)
        .map_err(db(context))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db(context));
    out
}

/// A node's phase and generation with its cluster's state and counts: what a report or
/// a lost mark changes the counts from.
struct Counted {
    phase: String,
    generation: i64,
    last_seen: Option<i64>,
    status: Option<String>,
    status_hash: Option<i64>,
    state: String,
    cluster_generation: i64,
    ready: i64,
    nodes: i64,
}

fn counted(conn: &Connection, cluster: &str, node: &str) -> Result<Option<Counted>, StoreError> {
    conn.prepare_cached(
        "SELECT n.phase, n.generation, n.last_seen_ms, n.status, c.state, c.generation,
            c.ready_nodes, c.node_count, n.status_hash
         FROM nodes n JOIN clusters c ON c.name = n.cluster
         WHERE n.cluster = ?1 AND n.id = ?2",
    )
    .and_then(|mut st| {
        st.query_row(params![cluster, node], |r| {
            Ok(Counted {
                phase: r.get(0)?,
                generation: r.get(1)?,
                last_seen: r.get(2)?,
                status: r.get(3)?,
                state: r.get(4)?,
                cluster_generation: r.get(5)?,
                ready: r.get(6)?,
                nodes: r.get(7)?,
                status_hash: r.get(8)?,
            })
        })
        .optional()
    })
    .map_err(db("read a node and its cluster's counts"))
}

use raw::{health, parse_state};

/// Stores `cluster`'s current plan (its own table: see [`SCHEMA_VERSION`]).
fn store_plan(conn: &Connection, cluster: &str, json: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO plans (cluster, plan) VALUES (?1, ?2)
         ON CONFLICT (cluster) DO UPDATE SET plan = excluded.plan",
    )
    .and_then(|mut st| st.execute(params![cluster, json]))
    .map_err(db("store plan"))?;
    Ok(())
}

fn insert_node(conn: &Connection, cluster: &str, n: &NodeRow) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO nodes (cluster, id, idx, grp, token, incarnation, leaving, phase,
            requested_ms, updated_ms, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '{}')",
    )
    .and_then(|mut st| {
        st.execute(params![
            cluster,
            n.id,
            n.index,
            n.group,
            n.token,
            n.incarnation,
            n.leaving,
            n.phase.as_str(),
            n.requested_ms.map(|v| v as i64),
            n.updated_ms as i64
        ])
    })
    .map_err(db("insert node"))?;
    Ok(())
}

impl Store for SqliteStore {
    fn insert_cluster<'a>(
        &'a self,
        c: &'a ClusterRow,
        nodes: &'a [NodeRow],
    ) -> StoreFuture<'a, ()> {
        let c = c.clone();
        let nodes = nodes.to_vec();
        self.call(true, move |conn| {
            let existing: Option<String> = conn
                .query_row(
                    "SELECT state FROM clusters WHERE name = ?1",
                    [&c.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("look up cluster"))?;
            match existing.as_deref() {
                Some("DELETED") => {
                    conn.execute("DELETE FROM clusters WHERE name = ?1", [&c.name])
                        .map_err(db("replace deleted cluster"))?;
                }
                Some(_) => return Err(StoreError::Exists(c.name.clone())),
                None => {}
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
            conn.execute(
                "INSERT INTO clusters (name, uid, provider, state, reason, key, generation,
                    blueprint, params, metadata_url, node_count, overlay, vni, domain,
                    created_ms, updated_ms, available_ms, ready_nodes, next_index,
                    auto_repair_secs, change_id, change_seq, event_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                    ?16, ?17, 0, ?18, ?19, 1, 1, 0)",
                params![
                    c.name,
                    c.uid,
                    c.provider,
                    c.state.as_str(),
                    c.reason,
                    c.key,
                    c.generation as i64,
                    to_json("the blueprint", &c.blueprint)?,
                    to_json("the provider parameters", &c.params)?,
                    c.metadata_url,
                    c.node_count,
                    c.overlay.to_string(),
                    c.vni,
                    c.domain,
                    c.created_ms as i64,
                    c.updated_ms as i64,
                    c.available_ms.map(|v| v as i64),
                    next_index,
                    c.auto_repair_secs.map(|v| v as i64),
                ],
            )
            .map_err(db("insert cluster"))?;
            if let Some(plan) = &plan {
                store_plan(conn, &c.name, plan)?;
            }
            for n in &nodes {
                insert_node(conn, &c.name, n)?;
            }
            let spec = ChangeSpec {
                summary: format!("create {} node(s)", nodes.len()),
                add: nodes.iter().map(|n| n.id.clone()).collect(),
                ..ChangeSpec::default()
            };
            conn.execute(
                "INSERT INTO changes (cluster, id, kind, spec, asked_ms, step)
                 VALUES (?1, 1, 'create', ?2, ?3, 'recorded')",
                params![c.name, to_json("the change", &spec)?, c.created_ms as i64],
            )
            .map_err(db("record the creation"))?;
            set_state(
                conn,
                &c.name,
                c.state,
                c.reason.as_deref(),
                c.created_ms as i64,
            )?;
            Ok(())
        })
    }

    fn cluster<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ClusterRow>> {
        let name = name.to_string();
        self.call(false, move |conn| {
            let raw = conn
                .query_row(
                    "SELECT c.*, p.plan AS stored_plan FROM clusters c
                     LEFT JOIN plans p ON p.cluster = c.name WHERE c.name = ?1",
                    [&name],
                    raw_cluster,
                )
                .optional()
                .map_err(db("read cluster"))?;
            raw.map(RawCluster::parse).transpose()
        })
    }

    fn clusters(&self) -> StoreFuture<'_, Vec<ClusterRow>> {
        self.call(false, |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT c.*, p.plan AS stored_plan FROM clusters c
                     LEFT JOIN plans p ON p.cluster = c.name ORDER BY c.name",
                )
                .map_err(db("list clusters"))?;
            let rows = stmt
                .query_map([], raw_cluster)
                .map_err(db("list clusters"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("list clusters"))?;
            rows.into_iter().map(RawCluster::parse).collect()
        })
    }

    fn nodes<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Vec<NodeRow>> {
        let cluster = cluster.to_string();
        self.call(false, move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT * FROM nodes WHERE cluster = ?1 ORDER BY idx")
                .map_err(db("list nodes"))?;
            let rows = stmt
                .query_map([&cluster], raw_node)
                .map_err(db("list nodes"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("list nodes"))?;
            rows.into_iter().map(|r| r.parse(&cluster)).collect()
        })
    }

    fn transition<'a>(
        &'a self,
        name: &'a str,
        from: &'a [ClusterState],
        to: ClusterState,
        reason: Option<&'a str>,
    ) -> StoreFuture<'a, bool> {
        let name = name.to_string();
        let from: Vec<ClusterState> = from.to_vec();
        let reason = reason.map(String::from);
        self.call(true, move |conn| {
            let current: Option<(String, Option<i64>, Option<String>)> = conn
                .query_row(
                    "SELECT c.state, c.change_id, ch.kind FROM clusters c
                     LEFT JOIN changes ch ON ch.cluster = c.name AND ch.id = c.change_id
                     WHERE c.name = ?1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db("read cluster state"))?;
            let Some((current, change, kind)) = current else {
                return Err(StoreError::NotFound(name));
            };
            let current = parse_state(&current)?;
            if !from.contains(&current) {
                return Ok(false);
            }
            let now = now_ms() as i64;
            set_state(conn, &name, to, reason.as_deref(), now)?;
            if let Some(id) = change {
                if let Some(outcome) =
                    raw::transition_ends_change(kind.as_deref(), to, reason.as_deref())
                {
                    close_change(conn, &name, id, outcome, now)?;
                }
            }
            Ok(true)
        })
    }

    fn set_node_vm<'a>(&'a self, cluster: &'a str, vm: &'a VmRecord) -> StoreFuture<'a, ()> {
        let cluster = cluster.to_string();
        let vm = vm.clone();
        self.call(true, move |conn| {
            let now = now_ms() as i64;
            conn.execute(
                "UPDATE nodes SET instance_id = ?3, private_ip = COALESCE(?4, private_ip),
                    details = ?5, updated_ms = ?6,
                    running_ms = CASE WHEN ?7 AND running_ms IS NULL THEN ?6 ELSE running_ms END,
                    phase = CASE WHEN ?7 AND phase = 'pending' THEN 'vm-running' ELSE phase END
                 WHERE cluster = ?1 AND id = ?2",
                params![
                    cluster,
                    vm.node_id,
                    vm.instance_id,
                    vm.private_ip.map(|ip| ip.to_string()),
                    to_json("node details", &vm.details)?,
                    now,
                    vm.running
                ],
            )
            .map_err(db("record node VM"))?;
            Ok(())
        })
    }

    fn publish_plan<'a>(&'a self, cluster: &'a str, plan: Plan) -> StoreFuture<'a, StoredPlan> {
        let cluster = cluster.to_string();
        self.call(true, move |conn| {
            let current: Option<(i64, Option<i64>)> = conn
                .query_row(
                    "SELECT generation, change_id FROM clusters WHERE name = ?1",
                    [&cluster],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db("read plan generation"))?;
            let Some((current, change)) = current else {
                return Err(StoreError::NotFound(cluster));
            };
            let mut plan = plan;
            plan.generation = current.max(0) as u64 + 1;
            let generation = plan.generation as i64;
            let json = to_json("the plan", &plan)?;
            let now = now_ms() as i64;
            conn.execute(
                "UPDATE clusters SET generation = ?2, updated_ms = ?3 WHERE name = ?1",
                params![cluster, generation, now],
            )
            .map_err(db("store plan"))?;
            store_plan(conn, &cluster, &json)?;
            conn.execute(
                "INSERT OR REPLACE INTO generations (cluster, generation, published_ms, change_id)
                 VALUES (?1, ?2, ?3, ?4)",
                params![cluster, generation, now, change],
            )
            .map_err(db("record the generation"))?;
            if let Some(id) = change {
                conn.execute(
                    "UPDATE changes SET generation = ?3, published_ms = ?4
                     WHERE cluster = ?1 AND id = ?2",
                    params![cluster, id, generation, now],
                )
                .map_err(db("record the change's generation"))?;
            }
            let oldest = generation - KEPT_GENERATIONS as i64;
            for table in ["convergences", "generations"] {
                conn.execute(
                    &format!("DELETE FROM {table} WHERE cluster = ?1 AND generation <= ?2"),
                    params![cluster, oldest],
                )
                .map_err(db("trim past generations"))?;
            }
            recount_ready(conn, &cluster)?;
            Ok(StoredPlan {
                plan,
                json: json.into_bytes().into(),
            })
        })
    }

    fn record_report<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> StoreFuture<'a, ReportOutcome> {
        let (cluster, node) = (cluster.to_string(), node.to_string());
        let status = status.clone();
        let json = to_json("the node status", &status);
        self.call(true, move |conn| {
            let json = json?;
            let Some(Counted {
                phase: old_phase,
                generation: old_gen,
                state,
                cluster_generation: cgen,
                mut ready,
                nodes,
                status_hash,
                ..
            }) = counted(conn, &cluster, &node)?
            else {
                return Err(StoreError::NotFound(format!("{cluster}/{node}")));
            };
            let now = now_ms() as i64;
            let fingerprint = status_fingerprint(json.as_bytes());
            if status_hash == Some(fingerprint) && old_phase != Phase::Lost.as_str() {
                // The same report again (the agent's liveness report): nothing moves.
                conn.prepare_cached(
                    "UPDATE nodes SET last_seen_ms = ?3 WHERE cluster = ?1 AND id = ?2",
                )
                .and_then(|mut st| st.execute(params![cluster, node, now]))
                .map_err(db("record liveness"))?;
                return Ok(raw::outcome(
                    parse_state(&state)?,
                    cgen,
                    ready,
                    nodes,
                    None,
                    false,
                ));
            }
            let step = raw::ReportStep::new(&old_phase, old_gen, cgen, &status);
            conn.prepare_cached(
                "UPDATE nodes SET phase = ?3, status = ?4, generation = ?5, updated_ms = ?6,
                    last_seen_ms = ?6, lost_ms = NULL, status_hash = ?9,
                    converged_ms = CASE WHEN ?7 THEN ?6 WHEN ?8 THEN converged_ms ELSE NULL END
                 WHERE cluster = ?1 AND id = ?2",
            )
            .and_then(|mut st| {
                st.execute(params![
                    cluster,
                    node,
                    status.phase.as_str(),
                    json,
                    step.generation,
                    now,
                    step.first_ready,
                    step.is_ready,
                    fingerprint
                ])
            })
            .map_err(db("record node status"))?;
            if step.ready_delta != 0 {
                ready += step.ready_delta;
                conn.prepare_cached("UPDATE clusters SET ready_nodes = ?2 WHERE name = ?1")
                    .and_then(|mut st| st.execute(params![cluster, ready]))
                    .map_err(db("count ready nodes"))?;
            }
            if step.first_ready {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO convergences (cluster, generation, node, converged_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut st| st.execute(params![cluster, step.generation, node, now]))
                .map_err(db("record a convergence"))?;
            }
            let mut state = parse_state(&state)?;
            let mut moved = None;
            if let Some(want) = raw::health_moves(state, cgen, ready, nodes) {
                let reason =
                    (want == ClusterState::Degraded).then(|| degraded_reason(&node, &status));
                set_state(conn, &cluster, want, reason.as_deref(), now)?;
                state = want;
                moved = Some(want);
            }
            Ok(raw::outcome(state, cgen, ready, nodes, moved, true))
        })
    }

    fn silent_nodes(&self, before_ms: u64, limit: usize) -> StoreFuture<'_, Vec<SilentNode>> {
        self.call(false, move |conn| {
            rows(
                conn,
                "find silent nodes",
                "SELECT n.cluster, n.id, n.last_seen_ms FROM nodes n
                 JOIN clusters c ON c.name = n.cluster
                 WHERE n.last_seen_ms < ?1 AND n.phase != 'lost' AND n.leaving = 0
                   AND c.state IN ('AVAILABLE', 'DEGRADED', 'UPDATING')
                 LIMIT ?2",
                params![before_ms as i64, limit as i64],
                |r| {
                    Ok(SilentNode {
                        cluster: r.get(0)?,
                        node: r.get(1)?,
                        last_seen_ms: get_u64(r, "last_seen_ms")?,
                    })
                },
            )
        })
    }

    fn mark_lost<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        before_ms: u64,
        message: &'a str,
    ) -> StoreFuture<'a, Option<ReportOutcome>> {
        let (cluster, node, message) = (cluster.to_string(), node.to_string(), message.to_string());
        self.call(true, move |conn| {
            let Some(Counted {
                phase,
                generation: gen,
                last_seen,
                status,
                state,
                cluster_generation: cgen,
                mut ready,
                nodes,
                ..
            }) = counted(conn, &cluster, &node)?
            else {
                return Ok(None);
            };
            let silent = last_seen.is_some_and(|t| t < before_ms as i64);
            if phase == Phase::Lost.as_str() || !silent {
                return Ok(None);
            }
            let st = raw::lost_status(
                status.as_deref(),
                gen,
                &message,
                &format!("{cluster}/{node}"),
            )?;
            let now = now_ms() as i64;
            conn.execute(
                "UPDATE nodes SET phase = 'lost', status = ?3, lost_ms = ?4, updated_ms = ?4,
                    converged_ms = NULL, status_hash = NULL
                 WHERE cluster = ?1 AND id = ?2",
                params![cluster, node, to_json("the node status", &st)?, now],
            )
            .map_err(db("mark a node lost"))?;
            if phase == Phase::Ready.as_str() && gen == cgen {
                ready -= 1;
                conn.execute(
                    "UPDATE clusters SET ready_nodes = ?2 WHERE name = ?1",
                    params![cluster, ready],
                )
                .map_err(db("count ready nodes"))?;
            }
            let mut state = parse_state(&state)?;
            let mut moved = None;
            if state == ClusterState::Available {
                set_state(
                    conn,
                    &cluster,
                    ClusterState::Degraded,
                    Some(&degraded_reason(&node, &st)),
                    now,
                )?;
                state = ClusterState::Degraded;
                moved = Some(state);
            }
            Ok(Some(raw::outcome(state, cgen, ready, nodes, moved, true)))
        })
    }

    fn due_repairs(&self, now_ms: u64) -> StoreFuture<'_, Vec<(String, String)>> {
        self.call(false, move |conn| {
            rows(
                conn,
                "find nodes to repair",
                "SELECT n.cluster, n.id FROM nodes n JOIN clusters c ON c.name = n.cluster
                 WHERE n.lost_ms IS NOT NULL AND n.phase = 'lost'
                   AND c.auto_repair_secs IS NOT NULL AND c.state = 'DEGRADED'
                   AND c.change_id IS NULL
                   AND n.lost_ms + c.auto_repair_secs * 1000 <= ?1
                 ORDER BY n.cluster, n.idx",
                [now_ms as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    fn begin_change<'a>(
        &'a self,
        cluster: &'a str,
        from: &'a [ClusterState],
        change: &'a NewChange,
    ) -> StoreFuture<'a, Option<u64>> {
        let cluster = cluster.to_string();
        let from = from.to_vec();
        let change = change.clone();
        self.call(true, move |conn| {
            let row: Option<(String, Option<i64>, i64, i64)> = conn
                .query_row(
                    "SELECT state, change_id, next_index, change_seq FROM clusters
                     WHERE name = ?1",
                    [&cluster],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(db("read cluster for a change"))?;
            let Some((state, in_flight, next_index, seq)) = row else {
                return Err(StoreError::NotFound(cluster));
            };
            if !from.contains(&parse_state(&state)?) || in_flight.is_some() {
                return Ok(None);
            }
            let id = seq + 1;
            let now = now_ms() as i64;
            conn.execute(
                "INSERT INTO changes (cluster, id, kind, spec, asked_ms, step)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'recorded')",
                params![
                    cluster,
                    id,
                    change.kind.as_str(),
                    to_json("the change", &change.spec)?,
                    change.asked_ms as i64
                ],
            )
            .map_err(db("record a change"))?;
            let mut next = next_index;
            for n in &change.add {
                raw::check_new_index(n, next_index)?;
                insert_node(conn, &cluster, n)?;
                next = next.max(i64::from(n.index) + 1);
            }
            for id in &change.leaving {
                let changed = conn
                    .execute(
                        "UPDATE nodes SET leaving = 1 WHERE cluster = ?1 AND id = ?2",
                        params![cluster, id],
                    )
                    .map_err(db("mark a node leaving"))?;
                if changed == 0 {
                    return Err(StoreError::NotFound(format!("{cluster}/{id}")));
                }
            }
            for (node, token) in &change.replace {
                let changed = conn
                    .execute(
                        "UPDATE nodes SET token = ?3, incarnation = incarnation + 1,
                            phase = 'pending', status = NULL, status_hash = NULL, generation = 0,
                            converged_ms = NULL, last_seen_ms = NULL, lost_ms = NULL,
                            instance_id = NULL, private_ip = NULL, details = '{}',
                            requested_ms = ?4, running_ms = NULL, updated_ms = ?4
                         WHERE cluster = ?1 AND id = ?2",
                        params![cluster, node, token, now],
                    )
                    .map_err(db("reset a node for a new VM"))?;
                if changed == 0 {
                    return Err(StoreError::NotFound(format!("{cluster}/{node}")));
                }
            }
            conn.execute(
                "UPDATE clusters SET change_id = ?2, change_seq = ?2, next_index = ?3
                 WHERE name = ?1",
                params![cluster, id, next],
            )
            .map_err(db("record a change"))?;
            recount_ready(conn, &cluster)?;
            set_state(conn, &cluster, ClusterState::Updating, None, now)?;
            Ok(Some(id as u64))
        })
    }

    fn change_step<'a>(&'a self, cluster: &'a str, id: u64, step: &'a str) -> StoreFuture<'a, ()> {
        let (cluster, step) = (cluster.to_string(), step.to_string());
        self.call(true, move |conn| {
            let changed = conn
                .execute(
                    "UPDATE changes SET step = ?3 WHERE cluster = ?1 AND id = ?2",
                    params![cluster, id as i64, step],
                )
                .map_err(db("record a change's step"))?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("{cluster} change {id}")));
            }
            Ok(())
        })
    }

    fn set_leaving<'a>(
        &'a self,
        cluster: &'a str,
        nodes: &'a [String],
        leaving: bool,
    ) -> StoreFuture<'a, ()> {
        let cluster = cluster.to_string();
        let nodes = nodes.to_vec();
        self.call(true, move |conn| {
            for n in &nodes {
                conn.execute(
                    "UPDATE nodes SET leaving = ?3 WHERE cluster = ?1 AND id = ?2",
                    params![cluster, n, leaving],
                )
                .map_err(db("mark a node leaving"))?;
            }
            Ok(())
        })
    }

    fn remove_nodes<'a>(&'a self, cluster: &'a str, nodes: &'a [String]) -> StoreFuture<'a, ()> {
        let cluster = cluster.to_string();
        let nodes = nodes.to_vec();
        self.call(true, move |conn| {
            for n in &nodes {
                conn.execute(
                    "DELETE FROM nodes WHERE cluster = ?1 AND id = ?2",
                    params![cluster, n],
                )
                .map_err(db("remove a node"))?;
                conn.execute(
                    "DELETE FROM convergences WHERE cluster = ?1 AND node = ?2",
                    params![cluster, n],
                )
                .map_err(db("remove a node"))?;
            }
            recount_ready(conn, &cluster)?;
            Ok(())
        })
    }

    fn finish_change<'a>(
        &'a self,
        cluster: &'a str,
        id: u64,
        outcome: Result<(), &'a str>,
    ) -> StoreFuture<'a, ClusterState> {
        let cluster = cluster.to_string();
        let failure = outcome.err().map(String::from);
        self.call(true, move |conn| {
            let row: Option<(String, i64, i64, i64)> = conn
                .query_row(
                    "SELECT state, generation, ready_nodes, node_count FROM clusters
                     WHERE name = ?1",
                    [&cluster],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(db("read cluster to end a change"))?;
            let Some((state, gen, ready, nodes)) = row else {
                return Err(StoreError::NotFound(cluster));
            };
            let now = now_ms() as i64;
            let outcome = match &failure {
                Some(f) => Err(f.as_str()),
                None => Ok(()),
            };
            close_change(conn, &cluster, id as i64, outcome, now)?;
            let state = parse_state(&state)?;
            if state != ClusterState::Updating {
                return Ok(state);
            }
            let to = health(gen, ready, nodes);
            let reason = match (&failure, to) {
                (Some(f), _) => Some(f.clone()),
                (None, ClusterState::Degraded) => {
                    let names = rows(
                        conn,
                        "list nodes not ready",
                        "SELECT id, phase FROM nodes WHERE cluster = ?1
                           AND NOT (phase = 'ready' AND generation = ?2)
                         ORDER BY idx LIMIT 5",
                        params![cluster, gen],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    Some(raw::not_ready_reason(&names))
                }
                (None, _) => None,
            };
            set_state(conn, &cluster, to, reason.as_deref(), now)?;
            Ok(to)
        })
    }

    fn history<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, History> {
        let cluster = cluster.to_string();
        self.call(false, move |conn| {
            type Raw = (
                i64,
                String,
                String,
                i64,
                String,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<String>,
            );
            let raw: Vec<Raw> = rows(
                conn,
                "read changes",
                "SELECT id, kind, spec, asked_ms, step, generation, published_ms, done_ms,
                    failure
                 FROM changes WHERE cluster = ?1 ORDER BY id",
                [&cluster],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                },
            )?;
            let mut changes = Vec::with_capacity(raw.len());
            for (id, kind, spec, asked, step, generation, published, done, failure) in raw {
                let bad = || StoreError::Corrupt(format!("change {id} of cluster {cluster}"));
                changes.push(ChangeRow {
                    id: id as u64,
                    kind: ChangeKind::parse(&kind).ok_or_else(bad)?,
                    spec: serde_json::from_str(&spec).map_err(|_| bad())?,
                    asked_ms: asked.max(0) as u64,
                    step,
                    generation: generation.map(|g| g as u64),
                    published_ms: published.map(|p| p as u64),
                    done_ms: done.map(|d| d as u64),
                    outcome: done.map(|_| match failure {
                        Some(f) => Err(f),
                        None => Ok(()),
                    }),
                });
            }
            let mut generations: Vec<GenerationRow> = rows(
                conn,
                "read generations",
                "SELECT generation, published_ms, change_id FROM generations
                 WHERE cluster = ?1 ORDER BY generation",
                [&cluster],
                |r| {
                    Ok(GenerationRow {
                        generation: get_u64(r, "generation")?,
                        published_ms: get_u64(r, "published_ms")?,
                        change: r.get::<_, Option<i64>>("change_id")?.map(|c| c as u64),
                        converged: vec![],
                    })
                },
            )?;
            let conv = rows(
                conn,
                "read convergences",
                "SELECT v.generation, v.node, v.converged_ms FROM convergences v
                 LEFT JOIN nodes n ON n.cluster = v.cluster AND n.id = v.node
                 WHERE v.cluster = ?1 ORDER BY v.generation, n.idx, v.node",
                [&cluster],
                |r| {
                    Ok((
                        get_u64(r, "generation")?,
                        r.get::<_, String>(1)?,
                        get_u64(r, "converged_ms")?,
                    ))
                },
            )?;
            for (g, node, ms) in conv {
                if let Some(row) = generations.iter_mut().find(|r| r.generation == g) {
                    row.converged.push((node, ms));
                }
            }
            let raw: Vec<(i64, String, Option<String>)> = rows(
                conn,
                "read events",
                "SELECT at_ms, state, reason FROM events WHERE cluster = ?1 ORDER BY seq",
                [&cluster],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut events = Vec::with_capacity(raw.len());
            for (at, state, reason) in raw {
                events.push(ClusterEvent {
                    at_ms: at.max(0) as u64,
                    state: parse_state(&state)?,
                    reason,
                });
            }
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
}

fn get_u64(r: &Row<'_>, col: &str) -> rusqlite::Result<u64> {
    r.get::<_, i64>(col).map(|v| v.max(0) as u64)
}

/// A cluster row as SQLite holds it.
fn raw_cluster(r: &Row<'_>) -> rusqlite::Result<RawCluster> {
    Ok(RawCluster {
        name: r.get("name")?,
        uid: r.get("uid")?,
        provider: r.get("provider")?,
        state: r.get("state")?,
        reason: r.get("reason")?,
        key: r.get("key")?,
        generation: get_u64(r, "generation")?,
        plan: r.get("stored_plan")?,
        blueprint: r.get("blueprint")?,
        params: r.get("params")?,
        metadata_url: r.get("metadata_url")?,
        node_count: r.get("node_count")?,
        overlay: r.get("overlay")?,
        vni: r.get("vni")?,
        domain: r.get("domain")?,
        created_ms: get_u64(r, "created_ms")?,
        updated_ms: get_u64(r, "updated_ms")?,
        available_ms: r.get::<_, Option<i64>>("available_ms")?.map(|v| v as u64),
        ready_nodes: r.get("ready_nodes")?,
        next_index: r.get("next_index")?,
        auto_repair_secs: r
            .get::<_, Option<i64>>("auto_repair_secs")?
            .map(|v| v.max(0) as u64),
        change: r.get::<_, Option<i64>>("change_id")?.map(|v| v as u64),
    })
}

/// A node row as SQLite holds it.
fn raw_node(r: &Row<'_>) -> rusqlite::Result<RawNode> {
    let opt_ms = |col: &str| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(col)?.map(|v| v.max(0) as u64))
    };
    Ok(RawNode {
        id: r.get("id")?,
        index: r.get("idx")?,
        group: r.get("grp")?,
        token: r.get("token")?,
        incarnation: r.get("incarnation")?,
        leaving: r.get("leaving")?,
        generation: get_u64(r, "generation")?,
        converged_ms: opt_ms("converged_ms")?,
        last_seen_ms: opt_ms("last_seen_ms")?,
        lost_ms: opt_ms("lost_ms")?,
        instance_id: r.get("instance_id")?,
        private_ip: r.get("private_ip")?,
        details: r.get("details")?,
        phase: r.get("phase")?,
        status: r.get("status")?,
        requested_ms: r.get::<_, Option<i64>>("requested_ms")?.map(|v| v as u64),
        running_ms: r.get::<_, Option<i64>>("running_ms")?.map(|v| v as u64),
        updated_ms: get_u64(r, "updated_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn sqlite_in_memory_passes_the_conformance_suite() {
        conformance::run(&|| Box::new(SqliteStore::in_memory().expect("store"))).await;
    }

    #[tokio::test]
    async fn sqlite_on_disk_passes_the_conformance_suite() {
        let dir = conformance::scratch_dir("sqlite");
        let n = std::sync::atomic::AtomicU32::new(0);
        conformance::run(&|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            Box::new(SqliteStore::open(&dir.join(i.to_string())).expect("open"))
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn state_survives_reopen_and_files_are_private() {
        let dir = conformance::scratch_dir("reopen");
        {
            let s = SqliteStore::open(&dir).expect("open");
            s.insert_cluster(&conformance::cluster("demo"), &[conformance::node(0)])
                .await
                .expect("insert");
            s.record_report("demo", "node-0", &conformance::status(Phase::Ready, 0))
                .await
                .expect("status");
        }
        let s = SqliteStore::open(&dir).expect("reopen");
        assert_eq!(s.clusters().await.expect("list").len(), 1);
        assert_eq!(
            s.nodes("demo").await.expect("nodes")[0].phase,
            Phase::Ready,
            "an acknowledged report is on disk"
        );
        let mode = std::fs::metadata(dir.join(DB_FILE))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_database_of_schema_2_has_its_plans_moved_to_their_table() {
        let dir = conformance::scratch_dir("schema2");
        let published = {
            let s = SqliteStore::open(&dir).expect("open");
            s.insert_cluster(&conformance::cluster("demo"), &[conformance::node(0)])
                .await
                .expect("insert");
            s.publish_plan("demo", conformance::plan("demo"))
                .await
                .expect("publish")
        };
        // Back to how schema 2 kept it: the plan in the cluster's row.
        {
            let conn = Connection::open(dir.join(DB_FILE)).expect("raw open");
            conn.execute_batch(
                "UPDATE clusters SET plan = (SELECT plan FROM plans WHERE cluster = name);
                 DELETE FROM plans; PRAGMA user_version = 2;",
            )
            .expect("downgrade");
        }
        let s = SqliteStore::open(&dir).expect("reopen");
        let c = s.cluster("demo").await.expect("read").expect("there");
        let plan = c.plan.expect("the plan survived the move");
        assert_eq!(plan.json, published.json);
        assert_eq!(plan.generation(), published.generation());
        drop(s);
        let conn = Connection::open(dir.join(DB_FILE)).expect("raw open");
        let (in_rows, in_table, version): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM clusters WHERE plan IS NOT NULL),
                        (SELECT COUNT(*) FROM plans), (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("count");
        assert_eq!((in_rows, in_table, version), (0, 1, SCHEMA_VERSION));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn reports_arriving_together_share_commits() {
        let dir = conformance::scratch_dir("group");
        let s = SqliteStore::open(&dir).expect("open");
        let nodes: Vec<NodeRow> = (0..200).map(conformance::node).collect();
        s.insert_cluster(&conformance::cluster("big"), &nodes)
            .await
            .expect("insert");
        let before = s.stats();
        let status = conformance::status(Phase::Ready, 0);
        let writes = (0..200).map(|i| {
            let s = s.clone();
            let status = status.clone();
            tokio::spawn(async move { s.record_report("big", &format!("node-{i}"), &status).await })
        });
        for w in futures_util::future::join_all(writes).await {
            w.expect("task").expect("write");
        }
        let after = s.stats();
        assert_eq!(after.writes - before.writes, 200);
        assert!(
            after.commits - before.commits < 200,
            "200 concurrent reports took {} commits",
            after.commits - before.commits
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
