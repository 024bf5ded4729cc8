//! The plans being served, by cluster key, and the node tokens that may write each
//! cluster's reports: everything the metadata API answers from, in memory, so neither
//! an unknown key nor a report's authorisation ever touches the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

/// A served plan: its generation and its JSON bytes, serialised once and shared by
/// every response.
#[derive(Debug, Clone)]
pub struct PlanDoc {
    /// Generation.
    pub generation: u64,
    /// The JSON document.
    pub bytes: Bytes,
    /// The same document gzipped, compressed once at publication for every agent that
    /// accepts it (`None` for a document too small to gain from it, or if compression
    /// failed). A 1,000-node plan shrinks about tenfold: a generation's fan-out to every
    /// node of a large cluster is what costs (docs/benchmarks.md, section 13).
    pub gzip: Option<Bytes>,
    /// When this coordinator started serving it (Unix milliseconds): an agent can tell
    /// how long a plan took to reach it.
    pub published_ms: u64,
}

/// Documents below this size are served as they are: gzip's header and the work would
/// outweigh the bytes saved.
const GZIP_FROM_BYTES: usize = 1024;

/// `bytes` gzipped, if it is worth it.
fn gzip(bytes: &[u8]) -> Option<Bytes> {
    use std::io::Write as _;
    if bytes.len() < GZIP_FROM_BYTES {
        return None;
    }
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::default(),
    );
    match enc.write_all(bytes).and_then(|()| enc.finish()) {
        Ok(out) if out.len() < bytes.len() => Some(Bytes::from(out)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot gzip a plan; it is served uncompressed");
            None
        }
    }
}

/// A node allowed to report, with its token. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey {
    /// Node id.
    pub node: String,
    /// The node's status-write token.
    pub token: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("node", &self.node)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// One served cluster.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) cluster: String,
    pub(crate) plan: watch::Sender<Option<PlanDoc>>,
    tokens: RwLock<HashMap<String, String>>,
}

impl Entry {
    /// The token of `node`, if it may report.
    pub(crate) fn token(&self, node: &str) -> Option<String> {
        self.tokens.read().ok()?.get(node).cloned()
    }
}

/// The plans being served, by cluster key.
#[derive(Debug, Default)]
pub struct PlanHub {
    by_key: RwLock<HashMap<String, Arc<Entry>>>,
}

impl PlanHub {
    /// Starts serving `cluster` under `key` (204 until a plan is published), with the
    /// nodes that may report; a key already served keeps its plan and gets these nodes.
    pub fn register(&self, key: &str, cluster: &str, nodes: Vec<NodeKey>) {
        let tokens: HashMap<String, String> =
            nodes.into_iter().map(|n| (n.node, n.token)).collect();
        if let Ok(mut map) = self.by_key.write() {
            match map.get(key) {
                Some(e) => {
                    if let Ok(mut t) = e.tokens.write() {
                        *t = tokens;
                    }
                }
                None => {
                    let (tx, _) = watch::channel(None);
                    map.insert(
                        key.to_string(),
                        Arc::new(Entry {
                            cluster: cluster.to_string(),
                            plan: tx,
                            tokens: RwLock::new(tokens),
                        }),
                    );
                }
            }
        }
    }

    /// Publishes a plan: every held long-poll with a smaller `after` answers now.
    pub fn publish(&self, key: &str, generation: u64, bytes: Bytes) {
        if let Some(e) = self.entry(key) {
            let published_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let gzip = gzip(&bytes);
            e.plan.send_replace(Some(PlanDoc {
                generation,
                bytes,
                gzip,
                published_ms,
            }));
        }
    }

    /// Stops serving `key` (404 from now on).
    pub fn remove(&self, key: &str) {
        if let Ok(mut map) = self.by_key.write() {
            map.remove(key);
        }
    }

    pub(crate) fn entry(&self, key: &str) -> Option<Arc<Entry>> {
        self.by_key.read().ok()?.get(key).cloned()
    }

    /// Long-polls in flight (receivers beyond the sender's own).
    pub fn waiting(&self) -> usize {
        self.by_key
            .read()
            .map(|m| m.values().map(|e| e.plan.receiver_count()).sum())
            .unwrap_or(0)
    }
}
