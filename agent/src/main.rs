//! `shoal-agent`: parses the command line, sets up logging, runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_agent::run::{exit, run, RunOptions};

/// Shoal's node agent: fetches the plan, wires the overlay, runs the containers.
#[derive(Debug, Parser)]
#[command(name = "shoal-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Converge this node to its cluster's plan and stay resident.
    Run {
        /// Configuration written by cloud-init.
        #[arg(long, default_value = shoal_protocol::AGENT_CONFIG_PATH)]
        config: PathBuf,
        /// Docker endpoint.
        #[arg(long, env = "DOCKER_HOST", default_value = shoal_agent::docker::DEFAULT_DOCKER_HOST)]
        docker_host: String,
        /// Directory of baked image tarballs.
        #[arg(long, default_value = shoal_protocol::DEFAULT_IMAGE_DIR)]
        image_dir: PathBuf,
        /// Converge once, then exit (0 when ready) instead of staying resident.
        #[arg(long)]
        once: bool,
        /// The agent's own files (the containers' hosts files).
        #[arg(long, default_value = shoal_agent::run::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The directory data disks' mount points (`hadoopfs/fsN`) are made under: `/`
        /// on a VM; a directory of its own for a local VM, which shares the host's
        /// mount namespace.
        #[arg(long, default_value = "/")]
        mount_root: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::CONFIG as u8
            } else {
                0
            });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-agent: cannot start the async runtime: {e}");
            return ExitCode::from(exit::CONFIG as u8);
        }
    };
    let Cmd::Run {
        config,
        docker_host,
        image_dir,
        once,
        state_dir,
        mount_root,
    } = cli.command;
    let code = rt.block_on(run(RunOptions {
        config,
        docker_host,
        image_dir,
        once,
        state_dir,
        mount_root,
    }));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
