-- Personal data kept from the LLM (issue 29): with `redact_pii`, e-mail addresses, phone
-- numbers, card numbers and IBANs in what a turn sends the model become placeholders,
-- restored in the reply.
ALTER TABLE client_configs
    ADD COLUMN redact_pii BOOLEAN NOT NULL DEFAULT FALSE;
