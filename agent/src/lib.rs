//! `shoal-agent`: fetches its cluster's plan from the coordinator, wires the VM into the
//! overlay (netlink and the Docker API), runs the planned containers, reports each phase,
//! and stays resident to keep the node converged.
//!
//! The binary (`main.rs`) only parses the command line and sets up logging; the boot
//! sequence lives in [`run`].

pub mod boot_milestones;
pub mod client;
pub mod config;
pub mod containers;
pub mod disks;
pub mod docker;
pub mod images;
pub mod liveness;
pub mod netlink;
pub mod netns;
pub mod netwatch;
pub mod overlay;
pub mod peer_drain;
pub mod probes;
pub mod recipes;
pub mod retry;
pub mod run;
