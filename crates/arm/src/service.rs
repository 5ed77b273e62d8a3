//! The `Arm` facade: one method per use case. Authorization happens here (every use case names
//! its action and scope); each change is written with its follow-up work (outbox rows) in one
//! transaction, then delivered at once; the worker retries what failed.

use std::sync::Arc;
use std::time::Duration;

use misim_core::Clock;
use misim_core::cache::ReadCache;
use misim_core::crypto::{RsaKey, blocking};
use misim_core::events::{DEFAULT_RETENTION, Draft, EventLog};
use misim_core::internal::{ManagedIdentityCertificate, ManagedIdentityPrincipal};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Caller;
use crate::domain::path::{valid_identity_name, valid_resource_group_name};
use crate::domain::rbac::{self, OWNER, scope_contains, scope_key};
use crate::error::ArmError;
use crate::ports::{Directory, Host};
use crate::store::{AssignmentRow, IdentityRow, ResourceRow, Store};

mod fics;
mod roles;
mod sim;
mod vms;

pub use fics::{FicInput, KIND_FIC, MAX_FICS_PER_IDENTITY};
pub use roles::{RoleDefinitionInput, RoleListFilter, RoleView};
pub use sim::{CREDENTIAL_ROLL_DAYS, Cursor, parse_duration};

pub use vms::{IMDS_PORT_TAG, KIND_VM, VmInput, VmView, WriteConditions};

pub const KIND_GROUP: &str = "resourceGroup";
pub const KIND_IDENTITY: &str = "userAssignedIdentity";
/// Validity of an identity certificate (simulated time); Azure rolls it at 45 days.
pub const IDENTITY_CERT_DAYS: i64 = 90;

#[derive(Debug, Clone)]
pub struct ArmConfig {
    /// ARM's public URL (nextLinks, operation URLs).
    pub public_url: String,
    /// AAD's authority host and Graph base, for `/metadata/endpoints`.
    pub aad_url: String,
    pub graph_url: String,
    pub tenant_id: String,
    /// The bootstrap admin: Owner on the subscription.
    pub admin_object_id: String,
    /// RSA keys kept pre-generated (and persisted) for new identities.
    pub key_pool_size: i64,
    /// The subscription id for a new data dir (docker deployments pin it); random when `None`.
    pub subscription_id: Option<String>,
    /// Validity of an identity certificate and the age at which it rolls (simulated days).
    pub identity_cert_days: i64,
    pub identity_cert_roll_days: i64,
}

impl ArmConfig {
    /// Azure's periods: certificates valid 90 days, rolled at 45.
    pub const DEFAULT_CERT_DAYS: i64 = IDENTITY_CERT_DAYS;
    pub const DEFAULT_ROLL_DAYS: i64 = CREDENTIAL_ROLL_DAYS;
}

#[derive(Clone)]
pub struct Arm {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<Clock>,
    config: ArmConfig,
    subscription_id: String,
    directory: Arc<dyn Directory>,
    host: Arc<dyn Host>,
    /// Writes run one at a time: two concurrent PUTs of one resource must not both mint a
    /// principal (SQLite has a single writer anyway; ARM writes are not the hot path).
    writes: tokio::sync::Mutex<()>,
    /// One delivery pass at a time keeps outbox order.
    delivery: tokio::sync::Mutex<()>,
    /// One clock move at a time: each reads the offset and sets offset + by on every service,
    /// and two at once would set them out of order (the later one refused as backwards).
    clock_moves: tokio::sync::Mutex<()>,
    wake_worker: Notify,
    /// Role assignments by lower-case principal id; cleared on every write.
    assignments: ReadCache<Arc<Vec<AssignmentRow>>>,
    /// Resource rows by id key (`None`: known absent); cleared on every write.
    resources: ReadCache<Option<ResourceRow>>,
    /// Every custom role definition (one entry); cleared on every write.
    custom_roles: ReadCache<Arc<Vec<rbac::CustomRole>>>,
    wake_key_pool: Notify,
    events: EventLog,
    /// AAD's and IMDS's simulator APIs (events, clock, faults); set by the binary.
    sim_peers: std::sync::OnceLock<crate::ports::SimPeers>,
}

const CLOCK_SETTING: &str = "clock_offset_secs";
/// Entries each read cache (role assignments by principal, resource rows) holds before it
/// starts over.
const CACHED_READS: usize = 50_000;

/// Location and tags of a tracked resource PUT.
#[derive(Debug, Clone)]
pub struct TrackedInput {
    pub location: String,
    pub tags: Map<String, Value>,
}

/// A user-assigned identity as ARM shows it.
#[derive(Debug, Clone)]
pub struct IdentityView {
    pub resource: ResourceRow,
    pub principal_id: String,
    pub client_id: String,
}

/// The body of a role-assignment PUT.
#[derive(Debug, Clone)]
pub struct AssignmentInput {
    pub role_definition_id: String,
    pub principal_id: String,
    pub principal_type: Option<String>,
    pub description: Option<String>,
    /// An ABAC condition, stored and shown, not evaluated (spec/arm.md §5.3).
    pub condition: Option<String>,
    pub condition_version: Option<String>,
}

/// A principal minted for a managed identity, not yet written.
struct MintedPrincipal {
    identity: IdentityRow,
    outbox: Vec<(&'static str, Value)>,
}

impl MintedPrincipal {
    async fn write(&self, tx: &mut crate::store::Tx<'_>) -> Result<(), ArmError> {
        Store::insert_identity(tx, &self.identity).await?;
        for (action, payload) in &self.outbox {
            Store::enqueue(tx, action, payload).await?;
        }
        Ok(())
    }
}

/// `$filter` of role-assignment lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentFilter {
    None,
    AtScope,
    Principal(String),
    /// Both: what applies at the scope to one principal.
    AtScopePrincipal(String),
}

fn normalize_location(location: &str) -> String {
    location
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn is_guid(text: &str) -> bool {
    Uuid::parse_str(text).is_ok()
}

impl Arm {
    /// Opens ARM on its store: seeds the subscription and the admin's Owner assignment.
    pub async fn open(
        store: Store,
        clock: Arc<Clock>,
        config: ArmConfig,
        directory: Arc<dyn Directory>,
        host: Arc<dyn Host>,
    ) -> Result<Self, ArmError> {
        let wanted = config
            .subscription_id
            .as_deref()
            .map(|id| {
                Uuid::parse_str(id).map_err(|_| {
                    ArmError::Internal(format!("the subscription id '{id}' is not a GUID"))
                })
            })
            .transpose()?;
        let subscription_id = match store.setting("subscription_id").await? {
            Some(id) => {
                if let Some(wanted) = wanted
                    && !id.eq_ignore_ascii_case(&wanted.to_string())
                {
                    return Err(ArmError::Internal(format!(
                        "this data dir holds subscription {id}, not the {wanted} asked for"
                    )));
                }
                id
            }
            None => {
                let id = wanted.unwrap_or_else(Uuid::new_v4).to_string();
                let mut tx = store.begin().await?;
                Store::set_setting(&mut tx, "subscription_id", &id).await?;
                Store::set_setting(&mut tx, "tenant_id", &config.tenant_id).await?;
                tx.commit().await?;
                id
            }
        };
        clock.restore(store.setting(CLOCK_SETTING).await?.as_deref());
        let events = EventLog::open(store.pool(), "arm", clock.clone(), DEFAULT_RETENTION).await?;
        let arm = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                subscription_id,
                directory,
                host,
                writes: tokio::sync::Mutex::new(()),
                delivery: tokio::sync::Mutex::new(()),
                clock_moves: tokio::sync::Mutex::new(()),
                wake_worker: Notify::new(),
                assignments: ReadCache::new(CACHED_READS),
                resources: ReadCache::new(CACHED_READS),
                custom_roles: ReadCache::new(1),
                wake_key_pool: Notify::new(),
                events,
                sim_peers: std::sync::OnceLock::new(),
            }),
        };
        arm.seed_admin_owner().await?;
        Ok(arm)
    }

    /// ARM's event log (the timeline's `arm` part).
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// Gives ARM its peers' simulator APIs (events, clock, faults).
    pub fn set_sim_peers(&self, peers: crate::ports::SimPeers) {
        let _ = self.inner.sim_peers.set(peers);
    }

    pub fn subscription_id(&self) -> &str {
        &self.inner.subscription_id
    }

    pub fn tenant_id(&self) -> &str {
        &self.inner.config.tenant_id
    }

    pub fn public_url(&self) -> &str {
        &self.inner.config.public_url
    }

    pub fn aad_url(&self) -> &str {
        &self.inner.config.aad_url
    }

    pub fn graph_url(&self) -> &str {
        &self.inner.config.graph_url
    }

    pub fn subscription_scope(&self) -> String {
        format!("/subscriptions/{}", self.inner.subscription_id)
    }

    async fn seed_admin_owner(&self) -> Result<(), ArmError> {
        let admin = self.inner.config.admin_object_id.clone();
        let scope = self.subscription_scope();
        let existing = self.inner.store.assignments_of(&admin).await?;
        if existing
            .iter()
            .any(|a| a.role_guid.eq_ignore_ascii_case(OWNER) && a.scope_key == scope_key(&scope))
        {
            return Ok(());
        }
        let name = Uuid::new_v4().to_string();
        let now = self.inner.clock.now_unix();
        let row = AssignmentRow {
            name_key: name.clone(),
            name,
            scope: scope.clone(),
            scope_key: scope_key(&scope),
            role_definition_id: self.role_definition_id(&scope, OWNER),
            role_guid: OWNER.into(),
            principal_id: admin,
            principal_type: "ServicePrincipal".into(),
            description: Some("misim bootstrap admin".into()),
            condition: None,
            condition_version: None,
            created_at: now,
            created_by: "misim".into(),
            updated_at: now,
            updated_by: "misim".into(),
        };
        let mut tx = self.inner.store.begin().await?;
        Store::insert_assignment(&mut tx, &row).await?;
        tx.commit().await?;
        self.invalidate_caches();
        Ok(())
    }

    /// Runs the outbox worker and the key-pool filler until `shutdown`.
    /// Re-sends AAD and IMDS what ARM holds (idempotent puts), so a peer that lost state — a
    /// deleted `aad.db`/`imds.db`, a restarted split-mode service — matches ARM again.
    pub async fn reconcile(&self) -> Result<(), ArmError> {
        // Read first: an in-memory store has a single connection, which the transaction takes.
        let identities = self.inner.store.identities().await?;
        let vms = self.inner.store.resources(KIND_VM, None).await?;
        let mut fics = Vec::new();
        for fic in self.inner.store.resources(KIND_FIC, None).await? {
            let parent = fic
                .id_key
                .rsplit_once("/federatedidentitycredentials/")
                .map(|(p, _)| p.to_string());
            if let Some(parent) = parent
                && let Some(identity) = self.resource_row(&parent).await?
                && let Some(payload) = self.fic_payload(&identity, &fic).await?
            {
                fics.push(payload);
            }
        }
        let mut tx = self.inner.store.begin().await?;
        Store::drop_pending_puts(&mut tx).await?;
        for identity in &identities {
            let principal = ManagedIdentityPrincipal {
                app_id: identity.client_id.clone(),
                display_name: identity.display_name.clone(),
                resource_id: identity.mirid.clone(),
                user_assigned: identity.user_assigned,
            };
            let certificate = ManagedIdentityCertificate {
                certificate: misim_core::jose::b64std(&identity.cert_der),
            };
            Store::enqueue(
                &mut tx,
                "aad.put_principal",
                &json!({"objectId": identity.principal_id, "principal": principal}),
            )
            .await?;
            Store::enqueue(&mut tx, "aad.put_certificate", &json!({"objectId": identity.principal_id, "keyId": identity.cert_key_id, "certificate": certificate})).await?;
        }
        // After the principals they belong to (the outbox delivers in order); then AAD forgets
        // the ones ARM does not hold (a restored ARM database, a hand-made one).
        for payload in &fics {
            Store::enqueue(&mut tx, "aad.put_fic", payload).await?;
        }
        for identity in &identities {
            let keep: Vec<&Value> = fics
                .iter()
                .filter(|p| p["objectId"].as_str() == Some(identity.principal_id.as_str()))
                .map(|p| &p["name"])
                .collect();
            Store::enqueue(
                &mut tx,
                "aad.retain_fics",
                &json!({"objectId": identity.principal_id, "keep": keep}),
            )
            .await?;
        }
        for row in vms {
            let view = Self::vm_view(row)?;
            let hosted = self.hosted_vm(&view.resource, &view.state, &view.resource.resource_group);
            Store::enqueue(
                &mut tx,
                "imds.put_vm",
                &json!({"vmId": view.state.vm_id, "vm": hosted}),
            )
            .await?;
            let carried = identities.iter().filter(|i| view.carries(i));
            for identity in carried {
                let payload = json!({"vmId": view.state.vm_id, "principalId": identity.principal_id, "identity": self.hosted_identity(identity)});
                Store::enqueue(&mut tx, "imds.put_identity", &payload).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The other half of reconciling: removes what AAD and IMDS hold that ARM does not (managed
    /// identity principals, hosted VMs, installed credentials). Needs the peers serving.
    pub async fn prune(&self) -> Result<(), ArmError> {
        // The peers' state first, then ARM's: whatever a peer holds was written in ARM before it
        // was delivered, so it is in the ARM read that follows.
        let principals = self
            .inner
            .directory
            .managed_principals()
            .await
            .map_err(ArmError::Internal)?;
        let hosted = self.inner.host.hosted().await.map_err(ArmError::Internal)?;
        let identities = self.inner.store.identities().await?;
        let vms: Vec<vms::VmView> = self
            .inner
            .store
            .resources(KIND_VM, None)
            .await?
            .into_iter()
            .map(Self::vm_view)
            .collect::<Result<_, _>>()?;
        let mut tx = self.inner.store.begin().await?;
        for principal in principals.iter().filter(|p| {
            !identities
                .iter()
                .any(|i| i.principal_id.eq_ignore_ascii_case(p))
        }) {
            Store::enqueue(
                &mut tx,
                "aad.delete_principal",
                &json!({"objectId": principal}),
            )
            .await?;
        }
        for host in &hosted {
            match vms
                .iter()
                .find(|v| v.state.vm_id.eq_ignore_ascii_case(&host.vm_id))
            {
                None => {
                    Store::enqueue(&mut tx, "imds.delete_vm", &json!({"vmId": host.vm_id})).await?
                }
                Some(vm) => {
                    for principal in &host.identities {
                        let carried = vm.state.system_principal_id.as_deref()
                            == Some(principal.as_str())
                            || vm
                                .state
                                .attached
                                .iter()
                                .any(|a| a.principal_id == *principal);
                        let exists = identities.iter().any(|i| i.principal_id == *principal);
                        if !carried || !exists {
                            Store::enqueue(
                                &mut tx,
                                "imds.delete_identity",
                                &json!({"vmId": host.vm_id, "principalId": principal}),
                            )
                            .await?;
                        }
                    }
                }
            }
        }
        tx.commit().await?;
        self.deliver().await;
        Ok(())
    }

    pub fn spawn_background(
        &self,
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let worker = {
            let arm = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // Once the peers serve: remove what they hold and ARM does not.
                arm.deliver().await;
                if let Err(error) = arm.prune().await {
                    tracing::warn!(%error, "the reconcile pass could not list AAD's or IMDS's state");
                }
                loop {
                    arm.deliver().await;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = arm.inner.wake_worker.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            })
        };
        let key_pool = {
            let arm = self.clone();
            tokio::spawn(async move {
                loop {
                    let below_target = arm
                        .inner
                        .store
                        .pooled_keys()
                        .await
                        .is_ok_and(|n| n < arm.inner.config.key_pool_size);
                    if below_target {
                        if let Ok(Ok(key)) = blocking(RsaKey::generate).await {
                            let _ = arm.inner.store.add_pooled_key(key.pkcs8_der()).await;
                        }
                        if shutdown.is_cancelled() {
                            break;
                        }
                        continue;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = arm.inner.wake_key_pool.notified() => {}
                    }
                }
            })
        };
        vec![worker, key_pool]
    }

    // ------------------------------------------------------------------ authorization

    /// Checks `action` on `scope` against the caller's role assignments (spec/arm.md §5.4).
    /// A principal's role assignments, cached until the next write.
    async fn assignments_of(
        &self,
        principal_id: &str,
    ) -> Result<Arc<Vec<AssignmentRow>>, ArmError> {
        let key = principal_id.to_ascii_lowercase();
        if let Some(hit) = self.inner.assignments.get(&key) {
            return Ok(hit);
        }
        let generation = self.inner.assignments.generation();
        let rows = Arc::new(self.inner.store.assignments_of(principal_id).await?);
        self.inner
            .assignments
            .insert_if_current(generation, key, rows.clone());
        Ok(rows)
    }

    /// Any write may change who holds which role (cascades included): forget them all.
    fn invalidate_caches(&self) {
        self.inner.assignments.clear();
        self.inner.resources.clear();
        self.inner.custom_roles.clear();
    }

    /// Every custom role definition, cached until the next write.
    pub(crate) async fn custom_roles(&self) -> Result<Arc<Vec<rbac::CustomRole>>, ArmError> {
        if let Some(hit) = self.inner.custom_roles.get("") {
            return Ok(hit);
        }
        let generation = self.inner.custom_roles.generation();
        let mut roles = Vec::new();
        for row in self.inner.store.role_definitions().await? {
            // A row this version cannot read (hand-edited, say) is left out, not fatal: RBAC
            // then treats its assignments as granting nothing.
            let (Ok(permissions), Ok(assignable_scopes)) = (
                serde_json::from_str(&row.permissions),
                serde_json::from_str(&row.assignable_scopes),
            ) else {
                tracing::warn!(role = %row.guid, "a custom role definition is unreadable; it grants nothing");
                continue;
            };
            roles.push(rbac::CustomRole {
                permissions,
                assignable_scopes,
                guid: row.guid,
                name: row.role_name,
                description: row.description,
                created_at: row.created_at,
                created_by: row.created_by,
                updated_at: row.updated_at,
                updated_by: row.updated_by,
            });
        }
        let roles = Arc::new(roles);
        self.inner
            .custom_roles
            .insert_if_current(generation, String::new(), roles.clone());
        Ok(roles)
    }

    /// Writes one resource row on its own (no follow-up work) and forgets cached reads.
    async fn save_resource(&self, row: &ResourceRow) -> Result<(), ArmError> {
        let mut tx = self.inner.store.begin().await?;
        Store::put_resource(&mut tx, row).await?;
        tx.commit().await?;
        self.invalidate_caches();
        Ok(())
    }

    /// A resource row by id key, cached until the next write (reads are ARM's hot path).
    async fn resource_row(&self, id_key: &str) -> Result<Option<ResourceRow>, ArmError> {
        if let Some(hit) = self.inner.resources.get(id_key) {
            return Ok(hit);
        }
        let generation = self.inner.resources.generation();
        let row = self.inner.store.resource(id_key).await?;
        self.inner
            .resources
            .insert_if_current(generation, id_key.to_string(), row.clone());
        Ok(row)
    }

    /// The assignment that grants `action` on `scope` to the caller, if any (no event).
    async fn granting(
        &self,
        caller: &Caller,
        action: &str,
        scope: &str,
    ) -> Result<Option<AssignmentRow>, ArmError> {
        let assignments = self.assignments_of(&caller.object_id).await?;
        let custom = self.custom_roles().await?;
        Ok(assignments
            .iter()
            .find(|a| {
                scope_contains(&a.scope, scope)
                    && rbac::find_role(&a.role_guid, &custom).is_some_and(|role| {
                        // An assignment outside its role's assignable scopes grants nothing.
                        role.assignable_at(&a.scope) && role.allows(action)
                    })
            })
            .cloned())
    }

    /// Whether the caller may do `action` on `scope` (no event: per-row list filtering).
    pub async fn permits(
        &self,
        caller: &Caller,
        action: &str,
        scope: &str,
    ) -> Result<bool, ArmError> {
        Ok(self.granting(caller, action, scope).await?.is_some())
    }

    /// The RBAC decision of a request; allowed or denied, it is an event that says why.
    pub async fn authorize(
        &self,
        caller: &Caller,
        action: &str,
        scope: &str,
    ) -> Result<(), ArmError> {
        match self.granting(caller, action, scope).await? {
            Some(grant) => {
                let custom = self.custom_roles().await?;
                let role = rbac::find_role(&grant.role_guid, &custom)
                    .map_or("a role".to_string(), |r| r.name().to_string());
                self.inner.events.record(
                    Draft::new(
                        "arm.request.authorized",
                        format!("{} may {action} on {scope}: {role} at {}", caller.object_id, grant.scope),
                    )
                    .principal(&caller.object_id)
                    .resource(scope)
                    .details(json!({"action": action, "scope": scope, "role": role, "assignmentScope": grant.scope, "assignment": grant.name, "appId": caller.app_id})),
                );
                Ok(())
            }
            None => {
                self.inner.events.record(
                    Draft::new(
                        "arm.request.denied",
                        format!(
                            "{} may not {action} on {scope}: no role assignment grants it",
                            caller.object_id
                        ),
                    )
                    .principal(&caller.object_id)
                    .resource(scope)
                    .details(json!({"action": action, "scope": scope, "appId": caller.app_id})),
                );
                Err(ArmError::AuthorizationFailed {
                    oid: caller.object_id.clone(),
                    action: action.to_string(),
                    scope: display_scope(scope),
                })
            }
        }
    }

    fn check_subscription(&self, sub: &str) -> Result<(), ArmError> {
        if sub.eq_ignore_ascii_case(&self.inner.subscription_id) {
            Ok(())
        } else if is_guid(sub) {
            Err(ArmError::SubscriptionNotFound(sub.to_string()))
        } else {
            Err(ArmError::InvalidSubscriptionId(sub.to_string()))
        }
    }

    /// Subscriptions the caller holds any role assignment at or below.
    pub async fn visible_subscriptions(&self, caller: &Caller) -> Result<Vec<String>, ArmError> {
        let sub_scope = self.subscription_scope();
        let assignments = self.inner.store.assignments_of(&caller.object_id).await?;
        let visible = assignments
            .iter()
            .any(|a| scope_contains(&sub_scope, &a.scope) || scope_contains(&a.scope, &sub_scope));
        Ok(if visible {
            vec![self.inner.subscription_id.clone()]
        } else {
            Vec::new()
        })
    }

    pub async fn subscription(&self, caller: &Caller, sub: &str) -> Result<String, ArmError> {
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            "Microsoft.Resources/subscriptions/read",
            &self.subscription_scope(),
        )
        .await?;
        Ok(self.inner.subscription_id.clone())
    }

    /// `POST .../providers/{namespace}/register`: every namespace is registered already, so
    /// this only checks the caller may (`{namespace}/register/action` on the subscription).
    pub async fn register_provider(
        &self,
        caller: &Caller,
        sub: &str,
        namespace: &str,
    ) -> Result<(), ArmError> {
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            &format!("{namespace}/register/action"),
            &self.subscription_scope(),
        )
        .await
    }

    // ------------------------------------------------------------------ resource groups

    fn group_id(&self, rg: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{rg}",
            self.inner.subscription_id
        )
    }

    async fn existing_group(&self, sub: &str, rg: &str) -> Result<ResourceRow, ArmError> {
        self.check_subscription(sub)?;
        self.resource_row(&scope_key(&self.group_id(rg)))
            .await?
            .ok_or_else(|| ArmError::ResourceGroupNotFound(rg.to_string()))
    }

    pub async fn put_group(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        input: TrackedInput,
    ) -> Result<(ResourceRow, bool), ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        if !valid_resource_group_name(rg) {
            return Err(ArmError::InvalidResourceName {
                name: rg.into(),
                rule: "Resource group names are 1-90 characters of letters, digits, '_', '-', '.', '(' and ')', and cannot end with '.'.",
            });
        }
        let id = self.group_id(rg);
        self.authorize(
            caller,
            "Microsoft.Resources/subscriptions/resourceGroups/write",
            &id,
        )
        .await?;
        let location = normalize_location(&input.location);
        let existing = self.resource_row(&scope_key(&id)).await?;
        if let Some(existing) = &existing {
            if existing.location != location {
                return Err(ArmError::InvalidResourceGroupLocation {
                    requested: location,
                    existing: existing.location.clone(),
                });
            }
            if existing.state == "Deleting" {
                return Err(ArmError::InvalidParameter(format!(
                    "The resource group '{rg}' is in deprovisioning state and cannot perform this operation."
                )));
            }
        }
        let now = self.inner.clock.now_unix();
        let row = ResourceRow {
            id_key: scope_key(&id),
            id,
            kind: KIND_GROUP.into(),
            resource_group: rg.to_string(),
            name: rg.to_string(),
            location,
            tags: Value::Object(input.tags).to_string(),
            properties: "{}".into(),
            state: "Succeeded".into(),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            created_by: existing
                .as_ref()
                .map_or_else(|| caller.object_id.clone(), |e| e.created_by.clone()),
            updated_at: now,
            updated_by: caller.object_id.clone(),
        };
        self.save_resource(&row).await?;
        Ok((row, existing.is_none()))
    }

    pub async fn group(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
    ) -> Result<ResourceRow, ArmError> {
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            &self.group_id(rg),
        )
        .await?;
        self.existing_group(sub, rg).await
    }

    pub async fn groups(&self, caller: &Caller, sub: &str) -> Result<Vec<ResourceRow>, ArmError> {
        self.check_subscription(sub)?;
        let all = self.inner.store.resources(KIND_GROUP, None).await?;
        // A caller sees the groups it may read, wherever that right comes from.
        let mut visible = Vec::new();
        for group in all {
            if self
                .authorize(
                    caller,
                    "Microsoft.Resources/subscriptions/resourceGroups/read",
                    &group.id,
                )
                .await
                .is_ok()
            {
                visible.push(group);
            }
        }
        if visible.is_empty() {
            self.authorize(
                caller,
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                &self.subscription_scope(),
            )
            .await?;
        }
        Ok(visible)
    }

    pub async fn patch_group(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        tags: Option<Map<String, Value>>,
    ) -> Result<ResourceRow, ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            "Microsoft.Resources/subscriptions/resourceGroups/write",
            &self.group_id(rg),
        )
        .await?;
        let mut row = self.existing_group(sub, rg).await?;
        if let Some(tags) = tags {
            row.tags = Value::Object(tags).to_string();
        }
        row.updated_at = self.inner.clock.now_unix();
        row.updated_by = caller.object_id.clone();
        self.save_resource(&row).await?;
        Ok(row)
    }

    /// Deletes a group and everything in it (identities and their principals, role assignments
    /// at or below it) in one transaction with the directory work it implies.
    pub async fn delete_group(&self, caller: &Caller, sub: &str, rg: &str) -> Result<(), ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        let id = self.group_id(rg);
        self.authorize(
            caller,
            "Microsoft.Resources/subscriptions/resourceGroups/delete",
            &id,
        )
        .await?;
        let group = self.existing_group(sub, rg).await?;
        let members = self
            .inner
            .store
            .group_members(&group.resource_group)
            .await?;
        // Hosts to clean: the group's VMs go entirely; its user-assigned identities leave the
        // VMs elsewhere that carry them.
        let mut carriers = Vec::new();
        for member in members.iter().filter(|m| m.kind == KIND_IDENTITY) {
            for vm_id in self.vms_carrying(&member.id).await? {
                carriers.push((member.id_key.clone(), vm_id));
            }
        }
        let mut tx = self.inner.store.begin().await?;
        for member in &members {
            if member.kind == KIND_VM
                && let Ok(state) = serde_json::from_str::<vms::VmState>(&member.properties)
            {
                Store::enqueue(&mut tx, "imds.delete_vm", &json!({"vmId": state.vm_id})).await?;
            }
            let hosts: Vec<String> = carriers
                .iter()
                .filter(|(key, _)| *key == member.id_key)
                .map(|(_, vm_id)| vm_id.clone())
                .collect();
            retire_identities(&mut tx, &member.id_key, &hosts).await?;
            Store::delete_resource(&mut tx, &member.id_key).await?;
        }
        Store::delete_assignments_under(&mut tx, &group.id_key).await?;
        Store::delete_resource(&mut tx, &group.id_key).await?;
        tx.commit().await?;
        self.invalidate_caches();
        self.deliver().await;
        Ok(())
    }

    /// Every resource in a group the caller may read (`.../resources`).
    pub async fn group_resources(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
    ) -> Result<Vec<ResourceRow>, ArmError> {
        let group = self.group(caller, sub, rg).await?;
        self.top_level_members(&group).await
    }

    /// Every resource in the groups the caller may read (`/subscriptions/{sub}/resources`).
    pub async fn subscription_resources(
        &self,
        caller: &Caller,
        sub: &str,
    ) -> Result<Vec<ResourceRow>, ArmError> {
        let mut all = Vec::new();
        for group in self.groups(caller, sub).await? {
            all.extend(self.top_level_members(&group).await?);
        }
        Ok(all)
    }

    /// A group's resources as ARM lists them: the top-level ones (federated credentials are an
    /// identity's children, not the group's).
    async fn top_level_members(&self, group: &ResourceRow) -> Result<Vec<ResourceRow>, ArmError> {
        let mut members = self
            .inner
            .store
            .group_members(&group.resource_group)
            .await?;
        members.retain(|m| m.kind == KIND_VM || m.kind == KIND_IDENTITY);
        Ok(members)
    }

    pub async fn group_exists(&self, rg: &str) -> Result<bool, ArmError> {
        Ok(self
            .resource_row(&scope_key(&self.group_id(rg)))
            .await?
            .is_some())
    }

    // ------------------------------------------------------------------ user-assigned identities

    fn identity_id(&self, rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
            self.inner.subscription_id
        )
    }

    async fn identity_view(&self, resource: ResourceRow) -> Result<IdentityView, ArmError> {
        // The ids are kept on the resource row, so a read costs one query.
        let stored: Value = serde_json::from_str(&resource.properties).unwrap_or_default();
        if let (Some(principal_id), Some(client_id)) =
            (stored["principalId"].as_str(), stored["clientId"].as_str())
        {
            let (principal_id, client_id) = (principal_id.to_string(), client_id.to_string());
            return Ok(IdentityView {
                resource,
                principal_id,
                client_id,
            });
        }
        let identity = self
            .inner
            .store
            .identities_of(&resource.id_key)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ArmError::Internal(format!("identity {} has no principal", resource.id))
            })?;
        Ok(IdentityView {
            resource,
            principal_id: identity.principal_id,
            client_id: identity.client_id,
        })
    }

    async fn existing_identity(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<ResourceRow, ArmError> {
        self.check_subscription(sub)?;
        let found = self
            .resource_row(&scope_key(&self.identity_id(rg, name)))
            .await?
            .filter(|r| r.kind == KIND_IDENTITY);
        if let Some(row) = found {
            // A resource implies its group: no second query on the hot read path.
            return Ok(row);
        }
        self.existing_group(sub, rg).await?;
        None.ok_or_else(|| ArmError::ResourceNotFound {
            kind: "Microsoft.ManagedIdentity/userAssignedIdentities",
            name: name.to_string(),
            rg: rg.to_string(),
        })
    }

    /// An RSA key (from the pool when possible) and a certificate for a new identity.
    async fn new_credential(
        &self,
        client_id: &str,
    ) -> Result<(String, Vec<u8>, Vec<u8>, i64), ArmError> {
        let cert_days = self.inner.config.identity_cert_days;
        let pooled = self.inner.store.take_pooled_key().await?;
        self.inner.wake_key_pool.notify_one();
        let now = self.inner.clock.now();
        let cn = client_id.to_string();
        let (der, pkcs8) = blocking(move || -> Result<(Vec<u8>, Vec<u8>), ArmError> {
            let key = match pooled {
                Some(pkcs8) => RsaKey::from_pkcs8(&pkcs8)?,
                None => RsaKey::generate()?,
            };
            let der = key.self_signed_certificate(
                &cn,
                now - time::Duration::hours(1),
                now + time::Duration::days(cert_days),
            )?;
            Ok((der, key.pkcs8_der().to_vec()))
        })
        .await??;
        let not_after = (now + time::Duration::days(cert_days)).unix_timestamp();
        Ok((Uuid::new_v4().to_string(), der, pkcs8, not_after))
    }

    /// PUT of a user-assigned identity: creates its principal and credential on first PUT; the
    /// answer waits until AAD has the principal (ARCHITECTURE.md §3).
    pub async fn put_identity(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        name: &str,
        input: TrackedInput,
    ) -> Result<(IdentityView, bool), ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        if !valid_identity_name(name) {
            return Err(ArmError::InvalidResourceName {
                name: name.into(),
                rule: "User-assigned identity names are 3-128 characters of letters, digits, '-' and '_', starting with a letter or digit.",
            });
        }
        let id = self.identity_id(rg, name);
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/write",
            &id,
        )
        .await?;
        let group = self.existing_group(sub, rg).await?;
        if group.state == "Deleting" {
            return Err(ArmError::InvalidParameter(format!(
                "The resource group '{rg}' is in deprovisioning state and cannot perform this operation."
            )));
        }
        let location = normalize_location(&input.location);
        let now = self.inner.clock.now_unix();
        let existing = self.resource_row(&scope_key(&id)).await?;
        if let Some(existing) = existing {
            if existing.location != location {
                return Err(ArmError::InvalidResourceLocation {
                    requested: location,
                    existing: existing.location,
                });
            }
            let row = ResourceRow {
                id,
                name: name.to_string(),
                tags: Value::Object(input.tags).to_string(),
                updated_at: now,
                updated_by: caller.object_id.clone(),
                ..existing
            };
            self.save_resource(&row).await?;
            return Ok((self.identity_view(row).await?, false));
        }
        let minted = self
            .mint_principal(&scope_key(&id), &id, name, true)
            .await?;
        let row = ResourceRow {
            id_key: scope_key(&id),
            id: id.clone(),
            kind: KIND_IDENTITY.into(),
            resource_group: group.resource_group.clone(),
            name: name.to_string(),
            location,
            tags: Value::Object(input.tags).to_string(),
            properties: json!({"principalId": minted.identity.principal_id, "clientId": minted.identity.client_id}).to_string(),
            state: "Succeeded".into(),
            created_at: now,
            created_by: caller.object_id.clone(),
            updated_at: now,
            updated_by: caller.object_id.clone(),
        };
        let (principal_id, client_id) = (
            minted.identity.principal_id.clone(),
            minted.identity.client_id.clone(),
        );
        let mut tx = self.inner.store.begin().await?;
        Store::put_resource(&mut tx, &row).await?;
        minted.write(&mut tx).await?;
        tx.commit().await?;
        self.invalidate_caches();
        self.deliver().await;
        Ok((
            IdentityView {
                resource: row,
                principal_id,
                client_id,
            },
            true,
        ))
    }

    /// A new principal for a managed identity with its key and certificate, and the directory
    /// work that registers them; written by the caller's transaction.
    async fn mint_principal(
        &self,
        owner_key: &str,
        mirid: &str,
        display_name: &str,
        user_assigned: bool,
    ) -> Result<MintedPrincipal, ArmError> {
        let principal_id = Uuid::new_v4().to_string();
        let client_id = Uuid::new_v4().to_string();
        let (key_id, cert_der, pkcs8, not_after) = self.new_credential(&client_id).await?;
        let principal = ManagedIdentityPrincipal {
            app_id: client_id.clone(),
            display_name: display_name.to_string(),
            resource_id: mirid.to_string(),
            user_assigned,
        };
        let certificate = ManagedIdentityCertificate {
            certificate: misim_core::jose::b64std(&cert_der),
        };
        let kind = if user_assigned {
            "user-assigned"
        } else {
            "system-assigned"
        };
        self.inner.events.record(
            Draft::new(
                "arm.identity.created",
                format!("created the {kind} identity of {mirid}: principal {principal_id}, client {client_id}"),
            )
            .principal(&principal_id)
            .resource(mirid)
            .details(json!({"clientId": client_id, "userAssigned": user_assigned})),
        );
        self.inner.events.record(
            Draft::new(
                "arm.credential.generated",
                format!(
                    "generated its certificate {} (RSA-2048, valid {} days, rolled at {})",
                    misim_core::crypto::hex_upper(&misim_core::crypto::sha1(&cert_der)),
                    self.inner.config.identity_cert_days,
                    self.inner.config.identity_cert_roll_days
                ),
            )
            .principal(&principal_id)
            .resource(mirid)
            .details(json!({"keyId": key_id, "notAfter": not_after})),
        );
        Ok(MintedPrincipal {
            outbox: vec![
                (
                    "aad.put_principal",
                    json!({"objectId": principal_id, "principal": principal}),
                ),
                (
                    "aad.put_certificate",
                    json!({"objectId": principal_id, "keyId": key_id, "certificate": certificate}),
                ),
            ],
            identity: IdentityRow {
                principal_id,
                client_id,
                owner_key: owner_key.to_string(),
                user_assigned,
                mirid: mirid.to_string(),
                display_name: display_name.to_string(),
                cert_key_id: key_id,
                cert_der,
                private_pkcs8: pkcs8,
                cert_not_after: not_after,
                created_at: self.inner.clock.now_unix(),
            },
        })
    }

    pub async fn identity(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<IdentityView, ArmError> {
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/read",
            &self.identity_id(rg, name),
        )
        .await?;
        let row = self.existing_identity(sub, rg, name).await?;
        self.identity_view(row).await
    }

    pub async fn identities(
        &self,
        caller: &Caller,
        sub: &str,
        rg: Option<&str>,
    ) -> Result<Vec<IdentityView>, ArmError> {
        let rows = self
            .readable(
                caller,
                sub,
                rg,
                KIND_IDENTITY,
                "Microsoft.ManagedIdentity/userAssignedIdentities/read",
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.identity_view(row).await?);
        }
        Ok(out)
    }

    /// The resources of `kind` in a group or the subscription that the caller may read; when it
    /// may read none, the answer for the collection's own scope (403, as ARM gives).
    async fn readable(
        &self,
        caller: &Caller,
        sub: &str,
        rg: Option<&str>,
        kind: &str,
        action: &str,
    ) -> Result<Vec<ResourceRow>, ArmError> {
        self.check_subscription(sub)?;
        let scope = match rg {
            Some(rg) => {
                self.existing_group(sub, rg).await?;
                self.group_id(rg)
            }
            None => self.subscription_scope(),
        };
        let rows = self.inner.store.resources(kind, rg).await?;
        // Allowed on the collection's scope: every row is readable, no per-row checks.
        if self.permits(caller, action, &scope).await? {
            self.authorize(caller, action, &scope).await?;
            return Ok(rows);
        }
        let mut out = Vec::new();
        for row in rows {
            if self.permits(caller, action, &row.id).await? {
                out.push(row);
            }
        }
        if out.is_empty() {
            self.authorize(caller, action, &scope).await?;
        }
        Ok(out)
    }

    pub async fn patch_identity(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        name: &str,
        tags: Option<Map<String, Value>>,
        location: Option<String>,
    ) -> Result<IdentityView, ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/write",
            &self.identity_id(rg, name),
        )
        .await?;
        let mut row = self.existing_identity(sub, rg, name).await?;
        if let Some(location) = location.map(|l| normalize_location(&l))
            && location != row.location
        {
            return Err(ArmError::InvalidResourceLocation {
                requested: location,
                existing: row.location,
            });
        }
        if let Some(tags) = tags {
            row.tags = Value::Object(tags).to_string();
        }
        row.updated_at = self.inner.clock.now_unix();
        row.updated_by = caller.object_id.clone();
        self.save_resource(&row).await?;
        self.identity_view(row).await
    }

    /// Deletes an identity and its principal; `false` when it did not exist.
    pub async fn delete_identity(
        &self,
        caller: &Caller,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<bool, ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_subscription(sub)?;
        self.authorize(
            caller,
            "Microsoft.ManagedIdentity/userAssignedIdentities/delete",
            &self.identity_id(rg, name),
        )
        .await?;
        self.existing_group(sub, rg).await?;
        let Some(row) = self
            .resource_row(&scope_key(&self.identity_id(rg, name)))
            .await?
            .filter(|r| r.kind == KIND_IDENTITY)
        else {
            return Ok(false);
        };
        // Read before the transaction (an in-memory store has a single connection).
        let carriers = self.vms_carrying(&row.id).await?;
        let fics = self.fics_of_identity(&row).await?;
        let mut tx = self.inner.store.begin().await?;
        // The credential leaves every VM's host; the VMs keep the stale reference (Azure).
        retire_identities(&mut tx, &row.id_key, &carriers).await?;
        // Assignments *scoped at* the identity go with it; those naming its principal stay as
        // orphans, as in Azure.
        for fic in &fics {
            Store::delete_resource(&mut tx, &fic.id_key).await?;
        }
        Store::delete_assignments_under(&mut tx, &row.id_key).await?;
        Store::delete_resource(&mut tx, &row.id_key).await?;
        tx.commit().await?;
        self.invalidate_caches();
        self.deliver().await;
        Ok(true)
    }

    /// Every identity principal ARM holds (for invariant checks and the IMDS host API).
    pub async fn identity_principals(&self) -> Result<Vec<IdentityRow>, ArmError> {
        Ok(self.inner.store.identities().await?)
    }

    // ------------------------------------------------------------------ RBAC resources

    /// The subscription-qualified id clients compare byte for byte (spec/arm.md §5.2).
    pub fn role_definition_id(&self, scope: &str, guid: &str) -> String {
        if scope_key(scope) == "/" {
            format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        } else {
            format!(
                "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
                self.inner.subscription_id
            )
        }
    }

    /// Checks that a scope names this subscription and, for groups and resources, an existing
    /// group.
    async fn check_scope(&self, scope: &str) -> Result<(), ArmError> {
        if scope_key(scope) == "/" {
            return Ok(());
        }
        let parts: Vec<&str> = scope.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            ["subscriptions", sub, rest @ ..] | ["Subscriptions", sub, rest @ ..] => {
                self.check_subscription(sub)?;
                if let [g, rg, ..] = rest
                    && g.eq_ignore_ascii_case("resourcegroups")
                {
                    self.existing_group(sub, rg).await?;
                }
                Ok(())
            }
            _ => Err(ArmError::InvalidParameter(format!(
                "The scope '{scope}' is not valid."
            ))),
        }
    }

    pub async fn put_assignment(
        &self,
        caller: &Caller,
        scope: &str,
        name: &str,
        input: AssignmentInput,
    ) -> Result<(AssignmentRow, bool), ArmError> {
        let _write = self.inner.writes.lock().await;
        if !is_guid(name) {
            return Err(ArmError::InvalidRoleAssignmentId(name.to_string()));
        }
        self.check_scope(scope).await?;
        self.authorize(
            caller,
            "Microsoft.Authorization/roleAssignments/write",
            scope,
        )
        .await?;
        let AssignmentInput {
            role_definition_id,
            principal_id,
            principal_type,
            description,
            condition,
            condition_version,
        } = input;
        // An empty condition is none. Azure's only condition language version is 2.0, also the
        // default.
        let condition = condition.filter(|c| !c.trim().is_empty());
        let condition_version = match (&condition, condition_version) {
            (None, _) => None,
            (Some(_), None) => Some("2.0".to_string()),
            (Some(_), Some(v)) if v == "2.0" => Some(v),
            (Some(_), Some(v)) => {
                return Err(ArmError::InvalidParameter(format!(
                    "The condition version '{v}' is not supported; use '2.0'."
                )));
            }
        };
        let (role_definition_id, principal_id) =
            (role_definition_id.as_str(), principal_id.as_str());
        let guid = role_definition_id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let custom = self.custom_roles().await?;
        let role = rbac::find_role(&guid, &custom)
            .ok_or_else(|| ArmError::RoleDefinitionDoesNotExist(guid.clone()))?;
        if !role.assignable_at(scope) {
            return Err(ArmError::InvalidParameter(format!(
                "The role '{}' is not available for assignment at the requested scope '{scope}': it is not within the role's assignable scopes.",
                role.name()
            )));
        }
        let role_guid = role.guid().to_string();
        // misim stores conditions but does not evaluate them. On a role that can write role
        // assignments (the usual home of delegation conditions) that would grant more than
        // Azure does, so it is refused rather than silently widened.
        if condition.is_some()
            && (role.allows("Microsoft.Authorization/roleAssignments/write")
                || role.allows("Microsoft.Authorization/roleAssignments/delete"))
        {
            return Err(ArmError::InvalidParameter(format!(
                "misim does not evaluate role assignment conditions, and a condition on '{}' (which can write role assignments) would grant more than on Azure; assign it without a condition, or a role that cannot delegate.",
                role.name()
            )));
        }
        if !is_guid(principal_id) {
            return Err(ArmError::InvalidParameter(format!(
                "The principal ID '{principal_id}' is not a valid GUID."
            )));
        }
        let scope_key_value = scope_key(scope);
        let name_key = name.to_ascii_lowercase();
        if let Some(existing) = self.inner.store.assignment(&name_key).await? {
            let same = existing.scope_key == scope_key_value
                && existing.role_guid.eq_ignore_ascii_case(&role_guid)
                && existing.principal_id.eq_ignore_ascii_case(principal_id);
            if !same {
                return Err(ArmError::RoleAssignmentUpdateNotPermitted);
            }
            // The same assignment again: its description and condition may change.
            if (
                &existing.description,
                &existing.condition,
                &existing.condition_version,
            ) == (&description, &condition, &condition_version)
            {
                return Ok((existing, false));
            }
            let updated = AssignmentRow {
                description,
                condition,
                condition_version,
                updated_at: self.inner.clock.now_unix(),
                updated_by: caller.object_id.clone(),
                ..existing
            };
            let mut tx = self.inner.store.begin().await?;
            Store::update_assignment(&mut tx, &updated).await?;
            tx.commit().await?;
            self.invalidate_caches();
            return Ok((updated, false));
        }
        let duplicate = self
            .inner
            .store
            .assignments_of(principal_id)
            .await?
            .into_iter()
            .any(|a| {
                a.scope_key == scope_key_value && a.role_guid.eq_ignore_ascii_case(&role_guid)
            });
        if duplicate {
            return Err(ArmError::RoleAssignmentExists);
        }
        // With an explicit principalType Azure skips the directory lookup (the documented
        // workaround for replication delay); without one, the principal must exist.
        let principal_type = match principal_type {
            Some(kind) => {
                if ![
                    "User",
                    "Group",
                    "ServicePrincipal",
                    "ForeignGroup",
                    "Device",
                ]
                .contains(&kind.as_str())
                {
                    return Err(ArmError::InvalidParameter(format!(
                        "The principal type '{kind}' is not valid."
                    )));
                }
                kind
            }
            None => {
                let exists = self
                    .inner
                    .directory
                    .principal_exists(principal_id)
                    .await
                    .map_err(ArmError::Internal)?;
                if !exists {
                    return Err(ArmError::PrincipalNotFound {
                        oid: principal_id.to_string(),
                        tenant: self.inner.config.tenant_id.clone(),
                    });
                }
                "ServicePrincipal".to_string()
            }
        };
        let now = self.inner.clock.now_unix();
        let display_scope = if scope_key_value == "/" {
            "/".to_string()
        } else {
            format!("/{}", scope.trim_matches('/'))
        };
        let row = AssignmentRow {
            name_key,
            name: name.to_string(),
            scope: display_scope.clone(),
            scope_key: scope_key_value,
            role_definition_id: self.role_definition_id(&display_scope, &role_guid),
            role_guid: role_guid.clone(),
            principal_id: principal_id.to_string(),
            principal_type,
            description,
            condition,
            condition_version,
            created_at: now,
            created_by: caller.object_id.clone(),
            updated_at: now,
            updated_by: caller.object_id.clone(),
        };
        let mut tx = self.inner.store.begin().await?;
        Store::insert_assignment(&mut tx, &row).await?;
        tx.commit().await?;
        self.invalidate_caches();
        Ok((row, true))
    }

    async fn scoped_assignment(
        &self,
        scope: &str,
        name: &str,
    ) -> Result<Option<AssignmentRow>, ArmError> {
        Ok(self
            .inner
            .store
            .assignment(&name.to_ascii_lowercase())
            .await?
            .filter(|a| a.scope_key == scope_key(scope)))
    }

    pub async fn assignment(
        &self,
        caller: &Caller,
        scope: &str,
        name: &str,
    ) -> Result<AssignmentRow, ArmError> {
        self.check_scope(scope).await?;
        self.authorize(
            caller,
            "Microsoft.Authorization/roleAssignments/read",
            scope,
        )
        .await?;
        self.scoped_assignment(scope, name)
            .await?
            .ok_or_else(|| ArmError::RoleAssignmentNotFound(name.to_string()))
    }

    pub async fn delete_assignment(
        &self,
        caller: &Caller,
        scope: &str,
        name: &str,
    ) -> Result<Option<AssignmentRow>, ArmError> {
        let _write = self.inner.writes.lock().await;
        self.check_scope(scope).await?;
        self.authorize(
            caller,
            "Microsoft.Authorization/roleAssignments/delete",
            scope,
        )
        .await?;
        let Some(row) = self.scoped_assignment(scope, name).await? else {
            return Ok(None);
        };
        let mut tx = self.inner.store.begin().await?;
        Store::delete_assignment(&mut tx, &row.name_key).await?;
        tx.commit().await?;
        self.invalidate_caches();
        Ok(Some(row))
    }

    pub async fn assignments(
        &self,
        caller: &Caller,
        scope: &str,
        filter: &AssignmentFilter,
    ) -> Result<Vec<AssignmentRow>, ArmError> {
        self.check_scope(scope).await?;
        self.authorize(
            caller,
            "Microsoft.Authorization/roleAssignments/read",
            scope,
        )
        .await?;
        let all = self.inner.store.assignments().await?;
        Ok(all
            .into_iter()
            .filter(|a| {
                let above = scope_contains(&a.scope, scope);
                let below = scope_contains(scope, &a.scope);
                match filter {
                    AssignmentFilter::None => above || below,
                    AssignmentFilter::AtScope => above,
                    AssignmentFilter::Principal(oid) => {
                        (above || below) && a.principal_id.eq_ignore_ascii_case(oid)
                    }
                    AssignmentFilter::AtScopePrincipal(oid) => {
                        above && a.principal_id.eq_ignore_ascii_case(oid)
                    }
                }
            })
            .collect())
    }

    pub async fn authorize_role_definitions(
        &self,
        caller: &Caller,
        scope: &str,
    ) -> Result<(), ArmError> {
        self.check_scope(scope).await?;
        self.authorize(
            caller,
            "Microsoft.Authorization/roleDefinitions/read",
            scope,
        )
        .await
    }

    // ------------------------------------------------------------------ outbox delivery

    /// Delivers due outbox rows in order, stopping at the first failure (later rows depend on
    /// earlier ones); failures are retried with back-off by the worker.
    pub async fn deliver(&self) {
        let _turn = self.inner.delivery.lock().await;
        let Ok(rows) = self.inner.store.outbox().await else {
            return;
        };
        // Retry back-off follows simulated time, so `clock advance` makes retries due at once.
        let now = self.inner.clock.now_unix();
        if let Ok(Some(next)) = self.inner.store.outbox_next_attempt().await
            && next > now
        {
            return;
        }
        for row in rows {
            let correlation = row
                .correlation_id
                .clone()
                .unwrap_or_else(|| Uuid::new_v4().to_string());
            let delivered = misim_core::events::with_correlation(
                correlation,
                self.deliver_one(&row.action, &row.payload),
            )
            .await;
            match delivered {
                Ok(()) => {
                    let _ = self.inner.store.outbox_done(row.seq).await;
                }
                Err(error) => {
                    let backoff = 1i64 << row.attempts.clamp(0, 5);
                    tracing::warn!(action = %row.action, attempts = row.attempts + 1, %error, "provisioning step failed; will retry");
                    let _ = self
                        .inner
                        .store
                        .outbox_failed(row.seq, now + backoff, &error)
                        .await;
                    return;
                }
            }
        }
        // Everything reached AAD and IMDS: resources that waited for it are done.
        if self.inner.store.settle_updating().await.unwrap_or(0) > 0 {
            self.invalidate_caches();
        }
    }

    /// Marks a resource `Updating` when its provisioning work could not be delivered yet; the
    /// worker flips it to `Succeeded` once the outbox drains.
    pub(crate) async fn mark_pending(&self, row: &mut ResourceRow) -> Result<(), ArmError> {
        if self.inner.store.outbox().await?.is_empty() {
            return Ok(());
        }
        self.inner.store.set_state(&row.id_key, "Updating").await?;
        self.invalidate_caches();
        row.state = "Updating".into();
        Ok(())
    }

    async fn deliver_one(&self, action: &str, payload: &str) -> Result<(), String> {
        let payload: Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        let object_id = payload["objectId"]
            .as_str()
            .or(payload["vmId"].as_str())
            .map(str::to_string)
            .ok_or("payload without target")?;
        let object_id = object_id.as_str();
        let directory = &self.inner.directory;
        match action {
            "aad.put_principal" => {
                let principal: ManagedIdentityPrincipal =
                    serde_json::from_value(payload["principal"].clone())
                        .map_err(|e| e.to_string())?;
                directory.put_principal(object_id, &principal).await
            }
            "aad.put_certificate" => {
                let certificate: ManagedIdentityCertificate =
                    serde_json::from_value(payload["certificate"].clone())
                        .map_err(|e| e.to_string())?;
                directory
                    .put_certificate(
                        object_id,
                        payload["keyId"].as_str().ok_or("payload without keyId")?,
                        &certificate,
                    )
                    .await
            }
            "aad.put_fic" => {
                directory
                    .put_federated_credential(
                        object_id,
                        payload["name"].as_str().ok_or("payload without name")?,
                        &payload["federatedCredential"],
                    )
                    .await
            }
            "aad.retain_fics" => {
                let keep: Vec<String> =
                    serde_json::from_value(payload["keep"].clone()).map_err(|e| e.to_string())?;
                directory
                    .retain_federated_credentials(object_id, &keep)
                    .await
            }
            "aad.delete_fic" => {
                directory
                    .delete_federated_credential(
                        object_id,
                        payload["name"].as_str().ok_or("payload without name")?,
                    )
                    .await
            }
            "aad.delete_principal" => {
                directory.delete_principal(object_id).await?;
                self.inner.events.record(
                    Draft::new(
                        "arm.identity.deleted",
                        format!("identity principal {object_id} deleted: AAD removed it and its certificates"),
                    )
                    .principal(object_id),
                );
                Ok(())
            }
            "aad.retain_certificates" => {
                let keep: Vec<String> =
                    serde_json::from_value(payload["keep"].clone()).map_err(|e| e.to_string())?;
                directory.retain_certificates(object_id, &keep).await
            }
            "imds.put_vm" => {
                let vm: misim_core::internal::HostedVm =
                    serde_json::from_value(payload["vm"].clone()).map_err(|e| e.to_string())?;
                self.inner.host.put_vm(object_id, &vm).await
            }
            "imds.delete_vm" => self.inner.host.delete_vm(object_id).await,
            "imds.put_identity" => {
                let identity: misim_core::internal::HostedIdentity =
                    serde_json::from_value(payload["identity"].clone())
                        .map_err(|e| e.to_string())?;
                self.inner
                    .host
                    .put_identity(
                        object_id,
                        payload["principalId"]
                            .as_str()
                            .ok_or("payload without principalId")?,
                        &identity,
                    )
                    .await
            }
            "imds.delete_identity" => {
                let principal = payload["principalId"]
                    .as_str()
                    .ok_or("payload without principalId")?;
                self.inner
                    .host
                    .delete_identity(object_id, principal)
                    .await?;
                self.inner.events.record(
                    Draft::new(
                        "arm.identity.unassigned",
                        format!("identity {principal} is no longer on VM {object_id}: its host dropped the credential"),
                    )
                    .vm(object_id)
                    .principal(principal),
                );
                Ok(())
            }
            other => Err(format!("unknown outbox action '{other}'")),
        }
    }

    /// Pending provisioning steps (0 once everything reached AAD).
    pub async fn pending_work(&self) -> Result<usize, ArmError> {
        Ok(self.inner.store.outbox().await?.len())
    }
}

/// Deletes the identities a resource owns and queues their retirement: the credential leaves
/// each host in `hosts`, then AAD deletes the principal.
pub(crate) async fn retire_identities(
    tx: &mut crate::store::Tx<'_>,
    owner_key: &str,
    hosts: &[String],
) -> Result<(), ArmError> {
    for principal in Store::delete_identities_of(tx, owner_key).await? {
        for vm_id in hosts {
            Store::enqueue(
                tx,
                "imds.delete_identity",
                &json!({"vmId": vm_id, "principalId": principal}),
            )
            .await?;
        }
        Store::enqueue(tx, "aad.delete_principal", &json!({"objectId": principal})).await?;
    }
    Ok(())
}

/// ARM prints scopes with a lower-case `resourcegroups` segment in its messages.
fn display_scope(scope: &str) -> String {
    let mut parts: Vec<String> = scope.split('/').map(str::to_string).collect();
    for part in parts.iter_mut() {
        if part.eq_ignore_ascii_case("resourcegroups") {
            *part = "resourcegroups".into();
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory that fails its first `failures` calls, then records what it is told.
    #[derive(Default)]
    struct FlakyDirectory {
        failures: AtomicUsize,
        principals: Mutex<HashMap<String, Vec<String>>>,
    }

    impl FlakyDirectory {
        fn fail(&self) -> Result<(), String> {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Err("AAD unreachable".into());
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Directory for FlakyDirectory {
        async fn put_principal(
            &self,
            object_id: &str,
            _: &ManagedIdentityPrincipal,
        ) -> Result<(), String> {
            self.fail()?;
            self.principals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(object_id.into())
                .or_default();
            Ok(())
        }
        async fn put_certificate(
            &self,
            object_id: &str,
            key_id: &str,
            _: &ManagedIdentityCertificate,
        ) -> Result<(), String> {
            self.fail()?;
            let mut principals = self.principals.lock().unwrap_or_else(|p| p.into_inner());
            let certs = principals.get_mut(object_id).ok_or("no such principal")?;
            if !certs.iter().any(|k| k == key_id) {
                certs.push(key_id.into());
            }
            Ok(())
        }
        async fn delete_principal(&self, object_id: &str) -> Result<(), String> {
            self.fail()?;
            self.principals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(object_id);
            Ok(())
        }
        async fn put_federated_credential(
            &self,
            _: &str,
            _: &str,
            _: &serde_json::Value,
        ) -> Result<(), String> {
            self.fail()
        }
        async fn delete_federated_credential(&self, _: &str, _: &str) -> Result<(), String> {
            self.fail()
        }
        async fn retain_federated_credentials(&self, _: &str, _: &[String]) -> Result<(), String> {
            self.fail()
        }
        async fn managed_principals(&self) -> Result<Vec<String>, String> {
            Ok(self
                .principals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect())
        }
        async fn principal_exists(&self, object_id: &str) -> Result<bool, String> {
            Ok(self
                .principals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(object_id))
        }
    }

    /// The seeded admin (Owner) and a group `rg` in the subscription.
    async fn admin_with_group(arm: &Arm) -> (Caller, String) {
        let admin = Caller {
            object_id: "admin".into(),
            app_id: "a".into(),
        };
        let sub = arm.subscription_id().to_string();
        arm.put_group(
            &admin,
            &sub,
            "rg",
            TrackedInput {
                location: "eastus".into(),
                tags: Map::new(),
            },
        )
        .await
        .expect("group");
        (admin, sub)
    }

    /// A host that accepts everything.
    struct NullHost;

    #[async_trait]
    impl crate::ports::Host for NullHost {
        async fn put_vm(&self, _: &str, _: &misim_core::internal::HostedVm) -> Result<(), String> {
            Ok(())
        }
        async fn delete_vm(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
        async fn put_identity(
            &self,
            _: &str,
            _: &str,
            _: &misim_core::internal::HostedIdentity,
        ) -> Result<(), String> {
            Ok(())
        }
        async fn delete_identity(&self, _: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
        async fn status(
            &self,
            _: &str,
        ) -> Result<Option<misim_core::internal::HostedVmStatus>, String> {
            Ok(None)
        }
        async fn hosted(&self) -> Result<Vec<misim_core::internal::HostedVmStatus>, String> {
            Ok(Vec::new())
        }
    }

    async fn open(
        path: &std::path::Path,
        directory: Arc<FlakyDirectory>,
        clock: Arc<Clock>,
    ) -> Arm {
        open_with(path, directory, clock, test_config())
            .await
            .expect("open")
    }

    fn test_config() -> ArmConfig {
        ArmConfig {
            public_url: "https://arm".into(),
            aad_url: "https://aad".into(),
            graph_url: "https://aad".into(),
            tenant_id: "t".into(),
            admin_object_id: "admin".into(),
            key_pool_size: 0,
            subscription_id: None,
            identity_cert_days: ArmConfig::DEFAULT_CERT_DAYS,
            identity_cert_roll_days: ArmConfig::DEFAULT_ROLL_DAYS,
        }
    }

    async fn open_with(
        path: &std::path::Path,
        directory: Arc<FlakyDirectory>,
        clock: Arc<Clock>,
        config: ArmConfig,
    ) -> Result<Arm, ArmError> {
        let pool = misim_core::db::open(Some(path), &crate::store::MIGRATOR)
            .await
            .expect("db");
        Arm::open(
            Store::new(pool),
            clock,
            config,
            directory,
            Arc::new(NullHost),
        )
        .await
    }

    #[tokio::test]
    async fn a_pinned_subscription_is_kept_and_a_different_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("arm.db");
        let clock = Arc::new(Clock::default());
        let pinned = "2b2b9f7e-5c43-4f6e-9a57-5d1f1c0e7a11";
        let with = |id: &str| ArmConfig {
            subscription_id: Some(id.into()),
            ..test_config()
        };
        let bad = open_with(&db, Default::default(), clock.clone(), with("not-a-guid")).await;
        assert!(matches!(bad, Err(ArmError::Internal(m)) if m.contains("not a GUID")));
        let arm = open_with(&db, Default::default(), clock.clone(), with(pinned))
            .await
            .expect("open");
        assert_eq!(arm.subscription_id(), pinned);
        drop(arm);
        let other = open_with(
            &db,
            Default::default(),
            clock,
            with("00000000-0000-0000-0000-000000000001"),
        )
        .await;
        assert!(matches!(other, Err(ArmError::Internal(m)) if m.contains("holds subscription")));
    }

    #[tokio::test]
    async fn failed_provisioning_is_retried_and_resumed_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("arm.db");
        let clock = Arc::new(Clock::default());
        let flaky = Arc::new(FlakyDirectory {
            failures: AtomicUsize::new(1),
            ..Default::default()
        });
        let arm = open(&db, flaky.clone(), clock.clone()).await;
        let (admin, sub) = admin_with_group(&arm).await;
        let (view, created) = arm
            .put_identity(
                &admin,
                &sub,
                "rg",
                "id1",
                TrackedInput {
                    location: "eastus".into(),
                    tags: Map::new(),
                },
            )
            .await
            .expect("identity");
        assert!(created);
        assert_eq!(
            arm.pending_work().await.expect("outbox"),
            2,
            "both steps wait after the first failed"
        );

        // Not yet due: nothing happens; once due (simulated time), the work is delivered.
        arm.deliver().await;
        assert_eq!(arm.pending_work().await.expect("outbox"), 2);
        clock.set_offset(clock.offset_secs() + 60).expect("advance");
        flaky.failures.store(5, Ordering::SeqCst);
        arm.deliver().await;
        assert_eq!(
            arm.pending_work().await.expect("outbox"),
            2,
            "still failing"
        );

        // A restart with a healthy directory resumes the pending work in order.
        drop(arm);
        let healthy = Arc::new(FlakyDirectory::default());
        let clock = Arc::new(Clock::with_offset(clock.offset_secs() + 3600));
        let arm = open(&db, healthy.clone(), clock).await;
        arm.deliver().await;
        assert_eq!(arm.pending_work().await.expect("outbox"), 0);
        let principals = healthy
            .principals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert_eq!(
            principals.get(&view.principal_id).map(Vec::len),
            Some(1),
            "principal and certificate delivered"
        );

        // Deleting the identity removes the principal the same way.
        assert!(
            arm.delete_identity(&admin, &sub, "rg", "id1")
                .await
                .expect("delete")
        );
        assert!(
            healthy
                .principals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        );
        assert!(
            arm.identity_principals()
                .await
                .expect("identities")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn an_unreadable_custom_role_grants_nothing_and_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let arm = open(
            &dir.path().join("arm.db"),
            Arc::new(FlakyDirectory::default()),
            Arc::new(Clock::default()),
        )
        .await;
        let admin = Caller {
            object_id: "admin".into(),
            app_id: "a".into(),
        };
        let guid = "11111111-2222-3333-4444-555555555555";
        let mut tx = arm.inner.store.begin().await.expect("tx");
        Store::put_role_definition(
            &mut tx,
            &crate::store::RoleDefinitionRow {
                guid: guid.into(),
                role_name: "Hand Edited".into(),
                description: String::new(),
                permissions: "not json".into(),
                assignable_scopes: "[]".into(),
                created_at: 0,
                created_by: "x".into(),
                updated_at: 0,
                updated_by: "x".into(),
            },
        )
        .await
        .expect("row");
        tx.commit().await.expect("commit");
        arm.invalidate_caches();
        // Left out of RBAC, with a warning, rather than failing every authorization.
        assert!(arm.custom_roles().await.expect("roles").is_empty());
        let sub = format!("/subscriptions/{}", arm.subscription_id());
        assert!(
            arm.permits(
                &admin,
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                &sub
            )
            .await
            .expect("permits")
        );
        // Neither replaced nor deleted through the API.
        let input = roles::RoleDefinitionInput {
            role_name: "Taken Over".into(),
            description: String::new(),
            permissions: vec![rbac::PermissionBlock {
                actions: vec!["*".into()],
                ..Default::default()
            }],
            assignable_scopes: vec![sub.clone()],
        };
        assert!(matches!(
            arm.put_role_definition(&admin, &sub, guid, input).await,
            Err(ArmError::InvalidParameter(_))
        ));
        assert!(matches!(
            arm.delete_role_definition(&admin, &sub, guid).await,
            Err(ArmError::InvalidParameter(_))
        ));
    }

    #[tokio::test]
    async fn callers_without_roles_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let arm = open(
            &dir.path().join("arm.db"),
            Arc::new(FlakyDirectory::default()),
            Arc::new(Clock::default()),
        )
        .await;
        let stranger = Caller {
            object_id: "stranger".into(),
            app_id: "s".into(),
        };
        let sub = arm.subscription_id().to_string();
        let error = arm
            .put_group(
                &stranger,
                &sub,
                "rg",
                TrackedInput {
                    location: "eastus".into(),
                    tags: Map::new(),
                },
            )
            .await
            .expect_err("denied");
        assert!(
            matches!(error, ArmError::AuthorizationFailed { ref action, .. } if action == "Microsoft.Resources/subscriptions/resourceGroups/write")
        );
        assert!(!arm.group_exists("rg").await.expect("exists"));
    }

    #[tokio::test]
    async fn a_vm_stays_updating_until_its_provisioning_is_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(Clock::default());
        let flaky = Arc::new(FlakyDirectory {
            failures: AtomicUsize::new(1),
            ..Default::default()
        });
        let arm = open(&dir.path().join("arm.db"), flaky.clone(), clock.clone()).await;
        let (admin, sub) = admin_with_group(&arm).await;
        let input = VmInput {
            location: Some("eastus".into()),
            identity: Some(json!({"type": "SystemAssigned"})),
            ..Default::default()
        };
        let (view, _) = arm
            .put_vm(&admin, &sub, "rg", "vm1", input, false)
            .await
            .expect("vm");
        assert_eq!(
            view.resource.state, "Updating",
            "AAD refused once: not Succeeded yet"
        );
        assert_eq!(
            arm.vm(&admin, &sub, "rg", "vm1")
                .await
                .expect("get")
                .resource
                .state,
            "Updating"
        );
        clock.set_offset(clock.offset_secs() + 60).expect("advance");
        arm.deliver().await;
        assert_eq!(arm.pending_work().await.expect("outbox"), 0);
        assert_eq!(
            arm.vm(&admin, &sub, "rg", "vm1")
                .await
                .expect("get")
                .resource
                .state,
            "Succeeded"
        );
    }
}
