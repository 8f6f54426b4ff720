-- Mailbox positions of replies are now handed out when they are stored (under the
-- conversation's row lock, like user messages), so a conversation's mailbox order is the
-- order its turns ran in, whatever order the deliverers get to them.
--
-- The outbox: a reply is published after it is stored; published_at records the broker's
-- confirm. The next turn of the conversation publishes any earlier reply a crash or a
-- broker outage left unpublished before it publishes its own.
ALTER TABLE messages ADD COLUMN published_at DATETIME(6) NULL;
UPDATE messages SET published_at = created_at WHERE role IN ('assistant', 'agent');
CREATE INDEX ix_messages_reply_of ON messages (client_id, reply_message_id);
