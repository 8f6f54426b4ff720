-- What a turn reads first: the conversation's unanswered user messages (state 'pending')
-- and its stored replies the broker never confirmed (state 'stored', published_at NULL).
-- Both were found by scanning the whole conversation; this index finds just them.
CREATE INDEX ix_messages_open ON messages (client_id, conversation_id, state, published_at);
