-- Accepting several user messages of one tenant in one transaction: what a channel's
-- requests that arrive together cost one round trip and one commit instead of one each
-- (ingress/src/channels/accepting.rs gathers them). The same statements as
-- accept_user_message (20261128000002_write_procedures.sql), message by message in the
-- order given, so messages of one conversation take consecutive positions in that order.
--
-- `p_batch` is a JSON array of {"c": conversation id, "e": envelope id as 32 hex digits,
-- "t": text, "m": channel message id or null}. Any failure (a duplicate envelope, a
-- conversation that is not the tenant's, a deadlock) rolls the whole batch back and
-- reaches the caller unchanged; the caller then accepts the messages one by one.
-- Result: one row, `message_ids`, the new rows' ids comma-separated in the batch's order.

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
        UPDATE conversations SET last_seq = LAST_INSERT_ID(last_seq + 1),
            last_message_at = CURRENT_TIMESTAMP(6)
            WHERE client_id = p_client_id AND id = v_conversation_id;
        IF ROW_COUNT() = 0 THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the conversation is not the tenant''s';
        END IF;
        INSERT INTO messages (client_id, conversation_id, envelope_id, role, content,
            channel_message_id, state, seq)
            VALUES (p_client_id, v_conversation_id, UNHEX(v_envelope_id), 'user', v_content,
            v_channel_message_id, 'pending', LAST_INSERT_ID());
        SET v_ids = CONCAT(v_ids, IF(v_ids = '', '', ','), LAST_INSERT_ID());
    END LOOP;
    CLOSE batch_messages;
    COMMIT;
    SELECT v_ids AS message_ids;
END;
