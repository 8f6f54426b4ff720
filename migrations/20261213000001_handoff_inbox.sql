-- The operator console's handoff inbox (issue 31): every conversation a human answers,
-- across tenants, longest waiting first. `mode_since` is when the conversation's mode
-- last changed (set by every switch, `Conversations::set_mode`); the index serves the
-- inbox's read on each shard without touching conversations the bot answers.
ALTER TABLE conversations
    ADD COLUMN mode_since DATETIME(6) NULL,
    ADD KEY ix_conversations_mode_since (mode, mode_since);

-- Conversations already with a human wait from their last change.
UPDATE conversations SET mode_since = updated_at WHERE mode = 'human';
