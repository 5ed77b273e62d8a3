//! ARM over HTTPS: authentication, RBAC, resource groups, user-assigned identities and the
//! principals they own in AAD, with invariants checked after each step.

use crate::support::TestSim;
use reqwest::Method;
use serde_json::{Value, json};

const RG_API: &str = "2024-11-01";
const MSI_API: &str = "2024-11-30";
const AUTH_API: &str = "2022-04-01";

/// method, path, api-version, body, expected status, expected error code.
type Case = (
    Method,
    String,
    &'static str,
    Option<Value>,
    u16,
    &'static str,
);

struct Arm<'a> {
    sim: &'a TestSim,
    token: String,
}

impl Arm<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        api: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        crate::support::arm_call(self.sim, &self.token, method, path, api, body).await
    }
}

fn sub_path(sim: &TestSim) -> String {
    format!("/subscriptions/{}", sim.sim.connection.subscription_id)
}

/// Every identity ARM holds has its principal in AAD, and no managed-identity principal in AAD
/// lacks its identity.
pub(crate) async fn assert_directory_matches(sim: &TestSim) {
    assert_eq!(
        sim.sim.arm.pending_work().await.expect("outbox"),
        0,
        "all provisioning delivered"
    );
    let identities = sim.sim.arm.identity_principals().await.expect("identities");
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (_, list) = sim
        .graph(Method::GET, "servicePrincipals?$top=999", &graph, None)
        .await;
    let mi: Vec<&Value> = list["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter(|sp| sp["servicePrincipalType"] == "ManagedIdentity")
        .collect();
    assert_eq!(mi.len(), identities.len(), "one principal per identity");
    for identity in identities {
        let sp = mi
            .iter()
            .find(|sp| sp["id"] == identity.principal_id.as_str())
            .expect("principal exists");
        assert_eq!(sp["appId"], identity.client_id.as_str());
        // Its current certificate, and after a roll the one that roll replaced (kept until
        // the next roll).
        let registered: Vec<&str> = sp["keyCredentials"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["keyId"].as_str())
            .collect();
        assert!(
            registered
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&identity.cert_key_id))
                && registered.len() <= 2,
            "its certificate is registered: {sp}"
        );
    }
}

#[tokio::test]
async fn identity_lifecycle_keeps_arm_and_aad_in_step() {
    let sim = TestSim::start().await;
    let arm = Arm {
        sim: &sim,
        token: sim
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let sub = sub_path(&sim);
    let (status, rg) = arm
        .call(
            Method::PUT,
            &format!("{sub}/resourcegroups/Rg-One"),
            RG_API,
            Some(json!({"location": "West Europe", "tags": {"env": "test"}})),
        )
        .await;
    assert_eq!(status, 201, "{rg}");
    assert_eq!(rg["location"], "westeurope");
    assert_eq!(
        arm.call(
            Method::PUT,
            &format!("{sub}/resourcegroups/rg-one"),
            RG_API,
            Some(json!({"location": "westeurope"}))
        )
        .await
        .0,
        200
    );
    let (status, body) = arm
        .call(
            Method::PUT,
            &format!("{sub}/resourcegroups/rg-one"),
            RG_API,
            Some(json!({"location": "eastus"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("InvalidResourceGroupLocation"))
    );

    let identity_path = format!(
        "{sub}/resourceGroups/rg-one/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-mi"
    );
    let (status, identity) = arm
        .call(
            Method::PUT,
            &identity_path,
            MSI_API,
            Some(json!({"location": "westeurope", "tags": {"team": "a"}})),
        )
        .await;
    assert_eq!(status, 201, "{identity}");
    let principal_id = identity["properties"]["principalId"]
        .as_str()
        .expect("principalId")
        .to_string();
    let client_id = identity["properties"]["clientId"]
        .as_str()
        .expect("clientId")
        .to_string();
    assert_eq!(identity["properties"]["tenantId"], sim.tenant());
    assert_eq!(identity["properties"]["isolationScope"], "None");
    assert!(identity["id"].as_str().is_some_and(|id| {
        id.ends_with("/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app-mi")
    }));
    assert_directory_matches(&sim).await;

    // Repeat PUT: 200, same ids; PATCH replaces tags; list by group and subscription.
    let (status, again) = arm
        .call(
            Method::PUT,
            &identity_path
                .to_uppercase()
                .replace("/SUBSCRIPTIONS/", "/subscriptions/"),
            MSI_API,
            Some(json!({"location": "westeurope"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["properties"]["principalId"], principal_id.as_str());
    let (status, patched) = arm
        .call(
            Method::PATCH,
            &identity_path,
            MSI_API,
            Some(json!({"tags": {"team": "b"}})),
        )
        .await;
    assert_eq!((status, &patched["tags"]), (200, &json!({"team": "b"})));
    let (_, by_group) = arm.call(Method::GET, &format!("{sub}/resourceGroups/rg-one/providers/Microsoft.ManagedIdentity/userAssignedIdentities"), MSI_API, None).await;
    assert_eq!(by_group["value"].as_array().map(Vec::len), Some(1));
    let (_, by_sub) = arm
        .call(
            Method::GET,
            &format!("{sub}/providers/Microsoft.ManagedIdentity/userAssignedIdentities"),
            MSI_API,
            None,
        )
        .await;
    assert_eq!(
        by_sub["value"][0]["properties"]["clientId"],
        client_id.as_str()
    );

    // Delete: the principal goes too; a second delete is 204.
    assert_eq!(
        arm.call(Method::DELETE, &identity_path, MSI_API, None)
            .await
            .0,
        200
    );
    assert_eq!(
        arm.call(Method::DELETE, &identity_path, MSI_API, None)
            .await
            .0,
        204
    );
    let (status, body) = arm.call(Method::GET, &identity_path, MSI_API, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("ResourceNotFound"))
    );
    assert_directory_matches(&sim).await;

    // A re-created identity of the same name gets new ids; deleting the group cascades.
    let (_, recreated) = arm
        .call(
            Method::PUT,
            &identity_path,
            MSI_API,
            Some(json!({"location": "westeurope"})),
        )
        .await;
    assert_ne!(
        recreated["properties"]["principalId"],
        principal_id.as_str()
    );
    let response = sim
        .http
        .delete(format!(
            "{}{sub}/resourcegroups/rg-one?api-version={RG_API}",
            sim.sim.connection.arm
        ))
        .bearer_auth(&arm.token)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["retry-after"], "1");
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        location.starts_with(&sim.sim.connection.arm),
        "poll URL on our host: {location}"
    );
    let poll = sim
        .http
        .get(&location)
        .bearer_auth(&arm.token)
        .send()
        .await
        .expect("poll");
    assert_eq!(poll.status(), 200);
    assert_eq!(
        arm.call(Method::GET, &identity_path, MSI_API, None).await.0,
        404
    );
    let (status, body) = arm
        .call(
            Method::GET,
            &format!("{sub}/resourcegroups/rg-one"),
            RG_API,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("ResourceGroupNotFound"))
    );
    assert_directory_matches(&sim).await;
    sim.stop().await;
}

#[tokio::test]
async fn rbac_denies_then_grants_then_denies_again() {
    let sim = TestSim::start().await;
    let admin = Arm {
        sim: &sim,
        token: sim
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let sub = sub_path(&sim);
    admin
        .call(
            Method::PUT,
            &format!("{sub}/resourcegroups/shared"),
            RG_API,
            Some(json!({"location": "eastus"})),
        )
        .await;

    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (app_id, arm_token) = crate::support::roleless_app(&sim, "worker").await;
    let worker = Arm {
        sim: &sim,
        token: arm_token.clone(),
    };
    let (_, sp) = sim
        .graph(
            Method::GET,
            &format!("servicePrincipals(appId='{app_id}')"),
            &graph,
            None,
        )
        .await;
    let worker_oid = sp["id"].as_str().expect("oid").to_string();

    let (status, body) = worker
        .call(
            Method::GET,
            &format!("{sub}/resourcegroups/shared"),
            RG_API,
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "AuthorizationFailed");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&worker_oid)
            && message.contains("Microsoft.Resources/subscriptions/resourceGroups/read")
            && message.contains("/resourcegroups/shared"),
        "{message}"
    );
    let (_, subs) = worker
        .call(Method::GET, "/subscriptions", "2022-12-01", None)
        .await;
    assert_eq!(subs["value"], json!([]), "no assignment, no subscription");

    // Reader at the group: reads pass, writes fail.
    let assignment = format!(
        "{sub}/resourceGroups/shared/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let reader = format!(
        "{sub}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
    );
    let (status, created) = admin
        .call(
            Method::PUT,
            &assignment,
            AUTH_API,
            Some(json!({"properties": {"roleDefinitionId": reader, "principalId": worker_oid}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["properties"]["principalType"], "ServicePrincipal");
    assert_eq!(
        created["properties"]["scope"],
        format!("{sub}/resourceGroups/shared")
    );
    assert_eq!(
        worker
            .call(
                Method::GET,
                &format!("{sub}/resourcegroups/shared"),
                RG_API,
                None
            )
            .await
            .0,
        200
    );
    let (_, subs) = worker
        .call(Method::GET, "/subscriptions", "2022-12-01", None)
        .await;
    assert_eq!(subs["value"].as_array().map(Vec::len), Some(1));
    let (status, body) = worker.call(Method::PUT, &format!("{sub}/resourceGroups/shared/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nope"), MSI_API, Some(json!({"location": "eastus"}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed"))
    );
    assert_eq!(
        worker
            .call(
                Method::GET,
                &format!("{sub}/resourcegroups/other"),
                RG_API,
                None
            )
            .await
            .0,
        403,
        "Reader covers only its group"
    );

    // Duplicates, bad principals, bad roles.
    let duplicate = format!(
        "{sub}/resourceGroups/shared/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let (status, body) = admin
        .call(
            Method::PUT,
            &duplicate,
            AUTH_API,
            Some(json!({"properties": {"roleDefinitionId": reader, "principalId": worker_oid}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("RoleAssignmentExists"))
    );
    let (status, body) = admin.call(Method::PUT, &duplicate, AUTH_API, Some(json!({"properties": {"roleDefinitionId": reader, "principalId": uuid::Uuid::new_v4().to_string()}}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("PrincipalNotFound"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(" does not exist in the directory "))
    );
    let (status, body) = admin.call(Method::PUT, &duplicate, AUTH_API, Some(json!({"properties": {"roleDefinitionId": format!("{sub}/providers/Microsoft.Authorization/roleDefinitions/{}", uuid::Uuid::new_v4()), "principalId": worker_oid}}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("RoleDefinitionDoesNotExist"))
    );
    // The worker (Reader) may not grant itself more.
    let (status, _) = worker.call(Method::PUT, &duplicate, AUTH_API, Some(json!({"properties": {"roleDefinitionId": reader.replace("acdd72a7-3385-48ef-bd42-f606fba81ae7", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"), "principalId": worker_oid}}))).await;
    assert_eq!(status, 403);

    // Filters and role definitions as az reads them.
    let (_, at_scope) = admin.call(Method::GET, &format!("{sub}/resourceGroups/shared/providers/Microsoft.Authorization/roleAssignments?$filter=atScope()").replace("?$filter=atScope()", ""), AUTH_API, None).await;
    assert!(
        at_scope["value"].as_array().is_some_and(|v| v.len() >= 2),
        "the group's and the subscription's: {at_scope}"
    );
    let url = format!(
        "{}{sub}/providers/Microsoft.Authorization/roleDefinitions?api-version={AUTH_API}&$filter=roleName%20eq%20'Reader'",
        sim.sim.connection.arm
    );
    let defs: Value = sim
        .http
        .get(url)
        .bearer_auth(&admin.token)
        .send()
        .await
        .expect("defs")
        .json()
        .await
        .expect("json");
    assert_eq!(defs["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        defs["value"][0]["id"], created["properties"]["roleDefinitionId"],
        "byte-identical ids for az"
    );

    // Removing the assignment removes the access.
    let (status, _) = admin
        .call(Method::DELETE, &assignment, AUTH_API, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        admin
            .call(Method::DELETE, &assignment, AUTH_API, None)
            .await
            .0,
        204
    );
    assert_eq!(
        worker
            .call(
                Method::GET,
                &format!("{sub}/resourcegroups/shared"),
                RG_API,
                None
            )
            .await
            .0,
        403
    );
    sim.stop().await;
}

#[tokio::test]
async fn arm_rejects_bad_tokens_and_bad_input_in_its_dialect() {
    let sim = TestSim::start().await;
    let arm_url = sim.sim.connection.arm.clone();
    let sub = sub_path(&sim);
    // Authentication: missing, garbage, wrong audience.
    let graph_token = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    for (token, code) in [
        (None, "AuthenticationFailed"),
        (Some("garbage"), "InvalidAuthenticationToken"),
        (
            Some(graph_token.as_str()),
            "InvalidAuthenticationTokenAudience",
        ),
    ] {
        let mut request = sim
            .http
            .get(format!("{arm_url}{sub}?api-version=2022-12-01"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401);
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .expect("challenge")
            .to_string();
        assert!(
            challenge.starts_with("Bearer authorization_uri=") && !challenge.contains("claims="),
            "{challenge}"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], code);
    }
    let arm = Arm {
        sim: &sim,
        token: sim
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let identity = |name: &str| {
        format!(
            "{sub}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        )
    };
    arm.call(
        Method::PUT,
        &format!("{sub}/resourcegroups/rg"),
        RG_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            identity("id1"),
            "2010-01-01",
            Some(json!({"location": "eastus"})),
            400,
            "NoRegisteredProviderFound",
        ),
        (
            Method::PUT,
            identity("id1"),
            "yesterday",
            Some(json!({"location": "eastus"})),
            400,
            "NoRegisteredProviderFound",
        ),
        (
            Method::GET,
            format!("{sub}/resourcegroups"),
            "1999-01-01",
            None,
            400,
            "InvalidApiVersionParameter",
        ),
        // Compute is a resource provider too: its own words, naming the bare type.
        (
            Method::GET,
            format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"),
            "2010-01-01",
            None,
            400,
            "NoRegisteredProviderFound",
        ),
        // Byte 10 of the version inside a character ("€€€€"; "2022-01-0é"), before any auth.
        (
            Method::GET,
            format!("{sub}/resourcegroups"),
            "%E2%82%AC%E2%82%AC%E2%82%AC%E2%82%AC",
            None,
            400,
            "InvalidApiVersionParameter",
        ),
        (
            Method::GET,
            format!("{sub}/resourcegroups"),
            "2022-01-0%C3%A9",
            None,
            400,
            "InvalidApiVersionParameter",
        ),
        (
            Method::PUT,
            identity("a"),
            MSI_API,
            Some(json!({"location": "eastus"})),
            400,
            "InvalidResourceName",
        ),
        (
            Method::PUT,
            identity("id1"),
            MSI_API,
            Some(json!({"tags": {}})),
            400,
            "LocationRequired",
        ),
        (
            Method::PUT,
            identity("id1"),
            MSI_API,
            Some(json!({"location": 5})),
            400,
            "InvalidRequestContent",
        ),
        (
            Method::PUT,
            identity("id1"),
            MSI_API,
            Some(json!([1, 2])),
            400,
            "InvalidRequestContent",
        ),
        (
            Method::PUT,
            identity("id1"),
            MSI_API,
            Some(json!({"location": "eastus", "tags": {"k": 1}})),
            400,
            "InvalidRequestContent",
        ),
        (
            Method::PUT,
            identity("id1"),
            MSI_API,
            Some(json!({"location": "eastus", "tags": {"a/b": "x"}})),
            400,
            "InvalidParameter",
        ),
        (
            Method::GET,
            identity("missing"),
            MSI_API,
            None,
            404,
            "ResourceNotFound",
        ),
        (
            Method::GET,
            format!(
                "{sub}/resourceGroups/nope/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x"
            ),
            MSI_API,
            None,
            404,
            "ResourceGroupNotFound",
        ),
        (
            Method::GET,
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups".into(),
            RG_API,
            None,
            404,
            "SubscriptionNotFound",
        ),
        (
            Method::GET,
            "/subscriptions/not-a-guid/resourcegroups".into(),
            RG_API,
            None,
            400,
            "InvalidSubscriptionId",
        ),
        (
            Method::PUT,
            format!("{sub}/resourcegroups/bad%2Fname"),
            RG_API,
            Some(json!({"location": "eastus"})),
            400,
            "InvalidResourceName",
        ),
        (
            Method::PUT,
            format!("{sub}/resourcegroups/ends."),
            RG_API,
            Some(json!({"location": "eastus"})),
            400,
            "InvalidResourceName",
        ),
        (
            Method::GET,
            format!("{sub}/resourceGroups/rg/providers/Microsoft.Web/sites/x"),
            RG_API,
            None,
            400,
            "InvalidResourceType",
        ),
        (
            Method::POST,
            identity("id1"),
            MSI_API,
            None,
            405,
            "MethodNotAllowed",
        ),
        (
            Method::PUT,
            format!("{sub}/providers/Microsoft.Authorization/roleAssignments/not-a-guid"),
            AUTH_API,
            Some(json!({"properties": {}})),
            400,
            "InvalidRoleAssignmentId",
        ),
        (
            Method::PUT,
            format!(
                "{sub}/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            AUTH_API,
            Some(json!({"properties": {"roleDefinitionId": "x", "principalId": 5}})),
            400,
            "InvalidRequestContent",
        ),
        (
            Method::GET,
            format!("{sub}/providers/Microsoft.Authorization/roleAssignments"),
            AUTH_API,
            None,
            200,
            "",
        ),
    ];
    // A skip token at the end of usize: past everything, an empty last page.
    let (status, past) = arm
        .call(
            Method::GET,
            "/tenants",
            "2022-12-01&$skiptoken=18446744073709551615&$top=1",
            None,
        )
        .await;
    assert_eq!(status, 200, "{past}");
    assert_eq!(past["value"].as_array().map(Vec::len), Some(0), "{past}");
    assert!(past.get("nextLink").is_none(), "{past}");
    for (method, path, api, body, status, code) in cases {
        let (got, json) = arm.call(method.clone(), &path, api, body).await;
        assert_eq!(got, status, "{method} {path} ({api}): {json}");
        if !code.is_empty() {
            assert_eq!(json["error"]["code"], code, "{method} {path}: {json}");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    }
    // The provider's error names the bare type asked for.
    for (path, kind) in [
        (
            format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"),
            "virtualMachines",
        ),
        (
            format!("{}/federatedIdentityCredentials/f", identity("id1")),
            "userAssignedIdentities/federatedIdentityCredentials",
        ),
    ] {
        let (_, json) = arm.call(Method::GET, &path, "2010-01-01", None).await;
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("for type '{kind}'"))),
            "{json}"
        );
    }
    // Huge and malformed bodies.
    let huge = vec![b'{'; 2 * 1024 * 1024];
    let response = sim
        .http
        .put(format!(
            "{arm_url}{}?api-version={MSI_API}",
            identity("id1")
        ))
        .bearer_auth(&arm.token)
        .body(huge)
        .send()
        .await
        .expect("huge");
    assert_eq!(response.status(), 413);
    let response = sim
        .http
        .put(format!(
            "{arm_url}{}?api-version={MSI_API}",
            identity("id1")
        ))
        .bearer_auth(&arm.token)
        .body("{not json")
        .send()
        .await
        .expect("malformed");
    assert_eq!(response.status(), 400);
    let response = sim
        .http
        .get(format!(
            "{arm_url}{sub}/resourcegroups?api-version={RG_API}&api-version={RG_API}"
        ))
        .bearer_auth(&arm.token)
        .send()
        .await
        .expect("dup");
    assert_eq!(response.status(), 400);
    // Nothing was half-written: the group holds no identity.
    let (_, list) = arm
        .call(
            Method::GET,
            &format!(
                "{sub}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
            ),
            MSI_API,
            None,
        )
        .await;
    assert_eq!(list["value"], json!([]));
    let in_group = sim
        .sim
        .arm
        .identity_principals()
        .await
        .expect("identities")
        .into_iter()
        .filter(|i| i.mirid.to_lowercase().contains("/resourcegroups/rg/"))
        .count();
    assert_eq!(in_group, 0, "no principal was minted for a refused request");

    // Metadata endpoints: no authentication, three shapes.
    let meta: Value = sim
        .http
        .get(format!(
            "{arm_url}/metadata/endpoints?api-version=2022-09-01"
        ))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert!(
        meta["name"].is_string()
            && meta["authentication"]["audiences"][0].is_string()
            && meta["suffixes"].is_object()
    );
    assert_eq!(
        meta["authentication"]["loginEndpoint"],
        format!("{}/", sim.aad())
    );
    let list: Value = sim
        .http
        .get(format!(
            "{arm_url}//metadata/endpoints?api-version=2019-05-01"
        ))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert!(list.is_array());
    sim.stop().await;
}

#[tokio::test]
async fn identities_and_assignments_survive_a_restart() {
    let first = TestSim::start().await;
    let arm = Arm {
        sim: &first,
        token: first
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let sub = sub_path(&first);
    arm.call(
        Method::PUT,
        &format!("{sub}/resourcegroups/keep"),
        RG_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let path = format!(
        "{sub}/resourceGroups/keep/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kept"
    );
    let (_, identity) = arm
        .call(
            Method::PUT,
            &path,
            MSI_API,
            Some(json!({"location": "eastus"})),
        )
        .await;
    // A role assignment with an ABAC condition: kept as given (not evaluated), and a PUT of
    // the same assignment may change its description and condition (200), not its role.
    let principal = identity["properties"]["principalId"]
        .as_str()
        .expect("principal")
        .to_string();
    let assignment = format!(
        "{sub}/resourceGroups/keep/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let reader = format!(
        "{sub}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
    );
    let condition = "((!(ActionMatches{'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'})) OR (@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name] StringEquals 'logs'))";
    let put = |description: &str, condition: &str, version: Option<&str>| {
        let mut properties = json!({"roleDefinitionId": reader, "principalId": principal, "principalType": "ServicePrincipal", "description": description, "condition": condition});
        if let Some(version) = version {
            properties["conditionVersion"] = json!(version);
        }
        let (arm, assignment) = (&arm, &assignment);
        async move {
            arm.call(
                Method::PUT,
                assignment,
                AUTH_API,
                Some(json!({ "properties": properties })),
            )
            .await
        }
    };
    let (status, created) = put("first", condition, None).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["properties"]["condition"], condition);
    assert_eq!(
        created["properties"]["conditionVersion"], "2.0",
        "the default"
    );
    let (status, bad) = put("first", condition, Some("1.0")).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("InvalidParameter")),
        "{bad}"
    );
    // misim stores conditions, it does not evaluate them: on a role that can delegate, a
    // condition would grant more than Azure does, so it is refused; an empty one is none.
    let owner_with_condition = json!({"properties": {"roleDefinitionId": reader.replace("acdd72a7-3385-48ef-bd42-f606fba81ae7", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"), "principalId": principal, "principalType": "ServicePrincipal", "condition": condition}});
    let (status, refused) = arm
        .call(
            Method::PUT,
            &assignment.replace(
                assignment.rsplit('/').next().expect("name"),
                &uuid::Uuid::new_v4().to_string(),
            ),
            AUTH_API,
            Some(owner_with_condition),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("InvalidParameter")),
        "{refused}"
    );
    let narrower = condition.replace("'logs'", "'audit'");
    let (status, updated) = put("second", &narrower, Some("2.0")).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (
            &updated["properties"]["description"],
            &updated["properties"]["condition"]
        ),
        (&json!("second"), &json!(narrower))
    );
    drop(arm);
    let dir = first.stop().await;
    let second = TestSim::start_in(dir, |_| {}).await;
    let arm = Arm {
        sim: &second,
        token: second
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let (status, again) = arm.call(Method::GET, &path, MSI_API, None).await;
    assert_eq!(status, 200);
    assert_eq!(again["properties"], identity["properties"]);
    let (status, kept) = arm.call(Method::GET, &assignment, AUTH_API, None).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["properties"], updated["properties"]);
    assert_directory_matches(&second).await;
    second.stop().await;
}

#[tokio::test]
async fn federated_identity_credentials_are_validated_children_of_their_identity() {
    let sim = TestSim::start().await;
    let arm = Arm {
        sim: &sim,
        token: sim
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let sub = sub_path(&sim);
    arm.call(
        Method::PUT,
        &format!("{sub}/resourcegroups/wif"),
        RG_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let identity = format!(
        "{sub}/resourceGroups/wif/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ci-mi"
    );
    arm.call(
        Method::PUT,
        &identity,
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let fic = |name: &str| format!("{identity}/federatedIdentityCredentials/{name}");
    let body = |subject: &str| json!({"properties": {"issuer": "https://token.actions.githubusercontent.com", "subject": subject, "audiences": ["api://AzureADTokenExchange"]}});
    let (status, created) = arm
        .call(
            Method::PUT,
            &fic("gh-main"),
            "2023-01-31",
            Some(body("repo:org/repo:ref:refs/heads/main")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["type"],
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"
    );
    assert_eq!(
        arm.call(
            Method::PUT,
            &fic("gh-main"),
            "2023-01-31",
            Some(body("repo:org/repo:ref:refs/heads/main"))
        )
        .await
        .0,
        200
    );
    let (status, got) = arm
        .call(Method::GET, &fic("GH-MAIN"), "2023-01-31", None)
        .await;
    assert_eq!(
        (status, &got["properties"]["subject"]),
        (200, &json!("repo:org/repo:ref:refs/heads/main"))
    );

    let invalid: Vec<(Value, &str)> = vec![
        (
            body("repo:org/repo:ref:refs/heads/main"),
            "InvalidParameter",
        ),
        (
            json!({"properties": {"issuer": "https://x", "subject": "s", "audiences": ["a", "b"]}}),
            "InvalidParameter",
        ),
        (
            json!({"properties": {"issuer": "https://x", "subject": "s", "audiences": []}}),
            "InvalidParameter",
        ),
        (
            json!({"properties": {"issuer": "http://issuer.example.com", "subject": "s", "audiences": ["a"]}}),
            "InvalidParameter",
        ),
        (
            json!({"properties": {"issuer": "https://x", "subject": "s*", "audiences": ["a"]}}),
            "InvalidParameter",
        ),
        (
            json!({"properties": {"issuer": "https://x", "subject": "s".repeat(601), "audiences": ["a"]}}),
            "InvalidParameter",
        ),
        (
            json!({"properties": {"issuer": "https://x", "audiences": ["a"]}}),
            "InvalidParameter",
        ),
        (
            json!({"properties": {"issuer": "https://x", "subject": "s", "audiences": "a"}}),
            "InvalidRequestContent",
        ),
        (json!({"issuer": "https://x"}), "InvalidRequestContent"),
    ];
    for (request, code) in invalid {
        let (status, answer) = arm
            .call(
                Method::PUT,
                &fic("other"),
                "2023-01-31",
                Some(request.clone()),
            )
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{request}"
        );
    }
    assert_eq!(
        arm.call(Method::PUT, &fic("-bad"), "2023-01-31", Some(body("x")))
            .await
            .1["error"]["code"],
        "InvalidResourceName"
    );
    // At most 20 per identity.
    for i in 1..20 {
        assert_eq!(
            arm.call(
                Method::PUT,
                &fic(&format!("fic-{i}")),
                "2023-01-31",
                Some(body(&format!("subject-{i}")))
            )
            .await
            .0,
            201
        );
    }
    let (status, answer) = arm
        .call(
            Method::PUT,
            &fic("fic-21"),
            "2023-01-31",
            Some(body("subject-21")),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    let (_, page) = arm
        .call(
            Method::GET,
            &format!("{identity}/federatedIdentityCredentials"),
            "2023-01-31",
            None,
        )
        .await;
    assert_eq!(page["value"].as_array().map(Vec::len), Some(20));
    assert_eq!(
        arm.call(Method::DELETE, &fic("fic-1"), "2023-01-31", None)
            .await
            .0,
        200
    );
    assert_eq!(
        arm.call(Method::DELETE, &fic("fic-1"), "2023-01-31", None)
            .await
            .0,
        204
    );
    let missing_parent = format!(
        "{sub}/resourceGroups/wif/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nope/federatedIdentityCredentials/fic-x"
    );
    assert_eq!(
        arm.call(Method::PUT, &missing_parent, "2023-01-31", Some(body("x")))
            .await
            .0,
        404
    );
    // Deleting the identity deletes its credentials; a new identity of that name starts empty.
    arm.call(Method::DELETE, &identity, MSI_API, None).await;
    arm.call(
        Method::PUT,
        &identity,
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let (_, page) = arm
        .call(
            Method::GET,
            &format!("{identity}/federatedIdentityCredentials"),
            "2023-01-31",
            None,
        )
        .await;
    assert_eq!(page["value"], json!([]));
    sim.stop().await;
}

#[tokio::test]
async fn concurrent_puts_of_one_identity_mint_one_principal() {
    let sim = TestSim::start().await;
    let arm = Arm {
        sim: &sim,
        token: sim
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let sub = sub_path(&sim);
    arm.call(
        Method::PUT,
        &format!("{sub}/resourcegroups/race"),
        RG_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    let path = format!(
        "{sub}/resourceGroups/race/providers/Microsoft.ManagedIdentity/userAssignedIdentities/contested"
    );
    let puts = (0..8).map(|i| {
        arm.call(
            Method::PUT,
            &path,
            MSI_API,
            Some(json!({"location": "eastus", "tags": {"writer": i.to_string()}})),
        )
    });
    let answers = futures_join_all(puts).await;
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(created, 1, "exactly one PUT creates: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == 200 || *status == 201)
    );
    let principals: std::collections::HashSet<&str> = answers
        .iter()
        .filter_map(|(_, body)| body["properties"]["principalId"].as_str())
        .collect();
    assert_eq!(principals.len(), 1, "every answer names the same principal");
    assert_directory_matches(&sim).await;
    sim.stop().await;
}

/// Runs futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..futures.len()).map(|_| None).collect();
    let mut futures: Vec<Option<std::pin::Pin<Box<F>>>> = futures.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// A list read with a `$filter`, as the SDKs and az send it.
async fn filtered(sim: &TestSim, token: &str, path: &str, api: &str, filter: &str) -> (u16, Value) {
    let response = sim
        .http
        .get(format!("{}{path}", sim.sim.connection.arm))
        .query(&[("api-version", api), ("$filter", filter)])
        .bearer_auth(token)
        .send()
        .await
        .expect("list");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["value"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|item| item["name"].as_str().expect("name").to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn lists_take_the_filters_clients_send() {
    let sim = TestSim::start().await;
    let token = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let arm = Arm {
        sim: &sim,
        token: token.clone(),
    };
    let sub = sub_path(&sim);
    for (group, tags) in [
        ("f-prod", json!({"env": "Prod"})),
        ("f-dev", json!({"Env": "dev"})),
        ("f-plain", json!({})),
    ] {
        let (status, body) = arm
            .call(
                Method::PUT,
                &format!("{sub}/resourcegroups/{group}"),
                RG_API,
                Some(json!({"location": "eastus", "tags": tags})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    // `az group list --tag env` and `--tag env=Prod`: tag names in any case, values exactly.
    let groups = format!("{sub}/resourcegroups");
    let (status, by_name) = filtered(&sim, &token, &groups, RG_API, "tagName eq 'env'").await;
    assert_eq!(status, 200, "{by_name}");
    assert_eq!(names(&by_name), ["f-dev", "f-prod"]);
    let (_, by_value) = filtered(
        &sim,
        &token,
        &groups,
        RG_API,
        "tagName eq 'ENV' and tagValue eq 'Prod'",
    )
    .await;
    assert_eq!(names(&by_value), ["f-prod"]);
    let (_, wrong_case) = filtered(
        &sim,
        &token,
        &groups,
        RG_API,
        "tagName eq 'env' and tagValue eq 'prod'",
    )
    .await;
    assert_eq!(names(&wrong_case), Vec::<String>::new());
    for bad in [
        "location eq 'eastus'",
        "tagValue eq 'Prod'",
        "tagName eq env",
        "é",
        "tagName eq ‘env’",
    ] {
        let (status, body) = filtered(&sim, &token, &groups, RG_API, bad).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("InvalidParameter")),
            "{bad}: {body}"
        );
    }

    // A group's resources are its top-level ones: an identity's federated credential is not
    // listed (as a phantom identity or otherwise); `$filter` by type and name.
    let identity = format!(
        "{sub}/resourceGroups/f-prod/providers/Microsoft.ManagedIdentity/userAssignedIdentities/f-mi"
    );
    arm.call(
        Method::PUT,
        &identity,
        MSI_API,
        Some(json!({"location": "eastus", "tags": {"env": "Prod"}})),
    )
    .await;
    let (status, fic) = arm
        .call(
            Method::PUT,
            &format!("{identity}/federatedIdentityCredentials/f-fic"),
            "2023-01-31",
            Some(json!({"properties": {"issuer": "https://issuer.example", "subject": "s", "audiences": ["api://AzureADTokenExchange"]}})),
        )
        .await;
    assert_eq!(status, 201, "{fic}");
    let vm =
        format!("{sub}/resourceGroups/f-prod/providers/Microsoft.Compute/virtualMachines/f-vm");
    let (status, body) = arm
        .call(
            Method::PUT,
            &vm,
            "2024-11-01",
            Some(json!({"location": "eastus", "properties": {"hardwareProfile": {"vmSize": "Standard_B1s"}}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // HEAD answers existence (`check_existence_by_id`), for every kind of resource.
    for (path, api, expected) in [
        (vm.clone(), "2024-11-01", 204),
        (format!("{vm}-nope"), "2024-11-01", 404),
        (identity.clone(), MSI_API, 204),
        (
            format!("{identity}/federatedIdentityCredentials/f-fic"),
            "2023-01-31",
            204,
        ),
        (
            format!("{identity}/federatedIdentityCredentials/nope"),
            "2023-01-31",
            404,
        ),
        (
            format!("{sub}/resourceGroups/nope/providers/Microsoft.Compute/virtualMachines/x"),
            "2024-11-01",
            404,
        ),
    ] {
        let response = sim
            .http
            .head(format!(
                "{}{path}?api-version={api}",
                sim.sim.connection.arm
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("head");
        assert_eq!(response.status().as_u16(), expected, "HEAD {path}");
    }
    let resources = format!("{sub}/resourceGroups/f-prod/resources");
    let (status, all) = arm.call(Method::GET, &resources, RG_API, None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(names(&all), ["f-mi", "f-vm"], "{all}");
    let (_, vms) = filtered(
        &sim,
        &token,
        &resources,
        RG_API,
        "resourceType eq 'microsoft.compute/virtualmachines'",
    )
    .await;
    assert_eq!(names(&vms), ["f-vm"]);
    assert_eq!(vms["value"][0]["type"], "Microsoft.Compute/virtualMachines");
    let (_, tagged) = filtered(&sim, &token, &resources, RG_API, "tagName eq 'env'").await;
    assert_eq!(names(&tagged), ["f-mi"]);
    let (_, named) = filtered(&sim, &token, &resources, RG_API, "name eq 'F-MI'").await;
    assert_eq!(names(&named), ["f-mi"]);
    // The subscription's list, by group (`az resource list -g`).
    let (status, in_group) = filtered(
        &sim,
        &token,
        &format!("{sub}/resources"),
        RG_API,
        "resourceGroup eq 'F-PROD'",
    )
    .await;
    assert_eq!(status, 200, "{in_group}");
    assert_eq!(names(&in_group), ["f-mi", "f-vm"]);
    let (_, everything) = arm
        .call(Method::GET, &format!("{sub}/resources"), RG_API, None)
        .await;
    assert!(
        names(&everything).contains(&"demo-vm".to_string()) && names(&everything).len() >= 3,
        "{everything}"
    );

    // `az role assignment list --scope S --assignee X --include-groups`: what applies at S to X.
    let reader = format!(
        "{sub}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
    );
    let principal = {
        let (_, mi) = arm.call(Method::GET, &identity, MSI_API, None).await;
        mi["properties"]["principalId"]
            .as_str()
            .expect("principal")
            .to_string()
    };
    let assign = |scope: String| {
        let arm = &arm;
        let (reader, principal) = (reader.clone(), principal.clone());
        async move {
            let path = format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            );
            let (status, body) = arm
                .call(
                    Method::PUT,
                    &path,
                    AUTH_API,
                    Some(json!({"properties": {"roleDefinitionId": reader, "principalId": principal}})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body["id"].as_str().expect("id").to_string()
        }
    };
    let on_group = assign(format!("{sub}/resourceGroups/f-prod")).await;
    let below = assign(identity.clone()).await;
    let assignments =
        format!("{sub}/resourceGroups/f-prod/providers/Microsoft.Authorization/roleAssignments");
    let ids = |list: &Value| -> Vec<String> {
        list["value"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|a| a["id"].as_str().expect("id").to_string())
            .collect()
    };
    let (status, applying) = filtered(
        &sim,
        &token,
        &assignments,
        AUTH_API,
        &format!("atScope() and assignedTo('{principal}')"),
    )
    .await;
    assert_eq!(status, 200, "{applying}");
    assert_eq!(
        ids(&applying),
        std::slice::from_ref(&on_group),
        "not the one below the scope"
    );
    let (_, everywhere) = filtered(
        &sim,
        &token,
        &assignments,
        AUTH_API,
        &format!("assignedTo('{principal}')"),
    )
    .await;
    let mut both = ids(&everywhere);
    both.sort();
    let mut expected = vec![on_group, below];
    expected.sort();
    assert_eq!(both, expected);
    for refused in [
        "atScope() and atScope()".to_string(),
        // ARM does not combine atScope() with principalId eq, only with assignedTo().
        format!("atScope() and principalId eq '{principal}'"),
        "atScope() and é".to_string(),
    ] {
        let (status, body) = filtered(&sim, &token, &assignments, AUTH_API, &refused).await;
        assert_eq!(status, 400, "{refused}: {body}");
    }
}

#[tokio::test]
async fn providers_are_registered_and_list_their_types() {
    let sim = TestSim::start().await;
    let admin = Arm {
        sim: &sim,
        token: sim
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let sub = sub_path(&sim);
    // The list: misim's namespaces, each type with api-versions newest first (what `az
    // resource` picks from).
    let (status, list) = admin
        .call(Method::GET, &format!("{sub}/providers"), RG_API, None)
        .await;
    assert_eq!(status, 200, "{list}");
    let compute = list["value"]
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["namespace"] == "Microsoft.Compute")
        .expect("Microsoft.Compute listed")
        .clone();
    assert_eq!(compute["registrationState"], "Registered");
    assert_eq!(
        compute["resourceTypes"][0]["resourceType"],
        "virtualMachines"
    );
    let versions: Vec<&str> = compute["resourceTypes"][0]["apiVersions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v.as_str().expect("a version"))
        .collect();
    let mut sorted = versions.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert!(!versions.is_empty() && versions == sorted, "{versions:?}");
    // One provider, in any case; a namespace misim does not serve is registered too, with no
    // types, so tools that register a default set at start-up (Terraform) go on.
    let (status, msi) = admin
        .call(
            Method::GET,
            &format!("{sub}/providers/microsoft.managedidentity"),
            RG_API,
            None,
        )
        .await;
    assert_eq!(status, 200, "{msi}");
    assert_eq!(msi["namespace"], "Microsoft.ManagedIdentity");
    assert!(
        msi["resourceTypes"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["resourceType"] == "userAssignedIdentities"
                && t["locations"].as_array().is_some_and(|l| !l.is_empty()))),
        "{msi}"
    );
    for namespace in [
        "Microsoft.Network",
        "Microsoft.Authorization",
        "Microsoft.Compute",
    ] {
        let (status, registered) = admin
            .call(
                Method::POST,
                &format!("{sub}/providers/{namespace}/register"),
                "2021-04-01",
                None,
            )
            .await;
        assert_eq!(status, 200, "{namespace}: {registered}");
        assert_eq!(registered["registrationState"], "Registered");
        assert_eq!(registered["namespace"], namespace);
    }
    // Registering is an action on the subscription: a principal without a role may not.
    let (_, arm_token) = crate::support::roleless_app(&sim, "no-roles").await;
    let nobody = Arm {
        sim: &sim,
        token: arm_token.clone(),
    };
    let (status, refused) = nobody
        .call(
            Method::POST,
            &format!("{sub}/providers/Microsoft.Network/register"),
            "2021-04-01",
            None,
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed")),
        "{refused}"
    );
    // POST on the provider itself is not an operation.
    let (status, _) = admin
        .call(
            Method::POST,
            &format!("{sub}/providers/Microsoft.Network"),
            "2021-04-01",
            None,
        )
        .await;
    assert!((400..500).contains(&status), "{status}");
}

#[tokio::test]
async fn custom_roles_are_defined_assigned_enforced_and_deleted() {
    let first = TestSim::start().await;
    let sub = sub_path(&first);
    let admin_token = first
        .admin_token("https://management.azure.com/.default")
        .await;
    let admin = Arm {
        sim: &first,
        token: admin_token.clone(),
    };
    for rg in ["roles-a", "roles-b"] {
        admin
            .call(
                Method::PUT,
                &format!("{sub}/resourcegroups/{rg}"),
                RG_API,
                Some(json!({"location": "eastus"})),
            )
            .await;
    }
    let definitions = format!("{sub}/providers/Microsoft.Authorization/roleDefinitions");
    let guid = uuid::Uuid::new_v4().to_string();
    let role_path = format!("{definitions}/{guid}");
    let body = |name: &str, description: &str, scopes: Value| json!({"properties": {"roleName": name, "description": description, "type": "CustomRole", "assignableScopes": scopes, "permissions": [{"actions": ["Microsoft.Resources/subscriptions/resourceGroups/read"], "notActions": [], "dataActions": [], "notDataActions": []}]}});
    let (status, created) = admin
        .call(
            Method::PUT,
            &role_path,
            AUTH_API,
            Some(body("Group Reader", "reads groups", json!([sub]))),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], guid.as_str());
    assert_eq!(created["properties"]["type"], "CustomRole");
    assert_eq!(created["properties"]["assignableScopes"], json!([sub]));
    let (status, updated) = admin
        .call(
            Method::PUT,
            &role_path,
            AUTH_API,
            Some(body("Group Reader", "reads resource groups", json!([sub]))),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        updated["properties"]["description"],
        "reads resource groups"
    );

    // Bad definitions, in ARM's envelope.
    let other = format!("{definitions}/{}", uuid::Uuid::new_v4());
    for (path, body, status, code) in [
        (
            other.clone(),
            body("Group Reader", "", json!([sub])),
            409,
            "RoleDefinitionWithSameNameExists",
        ),
        (
            other.clone(),
            body("reader", "", json!([sub])),
            409,
            "RoleDefinitionWithSameNameExists",
        ),
        (
            other.clone(),
            body("No Scopes", "", json!([])),
            400,
            "InvalidParameter",
        ),
        (
            other.clone(),
            body("Root", "", json!(["/"])),
            400,
            "InvalidParameter",
        ),
        (
            other.clone(),
            body(
                "Elsewhere",
                "",
                json!(["/subscriptions/00000000-0000-0000-0000-000000000000"]),
            ),
            404,
            "SubscriptionNotFound",
        ),
        (
            other.clone(),
            json!({"properties": {"roleName": "Broken", "assignableScopes": [sub], "permissions": "all"}}),
            400,
            "InvalidRequestContent",
        ),
        (
            format!("{definitions}/acdd72a7-3385-48ef-bd42-f606fba81ae7"),
            body("Not Reader", "", json!([sub])),
            400,
            "InvalidParameter",
        ),
        (
            format!("{definitions}/not-a-guid"),
            body("Bad Id", "", json!([sub])),
            400,
            "InvalidParameter",
        ),
    ] {
        let (got, answer) = admin.call(Method::PUT, &path, AUTH_API, Some(body)).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }

    // Listed where it may be assigned, by name and by type.
    let (_, by_name) = filtered(
        &first,
        &admin_token,
        &definitions,
        AUTH_API,
        "roleName eq 'group reader'",
    )
    .await;
    assert_eq!(
        by_name["value"].as_array().map(Vec::len),
        Some(1),
        "{by_name}"
    );
    let (_, customs) = filtered(
        &first,
        &admin_token,
        &format!("{sub}/resourceGroups/roles-a/providers/Microsoft.Authorization/roleDefinitions"),
        AUTH_API,
        "type eq 'CustomRole'",
    )
    .await;
    assert_eq!(customs["value"][0]["name"], guid.as_str(), "{customs}");

    // Assigned, it grants exactly its actions.
    let (_, worker_token) = crate::support::roleless_app(&first, "custom-role-worker").await;
    let worker = Arm {
        sim: &first,
        token: worker_token,
    };
    let graph = first
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let worker_oid = {
        let (_, list) = first
            .graph(
                Method::GET,
                "servicePrincipals?$filter=displayName eq 'custom-role-worker'",
                &graph,
                None,
            )
            .await;
        list["value"][0]["id"].as_str().expect("oid").to_string()
    };
    let group_a = format!("{sub}/resourceGroups/roles-a");
    assert_eq!(
        worker.call(Method::GET, &group_a, RG_API, None).await.0,
        403
    );
    let assignment = format!(
        "{sub}/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let (status, assigned) = admin
        .call(
            Method::PUT,
            &assignment,
            AUTH_API,
            Some(json!({"properties": {"roleDefinitionId": created["id"], "principalId": worker_oid, "principalType": "ServicePrincipal"}})),
        )
        .await;
    assert_eq!(status, 201, "{assigned}");
    assert_eq!(
        worker.call(Method::GET, &group_a, RG_API, None).await.0,
        200
    );
    let (status, denied) = worker
        .call(
            Method::PUT,
            &format!("{sub}/resourcegroups/roles-c"),
            RG_API,
            Some(json!({"location": "eastus"})),
        )
        .await;
    assert_eq!(
        (status, denied["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed"))
    );

    // A role assignable only in roles-a cannot be assigned in roles-b.
    let narrow = format!("{definitions}/{}", uuid::Uuid::new_v4());
    let (status, narrow_role) = admin
        .call(
            Method::PUT,
            &narrow,
            AUTH_API,
            Some(body("Only A", "", json!([group_a]))),
        )
        .await;
    assert_eq!(status, 201, "{narrow_role}");
    let (status, refused) = admin
        .call(
            Method::PUT,
            &format!(
                "{sub}/resourceGroups/roles-b/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            AUTH_API,
            Some(json!({"properties": {"roleDefinitionId": narrow_role["id"], "principalId": worker_oid, "principalType": "ServicePrincipal"}})),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("InvalidParameter")),
        "{refused}"
    );

    // A change takes effect at once: the role may now create groups too.
    let mut wider = body("Group Reader", "reads and writes groups", json!([sub]));
    wider["properties"]["permissions"][0]["actions"]
        .as_array_mut()
        .expect("actions")
        .push(json!(
            "Microsoft.Resources/subscriptions/resourceGroups/write"
        ));
    // Lists given as null are empty, as clients that serialize unset fields send them.
    wider["properties"]["permissions"][0]["notDataActions"] = Value::Null;
    let (status, widened) = admin
        .call(Method::PUT, &role_path, AUTH_API, Some(wider))
        .await;
    assert_eq!(status, 200, "{widened}");
    assert_eq!(
        worker
            .call(
                Method::PUT,
                &format!("{sub}/resourcegroups/roles-c"),
                RG_API,
                Some(json!({"location": "eastus"})),
            )
            .await
            .0,
        201
    );
    // It may not leave an assignment outside its assignable scopes.
    let (status, stranded) = admin
        .call(
            Method::PUT,
            &role_path,
            AUTH_API,
            Some(body("Group Reader", "", json!([group_a]))),
        )
        .await;
    assert_eq!(
        (status, stranded["error"]["code"].as_str()),
        (400, Some("InvalidParameter")),
        "{stranded}"
    );
    // Patterns are action names of bounded size, not anything at all.
    for bad in [
        "x".repeat(300),
        "Microsoft.Compute/virtualMachines/read write".into(),
        String::new(),
    ] {
        let mut odd = body("Odd", "", json!([sub]));
        odd["properties"]["permissions"][0]["actions"] = json!([bad]);
        let (status, answer) = admin
            .call(
                Method::PUT,
                &format!("{definitions}/{}", uuid::Uuid::new_v4()),
                AUTH_API,
                Some(odd),
            )
            .await;
        assert_eq!(status, 400, "{answer}");
    }
    // An Owner of one group may not change or delete a role assignable beyond it: that would
    // change what its assignments grant elsewhere.
    let (_, group_owner_token) = crate::support::roleless_app(&first, "group-owner").await;
    let group_owner_oid = {
        let (_, list) = first
            .graph(
                Method::GET,
                "servicePrincipals?$filter=displayName eq 'group-owner'",
                &graph,
                None,
            )
            .await;
        list["value"][0]["id"].as_str().expect("oid").to_string()
    };
    let (status, owner) = admin
        .call(
            Method::PUT,
            &format!(
                "{group_a}/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            AUTH_API,
            Some(json!({"properties": {"roleDefinitionId": format!("{definitions}/8e3af657-a8ff-443c-a75c-2fe8c4bcb635"), "principalId": group_owner_oid, "principalType": "ServicePrincipal"}})),
        )
        .await;
    assert_eq!(status, 201, "{owner}");
    let group_owner = Arm {
        sim: &first,
        token: group_owner_token,
    };
    let mut everything = body("Group Reader", "", json!([group_a]));
    everything["properties"]["permissions"][0]["actions"] = json!(["*"]);
    let (status, refused) = group_owner
        .call(
            Method::PUT,
            &format!("{group_a}/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
            AUTH_API,
            Some(everything),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed")),
        "{refused}"
    );
    let (status, refused) = group_owner
        .call(
            Method::DELETE,
            &format!("{group_a}/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
            AUTH_API,
            None,
        )
        .await;
    assert_eq!(status, 403, "{refused}");

    // A role assigned with a condition may not be given role-assignment rights: misim does not
    // evaluate conditions, so the assignment would grant more than on Azure.
    let (status, conditioned) = admin
        .call(
            Method::PUT,
            &format!(
                "{group_a}/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            AUTH_API,
            Some(json!({"properties": {"roleDefinitionId": created["id"], "principalId": group_owner_oid, "principalType": "ServicePrincipal", "condition": "@Resource[Microsoft.Resources/resourceGroups:name] StringEquals 'roles-a'"}})),
        )
        .await;
    assert_eq!(status, 201, "{conditioned}");
    let mut delegating = body("Group Reader", "", json!([sub]));
    delegating["properties"]["permissions"][0]["actions"]
        .as_array_mut()
        .expect("actions")
        .push(json!("Microsoft.Authorization/roleAssignments/write"));
    let (status, refused) = admin
        .call(Method::PUT, &role_path, AUTH_API, Some(delegating))
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("InvalidParameter")),
        "{refused}"
    );
    assert_eq!(
        admin
            .call(
                Method::DELETE,
                conditioned["id"].as_str().expect("id"),
                AUTH_API,
                None
            )
            .await
            .0,
        200
    );

    // Kept across a restart.
    let updated = widened;
    drop((admin, worker, group_owner));
    let dir = first.stop().await;
    let second = TestSim::start_in(dir, |_| {}).await;
    let admin = Arm {
        sim: &second,
        token: second
            .admin_token("https://management.azure.com/.default")
            .await,
    };
    let (status, kept) = admin.call(Method::GET, &role_path, AUTH_API, None).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["properties"], updated["properties"]);

    // A role still assigned is not deleted; unassigned, it is (200, then 204).
    let (status, busy) = admin.call(Method::DELETE, &role_path, AUTH_API, None).await;
    assert_eq!(
        (status, busy["error"]["code"].as_str()),
        (409, Some("RoleDefinitionHasAssignments"))
    );
    assert_eq!(
        admin
            .call(Method::DELETE, &assignment, AUTH_API, None)
            .await
            .0,
        200
    );
    assert_eq!(
        admin
            .call(Method::DELETE, &role_path, AUTH_API, None)
            .await
            .0,
        200
    );
    assert_eq!(
        admin
            .call(Method::DELETE, &role_path, AUTH_API, None)
            .await
            .0,
        204
    );
    let (status, gone) = admin.call(Method::GET, &role_path, AUTH_API, None).await;
    assert_eq!(
        (status, gone["error"]["code"].as_str()),
        (404, Some("RoleDefinitionDoesNotExist")),
        "{gone}"
    );
    second.stop().await;
}
