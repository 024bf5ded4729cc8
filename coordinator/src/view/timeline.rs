//! `shoal cluster timeline`: how a cluster booted, node by node, as a waterfall, in the
//! spirit of `systemd-analyze plot` and `cloud-init analyze`.
//!
//! The stages of a node come from two clocks: the coordinator's (when the VM was
//! requested, when the provider reported it running) and the agent's (the phase
//! timings it reports: agent started and waiting for the plan, plan received, network,
//! images, containers, probing, ready). Everything is drawn relative to the moment the cluster
//! was requested. The local provider's VMs share the coordinator's clock; on a cloud, a
//! VM whose clock is off shows its agent's stages shifted by that much (times before
//! the request are drawn at the request).
//!
//! On a real VM (the qemu provider, a cloud VM with the agent baked in), the agent also
//! reports the OS's own boot ([`shoal_protocol::BootReport`]): the kernel, the initrd,
//! systemd's start-up and a few units (network online, Docker, the agent's), and
//! cloud-init's stages. They are drawn on lanes under their node's row ([`OsBoot`]),
//! on the same axis: `systemd-analyze plot` and `cloud-init analyze` in one picture,
//! with the agent's phases. The local provider's VMs have no boot of their own, and
//! show none.
//!
//! Three renderings: [`Timeline::render_text`] for a terminal (bars scaled to its
//! width), [`Timeline::render_svg`] for a person to open (an axis in seconds, a row
//! per node, a colour per stage, a legend), and the [`Timeline`] itself as JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use shoal_protocol::Phase;

use crate::store::ClusterState;
use crate::view::{ClusterView, NodeView};

/// A stage of a node's boot: a span on the waterfall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The provider is making the VM (requested, not yet running).
    VmRequested,
    /// The VM runs; its OS boots until the agent starts.
    VmRunning,
    /// The agent runs and long-polls for the plan.
    AgentStarted,
    /// The agent holds the plan: validates it, reaches Docker.
    PlanReceived,
    /// The overlay network is being wired.
    Network,
    /// Images are being loaded or pulled.
    Images,
    /// Containers are being created and started.
    Containers,
    /// Containers run; their readiness probes are being tried.
    Probing,
}

/// Every stage, in boot order.
pub const STAGES: [Stage; 8] = [
    Stage::VmRequested,
    Stage::VmRunning,
    Stage::AgentStarted,
    Stage::PlanReceived,
    Stage::Network,
    Stage::Images,
    Stage::Containers,
    Stage::Probing,
];

/// The colour of the ready mark.
pub const READY_COLOUR: &str = "#59a14f";
/// The colour of the failed mark.
pub const FAILED_COLOUR: &str = "#e15759";

impl Stage {
    /// The name shown in legends and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::VmRequested => "vm-requested",
            Stage::VmRunning => "vm-running",
            Stage::AgentStarted => "agent-started",
            Stage::PlanReceived => "plan-received",
            Stage::Network => "network",
            Stage::Images => "images",
            Stage::Containers => "containers",
            Stage::Probing => "probing",
        }
    }

    /// What the stage is, for a legend.
    pub fn label(self) -> &'static str {
        match self {
            Stage::VmRequested => "VM requested",
            Stage::VmRunning => "VM running (OS boot)",
            Stage::AgentStarted => "agent started (polling)",
            Stage::PlanReceived => "plan received",
            Stage::Network => "network",
            Stage::Images => "images",
            Stage::Containers => "containers",
            Stage::Probing => "probing (readiness)",
        }
    }

    /// The SVG fill (Tableau 10: distinct, and kind to colour-blind readers).
    pub fn colour(self) -> &'static str {
        match self {
            Stage::VmRequested => "#bab0ac",
            Stage::VmRunning => "#9c755f",
            Stage::AgentStarted => "#b07aa1",
            Stage::PlanReceived => "#4e79a7",
            Stage::Network => "#76b7b2",
            Stage::Images => "#edc948",
            Stage::Containers => "#f28e2b",
            Stage::Probing => "#ff9da7",
        }
    }

    /// The character of the text waterfall without colour.
    fn glyph(self) -> char {
        match self {
            Stage::VmRequested => '.',
            Stage::VmRunning => ':',
            Stage::AgentStarted => '~',
            Stage::PlanReceived => '=',
            Stage::Network => 'N',
            Stage::Images => 'I',
            Stage::Containers => 'C',
            Stage::Probing => 'P',
        }
    }

    /// The ANSI 256-colour index nearest to [`Stage::colour`].
    fn ansi(self) -> u8 {
        match self {
            Stage::VmRequested => 249,
            Stage::VmRunning => 137,
            Stage::AgentStarted => 139,
            Stage::PlanReceived => 67,
            Stage::Network => 109,
            Stage::Images => 221,
            Stage::Containers => 208,
            Stage::Probing => 218,
        }
    }

    fn from_phase(p: Phase) -> Option<Stage> {
        match p {
            Phase::Pending => Some(Stage::VmRequested),
            Phase::VmRunning => Some(Stage::VmRunning),
            Phase::AgentStarted => Some(Stage::AgentStarted),
            Phase::PlanReceived => Some(Stage::PlanReceived),
            Phase::Network => Some(Stage::Network),
            Phase::Images => Some(Stage::Images),
            Phase::Containers => Some(Stage::Containers),
            Phase::Probing => Some(Stage::Probing),
            Phase::Ready
            | Phase::Failed
            | Phase::Draining
            | Phase::Drained
            | Phase::Unhealthy
            | Phase::Lost => None,
        }
    }
}

/// One span of a node's boot, in milliseconds since the cluster was requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The stage.
    pub stage: Stage,
    /// When it began.
    pub start_ms: u64,
    /// When it ended (now, for a stage still running).
    pub end_ms: u64,
    /// Whether the stage is still running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub running: bool,
}

impl Segment {
    /// Its length.
    pub fn duration_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}

/// One node's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTimeline {
    /// Node id.
    pub id: String,
    /// Private address, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// Current phase.
    pub phase: Phase,
    /// The spans, in order.
    pub segments: Vec<Segment>,
    /// When the node reported ready (first time in this boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<u64>,
    /// When the node reported failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_ms: Option<u64>,
    /// Phases the agent went through after it was first ready (plan changes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub later_phases: usize,
    /// The OS's own boot, when the agent reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsBoot>,
}

/// The lanes of the OS's boot under a node's row, in order.
pub const OS_LANES: [&str; 3] = ["boot", "units", "cloud-init"];

/// A span of the OS's own boot (the VM's clock), on a lane under its node's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsSegment {
    /// `boot` (kernel, initrd, systemd's start-up), `units` (systemd units), or
    /// `cloud-init`; a source this coordinator does not know gets a lane of its name.
    pub lane: String,
    /// What it is: `kernel`, `initrd`, `userspace`, `docker.service`, `init-local`, …
    pub name: String,
    /// When it began.
    pub start_ms: u64,
    /// When it ended (now, for one still running).
    pub end_ms: u64,
    /// Whether it is still running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub running: bool,
}

impl OsSegment {
    /// Its length.
    pub fn duration_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}

/// A node's OS boot, from its own clocks, relative to the cluster's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsBoot {
    /// The spans, in order of their start.
    pub segments: Vec<OsSegment>,
    /// cloud-init's status: `running`, `done` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<String>,
    /// cloud-init's errors, verbatim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cloud_init_errors: Vec<String>,
    /// The systemd unit the agent ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_unit: Option<String>,
    /// When Docker was ready (`docker.service` active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_ready_ms: Option<u64>,
    /// From Docker ready to the node's ready: what Shoal adds on top of the OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_to_ready_ms: Option<u64>,
}

/// The lane of a reported stage.
fn os_lane(source: &str, name: &str) -> String {
    match (source, name) {
        ("kernel", _) | ("systemd", "initrd" | "userspace") => "boot".into(),
        ("systemd", _) => "units".into(),
        (other, _) => other.into(),
    }
}

/// How an OS stage is drawn: colour, ANSI 256-colour index, glyph, legend label.
fn os_style(name: &str) -> (&'static str, u8, char, &'static str) {
    match name {
        "kernel" => ("#ff9d9a", 210, 'K', "kernel"),
        "initrd" => ("#f1ce63", 222, 'i', "initrd"),
        "userspace" => ("#8cd17d", 150, 's', "systemd start-up"),
        "systemd-networkd-wait-online.service" => ("#a0cbe8", 153, 'w', "network online"),
        "docker.service" => ("#499894", 30, 'D', "Docker starting"),
        "shoal-agent.service" => ("#79706e", 243, 'A', "agent unit started"),
        "init-local" => ("#d37295", 168, 'l', "cloud-init local"),
        "init" => ("#fabfd2", 218, 'n', "cloud-init network"),
        "modules-config" => ("#b6992d", 142, 'c', "cloud-init config"),
        "modules-final" => ("#e49444", 173, 'f', "cloud-init final"),
        _ => ("#c7c7c7", 250, '?', "other"),
    }
}

/// The OS stages with a legend entry, in boot order.
const OS_LEGEND: [&str; 10] = [
    "kernel",
    "initrd",
    "userspace",
    "systemd-networkd-wait-online.service",
    "docker.service",
    "shoal-agent.service",
    "init-local",
    "init",
    "modules-config",
    "modules-final",
];

fn os_boot(
    n: &NodeView,
    rel: &dyn Fn(u64) -> u64,
    now: u64,
    ready_ms: Option<u64>,
) -> Option<OsBoot> {
    let b = n.boot.as_ref()?;
    let mut segments: Vec<OsSegment> = b
        .stages
        .iter()
        .map(|st| {
            let start = rel(st.started_ms);
            let (end, running) = match st.duration_ms {
                Some(d) => (rel(st.started_ms.saturating_add(d)), false),
                None => (now.max(start), true),
            };
            OsSegment {
                lane: os_lane(&st.source, &st.name),
                name: st.name.clone(),
                start_ms: start,
                end_ms: end,
                running,
            }
        })
        .collect();
    segments.sort_by_key(|s| s.start_ms);
    let docker_ready_ms = segments
        .iter()
        .find(|s| s.name == "docker.service" && !s.running)
        .map(|s| s.end_ms);
    Some(OsBoot {
        docker_to_ready_ms: match (docker_ready_ms, ready_ms) {
            (Some(d), Some(r)) => Some(r.saturating_sub(d)),
            _ => None,
        },
        docker_ready_ms,
        cloud_init: b.cloud_init.as_ref().map(|c| c.status.clone()),
        cloud_init_errors: b
            .cloud_init
            .as_ref()
            .map(|c| c.errors.clone())
            .unwrap_or_default(),
        agent_unit: b.agent_unit.clone(),
        segments,
    })
}

impl OsBoot {
    /// The lanes that have spans, in order (known lanes first).
    pub fn lanes(&self) -> Vec<String> {
        let mut lanes: Vec<String> = OS_LANES
            .iter()
            .filter(|l| self.segments.iter().any(|s| s.lane == **l))
            .map(|l| l.to_string())
            .collect();
        for s in &self.segments {
            if !lanes.contains(&s.lane) {
                lanes.push(s.lane.clone());
            }
        }
        lanes
    }

    /// The length of the named stage, when it ended.
    pub fn stage_ms(&self, name: &str) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.name == name && !s.running)
            .map(OsSegment::duration_ms)
    }

    /// When the named stage ended, when it did.
    pub fn end_of(&self, name: &str) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.name == name && !s.running)
            .map(|s| s.end_ms)
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A cluster's boot timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// Cluster name.
    pub cluster: String,
    /// Cluster state.
    pub state: ClusterState,
    /// Provider.
    pub provider: String,
    /// When the cluster was requested (ms since the epoch): the origin of every time.
    pub created_ms: u64,
    /// From request to AVAILABLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_available_ms: Option<u64>,
    /// The right end of the picture: the last moment shown.
    pub total_ms: u64,
    /// Rows.
    pub nodes: Vec<NodeTimeline>,
    /// The changes after the creation (scales, repairs), each with its generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<ChangeLine>,
    /// The states the cluster entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<StateMark>,
}

/// A change of a running cluster on the timeline: when it was asked for (since the
/// cluster's request), and, from then, when its plan was published, when each node
/// converged to it and when it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeLine {
    /// Change number.
    pub id: u64,
    /// What it asked for.
    pub summary: String,
    /// The generation that carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// When it was asked for, since the cluster's request.
    pub asked_ms: u64,
    /// From the ask to the plan's publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_after_ms: Option<u64>,
    /// From the ask to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_after_ms: Option<u64>,
    /// `running`, `done` or `failed`.
    pub outcome: String,
    /// (node, from the plan's publication to its first `ready` on it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub converged: Vec<(String, u64)>,
}

/// A state the cluster entered, since its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMark {
    /// When.
    pub at_ms: u64,
    /// The state.
    pub state: ClusterState,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Timeline {
    /// Builds the timeline of a cluster as `show` returns it; `now_ms` closes stages
    /// still running.
    pub fn from_view(c: &ClusterView, now_ms: u64) -> Timeline {
        let origin = c.created_ms;
        let rel = |t: u64| t.saturating_sub(origin);
        let now = rel(now_ms);
        let nodes: Vec<NodeTimeline> = c
            .nodes
            .iter()
            .map(|n| node_timeline(n, origin, now))
            .collect();
        let mut total = c.time_to_available_ms.unwrap_or(0);
        for n in &nodes {
            for s in &n.segments {
                total = total.max(s.end_ms);
            }
            for s in n.os.iter().flat_map(|o| &o.segments) {
                total = total.max(s.end_ms);
            }
            total = total
                .max(n.ready_ms.unwrap_or(0))
                .max(n.failed_ms.unwrap_or(0));
        }
        let changes = c
            .changes
            .iter()
            .filter(|ch| ch.kind != crate::store::ChangeKind::Create)
            .map(|ch| ChangeLine {
                id: ch.id,
                summary: ch.summary.clone(),
                generation: ch.generation,
                asked_ms: rel(ch.asked_ms),
                published_after_ms: ch.published_ms.map(|p| p.saturating_sub(ch.asked_ms)),
                done_after_ms: ch.done_ms.map(|d| d.saturating_sub(ch.asked_ms)),
                outcome: ch.outcome.clone(),
                converged: ch
                    .converged
                    .iter()
                    .map(|v| {
                        let from = ch.published_ms.unwrap_or(ch.asked_ms);
                        (v.node.clone(), v.at_ms.saturating_sub(from))
                    })
                    .collect(),
            })
            .collect();
        let states = c
            .events
            .iter()
            .map(|e| StateMark {
                at_ms: rel(e.at_ms),
                state: e.state,
                reason: e.reason.clone(),
            })
            .collect();
        Timeline {
            cluster: c.name.clone(),
            state: c.state,
            provider: c.provider.clone(),
            created_ms: origin,
            time_to_available_ms: c.time_to_available_ms,
            total_ms: total.max(1),
            nodes,
            changes,
            states,
        }
    }

    /// The changes and states, as text lines (below the waterfall).
    fn history_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ch in &self.changes {
            let opt = |v: Option<u64>| v.map(secs).unwrap_or_else(|| "-".into());
            out.push(format!(
                "change #{} {} (generation {}): asked at {}, published after {}, {} after {}",
                ch.id,
                ch.summary,
                ch.generation.map_or("-".into(), |g| g.to_string()),
                secs(ch.asked_ms),
                opt(ch.published_after_ms),
                ch.outcome,
                opt(ch.done_after_ms),
            ));
            if !ch.converged.is_empty() {
                let nodes: Vec<String> = ch
                    .converged
                    .iter()
                    .map(|(n, ms)| format!("{n} {}", secs(*ms)))
                    .collect();
                out.push(format!(
                    "  nodes converged after the plan: {}",
                    nodes.join(", ")
                ));
            }
        }
        if self.states.len() > 1 {
            let marks: Vec<String> = self
                .states
                .iter()
                .map(|m| format!("{} {}", m.state, secs(m.at_ms)))
                .collect();
            out.push(format!("states: {}", marks.join(", ")));
            // Why the cluster was degraded (or failed): the node and its fault's reason,
            // the one thing the one-line list cannot carry.
            for m in &self.states {
                if let (ClusterState::Degraded | ClusterState::Failed, Some(reason)) =
                    (m.state, m.reason.as_deref())
                {
                    out.push(format!("  {} at {}: {reason}", m.state, secs(m.at_ms)));
                }
            }
        }
        out
    }

    /// The picture's title: the cluster, its nodes and provider, and time to
    /// AVAILABLE (or its state and how long it has been).
    pub fn title(&self) -> String {
        let n = self.nodes.len();
        let nodes = format!("{n} node{}", if n == 1 { "" } else { "s" });
        match self.time_to_available_ms {
            Some(ms) => format!(
                "{}: {nodes} on {}, AVAILABLE in {}",
                self.cluster,
                self.provider,
                secs(ms)
            ),
            None => format!(
                "{}: {nodes} on {}, {} after {}",
                self.cluster,
                self.provider,
                self.state,
                secs(self.total_ms)
            ),
        }
    }

    /// The waterfall for a terminal `width` columns wide; `colour` uses ANSI colours
    /// (a TTY), else a character per stage.
    pub fn render_text(&self, width: usize, colour: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title());
        let has_os = self.nodes.iter().any(|n| n.os.is_some());
        let label_w = self
            .nodes
            .iter()
            .map(|n| n.id.len())
            .max()
            .unwrap_or(4)
            .max(4)
            .max(if has_os { "OS (VM clock)".len() } else { 0 });
        // "<id> |<bar>| 12.3s ready"
        let bar_w = width.saturating_sub(label_w + 3 + 16).max(10);
        let scale = bar_w as f64 / self.total_ms as f64;
        let col = |ms: u64| ((ms as f64 * scale).round() as usize).min(bar_w);
        // Cells of one row: each span from its start column to its end, at least one
        // cell, never over the span before it.
        let cells_of = |spans: &mut dyn Iterator<Item = (u64, u64, char, u8)>| {
            let mut cells: Vec<Option<(char, u8)>> = vec![None; bar_w];
            let mut prev_end = 0;
            for (start, end, glyph, ansi) in spans {
                let c0 = col(start).max(prev_end).min(bar_w.saturating_sub(1));
                let c1 = col(end).max(c0 + 1).min(bar_w);
                for cell in cells.iter_mut().take(c1).skip(c0) {
                    *cell = Some((glyph, ansi));
                }
                prev_end = c1;
            }
            draw_cells(&cells, colour)
        };
        for n in &self.nodes {
            let bar = cells_of(
                &mut n
                    .segments
                    .iter()
                    .map(|s| (s.start_ms, s.end_ms, s.stage.glyph(), s.stage.ansi())),
            );
            let end = match (n.ready_ms, n.failed_ms) {
                (_, Some(f)) => format!("{:>7} failed", secs(f)),
                (Some(r), None) => format!("{:>7} ready", secs(r)),
                (None, None) => format!("{:>7} {}", "", n.phase),
            };
            let _ = writeln!(out, "{:<label_w$} |{bar}| {end}", n.id);
            for (lane, os) in
                n.os.iter()
                    .flat_map(|o| o.lanes().into_iter().map(move |l| (l, o)))
            {
                let bar = cells_of(&mut os.segments.iter().filter(|s| s.lane == lane).map(|s| {
                    let (_, ansi, glyph, _) = os_style(&s.name);
                    (s.start_ms, s.end_ms, glyph, ansi)
                }));
                let _ = writeln!(out, "{:<label_w$} |{bar}|", format!("  {lane}"));
            }
        }
        // The axis: 0 at the left, the total at the right.
        let total = secs(self.total_ms);
        let _ = writeln!(
            out,
            "{:<label_w$}  0s{:>w$}",
            "",
            total,
            w = bar_w.saturating_sub(1)
        );
        let mut items: Vec<(char, u8, &str)> = STAGES
            .iter()
            .map(|s| (s.glyph(), s.ansi(), s.as_str()))
            .collect();
        out.push_str(&legend(&items, width, colour));
        if has_os {
            items = OS_LEGEND
                .iter()
                .map(|name| {
                    let (_, ansi, glyph, label) = os_style(name);
                    (glyph, ansi, label)
                })
                .collect();
            out.push_str(&legend(&items, width, colour));
        }
        out.push('\n');
        // Durations per stage: the numbers behind the bars.
        let _ = write!(out, "{:<label_w$}", "NODE");
        for s in STAGES {
            let _ = write!(out, " {:>w$}", s.as_str(), w = s.as_str().len().max(7));
        }
        let _ = writeln!(out, " {:>7}", "READY");
        for n in &self.nodes {
            let _ = write!(out, "{:<label_w$}", n.id);
            for s in STAGES {
                let d: u64 = n
                    .segments
                    .iter()
                    .filter(|g| g.stage == s)
                    .map(Segment::duration_ms)
                    .sum();
                let present = n.segments.iter().any(|g| g.stage == s);
                let v = if present { secs(d) } else { "-".into() };
                let _ = write!(out, " {:>w$}", v, w = s.as_str().len().max(7));
            }
            let ready = n.ready_ms.map(secs).unwrap_or_else(|| "-".into());
            let _ = writeln!(out, " {ready:>7}");
        }
        if has_os {
            out.push_str(&self.render_os_table(label_w));
        }
        let history = self.history_lines();
        if !history.is_empty() {
            out.push('\n');
            for l in history {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }

    /// The OS's boot in numbers, from the VMs' own clocks: how long the kernel, the
    /// initrd and systemd's start-up took, when Docker was ready and cloud-init done,
    /// and what Shoal added on top (Docker ready → node ready).
    fn render_os_table(&self, label_w: usize) -> String {
        const COLS: [&str; 7] = [
            "kernel",
            "initrd",
            "systemd",
            "docker-ready",
            "cloud-init",
            "ci-done",
            "docker->ready",
        ];
        let mut out = String::new();
        let _ = write!(out, "\n{:<label_w$}", "OS (VM clock)");
        for c in COLS {
            let _ = write!(out, " {c:>w$}", w = c.len().max(7));
        }
        out.push('\n');
        let opt = |v: Option<u64>| v.map(secs).unwrap_or_else(|| "-".into());
        for n in &self.nodes {
            let Some(os) = &n.os else {
                continue;
            };
            let values = [
                opt(os.stage_ms("kernel")),
                opt(os.stage_ms("initrd")),
                opt(os.stage_ms("userspace")),
                opt(os.docker_ready_ms),
                os.cloud_init.clone().unwrap_or_else(|| "-".into()),
                opt(os.end_of("modules-final")),
                opt(os.docker_to_ready_ms),
            ];
            let _ = write!(out, "{:<label_w$}", n.id);
            for (c, v) in COLS.iter().zip(values) {
                let _ = write!(out, " {v:>w$}", w = c.len().max(7));
            }
            out.push('\n');
            for e in &os.cloud_init_errors {
                let _ = writeln!(out, "{:<label_w$} cloud-init error: {e}", "");
            }
        }
        out
    }

    /// The waterfall as a standalone SVG document.
    pub fn render_svg(&self) -> String {
        const W: u32 = 960;
        const LEFT: u32 = 150;
        const RIGHT: u32 = 80;
        const TOP: u32 = 70;
        const ROW: u32 = 30;
        const BAR: u32 = 18;
        // A lane of the OS's boot under its node's row.
        const LANE: u32 = 16;
        const LANE_BAR: u32 = 10;
        let plot_w = W - LEFT - RIGHT;
        // Each node's row, and under it its OS lanes: the y of each.
        let mut rows: Vec<(u32, Vec<String>)> = Vec::new();
        let mut y_next = TOP;
        for n in &self.nodes {
            let lanes = n.os.as_ref().map(OsBoot::lanes).unwrap_or_default();
            rows.push((y_next, lanes.clone()));
            y_next += ROW + lanes.len() as u32 * LANE + if lanes.is_empty() { 0 } else { 6 };
        }
        let has_os = self.nodes.iter().any(|n| n.os.is_some());
        let axis_y = y_next + 6;
        let legend_y = axis_y + 70;
        // Four swatches a row: the stages, the ready mark, and the OS's when shown.
        let legend_items = STAGES.len() + 1 + if has_os { OS_LEGEND.len() } else { 0 };
        let legend_rows = legend_items.div_ceil(4) as u32;
        let history = self.history_lines();
        let h = legend_y + legend_rows * 22 + 12 + history.len() as u32 * 18;
        let scale = plot_w as f64 / self.total_ms as f64;
        let x = |ms: u64| LEFT + ((ms as f64 * scale).round() as u32).min(plot_w);

        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">"#
        );
        let _ = writeln!(o, "<title>{}</title>", esc(&self.title()));
        let _ = writeln!(o, r##"<rect width="{W}" height="{h}" fill="#ffffff"/>"##);
        let _ = writeln!(
            o,
            r##"<text x="20" y="30" font-size="18" font-weight="bold" fill="#222">{}</text>"##,
            esc(&self.title())
        );
        let _ = writeln!(
            o,
            r##"<text x="20" y="50" fill="#666">Boot of each node, from the cluster's request (0 s): {}</text>"##,
            if has_os {
                "coordinator and agent timings; under a node, its OS's own (VM clock)"
            } else {
                "coordinator and agent timings"
            }
        );

        // Grid and axis.
        let step = tick_step(self.total_ms);
        let _ = writeln!(o, r#"<g shape-rendering="crispEdges">"#);
        let mut t = 0;
        while t <= self.total_ms {
            let tx = x(t);
            let _ = writeln!(
                o,
                r##"<line x1="{tx}" y1="{}" x2="{tx}" y2="{axis_y}" stroke="#e4e4e4"/>"##,
                TOP - 6
            );
            let _ = writeln!(
                o,
                r##"<line x1="{tx}" y1="{axis_y}" x2="{tx}" y2="{}" stroke="#444"/>"##,
                axis_y + 5
            );
            let _ = writeln!(
                o,
                r##"<text x="{tx}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
                axis_y + 19,
                axis_label(t, step)
            );
            t += step;
        }
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#444"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(o, "</g>");
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">seconds since the cluster was requested</text>"##,
            LEFT + plot_w / 2,
            axis_y + 40
        );

        // Rows.
        for (i, (n, (y, lanes))) in self.nodes.iter().zip(&rows).enumerate() {
            let y = *y;
            let lanes_h = lanes.len() as u32 * LANE + if lanes.is_empty() { 0 } else { 6 };
            if i % 2 == 1 {
                let _ = writeln!(
                    o,
                    r##"<rect x="10" y="{y}" width="{}" height="{}" fill="#f6f6f6" shape-rendering="crispEdges"/>"##,
                    W - 20,
                    ROW + lanes_h
                );
            }
            if let Some(os) = &n.os {
                for (k, lane) in lanes.iter().enumerate() {
                    let ly = y + ROW + k as u32 * LANE;
                    let _ = writeln!(
                        o,
                        r##"<text x="32" y="{}" fill="#666" font-size="11">{}</text>"##,
                        ly + LANE / 2 + 4,
                        esc(lane)
                    );
                    let by = ly + (LANE - LANE_BAR) / 2;
                    for s in os.segments.iter().filter(|s| &s.lane == lane) {
                        let (fill, _, _, label) = os_style(&s.name);
                        let x0 = x(s.start_ms);
                        let x1 = x(s.end_ms).max(x0 + 2).min(LEFT + plot_w + 2);
                        let _ = writeln!(
                            o,
                            r#"<rect x="{x0}" y="{by}" width="{}" height="{LANE_BAR}" fill="{fill}" shape-rendering="crispEdges"><title>{} {} ({label}): {} → {} ({}){}</title></rect>"#,
                            x1 - x0,
                            esc(&n.id),
                            esc(&s.name),
                            secs(s.start_ms),
                            secs(s.end_ms),
                            secs(s.duration_ms()),
                            if s.running { ", running" } else { "" }
                        );
                    }
                }
            }
            let label = match &n.private_ip {
                Some(ip) => format!(
                    "{} <tspan fill=\"#888\" font-size=\"11\">{}</tspan>",
                    esc(&n.id),
                    esc(ip)
                ),
                None => esc(&n.id),
            };
            let _ = writeln!(
                o,
                r##"<text x="20" y="{}" fill="#222">{label}</text>"##,
                y + ROW / 2 + 5
            );
            let by = y + (ROW - BAR) / 2;
            let mut prev_end = LEFT;
            for s in &n.segments {
                // At least 2 px, so a stage of a few milliseconds is still seen.
                let x0 = x(s.start_ms).max(prev_end);
                let x1 = x(s.end_ms).max(x0 + 2).min(LEFT + plot_w + 2);
                prev_end = x1;
                let _ = writeln!(
                    o,
                    r#"<rect x="{x0}" y="{by}" width="{}" height="{BAR}" fill="{}" shape-rendering="crispEdges"><title>{} {}: {} → {} ({})</title></rect>"#,
                    x1 - x0,
                    s.stage.colour(),
                    esc(&n.id),
                    s.stage.label(),
                    secs(s.start_ms),
                    secs(s.end_ms),
                    secs(s.duration_ms()),
                );
            }
            let mark = match (n.failed_ms, n.ready_ms) {
                (Some(f), _) => Some((f, FAILED_COLOUR, "failed")),
                (None, Some(r)) => Some((r, READY_COLOUR, "ready")),
                _ => None,
            };
            if let Some((ms, colour, what)) = mark {
                let mx = x(ms).max(prev_end);
                let cy = by + BAR / 2;
                let _ = writeln!(
                    o,
                    r#"<path d="M {mx} {} l 6 {} l -6 {} l -6 -{} z" fill="{colour}" stroke="{colour}"><title>{} {what} at {}</title></path>"#,
                    cy - 8,
                    8,
                    8,
                    8,
                    esc(&n.id),
                    secs(ms)
                );
                let _ = writeln!(
                    o,
                    r##"<text x="{}" y="{}" fill="#222" font-size="12">{}</text>"##,
                    mx + 10,
                    cy + 4,
                    secs(ms)
                );
            }
        }

        // AVAILABLE: a dashed line across the rows.
        if let Some(ms) = self.time_to_available_ms {
            let ax = x(ms);
            let _ = writeln!(
                o,
                r##"<line x1="{ax}" y1="{}" x2="{ax}" y2="{axis_y}" stroke="{READY_COLOUR}" stroke-width="2" stroke-dasharray="5,4"/>"##,
                TOP - 10
            );
            let _ = writeln!(
                o,
                r##"<text x="{ax}" y="{}" text-anchor="end" fill="{READY_COLOUR}" font-weight="bold" font-size="12">AVAILABLE {} </text>"##,
                TOP - 12,
                secs(ms)
            );
        }

        // Legend: rows of four swatches, on a grid.
        const COLUMN: u32 = (W - 40) / 4;
        let os_items = OS_LEGEND.iter().filter(|_| has_os).map(|name| {
            let (fill, _, _, label) = os_style(name);
            (fill, label, false)
        });
        let items: Vec<(&str, &str, bool)> = STAGES
            .iter()
            .map(|s| (s.colour(), s.label(), false))
            .chain([(READY_COLOUR, "ready", true)])
            .chain(os_items)
            .collect();
        for (i, (colour, label, diamond)) in items.iter().enumerate() {
            let lx = 20 + (i as u32 % 4) * COLUMN;
            let ly = legend_y + (i as u32 / 4) * 22;
            if *diamond {
                let _ = writeln!(
                    o,
                    r#"<path d="M {} {} l 7 7 l -7 7 l -7 -7 z" fill="{colour}"/>"#,
                    lx + 7,
                    ly - 12
                );
            } else {
                let _ = writeln!(
                    o,
                    r#"<rect x="{lx}" y="{}" width="14" height="14" fill="{colour}" shape-rendering="crispEdges"/>"#,
                    ly - 12
                );
            }
            let _ = writeln!(
                o,
                r##"<text x="{}" y="{ly}" fill="#333">{}</text>"##,
                lx + 20,
                esc(label)
            );
        }
        for (i, line) in history.iter().enumerate() {
            let _ = writeln!(
                o,
                r##"<text x="20" y="{}" fill="#333" font-size="12">{}</text>"##,
                legend_y + legend_rows * 22 + 8 + i as u32 * 18,
                esc(line)
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

fn node_timeline(n: &NodeView, origin: u64, now: u64) -> NodeTimeline {
    let rel = |t: u64| t.saturating_sub(origin);
    let mut segments = Vec::new();
    let requested = rel(n.requested_ms.unwrap_or(origin));
    // The boot of this run: timings up to the first ready or failed mark.
    let boot_end = n
        .timings
        .iter()
        .position(|t| matches!(t.phase, Phase::Ready | Phase::Failed))
        .map_or(n.timings.len(), |i| i + 1);
    let (boot, later) = n.timings.split_at(boot_end);
    let agent_start = boot.first().map(|t| rel(t.started_ms));
    // The coordinator's part: requested → running → the agent's first report. An agent
    // that started proves its VM runs, even if the provider said so later (the local
    // provider reports every VM once all are made).
    let vm_running = n
        .running_ms
        .map(rel)
        .map(|r| agent_start.map_or(r, |a| r.min(a)));
    match vm_running {
        Some(run) => {
            segments.push(Segment {
                stage: Stage::VmRequested,
                start_ms: requested,
                end_ms: run.max(requested),
                running: false,
            });
            let end = agent_start.unwrap_or(now).max(run);
            segments.push(Segment {
                stage: Stage::VmRunning,
                start_ms: run,
                end_ms: end,
                running: agent_start.is_none() && n.phase == Phase::VmRunning,
            });
        }
        None => {
            let end = agent_start.unwrap_or(now).max(requested);
            segments.push(Segment {
                stage: Stage::VmRequested,
                start_ms: requested,
                end_ms: end,
                running: agent_start.is_none() && n.phase == Phase::Pending,
            });
        }
    }
    let mut ready_ms = None;
    let mut failed_ms = None;
    for t in boot {
        let start = rel(t.started_ms);
        match (t.phase, Stage::from_phase(t.phase)) {
            (Phase::Ready, _) => ready_ms = Some(start),
            (Phase::Failed, _) => failed_ms = Some(start),
            (_, Some(stage)) => {
                let (end, running) = match t.duration_ms {
                    Some(d) => (rel(t.started_ms.saturating_add(d)), false),
                    None => (now.max(start), true),
                };
                segments.push(Segment {
                    stage,
                    start_ms: start,
                    end_ms: end,
                    running,
                });
            }
            (_, None) => {}
        }
    }
    NodeTimeline {
        id: n.id.clone(),
        private_ip: n.private_ip.map(|i| i.to_string()),
        phase: n.phase,
        os: os_boot(n, &rel, now, ready_ms),
        segments,
        ready_ms,
        failed_ms,
        later_phases: later.len(),
    }
}

/// Legend lines of `items` (glyph, colour, name), wrapped at `width` columns.
fn legend(items: &[(char, u8, &str)], width: usize, colour: bool) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for (glyph, ansi, name) in items {
        let visible = name.chars().count() + 2;
        if line_len > 0 && line_len + 2 + visible > width {
            out.push('\n');
            line_len = 0;
        }
        if line_len > 0 {
            out.push_str("  ");
            line_len += 2;
        }
        if colour {
            let _ = write!(out, "\x1b[38;5;{ansi}m█\x1b[0m {name}");
        } else {
            let _ = write!(out, "{glyph} {name}");
        }
        line_len += visible;
    }
    out.push('\n');
    out
}

/// A row of cells as text: a glyph per cell, or coloured blocks (ANSI 256 colours)
/// changing colour only where the stage changes.
fn draw_cells(cells: &[Option<(char, u8)>], colour: bool) -> String {
    let mut bar = String::new();
    let mut current: Option<u8> = None;
    for cell in cells {
        match (colour, cell) {
            (false, Some((g, _))) => bar.push(*g),
            (false, None) => bar.push(' '),
            (true, c) => {
                let ansi = c.map(|(_, a)| a);
                if ansi != current {
                    match ansi {
                        Some(a) => {
                            let _ = write!(bar, "\x1b[38;5;{a}m");
                        }
                        None => bar.push_str("\x1b[0m"),
                    }
                    current = ansi;
                }
                bar.push(if c.is_some() { '█' } else { ' ' });
            }
        }
    }
    if colour && current.is_some() {
        bar.push_str("\x1b[0m");
    }
    bar
}

/// Milliseconds as seconds for a person: `0.42s`, `3.8s`, `95s`.
/// A duration for people: `1.23s`, `12.3s`, `123s`.
pub fn secs(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 10.0 {
        format!("{s:.2}s")
    } else if s < 100.0 {
        format!("{s:.1}s")
    } else {
        format!("{s:.0}s")
    }
}

/// A round tick step giving at most 10 ticks over `total_ms`.
fn tick_step(total_ms: u64) -> u64 {
    const STEPS: &[u64] = &[
        100, 200, 250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000,
        600_000, 900_000, 1_800_000, 3_600_000,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| total_ms / s <= 10)
        .unwrap_or(3_600_000 * (total_ms / 36_000_000 + 1))
}

fn axis_label(ms: u64, step: u64) -> String {
    if step.is_multiple_of(1000) {
        format!("{}", ms / 1000)
    } else if step.is_multiple_of(100) {
        format!("{:.1}", ms as f64 / 1000.0)
    } else {
        format!("{:.2}", ms as f64 / 1000.0)
    }
}

/// Escapes text for XML and HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::PhaseTiming;
    use std::collections::BTreeMap;

    const T0: u64 = 1_700_000_000_000;

    fn timing(phase: Phase, at: u64, d: Option<u64>) -> PhaseTiming {
        PhaseTiming {
            phase,
            started_ms: T0 + at,
            duration_ms: d,
        }
    }

    fn node(i: u32, offset: u64, ready: bool) -> NodeView {
        let mut timings = vec![
            timing(Phase::AgentStarted, offset + 150, Some(20)),
            timing(Phase::PlanReceived, offset + 170, Some(1400)),
            timing(Phase::Network, offset + 1570, Some(150)),
            timing(Phase::Images, offset + 1720, Some(220)),
            timing(
                Phase::Containers,
                offset + 1940,
                if ready { Some(600) } else { None },
            ),
        ];
        if ready {
            timings.push(timing(Phase::Probing, offset + 2540, Some(1200)));
            timings.push(timing(Phase::Ready, offset + 3740, Some(0)));
        }
        NodeView {
            id: format!("node-{i}"),
            index: i,
            instance_id: None,
            private_ip: Some(format!("10.0.0.{}", 10 + i).parse().expect("ip")),
            group: String::new(),
            phase: if ready {
                Phase::Ready
            } else {
                Phase::Containers
            },
            generation: 1,
            converged_ms: None,
            last_seen_ms: None,
            leaving: false,
            incarnation: 0,
            error: None,
            elapsed_ms: 0,
            containers: vec![],
            timings,
            requested_ms: Some(T0),
            running_ms: Some(T0 + 90),
            boot: None,
            recipes: vec![],
            disks: vec![],
            details: BTreeMap::new(),
        }
    }

    fn cluster(nodes: Vec<NodeView>, available: Option<u64>) -> ClusterView {
        ClusterView {
            name: "demo".into(),
            provider: "local".into(),
            state: if available.is_some() {
                ClusterState::Available
            } else {
                ClusterState::Creating
            },
            reason: None,
            generation: 1,
            metadata_url: "http://10.0.0.1:8787".into(),
            node_count: nodes.len() as u32,
            blueprint: "demo".into(),
            overlay: "10.240.0.0/16".into(),
            images: vec![],
            created_ms: T0,
            time_to_available_ms: available,
            resources: None,
            auto_repair_secs: None,
            nodes,
            changes: vec![],
            events: vec![],
        }
    }

    #[test]
    fn stages_follow_the_reported_timings() {
        let c = cluster(vec![node(0, 0, true), node(1, 30, true)], Some(3800));
        let t = Timeline::from_view(&c, T0 + 5000);
        assert_eq!(t.total_ms, 3800);
        let n0 = &t.nodes[0];
        let stages: Vec<Stage> = n0.segments.iter().map(|s| s.stage).collect();
        assert_eq!(stages, STAGES.to_vec());
        assert_eq!(n0.segments[0].start_ms, 0);
        assert_eq!(n0.segments[0].end_ms, 90);
        // Boot: from running to the agent's first report.
        assert_eq!((n0.segments[1].start_ms, n0.segments[1].end_ms), (90, 150));
        assert_eq!(n0.segments[6].duration_ms(), 600);
        assert_eq!(
            (n0.segments[7].stage, n0.segments[7].duration_ms()),
            (Stage::Probing, 1200)
        );
        assert_eq!(n0.ready_ms, Some(3740));
        assert_eq!(t.nodes[1].ready_ms, Some(3770));
        assert!(t
            .nodes
            .iter()
            .all(|n| n.segments.iter().all(|s| !s.running)));
    }

    #[test]
    fn a_stage_still_running_ends_now() {
        let c = cluster(vec![node(0, 0, false)], None);
        let t = Timeline::from_view(&c, T0 + 2500);
        let last = t.nodes[0].segments.last().expect("segments");
        assert_eq!(last.stage, Stage::Containers);
        assert!(last.running);
        assert_eq!(last.end_ms, 2500);
        assert_eq!(t.total_ms, 2500);
        assert!(t.render_text(80, false).contains("containers"));
    }

    #[test]
    fn an_agent_that_started_before_the_vm_was_reported_running_ends_the_vm_stages() {
        let mut n = node(0, 0, true);
        n.running_ms = Some(T0 + 400);
        let t = Timeline::from_view(&cluster(vec![n], Some(3800)), T0 + 4000);
        let s = &t.nodes[0].segments;
        assert_eq!(
            (s[0].stage, s[0].start_ms, s[0].end_ms),
            (Stage::VmRequested, 0, 150)
        );
        assert_eq!((s[1].stage, s[1].duration_ms()), (Stage::VmRunning, 0));
        assert_eq!(s[2].start_ms, 150);
    }

    #[test]
    fn later_convergences_are_counted_not_drawn() {
        let mut n = node(0, 0, true);
        n.timings
            .push(timing(Phase::PlanReceived, 600_000, Some(10)));
        n.timings.push(timing(Phase::Ready, 600_010, Some(0)));
        let t = Timeline::from_view(&cluster(vec![n], Some(3800)), T0 + 700_000);
        assert_eq!(t.total_ms, 3800);
        assert_eq!(t.nodes[0].later_phases, 2);
    }

    #[test]
    fn clock_skew_before_the_request_is_clamped() {
        let mut n = node(0, 0, true);
        n.timings[0].started_ms = T0 - 5_000;
        let t = Timeline::from_view(&cluster(vec![n], Some(3800)), T0 + 4000);
        assert!(t.nodes[0].segments.iter().all(|s| s.end_ms >= s.start_ms));
    }

    #[test]
    fn text_bars_fit_the_width_and_show_every_stage() {
        let c = cluster(vec![node(0, 0, true), node(1, 0, true)], Some(3800));
        let t = Timeline::from_view(&c, T0 + 4000);
        let text = t.render_text(100, false);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("node-")).collect();
        assert_eq!(rows.len(), 4, "two bars, two duration rows:\n{text}");
        for row in &rows[..2] {
            assert!(row.chars().count() <= 100, "{row}");
            for s in STAGES {
                assert!(row.contains(s.glyph()), "{s:?} missing from {row}");
            }
            assert!(row.ends_with("3.74s ready"), "{row}");
        }
        assert!(text.starts_with("demo: 2 nodes on local, AVAILABLE in 3.80s"));
        let coloured = t.render_text(100, true);
        assert!(coloured.contains("\x1b[38;5;208m"));
    }

    #[test]
    fn svg_has_a_row_per_node_every_colour_and_a_legend() {
        let c = cluster(
            vec![node(0, 0, true), node(1, 40, true), node(2, 80, true)],
            Some(3900),
        );
        let svg = Timeline::from_view(&c, T0 + 4000).render_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("demo: 3 nodes on local, AVAILABLE in 3.90s"));
        for s in STAGES {
            // Three bars and a legend swatch per stage.
            assert_eq!(
                svg.matches(&format!("fill=\"{}\"", s.colour())).count(),
                4,
                "{s:?}"
            );
            assert!(svg.contains(s.label()));
        }
        assert_eq!(svg.matches("ready at").count(), 3);
        // Balanced, well-formed enough for a renderer: every element closed.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    /// A node of a real VM: the agent's timings and the OS's boot (seconds after T0).
    fn vm_node(i: u32) -> NodeView {
        use shoal_protocol::{BootReport, BootStage, CloudInitOutcome};
        let at = |s: f64| T0 + (s * 1000.0) as u64;
        let st = |source: &str, name: &str, from: f64, to: Option<f64>| BootStage {
            source: source.into(),
            name: name.into(),
            started_ms: at(from),
            duration_ms: to.map(|t| ((t - from) * 1000.0) as u64),
        };
        let mut n = node(i, 100_000, true);
        n.running_ms = Some(at(1.0));
        n.boot = Some(BootReport {
            kernel_start_ms: at(1.5),
            stages: vec![
                st("kernel", "kernel", 1.5, Some(3.2)),
                st("systemd", "initrd", 3.2, Some(8.0)),
                st("systemd", "userspace", 8.0, Some(130.0)),
                st("cloud-init", "init-local", 20.0, Some(51.0)),
                st("cloud-init", "init", 52.0, Some(70.0)),
                st(
                    "systemd",
                    "systemd-networkd-wait-online.service",
                    60.0,
                    Some(70.0),
                ),
                st("systemd", "docker.service", 71.0, Some(100.0)),
                st("systemd", "shoal-agent.service", 100.1, Some(100.1)),
                st("cloud-init", "modules-config", 101.0, Some(110.0)),
                st("cloud-init", "modules-final", 111.0, Some(125.0)),
                st("firmware", "seabios", 1.0, Some(1.2)),
            ],
            cloud_init: Some(CloudInitOutcome {
                status: "done".into(),
                datasource: None,
                errors: vec![],
            }),
            agent_unit: Some("shoal-agent.service".into()),
        });
        n
    }

    #[test]
    fn the_os_boot_is_drawn_on_lanes_under_its_node() {
        let c = cluster(vec![vm_node(0), node(1, 0, true)], Some(104_000));
        let t = Timeline::from_view(&c, T0 + 200_000);
        let os = t.nodes[0].os.as_ref().expect("node-0 reported its boot");
        assert_eq!(os.lanes(), ["boot", "units", "cloud-init", "firmware"]);
        assert_eq!(os.stage_ms("kernel"), Some(1700));
        assert_eq!(os.stage_ms("userspace"), Some(122_000));
        assert_eq!(os.docker_ready_ms, Some(100_000));
        // The agent was ready at 100 s + 3.74 s: Shoal's part is 3.74 s.
        assert_eq!(t.nodes[0].ready_ms, Some(103_740));
        assert_eq!(os.docker_to_ready_ms, Some(3740));
        assert_eq!(os.end_of("modules-final"), Some(125_000));
        assert_eq!(os.cloud_init.as_deref(), Some("done"));
        // The OS's stages widen the picture: cloud-init ended after AVAILABLE.
        assert_eq!(t.total_ms, 130_000);
        // The local provider's node has no boot of its own: nothing is made up.
        assert_eq!(t.nodes[1].os, None);

        let text = t.render_text(120, false);
        let lines: Vec<&str> = text.lines().collect();
        let row = lines
            .iter()
            .position(|l| l.starts_with("node-0 "))
            .expect("row");
        assert!(lines[row + 1].starts_with("  boot "), "{text}");
        assert!(
            lines[row + 1].contains('K') && lines[row + 1].contains('s'),
            "{text}"
        );
        assert!(lines[row + 2].starts_with("  units ") && lines[row + 2].contains('D'));
        assert!(lines[row + 3].starts_with("  cloud-init "));
        for g in ['l', 'n', 'c', 'f'] {
            assert!(lines[row + 3].contains(g), "{g} in {}", lines[row + 3]);
        }
        assert!(
            lines[row + 5].starts_with("node-1 "),
            "no lanes for node-1:\n{text}"
        );
        assert!(text.contains("OS (VM clock)"), "{text}");
        let os_row = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("node-0 "))
            .expect("OS table row");
        assert!(
            os_row.contains("1.70s") && os_row.contains("done") && os_row.contains("3.74s"),
            "{os_row}"
        );
        assert!(lines
            .iter()
            .all(|l| l.chars().count() <= 120 || l.contains("cloud-init error")));

        let svg = t.render_svg();
        for name in ["kernel", "docker.service", "init-local", "modules-final"] {
            let (fill, _, _, label) = os_style(name);
            assert!(svg.contains(&format!("fill=\"{fill}\"")), "{name}");
            assert!(svg.contains(label), "{label}");
        }
        assert!(svg.contains("node-0 docker.service (Docker starting): 71.0s → 100s (29.0s)"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn without_a_boot_report_there_are_no_os_lanes() {
        let c = cluster(vec![node(0, 0, true)], Some(3800));
        let t = Timeline::from_view(&c, T0 + 4000);
        let text = t.render_text(100, false);
        assert!(
            !text.contains("OS (VM clock)") && !text.contains("  boot "),
            "{text}"
        );
        let svg = t.render_svg();
        assert!(!svg.contains(os_style("kernel").0));
        let json = serde_json::to_value(&t).expect("json");
        assert!(json["nodes"][0].get("os").is_none());
    }

    #[test]
    fn changes_and_states_are_listed_after_the_boot() {
        let mut c = cluster(vec![node(0, 0, true), node(1, 0, true)], Some(3800));
        c.changes.push(crate::view::ChangeView {
            id: 2,
            kind: crate::store::ChangeKind::Scale,
            summary: "workers 1 → 2".into(),
            asked_ms: T0 + 60_000,
            outcome: "done".into(),
            reason: None,
            step: "done".into(),
            added: vec!["node-2".into()],
            removed: vec![],
            repaired: vec![],
            generation: Some(2),
            published_ms: Some(T0 + 60_800),
            done_ms: Some(T0 + 61_900),
            converged: vec![crate::view::Convergence {
                node: "node-0".into(),
                at_ms: T0 + 60_850,
            }],
        });
        c.events.push(crate::store::ClusterEvent {
            at_ms: T0,
            state: ClusterState::Requested,
            reason: None,
        });
        c.events.push(crate::store::ClusterEvent {
            at_ms: T0 + 60_000,
            state: ClusterState::Updating,
            reason: None,
        });
        c.events.push(crate::store::ClusterEvent {
            at_ms: T0 + 65_000,
            state: ClusterState::Degraded,
            reason: Some(
                "node-1 unhealthy: network-device-missing: the VXLAN device shoal-vx was removed"
                    .into(),
            ),
        });
        c.events.push(crate::store::ClusterEvent {
            at_ms: T0 + 65_040,
            state: ClusterState::Available,
            reason: None,
        });
        let t = Timeline::from_view(&c, T0 + 70_000);
        // The boot's scale is not stretched by a change a minute later.
        assert_eq!(t.total_ms, 3800);
        assert_eq!(t.changes[0].published_after_ms, Some(800));
        assert_eq!(t.changes[0].converged, [("node-0".to_string(), 50)]);
        let text = t.render_text(100, false);
        assert!(
            text.contains("change #2 workers 1 → 2 (generation 2): asked at 60.0s, published after 0.80s, done after 1.90s"),
            "{text}"
        );
        assert!(text.contains("node-0 0.05s"), "{text}");
        assert!(
            text.contains(
                "states: REQUESTED 0.00s, UPDATING 60.0s, DEGRADED 65.0s, AVAILABLE 65.0s"
            ),
            "{text}"
        );
        assert!(
            text.contains("  DEGRADED at 65.0s: node-1 unhealthy: network-device-missing: the VXLAN device shoal-vx was removed"),
            "{text}"
        );
        let svg = t.render_svg();
        assert!(svg.contains("change #2 workers 1 → 2"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(3_800), 500);
        assert_eq!(tick_step(9_000), 1_000);
        assert_eq!(tick_step(240_000), 30_000);
        assert_eq!(axis_label(1500, 500), "1.5");
        assert_eq!(axis_label(2000, 1000), "2");
    }
}
