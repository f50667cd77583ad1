-- Async image tasks (`Prefer: respond-async`, the DashScope routes): the validated request, where
-- the task stands and what it made. Any node sharing the database may claim a queued task; the
-- claim holds a lease (`lease_owner`, a token per claim, until `lease_expires_at`) that the
-- worker renews while the task runs. `reservation` is the quota held since submit, settled when
-- the task reaches a final status, which happens once.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,   -- UUIDv7
    owner            TEXT NOT NULL,      -- the key id; '' on a server without keys
    status           TEXT NOT NULL,      -- 'queued', 'running', 'succeeded', 'failed', 'canceled'
    operation        TEXT NOT NULL,
    model            TEXT NOT NULL,
    image_count      BIGINT NOT NULL,
    request          TEXT NOT NULL,      -- JSON (tasks::request::StoredRequest); input images in the blob store
    reservation      TEXT,               -- JSON quota reservation, NULL without limits
    attempts         BIGINT NOT NULL,
    cancel_requested BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    steps_done       BIGINT,
    steps_total      BIGINT,
    result           TEXT,               -- JSON images response
    error            TEXT,               -- JSON status and error envelope parts
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    expires_at       BIGINT              -- finished tasks are deleted after this, with their images
);
CREATE INDEX tasks_queue ON tasks (status, created_at);
CREATE INDEX tasks_owner ON tasks (owner, id);
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL;
