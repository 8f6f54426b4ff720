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
