//! `shoal`: parses the command line, sets up logging and the runtime, dispatches.

use std::process::ExitCode;

use clap::Parser;
use shoal::cli::{exit, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A local VM's init reaps every orphan of its VM (waitpid(-1)) and so must own its
    // process alone: no runtime, no threads.
    if let shoal::cli::Command::LocalVmInit { vm_dir } = &cli.command {
        let code = shoal::providers::local::init::run(vm_dir);
        return ExitCode::from(u8::try_from(code).unwrap_or(exit::LOCAL));
    }
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
            return ExitCode::from(exit::LOCAL);
        }
    };
    ExitCode::from(rt.block_on(shoal::cli::run(cli)))
}
