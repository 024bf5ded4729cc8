//! Bodies of `Microsoft.Network` resources, checked as the ARM reference describes
//! them: network security groups, virtual networks and their subnets, public IP
//! addresses, network interfaces (with addresses allocated from their subnet).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::state::{Resource, State};
use super::wire::{bad, invalid_reference, ArmErr};

impl State {
    pub(super) fn nsg_properties(&self, body: &Value) -> Result<Value, ArmErr> {
        let props = body.get("properties").cloned().unwrap_or(json!({}));
        let mut seen_names = HashSet::new();
        let mut seen_priorities = HashSet::new();
        if let Some(rules) = props.get("securityRules") {
            let rules = rules.as_array().ok_or_else(|| {
                bad(
                    "InvalidRequestFormat",
                    "properties.securityRules must be an array.",
                )
            })?;
            for (i, r) in rules.iter().enumerate() {
                let at = format!("properties.securityRules[{i}]");
                let name = r["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        bad(
                            "InvalidRequestFormat",
                            format!("Required property '{at}.name' is missing."),
                        )
                    })?;
                if !seen_names.insert(name.to_ascii_lowercase()) {
                    return Err(bad(
                        "InvalidRequestFormat",
                        format!("Security rule name '{name}' is used more than once."),
                    ));
                }
                let p = &r["properties"];
                let one_of = |field: &str, allowed: &[&str]| -> Result<String, ArmErr> {
                    let v = p[field].as_str().ok_or_else(|| {
                        bad(
                            "InvalidRequestFormat",
                            format!("Required property '{at}.properties.{field}' is missing."),
                        )
                    })?;
                    allowed
                        .iter()
                        .find(|a| a.eq_ignore_ascii_case(v))
                        .map(|a| a.to_string())
                        .ok_or_else(|| {
                            bad("SecurityRuleParameterContainsUnsupportedValue", format!("Value '{v}' of '{at}.properties.{field}' is not one of {allowed:?}."))
                        })
                };
                one_of("protocol", &["Tcp", "Udp", "Icmp", "Esp", "Ah", "*"])?;
                one_of("access", &["Allow", "Deny"])?;
                let direction = one_of("direction", &["Inbound", "Outbound"])?;
                let priority = p["priority"].as_u64().ok_or_else(|| {
                    bad(
                        "SecurityRuleInvalidPriority",
                        format!("Required property '{at}.properties.priority' is missing."),
                    )
                })?;
                if !(100..=4096).contains(&priority) {
                    return Err(bad("SecurityRuleInvalidPriority", format!("Security rule '{name}' has invalid Priority {priority}. Value provided: {priority}. Allowed range 100-4096.")));
                }
                if !seen_priorities.insert((direction.clone(), priority)) {
                    return Err(bad("SecurityRuleConflict", format!("Security rule '{name}' conflicts with another rule: both have priority {priority} and direction {direction}.")));
                }
                for (single, plural, check) in [
                    (
                        "sourceAddressPrefix",
                        "sourceAddressPrefixes",
                        check_prefix as fn(&str) -> bool,
                    ),
                    (
                        "destinationAddressPrefix",
                        "destinationAddressPrefixes",
                        check_prefix,
                    ),
                    ("sourcePortRange", "sourcePortRanges", check_port_range),
                    (
                        "destinationPortRange",
                        "destinationPortRanges",
                        check_port_range,
                    ),
                ] {
                    let values: Vec<&str> = match (p.get(single), p.get(plural)) {
                        (Some(Value::String(s)), None) => vec![s.as_str()],
                        (None, Some(Value::Array(a))) if !a.is_empty() => {
                            a.iter().filter_map(Value::as_str).collect()
                        }
                        _ => {
                            return Err(bad("InvalidRequestFormat", format!("Exactly one of '{at}.properties.{single}' and '{at}.properties.{plural}' is required.")))
                        }
                    };
                    if let Some(v) = values.iter().find(|v| !check(v)) {
                        return Err(bad(
                            "SecurityRuleParameterContainsUnsupportedValue",
                            format!("Value '{v}' of '{at}.properties.{single}' is invalid."),
                        ));
                    }
                }
                let _ = i;
            }
        }
        let mut out = props;
        if let Some(rules) = out["securityRules"].as_array_mut() {
            for r in rules {
                r["properties"]["provisioningState"] = json!("Succeeded");
            }
        }
        Ok(out)
    }

    pub(super) fn vnet_properties(
        &self,
        id: &str,
        location: &str,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let props = body.get("properties").ok_or_else(|| {
            bad(
                "InvalidRequestFormat",
                "Required property 'properties' is missing.",
            )
        })?;
        let spaces: Vec<Ipv4Net> = props["addressSpace"]["addressPrefixes"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("InvalidRequestFormat", "Required property 'properties.addressSpace.addressPrefixes' is missing."))?
            .iter()
            .map(|p| {
                p.as_str()
                    .and_then(|s| s.parse::<Ipv4Net>().ok())
                    .ok_or_else(|| bad("InvalidAddressPrefixFormat", format!("Address prefix {p} of 'properties.addressSpace.addressPrefixes' is not a valid CIDR.")))
            })
            .collect::<Result<_, _>>()?;
        let mut subnets_out = Vec::new();
        let mut ranges: Vec<(String, Ipv4Net)> = Vec::new();
        for (i, s) in props["subnets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let name = s["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    bad(
                        "InvalidRequestFormat",
                        format!("Required property 'properties.subnets[{i}].name' is missing."),
                    )
                })?;
            let prefix_text = s["properties"]["addressPrefix"].as_str().ok_or_else(|| {
                bad("InvalidRequestFormat", format!("Required property 'properties.subnets[{i}].properties.addressPrefix' is missing."))
            })?;
            let prefix: Ipv4Net = prefix_text.parse().map_err(|_| {
                bad(
                    "InvalidAddressPrefixFormat",
                    format!("Subnet '{name}' has an invalid address prefix '{prefix_text}'."),
                )
            })?;
            if prefix.network() != prefix.addr() {
                return Err(bad("InvalidCIDRNotation", format!("The address prefix {prefix_text} in resource {id}/subnets/{name} has an invalid CIDR notation. For the given prefix length, the address prefix should be {}.", prefix.trunc())));
            }
            if !spaces.iter().any(|sp| sp.contains(&prefix)) {
                return Err(bad("NetcfgSubnetRangeOutsideVnet", format!("Subnet '{name}' is not valid because its IP address range is outside the IP address range of virtual network '{}'.", id.rsplit('/').next().unwrap_or(""))));
            }
            if let Some((other, _)) = ranges
                .iter()
                .find(|(_, r)| r.contains(&prefix) || prefix.contains(r))
            {
                return Err(bad("NetcfgSubnetRangesOverlap", format!("Subnet '{name}' is not valid because its IP address range overlaps with that of an existing subnet '{other}' in virtual network.")));
            }
            ranges.push((name.to_string(), prefix));
            let mut sp = s["properties"].clone();
            if let Some(nsg) = sp["networkSecurityGroup"]["id"].as_str() {
                if !self.exists(nsg, "Microsoft.Network/networkSecurityGroups") {
                    return Err(invalid_reference(nsg, &format!("{id}/subnets/{name}")));
                }
            }
            let subnet_id = format!("{id}/subnets/{name}");
            // A subnet in use keeps its range.
            if let Some(prev) = existing.and_then(|_| self.subnet(&subnet_id)) {
                if self.subnet_in_use(&subnet_id)
                    && prev["properties"]["addressPrefix"].as_str() != Some(prefix_text)
                {
                    return Err(bad(
                        "InUseSubnetCannotBeUpdated",
                        format!("Subnet {name} is in use and cannot be updated."),
                    ));
                }
            }
            sp["provisioningState"] = json!("Updating");
            subnets_out.push(json!({
                "id": subnet_id,
                "name": name,
                "type": "Microsoft.Network/virtualNetworks/subnets",
                "properties": sp,
            }));
        }
        if let Some(e) = existing {
            for old in e.view["properties"]["subnets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let old_id = old["id"].as_str().unwrap_or("");
                let kept = subnets_out.iter().any(|s| {
                    s["id"].as_str().map(str::to_ascii_lowercase)
                        == Some(old_id.to_ascii_lowercase())
                });
                if !kept && self.subnet_in_use(old_id) {
                    return Err(bad("InUseSubnetCannotBeDeleted", format!("Subnet {} is in use by {} and cannot be deleted. In order to delete the subnet, delete all the resources within the subnet.", old["name"].as_str().unwrap_or(""), self.subnet_users(old_id).join(", "))));
                }
            }
        }
        let _ = location;
        let mut out = props.clone();
        out["subnets"] = Value::Array(subnets_out);
        Ok(out)
    }

    pub(super) fn subnet(&self, subnet_id: &str) -> Option<Value> {
        let lower = subnet_id.to_ascii_lowercase();
        let (vnet_id, name) = lower.split_once("/subnets/")?;
        let vnet = self.resources.get(vnet_id)?;
        vnet.view["properties"]["subnets"]
            .as_array()?
            .iter()
            .find(|s| s["name"].as_str().map(str::to_ascii_lowercase).as_deref() == Some(name))
            .cloned()
    }

    pub(super) fn subnet_users(&self, subnet_id: &str) -> Vec<String> {
        let want = subnet_id.to_ascii_lowercase();
        self.resources
            .values()
            .filter(|r| r.rtype == "Microsoft.Network/networkInterfaces")
            .filter(|r| {
                r.view["properties"]["ipConfigurations"]
                    .as_array()
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c["properties"]["subnet"]["id"]
                                .as_str()
                                .map(str::to_ascii_lowercase)
                                == Some(want.clone())
                        })
                    })
            })
            .map(|r| format!("{}/ipConfigurations", r.id))
            .collect()
    }

    pub(super) fn subnet_in_use(&self, subnet_id: &str) -> bool {
        !self.subnet_users(subnet_id).is_empty()
    }

    pub(super) fn public_ip_properties(
        &mut self,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let sku = body["sku"]["name"].as_str().unwrap_or("Basic");
        let props = body.get("properties").cloned().unwrap_or(json!({}));
        let method = props["publicIPAllocationMethod"]
            .as_str()
            .unwrap_or("Dynamic")
            .to_string();
        let method = method.as_str();
        if !["Static", "Dynamic"].contains(&method) {
            return Err(bad("InvalidRequestFormat", format!("Value '{method}' of 'properties.publicIPAllocationMethod' is not Static or Dynamic.")));
        }
        if sku.eq_ignore_ascii_case("Basic") {
            return Err(bad(
                "BasicSkuPublicIpIsRetired",
                "Basic SKU public IP addresses are retired: use sku.name Standard.",
            ));
        }
        if !sku.eq_ignore_ascii_case("Standard") {
            return Err(bad(
                "InvalidRequestFormat",
                format!("Value '{sku}' of 'sku.name' is invalid."),
            ));
        }
        if method != "Static" {
            return Err(bad(
                "StandardSkuPublicIPAddressesMustBeStatic",
                "Standard sku publicIp must have AllocationMethod set to Static.",
            ));
        }
        let address = match existing.and_then(|e| e.view["properties"]["ipAddress"].as_str()) {
            Some(a) => a.to_string(),
            None => {
                // TEST-NET-3 (RFC 5737): documentation addresses, never routed.
                self.next_public_ip += 1;
                Ipv4Addr::new(203, 0, 113, (self.next_public_ip % 250) as u8).to_string()
            }
        };
        let mut out = props;
        out["publicIPAllocationMethod"] = json!(method);
        out["ipAddress"] = json!(address);
        if let Some(cfg) = existing.and_then(|e| e.view["properties"].get("ipConfiguration")) {
            out["ipConfiguration"] = cfg.clone();
        }
        Ok(out)
    }

    pub(super) fn nic_properties(
        &self,
        id: &str,
        location: &str,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let props = body.get("properties").ok_or_else(|| {
            bad(
                "InvalidRequestFormat",
                "Required property 'properties' is missing.",
            )
        })?;
        let configs = props["ipConfigurations"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                bad(
                    "InvalidRequestFormat",
                    "Required property 'properties.ipConfigurations' is missing or empty.",
                )
            })?;
        if let Some(nsg) = props["networkSecurityGroup"]["id"].as_str() {
            if !self.exists(nsg, "Microsoft.Network/networkSecurityGroups") {
                return Err(invalid_reference(nsg, id));
            }
        }
        let mut out_configs = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let at = format!("properties.ipConfigurations[{i}]");
            let name = c["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    bad(
                        "InvalidRequestFormat",
                        format!("Required property '{at}.name' is missing."),
                    )
                })?;
            let p = &c["properties"];
            let subnet_id = p["subnet"]["id"].as_str().ok_or_else(|| {
                bad(
                    "InvalidRequestFormat",
                    format!("Required property '{at}.properties.subnet.id' is missing."),
                )
            })?;
            let subnet = self
                .subnet(subnet_id)
                .ok_or_else(|| invalid_reference(subnet_id, id))?;
            let vnet_id = subnet_id
                .to_ascii_lowercase()
                .split("/subnets/")
                .next()
                .unwrap_or("")
                .to_string();
            if self
                .resources
                .get(&vnet_id)
                .map(|v| v.view["location"].clone())
                != Some(json!(location))
            {
                return Err(bad("InvalidResourceReference", format!("Resource {subnet_id} referenced by resource {id} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.")));
            }
            let net: Ipv4Net = subnet["properties"]["addressPrefix"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("InternalServerError", "subnet without a prefix"))?;
            let method = p["privateIPAllocationMethod"].as_str().unwrap_or("Dynamic");
            let address = match method {
                "Static" => {
                    let a: Ipv4Addr = p["privateIPAddress"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad("InvalidRequestFormat", format!("'{at}.properties.privateIPAddress' is required for Static allocation.")))?;
                    if !net.contains(&a) {
                        return Err(bad("PrivateIPAddressNotInSubnet", format!("IP address {a} does not belong to the subnet {subnet_id}.")));
                    }
                    a
                }
                "Dynamic" => {
                    let previous = existing
                        .and_then(|e| e.view["properties"]["ipConfigurations"][i]["properties"]["privateIPAddress"].as_str())
                        .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        .filter(|a| net.contains(a));
                    match previous {
                        Some(a) => a,
                        None => self.allocate_ip(subnet_id, net)?,
                    }
                }
                other => {
                    return Err(bad("InvalidRequestFormat", format!("Value '{other}' of '{at}.properties.privateIPAllocationMethod' is not Static or Dynamic.")))
                }
            };
            if let Some(pip) = p["publicIPAddress"]["id"].as_str() {
                let r = self
                    .resources
                    .get(&pip.to_ascii_lowercase())
                    .filter(|r| r.rtype == "Microsoft.Network/publicIPAddresses")
                    .ok_or_else(|| invalid_reference(pip, id))?;
                if let Some(user) = r.view["properties"]["ipConfiguration"]["id"].as_str() {
                    if !user
                        .to_ascii_lowercase()
                        .starts_with(&format!("{}/", id.to_ascii_lowercase()))
                    {
                        return Err(bad("PublicIPAddressInUse", format!("Resource {pip} is referenced by resource {user}; it cannot be used by {id}.")));
                    }
                }
            }
            let mut op = p.clone();
            op["privateIPAddress"] = json!(address.to_string());
            op["privateIPAllocationMethod"] = json!(method);
            op["privateIPAddressVersion"] = json!("IPv4");
            op["provisioningState"] = json!("Succeeded");
            out_configs.push(json!({
                "id": format!("{id}/ipConfigurations/{name}"),
                "name": name,
                "properties": op,
            }));
        }
        let mut out = props.clone();
        out["ipConfigurations"] = Value::Array(out_configs);
        if let Some(vm) = existing.and_then(|e| e.view["properties"].get("virtualMachine")) {
            out["virtualMachine"] = vm.clone();
        }
        out["macAddress"] = json!(format!(
            "00-0D-3A-{:02X}-{:02X}-{:02X}",
            rand::random::<u8>(),
            rand::random::<u8>(),
            rand::random::<u8>()
        ));
        Ok(out)
    }

    /// The first free address of a subnet; Azure keeps the first four and the last.
    pub(super) fn allocate_ip(&self, subnet_id: &str, net: Ipv4Net) -> Result<Ipv4Addr, ArmErr> {
        let want = subnet_id.to_ascii_lowercase();
        let used: HashSet<String> = self
            .resources
            .values()
            .filter(|r| r.rtype == "Microsoft.Network/networkInterfaces")
            .flat_map(|r| {
                r.view["properties"]["ipConfigurations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|c| {
                c["properties"]["subnet"]["id"]
                    .as_str()
                    .map(str::to_ascii_lowercase)
                    == Some(want.clone())
            })
            .filter_map(|c| {
                c["properties"]["privateIPAddress"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        let first = u32::from(net.network()) + 4;
        let last = u32::from(net.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(&a.to_string()))
            .ok_or_else(|| bad("SubnetIsFull", format!("Subnet {subnet_id} with address prefix {net} does not have enough capacity for 1 IP addresses.")))
    }
}

fn check_prefix(p: &str) -> bool {
    const TAGS: &[&str] = &["*", "VirtualNetwork", "Internet", "AzureLoadBalancer"];
    TAGS.contains(&p) || p.parse::<ipnet::IpNet>().is_ok() || p.parse::<std::net::IpAddr>().is_ok()
}

fn check_port_range(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let port = |s: &str| s.parse::<u32>().ok().filter(|n| *n <= 65535);
    match p.split_once('-') {
        Some((a, b)) => matches!((port(a), port(b)), (Some(a), Some(b)) if a <= b),
        None => port(p).is_some(),
    }
}
