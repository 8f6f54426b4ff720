-- Security hardening (issue 23).

-- A mobile device's secret, SHA-256 of what its first session was given: every later
-- session for the device must present it. NULL: not claimed yet (devices registered
-- before this migration claim theirs on their next session).
ALTER TABLE mobile_devices
    ADD COLUMN secret_hash BINARY(32) NULL AFTER device_id;

-- Sessions issued before this instant are refused (POST /admin/v1/clients/{id}/sessions/revoke).
ALTER TABLE clients
    ADD COLUMN sessions_revoked_at DATETIME(3) NULL;

-- Widget conversations are keyed by SHA-256 (hex) of the visitor id, a bearer secret
-- that is no longer stored as given.
UPDATE conversations SET external_id = SHA2(external_id, 256) WHERE channel = 'widget';

-- Operators of the admin API: each has a token of their own, stored as its SHA-256.
CREATE TABLE admin_tokens (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(64) NOT NULL,
    scope       VARCHAR(16) NOT NULL,
    token_hash  BINARY(32) NOT NULL,
    created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    revoked_at  DATETIME(6) NULL,
    UNIQUE KEY uq_admin_tokens_hash (token_hash),
    KEY ix_admin_tokens_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every admin write: who, what, on which tenant, and for configuration changes the
-- fields before and after (secrets masked). Not a tenant table: it outlives tenants.
CREATE TABLE audit_log (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at          DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    operator    VARCHAR(64) NOT NULL,
    method      VARCHAR(8) NOT NULL,
    route       VARCHAR(255) NOT NULL,
    tenant      BIGINT UNSIGNED NULL,
    request_id  VARCHAR(64) NULL,
    status      SMALLINT UNSIGNED NOT NULL,
    changes     JSON NULL,
    KEY ix_audit_tenant (tenant, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- A message's conversation is its own tenant's: the foreign key includes client_id.
ALTER TABLE conversations ADD UNIQUE KEY uq_conversations_tenant_id (client_id, id);
ALTER TABLE messages DROP FOREIGN KEY fk_messages_conversation;
ALTER TABLE messages
    ADD CONSTRAINT fk_messages_tenant_conversation FOREIGN KEY (client_id, conversation_id)
        REFERENCES conversations (client_id, id) ON DELETE CASCADE;
