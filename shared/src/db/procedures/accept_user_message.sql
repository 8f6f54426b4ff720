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
