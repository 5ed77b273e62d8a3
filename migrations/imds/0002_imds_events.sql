-- The lifecycle timeline of this service (CONTRACT.md, Events); pruned to a bounded size.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY NOT NULL,
    time           TEXT NOT NULL,               -- simulated time, RFC 3339
    kind           TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    vm_id          TEXT,
    resource_id    TEXT,
    principal_id   TEXT,
    summary        TEXT NOT NULL,
    details        TEXT NOT NULL DEFAULT 'null'
);
-- No secondary indexes: retention keeps the table small enough to scan, and every insert on
-- the hot IMDS path would pay for them.

-- IMDS's own settings: the simulated clock's offset.
CREATE TABLE imds_settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
