//! Status reports from many agents at once, against a real `shoal serve` (`bench/run
//! --only status`).
//!
//! ```text
//! status_load --url https://127.0.0.1:PORT --ca DIR/ca.pem --agents DIR/agents [--rounds 5]
//! ```
//!
//! Each agent configuration in `--agents` (as `metadata_bench --seed-only` writes them)
//! becomes one simulated agent with its own HTTP client (its own connection, as a real
//! agent on its own VM has). All start together; each sends `--rounds` reports, one
//! after the other, as the real agent's client does (`PUT …/status` with its node
//! token). Prints one JSON line: reports, seconds, reports per second, latency
//! percentiles, errors, and the first round (every agent's first report, TLS handshake
//! included) apart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use shoal_protocol::contract;
use shoal_protocol::{AgentConfig, NodeStatus, Phase};

#[derive(Debug, Parser)]
struct Args {
    /// Metadata base URL.
    #[arg(long)]
    url: String,
    /// The coordinator's CA certificate (for an https URL).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Directory of agent configurations (`node-<i>.json`).
    #[arg(long)]
    agents: PathBuf,
    /// Reports per agent.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// The phase reported (one that does not finish the cluster).
    #[arg(long, default_value = "containers")]
    phase: String,
    /// Send the same report every round, as a resident agent's liveness reports do
    /// (otherwise each round's report differs: a timing of its own).
    #[arg(long)]
    same: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let phase = Phase::parse(&args.phase).with_context(|| format!("phase {}", args.phase))?;
    let ca = match &args.ca {
        Some(p) => Some(reqwest::Certificate::from_pem(&std::fs::read(p)?)?),
        None => None,
    };
    let mut agents = Vec::new();
    for e in std::fs::read_dir(&args.agents)? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let cfg: AgentConfig = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| path.display().to_string())?;
            agents.push(cfg);
        }
    }
    anyhow::ensure!(
        !agents.is_empty(),
        "no agent configuration in {:?}",
        args.agents
    );
    let base = args.url.trim_end_matches('/').to_string();
    let start = Arc::new(tokio::sync::Barrier::new(agents.len()));
    let mut tasks = Vec::new();
    for cfg in agents {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1);
        if let Some(c) = &ca {
            b = b.tls_certs_only([c.clone()]);
        }
        let http = b.build()?;
        let url = format!(
            "{base}{}",
            contract::status_path(&cfg.cluster_key, &cfg.node_id)
        );
        let mut status = NodeStatus {
            phase,
            generation: 1,
            timings: vec![],
            error: None,
            containers: vec![],
            agent_version: "status_load".into(),
            boot: None,
            peer_drains: vec![],
            recipes: vec![],
            disks: vec![],
        };
        let same = args.same;
        let token = cfg.node_token.clone();
        let start = start.clone();
        let rounds = args.rounds;
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut out = Vec::with_capacity(rounds as usize);
            for round in 0..rounds {
                if !same {
                    status.timings = vec![shoal_protocol::PhaseTiming {
                        phase,
                        started_ms: u64::from(round),
                        duration_ms: None,
                    }];
                }
                let t = Instant::now();
                let ok = match http
                    .put(&url)
                    .bearer_auth(&token)
                    .json(&status)
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                out.push((t.elapsed().as_secs_f64() * 1000.0, ok));
            }
            out
        }));
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    let mut first = Vec::new();
    let mut errors = 0u64;
    for t in tasks {
        let r = t.await?;
        for (i, (ms, ok)) in r.into_iter().enumerate() {
            if !ok {
                errors += 1;
            }
            if i == 0 {
                first.push(ms);
            }
            all.push(ms);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    first.sort_by(f64::total_cmp);
    let v = serde_json::json!({
        "agents": first.len(),
        "reports": all.len(),
        "errors": errors,
        "seconds": seconds,
        "per_sec": all.len() as f64 / seconds,
        "p50_ms": percentile(&all, 50.0),
        "p99_ms": percentile(&all, 99.0),
        "max_ms": all.last().copied().unwrap_or(0.0),
        "first_round_p50_ms": percentile(&first, 50.0),
        "first_round_p99_ms": percentile(&first, 99.0),
    });
    println!("{v}");
    Ok(())
}
