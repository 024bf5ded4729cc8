//! `shoal cluster timeline`: how a cluster booted, node by node, as a waterfall, in the
//! spirit of `systemd-analyze plot` and `cloud-init analyze`.
//!
//! The stages of a node come from two clocks: the coordinator's (when the VM was
//! requested, when the provider reported it running) and the agent's (the phase
//! timings it reports: agent started and waiting for the plan, plan received, network,
//! images, containers, ready). Everything is drawn relative to the moment the cluster
//! was requested. The local provider's VMs share the coordinator's clock; on a cloud, a
//! VM whose clock is off shows its agent's stages shifted by that much (times before
//! the request are drawn at the request).
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
}

/// Every stage, in boot order.
pub const STAGES: [Stage; 7] = [
    Stage::VmRequested,
    Stage::VmRunning,
    Stage::AgentStarted,
    Stage::PlanReceived,
    Stage::Network,
    Stage::Images,
    Stage::Containers,
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
        let label_w = self
            .nodes
            .iter()
            .map(|n| n.id.len())
            .max()
            .unwrap_or(4)
            .max(4);
        // "<id> |<bar>| 12.3s ready"
        let bar_w = width.saturating_sub(label_w + 3 + 16).max(10);
        let scale = bar_w as f64 / self.total_ms as f64;
        let col = |ms: u64| ((ms as f64 * scale).round() as usize).min(bar_w);
        for n in &self.nodes {
            let mut cells: Vec<Option<Stage>> = vec![None; bar_w];
            let mut prev_end = 0;
            for s in &n.segments {
                let c0 = col(s.start_ms).max(prev_end).min(bar_w.saturating_sub(1));
                let c1 = col(s.end_ms).max(c0 + 1).min(bar_w);
                for cell in cells.iter_mut().take(c1).skip(c0) {
                    *cell = Some(s.stage);
                }
                prev_end = c1;
            }
            let mut bar = String::new();
            let mut current: Option<Stage> = None;
            for cell in &cells {
                match (colour, cell) {
                    (false, Some(s)) => bar.push(s.glyph()),
                    (false, None) => bar.push(' '),
                    (true, c) => {
                        if *c != current {
                            match c {
                                Some(s) => {
                                    let _ = write!(bar, "\x1b[38;5;{}m", s.ansi());
                                }
                                None => bar.push_str("\x1b[0m"),
                            }
                            current = *c;
                        }
                        bar.push(if c.is_some() { '█' } else { ' ' });
                    }
                }
            }
            if colour && current.is_some() {
                bar.push_str("\x1b[0m");
            }
            let end = match (n.ready_ms, n.failed_ms) {
                (_, Some(f)) => format!("{:>7} failed", secs(f)),
                (Some(r), None) => format!("{:>7} ready", secs(r)),
                (None, None) => format!("{:>7} {}", "", n.phase),
            };
            let _ = writeln!(out, "{:<label_w$} |{bar}| {end}", n.id);
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
        let mut legend = String::new();
        for s in STAGES {
            let mark = if colour {
                format!("\x1b[38;5;{}m█\x1b[0m", s.ansi())
            } else {
                s.glyph().to_string()
            };
            let _ = write!(legend, "{mark} {}  ", s.as_str());
        }
        let _ = writeln!(out, "{}", legend.trim_end());
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
        let history = self.history_lines();
        if !history.is_empty() {
            out.push('\n');
            for l in history {
                let _ = writeln!(out, "{l}");
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
        let plot_w = W - LEFT - RIGHT;
        let rows = self.nodes.len() as u32;
        let axis_y = TOP + rows * ROW + 6;
        let legend_y = axis_y + 70;
        let legend_rows = 2;
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
            r##"<text x="20" y="50" fill="#666">Boot of each node, from the cluster's request (0 s): coordinator and agent timings</text>"##
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
        for (i, n) in self.nodes.iter().enumerate() {
            let y = TOP + i as u32 * ROW;
            if i % 2 == 1 {
                let _ = writeln!(
                    o,
                    r##"<rect x="10" y="{y}" width="{}" height="{ROW}" fill="#f6f6f6" shape-rendering="crispEdges"/>"##,
                    W - 20
                );
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

        // Legend: two rows of four swatches, on a grid.
        const COLUMN: u32 = (W - 40) / 4;
        let items: Vec<(&str, &str, bool)> = STAGES
            .iter()
            .map(|s| (s.colour(), s.label(), false))
            .chain([(READY_COLOUR, "ready", true)])
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
        segments,
        ready_ms,
        failed_ms,
        later_phases: later.len(),
    }
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
                if ready { Some(1800) } else { None },
            ),
        ];
        if ready {
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
        assert_eq!(n0.segments[6].duration_ms(), 1800);
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
            text.contains("states: REQUESTED 0.00s, UPDATING 60.0s"),
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
