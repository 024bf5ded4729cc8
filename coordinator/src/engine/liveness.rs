//! Liveness: a resident agent reports at least every `report_secs` seconds (the plan's
//! liveness contract); a periodic sweep asks the store for the nodes silent for longer
//! than `lost_after` (an indexed query, not a timer per node) and marks each lost
//! (compare-and-set: a report that arrives meanwhile wins), which makes an AVAILABLE
//! cluster DEGRADED. The same sweep starts the repairs that auto-repair asks for: a node
//! lost for longer than its cluster's `auto_repair_secs` gets a new VM.
//!
//! A coordinator that was down heard from nobody: for `lost_after` after it starts, no
//! node is marked lost (agents report again within their interval).

use std::sync::Arc;
use std::time::Duration;

use super::{Engine, RepairRequest};
use crate::store::now_ms;

/// Most silent nodes handled per sweep (the rest wait for the next one).
const SWEEP_BATCH: usize = 1000;

impl Engine {
    /// Starts the liveness sweep, if agents are asked to report (`report_secs`).
    pub fn spawn_liveness(self: &Arc<Self>) {
        if self.settings.report_secs.is_none() {
            return;
        }
        let engine = self.clone();
        let every = (self.settings.lost_after / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = engine.sweep().await {
                    tracing::warn!(error = %e, "liveness sweep failed");
                }
            }
        });
    }

    /// One sweep: marks silent nodes lost, starts due auto-repairs.
    pub async fn sweep(self: &Arc<Self>) -> Result<(), super::EngineError> {
        if !self.leads() {
            return Ok(());
        }
        let lost_after = self.settings.lost_after;
        if self.started.elapsed() >= lost_after {
            let before = now_ms().saturating_sub(lost_after.as_millis() as u64);
            for s in self.store.silent_nodes(before, SWEEP_BATCH).await? {
                let silence = now_ms().saturating_sub(s.last_seen_ms) / 1000;
                let message = format!(
                    "no report for {silence}s (the liveness timeout is {}s): its agent, its VM or the network to it is down",
                    lost_after.as_secs()
                );
                if let Some(outcome) = self
                    .store
                    .mark_lost(&s.cluster, &s.node, before, &message)
                    .await?
                {
                    self.metrics.record_lost();
                    tracing::warn!(cluster = %s.cluster, node = %s.node, silence, state = %outcome.state, "node lost");
                    self.signals(&s.cluster).nudge.notify_waiters();
                }
            }
        }
        let mut due: Vec<(String, Vec<String>)> = Vec::new();
        for (cluster, node) in self.store.due_repairs(now_ms()).await? {
            match due.last_mut() {
                Some((c, nodes)) if *c == cluster => nodes.push(node),
                _ => due.push((cluster, vec![node])),
            }
        }
        for (cluster, nodes) in due {
            tracing::info!(%cluster, ?nodes, "auto-repair: nodes lost for longer than the cluster allows");
            if let Err(e) = self.repair(&cluster, RepairRequest { nodes }).await {
                tracing::warn!(%cluster, error = %e, "auto-repair could not start");
            }
        }
        Ok(())
    }
}
