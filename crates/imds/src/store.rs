//! SQL for `imds.db`.

use sqlx::{FromRow, SqlitePool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/imds");

#[derive(Debug, Clone, FromRow)]
pub struct VmRow {
    pub vm_id: String,
    pub resource_id: String,
    pub metadata: String,
    pub port: Option<i64>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct IdentityRow {
    pub vm_id: String,
    pub principal_id: String,
    pub client_id: String,
    pub tenant_id: String,
    pub resource_id: String,
    pub user_assigned: bool,
    pub key_id: String,
    pub cert_der: Vec<u8>,
    pub private_pkcs8: Vec<u8>,
    pub installed_at: i64,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

const IDENTITY_COLUMNS: &str = "vm_id, principal_id, client_id, tenant_id, resource_id, user_assigned, key_id, cert_der, private_pkcs8, installed_at";

impl Store {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool, for the event log that shares this database.
    pub fn pool(&self) -> SqlitePool {
        self.pool.clone()
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM imds_settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO imds_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn vms(&self) -> Result<Vec<VmRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT vm_id, resource_id, metadata, port, updated_at FROM imds_vms ORDER BY vm_id",
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn vm(&self, vm_id: &str) -> Result<Option<VmRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT vm_id, resource_id, metadata, port, updated_at FROM imds_vms WHERE vm_id = ?",
        )
        .bind(vm_id)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn put_vm(
        &self,
        vm_id: &str,
        resource_id: &str,
        metadata: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO imds_vms (vm_id, resource_id, metadata, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (vm_id) DO UPDATE SET resource_id = excluded.resource_id, metadata = excluded.metadata, updated_at = excluded.updated_at")
            .bind(vm_id)
            .bind(resource_id)
            .bind(metadata)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_port(&self, vm_id: &str, port: u16) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE imds_vms SET port = ? WHERE vm_id = ?")
            .bind(i64::from(port))
            .bind(vm_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a VM and, by cascade, its credentials.
    pub async fn delete_vm(&self, vm_id: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM imds_vms WHERE vm_id = ?")
            .bind(vm_id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    pub async fn identities(&self, vm_id: &str) -> Result<Vec<IdentityRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {IDENTITY_COLUMNS} FROM imds_identities WHERE vm_id = ? ORDER BY installed_at, principal_id")).bind(vm_id).fetch_all(&self.pool).await
    }

    pub async fn put_identity(&self, row: &IdentityRow) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO imds_identities ({IDENTITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (vm_id, principal_id) DO UPDATE SET client_id = excluded.client_id, tenant_id = excluded.tenant_id, resource_id = excluded.resource_id,
             user_assigned = excluded.user_assigned, key_id = excluded.key_id, cert_der = excluded.cert_der, private_pkcs8 = excluded.private_pkcs8"
        ))
        .bind(&row.vm_id)
        .bind(&row.principal_id)
        .bind(&row.client_id)
        .bind(&row.tenant_id)
        .bind(&row.resource_id)
        .bind(row.user_assigned)
        .bind(&row.key_id)
        .bind(&row.cert_der)
        .bind(&row.private_pkcs8)
        .bind(row.installed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_identity(
        &self,
        vm_id: &str,
        principal_id: &str,
    ) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM imds_identities WHERE vm_id = ? AND principal_id = ?")
                .bind(vm_id)
                .bind(principal_id)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }
}
