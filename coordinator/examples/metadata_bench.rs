//! The coordinator's metadata endpoint, alone, for benchmarks (`bench/run`).
//!
//! It serves a synthetic cluster through the real code path: the plan is built by
//! `shoal::engine::planner::build` from a built-in blueprint, stored in a real `Store` (SQLite
//! in a scratch directory), and served by `shoal::metadata::router` over an `Engine`,
//! exactly as `shoal serve` serves it, but without booting a single VM. So a 100-node
//! plan can be load-tested, 10,000 long-polls held, and real agents pointed at it.
//!
//! ```text
//! metadata_bench --dir DIR --listen 127.0.0.1:0 --nodes 100 [--first-ip 10.215.0.10]
//!                [--blueprint demo] [--hold]
//! ```
//!
//! Writes into `DIR`: `plan.json` (the exact bytes served), `key` (the cluster key),
//! `agents/node-<i>.json` (one agent configuration per node, as cloud-init would
//! write it) and prints one line `listening <addr>` on stdout once it serves.
//! With `--hold`, the plan is built but not published (answers are 204) until a line
//! `publish` arrives on stdin; then it prints `published <unix µs>`. The line `stats`
//! prints `waiting <held long-polls> rss_kib <resident set>`. End of stdin stops it.
//!
//! With `--seed-only`, it stores the cluster (CREATING, its plan published) in
//! `DIR/state` (or the PostgreSQL database `SHOAL_STORE_URL` names) and exits without serving: `shoal serve --state-dir DIR/state` then
//! resumes it and takes its agents' reports (the status-report benchmark).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use shoal::blueprint::Blueprint;
use shoal::engine::planner::{self, PlannedNode};
use shoal::engine::{Engine, EngineSettings};
use shoal::providers::registry::Registry;
use shoal::providers::ProviderParams;
use shoal::store::{now_ms, ClusterRow, ClusterState, NodeRow, Store, StoreChoice};
use shoal::{keys, metadata};
use shoal_protocol::{AgentConfig, Phase};

/// Serves a synthetic cluster's plan through the coordinator's metadata router.
#[derive(Debug, Parser)]
struct Args {
    /// Scratch directory (store, plan, key, agent configurations).
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Number of nodes in the plan.
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Private address of node 0; node i gets this plus i.
    #[arg(long, default_value = "10.215.0.10")]
    first_ip: Ipv4Addr,
    /// Built-in blueprint.
    #[arg(long, default_value = "demo")]
    blueprint: String,
    /// Overlay range (default: the coordinator's, or a range within 10.0.0.0/8 with a
    /// /24 for each node when `--nodes` needs more than it has).
    #[arg(long)]
    overlay: Option<String>,
    /// Do not publish the plan until `publish` is read on stdin.
    #[arg(long)]
    hold: bool,
    /// Worker threads of the runtime (default: one per core, as `shoal serve`).
    #[arg(long)]
    workers: Option<usize>,
    /// What drives the connections: `shoal` (the metadata listener of `shoal serve`,
    /// `server::listener::serve_metadata`, without TLS and without limits), `axum`
    /// (`axum::serve`, hyper's HTTP/1 server, as `shoal serve` served metadata before),
    /// or `half-close` (hyper's HTTP/1 connection with half-closed connections allowed:
    /// hyper then stops reading a connection while its request is in flight, and so
    /// does not hold a second read buffer for each held long-poll).
    #[arg(long, value_enum, default_value_t = Server::Shoal)]
    server: Server,
    /// Store the cluster with its plan published, then exit without serving.
    #[arg(long)]
    seed_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Server {
    Shoal,
    Axum,
    HalfClose,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = args.workers {
        rt.worker_threads(w);
    }
    rt.enable_all().build()?.block_on(run(args))
}

/// Serves `app` on hyper's HTTP/1 server with `half_close(true)`.
async fn serve_half_close(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Writes a scratch file holding a secret, mode 0600 (no fsync: nothing here outlives
/// the benchmark).
fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let name = "bench";
    std::fs::create_dir_all(args.dir.join("agents"))?;
    // SQLite in DIR/state, or the database SHOAL_STORE_URL names (as `shoal serve`).
    let store: Arc<dyn Store> =
        StoreChoice::parse(std::env::var(shoal::store::pg::URL_ENV).ok().as_deref())?
            .open(&args.dir.join("state"))
            .await?;
    let blueprint = Blueprint::built_in(&args.blueprint)
        .with_context(|| format!("no built-in blueprint {:?}", args.blueprint))??;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let metadata_url = format!("http://{addr}");

    let now = now_ms();
    let key = keys::random_secret();
    let cluster = ClusterRow {
        name: name.to_string(),
        uid: keys::random_hex(6),
        provider: "bench".into(),
        state: ClusterState::Creating,
        reason: None,
        key: key.clone(),
        generation: 0,
        plan: None,
        blueprint: blueprint.clone(),
        params: ProviderParams::default(),
        metadata_url: metadata_url.clone(),
        node_count: args.nodes,
        overlay: overlay_for(args.overlay.as_deref(), args.nodes)?,
        vni: 4242,
        domain: blueprint.domain.clone(),
        created_ms: now,
        updated_ms: now,
        available_ms: None,
        ready_nodes: 0,
        next_index: args.nodes,
        auto_repair_secs: None,
        change: Some(1),
    };
    let first = u32::from(args.first_ip);
    let mut rows = Vec::new();
    let mut planned = Vec::new();
    let groups = blueprint.assign(args.nodes)?;
    for i in 0..args.nodes {
        let id = format!("node-{i}");
        let group = groups[i as usize].name.clone();
        let token = keys::random_secret();
        let ip = Ipv4Addr::from(first + i);
        let mut row = NodeRow::requested(id.clone(), i, group.clone(), token.clone(), now);
        row.instance_id = Some(id.clone());
        row.private_ip = Some(ip);
        row.phase = Phase::VmRunning;
        row.running_ms = Some(now);
        rows.push(row);
        planned.push(PlannedNode {
            id: id.clone(),
            index: i,
            group: group.clone(),
            leaving: false,
            private_ip: ip,
            instance_id: None,
            disk_ids: Vec::new(),
        });
        let cfg = AgentConfig {
            metadata_url: metadata_url.clone(),
            cluster_key: key.clone(),
            node_id: id.clone(),
            node_token: token,
            ca_cert_pem: None,
            deadline_secs: 120,
        };
        write_private(
            &args.dir.join("agents").join(format!("{id}.json")),
            &serde_json::to_vec_pretty(&cfg)?,
        )?;
    }
    store.insert_cluster(&cluster, &rows).await?;
    write_private(&args.dir.join("key"), key.as_bytes())?;

    let mut plan = planner::build(
        name,
        &blueprint,
        cluster.overlay,
        cluster.vni,
        &planned,
        None,
    )?;
    // The store assigns the first generation, 1: the file holds what will be served.
    plan.generation = 1;
    std::fs::write(args.dir.join("plan.json"), serde_json::to_string(&plan)?)?;

    let engine = Engine::new(
        store.clone(),
        Registry::default(),
        EngineSettings::default(),
    )
    .await?;
    let md = engine.metadata_state();
    let publish = {
        let md = md.clone();
        let store = store.clone();
        let key = key.clone();
        move || {
            let (md, store, key, plan) = (md.clone(), store.clone(), key.clone(), plan.clone());
            async move {
                let stored = store.publish_plan(name, plan).await?;
                md.hub.publish(&key, stored.generation(), stored.json);
                anyhow::Ok(())
            }
        }
    };
    if !args.hold || args.seed_only {
        publish().await?;
    }
    if args.seed_only {
        println!("seeded {}", args.dir.join("state").display());
        return Ok(());
    }
    let app = metadata::router(md.clone());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let server = match args.server {
        Server::HalfClose => tokio::spawn(serve_half_close(listener, app)),
        Server::Axum => tokio::spawn(async move { axum::serve(listener, app).await }),
        Server::Shoal => {
            let limits = shoal::server::listener::Limits {
                rate_per_sec: 0.0,
                max_conns: 1 << 20,
                max_conns_per_source: 1 << 20,
                ..Default::default()
            };
            tokio::spawn(shoal::server::listener::serve_metadata(
                listener,
                None,
                app,
                limits,
                stopped,
                Default::default(),
            ))
        }
    };
    println!("listening {addr}");

    // Commands arrive on stdin, read by a thread of its own (blocking reads).
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut published = !args.hold;
    while let Some(line) = lines.recv().await {
        match line.trim() {
            "publish" if !published => {
                publish().await?;
                published = true;
                println!("published {}", unix_micros());
            }
            "publish" => println!("published already"),
            "stats" => println!("waiting {} rss_kib {}", md.hub.waiting(), rss_kib()),
            other => println!("unknown command {other:?} (publish, stats)"),
        }
    }
    server.abort();
    Ok(())
}

/// The overlay to plan `nodes` in: the one given, else the coordinator's default when
/// it has room (one /24 per node, the first left unused), else the smallest range that
/// has, aligned within 10.0.0.0/8.
fn overlay_for(given: Option<&str>, nodes: u32) -> anyhow::Result<ipnet::Ipv4Net> {
    if let Some(o) = given {
        return Ok(o.parse()?);
    }
    let default: ipnet::Ipv4Net = planner::DEFAULT_OVERLAY.parse()?;
    let slices = u64::from(nodes) + 1;
    let bits = 64 - (slices - 1).leading_zeros() as u8; // ceil(log2(slices))
    let prefix = 24u8.saturating_sub(bits).max(8);
    if prefix >= default.prefix_len() {
        return Ok(default);
    }
    Ok(ipnet::Ipv4Net::new(default.addr(), prefix)?.trunc())
}
