//! Bodies of `Microsoft.Compute` virtual machines, checked as the ARM reference
//! describes them: size, image, OS disk, OS profile (names, SSH keys, custom data),
//! network interfaces, and the properties that cannot change once the VM exists.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::state::{Resource, State};
use super::wire::{bad, err, invalid, missing, new_guid, ArmErr};

/// Marketplace images the fake knows (publisher, offer, sku), case-insensitively.
pub const MARKETPLACE_IMAGES: &[(&str, &str, &str)] = &[
    ("Canonical", "ubuntu-24_04-lts", "server"),
    ("Canonical", "ubuntu-24_04-lts", "server-gen1"),
    (
        "Canonical",
        "0001-com-ubuntu-server-jammy",
        "22_04-lts-gen2",
    ),
    ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts"),
    ("Debian", "debian-12", "12-gen2"),
    ("Debian", "debian-12", "12"),
    ("RedHat", "RHEL", "9-lvm-gen2"),
];

const CUSTOM_DATA_MAX: usize = 65535;

impl State {
    pub(super) fn vm_properties(
        &self,
        id: &str,
        location: &str,
        body: &Value,
        existing: Option<&Resource>,
    ) -> Result<Value, ArmErr> {
        let props = body
            .get("properties")
            .ok_or_else(|| missing("properties"))?;
        // hardwareProfile
        let size = props["hardwareProfile"]["vmSize"]
            .as_str()
            .ok_or_else(|| missing("hardwareProfile.vmSize"))?;
        let size_ok = size.starts_with("Standard_")
            && size.len() > 9
            && size.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !size_ok {
            return Err(invalid("vmSize", format!("The value {size} provided for the VM size is not valid. The valid sizes in the current region are: Standard_B2s, Standard_D2s_v5, Standard_D4s_v5, ….")));
        }
        // storageProfile
        let image = &props["storageProfile"]["imageReference"];
        if image.is_null() {
            return Err(missing("storageProfile.imageReference"));
        }
        if let Some(image_id) = image["id"].as_str() {
            let l = image_id.to_ascii_lowercase();
            if !(l.starts_with("/subscriptions/")
                && (l.contains("/providers/microsoft.compute/images/")
                    || l.contains("/providers/microsoft.compute/galleries/")))
            {
                return Err(invalid(
                    "imageReference.id",
                    format!("The value '{image_id}' of parameter 'imageReference.id' is invalid."),
                ));
            }
        } else {
            let mut parts = Vec::new();
            for f in ["publisher", "offer", "sku", "version"] {
                parts.push(
                    image[f]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| missing(&format!("imageReference.{f}")))?,
                );
            }
            let known = MARKETPLACE_IMAGES.iter().any(|(p, o, s)| {
                p.eq_ignore_ascii_case(parts[0])
                    && o.eq_ignore_ascii_case(parts[1])
                    && s.eq_ignore_ascii_case(parts[2])
            });
            if !known {
                return Err(err(404, "PlatformImageNotFound", format!("The platform image '{}:{}:{}:{}' is not available. Verify that all fields in the storage profile are correct.", parts[0], parts[1], parts[2], parts[3])));
            }
        }
        let os_disk = &props["storageProfile"]["osDisk"];
        if !os_disk.is_null() {
            let create = os_disk["createOption"]
                .as_str()
                .ok_or_else(|| missing("storageProfile.osDisk.createOption"))?;
            if !create.eq_ignore_ascii_case("FromImage") {
                return Err(invalid("osDisk.createOption", format!("The value '{create}' of parameter 'osDisk.createOption' is not allowed with an image reference.")));
            }
            if let Some(t) = os_disk["managedDisk"]["storageAccountType"].as_str() {
                if !DISK_TYPES.contains(&t) {
                    return Err(invalid(
                        "osDisk.managedDisk.storageAccountType",
                        format!("The value '{t}' of parameter 'storageAccountType' is invalid."),
                    ));
                }
            }
        }
        data_disks(&props["storageProfile"]["dataDisks"])?;
        // osProfile
        let os = &props["osProfile"];
        if os.is_null() {
            return Err(missing("osProfile"));
        }
        let computer = os["computerName"]
            .as_str()
            .ok_or_else(|| missing("osProfile.computerName"))?;
        let computer_ok = !computer.is_empty()
            && computer.len() <= 64
            && computer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !computer.starts_with('-')
            && !computer.bytes().all(|b| b.is_ascii_digit());
        if !computer_ok {
            return Err(invalid("computerName", "Linux host name cannot exceed 64 characters in length or contain the following characters: ` ~ ! @ # $ % ^ & * ( ) = + _ [ ] { } \\ | ; : ' \" , < > / ?."));
        }
        let admin = os["adminUsername"]
            .as_str()
            .ok_or_else(|| missing("osProfile.adminUsername"))?;
        const RESERVED: &[&str] = &[
            "root",
            "admin",
            "administrator",
            "guest",
            "sys",
            "user",
            "test",
            "adm",
            "daemon",
            "bin",
            "nobody",
        ];
        if admin.is_empty()
            || admin.len() > 64
            || RESERVED.contains(&admin.to_ascii_lowercase().as_str())
        {
            return Err(invalid(
                "adminUsername",
                "The Admin Username specified is not allowed.",
            ));
        }
        if let Some(cd) = os.get("customData") {
            let decoded = cd.as_str().and_then(|s| STANDARD.decode(s).ok());
            if decoded.is_none_or(|d| d.len() > CUSTOM_DATA_MAX) {
                return Err(invalid("customData", "Custom data in OSProfile must be in Base64 encoding and with a maximum length of 87380 characters."));
            }
        }
        let linux = &os["linuxConfiguration"];
        let no_password = linux["disablePasswordAuthentication"]
            .as_bool()
            .unwrap_or(false);
        if no_password {
            let keys = linux["ssh"]["publicKeys"]
                .as_array()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| invalid("linuxConfiguration.ssh.publicKeys", "Authentication using either SSH or by user name and password must be enabled in Linux profile."))?;
            for k in keys {
                let path = k["path"].as_str().unwrap_or("");
                if path != format!("/home/{admin}/.ssh/authorized_keys") {
                    return Err(invalid("linuxConfiguration.ssh.publicKeys.path", format!("The value of parameter linuxConfiguration.ssh.publicKeys.path is invalid: '{path}'. It must be /home/{admin}/.ssh/authorized_keys.")));
                }
                let data = k["keyData"].as_str().unwrap_or("");
                if !is_ssh_public_key(data) {
                    return Err(invalid("linuxConfiguration.ssh.publicKeys.keyData", "The value of parameter linuxConfiguration.ssh.publicKeys.keyData is invalid."));
                }
            }
        } else if os["adminPassword"].as_str().is_none() {
            return Err(missing("adminPassword"));
        }
        // networkProfile
        let nics = props["networkProfile"]["networkInterfaces"]
            .as_array()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("networkProfile.networkInterfaces"))?;
        for n in nics {
            let nic_id = n["id"]
                .as_str()
                .ok_or_else(|| missing("networkProfile.networkInterfaces.id"))?;
            let nic = self
                .resources
                .get(&nic_id.to_ascii_lowercase())
                .filter(|r| r.rtype == "Microsoft.Network/networkInterfaces")
                .ok_or_else(|| err(400, "NotFound", format!("Resource {nic_id} not found.")))?;
            if nic.view["location"] != json!(location) {
                return Err(invalid("networkProfile.networkInterfaces", format!("The network interface {nic_id} is in location '{}' and cannot be used by a virtual machine in '{location}'.", nic.view["location"].as_str().unwrap_or(""))));
            }
            if let Some(user) = nic.view["properties"]["virtualMachine"]["id"].as_str() {
                if !user.eq_ignore_ascii_case(id) {
                    return Err(bad("NicInUse", format!("Network Interface {nic_id} is used by existing resource {user}. In order to delete the network interface, it must be dissociated from the resource.")));
                }
            }
        }
        // Properties that cannot change once the VM exists.
        if let Some(e) = existing {
            let before = &e.request["properties"]["osProfile"];
            for field in ["computerName", "adminUsername", "customData"] {
                if before.get(field) != os.get(field) {
                    return Err(err(
                        409,
                        "PropertyChangeNotAllowed",
                        format!("Changing property '{field}' is not allowed."),
                    )
                    .with_target(field));
                }
            }
        }
        let mut out = props.clone();
        out["vmId"] = json!(existing
            .and_then(|e| e.view["properties"]["vmId"].as_str().map(str::to_string))
            .unwrap_or_else(new_guid));
        let _ = location;
        Ok(out)
    }
}

fn is_ssh_public_key(s: &str) -> bool {
    let mut parts = s.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(raw) = STANDARD.decode(blob) else {
        return false;
    };
    // The blob starts with the key type as an SSH string.
    let Some(len) = raw
        .get(0..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    else {
        return false;
    };
    matches!(
        kind,
        "ssh-rsa"
            | "ssh-ed25519"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
    ) && raw.get(4..4 + len) == Some(kind.as_bytes())
}

/// Storage account types a managed disk may have.
const DISK_TYPES: &[&str] = &[
    "Standard_LRS",
    "StandardSSD_LRS",
    "Premium_LRS",
    "Premium_ZRS",
    "StandardSSD_ZRS",
    "PremiumV2_LRS",
    "UltraSSD_LRS",
];

/// `storageProfile.dataDisks` as the reference describes a `DataDisk`: `lun` (required,
/// 0 to 63, unique) and `createOption` (required: `Empty`, `Attach`, `FromImage`,
/// `Copy`, `Restore`); an `Empty` disk needs `diskSizeGB` (1 to 32,767);
/// `deleteOption` is `Delete` or `Detach`; `managedDisk.storageAccountType` one of the
/// disk types.
fn data_disks(disks: &Value) -> Result<(), ArmErr> {
    if disks.is_null() {
        return Ok(());
    }
    let list = disks.as_array().ok_or_else(|| {
        invalid(
            "dataDisks",
            "The value of parameter 'dataDisks' is invalid.",
        )
    })?;
    let mut luns = std::collections::HashSet::new();
    for d in list {
        let lun = d["lun"]
            .as_u64()
            .ok_or_else(|| missing("storageProfile.dataDisks.lun"))?;
        if lun > 63 {
            return Err(invalid(
                "dataDisks.lun",
                format!("The value '{lun}' of parameter 'lun' is out of range: 0 to 63."),
            ));
        }
        if !luns.insert(lun) {
            return Err(invalid(
                "dataDisks.lun",
                format!("A disk at LUN {lun} already exists."),
            ));
        }
        let create = d["createOption"]
            .as_str()
            .ok_or_else(|| missing("storageProfile.dataDisks.createOption"))?;
        const CREATE: &[&str] = &["Empty", "Attach", "FromImage", "Copy", "Restore"];
        if !CREATE.iter().any(|c| c.eq_ignore_ascii_case(create)) {
            return Err(invalid(
                "dataDisks.createOption",
                format!("The value '{create}' of parameter 'createOption' is invalid."),
            ));
        }
        if create.eq_ignore_ascii_case("Empty") {
            let size = d["diskSizeGB"]
                .as_u64()
                .ok_or_else(|| missing("storageProfile.dataDisks.diskSizeGB"))?;
            if !(1..=32_767).contains(&size) {
                return Err(invalid(
                    "dataDisks.diskSizeGB",
                    format!(
                        "The value '{size}' of parameter 'diskSizeGB' is out of range: 1 to 32767."
                    ),
                ));
            }
        }
        if let Some(opt) = d.get("deleteOption").filter(|v| !v.is_null()) {
            let ok = opt.as_str().is_some_and(|o| {
                o.eq_ignore_ascii_case("Delete") || o.eq_ignore_ascii_case("Detach")
            });
            if !ok {
                return Err(invalid(
                    "dataDisks.deleteOption",
                    format!("The value '{opt}' of parameter 'deleteOption' is invalid."),
                ));
            }
        }
        if let Some(t) = d["managedDisk"]["storageAccountType"].as_str() {
            if !DISK_TYPES.contains(&t) {
                return Err(invalid(
                    "dataDisks.managedDisk.storageAccountType",
                    format!("The value '{t}' of parameter 'storageAccountType' is invalid."),
                ));
            }
        }
    }
    Ok(())
}
