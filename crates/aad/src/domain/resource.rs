//! Which resources tokens can be issued for: `scope` (v2) and `resource` (v1) parsing and the
//! first-party resources Entra knows in every tenant.

/// A first-party resource known in every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WellKnownResource {
    /// Its application id, where misim knows it (a client may name the resource by it).
    pub app_id: Option<&'static str>,
    pub display_name: &'static str,
    pub uris: &'static [&'static str],
    /// Host suffixes of the per-account endpoints Entra also takes as this resource, the
    /// token's audience being the endpoint asked for (`https://{account}.blob.core.windows.net`,
    /// which older SDKs request).
    pub account_hosts: &'static [&'static str],
}

/// Microsoft Graph's application id.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// "AAD Token Exchange": the audience of tokens that stand in as federated credentials.
pub const TOKEN_EXCHANGE_APP_ID: &str = "fb60f99c-7a34-4190-8149-302f77469936";

pub const WELL_KNOWN: &[WellKnownResource] = &[
    WellKnownResource {
        app_id: Some("797f4846-ba00-4fd7-ba43-dac1f8f63013"),
        display_name: "Windows Azure Service Management API",
        uris: &[
            "https://management.azure.com",
            "https://management.core.windows.net",
        ],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some(GRAPH_APP_ID),
        display_name: "Microsoft Graph",
        uris: &["https://graph.microsoft.com"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("cfa8b339-82a2-471a-a3c9-0fc0be7a4093"),
        display_name: "Azure Key Vault",
        uris: &["https://vault.azure.net"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("e406a681-f3d4-42a8-90b6-c2b029497af1"),
        display_name: "Azure Storage",
        uris: &["https://storage.azure.com"],
        account_hosts: &[
            ".blob.core.windows.net",
            ".queue.core.windows.net",
            ".table.core.windows.net",
            ".file.core.windows.net",
            ".dfs.core.windows.net",
        ],
    },
    WellKnownResource {
        app_id: Some("022907d3-0f1b-48f7-badc-1ba6abab6d66"),
        display_name: "Azure SQL Database",
        uris: &["https://database.windows.net"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("80369ed6-5f11-4dd9-bef3-692475845e77"),
        display_name: "Azure Service Bus",
        uris: &[
            "https://servicebus.azure.net",
            "https://eventhubs.azure.net",
        ],
        account_hosts: &[".servicebus.windows.net"],
    },
    WellKnownResource {
        app_id: Some("7d312290-28c8-473c-a0ed-8e53749b6d6d"),
        display_name: "Azure Cognitive Services",
        uris: &["https://cognitiveservices.azure.com"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("123cd850-d9df-40bd-94d5-c9f07b7fa203"),
        display_name: "Azure OSSRDBMS Database",
        uris: &["https://ossrdbms-aad.database.windows.net"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some(TOKEN_EXCHANGE_APP_ID),
        display_name: "AAD Token Exchange",
        uris: &["api://AzureADTokenExchange"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("35ffadb3-7fc1-497e-b61b-381d28e744cc"),
        display_name: "Azure App Configuration",
        uris: &["https://azconfig.io"],
        account_hosts: &[".azconfig.io"],
    },
    WellKnownResource {
        app_id: Some("a232010e-820c-4083-83bb-3ace5fc29d0b"),
        display_name: "Azure Cosmos DB",
        uris: &["https://cosmos.azure.com"],
        account_hosts: &[".documents.azure.com"],
    },
    WellKnownResource {
        app_id: Some("acca5fbb-b7e4-4009-81f1-37e38fd66d78"),
        display_name: "Azure Cache for Redis",
        uris: &["https://redis.azure.com"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("ca7f3f0b-7d91-482c-8e09-c5d840d0eac5"),
        display_name: "Log Analytics API",
        uris: &["https://api.loganalytics.io"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("4962773b-9cdb-44cf-a8bf-237846a00ab7"),
        display_name: "Azure Event Grid",
        uris: &["https://eventgrid.azure.net"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: Some("499b84ac-1321-427f-aa17-267ca6975798"),
        display_name: "Azure DevOps",
        uris: &["https://app.vssps.visualstudio.com"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: None,
        display_name: "Azure Container Registry",
        uris: &["https://containerregistry.azure.net"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: None,
        display_name: "Azure Monitor",
        uris: &["https://monitor.azure.com"],
        account_hosts: &[],
    },
    WellKnownResource {
        app_id: None,
        display_name: "Azure Batch",
        uris: &["https://batch.core.windows.net"],
        account_hosts: &[],
    },
];

/// Compares resource identifiers the way Entra matches them: case-insensitive, trailing
/// slashes ignored.
pub fn same_resource(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

pub fn well_known(resource: &str) -> Option<&'static WellKnownResource> {
    WELL_KNOWN.iter().find(|w| {
        w.app_id
            .is_some_and(|id| id.eq_ignore_ascii_case(resource.trim_end_matches('/')))
            || w.uris.iter().any(|u| same_resource(u, resource))
            || account_endpoint(resource, w.account_hosts)
    })
}

/// Whether `resource` is `https://{account}{suffix}[/]` for one of `suffixes`: an account name
/// of letters, digits and hyphens, nothing after the host.
fn account_endpoint(resource: &str, suffixes: &[&str]) -> bool {
    let Some(host) = resource
        .get(.."https://".len())
        .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
        .map(|_| resource["https://".len()..].trim_end_matches('/'))
    else {
        return false;
    };
    suffixes.iter().any(|suffix| {
        host.len() > suffix.len()
            && host
                .get(host.len() - suffix.len()..)
                .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
            && host[..host.len() - suffix.len()]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// Not a `<resource>/.default` scope (AADSTS70011).
    Invalid(String),
    /// Several resources in one request (AADSTS70011 as well; Entra names the first bad one).
    MultipleResources(String),
}

/// OIDC scopes some clients append to a client-credentials request; Entra ignores them.
const IGNORED_SCOPES: &[&str] = &["openid", "profile", "offline_access", "email"];

/// Extracts the resource from a v2 `scope`: exactly one `<resource>/.default`.
pub fn resource_from_scope(scope: &str) -> Result<String, ScopeError> {
    let mut resource: Option<String> = None;
    for item in scope.split([' ', '+']).filter(|s| !s.is_empty()) {
        if IGNORED_SCOPES.iter().any(|s| s.eq_ignore_ascii_case(item)) {
            continue;
        }
        let Some(base) = item.strip_suffix("/.default").filter(|b| !b.is_empty()) else {
            return Err(ScopeError::Invalid(item.to_string()));
        };
        match &resource {
            None => resource = Some(base.to_string()),
            Some(existing) if same_resource(existing, base) => {}
            Some(_) => return Err(ScopeError::MultipleResources(item.to_string())),
        }
    }
    resource.ok_or_else(|| ScopeError::Invalid(scope.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_yield_their_resource() {
        assert_eq!(
            resource_from_scope("https://management.azure.com/.default").as_deref(),
            Ok("https://management.azure.com")
        );
        assert_eq!(
            resource_from_scope(
                "https://management.core.windows.net//.default openid profile offline_access"
            )
            .as_deref(),
            Ok("https://management.core.windows.net/")
        );
        assert_eq!(
            resource_from_scope("api://x/.default api://X/.default").as_deref(),
            Ok("api://x")
        );
        assert!(matches!(
            resource_from_scope("User.Read"),
            Err(ScopeError::Invalid(_))
        ));
        assert!(matches!(
            resource_from_scope("/.default"),
            Err(ScopeError::Invalid(_))
        ));
        assert!(matches!(
            resource_from_scope("openid"),
            Err(ScopeError::Invalid(_))
        ));
        assert!(matches!(
            resource_from_scope("a/.default b/.default"),
            Err(ScopeError::MultipleResources(_))
        ));
    }

    #[test]
    fn well_known_resources_match_loosely() {
        assert!(well_known("https://MANAGEMENT.azure.com/").is_some());
        assert!(well_known("797f4846-ba00-4fd7-ba43-dac1f8f63013").is_some());
        assert!(well_known("https://example.com").is_none());
        // Per-account endpoints of services that take them; nothing else under their domains.
        for account in [
            "https://myaccount.blob.core.windows.net",
            "https://MyAccount.documents.azure.com/",
            "https://store-1.azconfig.io",
            "https://ns.servicebus.windows.net/",
        ] {
            assert!(well_known(account).is_some(), "{account}");
        }
        for not_one in [
            "https://blob.core.windows.net",
            "http://myaccount.blob.core.windows.net",
            "https://a.b.blob.core.windows.net",
            "https://myaccount.blob.core.windows.net/container",
            "https://evil.com/x.documents.azure.com",
            "https://é.azconfig.io",
            "https://",
        ] {
            assert!(well_known(not_one).is_none(), "{not_one}");
        }
        assert!(well_known("https://azconfig.io/").is_some());
        assert!(well_known("35ffadb3-7fc1-497e-b61b-381d28e744cc").is_some());
    }
}
