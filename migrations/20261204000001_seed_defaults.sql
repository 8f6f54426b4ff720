-- A new tenant's configuration as the seed specifies it: a professional tone, the
-- language as a language tag ('en'), five knowledge chunks. Existing tenants keep the
-- values they have; only the defaults of new rows change.
ALTER TABLE client_configs
    ALTER COLUMN persona_tone SET DEFAULT 'professional',
    ALTER COLUMN persona_language SET DEFAULT 'en',
    ALTER COLUMN rag_top_k SET DEFAULT 5;
