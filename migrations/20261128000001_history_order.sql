-- A turn's history (the last N exchanges before the messages it answers) was read by
-- sorting the whole conversation on COALESCE(reply_message_id, id): the cost of every
-- turn grew with the conversation's length. `history_seq` is that order, kept as the
-- messages are written, and indexed, so the history is read backwards from the newest
-- exchange and stops after N rows:
-- - a reply or a human agent's message: its own mailbox position (`seq`);
-- - an answered user message: its reply's position, so each question sits right before
--   its answer (ties broken by id: the question was recorded first);
-- - a user message closed without an answer (ignored, failed): its own position;
-- - a user message still waiting for its answer: NULL (not history yet).
-- Within a conversation positions are taken under its row lock in the same transaction
-- as the insert, so they follow the same order as ids. Rows written before positions
-- existed (no `seq`) sort first, by id.

ALTER TABLE messages ADD COLUMN history_seq BIGINT UNSIGNED NULL AFTER seq;

UPDATE messages u
    LEFT JOIN messages r ON r.client_id = u.client_id AND r.id = u.reply_message_id
    SET u.history_seq = COALESCE(r.seq, u.seq, 0)
    WHERE NOT (u.role = 'user' AND u.state = 'pending');

CREATE INDEX ix_messages_history ON messages (client_id, conversation_id, history_seq, id);
