//! The cluster's EC2 instances: launched once per node (`RunInstances` with a
//! `ClientToken`, after a look for a live instance already tagged for the node),
//! described by tag, waited for until they have private addresses, and terminated
//! (waiting until EC2 reports them gone).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use shoal_protocol::backoff::Backoff;

use super::calls::{call_tolerating, id_in};
use super::ec2::{child, child_text, items, parse, tags, AwsError, Params, QueryClient};
use super::network::Network;
use super::params::{extra, DEFAULT_INSTANCE_TYPE};
use super::resources::{CLUSTER_FILTER, TAG_CLUSTER, TAG_NODE};
use crate::providers::{ClusterRef, NodeInfo, NodeRequest, ProviderError, ProviderParams, VmState};

/// Instance states that count as "this node has a VM".
pub(super) const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// Instance states other than `terminated`: what deletion must wait for.
pub(super) const NOT_TERMINATED: [&str; 5] =
    ["pending", "running", "stopping", "stopped", "shutting-down"];

/// The idempotency token of a node's `RunInstances`: the same cluster, node and
/// incarnation always give the same token (at most 64 ASCII characters, as EC2
/// requires), so a call repeated after a timeout or a crash returns the instance
/// launched the first time; a repaired node (the next incarnation) gets a new one.
pub fn client_token(cluster: &ClusterRef, node_id: &str, incarnation: u32) -> String {
    let key = match incarnation {
        // The first VM's token is what it was before repairs existed.
        0 => format!("{}\0{}", cluster.tag(), node_id),
        n => format!("{}\0{}\0{n}", cluster.tag(), node_id),
    };
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let uid: String = cluster
        .uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("shoal-{uid}-{hex}")
}

/// An instance as `DescribeInstances` shows it.
#[derive(Debug, Clone)]
pub(super) struct Instance {
    pub(super) id: String,
    pub(super) node_id: Option<String>,
    /// The network interface it was launched with (device index 0).
    pub(super) primary_eni: Option<String>,
    state: String,
    private_ip: Option<Ipv4Addr>,
    public_ip: Option<String>,
    instance_type: Option<String>,
    zone: Option<String>,
    /// `stateReason` code and message (why it stopped or terminated).
    reason: Option<(String, String)>,
}

impl Instance {
    fn from_xml(node: roxmltree::Node<'_, '_>) -> Option<Instance> {
        let state = child(node, "instanceState")
            .and_then(|s| child_text(s, "name"))
            .unwrap_or("pending")
            .to_string();
        let reason = child(node, "stateReason").and_then(|r| {
            Some((
                child_text(r, "code")?.to_string(),
                child_text(r, "message").unwrap_or_default().to_string(),
            ))
        });
        let primary_eni = items(node, "networkInterfaceSet")
            .into_iter()
            .find_map(|n| {
                let index = child(n, "attachment").and_then(|a| child_text(a, "deviceIndex"));
                (index == Some("0"))
                    .then(|| child_text(n, "networkInterfaceId").map(str::to_string))
                    .flatten()
            });
        Some(Instance {
            id: child_text(node, "instanceId")?.to_string(),
            node_id: tags(node).remove(TAG_NODE),
            primary_eni,
            state,
            private_ip: child_text(node, "privateIpAddress").and_then(|a| a.parse().ok()),
            public_ip: child_text(node, "ipAddress")
                .filter(|a| !a.is_empty())
                .map(str::to_string),
            instance_type: child_text(node, "instanceType").map(str::to_string),
            zone: child(node, "placement")
                .and_then(|p| child_text(p, "availabilityZone"))
                .map(str::to_string),
            reason,
        })
    }

    fn is_live(&self) -> bool {
        LIVE_STATES.contains(&self.state.as_str())
    }

    pub(super) fn info(&self, node_id: &str) -> NodeInfo {
        let mut details = BTreeMap::new();
        if let Some(t) = &self.instance_type {
            details.insert("instance-type".to_string(), t.clone());
        }
        if let Some(z) = &self.zone {
            details.insert("availability-zone".to_string(), z.clone());
        }
        if let Some(ip) = &self.public_ip {
            details.insert("public-ip".to_string(), ip.clone());
        }
        NodeInfo {
            node_id: node_id.to_string(),
            instance_id: self.id.clone(),
            private_ip: self.private_ip,
            state: vm_state(&self.state),
            details,
        }
    }
}

/// EC2's instance state names in the provider-neutral form.
fn vm_state(name: &str) -> VmState {
    match name {
        "pending" => VmState::Pending,
        "running" => VmState::Running,
        "terminated" => VmState::Terminated,
        // stopping, stopped, shutting-down: not running, not gone yet.
        _ => VmState::Stopped,
    }
}

/// The cluster's instances in the given states (all states when `None`).
pub(super) async fn list(
    client: &QueryClient,
    cluster: &ClusterRef,
    states: Option<&[&str]>,
) -> Result<Vec<Instance>, AwsError> {
    let tag = cluster.tag();
    let tag_value = [tag.as_str()];
    let mut filters: Vec<(&str, &[&str])> = vec![(CLUSTER_FILTER, &tag_value)];
    if let Some(s) = states {
        filters.push(("instance-state-name", s));
    }
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = Params::new().filters(&filters);
        if let Some(t) = &token {
            params = params.set("NextToken", t.clone());
        }
        let body = client.call("DescribeInstances", &params).await?;
        let doc = parse("DescribeInstances", client.endpoint(), &body)?;
        let root = doc.root_element();
        for reservation in items(root, "reservationSet") {
            out.extend(
                items(reservation, "instancesSet")
                    .into_iter()
                    .filter_map(Instance::from_xml),
            );
        }
        token = child_text(root, "nextToken")
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Launches an instance for every node that has no live one yet, and records the ids
/// it launched in `launched`.
pub(super) async fn launch(
    client: &QueryClient,
    cluster: &ClusterRef,
    params: &ProviderParams,
    image: &str,
    net: &Network,
    nodes: &[NodeRequest],
    launched: &mut Vec<String>,
) -> Result<(), ProviderError> {
    let live = list(client, cluster, Some(&LIVE_STATES)).await?;
    for node in nodes {
        if let Some(i) = live
            .iter()
            .find(|i| i.node_id.as_deref() == Some(node.node_id.as_str()))
        {
            tracing::info!(cluster = %cluster.tag(), node = %node.node_id, instance = %i.id, "instance exists already");
            continue;
        }
        let id = run(client, cluster, params, image, net, node).await?;
        launched.push(id);
    }
    Ok(())
}

/// The device names of a node's data disks, `/dev/sdb` … `/dev/sdy` (24 at most: the
/// root volume keeps `sda`/`xvda`).
pub fn device_names(count: u32) -> Vec<String> {
    (b'b'..=b'y')
        .take(count as usize)
        .map(|c| format!("/dev/sd{}", c as char))
        .collect()
}

/// `RunInstances` for one node, tagged for it, with its idempotency token and its data
/// disks as EBS volumes deleted with the instance.
async fn run(
    client: &QueryClient,
    cluster: &ClusterRef,
    params: &ProviderParams,
    image: &str,
    net: &Network,
    node: &NodeRequest,
) -> Result<String, AwsError> {
    let tag = cluster.tag();
    let name = format!("{tag}-{}", node.node_id);
    let mut p = Params::new()
        .set("ImageId", image)
        .set(
            "InstanceType",
            params
                .instance_type
                .as_deref()
                .filter(|t| !t.is_empty())
                .unwrap_or(DEFAULT_INSTANCE_TYPE),
        )
        .set("MinCount", "1")
        .set("MaxCount", "1")
        .set(
            "ClientToken",
            client_token(cluster, &node.node_id, node.incarnation),
        )
        .set(
            "UserData",
            base64::engine::general_purpose::STANDARD.encode(&node.user_data),
        )
        .set("SubnetId", net.subnet.clone())
        .set("SecurityGroupId.1", net.security_group.clone())
        .tag_spec(
            1,
            "instance",
            &[
                (TAG_CLUSTER, tag.as_str()),
                (TAG_NODE, node.node_id.as_str()),
                ("Name", name.as_str()),
            ],
        );
    if let Some(key) = extra(params, "key-name") {
        p = p.set("KeyName", key);
    }
    if let Some(d) = &node.disks {
        for (i, dev) in device_names(d.count).into_iter().enumerate() {
            let k = format!("BlockDeviceMapping.{}", i + 1);
            p = p
                .set(format!("{k}.DeviceName"), dev)
                .set(format!("{k}.Ebs.VolumeSize"), d.size_gb.to_string())
                .set(format!("{k}.Ebs.VolumeType"), "gp3")
                .set(format!("{k}.Ebs.DeleteOnTermination"), "true");
        }
    }
    // Safe to retry: the ClientToken makes EC2 return the first launch's instance.
    let body = client.call("RunInstances", &p).await?;
    let id = id_in(client, "RunInstances", &body, "instanceId")?;
    tracing::info!(cluster = %tag, node = %node.node_id, instance = %id, "launched");
    Ok(id)
}

/// Polls on the `wait` schedule until every requested node has a live instance with a
/// private address.
pub(super) async fn wait_for_addresses(
    client: &QueryClient,
    wait: &Backoff,
    cluster: &ClusterRef,
    nodes: &[NodeRequest],
    launched: &[String],
) -> Result<Vec<NodeInfo>, ProviderError> {
    let mut polling = Polling::new(wait);
    loop {
        let all = list(client, cluster, None).await?;
        let mut out = Vec::new();
        let mut waiting = Vec::new();
        for node in nodes {
            let mine: Vec<&Instance> = all
                .iter()
                .filter(|i| i.node_id.as_deref() == Some(node.node_id.as_str()))
                .collect();
            match mine.iter().find(|i| i.is_live()) {
                Some(i) if i.private_ip.is_some() => out.push(i.info(&node.node_id)),
                Some(_) => waiting.push(node.node_id.clone()),
                None => {
                    // Launched by this call and already gone: EC2 killed it (capacity,
                    // a broken image); say why instead of waiting for the deadline.
                    if let Some(dead) = mine.iter().find(|i| launched.contains(&i.id)) {
                        let (code, message) = dead.reason.clone().unwrap_or_else(|| {
                            (
                                "InstanceTerminated".into(),
                                format!("instance {} is {}", dead.id, dead.state),
                            )
                        });
                        return Err(ProviderError::Api {
                            provider: "aws",
                            operation: "RunInstances".into(),
                            code,
                            message: format!("{message} (instance {}, {})", dead.id, node.node_id),
                        });
                    }
                    waiting.push(node.node_id.clone());
                }
            }
        }
        if waiting.is_empty() {
            return Ok(out);
        }
        tracing::debug!(cluster = %cluster.tag(), waiting = %waiting.join(","), "waiting for private addresses");
        if let Err(secs) = polling.pause().await {
            return Err(ProviderError::Unavailable {
                provider: "aws",
                message: format!(
                    "cluster {}: no private address after {secs}s for {}",
                    cluster.tag(),
                    waiting.join(", ")
                ),
            });
        }
    }
}

/// Terminates instances and waits, on the `wait` schedule, until EC2 reports them
/// terminated.
pub(super) async fn terminate(
    client: &QueryClient,
    wait: &Backoff,
    ids: &[String],
) -> Result<(), ProviderError> {
    // EC2 rejects the whole call when one id is unknown; ids come from Describe, so
    // this happens only in a race with another deletion: then go one by one.
    match client
        .call("TerminateInstances", &Params::new().list("InstanceId", ids))
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {
            for id in ids {
                call_tolerating(
                    client,
                    "TerminateInstances",
                    &Params::new().list("InstanceId", std::slice::from_ref(id)),
                    &["InvalidInstanceID.NotFound"],
                )
                .await?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(instances = %ids.join(","), "terminating");
    let mut polling = Polling::new(wait);
    loop {
        let body = match client
            .call(
                "DescribeInstances",
                &Params::new()
                    .list("InstanceId", ids)
                    .filters(&[("instance-state-name", &NOT_TERMINATED)]),
            )
            .await
        {
            Ok(b) => b,
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let doc = parse("DescribeInstances", client.endpoint(), &body)?;
        let left: Vec<String> = items(doc.root_element(), "reservationSet")
            .into_iter()
            .flat_map(|r| items(r, "instancesSet"))
            .filter_map(|i| child_text(i, "instanceId").map(str::to_string))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if let Err(secs) = polling.pause().await {
            return Err(ProviderError::Unavailable {
                provider: "aws",
                message: format!("instances {} not terminated after {secs}s", left.join(", ")),
            });
        }
    }
}

/// Deletes network interfaces that outlived their instance: EC2 deletes an instance's
/// primary interface with it, but one whose `DeleteOnTermination` was turned off (or an
/// emulator that keeps it) is left `available`. One already gone is no error.
pub(super) async fn delete_leftover_interfaces(
    client: &QueryClient,
    enis: &[String],
) -> Result<(), ProviderError> {
    for eni in enis {
        call_tolerating(
            client,
            "DeleteNetworkInterface",
            &Params::new().set("NetworkInterfaceId", eni.clone()),
            &["InvalidNetworkInterfaceID.NotFound"],
        )
        .await?;
    }
    Ok(())
}

/// A polling loop's schedule: jittered, growing pauses until an overall deadline.
#[derive(Debug)]
struct Polling<'a> {
    wait: &'a Backoff,
    start: Instant,
    attempt: u32,
}

impl<'a> Polling<'a> {
    fn new(wait: &'a Backoff) -> Polling<'a> {
        Polling {
            wait,
            start: Instant::now(),
            attempt: 0,
        }
    }

    /// Sleeps until the next look; `Err` with the seconds waited so far, without
    /// sleeping, when that look would come after the deadline.
    async fn pause(&mut self) -> Result<(), u64> {
        self.attempt += 1;
        let delay = self.wait.delay(self.attempt, rand::random::<f64>());
        if self.start.elapsed() + delay > self.wait.deadline {
            return Err(self.start.elapsed().as_secs());
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// A cluster for this provider's unit tests.
#[cfg(test)]
pub(super) fn test_cluster() -> ClusterRef {
    ClusterRef {
        name: "demo".into(),
        uid: "0123456789ab".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_stable_short_ascii_and_distinct() {
        let c = test_cluster();
        let t = client_token(&c, "node-0", 0);
        assert_eq!(t, client_token(&c, "node-0", 0));
        assert_ne!(t, client_token(&c, "node-1", 0));
        // A repaired node's new VM is a new launch.
        assert_ne!(t, client_token(&c, "node-0", 1));
        assert_ne!(client_token(&c, "node-0", 1), client_token(&c, "node-0", 2));
        let other = ClusterRef {
            name: "demo".into(),
            uid: "ba9876543210".into(),
        };
        assert_ne!(t, client_token(&other, "node-0", 0));
        let long = ClusterRef {
            name: "a".repeat(63),
            uid: "0123456789ab".into(),
        };
        for tok in [t.clone(), client_token(&long, &"n".repeat(200), 7)] {
            assert!(tok.len() <= 64 && tok.is_ascii(), "{tok}");
        }
        assert!(t.starts_with("shoal-0123456789ab-"), "{t}");
    }

    #[test]
    fn instance_states_map_to_vm_states() {
        assert_eq!(vm_state("pending"), VmState::Pending);
        assert_eq!(vm_state("running"), VmState::Running);
        assert_eq!(vm_state("shutting-down"), VmState::Stopped);
        assert_eq!(vm_state("stopped"), VmState::Stopped);
        assert_eq!(vm_state("terminated"), VmState::Terminated);
    }

    #[test]
    fn reads_instances_from_describe_answers() {
        let xml = r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <reservationSet><item><instancesSet><item>
    <instanceId>i-0abc</instanceId>
    <instanceState><code>16</code><name>running</name></instanceState>
    <privateIpAddress>10.77.0.12</privateIpAddress>
    <ipAddress>203.0.113.9</ipAddress>
    <networkInterfaceSet><item><networkInterfaceId>eni-0abc</networkInterfaceId>
      <attachment><deviceIndex>0</deviceIndex></attachment></item></networkInterfaceSet>
    <instanceType>t3.medium</instanceType>
    <placement><availabilityZone>us-east-1a</availabilityZone></placement>
    <tagSet><item><key>shoal:node</key><value>node-2</value></item>
            <item><key>shoal:cluster</key><value>demo-0123456789ab</value></item></tagSet>
  </item></instancesSet></item></reservationSet>
</DescribeInstancesResponse>"#;
        let doc = roxmltree::Document::parse(xml).expect("xml");
        let inst: Vec<Instance> = items(doc.root_element(), "reservationSet")
            .into_iter()
            .flat_map(|r| items(r, "instancesSet"))
            .filter_map(Instance::from_xml)
            .collect();
        assert_eq!(inst.len(), 1);
        let info = inst[0].info("node-2");
        assert_eq!(info.instance_id, "i-0abc");
        assert_eq!(info.private_ip, Some(Ipv4Addr::new(10, 77, 0, 12)));
        assert_eq!(info.state, VmState::Running);
        assert_eq!(info.details["instance-type"], "t3.medium");
        assert_eq!(info.details["availability-zone"], "us-east-1a");
        assert_eq!(info.details["public-ip"], "203.0.113.9");
        assert_eq!(inst[0].node_id.as_deref(), Some("node-2"));
        assert_eq!(inst[0].primary_eni.as_deref(), Some("eni-0abc"));
    }
}
