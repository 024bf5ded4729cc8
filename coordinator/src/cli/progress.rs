//! What `--wait` shows while a cluster boots or goes away.
//!
//! Where a terminal is attached: a block redrawn in place, a line per node with a bar
//! of its phases, the phase and the time since the node was requested, under a header
//! with the cluster's state and `[ready/total]`. Elsewhere (logs, CI, pipes): one plain
//! line per change, with the time since the wait began, nothing redrawn.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use shoal_protocol::Phase;

use crate::store::ClusterState;
use crate::view::{ClusterView, NodeView};

/// The steps a node's boot goes through, in order: its bar fills one cell group per
/// step.
const STEPS: [Phase; 9] = [
    Phase::Pending,
    Phase::VmRunning,
    Phase::AgentStarted,
    Phase::PlanReceived,
    Phase::Network,
    Phase::Images,
    Phase::Containers,
    Phase::Probing,
    Phase::Ready,
];

/// Width of a node's bar, in cells: three per step after the first.
pub const BAR_CELLS: usize = 3 * (STEPS.len() - 1);

/// Progress display state.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    seen: HashMap<String, Phase>,
    last_state: Option<ClusterState>,
    drawn: usize,
}

impl Progress {
    /// A display for a terminal (`tty`) or for plain lines.
    pub fn new(tty: bool) -> Progress {
        Progress {
            tty,
            seen: HashMap::new(),
            last_state: None,
            drawn: 0,
        }
    }

    /// What to write to stderr for this poll of the cluster, `elapsed` into the wait.
    pub fn update(&mut self, c: &ClusterView, elapsed: Duration) -> String {
        if self.tty {
            let lines = block(c, elapsed);
            let mut out = String::new();
            if self.drawn > 0 {
                // Back to the top of the previous block, then overwrite it line by line.
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for l in &lines {
                let _ = writeln!(out, "\r\x1b[2K{l}");
            }
            self.drawn = lines.len();
            return out;
        }
        let mut out = String::new();
        let t = elapsed.as_secs_f64();
        if self.last_state != Some(c.state) {
            let _ = writeln!(out, "{t:>7.1}s  cluster {:<8} {}", c.name, c.state);
            self.last_state = Some(c.state);
        }
        for n in &c.nodes {
            if self.seen.get(&n.id) != Some(&n.phase) {
                self.seen.insert(n.id.clone(), n.phase);
                let ip = n.private_ip.map(|i| i.to_string()).unwrap_or_default();
                let _ = writeln!(out, "{t:>7.1}s  {:<16} {:<15} {}", n.id, ip, n.phase);
            }
        }
        out
    }
}

/// The redrawn block: a header, then a line per node.
pub fn block(c: &ClusterView, elapsed: Duration) -> Vec<String> {
    let ready = c.nodes.iter().filter(|n| n.phase == Phase::Ready).count();
    let mut lines = vec![format!(
        "cluster {}  {}  [{ready}/{}] ready  {:.1}s",
        c.name,
        c.state,
        c.nodes.len(),
        elapsed.as_secs_f64()
    )];
    let id_w = c.nodes.iter().map(|n| n.id.len()).max().unwrap_or(6);
    for n in &c.nodes {
        let ip = n.private_ip.map(|i| i.to_string()).unwrap_or_default();
        lines.push(format!(
            "  {:<id_w$}  {:<15} {} {:<13} {:>6.1}s",
            n.id,
            ip,
            bar(n),
            n.phase.as_str(),
            node_elapsed_ms(n) as f64 / 1000.0
        ));
    }
    lines
}

/// `[#########.....]`: filled up to the node's phase; `!` where it failed.
pub fn bar(n: &NodeView) -> String {
    let last = STEPS.len() - 1;
    let broken = matches!(n.phase, Phase::Failed | Phase::Unhealthy | Phase::Lost);
    let step = match n.phase {
        _ if broken => n
            .timings
            .iter()
            .rev()
            .find_map(|t| STEPS.iter().position(|p| *p == t.phase))
            .unwrap_or(0),
        // A leaving node had converged before its drain.
        Phase::Draining | Phase::Drained => last,
        p => STEPS.iter().position(|s| *s == p).unwrap_or(0),
    };
    let filled = step * BAR_CELLS / last;
    let mut s = String::with_capacity(BAR_CELLS + 2);
    s.push('[');
    for i in 0..BAR_CELLS {
        s.push(if i < filled {
            '#'
        } else if i == filled && broken {
            '!'
        } else {
            '.'
        });
    }
    s.push(']');
    s
}

/// Time since the node was requested; for a node that is ready, until it was.
fn node_elapsed_ms(n: &NodeView) -> u64 {
    let ready_at = n
        .timings
        .iter()
        .find(|t| t.phase == Phase::Ready)
        .map(|t| t.started_ms);
    match (n.phase, ready_at, n.requested_ms) {
        (Phase::Ready, Some(r), Some(q)) => r.saturating_sub(q),
        _ => n.elapsed_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(id: &str, phase: Phase) -> NodeView {
        NodeView {
            id: id.into(),
            index: 0,
            instance_id: None,
            private_ip: Some("10.0.0.10".parse().expect("ip")),
            group: String::new(),
            phase,
            generation: 1,
            converged_ms: None,
            last_seen_ms: None,
            leaving: false,
            incarnation: 0,
            error: None,
            elapsed_ms: 1500,
            containers: vec![],
            timings: vec![],
            requested_ms: Some(1),
            running_ms: None,
            boot: None,
            recipes: vec![],
            disks: vec![],
            details: BTreeMap::new(),
        }
    }

    fn cluster(nodes: Vec<NodeView>) -> ClusterView {
        ClusterView {
            name: "demo".into(),
            provider: "local".into(),
            state: ClusterState::Creating,
            reason: None,
            generation: 1,
            metadata_url: String::new(),
            node_count: nodes.len() as u32,
            blueprint: "demo".into(),
            overlay: String::new(),
            images: vec![],
            created_ms: 1,
            time_to_available_ms: None,
            resources: None,
            auto_repair_secs: None,
            nodes,
            changes: vec![],
            events: vec![],
        }
    }

    #[test]
    fn bars_fill_with_the_phase() {
        assert_eq!(
            bar(&node("n", Phase::Pending)),
            format!("[{}]", ".".repeat(BAR_CELLS))
        );
        assert_eq!(
            bar(&node("n", Phase::Ready)),
            format!("[{}]", "#".repeat(BAR_CELLS))
        );
        let mid = bar(&node("n", Phase::PlanReceived));
        assert_eq!(mid.matches('#').count(), 9, "{mid}");
        let mut failed = node("n", Phase::Failed);
        failed.timings.push(shoal_protocol::PhaseTiming {
            phase: Phase::Network,
            started_ms: 5,
            duration_ms: None,
        });
        assert!(bar(&failed).contains("############!"), "{}", bar(&failed));
    }

    #[test]
    fn plain_lines_only_on_change() {
        let mut p = Progress::new(false);
        let c = cluster(vec![
            node("node-0", Phase::Pending),
            node("node-1", Phase::Pending),
        ]);
        let first = p.update(&c, Duration::from_millis(100));
        assert_eq!(first.lines().count(), 3, "{first}");
        assert!(first.contains("cluster demo     CREATING"));
        assert_eq!(p.update(&c, Duration::from_millis(200)), "");
        let c2 = cluster(vec![
            node("node-0", Phase::Network),
            node("node-1", Phase::Pending),
        ]);
        let next = p.update(&c2, Duration::from_millis(300));
        assert_eq!(next.lines().count(), 1);
        assert!(next.contains("node-0") && next.contains("network"));
        assert!(!next.contains('\x1b'));
    }

    #[test]
    fn the_terminal_block_is_redrawn_in_place() {
        let mut p = Progress::new(true);
        let c = cluster(vec![
            node("node-0", Phase::Images),
            node("node-1", Phase::Ready),
        ]);
        let first = p.update(&c, Duration::from_millis(1200));
        assert!(!first.contains("\x1b[3A"));
        assert!(first.contains("[1/2] ready"), "{first}");
        assert!(first.contains("images"));
        let second = p.update(&c, Duration::from_millis(1300));
        assert!(second.starts_with("\x1b[3A"), "{second:?}");
        assert_eq!(second.matches("\x1b[2K").count(), 3);
    }
}
