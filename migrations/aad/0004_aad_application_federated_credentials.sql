-- Federated identity credentials of applications (Graph's federatedIdentityCredentials, spec
-- §6.3) share the table, owned by the application's object id. Graph gives each an id and an
-- optional description; ARM's credentials of managed identities keep '' for both.
ALTER TABLE aad_federated_credentials ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE aad_federated_credentials ADD COLUMN description TEXT NOT NULL DEFAULT '';
