//! Virtual machines and their identities: system-assigned principals follow the VM's life,
//! user-assigned ones are attached by reference with `assign/action`, and ARM and AAD stay in
//! step after every change.

use crate::support::TestSim;
use reqwest::Method;
use serde_json::{Value, json};

const VM_API: &str = "2024-11-01";
const MSI_API: &str = "2024-11-30";

async fn call(
    sim: &TestSim,
    token: &str,
    method: Method,
    path: &str,
    api: &str,
    body: Option<Value>,
) -> (u16, Value) {
    crate::support::arm_call(sim, token, method, path, api, body).await
}

async fn graph_principal(sim: &TestSim, object_id: &str) -> (u16, Value) {
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    sim.graph(
        Method::GET,
        &format!("servicePrincipals/{object_id}"),
        &graph,
        None,
    )
    .await
}

/// Managed-identity principals in AAD are exactly those ARM holds.
async fn assert_in_step(sim: &TestSim) {
    assert_eq!(sim.sim.arm.pending_work().await.expect("outbox"), 0);
    let held: Vec<String> = sim
        .sim
        .arm
        .identity_principals()
        .await
        .expect("principals")
        .into_iter()
        .map(|i| i.principal_id)
        .collect();
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (_, list) = sim
        .graph(
            Method::GET,
            "servicePrincipals?$filter=servicePrincipalType eq 'ManagedIdentity'",
            &graph,
            None,
        )
        .await;
    let mut in_aad: Vec<String> = list["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|sp| sp["id"].as_str().expect("id").to_string())
        .collect();
    let mut held = held;
    held.sort();
    in_aad.sort();
    assert_eq!(held, in_aad);
}

#[tokio::test]
async fn vm_identity_transitions_follow_azure() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    call(
        &sim,
        &admin,
        Method::PUT,
        &format!("{sub}/resourcegroups/rg"),
        "2024-11-01",
        Some(json!({"location": "eastus"})),
    )
    .await;
    let uami = |n: &str| {
        format!(
            "{sub}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}"
        )
    };
    let (_, one) = call(
        &sim,
        &admin,
        Method::PUT,
        &uami("one"),
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let (_, two) = call(
        &sim,
        &admin,
        Method::PUT,
        &uami("two"),
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let vm = format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1");

    let body = json!({
        "location": "eastus",
        "identity": {"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {uami("one"): {}}},
        "properties": {"hardwareProfile": {"vmSize": "Standard_B1s"}, "osProfile": {"computerName": "vm1", "adminUsername": "azureuser", "adminPassword": "S3cret!"}},
    });
    let (status, created) = call(&sim, &admin, Method::PUT, &vm, VM_API, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["identity"]["type"], "SystemAssigned, UserAssigned",
        "Compute's canonical spelling"
    );
    assert_eq!(created["identity"]["tenantId"], sim.tenant());
    assert_eq!(created["properties"]["provisioningState"], "Succeeded");
    assert!(
        created["properties"]["vmId"]
            .as_str()
            .is_some_and(|v| uuid::Uuid::parse_str(v).is_ok())
    );
    assert!(
        created["properties"]["osProfile"]
            .get("adminPassword")
            .is_none(),
        "secrets are never echoed"
    );
    assert_eq!(
        created["identity"]["userAssignedIdentities"][uami("one")]["principalId"],
        one["properties"]["principalId"]
    );
    let system = created["identity"]["principalId"]
        .as_str()
        .expect("principalId")
        .to_string();
    let (status, sp) = graph_principal(&sim, &system).await;
    assert_eq!(status, 200);
    assert_eq!(sp["alternativeNames"][0], "isExplicit=False");
    assert_eq!(
        sp["alternativeNames"][1],
        format!(
            "{}/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
            sub
        )
    );
    assert_in_step(&sim).await;

    // identities/default shows the system identity.
    let (status, default) = call(
        &sim,
        &admin,
        Method::GET,
        &format!("{vm}/providers/Microsoft.ManagedIdentity/identities/default"),
        "2023-01-31",
        None,
    )
    .await;
    assert_eq!(status, 200, "{default}");
    assert_eq!(default["properties"]["principalId"], system.as_str());
    // A resource that does not exist has no system identity to show: 404, as SDKs expect.
    let (status, missing) = call(
        &sim,
        &admin,
        Method::GET,
        &format!("{vm}-nope/providers/Microsoft.ManagedIdentity/identities/default"),
        "2023-01-31",
        None,
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "ResourceNotFound", "{missing}");

    // PATCH merges properties at every depth: one field of osProfile keeps the others.
    let (status, renamed) = call(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"properties": {"osProfile": {"computerName": "vm1-renamed"}}})),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(
        renamed["properties"]["osProfile"],
        json!({"computerName": "vm1-renamed", "adminUsername": "azureuser"}),
        "{renamed}"
    );
    assert_eq!(
        renamed["properties"]["hardwareProfile"]["vmSize"],
        "Standard_B1s"
    );

    // PATCH merges a new identity; null removes one (case-insensitively); the system one stays.
    let (status, patched) = call(&sim, &admin, Method::PATCH, &vm, VM_API, Some(json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uami("two"): {}}}}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        patched["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.len()),
        Some(2)
    );
    let (_, patched) = call(&sim, &admin, Method::PATCH, &vm, VM_API, Some(json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uami("one").to_lowercase(): null}}}))).await;
    let keys: Vec<&String> = patched["identity"]["userAssignedIdentities"]
        .as_object()
        .expect("map")
        .keys()
        .collect();
    assert_eq!(keys, vec![&uami("two")]);
    assert_eq!(patched["identity"]["principalId"], system.as_str());
    assert_eq!(
        patched["properties"]["hardwareProfile"]["vmSize"], "Standard_B1s",
        "PATCH keeps what it does not name"
    );

    // An assignment on the system principal survives as an orphan when the identity goes.
    let orphan = format!(
        "{sub}/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let reader = format!(
        "{sub}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
    );
    assert_eq!(
        call(
            &sim,
            &admin,
            Method::PUT,
            &orphan,
            "2022-04-01",
            Some(json!({"properties": {"roleDefinitionId": reader, "principalId": system}}))
        )
        .await
        .0,
        201
    );

    // UserAssigned only: the system principal is deleted; re-enabling makes a new one.
    let (_, user_only) = call(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"identity": {"type": "UserAssigned"}})),
    )
    .await;
    assert_eq!(user_only["identity"]["type"], "UserAssigned");
    assert!(user_only["identity"].get("principalId").is_none());
    assert_eq!(graph_principal(&sim, &system).await.0, 404);
    assert_in_step(&sim).await;
    let (_, again) = call(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"identity": {"type": "SystemAssigned, UserAssigned"}})),
    )
    .await;
    let new_system = again["identity"]["principalId"]
        .as_str()
        .expect("new principal")
        .to_string();
    assert_ne!(new_system, system, "re-enabling creates a new principal");
    assert_eq!(
        call(&sim, &admin, Method::GET, &orphan, "2022-04-01", None)
            .await
            .0,
        200,
        "role assignments of deleted principals stay"
    );

    // Errors: unknown identity, identities with SystemAssigned, bad type.
    let ghost = uami("ghost");
    let (status, body) = call(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {ghost: {}}}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("FailedIdentityOperation")),
        "{body}"
    );
    let (status, body) = call(&sim, &admin, Method::PATCH, &vm, VM_API, Some(json!({"identity": {"type": "SystemAssigned", "userAssignedIdentities": {uami("one"): {}}}}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    let (status, _) = call(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"identity": {"type": "Everything"}})),
    )
    .await;
    assert_eq!(status, 400);
    let (_, unchanged) = call(&sim, &admin, Method::GET, &vm, VM_API, None).await;
    assert_eq!(
        unchanged["identity"]["principalId"],
        new_system.as_str(),
        "failed requests change nothing"
    );

    // Deleting a user-assigned identity leaves the stale reference on the VM, as Azure does.
    assert_eq!(
        call(&sim, &admin, Method::DELETE, &uami("two"), MSI_API, None)
            .await
            .0,
        200
    );
    let (_, stale) = call(&sim, &admin, Method::GET, &vm, VM_API, None).await;
    assert!(
        stale["identity"]["userAssignedIdentities"]
            .get(uami("two"))
            .is_some()
    );
    assert_eq!(
        two["properties"]["principalId"],
        stale["identity"]["userAssignedIdentities"][uami("two")]["principalId"]
    );
    // Any write that keeps the stale reference fails until the client removes it (spec/arm.md
    // §4.5), and changes nothing.
    let tag = |value: &str| json!({"tags": {"step": value}});
    let (status, refused) = call(&sim, &admin, Method::PATCH, &vm, VM_API, Some(tag("a"))).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "FailedIdentityOperation");
    let (_, still) = call(&sim, &admin, Method::GET, &vm, VM_API, None).await;
    assert!(still["tags"].get("step").is_none(), "{still}");
    // Recreated under the same name it is a new identity: the next write attaches it anew, with
    // its own ids, on the VM and on its host.
    let (status, two_again) = call(
        &sim,
        &admin,
        Method::PUT,
        &uami("two"),
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert_eq!(status, 201, "{two_again}");
    assert_ne!(
        two_again["properties"]["principalId"],
        two["properties"]["principalId"]
    );
    let (status, rebound) = call(&sim, &admin, Method::PATCH, &vm, VM_API, Some(tag("b"))).await;
    assert_eq!(status, 200, "{rebound}");
    assert_eq!(
        rebound["identity"]["userAssignedIdentities"][uami("two")],
        json!({"principalId": two_again["properties"]["principalId"], "clientId": two_again["properties"]["clientId"]}),
        "{rebound}"
    );
    assert_in_step(&sim).await;
    // Deleted again and removed from the VM, the VM is writable again.
    assert_eq!(
        call(&sim, &admin, Method::DELETE, &uami("two"), MSI_API, None)
            .await
            .0,
        200
    );
    let (status, removed) = call(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        VM_API,
        // It is the VM's last user-assigned identity: dropping the type removes it.
        Some(json!({"identity": {"type": "SystemAssigned"}})),
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    assert!(
        removed["identity"]["userAssignedIdentities"]
            .get(uami("two"))
            .is_none(),
        "{removed}"
    );

    // Deleting the VM removes its system principal.
    assert_eq!(
        call(&sim, &admin, Method::DELETE, &vm, VM_API, None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&sim, &admin, Method::DELETE, &vm, VM_API, None)
            .await
            .0,
        204
    );
    assert_eq!(graph_principal(&sim, &new_system).await.0, 404);
    assert_in_step(&sim).await;
    sim.stop().await;
}

#[tokio::test]
async fn attaching_an_identity_needs_assign_action_on_it() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    call(
        &sim,
        &admin,
        Method::PUT,
        &format!("{sub}/resourcegroups/rg"),
        "2024-11-01",
        Some(json!({"location": "eastus"})),
    )
    .await;
    let uami = format!(
        "{sub}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/shared-mi"
    );
    call(
        &sim,
        &admin,
        Method::PUT,
        &uami,
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;

    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (app_id, arm_token) = crate::support::roleless_app(&sim, "operator").await;
    let operator = arm_token.clone();
    let (_, sp) = sim
        .graph(
            Method::GET,
            &format!("servicePrincipals(appId='{app_id}')"),
            &graph,
            None,
        )
        .await;
    let oid = sp["id"].as_str().expect("oid");
    let assign = |role: &str, scope: &str| {
        let path = format!(
            "{scope}/providers/Microsoft.Authorization/roleAssignments/{}",
            uuid::Uuid::new_v4()
        );
        let body = json!({"properties": {"roleDefinitionId": format!("{sub}/providers/Microsoft.Authorization/roleDefinitions/{role}"), "principalId": oid, "principalType": "ServicePrincipal"}});
        (path, body)
    };
    // Virtual Machine Contributor on the group: may write VMs, may not attach identities.
    let (path, body) = assign(
        "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
        &format!("{sub}/resourceGroups/rg"),
    );
    assert_eq!(
        call(&sim, &admin, Method::PUT, &path, "2022-04-01", Some(body))
            .await
            .0,
        201
    );
    let vm = format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app-vm");
    assert_eq!(
        call(
            &sim,
            &operator,
            Method::PUT,
            &vm,
            VM_API,
            Some(json!({"location": "eastus", "identity": {"type": "SystemAssigned"}}))
        )
        .await
        .0,
        201
    );
    let attach = json!({"identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uami.clone(): {}}}});
    let (status, body) = call(
        &sim,
        &operator,
        Method::PATCH,
        &vm,
        VM_API,
        Some(attach.clone()),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("LinkedAuthorizationFailed")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&uami) && m.contains("assign/action"))
    );

    // Managed Identity Operator on the identity grants the assign action.
    let (path, body) = assign("f1a07417-d97a-45cb-824c-7a7467783830", &uami);
    assert_eq!(
        call(&sim, &admin, Method::PUT, &path, "2022-04-01", Some(body))
            .await
            .0,
        201
    );
    let (status, attached) = call(&sim, &operator, Method::PATCH, &vm, VM_API, Some(attach)).await;
    assert_eq!(status, 200, "{attached}");
    // Deleted and recreated under the same name, the identity is a new one: the VM's next write
    // attaches it anew, which needs assign/action on it again (the grant went with the old one,
    // an extension of the deleted resource).
    assert_eq!(
        call(&sim, &admin, Method::DELETE, &uami, MSI_API, None)
            .await
            .0,
        200
    );
    let (status, _) = call(
        &sim,
        &admin,
        Method::PUT,
        &uami,
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = call(
        &sim,
        &operator,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"tags": {"touched": "yes"}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("LinkedAuthorizationFailed")),
        "{body}"
    );
    // Removing needs only VM write.
    let (status, _) = call(
        &sim,
        &operator,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"identity": {"type": "SystemAssigned"}})),
    )
    .await;
    assert_eq!(status, 200);
    sim.stop().await;
}

#[tokio::test]
async fn the_reconcile_pass_removes_what_arm_does_not_hold() {
    let sim = TestSim::start().await;
    let secret = sim.internal_secret();
    // A principal in AAD and a VM on the host that ARM never made (a peer kept stale state).
    let orphan = uuid::Uuid::new_v4().to_string();
    let url = format!(
        "{}/_internal/directory/managed-identities/{orphan}",
        sim.aad()
    );
    let principal = json!({"appId": uuid::Uuid::new_v4().to_string(), "displayName": "ghost", "resourceId": "/subscriptions/x/resourcegroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ghost", "userAssigned": true});
    let response = sim
        .http
        .put(&url)
        .header(misim_core::internal::INTERNAL_SECRET_HEADER, &secret)
        .json(&principal)
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 201);
    let ghost_vm = uuid::Uuid::new_v4().to_string();
    let hosted = misim_core::internal::HostedVm {
        resource_id:
            "/subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/virtualMachines/ghost"
                .into(),
        name: "ghost".into(),
        resource_group: "y".into(),
        subscription_id: "x".into(),
        location: "eastus".into(),
        vm_size: "Standard_B1s".into(),
        tags: Default::default(),
        preferred_port: 0,
        os_type: "Linux".into(),
        properties: Default::default(),
    };
    sim.sim
        .imds
        .put_vm(&ghost_vm, &hosted)
        .await
        .expect("host a ghost VM");
    assert!(sim.sim.imds.vm_endpoint(&ghost_vm).is_some());

    sim.sim.arm.prune().await.expect("prune");
    assert_eq!(
        graph_principal(&sim, &orphan).await.0,
        404,
        "the stray principal is gone"
    );
    assert!(
        sim.sim.imds.vm_endpoint(&ghost_vm).is_none(),
        "the stray VM is no longer hosted"
    );
    // What ARM holds stays: the demo VM still gets tokens.
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    let response = sim.http.get(format!("{endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/")).header("Metadata", "true").send().await.expect("token");
    assert_eq!(response.status(), 200);
    assert_in_step(&sim).await;
    sim.stop().await;
}

/// A simulator, the admin's ARM token, the subscription's path and a resource group in it.
async fn sim_with_group(group: &str) -> (TestSim, String, String) {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    let (status, _) = call(
        &sim,
        &admin,
        Method::PUT,
        &format!("{sub}/resourcegroups/{group}"),
        "2024-11-01",
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert_eq!(status, 201);
    (sim, admin, sub)
}

#[tokio::test]
async fn a_large_vm_body_does_not_stall_provisioning() {
    let (sim, admin, sub) = sim_with_group("big").await;
    // 600 KiB of properties IMDS does not show (ARM takes bodies up to 1 MiB): the host is
    // sent what the instance document shows, so delivery succeeds and nothing queues behind it.
    let vm = format!("{sub}/resourceGroups/big/providers/Microsoft.Compute/virtualMachines/big-vm");
    let body = json!({
        "location": "eastus",
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_B1s"},
            "osProfile": {"computerName": "big", "windowsConfiguration": {"blob": "w".repeat(1000)}},
            "diagnosticsProfile": {"blob": "x".repeat(600 * 1024)},
        },
    });
    let (status, created) = call(&sim, &admin, Method::PUT, &vm, VM_API, Some(body)).await;
    assert_eq!(
        status,
        201,
        "{}",
        &created.to_string()[..300.min(created.to_string().len())]
    );
    assert_eq!(created["properties"]["provisioningState"], "Succeeded");
    assert_eq!(sim.sim.arm.pending_work().await.expect("outbox"), 0);
    let endpoint = sim
        .sim
        .imds
        .vm_endpoint(created["properties"]["vmId"].as_str().expect("vmId"))
        .expect("the VM's IMDS endpoint");
    let computer = sim
        .http
        .get(format!(
            "{endpoint}/metadata/instance/compute/osProfile/computerName?api-version=2021-02-01&format=text"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("imds")
        .text()
        .await
        .expect("text");
    assert_eq!(computer, "big");
    // PATCHes merge, so properties could grow past a request's size: they are kept to 1 MiB,
    // and a PATCH beyond changes nothing.
    let (status, refused) = call(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        VM_API,
        Some(json!({"properties": {"userData": "y".repeat(600 * 1024)}})),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("InvalidParameter")),
        "{refused}"
    );
    let (_, unchanged) = call(&sim, &admin, Method::GET, &vm, VM_API, None).await;
    assert!(unchanged["properties"].get("userData").is_none());
    sim.stop().await;
}

/// A VM write with conditional headers, as azure-mgmt-compute sends `if_match` /
/// `if_none_match`; values go on the wire as given, non-ASCII bytes included.
async fn conditional(
    sim: &TestSim,
    token: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let mut request = sim
        .http
        .request(
            method,
            format!("{}{path}?api-version={VM_API}", sim.sim.connection.arm),
        )
        .bearer_auth(token);
    for (name, value) in headers {
        let value =
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()).expect("header value");
        request = request.header(*name, value);
    }
    crate::support::send_json(request, Some(body)).await
}

#[tokio::test]
async fn vm_etags_move_with_changes_and_guard_writes() {
    let (sim, admin, sub) = sim_with_group("etags").await;
    let vm = format!("{sub}/resourceGroups/etags/providers/Microsoft.Compute/virtualMachines/e1");
    let body = |size: &str| json!({"location": "eastus", "properties": {"hardwareProfile": {"vmSize": size}}});
    let code = |answer: &Value| answer["error"]["code"].as_str().map(str::to_string);
    let precondition_failed = Some("PreconditionFailed".to_string());
    // The admin's PATCH of e1 with one conditional header (none when the name is empty).
    let patch = |header: (&'static str, &'static str), body: Value| {
        let (sim, admin, vm) = (&sim, &admin, &vm);
        async move {
            let headers: &[(&str, &str)] = if header.0.is_empty() { &[] } else { &[header] };
            conditional(sim, admin, Method::PATCH, vm, headers, body).await
        }
    };

    // If-None-Match: * creates, and the VM starts at "1"; it never replaces.
    let create_only = [("If-None-Match", "*")];
    let (status, created) = conditional(
        &sim,
        &admin,
        Method::PUT,
        &vm,
        &create_only,
        body("Standard_B1s"),
    )
    .await;
    assert_eq!(
        (status, &created["etag"]),
        (201, &json!("\"1\"")),
        "{created}"
    );
    let (status, refused) = conditional(
        &sim,
        &admin,
        Method::PUT,
        &vm,
        &create_only,
        body("Standard_B2s"),
    )
    .await;
    assert_eq!((status, code(&refused)), (412, precondition_failed.clone()));

    // The etag held matches: the write goes ahead and the etag moves.
    let (status, replaced) = conditional(
        &sim,
        &admin,
        Method::PUT,
        &vm,
        &[("If-Match", "\"1\"")],
        body("Standard_B2s"),
    )
    .await;
    assert_eq!(
        (status, &replaced["etag"]),
        (200, &json!("\"2\"")),
        "{replaced}"
    );

    // A stale etag: 412 in Compute's words, and nothing changes.
    let (status, stale) = patch(
        ("If-Match", "\"1\""),
        json!({"properties": {"hardwareProfile": {"vmSize": "Standard_D2s_v3"}}}),
    )
    .await;
    assert_eq!((status, code(&stale)), (412, precondition_failed.clone()));
    assert_eq!(
        stale["error"]["message"],
        "Etag provided in if-match header \"1\" does not match etag \"2\" of resource."
    );
    let (_, current) = call(&sim, &admin, Method::GET, &vm, VM_API, None).await;
    assert_eq!(current["etag"], "\"2\"");
    assert_eq!(
        current["properties"]["hardwareProfile"]["vmSize"],
        "Standard_B2s"
    );

    // If-Match compares strongly: a weak tag never matches.
    let (status, weak) = patch(("If-Match", "W/\"2\""), json!({"tags": {"weak": "1"}})).await;
    assert_eq!((status, code(&weak)), (412, precondition_failed.clone()));
    // One of a list matches (empty elements skipped); a change of tags moves the etag; `*`
    // matches any existing VM; a write that changes nothing keeps the etag.
    for (sent, tag, after) in [
        ("\"7\", ,\"2\"", "3", "\"3\""),
        ("\"3\"", "4", "\"4\""),
        ("*", "4", "\"4\""),
    ] {
        let (status, patched) = patch(("If-Match", sent), json!({"tags": {"after": tag}})).await;
        assert_eq!(
            (status, &patched["etag"]),
            (200, &json!(after)),
            "{sent}: {patched}"
        );
    }
    // The same write through a differently cased name shows the new casing, so it moves it.
    let (status, recased) = conditional(
        &sim,
        &admin,
        Method::PATCH,
        &vm.replace("/e1", "/E1"),
        &[("If-Match", "\"4\"")],
        json!({"tags": {"after": "4"}}),
    )
    .await;
    assert_eq!(
        (status, &recased["etag"]),
        (200, &json!("\"5\"")),
        "{recased}"
    );
    assert_eq!(recased["name"], "E1");
    let (status, back) = patch(("", ""), json!({"tags": {"after": "4"}})).await;
    assert_eq!((status, &back["etag"]), (200, &json!("\"6\"")), "{back}");

    // A refused write with an identity to enable mints nothing: no principal, no work queued.
    let (status, _) = patch(
        ("If-Match", "\"5\""),
        json!({"identity": {"type": "SystemAssigned"}}),
    )
    .await;
    assert_eq!(status, 412);
    assert_eq!(sim.sim.arm.pending_work().await.expect("outbox"), 0);
    let (_, unchanged) = call(&sim, &admin, Method::GET, &vm, VM_API, None).await;
    assert!(unchanged.get("identity").is_none(), "{unchanged}");
    assert_eq!(unchanged["etag"], "\"6\"");

    // Two writers holding the same etag: exactly one wins.
    let (first, second) = tokio::join!(
        patch(("If-Match", "\"6\""), json!({"tags": {"winner": "a"}})),
        patch(("If-Match", "\"6\""), json!({"tags": {"winner": "b"}})),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{first:?} {second:?}");

    // A caller without write rights learns nothing from the headers: 403, malformed or not.
    let (_, reader) = crate::support::roleless_app(&sim, "etag-reader").await;
    for value in ["\"7\"", "not-an-etag"] {
        let (status, denied) = conditional(
            &sim,
            &reader,
            Method::PATCH,
            &vm,
            &[("If-Match", value)],
            json!({"tags": {}}),
        )
        .await;
        assert_eq!(
            (status, code(&denied)),
            (403, Some("AuthorizationFailed".to_string())),
            "{value}: {denied}"
        );
    }

    // If-Match on a VM that does not exist creates nothing.
    let ghost = vm.replace("/e1", "/e2");
    let (status, absent) = conditional(
        &sim,
        &admin,
        Method::PUT,
        &ghost,
        &[("If-Match", "*")],
        body("Standard_B1s"),
    )
    .await;
    assert_eq!((status, code(&absent)), (412, precondition_failed));
    let (status, _) = call(&sim, &admin, Method::GET, &ghost, VM_API, None).await;
    assert_eq!(status, 404);

    // Bad headers: the documented values only, in ARM's envelope, and nothing changes.
    for header in [
        ("If-None-Match", "\"4\""),
        ("If-Match", " "),
        ("If-Match", "ä"),
        ("If-Match", "7"),
        ("If-Match", "*, \"7\""),
        ("If-Match", "\"7\" junk"),
        ("If-Match", "\"7"),
    ] {
        let (status, bad) = patch(header, json!({"tags": {}})).await;
        assert_eq!(
            (status, code(&bad)),
            (400, Some("InvalidParameter".to_string())),
            "{header:?}: {bad}"
        );
    }

    // The etag is stored with the VM: it survives a restart, and the next write moves it on.
    let dir = sim.stop().await;
    let sim = TestSim::start_in(dir, |_| {}).await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (_, restarted) = call(&sim, &admin, Method::GET, &vm, VM_API, None).await;
    assert_eq!(restarted["etag"], "\"7\"");
    let (status, next) = conditional(
        &sim,
        &admin,
        Method::PATCH,
        &vm,
        &[("If-Match", "\"7\"")],
        json!({"tags": {}}),
    )
    .await;
    assert_eq!((status, &next["etag"]), (200, &json!("\"8\"")), "{next}");
    sim.stop().await;
}
