//! misim's Instance Metadata Service: the host agent of simulated VMs. ARM installs VMs and
//! identity credentials through the internal host API; each VM gets its own IMDS listener on
//! loopback, where apps get tokens with no code change. Tokens come from AAD through a client
//! assertion signed with the identity's key, exactly as the real host does.

mod coalesce;
pub mod error;
mod host_api;
mod instance;
pub mod relay;
pub mod store;
pub mod throttle;
mod vm_api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use misim_core::Clock;
use misim_core::events::{DEFAULT_RETENTION, Draft, EventLog};
use misim_core::faults::FaultPlans;
use misim_core::internal::{HostedIdentity, HostedVm, HostedVmStatus};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A map for the token path's lookups: foldhash is several times cheaper than std's SipHash on
/// the short keys (ids, resources) looked up for every token request. It is seeded per process
/// but does not resist deliberate collisions, which is acceptable for keys from the user's apps.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub use error::{ImdsError, SERVER_HEADER};
pub use host_api::router as host_router;
pub use store::{MIGRATOR, Store};
pub use vm_api::{
    APP_SERVICE_PATH, EXTENSION_PATH, SOURCE_IP_TAG, router as vm_router, source_router,
};

/// Opens the per-VM listeners (library code never binds sockets itself).
#[async_trait]
pub trait ListenerFactory: Send + Sync {
    /// Binds `preferred` (0: any free port) on the VM-facing address.
    async fn bind(&self, preferred: u16) -> std::io::Result<TcpListener>;
}

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// AAD's authority host.
    pub aad_url: String,
    /// Credential of the host API.
    pub internal_secret: String,
    /// Host name used in the endpoints IMDS reports (`http://host:port`).
    pub public_host: String,
    /// Azure's documented identity rate limits (`--imds-throttle on|off`).
    pub throttle: bool,
}

#[derive(Clone)]
pub struct Imds {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<Clock>,
    config: ImdsConfig,
    /// Posts token requests to AAD.
    http: misim_core::tls::FormClient,
    cache: relay::TokenCache,
    /// Source addresses of VMs (their `misim-ip` tag), for source-address mode.
    addresses: std::sync::RwLock<FastMap<std::net::IpAddr, String>>,
    /// Identities per VM, so a cached token costs no SQL; refreshed on every host API write.
    identities: std::sync::RwLock<FastMap<String, Arc<Vec<store::IdentityRow>>>>,
    throttle: throttle::Throttle,
    /// `None`: no per-VM listeners (split mode serving source-address mode only).
    factory: Option<Arc<dyn ListenerFactory>>,
    listeners: Mutex<HashMap<String, (u16, CancellationToken)>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    events: EventLog,
    faults: FaultPlans,
    /// Cached-token hits recorded once a second per (VM, identity, resource).
    hits: coalesce::HitCoalescer,
    /// Identity keys, parsed once.
    keys: relay::KeyCache,
}

const CLOCK_SETTING: &str = "clock_offset_secs";

fn b64(text: &str) -> Result<Vec<u8>, ImdsError> {
    misim_core::jose::b64_lenient(text).ok_or_else(|| {
        ImdsError::HostBadRequest("certificate and privateKey must be base64".into())
    })
}

impl Imds {
    /// Opens IMDS on its store and serves every VM it already hosts.
    pub async fn open(
        store: Store,
        clock: Arc<Clock>,
        config: ImdsConfig,
        http: misim_core::tls::FormClient,
        factory: Option<Arc<dyn ListenerFactory>>,
        shutdown: CancellationToken,
    ) -> Result<Self, ImdsError> {
        clock.restore(store.setting(CLOCK_SETTING).await?.as_deref());
        let events = EventLog::open(store.pool(), "imds", clock.clone(), DEFAULT_RETENTION).await?;
        let imds = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                http,
                cache: relay::TokenCache::default(),
                identities: std::sync::RwLock::new(FastMap::default()),
                addresses: std::sync::RwLock::new(FastMap::default()),
                throttle: throttle::Throttle::default(),
                factory,
                listeners: Mutex::new(HashMap::new()),
                shutdown,
                tasks: Mutex::new(Vec::new()),
                events,
                faults: FaultPlans::default(),
                hits: coalesce::HitCoalescer::default(),
                keys: relay::KeyCache::default(),
            }),
        };
        for vm in imds.inner.store.vms().await? {
            let port = vm.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
            imds.listen(&vm.vm_id, port).await?;
        }
        imds.refresh_addresses().await?;
        Ok(imds)
    }

    /// IMDS's event log (the timeline's `imds` part).
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// The fault plans in force on the VM-facing endpoints.
    pub fn faults(&self) -> &FaultPlans {
        &self.inner.faults
    }

    pub fn clock_state(&self) -> misim_core::internal::ClockState {
        self.inner.clock.state()
    }

    /// Moves the clock forward and persists it; cached tokens then expire by simulated time.
    pub async fn advance_clock(&self, offset_secs: i64) -> Result<(), ImdsError> {
        self.inner
            .clock
            .set_offset(offset_secs)
            .map_err(|e| ImdsError::HostBadRequest(e.to_string()))?;
        self.inner
            .store
            .set_setting(CLOCK_SETTING, &offset_secs.to_string())
            .await?;
        Ok(())
    }

    /// The VM whose `misim-ip` tag holds `ip`.
    pub fn vm_at(&self, ip: std::net::IpAddr) -> Option<String> {
        self.inner
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }

    /// Rebuilds the address map from the stored VMs.
    async fn refresh_addresses(&self) -> Result<(), ImdsError> {
        let mut map = FastMap::default();
        /// Of a hosted VM, only its tags: the whole record (instance properties included) is
        /// not parsed for every VM on each put.
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: std::collections::BTreeMap<String, String>,
        }
        for vm in self.inner.store.vms().await? {
            let Ok(Tags { tags }) = serde_json::from_str::<Tags>(&vm.metadata) else {
                continue;
            };
            for ip in vm_api::tagged_ips(&tags) {
                map.insert(ip, vm.vm_id.clone());
            }
        }
        *self
            .inner
            .addresses
            .write()
            .unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// The identities installed on a VM (cached).
    pub(crate) async fn vm_identities(
        &self,
        vm_id: &str,
    ) -> Result<Arc<Vec<store::IdentityRow>>, ImdsError> {
        if let Some(hit) = self
            .inner
            .identities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm_id)
        {
            return Ok(hit.clone());
        }
        let rows = Arc::new(self.inner.store.identities(vm_id).await?);
        self.inner
            .identities
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm_id.to_string(), rows.clone());
        Ok(rows)
    }

    /// Host API writes are serialized by ARM's outbox; dropping the entry makes the next read fresh.
    fn forget_identities(&self, vm_id: &str) {
        self.inner
            .identities
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id);
    }

    /// Waits for every per-VM listener to stop (after the shutdown token fired).
    pub async fn join(&self) {
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    fn endpoint(&self, port: u16) -> String {
        format!("http://{}:{port}", self.inner.config.public_host)
    }

    /// The IMDS endpoint of a VM, if it is hosted here.
    pub fn vm_endpoint(&self, vm_id: &str) -> Option<String> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm_id)
            .map(|(port, _)| self.endpoint(*port))
    }

    /// Starts the VM's listener unless it runs; a taken preferred port falls back to any port.
    /// `None` when this IMDS opens no per-VM listeners.
    async fn listen(&self, vm_id: &str, preferred: u16) -> Result<Option<u16>, ImdsError> {
        let Some(factory) = &self.inner.factory else {
            return Ok(None);
        };
        if let Some((port, _)) = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm_id)
        {
            return Ok(Some(*port));
        }
        let mut taken = None;
        let listener = match factory.bind(preferred).await {
            Ok(listener) => listener,
            Err(error) if preferred != 0 => {
                taken = Some(error);
                factory
                    .bind(0)
                    .await
                    .map_err(|e| ImdsError::Internal(format!("cannot open a listener: {e}")))?
            }
            Err(e) => return Err(ImdsError::Internal(format!("cannot open a listener: {e}"))),
        };
        let port = listener
            .local_addr()
            .map_err(|e| ImdsError::Internal(e.to_string()))?
            .port();
        if let Some(error) = taken {
            // The VM's address is not the one asked for (taken by another process, a port this
            // user may not bind...): apps configured with it must hear of it.
            tracing::warn!(vm_id, preferred, port, %error, "a VM's IMDS port could not be bound; it listens on another");
            self.inner.events.record(
                Draft::new(
                    "imds.listener.moved",
                    format!(
                        "port {preferred} could not be bound ({error}); the VM's IMDS listens on port {port}"
                    ),
                )
                .vm(vm_id)
                .details(serde_json::json!({"wantedPort": preferred, "port": port})),
            );
        }
        self.inner.store.set_port(vm_id, port).await?;
        let cancel = self.inner.shutdown.child_token();
        let router = vm_api::router(self.clone(), vm_id.to_string());
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let _ = misim_core::serve::serve(listener, None, router, token).await;
        });
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm_id.to_string(), (port, cancel));
        Ok(Some(port))
    }

    /// Hosts (or updates) a VM; returns its own IMDS endpoint when it has one.
    pub async fn put_vm(&self, vm_id: &str, vm: &HostedVm) -> Result<Option<String>, ImdsError> {
        if uuid::Uuid::parse_str(vm_id).is_err() {
            return Err(ImdsError::HostBadRequest("vmId must be a GUID".into()));
        }
        let metadata = serde_json::to_string(vm).map_err(|e| ImdsError::Internal(e.to_string()))?;
        let existing = self.inner.store.vm(vm_id).await?;
        let existing_port = existing
            .as_ref()
            .and_then(|v| v.port)
            .and_then(|p| u16::try_from(p).ok());
        self.inner
            .store
            .put_vm(
                vm_id,
                &vm.resource_id,
                &metadata,
                self.inner.clock.now_unix(),
            )
            .await?;
        let port = self
            .listen(vm_id, existing_port.unwrap_or(vm.preferred_port))
            .await?;
        self.refresh_addresses().await?;
        if existing.is_none() {
            self.inner.events.record(
                Draft::new(
                    "imds.vm.hosted",
                    format!("hosting VM {} (its IMDS endpoint is ready)", vm.name),
                )
                .vm(vm_id)
                .resource(&vm.resource_id),
            );
        }
        Ok(port.map(|p| self.endpoint(p)))
    }

    /// Stops hosting a VM: its listener closes and its credentials are gone.
    pub async fn delete_vm(&self, vm_id: &str) -> Result<(), ImdsError> {
        let held = self.inner.store.identities(vm_id).await?;
        for identity in &held {
            self.inner.cache.forget(&identity.principal_id);
            self.inner.keys.forget(&identity.principal_id);
        }
        let removed = self.inner.store.vm(vm_id).await?;
        self.inner.store.delete_vm(vm_id).await?;
        self.refresh_addresses().await?;
        self.forget_identities(vm_id);
        for identity in &held {
            self.inner.events.record(
                Draft::new(
                    "imds.credential.removed",
                    format!(
                        "removed the credential of identity {} with the VM",
                        identity.client_id
                    ),
                )
                .vm(vm_id)
                .principal(&identity.principal_id),
            );
        }
        if let Some(vm) = removed {
            self.inner.events.record(
                Draft::new(
                    "imds.vm.removed",
                    format!("stopped hosting VM {}", vm.resource_id),
                )
                .vm(vm_id)
                .resource(vm.resource_id),
            );
        }
        if let Some((_, cancel)) = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id)
        {
            cancel.cancel();
        }
        Ok(())
    }

    pub async fn put_identity(
        &self,
        vm_id: &str,
        principal_id: &str,
        identity: &HostedIdentity,
    ) -> Result<(), ImdsError> {
        if self.inner.store.vm(vm_id).await?.is_none() {
            return Err(ImdsError::HostBadRequest(format!(
                "VM '{vm_id}' is not hosted here"
            )));
        }
        let cert_der = b64(&identity.certificate)?;
        let private_pkcs8 = b64(&identity.private_key)?;
        misim_core::crypto::RsaCertificate::from_der(&cert_der)
            .map_err(|e| ImdsError::HostBadRequest(e.to_string()))?;
        misim_core::crypto::RsaKey::from_pkcs8(&private_pkcs8)
            .map_err(|e| ImdsError::HostBadRequest(e.to_string()))?;
        self.inner.cache.forget(principal_id);
        self.inner.keys.forget(principal_id);
        let row = store::IdentityRow {
            vm_id: vm_id.to_string(),
            principal_id: principal_id.to_string(),
            client_id: identity.client_id.clone(),
            tenant_id: identity.tenant_id.clone(),
            resource_id: identity.resource_id.clone(),
            user_assigned: identity.user_assigned,
            key_id: identity.key_id.clone(),
            cert_der,
            private_pkcs8,
            installed_at: self.inner.clock.now_unix(),
        };
        self.inner.store.put_identity(&row).await?;
        self.forget_identities(vm_id);
        let thumbprint = misim_core::crypto::hex_upper(&misim_core::crypto::sha1(&row.cert_der));
        self.inner.events.record(
            Draft::new(
                "imds.credential.installed",
                format!(
                    "installed the certificate {thumbprint} of identity {} on the VM's host",
                    row.client_id
                ),
            )
            .vm(vm_id)
            .principal(principal_id)
            .resource(&row.resource_id)
            .details(serde_json::json!({"keyId": row.key_id, "thumbprint": thumbprint, "clientId": row.client_id})),
        );
        Ok(())
    }

    pub async fn delete_identity(&self, vm_id: &str, principal_id: &str) -> Result<(), ImdsError> {
        self.inner.cache.forget(principal_id);
        self.inner.keys.forget(principal_id);
        let held = self
            .vm_identities(vm_id)
            .await?
            .iter()
            .find(|i| i.principal_id.eq_ignore_ascii_case(principal_id))
            .map(|i| i.client_id.clone());
        self.inner
            .store
            .delete_identity(vm_id, principal_id)
            .await?;
        self.forget_identities(vm_id);
        if let Some(client_id) = held {
            self.inner.events.record(
                Draft::new(
                    "imds.credential.removed",
                    format!("removed the credential of identity {client_id} from the VM's host"),
                )
                .vm(vm_id)
                .principal(principal_id),
            );
        }
        Ok(())
    }

    /// The status of every hosted VM.
    pub async fn statuses(&self) -> Result<Vec<HostedVmStatus>, ImdsError> {
        let mut out = Vec::new();
        for vm in self.inner.store.vms().await? {
            if let Some(status) = self.status(&vm.vm_id).await? {
                out.push(status);
            }
        }
        Ok(out)
    }

    pub async fn status(&self, vm_id: &str) -> Result<Option<HostedVmStatus>, ImdsError> {
        let Some(vm) = self.inner.store.vm(vm_id).await? else {
            return Ok(None);
        };
        let identities = self
            .inner
            .store
            .identities(vm_id)
            .await?
            .into_iter()
            .map(|i| i.principal_id)
            .collect();
        Ok(Some(HostedVmStatus {
            identity_header: self.identity_header(&vm.vm_id),
            vm_id: vm.vm_id,
            resource_id: vm.resource_id,
            endpoint: self.vm_endpoint(vm_id),
            identities,
        }))
    }

    pub fn internal_secret(&self) -> &str {
        &self.inner.config.internal_secret
    }

    /// The `IDENTITY_HEADER` of a VM's App Service-style endpoint: derived from the internal
    /// secret, so it is stable across restarts and never stored.
    pub fn identity_header(&self, vm_id: &str) -> String {
        let mut input = self.inner.config.internal_secret.as_bytes().to_vec();
        input.extend_from_slice(b"/identity-header/");
        input.extend_from_slice(vm_id.to_ascii_lowercase().as_bytes());
        misim_core::jose::b64url(&misim_core::crypto::sha256(&input))
    }
}
