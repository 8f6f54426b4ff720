-- Mobile devices that registered a push token: a reply to the device's conversation is
-- also sent as a push notification. device_id is the mobile conversation's external_id.
CREATE TABLE mobile_devices (
    client_id   BIGINT UNSIGNED NOT NULL,
    device_id   VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    -- FCM registration tokens are opaque and a few hundred bytes long.
    push_token  VARCHAR(4096) NULL,
    updated_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (client_id, device_id),
    CONSTRAINT fk_mobile_devices_client FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
