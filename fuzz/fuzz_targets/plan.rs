//! The agent's plan parser and validator, on arbitrary bytes from the metadata API.
//!
//! Never panics; a plan it accepts is consistent: it survives a JSON round trip
//! unchanged, and every lookup the agent makes on it works.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::Plan;

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = Plan::from_json(data) else {
        return;
    };
    plan.validate()
        .expect("from_json accepted a plan validate() refuses");
    let json = serde_json::to_vec(&plan).expect("an accepted plan serialises");
    let again = Plan::from_json(&json).expect("an accepted plan, serialised, is accepted again");
    assert_eq!(
        serde_json::to_value(&plan).expect("value"),
        serde_json::to_value(&again).expect("value"),
        "the round trip changed the plan"
    );
    let _ = plan.host_entries();
    for node in &plan.nodes {
        assert!(plan.node(&node.id).is_some());
        assert_eq!(
            plan.node_by_ip(node.private_ip).map(|n| n.id.as_str()),
            Some(node.id.as_str()),
            "private addresses are unique in a valid plan"
        );
        let peers = plan.peers_of(&node.id);
        assert!(
            !peers.contains(&node.private_ip),
            "a node is not its own peer"
        );
        let _ = plan.node_uses_overlay(&node.id);
        let _ = plan.images_for(&node.id);
    }
});
