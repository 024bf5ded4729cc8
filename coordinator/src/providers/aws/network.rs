//! The cluster's network: a VPC, a subnet and a security group, each either made by
//! Shoal (found by tag first, so a repeated call reuses it) or given by id (then only
//! checked, never tagged, never deleted); for Shoal's own VPC also an internet gateway
//! and the default route through it. Found by tag and deleted in dependency order.

use shoal_protocol::backoff::Backoff;

use super::calls::{call_tolerating, describe_ids, id_in};
use super::ec2::{child_text, classify, find, items, parse, AwsError, Params, QueryClient};
use super::params::{config, extra, DEFAULT_VPC_CIDR};
use super::resources::{name_tags, Resources, CLUSTER_FILTER};
use crate::providers::retry::{retry, Verdict};
use crate::providers::{ClusterRef, ProviderError, ProviderParams};

/// The network a cluster's instances are launched into.
#[derive(Debug)]
pub(super) struct Network {
    pub(super) subnet: String,
    pub(super) security_group: String,
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
        let mut filters: Vec<(&str, &[&str])> = vec![(CLUSTER_FILTER, &tag_value)];
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

/// The cluster's VPC.
#[derive(Debug)]
struct Vpc {
    id: String,
    /// Its range, when it is Shoal's own (made for the cluster, not given).
    owned_cidr: Option<String>,
}

/// A subnet given with `--set subnet-id`, and the VPC it is in.
#[derive(Debug)]
struct GivenSubnet<'a> {
    id: &'a str,
    vpc: String,
}

/// Makes or finds the VPC, subnet and security group; records in `made` what it
/// created, so a failed creation can delete exactly that.
pub(super) async fn make(
    client: &QueryClient,
    cluster: &ClusterRef,
    params: &ProviderParams,
    made: &mut Resources,
) -> Result<Network, ProviderError> {
    let given_subnet = match extra(params, "subnet-id") {
        Some(id) => Some(given_subnet(client, id).await?),
        None => None,
    };
    let vpc = cluster_vpc(client, cluster, params, given_subnet.as_ref(), made).await?;
    // Only Shoal's own network is opened to the internet; a given one stays as it is.
    let public = extra(params, "public-ip") != Some("false") && vpc.owned_cidr.is_some();
    if public {
        internet_gateway(client, cluster, &vpc.id, made).await?;
    }
    let subnet = match given_subnet {
        Some(s) => s.id.to_string(),
        None => {
            let id = own_subnet(client, cluster, params, &vpc, made).await?;
            if public {
                map_public_ip_on_launch(client, &id).await?;
            }
            id
        }
    };
    let security_group = match extra(params, "security-group-id") {
        Some(g) => given_security_group(client, g, &vpc.id).await?,
        None => {
            let id = own_security_group(client, cluster, &vpc.id, made).await?;
            authorize(client, &id, params).await?;
            id
        }
    };
    Ok(Network {
        subnet,
        security_group,
    })
}

/// Looks up the subnet given with `--set subnet-id`: it must exist; its VPC is then
/// the cluster's.
async fn given_subnet<'a>(
    client: &QueryClient,
    id: &'a str,
) -> Result<GivenSubnet<'a>, ProviderError> {
    let found = SUBNET
        .list(client, &Params::new().list("SubnetId", &[id]))
        .await?;
    let vpc = found
        .into_iter()
        .next()
        .and_then(|(_, v)| v)
        .ok_or_else(|| config(format!("subnet {id} (from --set subnet-id) was not found")))?;
    Ok(GivenSubnet { id, vpc })
}

/// The VPC the cluster goes into: the one given with `--set vpc-id` (which must hold
/// the given subnet, if any), else the given subnet's, else Shoal's own.
async fn cluster_vpc(
    client: &QueryClient,
    cluster: &ClusterRef,
    params: &ProviderParams,
    given_subnet: Option<&GivenSubnet<'_>>,
    made: &mut Resources,
) -> Result<Vpc, ProviderError> {
    match (extra(params, "vpc-id"), given_subnet) {
        (Some(v), Some(s)) if v != s.vpc => Err(config(format!(
            "subnet {} is in {}, not in the VPC given with --set vpc-id={v}",
            s.id, s.vpc
        ))),
        (Some(v), _) => {
            check_given_vpc(client, v).await?;
            Ok(Vpc {
                id: v.to_string(),
                owned_cidr: None,
            })
        }
        (None, Some(s)) => Ok(Vpc {
            id: s.vpc.clone(),
            owned_cidr: None,
        }),
        (None, None) => own_vpc(client, cluster, params, made).await,
    }
}

/// Fails unless the VPC given with `--set vpc-id` exists.
async fn check_given_vpc(client: &QueryClient, id: &str) -> Result<(), ProviderError> {
    let found = VPC
        .list(client, &Params::new().list("VpcId", &[id]))
        .await?;
    if found.is_empty() {
        return Err(config(format!(
            "VPC {id} (from --set vpc-id) was not found"
        )));
    }
    Ok(())
}

/// Shoal's own VPC, of `--set vpc-cidr` (default [`DEFAULT_VPC_CIDR`]).
async fn own_vpc(
    client: &QueryClient,
    cluster: &ClusterRef,
    params: &ProviderParams,
    made: &mut Resources,
) -> Result<Vpc, ProviderError> {
    let cidr = extra(params, "vpc-cidr").unwrap_or(DEFAULT_VPC_CIDR);
    if cidr.parse::<ipnet::Ipv4Net>().is_err() {
        return Err(config(format!(
            "--set vpc-cidr={cidr} is not an IPv4 CIDR (e.g. {DEFAULT_VPC_CIDR})"
        )));
    }
    let tag = cluster.tag();
    let (id, found_cidr, created) = VPC
        .find_or_create(
            client,
            cluster,
            &[],
            &Params::new()
                .set("CidrBlock", cidr)
                .tag_spec(1, "vpc", &name_tags(&tag)),
        )
        .await?;
    if created {
        made.vpcs.push(id.clone());
    }
    Ok(Vpc {
        id,
        owned_cidr: Some(found_cidr.unwrap_or_else(|| cidr.to_string())),
    })
}

/// Shoal's own subnet in `vpc`, in `--set availability-zone` if given.
async fn own_subnet(
    client: &QueryClient,
    cluster: &ClusterRef,
    params: &ProviderParams,
    vpc: &Vpc,
    made: &mut Resources,
) -> Result<String, ProviderError> {
    let tag = cluster.tag();
    let mut create = Params::new()
        .set("VpcId", vpc.id.clone())
        .set("CidrBlock", subnet_cidr(params, vpc)?)
        .tag_spec(1, "subnet", &name_tags(&tag));
    if let Some(zone) = extra(params, "availability-zone") {
        create = create.set("AvailabilityZone", zone);
    }
    let vpc_filter = [vpc.id.as_str()];
    let (id, _, created) = SUBNET
        .find_or_create(client, cluster, &[("vpc-id", &vpc_filter)], &create)
        .await?;
    if created {
        made.subnets.push(id.clone());
    }
    Ok(id)
}

/// The range of Shoal's own subnet: `--set subnet-cidr`, else all of Shoal's own VPC.
fn subnet_cidr(params: &ProviderParams, vpc: &Vpc) -> Result<String, ProviderError> {
    match (extra(params, "subnet-cidr"), &vpc.owned_cidr) {
        (Some(c), _) => Ok(c.to_string()),
        // Shoal's own VPC holds only this subnet: give it the whole range.
        (None, Some(c)) => Ok(c.clone()),
        (None, None) => Err(config(format!(
            "VPC {vpc} was given without a subnet: add --set subnet-id=subnet-… \
             or --set subnet-cidr=<a free range of {vpc}>",
            vpc = vpc.id
        ))),
    }
}

/// Instances need public addresses to reach the coordinator and to be reached on the
/// exposed ports.
async fn map_public_ip_on_launch(client: &QueryClient, subnet: &str) -> Result<(), ProviderError> {
    client
        .call(
            "ModifySubnetAttribute",
            &Params::new()
                .set("SubnetId", subnet)
                .set("MapPublicIpOnLaunch.Value", "true"),
        )
        .await?;
    Ok(())
}

/// Checks the security group given with `--set security-group-id`: it must exist, in
/// the cluster's VPC.
async fn given_security_group(
    client: &QueryClient,
    id: &str,
    vpc: &str,
) -> Result<String, ProviderError> {
    let found = SECURITY_GROUP
        .list(client, &Params::new().list("GroupId", &[id]))
        .await?;
    match found.first() {
        Some((_, Some(v))) if v.as_str() != vpc => Err(config(format!(
            "security group {id} is in {v}, not in the cluster's VPC {vpc}"
        ))),
        Some(_) => Ok(id.to_string()),
        None => Err(config(format!(
            "security group {id} (from --set security-group-id) was not found"
        ))),
    }
}

/// Shoal's own security group in `vpc` (its rules are [`authorize`]'s).
async fn own_security_group(
    client: &QueryClient,
    cluster: &ClusterRef,
    vpc: &str,
    made: &mut Resources,
) -> Result<String, ProviderError> {
    let tag = cluster.tag();
    let vpc_filter = [vpc];
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
                .set("VpcId", vpc)
                .tag_spec(1, "security-group", &name_tags(&tag)),
        )
        .await?;
    if created {
        made.security_groups.push(id.clone());
    }
    Ok(id)
}

/// An internet gateway for Shoal's own VPC, attached, with the default route in the
/// VPC's main route table: without it the VMs reach neither the coordinator nor
/// image registries.
async fn internet_gateway(
    client: &QueryClient,
    cluster: &ClusterRef,
    vpc: &str,
    made: &mut Resources,
) -> Result<(), ProviderError> {
    let igw = own_gateway(client, cluster, made).await?;
    attach_gateway(client, &igw, vpc, made).await?;
    default_route(client, &igw, vpc).await
}

/// The cluster's internet gateway, found by tag or created.
async fn own_gateway(
    client: &QueryClient,
    cluster: &ClusterRef,
    made: &mut Resources,
) -> Result<String, ProviderError> {
    let tag = cluster.tag();
    let (igw, _, created) = GATEWAY
        .find_or_create(
            client,
            cluster,
            &[],
            &Params::new().tag_spec(1, "internet-gateway", &name_tags(&tag)),
        )
        .await?;
    if created {
        made.gateways.push((igw.clone(), Vec::new()));
    }
    Ok(igw)
}

/// Attaches the gateway to the VPC (already attached counts as done).
async fn attach_gateway(
    client: &QueryClient,
    igw: &str,
    vpc: &str,
    made: &mut Resources,
) -> Result<(), ProviderError> {
    call_tolerating(
        client,
        "AttachInternetGateway",
        &Params::new()
            .set("InternetGatewayId", igw)
            .set("VpcId", vpc),
        &["Resource.AlreadyAssociated"],
    )
    .await?;
    // A gateway this call made must be detached before its cleanup can delete it.
    if let Some((_, vpcs)) = made.gateways.iter_mut().find(|(g, _)| g.as_str() == igw) {
        vpcs.push(vpc.to_string());
    }
    Ok(())
}

/// The route `0.0.0.0/0` through the gateway, in the VPC's main route table.
async fn default_route(client: &QueryClient, igw: &str, vpc: &str) -> Result<(), ProviderError> {
    let main_table = Params::new().filters(&[("vpc-id", &[vpc]), ("association.main", &["true"])]);
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
/// (the overlay's UDP 4789 included), and the exposed ports from the operator's range.
fn ingress_rules(group: &str, params: &ProviderParams) -> Result<Vec<Params>, ProviderError> {
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
    Ok(rules)
}

/// Adds the [`ingress_rules`] to the group, one call per rule, so a rule that exists
/// already does not hide the others.
async fn authorize(
    client: &QueryClient,
    group: &str,
    params: &ProviderParams,
) -> Result<(), ProviderError> {
    for rule in &ingress_rules(group, params)? {
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

/// The network resources tagged for the cluster (the instances are left empty).
pub(super) async fn tagged(
    client: &QueryClient,
    cluster: &ClusterRef,
) -> Result<Resources, ProviderError> {
    let tag = cluster.tag();
    let by_tag = Params::new().filters(&[(CLUSTER_FILTER, &[tag.as_str()])]);
    let ids =
        |v: Vec<(String, Option<String>)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    let security_groups = ids(SECURITY_GROUP.list(client, &by_tag).await?);
    let subnets = ids(SUBNET.list(client, &by_tag).await?);
    let vpcs = ids(VPC.list(client, &by_tag).await?);
    let body = client.call("DescribeInternetGateways", &by_tag).await?;
    let doc =
        parse("DescribeInternetGateways", client.endpoint(), &body).map_err(ProviderError::from)?;
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
        security_groups,
        subnets,
        gateways,
        vpcs,
        ..Resources::default()
    })
}

/// One deletion call: the action, its parameters, and the codes meaning "already gone".
type Deletion = (&'static str, Params, &'static [&'static str]);

/// A deletion by one id.
fn by_id(action: &'static str, key: &str, id: &str, gone: &'static [&'static str]) -> Deletion {
    (action, Params::new().set(key, id), gone)
}

/// The deletions of `res`'s network resources, in dependency order: security groups,
/// subnets, each internet gateway (detached from its VPCs first), VPCs.
fn deletions(res: &Resources) -> Vec<Deletion> {
    let mut out: Vec<Deletion> = Vec::new();
    out.extend(res.security_groups.iter().map(|g| {
        by_id(
            "DeleteSecurityGroup",
            "GroupId",
            g,
            &["InvalidGroup.NotFound"],
        )
    }));
    out.extend(
        res.subnets
            .iter()
            .map(|s| by_id("DeleteSubnet", "SubnetId", s, &["InvalidSubnetID.NotFound"])),
    );
    for (igw, vpcs) in &res.gateways {
        for vpc in vpcs {
            out.push((
                "DetachInternetGateway",
                Params::new()
                    .set("InternetGatewayId", igw.clone())
                    .set("VpcId", vpc.clone()),
                &["Gateway.NotAttached", "InvalidInternetGatewayID.NotFound"],
            ));
        }
        out.push(by_id(
            "DeleteInternetGateway",
            "InternetGatewayId",
            igw,
            &["InvalidInternetGatewayID.NotFound"],
        ));
    }
    out.extend(
        res.vpcs
            .iter()
            .map(|v| by_id("DeleteVpc", "VpcId", v, &["InvalidVpcID.NotFound"])),
    );
    out
}

/// Deletes `res`'s network resources in dependency order ([`deletions`]). Keeps going
/// after a failed deletion and returns every error.
pub(super) async fn delete(
    client: &QueryClient,
    dependency: &Backoff,
    res: &Resources,
) -> Vec<ProviderError> {
    let mut errors = Vec::new();
    for (action, params, gone) in deletions(res) {
        if let Err(e) = delete_in_use(client, dependency, action, &params, gone).await {
            errors.push(e);
        }
    }
    errors
}

/// A deletion that may meet `DependencyViolation` while EC2 still releases network
/// interfaces: retried on the `dependency` schedule. `gone` codes mean "already
/// deleted".
async fn delete_in_use(
    client: &QueryClient,
    dependency: &Backoff,
    action: &str,
    params: &Params,
    gone: &[&str],
) -> Result<(), ProviderError> {
    let verdict = |e: &AwsError| match e.code() {
        Some("DependencyViolation") => Verdict::Retry { after: None },
        _ => classify(e),
    };
    let result = retry(dependency, action, verdict, || {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_go_in_dependency_order() {
        let res = Resources {
            instances: vec!["i-1".into()],
            security_groups: vec!["sg-1".into()],
            subnets: vec!["subnet-1".into()],
            gateways: vec![("igw-1".into(), vec!["vpc-1".into()])],
            vpcs: vec!["vpc-1".into()],
        };
        let actions: Vec<&str> = deletions(&res).iter().map(|(a, _, _)| *a).collect();
        assert_eq!(
            actions,
            [
                "DeleteSecurityGroup",
                "DeleteSubnet",
                "DetachInternetGateway",
                "DeleteInternetGateway",
                "DeleteVpc"
            ]
        );
    }
}
