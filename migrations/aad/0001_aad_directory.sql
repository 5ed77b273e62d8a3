-- AAD owns the directory (tenants, applications, service principals, credentials) and its
-- signing keys. Append-only: never edit a migration once it has landed.
CREATE TABLE aad_settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE aad_tenants (
    id             TEXT PRIMARY KEY NOT NULL,
    default_domain TEXT NOT NULL UNIQUE COLLATE NOCASE,
    display_name   TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE aad_applications (
    object_id       TEXT PRIMARY KEY NOT NULL COLLATE NOCASE,
    tenant_id       TEXT NOT NULL REFERENCES aad_tenants (id),
    app_id          TEXT NOT NULL UNIQUE COLLATE NOCASE,
    display_name    TEXT NOT NULL,
    identifier_uris TEXT NOT NULL DEFAULT '[]',
    token_version   INTEGER NOT NULL DEFAULT 1 CHECK (token_version IN (1, 2)),
    created_at      INTEGER NOT NULL
);

CREATE TABLE aad_service_principals (
    object_id        TEXT PRIMARY KEY NOT NULL COLLATE NOCASE,
    tenant_id        TEXT NOT NULL REFERENCES aad_tenants (id),
    app_id           TEXT NOT NULL UNIQUE COLLATE NOCASE,
    display_name     TEXT NOT NULL,
    principal_type   TEXT NOT NULL CHECK (principal_type IN ('Application', 'ManagedIdentity')),
    mi_resource_id   TEXT,
    mi_user_assigned INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL
);
CREATE INDEX aad_service_principals_display_name ON aad_service_principals (display_name);

-- Public X.509 certificates only; `owner_id` is an application or a service principal.
CREATE TABLE aad_key_credentials (
    key_id       TEXT PRIMARY KEY NOT NULL COLLATE NOCASE,
    owner_id     TEXT NOT NULL COLLATE NOCASE,
    display_name TEXT,
    cert_der     BLOB NOT NULL,
    sha1         BLOB NOT NULL,
    sha256       BLOB NOT NULL,
    start_at     INTEGER NOT NULL,
    end_at       INTEGER NOT NULL
);
CREATE INDEX aad_key_credentials_owner ON aad_key_credentials (owner_id);

-- Secrets are stored as salted SHA-256: they are 256-bit random values, so a slow hash would
-- only slow the token path without making them harder to guess.
CREATE TABLE aad_password_credentials (
    key_id       TEXT PRIMARY KEY NOT NULL COLLATE NOCASE,
    owner_id     TEXT NOT NULL COLLATE NOCASE,
    display_name TEXT,
    hint         TEXT NOT NULL,
    salt         BLOB NOT NULL,
    hash         BLOB NOT NULL,
    start_at     INTEGER NOT NULL,
    end_at       INTEGER NOT NULL
);
CREATE INDEX aad_password_credentials_owner ON aad_password_credentials (owner_id);

CREATE TABLE aad_signing_keys (
    kid           TEXT PRIMARY KEY NOT NULL,
    private_pkcs8 BLOB NOT NULL,
    cert_der      BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    not_after     INTEGER NOT NULL
);
