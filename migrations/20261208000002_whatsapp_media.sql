-- WhatsApp media (issue 27): voice notes transcribed (`transcribe_audio`), images shown
-- to models that accept them (`llm_vision`), and what the bot is told when a file could
-- not be read (`media_fallback_message`). A voice note's transcript is the stored text
-- of its user message (`content`), so a retry or a replay never transcribes again.
ALTER TABLE client_configs
    ADD COLUMN transcribe_audio BOOLEAN NOT NULL DEFAULT TRUE,
    ADD COLUMN llm_vision BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN media_fallback_message VARCHAR(2000) NOT NULL
        DEFAULT 'The user sent a file that could not be opened. Say so briefly and ask them to describe it in words.';
