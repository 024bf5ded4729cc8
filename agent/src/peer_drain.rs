//! Drain hooks this node runs on behalf of leaving nodes ([`NodePlan::peer_drains`]):
//! e.g. the NameNode's node decommissioning a leaving DataNode. Each runs in a task of
//! its own, so that a hook that takes minutes neither holds up the node's convergence
//! nor its liveness reports; its outcome goes back to the coordinator in every later
//! status ([`NodeStatus::peer_drains`]).
//!
//! [`NodePlan::peer_drains`]: shoal_protocol::NodePlan::peer_drains
//! [`NodeStatus::peer_drains`]: shoal_protocol::NodeStatus::peer_drains

use std::collections::HashSet;
use std::time::Duration;

use bollard::Docker;
use shoal_protocol::{PeerDrainReport, Plan, MAX_DRAIN_OUTPUT};
use tokio::sync::mpsc;

use crate::containers;

/// The hooks run for other nodes: those running, and the latest outcome per node.
#[derive(Debug)]
pub struct PeerDrains {
    running: HashSet<String>,
    done: Vec<PeerDrainReport>,
    tx: mpsc::Sender<PeerDrainReport>,
}

impl PeerDrains {
    /// A set with no hook run yet; outcomes arrive on the returned receiver, to be
    /// handed to [`PeerDrains::finished`].
    pub fn new() -> (PeerDrains, mpsc::Receiver<PeerDrainReport>) {
        let (tx, rx) = mpsc::channel(16);
        (
            PeerDrains {
                running: HashSet::new(),
                done: Vec::new(),
                tx,
            },
            rx,
        )
    }

    /// The outcomes to report.
    pub fn reports(&self) -> Vec<PeerDrainReport> {
        self.done.clone()
    }

    /// Forgets the outcomes of nodes `plan` no longer has node `node_id` drain (they
    /// are gone, or stay); returns whether there were any.
    pub fn forget(&mut self, plan: &Plan, node_id: &str) -> bool {
        let wanted = plan
            .node(node_id)
            .map(|n| n.peer_drains.as_slice())
            .unwrap_or_default();
        let before = self.done.len();
        self.done
            .retain(|r| wanted.iter().any(|d| d.node == r.node));
        self.done.len() != before
    }

    /// Starts every hook `plan` gives node `node_id` that has not run on this
    /// generation and is not running.
    pub fn start(&mut self, docker: &Docker, plan: &Plan, node_id: &str) {
        let Some(me) = plan.node(node_id) else {
            return;
        };
        for d in &me.peer_drains {
            let ran = self
                .done
                .iter()
                .any(|r| r.node == d.node && r.generation >= plan.generation);
            if ran || self.running.contains(&d.node) {
                continue;
            }
            let container = me
                .containers
                .iter()
                .find(|c| c.name == d.hook.container)
                .map(|c| c.docker_name().to_string())
                .unwrap_or_else(|| d.hook.container.clone());
            tracing::info!(node = %d.node, %container, command = ?d.hook.exec, timeout_secs = d.hook.timeout_secs, "draining a leaving node");
            self.running.insert(d.node.clone());
            let (docker, tx, hook) = (docker.clone(), self.tx.clone(), d.hook.clone());
            let (node, generation) = (d.node.clone(), plan.generation);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let timeout = Duration::from_secs(hook.timeout_secs);
                let command = hook.exec.join(" ");
                let (ok, message) =
                    match containers::exec(&docker, &container, &hook.exec, timeout).await {
                        Ok(out) => match out.exit_code {
                            Some(0) => (true, out.output),
                            Some(code) => (
                                false,
                                format!(
                                    "`{command}` in {container} exited with code {code}: {}",
                                    out.output
                                ),
                            ),
                            None => (
                                false,
                                format!(
                                    "`{command}` in {container} did not finish within {}s: {}",
                                    hook.timeout_secs, out.output
                                ),
                            ),
                        },
                        Err(e) => (false, e.to_string()),
                    };
                let ms = started.elapsed().as_millis() as u64;
                if ok {
                    tracing::info!(%node, ms, output = %message, "leaving node drained");
                } else {
                    tracing::warn!(%node, ms, %message, "draining a leaving node failed");
                }
                let _ = tx
                    .send(PeerDrainReport {
                        node,
                        generation,
                        ok,
                        message: tail(message, MAX_DRAIN_OUTPUT),
                    })
                    .await;
            });
        }
    }

    /// Records a hook's outcome (it replaces the node's earlier one).
    pub fn finished(&mut self, r: PeerDrainReport) {
        self.running.remove(&r.node);
        self.done.retain(|d| d.node != r.node);
        self.done.push(r);
    }
}

/// `message` cut to `limit` bytes (what a report may carry): its end, where a command
/// says how it ended.
pub(crate) fn tail(message: String, limit: usize) -> String {
    if message.len() <= limit {
        return message;
    }
    let mut start = message.len() - limit;
    while !message.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &message[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_keep_their_end() {
        let m = format!("{}end", "é".repeat(MAX_DRAIN_OUTPUT));
        let b = tail(m, MAX_DRAIN_OUTPUT);
        assert!(b.ends_with("end") && b.starts_with('…'));
        assert!(b.len() <= MAX_DRAIN_OUTPUT + '…'.len_utf8());
        assert_eq!(tail("short".into(), MAX_DRAIN_OUTPUT), "short");
    }
}
