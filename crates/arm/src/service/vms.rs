//! Virtual machines (simulated: no compute) and their identities: enabling a system-assigned
//! identity mints a principal, disabling or deleting the VM removes it; user-assigned identities
//! are attached by reference, each newly attached one needing `assign/action` on it.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Arm, KIND_IDENTITY, normalize_location};
use crate::auth::Caller;
use crate::domain::path::valid_vm_name;
use crate::domain::rbac::scope_key;
use crate::domain::vm_identity::{self, DesiredIdentities, IdentityError};
use crate::error::ArmError;
use crate::store::{ResourceRow, Store};

pub const KIND_VM: &str = "virtualMachine";

/// A VM PUT or PATCH body, parsed.
#[derive(Debug, Clone, Default)]
pub struct VmInput {
    pub location: Option<String>,
    pub tags: Option<Map<String, Value>>,
    pub properties: Option<Map<String, Value>>,
    pub identity: Option<Value>,
    /// `If-Match` / `If-None-Match` (Compute's optimistic concurrency, api-version 2023-09-01).
    pub conditions: WriteConditions,
}

/// The conditional headers of a VM write as sent (several lines of one header joined with
/// ", "), parsed and checked against the VM's etag after authorization, under ARM's write lock.
#[derive(Debug, Clone, Default)]
pub struct WriteConditions {
    /// `If-Match`: the write goes ahead only if the VM exists and, unless `*`, its etag is one
    /// of the listed ones.
    pub if_match: Option<String>,
    /// `If-None-Match`: only `*` (Compute documents no other value): the write goes ahead only
    /// if the VM does not exist yet.
    pub if_none_match: Option<String>,
}

/// An `If-Match` / `If-None-Match` value (RFC 9110 §13.1.1): `*`, or entity tags.
#[derive(Debug, PartialEq)]
enum EntityTags {
    Any,
    /// (weak, the opaque tag without its quotes)
    Listed(Vec<(bool, String)>),
}

/// Parses `*` or a comma-separated list of `"tag"` / `W/"tag"` (empty list elements are
/// skipped, as the RFC asks of recipients); anything else is a 400, not a guess.
fn entity_tags(header: &str, text: &str) -> Result<EntityTags, ArmError> {
    let malformed = || {
        ArmError::InvalidParameter(format!(
            "The {header} header must be '*' or a list of quoted etags such as \"1\"."
        ))
    };
    let text = text.trim_matches([' ', '\t']);
    if text == "*" {
        return Ok(EntityTags::Any);
    }
    let mut tags = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, quoted) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let inner = quoted.strip_prefix('"').ok_or_else(malformed)?;
        let end = inner.find('"').ok_or_else(malformed)?;
        let opaque = &inner[..end];
        // etagc: visible ASCII but the double quote.
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
        {
            return Err(malformed());
        }
        tags.push((weak, opaque.to_string()));
        rest = inner[end + 1..].trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with(',') {
            return Err(malformed());
        }
    }
    if tags.is_empty() {
        return Err(malformed());
    }
    Ok(EntityTags::Listed(tags))
}

impl WriteConditions {
    /// Checks the conditions against the VM's current version (`None`: no such VM).
    fn check(&self, current: Option<u64>) -> Result<(), ArmError> {
        let if_match = self
            .if_match
            .as_deref()
            .map(|text| entity_tags("If-Match", text).map(|tags| (text.trim(), tags)))
            .transpose()?;
        if let Some(text) = &self.if_none_match {
            if entity_tags("If-None-Match", text)? != EntityTags::Any {
                return Err(ArmError::InvalidParameter(
                    "The If-None-Match header supports only '*' (create, never replace).".into(),
                ));
            }
            if current.is_some() {
                return Err(ArmError::PreconditionFailed(
                    "The resource already exists, and the If-None-Match header '*' allows only its creation.".into(),
                ));
            }
        }
        let Some((sent, tags)) = if_match else {
            return Ok(());
        };
        let Some(version) = current else {
            return Err(ArmError::PreconditionFailed(format!(
                "Etag provided in if-match header {sent} does not match: the resource does not exist."
            )));
        };
        let current = version.to_string();
        // If-Match compares strongly: a weak tag never matches.
        let matches = match tags {
            EntityTags::Any => true,
            EntityTags::Listed(tags) => tags.iter().any(|(weak, tag)| !weak && *tag == current),
        };
        if matches {
            Ok(())
        } else {
            Err(ArmError::PreconditionFailed(format!(
                "Etag provided in if-match header {sent} does not match etag \"{current}\" of resource."
            )))
        }
    }
}

/// A user-assigned identity attached to a VM, as last resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attached {
    pub id: String,
    #[serde(rename = "principalId")]
    pub principal_id: String,
    #[serde(rename = "clientId")]
    pub client_id: String,
}

/// What ARM stores for a VM beyond the common columns.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    #[serde(rename = "vmId")]
    pub vm_id: String,
    #[serde(rename = "timeCreated")]
    pub time_created: i64,
    pub properties: Map<String, Value>,
    #[serde(rename = "systemPrincipalId")]
    pub system_principal_id: Option<String>,
    pub attached: Vec<Attached>,
    /// The VM's etag (`"1"` at creation), moved by each write that changes what the VM shows.
    /// VMs stored before etags start at 1.
    #[serde(default = "first_version")]
    pub version: u64,
}

fn first_version() -> u64 {
    1
}

impl VmState {
    pub fn desired(&self) -> DesiredIdentities {
        DesiredIdentities {
            system: self.system_principal_id.is_some(),
            user: self.attached.iter().map(|a| a.id.clone()).collect(),
        }
    }
}

/// A VM as ARM shows it.
#[derive(Debug, Clone)]
pub struct VmView {
    pub resource: ResourceRow,
    pub state: VmState,
}

impl VmView {
    /// Whether the VM carries the identity: its own system-assigned one, or an attached one.
    pub fn carries(&self, identity: &crate::store::IdentityRow) -> bool {
        (identity.owner_key == self.resource.id_key && !identity.user_assigned)
            || self
                .state
                .attached
                .iter()
                .any(|a| a.principal_id.eq_ignore_ascii_case(&identity.principal_id))
    }
}

fn identity_error(error: IdentityError) -> ArmError {
    match error {
        IdentityError::Malformed(m) => ArmError::InvalidRequestContent(m),
        IdentityError::InvalidParameter(m) => ArmError::InvalidParameter(m),
    }
}

/// Secrets never come back (spec/arm.md §4.4).
fn scrub(mut properties: Map<String, Value>) -> Map<String, Value> {
    for key in ["provisioningState", "vmId", "timeCreated", "instanceView"] {
        properties.remove(key);
    }
    if let Some(Value::Object(os)) = properties.get_mut("osProfile") {
        os.remove("adminPassword");
        os.remove("customData");
    }
    properties
}

/// What IMDS's instance document shows of a VM's properties (spec/tokens.md §1.7), and only
/// that: the host is sent no more than it serves.
fn instance_properties(properties: &Map<String, Value>) -> Map<String, Value> {
    const SHOWN: [&str; 8] = [
        "osProfile",
        "storageProfile",
        "securityProfile",
        "additionalCapabilities",
        "priority",
        "evictionPolicy",
        "licenseType",
        "userData",
    ];
    let mut shown: Map<String, Value> = SHOWN
        .iter()
        .filter_map(|key| Some((key.to_string(), properties.get(*key)?.clone())))
        .collect();
    // Of the OS profile, the names and the Linux settings (SSH keys included); not the
    // Windows configuration, secrets or anything else.
    if let Some(Value::Object(os)) = shown.get_mut("osProfile") {
        os.retain(|key, _| {
            matches!(
                key.as_str(),
                "computerName" | "adminUsername" | "linuxConfiguration"
            )
        });
    }
    shown
}

/// A PATCH's properties merged into the stored ones (JSON merge patch, RFC 7386): objects merge
/// key by key at every depth, `null` removes, anything else replaces. A PATCH of one field of
/// `osProfile` keeps the rest of it.
fn merge_patch(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(fields) => match target.get_mut(&key) {
                Some(Value::Object(existing)) => merge_patch(existing, fields),
                _ => {
                    let mut fresh = Map::new();
                    merge_patch(&mut fresh, fields);
                    target.insert(key, Value::Object(fresh));
                }
            },
            other => {
                target.insert(key, other);
            }
        }
    }
}

/// The most a VM's stored properties may take, as JSON (one request's worth).
const MAX_VM_PROPERTIES_BYTES: usize = 1024 * 1024;

/// Tag naming the loopback port of a VM's IMDS listener (simulator-specific).
pub const IMDS_PORT_TAG: &str = "misim-imds-port";

/// A VM's OS as its instance document reports it: `storageProfile.osDisk.osType` when given,
/// else Windows when it has a Windows configuration, else Linux.
fn os_type(properties: &Map<String, Value>) -> &'static str {
    let declared = properties
        .get("storageProfile")
        .and_then(|p| p.get("osDisk"))
        .and_then(|d| d.get("osType"))
        .and_then(Value::as_str);
    let windows = match declared {
        Some(os) => os.eq_ignore_ascii_case("windows"),
        None => properties
            .get("osProfile")
            .is_some_and(|p| p.get("windowsConfiguration").is_some()),
    };
    if windows { "Windows" } else { "Linux" }
}

impl Arm {
    /// VMs (their vmIds) that carry the user-assigned identity `identity_id`.
    pub(super) async fn vms_carrying(&self, identity_id: &str) -> Result<Vec<String>, ArmError> {
        let mut out = Vec::new();
        for row in self.inner.store.resources(KIND_VM, None).await? {
            let view = Self::vm_view(row)?;
            if view
                .state
                .attached
                .iter()
                .any(|a| a.id.eq_ignore_ascii_case(identity_id))
            {
                out.push(view.state.vm_id);
            }
        }
        Ok(out)
    }

    pub(super) fn hosted_vm(
        &self,
        row: &ResourceRow,
        state: &VmState,
        resource_group: &str,
    ) -> misim_core::internal::HostedVm {
        let tags: std::collections::BTreeMap<String, String> =
            serde_json::from_str::<Map<String, Value>>(&row.tags)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                .collect();
        let preferred_port = tags
            .get(IMDS_PORT_TAG)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        misim_core::internal::HostedVm {
            resource_id: row.id.clone(),
            name: row.name.clone(),
            resource_group: resource_group.to_string(),
            subscription_id: self.inner.subscription_id.clone(),
            location: row.location.clone(),
            vm_size: state
                .properties
                .get("hardwareProfile")
                .and_then(|h| h.get("vmSize"))
                .and_then(Value::as_str)
                .unwrap_or("Standard_B1s")
                .to_string(),
            tags,
            preferred_port,
            os_type: os_type(&state.properties).into(),
            properties: instance_properties(&state.properties),
        }
    }

    pub(super) fn hosted_identity(
        &self,
        identity: &crate::store::IdentityRow,
    ) -> misim_core::internal::HostedIdentity {
        misim_core::internal::HostedIdentity {
            client_id: identity.client_id.clone(),
            tenant_id: self.inner.config.tenant_id.clone(),
            resource_id: identity.mirid.clone(),
            user_assigned: identity.user_assigned,
            key_id: identity.cert_key_id.clone(),
            certificate: misim_core::jose::b64std(&identity.cert_der),
            private_key: misim_core::jose::b64std(&identity.private_pkcs8),
        }
    }

    fn vm_id(&self, rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}",
            self.inner.subscription_id
        )
    }

    /// `xms_mirid` of a VM's system-assigned identity (lower-case `resourcegroups`, as Azure).
    fn vm_mirid(&self, rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}",
            self.inner.subscription_id
        )
    }

    pub(super) fn vm_view(row: ResourceRow) -> Result<VmView, ArmError> {
        let state: VmState = serde_json::from_str(&row.properties)
            .map_err(|e| ArmError::Internal(format!("stored VM {} is corrupt: {e}", row.id)))?;
        Ok(VmView {
            resource: row,
            state,
        })
    }

    async fn existing_vm(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<Option<VmView>, ArmError> {
        self.existing_group(sub, rg).await?;
        self.resource_row(&scope_key(&self.vm_id(rg, name)))
            .await?
            .filter(|r| r.kind == KIND_VM)
            .map(Self::vm_view)
            .transpose()
    }

    fn vm_not_found(rg: &str, name: &str) -> ArmError {
        ArmError::ResourceNotFound {
            kind: "Microsoft.Compute/virtualMachines",
            name: name.to_string(),
            rg: rg.to_string(),
        }
    }

    pub async fn vm(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<VmView, ArmError> {
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            "Microsoft.Compute/virtualMachines/read",
            &self.vm_id(rg, name),
        )
        .await?;
        self.existing_vm(sub, rg, name)
            .await?
            .ok_or_else(|| Self::vm_not_found(rg, name))
    }

    pub async fn vms(
        &self,
        caller: &Caller,
        sub: &str,
        rg: Option<&str>,
    ) -> Result<Vec<VmView>, ArmError> {
        let rows = self
            .readable(
                caller,
                sub,
                rg,
                KIND_VM,
                "Microsoft.Compute/virtualMachines/read",
            )
            .await?;
        rows.into_iter().map(Self::vm_view).collect()
    }

    /// PUT (`patch == false`, replaces) or PATCH (merges) of a VM.
    pub async fn put_vm(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        name: &str,
        input: VmInput,
        patch: bool,
    ) -> Result<(VmView, bool), ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        if !valid_vm_name(name) {
            return Err(ArmError::InvalidResourceName {
                name: name.into(),
                rule: "Virtual machine names are 1-64 characters of letters, digits, '-', '_' and '.', not starting with '_' nor ending with '.' or '-'.",
            });
        }
        let id = self.vm_id(rg, name);
        self.authorize(caller, "Microsoft.Compute/virtualMachines/write", &id)
            .await?;
        let group = self.existing_group(sub, rg).await?;
        let existing = self.existing_vm(sub, rg, name).await?;
        if patch && existing.is_none() {
            return Err(Self::vm_not_found(rg, name));
        }
        input
            .conditions
            .check(existing.as_ref().map(|e| e.state.version))?;
        let location = match (&input.location, &existing) {
            (Some(l), Some(e)) if normalize_location(l) != e.resource.location => {
                return Err(ArmError::InvalidResourceLocation {
                    requested: normalize_location(l),
                    existing: e.resource.location.clone(),
                });
            }
            (Some(l), _) => normalize_location(l),
            (None, Some(e)) => e.resource.location.clone(),
            (None, None) => return Err(ArmError::LocationRequired),
        };
        let mut state = existing
            .as_ref()
            .map(|e| e.state.clone())
            .unwrap_or_else(|| VmState {
                vm_id: Uuid::new_v4().to_string(),
                time_created: self.inner.clock.now_unix(),
                ..Default::default()
            });
        let current = state.desired();
        let desired =
            vm_identity::apply(&current, input.identity.as_ref(), patch).map_err(identity_error)?;

        // Newly attached user-assigned identities must exist, and the caller needs assign/action
        // on each of them (spec/arm.md §4.2). One that stays must still be the identity that was
        // attached: a deleted one fails every write that keeps it until the client removes it
        // with `null`, and one recreated under the same name is a new identity, attached anew
        // (spec/arm.md §4.5).
        let mut added: Vec<&String> = Vec::new();
        for uami in &desired.user {
            let Some(attached) = state
                .attached
                .iter()
                .find(|a| a.id.eq_ignore_ascii_case(uami))
            else {
                added.push(uami);
                continue;
            };
            let principal = match self
                .resource_row(&scope_key(uami))
                .await?
                .filter(|r| r.kind == KIND_IDENTITY)
            {
                Some(row) => self.inner.store.identities_of(&row.id_key).await?,
                None => Vec::new(),
            };
            match principal.first() {
                None => {
                    return Err(ArmError::FailedIdentityOperation {
                        resource: id.clone(),
                        identity: uami.to_ascii_lowercase(),
                    });
                }
                Some(identity) if identity.principal_id != attached.principal_id => {
                    added.push(uami)
                }
                Some(_) => {}
            }
        }
        let mut missing_rights = Vec::new();
        let mut resolved = Vec::new();
        for uami in &added {
            let row = self
                .resource_row(&scope_key(uami))
                .await?
                .filter(|r| r.kind == KIND_IDENTITY);
            let Some(row) = row else {
                return Err(ArmError::FailedIdentityOperation {
                    resource: id.clone(),
                    identity: uami.to_ascii_lowercase(),
                });
            };
            if self
                .authorize(
                    caller,
                    "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
                    &row.id,
                )
                .await
                .is_err()
            {
                missing_rights.push((*uami).clone());
            }
            let identity = self
                .inner
                .store
                .identities_of(&row.id_key)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ArmError::Internal(format!("identity {} has no principal", row.id))
                })?;
            resolved.push(Attached {
                id: (*uami).clone(),
                principal_id: identity.principal_id,
                client_id: identity.client_id,
            });
        }
        if !missing_rights.is_empty() {
            return Err(ArmError::LinkedAuthorizationFailed {
                oid: caller.object_id.clone(),
                scope: id.clone(),
                linked: missing_rights.join(","),
            });
        }
        // Keep what stays attached (with the casing the client sent last), add the new ones
        // (a recreated identity's new ids replace the old).
        state.attached = desired
            .user
            .iter()
            .map(|u| {
                resolved
                    .iter()
                    .chain(state.attached.iter())
                    .find(|a| a.id.eq_ignore_ascii_case(u))
                    .map(|a| Attached {
                        id: u.clone(),
                        ..a.clone()
                    })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ArmError::Internal("an attached identity was lost".into()))?;

        if let Some(properties) = input.properties {
            let properties = scrub(properties);
            if patch {
                merge_patch(&mut state.properties, properties);
            } else {
                state.properties = properties;
            }
        } else if !patch {
            state.properties = Map::new();
        }
        // PATCHes merge, so properties could grow past what one request may carry; bounded,
        // the VM's host (which reads up to twice this) always takes what ARM accepted.
        let size = serde_json::to_string(&state.properties).map_or(usize::MAX, |s| s.len());
        if size > MAX_VM_PROPERTIES_BYTES {
            return Err(ArmError::InvalidParameter(format!(
                "The VM's properties would take {size} bytes; at most {MAX_VM_PROPERTIES_BYTES} are kept."
            )));
        }

        let key = scope_key(&id);
        let mut removed_principal = None;
        let minted = match (current.system, desired.system) {
            (false, true) => Some(
                self.mint_principal(&key, &self.vm_mirid(rg, name), name, false)
                    .await?,
            ),
            (true, false) => {
                removed_principal = state.system_principal_id.take();
                None
            }
            _ => None,
        };
        if let Some(minted) = &minted {
            state.system_principal_id = Some(minted.identity.principal_id.clone());
        }
        let tags = match (input.tags, &existing) {
            (Some(tags), _) => Value::Object(tags).to_string(),
            (None, Some(e)) if patch => e.resource.tags.clone(),
            _ => "{}".into(),
        };
        // The etag moves only when what the VM shows changes: a PATCH that changes nothing (as
        // `misim up` sends the demo VM at every start) keeps the etag clients hold.
        state.version = match &existing {
            None => first_version(),
            Some(e) => {
                state.version = e.state.version;
                let same_tags = serde_json::from_str::<Value>(&e.resource.tags).ok()
                    == serde_json::from_str::<Value>(&tags).ok();
                // The id and name keep the casing of the last write, so a new casing shows.
                if e.state == state && same_tags && e.resource.id == id && e.resource.name == name {
                    e.state.version
                } else {
                    e.state.version + 1
                }
            }
        };
        let now = self.inner.clock.now_unix();
        let row = ResourceRow {
            id_key: key.clone(),
            id,
            kind: KIND_VM.into(),
            resource_group: group.resource_group.clone(),
            name: name.to_string(),
            location,
            tags,
            properties: serde_json::to_string(&state)
                .map_err(|e| ArmError::Internal(e.to_string()))?,
            state: "Succeeded".into(),
            created_at: existing.as_ref().map_or(now, |e| e.resource.created_at),
            created_by: existing.as_ref().map_or_else(
                || caller.object_id.clone(),
                |e| e.resource.created_by.clone(),
            ),
            updated_at: now,
            updated_by: caller.object_id.clone(),
        };
        // What the VM's host must hold after this write: its metadata and the credential of
        // every identity it carries (idempotent upserts), minus what it no longer carries.
        let mut host_identities = Vec::new();
        if let Some(minted) = &minted {
            host_identities.push(minted.identity.clone());
        } else if state.system_principal_id.is_some() {
            host_identities.extend(self.inner.store.identities_of(&key).await?);
        }
        for attached in &state.attached {
            host_identities.extend(
                self.inner
                    .store
                    .identities_of(&scope_key(&attached.id))
                    .await?,
            );
        }
        let mut dropped: Vec<String> = existing
            .as_ref()
            .map(|e| {
                e.state
                    .attached
                    .iter()
                    .map(|a| a.principal_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        dropped.retain(|p| !state.attached.iter().any(|a| a.principal_id == *p));
        let hosted = self.hosted_vm(&row, &state, group.resource_group.as_str());
        let mut tx = self.inner.store.begin().await?;
        Store::put_resource(&mut tx, &row).await?;
        if removed_principal.is_some() {
            super::retire_identities(&mut tx, &key, std::slice::from_ref(&state.vm_id)).await?;
        }
        if let Some(minted) = &minted {
            minted.write(&mut tx).await?;
        }
        Store::enqueue(
            &mut tx,
            "imds.put_vm",
            &json!({"vmId": state.vm_id, "vm": hosted}),
        )
        .await?;
        for principal in &dropped {
            Store::enqueue(
                &mut tx,
                "imds.delete_identity",
                &json!({"vmId": state.vm_id, "principalId": principal}),
            )
            .await?;
        }
        for identity in &host_identities {
            let payload = json!({"vmId": state.vm_id, "principalId": identity.principal_id, "identity": self.hosted_identity(identity)});
            Store::enqueue(&mut tx, "imds.put_identity", &payload).await?;
        }
        tx.commit().await?;
        self.invalidate_caches();
        self.deliver().await;
        let mut row = row;
        self.mark_pending(&mut row).await?;
        Ok((Self::vm_view(row)?, existing.is_none()))
    }

    /// Deletes a VM and its system-assigned principal; `false` when it did not exist.
    pub async fn delete_vm(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<bool, ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        let id = self.vm_id(rg, name);
        self.authorize(caller, "Microsoft.Compute/virtualMachines/delete", &id)
            .await?;
        let Some(vm) = self.existing_vm(sub, rg, name).await? else {
            return Ok(false);
        };
        let mut tx = self.inner.store.begin().await?;
        Store::enqueue(&mut tx, "imds.delete_vm", &json!({"vmId": vm.state.vm_id})).await?;
        // imds.delete_vm takes every credential off the host with the VM.
        super::retire_identities(&mut tx, &vm.resource.id_key, &[]).await?;
        Store::delete_assignments_under(&mut tx, &vm.resource.id_key).await?;
        Store::delete_resource(&mut tx, &vm.resource.id_key).await?;
        tx.commit().await?;
        self.invalidate_caches();
        self.deliver().await;
        Ok(true)
    }

    /// `/_sim/vms/{name or id}`: a VM and where its IMDS answers. Bootstrap admin only
    /// (CONTRACT.md, Simulator APIs).
    pub async fn sim_vm(
        &self,
        caller: &Caller,
        name_or_id: &str,
    ) -> Result<(VmView, Option<misim_core::internal::HostedVmStatus>), ArmError> {
        self.require_admin(caller)?;
        let row = self.find_vm(name_or_id).await?;
        let view = Self::vm_view(row)?;
        let status = self
            .inner
            .host
            .status(&view.state.vm_id)
            .await
            .map_err(ArmError::Internal)?;
        Ok((view, status))
    }

    /// A VM by name (when unique) or resource id, for the simulator APIs.
    pub(crate) async fn find_vm(&self, name_or_id: &str) -> Result<ResourceRow, ArmError> {
        let all = self.inner.store.resources(KIND_VM, None).await?;
        let matching: Vec<ResourceRow> = all
            .into_iter()
            .filter(|r| {
                r.id.trim_start_matches('/')
                    .eq_ignore_ascii_case(name_or_id.trim_start_matches('/'))
                    || r.name.eq_ignore_ascii_case(name_or_id)
            })
            .collect();
        let row = match matching.len() {
            0 => {
                return Err(ArmError::ResourceNotFound {
                    kind: "Microsoft.Compute/virtualMachines",
                    name: name_or_id.to_string(),
                    rg: "*".into(),
                });
            }
            1 => matching
                .into_iter()
                .next()
                .ok_or_else(|| ArmError::Internal("vanished".into()))?,
            _ => {
                return Err(ArmError::InvalidParameter(format!(
                    "More than one VM is named '{name_or_id}'; use its full resource id."
                )));
            }
        };
        Ok(row)
    }

    /// A VM's view by name or id (simulator APIs).
    pub(crate) async fn find_vm_view(&self, name_or_id: &str) -> Result<VmView, ArmError> {
        Self::vm_view(self.find_vm(name_or_id).await?)
    }

    /// `{scope}/providers/Microsoft.ManagedIdentity/identities/default`: the system-assigned
    /// identity of a resource.
    pub async fn system_identity(
        &self,
        caller: &Caller,
        scope: &str,
    ) -> Result<(String, crate::store::IdentityRow), ArmError> {
        self.authorize(caller, "Microsoft.ManagedIdentity/identities/read", scope)
            .await?;
        let identity = self
            .inner
            .store
            .identities_of(&scope_key(scope))
            .await?
            .into_iter()
            .find(|i| !i.user_assigned);
        let row = self.resource_row(&scope_key(scope)).await?;
        match (row, identity) {
            (Some(row), Some(identity)) => Ok((row.location, identity)),
            _ => Err(ArmError::SystemIdentityNotFound(scope.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags_follow_the_rfc_grammar() {
        let listed = |tags: &[(bool, &str)]| {
            EntityTags::Listed(tags.iter().map(|(w, t)| (*w, t.to_string())).collect())
        };
        assert_eq!(entity_tags("If-Match", " * ").ok(), Some(EntityTags::Any));
        assert_eq!(
            entity_tags("If-Match", "\"1\"").ok(),
            Some(listed(&[(false, "1")]))
        );
        assert_eq!(
            entity_tags("If-Match", " \"1\" ,, W/\"x-2\",\"\" ").ok(),
            Some(listed(&[(false, "1"), (true, "x-2"), (false, "")]))
        );
        for bad in [
            "",
            " ",
            ",",
            "1",
            "*, \"1\"",
            "\"1\" \"2\"",
            "\"1",
            "W/1",
            "w/\"1\"",
            "\"ä\"",
            "\"a b\"",
            "\"1\"x",
        ] {
            assert!(
                matches!(
                    entity_tags("If-Match", bad),
                    Err(ArmError::InvalidParameter(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn conditions_hold_only_as_compute_documents() {
        let when = |if_match: Option<&str>, if_none_match: Option<&str>, current| {
            WriteConditions {
                if_match: if_match.map(str::to_string),
                if_none_match: if_none_match.map(str::to_string),
            }
            .check(current)
        };
        let failed = |r: Result<(), ArmError>| matches!(r, Err(ArmError::PreconditionFailed(_)));
        assert!(when(None, None, None).is_ok() && when(None, None, Some(3)).is_ok());
        assert!(when(Some("*"), None, Some(3)).is_ok());
        assert!(failed(when(Some("*"), None, None)));
        assert!(when(Some("\"2\", \"3\""), None, Some(3)).is_ok());
        assert!(failed(when(Some("\"2\""), None, Some(3))));
        assert!(failed(when(Some("W/\"3\""), None, Some(3))));
        assert!(when(None, Some("*"), None).is_ok());
        assert!(failed(when(None, Some("*"), Some(1))));
        // Malformed headers are refused before any precondition is judged.
        assert!(matches!(
            when(Some("3"), Some("*"), Some(3)),
            Err(ArmError::InvalidParameter(_))
        ));
        assert!(matches!(
            when(None, Some("\"3\""), None),
            Err(ArmError::InvalidParameter(_))
        ));
        let Err(ArmError::PreconditionFailed(message)) = when(Some(" \"2\" "), None, Some(3))
        else {
            panic!("a stale etag holds");
        };
        assert_eq!(
            message,
            "Etag provided in if-match header \"2\" does not match etag \"3\" of resource."
        );
    }

    #[test]
    fn the_host_is_sent_only_what_the_instance_document_shows() {
        let properties = serde_json::json!({
            "hardwareProfile": {"vmSize": "Standard_B1s"},
            "osProfile": {"computerName": "web", "adminUsername": "u", "windowsConfiguration": {"x": 1}, "secrets": [1], "linuxConfiguration": {"ssh": {"publicKeys": []}}},
            "storageProfile": {"osDisk": {"osType": "Linux"}},
            "diagnosticsProfile": {"blob": "x"},
            "userData": "aGk=",
        });
        let shown = instance_properties(properties.as_object().expect("object"));
        assert_eq!(
            Value::Object(shown),
            serde_json::json!({
                "osProfile": {"computerName": "web", "adminUsername": "u", "linuxConfiguration": {"ssh": {"publicKeys": []}}},
                "storageProfile": {"osDisk": {"osType": "Linux"}},
                "userData": "aGk=",
            })
        );
    }

    #[test]
    fn the_os_type_is_declared_or_read_from_the_os_profile() {
        let os = |properties: Value| os_type(properties.as_object().expect("object"));
        assert_eq!(os(serde_json::json!({})), "Linux");
        assert_eq!(
            os(serde_json::json!({"storageProfile": {"osDisk": {"osType": "windows"}}})),
            "Windows"
        );
        assert_eq!(
            os(serde_json::json!({"osProfile": {"windowsConfiguration": {}}})),
            "Windows"
        );
        // A declared OS wins over a configuration block.
        assert_eq!(
            os(
                serde_json::json!({"storageProfile": {"osDisk": {"osType": "Linux"}}, "osProfile": {"windowsConfiguration": {}}})
            ),
            "Linux"
        );
    }
}
