//! Deleting single resources, as ARM does: `DELETE` on a resource answers 202 with an
//! `Azure-AsyncOperation` (the resource `Deleting` until the operation ends), 204 for
//! a resource that does not exist, and refuses what is still in use: a network
//! interface a VM uses (`NicInUse`), a public IP a NIC uses (`PublicIPAddressInUse`),
//! a disk attached to a VM (`OperationNotAllowed`). A VM takes with it the network
//! interfaces and the OS disk it was created to delete with it (`deleteOption:
//! Delete`); the others are detached. Every VM gets its managed OS disk as a resource
//! of its own (`Microsoft.Compute/disks`, named by `osDisk.name` or as Azure names it),
//! so a test sees what a deleted VM leaves behind.

use serde_json::{json, Value};

use super::state::{OpKind, Resource, State};
use super::wire::{bad, err, new_guid, Answer, ArmErr};

const VM: &str = "Microsoft.Compute/virtualMachines";
const NIC: &str = "Microsoft.Network/networkInterfaces";
const PIP: &str = "Microsoft.Network/publicIPAddresses";
const DISK: &str = "Microsoft.Compute/disks";

impl State {
    /// The managed OS disk a VM just created gets, attached to it.
    pub(super) fn attach_os_disk(&mut self, vm: &Resource) {
        let os = &vm.request["properties"]["storageProfile"]["osDisk"];
        let name = os["name"].as_str().map(str::to_string).unwrap_or_else(|| {
            format!(
                "{}_OsDisk_1_{}",
                vm.view["name"].as_str().unwrap_or("vm"),
                new_guid().replace('-', "")
            )
        });
        let group_path = vm.id.split("/providers/").next().unwrap_or("");
        let id = format!("{group_path}/providers/{DISK}/{name}");
        let view = json!({
            "id": id,
            "name": name,
            "type": DISK,
            "location": vm.view["location"],
            "managedBy": vm.id,
            "sku": {"name": os["managedDisk"]["storageAccountType"].as_str().unwrap_or("Standard_LRS")},
            "properties": {
                "diskState": "Attached",
                "osType": "Linux",
                "provisioningState": "Succeeded",
            },
        });
        self.resources.insert(
            id.to_ascii_lowercase(),
            Resource {
                id,
                rtype: DISK.to_string(),
                group_key: vm.group_key.clone(),
                view,
                request: json!({}),
            },
        );
    }

    /// `DELETE` on a resource of the group `group_key`.
    pub(super) fn delete_resource(
        &mut self,
        id: &str,
        async_url: impl FnOnce(&str) -> String,
    ) -> Result<Answer, ArmErr> {
        let key = id.to_ascii_lowercase();
        let Some(r) = self.resources.get(&key) else {
            return Ok(Answer::empty(204));
        };
        let state = r.view["properties"]["provisioningState"]
            .as_str()
            .unwrap_or("");
        if matches!(state, "Creating" | "Updating") {
            return Err(err(
                409,
                "AnotherOperationInProgress",
                format!("Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {id}."),
            ));
        }
        let users = match r.rtype.as_str() {
            NIC => r.view["properties"]["virtualMachine"]["id"].as_str(),
            PIP => r.view["properties"]["ipConfiguration"]["id"].as_str(),
            DISK => r.view["managedBy"].as_str(),
            _ => None,
        };
        if let Some(user) = users {
            let name = r.view["name"].as_str().unwrap_or("");
            return Err(match r.rtype.as_str() {
                NIC => bad("NicInUse", format!("Network Interface {id} is used by existing resource {user}. In order to delete the network interface, it must be dissociated from the resource.")),
                PIP => bad("PublicIPAddressInUse", format!("Public IP address {id} can not be deleted since it is still allocated to resource {user}. In order to delete the public IP, disassociate/detach the Public IP address from the resource.")),
                _ => err(409, "OperationNotAllowed", format!("Disk {name} is attached to VM {user}.")),
            });
        }
        if let Some(r) = self.resources.get_mut(&key) {
            r.view["properties"]["provisioningState"] = json!("Deleting");
        }
        let op = self.begin(OpKind::DeleteResource { key }, None);
        Ok(Answer::empty(202)
            .header("Azure-AsyncOperation", async_url(&op))
            .header("Retry-After", self.lro_retry_after.to_string()))
    }

    /// Ends a resource's deletion: it goes, and a VM takes along what it was created
    /// to delete with it.
    pub(super) fn finish_delete(&mut self, key: &str) {
        let Some(r) = self.resources.remove(key) else {
            return;
        };
        match r.rtype.as_str() {
            VM => {
                let nics = r.request["properties"]["networkProfile"]["networkInterfaces"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for n in nics {
                    let Some(nic_key) = n["id"].as_str().map(str::to_ascii_lowercase) else {
                        continue;
                    };
                    if delete_option(&n["properties"]) {
                        self.finish_delete(&nic_key);
                    } else if let Some(nic) = self.resources.get_mut(&nic_key) {
                        if let Some(p) = nic.view["properties"].as_object_mut() {
                            p.remove("virtualMachine");
                        }
                    }
                }
                let os = &r.request["properties"]["storageProfile"]["osDisk"];
                let disk = self
                    .resources
                    .iter()
                    .find(|(_, d)| d.rtype == DISK && d.view["managedBy"] == json!(r.id))
                    .map(|(k, _)| k.clone());
                if let Some(disk) = disk {
                    if delete_option(os) {
                        self.resources.remove(&disk);
                    } else if let Some(d) = self.resources.get_mut(&disk) {
                        if let Some(v) = d.view.as_object_mut() {
                            v.remove("managedBy");
                        }
                        d.view["properties"]["diskState"] = json!("Unattached");
                    }
                }
            }
            NIC => {
                let configs = r.view["properties"]["ipConfigurations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for c in configs {
                    let pip = c["properties"]["publicIPAddress"]["id"]
                        .as_str()
                        .map(str::to_ascii_lowercase);
                    if let Some(p) = pip.and_then(|k| self.resources.get_mut(&k)) {
                        if let Some(props) = p.view["properties"].as_object_mut() {
                            props.remove("ipConfiguration");
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether a `deleteOption` says the dependant goes with its VM.
fn delete_option(v: &Value) -> bool {
    v["deleteOption"]
        .as_str()
        .is_some_and(|o| o.eq_ignore_ascii_case("Delete"))
}
