//! The Graph subset: who may read and write, applications, passwords, service principals.

use crate::support::{TestSim, register_app};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn graph_crud_and_authorization() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;

    // No token, or a token for another audience: 401 in Graph's dialect.
    let (status, body) = sim.graph(Method::GET, "applications", "", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let arm_token = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    assert_eq!(
        sim.graph(Method::GET, "applications", &arm_token, None)
            .await
            .0,
        401
    );
    // az asks for a token for the Graph URL itself.
    let graph_url_token = sim
        .admin_token(&format!("{}/.default", sim.sim.connection.graph))
        .await;
    assert_eq!(
        sim.graph(Method::GET, "applications", &graph_url_token, None)
            .await
            .0,
        200
    );

    let (object_id, app_id) = register_app(&sim, &admin, "app-one", None).await;
    let (status, password) = sim
        .graph(
            Method::POST,
            &format!("applications/{object_id}/addPassword"),
            &admin,
            Some(json!({"passwordCredential": {"displayName": "ci"}})),
        )
        .await;
    assert_eq!(status, 200, "{password}");
    let secret = password["secretText"]
        .as_str()
        .expect("secretText")
        .to_string();
    assert_eq!(password["hint"], &secret[..3]);

    // The app may read Graph, not write it.
    let (status, body) = sim
        .secret_token(&app_id, &secret, "https://graph.microsoft.com/.default")
        .await;
    assert_eq!(status, 200, "{body}");
    let app_token = body["access_token"].as_str().expect("token").to_string();
    let (status, list) = sim
        .graph(
            Method::GET,
            &format!("servicePrincipals?$filter=appId eq '{app_id}'"),
            &app_token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["value"][0]["servicePrincipalType"], "Application");
    let (status, body) = sim
        .graph(
            Method::POST,
            "applications",
            &app_token,
            Some(json!({"displayName": "nope"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "Authorization_RequestDenied");

    // PATCH renames; the secret is listed without its text; removePassword revokes it.
    assert_eq!(
        sim.graph(
            Method::PATCH,
            &format!("applications/{object_id}"),
            &admin,
            Some(json!({"displayName": "renamed"}))
        )
        .await
        .0,
        204
    );
    let (status, app) = sim
        .graph(
            Method::GET,
            &format!("applications(appId='{app_id}')"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app["displayName"], "renamed");
    assert_eq!(app["passwordCredentials"][0]["secretText"], json!(null));
    let key_id = password["keyId"].as_str().expect("keyId");
    assert_eq!(
        sim.graph(
            Method::POST,
            &format!("applications/{object_id}/removePassword"),
            &admin,
            Some(json!({"keyId": key_id}))
        )
        .await
        .0,
        204
    );
    let (status, _) = sim
        .secret_token(&app_id, &secret, "https://graph.microsoft.com/.default")
        .await;
    assert_eq!(status, 401, "a removed secret no longer works");

    // Filters and paging.
    for i in 0..3 {
        register_app(&sim, &admin, &format!("paged-{i}"), None).await;
    }
    let (status, page) = sim
        .graph(
            Method::GET,
            "applications?$filter=startswith(displayName,'paged-')&$top=2",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["value"].as_array().map(Vec::len), Some(2));
    let next = page["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_string();
    let rest: serde_json::Value = sim
        .http
        .get(next)
        .bearer_auth(&admin)
        .send()
        .await
        .expect("next")
        .json()
        .await
        .expect("json");
    assert_eq!(rest["value"].as_array().map(Vec::len), Some(1));
    assert!(rest.get("@odata.nextLink").is_none());
    // A skip token at the end of usize: past everything, an empty last page.
    let (status, past) = sim
        .graph(
            Method::GET,
            "applications?$top=2&$skiptoken=18446744073709551615",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{past}");
    assert_eq!(past["value"].as_array().map(Vec::len), Some(0));
    assert!(past.get("@odata.nextLink").is_none());
    let (status, body) = sim
        .graph(
            Method::GET,
            "applications?$filter=displayName has 'x'",
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("Request_BadRequest"))
    );

    // Deleting the application removes its service principal.
    assert_eq!(
        sim.graph(
            Method::DELETE,
            &format!("applications/{object_id}"),
            &admin,
            None
        )
        .await
        .0,
        204
    );
    let (status, list) = sim
        .graph(
            Method::GET,
            &format!("servicePrincipals?$filter=appId eq '{app_id}'"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["value"], json!([]));
    let (status, body) = sim
        .graph(
            Method::GET,
            &format!("applications/{object_id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
    sim.stop().await;
}

#[tokio::test]
async fn an_application_without_a_service_principal_cannot_sign_in() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (status, app) = sim
        .graph(
            Method::POST,
            "applications",
            &admin,
            Some(json!({"displayName": "no-sp"})),
        )
        .await;
    assert_eq!(status, 201);
    let object_id = app["id"].as_str().expect("id");
    let (_, password) = sim
        .graph(
            Method::POST,
            &format!("applications/{object_id}/addPassword"),
            &admin,
            Some(json!({})),
        )
        .await;
    let (status, body) = sim
        .secret_token(
            app["appId"].as_str().expect("appId"),
            password["secretText"].as_str().expect("secret"),
            "https://management.azure.com/.default",
        )
        .await;
    assert_eq!(
        (status, crate::support::error_code(&body)),
        (401, 7000229),
        "{body}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn directory_objects_get_by_ids_names_principals() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (object_id, app_id) = register_app(&sim, &admin, "named", None).await;
    let (_, sp) = sim
        .graph(
            Method::GET,
            &format!("servicePrincipals(appId='{app_id}')"),
            &admin,
            None,
        )
        .await;
    let sp_id = sp["id"].as_str().expect("id").to_string();
    let missing = uuid::Uuid::new_v4().to_string();
    let body = json!({"ids": [sp_id, object_id, missing], "types": ["user", "group", "servicePrincipal", "directoryObjectPartnerReference"]});
    let (status, found) = sim
        .graph(
            Method::POST,
            "directoryObjects/getByIds",
            &admin,
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    let value = found["value"].as_array().expect("value");
    assert_eq!(
        value.len(),
        1,
        "only the requested types, unknown ids left out: {found}"
    );
    assert_eq!(value[0]["@odata.type"], "#microsoft.graph.servicePrincipal");
    assert_eq!(value[0]["servicePrincipalNames"][0], app_id.as_str());
    let (status, all) = sim
        .graph(
            Method::POST,
            "directoryObjects/getByIds",
            &admin,
            Some(json!({"ids": [sp_id, object_id]})),
        )
        .await;
    assert_eq!(
        (status, all["value"].as_array().map(Vec::len)),
        (200, Some(2))
    );
    let (status, bad) = sim
        .graph(
            Method::POST,
            "directoryObjects/getByIds",
            &admin,
            Some(json!({"types": []})),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("Request_BadRequest"))
    );
    sim.stop().await;
}
