//! The embedded store: SQLite in one file of the state directory, WAL mode,
//! `synchronous=FULL` (a commit is on disk when it returns), foreign keys on.
//!
//! One dedicated thread owns the connection; async callers send it closures and await
//! the answer, so no database work (and no fsync) runs on a tokio worker. The thread
//! takes every call that is waiting when it wakes and runs them in one transaction,
//! each inside a savepoint of its own (a call that fails is rolled back alone): many
//! status reports arriving together share one commit, one fsync (group commit). A call
//! is answered only after the commit that holds it, so an acknowledged write is durable.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use rusqlite::{params, Connection, OptionalExtension, Row};
use shoal_protocol::{NodeStatus, Phase, Plan};
use tokio::sync::oneshot;

use super::{
    now_ms, ClusterRow, ClusterState, NodeRow, Store, StoreError, StoreFuture, StoreStats,
    StoredPlan, VmRecord,
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
";

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
            conn.execute(
                "INSERT INTO clusters (name, uid, provider, state, reason, key, generation, plan,
                    blueprint, params, metadata_url, node_count, overlay, vni, domain,
                    created_ms, updated_ms, available_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                params![
                    c.name,
                    c.uid,
                    c.provider,
                    c.state.as_str(),
                    c.reason,
                    c.key,
                    c.generation as i64,
                    plan,
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
                ],
            )
            .map_err(db("insert cluster"))?;
            for n in &nodes {
                conn.execute(
                    "INSERT INTO nodes (cluster, id, idx, token, phase, requested_ms, updated_ms, details)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '{}')",
                    params![
                        c.name,
                        n.id,
                        n.index,
                        n.token,
                        n.phase.as_str(),
                        n.requested_ms.map(|v| v as i64),
                        n.updated_ms as i64
                    ],
                )
                .map_err(db("insert node"))?;
            }
            Ok(())
        })
    }

    fn cluster<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ClusterRow>> {
        let name = name.to_string();
        self.call(false, move |conn| {
            let raw = conn
                .query_row(
                    "SELECT * FROM clusters WHERE name = ?1",
                    [&name],
                    RawCluster::read,
                )
                .optional()
                .map_err(db("read cluster"))?;
            raw.map(RawCluster::parse).transpose()
        })
    }

    fn clusters(&self) -> StoreFuture<'_, Vec<ClusterRow>> {
        self.call(false, |conn| {
            let mut stmt = conn
                .prepare("SELECT * FROM clusters ORDER BY name")
                .map_err(db("list clusters"))?;
            let rows = stmt
                .query_map([], RawCluster::read)
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
                .query_map([&cluster], node_from_row)
                .map_err(db("list nodes"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(db("list nodes"))
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
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        let reason = reason.map(String::from);
        self.call(true, move |conn| {
            let current: Option<String> = conn
                .query_row("SELECT state FROM clusters WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db("read cluster state"))?;
            let Some(current) = current else {
                return Err(StoreError::NotFound(name));
            };
            if !from.contains(&current.as_str()) {
                return Ok(false);
            }
            let now = now_ms() as i64;
            let available = (to == ClusterState::Available).then_some(now);
            conn.execute(
                "UPDATE clusters SET state = ?2, reason = ?3, updated_ms = ?4,
                    available_ms = COALESCE(available_ms, ?5) WHERE name = ?1",
                params![name, to.as_str(), reason, now, available],
            )
            .map_err(db("set cluster state"))?;
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
            let current: Option<i64> = conn
                .query_row(
                    "SELECT generation FROM clusters WHERE name = ?1",
                    [&cluster],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("read plan generation"))?;
            let Some(current) = current else {
                return Err(StoreError::NotFound(cluster));
            };
            let mut plan = plan;
            plan.generation = current.max(0) as u64 + 1;
            let json = to_json("the plan", &plan)?;
            conn.execute(
                "UPDATE clusters SET generation = ?2, plan = ?3, updated_ms = ?4 WHERE name = ?1",
                params![cluster, plan.generation as i64, json, now_ms() as i64],
            )
            .map_err(db("store plan"))?;
            Ok(StoredPlan {
                plan,
                json: json.into_bytes().into(),
            })
        })
    }

    fn set_node_status<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> StoreFuture<'a, ()> {
        let (cluster, node) = (cluster.to_string(), node.to_string());
        let phase = status.phase;
        let json = to_json("the node status", status);
        self.call(true, move |conn| {
            let json = json?;
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE nodes SET phase = ?3, status = ?4, updated_ms = ?5
                     WHERE cluster = ?1 AND id = ?2",
                )
                .map_err(db("record node status"))?;
            let changed = stmt
                .execute(params![
                    cluster,
                    node,
                    phase.as_str(),
                    json,
                    now_ms() as i64
                ])
                .map_err(db("record node status"))?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!("{cluster}/{node}")));
            }
            Ok(())
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

fn corrupt(col: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, col.to_string(), rusqlite::types::Type::Text)
}

/// A cluster row as SQLite holds it: its JSON columns are parsed outside the row
/// callback, so a corrupt one is reported by name.
struct RawCluster {
    name: String,
    uid: String,
    provider: String,
    state: String,
    reason: Option<String>,
    key: String,
    generation: u64,
    plan: Option<String>,
    blueprint: String,
    params: String,
    metadata_url: String,
    node_count: u32,
    overlay: String,
    vni: u32,
    domain: String,
    created_ms: u64,
    updated_ms: u64,
    available_ms: Option<u64>,
}

impl RawCluster {
    fn read(r: &Row<'_>) -> rusqlite::Result<RawCluster> {
        Ok(RawCluster {
            name: r.get("name")?,
            uid: r.get("uid")?,
            provider: r.get("provider")?,
            state: r.get("state")?,
            reason: r.get("reason")?,
            key: r.get("key")?,
            generation: get_u64(r, "generation")?,
            plan: r.get("plan")?,
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
        })
    }

    fn parse(self) -> Result<ClusterRow, StoreError> {
        let bad = |what: &str| StoreError::Corrupt(format!("{what} of cluster {}", self.name));
        let plan = match &self.plan {
            Some(json) => {
                let plan: Plan = serde_json::from_str(json).map_err(|_| bad("the plan"))?;
                Some(StoredPlan {
                    plan,
                    json: json.clone().into_bytes().into(),
                })
            }
            None => None,
        };
        Ok(ClusterRow {
            state: ClusterState::parse(&self.state).ok_or_else(|| bad("the state"))?,
            blueprint: serde_json::from_str(&self.blueprint).map_err(|_| bad("the blueprint"))?,
            params: serde_json::from_str(&self.params).map_err(|_| bad("the parameters"))?,
            overlay: self.overlay.parse().map_err(|_| bad("the overlay"))?,
            plan,
            name: self.name,
            uid: self.uid,
            provider: self.provider,
            reason: self.reason,
            key: self.key,
            generation: self.generation,
            metadata_url: self.metadata_url,
            node_count: self.node_count,
            vni: self.vni,
            domain: self.domain,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            available_ms: self.available_ms,
        })
    }
}

fn node_from_row(r: &Row<'_>) -> rusqlite::Result<NodeRow> {
    let phase: String = r.get("phase")?;
    let ip: Option<String> = r.get("private_ip")?;
    let details: String = r.get("details")?;
    let status: Option<String> = r.get("status")?;
    Ok(NodeRow {
        id: r.get("id")?,
        index: r.get("idx")?,
        token: r.get("token")?,
        instance_id: r.get("instance_id")?,
        private_ip: match ip {
            Some(s) => Some(s.parse().map_err(|_| corrupt("private_ip"))?),
            None => None,
        },
        details: serde_json::from_str::<BTreeMap<String, String>>(&details)
            .map_err(|_| corrupt("details"))?,
        phase: Phase::parse(&phase).ok_or_else(|| corrupt("phase"))?,
        status: match status {
            Some(s) => Some(serde_json::from_str(&s).map_err(|_| corrupt("status"))?),
            None => None,
        },
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
            s.set_node_status("demo", "node-0", &conformance::status(Phase::Ready, 0))
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
            tokio::spawn(async move {
                s.set_node_status("big", &format!("node-{i}"), &status)
                    .await
            })
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
