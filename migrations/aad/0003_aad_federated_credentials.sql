-- Federated identity credentials of managed identities (spec/tokens.md §6), as ARM sends them:
-- which external tokens (issuer, subject, audience) may stand in for the identity.
CREATE TABLE aad_federated_credentials (
    owner_id  TEXT NOT NULL COLLATE NOCASE,
    name      TEXT NOT NULL COLLATE NOCASE,
    issuer    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    audiences TEXT NOT NULL,  -- JSON array
    PRIMARY KEY (owner_id, name)
);
