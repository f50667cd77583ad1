-- Per-key limits, expiry and the admin flag. A NULL limit is no limit.
ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN rpm BIGINT;
ALTER TABLE api_keys ADD COLUMN images_per_min BIGINT;
ALTER TABLE api_keys ADD COLUMN daily_images BIGINT;
ALTER TABLE api_keys ADD COLUMN monthly_images BIGINT;
ALTER TABLE api_keys ADD COLUMN monthly_tokens BIGINT;
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;

-- What each key has used in each window (a UTC minute, day or month, by its start in Unix
-- seconds): `used` is settled, `reserved` is held by requests still running. A request passes
-- only if used + reserved + its amount stays within the limit, checked and applied in one
-- conditional UPDATE, so concurrent requests on any node cannot both take the last unit.
CREATE TABLE limit_counters (
    key_id       TEXT NOT NULL,
    counter      TEXT NOT NULL,   -- 'requests/minute', 'images/minute', 'images/day', 'images/month', 'tokens/month'
    window_start BIGINT NOT NULL,
    used         BIGINT NOT NULL,
    reserved     BIGINT NOT NULL,
    PRIMARY KEY (key_id, counter, window_start)
);

-- Amounts reserved by requests in flight, released when they settle or fail, or by any node's
-- sweep once `expires_at` has passed (the node that made them died).
CREATE TABLE limit_reservations (
    id         TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    items      TEXT NOT NULL,     -- JSON [[counter, window_start, amount], ...]
    expires_at BIGINT NOT NULL
);
CREATE INDEX limit_reservations_expiry ON limit_reservations (expires_at);
