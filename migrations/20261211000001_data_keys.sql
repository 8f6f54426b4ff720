-- Crypto-shredding (issue 29). Each conversation has a data key (32 random bytes, sealed
-- under the encryption key ring: nonce || ciphertext || tag = 72 bytes) that encrypts
-- the personal fields of its envelopes and replies on the broker, so the archive stream
-- and the dead-letter queue hold them only sealed. Erasing the conversation deletes its
-- row here: its copies there can no longer be opened. A table of its own rather than a
-- column of `conversations`: writing the key must not wait for the conversation row's
-- lock, which accepting rounds and reply transactions hold (hence no foreign key to
-- it either: the check would take that lock too). Conversations older than this get
-- their key when their next message is published.
CREATE TABLE conversation_keys (
    conversation_id BIGINT UNSIGNED NOT NULL,
    client_id       BIGINT UNSIGNED NOT NULL,
    data_key        VARBINARY(72)   NOT NULL,
    created_at      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (conversation_id),
    KEY ix_conversation_keys_client (client_id, conversation_id),
    CONSTRAINT fk_conversation_keys_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
);
