-- Tenants spread over database servers (`database.shards`). Every shard carries the whole
-- schema; these tables are read and written on the home shard only.
--
-- tenant_directory: which shard holds a tenant's rows (keyed like `clients`, by the
-- tenant's id). `moving_to` is set while
-- `chatfleet tenant move` copies it (its traffic is refused meanwhile), `moved_from`
-- until the copy left behind on the old shard is deleted. `version` comes from
-- directory_clock, bumped under that row's lock, so versions commit in order and every
-- process reads the changes since the last version it saw.
CREATE TABLE tenant_directory (
    id          BIGINT UNSIGNED NOT NULL,
    shard       VARCHAR(64)     NOT NULL,
    moving_to   VARCHAR(64)     NULL,
    moved_from  VARCHAR(64)     NULL,
    version     BIGINT UNSIGNED NOT NULL,
    updated_at  DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY ix_tenant_directory_version (version),
    KEY ix_tenant_directory_shard (shard)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE directory_clock (
    id       TINYINT UNSIGNED NOT NULL,
    version  BIGINT UNSIGNED  NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB;
INSERT INTO directory_clock (id, version) VALUES (1, 0);

-- A shard's ordinal k gives its new rows ids from k * 2^40 on (set by `chatfleet
-- migrate`), so a tenant moved to another shard keeps its ids without colliding.
CREATE TABLE shard_ordinals (
    name     VARCHAR(64)       NOT NULL,
    ordinal  SMALLINT UNSIGNED NOT NULL,
    PRIMARY KEY (name),
    UNIQUE KEY uq_shard_ordinals_ordinal (ordinal)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
