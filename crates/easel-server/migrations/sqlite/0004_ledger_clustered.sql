-- The ledger's tables stored in their id order (WITHOUT ROWID, clustered on the UUIDv7 primary
-- key) instead of beside a rowid with a separate index on the id. Why: a commit of one request
-- wrote five pages to the WAL (each table's last page and each id index's) and now writes three
-- (usage, its key index, images): 4.15 against 5.69 on average with page splits, 28.5 against
-- 38.0 us of CPU a commit, a file 8 % smaller (docs/performance.md, the ledger's section). Same
-- columns, keys and indexes; PostgreSQL has no rowids (its 0004 changes nothing).
--
-- SQLite cannot change a table's storage in place: each table is copied into a new one. The new
-- images table first points at the new usage table; renaming that one to `usage` updates the
-- reference (SQLite >= 3.26 rewrites REFERENCES clauses on RENAME), so foreign keys hold
-- throughout.
CREATE TABLE usage_clustered (
    id                 TEXT NOT NULL PRIMARY KEY,  -- UUIDv7
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
) WITHOUT ROWID;
INSERT INTO usage_clustered (id, key_id, model, backend, operation, outcome, status, image_count, size, quality,
    output_format, input_text_tokens, input_image_tokens, output_tokens, total_tokens, latency_ms, end_user, created_at)
SELECT id, key_id, model, backend, operation, outcome, status, image_count, size, quality,
    output_format, input_text_tokens, input_image_tokens, output_tokens, total_tokens, latency_ms, end_user, created_at
FROM usage;

CREATE TABLE images_clustered (
    id         TEXT NOT NULL PRIMARY KEY,  -- UUIDv7
    usage_id   TEXT NOT NULL REFERENCES usage_clustered (id),
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
) WITHOUT ROWID;
INSERT INTO images_clustered (id, usage_id, key_id, model, width, height, format, bytes, blob_key, created_at,
    expires_at, deleted_at)
SELECT id, usage_id, key_id, model, width, height, format, bytes, blob_key, created_at, expires_at, deleted_at
FROM images;

DROP TABLE images;
DROP TABLE usage;
ALTER TABLE usage_clustered RENAME TO usage;
ALTER TABLE images_clustered RENAME TO images;
CREATE INDEX usage_key_created ON usage (key_id, created_at);
CREATE INDEX images_expiry ON images (expires_at) WHERE blob_key IS NOT NULL AND deleted_at IS NULL;
