//! Blueprints: what a cluster runs, in TOML. Host groups take nodes (a fixed count, or
//! "the rest"); each group lists its containers. Environment values and readiness
//! probes may refer to the plan: `${fqdn:NAME}` is the FQDN of the first container
//! called NAME (lowest node index), `${count:NAME}` how many containers of that name
//! the cluster runs, `${cluster}` and `${domain}` what they say. A drain hook's command
//! may also name the leaving node's own containers: `${leaving:NAME}` is the FQDN of
//! its container NAME.

use std::collections::{BTreeMap, HashSet};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use shoal_protocol::{
    is_dns_label, is_dns_name, NetworkMode, PortPlan, ProbePlan, RecipePlan, RecipeWhen, MAX_DISKS,
    MAX_DRAIN_SECS, MAX_NODES, MAX_RECIPES, MAX_RECIPE_BYTES, MAX_RECIPE_SECS,
};

/// The default DNS domain of container names.
pub const DEFAULT_DOMAIN: &str = "shoal.internal";

/// Blueprints shipped with Shoal, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("demo", include_str!("../blueprints/demo.toml")),
    ("hadoop", include_str!("../blueprints/hadoop.toml")),
    ("ambari", include_str!("../blueprints/ambari.toml")),
];

/// The names of the built-in blueprints, for messages and completions.
pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(name, _)| *name).collect()
}

/// The built-in blueprint used when none is given.
pub const DEFAULT_BLUEPRINT: &str = "demo";

/// A blueprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    /// Name.
    pub name: String,
    /// For people.
    #[serde(default)]
    pub description: String,
    /// DNS domain of container names.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Overlay range (default `10.240.0.0/16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Ipv4Net>,
    /// Host groups, in the order they take nodes.
    #[serde(rename = "group")]
    pub groups: Vec<HostGroup>,
    /// Credentials for private registries, matched to images by registry host. Used
    /// only when an image is neither present on the VM nor baked into its image.
    #[serde(rename = "registry", default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistrySpec>,
}

/// A private registry's credentials. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    /// Registry host, as it appears in image references (`registry.example.com:5000`;
    /// `docker.io` for Docker Hub).
    pub server: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistrySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySpec")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The registry host of an image reference (the one rule, shared with the agent).
pub use shoal_protocol::registry_of;

fn default_domain() -> String {
    DEFAULT_DOMAIN.to_string()
}

/// A set of nodes running the same containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostGroup {
    /// Name.
    pub name: String,
    /// How many nodes at creation.
    pub count: GroupCount,
    /// The fewest nodes the group may have (at creation and after a scale). Default: 0
    /// for the group that takes "rest", the count of a fixed group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// The most nodes the group may have. Default: the cluster limit for the "rest"
    /// group, the count of a fixed group (so a fixed group scales only when given
    /// bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// What a node of this group runs before a scale down removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,
    /// The operator's scripts each of its nodes runs as root, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RecipeSpec>,
    /// Data disks attached to each of its nodes, mounted at `/hadoopfs/fs1…N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<DiskSpec>,
    /// What each of its nodes runs.
    #[serde(rename = "container", default)]
    pub containers: Vec<ContainerSpec>,
}

/// A group's data disks: `disks = { count = 2, size_gb = 100 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// How many per node (1 to 24, or the provider's limit if lower).
    pub count: u32,
    /// Each one's size in GiB (at least 1).
    pub size_gb: u32,
}

/// The largest data disk a blueprint may ask for, in GiB (64 TiB, a cloud's ceiling).
pub const MAX_DISK_GB: u32 = 65_536;

/// A recipe as a blueprint writes it: `recipes = [{ name = "sysctl", when =
/// "pre-containers", script = "sysctl -w vm.swappiness=1", timeout = "2m" }]`. `file`
/// instead of `script` names a file the CLI reads (relative to the blueprint's
/// directory) and sends as the script's text; the coordinator itself takes scripts
/// only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSpec {
    /// Name (an RFC 1123 label), unique in its group.
    pub name: String,
    /// `pre-containers` or `post-ready` (kept as text so that a wrong value is refused
    /// with the recipe's name).
    pub when: String,
    /// The script (run with `/bin/sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// A file holding the script, read by the CLI at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// How long it may run: seconds, or a number with `s`, `m` or `h` (default 10m).
    #[serde(default = "default_recipe_timeout")]
    pub timeout: Seconds,
    /// Run again at every boot, not only once per plan generation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub every_boot: bool,
}

fn default_recipe_timeout() -> Seconds {
    Seconds(600)
}

impl RecipeSpec {
    /// The recipe of the plan. Only for a checked blueprint (its `when` is known and it
    /// has a script).
    pub fn to_plan(&self) -> Option<RecipePlan> {
        Some(RecipePlan {
            name: self.name.clone(),
            when: RecipeWhen::parse(&self.when)?,
            script: self.script.clone()?,
            timeout_secs: self.timeout.0,
            every_boot: self.every_boot,
        })
    }
}

impl HostGroup {
    /// The group's bounds, `(min, max)`, defaults applied.
    pub fn bounds(&self) -> (u32, u32) {
        let limit = MAX_NODES as u32;
        match self.count {
            GroupCount::Fixed(n) => (self.min.unwrap_or(n), self.max.unwrap_or(n)),
            GroupCount::Rest(_) => (self.min.unwrap_or(0), self.max.unwrap_or(limit)),
        }
    }
}

/// A group's drain hook: `drain = { container = "datanode", exec = [...], timeout =
/// "10m" }`. The command runs in that container of each node being removed, and must
/// exit 0 before the node's VM is deleted. With `group`, it runs instead in that
/// container of another group's node (the group's lowest-index node not leaving), once
/// per leaving node: `drain = { group = "master", container = "namenode", exec =
/// ["shoal-hadoop", "decommission", "${leaving:datanode}"] }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSpec {
    /// Another group, whose node runs the hook; absent: the leaving node runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A container of the group that runs the hook.
    pub container: String,
    /// The command and its arguments.
    pub exec: Vec<String>,
    /// How long it may run: seconds, or a number with `s`, `m` or `h` (default 10m).
    #[serde(default = "default_drain_timeout")]
    pub timeout: Seconds,
}

fn default_drain_timeout() -> Seconds {
    Seconds(600)
}

/// A duration in whole seconds; written as a number (`90`) or with a unit (`"90s"`,
/// `"10m"`, `"1h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Seconds(pub u64);

impl Seconds {
    /// Parses `90`, `"90"`, `"90s"`, `"10m"`, `"1h"`.
    pub fn parse(text: &str) -> Option<Seconds> {
        let t = text.trim();
        let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => t.split_at(i),
            None => (t, ""),
        };
        let n: u64 = digits.parse().ok()?;
        let scale = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return None,
        };
        n.checked_mul(scale).map(Seconds)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Seconds(n)),
            Raw::Text(t) => Seconds::parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration (seconds, or a number with s, m or h)"
                ))
            }),
        }
    }
}

/// A group's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupCount {
    /// Exactly this many nodes.
    Fixed(u32),
    /// `"rest"`: every node the fixed groups leave.
    Rest(RestMarker),
}

/// The literal `"rest"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestMarker {
    /// `"rest"`.
    Rest,
}

/// A container of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Name (RFC 1123 label), unique in its group.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command; empty keeps the image's.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment; values may use `${fqdn:NAME}`, `${cluster}`, `${domain}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Bind mounts, `SOURCE:TARGET[:ro]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortPlan>,
    /// `overlay` (default) or `host`.
    #[serde(default)]
    pub network: NetworkMode,
    /// What must answer before the container counts as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ProbeSpec>,
    /// A directory of the container under which its node's data disks are mounted,
    /// `DIR/1` … `DIR/N` (the group must have `disks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disks: Option<String>,
}

/// Default milliseconds between two tries of a probe.
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 500;
/// Default milliseconds one try may take (at most the deadline).
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 2_000;
/// Default milliseconds, from the container's start, within which a probe must pass.
pub const DEFAULT_PROBE_DEADLINE_MS: u64 = 300_000;

/// A readiness probe as a blueprint writes it: `ready = { tcp = PORT }`,
/// `{ http = "URL" }` (optionally with `json = { "/pointer" = "value" }` and
/// `body = "text"`) or `{ exec = ["cmd", "arg"] }`, with `interval`, `timeout` and
/// `deadline` in seconds. The URL, the command's arguments and the expected values may
/// use the `${…}` references of environment values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// A port of the container that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// A URL that must answer 2xx (`localhost` is the container itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A command run in the container that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// For `http`: JSON pointers into the answer and the value each must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub json: BTreeMap<String, String>,
    /// For `http`: text the answer must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Seconds between two tries (default 0.5).
    #[serde(
        default,
        rename = "interval",
        with = "seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval_ms: Option<u64>,
    /// Seconds one try may take (default 2, at most the deadline).
    #[serde(
        default,
        rename = "timeout",
        with = "seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_ms: Option<u64>,
    /// Seconds from the container's start within which the probe must pass (default 300).
    #[serde(
        default,
        rename = "deadline",
        with = "seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline_ms: Option<u64>,
    /// Once the node is ready, seconds between two tries that keep checking the
    /// container; 0 stops checking it once ready (default: `interval`, bounded to 1 to
    /// 10 s).
    #[serde(
        default,
        rename = "live_interval",
        with = "seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub live_interval_ms: Option<u64>,
    /// Once the node is ready, failed tries in a row that make it `unhealthy` (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

/// Durations written as seconds (integer or fractional), held as milliseconds.
mod seconds {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    /// Longest duration a blueprint may give: a day.
    const MAX_SECONDS: f64 = 86_400.0;

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ms) => s.serialize_some(&(*ms as f64 / 1000.0)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(x) if x.is_finite() && (0.0..=MAX_SECONDS).contains(&x) => {
                Ok(Some((x * 1000.0).round() as u64))
            }
            Some(x) => Err(D::Error::custom(format!(
                "{x} is not a number of seconds from 0 to {MAX_SECONDS}"
            ))),
        }
    }
}

impl ProbeSpec {
    /// The probe of the plan, its strings expanded by `expand` (or the first failure).
    pub fn to_plan(
        &self,
        mut expand: impl FnMut(&str) -> Result<String, String>,
    ) -> Result<ProbePlan, String> {
        let deadline_ms = self.deadline_ms.unwrap_or(DEFAULT_PROBE_DEADLINE_MS);
        let mut json = BTreeMap::new();
        for (pointer, value) in &self.json {
            json.insert(pointer.clone(), expand(value)?);
        }
        Ok(ProbePlan {
            tcp: self.tcp,
            http: self.http.as_deref().map(&mut expand).transpose()?,
            exec: self
                .exec
                .as_ref()
                .map(|cmd| cmd.iter().map(|a| expand(a)).collect::<Result<Vec<_>, _>>())
                .transpose()?,
            json,
            body: self.body.as_deref().map(&mut expand).transpose()?,
            interval_ms: self.interval_ms.unwrap_or(DEFAULT_PROBE_INTERVAL_MS),
            timeout_ms: self
                .timeout_ms
                .unwrap_or(DEFAULT_PROBE_TIMEOUT_MS.min(deadline_ms)),
            deadline_ms,
            live_interval_ms: self.live_interval_ms,
            failure_threshold: self.failure_threshold,
        })
    }

    /// Every string of the probe that may hold `${…}` references.
    fn templated(&self) -> impl Iterator<Item = &String> {
        self.http
            .iter()
            .chain(self.exec.iter().flatten())
            .chain(self.json.values())
            .chain(self.body.iter())
    }

    /// Checks the rules a probe must follow whatever the cluster; `${…}` references are
    /// checked by the blueprint.
    fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("deadline", self.deadline_ms),
            ("interval", self.interval_ms),
        ] {
            if v == Some(0) {
                return Err(format!("ready.{name} must be more than 0 seconds"));
            }
        }
        if let Some(ms) = self.live_interval_ms {
            if ms != 0 && !(10..=3_600_000).contains(&ms) {
                return Err(
                    "ready.live_interval must be 0 (not checked once ready) or 0.01 to 3600 seconds"
                        .to_string(),
                );
            }
        }
        if let Some(n) = self.failure_threshold {
            if !(1..=shoal_protocol::MAX_FAILURE_THRESHOLD).contains(&n) {
                return Err(format!(
                    "ready.failure_threshold must be 1 to {}",
                    shoal_protocol::MAX_FAILURE_THRESHOLD
                ));
            }
        }
        if let Some(timeout) = self.timeout_ms {
            let deadline = self.deadline_ms.unwrap_or(DEFAULT_PROBE_DEADLINE_MS);
            if timeout == 0 || timeout > deadline {
                return Err(format!(
                    "ready.timeout must be more than 0 and at most the deadline ({} s)",
                    deadline as f64 / 1000.0
                ));
            }
        }
        // Everything else, as the agent will check it (references left unexpanded).
        self.to_plan(|v| Ok(v.to_string()))?
            .validate("ready")
            .map_err(|e| e.to_string())
    }
}

/// Why a blueprint is unusable.
#[derive(Debug, thiserror::Error)]
pub enum BlueprintError {
    /// Not TOML of the blueprint's shape.
    #[error("blueprint {source_name}: {message}")]
    Parse {
        /// File or built-in name.
        source_name: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A rule is broken.
    #[error("blueprint {name}: {message}")]
    Invalid {
        /// Blueprint name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Neither a built-in name nor a readable file.
    #[error("no blueprint {0:?}: it is neither a built-in one ({names}) nor a readable file", names = built_in_names().join(", "))]
    NotFound(String),
}

impl Blueprint {
    /// Parses TOML text.
    pub fn parse(source_name: &str, text: &str) -> Result<Blueprint, BlueprintError> {
        let bp: Blueprint = toml::from_str(text).map_err(|e| BlueprintError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        bp.check()?;
        Ok(bp)
    }

    /// A built-in blueprint by name.
    pub fn built_in(name: &str) -> Option<Result<Blueprint, BlueprintError>> {
        BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Blueprint::parse(n, text))
    }

    fn invalid(&self, message: impl Into<String>) -> BlueprintError {
        BlueprintError::Invalid {
            name: self.name.clone(),
            message: message.into(),
        }
    }

    /// Checks the rules that do not depend on the cluster size.
    pub fn check(&self) -> Result<(), BlueprintError> {
        if !is_dns_label(&self.name) {
            return Err(self.invalid("the name must be an RFC 1123 label"));
        }
        if !is_dns_name(&self.domain) {
            return Err(self.invalid(format!("domain {:?} is not an RFC 1123 name", self.domain)));
        }
        if self.groups.is_empty() {
            return Err(self.invalid("no [[group]]"));
        }
        for r in &self.registries {
            if r.server.is_empty() || r.server.contains('/') || r.username.is_empty() {
                return Err(self.invalid(format!(
                    "[[registry]] {:?}: server must be a registry host and username non-empty",
                    r.server
                )));
            }
        }
        let rest = self
            .groups
            .iter()
            .filter(|g| matches!(g.count, GroupCount::Rest(_)))
            .count();
        if rest > 1 {
            return Err(self.invalid("only one group may take \"rest\""));
        }
        let mut group_names = HashSet::new();
        let mut all_containers = HashSet::new();
        for g in &self.groups {
            if !is_dns_label(&g.name) || !group_names.insert(g.name.as_str()) {
                return Err(self.invalid(format!(
                    "group {:?}: names must be unique RFC 1123 labels",
                    g.name
                )));
            }
            let mut names = HashSet::new();
            for c in &g.containers {
                if !is_dns_label(&c.name) || c.name.len() > 40 {
                    return Err(self.invalid(format!(
                        "group {}: container {:?} must be an RFC 1123 label of at most 40 characters",
                        g.name, c.name
                    )));
                }
                if !names.insert(c.name.as_str()) {
                    return Err(self.invalid(format!(
                        "group {}: container {:?} appears twice",
                        g.name, c.name
                    )));
                }
                all_containers.insert(c.name.clone());
                for v in &c.volumes {
                    parse_volume(v)
                        .map_err(|m| self.invalid(format!("container {}: {m}", c.name)))?;
                }
                if let Some(probe) = &c.ready {
                    probe
                        .check()
                        .map_err(|m| self.invalid(format!("container {}: {m}", c.name)))?;
                }
            }
            self.check_scaling(g)?;
            self.check_recipes(g)?;
            self.check_disks(g)?;
        }
        // Every ${fqdn:NAME} and ${count:NAME} must name a container of the blueprint.
        for g in &self.groups {
            for c in &g.containers {
                let probe_values = c.ready.iter().flat_map(ProbeSpec::templated);
                for value in c.env.values().chain(probe_values) {
                    for reference in template_refs(value)
                        .map_err(|m| self.invalid(format!("container {}: {m}", c.name)))?
                    {
                        let (kind, name) = match &reference {
                            Template::Fqdn(name) => ("fqdn", name),
                            Template::Count(name) => ("count", name),
                            Template::Cluster | Template::Domain => continue,
                            Template::Leaving(_) => {
                                return Err(self.invalid(format!(
                                    "container {}: {reference} is for drain hooks only",
                                    c.name
                                )))
                            }
                        };
                        if !all_containers.contains(name) {
                            return Err(self.invalid(format!(
                                "container {}: ${{{kind}:{name}}} names no container of this blueprint",
                                c.name
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A group's bounds and drain hook make sense.
    fn check_scaling(&self, g: &HostGroup) -> Result<(), BlueprintError> {
        let (min, max) = g.bounds();
        let limit = MAX_NODES as u32;
        if min > max || max > limit {
            return Err(self.invalid(format!(
                "group {}: min {min} and max {max} must satisfy min <= max <= {limit}",
                g.name
            )));
        }
        if let GroupCount::Fixed(n) = g.count {
            if n < min || n > max {
                return Err(self.invalid(format!(
                    "group {}: count {n} is outside its bounds {min}..{max}",
                    g.name
                )));
            }
        }
        if let Some(d) = &g.drain {
            let runner = match &d.group {
                None => g,
                Some(other) if other == &g.name => {
                    return Err(self.invalid(format!(
                        "group {}: drain group names the group itself (leave it out to run the hook on the leaving node)",
                        g.name
                    )))
                }
                Some(other) => self.group(other).ok_or_else(|| {
                    self.invalid(format!(
                        "group {}: drain group {other:?} is not a group of this blueprint",
                        g.name
                    ))
                })?,
            };
            if !runner.containers.iter().any(|c| c.name == d.container) {
                return Err(self.invalid(format!(
                    "group {}: drain container {:?} is not a container of group {}",
                    g.name, d.container, runner.name
                )));
            }
            if d.exec.is_empty() || d.exec.iter().any(|a| a.contains('\0')) {
                return Err(self.invalid(format!(
                    "group {}: drain exec must be a non-empty command",
                    g.name
                )));
            }
            for arg in &d.exec {
                let refs = template_refs(arg)
                    .map_err(|m| self.invalid(format!("group {}: drain exec: {m}", g.name)))?;
                for r in refs {
                    match &r {
                        Template::Leaving(name) if !g.containers.iter().any(|c| &c.name == name) => {
                            return Err(self.invalid(format!(
                                "group {}: drain exec: {r} names no container of the group",
                                g.name
                            )))
                        }
                        Template::Leaving(_) | Template::Cluster | Template::Domain => {}
                        Template::Fqdn(_) | Template::Count(_) => {
                            return Err(self.invalid(format!(
                                "group {}: drain exec: {r} is not available there (use ${{leaving:NAME}}, ${{cluster}} or ${{domain}})",
                                g.name
                            )))
                        }
                    }
                }
            }
            if d.timeout.0 == 0 || d.timeout.0 > MAX_DRAIN_SECS {
                return Err(self.invalid(format!(
                    "group {}: drain timeout must be between 1 s and {} h",
                    g.name,
                    MAX_DRAIN_SECS / 3600
                )));
            }
        }
        Ok(())
    }

    /// A group's disks are within bounds, and a container's `data_disks` has disks to
    /// mount.
    fn check_disks(&self, g: &HostGroup) -> Result<(), BlueprintError> {
        if let Some(d) = &g.disks {
            if d.count == 0 || d.count as usize > MAX_DISKS {
                return Err(self.invalid(format!(
                    "group {}: disks.count {} is outside 1..={MAX_DISKS}",
                    g.name, d.count
                )));
            }
            if d.size_gb == 0 || d.size_gb > MAX_DISK_GB {
                return Err(self.invalid(format!(
                    "group {}: disks.size_gb {} is outside 1..={MAX_DISK_GB}",
                    g.name, d.size_gb
                )));
            }
        }
        for c in &g.containers {
            let Some(dir) = &c.data_disks else { continue };
            if g.disks.is_none() {
                return Err(self.invalid(format!(
                    "group {}: container {}: data_disks {dir:?} but the group has no disks",
                    g.name, c.name
                )));
            }
            if !dir.starts_with('/') || dir.contains("..") || dir.contains(':') {
                return Err(self.invalid(format!(
                    "group {}: container {}: data_disks {dir:?} must be an absolute path",
                    g.name, c.name
                )));
            }
        }
        Ok(())
    }

    /// The most data disks a node of the blueprint has.
    pub fn max_disks(&self) -> u32 {
        self.groups
            .iter()
            .filter_map(|g| g.disks.map(|d| d.count))
            .max()
            .unwrap_or(0)
    }

    /// A group's recipes are each complete, named once, with a known `when` and a
    /// bounded timeout and script.
    fn check_recipes(&self, g: &HostGroup) -> Result<(), BlueprintError> {
        if g.recipes.len() > MAX_RECIPES {
            return Err(self.invalid(format!(
                "group {}: {} recipes, over the limit of {MAX_RECIPES}",
                g.name,
                g.recipes.len()
            )));
        }
        let mut names = HashSet::new();
        for r in &g.recipes {
            let bad =
                |m: String| self.invalid(format!("group {}: recipe {:?}: {m}", g.name, r.name));
            if !is_dns_label(&r.name) {
                return Err(bad("name must be an RFC 1123 label".into()));
            }
            if !names.insert(r.name.as_str()) {
                return Err(bad("name appears twice in the group".into()));
            }
            if RecipeWhen::parse(&r.when).is_none() {
                return Err(bad(format!(
                    "when {:?} is neither \"pre-containers\" nor \"post-ready\"",
                    r.when
                )));
            }
            match (&r.script, &r.file) {
                (Some(_), Some(_)) => {
                    return Err(bad("give script or file, not both".into()));
                }
                (None, None) => {
                    return Err(bad("no script (give script or file)".into()));
                }
                (None, Some(f)) => {
                    return Err(bad(format!(
                        "file {f:?} was not read: the coordinator takes scripts only (the CLI reads files at create)"
                    )));
                }
                (Some(s), None) => {
                    if s.trim().is_empty() || s.contains('\0') {
                        return Err(bad("script is empty, or holds a NUL byte".into()));
                    }
                    if s.len() > MAX_RECIPE_BYTES {
                        return Err(bad(format!(
                            "script is {} bytes, over the limit of {MAX_RECIPE_BYTES}",
                            s.len()
                        )));
                    }
                }
            }
            if r.timeout.0 == 0 || r.timeout.0 > MAX_RECIPE_SECS {
                return Err(bad(format!(
                    "timeout must be between 1 s and {} h",
                    MAX_RECIPE_SECS / 3600
                )));
            }
        }
        Ok(())
    }

    /// Reads every recipe's `file` (relative paths from `base`) into its `script`, so
    /// that the blueprint can be sent to a coordinator. A file over the script limit, or
    /// unreadable, is refused with the recipe's name.
    pub fn read_recipe_files(&mut self, base: &std::path::Path) -> Result<(), BlueprintError> {
        let name = self.name.clone();
        for g in &mut self.groups {
            for r in &mut g.recipes {
                let (Some(file), None) = (&r.file, &r.script) else {
                    continue;
                };
                let path = base.join(file);
                let bad = |m: String| BlueprintError::Invalid {
                    name: name.clone(),
                    message: format!(
                        "group {}: recipe {:?}: file {}: {m}",
                        g.name,
                        r.name,
                        path.display()
                    ),
                };
                let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
                if meta.len() > MAX_RECIPE_BYTES as u64 {
                    return Err(bad(format!(
                        "{} bytes, over the limit of {MAX_RECIPE_BYTES}",
                        meta.len()
                    )));
                }
                let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
                r.script = Some(text);
                r.file = None;
            }
        }
        Ok(())
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&HostGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The group a scale without `--group` resizes: the one that takes "rest", else
    /// the only group whose bounds let it change size.
    pub fn default_scale_group(&self) -> Option<&HostGroup> {
        if let Some(g) = self
            .groups
            .iter()
            .find(|g| matches!(g.count, GroupCount::Rest(_)))
        {
            return Some(g);
        }
        let mut scalable = self.groups.iter().filter(|g| {
            let (min, max) = g.bounds();
            min < max
        });
        match (scalable.next(), scalable.next()) {
            (Some(g), None) => Some(g),
            _ => None,
        }
    }

    /// Which group each of `nodes` nodes belongs to (by index), or why the blueprint
    /// cannot be laid on that many.
    pub fn assign(&self, nodes: u32) -> Result<Vec<&HostGroup>, BlueprintError> {
        let fixed: u32 = self
            .groups
            .iter()
            .map(|g| match g.count {
                GroupCount::Fixed(n) => n,
                GroupCount::Rest(_) => 0,
            })
            .sum();
        let has_rest = self
            .groups
            .iter()
            .any(|g| matches!(g.count, GroupCount::Rest(_)));
        if fixed > nodes || (!has_rest && fixed != nodes) {
            return Err(self.invalid(format!(
                "it places {fixed} node(s){}, the cluster has {nodes}",
                if has_rest { " plus the rest" } else { "" }
            )));
        }
        let mut out = Vec::with_capacity(nodes as usize);
        for g in &self.groups {
            if let GroupCount::Fixed(n) = g.count {
                out.extend(std::iter::repeat_n(g, n as usize));
            }
        }
        if let Some(rest) = self
            .groups
            .iter()
            .find(|g| matches!(g.count, GroupCount::Rest(_)))
        {
            let n = nodes - fixed;
            let (min, max) = rest.bounds();
            if n < min || n > max {
                return Err(self.invalid(format!(
                    "group {} would have {n} node(s), outside its bounds {min}..{max}",
                    rest.name
                )));
            }
            out.extend(std::iter::repeat_n(rest, n as usize));
        }
        Ok(out)
    }

    /// Every image the blueprint names, deduplicated, in order.
    pub fn images(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.groups.iter().flat_map(|g| &g.containers) {
            if !out.contains(&c.image) {
                out.push(c.image.clone());
            }
        }
        out
    }

    /// Every port the blueprint publishes (for cloud firewall rules).
    pub fn exposed_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .groups
            .iter()
            .flat_map(|g| &g.containers)
            .flat_map(|c| &c.ports)
            .map(|p| p.host.unwrap_or(p.container))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Resolves a blueprint argument: a built-in name, or a TOML file.
pub fn load(arg: &str) -> Result<Blueprint, BlueprintError> {
    if let Some(bp) = Blueprint::built_in(arg) {
        return bp;
    }
    let text =
        std::fs::read_to_string(arg).map_err(|_| BlueprintError::NotFound(arg.to_string()))?;
    Blueprint::parse(arg, &text)
}

/// A `${…}` reference in an environment value or a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// `${fqdn:NAME}`.
    Fqdn(String),
    /// `${count:NAME}`.
    Count(String),
    /// `${leaving:NAME}` (drain hooks only): the FQDN of the leaving node's container
    /// NAME.
    Leaving(String),
    /// `${cluster}`.
    Cluster,
    /// `${domain}`.
    Domain,
}

impl Template {
    fn parse(inner: &str) -> Option<Template> {
        Some(match inner {
            "cluster" => Template::Cluster,
            "domain" => Template::Domain,
            _ => match inner.split_once(':')? {
                ("fqdn", name) => Template::Fqdn(name.to_string()),
                ("count", name) => Template::Count(name.to_string()),
                ("leaving", name) => Template::Leaving(name.to_string()),
                _ => return None,
            },
        })
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Template::Fqdn(n) => write!(f, "${{fqdn:{n}}}"),
            Template::Count(n) => write!(f, "${{count:{n}}}"),
            Template::Leaving(n) => write!(f, "${{leaving:{n}}}"),
            Template::Cluster => f.write_str("${cluster}"),
            Template::Domain => f.write_str("${domain}"),
        }
    }
}

/// Splits `value` into literal text and references, calling `on` for each in order.
fn walk(
    value: &str,
    mut on: impl FnMut(&str, Option<Template>) -> Result<(), String>,
) -> Result<(), String> {
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        on(&rest[..start], None)?;
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {value:?}"))?;
        let inner = &after[..end];
        let reference = Template::parse(inner)
            .ok_or_else(|| format!("unknown reference ${{{inner}}} in {value:?}"))?;
        on("", Some(reference))?;
        rest = &after[end + 1..];
    }
    on(rest, None)
}

/// The references in `value`, in order.
pub fn template_refs(value: &str) -> Result<Vec<Template>, String> {
    let mut out = Vec::new();
    walk(value, |_, r| {
        out.extend(r);
        Ok(())
    })?;
    Ok(out)
}

/// Substitutes references; `resolve` gives the value of `${fqdn:…}` and `${count:…}`
/// (`None`: no such container in this cluster).
pub fn expand(
    value: &str,
    cluster: &str,
    domain: &str,
    resolve: impl Fn(&Template) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    walk(value, |text, reference| {
        out.push_str(text);
        match reference {
            None => {}
            Some(Template::Cluster) => out.push_str(cluster),
            Some(Template::Domain) => out.push_str(domain),
            Some(r) => {
                let v =
                    resolve(&r).ok_or_else(|| format!("{r}: no such container in this cluster"))?;
                out.push_str(&v);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Parses `SOURCE:TARGET[:ro|:rw]`.
pub fn parse_volume(v: &str) -> Result<(String, String, bool), String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => return Err(format!("volume {v:?} is not SOURCE:TARGET[:ro]")),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        return Err(format!("volume {v:?}: both paths must be absolute"));
    }
    Ok((src.to_string(), dst.to_string(), ro))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_parse() {
        for (name, _) in BUILT_IN {
            let bp = Blueprint::built_in(name).expect("exists").expect("valid");
            assert_eq!(bp.name, *name);
        }
    }

    #[test]
    fn groups_take_fixed_counts_then_the_rest() {
        let bp = load("demo").expect("demo");
        let groups = bp.assign(3).expect("3 nodes");
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["server", "workers", "workers"]);
        assert_eq!(bp.assign(1).expect("1 node").len(), 1);
        assert!(bp.assign(0).is_err());
    }

    #[test]
    fn unknown_fields_and_bad_references_are_refused() {
        let err = Blueprint::parse(
            "t",
            "name = \"x\"\ncolour = 1\n[[group]]\nname=\"a\"\ncount=1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let text = r#"
name = "x"
[[group]]
name = "a"
count = 1
[[group.container]]
name = "c"
image = "i"
env = { S = "${fqdn:nope}" }
"#;
        let err = Blueprint::parse("t", text).unwrap_err();
        assert!(err.to_string().contains("names no container"), "{err}");
    }

    #[test]
    fn two_rest_groups_are_refused() {
        let text = r#"
name = "x"
[[group]]
name = "a"
count = "rest"
[[group]]
name = "b"
count = "rest"
"#;
        assert!(Blueprint::parse("t", text).is_err());
    }

    #[test]
    fn fixed_groups_must_fit() {
        let text = r#"
name = "x"
[[group]]
name = "a"
count = 2
"#;
        let bp = Blueprint::parse("t", text).expect("valid");
        assert!(bp.assign(2).is_ok());
        let err = bp.assign(3).unwrap_err();
        assert!(
            err.to_string()
                .contains("places 2 node(s), the cluster has 3"),
            "{err}"
        );
    }

    #[test]
    fn templates_expand() {
        let resolve = |t: &Template| match t {
            Template::Fqdn(n) if n == "server" => Some("server-node-0.demo.d".to_string()),
            Template::Count(n) if n == "agent" => Some("3".to_string()),
            _ => None,
        };
        let v = expand(
            "http://${fqdn:server}:8080/${cluster}?n=${count:agent}",
            "demo",
            "d",
            resolve,
        )
        .expect("expand");
        assert_eq!(v, "http://server-node-0.demo.d:8080/demo?n=3");
        assert!(expand("${fqdn:x}", "c", "d", |_| None).is_err());
        assert!(expand("${oops", "c", "d", |_| None).is_err());
        let err = expand("${HOME}", "c", "d", |_| None).unwrap_err();
        assert!(err.contains("unknown reference ${HOME}"), "{err}");
    }

    fn with_probe(probe: &str) -> Result<Blueprint, BlueprintError> {
        let text = format!(
            "name = \"x\"\n[[group]]\nname = \"a\"\ncount = 1\n[[group.container]]\nname = \"c\"\nimage = \"i\"\nready = {probe}\n"
        );
        Blueprint::parse("t", &text)
    }

    #[test]
    fn probes_parse_with_defaults_and_seconds() {
        let bp = with_probe("{ tcp = 8020, interval = 0.25, deadline = 60 }").expect("valid");
        let spec = bp.groups[0].containers[0].ready.as_ref().expect("probe");
        let plan = spec.to_plan(|v| Ok(v.to_string())).expect("plan");
        assert_eq!(plan.tcp, Some(8020));
        assert_eq!(plan.interval_ms, 250);
        assert_eq!(plan.timeout_ms, DEFAULT_PROBE_TIMEOUT_MS);
        assert_eq!(plan.deadline_ms, 60_000);
        // Through the store's JSON and back.
        let json = serde_json::to_string(&bp).expect("json");
        let back: Blueprint = serde_json::from_str(&json).expect("back");
        assert_eq!(back, bp);
        let short = with_probe("{ exec = [\"true\"], deadline = 1 }").expect("valid");
        let plan = short.groups[0].containers[0]
            .ready
            .as_ref()
            .expect("probe")
            .to_plan(|v| Ok(v.to_string()))
            .expect("plan");
        assert_eq!(
            plan.timeout_ms, 1000,
            "the default timeout is capped at the deadline"
        );
        assert_eq!(
            (plan.live_interval_ms, plan.failure_threshold),
            (None, None)
        );
        let live =
            with_probe("{ tcp = 80, live_interval = 2.5, failure_threshold = 5 }").expect("valid");
        let plan = live.groups[0].containers[0]
            .ready
            .as_ref()
            .expect("probe")
            .to_plan(|v| Ok(v.to_string()))
            .expect("plan");
        assert_eq!(
            plan.live_interval(),
            Some(std::time::Duration::from_millis(2_500))
        );
        assert_eq!(plan.failure_threshold(), 5);
        let off = with_probe("{ tcp = 80, live_interval = 0 }").expect("valid");
        let plan = off.groups[0].containers[0]
            .ready
            .as_ref()
            .expect("probe")
            .to_plan(|v| Ok(v.to_string()))
            .expect("plan");
        assert_eq!(plan.live_interval(), None, "0 turns it off");
    }

    #[test]
    fn bad_probes_are_refused() {
        for (probe, message) in [
            ("{ grpc = 50051 }", "unknown field `grpc`"),
            ("{ tcp = 0 }", "port 0"),
            ("{ exec = [] }", "the command is empty"),
            (
                "{ tcp = 80, deadline = 0 }",
                "ready.deadline must be more than 0",
            ),
            (
                "{ tcp = 80, interval = 0 }",
                "ready.interval must be more than 0",
            ),
            ("{ tcp = 80, deadline = -1 }", "is not a number of seconds"),
            (
                "{ tcp = 80, timeout = 10, deadline = 5 }",
                "at most the deadline",
            ),
            (
                "{ tcp = 80, live_interval = 0.001 }",
                "ready.live_interval must be 0 (not checked once ready) or 0.01 to 3600",
            ),
            (
                "{ tcp = 80, failure_threshold = 0 }",
                "ready.failure_threshold must be 1 to 1000",
            ),
            ("{ tcp = 80, failure_threshold = -2 }", "failure_threshold"),
            ("{ tcp = 80, http = \"http://x/\" }", "exactly one of"),
            ("{ interval = 1 }", "exactly one of"),
            ("{ http = \"ftp://x/\" }", "not an http:// URL"),
            (
                "{ tcp = 80, json = { \"/a\" = \"1\" } }",
                "http probes only",
            ),
            (
                "{ http = \"http://${fqdn:nope}/\" }",
                "${fqdn:nope} names no container",
            ),
            (
                "{ exec = [\"test\", \"${count:nope}\"] }",
                "${count:nope} names no container",
            ),
            (
                "{ exec = [\"sh\", \"-c\", \"echo ${HOME}\"] }",
                "unknown reference ${HOME}",
            ),
        ] {
            let err = with_probe(probe).expect_err(probe).to_string();
            assert!(err.contains(message), "{probe}: {err}");
        }
    }

    #[test]
    fn registry_hosts_are_read_from_image_references() {
        assert_eq!(registry_of("sequenceiq/ambari:2.7.5"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(
            registry_of("registry.example.com:5000/a/b:1"),
            "registry.example.com:5000"
        );
        assert_eq!(registry_of("localhost/x:1"), "localhost");
        let text = r#"
name = "x"
[[registry]]
server = "r.example.com"
username = "u"
password = "hunter2"
[[group]]
name = "a"
count = 1
"#;
        let bp = Blueprint::parse("t", text).expect("valid");
        assert!(!format!("{bp:?}").contains("hunter2"));
    }

    #[test]
    fn bounds_and_drain_hooks_are_checked() {
        let text = r#"
name = "x"
[[group]]
name = "master"
count = 1
[[group.container]]
name = "m"
image = "i"
[[group]]
name = "workers"
count = "rest"
min = 1
max = 3
drain = { container = "w", exec = ["sh", "-c", "true"], timeout = "2m" }
[[group.container]]
name = "w"
image = "i"
"#;
        let bp = Blueprint::parse("t", text).expect("valid");
        let workers = bp.group("workers").expect("workers");
        assert_eq!(workers.bounds(), (1, 3));
        assert_eq!(
            workers.drain.as_ref().map(|d| d.timeout),
            Some(Seconds(120))
        );
        assert_eq!(bp.group("master").expect("master").bounds(), (1, 1));
        assert_eq!(
            bp.default_scale_group().map(|g| g.name.as_str()),
            Some("workers")
        );
        assert!(bp.assign(4).is_ok());
        let e = bp.assign(5).expect_err("4 workers, max 3");
        assert!(e.to_string().contains("outside its bounds 1..3"), "{e}");
        assert!(bp.assign(1).is_err(), "0 workers, min 1");
        // Stored as JSON and read back (the store keeps blueprints so).
        let json = serde_json::to_string(&bp).expect("json");
        assert_eq!(serde_json::from_str::<Blueprint>(&json).expect("back"), bp);

        for (from, to, why) in [
            ("min = 1\nmax = 3", "min = 4\nmax = 3", "min <= max"),
            (
                "container = \"w\", exec",
                "container = \"m\", exec",
                "not a container of group workers",
            ),
            (
                "drain = { container = \"w\"",
                "drain = { group = \"nope\", container = \"w\"",
                "drain group \"nope\" is not a group of this blueprint",
            ),
            (
                "drain = { container = \"w\"",
                "drain = { group = \"master\", container = \"w\"",
                "drain container \"w\" is not a container of group master",
            ),
            (
                "drain = { container = \"w\"",
                "drain = { group = \"workers\", container = \"w\"",
                "names the group itself",
            ),
            (
                "drain = { container = \"w\"",
                "drain = { groop = \"master\", container = \"w\"",
                "unknown field `groop`",
            ),
            (
                "exec = [\"sh\", \"-c\", \"true\"]",
                "exec = [\"x\", \"${leaving:m}\"]",
                "${leaving:m} names no container of the group",
            ),
            (
                "exec = [\"sh\", \"-c\", \"true\"]",
                "exec = [\"x\", \"${fqdn:m}\"]",
                "${fqdn:m} is not available there",
            ),
            (
                "image = \"i\"\n[[group]]",
                "image = \"i\"\nenv = { A = \"${leaving:w}\" }\n[[group]]",
                "is for drain hooks only",
            ),
            (
                "exec = [\"sh\", \"-c\", \"true\"]",
                "exec = []",
                "non-empty command",
            ),
            ("\"2m\"", "\"2 weeks\"", "not a duration"),
            ("\"2m\"", "0", "between 1 s"),
        ] {
            let bad = text.replace(from, to);
            assert_ne!(bad, text, "{from}");
            let e = Blueprint::parse("t", &bad).expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        assert_eq!(Seconds::parse("90"), Some(Seconds(90)));
        assert_eq!(Seconds::parse("1h"), Some(Seconds(3600)));
        assert_eq!(Seconds::parse("m"), None);
    }

    const RECIPES: &str = r#"
name = "x"
[[group]]
name = "a"
count = "rest"
recipes = [
  { name = "pre", when = "pre-containers", script = "echo pre", timeout = "2m" },
  { name = "post", when = "post-ready", script = "echo post", every_boot = true },
]
[[group.container]]
name = "c"
image = "i"
"#;

    #[test]
    fn recipes_parse_with_defaults() {
        let bp = Blueprint::parse("t", RECIPES).expect("valid");
        let plans: Vec<RecipePlan> = bp.groups[0]
            .recipes
            .iter()
            .filter_map(RecipeSpec::to_plan)
            .collect();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].when, RecipeWhen::PreContainers);
        assert_eq!((plans[0].timeout_secs, plans[0].every_boot), (120, false));
        assert_eq!(plans[1].when, RecipeWhen::PostReady);
        assert_eq!((plans[1].timeout_secs, plans[1].every_boot), (600, true));
        // Through the store's JSON, and the CLI's TOML, and back.
        let json = serde_json::to_string(&bp).expect("json");
        assert_eq!(serde_json::from_str::<Blueprint>(&json).expect("back"), bp);
        let toml = toml::to_string(&bp).expect("toml");
        assert_eq!(Blueprint::parse("t", &toml).expect("back"), bp);
    }

    #[test]
    fn bad_recipes_are_refused_naming_the_field() {
        for (from, to, why) in [
            (
                "when = \"pre-containers\"",
                "when = \"at-noon\"",
                "recipe \"pre\": when \"at-noon\" is neither \"pre-containers\" nor \"post-ready\"",
            ),
            (
                ", script = \"echo pre\"",
                "",
                "recipe \"pre\": no script (give script or file)",
            ),
            (
                "script = \"echo pre\"",
                "script = \"echo pre\", file = \"pre.sh\"",
                "recipe \"pre\": give script or file, not both",
            ),
            (
                "script = \"echo pre\"",
                "file = \"pre.sh\"",
                "recipe \"pre\": file \"pre.sh\" was not read",
            ),
            (
                "script = \"echo pre\"",
                "script = \"  \"",
                "script is empty",
            ),
            (
                "\"2m\"",
                "0",
                "recipe \"pre\": timeout must be between 1 s and 24 h",
            ),
            ("\"2m\"", "\"25h\"", "timeout must be between 1 s and 24 h"),
            ("\"2m\"", "\"soon\"", "not a duration"),
            (
                "name = \"post\"",
                "name = \"pre\"",
                "recipe \"pre\": name appears twice",
            ),
            (
                "name = \"post\"",
                "name = \"Post!\"",
                "name must be an RFC 1123 label",
            ),
            (
                "every_boot = true",
                "every_boot = true, shell = \"bash\"",
                "unknown field `shell`",
            ),
        ] {
            let bad = RECIPES.replace(from, to);
            assert_ne!(bad, RECIPES, "{from}");
            let e = Blueprint::parse("t", &bad).expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        let big = RECIPES.replace("echo pre", &"x".repeat(MAX_RECIPE_BYTES + 1));
        let e = Blueprint::parse("t", &big).expect_err("too big");
        assert!(e.to_string().contains("over the limit"), "{e}");
    }

    #[test]
    fn recipe_files_are_read_into_scripts_relative_to_the_blueprint() {
        let dir = std::env::temp_dir().join(format!("shoal-recipe-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("pre.sh"), "echo from a file\n").expect("write");
        let text = RECIPES.replace("script = \"echo pre\"", "file = \"pre.sh\"");
        let mut bp: Blueprint = toml::from_str(&text).expect("shape");
        bp.read_recipe_files(&dir).expect("read");
        let sent = toml::to_string(&bp).expect("toml");
        let back = Blueprint::parse("t", &sent).expect("valid once read");
        assert_eq!(
            back.groups[0].recipes[0].script.as_deref(),
            Some("echo from a file\n")
        );
        let missing = RECIPES.replace("script = \"echo pre\"", "file = \"nope.sh\"");
        let mut bp: Blueprint = toml::from_str(&missing).expect("shape");
        let e = bp.read_recipe_files(&dir).expect_err("missing file");
        assert!(e.to_string().contains("recipe \"pre\": file"), "{e}");
        std::fs::write(dir.join("big.sh"), "x".repeat(MAX_RECIPE_BYTES + 1)).expect("write");
        let big = RECIPES.replace("script = \"echo pre\"", "file = \"big.sh\"");
        let mut bp: Blueprint = toml::from_str(&big).expect("shape");
        let e = bp.read_recipe_files(&dir).expect_err("big file");
        assert!(e.to_string().contains("over the limit"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disks_are_bounded_and_data_disks_need_them() {
        let text = r#"
name = "x"
[[group]]
name = "a"
count = "rest"
disks = { count = 2, size_gb = 10 }
[[group.container]]
name = "c"
image = "i"
data_disks = "/data"
"#;
        let bp = Blueprint::parse("t", text).expect("valid");
        assert_eq!(bp.max_disks(), 2);
        let json = serde_json::to_string(&bp).expect("json");
        assert_eq!(serde_json::from_str::<Blueprint>(&json).expect("back"), bp);
        for (from, to, why) in [
            (
                "count = 2,",
                "count = 0,",
                "disks.count 0 is outside 1..=24",
            ),
            (
                "count = 2,",
                "count = 25,",
                "disks.count 25 is outside 1..=24",
            ),
            ("size_gb = 10", "size_gb = 0", "disks.size_gb 0 is outside"),
            ("size_gb = 10", "size = 10", "unknown field `size`"),
            ("\"/data\"", "\"data\"", "must be an absolute path"),
            (
                "disks = { count = 2, size_gb = 10 }\n",
                "",
                "the group has no disks",
            ),
        ] {
            let bad = text.replace(from, to);
            assert_ne!(bad, text, "{from}");
            let e = Blueprint::parse("t", &bad).expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn volumes_parse() {
        assert_eq!(
            parse_volume("/a:/b:ro").expect("ok"),
            ("/a".into(), "/b".into(), true)
        );
        assert!(parse_volume("a:/b").is_err());
        assert!(parse_volume("/a").is_err());
    }
}
