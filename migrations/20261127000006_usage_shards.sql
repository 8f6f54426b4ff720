-- A tenant's usage row for the day was one row that every reply's transaction updated:
-- all of a busy tenant's turns queued on its lock, each until the commit. Each day now
-- has 16 rows per tenant (by conversation), summed when read.
ALTER TABLE usage_daily
    ADD COLUMN shard TINYINT UNSIGNED NOT NULL DEFAULT 0 AFTER day,
    DROP PRIMARY KEY,
    ADD PRIMARY KEY (client_id, day, shard);
