-- chatfleet's data model (DESIGN.md §5). Valid on MariaDB 10.11+ and MySQL 8.0.16+.
-- Every tenant table carries client_id as a foreign key and leads its indexes with it.
-- Text is utf8mb4_unicode_ci, except channel-side keys (external_id,
-- external_account_id), which are utf8mb4_bin: "ABC" and "abc" are different
-- conversations. The driver reports _bin columns as binary; read them as bytes.
-- Enumerations are VARCHAR + CHECK rather than ENUM so that adding a value is a plain
-- constraint change and drivers read them as strings on both servers.

CREATE TABLE clients (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    slug        VARCHAR(64)  NOT NULL,
    name        VARCHAR(255) NOT NULL,
    timezone    VARCHAR(64)  NOT NULL DEFAULT 'UTC',
    locale      VARCHAR(16)  NOT NULL DEFAULT 'en',
    plan        VARCHAR(16)  NOT NULL DEFAULT 'starter',
    status      VARCHAR(16)  NOT NULL DEFAULT 'active',
    created_at  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_clients_slug (slug),
    CONSTRAINT ck_clients_plan CHECK (plan IN ('starter', 'growth', 'enterprise')),
    CONSTRAINT ck_clients_status CHECK (status IN ('active', 'suspended', 'cancelled'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE client_configs (
    id                   BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id            BIGINT UNSIGNED NOT NULL,
    persona_name         VARCHAR(100) NOT NULL DEFAULT 'Assistant',
    persona_tone         VARCHAR(32)  NOT NULL DEFAULT 'friendly',
    persona_language     VARCHAR(32)  NOT NULL DEFAULT 'English',
    llm_model            VARCHAR(200) NOT NULL DEFAULT 'llama3.1:8b',
    llm_temperature      DOUBLE       NOT NULL DEFAULT 0.7,
    max_context_turns    INT UNSIGNED NOT NULL DEFAULT 10,
    rag_top_k            INT UNSIGNED NOT NULL DEFAULT 3,
    human_handoff_phrase VARCHAR(200) NULL,
    -- Bumped on every change; each reply records the version it was produced with.
    config_version       BIGINT UNSIGNED NOT NULL DEFAULT 1,
    fallback_message     VARCHAR(2000) NOT NULL
        DEFAULT 'Sorry, I cannot answer right now. Please try again in a moment.',
    fallback_model       VARCHAR(200) NULL,
    -- The tenant's own prompt budget in tokens, when lower than the model allows.
    prompt_token_budget  INT UNSIGNED NULL,
    -- Debounce window for coalescing a burst of messages into one turn.
    coalesce_window_ms   INT UNSIGNED NOT NULL DEFAULT 0,
    updated_at           DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_client_configs_client (client_id),
    CONSTRAINT fk_client_configs_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE,
    CONSTRAINT ck_client_configs_tone CHECK (persona_tone IN
        ('friendly', 'professional', 'formal', 'casual', 'empathetic', 'playful', 'concise')),
    CONSTRAINT ck_client_configs_temperature CHECK (llm_temperature >= 0 AND llm_temperature <= 2),
    CONSTRAINT ck_client_configs_turns CHECK (max_context_turns <= 100),
    CONSTRAINT ck_client_configs_top_k CHECK (rag_top_k <= 50)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE agent_modes (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id       BIGINT UNSIGNED NOT NULL,
    module_key      VARCHAR(64)  NOT NULL,
    prompt_fragment TEXT         NOT NULL,
    is_active       BOOLEAN      NOT NULL DEFAULT TRUE,
    -- Lower number = higher priority: listed first, dropped last.
    priority        INT          NOT NULL DEFAULT 100,
    created_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_agent_modes_client_key (client_id, module_key),
    CONSTRAINT fk_agent_modes_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE conversations (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id       BIGINT UNSIGNED NOT NULL,
    channel         VARCHAR(16)  NOT NULL,
    external_id     VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status          VARCHAR(16)  NOT NULL DEFAULT 'open',
    mode            VARCHAR(16)  NOT NULL DEFAULT 'bot',
    -- The last mailbox position handed out (see messages.seq).
    last_seq        BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at      DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    last_message_at DATETIME(6)  NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_conversations_key (client_id, channel, external_id),
    CONSTRAINT fk_conversations_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE,
    CONSTRAINT ck_conversations_channel CHECK (channel IN ('whatsapp', 'widget', 'mobile', 'api')),
    CONSTRAINT ck_conversations_status CHECK (status IN ('open', 'closed')),
    CONSTRAINT ck_conversations_mode CHECK (mode IN ('bot', 'human'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE messages (
    id                      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id               BIGINT UNSIGNED NOT NULL,
    conversation_id         BIGINT UNSIGNED NOT NULL,
    -- The envelope id (user messages) or reply id (assistant/agent): the idempotency key.
    envelope_id             BINARY(16)   NOT NULL,
    role                    VARCHAR(16)  NOT NULL,
    content                 MEDIUMTEXT   NOT NULL,
    channel_message_id      VARCHAR(255) NULL,
    -- user: pending -> answered | failed | ignored; assistant/agent: stored.
    state                   VARCHAR(16)  NOT NULL,
    -- For a user message: the reply (messages.id) that answered it.
    reply_message_id        BIGINT UNSIGNED NULL,
    reply_kind              VARCHAR(16)  NULL,
    prompt_tokens           INT UNSIGNED NULL,
    completion_tokens       INT UNSIGNED NULL,
    estimated_prompt_tokens INT UNSIGNED NULL,
    config_version          BIGINT UNSIGNED NULL,
    -- Position in the conversation's mailbox (long-poll cursor): strictly increasing per
    -- conversation in commit order, handed out under the conversation row's lock. A user
    -- message gets it when recorded, a reply when its channel's deliverer delivers it.
    seq                     BIGINT UNSIGNED NULL,
    delivery_status         VARCHAR(16)  NULL,
    created_at              DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_messages_envelope (client_id, envelope_id),
    UNIQUE KEY uq_messages_seq (client_id, conversation_id, seq),
    KEY ix_messages_conversation (client_id, conversation_id, id),
    CONSTRAINT fk_messages_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE,
    CONSTRAINT fk_messages_conversation FOREIGN KEY (conversation_id) REFERENCES conversations (id) ON DELETE CASCADE,
    CONSTRAINT ck_messages_role CHECK (role IN ('user', 'assistant', 'agent', 'system')),
    CONSTRAINT ck_messages_state CHECK (state IN ('pending', 'answered', 'failed', 'ignored', 'stored'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE channel_accounts (
    id                    BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id             BIGINT UNSIGNED NOT NULL,
    channel               VARCHAR(16)  NOT NULL,
    external_account_id   VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    -- AEAD ciphertext (nonce || ciphertext) of the credentials JSON.
    credentials_encrypted VARBINARY(4096) NULL,
    settings_json         TEXT         NOT NULL,
    created_at            DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at            DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_channel_accounts_external (channel, external_account_id),
    KEY ix_channel_accounts_client (client_id, channel),
    CONSTRAINT fk_channel_accounts_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE,
    CONSTRAINT ck_channel_accounts_channel CHECK (channel IN ('whatsapp', 'widget', 'mobile', 'api'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE api_keys (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id    BIGINT UNSIGNED NOT NULL,
    -- The public part of the key (shown in listings, used to find the row).
    prefix       VARCHAR(32)  NOT NULL,
    -- SHA-256 of the secret part; the secret itself is never stored.
    secret_hash  BINARY(32)   NOT NULL,
    name         VARCHAR(100) NOT NULL,
    created_at   DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    revoked_at   DATETIME(6)  NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_api_keys_prefix (prefix),
    KEY ix_api_keys_client (client_id, id),
    CONSTRAINT fk_api_keys_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE knowledge_documents (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id    BIGINT UNSIGNED NOT NULL,
    title        VARCHAR(255)  NOT NULL,
    source       VARCHAR(1000) NULL,
    content_hash BINARY(32)    NOT NULL,
    chunk_count  INT UNSIGNED  NOT NULL DEFAULT 0,
    created_at   DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_knowledge_documents_hash (client_id, content_hash),
    CONSTRAINT fk_knowledge_documents_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE usage_daily (
    client_id         BIGINT UNSIGNED NOT NULL,
    day               DATE            NOT NULL,
    messages          BIGINT UNSIGNED NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT UNSIGNED NOT NULL DEFAULT 0,
    completion_tokens BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, day),
    CONSTRAINT fk_usage_daily_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
