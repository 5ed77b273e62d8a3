//! The simulator's own use cases behind `/_sim/` (CONTRACT.md, Simulator APIs): the merged
//! event timeline, the clock that moves every service, identity-certificate rolls, fault plans,
//! and what a token stands for. Only the bootstrap admin may call them.

use std::collections::HashMap;

use misim_core::events::{Draft, Event, EventFilter};
use misim_core::faults::FaultRequest;
use misim_core::internal::{CLOCK_PATH, EVENTS_PATH, FAULTS_PATH, ManagedIdentityCertificate};
use serde_json::{Value, json};

use super::{Arm, CLOCK_SETTING, KIND_VM};
use crate::auth::Caller;
use crate::error::ArmError;
use crate::ports::{Peer, SimPeers};
use crate::store::Store;

/// Azure rolls a managed identity's certificate at 45 days of its 90.
pub const CREDENTIAL_ROLL_DAYS: i64 = 45;
/// The largest single move of the clock.
pub const MAX_ADVANCE_SECS: i64 = 10 * 366 * 86_400;

/// `90s`, `15m`, `2h`, `46d`, `1w` or combinations (`1d12h`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the duration is empty; write e.g. 90s, 2h or 46d".into());
    }
    if text.starts_with('-') {
        return Err(format!(
            "'{text}' is negative: the simulated clock only moves forward"
        ));
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    let bad = || format!("'{text}' is not a duration; write e.g. 90s, 2h or 46d");
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let value: i64 = number.parse().map_err(|_| bad())?;
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("'{text}' is too long"))?;
        number.clear();
    }
    if !number.is_empty() {
        let value: i64 = number.parse().map_err(|_| bad())?;
        total = total
            .checked_add(value)
            .ok_or_else(|| format!("'{text}' is too long"))?;
    }
    if total == 0 {
        return Err(format!("'{text}' does not move the clock"));
    }
    if total > MAX_ADVANCE_SECS {
        return Err(format!(
            "'{text}' is more than the 10 years the clock moves at once"
        ));
    }
    Ok(total)
}

/// Where a reader of the merged timeline is, per service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub arm: i64,
    pub aad: i64,
    pub imds: i64,
}

impl Cursor {
    /// `arm:12,aad:40,imds:7` (missing parts are 0).
    pub fn parse(text: &str) -> Result<Self, ArmError> {
        let mut cursor = Self::default();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let bad = || {
                ArmError::InvalidParameter(format!(
                    "The cursor '{text}' is not valid; pass back the 'cursor' of an earlier answer."
                ))
            };
            let (service, seq) = part.trim().split_once(':').ok_or_else(bad)?;
            let seq: i64 = seq.parse().map_err(|_| bad())?;
            if seq < 0 {
                return Err(bad());
            }
            match service {
                "arm" => cursor.arm = seq,
                "aad" => cursor.aad = seq,
                "imds" => cursor.imds = seq,
                _ => return Err(bad()),
            }
        }
        Ok(cursor)
    }

    pub fn render(&self) -> String {
        format!("arm:{},aad:{},imds:{}", self.arm, self.aad, self.imds)
    }

    pub fn advance(&mut self, event: &Event) {
        let slot = match event.service.as_str() {
            "arm" => &mut self.arm,
            "aad" => &mut self.aad,
            _ => &mut self.imds,
        };
        *slot = (*slot).max(event.seq);
    }
}

/// A page of the merged timeline.
pub struct Timeline {
    pub events: Vec<Event>,
    pub cursor: Cursor,
    /// Peers that could not be read (their events are missing from this page).
    pub warnings: Vec<String>,
}

fn service_rank(service: &str) -> u8 {
    match service {
        "arm" => 0,
        "imds" => 1,
        _ => 2,
    }
}

impl Arm {
    /// Simulator APIs are the bootstrap admin's.
    pub fn require_admin(&self, caller: &Caller) -> Result<(), ArmError> {
        if caller
            .object_id
            .eq_ignore_ascii_case(&self.inner.config.admin_object_id)
        {
            Ok(())
        } else {
            Err(ArmError::AuthorizationFailed {
                oid: caller.object_id.clone(),
                action: "misim/simulator/action".into(),
                scope: "/_sim".into(),
            })
        }
    }

    fn peers(&self) -> Result<&SimPeers, ArmError> {
        self.inner
            .sim_peers
            .get()
            .ok_or_else(|| ArmError::Internal("the simulator APIs have no peers".into()))
    }

    /// The filter of a timeline query (`vm`, `kind`, `correlation_id`, `limit`).
    pub async fn timeline_filter(
        &self,
        caller: &Caller,
        query: &HashMap<String, String>,
    ) -> Result<(EventFilter, Cursor), ArmError> {
        self.require_admin(caller)?;
        let mut own = query.clone();
        let vm = own.remove("vm");
        let cursor = Cursor::parse(own.remove("after").as_deref().unwrap_or(""))?;
        let mut filter = EventFilter::from_query(&own).map_err(ArmError::InvalidParameter)?;
        if let Some(vm) = vm {
            match self.find_vm_view(&vm).await {
                Ok(view) => {
                    filter.vm_id = Some(view.state.vm_id.clone());
                    filter.resource_id = Some(view.resource.id.clone());
                    filter.principals = view
                        .state
                        .system_principal_id
                        .iter()
                        .cloned()
                        .chain(view.state.attached.iter().map(|a| a.principal_id.clone()))
                        .collect();
                }
                // A deleted VM: what the timeline remembers of it.
                Err(ArmError::ResourceNotFound { .. }) => {
                    self.remembered_vm(&vm, &mut filter).await?
                }
                Err(other) => return Err(other),
            }
            // Identities the VM had before (removed since) belong to its history too.
            if let Some(resource_id) = filter.resource_id.clone() {
                for principal in self.principals_created_for(&resource_id).await? {
                    if !filter
                        .principals
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&principal))
                    {
                        filter.principals.push(principal);
                    }
                }
            }
        }
        Ok((filter, cursor))
    }

    /// Principals ARM ever created for `resource_id` (from its own events).
    async fn principals_created_for(&self, resource_id: &str) -> Result<Vec<String>, ArmError> {
        let created = self
            .inner
            .events
            .list(&EventFilter {
                kind: Some("arm.identity.created".into()),
                resource_id: Some(resource_id.to_string()),
                limit: misim_core::events::MAX_LIMIT,
                ..EventFilter::default()
            })
            .await?;
        Ok(created.into_iter().filter_map(|e| e.principal_id).collect())
    }

    /// The filter for a VM that no longer exists, by vmId, resource id or name.
    async fn remembered_vm(&self, vm: &str, filter: &mut EventFilter) -> Result<(), ArmError> {
        if uuid::Uuid::parse_str(vm).is_ok() {
            filter.vm_id = Some(vm.to_string());
            return Ok(());
        }
        if vm.starts_with('/') {
            filter.resource_id = Some(vm.to_string());
            return Ok(());
        }
        let suffix = format!("/virtualmachines/{}", vm.to_ascii_lowercase());
        let remembered = self
            .inner
            .events
            .list(&EventFilter {
                kind: Some("arm.identity.created".into()),
                limit: misim_core::events::MAX_LIMIT,
                ..EventFilter::default()
            })
            .await?
            .into_iter()
            .rev()
            .find_map(|e| {
                e.resource_id
                    .filter(|r| r.to_ascii_lowercase().ends_with(&suffix))
            });
        match remembered {
            Some(resource_id) => {
                filter.resource_id = Some(resource_id);
                Ok(())
            }
            None => Err(ArmError::ResourceNotFound {
                kind: "Microsoft.Compute/virtualMachines",
                name: vm.to_string(),
                rg: "*".into(),
            }),
        }
    }

    /// Events of all three services after `cursor`, merged by simulated time.
    pub async fn timeline(&self, filter: &EventFilter, cursor: &Cursor) -> Timeline {
        let mut events = Vec::new();
        let mut warnings = Vec::new();
        let own = EventFilter {
            after: cursor.arm,
            ..filter.clone()
        };
        match self.inner.events.list(&own).await {
            Ok(mine) => events.extend(mine),
            Err(error) => warnings.push(format!("arm: {error}")),
        }
        if let Ok(peers) = self.peers() {
            for (peer, after) in [(Peer::Aad, cursor.aad), (Peer::Imds, cursor.imds)] {
                let answer = peers
                    .call(
                        peer,
                        reqwest::Method::GET,
                        EVENTS_PATH,
                        &filter.to_query(after),
                        None,
                    )
                    .await
                    .and_then(|body| {
                        serde_json::from_value::<Vec<Event>>(body["events"].clone())
                            .map_err(|e| e.to_string())
                    });
                match answer {
                    Ok(theirs) => events.extend(theirs),
                    Err(error) => warnings.push(error),
                }
            }
        }
        events.sort_by(|a, b| {
            (a.time.as_str(), service_rank(&a.service), a.seq).cmp(&(
                b.time.as_str(),
                service_rank(&b.service),
                b.seq,
            ))
        });
        events.truncate(usize::try_from(filter.limit).unwrap_or(1000));
        let mut next = cursor.clone();
        for event in &events {
            next.advance(event);
        }
        Timeline {
            events,
            cursor: next,
            warnings,
        }
    }

    /// Every service's clock.
    pub async fn clock_status(&self, caller: &Caller) -> Result<Value, ArmError> {
        self.require_admin(caller)?;
        let mut services = serde_json::Map::new();
        services.insert(
            "arm".into(),
            json!({"offsetSecs": self.inner.clock.offset_secs()}),
        );
        if let Ok(peers) = self.peers() {
            for peer in [Peer::Aad, Peer::Imds] {
                let state = peers
                    .call(peer, reqwest::Method::GET, CLOCK_PATH, &[], None)
                    .await
                    .unwrap_or_else(|e| json!({"error": e}));
                services.insert(peer.name().into(), state);
            }
        }
        Ok(json!({
            "now": rfc3339(self.inner.clock.now()),
            "wallNow": rfc3339(misim_core::Clock::wall_now()),
            "offsetSecs": self.inner.clock.offset_secs(),
            "services": services,
        }))
    }

    /// Moves every service's clock forward by `by_secs` and returns once what became due is
    /// done: AAD's key roll, identity-certificate rolls delivered to AAD and the hosts.
    pub async fn advance_clock(&self, caller: &Caller, by_secs: i64) -> Result<Value, ArmError> {
        self.require_admin(caller)?;
        if !(1..=MAX_ADVANCE_SECS).contains(&by_secs) {
            return Err(ArmError::InvalidParameter(format!(
                "The clock moves forward by 1 second to 10 years; {by_secs} s is not allowed."
            )));
        }
        // The move runs to its end even if the caller goes away: dropped between AAD's and
        // ARM's own step, it would leave AAD and IMDS ahead of ARM, and later, shorter moves
        // would be refused as going backwards. Events keep the request's correlation id.
        let arm = self.clone();
        let correlation = misim_core::events::current_correlation()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        tokio::spawn(misim_core::events::with_correlation(
            correlation,
            async move { arm.move_clock(by_secs).await },
        ))
        .await
        .map_err(|e| ArmError::Internal(format!("the clock move failed: {e}")))?
    }

    async fn move_clock(&self, by_secs: i64) -> Result<Value, ArmError> {
        let _one_at_a_time = self.inner.clock_moves.lock().await;
        let before = self.inner.clock.now();
        let target = self.inner.clock.offset_secs() + by_secs;
        if target > misim_core::clock::MAX_OFFSET_SECS {
            return Err(ArmError::InvalidParameter(
                "The simulated clock cannot move that far ahead.".into(),
            ));
        }
        let peers = self.peers()?;
        for peer in [Peer::Aad, Peer::Imds] {
            peers
                .call(
                    peer,
                    reqwest::Method::PUT,
                    CLOCK_PATH,
                    &[],
                    Some(&json!({"offsetSecs": target})),
                )
                .await
                .map_err(|e| ArmError::Internal(format!("cannot move the clock: {e}")))?;
        }
        self.inner
            .clock
            .set_offset(target)
            .map_err(|e| ArmError::InvalidParameter(e.to_string()))?;
        let mut tx = self.inner.store.begin().await?;
        Store::set_setting(&mut tx, CLOCK_SETTING, &target.to_string()).await?;
        tx.commit().await?;
        let rolled = self.roll_credentials().await?;
        self.deliver().await;
        let pending = self.pending_work().await?;
        let after = self.inner.clock.now();
        self.inner.events.record(
            Draft::new(
                "arm.clock.advanced",
                format!(
                    "the simulated clock moved {by_secs} s forward, to {}",
                    rfc3339(after)
                ),
            )
            .details(
                json!({"bySecs": by_secs, "offsetSecs": target, "rolledCredentials": rolled.len()}),
            ),
        );
        Ok(json!({
            "before": rfc3339(before),
            "now": rfc3339(after),
            "offsetSecs": target,
            "advancedBySecs": by_secs,
            "rolledCredentials": rolled,
            "pendingWork": pending,
        }))
    }

    /// Rolls every identity certificate that reached its roll age: a new key and certificate,
    /// registered with AAD and installed on every host that carries the identity, the previous
    /// certificate kept registered until the next roll (it stays valid until day 90).
    pub async fn roll_credentials(&self) -> Result<Vec<Value>, ArmError> {
        let _turn = self.inner.writes.lock().await;
        let now = self.inner.clock.now_unix();
        let config = &self.inner.config;
        let keep_for = (config.identity_cert_days - config.identity_cert_roll_days) * 86_400;
        let due: Vec<_> = self
            .inner
            .store
            .identities()
            .await?
            .into_iter()
            .filter(|i| i.cert_not_after - keep_for <= now)
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let vms = self.inner.store.resources(KIND_VM, None).await?;
        let mut rolled = Vec::new();
        for identity in due {
            let (key_id, cert_der, pkcs8, not_after) =
                self.new_credential(&identity.client_id).await?;
            let mut renewed = identity.clone();
            renewed.cert_key_id = key_id.clone();
            renewed.cert_der = cert_der.clone();
            renewed.private_pkcs8 = pkcs8.clone();
            renewed.cert_not_after = not_after;
            let mut tx = self.inner.store.begin().await?;
            Store::update_identity_credential(
                &mut tx,
                &identity.principal_id,
                &key_id,
                &cert_der,
                &pkcs8,
                not_after,
            )
            .await?;
            let certificate = ManagedIdentityCertificate {
                certificate: misim_core::jose::b64std(&cert_der),
            };
            Store::enqueue(
                &mut tx,
                "aad.put_certificate",
                &json!({"objectId": identity.principal_id, "keyId": key_id, "certificate": certificate}),
            )
            .await?;
            let mut hosts = Vec::new();
            for row in &vms {
                let view = Self::vm_view(row.clone())?;
                if view.carries(&identity) {
                    let payload = json!({"vmId": view.state.vm_id, "principalId": identity.principal_id, "identity": self.hosted_identity(&renewed)});
                    Store::enqueue(&mut tx, "imds.put_identity", &payload).await?;
                    hosts.push(view.state.vm_id.clone());
                }
            }
            Store::enqueue(
                &mut tx,
                "aad.retain_certificates",
                &json!({"objectId": identity.principal_id, "keep": [identity.cert_key_id, key_id]}),
            )
            .await?;
            tx.commit().await?;
            let thumbprint = misim_core::crypto::hex_upper(&misim_core::crypto::sha1(&cert_der));
            self.inner.events.record(
                Draft::new(
                    "arm.credential.rolled",
                    format!(
                        "rolled the certificate of {}: {thumbprint} replaces key {} (valid until day {}); installing on {} host(s)",
                        identity.mirid,
                        identity.cert_key_id,
                        config.identity_cert_days,
                        hosts.len()
                    ),
                )
                .principal(&identity.principal_id)
                .resource(&identity.mirid)
                .details(json!({"previousKeyId": identity.cert_key_id, "keyId": key_id, "thumbprint": thumbprint, "notAfter": not_after, "vms": hosts})),
            );
            rolled.push(json!({"principalId": identity.principal_id, "resourceId": identity.mirid, "previousKeyId": identity.cert_key_id, "keyId": key_id, "thumbprint": thumbprint}));
        }
        drop(_turn);
        self.invalidate_caches();
        Ok(rolled)
    }

    /// Adds a fault plan at AAD or IMDS; a VM named by name or id is resolved to its vmId.
    pub async fn add_fault(
        &self,
        caller: &Caller,
        mut request: FaultRequest,
    ) -> Result<Value, ArmError> {
        self.require_admin(caller)?;
        request.validate().map_err(ArmError::InvalidParameter)?;
        let peer = if request.target == "aad" {
            Peer::Aad
        } else {
            Peer::Imds
        };
        if let Some(vm) = &request.vm {
            request.vm = Some(self.find_vm_view(vm).await?.state.vm_id);
        }
        let body = serde_json::to_value(&request).map_err(|e| ArmError::Internal(e.to_string()))?;
        let fault = self
            .peers()?
            .call(peer, reqwest::Method::POST, FAULTS_PATH, &[], Some(&body))
            .await
            .map_err(ArmError::InvalidParameter)?;
        self.inner.events.record(
            Draft::new(
                "arm.fault.added",
                format!(
                    "fault plan {} added at {}",
                    fault["id"].as_str().unwrap_or("?"),
                    peer.name()
                ),
            )
            .details(fault.clone()),
        );
        Ok(fault)
    }

    pub async fn list_faults(&self, caller: &Caller) -> Result<Value, ArmError> {
        self.require_admin(caller)?;
        let peers = self.peers()?;
        let mut all = Vec::new();
        for peer in [Peer::Imds, Peer::Aad] {
            let body = peers
                .call(peer, reqwest::Method::GET, FAULTS_PATH, &[], None)
                .await
                .map_err(ArmError::Internal)?;
            all.extend(body["faults"].as_array().cloned().unwrap_or_default());
        }
        Ok(json!({ "value": all }))
    }

    /// Removes one plan (by id) or every plan (`None`); returns how many went.
    pub async fn remove_faults(
        &self,
        caller: &Caller,
        id: Option<&str>,
    ) -> Result<usize, ArmError> {
        self.require_admin(caller)?;
        let peers = self.peers()?;
        let mut removed = 0;
        for peer in [Peer::Imds, Peer::Aad] {
            match id {
                None => {
                    let body = peers
                        .call(peer, reqwest::Method::DELETE, FAULTS_PATH, &[], None)
                        .await
                        .map_err(ArmError::Internal)?;
                    removed += body["removed"].as_u64().unwrap_or(0) as usize;
                }
                Some(id) => {
                    let path = format!("{FAULTS_PATH}/{id}");
                    if peers
                        .call(peer, reqwest::Method::DELETE, &path, &[], None)
                        .await
                        .is_ok()
                    {
                        removed += 1;
                    }
                }
            }
        }
        if id.is_some() && removed == 0 {
            return Err(ArmError::ResourceNotFound {
                kind: "misim/faults",
                name: id.unwrap_or_default().to_string(),
                rg: "*".into(),
            });
        }
        self.inner.events.record(
            Draft::new(
                "arm.fault.removed",
                match id {
                    Some(id) => format!("fault plan {id} removed"),
                    None => format!("{removed} fault plan(s) cleared"),
                },
            )
            .details(json!({"id": id, "removed": removed})),
        );
        Ok(removed)
    }

    /// What ARM knows about the principal behind a token: its managed identity (if it is one),
    /// the VMs that carry it, and its role assignments.
    pub async fn describe_principal(&self, object_id: &str) -> Result<Value, ArmError> {
        let identity = self
            .inner
            .store
            .identities()
            .await?
            .into_iter()
            .find(|i| i.principal_id.eq_ignore_ascii_case(object_id));
        let mut vms = Vec::new();
        if let Some(identity) = &identity {
            for row in self.inner.store.resources(KIND_VM, None).await? {
                let view = Self::vm_view(row)?;
                if view.carries(identity) {
                    vms.push(json!({"id": view.resource.id, "name": view.resource.name, "vmId": view.state.vm_id}));
                }
            }
        }
        let custom = self.custom_roles().await?;
        let assignments: Vec<Value> = self
            .assignments_of(object_id)
            .await?
            .iter()
            .map(|a| {
                json!({
                    "name": a.name,
                    "scope": a.scope,
                    "role": crate::domain::rbac::find_role(&a.role_guid, &custom).map(|r| r.name().to_string()),
                    "roleDefinitionId": a.role_definition_id,
                })
            })
            .collect();
        let kind = match &identity {
            Some(i) if i.user_assigned => "user-assigned managed identity",
            Some(_) => "system-assigned managed identity",
            None if object_id.eq_ignore_ascii_case(&self.inner.config.admin_object_id) => {
                "the bootstrap admin (service principal)"
            }
            None => "a service principal (application)",
        };
        Ok(json!({
            "objectId": object_id,
            "kind": kind,
            "identity": identity.as_ref().map(|i| json!({
                "resourceId": i.mirid,
                "clientId": i.client_id,
                "certificateKeyId": i.cert_key_id,
                "certificateNotAfter": rfc3339(time::OffsetDateTime::from_unix_timestamp(i.cert_not_after).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)),
            })),
            "vms": vms,
            "roleAssignments": assignments,
        }))
    }
}

pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("46d"), Ok(46 * 86_400));
        assert_eq!(parse_duration("1d12h"), Ok(36 * 3600));
        assert_eq!(parse_duration("30"), Ok(30));
        for (bad, expected) in [
            ("-5d", "negative"),
            ("0s", "does not move"),
            ("", "empty"),
            ("5y", "not a duration"),
            ("d", "not a duration"),
            ("4000d", "10 years"),
            ("99999999999999999999d", "not a duration"),
        ] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let cursor = Cursor::parse("arm:3,aad:7").expect("cursor");
        assert_eq!(
            cursor,
            Cursor {
                arm: 3,
                aad: 7,
                imds: 0
            }
        );
        assert_eq!(Cursor::parse(&cursor.render()).expect("again"), cursor);
        for bad in ["arm", "arm:x", "arm:-1", "graph:1"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
