-- Deliveries and the jobs that process them. The events table is the queue's
-- source of truth; jobs are one row per (event, handler).
-- Times are Unix epoch milliseconds (UTC) in both dialects.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id     TEXT    NOT NULL UNIQUE,
    event           TEXT    NOT NULL,
    action          TEXT,
    status          TEXT    NOT NULL,
    repository      TEXT,
    repository_id   INTEGER,
    organization    TEXT,
    installation_id INTEGER,
    hook_id         INTEGER,
    target_type     TEXT,
    target_id       INTEGER,
    sender          TEXT,
    ordering_key    TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    headers         TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT,
    body_size       INTEGER NOT NULL,
    body_sha256     BLOB    NOT NULL,
    -- zstd-compressed body bytes exactly as received; last so that scans of
    -- the other columns never walk its overflow pages.
    body            BLOB    NOT NULL
);
CREATE INDEX events_body_sha256 ON events (body_sha256);
CREATE INDEX events_status ON events (status, id);
CREATE INDEX events_repository ON events (repository, id);

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler      TEXT    NOT NULL,
    ordering_key TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    run_at       INTEGER NOT NULL,
    lease_owner  TEXT,
    lease_until  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (event_id, handler)
);
CREATE INDEX jobs_ready ON jobs (id) WHERE status IN ('pending', 'failed', 'processing');
CREATE INDEX jobs_ordering ON jobs (handler, ordering_key, id) WHERE status IN ('pending', 'failed', 'processing');
CREATE INDEX jobs_dead ON jobs (id) WHERE status = 'dead';

CREATE TABLE job_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event_id INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    status   TEXT    NOT NULL,
    attempt  INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    error    TEXT
);
CREATE INDEX job_history_event ON job_history (event_id, id);
CREATE INDEX job_history_job ON job_history (job_id);

-- Written by the built-in activity handler: last event per repository and type.
CREATE TABLE repo_activity (
    repository       TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    last_event_id    INTEGER NOT NULL,
    last_received_at INTEGER NOT NULL,
    events_handled   INTEGER NOT NULL,
    PRIMARY KEY (repository, event)
);
