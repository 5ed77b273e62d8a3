//! The edges ARM calls out on, each a small trait so tests can fake it (ARCHITECTURE.md §2).

use async_trait::async_trait;
use misim_core::internal::{
    INTERNAL_SECRET_HEADER, ManagedIdentityCertificate, ManagedIdentityPrincipal,
};

/// Calls on the internal edges: the internal secret, and the request chain's correlation id so
/// the peer records its steps under it.
trait Internal {
    fn internal(self, secret: &str) -> Self;
}

impl Internal for reqwest::RequestBuilder {
    fn internal(self, secret: &str) -> Self {
        misim_core::events::propagate(self).header(INTERNAL_SECRET_HEADER, secret)
    }
}

/// AAD's internal directory API.
#[async_trait]
pub trait Directory: Send + Sync {
    async fn put_principal(
        &self,
        object_id: &str,
        principal: &ManagedIdentityPrincipal,
    ) -> Result<(), String>;
    async fn put_certificate(
        &self,
        object_id: &str,
        key_id: &str,
        certificate: &ManagedIdentityCertificate,
    ) -> Result<(), String>;
    async fn delete_principal(&self, object_id: &str) -> Result<(), String>;
    /// Whether a service principal with this object id exists (for `PrincipalNotFound`).
    async fn principal_exists(&self, object_id: &str) -> Result<bool, String>;
    /// Object ids of every managed-identity principal AAD holds.
    async fn managed_principals(&self) -> Result<Vec<String>, String>;
    /// Sets a federated credential of a managed identity's principal (idempotent).
    async fn put_federated_credential(
        &self,
        object_id: &str,
        name: &str,
        credential: &serde_json::Value,
    ) -> Result<(), String>;
    /// Removes one (already gone: fine).
    async fn delete_federated_credential(&self, object_id: &str, name: &str) -> Result<(), String>;
    /// Removes the principal's federated credentials other than `keep` (reconcile).
    async fn retain_federated_credentials(
        &self,
        object_id: &str,
        keep: &[String],
    ) -> Result<(), String>;
    /// Removes the principal's certificates other than `keep` (after a credential roll).
    async fn retain_certificates(&self, object_id: &str, keep: &[String]) -> Result<(), String> {
        let _ = (object_id, keep);
        Ok(())
    }
}

/// The HTTP implementation, authenticated with the internal secret.
pub struct HttpDirectory {
    pub http: reqwest::Client,
    pub aad_url: String,
    pub secret: String,
}

impl HttpDirectory {
    /// The names a managed identity's principal lists under `field` (`keyIds`,
    /// `federatedCredentials`) that are not in `keep`: none for a principal AAD does not hold;
    /// any other failure is a failed step (retried), not a principal without any.
    async fn stale(
        &self,
        object_id: &str,
        field: &str,
        keep: &[String],
    ) -> Result<Vec<String>, String> {
        let response = self
            .http
            .get(self.url(object_id))
            .internal(&self.secret)
            .send()
            .await
            .map_err(|e| format!("AAD unreachable: {e}"))?;
        if response.status().as_u16() == 404 {
            return Ok(Vec::new());
        }
        if !response.status().is_success() {
            return Err(format!("AAD answered {}", response.status()));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        Ok(body[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .filter(|name| !keep.iter().any(|kept| kept.eq_ignore_ascii_case(name)))
            .map(str::to_string)
            .collect())
    }

    fn url(&self, rest: &str) -> String {
        format!(
            "{}/_internal/directory/managed-identities/{rest}",
            self.aad_url.trim_end_matches('/')
        )
    }

    async fn send(&self, request: reqwest::RequestBuilder, ok_404: bool) -> Result<u16, String> {
        let response = request
            .internal(&self.secret)
            .send()
            .await
            .map_err(|e| format!("AAD unreachable: {e}"))?;
        let status = response.status().as_u16();
        if response.status().is_success() || (ok_404 && status == 404) {
            Ok(status)
        } else {
            Err(format!(
                "AAD answered {status}: {}",
                response.text().await.unwrap_or_default()
            ))
        }
    }
}

#[async_trait]
impl Directory for HttpDirectory {
    async fn put_principal(
        &self,
        object_id: &str,
        principal: &ManagedIdentityPrincipal,
    ) -> Result<(), String> {
        self.send(self.http.put(self.url(object_id)).json(principal), false)
            .await
            .map(|_| ())
    }

    async fn put_certificate(
        &self,
        object_id: &str,
        key_id: &str,
        certificate: &ManagedIdentityCertificate,
    ) -> Result<(), String> {
        self.send(
            self.http
                .put(self.url(&format!("{object_id}/certificates/{key_id}")))
                .json(certificate),
            false,
        )
        .await
        .map(|_| ())
    }

    async fn delete_principal(&self, object_id: &str) -> Result<(), String> {
        self.send(self.http.delete(self.url(object_id)), true)
            .await
            .map(|_| ())
    }

    async fn put_federated_credential(
        &self,
        object_id: &str,
        name: &str,
        credential: &serde_json::Value,
    ) -> Result<(), String> {
        let url = self.url(&format!(
            "{object_id}/federated-credentials/{}",
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
        ));
        self.send(self.http.put(url).json(credential), false)
            .await
            .map(|_| ())
    }

    async fn delete_federated_credential(&self, object_id: &str, name: &str) -> Result<(), String> {
        let url = self.url(&format!(
            "{object_id}/federated-credentials/{}",
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
        ));
        self.send(self.http.delete(url), true).await.map(|_| ())
    }

    async fn retain_federated_credentials(
        &self,
        object_id: &str,
        keep: &[String],
    ) -> Result<(), String> {
        let stale = self.stale(object_id, "federatedCredentials", keep).await?;
        for name in stale {
            self.delete_federated_credential(object_id, &name).await?;
        }
        Ok(())
    }

    async fn principal_exists(&self, object_id: &str) -> Result<bool, String> {
        self.send(self.http.get(self.url(object_id)), true)
            .await
            .map(|status| status != 404)
    }

    async fn retain_certificates(&self, object_id: &str, keep: &[String]) -> Result<(), String> {
        let stale = self.stale(object_id, "keyIds", keep).await?;
        for key_id in stale {
            self.send(
                self.http
                    .delete(self.url(&format!("{object_id}/certificates/{key_id}"))),
                true,
            )
            .await?;
        }
        Ok(())
    }

    async fn managed_principals(&self) -> Result<Vec<String>, String> {
        let url = format!(
            "{}/_internal/directory/managed-identities",
            self.aad_url.trim_end_matches('/')
        );
        let response = self
            .http
            .get(url)
            .internal(&self.secret)
            .send()
            .await
            .map_err(|e| format!("AAD unreachable: {e}"))?;
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        Ok(body["objectIds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }
}

/// IMDS's host API: the VMs it hosts and the credentials installed on each.
#[async_trait]
pub trait Host: Send + Sync {
    async fn put_vm(&self, vm_id: &str, vm: &misim_core::internal::HostedVm) -> Result<(), String>;
    async fn delete_vm(&self, vm_id: &str) -> Result<(), String>;
    async fn put_identity(
        &self,
        vm_id: &str,
        principal_id: &str,
        identity: &misim_core::internal::HostedIdentity,
    ) -> Result<(), String>;
    async fn delete_identity(&self, vm_id: &str, principal_id: &str) -> Result<(), String>;
    /// What the host reports about a VM (its endpoint), if it hosts it.
    async fn status(
        &self,
        vm_id: &str,
    ) -> Result<Option<misim_core::internal::HostedVmStatus>, String>;
    /// Every VM the host holds, with its installed identities.
    async fn hosted(&self) -> Result<Vec<misim_core::internal::HostedVmStatus>, String>;
}

/// The HTTP implementation of [`Host`], authenticated with the internal secret.
pub struct HttpHost {
    pub http: reqwest::Client,
    /// Base URL of IMDS's host API listener.
    pub host_url: String,
    pub secret: String,
}

impl HttpHost {
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(), String> {
        let response = request
            .internal(&self.secret)
            .send()
            .await
            .map_err(|e| format!("IMDS unreachable: {e}"))?;
        let status = response.status();
        if status.is_success()
            || status.as_u16() == 404 && response.url().path().contains("/identities/")
        {
            Ok(())
        } else {
            Err(format!(
                "IMDS answered {status}: {}",
                response.text().await.unwrap_or_default()
            ))
        }
    }

    fn url(&self, rest: &str) -> String {
        format!(
            "{}/_internal/host/vms/{rest}",
            self.host_url.trim_end_matches('/')
        )
    }
}

#[async_trait]
impl Host for HttpHost {
    async fn put_vm(&self, vm_id: &str, vm: &misim_core::internal::HostedVm) -> Result<(), String> {
        self.send(self.http.put(self.url(vm_id)).json(vm)).await
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), String> {
        self.send(self.http.delete(self.url(vm_id))).await
    }

    async fn put_identity(
        &self,
        vm_id: &str,
        principal_id: &str,
        identity: &misim_core::internal::HostedIdentity,
    ) -> Result<(), String> {
        self.send(
            self.http
                .put(self.url(&format!("{vm_id}/identities/{principal_id}")))
                .json(identity),
        )
        .await
    }

    async fn delete_identity(&self, vm_id: &str, principal_id: &str) -> Result<(), String> {
        self.send(
            self.http
                .delete(self.url(&format!("{vm_id}/identities/{principal_id}"))),
        )
        .await
    }

    async fn status(
        &self,
        vm_id: &str,
    ) -> Result<Option<misim_core::internal::HostedVmStatus>, String> {
        let response = self
            .http
            .get(self.url(vm_id))
            .internal(&self.secret)
            .send()
            .await
            .map_err(|e| format!("IMDS unreachable: {e}"))?;
        match response.status().as_u16() {
            404 => Ok(None),
            200 => response.json().await.map(Some).map_err(|e| e.to_string()),
            status => Err(format!("IMDS answered {status}")),
        }
    }

    async fn hosted(&self) -> Result<Vec<misim_core::internal::HostedVmStatus>, String> {
        let url = format!("{}/_internal/host/vms", self.host_url.trim_end_matches('/'));
        let response = self
            .http
            .get(url)
            .internal(&self.secret)
            .send()
            .await
            .map_err(|e| format!("IMDS unreachable: {e}"))?;
        response.json().await.map_err(|e| e.to_string())
    }
}

/// Which peer a simulator call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Aad,
    Imds,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Aad => "aad",
            Peer::Imds => "imds",
        }
    }
}

/// AAD's and IMDS's simulator APIs (events, clock, faults), which `/_sim/` on ARM fronts.
pub struct SimPeers {
    pub http: reqwest::Client,
    pub aad_url: String,
    pub host_url: String,
    pub secret: String,
}

impl SimPeers {
    /// One call; the answer's JSON on success, the peer's message otherwise.
    pub async fn call(
        &self,
        peer: Peer,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let base = match peer {
            Peer::Aad => &self.aad_url,
            Peer::Imds => &self.host_url,
        };
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut request = self
            .http
            .request(method, &url)
            .internal(&self.secret)
            .query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{} is unreachable: {e}", peer.name()))?;
        let status = response.status();
        if status.as_u16() == 204 {
            return Ok(serde_json::Value::Null);
        }
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            let message = body["error"]["message"]
                .as_str()
                .or(body["error_description"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            Err(format!("{} answered {status}: {message}", peer.name()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AAD's internal API answering every request with `status`, on a loopback port.
    async fn aad_answering(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let code = axum::http::StatusCode::from_u16(status).expect("status");
        let router = axum::Router::new().fallback(move || async move { (code, "{}") });
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn trimming_certificates_fails_when_aad_cannot_list_them() {
        let directory = |aad_url| HttpDirectory {
            http: reqwest::Client::new(),
            aad_url,
            secret: "s".into(),
        };
        // A failure to list is a failed step (retried), not a principal with no certificates.
        let failing = directory(aad_answering(503).await);
        assert!(
            failing
                .retain_certificates("p", &["k".into()])
                .await
                .is_err()
        );
        // Nothing to trim on a principal AAD no longer has.
        let gone = directory(aad_answering(404).await);
        assert!(gone.retain_certificates("p", &["k".into()]).await.is_ok());
    }
}
