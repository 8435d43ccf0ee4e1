-- Deliveries and the jobs that process them. The events table is the queue's
-- source of truth; jobs are one row per (event, handler).
-- Times are Unix epoch milliseconds (UTC) in both dialects.
CREATE TABLE events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     TEXT    NOT NULL UNIQUE,
    event           TEXT    NOT NULL,
    action          TEXT,
    status          TEXT    NOT NULL,
    repository      TEXT,
    repository_id   BIGINT,
    organization    TEXT,
    installation_id BIGINT,
    hook_id         BIGINT,
    target_type     TEXT,
    target_id       BIGINT,
    sender          TEXT,
    ordering_key    TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    headers         TEXT    NOT NULL,
    received_at     BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_error      TEXT,
    body_size       BIGINT NOT NULL,
    body_sha256     BYTEA    NOT NULL,
    -- zstd-compressed body bytes exactly as received; last so that scans of
    -- the other columns never walk its overflow pages.
    body            BYTEA    NOT NULL
);
CREATE INDEX events_body_sha256 ON events (body_sha256);
CREATE INDEX events_status ON events (status, id);
CREATE INDEX events_repository ON events (repository, id);

CREATE TABLE jobs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler      TEXT    NOT NULL,
    ordering_key TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    run_at       BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (event_id, handler)
);
CREATE INDEX jobs_ready ON jobs (id) WHERE status IN ('pending', 'failed', 'processing');
CREATE INDEX jobs_ordering ON jobs (handler, ordering_key, id) WHERE status IN ('pending', 'failed', 'processing');
CREATE INDEX jobs_dead ON jobs (id) WHERE status = 'dead';

CREATE TABLE job_history (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event_id BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    status   TEXT    NOT NULL,
    attempt  BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    error    TEXT
);
CREATE INDEX job_history_event ON job_history (event_id, id);
CREATE INDEX job_history_job ON job_history (job_id);

-- Written by the built-in activity handler: last event per repository and type.
CREATE TABLE repo_activity (
    repository       TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    last_event_id    BIGINT NOT NULL,
    last_received_at BIGINT NOT NULL,
    events_handled   BIGINT NOT NULL,
    PRIMARY KEY (repository, event)
);
