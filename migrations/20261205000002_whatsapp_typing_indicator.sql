-- Whether a WhatsApp user sees their message marked read and a typing indicator while
-- the tenant's bot writes its answer (Cloud API `status: read` with `typing_indicator`).
ALTER TABLE client_configs
    ADD COLUMN whatsapp_typing_indicator BOOLEAN NOT NULL DEFAULT TRUE;
