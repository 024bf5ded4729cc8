//! Blueprint TOML as uploaded through the operator API (`blueprint_toml`): parsing,
//! checking, host group assignment, and planning for 1 to 5 nodes.
//!
//! Never panics; a blueprint that parses either refuses a node count with an error or
//! yields a plan the agent accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::blueprint::Blueprint;
use shoal::engine::dry_run_plan;
use shoal_protocol::Plan;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(bp) = Blueprint::parse("fuzz", text) else {
        return;
    };
    let overlay = bp.overlay.unwrap_or_else(|| {
        shoal::engine::planner::DEFAULT_OVERLAY
            .parse()
            .expect("default overlay")
    });
    for nodes in 1..=5u32 {
        if bp.assign(nodes).is_err() {
            continue;
        }
        let Ok(plan) = dry_run_plan("fuzz", &bp, overlay, nodes) else {
            continue;
        };
        let json = serde_json::to_vec(&plan).expect("plan serialises");
        Plan::from_json(&json).expect("the agent accepts a plan the planner made");
    }
});
