//! Built-in roles, scope containment and action matching (spec/arm.md §5).

/// A role definition's permission block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub actions: &'static [&'static str],
    pub not_actions: &'static [&'static str],
    pub data_actions: &'static [&'static str],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltInRole {
    pub guid: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub permission: Permission,
}

const fn role(
    guid: &'static str,
    name: &'static str,
    description: &'static str,
    actions: &'static [&'static str],
    not_actions: &'static [&'static str],
    data_actions: &'static [&'static str],
) -> BuiltInRole {
    BuiltInRole {
        guid,
        name,
        description,
        permission: Permission {
            actions,
            not_actions,
            data_actions,
        },
    }
}

pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";

pub const BUILT_IN_ROLES: &[BuiltInRole] = &[
    role(
        OWNER,
        "Owner",
        "Grants full access to manage all resources, including the ability to assign roles in Azure RBAC.",
        &["*"],
        &[],
        &[],
    ),
    role(
        "b24988ac-6180-42a0-ab88-20f7382dd24c",
        "Contributor",
        "Grants full access to manage all resources, but does not allow you to assign roles in Azure RBAC, manage assignments in Azure Blueprints, or share image galleries.",
        &["*"],
        &[
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
            "Microsoft.Blueprint/blueprintAssignments/write",
            "Microsoft.Blueprint/blueprintAssignments/delete",
            "Microsoft.Compute/galleries/share/action",
            "Microsoft.Purview/consents/write",
            "Microsoft.Purview/consents/delete",
        ],
        &[],
    ),
    role(
        "acdd72a7-3385-48ef-bd42-f606fba81ae7",
        "Reader",
        "View all resources, but does not allow you to make any changes.",
        &["*/read"],
        &[],
        &[],
    ),
    role(
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
        "User Access Administrator",
        "Lets you manage user access to Azure resources.",
        &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
        &[],
        &[],
    ),
    role(
        "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
        "Role Based Access Control Administrator",
        "Manage access to Azure resources by assigning roles using Azure RBAC.",
        &[
            "Microsoft.Authorization/roleAssignments/write",
            "Microsoft.Authorization/roleAssignments/delete",
            "*/read",
            "Microsoft.Support/*",
        ],
        &[],
        &[],
    ),
    role(
        "f1a07417-d97a-45cb-824c-7a7467783830",
        "Managed Identity Operator",
        "Read and Assign User Assigned Identity",
        &[
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Support/*",
        ],
        &[],
        &[],
    ),
    role(
        "e40ec5ca-96e0-45a2-b4ff-59039f2c2b59",
        "Managed Identity Contributor",
        "Create, Read, Update, and Delete User Assigned Identity",
        &[
            "Microsoft.ManagedIdentity/userAssignedIdentities/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/write",
            "Microsoft.ManagedIdentity/userAssignedIdentities/delete",
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write",
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/delete",
            "Microsoft.ManagedIdentity/userAssignedIdentities/revokeTokens/action",
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Support/*",
        ],
        &[],
        &[],
    ),
    role(
        "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
        "Virtual Machine Contributor",
        "Create and manage virtual machines, manage disks, install and run software, reset password of the root user of the virtual machine using VM extensions, and connect to the virtual machine using VM extensions.",
        &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Compute/availabilitySets/*",
            "Microsoft.Compute/locations/*",
            "Microsoft.Compute/virtualMachines/*",
            "Microsoft.Compute/virtualMachineScaleSets/*",
            "Microsoft.Compute/disks/write",
            "Microsoft.Compute/disks/read",
            "Microsoft.Compute/disks/delete",
            "Microsoft.DevTestLab/schedules/*",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Network/networkInterfaces/*",
            "Microsoft.Network/virtualNetworks/read",
            "Microsoft.Network/virtualNetworks/subnets/join/action",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Storage/storageAccounts/listKeys/action",
            "Microsoft.Storage/storageAccounts/read",
            "Microsoft.Support/*",
        ],
        &[],
        &[],
    ),
    role(
        "4633458b-17de-408a-b874-0445c86b69e6",
        "Key Vault Secrets User",
        "Read secret contents. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        &[],
        &[],
        &[
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
    ),
    role(
        "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
        "Key Vault Secrets Officer",
        "Perform any action on the secrets of a key vault, except manage permissions. Only works for key vaults that use the 'Azure role-based access control' permission model.",
        &[
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.KeyVault/checkNameAvailability/read",
            "Microsoft.KeyVault/deletedVaults/read",
            "Microsoft.KeyVault/locations/*/read",
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/operations/read",
        ],
        &[],
        &["Microsoft.KeyVault/vaults/secrets/*"],
    ),
    role(
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
        "Storage Blob Data Reader",
        "Read and list Azure Storage containers and blobs.",
        &[
            "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ],
        &[],
        &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
    ),
    role(
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "Storage Blob Data Contributor",
        "Read, write, and delete Azure Storage containers and blobs.",
        &[
            "Microsoft.Storage/storageAccounts/blobServices/containers/delete",
            "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/write",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ],
        &[],
        &[
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/move/action",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
        ],
    ),
];

/// One permission block of a custom role, as clients send it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionBlock {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub actions: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub not_actions: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data_actions: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub not_data_actions: Vec<String>,
}

/// A list given as `null` is empty (clients that serialize unset fields send it).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(<Option<Vec<String>> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// A custom role definition (spec/arm.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRole {
    pub guid: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<PermissionBlock>,
    pub assignable_scopes: Vec<String>,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
}

/// A role an assignment names: built in, or a custom one.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    BuiltIn(&'static BuiltInRole),
    Custom(&'a CustomRole),
}

impl Role<'_> {
    pub fn guid(&self) -> &str {
        match self {
            Self::BuiltIn(role) => role.guid,
            Self::Custom(role) => &role.guid,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::BuiltIn(role) => role.name,
            Self::Custom(role) => &role.name,
        }
    }

    /// Whether the role permits a control-plane `action`: some block's actions match it and
    /// that block's notActions do not.
    pub fn allows(&self, action: &str) -> bool {
        match self {
            Self::BuiltIn(role) => permission_allows(&role.permission, action),
            Self::Custom(role) => role.permissions.iter().any(|block| {
                block.actions.iter().any(|p| action_matches(p, action))
                    && !block.not_actions.iter().any(|p| action_matches(p, action))
            }),
        }
    }

    /// Whether the role may be assigned at `scope` (built-in roles anywhere).
    pub fn assignable_at(&self, scope: &str) -> bool {
        match self {
            Self::BuiltIn(_) => true,
            Self::Custom(role) => role
                .assignable_scopes
                .iter()
                .any(|assignable| scope_contains(assignable, scope)),
        }
    }
}

/// The role with `guid`: a built-in one, else one of `custom`.
pub fn find_role<'a>(guid: &str, custom: &'a [CustomRole]) -> Option<Role<'a>> {
    built_in(guid).map(Role::BuiltIn).or_else(|| {
        custom
            .iter()
            .find(|r| r.guid.eq_ignore_ascii_case(guid))
            .map(Role::Custom)
    })
}

pub fn built_in(guid: &str) -> Option<&'static BuiltInRole> {
    BUILT_IN_ROLES
        .iter()
        .find(|r| r.guid.eq_ignore_ascii_case(guid))
}

/// Case-insensitive wildcard match: `*` spans any characters (including `/`), and `/*/` may
/// also stand for a single `/`, so `.../userAssignedIdentities/*/assign/action` covers
/// `.../userAssignedIdentities/assign/action` as the documented role requires.
///
/// Patterns come from users (custom roles), so this runs in O(pattern × action) time without
/// recursion: one row of the match table per pattern position, from the end.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    // Most patterns are a plain action or `*`: no table for those.
    if pattern == "*" {
        return true;
    }
    if !pattern.contains('*') {
        return pattern.eq_ignore_ascii_case(action);
    }
    let (p, a) = (pattern.as_bytes(), action.as_bytes());
    let n = a.len();
    // `later[j]`: p[i + 1..] matches a[j..]; `later2[j]`: p[i + 2..] matches a[j..].
    let mut later2 = vec![false; n + 1];
    let mut later = vec![false; n + 1];
    later[n] = true; // the empty pattern matches only the empty rest
    let mut row = vec![false; n + 1];
    for i in (0..p.len()).rev() {
        for j in (0..=n).rev() {
            row[j] = if p[i] == b'*' {
                // Zero characters, or one more and still the star.
                later[j] || (j < n && row[j + 1])
            } else {
                let one = j < n && a[j].eq_ignore_ascii_case(&p[i]) && later[j + 1];
                // `/*/` standing for a single `/`: skip the `/*` and match the `/` here.
                let slash = p[i] == b'/'
                    && p.get(i + 1) == Some(&b'*')
                    && p.get(i + 2) == Some(&b'/')
                    && j < n
                    && a[j] == b'/'
                    && later2[j];
                one || slash
            };
        }
        std::mem::swap(&mut later2, &mut later);
        std::mem::swap(&mut later, &mut row);
    }
    later[0]
}

/// Whether one permission block grants `action` (NotActions subtract inside the block only).
pub fn permission_allows(permission: &Permission, action: &str) -> bool {
    permission.actions.iter().any(|p| action_matches(p, action))
        && !permission
            .not_actions
            .iter()
            .any(|p| action_matches(p, action))
}

/// Normalised form of a scope or resource id for containment checks: lower case, no trailing
/// slash, `resourcegroups` spelled one way.
pub fn scope_key(scope: &str) -> String {
    let trimmed = scope.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_ascii_lowercase()
    }
}

/// Whether `outer` is `inner` or one of its ancestors.
pub fn scope_contains(outer: &str, inner: &str) -> bool {
    let (o, i) = (scope_key(outer), scope_key(inner));
    o == "/" || i == o || (i.starts_with(&o) && i.as_bytes().get(o.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_zero_segment_slashes() {
        assert!(action_matches(
            "*",
            "Microsoft.Compute/virtualMachines/write"
        ));
        assert!(action_matches(
            "*/read",
            "Microsoft.Resources/subscriptions/resourceGroups/read"
        ));
        assert!(!action_matches(
            "*/read",
            "Microsoft.Resources/subscriptions/resourceGroups/write"
        ));
        assert!(action_matches(
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
            "microsoft.managedidentity/userassignedidentities/assign/action"
        ));
        assert!(action_matches(
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/read"
        ));
        assert!(action_matches(
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/roleAssignments/write"
        ));
        assert!(!action_matches(
            "Microsoft.Authorization/*",
            "Microsoft.Compute/virtualMachines/read"
        ));
        assert!(action_matches("a/*/b/*/c", "a/b/c"));
        assert!(action_matches("a/*/b/*/c", "A/x/y/B/z/C"));
        assert!(!action_matches("a/*/b", "a/c"));
        assert!(action_matches("", ""));
        assert!(!action_matches("", "x"));
        assert!(action_matches("**", ""));
        assert!(action_matches("/*/", "/"));
        assert!(!action_matches("*/read", "read"));
        assert!(action_matches("Microsoft.Compute/*", "microsoft.compute/"));
        assert!(action_matches(
            "Microsoft.Compute/virtualMachines/read",
            "MICROSOFT.COMPUTE/VIRTUALMACHINES/READ"
        ));
        assert!(!action_matches(
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Compute/virtualMachines/write"
        ));
    }

    #[test]
    fn hostile_patterns_cost_little_and_never_overflow() {
        // Many stars before a character that never comes: exponential for a backtracking
        // matcher (this test would not end), a small table here.
        let stars = format!("{}x", "*".repeat(200));
        let action = "a".repeat(250);
        assert!(!action_matches(&stars, &action));
        // A pattern far longer than any action (no recursion, so no stack to overflow).
        assert!(action_matches(
            &"*".repeat(100_000),
            "Microsoft.Compute/virtualMachines/read"
        ));
    }

    #[test]
    fn not_actions_subtract_within_a_block() {
        let contributor = built_in("b24988ac-6180-42a0-ab88-20f7382dd24c").expect("contributor");
        assert!(permission_allows(
            &contributor.permission,
            "Microsoft.ManagedIdentity/userAssignedIdentities/write"
        ));
        assert!(!permission_allows(
            &contributor.permission,
            "Microsoft.Authorization/roleAssignments/write"
        ));
        let secrets_user = built_in("4633458b-17de-408a-b874-0445c86b69e6").expect("kv");
        assert!(
            !permission_allows(&secrets_user.permission, "Microsoft.KeyVault/vaults/read"),
            "data roles grant no control-plane actions"
        );
    }

    #[test]
    fn scopes_contain_their_descendants_only() {
        assert!(scope_contains(
            "/subscriptions/S",
            "/subscriptions/s/resourceGroups/rg"
        ));
        assert!(scope_contains(
            "/subscriptions/s/resourcegroups/RG/",
            "/subscriptions/s/resourceGroups/rg/providers/x/y/z"
        ));
        assert!(!scope_contains(
            "/subscriptions/s/resourceGroups/rg",
            "/subscriptions/s/resourceGroups/rg2"
        ));
        assert!(scope_contains("/", "/subscriptions/s"));
        assert!(!scope_contains(
            "/subscriptions/s/resourceGroups/rg",
            "/subscriptions/s"
        ));
    }
}
