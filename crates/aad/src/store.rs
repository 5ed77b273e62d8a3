//! SQL for `aad.db`. Only this module touches the database.

use sqlx::{FromRow, SqlitePool};

use crate::domain::directory::{
    Application, FederatedCredential, KeyCredential, PasswordCredential, PrincipalKind,
    ServicePrincipal, Tenant,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/aad");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the row already exists")]
    Conflict,
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if misim_core::db::is_unique_violation(&error) {
            Self::Conflict
        } else {
            Self::Database(error)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

#[derive(FromRow)]
struct TenantRow {
    id: String,
    default_domain: String,
    display_name: String,
    created_at: i64,
}

#[derive(FromRow)]
struct ApplicationRow {
    object_id: String,
    app_id: String,
    display_name: String,
    identifier_uris: String,
    token_version: i64,
    created_at: i64,
}

impl TryFrom<ApplicationRow> for Application {
    type Error = StoreError;
    fn try_from(row: ApplicationRow) -> StoreResult<Self> {
        Ok(Application {
            object_id: row.object_id,
            app_id: row.app_id,
            display_name: row.display_name,
            identifier_uris: serde_json::from_str(&row.identifier_uris)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            token_version: if row.token_version == 2 { 2 } else { 1 },
            created_at: row.created_at,
        })
    }
}

#[derive(FromRow)]
struct PrincipalRow {
    object_id: String,
    app_id: String,
    display_name: String,
    principal_type: String,
    mi_resource_id: Option<String>,
    mi_user_assigned: i64,
    created_at: i64,
}

impl From<PrincipalRow> for ServicePrincipal {
    fn from(row: PrincipalRow) -> Self {
        let kind = match (row.principal_type.as_str(), row.mi_resource_id) {
            ("ManagedIdentity", Some(resource_id)) => PrincipalKind::ManagedIdentity {
                resource_id,
                user_assigned: row.mi_user_assigned != 0,
            },
            _ => PrincipalKind::Application,
        };
        ServicePrincipal {
            object_id: row.object_id,
            app_id: row.app_id,
            display_name: row.display_name,
            kind,
            created_at: row.created_at,
        }
    }
}

#[derive(FromRow)]
struct KeyRow {
    key_id: String,
    owner_id: String,
    display_name: Option<String>,
    cert_der: Vec<u8>,
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    start_at: i64,
    end_at: i64,
}

impl From<KeyRow> for KeyCredential {
    fn from(r: KeyRow) -> Self {
        KeyCredential {
            key_id: r.key_id,
            owner_id: r.owner_id,
            display_name: r.display_name,
            cert_der: r.cert_der,
            sha1: r.sha1,
            sha256: r.sha256,
            start_at: r.start_at,
            end_at: r.end_at,
        }
    }
}

#[derive(FromRow)]
struct PasswordRow {
    key_id: String,
    owner_id: String,
    display_name: Option<String>,
    hint: String,
    salt: Vec<u8>,
    hash: Vec<u8>,
    start_at: i64,
    end_at: i64,
}

impl From<PasswordRow> for PasswordCredential {
    fn from(r: PasswordRow) -> Self {
        PasswordCredential {
            key_id: r.key_id,
            owner_id: r.owner_id,
            display_name: r.display_name,
            hint: r.hint,
            salt: r.salt,
            hash: r.hash,
            start_at: r.start_at,
            end_at: r.end_at,
        }
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_pkcs8: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub created_at: i64,
    pub not_after: i64,
}

const SP_COLUMNS: &str =
    "object_id, app_id, display_name, principal_type, mi_resource_id, mi_user_assigned, created_at";
const APP_COLUMNS: &str =
    "object_id, app_id, display_name, identifier_uris, token_version, created_at";
const KEY_COLUMNS: &str =
    "key_id, owner_id, display_name, cert_der, sha1, sha256, start_at, end_at";
const PASSWORD_COLUMNS: &str = "key_id, owner_id, display_name, hint, salt, hash, start_at, end_at";

impl Store {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM aad_settings WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO aad_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn insert_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        sqlx::query("INSERT INTO aad_tenants (id, default_domain, display_name, created_at) VALUES (?, ?, ?, ?)")
            .bind(&tenant.id)
            .bind(&tenant.default_domain)
            .bind(&tenant.display_name)
            .bind(tenant.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn tenants(&self) -> StoreResult<Vec<Tenant>> {
        let rows: Vec<TenantRow> = sqlx::query_as("SELECT id, default_domain, display_name, created_at FROM aad_tenants ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Tenant {
                id: r.id,
                default_domain: r.default_domain,
                display_name: r.display_name,
                created_at: r.created_at,
            })
            .collect())
    }

    // ---- applications ----

    pub async fn insert_application(&self, tenant_id: &str, app: &Application) -> StoreResult<()> {
        sqlx::query("INSERT INTO aad_applications (object_id, tenant_id, app_id, display_name, identifier_uris, token_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&app.object_id)
            .bind(tenant_id)
            .bind(&app.app_id)
            .bind(&app.display_name)
            .bind(serde_json::to_string(&app.identifier_uris).unwrap_or_else(|_| "[]".into()))
            .bind(i64::from(app.token_version))
            .bind(app.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn update_application(&self, app: &Application) -> StoreResult<()> {
        sqlx::query("UPDATE aad_applications SET display_name = ?, identifier_uris = ?, token_version = ? WHERE object_id = ?")
            .bind(&app.display_name)
            .bind(serde_json::to_string(&app.identifier_uris).unwrap_or_else(|_| "[]".into()))
            .bind(i64::from(app.token_version))
            .bind(&app.object_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn application(&self, object_id: &str) -> StoreResult<Option<Application>> {
        let row: Option<ApplicationRow> = sqlx::query_as(&format!(
            "SELECT {APP_COLUMNS} FROM aad_applications WHERE object_id = ?"
        ))
        .bind(object_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Application::try_from).transpose()
    }

    pub async fn application_by_app_id(&self, app_id: &str) -> StoreResult<Option<Application>> {
        let row: Option<ApplicationRow> = sqlx::query_as(&format!(
            "SELECT {APP_COLUMNS} FROM aad_applications WHERE app_id = ?"
        ))
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Application::try_from).transpose()
    }

    pub async fn applications(&self) -> StoreResult<Vec<Application>> {
        let rows: Vec<ApplicationRow> = sqlx::query_as(&format!(
            "SELECT {APP_COLUMNS} FROM aad_applications ORDER BY created_at, object_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Application::try_from).collect()
    }

    /// Deletes an application and its credentials in one transaction.
    pub async fn delete_application(&self, object_id: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let deleted = sqlx::query("DELETE FROM aad_applications WHERE object_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM aad_key_credentials WHERE owner_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM aad_password_credentials WHERE owner_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM aad_federated_credentials WHERE owner_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    // ---- service principals ----

    pub async fn insert_service_principal(
        &self,
        tenant_id: &str,
        sp: &ServicePrincipal,
    ) -> StoreResult<()> {
        let (kind, resource_id, user_assigned) = match &sp.kind {
            PrincipalKind::Application => ("Application", None, false),
            PrincipalKind::ManagedIdentity {
                resource_id,
                user_assigned,
            } => (
                "ManagedIdentity",
                Some(resource_id.as_str()),
                *user_assigned,
            ),
        };
        sqlx::query("INSERT INTO aad_service_principals (object_id, tenant_id, app_id, display_name, principal_type, mi_resource_id, mi_user_assigned, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&sp.object_id)
            .bind(tenant_id)
            .bind(&sp.app_id)
            .bind(&sp.display_name)
            .bind(kind)
            .bind(resource_id)
            .bind(user_assigned)
            .bind(sp.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn service_principal(
        &self,
        object_id: &str,
    ) -> StoreResult<Option<ServicePrincipal>> {
        let row: Option<PrincipalRow> = sqlx::query_as(&format!(
            "SELECT {SP_COLUMNS} FROM aad_service_principals WHERE object_id = ?"
        ))
        .bind(object_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(ServicePrincipal::from))
    }

    pub async fn service_principal_by_app_id(
        &self,
        app_id: &str,
    ) -> StoreResult<Option<ServicePrincipal>> {
        let row: Option<PrincipalRow> = sqlx::query_as(&format!(
            "SELECT {SP_COLUMNS} FROM aad_service_principals WHERE app_id = ?"
        ))
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(ServicePrincipal::from))
    }

    pub async fn service_principals(&self) -> StoreResult<Vec<ServicePrincipal>> {
        let rows: Vec<PrincipalRow> = sqlx::query_as(&format!(
            "SELECT {SP_COLUMNS} FROM aad_service_principals ORDER BY created_at, object_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ServicePrincipal::from).collect())
    }

    /// Deletes a service principal and its own credentials in one transaction.
    pub async fn delete_service_principal(&self, object_id: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let deleted = sqlx::query("DELETE FROM aad_service_principals WHERE object_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM aad_key_credentials WHERE owner_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM aad_password_credentials WHERE owner_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM aad_federated_credentials WHERE owner_id = ?")
            .bind(object_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    // ---- federated identity credentials ----

    pub async fn federated_credentials(
        &self,
        owner_id: &str,
    ) -> StoreResult<Vec<FederatedCredential>> {
        let rows: Vec<(String, String, String, String, String, String)> = sqlx::query_as(
            "SELECT name, issuer, subject, audiences, id, description FROM aad_federated_credentials WHERE owner_id = ? ORDER BY name",
        )
        .bind(owner_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(name, issuer, subject, audiences, id, description)| FederatedCredential {
                    name,
                    issuer,
                    subject,
                    audiences: serde_json::from_str(&audiences).unwrap_or_default(),
                    id,
                    description,
                },
            )
            .collect())
    }

    /// Writes an owner's credential over the one of the same name (whose `id` stays), or adds it.
    pub async fn put_federated_credential(
        &self,
        owner_id: &str,
        credential: &FederatedCredential,
    ) -> StoreResult<()> {
        self.write_federated_credential(owner_id, credential, true)
            .await
    }

    /// Adds a credential whose name the owner does not have yet (`Conflict` if it has).
    pub async fn insert_federated_credential(
        &self,
        owner_id: &str,
        credential: &FederatedCredential,
    ) -> StoreResult<()> {
        self.write_federated_credential(owner_id, credential, false)
            .await
    }

    async fn write_federated_credential(
        &self,
        owner_id: &str,
        credential: &FederatedCredential,
        replace: bool,
    ) -> StoreResult<()> {
        let on_conflict = if replace {
            " ON CONFLICT (owner_id, name) DO UPDATE SET issuer = excluded.issuer, subject = excluded.subject, audiences = excluded.audiences, description = excluded.description"
        } else {
            ""
        };
        sqlx::query(&format!(
            "INSERT INTO aad_federated_credentials (owner_id, name, issuer, subject, audiences, id, description) VALUES (?, ?, ?, ?, ?, ?, ?){on_conflict}"
        ))
        .bind(owner_id)
        .bind(&credential.name)
        .bind(&credential.issuer)
        .bind(&credential.subject)
        .bind(serde_json::Value::from(credential.audiences.clone()).to_string())
        .bind(&credential.id)
        .bind(&credential.description)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_federated_credential(
        &self,
        owner_id: &str,
        name: &str,
    ) -> StoreResult<bool> {
        Ok(
            sqlx::query("DELETE FROM aad_federated_credentials WHERE owner_id = ? AND name = ?")
                .bind(owner_id)
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    // ---- credentials ----

    pub async fn insert_key_credential(&self, key: &KeyCredential) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO aad_key_credentials ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&key.key_id)
        .bind(&key.owner_id)
        .bind(&key.display_name)
        .bind(&key.cert_der)
        .bind(&key.sha1)
        .bind(&key.sha256)
        .bind(key.start_at)
        .bind(key.end_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces every key credential of `owner_id` (Graph PATCH semantics) atomically.
    pub async fn replace_key_credentials(
        &self,
        owner_id: &str,
        keys: &[KeyCredential],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM aad_key_credentials WHERE owner_id = ?")
            .bind(owner_id)
            .execute(&mut *tx)
            .await?;
        for key in keys {
            sqlx::query(&format!(
                "INSERT INTO aad_key_credentials ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(&key.key_id)
            .bind(owner_id)
            .bind(&key.display_name)
            .bind(&key.cert_der)
            .bind(&key.sha1)
            .bind(&key.sha256)
            .bind(key.start_at)
            .bind(key.end_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_key_credential(&self, owner_id: &str, key_id: &str) -> StoreResult<bool> {
        Ok(
            sqlx::query("DELETE FROM aad_key_credentials WHERE owner_id = ? AND key_id = ?")
                .bind(owner_id)
                .bind(key_id)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    pub async fn key_credentials(&self, owner_ids: &[&str]) -> StoreResult<Vec<KeyCredential>> {
        let mut out = Vec::new();
        for owner in owner_ids {
            let rows: Vec<KeyRow> = sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM aad_key_credentials WHERE owner_id = ? ORDER BY start_at, key_id"))
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
            out.extend(rows.into_iter().map(KeyCredential::from));
        }
        Ok(out)
    }

    pub async fn insert_password_credential(
        &self,
        password: &PasswordCredential,
    ) -> StoreResult<()> {
        sqlx::query(&format!("INSERT INTO aad_password_credentials ({PASSWORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&password.key_id)
            .bind(&password.owner_id)
            .bind(&password.display_name)
            .bind(&password.hint)
            .bind(&password.salt)
            .bind(&password.hash)
            .bind(password.start_at)
            .bind(password.end_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_password_credential(
        &self,
        owner_id: &str,
        key_id: &str,
    ) -> StoreResult<bool> {
        Ok(
            sqlx::query("DELETE FROM aad_password_credentials WHERE owner_id = ? AND key_id = ?")
                .bind(owner_id)
                .bind(key_id)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    pub async fn password_credentials(
        &self,
        owner_ids: &[&str],
    ) -> StoreResult<Vec<PasswordCredential>> {
        let mut out = Vec::new();
        for owner in owner_ids {
            let rows: Vec<PasswordRow> =
                sqlx::query_as(&format!("SELECT {PASSWORD_COLUMNS} FROM aad_password_credentials WHERE owner_id = ? ORDER BY start_at, key_id"))
                    .bind(owner)
                    .fetch_all(&self.pool)
                    .await?;
            out.extend(rows.into_iter().map(PasswordCredential::from));
        }
        Ok(out)
    }

    // ---- signing keys ----

    pub async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRow>> {
        Ok(sqlx::query_as("SELECT kid, private_pkcs8, cert_der, created_at, not_after FROM aad_signing_keys ORDER BY created_at, kid")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Deletes every signing key but `keep` (retired keys).
    pub async fn retain_signing_keys(&self, keep: &[String]) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let kids: Vec<String> = sqlx::query_scalar("SELECT kid FROM aad_signing_keys")
            .fetch_all(&mut *tx)
            .await?;
        for kid in kids.iter().filter(|k| !keep.contains(k)) {
            sqlx::query("DELETE FROM aad_signing_keys WHERE kid = ?")
                .bind(kid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_signing_key(&self, key: &SigningKeyRow) -> StoreResult<()> {
        sqlx::query("INSERT INTO aad_signing_keys (kid, private_pkcs8, cert_der, created_at, not_after) VALUES (?, ?, ?, ?, ?)")
            .bind(&key.kid)
            .bind(&key.private_pkcs8)
            .bind(&key.cert_der)
            .bind(key.created_at)
            .bind(key.not_after)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> Store {
        let pool = misim_core::db::open(Some(&dir.path().join("aad.db")), &MIGRATOR)
            .await
            .expect("open");
        Store::new(pool)
    }

    fn sp(object_id: &str, app_id: &str) -> ServicePrincipal {
        ServicePrincipal {
            object_id: object_id.into(),
            app_id: app_id.into(),
            display_name: "x".into(),
            kind: PrincipalKind::ManagedIdentity {
                resource_id: "/subscriptions/s/resourceGroups/r".into(),
                user_assigned: true,
            },
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn principals_and_credentials_round_trip_and_cascade() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir).await;
        store
            .insert_tenant(&Tenant {
                id: "t".into(),
                default_domain: "d".into(),
                display_name: "T".into(),
                created_at: 0,
            })
            .await
            .expect("tenant");
        store
            .insert_service_principal("t", &sp("o1", "a1"))
            .await
            .expect("sp");
        assert!(
            matches!(
                store.insert_service_principal("t", &sp("o2", "A1")).await,
                Err(StoreError::Conflict)
            ),
            "app ids are unique, case-insensitively"
        );
        let key = KeyCredential {
            key_id: "k".into(),
            owner_id: "o1".into(),
            display_name: None,
            cert_der: vec![1],
            sha1: vec![2],
            sha256: vec![3],
            start_at: 0,
            end_at: 10,
        };
        store.insert_key_credential(&key).await.expect("key");
        assert_eq!(store.key_credentials(&["O1"]).await.expect("keys").len(), 1);
        let loaded = store
            .service_principal_by_app_id("A1")
            .await
            .expect("get")
            .expect("some");
        assert_eq!(loaded, sp("o1", "a1"));
        assert!(store.delete_service_principal("o1").await.expect("delete"));
        assert!(
            store
                .key_credentials(&["o1"])
                .await
                .expect("keys")
                .is_empty(),
            "credentials go with their owner"
        );
        assert!(
            !store
                .delete_service_principal("o1")
                .await
                .expect("delete again")
        );
    }

    #[tokio::test]
    async fn settings_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        store(&dir).await.set_setting("k", "v1").await.expect("set");
        let reopened = store(&dir).await;
        assert_eq!(
            reopened.setting("k").await.expect("get").as_deref(),
            Some("v1")
        );
    }
}
