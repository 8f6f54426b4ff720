-- Tenants' own LLM keys, what each turn costs, and budgets (issue 28).
--
-- A tenant's credentials for one provider of `llm.providers`: the key sealed under the
-- key ring (the tenant and the provider are its associated data), its last four
-- characters to show, and an optional base URL (only hosts in
-- `llm.tenant_base_url_allowlist`) and organization.
CREATE TABLE llm_credentials (
    client_id      BIGINT UNSIGNED NOT NULL,
    provider       VARCHAR(64)     NOT NULL,
    key_sealed     VARBINARY(2048) NOT NULL,
    key_last4      VARCHAR(4)      NOT NULL,
    base_url       VARCHAR(500)    NULL,
    organization   VARCHAR(200)    NULL,
    created_at     DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at     DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (client_id, provider),
    CONSTRAINT fk_llm_credentials_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Budgets: `budget_monthly` in the prices' currency (NULL: none), the warning threshold,
-- what happens once the month's spending reaches the budget; and whether the platform's
-- key may answer when the tenant's own key is refused.
ALTER TABLE client_configs
    ADD COLUMN budget_monthly DECIMAL(18, 6) NULL,
    ADD COLUMN budget_warning_pct TINYINT UNSIGNED NOT NULL DEFAULT 80,
    ADD COLUMN budget_action VARCHAR(16) NOT NULL DEFAULT 'none',
    ADD COLUMN fallback_to_platform_key BOOLEAN NOT NULL DEFAULT FALSE;

-- Who answered each reply and what it cost (micro-units of the prices' currency; NULL:
-- no LLM call, or a model without a price), and why a fallback answered.
ALTER TABLE messages
    ADD COLUMN llm_provider VARCHAR(64) NULL,
    ADD COLUMN llm_model VARCHAR(200) NULL,
    ADD COLUMN key_owner VARCHAR(8) NULL,
    ADD COLUMN cost_micros BIGINT UNSIGNED NULL,
    ADD COLUMN fallback_reason VARCHAR(255) NULL;

-- Cost per day, and the replies whose model had no price (reported, never as free).
ALTER TABLE usage_daily
    ADD COLUMN cost_micros BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN unpriced_replies INT UNSIGNED NOT NULL DEFAULT 0;

-- store_reply records who answered and the cost, and counts the usage on the tenant's
-- own date (its current body: shared/src/db/procedures/).
DROP PROCEDURE IF EXISTS store_reply;

-- Stores a reply, marks the user messages it answers (`p_answers`, comma-separated ids)
-- answered and counts the usage, in one transaction. Outcome (column `outcome`): 'stored';
-- 'not_bot' when a bot or fallback reply (`p_bot_only`) meets a conversation a human
-- has; 'answered_before' when none of `p_answers` is still pending. `p_choices`: the
-- choices the reply offers (a JSON array), or NULL. `p_day`: the tenant's own date (its
-- timezone; NULL: UTC's), the usage row counted. `p_llm_provider`, `p_llm_model`, `p_key_owner`
-- ('tenant' | 'platform'): who answered, NULL for a reply without an LLM call;
-- `p_cost_micros`: what the turn's LLM calls cost, NULL when one had no price
-- (`p_unpriced`); `p_fallback_reason`: why a fallback answered instead of the model.
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
    IN p_choices                 TEXT CHARACTER SET utf8mb4,
    IN p_day                     DATE,
    IN p_llm_provider            VARCHAR(64),
    IN p_llm_model               VARCHAR(200),
    IN p_key_owner               VARCHAR(8),
    IN p_cost_micros             BIGINT UNSIGNED,
    IN p_unpriced                BOOLEAN,
    IN p_fallback_reason         VARCHAR(255))
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
        config_version, seq, history_seq, choices, llm_provider, llm_model, key_owner,
        cost_micros, fallback_reason)
        VALUES (p_client_id, p_conversation_id, p_reply_id, p_role, p_content, 'stored',
        p_reply_kind, p_prompt_tokens, p_completion_tokens, p_estimated_prompt_tokens,
        p_config_version, v_seq, v_seq, p_choices, p_llm_provider, p_llm_model, p_key_owner,
        p_cost_micros, p_fallback_reason);
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
        completion_tokens, cost_micros, unpriced_replies)
        VALUES (p_client_id, IFNULL(p_day, UTC_DATE()), p_usage_shard, v_answered,
        IFNULL(p_prompt_tokens, 0), IFNULL(p_completion_tokens, 0),
        IFNULL(p_cost_micros, 0), IF(p_unpriced, 1, 0))
        ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages),
        prompt_tokens = prompt_tokens + VALUES(prompt_tokens),
        completion_tokens = completion_tokens + VALUES(completion_tokens),
        cost_micros = cost_micros + VALUES(cost_micros),
        unpriced_replies = unpriced_replies + VALUES(unpriced_replies);
    COMMIT;
    SELECT 'stored' AS outcome;
END;
