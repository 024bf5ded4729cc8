//! The AWS provider: EC2 through its Query API, signed with SigV4.
//!
//! Per cluster it creates (or takes, when given by id) a VPC, a subnet and a security
//! group, plus an internet gateway with a default route when it made the VPC itself,
//! and one instance per node. Everything it creates carries the tag
//! `shoal:cluster = <name>-<uid>`; instances also carry `shoal:node`. Lookups go by
//! those tags, so a repeated call (after a crash, or a retry by the engine) reuses what
//! exists instead of making a second copy, and deletion works from tags alone, touching
//! only what Shoal made: resources given by id are never tagged, so never deleted.
//!
//! `RunInstances` carries a `ClientToken` derived from the cluster and node, so EC2
//! itself refuses to launch twice for the same node; before launching, the provider
//! also looks for a live instance already tagged for the node (emulators such as moto
//! do not honour client tokens).
//!
//! See `docs/aws.md` for the operator's view.

pub mod credentials;
pub mod ec2;
pub mod preflight;

pub use self::preflight::preflight;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use shoal_protocol::backoff::Backoff;

pub use credentials::{AwsSettings, Credentials, Env};
pub use ec2::{AwsError, Params, QueryClient, EC2_API_VERSION};

use crate::providers::retry::{retry, Verdict, CLOUD_BACKOFF};
use crate::providers::{
    ClusterRef, NodeInfo, NodeRequest, Provider, ProviderError, ProviderParams, VmState,
};
use ec2::{child, child_text, classify, find, items, parse, tags};

/// Tag on every resource Shoal creates: the cluster's `name-uid`.
pub const TAG_CLUSTER: &str = "shoal:cluster";
/// Tag on instances: the node id in the plan.
pub const TAG_NODE: &str = "shoal:node";
/// The VPC range used when `--set vpc-cidr=` is not given.
pub const DEFAULT_VPC_CIDR: &str = "10.77.0.0/16";
/// The instance type used when `--instance-type` is not given.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

/// Instance states that count as "this node has a VM".
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// Instance states other than `terminated`: what deletion must wait for.
const NOT_TERMINATED: [&str; 5] = ["pending", "running", "stopping", "stopped", "shutting-down"];

/// How long the provider waits, and how it backs off, for each kind of wait.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Retries of single API calls (throttling, 5xx, connection errors).
    pub api: Backoff,
    /// Polling: instances getting addresses, instances terminating.
    pub wait: Backoff,
    /// Deleting network resources that are still in use (`DependencyViolation`: EC2
    /// releases a terminated instance's network interface some time after it is gone).
    pub dependency: Backoff,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            api: CLOUD_BACKOFF,
            wait: Backoff {
                initial: Duration::from_secs(2),
                cap: Duration::from_secs(15),
                deadline: Duration::from_secs(600),
            },
            dependency: Backoff {
                initial: Duration::from_secs(2),
                cap: Duration::from_secs(15),
                deadline: Duration::from_secs(300),
            },
        }
    }
}

/// The AWS provider. Credentials, region and endpoint are resolved at every call from
/// the cluster's [`ProviderParams`] and the environment (see [`credentials`]).
#[derive(Debug, Clone, Default)]
pub struct AwsProvider {
    env: Env,
    timing: Timing,
    http: OnceLock<reqwest::Client>,
}

impl AwsProvider {
    /// A provider reading the process environment and the user's `~/.aws` files.
    pub fn new() -> AwsProvider {
        AwsProvider::default()
    }

    /// A provider reading only the given environment (tests; servers that keep each
    /// operator's settings apart).
    pub fn with_env(env: Env) -> AwsProvider {
        AwsProvider {
            env,
            ..AwsProvider::default()
        }
    }

    /// Replaces the retry and wait schedules.
    pub fn with_timing(mut self, timing: Timing) -> AwsProvider {
        self.timing = timing;
        self
    }

    /// A signed EC2 client for the cluster's settings.
    pub fn client(&self, params: &ProviderParams) -> Result<QueryClient, ProviderError> {
        let settings = credentials::resolve(&self.env, params)?;
        tracing::debug!(
            region = %settings.region,
            endpoint = %settings.endpoint,
            access_key_id = settings.credentials.access_key_id(),
            credentials_from = settings.credentials.source(),
            "aws settings"
        );
        let http = match self.http.get() {
            Some(c) => c.clone(),
            None => {
                let c = ec2::http_client()?;
                // A concurrent call may have set it first; either client is fine.
                let _ = self.http.set(c.clone());
                c
            }
        };
        Ok(QueryClient::new(
            http,
            &settings.endpoint,
            &settings.region,
            "ec2",
            EC2_API_VERSION,
            settings.credentials,
        )?
        .with_backoff(self.timing.api))
    }
}

/// The idempotency token of a node's `RunInstances`: the same cluster and node always
/// give the same token (at most 64 ASCII characters, as EC2 requires), so a call
/// repeated after a timeout or a crash returns the instance launched the first time.
pub fn client_token(cluster: &ClusterRef, node_id: &str) -> String {
    let digest = Sha256::digest(format!("{}\0{}", cluster.tag(), node_id).as_bytes());
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
struct Instance {
    id: String,
    node_id: Option<String>,
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
        Some(Instance {
            id: child_text(node, "instanceId")?.to_string(),
            node_id: tags(node).remove(TAG_NODE),
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

    fn info(&self, node_id: &str) -> NodeInfo {
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

/// Resources by kind, in the order deletion needs them.
#[derive(Debug, Default)]
struct Resources {
    instances: Vec<String>,
    security_groups: Vec<String>,
    subnets: Vec<String>,
    /// Internet gateways, with the VPCs they are attached to.
    gateways: Vec<(String, Vec<String>)>,
    vpcs: Vec<String>,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.security_groups.is_empty()
            && self.subnets.is_empty()
            && self.gateways.is_empty()
            && self.vpcs.is_empty()
    }
}

/// The network a cluster's instances are launched into.
#[derive(Debug)]
struct Network {
    subnet: String,
    security_group: String,
}

fn config(message: String) -> ProviderError {
    ProviderError::Config {
        provider: "aws",
        message,
    }
}

fn extra<'a>(params: &'a ProviderParams, key: &str) -> Option<&'a str> {
    params
        .extra
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// The value of the first `name` element in a create call's answer.
fn id_in(
    client: &QueryClient,
    operation: &str,
    body: &str,
    name: &str,
) -> Result<String, AwsError> {
    let doc = parse(operation, client.endpoint(), body)?;
    find(doc.root_element(), name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AwsError::BadResponse {
            operation: operation.to_string(),
            endpoint: client.endpoint().to_string(),
            status: 200,
            message: format!("no <{name}> in the answer"),
        })
}

/// `(id, extra field)` of each item of a Describe call's list.
async fn describe_ids(
    client: &QueryClient,
    action: &str,
    set: &str,
    id_field: &str,
    other_field: &str,
    params: &Params,
) -> Result<Vec<(String, Option<String>)>, AwsError> {
    let body = client.call_once(action, params).await?;
    let doc = parse(action, client.endpoint(), &body)?;
    Ok(items(doc.root_element(), set)
        .into_iter()
        .filter_map(|i| {
            Some((
                child_text(i, id_field)?.to_string(),
                child_text(i, other_field).map(str::to_string),
            ))
        })
        .collect())
}

/// A kind of network resource: how to list it, read its id, and create it.
#[derive(Debug)]
struct Kind {
    describe: &'static str,
    /// The answer's list element.
    set: &'static str,
    id: &'static str,
    /// A second field worth reading (the VPC, or the VPC's range).
    other: &'static str,
    create: &'static str,
}

const VPC: Kind = Kind {
    describe: "DescribeVpcs",
    set: "vpcSet",
    id: "vpcId",
    other: "cidrBlock",
    create: "CreateVpc",
};
const SUBNET: Kind = Kind {
    describe: "DescribeSubnets",
    set: "subnetSet",
    id: "subnetId",
    other: "vpcId",
    create: "CreateSubnet",
};
const SECURITY_GROUP: Kind = Kind {
    describe: "DescribeSecurityGroups",
    set: "securityGroupInfo",
    id: "groupId",
    other: "vpcId",
    create: "CreateSecurityGroup",
};
const GATEWAY: Kind = Kind {
    describe: "DescribeInternetGateways",
    set: "internetGatewaySet",
    id: "internetGatewayId",
    other: "ownerId",
    create: "CreateInternetGateway",
};

impl Kind {
    /// `(id, other field)` of each resource matching `params`, in one attempt.
    async fn list_once(
        &self,
        client: &QueryClient,
        params: &Params,
    ) -> Result<Vec<(String, Option<String>)>, AwsError> {
        describe_ids(client, self.describe, self.set, self.id, self.other, params).await
    }

    /// The same, with retries.
    async fn list(
        &self,
        client: &QueryClient,
        params: &Params,
    ) -> Result<Vec<(String, Option<String>)>, AwsError> {
        retry(client.backoff(), self.describe, classify, || {
            self.list_once(client, params)
        })
        .await
    }

    /// Finds the one resource tagged for the cluster, or creates it; both inside one
    /// retry loop, so a create whose answer was lost (timeout) is found by the next
    /// attempt instead of being made twice. Returns the id, the other field, and
    /// whether this call created it.
    async fn find_or_create(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
        extra_filters: &[(&str, &[&str])],
        create_params: &Params,
    ) -> Result<(String, Option<String>, bool), AwsError> {
        let tag = cluster.tag();
        let tag_value = [tag.as_str()];
        let mut filters: Vec<(&str, &[&str])> = vec![("tag:shoal:cluster", &tag_value)];
        filters.extend_from_slice(extra_filters);
        let find_params = Params::new().filters(&filters);
        retry(client.backoff(), self.create, classify, || async {
            let found = self.list_once(client, &find_params).await?;
            if let Some((id, other)) = found.first() {
                if found.len() > 1 {
                    tracing::warn!(cluster = %tag, describe = self.describe, count = found.len(), using = %id, "several resources carry this cluster's tag");
                }
                return Ok((id.clone(), other.clone(), false));
            }
            let body = client.call_once(self.create, create_params).await?;
            let id = id_in(client, self.create, &body, self.id)?;
            let doc = parse(self.create, client.endpoint(), &body)?;
            let other = find(doc.root_element(), self.other)
                .and_then(|n| n.text())
                .map(|t| t.trim().to_string());
            tracing::info!(cluster = %tag, create = self.create, %id, "created");
            Ok((id, other, true))
        })
        .await
    }
}

/// Calls `action` and counts the listed "already so" codes as success.
async fn call_tolerating(
    client: &QueryClient,
    action: &str,
    params: &Params,
    ok_codes: &[&str],
) -> Result<(), AwsError> {
    match client.call(action, params).await {
        Ok(_) => Ok(()),
        Err(e) if e.code().is_some_and(|c| ok_codes.contains(&c)) => {
            tracing::debug!(%action, code = e.code().unwrap_or_default(), "already done");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl AwsProvider {
    /// The cluster's instances in the given states (all states when `None`).
    async fn instances(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
        states: Option<&[&str]>,
    ) -> Result<Vec<Instance>, AwsError> {
        let tag = cluster.tag();
        let tag_value = [tag.as_str()];
        let mut filters: Vec<(&str, &[&str])> = vec![("tag:shoal:cluster", &tag_value)];
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

    /// Makes or finds the VPC, subnet and security group; records what it created.
    async fn network(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
        params: &ProviderParams,
        made: &mut Resources,
    ) -> Result<Network, ProviderError> {
        let tag = cluster.tag();
        let base_tags = [(TAG_CLUSTER, tag.as_str()), ("Name", tag.as_str())];
        let public = extra(params, "public-ip") != Some("false");

        let given_vpc = extra(params, "vpc-id");
        let given_subnet = extra(params, "subnet-id");
        let given_sg = extra(params, "security-group-id");

        let subnet_vpc = match given_subnet {
            Some(s) => {
                let found = SUBNET
                    .list(client, &Params::new().list("SubnetId", &[s]))
                    .await?;
                let vpc = found
                    .into_iter()
                    .next()
                    .and_then(|(_, v)| v)
                    .ok_or_else(|| {
                        config(format!("subnet {s} (from --set subnet-id) was not found"))
                    })?;
                Some(vpc)
            }
            None => None,
        };

        // (vpc id, its CIDR when Shoal owns it)
        let (vpc, owned_cidr) = match (given_vpc, &subnet_vpc) {
            (Some(v), Some(sv)) if v != sv => {
                return Err(config(format!(
                    "subnet {} is in {sv}, not in the VPC given with --set vpc-id={v}",
                    given_subnet.unwrap_or_default()
                )))
            }
            (Some(v), _) => {
                let found = VPC.list(client, &Params::new().list("VpcId", &[v])).await?;
                if found.is_empty() {
                    return Err(config(format!("VPC {v} (from --set vpc-id) was not found")));
                }
                (v.to_string(), None)
            }
            (None, Some(sv)) => (sv.clone(), None),
            (None, None) => {
                let cidr = extra(params, "vpc-cidr").unwrap_or(DEFAULT_VPC_CIDR);
                if cidr.parse::<ipnet::Ipv4Net>().is_err() {
                    return Err(config(format!(
                        "--set vpc-cidr={cidr} is not an IPv4 CIDR (e.g. {DEFAULT_VPC_CIDR})"
                    )));
                }
                let (id, found_cidr, created) = VPC
                    .find_or_create(
                        client,
                        cluster,
                        &[],
                        &Params::new()
                            .set("CidrBlock", cidr)
                            .tag_spec(1, "vpc", &base_tags),
                    )
                    .await?;
                if created {
                    made.vpcs.push(id.clone());
                }
                if public {
                    self.internet_gateway(client, cluster, &id, made).await?;
                }
                (id, Some(found_cidr.unwrap_or_else(|| cidr.to_string())))
            }
        };

        let subnet = match given_subnet {
            Some(s) => s.to_string(),
            None => {
                let cidr = match (extra(params, "subnet-cidr"), &owned_cidr) {
                    (Some(c), _) => c.to_string(),
                    // Shoal's own VPC holds only this subnet: give it the whole range.
                    (None, Some(c)) => c.clone(),
                    (None, None) => {
                        return Err(config(format!(
                            "VPC {vpc} was given without a subnet: add --set subnet-id=subnet-… \
                             or --set subnet-cidr=<a free range of {vpc}>"
                        )))
                    }
                };
                let mut create = Params::new()
                    .set("VpcId", vpc.clone())
                    .set("CidrBlock", cidr)
                    .tag_spec(1, "subnet", &base_tags);
                if let Some(zone) = extra(params, "availability-zone") {
                    create = create.set("AvailabilityZone", zone);
                }
                let vpc_filter = [vpc.as_str()];
                let (id, _, created) = SUBNET
                    .find_or_create(client, cluster, &[("vpc-id", &vpc_filter)], &create)
                    .await?;
                if created {
                    made.subnets.push(id.clone());
                }
                if public && owned_cidr.is_some() {
                    // Instances need public addresses to reach the coordinator and to be
                    // reached on the exposed ports.
                    client
                        .call(
                            "ModifySubnetAttribute",
                            &Params::new()
                                .set("SubnetId", id.clone())
                                .set("MapPublicIpOnLaunch.Value", "true"),
                        )
                        .await?;
                }
                id
            }
        };

        let security_group =
            match given_sg {
                Some(g) => {
                    let found = SECURITY_GROUP
                        .list(client, &Params::new().list("GroupId", &[g]))
                        .await?;
                    match found.first() {
                        Some((_, Some(v))) if *v != vpc => {
                            return Err(config(format!(
                                "security group {g} is in {v}, not in the cluster's VPC {vpc}"
                            )))
                        }
                        Some(_) => g.to_string(),
                        None => {
                            return Err(config(format!(
                                "security group {g} (from --set security-group-id) was not found"
                            )))
                        }
                    }
                }
                None => {
                    let vpc_filter = [vpc.as_str()];
                    let (id, _, created) = SECURITY_GROUP
                    .find_or_create(
                    client,
                    cluster,
                    &[("vpc-id", &vpc_filter)],
                    &Params::new()
                        .set("GroupName", format!("shoal-{tag}"))
                        .set(
                            "GroupDescription",
                            format!("Shoal cluster {tag}: intra-cluster traffic and exposed ports"),
                        )
                        .set("VpcId", vpc.clone())
                        .tag_spec(1, "security-group", &base_tags),
                )
                .await?;
                    if created {
                        made.security_groups.push(id.clone());
                    }
                    self.authorize(client, &id, params).await?;
                    id
                }
            };

        Ok(Network {
            subnet,
            security_group,
        })
    }

    /// An internet gateway for Shoal's own VPC, attached, with the default route in the
    /// VPC's main route table: without it the VMs reach neither the coordinator nor
    /// image registries.
    async fn internet_gateway(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
        vpc: &str,
        made: &mut Resources,
    ) -> Result<(), ProviderError> {
        let tag = cluster.tag();
        let (igw, _, created) = GATEWAY
            .find_or_create(
                client,
                cluster,
                &[],
                &Params::new().tag_spec(
                    1,
                    "internet-gateway",
                    &[(TAG_CLUSTER, tag.as_str()), ("Name", tag.as_str())],
                ),
            )
            .await?;
        if created {
            made.gateways.push((igw.clone(), Vec::new()));
        }
        call_tolerating(
            client,
            "AttachInternetGateway",
            &Params::new()
                .set("InternetGatewayId", igw.clone())
                .set("VpcId", vpc),
            &["Resource.AlreadyAssociated"],
        )
        .await?;
        if let Some((_, vpcs)) = made.gateways.iter_mut().find(|(g, _)| *g == igw) {
            vpcs.push(vpc.to_string());
        }
        let main_table =
            Params::new().filters(&[("vpc-id", &[vpc]), ("association.main", &["true"])]);
        let tables = retry(client.backoff(), "DescribeRouteTables", classify, || {
            describe_ids(
                client,
                "DescribeRouteTables",
                "routeTableSet",
                "routeTableId",
                "vpcId",
                &main_table,
            )
        })
        .await?;
        let Some((table, _)) = tables.first() else {
            return Err(ProviderError::Api {
                provider: "aws",
                operation: "DescribeRouteTables".into(),
                code: "NoMainRouteTable".into(),
                message: format!("VPC {vpc} has no main route table"),
            });
        };
        call_tolerating(
            client,
            "CreateRoute",
            &Params::new()
                .set("RouteTableId", table.clone())
                .set("DestinationCidrBlock", "0.0.0.0/0")
                .set("GatewayId", igw),
            &["RouteAlreadyExists"],
        )
        .await?;
        Ok(())
    }

    /// Ingress rules of Shoal's own security group: everything from the group itself
    /// (the overlay's UDP 4789 included), and the exposed ports from the operator's
    /// range. One call per rule, so a rule that exists already does not hide the others.
    async fn authorize(
        &self,
        client: &QueryClient,
        group: &str,
        params: &ProviderParams,
    ) -> Result<(), ProviderError> {
        let mut rules = vec![Params::new()
            .set("GroupId", group)
            .set("IpPermissions.1.IpProtocol", "-1")
            .set("IpPermissions.1.Groups.1.GroupId", group)];
        match &params.operator_cidr {
            Some(cidr) => {
                if cidr.parse::<ipnet::IpNet>().is_err() {
                    return Err(config(format!(
                        "operator address range {cidr:?} is not a CIDR"
                    )));
                }
                let v6 = cidr.contains(':');
                let mut ports = params.exposed_ports.clone();
                ports.sort_unstable();
                ports.dedup();
                for port in ports {
                    let range = if v6 {
                        ("IpPermissions.1.Ipv6Ranges.1.CidrIpv6", cidr.clone())
                    } else {
                        ("IpPermissions.1.IpRanges.1.CidrIp", cidr.clone())
                    };
                    rules.push(
                        Params::new()
                            .set("GroupId", group)
                            .set("IpPermissions.1.IpProtocol", "tcp")
                            .set("IpPermissions.1.FromPort", port.to_string())
                            .set("IpPermissions.1.ToPort", port.to_string())
                            .set(range.0, range.1),
                    );
                }
            }
            None if !params.exposed_ports.is_empty() => {
                tracing::warn!(%group, "no operator address range: the exposed ports stay closed");
            }
            None => {}
        }
        for rule in &rules {
            call_tolerating(
                client,
                "AuthorizeSecurityGroupIngress",
                rule,
                &["InvalidPermission.Duplicate"],
            )
            .await?;
        }
        Ok(())
    }

    async fn run_instance(
        &self,
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
            .set("ClientToken", client_token(cluster, &node.node_id))
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
        // Safe to retry: the ClientToken makes EC2 return the first launch's instance.
        let body = client.call("RunInstances", &p).await?;
        let id = id_in(client, "RunInstances", &body, "instanceId")?;
        tracing::info!(cluster = %tag, node = %node.node_id, instance = %id, "launched");
        Ok(id)
    }

    /// Polls until every requested node has a live instance with a private address.
    async fn wait_for_addresses(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
        nodes: &[NodeRequest],
        launched: &[String],
    ) -> Result<Vec<NodeInfo>, ProviderError> {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            let all = self.instances(client, cluster, None).await?;
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
                                message: format!(
                                    "{message} (instance {}, {})",
                                    dead.id, node.node_id
                                ),
                            });
                        }
                        waiting.push(node.node_id.clone());
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(out);
            }
            attempt += 1;
            let delay = self.timing.wait.delay(attempt, rand::random::<f64>());
            if start.elapsed() + delay > self.timing.wait.deadline {
                return Err(ProviderError::Unavailable {
                    provider: "aws",
                    message: format!(
                        "cluster {}: no private address after {}s for {}",
                        cluster.tag(),
                        start.elapsed().as_secs(),
                        waiting.join(", ")
                    ),
                });
            }
            tracing::debug!(cluster = %cluster.tag(), waiting = %waiting.join(","), "waiting for private addresses");
            tokio::time::sleep(delay).await;
        }
    }

    async fn create(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
        params: &ProviderParams,
        image: &str,
        nodes: &[NodeRequest],
        made: &mut Resources,
    ) -> Result<Vec<NodeInfo>, ProviderError> {
        let net = self.network(client, cluster, params, made).await?;
        let live = self.instances(client, cluster, Some(&LIVE_STATES)).await?;
        for node in nodes {
            if let Some(i) = live
                .iter()
                .find(|i| i.node_id.as_deref() == Some(node.node_id.as_str()))
            {
                tracing::info!(cluster = %cluster.tag(), node = %node.node_id, instance = %i.id, "instance exists already");
                continue;
            }
            let id = self
                .run_instance(client, cluster, params, image, &net, node)
                .await?;
            made.instances.push(id);
        }
        let launched = made.instances.clone();
        self.wait_for_addresses(client, cluster, nodes, &launched)
            .await
    }

    /// Everything tagged for the cluster, instances not yet terminated included.
    async fn tagged(
        &self,
        client: &QueryClient,
        cluster: &ClusterRef,
    ) -> Result<Resources, ProviderError> {
        let tag = cluster.tag();
        let by_tag = Params::new().filters(&[("tag:shoal:cluster", &[tag.as_str()])]);
        let ids =
            |v: Vec<(String, Option<String>)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let instances = self
            .instances(client, cluster, Some(&NOT_TERMINATED))
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        let security_groups = ids(SECURITY_GROUP.list(client, &by_tag).await?);
        let subnets = ids(SUBNET.list(client, &by_tag).await?);
        let vpcs = ids(VPC.list(client, &by_tag).await?);
        let body = client.call("DescribeInternetGateways", &by_tag).await?;
        let doc = parse("DescribeInternetGateways", client.endpoint(), &body)
            .map_err(ProviderError::from)?;
        let gateways = items(doc.root_element(), "internetGatewaySet")
            .into_iter()
            .filter_map(|g| {
                let id = child_text(g, "internetGatewayId")?.to_string();
                let attached = items(g, "attachmentSet")
                    .into_iter()
                    .filter_map(|a| child_text(a, "vpcId").map(str::to_string))
                    .collect();
                Some((id, attached))
            })
            .collect();
        Ok(Resources {
            instances,
            security_groups,
            subnets,
            gateways,
            vpcs,
        })
    }

    /// Deletes `res` in dependency order: instances (and waits until they are gone),
    /// security groups, subnets, internet gateways, VPCs. Keeps going after a failed
    /// network deletion and returns every error; stops after a failed termination,
    /// since nothing below can go while instances remain.
    async fn teardown(&self, client: &QueryClient, res: &Resources) -> Vec<ProviderError> {
        let mut errors = Vec::new();
        if !res.instances.is_empty() {
            if let Err(e) = self.terminate(client, &res.instances).await {
                errors.push(e);
                return errors;
            }
        }
        let steps: Vec<(&str, &str, String, &[&str])> = res
            .security_groups
            .iter()
            .map(|g| {
                (
                    "DeleteSecurityGroup",
                    "GroupId",
                    g.clone(),
                    &["InvalidGroup.NotFound"][..],
                )
            })
            .chain(res.subnets.iter().map(|s| {
                (
                    "DeleteSubnet",
                    "SubnetId",
                    s.clone(),
                    &["InvalidSubnetID.NotFound"][..],
                )
            }))
            .collect();
        for (action, key, id, gone) in steps {
            if let Err(e) = self
                .delete_in_use(client, action, &Params::new().set(key, id), gone)
                .await
            {
                errors.push(e);
            }
        }
        for (igw, vpcs) in &res.gateways {
            for vpc in vpcs {
                let p = Params::new()
                    .set("InternetGatewayId", igw.clone())
                    .set("VpcId", vpc.clone());
                if let Err(e) = self
                    .delete_in_use(
                        client,
                        "DetachInternetGateway",
                        &p,
                        &["Gateway.NotAttached", "InvalidInternetGatewayID.NotFound"],
                    )
                    .await
                {
                    errors.push(e);
                }
            }
            if let Err(e) = self
                .delete_in_use(
                    client,
                    "DeleteInternetGateway",
                    &Params::new().set("InternetGatewayId", igw.clone()),
                    &["InvalidInternetGatewayID.NotFound"],
                )
                .await
            {
                errors.push(e);
            }
        }
        for vpc in &res.vpcs {
            if let Err(e) = self
                .delete_in_use(
                    client,
                    "DeleteVpc",
                    &Params::new().set("VpcId", vpc.clone()),
                    &["InvalidVpcID.NotFound"],
                )
                .await
            {
                errors.push(e);
            }
        }
        errors
    }

    /// A deletion that may meet `DependencyViolation` while EC2 still releases network
    /// interfaces: retried on the dependency schedule. `gone` codes mean "already deleted".
    async fn delete_in_use(
        &self,
        client: &QueryClient,
        action: &str,
        params: &Params,
        gone: &[&str],
    ) -> Result<(), ProviderError> {
        let verdict = |e: &AwsError| match e.code() {
            Some("DependencyViolation") => Verdict::Retry { after: None },
            _ => classify(e),
        };
        let result = retry(&self.timing.dependency, action, verdict, || {
            client.call_once(action, params)
        })
        .await;
        match result {
            Ok(_) => {
                tracing::info!(%action, "deleted");
                Ok(())
            }
            Err(e) if e.code().is_some_and(|c| gone.contains(&c)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Terminates instances and waits until EC2 reports them terminated.
    async fn terminate(&self, client: &QueryClient, ids: &[String]) -> Result<(), ProviderError> {
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
        let start = Instant::now();
        let mut attempt = 0u32;
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
            attempt += 1;
            let delay = self.timing.wait.delay(attempt, rand::random::<f64>());
            if start.elapsed() + delay > self.timing.wait.deadline {
                return Err(ProviderError::Unavailable {
                    provider: "aws",
                    message: format!(
                        "instances {} not terminated after {}s",
                        left.join(", "),
                        start.elapsed().as_secs()
                    ),
                });
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// The first error, with how many more there were (all are logged).
fn first_error(what: &str, errors: Vec<ProviderError>) -> Result<(), ProviderError> {
    for e in &errors {
        tracing::warn!(error = %e, "{what}");
    }
    let more = errors.len().saturating_sub(1);
    match errors.into_iter().next() {
        None => Ok(()),
        Some(ProviderError::Api {
            provider,
            operation,
            code,
            message,
        }) if more > 0 => Err(ProviderError::Api {
            provider,
            operation,
            code,
            message: format!("{message} (and {more} more errors)"),
        }),
        Some(e) => Err(e),
    }
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn user_data_limit(&self) -> Option<usize> {
        crate::userdata::limit_for(self.name())
    }

    fn footprint(&self, cluster: &ClusterRef, params: &ProviderParams) -> Option<String> {
        let region = params
            .region
            .clone()
            .or_else(|| self.env.var("AWS_REGION"))
            .or_else(|| self.env.var("AWS_DEFAULT_REGION"));
        Some(match region {
            Some(r) => format!(
                "EC2 resources tagged {TAG_CLUSTER}={} in {r}",
                cluster.tag()
            ),
            None => format!("EC2 resources tagged {TAG_CLUSTER}={}", cluster.tag()),
        })
    }

    fn create_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
        nodes: &'a [NodeRequest],
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(async move {
            let image = params
                .image
                .as_deref()
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .ok_or_else(|| {
                    config("no machine image: give --image ami-… (an AMI of the region with Shoal's agent baked in)".into())
                })?;
            let limit = crate::userdata::EC2_LIMIT;
            if let Some(n) = nodes.iter().find(|n| n.user_data.len() > limit) {
                return Err(config(format!(
                    "user-data of {} is {} bytes, over EC2's limit of {limit} bytes",
                    n.node_id,
                    n.user_data.len(),
                )));
            }
            let client = self.client(params)?;
            let mut made = Resources::default();
            match self
                .create(&client, cluster, params, image, nodes, &mut made)
                .await
            {
                Ok(infos) => Ok(infos),
                Err(e) => {
                    if !made.is_empty() {
                        tracing::warn!(cluster = %cluster.tag(), error = %e, ?made, "creation failed: deleting what this call created");
                        let errors = self.teardown(&client, &made).await;
                        if let Err(cleanup) = first_error("cleanup after a failed creation", errors)
                        {
                            tracing::warn!(cluster = %cluster.tag(), error = %cleanup, "cleanup incomplete: delete the cluster to finish");
                        }
                    }
                    Err(e)
                }
            }
        })
    }

    fn describe_nodes<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<Vec<NodeInfo>, ProviderError>> {
        Box::pin(async move {
            let client = self.client(params)?;
            let all = self
                .instances(&client, cluster, Some(&NOT_TERMINATED))
                .await?;
            let mut infos: Vec<NodeInfo> = all
                .iter()
                .map(|i| i.info(i.node_id.as_deref().unwrap_or("")))
                .collect();
            infos.sort_by(|a, b| (&a.node_id, &a.instance_id).cmp(&(&b.node_id, &b.instance_id)));
            Ok(infos)
        })
    }

    fn delete_cluster<'a>(
        &'a self,
        cluster: &'a ClusterRef,
        params: &'a ProviderParams,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let client = self.client(params)?;
            let res = self.tagged(&client, cluster).await?;
            if res.is_empty() {
                tracing::info!(cluster = %cluster.tag(), "nothing tagged for this cluster: already deleted");
                return Ok(());
            }
            tracing::info!(cluster = %cluster.tag(), ?res, "deleting");
            first_error("deleting the cluster", self.teardown(&client, &res).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterRef {
        ClusterRef {
            name: "demo".into(),
            uid: "0123456789ab".into(),
        }
    }

    #[test]
    fn client_tokens_are_stable_short_ascii_and_distinct() {
        let c = cluster();
        let t = client_token(&c, "node-0");
        assert_eq!(t, client_token(&c, "node-0"));
        assert_ne!(t, client_token(&c, "node-1"));
        let other = ClusterRef {
            name: "demo".into(),
            uid: "ba9876543210".into(),
        };
        assert_ne!(t, client_token(&other, "node-0"));
        let long = ClusterRef {
            name: "a".repeat(63),
            uid: "0123456789ab".into(),
        };
        for tok in [t.clone(), client_token(&long, &"n".repeat(200))] {
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
    }

    #[tokio::test]
    async fn missing_image_names_the_flag() {
        let p = AwsProvider::with_env(Env::Fixed(BTreeMap::new()));
        let err = p
            .create_nodes(&cluster(), &ProviderParams::default(), &[])
            .await
            .expect_err("no image");
        assert!(matches!(err, ProviderError::Config { .. }));
        assert!(err.to_string().contains("--image"), "{err}");
    }

    #[tokio::test]
    async fn missing_credentials_fail_before_any_call() {
        let p = AwsProvider::with_env(Env::Fixed(
            [("HOME".to_string(), "/nonexistent-shoal-home".to_string())].into(),
        ));
        let params = ProviderParams {
            image: Some("ami-12345678".into()),
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        let err = p
            .create_nodes(&cluster(), &params, &[])
            .await
            .expect_err("no creds");
        assert!(matches!(err, ProviderError::Config { .. }), "{err}");
        let err = p
            .delete_cluster(&cluster(), &params)
            .await
            .expect_err("no creds");
        assert!(err.to_string().contains("no AWS credentials"), "{err}");
    }
}
