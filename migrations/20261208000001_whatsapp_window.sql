-- WhatsApp's 24-hour customer-service window (issue 27). A WhatsApp conversation keeps
-- the time of the user's last message (`user_last_at`) and the number the user writes to
-- (`channel_account`, the phone_number_id: an agent's message or a held reply goes out
-- from it). `reengaged_for` is the `user_last_at` of the closed window a re-engagement
-- template was sent for (once per closed window).
ALTER TABLE conversations
    ADD COLUMN user_last_at    DATETIME(6)  NULL,
    ADD COLUMN channel_account VARCHAR(191) NULL,
    ADD COLUMN reengaged_for   DATETIME(6)  NULL;

-- The tenant's re-engagement template (`{"name", "language"}`), sent when a reply or an
-- agent's message waits for a closed window.
ALTER TABLE client_configs
    ADD COLUMN whatsapp_reengagement_template JSON NULL;
