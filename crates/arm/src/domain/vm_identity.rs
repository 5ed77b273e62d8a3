//! The `identity` block of a VM (spec/arm.md §4.1–4.2): parsing the type spellings clients send,
//! and the transition rules of PUT (replace) and PATCH (merge, `null` removes).

use serde_json::{Map, Value};

/// The identities a VM should carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredIdentities {
    pub system: bool,
    /// User-assigned identity ids in the casing the client last sent.
    pub user: Vec<String>,
}

impl DesiredIdentities {
    /// Compute's canonical spelling (az compares these strings exactly).
    pub fn type_name(&self) -> &'static str {
        match (self.system, !self.user.is_empty()) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (false, false) => "None",
        }
    }

    pub fn has_user(&self, id: &str) -> bool {
        self.user.iter().any(|u| u.eq_ignore_ascii_case(id))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    Malformed(String),
    InvalidParameter(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    System,
    User,
    Both,
}

fn parse_kind(text: &str) -> Option<Kind> {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    match compact.as_str() {
        "none" => Some(Kind::None),
        "systemassigned" => Some(Kind::System),
        "userassigned" => Some(Kind::User),
        "systemassigned,userassigned" => Some(Kind::Both),
        _ => None,
    }
}

/// Applies an `identity` block to `current`. `patch` merges user identities (and `null`
/// removes one); a PUT replaces everything.
pub fn apply(
    current: &DesiredIdentities,
    block: Option<&Value>,
    patch: bool,
) -> Result<DesiredIdentities, IdentityError> {
    let block = match block {
        None | Some(Value::Null) => {
            return Ok(if patch {
                current.clone()
            } else {
                DesiredIdentities::default()
            });
        }
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(IdentityError::Malformed(
                "'identity' must be an object".into(),
            ));
        }
    };
    let kind = match block.get("type") {
        Some(Value::String(t)) => parse_kind(t).ok_or_else(|| IdentityError::InvalidParameter(format!("The identity type '{t}' is not valid. Use 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned' or 'None'.")))?,
        None | Some(Value::Null) => return Err(IdentityError::InvalidParameter("The identity type is required.".into())),
        Some(_) => return Err(IdentityError::Malformed("'identity.type' must be a string".into())),
    };
    let entries: Vec<(String, bool)> = match block.get("userAssignedIdentities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => entries(map)?,
        Some(_) => {
            return Err(IdentityError::Malformed(
                "'identity.userAssignedIdentities' must be an object".into(),
            ));
        }
    };
    let wants_user = matches!(kind, Kind::User | Kind::Both);
    if !wants_user && entries.iter().any(|(_, keep)| *keep) {
        return Err(IdentityError::InvalidParameter("ResourceIdentity identityIds should not be provided if the type is \"SystemAssigned\" or \"None\".".into()));
    }
    let mut user: Vec<String> = if patch && wants_user {
        current.user.clone()
    } else {
        Vec::new()
    };
    for (id, keep) in entries {
        user.retain(|u| !u.eq_ignore_ascii_case(&id));
        if keep && wants_user {
            user.push(id);
        }
    }
    if wants_user && user.is_empty() {
        return Err(IdentityError::InvalidParameter("The identity type 'UserAssigned' needs at least one entry in 'userAssignedIdentities'.".into()));
    }
    Ok(DesiredIdentities {
        system: matches!(kind, Kind::System | Kind::Both),
        user,
    })
}

fn entries(map: &Map<String, Value>) -> Result<Vec<(String, bool)>, IdentityError> {
    map.iter()
        .map(|(id, value)| match value {
            Value::Null => Ok((id.clone(), false)),
            Value::Object(_) => Ok((id.clone(), true)),
            _ => Err(IdentityError::Malformed(format!(
                "the value for '{id}' must be an object or null"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a";
    const B: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/b";

    fn both() -> DesiredIdentities {
        DesiredIdentities {
            system: true,
            user: vec![A.into(), B.into()],
        }
    }

    #[test]
    fn patch_merges_and_null_removes() {
        let added = apply(
            &DesiredIdentities {
                system: true,
                user: vec![A.into()],
            },
            Some(
                &json!({"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {B: {}}}),
            ),
            true,
        )
        .expect("ok");
        assert_eq!(added, both());
        assert_eq!(added.type_name(), "SystemAssigned, UserAssigned");
        let removed = apply(&both(), Some(&json!({"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {B.to_uppercase(): null}})), true).expect("ok");
        assert_eq!(
            removed.user,
            vec![A.to_string()],
            "null removes, matched case-insensitively"
        );
    }

    #[test]
    fn system_assigned_alone_drops_user_identities() {
        assert_eq!(
            apply(&both(), Some(&json!({"type": "SystemAssigned"})), true).expect("ok"),
            DesiredIdentities {
                system: true,
                user: vec![]
            }
        );
        assert_eq!(
            apply(&both(), Some(&json!({"type": "None"})), true).expect("ok"),
            DesiredIdentities::default()
        );
        let user_only = apply(&both(), Some(&json!({"type": "userassigned"})), true).expect("ok");
        assert_eq!(
            user_only,
            DesiredIdentities {
                system: false,
                user: vec![A.into(), B.into()]
            }
        );
    }

    #[test]
    fn put_replaces_and_absent_block_means_none() {
        assert_eq!(
            apply(&both(), None, false).expect("ok"),
            DesiredIdentities::default()
        );
        assert_eq!(apply(&both(), None, true).expect("ok"), both());
        assert_eq!(
            apply(
                &both(),
                Some(&json!({"type": "UserAssigned", "userAssignedIdentities": {B: {}}})),
                false
            )
            .expect("ok")
            .user,
            vec![B.to_string()]
        );
    }

    #[test]
    fn invalid_blocks_are_rejected() {
        let current = DesiredIdentities::default();
        for block in [
            json!({"type": "SystemAssigned", "userAssignedIdentities": {A: {}}}),
            json!({"type": "UserAssigned", "userAssignedIdentities": {}}),
            json!({"type": "UserAssigned"}),
            json!({"type": "Magic"}),
            json!({}),
        ] {
            assert!(
                matches!(
                    apply(&current, Some(&block), false),
                    Err(IdentityError::InvalidParameter(_))
                ),
                "{block}"
            );
        }
        for block in [
            json!("SystemAssigned"),
            json!({"type": 1}),
            json!({"type": "UserAssigned", "userAssignedIdentities": {A: 5}}),
        ] {
            assert!(
                matches!(
                    apply(&current, Some(&block), false),
                    Err(IdentityError::Malformed(_))
                ),
                "{block}"
            );
        }
    }
}
