-- Every mailbox position is taken in one place, the `take_position` procedure, which the
-- write procedures call and a human agent's message now goes through too (it was the
-- one position taken by a statement of the data layer's own). The procedures' current
-- bodies live in shared/src/db/procedures/, one file each; a test holds this migration
-- (the latest to define them) to those files. What the procedures do and why they are
-- procedures: 20261128000002_write_procedures.sql.

DROP PROCEDURE IF EXISTS accept_user_message;
DROP PROCEDURE IF EXISTS accept_user_messages;
DROP PROCEDURE IF EXISTS store_reply;

-- Hands out the next mailbox position of a conversation under its row lock (held until
-- the caller's transaction ends): `p_seq` is NULL when the conversation is not the
-- tenant's, or (with `p_bot_only`) a human has it. The one place positions are taken.
CREATE PROCEDURE take_position(
    IN p_client_id       BIGINT UNSIGNED,
    IN p_conversation_id BIGINT UNSIGNED,
    IN p_bot_only        BOOLEAN,
    OUT p_seq            BIGINT UNSIGNED)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
    UPDATE conversations SET last_seq = LAST_INSERT_ID(last_seq + 1),
        last_message_at = CURRENT_TIMESTAMP(6)
        WHERE client_id = p_client_id AND id = p_conversation_id
          AND (NOT p_bot_only OR mode = 'bot');
    SET p_seq = IF(ROW_COUNT() = 0, NULL, LAST_INSERT_ID());
END;

-- Accepts one user message: its position and the row in one transaction and one round
-- trip. SQLSTATE 45000 when the conversation is not the tenant's.
CREATE PROCEDURE accept_user_message(
    IN p_client_id          BIGINT UNSIGNED,
    IN p_conversation_id    BIGINT UNSIGNED,
    IN p_envelope_id        BINARY(16),
    IN p_content            MEDIUMTEXT CHARACTER SET utf8mb4,
    IN p_channel_message_id VARCHAR(255) CHARACTER SET utf8mb4)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
    DECLARE v_seq BIGINT UNSIGNED;
    DECLARE v_message_id BIGINT UNSIGNED;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    START TRANSACTION;
    CALL take_position(p_client_id, p_conversation_id, FALSE, v_seq);
    IF v_seq IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the conversation is not the tenant''s';
    END IF;
    INSERT INTO messages (client_id, conversation_id, envelope_id, role, content,
        channel_message_id, state, seq)
        VALUES (p_client_id, p_conversation_id, p_envelope_id, 'user', p_content,
        p_channel_message_id, 'pending', v_seq);
    SET v_message_id = LAST_INSERT_ID();
    COMMIT;
    SELECT v_message_id AS message_id;
END;

-- Accepts a batch of one tenant's user messages in one transaction, in the order given
-- (`p_batch`: a JSON array of {"c": conversation, "e": envelope as 32 hex digits, "t":
-- text, "m": channel message id or null}). Any failure rolls the whole batch back.
-- Result: `message_ids`, comma-separated in the batch's order.
CREATE PROCEDURE accept_user_messages(
    IN p_client_id BIGINT UNSIGNED,
    IN p_batch     LONGTEXT CHARACTER SET utf8mb4)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
    DECLARE v_done BOOLEAN DEFAULT FALSE;
    DECLARE v_conversation_id BIGINT UNSIGNED;
    DECLARE v_envelope_id CHAR(32) CHARACTER SET ascii;
    DECLARE v_content LONGTEXT CHARACTER SET utf8mb4;
    DECLARE v_channel_message_id VARCHAR(255) CHARACTER SET utf8mb4;
    DECLARE v_seq BIGINT UNSIGNED;
    DECLARE v_ids LONGTEXT CHARACTER SET ascii DEFAULT '';
    DECLARE batch_messages CURSOR FOR
        SELECT j.c, j.e, j.t, j.m FROM JSON_TABLE(p_batch, '$[*]' COLUMNS (
            n FOR ORDINALITY,
            c BIGINT UNSIGNED PATH '$.c' ERROR ON EMPTY,
            e CHAR(32) CHARACTER SET ascii PATH '$.e' ERROR ON EMPTY,
            t LONGTEXT CHARACTER SET utf8mb4 PATH '$.t' ERROR ON EMPTY,
            m VARCHAR(255) CHARACTER SET utf8mb4 PATH '$.m')) AS j
        ORDER BY j.n;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_done = TRUE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    START TRANSACTION;
    OPEN batch_messages;
    accept: LOOP
        FETCH batch_messages INTO v_conversation_id, v_envelope_id, v_content,
            v_channel_message_id;
        IF v_done THEN
            LEAVE accept;
        END IF;
        CALL take_position(p_client_id, v_conversation_id, FALSE, v_seq);
        IF v_seq IS NULL THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the conversation is not the tenant''s';
        END IF;
        INSERT INTO messages (client_id, conversation_id, envelope_id, role, content,
            channel_message_id, state, seq)
            VALUES (p_client_id, v_conversation_id, UNHEX(v_envelope_id), 'user', v_content,
            v_channel_message_id, 'pending', v_seq);
        SET v_ids = CONCAT(v_ids, IF(v_ids = '', '', ','), LAST_INSERT_ID());
    END LOOP;
    CLOSE batch_messages;
    COMMIT;
    SELECT v_ids AS message_ids;
END;

-- Stores a reply, marks the user messages it answers (`p_answers`, comma-separated ids)
-- answered and counts the usage, in one transaction. Outcome (column `outcome`): 'stored';
-- 'not_bot' when a bot or fallback reply (`p_bot_only`) meets a conversation a human
-- has; 'answered_before' when none of `p_answers` is still pending.
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
    IN p_usage_shard             TINYINT UNSIGNED)
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
        config_version, seq, history_seq)
        VALUES (p_client_id, p_conversation_id, p_reply_id, p_role, p_content, 'stored',
        p_reply_kind, p_prompt_tokens, p_completion_tokens, p_estimated_prompt_tokens,
        p_config_version, v_seq, v_seq);
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

-- Stores a human agent's message at the conversation's next position (it answers no
-- particular turn). SQLSTATE 45000 when the conversation is not the tenant's.
CREATE PROCEDURE store_agent_message(
    IN p_client_id       BIGINT UNSIGNED,
    IN p_conversation_id BIGINT UNSIGNED,
    IN p_reply_id        BINARY(16),
    IN p_content         MEDIUMTEXT CHARACTER SET utf8mb4)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
    DECLARE v_seq BIGINT UNSIGNED;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    START TRANSACTION;
    CALL take_position(p_client_id, p_conversation_id, FALSE, v_seq);
    IF v_seq IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the conversation is not the tenant''s';
    END IF;
    INSERT INTO messages (client_id, conversation_id, envelope_id, role, content, state,
        reply_kind, seq, history_seq)
        VALUES (p_client_id, p_conversation_id, p_reply_id, 'agent', p_content, 'stored',
        'agent', v_seq, v_seq);
    COMMIT;
    SELECT v_seq AS seq;
END;
