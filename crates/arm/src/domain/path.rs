//! What an ARM request path addresses (spec/arm.md §1.1), matched case-insensitively with the
//! caller's casing kept for echoing.

/// The resource or collection a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    MetadataEndpoints,
    Tenants,
    Subscriptions,
    Subscription {
        sub: String,
    },
    ResourceGroups {
        sub: String,
    },
    ResourceGroup {
        sub: String,
        rg: String,
    },
    GroupResources {
        sub: String,
        rg: String,
    },
    OperationResult {
        sub: String,
        token: String,
    },
    Identities {
        sub: String,
        rg: Option<String>,
    },
    Identity {
        sub: String,
        rg: String,
        name: String,
    },
    RoleAssignments {
        scope: String,
    },
    RoleAssignment {
        scope: String,
        name: String,
    },
    RoleDefinitions {
        scope: String,
    },
    RoleDefinition {
        scope: String,
        id: String,
    },
    Providers {
        sub: String,
    },
    /// `/subscriptions/{sub}/resources`: every top-level resource.
    SubscriptionResources {
        sub: String,
    },
    Provider {
        sub: String,
        namespace: String,
    },
    /// `POST .../providers/{namespace}/register`.
    ProviderRegistration {
        sub: String,
        namespace: String,
    },
    VirtualMachines {
        sub: String,
        rg: Option<String>,
    },
    VirtualMachine {
        sub: String,
        rg: String,
        name: String,
    },
    /// `{scope}/providers/Microsoft.ManagedIdentity/identities/default`.
    SystemIdentity {
        scope: String,
    },
    FederatedCredentials {
        sub: String,
        rg: String,
        identity: String,
    },
    FederatedCredential {
        sub: String,
        rg: String,
        identity: String,
        name: String,
    },
    /// `/_sim/vms/{name or id}` (simulator API).
    SimVm {
        key: String,
    },
    Unknown,
}

/// Which api-version family a target belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFamily {
    /// Types ARM itself owns: `InvalidApiVersionParameter` on a bad version.
    Resources,
    ManagedIdentity,
    Authorization,
    /// `/metadata/endpoints`: every version picks a shape.
    Metadata,
    Compute,
}

impl ApiFamily {
    /// The oldest version accepted; every well-formed later version is accepted too, since SDKs
    /// move forward quickly (spec/arm.md §1.2).
    pub fn oldest(self) -> &'static str {
        match self {
            Self::Resources => "2014-04-01",
            Self::ManagedIdentity => "2015-08-31",
            Self::Authorization => "2015-07-01",
            Self::Metadata => "0000-00-00",
            Self::Compute => "2015-06-15",
        }
    }

    pub fn examples(self) -> &'static str {
        match self {
            Self::Resources => "2021-04-01, 2022-12-01, 2024-11-01, 2025-04-01",
            Self::ManagedIdentity => "2018-11-30, 2023-01-31, 2024-11-30, 2025-05-31-preview",
            Self::Authorization => "2015-07-01, 2018-01-01-preview, 2020-04-01-preview, 2022-04-01",
            Self::Metadata => "2015-01-01, 2019-05-01, 2022-09-01",
            Self::Compute => "2018-06-01, 2023-09-01, 2024-11-01, 2026-04-01",
        }
    }
}

/// Whether `version` is well formed (`YYYY-MM-DD` with an optional `-preview`-style suffix) and
/// not older than the family's oldest.
pub fn api_version_ok(family: ApiFamily, version: &str) -> bool {
    if family == ApiFamily::Metadata {
        return !version.is_empty() && version.len() <= 32;
    }
    // `get`, not `split_at`: the version is the caller's text and byte 10 may fall inside a
    // character.
    let (date, suffix) = match (version.get(..10), version.get(10..)) {
        (Some(date), Some(suffix)) => (date, suffix),
        _ => return false,
    };
    let well_formed = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && (suffix.is_empty()
            || ["-preview", "-beta", "-privatepreview", "-alpha"]
                .iter()
                .any(|s| suffix.eq_ignore_ascii_case(s)));
    well_formed && date >= family.oldest()
}

impl Target {
    /// The bare type name ARM's `NoRegisteredProviderFound` names (spec/arm.md §1.2).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Identities { .. } | Self::Identity { .. } => "userAssignedIdentities",
            Self::SystemIdentity { .. } => "identities",
            Self::FederatedCredentials { .. } | Self::FederatedCredential { .. } => {
                "userAssignedIdentities/federatedIdentityCredentials"
            }
            Self::VirtualMachines { .. } | Self::VirtualMachine { .. } => "virtualMachines",
            Self::RoleAssignments { .. } | Self::RoleAssignment { .. } => "roleAssignments",
            Self::RoleDefinitions { .. } | Self::RoleDefinition { .. } => "roleDefinitions",
            _ => "resourceGroups",
        }
    }

    pub fn family(&self) -> ApiFamily {
        match self {
            Self::MetadataEndpoints => ApiFamily::Metadata,
            Self::Identities { .. } | Self::Identity { .. } | Self::SystemIdentity { .. } => {
                ApiFamily::ManagedIdentity
            }
            Self::VirtualMachines { .. } | Self::VirtualMachine { .. } => ApiFamily::Compute,
            Self::FederatedCredentials { .. } | Self::FederatedCredential { .. } => {
                ApiFamily::ManagedIdentity
            }
            Self::RoleAssignments { .. }
            | Self::RoleAssignment { .. }
            | Self::RoleDefinitions { .. }
            | Self::RoleDefinition { .. } => ApiFamily::Authorization,
            _ => ApiFamily::Resources,
        }
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Parses a (slash-collapsed) request path.
pub fn parse(path: &str) -> Target {
    let trimmed = path.trim_end_matches('/');
    // Extension resources of Microsoft.Authorization at any scope: the scope is everything before
    // the last `/providers/Microsoft.Authorization/`.
    let lower = trimmed.to_ascii_lowercase();
    if let Some(key) = trimmed.strip_prefix("/_sim/vms/").filter(|k| !k.is_empty()) {
        return Target::SimVm {
            key: key.to_string(),
        };
    }
    if let Some(at) = lower.rfind("/providers/microsoft.authorization/") {
        let scope = if at == 0 {
            "/".to_string()
        } else {
            trimmed[..at].to_string()
        };
        let rest: Vec<&str> = trimmed[at + "/providers/microsoft.authorization/".len()..]
            .split('/')
            .collect();
        let target = match rest.as_slice() {
            [kind] if eq(kind, "roleAssignments") => Target::RoleAssignments { scope },
            [kind, name] if eq(kind, "roleAssignments") => Target::RoleAssignment {
                scope,
                name: (*name).to_string(),
            },
            [kind] if eq(kind, "roleDefinitions") => Target::RoleDefinitions { scope },
            [kind, id] if eq(kind, "roleDefinitions") => Target::RoleDefinition {
                scope,
                id: (*id).to_string(),
            },
            _ => Target::Unknown,
        };
        // `/subscriptions/{sub}/providers/Microsoft.Authorization/register` is the provider's.
        if !matches!(rest.as_slice(), [r] if eq(r, "register")) {
            return target;
        }
    }
    if let Some(at) = lower.rfind("/providers/microsoft.managedidentity/identities/default")
        && at + "/providers/microsoft.managedidentity/identities/default".len() == lower.len()
        && at > 0
    {
        return Target::SystemIdentity {
            scope: trimmed[..at].to_string(),
        };
    }
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    match segments.as_slice() {
        [m, e] if eq(m, "metadata") && eq(e, "endpoints") => Target::MetadataEndpoints,
        [t] if eq(t, "tenants") => Target::Tenants,
        [s] if eq(s, "subscriptions") => Target::Subscriptions,
        [s, sub] if eq(s, "subscriptions") => Target::Subscription { sub: (*sub).into() },
        [s, sub, g] if eq(s, "subscriptions") && eq(g, "resourcegroups") => {
            Target::ResourceGroups { sub: (*sub).into() }
        }
        [s, sub, g, rg] if eq(s, "subscriptions") && eq(g, "resourcegroups") => {
            Target::ResourceGroup {
                sub: (*sub).into(),
                rg: (*rg).into(),
            }
        }
        [s, sub, g, rg, r]
            if eq(s, "subscriptions") && eq(g, "resourcegroups") && eq(r, "resources") =>
        {
            Target::GroupResources {
                sub: (*sub).into(),
                rg: (*rg).into(),
            }
        }
        [s, sub, o, token] if eq(s, "subscriptions") && eq(o, "operationresults") => {
            Target::OperationResult {
                sub: (*sub).into(),
                token: (*token).into(),
            }
        }
        [s, sub, p] if eq(s, "subscriptions") && eq(p, "providers") => {
            Target::Providers { sub: (*sub).into() }
        }
        [s, sub, r] if eq(s, "subscriptions") && eq(r, "resources") => {
            Target::SubscriptionResources { sub: (*sub).into() }
        }
        [s, sub, p, ns] if eq(s, "subscriptions") && eq(p, "providers") => Target::Provider {
            sub: (*sub).into(),
            namespace: (*ns).into(),
        },
        [s, sub, p, ns, r] if eq(s, "subscriptions") && eq(p, "providers") && eq(r, "register") => {
            Target::ProviderRegistration {
                sub: (*sub).into(),
                namespace: (*ns).into(),
            }
        }
        [s, sub, p, ns, t]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Target::Identities {
                sub: (*sub).into(),
                rg: None,
            }
        }
        [s, sub, g, rg, p, ns, t]
            if eq(s, "subscriptions")
                && eq(g, "resourcegroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Target::Identities {
                sub: (*sub).into(),
                rg: Some((*rg).into()),
            }
        }
        [s, sub, g, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(g, "resourcegroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Target::Identity {
                sub: (*sub).into(),
                rg: (*rg).into(),
                name: (*name).into(),
            }
        }
        [s, sub, g, rg, p, ns, t, name, f]
            if eq(s, "subscriptions")
                && eq(g, "resourcegroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities")
                && eq(f, "federatedIdentityCredentials") =>
        {
            Target::FederatedCredentials {
                sub: (*sub).into(),
                rg: (*rg).into(),
                identity: (*name).into(),
            }
        }
        [s, sub, g, rg, p, ns, t, name, f, fic]
            if eq(s, "subscriptions")
                && eq(g, "resourcegroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities")
                && eq(f, "federatedIdentityCredentials") =>
        {
            Target::FederatedCredential {
                sub: (*sub).into(),
                rg: (*rg).into(),
                identity: (*name).into(),
                name: (*fic).into(),
            }
        }
        [s, sub, p, ns, t]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && eq(t, "virtualMachines") =>
        {
            Target::VirtualMachines {
                sub: (*sub).into(),
                rg: None,
            }
        }
        [s, sub, g, rg, p, ns, t]
            if eq(s, "subscriptions")
                && eq(g, "resourcegroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && eq(t, "virtualMachines") =>
        {
            Target::VirtualMachines {
                sub: (*sub).into(),
                rg: Some((*rg).into()),
            }
        }
        [s, sub, g, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(g, "resourcegroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && eq(t, "virtualMachines") =>
        {
            Target::VirtualMachine {
                sub: (*sub).into(),
                rg: (*rg).into(),
                name: (*name).into(),
            }
        }
        _ => Target::Unknown,
    }
}

/// Virtual machine names: 1–64 characters of letters, digits, `-`, `_` and `.`, not starting
/// with `_` nor ending with `.` or `-`.
pub fn valid_vm_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('_')
        && !name.ends_with('.')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Resource-group names: 1–90 characters of letters, digits, `_ - . ( )`, not ending in `.`.
pub fn valid_resource_group_name(name: &str) -> bool {
    (1..=90).contains(&name.chars().count())
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'))
}

/// User-assigned identity names: 3–128 characters of letters, digits, `-` and `_`, starting
/// with a letter or digit.
pub fn valid_identity_name(name: &str) -> bool {
    misim_core::federation::letters_digits_name(name, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_case_insensitively() {
        assert_eq!(
            parse("/subscriptions/S/resourcegroups/RG"),
            Target::ResourceGroup {
                sub: "S".into(),
                rg: "RG".into()
            }
        );
        assert_eq!(
            parse(
                "/subscriptions/s/resourceGroups/rg/providers/microsoft.managedidentity/USERASSIGNEDIDENTITIES/id1/"
            ),
            Target::Identity {
                sub: "s".into(),
                rg: "rg".into(),
                name: "id1".into()
            }
        );
        assert_eq!(
            parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1/providers/Microsoft.Authorization/roleAssignments/x"),
            Target::RoleAssignment { scope: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1".into(), name: "x".into() }
        );
        assert_eq!(
            parse("/providers/Microsoft.Authorization/roleDefinitions"),
            Target::RoleDefinitions { scope: "/".into() }
        );
        assert_eq!(parse("/metadata/endpoints"), Target::MetadataEndpoints);
        assert_eq!(
            parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/x"),
            Target::Unknown
        );
    }

    #[test]
    fn api_versions() {
        assert!(api_version_ok(ApiFamily::ManagedIdentity, "2024-11-30"));
        assert!(api_version_ok(
            ApiFamily::ManagedIdentity,
            "2030-01-01-preview"
        ));
        assert!(!api_version_ok(ApiFamily::ManagedIdentity, "2014-01-01"));
        assert!(!api_version_ok(ApiFamily::Resources, "2021-4-01"));
        assert!(!api_version_ok(ApiFamily::Resources, "latest"));
        assert!(!api_version_ok(ApiFamily::Resources, "2021-04-01-garbage"));
        // Byte 10 inside a character: refused, not a panic.
        assert!(!api_version_ok(ApiFamily::Resources, "€€€€"));
        assert!(!api_version_ok(ApiFamily::Resources, "2022-01-0é"));
        assert!(!api_version_ok(ApiFamily::Resources, "2022-01-01é"));
    }

    #[test]
    fn names() {
        assert!(valid_resource_group_name("rg_(1).x"));
        assert!(!valid_resource_group_name("rg."));
        assert!(!valid_resource_group_name(""));
        assert!(!valid_resource_group_name("a/b"));
        assert!(valid_identity_name("app-mi_1"));
        assert!(!valid_identity_name("-x1"));
        assert!(!valid_identity_name("ab"));
        assert!(!valid_identity_name("a b c"));
    }
}
