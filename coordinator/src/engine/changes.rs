//! A change counter over the store: every write that returns `Ok` bumps it, and
//! whoever shows cluster state live (the console's event streams) waits on it instead
//! of polling the store. Wrapping the store, rather than bumping at each call site in
//! the engine, means no write can be forgotten, including those added later.
//!
//! The counter is a `tokio::sync::watch`: a write costs one atomic update and a wake-up
//! of the waiters there are (none when no console is open), and a waiter that was busy
//! sees one change however many writes it missed, so a burst of agent reports costs a
//! console tab one render, not one per report.

use std::sync::Arc;

use shoal_protocol::{NodeStatus, Plan};
use tokio::sync::watch;

use crate::store::{
    ClusterRow, ClusterState, NodeRow, Store, StoreFuture, StoreStats, StoredPlan, VmRecord,
};

/// A [`Store`] that counts its successful writes.
#[derive(Debug)]
pub struct Watched {
    inner: Arc<dyn Store>,
    tx: watch::Sender<u64>,
}

impl Watched {
    /// Wraps `inner`, counting from 0.
    pub fn new(inner: Arc<dyn Store>) -> Watched {
        Watched {
            inner,
            tx: watch::Sender::new(0),
        }
    }

    /// A receiver that sees every change from now on (`changed().await`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Awaits the write, and counts it if it succeeded.
    async fn counted<T>(&self, write: StoreFuture<'_, T>) -> Result<T, crate::store::StoreError> {
        let out = write.await?;
        // `send_modify` updates the value even with no receiver (`send` would not).
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
        Ok(out)
    }
}

impl Store for Watched {
    fn insert_cluster<'a>(
        &'a self,
        c: &'a ClusterRow,
        nodes: &'a [NodeRow],
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.counted(self.inner.insert_cluster(c, nodes)))
    }

    fn cluster<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<ClusterRow>> {
        self.inner.cluster(name)
    }

    fn clusters(&self) -> StoreFuture<'_, Vec<ClusterRow>> {
        self.inner.clusters()
    }

    fn nodes<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Vec<NodeRow>> {
        self.inner.nodes(cluster)
    }

    fn transition<'a>(
        &'a self,
        name: &'a str,
        from: &'a [ClusterState],
        to: ClusterState,
        reason: Option<&'a str>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.counted(self.inner.transition(name, from, to, reason)))
    }

    fn set_node_vm<'a>(&'a self, cluster: &'a str, vm: &'a VmRecord) -> StoreFuture<'a, ()> {
        Box::pin(self.counted(self.inner.set_node_vm(cluster, vm)))
    }

    fn publish_plan<'a>(&'a self, cluster: &'a str, plan: Plan) -> StoreFuture<'a, StoredPlan> {
        Box::pin(self.counted(self.inner.publish_plan(cluster, plan)))
    }

    fn set_node_status<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.counted(self.inner.set_node_status(cluster, node, status)))
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use shoal_protocol::Phase;

    use super::*;
    use crate::store::{conformance, SqliteStore};

    #[tokio::test]
    async fn writes_that_succeed_are_counted_and_reads_are_not() {
        let w = Watched::new(Arc::new(SqliteStore::in_memory().expect("store")));
        let mut rx = w.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        // A write that fails (no such cluster) is no change.
        assert!(w
            .set_node_status("demo", "node-0", &conformance::status(Phase::Ready, 1))
            .await
            .is_err());
        assert!(!rx.has_changed().expect("open"));
        w.insert_cluster(&conformance::cluster("demo"), &[conformance::node(0)])
            .await
            .expect("insert");
        w.set_node_status("demo", "node-0", &conformance::status(Phase::Network, 1))
            .await
            .expect("report");
        // Two writes since the receiver last looked: one change to see.
        assert!(rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow_and_update(), 2);
        // Reads change nothing.
        assert_eq!(w.clusters().await.expect("list").len(), 1);
        assert_eq!(w.nodes("demo").await.expect("nodes").len(), 1);
        assert!(!rx.has_changed().expect("open"));
        assert!(w
            .transition(
                "demo",
                &[ClusterState::Requested],
                ClusterState::Creating,
                None
            )
            .await
            .expect("transition"));
        assert_eq!(*rx.borrow_and_update(), 3);
    }
}
