-- Resources (resource groups, user-assigned identities), the principals ARM minted for managed
-- identities with their credentials, role assignments, and the outbox of provisioning work.
CREATE TABLE arm_resources (
    id_key         TEXT PRIMARY KEY NOT NULL,   -- lower-cased canonical id
    id             TEXT NOT NULL,               -- casing of the last write
    kind           TEXT NOT NULL,               -- resourceGroup | userAssignedIdentity
    resource_group TEXT NOT NULL COLLATE NOCASE,
    name           TEXT NOT NULL,
    location       TEXT NOT NULL,
    tags           TEXT NOT NULL DEFAULT '{}',
    properties     TEXT NOT NULL DEFAULT '{}',
    state          TEXT NOT NULL DEFAULT 'Succeeded',
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    updated_at     INTEGER NOT NULL,
    updated_by     TEXT NOT NULL
);
CREATE INDEX arm_resources_group ON arm_resources (resource_group, kind);
CREATE INDEX arm_resources_kind ON arm_resources (kind, id_key);

-- A managed identity's principal and credential. ARM keeps the private key; AAD only ever sees
-- the public certificate.
CREATE TABLE arm_identities (
    principal_id   TEXT PRIMARY KEY NOT NULL,
    client_id      TEXT NOT NULL UNIQUE,
    owner_key      TEXT NOT NULL,               -- id_key of the resource the identity belongs to
    user_assigned  INTEGER NOT NULL,
    mirid          TEXT NOT NULL,               -- xms_mirid of its tokens
    display_name   TEXT NOT NULL,
    cert_key_id    TEXT NOT NULL,
    cert_der       BLOB NOT NULL,
    private_pkcs8  BLOB NOT NULL,
    cert_not_after INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
CREATE INDEX arm_identities_owner ON arm_identities (owner_key);

CREATE TABLE arm_role_assignments (
    name_key           TEXT PRIMARY KEY NOT NULL,
    name               TEXT NOT NULL,
    scope              TEXT NOT NULL,
    scope_key          TEXT NOT NULL,
    role_definition_id TEXT NOT NULL,
    role_guid          TEXT NOT NULL,
    principal_id       TEXT NOT NULL COLLATE NOCASE,
    principal_type     TEXT NOT NULL,
    description        TEXT,
    created_at         INTEGER NOT NULL,
    created_by         TEXT NOT NULL,
    updated_at         INTEGER NOT NULL,
    updated_by         TEXT NOT NULL
);
CREATE INDEX arm_role_assignments_principal ON arm_role_assignments (principal_id);
CREATE INDEX arm_role_assignments_scope ON arm_role_assignments (scope_key);

-- Follow-up work written in the same transaction as the change that implies it; delivered at
-- once, retried by the worker with idempotent calls, resumed after a restart.
CREATE TABLE arm_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    action          TEXT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);

-- RSA keys made ahead of time so identity creation never waits for key generation.
CREATE TABLE arm_key_pool (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    private_pkcs8 BLOB NOT NULL
);
