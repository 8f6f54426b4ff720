-- The most tokens a tenant's bot may write in one answer, sent to the provider with
-- every call (`max_tokens`, Ollama's `options.num_predict`): a prompt that asks for
-- endless output, or a model that rambles, cannot hold a provider slot for long.
ALTER TABLE client_configs
    ADD COLUMN llm_max_output_tokens INT UNSIGNED NOT NULL DEFAULT 1024
        AFTER llm_temperature,
    ADD CONSTRAINT ck_client_configs_max_output_tokens
        CHECK (llm_max_output_tokens BETWEEN 1 AND 16384);
