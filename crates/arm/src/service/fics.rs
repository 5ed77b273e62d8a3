//! Federated identity credentials: a child resource of a user-assigned identity (CRUD, at most
//! 20, issuer/subject/audiences validated; spec/tokens.md §6.1, spec/arm.md §3.5).

use serde_json::{Value, json};

use super::{Arm, KIND_IDENTITY};
use crate::auth::Caller;
use crate::domain::rbac::scope_key;
use crate::error::ArmError;
use crate::store::{ResourceRow, Store};

pub const KIND_FIC: &str = "federatedIdentityCredential";
/// Azure's limit per identity.
pub const MAX_FICS_PER_IDENTITY: usize = misim_core::federation::MAX_CREDENTIALS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FicInput {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

impl FicInput {
    fn validate(&self) -> Result<(), ArmError> {
        misim_core::federation::check_fields(&self.issuer, &self.subject, &self.audiences)
            .map_err(|m| ArmError::InvalidParameter(m.to_string()))
    }
}

impl Arm {
    fn fic_id(&self, rg: &str, identity: &str, name: &str) -> String {
        format!(
            "{}/federatedIdentityCredentials/{name}",
            self.identity_id(rg, identity)
        )
    }

    /// The FICs of an identity (id prefix within the group).
    async fn fics_of(
        &self,
        rg_name: &str,
        identity_id: &str,
    ) -> Result<Vec<ResourceRow>, ArmError> {
        let prefix = format!("{}/federatedidentitycredentials/", scope_key(identity_id));
        Ok(self
            .inner
            .store
            .resources(KIND_FIC, Some(rg_name))
            .await?
            .into_iter()
            .filter(|r| r.id_key.starts_with(&prefix))
            .collect())
    }

    pub async fn put_fic(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        identity: &str,
        name: &str,
        input: FicInput,
    ) -> Result<(ResourceRow, bool), ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        if !misim_core::federation::valid_name(name) {
            return Err(ArmError::InvalidResourceName {
                name: name.into(),
                rule: misim_core::federation::NAME_RULE,
            });
        }
        let id = self.fic_id(rg, identity, name);
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write",
            &id,
        )
        .await?;
        let parent = self.existing_identity(sub, rg, identity).await?;
        input.validate()?;
        let siblings = self.fics_of(&parent.resource_group, &parent.id).await?;
        let existing = siblings
            .iter()
            .find(|f| f.id_key == scope_key(&id))
            .cloned();
        let clash = siblings
            .iter()
            .filter(|f| f.id_key != scope_key(&id))
            .any(|f| {
                let p: Value = serde_json::from_str(&f.properties).unwrap_or_default();
                p["issuer"] == input.issuer.as_str() && p["subject"] == input.subject.as_str()
            });
        if clash {
            return Err(ArmError::InvalidParameter(
                "Issuer and subject combination already exists for this Managed Identity.".into(),
            ));
        }
        if existing.is_none() && siblings.len() >= MAX_FICS_PER_IDENTITY {
            return Err(ArmError::InvalidParameter(format!(
                "A managed identity can have at most {MAX_FICS_PER_IDENTITY} federated identity credentials."
            )));
        }
        let now = self.inner.clock.now_unix();
        let row = ResourceRow {
            id_key: scope_key(&id),
            id,
            kind: KIND_FIC.into(),
            resource_group: parent.resource_group.clone(),
            name: name.to_string(),
            location: parent.location.clone(),
            tags: "{}".into(),
            properties: json!({"issuer": input.issuer, "subject": input.subject, "audiences": input.audiences}).to_string(),
            state: "Succeeded".into(),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            created_by: existing.as_ref().map_or_else(|| caller.object_id.clone(), |e| e.created_by.clone()),
            updated_at: now,
            updated_by: caller.object_id.clone(),
        };
        // AAD holds the credential too: its token endpoint is where it is used.
        let payload = self.fic_payload(&parent, &row).await?;
        let mut tx = self.inner.store.begin().await?;
        Store::put_resource(&mut tx, &row).await?;
        if let Some(payload) = payload {
            Store::enqueue(&mut tx, "aad.put_fic", &payload).await?;
        }
        tx.commit().await?;
        self.invalidate_caches();
        self.deliver().await;
        Ok((row, existing.is_none()))
    }

    /// What AAD is sent of a federated credential: the identity's principal, the credential's
    /// name, issuer, subject and audiences (`None` if the identity has no principal).
    pub(super) async fn fic_payload(
        &self,
        identity: &ResourceRow,
        fic: &ResourceRow,
    ) -> Result<Option<Value>, ArmError> {
        let Some(principal) = self
            .inner
            .store
            .identities_of(&identity.id_key)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let properties: Value = serde_json::from_str(&fic.properties).unwrap_or_default();
        Ok(Some(json!({
            "objectId": principal.principal_id,
            "name": fic.name,
            "federatedCredential": {
                "issuer": properties["issuer"],
                "subject": properties["subject"],
                "audiences": properties["audiences"],
            },
        })))
    }

    pub async fn fic(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        identity: &str,
        name: &str,
    ) -> Result<ResourceRow, ArmError> {
        self.check_subscription(sub)?;
        let id = self.fic_id(rg, identity, name);
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read",
            &id,
        )
        .await?;
        self.existing_identity(sub, rg, identity).await?;
        self.resource_row(&scope_key(&id)).await?.filter(|r| r.kind == KIND_FIC).ok_or_else(|| ArmError::ResourceNotFound {
            kind: "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            name: name.to_string(),
            rg: rg.to_string(),
        })
    }

    pub async fn fics(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        identity: &str,
    ) -> Result<Vec<ResourceRow>, ArmError> {
        self.check_subscription(sub)?;
        let parent_id = self.identity_id(rg, identity);
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/read",
            &parent_id,
        )
        .await?;
        let parent = self.existing_identity(sub, rg, identity).await?;
        self.fics_of(&parent.resource_group, &parent.id).await
    }

    pub async fn delete_fic(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        identity: &str,
        name: &str,
    ) -> Result<bool, ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        let id = self.fic_id(rg, identity, name);
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/delete",
            &id,
        )
        .await?;
        let parent = self.existing_identity(sub, rg, identity).await?;
        let principal = self
            .inner
            .store
            .identities_of(&parent.id_key)
            .await?
            .into_iter()
            .next();
        let mut tx = self.inner.store.begin().await?;
        let deleted = Store::delete_resource(&mut tx, &scope_key(&id)).await?;
        if deleted && let Some(principal) = principal {
            Store::enqueue(
                &mut tx,
                "aad.delete_fic",
                &json!({"objectId": principal.principal_id, "name": name}),
            )
            .await?;
        }
        tx.commit().await?;
        self.invalidate_caches();
        self.deliver().await;
        Ok(deleted)
    }

    /// The FICs to delete with an identity (read before the deletion's transaction: an
    /// in-memory store has one connection).
    pub(super) async fn fics_of_identity(
        &self,
        identity: &ResourceRow,
    ) -> Result<Vec<ResourceRow>, ArmError> {
        debug_assert_eq!(identity.kind, KIND_IDENTITY);
        self.fics_of(&identity.resource_group, &identity.id).await
    }
}
