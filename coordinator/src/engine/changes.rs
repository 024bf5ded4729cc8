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
    ClusterRow, ClusterState, History, NewChange, NodeRow, ReportOutcome, SilentNode, Store,
    StoreFuture, StoreStats, StoredPlan, VmRecord,
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
        self.bump();
        Ok(out)
    }

    /// Counts a change made elsewhere (another coordinator's, told by the store).
    pub(crate) fn bump(&self) {
        // `send_modify` updates the value even with no receiver (`send` would not).
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
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

    fn record_report<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        status: &'a NodeStatus,
    ) -> StoreFuture<'a, ReportOutcome> {
        // A liveness report (the stored report again) changes nothing a view shows, so
        // counting it would re-render every open page once per agent per interval.
        Box::pin(async move {
            let out = self.inner.record_report(cluster, node, status).await?;
            if out.changed {
                self.bump();
            }
            Ok(out)
        })
    }

    fn silent_nodes(&self, before_ms: u64, limit: usize) -> StoreFuture<'_, Vec<SilentNode>> {
        self.inner.silent_nodes(before_ms, limit)
    }

    fn mark_lost<'a>(
        &'a self,
        cluster: &'a str,
        node: &'a str,
        before_ms: u64,
        message: &'a str,
    ) -> StoreFuture<'a, Option<ReportOutcome>> {
        Box::pin(async move {
            let out = self
                .inner
                .mark_lost(cluster, node, before_ms, message)
                .await?;
            if out.is_some() {
                self.bump();
            }
            Ok(out)
        })
    }

    fn due_repairs(&self, now_ms: u64) -> StoreFuture<'_, Vec<(String, String)>> {
        self.inner.due_repairs(now_ms)
    }

    fn begin_change<'a>(
        &'a self,
        cluster: &'a str,
        from: &'a [ClusterState],
        change: &'a NewChange,
    ) -> StoreFuture<'a, Option<u64>> {
        Box::pin(self.counted(self.inner.begin_change(cluster, from, change)))
    }

    fn change_step<'a>(&'a self, cluster: &'a str, id: u64, step: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.counted(self.inner.change_step(cluster, id, step)))
    }

    fn set_leaving<'a>(
        &'a self,
        cluster: &'a str,
        nodes: &'a [String],
        leaving: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.counted(self.inner.set_leaving(cluster, nodes, leaving)))
    }

    fn remove_nodes<'a>(&'a self, cluster: &'a str, nodes: &'a [String]) -> StoreFuture<'a, ()> {
        Box::pin(self.counted(self.inner.remove_nodes(cluster, nodes)))
    }

    fn finish_change<'a>(
        &'a self,
        cluster: &'a str,
        id: u64,
        outcome: Result<(), &'a str>,
    ) -> StoreFuture<'a, ClusterState> {
        Box::pin(self.counted(self.inner.finish_change(cluster, id, outcome)))
    }

    fn history<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, History> {
        self.inner.history(cluster)
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<crate::store::Notice>> {
        self.inner.notices()
    }

    fn lease<'a>(
        &'a self,
        holder: &'a str,
        ttl_ms: u64,
    ) -> StoreFuture<'a, Option<crate::store::Lease>> {
        self.inner.lease(holder, ttl_ms)
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
            .record_report("demo", "node-0", &conformance::status(Phase::Ready, 1))
            .await
            .is_err());
        assert!(!rx.has_changed().expect("open"));
        w.insert_cluster(&conformance::cluster("demo"), &[conformance::node(0)])
            .await
            .expect("insert");
        w.record_report("demo", "node-0", &conformance::status(Phase::Network, 1))
            .await
            .expect("report");
        // Two writes since the receiver last looked: one change to see.
        assert!(rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow_and_update(), 2);
        // The same report again (a liveness report) shows nothing new.
        let again = w
            .record_report("demo", "node-0", &conformance::status(Phase::Network, 1))
            .await
            .expect("report");
        assert!(!again.changed);
        assert!(!rx.has_changed().expect("open"));
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
