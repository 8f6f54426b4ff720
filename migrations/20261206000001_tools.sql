-- Tools (issue 25): a tenant's bot calls the tenant's own HTTP endpoints through the
-- model's function calling.

-- A tenant's tool definitions. `parameters` is a JSON Schema object (kept as text: MySQL
-- 8's JSON type re-orders keys). `auth_sealed` is the endpoint's credential sealed like
-- channel credentials (the tenant and the tool's name as associated data); `auth_kind`
-- says which kind it is without opening it.
CREATE TABLE tools (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id     BIGINT UNSIGNED NOT NULL,
    name          VARCHAR(64)     NOT NULL,
    description   TEXT            NOT NULL,
    parameters    MEDIUMTEXT      NOT NULL,
    method        VARCHAR(8)      NOT NULL,
    url           VARCHAR(2048)   NOT NULL,
    auth_kind     VARCHAR(16)     NULL,
    auth_sealed   VARBINARY(4096) NULL,
    timeout_ms    INT UNSIGNED    NOT NULL DEFAULT 5000,
    side_effects  BOOLEAN         NOT NULL,
    is_active     BOOLEAN         NOT NULL DEFAULT TRUE,
    created_at    DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at    DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_tools_name (client_id, name),
    CONSTRAINT fk_tools_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE,
    CONSTRAINT ck_tools_method CHECK (method IN ('GET', 'POST'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Every tool call a turn made, recorded before the turn goes on: a turn run again after
-- a crash reuses the recorded results instead of calling again. `turn_id` is the
-- envelope id of the turn's first message (the same however often the turn runs);
-- (turn_id, call_index) is the call's `Idempotency-Key`.
CREATE TABLE tool_calls (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    client_id       BIGINT UNSIGNED NOT NULL,
    conversation_id BIGINT UNSIGNED NOT NULL,
    turn_id         BINARY(16)      NOT NULL,
    call_index      INT UNSIGNED    NOT NULL,
    tool            VARCHAR(64)     NOT NULL,
    arguments       MEDIUMTEXT      NOT NULL,
    status          VARCHAR(16)     NOT NULL,
    result          MEDIUMTEXT      NOT NULL,
    duration_ms     INT UNSIGNED    NOT NULL,
    created_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_tool_calls_turn (client_id, turn_id, call_index),
    KEY ix_tool_calls_conversation (client_id, conversation_id, id),
    KEY ix_tool_calls_day (client_id, created_at),
    CONSTRAINT fk_tool_calls_conversation FOREIGN KEY (client_id, conversation_id)
        REFERENCES conversations (client_id, id) ON DELETE CASCADE,
    CONSTRAINT ck_tool_calls_status CHECK (status IN ('ok', 'error', 'refused', 'invalid', 'not_called'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The built-in tools a tenant switched on (comma-separated: handoff_to_human,
-- offer_choices).
ALTER TABLE client_configs
    ADD COLUMN builtin_tools VARCHAR(255) NOT NULL DEFAULT '';

-- The choices a reply offers (a JSON array of strings), from `offer_choices`.
ALTER TABLE messages
    ADD COLUMN choices TEXT NULL;

-- store_reply stores a reply's choices (its current body: shared/src/db/procedures/).
DROP PROCEDURE IF EXISTS store_reply;

-- Stores a reply, marks the user messages it answers (`p_answers`, comma-separated ids)
-- answered and counts the usage, in one transaction. Outcome (column `outcome`): 'stored';
-- 'not_bot' when a bot or fallback reply (`p_bot_only`) meets a conversation a human
-- has; 'answered_before' when none of `p_answers` is still pending. `p_choices`: the
-- choices the reply offers (a JSON array), or NULL.
CREATE PROCEDURE store_reply(
    IN p_client_id               BIGINT UNSIGNED,
    IN p_conversation_id         BIGINT UNSIGNED,
    IN p_reply_id                BINARY(16),
    IN p_role                    VARCHAR(16),
    IN p_content                 MEDIUMTEXT CHARACTER SET utf8mb4,
    IN p_reply_kind              VARCHAR(16),
    IN p_bot_only                BOOLEAN,
    IN p_prompt_tokens           INT UNSIGNED,
    IN p_completion_tokens       INT UNSIGNED,
    IN p_estimated_prompt_tokens INT UNSIGNED,
    IN p_config_version          BIGINT UNSIGNED,
    IN p_answers                 TEXT,
    IN p_usage_shard             TINYINT UNSIGNED,
    IN p_choices                 TEXT CHARACTER SET utf8mb4)
MODIFIES SQL DATA
SQL SECURITY INVOKER
store: BEGIN
    DECLARE v_seq BIGINT UNSIGNED;
    DECLARE v_reply_row BIGINT UNSIGNED;
    DECLARE v_answered BIGINT UNSIGNED;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    START TRANSACTION;
    CALL take_position(p_client_id, p_conversation_id, p_bot_only, v_seq);
    IF v_seq IS NULL THEN
        ROLLBACK;
        IF NOT p_bot_only THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the conversation is not the tenant''s';
        END IF;
        SELECT 'not_bot' AS outcome;
        LEAVE store;
    END IF;
    INSERT INTO messages (client_id, conversation_id, envelope_id, role, content, state,
        reply_kind, prompt_tokens, completion_tokens, estimated_prompt_tokens,
        config_version, seq, history_seq, choices)
        VALUES (p_client_id, p_conversation_id, p_reply_id, p_role, p_content, 'stored',
        p_reply_kind, p_prompt_tokens, p_completion_tokens, p_estimated_prompt_tokens,
        p_config_version, v_seq, v_seq, p_choices);
    SET v_reply_row = LAST_INSERT_ID();
    UPDATE messages FORCE INDEX (ix_messages_open)
        SET state = 'answered', reply_message_id = v_reply_row,
        history_seq = v_seq
        WHERE client_id = p_client_id AND conversation_id = p_conversation_id
          AND state = 'pending' AND FIND_IN_SET(id, p_answers) > 0;
    SET v_answered = ROW_COUNT();
    IF v_answered = 0 THEN
        ROLLBACK;
        SELECT 'answered_before' AS outcome;
        LEAVE store;
    END IF;
    INSERT INTO usage_daily (client_id, day, shard, messages, prompt_tokens,
        completion_tokens)
        VALUES (p_client_id, UTC_DATE(), p_usage_shard, v_answered,
        IFNULL(p_prompt_tokens, 0), IFNULL(p_completion_tokens, 0))
        ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages),
        prompt_tokens = prompt_tokens + VALUES(prompt_tokens),
        completion_tokens = completion_tokens + VALUES(completion_tokens);
    COMMIT;
    SELECT 'stored' AS outcome;
END;
