//! Cluster state in SQLite: one file in the state directory, WAL mode, synchronous
//! writes, every change one transaction. The store holds secrets (cluster keys, node
//! tokens), so its files are mode 0600 in a 0700 directory.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use shoal_protocol::{NodeStatus, Phase};

use crate::providers::{ClusterRef, ProviderParams};

/// A cluster's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ClusterState {
    /// Recorded, nothing made yet.
    Requested,
    /// VMs being made, agents converging.
    Creating,
    /// Every node reported ready.
    Available,
    /// Creation failed; see the reason. `delete` removes what was made.
    Failed,
    /// Being deleted.
    Deleting,
    /// Gone.
    Deleted,
}

impl ClusterState {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Requested => "REQUESTED",
            ClusterState::Creating => "CREATING",
            ClusterState::Available => "AVAILABLE",
            ClusterState::Failed => "FAILED",
            ClusterState::Deleting => "DELETING",
            ClusterState::Deleted => "DELETED",
        }
    }

    fn parse(s: &str) -> Option<ClusterState> {
        [
            ClusterState::Requested,
            ClusterState::Creating,
            ClusterState::Available,
            ClusterState::Failed,
            ClusterState::Deleting,
            ClusterState::Deleted,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored cluster. `Debug` hides the key.
#[derive(Clone, PartialEq)]
pub struct ClusterRow {
    /// Name.
    pub name: String,
    /// Random id fixed at creation.
    pub uid: String,
    /// Provider name.
    pub provider: String,
    /// State.
    pub state: ClusterState,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// The secret metadata key.
    pub key: String,
    /// Plan generation (0: no plan yet).
    pub generation: u64,
    /// The plan's JSON, once ready.
    pub plan: Option<String>,
    /// The blueprint, as JSON.
    pub blueprint: String,
    /// Provider parameters.
    pub params: ProviderParams,
    /// Base URL agents use.
    pub metadata_url: String,
    /// Number of nodes.
    pub node_count: u32,
    /// Overlay range.
    pub overlay: String,
    /// VXLAN id.
    pub vni: u32,
    /// DNS domain.
    pub domain: String,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// When it became AVAILABLE.
    pub available_ms: Option<u64>,
}

impl std::fmt::Debug for ClusterRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRow")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("provider", &self.provider)
            .field("state", &self.state)
            .field("generation", &self.generation)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClusterRow {
    /// The provider's handle on this cluster.
    pub fn cluster_ref(&self) -> ClusterRef {
        ClusterRef {
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// A stored node. `Debug` hides the token.
#[derive(Clone, PartialEq)]
pub struct NodeRow {
    /// Node id.
    pub id: String,
    /// Index.
    pub index: u32,
    /// The node's status-write token.
    pub token: String,
    /// Provider's id of the VM.
    pub instance_id: Option<String>,
    /// Private address.
    pub private_ip: Option<Ipv4Addr>,
    /// Provider facts (local: netns, docker socket).
    pub details: BTreeMap<String, String>,
    /// Current phase.
    pub phase: Phase,
    /// The agent's last report.
    pub status: Option<NodeStatus>,
    /// When the VM was requested.
    pub requested_ms: Option<u64>,
    /// When the provider reported it running.
    pub running_ms: Option<u64>,
    /// Last change.
    pub updated_ms: u64,
}

impl std::fmt::Debug for NodeRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRow")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .field("private_ip", &self.private_ip)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("state store: {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// Cause.
        source: rusqlite::Error,
    },
    /// Preparing the state directory failed.
    #[error("state store: {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A cluster of that name exists.
    #[error("a cluster named {0:?} already exists (delete it first, or pick another name)")]
    Exists(String),
    /// A stored value is unreadable.
    #[error("state store: corrupt value in {0}")]
    Corrupt(String),
    /// A thread panicked while holding the store.
    #[error("state store: lock poisoned")]
    Poisoned,
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The store. Calls are short; they run under one mutex.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

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

impl Store {
    /// Opens (creating if needed) `shoal.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let path = dir.join("shoal.db");
        let conn = Connection::open(&path).map_err(sql("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("enable WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("foreign keys"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("busy timeout"))?;
        conn.execute_batch(SCHEMA).map_err(sql("create schema"))?;
        // The WAL and shared-memory files exist by now; none may be world-readable.
        for f in ["shoal.db", "shoal.db-wal", "shoal.db-shm"] {
            let p = dir.join(f);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(io(&p))?;
            }
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql("open"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("foreign keys"))?;
        conn.execute_batch(SCHEMA).map_err(sql("create schema"))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Records a new cluster and its nodes in one transaction. A DELETED cluster of the
    /// same name is replaced; any other is [`StoreError::Exists`].
    pub fn insert_cluster(&self, c: &ClusterRow, nodes: &[NodeRow]) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(sql("begin"))?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT state FROM clusters WHERE name = ?1",
                [&c.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("look up cluster"))?;
        match existing.as_deref() {
            Some("DELETED") => {
                tx.execute("DELETE FROM clusters WHERE name = ?1", [&c.name])
                    .map_err(sql("replace deleted cluster"))?;
            }
            Some(_) => return Err(StoreError::Exists(c.name.clone())),
            None => {}
        }
        let params_json = serde_json::to_string(&c.params)
            .map_err(|_| StoreError::Corrupt("cluster params".into()))?;
        tx.execute(
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
                c.plan,
                c.blueprint,
                params_json,
                c.metadata_url,
                c.node_count,
                c.overlay,
                c.vni,
                c.domain,
                c.created_ms as i64,
                c.updated_ms as i64,
                c.available_ms.map(|v| v as i64),
            ],
        )
        .map_err(sql("insert cluster"))?;
        for n in nodes {
            tx.execute(
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
            .map_err(sql("insert node"))?;
        }
        tx.commit().map_err(sql("commit"))
    }

    /// One cluster.
    pub fn cluster(&self, name: &str) -> Result<Option<ClusterRow>, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT * FROM clusters WHERE name = ?1",
            [name],
            cluster_from_row,
        )
        .optional()
        .map_err(sql("read cluster"))
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> Result<Vec<ClusterRow>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare("SELECT * FROM clusters ORDER BY name")
            .map_err(sql("list clusters"))?;
        let rows = stmt
            .query_map([], cluster_from_row)
            .map_err(sql("list clusters"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sql("list clusters"))
    }

    /// A cluster's nodes, by index.
    pub fn nodes(&self, cluster: &str) -> Result<Vec<NodeRow>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare("SELECT * FROM nodes WHERE cluster = ?1 ORDER BY idx")
            .map_err(sql("list nodes"))?;
        let rows = stmt
            .query_map([cluster], node_from_row)
            .map_err(sql("list nodes"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sql("list nodes"))
    }

    /// Sets a cluster's state (and reason, for FAILED).
    pub fn set_state(
        &self,
        name: &str,
        state: ClusterState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.lock()?;
        let now = now_ms() as i64;
        let available = (state == ClusterState::Available).then_some(now);
        conn.execute(
            "UPDATE clusters SET state = ?2, reason = ?3, updated_ms = ?4,
                available_ms = COALESCE(?5, available_ms) WHERE name = ?1",
            params![name, state.as_str(), reason, now, available],
        )
        .map_err(sql("set cluster state"))?;
        Ok(())
    }

    /// Records what the provider reported of a node's VM.
    pub fn set_node_vm(
        &self,
        cluster: &str,
        node: &str,
        instance_id: &str,
        private_ip: Option<Ipv4Addr>,
        details: &BTreeMap<String, String>,
        running: bool,
    ) -> Result<(), StoreError> {
        let conn = self.lock()?;
        let now = now_ms() as i64;
        let details = serde_json::to_string(details)
            .map_err(|_| StoreError::Corrupt("node details".into()))?;
        conn.execute(
            "UPDATE nodes SET instance_id = ?3, private_ip = COALESCE(?4, private_ip),
                details = ?5, updated_ms = ?6,
                running_ms = CASE WHEN ?7 AND running_ms IS NULL THEN ?6 ELSE running_ms END,
                phase = CASE WHEN ?7 AND phase = 'pending' THEN 'vm-running' ELSE phase END
             WHERE cluster = ?1 AND id = ?2",
            params![
                cluster,
                node,
                instance_id,
                private_ip.map(|ip| ip.to_string()),
                details,
                now,
                running
            ],
        )
        .map_err(sql("record node VM"))?;
        Ok(())
    }

    /// Stores a new plan and returns its generation (the previous one plus one).
    pub fn set_plan(&self, cluster: &str, plan_json: &str) -> Result<u64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(sql("begin"))?;
        let gen: i64 = tx
            .query_row(
                "UPDATE clusters SET generation = generation + 1, plan = ?2, updated_ms = ?3
                 WHERE name = ?1 RETURNING generation",
                params![cluster, plan_json, now_ms() as i64],
                |r| r.get(0),
            )
            .map_err(sql("store plan"))?;
        tx.commit().map_err(sql("commit plan"))?;
        Ok(gen as u64)
    }

    /// Records an agent's report.
    pub fn set_node_status(
        &self,
        cluster: &str,
        node: &str,
        status: &NodeStatus,
    ) -> Result<(), StoreError> {
        let conn = self.lock()?;
        let json =
            serde_json::to_string(status).map_err(|_| StoreError::Corrupt("node status".into()))?;
        conn.execute(
            "UPDATE nodes SET phase = ?3, status = ?4, updated_ms = ?5 WHERE cluster = ?1 AND id = ?2",
            params![cluster, node, status.phase.as_str(), json, now_ms() as i64],
        )
        .map_err(sql("record node status"))?;
        Ok(())
    }
}

fn get_u64(r: &Row<'_>, col: &str) -> rusqlite::Result<u64> {
    r.get::<_, i64>(col).map(|v| v.max(0) as u64)
}

fn corrupt(col: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, col.to_string(), rusqlite::types::Type::Text)
}

fn cluster_from_row(r: &Row<'_>) -> rusqlite::Result<ClusterRow> {
    let state: String = r.get("state")?;
    let params: String = r.get("params")?;
    Ok(ClusterRow {
        name: r.get("name")?,
        uid: r.get("uid")?,
        provider: r.get("provider")?,
        state: ClusterState::parse(&state).ok_or_else(|| corrupt("state"))?,
        reason: r.get("reason")?,
        key: r.get("key")?,
        generation: get_u64(r, "generation")?,
        plan: r.get("plan")?,
        blueprint: r.get("blueprint")?,
        params: serde_json::from_str(&params).map_err(|_| corrupt("params"))?,
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
        details: serde_json::from_str(&details).map_err(|_| corrupt("details"))?,
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

    fn cluster(name: &str) -> ClusterRow {
        ClusterRow {
            name: name.into(),
            uid: "0123456789ab".into(),
            provider: "local".into(),
            state: ClusterState::Requested,
            reason: None,
            key: crate::keys::random_secret(),
            generation: 0,
            plan: None,
            blueprint: "{}".into(),
            params: ProviderParams::default(),
            metadata_url: "http://10.213.0.1:8787".into(),
            node_count: 2,
            overlay: "10.240.0.0/16".into(),
            vni: 7,
            domain: "shoal.internal".into(),
            created_ms: 1,
            updated_ms: 1,
            available_ms: None,
        }
    }

    fn node(i: u32) -> NodeRow {
        NodeRow {
            id: format!("node-{i}"),
            index: i,
            token: crate::keys::random_secret(),
            instance_id: None,
            private_ip: None,
            details: BTreeMap::new(),
            phase: Phase::Pending,
            status: None,
            requested_ms: Some(1),
            running_ms: None,
            updated_ms: 1,
        }
    }

    #[test]
    fn cluster_life_cycle_is_recorded() {
        let s = Store::in_memory().expect("store");
        s.insert_cluster(&cluster("demo"), &[node(0), node(1)])
            .expect("insert");
        assert!(matches!(
            s.insert_cluster(&cluster("demo"), &[node(0)]),
            Err(StoreError::Exists(_))
        ));
        s.set_node_vm(
            "demo",
            "node-1",
            "i-1",
            Some("10.213.0.11".parse().expect("ip")),
            &BTreeMap::new(),
            true,
        )
        .expect("vm");
        let nodes = s.nodes("demo").expect("nodes");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].phase, Phase::VmRunning);
        assert_eq!(
            nodes[1].private_ip,
            Some("10.213.0.11".parse().expect("ip"))
        );
        assert_eq!(s.set_plan("demo", "{}").expect("plan"), 1);
        assert_eq!(s.set_plan("demo", "{}").expect("plan"), 2);
        s.set_state("demo", ClusterState::Available, None)
            .expect("state");
        let c = s.cluster("demo").expect("read").expect("exists");
        assert_eq!(c.state, ClusterState::Available);
        assert!(c.available_ms.is_some());
        assert_eq!(c.generation, 2);
    }

    #[test]
    fn a_deleted_cluster_name_can_be_reused() {
        let s = Store::in_memory().expect("store");
        s.insert_cluster(&cluster("demo"), &[node(0)])
            .expect("insert");
        s.set_state("demo", ClusterState::Deleted, None)
            .expect("state");
        s.insert_cluster(&cluster("demo"), &[node(0), node(1)])
            .expect("reinsert");
        assert_eq!(s.nodes("demo").expect("nodes").len(), 2);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = cluster("demo");
        let n = node(0);
        assert!(!format!("{c:?}").contains(&c.key));
        assert!(!format!("{n:?}").contains(&n.token));
    }

    #[test]
    fn state_survives_reopen_and_files_are_private() {
        let dir = std::env::temp_dir().join(format!("shoal-store-{}", crate::keys::random_hex(4)));
        {
            let s = Store::open(&dir).expect("open");
            s.insert_cluster(&cluster("demo"), &[node(0)])
                .expect("insert");
        }
        let s = Store::open(&dir).expect("reopen");
        assert_eq!(s.clusters().expect("list").len(), 1);
        let mode = std::fs::metadata(dir.join("shoal.db"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
