//! The metadata API's wire contract, in one place: the router and the agent's client
//! both build on these, so neither writes a path, a header name or a limit by hand.
//!
//! - `GET {PLAN_ROUTE}`: 204 while the plan is not ready, 200 with the plan once it is.
//!   `?wait=SECONDS&after=GENERATION` holds the request until the generation passes
//!   `after` or the wait (at most [`MAX_WAIT_SECS`]) runs out.
//! - `PUT {STATUS_ROUTE}` with `Authorization: Bearer <node token>`: a report.
//!
//! Every answer about a known key carries [`GENERATION_HEADER`]; a plan also carries an
//! `ETag` (`"g<generation>"`, answered `304 Not Modified` to a matching
//! `If-None-Match`) and [`PUBLISHED_HEADER`].

/// The prefix of every metadata route.
pub const PREFIX: &str = "/metadata/v1";
/// The plan route, in the router's (axum's) syntax.
pub const PLAN_ROUTE: &str = "/metadata/v1/{key}";
/// The status route, in the router's (axum's) syntax.
pub const STATUS_ROUTE: &str = "/metadata/v1/{key}/nodes/{node}/status";
/// The header carrying the served plan's generation (0 before a plan is ready).
pub const GENERATION_HEADER: &str = "shoal-generation";
/// The header carrying when the coordinator started serving the plan (Unix
/// milliseconds, its clock): with the time the plan arrived, how long it took.
pub const PUBLISHED_HEADER: &str = "shoal-published-ms";
/// Query parameter: how long to hold a plan request, in seconds.
pub const WAIT_PARAM: &str = "wait";
/// Query parameter: answer only with a plan of a larger generation than this.
pub const AFTER_PARAM: &str = "after";
/// The longest the coordinator holds a long-poll, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// How long an agent asks the coordinator to hold each long-poll, in seconds.
pub const LONG_POLL_SECS: u64 = 30;
/// The largest plan document an agent accepts (a 1,000-node plan is far below this).
pub const MAX_PLAN_BYTES: usize = 4 << 20;
/// The largest status document the coordinator accepts.
pub const MAX_STATUS_BYTES: usize = 64 << 10;

/// The path of a cluster's plan.
pub fn plan_path(key: &str) -> String {
    format!("{PREFIX}/{key}")
}

/// The path of one node's status.
pub fn status_path(key: &str, node: &str) -> String {
    format!("{PREFIX}/{key}/nodes/{node}/status")
}

/// Which route a request path is on, for counting requests: `plan`, `status` or
/// `other`. Never looks at the key.
pub fn route_of(path: &str) -> &'static str {
    match path.strip_prefix(PREFIX).and_then(|p| p.strip_prefix('/')) {
        Some(rest) if rest.ends_with("/status") && rest.contains("/nodes/") => "status",
        Some(rest) if !rest.is_empty() && !rest.contains('/') => "plan",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_the_routes() {
        assert_eq!(plan_path("k"), PLAN_ROUTE.replace("{key}", "k"));
        assert_eq!(
            status_path("k", "node-1"),
            STATUS_ROUTE
                .replace("{key}", "k")
                .replace("{node}", "node-1")
        );
        assert_eq!(route_of(&plan_path("abc")), "plan");
        assert_eq!(route_of(&status_path("abc", "node-0")), "status");
        assert_eq!(route_of("/metadata/v1/"), "other");
        assert_eq!(route_of("/v1/clusters"), "other");
        assert_eq!(route_of("/metadata/v1/a/b"), "other");
    }
}
