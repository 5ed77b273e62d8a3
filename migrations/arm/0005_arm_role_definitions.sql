-- Custom role definitions (spec/arm.md §5.1): what a role permits, and where it may be assigned.
-- Built-in roles are compiled in and never stored.
CREATE TABLE arm_role_definitions (
    guid              TEXT PRIMARY KEY NOT NULL,  -- lower case
    role_name         TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    permissions       TEXT NOT NULL,              -- JSON: [{actions, notActions, dataActions, notDataActions}]
    assignable_scopes TEXT NOT NULL,              -- JSON array, as given
    created_at        INTEGER NOT NULL,
    created_by        TEXT NOT NULL,
    updated_at        INTEGER NOT NULL,
    updated_by        TEXT NOT NULL
);
