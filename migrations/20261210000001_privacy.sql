-- Privacy (issue 29). With `redact_pii`, e-mail addresses, phone numbers, card numbers
-- and IBANs in what a turn sends the model become placeholders, restored in the reply.
-- `retention_days` (NULL: keep): conversations whose last message is older are erased
-- by the workers' sweeper.
ALTER TABLE client_configs
    ADD COLUMN redact_pii BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN retention_days INT UNSIGNED NULL;
