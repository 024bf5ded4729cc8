//! What Shoal owns in EC2: the tags that mark it, and the record of it by kind.
//!
//! Everything Shoal creates carries [`TAG_CLUSTER`]; lookups and deletion go by that
//! tag alone, so resources given by id (never tagged) are never deleted.

/// Tag on every resource Shoal creates: the cluster's `name-uid`.
pub const TAG_CLUSTER: &str = "shoal:cluster";
/// Tag on instances: the node id in the plan.
pub const TAG_NODE: &str = "shoal:node";
/// The Describe filter that selects by [`TAG_CLUSTER`].
pub(super) const CLUSTER_FILTER: &str = "tag:shoal:cluster";

/// The tags of a network resource Shoal creates: the cluster tag, and the same value
/// as its `Name` so the console shows whose it is.
pub(super) fn name_tags(tag: &str) -> [(&'static str, &str); 2] {
    [(TAG_CLUSTER, tag), ("Name", tag)]
}

/// Resources by kind, in the order deletion needs them.
#[derive(Debug, Default)]
pub(super) struct Resources {
    pub(super) instances: Vec<String>,
    pub(super) security_groups: Vec<String>,
    pub(super) subnets: Vec<String>,
    /// Internet gateways, with the VPCs they are attached to.
    pub(super) gateways: Vec<(String, Vec<String>)>,
    pub(super) vpcs: Vec<String>,
}

impl Resources {
    pub(super) fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.security_groups.is_empty()
            && self.subnets.is_empty()
            && self.gateways.is_empty()
            && self.vpcs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_filter_names_the_cluster_tag() {
        assert_eq!(CLUSTER_FILTER, format!("tag:{TAG_CLUSTER}"));
    }
}
