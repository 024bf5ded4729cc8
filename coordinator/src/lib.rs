//! `shoal`, the coordinator: it provisions VMs through each cloud's API, keeps cluster
//! state in SQLite, serves each cluster's plan on the metadata endpoint, and is its own
//! CLI. `main.rs` only parses the command line; everything lives in these modules.

pub mod api;
pub mod blueprint;
pub mod cli;
pub mod credentials;
pub mod doctor;
pub mod engine;
pub mod fault;
pub mod keys;
pub mod listener;
pub mod metadata;
pub mod metrics;
pub mod planner;
pub mod progress;
pub mod providers;
pub mod retry;
pub mod server;
pub mod store;
pub mod timeline;
pub mod tls;
pub mod userdata;
