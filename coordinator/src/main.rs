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
    if !matches!(cli.command, shoal::cli::Command::Serve(_)) {
        // A command whose output is cut short (`shoal cluster show big | head`) ends
        // quietly, as other Unix tools do, instead of panicking on the closed pipe.
        // The server keeps SIGPIPE ignored: a peer that goes away is an error on its
        // socket, not the end of the coordinator.
        // SAFETY: no other thread exists yet, and SIG_DFL installs no handler code.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
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
