-- The PostgreSQL twin of migrations/sqlite/0001_init.sql: the same tables, columns, nullability
-- and indexes (a test compares the two after migrating), so every query runs on both engines.
-- Integers are INTEGER (int4) or BIGINT (int8) exactly as in SQLite's declarations; ids are
-- TEXT (UUIDv7 strings, not the uuid type, which sqlx's Any driver cannot carry).

-- API keys: the secret is stored only as a SHA-256 hash; `id` is the public part of the key.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    models      TEXT,            -- JSON array of model ids, NULL = every model
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- One row per request that reached a model, successful or not.
CREATE TABLE usage (
    id                 TEXT PRIMARY KEY,  -- UUIDv7
    key_id             TEXT,
    model              TEXT NOT NULL,
    backend            TEXT NOT NULL,
    operation          TEXT NOT NULL,
    outcome            TEXT NOT NULL,     -- 'ok' or the error code
    status             INTEGER NOT NULL,  -- HTTP status sent (200 for streams that started)
    image_count        INTEGER NOT NULL,
    size               TEXT,
    quality            TEXT,
    output_format      TEXT,
    input_text_tokens  BIGINT NOT NULL,
    input_image_tokens BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    total_tokens       BIGINT NOT NULL,
    latency_ms         BIGINT NOT NULL,
    end_user           TEXT,
    created_at         BIGINT NOT NULL
);
CREATE INDEX usage_key_created ON usage (key_id, created_at);

-- One row per delivered image; `blob_key` is set when the image is hosted (response_format=url).
CREATE TABLE images (
    id         TEXT PRIMARY KEY,  -- UUIDv7
    usage_id   TEXT NOT NULL REFERENCES usage (id),
    key_id     TEXT,
    model      TEXT NOT NULL,
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    format     TEXT NOT NULL,
    bytes      BIGINT NOT NULL,
    blob_key   TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    deleted_at BIGINT
);
CREATE INDEX images_expiry ON images (expires_at) WHERE blob_key IS NOT NULL AND deleted_at IS NULL;
