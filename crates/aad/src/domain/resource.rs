//! Which resources tokens can be issued for: `scope` (v2) and `resource` (v1) parsing and the
//! first-party resources Entra knows in every tenant.

/// A first-party resource known in every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WellKnownResource {
    pub app_id: &'static str,
    pub display_name: &'static str,
    pub uris: &'static [&'static str],
}

/// Microsoft Graph's application id.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

pub const WELL_KNOWN: &[WellKnownResource] = &[
    WellKnownResource {
        app_id: "797f4846-ba00-4fd7-ba43-dac1f8f63013",
        display_name: "Windows Azure Service Management API",
        uris: &[
            "https://management.azure.com",
            "https://management.core.windows.net",
        ],
    },
    WellKnownResource {
        app_id: GRAPH_APP_ID,
        display_name: "Microsoft Graph",
        uris: &["https://graph.microsoft.com"],
    },
    WellKnownResource {
        app_id: "cfa8b339-82a2-471a-a3c9-0fc0be7a4093",
        display_name: "Azure Key Vault",
        uris: &["https://vault.azure.net"],
    },
    WellKnownResource {
        app_id: "e406a681-f3d4-42a8-90b6-c2b029497af1",
        display_name: "Azure Storage",
        uris: &["https://storage.azure.com"],
    },
    WellKnownResource {
        app_id: "022907d3-0f1b-48f7-badc-1ba6abab6d66",
        display_name: "Azure SQL Database",
        uris: &["https://database.windows.net"],
    },
    WellKnownResource {
        app_id: "80369ed6-5f11-4dd9-bef3-692475845e77",
        display_name: "Azure Service Bus",
        uris: &[
            "https://servicebus.azure.net",
            "https://eventhubs.azure.net",
        ],
    },
    WellKnownResource {
        app_id: "7d312290-28c8-473c-a0ed-8e53749b6d6d",
        display_name: "Azure Cognitive Services",
        uris: &["https://cognitiveservices.azure.com"],
    },
    WellKnownResource {
        app_id: "123cd850-d9df-40bd-94d5-c9f07b7fa203",
        display_name: "Azure OSSRDBMS Database",
        uris: &["https://ossrdbms-aad.database.windows.net"],
    },
    WellKnownResource {
        app_id: "fb60f99c-7a34-4190-8149-302f77469936",
        display_name: "AAD Token Exchange",
        uris: &["api://AzureADTokenExchange"],
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
            .eq_ignore_ascii_case(resource.trim_end_matches('/'))
            || w.uris.iter().any(|u| same_resource(u, resource))
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
    }
}
