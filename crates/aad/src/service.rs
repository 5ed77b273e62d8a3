//! The `Aad` facade: one method per use case. Reads the clock once per use case, owns
//! transactions through the store, and calls the pure rules in `domain`.

use std::collections::HashMap;
use std::sync::Arc;

use misim_core::Clock;
use misim_core::crypto::{JwsAlg, RsaCertificate, sha1, sha256};
use misim_core::events::{DEFAULT_RETENTION, Draft, EventLog};
use misim_core::jose::split_compact;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::AadConfig;
use crate::domain::assertion::{self, AssertionContext, AssertionError, SignatureMemo};
use crate::domain::claims::{self, ClaimsInput, ClientAuth, TokenVersion};
use crate::domain::directory::{
    Application, FederatedCredential, FederatedCredentialDraft, KeyCredential, PasswordCredential,
    PrincipalKind, ServicePrincipal, Tenant, new_client_secret,
};
use crate::domain::federation::{self, FederationError, IssuerKeys};
use crate::domain::resource::{self, GRAPH_APP_ID, ScopeError, TOKEN_EXCHANGE_APP_ID};
use crate::error::AadError;
use crate::keys::SigningKeys;
use crate::store::Store;
use misim_core::cache::ReadCache;

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const ADMIN_SECRET_SETTING: &str = "bootstrap_admin_secret";
const ADMIN_APP_SETTING: &str = "bootstrap_admin_app_id";
const CLOCK_SETTING: &str = "clock_offset_secs";
/// Default lifetime of secrets and certificates added without an end date (Graph: 2 years).
const DEFAULT_CREDENTIAL_SECS: i64 = 2 * 365 * 86_400;
/// Form parameters whose repetition is rejected rather than silently resolved.
const SINGLE_VALUED: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "resource",
];

/// The client AAD fetches issuers' discovery documents and keys with: no proxy, no redirects,
/// bounded in time, trusting the deployment's CA for HTTPS (plain HTTP for local issuers). It
/// never reads the platform's certificate store, which the docker images lack.
fn issuer_client(config: &AadConfig) -> Result<reqwest::Client, AadError> {
    let timeout = std::time::Duration::from_secs(10);
    match &config.trusted_ca_pem {
        Some(ca) => misim_core::tls::http_client(ca, timeout),
        None => misim_core::tls::http_client_without_roots(timeout),
    }
    .map_err(|e| AadError::Internal(format!("the client for federated issuers: {e}")))
}

#[derive(Clone)]
pub struct Aad {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<Clock>,
    config: AadConfig,
    keys: SigningKeys,
    tenant: Tenant,
    admin: Bootstrap,
    /// Client records by lower-case app id; cleared on every directory write.
    clients: ReadCache<Arc<ClientRecord>>,
    events: EventLog,
    faults: misim_core::faults::FaultPlans,
    /// Signing keys of the issuers that federated credentials trust.
    issuer_keys: IssuerKeys,
    /// Serialises Graph's writes of applications' federated credentials with each other and
    /// with application deletes: each checks what is held, then writes.
    credential_writes: tokio::sync::Mutex<()>,
}

/// The bootstrap admin of CONTRACT.md (Seeded state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub object_id: String,
}

/// Everything the token path needs to know about a client.
struct ClientRecord {
    principal: ServicePrincipal,
    keys: Vec<KeyCredential>,
    /// The keys' certificates, parsed once.
    certificates: HashMap<String, RsaCertificate>,
    passwords: Vec<PasswordCredential>,
    /// Reused assertions already verified against `keys` (dropped with the record).
    signatures: SignatureMemo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    V1,
    V2,
}

/// A minted access token and what the endpoint reports about it.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: String,
    pub expires_in: i64,
    pub expires_on: i64,
    pub not_before: i64,
    pub resource: String,
}

/// A caller of Graph, from a verified bearer token.
#[derive(Debug, Clone)]
pub struct GraphCaller {
    pub object_id: String,
    pub is_admin: bool,
}

/// A tenant named in a URL path.
enum TenantRef {
    Specific(Tenant),
    /// `common` / `organizations`: resolved from the client's home tenant.
    Multi,
}

/// An application with its credentials, for Graph.
#[derive(Debug, Clone)]
pub struct ApplicationView {
    pub app: Application,
    pub keys: Vec<KeyCredential>,
    pub passwords: Vec<PasswordCredential>,
}

/// A service principal with its credentials, for Graph and the internal API.
#[derive(Debug, Clone)]
pub struct PrincipalView {
    pub sp: ServicePrincipal,
    pub keys: Vec<KeyCredential>,
}

/// A certificate to register, as Graph's `keyCredentials[]` gives it.
#[derive(Debug, Clone, Default)]
pub struct KeyCredentialDraft {
    pub key_id: Option<String>,
    pub key: String,
    pub display_name: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct ApplicationDraft {
    pub display_name: Option<String>,
    pub identifier_uris: Option<Vec<String>>,
    pub token_version: Option<u8>,
    pub key_credentials: Option<Vec<KeyCredentialDraft>>,
}

/// A new client secret: the only time its text is shown.
#[derive(Debug, Clone)]
pub struct NewPassword {
    pub credential: PasswordCredential,
    pub secret_text: String,
}

/// One of an application's credentials by its id, or else by its name (an id wins over another
/// credential's name equal to it).
fn find_credential(
    held: &[FederatedCredential],
    application: &str,
    credential: &str,
) -> Result<FederatedCredential, AadError> {
    held.iter()
        .find(|c| !c.id.is_empty() && c.id.eq_ignore_ascii_case(credential))
        .or_else(|| held.iter().find(|c| c.name.eq_ignore_ascii_case(credential)))
        .cloned()
        .ok_or_else(|| {
            AadError::GraphNotFound(format!(
                "FederatedIdentityCredential '{credential}' does not exist on application '{application}'."
            ))
        })
}

/// Graph keeps an issuer and subject pair unique within an application.
fn unique_issuer_and_subject(
    held: &[FederatedCredential],
    credential: &FederatedCredential,
) -> Result<(), AadError> {
    match held
        .iter()
        .find(|c| c.issuer == credential.issuer && c.subject == credential.subject)
    {
        Some(other) => Err(AadError::GraphConflict(format!(
            "FederatedIdentityCredential {} already trusts issuer '{}' and subject '{}'.",
            other.name, credential.issuer, credential.subject
        ))),
        None => Ok(()),
    }
}

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

fn is_guid(text: &str) -> bool {
    Uuid::parse_str(text).is_ok()
}

impl Aad {
    /// Opens AAD on its store: seeds the tenant and bootstrap admin on first use, loads the
    /// signing keys, and restores the persisted clock offset into `clock`.
    pub async fn open(
        store: Store,
        clock: Arc<Clock>,
        config: AadConfig,
    ) -> Result<Self, AadError> {
        clock.restore(store.setting(CLOCK_SETTING).await?.as_deref());
        let now = clock.now();
        let tenant = match store.tenants().await?.into_iter().next() {
            Some(tenant) => tenant,
            None => {
                let tenant = Tenant {
                    id: new_id(),
                    default_domain: config.tenant_domain.clone(),
                    display_name: "misim Simulated Tenant".into(),
                    created_at: now.unix_timestamp(),
                };
                store.insert_tenant(&tenant).await?;
                tenant
            }
        };
        let admin = seed_admin(&store, &tenant, now.unix_timestamp()).await?;
        let keys = SigningKeys::load_or_create(&store, now).await?;
        let events = EventLog::open(
            store.pool().clone(),
            "aad",
            clock.clone(),
            DEFAULT_RETENTION,
        )
        .await?;
        let issuer_keys = IssuerKeys::new(issuer_client(&config)?);
        let aad = Self {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                keys,
                tenant,
                admin,
                clients: ReadCache::new(10_000),
                events,
                faults: Default::default(),
                issuer_keys,
                credential_writes: tokio::sync::Mutex::new(()),
            }),
        };
        // Time may have passed while AAD was down (split mode).
        aad.roll_signing_keys().await?;
        Ok(aad)
    }

    pub fn bootstrap(&self) -> &Bootstrap {
        &self.inner.admin
    }

    pub fn tenant(&self) -> &Tenant {
        &self.inner.tenant
    }

    pub fn config(&self) -> &AadConfig {
        &self.inner.config
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.inner.clock
    }

    /// The simulated clock as the internal API reports it.
    pub fn clock_state(&self) -> misim_core::internal::ClockState {
        self.inner.clock.state()
    }

    /// Moves the clock forward to `offset_secs`, persists it and does what became due (the
    /// signing-key roll); returns once done.
    pub async fn advance_clock(&self, offset_secs: i64) -> Result<(), AadError> {
        self.inner
            .clock
            .set_offset(offset_secs)
            .map_err(|e| AadError::GraphBadRequest(e.to_string()))?;
        self.save_clock().await?;
        self.roll_signing_keys().await
    }

    /// Rolls the signing key as often as its period passed, each roll an event.
    pub async fn roll_signing_keys(&self) -> Result<(), AadError> {
        let rolls = self
            .inner
            .keys
            .roll_if_due(
                &self.inner.store,
                self.inner.clock.now(),
                self.inner.config.signing_key_roll_secs,
            )
            .await?;
        for roll in rolls {
            self.inner.events.record(
                Draft::new(
                    "aad.signing_key.rolled",
                    format!(
                        "rolled the token-signing key: {} signs now; {} stays in JWKS until the next roll",
                        roll.current, roll.previous
                    ),
                )
                .details(json!({"current": roll.current, "previous": roll.previous})),
            );
        }
        Ok(())
    }

    /// Persists the clock offset (called after the clock moved).
    pub async fn save_clock(&self) -> Result<(), AadError> {
        Ok(self
            .inner
            .store
            .set_setting(CLOCK_SETTING, &self.inner.clock.offset_secs().to_string())
            .await?)
    }

    pub fn v1_issuer(&self, tenant_id: &str) -> String {
        format!("{}/{}/", self.inner.config.public_url, tenant_id)
    }

    pub fn v2_issuer(&self, tenant_id: &str) -> String {
        format!("{}/{}/v2.0", self.inner.config.public_url, tenant_id)
    }

    fn invalidate_clients(&self) {
        self.inner.clients.clear();
    }

    fn resolve_tenant(&self, segment: &str) -> Result<TenantRef, AadError> {
        let tenant = &self.inner.tenant;
        if segment.eq_ignore_ascii_case("common") || segment.eq_ignore_ascii_case("organizations") {
            return Ok(TenantRef::Multi);
        }
        if segment.eq_ignore_ascii_case("consumers") {
            return Err(AadError::NoTenantInformation);
        }
        if segment.eq_ignore_ascii_case(&tenant.id)
            || segment.eq_ignore_ascii_case(&tenant.default_domain)
        {
            return Ok(TenantRef::Specific(tenant.clone()));
        }
        let valid_chars = !segment.is_empty()
            && segment.len() <= 256
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if is_guid(segment) || (valid_chars && segment.contains('.')) {
            Err(AadError::TenantNotFound(segment.to_string()))
        } else {
            Err(AadError::InvalidTenant(segment.to_string()))
        }
    }

    /// Checks a tenant path segment of a discovery document: the tenant id for `{tenantid}`
    /// placeholders, or `None` for `common`/`organizations`.
    pub fn discovery_tenant(&self, segment: &str) -> Result<Option<String>, AadError> {
        match self.resolve_tenant(segment)? {
            TenantRef::Specific(t) => Ok(Some(t.id)),
            TenantRef::Multi => Ok(None),
        }
    }

    pub fn jwks(&self, v2: bool) -> Value {
        let issuer = v2.then(|| format!("{}/{{tenantid}}/v2.0", self.inner.config.public_url));
        self.inner.keys.jwks(issuer.as_deref())
    }

    // ------------------------------------------------------------------ token endpoint

    /// The client-credentials grant on the v1 or v2 token endpoint.
    /// Fault plans on the token endpoints.
    pub fn faults(&self) -> &misim_core::faults::FaultPlans {
        &self.inner.faults
    }

    /// AAD's event log (the timeline's `aad` part).
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// The token endpoint's use case; every answer, granted or refused, is an event.
    pub async fn issue_token(
        &self,
        endpoint: Endpoint,
        tenant_segment: &str,
        form: &[(String, String)],
        basic: Option<(String, String)>,
    ) -> Result<TokenGrant, AadError> {
        let result = self
            .grant_token(endpoint, tenant_segment, form, basic.clone())
            .await;
        if let Err(error) = &result {
            let client_id = form
                .iter()
                .find(|(k, _)| k == "client_id")
                .map(|(_, v)| v.clone())
                .or(basic.map(|(id, _)| id))
                .unwrap_or_default();
            self.inner.events.record(
                Draft::new(
                    "aad.token.refused",
                    format!("refused a token to client {client_id}: {error}"),
                )
                .details(json!({"clientId": client_id, "error": error.to_string()})),
            );
        }
        result
    }

    async fn grant_token(
        &self,
        endpoint: Endpoint,
        tenant_segment: &str,
        form: &[(String, String)],
        basic: Option<(String, String)>,
    ) -> Result<TokenGrant, AadError> {
        let tenant_ref = self.resolve_tenant(tenant_segment)?;
        for name in SINGLE_VALUED {
            if form.iter().filter(|(k, _)| k == name).count() > 1 {
                return Err(AadError::DuplicateParameter((*name).to_string()));
            }
        }
        let param = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let grant_type = param("grant_type").ok_or(AadError::MissingParameter("grant_type"))?;
        if grant_type != "client_credentials" {
            return Err(AadError::UnsupportedGrantType(grant_type.to_string()));
        }
        let (basic_id, basic_secret) = match &basic {
            Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
            None => (None, None),
        };
        let client_id = param("client_id")
            .or(basic_id)
            .ok_or(AadError::MissingParameter("client_id"))?;
        let requested = match endpoint {
            Endpoint::V2 => {
                let scope = param("scope").ok_or(AadError::MissingParameter("scope"))?;
                resource::resource_from_scope(scope).map_err(|e| match e {
                    ScopeError::Invalid(s) | ScopeError::MultipleResources(s) => {
                        AadError::InvalidScope(s)
                    }
                })?
            }
            Endpoint::V1 => param("resource")
                .ok_or(AadError::MissingParameter("resource"))?
                .to_string(),
        };
        let tenant = match tenant_ref {
            TenantRef::Specific(t) => t,
            TenantRef::Multi => self.inner.tenant.clone(),
        };
        let client = self.client(client_id, &tenant).await?;

        let sim_now = self.inner.clock.now_unix();
        let secret = param("client_secret").or(basic_secret);
        let assertion = param("client_assertion");
        let auth = match (secret, assertion) {
            (Some(_), Some(_)) => return Err(AadError::ConflictingClientCredentials),
            (None, None) => return Err(AadError::MissingClientCredential),
            (Some(secret), None) => {
                let matching = client.passwords.iter().find(|p| p.matches(secret));
                match matching {
                    None => {
                        return Err(AadError::InvalidClientSecret {
                            client_id: client_id.to_string(),
                        });
                    }
                    Some(p) if !p.valid_at(sim_now) => {
                        return Err(AadError::ExpiredClientSecret {
                            client_id: client_id.to_string(),
                        });
                    }
                    Some(_) => ClientAuth::Secret,
                }
            }
            (None, Some(token)) => {
                let kind = param("client_assertion_type")
                    .ok_or(AadError::MissingParameter("client_assertion_type"))?;
                if kind != JWT_BEARER {
                    return Err(AadError::UnsupportedAssertionType(kind.to_string()));
                }
                // The context borrows closures that are not Send: it ends before any await.
                let checked = {
                    let audience_ok =
                        |aud: &str| self.assertion_audience_ok(aud, &tenant, tenant_segment);
                    let parsed = |key: &KeyCredential| client.certificates.get(&key.key_id);
                    let ctx = AssertionContext {
                        parsed: &parsed,
                        client_id,
                        credentials: &client.keys,
                        sim_now,
                        wall_now: Clock::wall_now().unix_timestamp(),
                        audience_ok: &audience_ok,
                        memo: Some(&client.signatures),
                    };
                    assertion::validate(token, &ctx).map(|_| ())
                };
                // A managed identity's own certificate assertion is the common case (every
                // uncached IMDS token), so it is tried first, without parsing twice. One that
                // fails for want of a known thumbprint (or, for a managed identity, for its
                // issuer), and was not issued by the client itself, is an external token
                // (GitHub's carry `x5t` too) that its federated credentials may trust (spec
                // §6.2, §6.3). An application's assertion signed with its own certificate and
                // naming another issuer keeps its certificate error.
                let foreign = match &checked {
                    Err(AssertionError::NoThumbprint | AssertionError::KeyNotFound { .. }) => true,
                    Err(AssertionError::IssuerOrSubject) => client.principal.is_managed_identity(),
                    _ => false,
                };
                match checked {
                    Ok(_) => {}
                    Err(_)
                        if foreign
                            && let Ok(jws) = split_compact(token)
                            && !jws
                                .claims
                                .get("iss")
                                .and_then(Value::as_str)
                                .is_some_and(|iss| iss.eq_ignore_ascii_case(client_id)) =>
                    {
                        self.validate_federated(&client.principal, &jws).await?;
                        return self
                            .token_for(
                                &client,
                                &tenant,
                                requested,
                                ClientAuth::Certificate,
                                sim_now,
                            )
                            .await;
                    }
                    Err(reason) => return Err(AadError::InvalidAssertion(reason)),
                }
                let mut draft = Draft::new(
                    "aad.assertion.validated",
                    format!(
                        "validated the client assertion of {} against its registered certificate",
                        client.principal.display_name
                    ),
                )
                .principal(&client.principal.object_id)
                .details(json!({"clientId": client_id}));
                if let PrincipalKind::ManagedIdentity { resource_id, .. } = &client.principal.kind {
                    draft = draft.resource(resource_id);
                }
                self.inner.events.record(draft);
                ClientAuth::Certificate
            }
        };

        self.token_for(&client, &tenant, requested, auth, sim_now)
            .await
    }

    /// Issues the token a validated client asked for (`requested`: its resource as sent).
    async fn token_for(
        &self,
        client: &ClientRecord,
        tenant: &Tenant,
        requested: String,
        auth: ClientAuth,
        sim_now: i64,
    ) -> Result<TokenGrant, AadError> {
        let (audience, version) = self.resolve_resource(&requested, tenant).await?;
        let (mi_resource_id, lifetime) = match &client.principal.kind {
            PrincipalKind::ManagedIdentity { resource_id, .. } => (
                Some(resource_id.as_str()),
                self.inner.config.mi_token_lifetime_secs,
            ),
            PrincipalKind::Application => (None, self.inner.config.app_token_lifetime_secs),
        };
        let issuer = match version {
            TokenVersion::V1 => self.v1_issuer(&tenant.id),
            TokenVersion::V2 => self.v2_issuer(&tenant.id),
        };
        let claims = claims::claims(&ClaimsInput {
            version,
            issuer: &issuer,
            tenant_id: &tenant.id,
            audience: &audience,
            app_id: &client.principal.app_id,
            object_id: &client.principal.object_id,
            auth,
            now: sim_now,
            lifetime_secs: lifetime,
            mi_resource_id,
            tenant_created_at: tenant.created_at,
            // uuid's thread-local ChaCha generator (seeded from the OS): cheaper per token than
            // aws-lc's DRBG, which was half a percent of the token path's CPU.
            unique_token_id: uuid::Uuid::new_v4().into_bytes(),
        });
        let (not_before, expires_on) = claims::lifetime(sim_now, lifetime);
        let (access_token, kid) = self
            .inner
            .keys
            .sign(version == TokenVersion::V1, claims.to_json())
            .await?;
        let mut draft = Draft::new(
            "aad.token.issued",
            format!(
                "issued a token for {audience} to {}",
                client.principal.display_name
            ),
        )
        .principal(&client.principal.object_id)
        .details(json!({"clientId": client.principal.app_id, "audience": audience, "kid": kid, "expiresOn": expires_on}));
        if let Some(resource_id) = mi_resource_id {
            draft = draft.resource(resource_id);
        }
        self.inner.events.record(draft);
        Ok(TokenGrant {
            access_token,
            expires_in: lifetime,
            expires_on,
            not_before,
            resource: requested,
        })
    }

    /// Validates a token presented as a client's assertion against the client's federated
    /// credentials (a managed identity's, or its application's): issuer, subject and audience
    /// first (nothing is fetched for a token no credential trusts), then time, then the
    /// signature with the issuer's published key, or with this AAD's own keys for a managed
    /// identity's token (§6.3).
    async fn validate_federated(
        &self,
        principal: &ServicePrincipal,
        jws: &misim_core::jose::CompactJws<'_>,
    ) -> Result<(), AadError> {
        let owner_id = match &principal.kind {
            PrincipalKind::ManagedIdentity { .. } => Some(principal.object_id.clone()),
            PrincipalKind::Application => self
                .inner
                .store
                .application_by_app_id(&principal.app_id)
                .await?
                .map(|app| app.object_id),
        };
        let credentials = match owner_id {
            Some(owner_id) => self.inner.store.federated_credentials(&owner_id).await?,
            None => Vec::new(),
        };
        let refused = |error: FederationError| match error {
            FederationError::NoMatch {
                issuer,
                subject,
                audience,
            } => AadError::FederatedNoMatch(format!(
                "Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. Assertion Audience: '{audience}'."
            )),
            FederationError::IssuerUnreachable(detail) => {
                AadError::FederatedIssuerUnreachable(detail)
            }
            FederationError::Assertion(reason) => AadError::InvalidAssertion(reason),
        };
        let credential = federation::matching(&credentials, jws).map_err(refused)?;
        if self.is_own_issuer(&credential.issuer) {
            self.validate_identity_assertion(principal, &credential.issuer, jws)
                .await?;
        } else {
            federation::check_time(jws, Clock::wall_now().unix_timestamp())
                .map_err(AadError::InvalidAssertion)?;
            self.inner
                .issuer_keys
                .verify(&credential.issuer, jws)
                .await
                .map_err(refused)?;
        }
        let mut draft = Draft::new(
            "aad.federated.validated",
            format!(
                "accepted a token of {} for {} through its federated credential {}",
                credential.issuer, principal.display_name, credential.name
            ),
        )
        .principal(&principal.object_id)
        .details(json!({"issuer": credential.issuer, "subject": credential.subject, "credential": credential.name}));
        if let PrincipalKind::ManagedIdentity { resource_id, .. } = &principal.kind {
            draft = draft.resource(resource_id);
        }
        self.inner.events.record(draft);
        Ok(())
    }

    /// Whether `issuer` is this AAD's (v1 or v2) issuer of its tenant, exactly as its tokens
    /// carry it (credentials match issuers exactly).
    fn is_own_issuer(&self, issuer: &str) -> bool {
        let tenant = &self.inner.tenant.id;
        issuer == self.v1_issuer(tenant) || issuer == self.v2_issuer(tenant)
    }

    /// A token of this AAD as an application's federated credential (spec §6.3): only a
    /// user-assigned managed identity's token for AAD Token Exchange (v2 issuer), signed with
    /// this AAD's key and within its lifetime at simulated time (the time it was issued at).
    /// Entra's own tokens stand in for nothing else: an identity's token for ARM, handed to ARM
    /// every day, must not also be an application's credential.
    async fn validate_identity_assertion(
        &self,
        owner: &ServicePrincipal,
        issuer: &str,
        jws: &misim_core::jose::CompactJws<'_>,
    ) -> Result<(), AadError> {
        let refused = || AadError::FederatedOwnIssuer(issuer.to_string());
        let for_exchange = match jws.claims.get("aud") {
            Some(Value::String(aud)) => resource::well_known(aud)
                .is_some_and(|known| known.app_id == Some(TOKEN_EXCHANGE_APP_ID)),
            _ => false,
        };
        if owner.is_managed_identity()
            || issuer != self.v2_issuer(&self.inner.tenant.id)
            || !for_exchange
        {
            return Err(refused());
        }
        self.verify_own_signature(jws)
            .map_err(AadError::InvalidAssertion)?;
        federation::check_time(jws, self.inner.clock.now_unix())
            .map_err(AadError::InvalidAssertion)?;
        let subject = jws.claims.get("sub").and_then(Value::as_str).unwrap_or("");
        match self.inner.store.service_principal(subject).await? {
            Some(ServicePrincipal {
                kind:
                    PrincipalKind::ManagedIdentity {
                        user_assigned: true,
                        ..
                    },
                ..
            }) => Ok(()),
            _ => Err(refused()),
        }
    }

    /// Sets a managed identity's federated credential (ARM's internal call); idempotent.
    pub async fn put_federated_credential(
        &self,
        object_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), AadError> {
        let view = self.service_principal(object_id, false).await?;
        if !view.sp.is_managed_identity() {
            return Err(AadError::GraphBadRequest(format!(
                "'{object_id}' is not a managed identity."
            )));
        }
        if credential.name.is_empty()
            || credential.issuer.is_empty()
            || credential.subject.is_empty()
            || credential.audiences.is_empty()
        {
            return Err(AadError::GraphBadRequest(
                "A federated credential needs a name, an issuer, a subject and an audience.".into(),
            ));
        }
        self.inner
            .store
            .put_federated_credential(object_id, &credential)
            .await?;
        self.inner.events.record(
            Draft::new(
                "aad.federated.registered",
                format!(
                    "registered federated credential {} on {object_id}: tokens of {} for {}",
                    credential.name, credential.issuer, credential.subject
                ),
            )
            .principal(object_id),
        );
        Ok(())
    }

    /// An application (by object id) and its federated credentials (Graph).
    pub async fn application_federated_credentials(
        &self,
        id: &str,
    ) -> Result<(Application, Vec<FederatedCredential>), AadError> {
        let app = self.inner.store.application(id).await?.ok_or_else(|| {
            AadError::GraphNotFound(format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."))
        })?;
        let held = self
            .inner
            .store
            .federated_credentials(&app.object_id)
            .await?;
        Ok((app, held))
    }

    /// One of an application's federated credentials, by its id or else by its name (Graph
    /// takes both; an id wins over another credential's name equal to it).
    pub async fn application_federated_credential(
        &self,
        id: &str,
        credential: &str,
    ) -> Result<(Application, FederatedCredential), AadError> {
        let (app, held) = self.application_federated_credentials(id).await?;
        let found = find_credential(&held, id, credential)?;
        Ok((app, found))
    }

    /// Adds a federated credential to an application (Graph's checks, a fresh id).
    pub async fn add_application_federated_credential(
        &self,
        id: &str,
        draft: FederatedCredentialDraft,
    ) -> Result<FederatedCredential, AadError> {
        let _write = self.inner.credential_writes.lock().await;
        let (app, held) = self.application_federated_credentials(id).await?;
        let mut credential = FederatedCredential::default();
        draft.apply(&mut credential);
        credential.id = new_id();
        federation::check_application_credential(&credential).map_err(AadError::GraphBadRequest)?;
        let duplicate_name = || {
            AadError::GraphConflict(format!(
                "FederatedIdentityCredential with name {} already exists.",
                credential.name
            ))
        };
        if held
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(&credential.name))
        {
            return Err(duplicate_name());
        }
        if held.len() >= misim_core::federation::MAX_CREDENTIALS {
            return Err(AadError::GraphBadRequest(format!(
                "An application may have at most {} federated identity credentials.",
                misim_core::federation::MAX_CREDENTIALS
            )));
        }
        unique_issuer_and_subject(&held, &credential)?;
        match self
            .inner
            .store
            .insert_federated_credential(&app.object_id, &credential)
            .await
        {
            Err(crate::store::StoreError::Conflict) => return Err(duplicate_name()),
            other => other?,
        }
        self.record_federated_registered(&app, &credential);
        Ok(credential)
    }

    /// Changes an application's federated credential; its name is immutable.
    pub async fn update_application_federated_credential(
        &self,
        id: &str,
        credential: &str,
        draft: FederatedCredentialDraft,
    ) -> Result<(), AadError> {
        let _write = self.inner.credential_writes.lock().await;
        let (app, held) = self.application_federated_credentials(id).await?;
        let current = find_credential(&held, id, credential)?;
        if draft
            .name
            .as_ref()
            .is_some_and(|name| !name.eq_ignore_ascii_case(&current.name))
        {
            return Err(AadError::GraphBadRequest(
                "Property 'name' of a federated identity credential cannot be changed.".into(),
            ));
        }
        let mut updated = current.clone();
        draft.apply(&mut updated);
        updated.name = current.name.clone();
        federation::check_application_credential(&updated).map_err(AadError::GraphBadRequest)?;
        if updated == current {
            return Ok(());
        }
        let others: Vec<_> = held
            .into_iter()
            .filter(|c| c.name != current.name)
            .collect();
        unique_issuer_and_subject(&others, &updated)?;
        self.inner
            .store
            .put_federated_credential(&app.object_id, &updated)
            .await?;
        self.record_federated_registered(&app, &updated);
        Ok(())
    }

    /// Removes an application's federated credential.
    pub async fn delete_application_federated_credential(
        &self,
        id: &str,
        credential: &str,
    ) -> Result<(), AadError> {
        let _write = self.inner.credential_writes.lock().await;
        let (app, current) = self
            .application_federated_credential(id, credential)
            .await?;
        self.inner
            .store
            .delete_federated_credential(&app.object_id, &current.name)
            .await?;
        self.inner.events.record(
            Draft::new(
                "aad.federated.removed",
                format!(
                    "removed federated credential {} from application {}",
                    current.name, app.display_name
                ),
            )
            .details(json!({"applicationId": app.object_id, "credential": current.name})),
        );
        Ok(())
    }

    fn record_federated_registered(&self, app: &Application, credential: &FederatedCredential) {
        self.inner.events.record(
            Draft::new(
                "aad.federated.registered",
                format!(
                    "registered federated credential {} on application {}: tokens of {} for {}",
                    credential.name, app.display_name, credential.issuer, credential.subject
                ),
            )
            .details(json!({"applicationId": app.object_id, "credential": credential.name, "issuer": credential.issuer, "subject": credential.subject})),
        );
    }

    /// The names of a managed identity's federated credentials.
    pub async fn federated_credential_names(
        &self,
        object_id: &str,
    ) -> Result<Vec<String>, AadError> {
        Ok(self
            .inner
            .store
            .federated_credentials(object_id)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect())
    }

    /// Removes a managed identity's federated credential; whether there was one.
    pub async fn delete_federated_credential(
        &self,
        object_id: &str,
        name: &str,
    ) -> Result<bool, AadError> {
        // The table also holds applications' credentials, which only Graph removes. (A
        // managed identity already gone is no error: its credentials went with it.)
        let principal = self.inner.store.service_principal(object_id).await?;
        let not_an_identity = match principal {
            Some(sp) => !sp.is_managed_identity(),
            None => self.inner.store.application(object_id).await?.is_some(),
        };
        if not_an_identity {
            return Err(AadError::GraphBadRequest(format!(
                "'{object_id}' is not a managed identity."
            )));
        }
        Ok(self
            .inner
            .store
            .delete_federated_credential(object_id, name)
            .await?)
    }

    async fn client(
        &self,
        client_id: &str,
        tenant: &Tenant,
    ) -> Result<Arc<ClientRecord>, AadError> {
        let cache_key = client_id.to_ascii_lowercase();
        if let Some(hit) = self.inner.clients.get(&cache_key) {
            return Ok(hit);
        }
        let generation = self.inner.clients.generation();
        let store = &self.inner.store;
        let not_found = || AadError::ApplicationNotFound {
            client_id: client_id.to_string(),
            tenant: tenant.id.clone(),
        };
        if !is_guid(client_id) {
            return Err(not_found());
        }
        let principal = match store.service_principal_by_app_id(client_id).await? {
            Some(sp) => sp,
            None if store.application_by_app_id(client_id).await?.is_some() => {
                return Err(AadError::ServicePrincipalMissing {
                    client_id: client_id.to_string(),
                    tenant: tenant.id.clone(),
                });
            }
            None => return Err(not_found()),
        };
        let app = store.application_by_app_id(client_id).await?;
        let mut owners = vec![principal.object_id.as_str()];
        if let Some(app) = &app {
            owners.push(app.object_id.as_str());
        }
        let keys = store.key_credentials(&owners).await?;
        let certificates = keys
            .iter()
            .filter_map(|k| {
                RsaCertificate::from_der(&k.cert_der)
                    .ok()
                    .map(|c| (k.key_id.clone(), c))
            })
            .collect();
        let record = Arc::new(ClientRecord {
            keys,
            certificates,
            passwords: store.password_credentials(&owners).await?,
            principal,
            signatures: SignatureMemo::default(),
        });
        self.inner
            .clients
            .insert_if_current(generation, cache_key, record.clone());
        Ok(record)
    }

    /// Assertion `aud`: the token endpoint (v2 or v1) or the issuer, on our public origin or one
    /// of its aliases, for this tenant by id, domain, or the path segment the client used.
    fn assertion_audience_ok(&self, aud: &str, tenant: &Tenant, segment: &str) -> bool {
        let config = &self.inner.config;
        let Some(rest) = std::iter::once(&config.public_url)
            .chain(config.alias_origins.iter())
            .find_map(|origin| {
                aud.get(..origin.len())
                    .filter(|p| p.eq_ignore_ascii_case(origin))
                    .map(|_| &aud[origin.len()..])
            })
        else {
            return false;
        };
        let rest = rest.trim_start_matches('/');
        let (tenant_part, path) = rest.split_once('/').unwrap_or((rest, ""));
        let tenant_matches = [tenant.id.as_str(), tenant.default_domain.as_str(), segment]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(tenant_part));
        let path = path.trim_end_matches('/');
        tenant_matches
            && ["oauth2/v2.0/token", "oauth2/token", "", "v2.0"]
                .iter()
                .any(|p| p.eq_ignore_ascii_case(path))
    }

    /// The `aud` and token version for a requested resource.
    async fn resolve_resource(
        &self,
        requested: &str,
        tenant: &Tenant,
    ) -> Result<(String, TokenVersion), AadError> {
        if let Some(known) = resource::well_known(requested) {
            // Tokens for AAD Token Exchange stand in as federated credentials (spec §6.3):
            // v2-issuer tokens whose audience is the URI a credential names.
            let version = if known.app_id == Some(TOKEN_EXCHANGE_APP_ID) {
                TokenVersion::V2
            } else {
                TokenVersion::V1
            };
            return Ok((requested.to_string(), version));
        }
        if resource::same_resource(requested, &self.inner.config.graph_url) {
            return Ok((requested.to_string(), TokenVersion::V1));
        }
        let app = if is_guid(requested.trim_end_matches('/')) {
            self.inner
                .store
                .application_by_app_id(requested.trim_end_matches('/'))
                .await?
        } else {
            self.inner
                .store
                .applications()
                .await?
                .into_iter()
                .find(|a| {
                    a.identifier_uris
                        .iter()
                        .any(|u| resource::same_resource(u, requested))
                })
        };
        match app {
            Some(app) if app.token_version == 2 => Ok((app.app_id, TokenVersion::V2)),
            Some(_) => Ok((requested.to_string(), TokenVersion::V1)),
            None => Err(AadError::ResourceNotFound {
                resource: requested.to_string(),
                tenant: tenant.id.clone(),
            }),
        }
    }

    // ------------------------------------------------------------------ token verification

    /// Verifies a token this AAD issued (signature, issuer, expiry at simulated time) and
    /// returns its claims.
    pub fn verify_own_token(&self, token: &str) -> Result<serde_json::Map<String, Value>, String> {
        let jws = split_compact(token).map_err(|e| e.to_string())?;
        self.verify_own_signature(&jws).map_err(|e| match e {
            AssertionError::UnsupportedAlgorithm(_) => "unsupported token algorithm".to_string(),
            AssertionError::KeyNotFound { .. } => "token signed by an unknown key".to_string(),
            AssertionError::Malformed(detail) => detail,
            // verify_own_signature refuses only in the ways above.
            _ => "token signature is invalid".to_string(),
        })?;
        let tenant = &self.inner.tenant.id;
        let iss = jws.claims.get("iss").and_then(Value::as_str).unwrap_or("");
        if iss != self.v1_issuer(tenant) && iss != self.v2_issuer(tenant) {
            return Err("token issuer is not this tenant".into());
        }
        let exp = jws
            .claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or("token has no exp")?;
        if exp <= self.inner.clock.now_unix() {
            return Err("token has expired".into());
        }
        Ok(jws.claims)
    }

    /// Whether a token's signature is this AAD's (RS256 with one of its signing keys).
    fn verify_own_signature(
        &self,
        jws: &misim_core::jose::CompactJws<'_>,
    ) -> Result<(), AssertionError> {
        let header = |name: &str| jws.header.get(name).and_then(Value::as_str);
        match header("alg") {
            Some("RS256") => {}
            other => {
                return Err(AssertionError::UnsupportedAlgorithm(
                    other.unwrap_or("none").to_string(),
                ));
            }
        }
        let kid = header("kid")
            .ok_or_else(|| AssertionError::Malformed("the token has no 'kid' header".into()))?;
        let key = self
            .inner
            .keys
            .find(kid)
            .ok_or_else(|| AssertionError::KeyNotFound {
                thumbprint: kid.to_string(),
            })?;
        if !key
            .cert
            .verify(JwsAlg::Rs256, jws.signing_input.as_bytes(), &jws.signature)
        {
            return Err(AssertionError::BadSignature {
                thumbprint: header("x5t").unwrap_or(kid).to_string(),
            });
        }
        Ok(())
    }

    /// Authenticates a Graph call: a valid token whose audience is Graph.
    pub fn graph_caller(&self, bearer: Option<&str>) -> Result<GraphCaller, AadError> {
        let token = bearer
            .ok_or_else(|| AadError::GraphUnauthenticated("Access token is empty.".into()))?;
        let claims = self
            .verify_own_token(token)
            .map_err(AadError::GraphUnauthenticated)?;
        let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
        let graph = &self.inner.config.graph_url;
        if !(resource::same_resource(aud, "https://graph.microsoft.com")
            || resource::same_resource(aud, graph)
            || aud.eq_ignore_ascii_case(GRAPH_APP_ID))
        {
            return Err(AadError::GraphUnauthenticated("Invalid audience.".into()));
        }
        let object_id = claims
            .get("oid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok(GraphCaller {
            is_admin: object_id.eq_ignore_ascii_case(&self.inner.admin.object_id),
            object_id,
        })
    }

    // ------------------------------------------------------------------ Graph: applications

    fn parse_key_credentials(
        &self,
        drafts: &[KeyCredentialDraft],
        owner_id: &str,
    ) -> Result<Vec<KeyCredential>, AadError> {
        drafts
            .iter()
            .map(|draft| {
                let cert = RsaCertificate::from_any_encoding(draft.key.as_bytes())
                    .map_err(|e| AadError::GraphBadRequest(format!("Invalid value specified for property 'key' of resource 'KeyCredential': {e}")))?;
                let start = draft.start.unwrap_or(cert.not_before.unix_timestamp());
                let end = draft.end.unwrap_or(cert.not_after.unix_timestamp());
                if end <= start {
                    return Err(AadError::GraphBadRequest("Key credential end date is invalid.".into()));
                }
                Ok(KeyCredential {
                    key_id: draft.key_id.clone().filter(|k| is_guid(k)).unwrap_or_else(new_id),
                    owner_id: owner_id.to_string(),
                    display_name: draft.display_name.clone().or_else(|| Some(format!("CN={}", cert.subject.trim_start_matches("CN=")))),
                    sha1: sha1(&cert.der),
                    sha256: sha256(&cert.der),
                    cert_der: cert.der,
                    start_at: start,
                    end_at: end,
                })
            })
            .collect()
    }

    pub async fn create_application(
        &self,
        draft: ApplicationDraft,
    ) -> Result<ApplicationView, AadError> {
        let now = self.inner.clock.now_unix();
        let display_name = draft
            .display_name
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| {
                AadError::GraphBadRequest("Property 'displayName' is required.".into())
            })?;
        let app = Application {
            object_id: new_id(),
            app_id: new_id(),
            display_name,
            identifier_uris: draft.identifier_uris.unwrap_or_default(),
            token_version: draft.token_version.unwrap_or(1),
            created_at: now,
        };
        let keys =
            self.parse_key_credentials(&draft.key_credentials.unwrap_or_default(), &app.object_id)?;
        self.inner
            .store
            .insert_application(&self.inner.tenant.id, &app)
            .await?;
        self.inner
            .store
            .replace_key_credentials(&app.object_id, &keys)
            .await?;
        self.invalidate_clients();
        self.application_view(app).await
    }

    async fn application_view(&self, app: Application) -> Result<ApplicationView, AadError> {
        let owner = [app.object_id.as_str()];
        Ok(ApplicationView {
            keys: self.inner.store.key_credentials(&owner).await?,
            passwords: self.inner.store.password_credentials(&owner).await?,
            app,
        })
    }

    /// By object id, or by app id for `applications(appId='...')`.
    pub async fn application(
        &self,
        id: &str,
        by_app_id: bool,
    ) -> Result<ApplicationView, AadError> {
        let found = if by_app_id {
            self.inner.store.application_by_app_id(id).await?
        } else {
            self.inner.store.application(id).await?
        };
        let app = found.ok_or_else(|| AadError::GraphNotFound(format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present.")))?;
        self.application_view(app).await
    }

    pub async fn applications(&self) -> Result<Vec<ApplicationView>, AadError> {
        let mut out = Vec::new();
        for app in self.inner.store.applications().await? {
            out.push(self.application_view(app).await?);
        }
        Ok(out)
    }

    pub async fn update_application(
        &self,
        id: &str,
        draft: ApplicationDraft,
    ) -> Result<(), AadError> {
        let mut view = self.application(id, false).await?;
        if let Some(name) = draft.display_name {
            if name.trim().is_empty() {
                return Err(AadError::GraphBadRequest(
                    "Property 'displayName' cannot be empty.".into(),
                ));
            }
            view.app.display_name = name;
        }
        if let Some(uris) = draft.identifier_uris {
            view.app.identifier_uris = uris;
        }
        if let Some(version) = draft.token_version {
            view.app.token_version = version;
        }
        let keys = draft
            .key_credentials
            .map(|k| self.parse_key_credentials(&k, &view.app.object_id))
            .transpose()?;
        self.inner.store.update_application(&view.app).await?;
        if let Some(keys) = keys {
            self.inner
                .store
                .replace_key_credentials(&view.app.object_id, &keys)
                .await?;
        }
        self.invalidate_clients();
        Ok(())
    }

    pub async fn delete_application(&self, id: &str) -> Result<(), AadError> {
        // Its federated credentials go with it: no credential write may slip in between.
        let _write = self.inner.credential_writes.lock().await;
        let view = self.application(id, false).await?;
        self.inner
            .store
            .delete_application(&view.app.object_id)
            .await?;
        // Deleting an application removes its service principal too, as in Entra.
        if let Some(sp) = self
            .inner
            .store
            .service_principal_by_app_id(&view.app.app_id)
            .await?
        {
            self.inner
                .store
                .delete_service_principal(&sp.object_id)
                .await?;
        }
        self.invalidate_clients();
        Ok(())
    }

    pub async fn add_password(
        &self,
        id: &str,
        display_name: Option<String>,
        end: Option<i64>,
    ) -> Result<NewPassword, AadError> {
        let view = self.application(id, false).await?;
        let now = self.inner.clock.now_unix();
        let end = end.unwrap_or(now + DEFAULT_CREDENTIAL_SECS);
        if end <= now {
            return Err(AadError::GraphBadRequest(
                "Password credential end date must be in the future.".into(),
            ));
        }
        let secret_text = new_client_secret();
        let credential = PasswordCredential::new(
            new_id(),
            view.app.object_id,
            display_name,
            &secret_text,
            now,
            end,
        );
        self.inner
            .store
            .insert_password_credential(&credential)
            .await?;
        self.invalidate_clients();
        Ok(NewPassword {
            credential,
            secret_text,
        })
    }

    pub async fn remove_password(&self, id: &str, key_id: &str) -> Result<(), AadError> {
        let view = self.application(id, false).await?;
        if !self
            .inner
            .store
            .delete_password_credential(&view.app.object_id, key_id)
            .await?
        {
            return Err(AadError::GraphNotFound(format!(
                "No password credential found with keyId '{key_id}'."
            )));
        }
        self.invalidate_clients();
        Ok(())
    }

    // ------------------------------------------------------------------ Graph: service principals

    pub async fn create_service_principal(&self, app_id: &str) -> Result<PrincipalView, AadError> {
        let app = self
            .inner
            .store
            .application_by_app_id(app_id)
            .await?
            .ok_or_else(|| AadError::GraphBadRequest(format!("The appId '{app_id}' of the service principal does not reference a valid application object.")))?;
        if self
            .inner
            .store
            .service_principal_by_app_id(app_id)
            .await?
            .is_some()
        {
            return Err(AadError::GraphConflict("The service principal cannot be created, updated, or restored because the service principal name is already in use.".into()));
        }
        let sp = ServicePrincipal {
            object_id: new_id(),
            app_id: app.app_id.clone(),
            display_name: app.display_name.clone(),
            kind: PrincipalKind::Application,
            created_at: self.inner.clock.now_unix(),
        };
        self.inner
            .store
            .insert_service_principal(&self.inner.tenant.id, &sp)
            .await?;
        self.invalidate_clients();
        Ok(PrincipalView {
            sp,
            keys: Vec::new(),
        })
    }

    async fn principal_view(&self, sp: ServicePrincipal) -> Result<PrincipalView, AadError> {
        Ok(PrincipalView {
            keys: self
                .inner
                .store
                .key_credentials(&[sp.object_id.as_str()])
                .await?,
            sp,
        })
    }

    pub async fn service_principal(
        &self,
        id: &str,
        by_app_id: bool,
    ) -> Result<PrincipalView, AadError> {
        let found = if by_app_id {
            self.inner.store.service_principal_by_app_id(id).await?
        } else {
            self.inner.store.service_principal(id).await?
        };
        let sp = found.ok_or_else(|| AadError::GraphNotFound(format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present.")))?;
        self.principal_view(sp).await
    }

    pub async fn service_principals(&self) -> Result<Vec<PrincipalView>, AadError> {
        let mut out = Vec::new();
        for sp in self.inner.store.service_principals().await? {
            out.push(self.principal_view(sp).await?);
        }
        Ok(out)
    }

    pub async fn delete_service_principal(&self, id: &str) -> Result<(), AadError> {
        let view = self.service_principal(id, false).await?;
        if view.sp.is_managed_identity() {
            return Err(AadError::GraphBadRequest("Managed identity service principals are managed by Azure Resource Manager and cannot be deleted through Graph.".into()));
        }
        if view
            .sp
            .object_id
            .eq_ignore_ascii_case(&self.inner.admin.object_id)
        {
            return Err(AadError::GraphBadRequest(
                "The bootstrap admin of the simulator cannot be deleted.".into(),
            ));
        }
        self.inner
            .store
            .delete_service_principal(&view.sp.object_id)
            .await?;
        self.invalidate_clients();
        Ok(())
    }

    // ------------------------------------------------------------------ internal directory API

    /// Creates the service principal of a managed identity; idempotent for the same content.
    pub async fn put_managed_identity(
        &self,
        object_id: &str,
        principal: misim_core::internal::ManagedIdentityPrincipal,
    ) -> Result<(PrincipalView, bool), AadError> {
        if !is_guid(object_id) || !is_guid(&principal.app_id) {
            return Err(AadError::GraphBadRequest(
                "objectId and appId must be GUIDs.".into(),
            ));
        }
        if principal.resource_id.trim().is_empty() {
            return Err(AadError::GraphBadRequest("resourceId is required.".into()));
        }
        let sp = ServicePrincipal {
            object_id: object_id.to_string(),
            app_id: principal.app_id,
            display_name: principal.display_name,
            kind: PrincipalKind::ManagedIdentity {
                resource_id: principal.resource_id,
                user_assigned: principal.user_assigned,
            },
            created_at: self.inner.clock.now_unix(),
        };
        if let Some(existing) = self.inner.store.service_principal(object_id).await? {
            let same = existing.app_id.eq_ignore_ascii_case(&sp.app_id) && existing.kind == sp.kind;
            if !same {
                return Err(AadError::GraphConflict(format!(
                    "Service principal '{object_id}' exists with other content."
                )));
            }
            return Ok((self.principal_view(existing).await?, false));
        }
        self.inner
            .store
            .insert_service_principal(&self.inner.tenant.id, &sp)
            .await?;
        self.invalidate_clients();
        if let PrincipalKind::ManagedIdentity { resource_id, .. } = &sp.kind {
            self.inner.events.record(
                Draft::new(
                    "aad.service_principal.created",
                    format!(
                        "created the service principal {} ({})",
                        sp.display_name, sp.app_id
                    ),
                )
                .principal(&sp.object_id)
                .resource(resource_id)
                .details(json!({"appId": sp.app_id})),
            );
        }
        Ok((
            PrincipalView {
                sp,
                keys: Vec::new(),
            },
            true,
        ))
    }

    /// Deletes a managed identity's principal and certificates; absent is fine.
    pub async fn delete_managed_identity(&self, object_id: &str) -> Result<bool, AadError> {
        if let Some(sp) = self.inner.store.service_principal(object_id).await?
            && !sp.is_managed_identity()
        {
            return Err(AadError::GraphBadRequest(format!(
                "'{object_id}' is not a managed identity."
            )));
        }
        let deleted = self.inner.store.delete_service_principal(object_id).await?;
        self.invalidate_clients();
        if deleted {
            self.inner.events.record(
                Draft::new(
                    "aad.service_principal.deleted",
                    format!("deleted the service principal {object_id} and its certificates"),
                )
                .principal(object_id),
            );
        }
        Ok(deleted)
    }

    /// Registers a certificate on a managed identity's principal; idempotent.
    pub async fn put_managed_identity_certificate(
        &self,
        object_id: &str,
        key_id: &str,
        certificate_b64: &str,
    ) -> Result<KeyCredential, AadError> {
        let view = self.service_principal(object_id, false).await?;
        if !view.sp.is_managed_identity() {
            return Err(AadError::GraphBadRequest(format!(
                "'{object_id}' is not a managed identity."
            )));
        }
        if !is_guid(key_id) {
            return Err(AadError::GraphBadRequest("keyId must be a GUID.".into()));
        }
        let draft = KeyCredentialDraft {
            key_id: Some(key_id.to_string()),
            key: certificate_b64.to_string(),
            ..Default::default()
        };
        let mut parsed = self.parse_key_credentials(&[draft], object_id)?;
        let key = parsed.remove(0);
        if let Some(existing) = view
            .keys
            .iter()
            .find(|k| k.key_id.eq_ignore_ascii_case(key_id))
        {
            if existing.cert_der != key.cert_der {
                return Err(AadError::GraphConflict(format!(
                    "Key credential '{key_id}' exists with another certificate."
                )));
            }
            return Ok(existing.clone());
        }
        self.inner.store.insert_key_credential(&key).await?;
        self.invalidate_clients();
        self.inner.events.record(
            Draft::new(
                "aad.credential.registered",
                format!(
                    "registered certificate {} on {}",
                    misim_core::crypto::hex_upper(&key.sha1),
                    view.sp.display_name
                ),
            )
            .principal(object_id)
            .details(json!({"keyId": key.key_id, "thumbprint": misim_core::crypto::hex_upper(&key.sha1), "notAfter": key.end_at})),
        );
        Ok(key)
    }

    pub async fn delete_managed_identity_certificate(
        &self,
        object_id: &str,
        key_id: &str,
    ) -> Result<bool, AadError> {
        let deleted = self
            .inner
            .store
            .delete_key_credential(object_id, key_id)
            .await?;
        self.invalidate_clients();
        if deleted {
            self.inner.events.record(
                Draft::new(
                    "aad.credential.removed",
                    format!("removed certificate {key_id} from {object_id}"),
                )
                .principal(object_id)
                .details(json!({"keyId": key_id})),
            );
        }
        Ok(deleted)
    }

    /// Verifies the internal credential of the directory API.
    pub fn internal_caller(&self, presented: Option<&str>) -> Result<(), AadError> {
        if misim_core::internal::secret_matches(&self.inner.config.internal_secret, presented) {
            Ok(())
        } else {
            Err(AadError::InternalUnauthenticated)
        }
    }
}

/// Creates the bootstrap admin (application, service principal, secret) once.
async fn seed_admin(store: &Store, tenant: &Tenant, now: i64) -> Result<Bootstrap, AadError> {
    if let (Some(app_id), Some(secret)) = (
        store.setting(ADMIN_APP_SETTING).await?,
        store.setting(ADMIN_SECRET_SETTING).await?,
    ) && let Some(sp) = store.service_principal_by_app_id(&app_id).await?
    {
        return Ok(Bootstrap {
            tenant_id: tenant.id.clone(),
            client_id: app_id,
            client_secret: secret,
            object_id: sp.object_id,
        });
    }
    let app = Application {
        object_id: new_id(),
        app_id: new_id(),
        display_name: "misim-admin".into(),
        identifier_uris: Vec::new(),
        token_version: 1,
        created_at: now,
    };
    let sp = ServicePrincipal {
        object_id: new_id(),
        app_id: app.app_id.clone(),
        display_name: app.display_name.clone(),
        kind: PrincipalKind::Application,
        created_at: now,
    };
    let secret = new_client_secret();
    // The bootstrap secret must not expire while the simulated clock runs for years.
    let credential = PasswordCredential::new(
        new_id(),
        app.object_id.clone(),
        Some("misim bootstrap".into()),
        &secret,
        now - 86_400,
        now + 100 * 366 * 86_400,
    );
    store.insert_application(&tenant.id, &app).await?;
    store.insert_service_principal(&tenant.id, &sp).await?;
    store.insert_password_credential(&credential).await?;
    store.set_setting(ADMIN_SECRET_SETTING, &secret).await?;
    store.set_setting(ADMIN_APP_SETTING, &app.app_id).await?;
    Ok(Bootstrap {
        tenant_id: tenant.id.clone(),
        client_id: app.app_id,
        client_secret: secret,
        object_id: sp.object_id,
    })
}
