//! The instance document (`/metadata/instance`): the VM as ARM declared it, in IMDS's shape.
//! Every leaf is a string and an unset value is an empty string (spec/tokens.md §1.7).

use misim_core::internal::HostedVm;
use serde_json::{Map, Value, json};

use crate::vm_api::tagged_addresses;

/// The whole document of a VM: `{"compute": …, "network": …}`.
pub fn document(vm_id: &str, hosted: &HostedVm) -> Value {
    json!({
        "compute": compute_document(vm_id, hosted),
        "network": network_document(hosted, vm_id),
    })
}

/// A leaf as IMDS prints it: strings as they are, numbers and booleans as text, unset as "".
fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A boolean setting IMDS always reports, "false" when the VM leaves it unset.
fn flag(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "false".into(),
        some => text(some),
    }
}

/// `properties` path lookup: `at(p, &["osProfile", "computerName"])`.
fn at<'a>(properties: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(properties.get(*first)?, |node, key| node.get(key))
}

fn managed_disk(disk: Option<&Value>) -> Value {
    let field = |key| {
        text(
            disk.and_then(|d| d.get("managedDisk"))
                .and_then(|m| m.get(key)),
        )
    };
    json!({"id": field("id"), "storageAccountType": field("storageAccountType")})
}

fn compute_document(vm_id: &str, hosted: &HostedVm) -> Value {
    let p = &hosted.properties;
    let image = |key| text(at(p, &["storageProfile", "imageReference", key]));
    // A marketplace image's `version: latest` resolves to a concrete version on Azure.
    let image_version = at(p, &["storageProfile", "imageReference", "exactVersion"])
        .map_or_else(|| image("version"), |v| text(Some(v)));
    let os_disk = at(p, &["storageProfile", "osDisk"]);
    let os_disk_field = |key| text(os_disk.and_then(|d| d.get(key)));
    let data_disks: Vec<Value> = at(p, &["storageProfile", "dataDisks"])
        .and_then(Value::as_array)
        .map(|disks| {
            disks
                .iter()
                .map(|disk| {
                    let field = |key| text(disk.get(key));
                    json!({
                        "caching": field("caching"),
                        "createOption": field("createOption"),
                        "diskSizeGB": field("diskSizeGB"),
                        "lun": field("lun"),
                        "managedDisk": managed_disk(Some(disk)),
                        "name": field("name"),
                        "writeAcceleratorEnabled": flag(disk.get("writeAcceleratorEnabled")),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let linux = at(p, &["osProfile", "linuxConfiguration"]);
    let public_keys: Vec<Value> = linux
        .and_then(|l| l.get("ssh"))
        .and_then(|s| s.get("publicKeys"))
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .map(|k| json!({"keyData": text(k.get("keyData")), "path": text(k.get("path"))}))
                .collect()
        })
        .unwrap_or_default();
    let tags = hosted
        .tags
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(";");
    let tags_list: Vec<Value> = hosted
        .tags
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!({
        "additionalCapabilities": {
            "hibernationEnabled": flag(at(p, &["additionalCapabilities", "hibernationEnabled"])),
        },
        "azEnvironment": "AzurePublicCloud",
        "evictionPolicy": text(p.get("evictionPolicy")),
        "isHostCompatibilityLayerVm": "false",
        "licenseType": text(p.get("licenseType")),
        "location": hosted.location,
        "name": hosted.name,
        "offer": image("offer"),
        "osProfile": {
            "adminUsername": text(at(p, &["osProfile", "adminUsername"])),
            "computerName": text(at(p, &["osProfile", "computerName"])),
            // Linux only: Windows VMs have no such setting.
            "disablePasswordAuthentication": linux
                .map(|l| flag(l.get("disablePasswordAuthentication")))
                .unwrap_or_default(),
        },
        "osType": hosted.os_type,
        "placementGroupId": "",
        "platformFaultDomain": "0",
        "platformUpdateDomain": "0",
        "priority": text(p.get("priority")),
        "provider": "Microsoft.Compute",
        "publicKeys": public_keys,
        "publisher": image("publisher"),
        "resourceGroupName": hosted.resource_group,
        "resourceId": hosted.resource_id,
        "securityProfile": {
            "encryptionAtHost": flag(at(p, &["securityProfile", "encryptionAtHost"])),
            "secureBootEnabled": flag(at(p, &["securityProfile", "uefiSettings", "secureBootEnabled"])),
            "securityType": text(at(p, &["securityProfile", "securityType"])),
            "virtualTpmEnabled": flag(at(p, &["securityProfile", "uefiSettings", "vTpmEnabled"])),
        },
        "sku": image("sku"),
        "storageProfile": {
            "dataDisks": data_disks,
            "imageReference": {
                "id": image("id"),
                "offer": image("offer"),
                "publisher": image("publisher"),
                "sku": image("sku"),
                "version": image_version,
            },
            "osDisk": {
                "caching": os_disk_field("caching"),
                "createOption": os_disk_field("createOption"),
                "diskSizeGB": os_disk_field("diskSizeGB"),
                "managedDisk": managed_disk(os_disk),
                "name": os_disk_field("name"),
                "osType": hosted.os_type,
                "writeAcceleratorEnabled": flag(os_disk.and_then(|d| d.get("writeAcceleratorEnabled"))),
            },
            "resourceDisk": {"size": ""},
        },
        "subscriptionId": hosted.subscription_id,
        "tags": tags,
        "tagsList": tags_list,
        "userData": text(p.get("userData")),
        "version": image_version,
        "virtualMachineScaleSet": {"id": ""},
        "vmId": vm_id,
        "vmScaleSetName": "",
        "vmSize": hosted.vm_size,
        "zone": "",
    })
}

/// The instance document's network interface: the addresses of the VM's `misim-ip` tag (a
/// VM without one is reached on loopback, its per-VM listener), each IPv4 one in its /24; a MAC
/// address derived from the vmId, stable and distinct per VM.
fn network_document(hosted: &misim_core::internal::HostedVm, vm_id: &str) -> Value {
    use std::net::{IpAddr, Ipv4Addr};
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for ip in tagged_addresses(hosted) {
        match ip {
            IpAddr::V4(ip) => v4.push(ip),
            IpAddr::V6(ip) => v6.push(ip),
        }
    }
    if v4.is_empty() && v6.is_empty() {
        v4.push(Ipv4Addr::LOCALHOST);
    }
    let subnet = |ip: &Ipv4Addr| match ip.octets() {
        [127, ..] => json!({"address": "127.0.0.0", "prefix": "8"}),
        [a, b, c, _] => json!({"address": format!("{a}.{b}.{c}.0"), "prefix": "24"}),
    };
    let digest = misim_core::crypto::sha256(vm_id.as_bytes());
    json!({"interface": [{
        "ipv4": {
            "ipAddress": v4.iter().map(|ip| json!({"privateIpAddress": ip.to_string(), "publicIpAddress": ""})).collect::<Vec<_>>(),
            "subnet": v4.first().map(subnet).into_iter().collect::<Vec<_>>(),
        },
        "ipv6": {"ipAddress": v6.iter().map(|ip| json!({"privateIpAddress": ip.to_string()})).collect::<Vec<_>>()},
        "macAddress": format!("000D3A{:02X}{:02X}{:02X}", digest[0], digest[1], digest[2]),
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_api::SOURCE_IP_TAG;

    fn hosted_vm(tags: &[(&str, &str)]) -> misim_core::internal::HostedVm {
        misim_core::internal::HostedVm {
            resource_id:
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
                    .into(),
            name: "vm".into(),
            resource_group: "rg".into(),
            subscription_id: "s".into(),
            location: "eastus".into(),
            vm_size: "Standard_B1s".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            preferred_port: 0,
            os_type: "Linux".into(),
            properties: Default::default(),
        }
    }

    #[test]
    fn the_compute_document_shows_the_vms_profiles_as_strings() {
        let mut vm = hosted_vm(&[("env", "test")]);
        vm.properties = json!({
            "osProfile": {
                "computerName": "web-1",
                "adminUsername": "azureuser",
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{"path": "/home/azureuser/.ssh/authorized_keys", "keyData": "ssh-rsa AAAA"}]},
                },
            },
            "storageProfile": {
                "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest", "exactVersion": "24.04.202411030"},
                "osDisk": {"name": "web-1-os", "createOption": "FromImage", "diskSizeGB": 30, "managedDisk": {"storageAccountType": "Premium_LRS"}},
                "dataDisks": [{"lun": 0, "name": "data", "diskSizeGB": 128, "createOption": "Empty"}],
            },
            "securityProfile": {"securityType": "TrustedLaunch", "uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true}},
            "priority": "Spot",
            "evictionPolicy": "Deallocate",
            "userData": "aGVsbG8=",
        })
        .as_object()
        .cloned()
        .expect("object");
        let compute = &document("vm-id", &vm)["compute"];
        for (pointer, expected) in [
            ("/osProfile/computerName", "web-1"),
            ("/osProfile/adminUsername", "azureuser"),
            ("/osProfile/disablePasswordAuthentication", "true"),
            ("/publicKeys/0/keyData", "ssh-rsa AAAA"),
            ("/publisher", "Canonical"),
            ("/offer", "ubuntu-24_04-lts"),
            ("/sku", "server"),
            ("/version", "24.04.202411030"),
            ("/storageProfile/imageReference/version", "24.04.202411030"),
            ("/storageProfile/osDisk/diskSizeGB", "30"),
            ("/storageProfile/osDisk/osType", "Linux"),
            (
                "/storageProfile/osDisk/managedDisk/storageAccountType",
                "Premium_LRS",
            ),
            ("/storageProfile/osDisk/caching", ""),
            ("/storageProfile/dataDisks/0/lun", "0"),
            ("/storageProfile/dataDisks/0/diskSizeGB", "128"),
            ("/securityProfile/securityType", "TrustedLaunch"),
            ("/securityProfile/secureBootEnabled", "true"),
            ("/securityProfile/virtualTpmEnabled", "true"),
            ("/securityProfile/encryptionAtHost", "false"),
            ("/priority", "Spot"),
            ("/evictionPolicy", "Deallocate"),
            ("/userData", "aGVsbG8="),
            ("/tags", "env:test"),
            ("/vmId", "vm-id"),
        ] {
            assert_eq!(
                compute.pointer(pointer),
                Some(&json!(expected)),
                "{pointer}"
            );
        }
    }

    #[test]
    fn a_vm_declared_with_nothing_shows_empty_leaves_not_missing_ones() {
        let compute = &document("vm-id", &hosted_vm(&[]))["compute"];
        for pointer in [
            "/osProfile/computerName",
            "/osProfile/disablePasswordAuthentication",
            "/publisher",
            "/storageProfile/imageReference/sku",
            "/securityProfile/securityType",
            "/priority",
            "/userData",
            "/zone",
        ] {
            assert_eq!(compute.pointer(pointer), Some(&json!("")), "{pointer}");
        }
        assert_eq!(compute["publicKeys"], json!([]));
        assert_eq!(compute["storageProfile"]["dataDisks"], json!([]));
        // Every leaf is a string.
        fn leaves_are_strings(node: &Value) -> bool {
            match node {
                Value::Object(map) => map.values().all(leaves_are_strings),
                Value::Array(items) => items.iter().all(leaves_are_strings),
                leaf => leaf.is_string(),
            }
        }
        assert!(leaves_are_strings(compute), "{compute}");
    }

    #[test]
    fn the_network_document_comes_from_the_vms_addresses() {
        let tagged = network_document(
            &hosted_vm(&[(SOURCE_IP_TAG, "172.28.5.7, fd00::7")]),
            "vm-a",
        );
        let interface = &tagged["interface"][0];
        assert_eq!(
            interface["ipv4"]["ipAddress"][0]["privateIpAddress"],
            "172.28.5.7"
        );
        assert_eq!(
            interface["ipv4"]["subnet"][0],
            json!({"address": "172.28.5.0", "prefix": "24"})
        );
        assert_eq!(
            interface["ipv6"]["ipAddress"][0]["privateIpAddress"],
            "fd00::7"
        );
        let untagged = network_document(&hosted_vm(&[]), "vm-b");
        assert_eq!(
            untagged["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"],
            "127.0.0.1"
        );
        assert_eq!(untagged["interface"][0]["ipv4"]["subnet"][0]["prefix"], "8");
        // One MAC per VM, the same every time.
        let mac =
            |vm_id| network_document(&hosted_vm(&[]), vm_id)["interface"][0]["macAddress"].clone();
        assert_eq!(mac("vm-a"), mac("vm-a"));
        assert_ne!(mac("vm-a"), mac("vm-b"));
        assert_eq!(mac("vm-a").as_str().map(str::len), Some(12));
    }
}
