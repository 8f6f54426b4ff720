-- Crypto-shredding (issue 29). Each conversation has a data key (32 random bytes, sealed
-- under the encryption key ring: nonce || ciphertext || tag = 72 bytes) that encrypts
-- the personal fields of its envelopes and replies on the broker, so the archive stream
-- and the dead-letter queue hold them only sealed. Erasing the conversation sets it to
-- NULL: its copies there can no longer be opened. Conversations older than this get
-- their key when their next message is published.
ALTER TABLE conversations ADD COLUMN data_key VARBINARY(72) NULL;
