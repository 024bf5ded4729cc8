//! Plan validation: every rule an agent checks before it changes its host.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::{
    BootReport, DrainPlan, NetworkMode, NodePlan, NodeStatus, Plan, ProbePlan, MAX_BOOT_STAGES,
    MAX_CLOUD_INIT_ERRORS, MAX_CONTAINERS_PER_NODE, MAX_DISKS, MAX_DRAIN_OUTPUT, MAX_DRAIN_SECS,
    MAX_FAILURE_THRESHOLD, MAX_NODES, MAX_PEER_DRAINS, MAX_RECIPES, MAX_RECIPE_BYTES,
    MAX_RECIPE_OUTPUT, MAX_RECIPE_SECS, MAX_REPORT_SECS, SCHEMA_VERSION,
};

/// Longest a probe may be given to pass: a day.
pub const MAX_PROBE_DEADLINE_MS: u64 = 86_400_000;
/// Longest gap between two tries of a probe: an hour.
const MAX_PROBE_INTERVAL_MS: u64 = 3_600_000;
/// Shortest gap between two tries of a probe.
const MIN_PROBE_INTERVAL_MS: u64 = 10;
/// Longest URL of an `http` probe.
const MAX_PROBE_URL: usize = 2048;
/// Most JSON conditions of an `http` probe.
const MAX_PROBE_JSON: usize = 32;

/// Why a plan (or status report) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Larger than the limit.
    #[error("plan document is over the {limit}-byte limit ({size} bytes or more)")]
    TooLarge {
        /// Size of the document, or (read as a stream, which stops at the limit) the
        /// bytes received before reading stopped.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON of the plan's shape.
    #[error("plan is not a valid document: {0}")]
    Malformed(String),
    /// Written for a schema this agent does not know.
    #[error("plan schema {found} is not supported (this agent reads schema {supported})")]
    Schema {
        /// The plan's schema.
        found: u32,
        /// The supported one.
        supported: u32,
    },
    /// A value breaks a rule.
    #[error("{field}: {problem}")]
    Invalid {
        /// Where, e.g. `nodes[1].containers[0].address`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl PlanError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> PlanError {
        PlanError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// An RFC 1123 label: 1 to 63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 name: dot-separated labels, at most 253 characters.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_usable_host(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

pub(crate) fn plan(p: &Plan) -> Result<(), PlanError> {
    if p.schema != SCHEMA_VERSION {
        return Err(PlanError::Schema {
            found: p.schema,
            supported: SCHEMA_VERSION,
        });
    }
    if !is_dns_label(&p.cluster) {
        return Err(PlanError::invalid(
            "cluster",
            format!("{:?} is not an RFC 1123 label", p.cluster),
        ));
    }
    if !is_dns_name(&p.domain) {
        return Err(PlanError::invalid(
            "domain",
            format!("{:?} is not an RFC 1123 name", p.domain),
        ));
    }
    let net = &p.network;
    let overlay = net.overlay;
    if overlay != overlay.trunc() {
        return Err(PlanError::invalid(
            "network.overlay",
            format!(
                "{overlay} has host bits set (the network is {})",
                overlay.trunc()
            ),
        ));
    }
    if !(8..=24).contains(&overlay.prefix_len()) {
        return Err(PlanError::invalid(
            "network.overlay",
            format!("{overlay}: the prefix length must be between /8 and /24"),
        ));
    }
    if net.vni == 0 || net.vni > 0x00ff_ffff {
        return Err(PlanError::invalid(
            "network.vni",
            format!("{} is outside 1..=16777215", net.vni),
        ));
    }
    if net.port == 0 {
        return Err(PlanError::invalid("network.port", "must not be 0"));
    }
    if let Some(mtu) = net.mtu {
        if !(576..=9000).contains(&mtu) {
            return Err(PlanError::invalid(
                "network.mtu",
                format!("{mtu} is outside 576..=9000"),
            ));
        }
    }
    if let Some(l) = &p.liveness {
        if !(1..=MAX_REPORT_SECS).contains(&l.report_secs) {
            return Err(PlanError::invalid(
                "liveness.report_secs",
                format!("{} is outside 1..={MAX_REPORT_SECS}", l.report_secs),
            ));
        }
    }
    if p.nodes.is_empty() {
        return Err(PlanError::invalid("nodes", "the plan lists no node"));
    }
    if p.nodes.len() > MAX_NODES {
        return Err(PlanError::invalid(
            "nodes",
            format!("{} nodes, over the limit of {MAX_NODES}", p.nodes.len()),
        ));
    }

    let mut ids = HashSet::new();
    let mut indexes = HashSet::new();
    let mut ips = HashSet::new();
    let mut slices: Vec<(usize, Ipv4Net)> = Vec::new();
    let mut hostnames = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, n) in p.nodes.iter().enumerate() {
        let f = |rest: &str| format!("nodes[{i}].{rest}");
        if !is_dns_label(&n.id) {
            return Err(PlanError::invalid(
                f("id"),
                format!("{:?} is not an RFC 1123 label", n.id),
            ));
        }
        if !ids.insert(n.id.as_str()) {
            return Err(PlanError::invalid(
                f("id"),
                format!("{:?} appears twice", n.id),
            ));
        }
        if !indexes.insert(n.index) {
            return Err(PlanError::invalid(
                f("index"),
                format!("{} appears twice", n.index),
            ));
        }
        if !ips.insert(n.private_ip) {
            return Err(PlanError::invalid(
                f("private_ip"),
                format!("{} is used by two nodes", n.private_ip),
            ));
        }
        if n.private_ip.is_unspecified()
            || n.private_ip.is_broadcast()
            || n.private_ip.is_multicast()
            || n.private_ip.is_loopback()
        {
            return Err(PlanError::invalid(
                f("private_ip"),
                format!("{} is not a unicast host address", n.private_ip),
            ));
        }
        if overlay.contains(&n.private_ip) {
            return Err(PlanError::invalid(
                f("private_ip"),
                format!(
                    "{} lies inside the overlay {overlay}: the underlay and the overlay must not overlap",
                    n.private_ip
                ),
            ));
        }
        if n.slice != n.slice.trunc() {
            return Err(PlanError::invalid(
                f("slice"),
                format!("{} has host bits set", n.slice),
            ));
        }
        if !overlay.contains(&n.slice) || n.slice.prefix_len() < overlay.prefix_len() {
            return Err(PlanError::invalid(
                f("slice"),
                format!("{} is not inside the overlay {overlay}", n.slice),
            ));
        }
        if n.slice.prefix_len() > 29 {
            return Err(PlanError::invalid(
                f("slice"),
                format!("{} is too small (at most /29)", n.slice),
            ));
        }
        if let Some((j, other)) = slices
            .iter()
            .find(|(_, s)| s.contains(&n.slice) || n.slice.contains(s))
        {
            return Err(PlanError::invalid(
                f("slice"),
                format!("{} overlaps {other} of nodes[{j}]", n.slice),
            ));
        }
        slices.push((i, n.slice));
        if !is_usable_host(&n.slice, n.gateway) {
            return Err(PlanError::invalid(
                f("gateway"),
                format!(
                    "{} is not a host address of the slice {}",
                    n.gateway, n.slice
                ),
            ));
        }
        if let Some(id) = &n.instance_id {
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                return Err(PlanError::invalid(
                    f("instance_id"),
                    "empty, too long or not printable",
                ));
            }
        }
        if n.containers.len() > MAX_CONTAINERS_PER_NODE {
            return Err(PlanError::invalid(
                f("containers"),
                format!(
                    "{} containers, over the limit of {MAX_CONTAINERS_PER_NODE}",
                    n.containers.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut host_ports = HashSet::new();
        for (k, c) in n.containers.iter().enumerate() {
            let g = |rest: &str| format!("nodes[{i}].containers[{k}].{rest}");
            if !is_dns_label(&c.name) {
                return Err(PlanError::invalid(
                    g("name"),
                    format!("{:?} is not an RFC 1123 label", c.name),
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(PlanError::invalid(
                    g("name"),
                    format!("{:?} appears twice on node {}", c.name, n.id),
                ));
            }
            if !is_dns_name(&c.hostname) {
                return Err(PlanError::invalid(
                    g("hostname"),
                    format!("{:?} is not an RFC 1123 name", c.hostname),
                ));
            }
            if !hostnames.insert(c.hostname.as_str()) {
                return Err(PlanError::invalid(
                    g("hostname"),
                    format!("{:?} appears twice in the cluster", c.hostname),
                ));
            }
            if c.image.is_empty()
                || c.image.len() > 512
                || c.image
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control())
            {
                return Err(PlanError::invalid(
                    g("image"),
                    format!("{:?} is not an image reference", c.image),
                ));
            }
            match (c.network, c.address) {
                (NetworkMode::Overlay, None) => {
                    return Err(PlanError::invalid(
                        g("address"),
                        "an overlay container needs an address",
                    ))
                }
                (NetworkMode::Overlay, Some(ip)) => {
                    if !is_usable_host(&n.slice, ip) {
                        return Err(PlanError::invalid(
                            g("address"),
                            format!("{ip} is outside the node's slice {}", n.slice),
                        ));
                    }
                    if ip == n.gateway {
                        return Err(PlanError::invalid(
                            g("address"),
                            format!("{ip} is the node's gateway"),
                        ));
                    }
                    if !addresses.insert(ip) {
                        return Err(PlanError::invalid(
                            g("address"),
                            format!("{ip} is used twice"),
                        ));
                    }
                }
                (NetworkMode::Host, Some(ip)) => {
                    return Err(PlanError::invalid(
                        g("address"),
                        format!("{ip} given for a host-network container"),
                    ))
                }
                (NetworkMode::Host, None) => {}
            }
            if c.command.len() > 256 || c.command.iter().any(|a| a.contains('\0')) {
                return Err(PlanError::invalid(
                    g("command"),
                    "too long or holds a NUL byte",
                ));
            }
            for (key, value) in &c.env {
                if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0')
                {
                    return Err(PlanError::invalid(
                        g("env"),
                        format!("{key:?} is not a valid variable"),
                    ));
                }
            }
            for v in &c.volumes {
                for path in [&v.source, &v.target] {
                    if !path.starts_with('/')
                        || path.contains('\0')
                        || path.contains(':')
                        || path.split('/').any(|part| part == "..")
                    {
                        return Err(PlanError::invalid(
                            g("volumes"),
                            format!("{path:?} must be an absolute path without '..' or ':'"),
                        ));
                    }
                }
            }
            if let Some(probe) = &c.ready {
                probe.validate(&g("ready"))?;
            }
            for port in &c.ports {
                let host = port.host.unwrap_or(port.container);
                if port.container == 0 || host == 0 {
                    return Err(PlanError::invalid(g("ports"), "port 0"));
                }
                if !host_ports.insert((host, port.protocol)) {
                    return Err(PlanError::invalid(
                        g("ports"),
                        format!(
                            "host port {host}/{} is published twice on node {}",
                            port.protocol.as_str(),
                            n.id
                        ),
                    ));
                }
            }
        }
        drain(i, n)?;
        peer_drains(i, n, p)?;
        recipes(i, n)?;
        disks(i, n)?;
    }
    Ok(())
}

/// A node's data disks: a bounded number, each named once by an id of a known kind.
fn disks(i: usize, n: &NodePlan) -> Result<(), PlanError> {
    if n.disks.len() > MAX_DISKS {
        return Err(PlanError::invalid(
            format!("nodes[{i}].disks"),
            format!("{} disks, over the limit of {MAX_DISKS}", n.disks.len()),
        ));
    }
    let mut ids = HashSet::new();
    for (j, d) in n.disks.iter().enumerate() {
        let f = |rest: &str| format!("nodes[{i}].disks[{j}].{rest}");
        let known =
            d.id.strip_prefix("loop:")
                .is_some_and(|p| p.starts_with('/'))
                || d.id.strip_prefix("/dev/").is_some_and(is_dns_label)
                || d.id
                    .strip_prefix("lun:")
                    .is_some_and(|l| l.parse::<u8>().is_ok());
        if !known || d.id.len() > 1024 || !printable(&d.id) || d.id.contains("/../") {
            return Err(PlanError::invalid(
                f("id"),
                format!("{:?} is not loop:/PATH, /dev/NAME or lun:N", d.id),
            ));
        }
        if !ids.insert(d.id.as_str()) {
            return Err(PlanError::invalid(
                f("id"),
                format!("{:?} appears twice on node {}", d.id, n.id),
            ));
        }
        if d.size_gb == 0 {
            return Err(PlanError::invalid(f("size_gb"), "must be at least 1"));
        }
    }
    for (j, c) in n.containers.iter().enumerate() {
        if let Some(dir) = &c.data_disks {
            if !dir.starts_with('/') || dir.contains("..") || !printable(dir) || dir.contains(':') {
                return Err(PlanError::invalid(
                    format!("nodes[{i}].containers[{j}].data_disks"),
                    format!("{dir:?} is not an absolute path"),
                ));
            }
        }
    }
    Ok(())
}

/// A node's recipes: a bounded number, each with a unique name, a script of bounded
/// size and a bounded timeout.
fn recipes(i: usize, n: &NodePlan) -> Result<(), PlanError> {
    if n.recipes.len() > MAX_RECIPES {
        return Err(PlanError::invalid(
            format!("nodes[{i}].recipes"),
            format!(
                "{} recipes, over the limit of {MAX_RECIPES}",
                n.recipes.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    for (j, r) in n.recipes.iter().enumerate() {
        let f = |rest: &str| format!("nodes[{i}].recipes[{j}].{rest}");
        if !is_dns_label(&r.name) {
            return Err(PlanError::invalid(
                f("name"),
                format!("{:?} is not an RFC 1123 label", r.name),
            ));
        }
        if !names.insert(r.name.as_str()) {
            return Err(PlanError::invalid(
                f("name"),
                format!("{:?} appears twice on node {}", r.name, n.id),
            ));
        }
        if r.script.trim().is_empty() || r.script.contains('\0') {
            return Err(PlanError::invalid(
                f("script"),
                "empty, or holds a NUL byte",
            ));
        }
        if r.script.len() > MAX_RECIPE_BYTES {
            return Err(PlanError::invalid(
                f("script"),
                format!(
                    "{} bytes, over the limit of {MAX_RECIPE_BYTES}",
                    r.script.len()
                ),
            ));
        }
        if !(1..=MAX_RECIPE_SECS).contains(&r.timeout_secs) {
            return Err(PlanError::invalid(
                f("timeout_secs"),
                format!("{} is outside 1..={MAX_RECIPE_SECS}", r.timeout_secs),
            ));
        }
    }
    Ok(())
}

/// A drain hook names a container of its node and a command, with a bounded timeout,
/// and only a leaving node has one.
fn drain(i: usize, n: &NodePlan) -> Result<(), PlanError> {
    let Some(d) = &n.drain else {
        return Ok(());
    };
    if !n.leaving {
        return Err(PlanError::invalid(
            format!("nodes[{i}].drain"),
            "only a leaving node has a drain hook",
        ));
    }
    hook(&format!("nodes[{i}].drain"), d, n)
}

/// A node runs drain hooks only for other nodes of the plan that are leaving, each
/// once, in a container of its own.
fn peer_drains(i: usize, n: &NodePlan, p: &Plan) -> Result<(), PlanError> {
    if n.peer_drains.len() > MAX_PEER_DRAINS {
        return Err(PlanError::invalid(
            format!("nodes[{i}].peer_drains"),
            format!("more than {MAX_PEER_DRAINS} entries"),
        ));
    }
    let mut seen = HashSet::new();
    for (j, d) in n.peer_drains.iter().enumerate() {
        let field = format!("nodes[{i}].peer_drains[{j}]");
        if d.node == n.id || !p.nodes.iter().any(|m| m.id == d.node && m.leaving) {
            return Err(PlanError::invalid(
                format!("{field}.node"),
                format!(
                    "{:?} is not another node of the plan marked leaving",
                    d.node
                ),
            ));
        }
        if !seen.insert(d.node.as_str()) {
            return Err(PlanError::invalid(
                format!("{field}.node"),
                format!("{:?} is drained twice by node {}", d.node, n.id),
            ));
        }
        hook(&field, &d.hook, n)?;
    }
    Ok(())
}

/// A hook runs in a container of node `n` (the node that runs it), with a command and a
/// bounded timeout.
fn hook(field: &str, d: &DrainPlan, n: &NodePlan) -> Result<(), PlanError> {
    let f = |rest: &str| format!("{field}.{rest}");
    if !n.containers.iter().any(|c| c.name == d.container) {
        return Err(PlanError::invalid(
            f("container"),
            format!("{:?} is not a container of node {}", d.container, n.id),
        ));
    }
    if d.exec.is_empty() || d.exec.len() > 256 || d.exec.iter().any(|a| a.contains('\0')) {
        return Err(PlanError::invalid(
            f("exec"),
            "empty, too long, or holds a NUL byte",
        ));
    }
    if !(1..=MAX_DRAIN_SECS).contains(&d.timeout_secs) {
        return Err(PlanError::invalid(
            f("timeout_secs"),
            format!("{} is outside 1..={MAX_DRAIN_SECS}", d.timeout_secs),
        ));
    }
    Ok(())
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

pub(crate) fn probe(p: &ProbePlan, field: &str) -> Result<(), PlanError> {
    let kinds = [p.tcp.is_some(), p.http.is_some(), p.exec.is_some()]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds != 1 {
        return Err(PlanError::invalid(
            field,
            format!("a probe needs exactly one of tcp, http, exec ({kinds} given)"),
        ));
    }
    if p.tcp == Some(0) {
        return Err(PlanError::invalid(format!("{field}.tcp"), "port 0"));
    }
    if let Some(url) = &p.http {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            PlanError::invalid(
                format!("{field}.http"),
                format!("{url:?} is not an http:// URL (https is not supported for probes)"),
            )
        })?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty()
            || authority.contains('@')
            || url.len() > MAX_PROBE_URL
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(PlanError::invalid(
                format!("{field}.http"),
                format!(
                    "{url:?}: a URL needs a host, at most {MAX_PROBE_URL} characters, no spaces or credentials"
                ),
            ));
        }
    }
    if let Some(cmd) = &p.exec {
        if cmd.first().is_none_or(|a| a.is_empty()) {
            return Err(PlanError::invalid(
                format!("{field}.exec"),
                "the command is empty",
            ));
        }
        if cmd.len() > 256
            || cmd.iter().any(|a| a.contains('\0'))
            || cmd.iter().map(String::len).sum::<usize>() > 65_536
        {
            return Err(PlanError::invalid(
                format!("{field}.exec"),
                "too long or holds a NUL byte",
            ));
        }
    }
    if p.http.is_none() && (!p.json.is_empty() || p.body.is_some()) {
        return Err(PlanError::invalid(
            field,
            "json and body conditions apply to http probes only",
        ));
    }
    if p.json.len() > MAX_PROBE_JSON {
        return Err(PlanError::invalid(
            format!("{field}.json"),
            format!("more than {MAX_PROBE_JSON} conditions"),
        ));
    }
    for (pointer, value) in &p.json {
        if !(pointer.is_empty() || pointer.starts_with('/'))
            || pointer.len() > 512
            || value.len() > 512
            || !printable(pointer)
            || !printable(value)
        {
            return Err(PlanError::invalid(
                format!("{field}.json"),
                format!(
                    "{pointer:?}: keys must be JSON pointers (\"\" or starting with '/'), keys and values printable and at most 512 bytes"
                ),
            ));
        }
    }
    if let Some(body) = &p.body {
        if body.is_empty() || body.len() > 1024 || body.contains('\0') {
            return Err(PlanError::invalid(
                format!("{field}.body"),
                "must be 1 to 1024 bytes without NUL",
            ));
        }
    }
    if p.deadline_ms == 0 || p.deadline_ms > MAX_PROBE_DEADLINE_MS {
        return Err(PlanError::invalid(
            format!("{field}.deadline_ms"),
            format!("{} is outside 1..={MAX_PROBE_DEADLINE_MS}", p.deadline_ms),
        ));
    }
    if !(MIN_PROBE_INTERVAL_MS..=MAX_PROBE_INTERVAL_MS).contains(&p.interval_ms) {
        return Err(PlanError::invalid(
            format!("{field}.interval_ms"),
            format!(
                "{} is outside {MIN_PROBE_INTERVAL_MS}..={MAX_PROBE_INTERVAL_MS}",
                p.interval_ms
            ),
        ));
    }
    if let Some(ms) = p.live_interval_ms {
        if ms != 0 && !(MIN_PROBE_INTERVAL_MS..=MAX_PROBE_INTERVAL_MS).contains(&ms) {
            return Err(PlanError::invalid(
                format!("{field}.live_interval_ms"),
                format!(
                    "{ms} is neither 0 (not checked once ready) nor within {MIN_PROBE_INTERVAL_MS}..={MAX_PROBE_INTERVAL_MS}"
                ),
            ));
        }
    }
    if let Some(n) = p.failure_threshold {
        if !(1..=MAX_FAILURE_THRESHOLD).contains(&n) {
            return Err(PlanError::invalid(
                format!("{field}.failure_threshold"),
                format!("{n} is outside 1..={MAX_FAILURE_THRESHOLD}"),
            ));
        }
    }
    if p.timeout_ms == 0 || p.timeout_ms > p.deadline_ms {
        return Err(PlanError::invalid(
            format!("{field}.timeout_ms"),
            format!(
                "{} must be at least 1 and at most the deadline ({} ms)",
                p.timeout_ms, p.deadline_ms
            ),
        ));
    }
    Ok(())
}

pub(crate) fn status(s: &NodeStatus) -> Result<(), PlanError> {
    if s.timings.len() > 64 {
        return Err(PlanError::invalid("timings", "more than 64 entries"));
    }
    if s.containers.len() > MAX_CONTAINERS_PER_NODE {
        return Err(PlanError::invalid("containers", "too many entries"));
    }
    if s.agent_version.len() > 64 {
        return Err(PlanError::invalid("agent_version", "too long"));
    }
    if let Some(e) = &s.error {
        if e.reason.len() > 64 || !is_dns_label(&e.reason) {
            return Err(PlanError::invalid(
                "error.reason",
                "not a reason code (lowercase letters, digits and '-')",
            ));
        }
        if e.message.len() > 4096 {
            return Err(PlanError::invalid(
                "error.message",
                "longer than 4096 bytes",
            ));
        }
    }
    for c in &s.containers {
        if c.name.len() > 253 || c.hostname.len() > 253 || c.state.len() > 64 {
            return Err(PlanError::invalid("containers", "a field is too long"));
        }
    }
    if let Some(b) = &s.boot {
        boot(b)?;
    }
    if s.peer_drains.len() > MAX_PEER_DRAINS {
        return Err(PlanError::invalid(
            "peer_drains",
            format!("more than {MAX_PEER_DRAINS} entries"),
        ));
    }
    for d in &s.peer_drains {
        if !is_dns_label(&d.node) || d.message.len() > MAX_DRAIN_OUTPUT + 256 {
            return Err(PlanError::invalid(
                "peer_drains",
                "a node that is no node id, or a message too long",
            ));
        }
    }
    if s.recipes.len() > MAX_RECIPES {
        return Err(PlanError::invalid(
            "recipes",
            format!("more than {MAX_RECIPES} entries"),
        ));
    }
    for r in &s.recipes {
        if !is_dns_label(&r.name) || r.output.len() > MAX_RECIPE_OUTPUT + 256 {
            return Err(PlanError::invalid(
                "recipes",
                "a name that is no RFC 1123 label, or an output too long",
            ));
        }
    }
    if s.disks.len() > MAX_DISKS
        || s.disks.iter().any(|d| {
            d.id.len() > 1024
                || d.device.len() > 256
                || d.mount.len() > 1024
                || d.fs_type.len() > 32
        })
    {
        return Err(PlanError::invalid(
            "disks",
            "too many entries, or a field too long",
        ));
    }
    Ok(())
}

/// A name in a boot report: 1 to 64 printable ASCII characters of the kind unit and
/// stage names use, nothing a terminal or an SVG would read as markup or control.
fn is_boot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

fn boot(b: &BootReport) -> Result<(), PlanError> {
    if b.stages.len() > MAX_BOOT_STAGES {
        return Err(PlanError::invalid(
            "boot.stages",
            format!("more than {MAX_BOOT_STAGES} entries"),
        ));
    }
    for (i, st) in b.stages.iter().enumerate() {
        if !is_boot_name(&st.source) || !is_boot_name(&st.name) {
            return Err(PlanError::invalid(
                format!("boot.stages[{i}]"),
                "source and name must be 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.', ':', '@'",
            ));
        }
        if st.started_ms < b.kernel_start_ms {
            return Err(PlanError::invalid(
                format!("boot.stages[{i}].started_ms"),
                "before the kernel started",
            ));
        }
        if st
            .started_ms
            .checked_add(st.duration_ms.unwrap_or(0))
            .is_none()
        {
            return Err(PlanError::invalid(
                format!("boot.stages[{i}].duration_ms"),
                "out of range",
            ));
        }
    }
    if let Some(c) = &b.cloud_init {
        if !is_boot_name(&c.status) {
            return Err(PlanError::invalid(
                "boot.cloud_init.status",
                "not a status word",
            ));
        }
        if c.datasource.as_ref().is_some_and(|d| d.len() > 256) {
            return Err(PlanError::invalid(
                "boot.cloud_init.datasource",
                "longer than 256 bytes",
            ));
        }
        if c.errors.len() > MAX_CLOUD_INIT_ERRORS {
            return Err(PlanError::invalid(
                "boot.cloud_init.errors",
                format!("more than {MAX_CLOUD_INIT_ERRORS} entries"),
            ));
        }
        if c.errors.iter().any(|e| e.len() > 1024) {
            return Err(PlanError::invalid(
                "boot.cloud_init.errors",
                "an entry is longer than 1024 bytes",
            ));
        }
    }
    if b.agent_unit.as_ref().is_some_and(|u| !is_boot_name(u)) {
        return Err(PlanError::invalid("boot.agent_unit", "not a unit name"));
    }
    Ok(())
}
