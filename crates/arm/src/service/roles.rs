//! Custom role definitions (spec/arm.md §5.1): created, replaced and deleted at a scope, used by
//! role assignments within their assignable scopes, and by RBAC like the built-in roles.

use std::sync::Arc;

use super::{Arm, is_guid};
use crate::auth::Caller;
use crate::domain::rbac::{self, CustomRole, PermissionBlock, Role, scope_key};
use crate::error::ArmError;
use crate::store::{RoleDefinitionRow, Store};

/// What a role definition PUT carries.
#[derive(Debug, Clone, Default)]
pub struct RoleDefinitionInput {
    pub role_name: String,
    pub description: String,
    pub permissions: Vec<PermissionBlock>,
    pub assignable_scopes: Vec<String>,
}

/// Which definitions a list shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleListFilter {
    All,
    Name(String),
    BuiltIn,
    Custom,
}

/// Longest role name Azure takes.
const MAX_ROLE_NAME_CHARS: usize = 512;
/// Bounds on what one definition holds (Azure has similar ones), and on custom roles in all:
/// patterns are matched on every authorization, so their size and number stay small.
const MAX_DESCRIPTION_CHARS: usize = 2048;
const MAX_PERMISSION_BLOCKS: usize = 10;
const MAX_PATTERNS: usize = 1000;
const MAX_PATTERN_CHARS: usize = 256;
const MAX_ASSIGNABLE_SCOPES: usize = 100;
const MAX_SCOPE_CHARS: usize = 2048;
const MAX_CUSTOM_ROLES: usize = 5000;

/// Refuses what no role definition may hold: too much, or patterns that are not action names
/// (letters, digits, `.`, `/`, `*`, `_`, `-`).
fn check_shape(input: &RoleDefinitionInput) -> Result<(), ArmError> {
    let refuse = |what: String| Err(ArmError::InvalidParameter(what));
    if input.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return refuse(format!(
            "The description is longer than {MAX_DESCRIPTION_CHARS} characters."
        ));
    }
    if input.permissions.len() > MAX_PERMISSION_BLOCKS {
        return refuse(format!(
            "A role definition holds at most {MAX_PERMISSION_BLOCKS} permission blocks."
        ));
    }
    if input.assignable_scopes.len() > MAX_ASSIGNABLE_SCOPES {
        return refuse(format!(
            "A role definition holds at most {MAX_ASSIGNABLE_SCOPES} assignable scopes."
        ));
    }
    if input
        .assignable_scopes
        .iter()
        .any(|scope| scope.len() > MAX_SCOPE_CHARS)
    {
        return refuse(format!(
            "An assignable scope is longer than {MAX_SCOPE_CHARS} characters."
        ));
    }
    let patterns: usize = input
        .permissions
        .iter()
        .map(|b| {
            b.actions.len() + b.not_actions.len() + b.data_actions.len() + b.not_data_actions.len()
        })
        .sum();
    if patterns > MAX_PATTERNS {
        return refuse(format!(
            "A role definition holds at most {MAX_PATTERNS} actions in all."
        ));
    }
    for block in &input.permissions {
        for list in [
            &block.actions,
            &block.not_actions,
            &block.data_actions,
            &block.not_data_actions,
        ] {
            for pattern in list {
                let valid = !pattern.is_empty()
                    && pattern.len() <= MAX_PATTERN_CHARS
                    && pattern
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".*/_-".contains(&b));
                if !valid {
                    let shown: String = pattern.chars().take(64).collect();
                    return refuse(format!(
                        "The action '{shown}' is not valid: 1 to {MAX_PATTERN_CHARS} letters, digits, '.', '/', '*', '_' or '-'."
                    ));
                }
            }
        }
    }
    Ok(())
}

impl Arm {
    /// The role with `guid`, built in or custom (role definitions are tenant-wide: the scope
    /// in the URL only has to be a valid one the caller may read at).
    pub async fn role_definition(
        &self,
        caller: &Caller,
        scope: &str,
        guid: &str,
    ) -> Result<RoleView, ArmError> {
        self.authorize_role_definitions(caller, scope).await?;
        let custom = self.custom_roles().await?;
        RoleView::find(guid, custom).ok_or_else(|| ArmError::RoleDefinitionNotFound(guid.into()))
    }

    /// The roles usable at `scope`: every built-in one, and the custom ones one of whose
    /// assignable scopes contains `scope`.
    pub async fn role_definitions(
        &self,
        caller: &Caller,
        scope: &str,
        filter: &RoleListFilter,
    ) -> Result<Vec<RoleView>, ArmError> {
        self.authorize_role_definitions(caller, scope).await?;
        let custom = self.custom_roles().await?;
        let built_in = rbac::BUILT_IN_ROLES.iter().map(RoleView::BuiltIn);
        let usable = (0..custom.len())
            .filter(|&i| Role::Custom(&custom[i]).assignable_at(scope))
            .map(|i| RoleView::Custom(custom.clone(), i));
        Ok(built_in
            .chain(usable)
            .filter(|view| match filter {
                RoleListFilter::All => true,
                RoleListFilter::Name(name) => view.role().name().eq_ignore_ascii_case(name),
                RoleListFilter::BuiltIn => matches!(view, RoleView::BuiltIn(_)),
                RoleListFilter::Custom => matches!(view, RoleView::Custom(..)),
            })
            .collect())
    }

    /// Creates or replaces a custom role. The caller needs `roleDefinitions/write` at the URL's
    /// scope and at every assignable scope; names are unique among custom roles and may not be
    /// a built-in role's.
    pub async fn put_role_definition(
        &self,
        caller: &Caller,
        scope: &str,
        guid: &str,
        input: RoleDefinitionInput,
    ) -> Result<(RoleView, bool), ArmError> {
        let _write = self.inner.writes.lock().await;
        if !is_guid(guid) {
            return Err(ArmError::InvalidParameter(format!(
                "The role definition ID '{guid}' is not valid. The role definition ID must be a GUID."
            )));
        }
        if rbac::built_in(guid).is_some() {
            return Err(ArmError::InvalidParameter(format!(
                "The role definition '{guid}' is a built-in role; built-in roles cannot be changed."
            )));
        }
        let name = input.role_name.trim();
        if name.is_empty() || name.chars().count() > MAX_ROLE_NAME_CHARS {
            return Err(ArmError::InvalidParameter(
                "The role definition needs a 'roleName' of 1 to 512 characters.".into(),
            ));
        }
        if input.assignable_scopes.is_empty() {
            return Err(ArmError::InvalidParameter(
                "The role definition needs at least one assignable scope in 'assignableScopes'."
                    .into(),
            ));
        }
        if input.permissions.is_empty() {
            return Err(ArmError::InvalidParameter(
                "The role definition needs at least one permission block in 'permissions'.".into(),
            ));
        }
        check_shape(&input)?;
        self.check_scope(scope).await?;
        let custom = self.custom_roles().await?;
        let existing = custom.iter().find(|r| r.guid.eq_ignore_ascii_case(guid));
        if existing.is_none() {
            self.refuse_unreadable(guid).await?;
        }
        if existing.is_none() && custom.len() >= MAX_CUSTOM_ROLES {
            return Err(ArmError::InvalidParameter(format!(
                "The directory holds {MAX_CUSTOM_ROLES} custom roles, the most it may."
            )));
        }
        // The caller needs write where the role is defined, where it will be assignable and,
        // for a change, where it was assignable: changing a role changes what every assignment
        // of it grants.
        let mut checked = vec![scope.to_string()];
        if let Some(existing) = existing {
            checked.extend(existing.assignable_scopes.iter().cloned());
        }
        for assignable in &input.assignable_scopes {
            if scope_key(assignable) == "/" {
                return Err(ArmError::InvalidParameter(
                    "The root scope '/' is reserved for built-in roles; use a subscription, resource group or resource scope.".into(),
                ));
            }
            self.check_scope(assignable).await?;
            checked.push(assignable.clone());
        }
        for at in &checked {
            self.authorize(caller, "Microsoft.Authorization/roleDefinitions/write", at)
                .await?;
        }
        if let Some(existing) = existing {
            self.check_role_change(existing, &input).await?;
        }
        if rbac::BUILT_IN_ROLES
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(name))
            || custom
                .iter()
                .any(|r| r.name.eq_ignore_ascii_case(name) && !r.guid.eq_ignore_ascii_case(guid))
        {
            return Err(ArmError::RoleDefinitionWithSameNameExists(name.to_string()));
        }
        let now = self.inner.clock.now_unix();
        let row = RoleDefinitionRow {
            guid: guid.to_ascii_lowercase(),
            role_name: name.to_string(),
            description: input.description.clone(),
            permissions: serde_json::to_string(&input.permissions)
                .map_err(|e| ArmError::Internal(e.to_string()))?,
            assignable_scopes: serde_json::to_string(&input.assignable_scopes)
                .map_err(|e| ArmError::Internal(e.to_string()))?,
            created_at: existing.map_or(now, |e| e.created_at),
            created_by: existing.map_or_else(|| caller.object_id.clone(), |e| e.created_by.clone()),
            updated_at: now,
            updated_by: caller.object_id.clone(),
        };
        let created = existing.is_none();
        let mut tx = self.inner.store.begin().await?;
        Store::put_role_definition(&mut tx, &row).await?;
        tx.commit().await?;
        self.invalidate_caches();
        let custom = self.custom_roles().await?;
        let view = RoleView::find(guid, custom)
            .ok_or_else(|| ArmError::Internal("a role definition just written is gone".into()))?;
        Ok((view, created))
    }

    /// Deletes a custom role: `Some` with what it was, `None` if there was none. A role still
    /// named by an assignment stays (409), as on Azure.
    pub async fn delete_role_definition(
        &self,
        caller: &Caller,
        scope: &str,
        guid: &str,
    ) -> Result<Option<RoleView>, ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_scope(scope).await?;
        self.authorize(
            caller,
            "Microsoft.Authorization/roleDefinitions/delete",
            scope,
        )
        .await?;
        if rbac::built_in(guid).is_some() {
            return Err(ArmError::InvalidParameter(format!(
                "The role definition '{guid}' is a built-in role; built-in roles cannot be deleted."
            )));
        }
        let custom = self.custom_roles().await?;
        let Some(view) = RoleView::find(guid, custom) else {
            self.refuse_unreadable(guid).await?;
            return Ok(None);
        };
        // As for a change: the caller needs the right wherever the role is assignable.
        if let Role::Custom(role) = view.role() {
            for at in &role.assignable_scopes {
                self.authorize(caller, "Microsoft.Authorization/roleDefinitions/delete", at)
                    .await?;
            }
        }
        if self
            .inner
            .store
            .assignments()
            .await?
            .iter()
            .any(|a| a.role_guid.eq_ignore_ascii_case(guid))
        {
            return Err(ArmError::RoleDefinitionHasAssignments);
        }
        let mut tx = self.inner.store.begin().await?;
        Store::delete_role_definition(&mut tx, &guid.to_ascii_lowercase()).await?;
        tx.commit().await?;
        self.invalidate_caches();
        Ok(Some(view))
    }
}

impl Arm {
    /// A stored role this version cannot read (left out of RBAC) is neither replaced nor
    /// deleted through the API: its assignments would come back to life unchecked.
    async fn refuse_unreadable(&self, guid: &str) -> Result<(), ArmError> {
        let stored = self.inner.store.role_definitions().await?;
        if stored.iter().any(|r| r.guid.eq_ignore_ascii_case(guid)) {
            return Err(ArmError::InvalidParameter(format!(
                "The stored role definition '{guid}' cannot be read by this version of misim; it is left as it is."
            )));
        }
        Ok(())
    }

    /// What a change of a custom role may not do to the assignments it has: leave one outside
    /// its assignable scopes, or let one with a condition delegate (misim does not evaluate
    /// conditions, so that would grant more than Azure does).
    async fn check_role_change(
        &self,
        existing: &CustomRole,
        input: &RoleDefinitionInput,
    ) -> Result<(), ArmError> {
        let changed = CustomRole {
            permissions: input.permissions.clone(),
            assignable_scopes: input.assignable_scopes.clone(),
            ..existing.clone()
        };
        let changed = Role::Custom(&changed);
        let delegates = changed.allows("Microsoft.Authorization/roleAssignments/write")
            || changed.allows("Microsoft.Authorization/roleAssignments/delete");
        for assignment in self.inner.store.assignments().await? {
            if !assignment.role_guid.eq_ignore_ascii_case(&existing.guid) {
                continue;
            }
            if !changed.assignable_at(&assignment.scope) {
                return Err(ArmError::InvalidParameter(format!(
                    "The role is assigned at '{}', which the new assignable scopes do not cover; remove that assignment first.",
                    assignment.scope
                )));
            }
            if delegates && assignment.condition.is_some() {
                return Err(ArmError::InvalidParameter(format!(
                    "The role has an assignment with a condition ('{}'), and misim does not evaluate conditions: it may not be given role assignment rights.",
                    assignment.name
                )));
            }
        }
        Ok(())
    }
}

/// A role as the HTTP layer shows it: a built-in one, or a custom one (shared with the cache).
#[derive(Debug, Clone)]
pub enum RoleView {
    BuiltIn(&'static rbac::BuiltInRole),
    Custom(Arc<Vec<CustomRole>>, usize),
}

impl RoleView {
    fn find(guid: &str, custom: Arc<Vec<CustomRole>>) -> Option<Self> {
        if let Some(role) = rbac::built_in(guid) {
            return Some(Self::BuiltIn(role));
        }
        let at = custom
            .iter()
            .position(|r| r.guid.eq_ignore_ascii_case(guid))?;
        Some(Self::Custom(custom, at))
    }

    pub fn role(&self) -> Role<'_> {
        match self {
            Self::BuiltIn(role) => Role::BuiltIn(role),
            Self::Custom(all, at) => Role::Custom(&all[*at]),
        }
    }
}
