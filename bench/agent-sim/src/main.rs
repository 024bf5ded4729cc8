//! `shoal-agent-sim`: thousands of simulated Shoal agents against one real coordinator.
//!
//! Each agent configuration found under `--agents` (the `sim` provider writes one per
//! node to `<state-dir>/sim/agents/<cluster>/<node>.json`; `metadata_bench --seed-only` writes
//! them too) becomes one simulated agent with its own HTTP client and connection, as a
//! real agent on its own VM has, optionally from its own source address (`--sources`,
//! e.g. `127.1.0.0/16` on loopback: the coordinator's per-source limits then see one
//! address per agent, as on a real network). They speak the real metadata protocol,
//! over TLS when the URL is https:
//!
//! - `--mode boot` (the default): the agent long-polls its plan as the real agent does
//!   (`wait=30`, `after=` its generation), reports each boot phase with its timing
//!   (`plan-received`, `network`, `images`, `containers`, `ready`) for every generation
//!   it receives, and stays resident: under the plan's liveness contract it asks its
//!   long-polls to end when the report is due (every `report_secs`) and sends its
//!   latest report again on the connection the poll leaves idle, as the real agent
//!   does. A leaving node reports its drain as done at once; an
//!   agent whose node leaves the plan, or whose cluster is gone, stops. Runs until
//!   standard input ends, every agent has stopped, or `--seconds` pass.
//! - `--mode reports`: every agent sends `--rounds` reports back to back, all agents
//!   starting together (the status-report throughput benchmark).
//! - `--mode rate`: every agent opens its connection with one report, then all of them
//!   together send `--rate` reports a second for `--seconds`, each agent on its own
//!   schedule (every agents/rate seconds, the agents' starts spread evenly over it) on
//!   the connection it keeps, as resident agents send liveness reports: the figures
//!   count only those reports (sustained reports/s and their latency).
//!
//! Reads commands on standard input, one per line: `stats` prints the figures so far
//! as one JSON line. At the end it prints them once more. Figures: agents, how many
//! hold a plan and are ready on it, for each generation how many agents received it
//! and how long after the coordinator published it (its `shoal-published-ms` header
//! against this machine's clock: run on the coordinator's machine), the latency of
//! every report (p50/p99/max), reports per second, and errors by kind.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ipnet::Ipv4Net;
use reqwest::StatusCode;
use shoal_protocol::contract::{self, GENERATION_HEADER, LONG_POLL_SECS, PUBLISHED_HEADER};
use shoal_protocol::{AgentConfig, NodeStatus, Phase, PhaseTiming};
use tokio::io::AsyncBufReadExt;

/// How long after its due time a liveness report goes out without waiting any longer
/// for the long-poll to end: one report interval, at least this (the real agent's
/// `LIVENESS_GRACE`).
const LIVENESS_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Long-poll, report every phase, stay resident with liveness reports.
    Boot,
    /// Send `--rounds` reports per agent, back to back, all agents at once.
    Reports,
    /// Send `--rate` reports a second in all, spread over the agents, for `--seconds`.
    Rate,
}

/// Simulated Shoal agents against a real coordinator.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A directory of agent configurations (`*.json`), or of directories of them (one
    /// level: `<state-dir>/sim/agents` holds one per cluster). Repeatable.
    #[arg(long, required = true)]
    agents: Vec<PathBuf>,
    /// The coordinator's CA certificate (PEM); default: the configurations' own.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The metadata base URL; default: the configurations' own.
    #[arg(long)]
    url: Option<String>,
    /// What the agents do.
    #[arg(long, value_enum, default_value_t = Mode::Boot)]
    mode: Mode,
    /// Reports per agent (`--mode reports`).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Reports per second in all (`--mode rate`).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Give agent i the i-th address of this range as its source address (loopback:
    /// any of 127.0.0.0/8 works without configuration).
    #[arg(long)]
    sources: Option<Ipv4Net>,
    /// Spread the agents' starts evenly over this many milliseconds (0: all at once,
    /// a boot storm).
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    /// Stop after this many seconds even if standard input stays open.
    #[arg(long)]
    seconds: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Ask for plans as they are, not gzipped (the agent's way before it asked for
    /// gzip: to measure what compression saves).
    #[arg(long)]
    no_gzip: bool,
}

/// Figures shared by every agent task.
#[derive(Debug, Default)]
struct Figures {
    agents: AtomicUsize,
    /// Agents ready on the latest generation they received.
    ready: AtomicUsize,
    /// Agents whose node left the plan.
    left: AtomicUsize,
    reports: AtomicU64,
    report_ms: Mutex<Vec<f64>>,
    /// By generation: how long after its publication each agent had it.
    delivery_ms: Mutex<BTreeMap<u64, Vec<f64>>>,
    /// Plan bytes received, as sent (gzipped or not).
    plan_bytes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Where the measured window began (`--mode rate`: after the connections opened);
    /// the run's start otherwise.
    window: Mutex<Option<Instant>>,
}

impl Figures {
    fn error(&self, kind: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }

    fn report_took(&self, ms: f64) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.report_ms.lock() {
            r.push(ms);
        }
    }

    /// Forgets the reports so far: the measured window starts now.
    fn restart_window(&self) {
        if let Ok(mut r) = self.report_ms.lock() {
            r.clear();
        }
        self.reports.store(0, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock() {
            e.clear();
        }
        if let Ok(mut w) = self.window.lock() {
            *w = Some(Instant::now());
        }
    }

    fn json(&self, started: Instant) -> serde_json::Value {
        let since = self.window.lock().ok().and_then(|w| *w).unwrap_or(started);
        let seconds = since.elapsed().as_secs_f64();
        let mut reports = self.report_ms.lock().map(|r| r.clone()).unwrap_or_default();
        reports.sort_by(f64::total_cmp);
        let delivery: serde_json::Map<String, serde_json::Value> = self
            .delivery_ms
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(g, mut v)| {
                v.sort_by(f64::total_cmp);
                (g.to_string(), summary(&v))
            })
            .collect();
        let n = self.reports.load(Ordering::Relaxed);
        serde_json::json!({
            "agents": self.agents.load(Ordering::Relaxed),
            "ready": self.ready.load(Ordering::Relaxed),
            "left": self.left.load(Ordering::Relaxed),
            "seconds": seconds,
            "reports": n,
            "reports_per_sec": n as f64 / seconds.max(1e-9),
            "report_ms": summary(&reports),
            "delivery_ms": delivery,
            "plan_bytes": self.plan_bytes.load(Ordering::Relaxed),
            "errors": self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        })
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(sorted: &[f64]) -> serde_json::Value {
    serde_json::json!({
        "count": sorted.len(),
        "p50": percentile(sorted, 50.0),
        "p99": percentile(sorted, 99.0),
        "max": sorted.last().copied().unwrap_or(0.0),
    })
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The configurations under `dir`: its `*.json` files, and those of its
/// subdirectories.
fn load_configs(dir: &Path, out: &mut Vec<AgentConfig>, depth: u32) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() && depth == 0 {
            load_configs(&path, out, 1)?;
        } else if path.extension().is_some_and(|x| x == "json") {
            let cfg: AgentConfig = serde_json::from_slice(
                &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{} is not an agent configuration", path.display()))?;
            out.push(cfg);
        }
    }
    Ok(())
}

/// What a simulated agent needs of a plan: which nodes it has, which are leaving, and
/// the liveness interval. Parsed once per cluster and generation and shared by the
/// cluster's agents: thousands of agents each parsing a 1,000-node plan would take the
/// CPU the coordinator is measured on.
#[derive(Debug, serde::Deserialize)]
struct LightPlan {
    nodes: Vec<LightNode>,
    #[serde(default)]
    liveness: Option<LightLiveness>,
}

#[derive(Debug, serde::Deserialize)]
struct LightNode {
    id: String,
    #[serde(default)]
    leaving: bool,
}

#[derive(Debug, serde::Deserialize)]
struct LightLiveness {
    report_secs: u64,
}

/// A plan as the agents of its cluster see it.
#[derive(Debug)]
struct Seen {
    /// Node id → leaving.
    nodes: std::collections::HashMap<String, bool>,
    report_secs: Option<u64>,
}

/// Parsed plans by cluster key and generation.
type PlanCache = Mutex<std::collections::HashMap<(String, u64), Arc<Seen>>>;

/// One simulated agent's connection to the coordinator.
#[derive(Debug)]
struct Agent {
    http: reqwest::Client,
    plan_url: String,
    status_url: String,
    token: String,
    key: String,
    node: String,
    figures: Arc<Figures>,
    plans: Arc<PlanCache>,
    /// Ask for gzipped plans, as the real agent does.
    gzip: bool,
}

/// What a long-poll brought.
enum Polled {
    /// A plan: its generation, and what this agent needs of it.
    Plan { generation: u64, seen: Arc<Seen> },
    /// The wait ran out.
    Nothing,
    /// The cluster is gone (404): the agent stops.
    Gone,
}

impl Agent {
    fn new(
        cfg: &AgentConfig,
        url: Option<&str>,
        ca: Option<&reqwest::Certificate>,
        source: Option<IpAddr>,
        figures: Arc<Figures>,
        plans: Arc<PlanCache>,
        gzip: bool,
    ) -> anyhow::Result<Agent> {
        // The real agent's client settings (agent/src/client.rs).
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(LONG_POLL_SECS + 15))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(1)
            .user_agent("shoal-agent-sim");
        let own_ca = cfg
            .ca_cert_pem
            .as_deref()
            .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()))
            .transpose()?;
        if let Some(c) = ca.cloned().or(own_ca) {
            b = b.tls_certs_only([c]);
        }
        if let Some(ip) = source {
            b = b.local_address(ip);
        }
        let base = url
            .unwrap_or(&cfg.metadata_url)
            .trim_end_matches('/')
            .to_string();
        Ok(Agent {
            http: b.build()?,
            plan_url: format!("{base}{}", contract::plan_path(&cfg.cluster_key)),
            status_url: format!(
                "{base}{}",
                contract::status_path(&cfg.cluster_key, &cfg.node_id)
            ),
            token: cfg.node_token.clone(),
            key: cfg.cluster_key.clone(),
            node: cfg.node_id.clone(),
            figures,
            plans,
            gzip,
        })
    }

    async fn poll(&self, after: u64, wait: u64) -> Result<Polled, String> {
        let resp = self
            .http
            .get(&self.plan_url)
            .query(&[(contract::WAIT_PARAM, wait), (contract::AFTER_PARAM, after)])
            .header(
                reqwest::header::ACCEPT_ENCODING,
                if self.gzip { "gzip" } else { "identity" },
            )
            .send()
            .await
            .map_err(|e| format!("poll: {}", kind(&e)))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NO_CONTENT => return Ok(Polled::Nothing),
            StatusCode::NOT_FOUND => return Ok(Polled::Gone),
            s => return Err(format!("poll: HTTP {}", s.as_u16())),
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let generation = header(GENERATION_HEADER).unwrap_or(0);
        let published = header(PUBLISHED_HEADER);
        let gzipped = resp
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("poll body: {}", kind(&e)))?;
        self.figures
            .plan_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        if let Some(p) = published {
            let ms = (now_ms() - p as f64).max(0.0);
            if let Ok(mut d) = self.figures.delivery_ms.lock() {
                d.entry(generation).or_default().push(ms);
            }
        }
        let id = (self.key.clone(), generation);
        let cached = self.plans.lock().ok().and_then(|c| c.get(&id).cloned());
        let seen = match cached {
            Some(seen) => seen,
            None => {
                let json = if gzipped {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&body[..]),
                        &mut out,
                    )
                    .map_err(|e| format!("plan: bad gzip ({e})"))?;
                    out
                } else {
                    body.to_vec()
                };
                let plan: LightPlan =
                    serde_json::from_slice(&json).map_err(|e| format!("plan: not a plan ({e})"))?;
                let seen = Arc::new(Seen {
                    nodes: plan.nodes.into_iter().map(|n| (n.id, n.leaving)).collect(),
                    report_secs: plan.liveness.map(|l| l.report_secs),
                });
                if let Ok(mut c) = self.plans.lock() {
                    c.insert(id, seen.clone());
                }
                seen
            }
        };
        Ok(Polled::Plan { generation, seen })
    }

    async fn report(&self, status: &NodeStatus) -> bool {
        let t = Instant::now();
        let sent = self
            .http
            .put(&self.status_url)
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .json(status)
            .send()
            .await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        match sent {
            Ok(r) if r.status().is_success() => {
                self.figures.report_took(ms);
                true
            }
            Ok(r) => {
                self.figures
                    .error(format!("report: HTTP {}", r.status().as_u16()));
                false
            }
            Err(e) => {
                self.figures.error(format!("report: {}", kind(&e)));
                false
            }
        }
    }

    /// Counts this agent as stopped: its node or its cluster is gone.
    fn stop(&self, ready: bool) {
        if ready {
            self.figures.ready.fetch_sub(1, Ordering::Relaxed);
        }
        self.figures.left.fetch_add(1, Ordering::Relaxed);
    }

    /// The boot and resident life of one agent.
    async fn boot(self) {
        let started = Instant::now();
        let ms = |t: Instant| u64::try_from(t.duration_since(started).as_millis()).unwrap_or(0);
        let mut generation = 0u64;
        let mut ready = false;
        let mut latest: Option<NodeStatus> = None;
        let mut every: Option<Duration> = None;
        let mut next_liveness: Option<tokio::time::Instant> = None;
        let mut failures = 0u32;
        loop {
            // As the real agent: the long-poll ends when the liveness report is due and
            // the report goes out on the connection it leaves idle; only a poll that
            // has not ended a little after that is dropped for the report.
            let wait = next_liveness.map_or(LONG_POLL_SECS, |at| {
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                (left.as_secs() + u64::from(left.subsec_nanos() > 0)).clamp(1, LONG_POLL_SECS)
            });
            let liveness = async {
                match next_liveness {
                    Some(at) => {
                        tokio::time::sleep_until(at + LIVENESS_GRACE.max(every.unwrap_or_default()))
                            .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                polled = self.poll(generation, wait) => match polled {
                    Ok(Polled::Nothing) => {
                        failures = 0;
                        let due = next_liveness.is_some_and(|at| tokio::time::Instant::now() + Duration::from_secs(1) >= at);
                        if due {
                            if let Some(s) = &latest {
                                self.report(s).await;
                            }
                            next_liveness = every.map(|d| tokio::time::Instant::now() + d);
                        }
                    }
                    Ok(Polled::Gone) => return self.stop(ready),
                    Ok(Polled::Plan { generation: g, seen }) => {
                        failures = 0;
                        let Some(&leaving) = seen.nodes.get(&self.node) else {
                            // This node's VM is gone from the plan: it was removed.
                            return self.stop(ready);
                        };
                        generation = g;
                        every = seen.report_secs.map(Duration::from_secs);
                        if ready {
                            self.figures.ready.fetch_sub(1, Ordering::Relaxed);
                            ready = false;
                        }
                        let phases: &[Phase] = if leaving {
                            // Its drain hook, as if it succeeded at once.
                            &[Phase::Draining, Phase::Drained]
                        } else {
                            &[Phase::PlanReceived, Phase::Network, Phase::Images, Phase::Containers, Phase::Ready]
                        };
                        // The phases a real agent goes through for a plan, reported as
                        // it does: one report per phase, with the timings so far.
                        let mut timings: Vec<PhaseTiming> = Vec::new();
                        let mut delivered = true;
                        for &phase in phases {
                            if let Some(last) = timings.last_mut() {
                                last.duration_ms = Some(ms(Instant::now()).saturating_sub(last.started_ms));
                            }
                            timings.push(PhaseTiming { phase, started_ms: ms(Instant::now()), duration_ms: None });
                            let status = status(phase, generation, timings.clone());
                            delivered &= self.report(&status).await;
                            latest = Some(status);
                        }
                        if delivered && !leaving {
                            ready = true;
                            self.figures.ready.fetch_add(1, Ordering::Relaxed);
                        }
                        next_liveness = every.map(|d| tokio::time::Instant::now() + d);
                    }
                    Err(e) => {
                        self.figures.error(e);
                        failures += 1;
                        // The real agent's backoff, roughly: 0.5 s doubling to 8 s.
                        let secs = 0.5 * f64::from(1u32 << failures.min(4));
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                },
                () = liveness => {
                    // The long-poll in flight did not end in time: it is dropped, as the
                    // real agent drops it.
                    if let Some(s) = &latest {
                        self.report(s).await;
                    }
                    next_liveness = every.map(|d| tokio::time::Instant::now() + d);
                }
            }
        }
    }

    /// One report every `period`, the first `offset` after `start`, until `until`.
    async fn at_rate(
        self,
        start: tokio::time::Instant,
        offset: Duration,
        period: Duration,
        until: tokio::time::Instant,
    ) {
        let status = status(Phase::Ready, 1, vec![]);
        let mut next = start + offset;
        while next < until {
            tokio::time::sleep_until(next).await;
            self.report(&status).await;
            next += period;
        }
    }

    /// `rounds` reports back to back.
    async fn reports(self, rounds: u32) {
        for round in 0..rounds {
            let status = status(
                Phase::Containers,
                1,
                vec![PhaseTiming {
                    phase: Phase::Containers,
                    started_ms: u64::from(round),
                    duration_ms: None,
                }],
            );
            self.report(&status).await;
        }
    }
}

fn status(phase: Phase, generation: u64, timings: Vec<PhaseTiming>) -> NodeStatus {
    NodeStatus {
        phase,
        generation,
        timings,
        error: None,
        containers: vec![],
        agent_version: concat!("shoal-agent-sim/", env!("CARGO_PKG_VERSION")).into(),
        boot: None,
        peer_drains: vec![],
        recipes: vec![],
        disks: vec![],
    }
}

/// What went wrong with a request, in a word, never its URL (it holds the key).
fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = args.workers {
        rt.worker_threads(w.max(1));
    }
    let rt = rt.enable_all().build()?;
    let result = rt.block_on(run(args));
    // Not waiting for the thread blocked reading standard input: the run is over.
    rt.shutdown_background();
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut configs = Vec::new();
    for dir in &args.agents {
        load_configs(dir, &mut configs, 0)?;
    }
    anyhow::ensure!(
        !configs.is_empty(),
        "no agent configuration (*.json) under {:?}",
        args.agents
    );
    let ca = match &args.ca {
        Some(p) => Some(
            reqwest::Certificate::from_pem(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a PEM certificate", p.display()))?,
        ),
        None => None,
    };
    let mut sources = args.sources.map(|net| net.hosts());
    let figures = Arc::new(Figures::default());
    let plans = Arc::new(PlanCache::default());
    let mut agents = Vec::with_capacity(configs.len());
    for cfg in &configs {
        let source = match &mut sources {
            Some(hosts) => Some(IpAddr::V4(hosts.next().with_context(|| {
                format!(
                    "--sources has fewer addresses than the {} agents",
                    configs.len()
                )
            })?)),
            None => None,
        };
        agents.push(Agent::new(
            cfg,
            args.url.as_deref(),
            ca.as_ref(),
            source,
            figures.clone(),
            plans.clone(),
            !args.no_gzip,
        )?);
    }
    figures.agents.store(agents.len(), Ordering::Relaxed);
    let started = Instant::now();
    let n = agents.len() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let start = Arc::new(tokio::sync::Barrier::new(agents.len()));
    let opened = Arc::new(tokio::sync::Barrier::new(agents.len()));
    anyhow::ensure!(
        args.mode != Mode::Rate || (args.rate > 0.0 && args.seconds.is_some()),
        "--mode rate needs --rate above 0 and --seconds"
    );
    // --mode rate: each agent reports every `period`, agent i `period * i / n` into it.
    let period = Duration::from_secs_f64(n as f64 / args.rate.max(1e-9));
    let window = Duration::from_secs(args.seconds.unwrap_or(0));
    for (i, agent) in agents.into_iter().enumerate() {
        let delay = Duration::from_millis(args.ramp_ms * i as u64 / n.max(1));
        let mode = args.mode;
        let rounds = args.rounds;
        let start = start.clone();
        let opened = opened.clone();
        let offset = period.mul_f64(i as f64 / n.max(1) as f64);
        tasks.spawn(async move {
            match mode {
                Mode::Rate => {
                    // The connection first (its TLS handshake is not what is measured).
                    agent.report(&status(Phase::Ready, 1, vec![])).await;
                    if start.wait().await.is_leader() {
                        agent.figures.restart_window();
                    }
                    opened.wait().await;
                    let t0 = tokio::time::Instant::now();
                    agent.at_rate(t0, offset, period, t0 + window).await;
                }
                Mode::Boot => {
                    tokio::time::sleep(delay).await;
                    agent.boot().await;
                }
                Mode::Reports => {
                    start.wait().await;
                    agent.reports(rounds).await;
                }
            }
        });
    }
    let stdin = async {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "stats" => println!("{}", figures.json(started)),
                "" => {}
                other => eprintln!("shoal-agent-sim: unknown command {other:?} (known: stats)"),
            }
        }
    };
    let limit = async {
        match args.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    let all_done = async { while tasks.join_next().await.is_some() {} };
    match args.mode {
        // Their schedule ends them (the connections take some time to open first).
        Mode::Rate => all_done.await,
        // Reports end by themselves.
        Mode::Reports => {
            tokio::select! {
                () = all_done => {}
                () = limit => {}
            }
        }
        Mode::Boot => {
            tokio::select! {
                () = stdin => {}
                () = limit => {}
                () = all_done => {}
            }
        }
    }
    println!("{}", figures.json(started));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_nodes_their_leaving_and_the_liveness_of_a_real_plan_shape() {
        let plan = br#"{"schema":1,"cluster":"c","generation":2,"nodes":[{"id":"node-0","index":0},{"id":"node-1","index":1,"leaving":true,"drain":{"container":"agent","exec":["x"],"timeout_secs":60}}],"liveness":{"report_secs":5}}"#;
        let p: LightPlan = serde_json::from_slice(plan).expect("plan");
        assert_eq!(p.nodes.len(), 2);
        assert!(!p.nodes[0].leaving);
        assert!(p.nodes[1].leaving);
        assert_eq!(p.liveness.map(|l| l.report_secs), Some(5));
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
