//! Handlers for role assignments and role definitions.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::filter::{quoted, terms};
use super::{Call, ok_json, put_status};
use crate::domain::path::Target;
use crate::domain::rbac::Role;
use crate::error::ArmError;
use crate::service::{
    AssignmentFilter, AssignmentInput, RoleDefinitionInput, RoleListFilter, RoleView,
};
use crate::store::AssignmentRow;

pub async fn handle(call: &Call, target: Target) -> Result<Response, ArmError> {
    let m = &call.method;
    match target {
        Target::RoleAssignments { scope } if *m == Method::GET => {
            let filter = assignment_filter(call.query.get("$filter").map(String::as_str))?;
            let rows = call.arm.assignments(&call.caller, &scope, &filter).await?;
            call.page(rows, |r| assignment_json(call, r))
        }
        Target::RoleAssignment { scope, name } => assignment(call, &scope, &name).await,
        Target::RoleDefinitions { scope } if *m == Method::GET => {
            let filter = match call.query.get("$filter").map(String::as_str) {
                None => RoleListFilter::All,
                Some(filter) => parse_role_filter(filter)?,
            };
            let roles = call
                .arm
                .role_definitions(&call.caller, &scope, &filter)
                .await?;
            call.page(roles, |r| definition_json(call, &scope, r))
        }
        Target::RoleDefinition { scope, id } => definition(call, &scope, &id).await,
        _ => Err(ArmError::MethodNotAllowed(m.to_string())),
    }
}

fn assignment_filter(filter: Option<&str>) -> Result<AssignmentFilter, ArmError> {
    let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(AssignmentFilter::None);
    };
    let refuse = || {
        ArmError::InvalidParameter(format!(
            "The filter '{filter}' is not supported. Supported: atScope(), principalId eq '{{id}}', assignedTo('{{id}}'), and atScope() and assignedTo('{{id}}') (as `az role assignment list --include-groups` sends)."
        ))
    };
    // (atScope(), principal id, whether it came as assignedTo()).
    let (mut at_scope, mut principal) = (false, None);
    for term in terms(filter) {
        if term.eq_ignore_ascii_case("atScope()") && !at_scope {
            at_scope = true;
            continue;
        }
        let id = match term.strip_prefix("principalId eq ").and_then(quoted) {
            Some(id) => (id, false),
            None => term
                .strip_prefix("assignedTo(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(quoted)
                .map(|id| (id, true))
                .ok_or_else(refuse)?,
        };
        if principal.replace(id).is_some() {
            return Err(refuse());
        }
    }
    Ok(match (at_scope, principal) {
        (true, None) => AssignmentFilter::AtScope,
        (false, Some((id, _))) => AssignmentFilter::Principal(id),
        (true, Some((id, true))) => AssignmentFilter::AtScopePrincipal(id),
        // ARM does not combine atScope() with principalId eq (spec/arm.md §5.3).
        (true, Some((_, false))) => return Err(refuse()),
        (false, None) => AssignmentFilter::None,
    })
}

fn parse_role_filter(filter: &str) -> Result<RoleListFilter, ArmError> {
    let filter = filter.trim();
    if let Some(name) = filter.strip_prefix("roleName eq ").and_then(quoted) {
        return Ok(RoleListFilter::Name(name));
    }
    match filter.strip_prefix("type eq ").and_then(quoted).as_deref() {
        Some("BuiltInRole") => Ok(RoleListFilter::BuiltIn),
        Some("CustomRole") => Ok(RoleListFilter::Custom),
        _ => Err(ArmError::InvalidParameter(format!(
            "The filter '{filter}' is not supported. Supported: roleName eq '{{name}}', type eq 'BuiltInRole'|'CustomRole'."
        ))),
    }
}

fn time(t: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

fn assignment_json(_call: &Call, row: &AssignmentRow) -> Value {
    let id = if row.scope == "/" {
        format!(
            "/providers/Microsoft.Authorization/roleAssignments/{}",
            row.name
        )
    } else {
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            row.scope, row.name
        )
    };
    json!({
        "id": id,
        "name": row.name,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": row.role_definition_id,
            "principalId": row.principal_id,
            "principalType": row.principal_type,
            "scope": row.scope,
            "condition": row.condition,
            "conditionVersion": row.condition_version,
            "createdOn": time(row.created_at),
            "updatedOn": time(row.updated_at),
            "createdBy": row.created_by,
            "updatedBy": row.updated_by,
            "delegatedManagedIdentityResourceId": null,
            "description": row.description,
        }
    })
}

fn definition_json(call: &Call, scope: &str, view: &RoleView) -> Value {
    let role = view.role();
    let (kind, description, permissions, assignable, created, updated) = match role {
        Role::BuiltIn(r) => (
            "BuiltInRole",
            r.description.to_string(),
            json!([{"actions": r.permission.actions, "notActions": r.permission.not_actions, "dataActions": r.permission.data_actions, "notDataActions": []}]),
            json!(["/"]),
            (json!("2015-02-02T21:55:09.8806423Z"), Value::Null),
            (json!("2024-01-01T00:00:00.0000000Z"), Value::Null),
        ),
        Role::Custom(r) => (
            "CustomRole",
            r.description.clone(),
            json!(r.permissions),
            json!(r.assignable_scopes),
            (json!(time(r.created_at)), json!(r.created_by)),
            (json!(time(r.updated_at)), json!(r.updated_by)),
        ),
    };
    json!({
        "id": call.arm.role_definition_id(scope, role.guid()),
        "name": role.guid(),
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": role.name(),
            "type": kind,
            "description": description,
            "assignableScopes": assignable,
            "permissions": permissions,
            "createdOn": created.0,
            "updatedOn": updated.0,
            "createdBy": created.1,
            "updatedBy": updated.1,
        }
    })
}

/// One role definition: GET (built in or custom), PUT and DELETE (custom).
async fn definition(call: &Call, scope: &str, guid: &str) -> Result<Response, ArmError> {
    match call.method {
        Method::GET => {
            let role = call.arm.role_definition(&call.caller, scope, guid).await?;
            Ok(ok_json(StatusCode::OK, definition_json(call, scope, &role)))
        }
        Method::PUT => {
            let body = call.json_object()?;
            let properties = properties_of(&body)?;
            let field = |name: &str| properties.get(name).cloned().unwrap_or(Value::Null);
            let parse =
                |name: &str| ArmError::InvalidRequestContent(format!("'{name}' is malformed"));
            let input = RoleDefinitionInput {
                role_name: field("roleName").as_str().unwrap_or_default().to_string(),
                description: field("description")
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                permissions: serde_json::from_value(match field("permissions") {
                    Value::Null => json!([]),
                    other => other,
                })
                .map_err(|_| parse("permissions"))?,
                assignable_scopes: serde_json::from_value(match field("assignableScopes") {
                    Value::Null => json!([]),
                    other => other,
                })
                .map_err(|_| parse("assignableScopes"))?,
            };
            let (role, created) = call
                .arm
                .put_role_definition(&call.caller, scope, guid, input)
                .await?;
            Ok(ok_json(
                put_status(created),
                definition_json(call, scope, &role),
            ))
        }
        Method::DELETE => match call
            .arm
            .delete_role_definition(&call.caller, scope, guid)
            .await?
        {
            Some(role) => Ok(ok_json(StatusCode::OK, definition_json(call, scope, &role))),
            None => Ok(StatusCode::NO_CONTENT.into_response()),
        },
        ref other => Err(ArmError::MethodNotAllowed(other.to_string())),
    }
}

async fn assignment(call: &Call, scope: &str, name: &str) -> Result<Response, ArmError> {
    match call.method {
        Method::GET => Ok(ok_json(
            StatusCode::OK,
            assignment_json(call, &call.arm.assignment(&call.caller, scope, name).await?),
        )),
        Method::PUT => {
            // The URL is checked before the body, as ARM does.
            if uuid::Uuid::parse_str(name).is_err() {
                return Err(ArmError::InvalidRoleAssignmentId(name.to_string()));
            }
            let body = call.json_object()?;
            let properties = properties_of(&body)?;
            let text = |field: &str| -> Result<Option<String>, ArmError> {
                match properties.get(field) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(ArmError::InvalidRequestContent(format!(
                        "'{field}' must be a string"
                    ))),
                }
            };
            let role = text("roleDefinitionId")?.ok_or_else(|| {
                ArmError::InvalidParameter("The property 'roleDefinitionId' is required.".into())
            })?;
            let principal = text("principalId")?.ok_or_else(|| {
                ArmError::InvalidParameter("The property 'principalId' is required.".into())
            })?;
            let input = AssignmentInput {
                role_definition_id: role,
                principal_id: principal,
                principal_type: text("principalType")?,
                description: text("description")?,
                condition: text("condition")?,
                condition_version: text("conditionVersion")?,
            };
            let (row, created) = call
                .arm
                .put_assignment(&call.caller, scope, name, input)
                .await?;
            Ok(ok_json(put_status(created), assignment_json(call, &row)))
        }
        Method::DELETE => match call
            .arm
            .delete_assignment(&call.caller, scope, name)
            .await?
        {
            Some(row) => Ok(ok_json(StatusCode::OK, assignment_json(call, &row))),
            None => Ok(StatusCode::NO_CONTENT.into_response()),
        },
        ref other => Err(ArmError::MethodNotAllowed(other.to_string())),
    }
}

/// The `properties` object a PUT body must carry.
fn properties_of(
    body: &serde_json::Map<String, Value>,
) -> Result<&serde_json::Map<String, Value>, ArmError> {
    body.get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| ArmError::InvalidRequestContent("'properties' is required".into()))
}
