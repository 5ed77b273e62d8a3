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
        self.check_scope(scope).await?;
        let mut checked = vec![scope.to_string()];
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
        let custom = self.custom_roles().await?;
        if rbac::BUILT_IN_ROLES
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(name))
            || custom
                .iter()
                .any(|r| r.name.eq_ignore_ascii_case(name) && !r.guid.eq_ignore_ascii_case(guid))
        {
            return Err(ArmError::RoleDefinitionWithSameNameExists(name.to_string()));
        }
        let existing = custom.iter().find(|r| r.guid.eq_ignore_ascii_case(guid));
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
            return Ok(None);
        };
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
