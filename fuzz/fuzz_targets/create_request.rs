//! The operator API's `POST /v1/clusters` body: JSON into `CreateRequest`, then the
//! engine's validation (name, node count, blueprint, and a dry-run plan).
//!
//! Never panics; a request the engine accepts can be planned, and its plan passes the
//! agent's own parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::engine::{dry_run_plan, validate_request, CreateRequest};
use shoal_protocol::Plan;

fuzz_target!(|data: &[u8]| {
    let Ok(mut req) = serde_json::from_slice::<CreateRequest>(data) else {
        return;
    };
    // Planning is linear in the node count; keep executions fast (the limit's own
    // check is covered by nodes = 0 and by values the fuzzer finds above 1000).
    if req.nodes > 64 && req.nodes as usize <= shoal_protocol::MAX_NODES {
        req.nodes = 64;
    }
    let Ok(valid) = validate_request(&req) else {
        return;
    };
    let plan = dry_run_plan(&req.name, &valid.blueprint, valid.overlay, req.nodes)
        .expect("a validated request can be planned");
    let json = serde_json::to_vec(&plan).expect("plan serialises");
    Plan::from_json(&json).expect("the agent accepts the plan of a validated request");
    assert_eq!(plan.nodes.len(), req.nodes as usize);
});
