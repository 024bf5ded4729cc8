//! `shoal cluster …` and `shoal user-data`: the commands that drive clusters through
//! the operator API, and how their answers are shown.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_protocol::Phase;

use super::client::Client;
use super::error::{exit, to_json, CliError};
use super::progress::Progress;
use super::{ClusterCommand, CreateArgs, ScaleArgs};
use crate::blueprint::{built_in_names, Blueprint};
use crate::engine::{CreateRequest, RepairRequest, ScaleRequest};
use crate::providers::ProviderParams;
use crate::store::{now_ms, ClusterState};
use crate::view::timeline::Timeline;
use crate::view::ClusterView;

/// Runs a `shoal cluster` command; returns the exit status.
pub async fn run(client: &Client, cmd: &ClusterCommand) -> Result<u8, CliError> {
    match cmd {
        ClusterCommand::Create(a) => create(client, a).await,
        ClusterCommand::List { json } => list(client, *json).await,
        ClusterCommand::Show { name, json } => show(client, name, *json).await,
        ClusterCommand::Delete { name, wait, json } => delete(client, name, *wait, *json).await,
        ClusterCommand::Scale(a) => scale(client, a).await,
        ClusterCommand::Repair {
            name,
            nodes,
            wait,
            json,
        } => {
            let body = RepairRequest {
                nodes: nodes.clone(),
            };
            change(client, name, "repair", &body, *wait, *json).await
        }
        ClusterCommand::Reboot { name, node, json } => reboot(client, name, node, *json).await,
        ClusterCommand::Timeline {
            name,
            svg,
            json,
            width,
        } => timeline(client, name, svg.as_deref(), *json, *width).await,
    }
}

/// `shoal user-data CLUSTER [--node N]`.
pub async fn user_data(
    client: &Client,
    cluster: &str,
    node: Option<&str>,
    json: bool,
) -> Result<u8, CliError> {
    let node = node.unwrap_or("node-0");
    let path = format!("/v1/clusters/{cluster}/user-data?node={node}");
    let text = client
        .call(reqwest::Method::GET, &path, None)
        .await?
        .text()
        .await
        .map_err(|e| CliError::Coordinator(format!("reading the answer: {e}")))?;
    if json {
        let v = serde_json::json!({ "cluster": cluster, "node": node, "user_data": text });
        println!("{}", to_json(&v)?);
    } else {
        print!("{text}");
    }
    Ok(exit::OK)
}

async fn timeline(
    client: &Client,
    name: &str,
    svg: Option<&Path>,
    json: bool,
    width: Option<usize>,
) -> Result<u8, CliError> {
    let c = client.show(name).await?;
    let t = Timeline::from_view(&c, now_ms());
    let svg_to_stdout = svg == Some(Path::new("-"));
    if let Some(file) = svg.filter(|_| !svg_to_stdout) {
        std::fs::write(file, t.render_svg()).map_err(|e| {
            CliError::Local(format!(
                "cannot write the SVG to {}: {e} (is its directory there and writable?)",
                file.display()
            ))
        })?;
        eprintln!("timeline of {name} written to {}", file.display());
    }
    if svg_to_stdout {
        print!("{}", t.render_svg());
    } else if json {
        println!("{}", to_json(&t)?);
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!(
            "{}",
            t.render_text(width.unwrap_or_else(terminal_width), colour)
        );
    }
    Ok(exit::OK)
}

async fn list(client: &Client, json: bool) -> Result<u8, CliError> {
    let list: Vec<ClusterView> = client
        .json(reqwest::Method::GET, "/v1/clusters", None)
        .await?;
    if json {
        println!("{}", to_json(&list)?);
    } else {
        println!(
            "{:<20} {:<10} {:<8} {:>5}  BLUEPRINT",
            "NAME", "STATE", "PROVIDER", "NODES"
        );
        for c in &list {
            println!(
                "{:<20} {:<10} {:<8} {:>5}  {}",
                c.name, c.state, c.provider, c.node_count, c.blueprint
            );
        }
    }
    Ok(exit::OK)
}

async fn show(client: &Client, name: &str, json: bool) -> Result<u8, CliError> {
    let c = client.show(name).await?;
    if json {
        println!("{}", to_json(&c)?);
    } else {
        print_cluster(&c);
    }
    Ok(exit::OK)
}

/// The blueprint text to send: `text` itself, or, when one of its recipes names a
/// `file`, the blueprint with each such file read (relative to the blueprint's own
/// directory) into the recipe's script, since the coordinator may run elsewhere.
fn with_recipe_files(path: &str, text: String) -> Result<String, CliError> {
    let Ok(mut bp) = toml::from_str::<Blueprint>(&text) else {
        // Malformed: the coordinator says what is wrong, with line and column.
        return Ok(text);
    };
    let files = bp
        .groups
        .iter()
        .flat_map(|g| &g.recipes)
        .any(|r| r.file.is_some());
    if !files {
        return Ok(text);
    }
    let base = std::path::Path::new(path)
        .parent()
        .unwrap_or(std::path::Path::new("."));
    bp.read_recipe_files(base)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    toml::to_string(&bp).map_err(|e| CliError::Local(format!("encoding the blueprint: {e}")))
}

async fn create(client: &Client, a: &CreateArgs) -> Result<u8, CliError> {
    let (blueprint, blueprint_toml) = match &a.blueprint {
        None => (None, None),
        Some(b) if Blueprint::built_in(b).is_some() => (Some(b.clone()), None),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                    CliError::Usage(format!(
                        "--blueprint {path:?} is neither a built-in blueprint ({}) nor a readable file: {e}",
                        built_in_names().join(", ")
                    ))
                })?;
            (None, Some(with_recipe_files(path, text)?))
        }
    };
    let req = CreateRequest {
        name: a.name.clone(),
        provider: a.provider.clone(),
        nodes: a.nodes,
        blueprint,
        blueprint_toml,
        params: ProviderParams {
            region: a.region.clone(),
            image: a.image.clone(),
            instance_type: a.instance_type.clone(),
            credential: a.credential.clone(),
            exposed_ports: vec![],
            operator_cidr: a.operator_cidr.clone(),
            extra: a.set.iter().cloned().collect(),
        },
        auto_repair_secs: a.auto_repair,
    };
    let body = serde_json::to_value(&req)
        .map_err(|e| CliError::Local(format!("encoding the request: {e}")))?;
    let c: ClusterView = client
        .json(reqwest::Method::POST, "/v1/clusters", Some(&body))
        .await?;
    eprintln!(
        "cluster {} requested: {} node(s) on {}",
        c.name, c.node_count, c.provider
    );
    if !a.wait {
        if a.json {
            println!("{}", to_json(&c)?);
        }
        return Ok(exit::OK);
    }
    let c = wait_for(
        client,
        &a.name,
        &[ClusterState::Available, ClusterState::Failed],
    )
    .await?;
    if a.json {
        println!("{}", to_json(&c)?);
    } else {
        print_cluster(&c);
    }
    if c.state == ClusterState::Available {
        Ok(exit::OK)
    } else {
        eprintln!(
            "shoal: cluster {} FAILED: {}",
            c.name,
            c.reason.as_deref().unwrap_or("no reason recorded")
        );
        for n in c.nodes.iter().filter(|n| n.phase == Phase::Failed) {
            if let Some(e) = &n.error {
                eprintln!("  {}: {}: {}", n.id, e.reason, e.message);
            }
            if let Some(log) = n.details.get("agent_log") {
                eprintln!("  {}: agent log {log}", n.id);
            }
        }
        eprintln!(
            "shoal: `shoal cluster timeline {}` shows where it stopped",
            c.name
        );
        match &c.resources {
            Some(r) => eprintln!(
                "shoal: `shoal cluster delete {}` removes what was made ({r})",
                c.name
            ),
            None => eprintln!(
                "shoal: `shoal cluster delete {}` removes what was made",
                c.name
            ),
        }
        Ok(exit::FAILED)
    }
}

async fn delete(client: &Client, name: &str, wait: bool, json: bool) -> Result<u8, CliError> {
    let c: ClusterView = client
        .json(
            reqwest::Method::DELETE,
            &format!("/v1/clusters/{name}"),
            None,
        )
        .await?;
    eprintln!("cluster {} is {}", c.name, c.state);
    if !wait {
        if json {
            println!("{}", to_json(&c)?);
        }
        return Ok(exit::OK);
    }
    let c = wait_for(client, name, &[ClusterState::Deleted]).await?;
    if json {
        println!("{}", to_json(&c)?);
    }
    if c.state != ClusterState::Deleted {
        eprintln!(
            "shoal: deleting {} failed: {}",
            c.name,
            c.reason.as_deref().unwrap_or("no reason recorded")
        );
        eprintln!(
            "next: fix the cause, then `shoal cluster delete {}` again (it is safe to repeat)",
            c.name
        );
        return Ok(exit::FAILED);
    }
    eprintln!("cluster {} is {}", c.name, c.state);
    Ok(exit::OK)
}

async fn scale(client: &Client, a: &ScaleArgs) -> Result<u8, CliError> {
    let body = ScaleRequest {
        group: a.group.clone(),
        nodes: a.nodes,
        remove: a.remove.clone(),
    };
    change(client, &a.name, "scale", &body, a.wait, a.json).await
}

/// `scale` and `repair`: posts the change, then (with `wait`) follows it to its end.
async fn change<T: serde::Serialize>(
    client: &Client,
    name: &str,
    what: &str,
    body: &T,
    wait: bool,
    json: bool,
) -> Result<u8, CliError> {
    let body = serde_json::to_value(body)
        .map_err(|e| CliError::Local(format!("encoding the request: {e}")))?;
    let c: ClusterView = client
        .json(
            reqwest::Method::POST,
            &format!("/v1/clusters/{name}/{what}"),
            Some(&body),
        )
        .await?;
    let running = c.changes.iter().rev().find(|ch| ch.outcome == "running");
    let Some(id) = running.map(|ch| ch.id) else {
        eprintln!(
            "cluster {name}: nothing to change ({} node(s), {})",
            c.node_count, c.state
        );
        if json {
            println!("{}", to_json(&c)?);
        }
        return Ok(exit::OK);
    };
    if let Some(ch) = running {
        eprintln!("cluster {name}: change #{id} {} requested", ch.summary);
    }
    if !wait {
        if json {
            println!("{}", to_json(&c)?);
        }
        return Ok(exit::OK);
    }
    let c = wait_until(client, name, |c| {
        c.changes
            .iter()
            .find(|ch| ch.id == id)
            .is_none_or(|ch| ch.outcome != "running")
            || c.state == ClusterState::Deleted
    })
    .await?;
    if json {
        println!("{}", to_json(&c)?);
    } else {
        print_cluster(&c);
    }
    match c.changes.iter().find(|ch| ch.id == id) {
        Some(ch) if ch.outcome == "done" => Ok(exit::OK),
        Some(ch) => {
            eprintln!(
                "shoal: change #{id} of {name} failed: {}",
                ch.reason.as_deref().unwrap_or("no reason recorded")
            );
            eprintln!(
                "shoal: the cluster is {}; `shoal cluster show {name}` says which nodes, `scale` or `repair` again finishes the job",
                c.state
            );
            Ok(exit::FAILED)
        }
        None => Ok(exit::FAILED),
    }
}

async fn reboot(client: &Client, name: &str, node: &str, json: bool) -> Result<u8, CliError> {
    let c: ClusterView = client
        .json(
            reqwest::Method::POST,
            &format!("/v1/clusters/{name}/nodes/{node}/reboot"),
            None,
        )
        .await?;
    eprintln!("cluster {name}: {node} is rebooting");
    if json {
        println!("{}", to_json(&c)?);
    }
    Ok(exit::OK)
}

/// The terminal's width: `$COLUMNS`, else the TTY's, else 100.
fn terminal_width() -> usize {
    if let Some(w) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w >= 40)
    {
        return w;
    }
    tty_columns().unwrap_or(100)
}

nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::libc::winsize);

fn tty_columns() -> Option<usize> {
    use std::os::fd::AsRawFd;
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a
    // live, properly aligned local; the descriptor is stdout's, open for this call.
    let r = unsafe { tiocgwinsz(out.as_raw_fd(), &mut ws) };
    match r {
        Ok(_) if ws.ws_col >= 40 => Some(usize::from(ws.ws_col)),
        _ => None,
    }
}

/// Polls until the cluster reaches one of `states`, showing progress on stderr (see
/// [`crate::cli::progress`]).
async fn wait_for(
    client: &Client,
    name: &str,
    states: &[ClusterState],
) -> Result<ClusterView, CliError> {
    wait_until(client, name, |c| {
        let delete_failed = c.state == ClusterState::Deleting && c.reason.is_some();
        states.contains(&c.state) || delete_failed
    })
    .await
}

/// Polls until `done` holds, showing progress on stderr.
async fn wait_until(
    client: &Client,
    name: &str,
    done: impl Fn(&ClusterView) -> bool,
) -> Result<ClusterView, CliError> {
    use std::io::Write as _;
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut progress = Progress::new(tty);
    loop {
        let c = client.show(name).await?;
        let text = progress.update(&c, start.elapsed());
        if !text.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
        if done(&c) {
            return Ok(c);
        }
        // A terminal is redrawn often enough to look alive; logs need fewer polls.
        tokio::time::sleep(Duration::from_millis(if tty { 100 } else { 200 })).await;
    }
}

/// How many of the last lines of a recipe's output `cluster show` prints (`--json`
/// carries all the agent reported).
const RECIPE_LINES: usize = 5;

/// Prints a cluster for a person.
pub fn print_cluster(c: &ClusterView) {
    let avail = c
        .time_to_available_ms
        .map(|ms| format!("  (available in {:.1}s)", ms as f64 / 1000.0))
        .unwrap_or_default();
    println!(
        "cluster {}  {}  provider {}  blueprint {}  generation {}{avail}",
        c.name, c.state, c.provider, c.blueprint, c.generation
    );
    if let Some(r) = &c.reason {
        println!("reason: {r}");
    }
    println!("metadata {}  overlay {}", c.metadata_url, c.overlay);
    if let Some(r) = &c.resources {
        println!("resources: {r}");
    }
    if let Some(secs) = c.auto_repair_secs {
        println!("auto-repair: nodes lost for more than {secs}s get a new VM");
    }
    println!(
        "{:<8} {:<15} {:<14} {:>4} {:<34} CONTAINERS",
        "NODE", "ADDRESS", "PHASE", "GEN", "INSTANCE"
    );
    for n in &c.nodes {
        let containers = n
            .containers
            .iter()
            .map(|k| {
                format!(
                    "{} {} {}",
                    k.hostname,
                    k.address
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "host".into()),
                    k.state
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{:<8} {:<15} {:<14} {:>4} {:<34} {}",
            n.id,
            n.private_ip.map(|i| i.to_string()).unwrap_or_default(),
            n.phase.as_str(),
            n.generation,
            n.instance_id.as_deref().unwrap_or(""),
            containers
        );
        if let Some(e) = &n.error {
            println!("         error {}: {}", e.reason, e.message);
        }
        if n.leaving {
            println!("         leaving (a scale down removes it)");
        }
        for d in &n.disks {
            println!(
                "         disk {} {} on {} ({}{})",
                d.mount,
                d.device,
                d.id,
                d.fs_type,
                if d.formatted {
                    ", formatted by the agent"
                } else {
                    ""
                }
            );
        }
        for r in &n.recipes {
            let how = match (r.ok, r.exit_code) {
                (true, _) => "ok".to_string(),
                (false, Some(code)) => format!("failed (exit {code})"),
                (false, None) => "failed".to_string(),
            };
            println!(
                "         recipe {} ({}, generation {}): {how} in {:.1}s",
                r.name,
                r.when,
                r.generation,
                r.duration_ms as f64 / 1000.0
            );
            for line in r
                .output
                .lines()
                .rev()
                .take(RECIPE_LINES)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("           | {line}");
            }
        }
        if let Some(state) = n.details.get("vm-state").filter(|s| *s != "running") {
            println!("         VM {state}");
        }
        if let Some(r) = n.details.get("restarts") {
            println!("         restarts: {r}");
        }
    }
    let relative = |from: u64, to: Option<u64>| {
        to.map(|t| format!("{:.2}s", t.saturating_sub(from) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    if c.changes.len() > 1 || c.changes.iter().any(|ch| ch.outcome != "done") {
        println!("changes:");
        for ch in &c.changes {
            println!(
                "  #{} {:<28} generation {:>3}  published after {:>7}  {} after {}{}",
                ch.id,
                ch.summary,
                ch.generation.map_or("-".into(), |g| g.to_string()),
                relative(ch.asked_ms, ch.published_ms),
                ch.outcome,
                relative(ch.asked_ms, ch.done_ms),
                ch.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
            if let (Some(p), false) = (ch.published_ms, ch.converged.is_empty()) {
                let nodes: Vec<String> = ch
                    .converged
                    .iter()
                    .map(|v| format!("{} {}", v.node, relative(p, Some(v.at_ms))))
                    .collect();
                println!("      converged after the plan: {}", nodes.join(", "));
            }
        }
    }
    let recent: Vec<String> = c
        .events
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|e| {
            let at = relative(c.created_ms, Some(e.at_ms));
            match &e.reason {
                Some(r) => format!("{} at {at} ({r})", e.state),
                None => format!("{} at {at}", e.state),
            }
        })
        .collect();
    if recent.len() > 1 {
        println!("states: {}", recent.join(", "));
    }
}
