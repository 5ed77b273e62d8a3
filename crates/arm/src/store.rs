//! SQL for `arm.db`. Only this module touches the database.

use sqlx::{FromRow, Sqlite, SqlitePool, Transaction};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/arm");

pub type Tx<'a> = Transaction<'a, Sqlite>;

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct ResourceRow {
    pub id_key: String,
    pub id: String,
    pub kind: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    pub tags: String,
    pub properties: String,
    pub state: String,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct IdentityRow {
    pub principal_id: String,
    pub client_id: String,
    pub owner_key: String,
    pub user_assigned: bool,
    pub mirid: String,
    pub display_name: String,
    pub cert_key_id: String,
    pub cert_der: Vec<u8>,
    pub private_pkcs8: Vec<u8>,
    pub cert_not_after: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct AssignmentRow {
    pub name_key: String,
    pub name: String,
    pub scope: String,
    pub scope_key: String,
    pub role_definition_id: String,
    pub role_guid: String,
    pub principal_id: String,
    pub principal_type: String,
    pub description: Option<String>,
    pub condition: Option<String>,
    pub condition_version: Option<String>,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
}

/// A custom role definition as stored; `permissions` and `assignable_scopes` are JSON text.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct RoleDefinitionRow {
    pub guid: String,
    pub role_name: String,
    pub description: String,
    pub permissions: String,
    pub assignable_scopes: String,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
}

const ROLE_DEFINITION_COLUMNS: &str = "guid, role_name, description, permissions, assignable_scopes, created_at, created_by, updated_at, updated_by";

#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub seq: i64,
    pub action: String,
    pub payload: String,
    pub attempts: i64,
    /// The request chain that caused the work (AAD and IMDS record their steps under it).
    pub correlation_id: Option<String>,
}

const RESOURCE_COLUMNS: &str = "id_key, id, kind, resource_group, name, location, tags, properties, state, created_at, created_by, updated_at, updated_by";
const IDENTITY_COLUMNS: &str = "principal_id, client_id, owner_key, user_assigned, mirid, display_name, cert_key_id, cert_der, private_pkcs8, cert_not_after, created_at";
const ASSIGNMENT_COLUMNS: &str = "name_key, name, scope, scope_key, role_definition_id, role_guid, principal_id, principal_type, description, condition, condition_version, created_at, created_by, updated_at, updated_by";

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool, for the event log that shares this database.
    pub fn pool(&self) -> SqlitePool {
        self.pool.clone()
    }

    pub async fn begin(&self) -> Result<Tx<'static>, sqlx::Error> {
        // IMMEDIATE: a deferred transaction that read before another writer (the event log)
        // committed cannot upgrade to a write and fails with SQLITE_BUSY at once.
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM arm_settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn set_setting(tx: &mut Tx<'_>, key: &str, value: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO arm_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value").bind(key).bind(value).execute(&mut **tx).await?;
        Ok(())
    }

    // ---- resources ----

    pub async fn resource(&self, id_key: &str) -> Result<Option<ResourceRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {RESOURCE_COLUMNS} FROM arm_resources WHERE id_key = ?"
        ))
        .bind(id_key)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn resources(
        &self,
        kind: &str,
        resource_group: Option<&str>,
    ) -> Result<Vec<ResourceRow>, sqlx::Error> {
        match resource_group {
            Some(rg) => sqlx::query_as(&format!("SELECT {RESOURCE_COLUMNS} FROM arm_resources WHERE kind = ? AND resource_group = ? ORDER BY id_key")).bind(kind).bind(rg).fetch_all(&self.pool).await,
            None => sqlx::query_as(&format!("SELECT {RESOURCE_COLUMNS} FROM arm_resources WHERE kind = ? ORDER BY id_key")).bind(kind).fetch_all(&self.pool).await,
        }
    }

    /// Every resource in a group other than the group itself.
    pub async fn group_members(
        &self,
        resource_group: &str,
    ) -> Result<Vec<ResourceRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {RESOURCE_COLUMNS} FROM arm_resources WHERE resource_group = ? AND kind <> 'resourceGroup' ORDER BY id_key")).bind(resource_group).fetch_all(&self.pool).await
    }

    pub async fn put_resource(tx: &mut Tx<'_>, row: &ResourceRow) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO arm_resources ({RESOURCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id_key) DO UPDATE SET id = excluded.id, name = excluded.name, location = excluded.location, tags = excluded.tags,
             properties = excluded.properties, state = excluded.state, updated_at = excluded.updated_at, updated_by = excluded.updated_by"
        ))
        .bind(&row.id_key)
        .bind(&row.id)
        .bind(&row.kind)
        .bind(&row.resource_group)
        .bind(&row.name)
        .bind(&row.location)
        .bind(&row.tags)
        .bind(&row.properties)
        .bind(&row.state)
        .bind(row.created_at)
        .bind(&row.created_by)
        .bind(row.updated_at)
        .bind(&row.updated_by)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn delete_resource(tx: &mut Tx<'_>, id_key: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM arm_resources WHERE id_key = ?")
            .bind(id_key)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            > 0)
    }

    pub async fn set_state(&self, id_key: &str, state: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE arm_resources SET state = ? WHERE id_key = ?")
            .bind(state)
            .bind(id_key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `Updating` resources become `Succeeded` (their provisioning was delivered); how many.
    pub async fn settle_updating(&self) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("UPDATE arm_resources SET state = 'Succeeded' WHERE state = 'Updating'")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    // ---- identities ----

    pub async fn insert_identity(tx: &mut Tx<'_>, row: &IdentityRow) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("INSERT INTO arm_identities ({IDENTITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&row.principal_id)
            .bind(&row.client_id)
            .bind(&row.owner_key)
            .bind(row.user_assigned)
            .bind(&row.mirid)
            .bind(&row.display_name)
            .bind(&row.cert_key_id)
            .bind(&row.cert_der)
            .bind(&row.private_pkcs8)
            .bind(row.cert_not_after)
            .bind(row.created_at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Replaces an identity's credential (a roll).
    pub async fn update_identity_credential(
        tx: &mut Tx<'_>,
        principal_id: &str,
        key_id: &str,
        cert_der: &[u8],
        private_pkcs8: &[u8],
        not_after: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE arm_identities SET cert_key_id = ?, cert_der = ?, private_pkcs8 = ?, cert_not_after = ? WHERE principal_id = ?")
            .bind(key_id)
            .bind(cert_der)
            .bind(private_pkcs8)
            .bind(not_after)
            .bind(principal_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn identities_of(&self, owner_key: &str) -> Result<Vec<IdentityRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {IDENTITY_COLUMNS} FROM arm_identities WHERE owner_key = ?"
        ))
        .bind(owner_key)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn identities(&self) -> Result<Vec<IdentityRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {IDENTITY_COLUMNS} FROM arm_identities ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await
    }

    /// Deletes the identities owned by a resource; returns their principal ids.
    pub async fn delete_identities_of(
        tx: &mut Tx<'_>,
        owner_key: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT principal_id FROM arm_identities WHERE owner_key = ?")
                .bind(owner_key)
                .fetch_all(&mut **tx)
                .await?;
        sqlx::query("DELETE FROM arm_identities WHERE owner_key = ?")
            .bind(owner_key)
            .execute(&mut **tx)
            .await?;
        Ok(ids)
    }

    // ---- custom role definitions ----

    pub async fn role_definitions(&self) -> Result<Vec<RoleDefinitionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ROLE_DEFINITION_COLUMNS} FROM arm_role_definitions ORDER BY role_name, guid"
        ))
        .fetch_all(&self.pool)
        .await
    }

    pub async fn put_role_definition(
        tx: &mut Tx<'_>,
        row: &RoleDefinitionRow,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO arm_role_definitions ({ROLE_DEFINITION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (guid) DO UPDATE SET role_name = excluded.role_name, description = excluded.description,
             permissions = excluded.permissions, assignable_scopes = excluded.assignable_scopes,
             updated_at = excluded.updated_at, updated_by = excluded.updated_by"
        ))
        .bind(&row.guid)
        .bind(&row.role_name)
        .bind(&row.description)
        .bind(&row.permissions)
        .bind(&row.assignable_scopes)
        .bind(row.created_at)
        .bind(&row.created_by)
        .bind(row.updated_at)
        .bind(&row.updated_by)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn delete_role_definition(tx: &mut Tx<'_>, guid: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM arm_role_definitions WHERE guid = ?")
            .bind(guid)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    // ---- role assignments ----

    pub async fn assignment(&self, name_key: &str) -> Result<Option<AssignmentRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM arm_role_assignments WHERE name_key = ?"
        ))
        .bind(name_key)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn assignments(&self) -> Result<Vec<AssignmentRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM arm_role_assignments ORDER BY created_at, name_key"
        ))
        .fetch_all(&self.pool)
        .await
    }

    pub async fn assignments_of(
        &self,
        principal_id: &str,
    ) -> Result<Vec<AssignmentRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM arm_role_assignments WHERE principal_id = ?"
        ))
        .bind(principal_id)
        .fetch_all(&self.pool)
        .await
    }

    /// What an assignment's PUT may change: its description and condition.
    pub async fn update_assignment(
        tx: &mut Tx<'_>,
        row: &AssignmentRow,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE arm_role_assignments SET description = ?, condition = ?, condition_version = ?, updated_at = ?, updated_by = ? WHERE name_key = ?")
            .bind(&row.description)
            .bind(&row.condition)
            .bind(&row.condition_version)
            .bind(row.updated_at)
            .bind(&row.updated_by)
            .bind(&row.name_key)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn insert_assignment(
        tx: &mut Tx<'_>,
        row: &AssignmentRow,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("INSERT INTO arm_role_assignments ({ASSIGNMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&row.name_key)
            .bind(&row.name)
            .bind(&row.scope)
            .bind(&row.scope_key)
            .bind(&row.role_definition_id)
            .bind(&row.role_guid)
            .bind(&row.principal_id)
            .bind(&row.principal_type)
            .bind(&row.description)
            .bind(&row.condition)
            .bind(&row.condition_version)
            .bind(row.created_at)
            .bind(&row.created_by)
            .bind(row.updated_at)
            .bind(&row.updated_by)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn delete_assignment(tx: &mut Tx<'_>, name_key: &str) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM arm_role_assignments WHERE name_key = ?")
                .bind(name_key)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// Deletes assignments at `scope_key` or below (their scope is being deleted).
    pub async fn delete_assignments_under(
        tx: &mut Tx<'_>,
        scope_key: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM arm_role_assignments WHERE scope_key = ? OR substr(scope_key, 1, length(?) + 1) = ? || '/'")
            .bind(scope_key)
            .bind(scope_key)
            .bind(scope_key)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    // ---- outbox ----

    pub async fn enqueue(
        tx: &mut Tx<'_>,
        action: &str,
        payload: &serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO arm_outbox (action, payload, correlation_id) VALUES (?, ?, ?)")
            .bind(action)
            .bind(payload.to_string())
            .bind(misim_core::events::current_correlation())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Drops pending idempotent puts: the reconcile pass re-plans every one of them, and stacking
    /// a full set per restart would grow the outbox without bound.
    pub async fn drop_pending_puts(tx: &mut Tx<'_>) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM arm_outbox WHERE action IN ('aad.put_principal', 'aad.put_certificate', 'aad.put_fic', 'aad.retain_fics', 'imds.put_vm', 'imds.put_identity')").execute(&mut **tx).await?;
        Ok(())
    }

    /// Pending work in order.
    pub async fn outbox(&self) -> Result<Vec<OutboxRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT seq, action, payload, attempts, correlation_id FROM arm_outbox ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn outbox_next_attempt(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT next_attempt_at FROM arm_outbox ORDER BY seq LIMIT 1")
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn outbox_done(&self, seq: i64) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM arm_outbox WHERE seq = ?")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn outbox_failed(
        &self,
        seq: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE arm_outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE seq = ?").bind(next_attempt_at).bind(error).bind(seq).execute(&self.pool).await?;
        Ok(())
    }

    // ---- key pool ----

    pub async fn pooled_keys(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM arm_key_pool")
            .fetch_one(&self.pool)
            .await
    }

    pub async fn add_pooled_key(&self, pkcs8: &[u8]) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO arm_key_pool (private_pkcs8) VALUES (?)")
            .bind(pkcs8)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes one pre-generated key, if any.
    pub async fn take_pooled_key(&self) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar("DELETE FROM arm_key_pool WHERE id = (SELECT MIN(id) FROM arm_key_pool) RETURNING private_pkcs8").fetch_optional(&self.pool).await
    }
}
