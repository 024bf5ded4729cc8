//! Several coordinators on one database (the PostgreSQL store).
//!
//! Any of them serves the operator API and the metadata API; one at a time drives
//! provisioning (creations, deletions, changes, the liveness sweep), the one holding
//! the store's lease. The leader renews the lease every [`LEASE_TTL`] / 3; another
//! coordinator takes it once it has expired, and then resumes every cluster in flight
//! through [`Engine::reconcile`], the path a restarted coordinator takes (idempotent
//! provider calls: no VM is made twice). A leader that cannot renew stops driving
//! before its lease can have expired.
//!
//! What one coordinator commits, the others hear of through the store's notices: each
//! re-reads the cluster, serves its plan and node tokens (so a long-poll held on one is
//! answered when another publishes), and the leader moves on what a report taken
//! elsewhere settled, or starts what a request taken elsewhere asked for.
//!
//! With a store only this process uses (SQLite) there is no lease: it always leads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{node_keys, Engine, CREATING};
use crate::store::{ClusterRow, ClusterState, Notice};

/// How long a lease lasts unless renewed. A dead leader's work is resumed within about
/// this plus one renewal period ([`LEASE_TTL`] / 3) of its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(9);

impl Engine {
    /// Whether this coordinator drives provisioning now.
    pub fn leads(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// This coordinator's id in the lease (`host-pid-random`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Takes the lease if the store has one (waiting for nobody: a follower serves the
    /// APIs at once), and keeps renewing it, or trying to take it, in the background.
    /// Returns whether this coordinator leads now.
    pub async fn start_leading(self: &Arc<Self>) -> bool {
        let ttl = LEASE_TTL.as_millis() as u64;
        match self.store.lease(&self.instance, ttl).await {
            Ok(None) => {
                // No lease in this store: only this process uses it.
                self.leading.store(true, Ordering::Relaxed);
                return true;
            }
            Ok(Some(l)) => {
                let mine = l.holder == self.instance;
                self.leading.store(mine, Ordering::Relaxed);
                if mine {
                    tracing::info!(instance = %self.instance, "leading: this coordinator drives provisioning");
                } else {
                    tracing::info!(instance = %self.instance, leader = %l.holder, "following: another coordinator drives provisioning");
                }
            }
            Err(e) => {
                self.leading.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot read the lease; following until it can be taken");
            }
        }
        let engine = self.clone();
        tokio::spawn(async move { engine.keep_lease().await });
        self.leads()
    }

    async fn keep_lease(self: Arc<Self>) {
        let ttl = LEASE_TTL.as_millis() as u64;
        let every = LEASE_TTL / 3;
        // When this coordinator's lease surely ends, by its own clock: it stops driving
        // before then if it cannot renew.
        let mut good_until = Instant::now() + (LEASE_TTL - every);
        loop {
            tokio::time::sleep(every).await;
            let asked = Instant::now();
            match self.store.lease(&self.instance, ttl).await {
                Ok(Some(l)) if l.holder == self.instance => {
                    good_until = asked + (LEASE_TTL - every);
                    if !self.leading.swap(true, Ordering::Relaxed) {
                        tracing::info!(instance = %self.instance, "took the lease: resuming every cluster in flight");
                        if let Err(e) = self.reconcile().await {
                            tracing::error!(error = %e, "cannot resume the clusters in flight");
                        }
                    }
                }
                Ok(Some(l)) => {
                    if self.leading.swap(false, Ordering::Relaxed) {
                        tracing::warn!(instance = %self.instance, leader = %l.holder, "lost the lease: another coordinator drives provisioning now");
                        self.stop_driving();
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease");
                    if Instant::now() >= good_until && self.leading.swap(false, Ordering::Relaxed) {
                        tracing::warn!("the lease may have expired: stopped driving provisioning");
                        self.stop_driving();
                    }
                }
            }
        }
    }

    /// Aborts every task driving a cluster (their next leader resumes them).
    fn stop_driving(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, t) in tasks.drain() {
                t.abort();
            }
        }
    }

    /// Follows the store's notices of other coordinators' changes, if it has any.
    pub fn spawn_notices(self: &Arc<Self>) {
        let Some(mut rx) = self.store.notices() else {
            return;
        };
        let engine = self.clone();
        tokio::spawn(async move {
            // What was committed between this store's opening and the subscription.
            engine.refresh_all().await;
            loop {
                // Every notice waiting, coalesced: a burst of reports on one cluster (its
                // agents booting together) costs one re-read of it, not one per report.
                let mut names = std::collections::BTreeSet::new();
                let mut all = false;
                let mut next = rx.recv().await;
                loop {
                    match next {
                        Ok(Notice::Cluster(name)) => {
                            names.insert(name);
                        }
                        Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => all = true,
                        Err(RecvError::Closed) => return,
                    }
                    match rx.try_recv() {
                        Ok(n) => next = Ok(n),
                        Err(TryRecvError::Lagged(n)) => next = Err(RecvError::Lagged(n)),
                        Err(TryRecvError::Closed) => next = Err(RecvError::Closed),
                        Err(TryRecvError::Empty) => break,
                    }
                }
                if all {
                    engine.refresh_all().await;
                    continue;
                }
                for name in names {
                    engine.refresh(&name).await;
                }
            }
        });
    }

    async fn refresh_all(self: &Arc<Self>) {
        match self.store.clusters().await {
            Ok(all) => {
                for c in all {
                    self.refresh_row(c).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot re-read the clusters"),
        }
    }

    /// Takes in what another coordinator committed of cluster `name`.
    async fn refresh(self: &Arc<Self>, name: &str) {
        match self.store.cluster(name).await {
            Ok(Some(c)) => self.refresh_row(c).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(cluster = %name, error = %e, "cannot re-read a cluster"),
        }
    }

    async fn refresh_row(self: &Arc<Self>, c: ClusterRow) {
        self.watched.bump();
        if c.state == ClusterState::Deleted {
            self.hub.remove(&c.key);
            return;
        }
        let nodes = match self.store.nodes(&c.name).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(cluster = %c.name, error = %e, "cannot re-read a cluster's nodes");
                return;
            }
        };
        self.hub.register(&c.key, &c.name, node_keys(&nodes));
        if let Some(plan) = &c.plan {
            let served = self
                .hub
                .entry(&c.key)
                .and_then(|e| e.plan.borrow().as_ref().map(|p| p.generation));
            if served.is_none_or(|g| g < plan.generation()) {
                self.hub
                    .publish(&c.key, plan.generation(), plan.json.clone());
            }
        }
        if !self.leads() {
            return;
        }
        match c.state {
            // A report taken elsewhere made every node ready.
            ClusterState::Creating if c.plan.is_some() => {
                if let Err(e) = self.settle(&c).await {
                    tracing::warn!(cluster = %c.name, error = %e, "cannot settle a cluster");
                }
            }
            ClusterState::Updating => {
                let signals = self.signals(&c.name);
                if c.generation > 0 && c.ready_nodes >= c.node_count {
                    signals.ready.send_replace(c.generation);
                }
                signals.nudge.notify_waiters();
            }
            _ => {}
        }
        // A request taken by another coordinator: nobody here drives it yet.
        let in_flight = matches!(
            c.state,
            ClusterState::Requested | ClusterState::Deleting | ClusterState::Updating
        ) || (CREATING.contains(&c.state) && c.plan.is_none());
        if in_flight {
            self.resume(&c, false).await;
        }
    }

    /// Whether a task of this coordinator drives `name` now.
    pub(super) fn drives(&self, name: &str) -> bool {
        self.tasks
            .lock()
            .ok()
            .and_then(|t| t.get(name).map(|h| !h.is_finished()))
            .unwrap_or(false)
    }
}
