//! `GET /metrics`: the coordinator's numbers in Prometheus' text exposition format
//! (version 0.0.4), written by hand: a few counters and histograms do not justify a
//! metrics framework.
//!
//! Served on the operator listener behind the operator token like every other route
//! (a scraper sends `Authorization: Bearer <token>`; Prometheus reads it with
//! `authorization: {credentials_file: <state-dir>/token}`), because `--api-listen` may
//! be moved off loopback and cluster names are an operator's business.
//!
//! - Gauges read from the store at scrape time: clusters by state, nodes by phase
//!   (of clusters not DELETED), metadata long-polls and requests in flight.
//! - Counters and histograms kept since the process started: provider calls (count,
//!   errors, latency) by provider and operation, metadata requests by route and status
//!   code, time from request to AVAILABLE.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use shoal_protocol::Phase;

use crate::store::{ClusterState, StoreStats};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the provider-call latency buckets: a local VM is
/// milliseconds, a cloud call up to minutes with its retries.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Upper bounds (seconds) of the time-to-AVAILABLE buckets: seconds locally, minutes on
/// a cloud.
pub const AVAILABLE_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; the last is `+Inf`).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn write(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format_float(*b));
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            sample(out, &format!("{name}_bucket"), &l, cumulative as f64);
        }
        sample(out, &format!("{name}_sum"), labels, self.sum);
        sample(out, &format!("{name}_count"), labels, self.count as f64);
    }
}

#[derive(Debug, Clone)]
struct CallStats {
    calls: u64,
    errors: u64,
    latency: Histogram,
}

/// The coordinator's counters, shared by the engine and both listeners.
#[derive(Debug)]
pub struct Metrics {
    started_unix: f64,
    provider_calls: Mutex<BTreeMap<(String, String), CallStats>>,
    metadata_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    metadata_in_flight: AtomicI64,
    time_to_available: Mutex<Histogram>,
    changes: [AtomicI64; 2],
    nodes_lost: AtomicI64,
    metadata_connections: Arc<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            provider_calls: Mutex::new(BTreeMap::new()),
            metadata_requests: Mutex::new(BTreeMap::new()),
            metadata_in_flight: AtomicI64::new(0),
            time_to_available: Mutex::new(Histogram::new(AVAILABLE_BUCKETS)),
            changes: [AtomicI64::new(0), AtomicI64::new(0)],
            nodes_lost: AtomicI64::new(0),
            metadata_connections: Arc::default(),
        }
    }
}

impl Metrics {
    /// The counter the metadata listener adds each connection it serves to
    /// ([`crate::server::listener::serve_metadata`]).
    pub fn metadata_connections(&self) -> Arc<AtomicU64> {
        self.metadata_connections.clone()
    }

    /// Runs one provider call, counting it, its failure and its duration.
    pub async fn provider_call<T, E>(
        &self,
        provider: &str,
        operation: &str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = call.await;
        self.record_provider_call(
            provider,
            operation,
            start.elapsed().as_secs_f64(),
            result.is_err(),
        );
        result
    }

    /// Records a provider call that took `seconds`.
    pub fn record_provider_call(&self, provider: &str, operation: &str, seconds: f64, err: bool) {
        if let Ok(mut m) = self.provider_calls.lock() {
            let s = m
                .entry((provider.to_string(), operation.to_string()))
                .or_insert_with(|| CallStats {
                    calls: 0,
                    errors: 0,
                    latency: Histogram::new(LATENCY_BUCKETS),
                });
            s.calls += 1;
            s.errors += u64::from(err);
            s.latency.observe(seconds);
        }
    }

    /// Records that a cluster became AVAILABLE `seconds` after it was requested.
    pub fn observe_available(&self, seconds: f64) {
        if let Ok(mut h) = self.time_to_available.lock() {
            h.observe(seconds);
        }
    }

    /// Counts a change (scale, repair) that ended, done or failed.
    pub fn record_change(&self, done: bool) {
        self.changes[usize::from(!done)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a node marked lost.
    pub fn record_lost(&self) {
        self.nodes_lost.fetch_add(1, Ordering::Relaxed);
    }

    fn record_metadata(&self, route: &'static str, code: u16) {
        if let Ok(mut m) = self.metadata_requests.lock() {
            *m.entry((route, code)).or_insert(0) += 1;
        }
    }

    /// Renders every metric; `snap` holds the gauges read at scrape time.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::with_capacity(8 << 10);
        header(
            &mut out,
            "shoal_build_info",
            "gauge",
            "The coordinator's version.",
        );
        sample(
            &mut out,
            "shoal_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        header(
            &mut out,
            "shoal_process_start_time_seconds",
            "gauge",
            "When the coordinator started (Unix time).",
        );
        sample(
            &mut out,
            "shoal_process_start_time_seconds",
            &[],
            self.started_unix,
        );

        // Clusters by state, nodes by phase: every state and phase is listed, zeros
        // included, so a query never sees a series appear from nothing.
        let mut by_state: BTreeMap<&'static str, u64> =
            ClusterState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for (state, n) in &snap.clusters {
            *by_state.entry(state.as_str()).or_insert(0) += n;
        }
        let mut by_phase: BTreeMap<&'static str, u64> =
            ALL_PHASES.iter().map(|p| (p.as_str(), 0)).collect();
        for (phase, n) in &snap.nodes {
            *by_phase.entry(phase.as_str()).or_insert(0) += n;
        }
        header(
            &mut out,
            "shoal_clusters",
            "gauge",
            "Clusters in the store, by state.",
        );
        for (state, n) in &by_state {
            sample(&mut out, "shoal_clusters", &[("state", state)], *n as f64);
        }
        header(
            &mut out,
            "shoal_nodes",
            "gauge",
            "Nodes of clusters not DELETED, by phase.",
        );
        for (phase, n) in &by_phase {
            sample(&mut out, "shoal_nodes", &[("phase", phase)], *n as f64);
        }

        let calls = self
            .provider_calls
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        header(
            &mut out,
            "shoal_provider_calls_total",
            "counter",
            "Provider calls (create_nodes, describe_nodes, delete_cluster), by provider and operation.",
        );
        for ((p, op), s) in &calls {
            sample(
                &mut out,
                "shoal_provider_calls_total",
                &[("provider", p), ("operation", op)],
                s.calls as f64,
            );
        }
        header(
            &mut out,
            "shoal_provider_errors_total",
            "counter",
            "Provider calls that failed (after the provider's own retries).",
        );
        for ((p, op), s) in &calls {
            sample(
                &mut out,
                "shoal_provider_errors_total",
                &[("provider", p), ("operation", op)],
                s.errors as f64,
            );
        }
        header(
            &mut out,
            "shoal_provider_call_duration_seconds",
            "histogram",
            "How long provider calls took, retries included.",
        );
        for ((p, op), s) in &calls {
            s.latency.write(
                &mut out,
                "shoal_provider_call_duration_seconds",
                &[("provider", p), ("operation", op)],
            );
        }

        let md = self
            .metadata_requests
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        header(
            &mut out,
            "shoal_metadata_requests_total",
            "counter",
            "Metadata API requests answered, by route (plan, status, other) and status code.",
        );
        for ((route, code), n) in &md {
            sample(
                &mut out,
                "shoal_metadata_requests_total",
                &[("route", route), ("code", &code.to_string())],
                *n as f64,
            );
        }
        header(
            &mut out,
            "shoal_metadata_connections_total",
            "counter",
            "Connections the metadata listener served (with TLS: handshakes completed). Resident agents keep theirs: a rate near the agents' report rate means they do not.",
        );
        sample(
            &mut out,
            "shoal_metadata_connections_total",
            &[],
            self.metadata_connections.load(Ordering::Relaxed) as f64,
        );
        header(
            &mut out,
            "shoal_metadata_requests_in_flight",
            "gauge",
            "Metadata API requests being answered now (held long-polls included).",
        );
        sample(
            &mut out,
            "shoal_metadata_requests_in_flight",
            &[],
            self.metadata_in_flight.load(Ordering::Relaxed).max(0) as f64,
        );
        header(
            &mut out,
            "shoal_metadata_long_polls_in_flight",
            "gauge",
            "Plan requests waiting for a newer plan generation.",
        );
        sample(
            &mut out,
            "shoal_metadata_long_polls_in_flight",
            &[],
            snap.long_polls as f64,
        );
        header(
            &mut out,
            "shoal_store_commits_total",
            "counter",
            "Transactions the state store committed (each one durable write).",
        );
        sample(
            &mut out,
            "shoal_store_commits_total",
            &[],
            snap.store.commits as f64,
        );
        header(
            &mut out,
            "shoal_store_writes_total",
            "counter",
            "Writes the state store committed; writes arriving together share a commit.",
        );
        sample(
            &mut out,
            "shoal_store_writes_total",
            &[],
            snap.store.writes as f64,
        );

        header(
            &mut out,
            "shoal_changes_total",
            "counter",
            "Changes of running clusters (scales, repairs) that ended, by outcome.",
        );
        for (i, outcome) in ["done", "failed"].iter().enumerate() {
            sample(
                &mut out,
                "shoal_changes_total",
                &[("outcome", outcome)],
                self.changes[i].load(Ordering::Relaxed).max(0) as f64,
            );
        }
        header(
            &mut out,
            "shoal_nodes_lost_total",
            "counter",
            "Nodes marked lost: their agent was silent for longer than the liveness timeout.",
        );
        sample(
            &mut out,
            "shoal_nodes_lost_total",
            &[],
            self.nodes_lost.load(Ordering::Relaxed).max(0) as f64,
        );

        let hist = self
            .time_to_available
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| Histogram::new(AVAILABLE_BUCKETS));
        header(
            &mut out,
            "shoal_cluster_time_to_available_seconds",
            "histogram",
            "Seconds from a cluster's request to AVAILABLE (every node ready).",
        );
        hist.write(&mut out, "shoal_cluster_time_to_available_seconds", &[]);
        out
    }
}

/// The gauges read at scrape time, which the engine gathers from the store and the
/// plan hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Clusters by state.
    pub clusters: BTreeMap<ClusterState, u64>,
    /// Nodes of clusters not DELETED, by phase.
    pub nodes: BTreeMap<Phase, u64>,
    /// Plan requests waiting for a newer generation.
    pub long_polls: usize,
    /// The store's commits and writes.
    pub store: StoreStats,
}

impl Snapshot {
    /// Counts one cluster in `state`.
    pub fn count_cluster(&mut self, state: ClusterState) {
        *self.clusters.entry(state).or_insert(0) += 1;
    }

    /// Counts one node in `phase`.
    pub fn count_node(&mut self, phase: Phase) {
        *self.nodes.entry(phase).or_insert(0) += 1;
    }
}

const ALL_PHASES: &[Phase] = &Phase::ALL;

/// Axum middleware for the metadata router: counts requests by route and status code
/// and keeps the in-flight gauge.
pub async fn track_metadata(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = shoal_protocol::contract::route_of(req.uri().path());
    m.metadata_in_flight.fetch_add(1, Ordering::Relaxed);
    // Decrements even if the request is dropped mid-way (a client hanging up on a
    // long-poll cancels this future).
    let _guard = InFlight(&m.metadata_in_flight);
    let resp = next.run(req).await;
    m.record_metadata(route, resp.status().as_u16());
    resp
}

struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_float(value));
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty coordinator's snapshot: no cluster, no node, no long-poll.
    fn empty() -> Snapshot {
        Snapshot::default()
    }

    /// Every line is a comment (`# HELP`/`# TYPE`) or `name{labels} value` with a value
    /// that parses; every sample's family was declared before it.
    fn check_format(text: &str) -> BTreeMap<String, f64> {
        let mut declared = std::collections::BTreeSet::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().expect("name");
                let kind = it.next().expect("kind");
                assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
                declared.insert(name.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let name = series.split('{').next().expect("name");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "{name} not declared: {line}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            samples.insert(series.to_string(), v);
        }
        samples
    }

    #[test]
    fn an_empty_coordinator_lists_every_state_and_phase_at_zero() {
        let text = Metrics::default().render(&empty());
        let s = check_format(&text);
        assert_eq!(s["shoal_clusters{state=\"AVAILABLE\"}"], 0.0);
        assert_eq!(s["shoal_clusters{state=\"UPDATING\"}"], 0.0);
        assert_eq!(s["shoal_clusters{state=\"DEGRADED\"}"], 0.0);
        assert_eq!(s["shoal_nodes{phase=\"lost\"}"], 0.0);
        assert_eq!(s["shoal_changes_total{outcome=\"failed\"}"], 0.0);
        assert_eq!(s["shoal_nodes_lost_total"], 0.0);
        assert_eq!(s["shoal_nodes{phase=\"ready\"}"], 0.0);
        assert_eq!(s["shoal_nodes{phase=\"vm-running\"}"], 0.0);
        assert_eq!(s["shoal_metadata_long_polls_in_flight"], 0.0);
        assert_eq!(
            s["shoal_cluster_time_to_available_seconds_bucket{le=\"+Inf\"}"],
            0.0
        );
    }

    #[test]
    fn provider_calls_and_histograms_are_cumulative() {
        let m = Metrics::default();
        m.record_provider_call("aws", "create_nodes", 0.3, false);
        m.record_provider_call("aws", "create_nodes", 7.0, true);
        m.record_provider_call("local", "delete_cluster", 0.001, false);
        m.observe_available(2.5);
        m.observe_available(4000.0);
        let s = check_format(&m.render(&empty()));
        let l = "provider=\"aws\",operation=\"create_nodes\"";
        assert_eq!(s[&format!("shoal_provider_calls_total{{{l}}}")], 2.0);
        assert_eq!(s[&format!("shoal_provider_errors_total{{{l}}}")], 1.0);
        assert_eq!(
            s[&format!("shoal_provider_call_duration_seconds_bucket{{{l},le=\"0.25\"}}")],
            0.0
        );
        assert_eq!(
            s[&format!("shoal_provider_call_duration_seconds_bucket{{{l},le=\"0.5\"}}")],
            1.0
        );
        assert_eq!(
            s[&format!("shoal_provider_call_duration_seconds_bucket{{{l},le=\"10\"}}")],
            2.0
        );
        assert_eq!(
            s[&format!("shoal_provider_call_duration_seconds_sum{{{l}}}")],
            7.3
        );
        assert_eq!(
            s["shoal_cluster_time_to_available_seconds_bucket{le=\"3\"}"],
            1.0
        );
        assert_eq!(
            s["shoal_cluster_time_to_available_seconds_bucket{le=\"1800\"}"],
            1.0
        );
        assert_eq!(
            s["shoal_cluster_time_to_available_seconds_bucket{le=\"+Inf\"}"],
            2.0
        );
        assert_eq!(s["shoal_cluster_time_to_available_seconds_count"], 2.0);
    }

    #[tokio::test]
    async fn provider_call_counts_errors_of_the_wrapped_future() {
        let m = Metrics::default();
        let ok: Result<u8, String> = m
            .provider_call("local", "describe_nodes", async { Ok(1) })
            .await;
        assert_eq!(ok, Ok(1));
        let err: Result<u8, String> = m
            .provider_call("local", "describe_nodes", async { Err("no".into()) })
            .await;
        assert!(err.is_err());
        let s = check_format(&m.render(&empty()));
        let l = "provider=\"local\",operation=\"describe_nodes\"";
        assert_eq!(s[&format!("shoal_provider_calls_total{{{l}}}")], 2.0);
        assert_eq!(s[&format!("shoal_provider_errors_total{{{l}}}")], 1.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "x", &[("a", "q\"b\\n\nz")], 1.5);
        assert_eq!(out, "x{a=\"q\\\"b\\\\n\\nz\"} 1.5\n");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(3.0), "3");
    }
}
