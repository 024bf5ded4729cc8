//! Resource groups and the resources in them: create or update (PUT, answered with
//! an asynchronous operation), read, list (paged), and the references ARM keeps
//! between them. What each type's body must hold is checked in `network.rs` and
//! `compute.rs`, as the ARM reference describes it.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::state::{OpKind, Resource, State};
use super::wire::{bad, err, new_guid, parse_body, Answer, ArmErr};

/// Regions the fake knows.
pub const LOCATIONS: &[&str] = &[
    "eastus",
    "eastus2",
    "westus",
    "westus2",
    "westus3",
    "centralus",
    "northcentralus",
    "southcentralus",
    "canadacentral",
    "brazilsouth",
    "northeurope",
    "westeurope",
    "uksouth",
    "ukwest",
    "francecentral",
    "germanywestcentral",
    "switzerlandnorth",
    "norwayeast",
    "swedencentral",
    "polandcentral",
    "italynorth",
    "eastasia",
    "southeastasia",
    "japaneast",
    "japanwest",
    "koreacentral",
    "australiaeast",
    "centralindia",
    "uaenorth",
    "southafricanorth",
];

fn group_id(sub: &str, rg: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}")
}

impl State {
    pub(super) fn put_group(&mut self, sub: &str, rg: &str, body: &[u8]) -> Result<Answer, ArmErr> {
        let body = parse_body(body)?;
        let location = required_location(&body)?;
        let key = group_id(sub, rg).to_ascii_lowercase();
        if let Some(existing) = self.resources.get(&key) {
            let state = existing.view["properties"]["provisioningState"]
                .as_str()
                .unwrap_or("");
            if state == "Deleting" {
                return Err(err(
                    409,
                    "ResourceGroupBeingDeleted",
                    format!("The resource group '{rg}' is in deprovisioning state and cannot perform this operation."),
                ));
            }
            if existing.view["location"] != json!(location) {
                return Err(err(
                    409,
                    "InvalidResourceGroupLocation",
                    format!("Invalid resource group location '{location}'. The Resource group already exists in location '{}'.", existing.view["location"].as_str().unwrap_or("")),
                ));
            }
        }
        let created = !self.resources.contains_key(&key);
        let id = group_id(sub, rg);
        let view = json!({
            "id": id,
            "name": rg,
            "type": "Microsoft.Resources/resourceGroups",
            "location": location,
            "tags": body.get("tags").cloned().unwrap_or(json!({})),
            "properties": {"provisioningState": "Succeeded"},
        });
        self.resources.insert(
            key.clone(),
            Resource {
                id,
                rtype: "Microsoft.Resources/resourceGroups".into(),
                group_key: key,
                view: view.clone(),
                request: body,
            },
        );
        Ok(Answer::json(if created { 201 } else { 200 }, view))
    }

    pub(super) fn get_group(&self, sub: &str, rg: &str) -> Result<Answer, ArmErr> {
        self.resources
            .get(&group_id(sub, rg).to_ascii_lowercase())
            .map(|r| Answer::json(200, r.view.clone()))
            .ok_or_else(|| group_not_found(rg))
    }

    pub(super) fn delete_group(
        &mut self,
        sub: &str,
        rg: &str,
        api_version: &str,
    ) -> Result<Answer, ArmErr> {
        let key = group_id(sub, rg).to_ascii_lowercase();
        let group = self
            .resources
            .get_mut(&key)
            .ok_or_else(|| group_not_found(rg))?;
        group.view["properties"]["provisioningState"] = json!("Deleting");
        let op = self.begin(OpKind::DeleteGroup { group_key: key }, None);
        Ok(Answer::empty(202)
            .header("Location", self.location_url(sub, &op, api_version))
            .header("Retry-After", self.lro_retry_after.to_string()))
    }

    pub(super) fn group_for_write(&self, sub: &str, rg: &str) -> Result<String, ArmErr> {
        let key = group_id(sub, rg).to_ascii_lowercase();
        let g = self
            .resources
            .get(&key)
            .ok_or_else(|| group_not_found(rg))?;
        if g.view["properties"]["provisioningState"] == json!("Deleting") {
            return Err(err(
                409,
                "ResourceGroupBeingDeleted",
                format!("The resource group '{rg}' is in deprovisioning state and cannot perform this operation."),
            ));
        }
        Ok(key)
    }

    pub(super) fn get_resource(
        &self,
        sub: &str,
        rg: &str,
        rtype: &str,
        name: &str,
    ) -> Result<Answer, ArmErr> {
        let gkey = group_id(sub, rg).to_ascii_lowercase();
        if !self.resources.contains_key(&gkey) {
            return Err(group_not_found(rg));
        }
        let id = resource_id(sub, rg, rtype, name);
        self.resources
            .get(&id.to_ascii_lowercase())
            .map(|r| Answer::json(200, r.view.clone()))
            .ok_or_else(|| {
                err(
                    404,
                    "ResourceNotFound",
                    format!("The Resource '{rtype}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"),
                )
            })
    }

    pub(super) fn get_subnet(
        &self,
        sub: &str,
        rg: &str,
        vnet: &str,
        name: &str,
    ) -> Result<Answer, ArmErr> {
        let id = format!(
            "{}/subnets/{name}",
            resource_id(sub, rg, "Microsoft.Network/virtualNetworks", vnet)
        );
        self.subnet(&id)
            .map(|s| Answer::json(200, s))
            .ok_or_else(|| err(404, "NotFound", format!("Resource '{name}' not found.")))
    }

    pub(super) fn list(
        &self,
        sub: &str,
        rg: &str,
        rtype: &str,
        query: &HashMap<String, String>,
        path: &str,
        api_version: &str,
    ) -> Result<Answer, ArmErr> {
        let gkey = group_id(sub, rg).to_ascii_lowercase();
        if !self.resources.contains_key(&gkey) {
            return Err(group_not_found(rg));
        }
        let all: Vec<Value> = self
            .resources
            .values()
            .filter(|r| r.group_key == gkey && r.rtype == rtype)
            .map(|r| r.view.clone())
            .collect();
        let skip: usize = query
            .get("$skiptoken")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(self.page_size)
            .cloned()
            .collect();
        let mut body = json!({ "value": page });
        if skip + self.page_size < all.len() {
            body["nextLink"] = json!(format!(
                "{}{path}?api-version={api_version}&$skiptoken={}",
                self.base,
                skip + self.page_size
            ));
        }
        Ok(Answer::json(200, body))
    }

    pub(super) fn put_resource(
        &mut self,
        sub: &str,
        rg: &str,
        rtype: &'static str,
        name: &str,
        body: &[u8],
        api_version: &str,
    ) -> Result<Answer, ArmErr> {
        let gkey = self.group_for_write(sub, rg)?;
        let body = parse_body(body)?;
        let location = required_location(&body)?;
        let id = resource_id(sub, rg, rtype, name);
        let key = id.to_ascii_lowercase();
        let existing = self.resources.get(&key).cloned();
        if let Some(e) = &existing {
            if e.view["location"] != json!(location) {
                return Err(bad(
                    "InvalidResourceLocation",
                    format!("The resource '{name}' already exists in location '{}' in resource group '{rg}'. A resource with the same name cannot be created in location '{location}'. Please select a new resource name.", e.view["location"].as_str().unwrap_or("")),
                ));
            }
            let state = e.view["properties"]["provisioningState"]
                .as_str()
                .unwrap_or("");
            if matches!(state, "Creating" | "Updating") {
                return Err(err(
                    409,
                    "AnotherOperationInProgress",
                    format!("Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {id}."),
                ));
            }
        }
        let mut failure = None;
        let properties = match rtype {
            "Microsoft.Network/networkSecurityGroups" => self.nsg_properties(&body)?,
            "Microsoft.Network/virtualNetworks" => {
                self.vnet_properties(&id, &location, &body, existing.as_ref())?
            }
            "Microsoft.Network/publicIPAddresses" => {
                self.public_ip_properties(&body, existing.as_ref())?
            }
            "Microsoft.Network/networkInterfaces" => {
                self.nic_properties(&id, &location, &body, existing.as_ref())?
            }
            "Microsoft.Compute/virtualMachines" => {
                failure = self.vm_failure(name);
                self.vm_properties(&id, &location, &body, existing.as_ref())?
            }
            _ => return Err(bad("FakeUnsupported", format!("PUT of {rtype}"))),
        };
        let created = existing.is_none();
        let mut view = json!({
            "id": id,
            "name": name,
            "type": rtype,
            "location": location,
            "tags": body.get("tags").cloned().unwrap_or(json!({})),
            "etag": format!("W/\"{}\"", new_guid()),
            "properties": properties,
        });
        if let Some(sku) = body.get("sku") {
            view["sku"] = sku.clone();
        }
        view["properties"]["provisioningState"] =
            json!(if created { "Creating" } else { "Updating" });
        if rtype == "Microsoft.Compute/virtualMachines" {
            // Custom data is write-only: ARM never returns it.
            hide_custom_data(&mut view);
        }
        // Back-references that ARM keeps: a NIC knows its VM, a public IP its NIC.
        self.link(rtype, &id, &view);
        self.resources.insert(
            key.clone(),
            Resource {
                id: id.clone(),
                rtype: rtype.to_string(),
                group_key: gkey,
                view: view.clone(),
                request: body,
            },
        );
        if created && rtype == "Microsoft.Compute/virtualMachines" {
            if let Some(vm) = self.resources.get(&key).cloned() {
                self.attach_os_disk(&vm);
            }
        }
        let op = self.begin(OpKind::Put { key }, failure);
        let ns = rtype.split('/').next().unwrap_or("");
        Ok(Answer::json(if created { 201 } else { 200 }, view)
            .header(
                "Azure-AsyncOperation",
                self.async_operation_url(sub, ns, &location, &op, api_version),
            )
            .header("Retry-After", self.lro_retry_after.to_string()))
    }

    /// `DELETE` on a resource: see `deletion.rs`.
    pub(super) fn delete_in_group(
        &mut self,
        sub: &str,
        rg: &str,
        rtype: &str,
        name: &str,
        api_version: &str,
    ) -> Result<Answer, ArmErr> {
        self.group_for_write(sub, rg)?;
        let id = resource_id(sub, rg, rtype, name);
        let location = self
            .resources
            .get(&id.to_ascii_lowercase())
            .and_then(|r| r.view["location"].as_str().map(str::to_string))
            .unwrap_or_default();
        let ns = rtype.split('/').next().unwrap_or("").to_string();
        let (sub, api_version) = (sub.to_string(), api_version.to_string());
        let base = self.base.clone();
        self.delete_resource(&id, move |op| {
            format!(
                "{base}/subscriptions/{sub}/providers/{ns}/locations/{location}/operations/{op}?api-version={api_version}"
            )
        })
    }

    pub(super) fn link(&mut self, rtype: &str, id: &str, view: &Value) {
        match rtype {
            "Microsoft.Compute/virtualMachines" => {
                if let Some(nics) =
                    view["properties"]["networkProfile"]["networkInterfaces"].as_array()
                {
                    for n in nics {
                        if let Some(nic) = n["id"]
                            .as_str()
                            .and_then(|i| self.resources.get_mut(&i.to_ascii_lowercase()))
                        {
                            nic.view["properties"]["virtualMachine"] = json!({ "id": id });
                        }
                    }
                }
            }
            "Microsoft.Network/networkInterfaces" => {
                if let Some(cfgs) = view["properties"]["ipConfigurations"].as_array() {
                    for c in cfgs {
                        if let Some(pip) = c["properties"]["publicIPAddress"]["id"]
                            .as_str()
                            .and_then(|i| self.resources.get_mut(&i.to_ascii_lowercase()))
                        {
                            pip.view["properties"]["ipConfiguration"] = json!({ "id": format!("{id}/ipConfigurations/{}", c["name"].as_str().unwrap_or("")) });
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn hide_custom_data(view: &mut Value) {
    if let Some(os) = view["properties"]["osProfile"].as_object_mut() {
        os.remove("customData");
    }
}

fn resource_id(sub: &str, rg: &str, rtype: &str, name: &str) -> String {
    let (ns, t) = rtype.split_once('/').unwrap_or((rtype, ""));
    format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{t}/{name}")
}

fn group_not_found(rg: &str) -> ArmErr {
    err(
        404,
        "ResourceGroupNotFound",
        format!("Resource group '{rg}' could not be found."),
    )
}

fn required_location(body: &Value) -> Result<String, ArmErr> {
    let loc = body["location"]
        .as_str()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            bad(
                "LocationRequired",
                "The location property is required for this definition.",
            )
        })?;
    let norm = loc.to_ascii_lowercase().replace(' ', "");
    if !LOCATIONS.contains(&norm.as_str()) {
        return Err(bad(
            "LocationNotAvailableForResourceType",
            format!(
                "The provided location '{loc}' is not available for resource type. List of available regions is '{}'.",
                LOCATIONS.join(",")
            ),
        ));
    }
    Ok(norm)
}
