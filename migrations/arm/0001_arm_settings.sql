-- ARM's own settings: the seeded subscription and its tenant. Append-only.
CREATE TABLE arm_settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
