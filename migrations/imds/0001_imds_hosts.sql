-- The VMs this IMDS hosts and the identity credentials ARM installed on each. Append-only.
CREATE TABLE imds_vms (
    vm_id       TEXT PRIMARY KEY NOT NULL,
    resource_id TEXT NOT NULL,
    metadata    TEXT NOT NULL,          -- compute document inputs from ARM (JSON)
    port        INTEGER,                -- per-VM listener port, kept across restarts
    updated_at  INTEGER NOT NULL
);

CREATE TABLE imds_identities (
    vm_id         TEXT NOT NULL REFERENCES imds_vms (vm_id) ON DELETE CASCADE,
    principal_id  TEXT NOT NULL COLLATE NOCASE,
    client_id     TEXT NOT NULL COLLATE NOCASE,
    tenant_id     TEXT NOT NULL,
    resource_id   TEXT NOT NULL,        -- xms_mirid: the identity resource or the VM
    user_assigned INTEGER NOT NULL,
    key_id        TEXT NOT NULL,
    cert_der      BLOB NOT NULL,
    private_pkcs8 BLOB NOT NULL,
    installed_at  INTEGER NOT NULL,
    PRIMARY KEY (vm_id, principal_id)
);
