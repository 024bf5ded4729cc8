//! `shoal`, the coordinator: it provisions VMs through each cloud's API, keeps cluster
//! state, serves each cluster's plan on the metadata endpoint, and is its own CLI.
//! `main.rs` only parses the command line and dispatches; everything lives in these
//! modules. docs/architecture.md maps them: what each owns and what it may call.

pub mod api;
pub mod blueprint;
pub mod cli;
pub mod console;
pub mod engine;
pub mod fault;
pub mod keys;
pub mod metadata;
pub mod metrics;
pub mod providers;
pub mod server;
pub mod store;
pub mod tls;
pub mod userdata;
pub mod view;
