-- Webhooks (issue 26): events of a tenant's conversations POSTed to the tenant's own
-- endpoints, signed to the Standard Webhooks spec, retried through RabbitMQ.

-- A tenant's endpoints. `events` is the subscribed types, comma-separated (`*` = all).
-- `secret_sealed` is the signing secret (`whsec_…`) sealed under the key ring with the
-- tenant and the endpoint id as associated data; after a rotation the old one keeps
-- signing beside the new one until `previous_until`. An endpoint with
-- `channel_account_id` is an API channel account's callback (`settings.callback_url`):
-- the account's settings own its URL.
-- A callback's channel account is its own tenant's: the foreign key includes client_id.
ALTER TABLE channel_accounts ADD UNIQUE KEY uq_channel_accounts_tenant_id (client_id, id);

CREATE TABLE webhooks (
    id                 BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id          BIGINT UNSIGNED NOT NULL,
    url                VARCHAR(2048)   NOT NULL,
    events             VARCHAR(1024)   NOT NULL,
    description        VARCHAR(500)    NOT NULL DEFAULT '',
    include_text       BOOLEAN         NOT NULL DEFAULT TRUE,
    channel_account_id BIGINT UNSIGNED NULL,
    secret_sealed      VARBINARY(255)  NOT NULL,
    previous_sealed    VARBINARY(255)  NULL,
    previous_until     DATETIME(6)     NULL,
    enabled            BOOLEAN         NOT NULL DEFAULT TRUE,
    disabled_reason    VARCHAR(255)    NULL,
    failing_since      DATETIME(6)     NULL,
    created_at         DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at         DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_webhooks_tenant_id (client_id, id),
    UNIQUE KEY uq_webhooks_account (client_id, channel_account_id),
    CONSTRAINT fk_webhooks_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE,
    CONSTRAINT fk_webhooks_account FOREIGN KEY (client_id, channel_account_id)
        REFERENCES channel_accounts (client_id, id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every event that had at least one subscribed endpoint when it happened, as sent
-- (`body`, the JSON of the event; texts are dropped per endpoint when it is sent). The
-- id is the `webhook-id` on every attempt and redelivery. `seq` orders the events of
-- one conversation (0 for events of no conversation).
CREATE TABLE webhook_events (
    client_id       BIGINT UNSIGNED NOT NULL,
    id              BINARY(16)      NOT NULL,
    type            VARCHAR(40)     NOT NULL,
    conversation_id BIGINT UNSIGNED NULL,
    seq             BIGINT UNSIGNED NOT NULL DEFAULT 0,
    body            MEDIUMTEXT      NOT NULL,
    created_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (client_id, id),
    KEY ix_webhook_events_time (client_id, created_at),
    CONSTRAINT fk_webhook_events_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One event owed to one endpoint: the truth about its delivery. `attempts` is the last
-- attempt claimed; a job off the queue claims attempt n only while `attempts` is n-1, so
-- a duplicated job never sends twice. `state`: pending, delivered, dead (given up, or
-- the endpoint was disabled).
CREATE TABLE webhook_deliveries (
    client_id       BIGINT UNSIGNED NOT NULL,
    webhook_id      BIGINT UNSIGNED NOT NULL,
    event_id        BINARY(16)      NOT NULL,
    conversation_id BIGINT UNSIGNED NULL,
    seq             BIGINT UNSIGNED NOT NULL DEFAULT 0,
    state           VARCHAR(16)     NOT NULL DEFAULT 'pending',
    attempts        INT UNSIGNED    NOT NULL DEFAULT 0,
    created_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    done_at         DATETIME(6)     NULL,
    PRIMARY KEY (client_id, webhook_id, event_id),
    KEY ix_webhook_deliveries_order (client_id, webhook_id, conversation_id, state, seq),
    CONSTRAINT fk_webhook_deliveries_webhook FOREIGN KEY (client_id, webhook_id)
        REFERENCES webhooks (client_id, id) ON DELETE CASCADE,
    CONSTRAINT ck_webhook_deliveries_state CHECK (state IN ('pending', 'delivered', 'dead'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every attempt at a delivery, for `GET …/webhooks/{id}/attempts`.
CREATE TABLE webhook_attempts (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id       BIGINT UNSIGNED NOT NULL,
    webhook_id      BIGINT UNSIGNED NOT NULL,
    event_id        BINARY(16)      NOT NULL,
    event_type      VARCHAR(40)     NOT NULL,
    attempt         INT UNSIGNED    NOT NULL,
    response_status SMALLINT UNSIGNED NULL,
    duration_ms     INT UNSIGNED    NOT NULL,
    error           VARCHAR(500)    NULL,
    created_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY ix_webhook_attempts_webhook (client_id, webhook_id, id),
    CONSTRAINT fk_webhook_attempts_webhook FOREIGN KEY (client_id, webhook_id)
        REFERENCES webhooks (client_id, id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The last event sequence number handed out in each conversation.
ALTER TABLE conversations
    ADD COLUMN event_seq BIGINT UNSIGNED NOT NULL DEFAULT 0;
