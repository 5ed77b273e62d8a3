//! `misim seed FILE`: declare resource groups, user-assigned identities, VMs (with the address
//! IMDS knows them by) and role assignments, applied through ARM's own REST API as the bootstrap
//! admin. Applying a seed twice changes nothing (every write is an idempotent PUT).

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::connection::Connection;

const GROUP_API: &str = "2021-04-01";
const IDENTITY_API: &str = "2023-01-31";
const VM_API: &str = "2024-07-01";
const RBAC_API: &str = "2022-04-01";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    /// Default location of everything below.
    #[serde(default = "default_location")]
    pub location: String,
    #[serde(default)]
    pub resource_groups: Vec<GroupSeed>,
    #[serde(default)]
    pub identities: Vec<IdentitySeed>,
    #[serde(default)]
    pub vms: Vec<VmSeed>,
    #[serde(default)]
    pub role_assignments: Vec<AssignmentSeed>,
}

fn default_location() -> String {
    "eastus".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSeed {
    pub name: String,
    pub location: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySeed {
    pub resource_group: String,
    pub name: String,
    pub location: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSeed {
    pub resource_group: String,
    pub name: String,
    pub location: Option<String>,
    /// Source address(es) IMDS maps to this VM (the `misim-ip` tag), e.g. its container's IP.
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub system_assigned: bool,
    /// Names of identities of this seed, or full resource ids.
    #[serde(default)]
    pub user_assigned: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentSeed {
    /// `vm:NAME` (its system-assigned identity), `identity:NAME` (a user-assigned one) or an
    /// object id.
    pub principal: String,
    /// A built-in role name (`Reader`) or a role definition GUID.
    pub role: String,
    /// `/` (the subscription), `/resourceGroups/NAME[/providers/...]`, or a full resource id.
    pub scope: String,
}

impl SeedFile {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let seed: Self = serde_json::from_str(text).context("the seed file is not valid")?;
        seed.check()?;
        Ok(seed)
    }

    /// References that cannot resolve fail before anything is written.
    fn check(&self) -> anyhow::Result<()> {
        for vm in &self.vms {
            for reference in &vm.user_assigned {
                if !reference.starts_with('/') && self.identity(reference).is_none() {
                    anyhow::bail!(
                        "VM {}: user-assigned identity '{reference}' is neither in `identities` nor a resource id",
                        vm.name
                    );
                }
            }
            if let Some(ip) = &vm.ip {
                for address in ip.split(',') {
                    address.trim().parse::<std::net::IpAddr>().map_err(|_| {
                        anyhow::anyhow!("VM {}: '{address}' is not an IP address", vm.name)
                    })?;
                }
            }
        }
        for assignment in &self.role_assignments {
            match assignment.principal.split_once(':') {
                Some(("vm", name)) if self.vm(name).is_some() => {}
                Some(("identity", name)) if self.identity(name).is_some() => {}
                Some((kind, name)) => anyhow::bail!(
                    "role assignment: principal '{kind}:{name}' names no {kind} of this seed"
                ),
                None if uuid::Uuid::parse_str(&assignment.principal).is_ok() => {}
                None => anyhow::bail!(
                    "role assignment: principal '{}' must be vm:NAME, identity:NAME or an object id",
                    assignment.principal
                ),
            }
            if !assignment.scope.starts_with('/') {
                anyhow::bail!(
                    "role assignment: scope '{}' must start with '/'",
                    assignment.scope
                );
            }
        }
        Ok(())
    }

    fn identity(&self, name: &str) -> Option<&IdentitySeed> {
        self.identities
            .iter()
            .find(|i| i.name.eq_ignore_ascii_case(name))
    }

    fn vm(&self, name: &str) -> Option<&VmSeed> {
        self.vms.iter().find(|v| v.name.eq_ignore_ascii_case(name))
    }
}

/// What a seed created: principal ids by `vm:NAME` / `identity:NAME`, and resource ids.
#[derive(Debug, Default, serde::Serialize)]
pub struct Applied {
    pub principals: BTreeMap<String, String>,
    pub resources: BTreeMap<String, String>,
}

struct ArmClient {
    http: reqwest::Client,
    base: String,
    token: String,
    subscription: String,
}

impl ArmClient {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach ARM at {url}"))?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, answer) = self.send(reqwest::Method::PUT, path, Some(body)).await?;
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(arm_failure("PUT", path, status, &answer))
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, answer) = self.send(reqwest::Method::GET, path, None).await?;
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(arm_failure("GET", path, status, &answer))
        }
    }

    fn sub(&self) -> String {
        format!("/subscriptions/{}", self.subscription)
    }
}

fn arm_failure(method: &str, path: &str, status: u16, body: &Value) -> anyhow::Error {
    anyhow::anyhow!(
        "{method} {path} answered {status}: {} {}",
        body["error"]["code"].as_str().unwrap_or(""),
        body["error"]["message"].as_str().unwrap_or("")
    )
}

/// Applies `seed`; waits up to `wait` for every VM to finish provisioning.
pub async fn apply(
    connection: &Connection,
    seed: &SeedFile,
    wait: Duration,
) -> anyhow::Result<Applied> {
    let ca = std::fs::read_to_string(&connection.ca_cert)
        .with_context(|| format!("cannot read {}", connection.ca_cert.display()))?;
    let arm = ArmClient {
        http: misim_core::tls::http_client(&ca, Duration::from_secs(30))?,
        base: connection.arm.clone(),
        token: crate::vm_env::admin_token(connection, "https://management.azure.com/").await?,
        subscription: connection.subscription_id.clone(),
    };
    let mut applied = Applied::default();
    let sub = arm.sub();
    for group in &seed.resource_groups {
        let location = group.location.as_ref().unwrap_or(&seed.location);
        let path = format!(
            "{sub}/resourcegroups/{}?api-version={GROUP_API}",
            group.name
        );
        let body = arm
            .put(&path, &json!({"location": location, "tags": group.tags}))
            .await?;
        applied
            .resources
            .insert(format!("group:{}", group.name), id_of(&body));
    }
    for identity in &seed.identities {
        let location = identity.location.as_ref().unwrap_or(&seed.location);
        let path = format!(
            "{sub}/resourceGroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}?api-version={IDENTITY_API}",
            identity.resource_group, identity.name
        );
        let body = arm.put(&path, &json!({"location": location})).await?;
        let key = format!("identity:{}", identity.name);
        applied.resources.insert(key.clone(), id_of(&body));
        if let Some(principal) = body["properties"]["principalId"].as_str() {
            applied.principals.insert(key, principal.to_string());
        }
    }
    for vm in &seed.vms {
        let id = put_vm(&arm, seed, vm, &applied).await?;
        applied.resources.insert(format!("vm:{}", vm.name), id);
    }
    for vm in &seed.vms {
        let path = format!(
            "{}?api-version={VM_API}",
            applied.resources[&format!("vm:{}", vm.name)]
        );
        let body = wait_provisioned(&arm, &path, wait).await?;
        if let Some(principal) = body["identity"]["principalId"].as_str() {
            applied
                .principals
                .insert(format!("vm:{}", vm.name), principal.to_string());
        }
    }
    for assignment in &seed.role_assignments {
        assign(&arm, assignment, &applied).await?;
    }
    Ok(applied)
}

fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap_or_default().to_string()
}

async fn put_vm(
    arm: &ArmClient,
    seed: &SeedFile,
    vm: &VmSeed,
    applied: &Applied,
) -> anyhow::Result<String> {
    let location = vm.location.as_ref().unwrap_or(&seed.location);
    let mut tags: serde_json::Map<String, Value> =
        vm.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    if let Some(ip) = &vm.ip {
        tags.insert(misim_imds::SOURCE_IP_TAG.into(), json!(ip));
    }
    let user_assigned: serde_json::Map<String, Value> = vm
        .user_assigned
        .iter()
        .map(|reference| {
            let id = if reference.starts_with('/') {
                reference.clone()
            } else {
                applied.resources[&format!(
                    "identity:{}",
                    seed.identity(reference)
                        .map_or(reference.as_str(), |i| i.name.as_str())
                )]
                    .clone()
            };
            (id, json!({}))
        })
        .collect();
    let kind = match (vm.system_assigned, !user_assigned.is_empty()) {
        (true, true) => "SystemAssigned, UserAssigned",
        (true, false) => "SystemAssigned",
        (false, true) => "UserAssigned",
        (false, false) => "None",
    };
    let mut identity = json!({"type": kind});
    if !user_assigned.is_empty() {
        identity["userAssignedIdentities"] = Value::Object(user_assigned);
    }
    let body = json!({
        "location": location,
        "tags": tags,
        "identity": identity,
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_B1s"},
            "osProfile": {"computerName": vm.name, "adminUsername": "azureuser"},
        },
    });
    let path = format!(
        "{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}?api-version={VM_API}",
        arm.sub(),
        vm.resource_group,
        vm.name
    );
    Ok(id_of(&arm.put(&path, &body).await?))
}

/// Polls the VM until its identities reached AAD and its host (`provisioningState`).
async fn wait_provisioned(arm: &ArmClient, path: &str, wait: Duration) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let body = arm.get(path).await?;
        match body["properties"]["provisioningState"].as_str() {
            Some("Succeeded") => return Ok(body),
            Some("Failed") => anyhow::bail!("VM {} failed to provision", id_of(&body)),
            state if tokio::time::Instant::now() >= deadline => anyhow::bail!(
                "VM {} still {} after {} s",
                id_of(&body),
                state.unwrap_or("without a state"),
                wait.as_secs()
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn assign(
    arm: &ArmClient,
    assignment: &AssignmentSeed,
    applied: &Applied,
) -> anyhow::Result<()> {
    let principal = match assignment.principal.split_once(':') {
        Some((kind, name)) => applied
            .principals
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(&format!("{kind}:{name}")))
            .map(|(_, id)| id.clone())
            .with_context(|| {
                format!("{kind} {name} has no principal (is its identity enabled?)")
            })?,
        None => assignment.principal.clone(),
    };
    let scope = if assignment
        .scope
        .to_ascii_lowercase()
        .starts_with("/subscriptions/")
    {
        assignment.scope.trim_end_matches('/').to_string()
    } else {
        format!("{}{}", arm.sub(), assignment.scope.trim_end_matches('/'))
    };
    let role = role_definition(arm, &assignment.role).await?;
    // A name derived from the triple makes a re-applied seed hit the same assignment.
    let name = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!(
            "misim-seed:{principal}|{role}|{}",
            scope.to_ascii_lowercase()
        )
        .as_bytes(),
    );
    let path = format!(
        "{scope}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version={RBAC_API}"
    );
    let body = json!({"properties": {"roleDefinitionId": role, "principalId": principal, "principalType": "ServicePrincipal"}});
    let (status, answer) = arm.send(reqwest::Method::PUT, &path, Some(&body)).await?;
    match status {
        200..=299 => Ok(()),
        409 if answer["error"]["code"] == "RoleAssignmentExists" => Ok(()),
        _ => Err(arm_failure("PUT", &path, status, &answer)),
    }
}

/// The role definition id of a built-in role name or GUID.
async fn role_definition(arm: &ArmClient, role: &str) -> anyhow::Result<String> {
    let sub = arm.sub();
    if uuid::Uuid::parse_str(role).is_ok() {
        return Ok(format!(
            "{sub}/providers/Microsoft.Authorization/roleDefinitions/{role}"
        ));
    }
    let filter = format!("roleName eq '{}'", role.replace('\'', "''"));
    let path = format!(
        "{sub}/providers/Microsoft.Authorization/roleDefinitions?api-version={RBAC_API}&$filter={}",
        percent_encode(&filter)
    );
    let body = arm.get(&path).await?;
    body["value"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no role named '{role}'"))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_references() {
        let seed = SeedFile::parse(
            r#"{"resource_groups":[{"name":"apps"}],
                "identities":[{"resource_group":"apps","name":"shared"}],
                "vms":[{"resource_group":"apps","name":"vm1","ip":"10.0.0.5","system_assigned":true,"user_assigned":["shared"]}],
                "role_assignments":[{"principal":"vm:vm1","role":"Reader","scope":"/resourceGroups/apps"}]}"#,
        )
        .expect("valid seed");
        assert_eq!(seed.location, "eastus");
        assert_eq!(seed.vms[0].user_assigned, vec!["shared".to_string()]);
    }

    #[test]
    fn refuses_what_cannot_resolve() {
        for (text, expected) in [
            (
                r#"{"vms":[{"resource_group":"a","name":"v","user_assigned":["nope"]}]}"#,
                "neither in `identities`",
            ),
            (
                r#"{"vms":[{"resource_group":"a","name":"v","ip":"not-an-ip"}]}"#,
                "not an IP address",
            ),
            (
                r#"{"role_assignments":[{"principal":"vm:ghost","role":"Reader","scope":"/"}]}"#,
                "names no vm",
            ),
            (
                r#"{"role_assignments":[{"principal":"someone","role":"Reader","scope":"/"}]}"#,
                "must be vm:NAME",
            ),
            (
                r#"{"role_assignments":[{"principal":"vm:v","role":"Reader","scope":"resourceGroups/a"}],"vms":[{"resource_group":"a","name":"v"}]}"#,
                "must start with '/'",
            ),
            (r#"{"vm":[]}"#, "unknown field"),
        ] {
            let error = format!("{:#}", SeedFile::parse(text).expect_err(text));
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
