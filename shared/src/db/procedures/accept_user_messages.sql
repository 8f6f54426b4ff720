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
