-- Delivery statuses arrive keyed by the provider's message id (WhatsApp wamid).
CREATE INDEX ix_messages_channel_message ON messages (client_id, channel_message_id);
