//! The `$filter` subset ARM's lists take: `field eq 'value'` terms joined by `and` (OData
//! quoting: `''` inside a value is one quote). Each list says which fields it knows; anything
//! else is refused rather than ignored, since a client that sent a filter trusts the answer.

use serde_json::Value;

use crate::error::ArmError;
use crate::store::ResourceRow;

/// `'value'` → `value`, with OData's doubled quotes undone; a lone quote inside is refused.
pub fn quoted(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    let value = inner.replace("''", "'");
    (value.matches('\'').count() * 2 == inner.matches('\'').count()).then_some(value)
}

/// The terms of `a and b and c` (the keyword in any case; quoted values keep theirs). Bytes
/// are compared, so any text splits without panicking: the cuts fall on ASCII spaces.
pub fn terms(filter: &str) -> Vec<&str> {
    const AND: &[u8] = b" and ";
    let bytes = filter.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut quoted) = (0, 0, false);
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted
            && bytes
                .get(i..i + AND.len())
                .is_some_and(|word| word.eq_ignore_ascii_case(AND))
        {
            out.push(filter[start..i].trim());
            i += AND.len();
            start = i;
            continue;
        }
        i += 1;
    }
    out.push(filter[start..].trim());
    out
}

/// `$filter` of the resource-group and generic-resource lists: by tag (`tagName eq 'k'`,
/// optionally `and tagValue eq 'v'`, as `az group list --tag` sends), by `resourceType`, `name`
/// and `resourceGroup` (generic resources only; `az resource list -g` sends the last).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResourceFilter {
    tag_name: Option<String>,
    tag_value: Option<String>,
    resource_type: Option<String>,
    name: Option<String>,
    resource_group: Option<String>,
}

impl ResourceFilter {
    /// `types` says whether `resourceType`, `name` and `resourceGroup` are known to this list.
    pub fn parse(filter: Option<&str>, types: bool) -> Result<Self, ArmError> {
        let mut parsed = Self::default();
        let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
            return Ok(parsed);
        };
        let supported = if types {
            "tagName eq '{name}' [and tagValue eq '{value}'], resourceType eq '{type}', name eq '{name}', resourceGroup eq '{name}'"
        } else {
            "tagName eq '{name}' [and tagValue eq '{value}']"
        };
        let refuse = || {
            ArmError::InvalidParameter(format!(
                "The filter '{filter}' is not supported. Supported: {supported}."
            ))
        };
        for term in terms(filter) {
            let (field, value) = term.split_once(" eq ").ok_or_else(refuse)?;
            let value = quoted(value).ok_or_else(refuse)?;
            let slot = match field.trim().to_ascii_lowercase().as_str() {
                "tagname" => &mut parsed.tag_name,
                "tagvalue" => &mut parsed.tag_value,
                "resourcetype" if types => &mut parsed.resource_type,
                "name" if types => &mut parsed.name,
                "resourcegroup" if types => &mut parsed.resource_group,
                _ => return Err(refuse()),
            };
            if slot.replace(value).is_some() {
                return Err(refuse());
            }
        }
        if parsed.tag_value.is_some() && parsed.tag_name.is_none() {
            return Err(refuse());
        }
        Ok(parsed)
    }

    /// Tag names match in any case, values exactly (as ARM treats tags); types and names in
    /// any case.
    pub fn matches(&self, row: &ResourceRow, resource_type: &str) -> bool {
        if let Some(name) = &self.tag_name {
            let tags: serde_json::Map<String, Value> =
                serde_json::from_str(&row.tags).unwrap_or_default();
            let tag = tags.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
            let value_ok = match (&self.tag_value, tag) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(wanted), Some((_, value))) => value.as_str() == Some(wanted.as_str()),
            };
            if !value_ok {
                return false;
            }
        }
        self.resource_type
            .as_ref()
            .is_none_or(|t| t.eq_ignore_ascii_case(resource_type))
            && self
                .name
                .as_ref()
                .is_none_or(|n| n.eq_ignore_ascii_case(&row.name))
            && self
                .resource_group
                .as_ref()
                .is_none_or(|g| g.eq_ignore_ascii_case(&row.resource_group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, tags: &str) -> ResourceRow {
        ResourceRow {
            id_key: name.into(),
            id: name.into(),
            kind: "resourceGroup".into(),
            resource_group: name.into(),
            name: name.into(),
            location: "eastus".into(),
            tags: tags.into(),
            properties: "{}".into(),
            state: "Succeeded".into(),
            created_at: 0,
            created_by: String::new(),
            updated_at: 0,
            updated_by: String::new(),
        }
    }

    #[test]
    fn terms_split_on_and_outside_quotes() {
        assert_eq!(
            terms("tagName eq 'a and b' AND tagValue eq 'x'"),
            ["tagName eq 'a and b'", "tagValue eq 'x'"]
        );
        assert_eq!(terms("atScope()"), ["atScope()"]);
        // Any text splits without panicking, multi-byte characters included.
        assert_eq!(terms("é and ‘env’ AND x"), ["é", "‘env’", "x"]);
        assert_eq!(terms("ü"), ["ü"]);
    }

    #[test]
    fn odd_text_is_refused_not_misread() {
        for bad in [
            "é",
            "tagName eq ‘env’",
            "tagName eq 'a and tagValue eq 'b'",
            "tagName eq 'it's'",
            "tagName eq 'unclosed",
        ] {
            assert!(ResourceFilter::parse(Some(bad), true).is_err(), "{bad}");
        }
        assert_eq!(quoted("'it''s'").as_deref(), Some("it's"));
        assert_eq!(quoted("'a'b'"), None);
    }

    #[test]
    fn tag_filters_match_names_in_any_case_and_values_exactly() {
        let tagged = row("rg1", r#"{"Env": "Prod"}"#);
        let untagged = row("rg2", "{}");
        let by_name = ResourceFilter::parse(Some("tagname eq 'env'"), false).expect("ok");
        assert!(by_name.matches(&tagged, ""));
        assert!(!by_name.matches(&untagged, ""));
        let by_value =
            ResourceFilter::parse(Some("tagName eq 'env' and tagValue eq 'Prod'"), false)
                .expect("ok");
        assert!(by_value.matches(&tagged, ""));
        let wrong_case =
            ResourceFilter::parse(Some("tagName eq 'env' and tagValue eq 'prod'"), false)
                .expect("ok");
        assert!(!wrong_case.matches(&tagged, ""));
        let quote = ResourceFilter::parse(Some("tagName eq 'it''s'"), false).expect("ok");
        assert!(quote.matches(&row("rg3", r#"{"it's": ""}"#), ""));
        assert!(
            ResourceFilter::parse(None, false)
                .expect("none")
                .matches(&untagged, "")
        );
    }

    #[test]
    fn types_and_names_only_where_the_list_knows_them() {
        let vm = row("vm1", "{}");
        let filter = ResourceFilter::parse(
            Some("resourceType eq 'microsoft.compute/virtualMachines' and name eq 'VM1'"),
            true,
        )
        .expect("ok");
        assert!(filter.matches(&vm, "Microsoft.Compute/virtualMachines"));
        let in_group = ResourceFilter::parse(Some("resourceGroup eq 'VM1'"), true).expect("ok");
        assert!(in_group.matches(&vm, ""));
        assert!(!in_group.matches(&row("other", "{}"), ""));
        assert!(!filter.matches(&vm, "Microsoft.ManagedIdentity/userAssignedIdentities"));
        for bad in [
            "resourceType eq 'x'",
            "tagValue eq 'v'",
            "tagName eq 'a' and tagName eq 'b'",
            "location eq 'eastus'",
            "tagName eq unquoted",
            "substringof('a', name)",
        ] {
            assert!(ResourceFilter::parse(Some(bad), false).is_err(), "{bad}");
        }
        assert!(ResourceFilter::parse(Some("location eq 'eastus'"), true).is_err());
    }
}
