//! `shoal`: parses the command line, sets up logging, runs.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal::cli::{default_state_dir, run_client, Cli, Command};
use shoal::listener::Limits;
use shoal::server::{serve, ServeOptions};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One TLS crypto provider for the whole process (reqwest and the listeners).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async {
        match &cli.command {
            Command::Serve(a) => {
                let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
                let agent_bin = a.agent_bin.clone().unwrap_or_else(|| {
                    std::env::current_exe()
                        .ok()
                        .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
                        .unwrap_or_else(|| "shoal-agent".into())
                });
                let opts = ServeOptions {
                    qemu_image: a
                        .qemu_image
                        .clone()
                        .unwrap_or_else(|| state_dir.join("vm-image")),
                    qemu_vpc: a.qemu_vpc,
                    qemu_accel: a.qemu_accel,
                    image_dir: a
                        .image_dir
                        .clone()
                        .unwrap_or_else(|| state_dir.join("images")),
                    state_dir,
                    api_listen: a.api_listen,
                    metadata_listen: a.metadata_listen,
                    advertise_url: a.advertise_url.clone(),
                    agent_bin,
                    local_vpc: a.local_vpc,
                    local_prefix: a.local_prefix.clone(),
                    create_timeout: Duration::from_secs(a.create_timeout),
                    insecure_http: a.insecure_http,
                    tls_names: a.tls_san.clone(),
                    metadata_limits: Limits {
                        rate_per_sec: a.rate_limit,
                        burst: a.rate_burst,
                        max_conns_per_source: a.max_conns_per_source,
                        ..Limits::default()
                    },
                };
                match serve(opts).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("shoal: {e}");
                        1
                    }
                }
            }
            _ => match run_client(&cli).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("shoal: {e}");
                    1
                }
            },
        }
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
