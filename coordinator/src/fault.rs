//! Crash points for the fault tests.
//!
//! With `SHOAL_FAULT_STOP_AT=<point>` in its environment, the coordinator stops itself
//! (SIGSTOP, the whole process at once) the first time it reaches `<point>`, after
//! writing the marker file `<state-dir>/fault-<point>`. A test waits for the marker and
//! kills the stopped process with SIGKILL: a crash at exactly that point of the life
//! cycle, which timing alone cannot hit reliably. The marker also keeps the point from
//! firing again in the restarted coordinator. Without the variable this is one
//! environment lookup per point reached, and nothing happens.
//!
//! Points: `recorded` (a creation is recorded, nothing made yet), `vm-half-network`
//! (one local VM has its address, not yet its link up and default route),
//! `vm-network` (one local VM has its network, not yet its dockerd or agent),
//! `vms-created` (the
//! provider made every VM, the store does not know them yet), `plan-published` (the
//! plan is served, no node has reported on it), `all-ready` (every node reported
//! ready, the cluster is not AVAILABLE yet), `deleting` (a deletion is recorded,
//! nothing removed yet), `vm-deleted` (one local VM is stopped, its namespace not yet
//! removed).
//!
//! Changes of a running cluster: `scale-recorded` (a scale is recorded, nothing made
//! or marked yet beyond the store), `scale-vms-created` (the new nodes' VMs exist, the
//! store does not know them yet), `drain-started` (the plan marking leaving nodes is
//! served, their drain hooks run), `scale-vms-deleted` (the leaving nodes' VMs are gone,
//! the store still lists them), `scale-plan-published` (the plan of the new node set is
//! served), `repair-recorded`, `repair-vms-deleted` (the old VMs are gone, no new one
//! yet), `repair-vms-created`, `repair-plan-published`, and `change-settled` (every node
//! is ready on the change's plan, the change is not recorded done yet).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the point to stop at.
pub const ENV: &str = "SHOAL_FAULT_STOP_AT";

static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();
static FIRED: AtomicBool = AtomicBool::new(false);

/// Where markers go (the coordinator's state directory).
pub fn set_state_dir(dir: PathBuf) {
    let _ = STATE_DIR.set(dir);
}

/// Stops the process here when `SHOAL_FAULT_STOP_AT` names `point` (once per state
/// directory).
pub fn point(point: &str) {
    let Some(want) = std::env::var_os(ENV) else {
        return;
    };
    if want != point {
        return;
    }
    let Some(dir) = STATE_DIR.get() else {
        return;
    };
    let marker = dir.join(format!("fault-{point}"));
    if marker.exists() || FIRED.swap(true, Ordering::SeqCst) {
        return;
    }
    if std::fs::write(&marker, b"").is_err() {
        return;
    }
    tracing::warn!(point, "{ENV}: stopping the coordinator here (SIGSTOP)");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
}
