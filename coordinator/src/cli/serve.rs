//! `shoal serve`: the coordinator's command line, turned into [`ServeOptions`].

use std::path::Path;
use std::time::Duration;

use super::error::exit;
use super::ServeArgs;
use crate::server::listener::Limits;
use crate::server::{serve, ServeOptions};
use crate::store::{StoreChoice, StoreError};

/// The options `shoal serve` runs with; an invalid `--store` is an error.
pub fn options(state_dir: &Path, a: &ServeArgs) -> Result<ServeOptions, StoreError> {
    let store = StoreChoice::parse(a.store.as_deref())?;
    let agent_bin = a.agent_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
            .unwrap_or_else(|| "shoal-agent".into())
    });
    Ok(ServeOptions {
        store,
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
        state_dir: state_dir.to_path_buf(),
        api_listen: a.api_listen,
        metadata_listen: a.metadata_listen,
        advertise_url: a.advertise_url.clone(),
        agent_bin,
        local_vpc: a.local_vpc,
        local_prefix: a.local_prefix.clone(),
        local_shared_images: a.local_images == super::LocalImages::Shared,
        create_timeout: Duration::from_secs(a.create_timeout),
        report_secs: a.report_interval,
        lost_after: Duration::from_secs(a.lost_after),
        insecure_http: a.insecure_http,
        tls_names: a.tls_san.clone(),
        metadata_limits: Limits {
            rate_per_sec: a.rate_limit,
            burst: a.rate_burst,
            max_conns_per_source: a.max_conns_per_source,
            max_conns: a.max_conns,
            ..Limits::default()
        },
        enable_sim: a.enable_sim_provider,
    })
}

/// Runs the coordinator until SIGINT or SIGTERM; exit 1 if it cannot start or fails.
pub async fn run(state_dir: &Path, a: &ServeArgs) -> u8 {
    let opts = match options(state_dir, a) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("shoal: {e}");
            return exit::USAGE;
        }
    };
    match serve(opts).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("shoal: {e}");
            exit::FAILED
        }
    }
}
