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
