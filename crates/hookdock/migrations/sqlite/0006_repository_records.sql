-- Repository records: pushes, releases, CI runs (workflow runs and check runs), deployment
-- statuses, and stars/forks/watchers. Written only by the records handler's effects
-- (src/store/records.rs). Times are Unix epoch milliseconds (UTC); flags are 0 or 1.
-- `event_id` / `last_event_id` name the stored delivery a row (or its current state) comes
-- from; they are not foreign keys, so retention can purge old deliveries and keep the records.
-- Every table has `(repository, id)` for the API's newest-first pages of one repository.

-- One row per push delivery.
CREATE TABLE pushes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         INTEGER NOT NULL UNIQUE,
    repository       TEXT    NOT NULL,
    ref_name         TEXT    NOT NULL,
    before_sha       TEXT    NOT NULL,
    after_sha        TEXT    NOT NULL,
    commits          INTEGER NOT NULL,
    -- Commits pushed for the first time (`distinct: true`).
    distinct_commits INTEGER NOT NULL,
    forced           INTEGER NOT NULL DEFAULT 0,
    created          INTEGER NOT NULL DEFAULT 0,
    deleted          INTEGER NOT NULL DEFAULT 0,
    pusher           TEXT,
    head_commit_at   INTEGER,
    received_at      INTEGER NOT NULL
);
CREATE INDEX pushes_repo ON pushes (repository, id);

-- One row per GitHub release. State columns come from the newest event by
-- (state_at, last_event_id); a deletion is final.
CREATE TABLE releases (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    github_id     INTEGER NOT NULL UNIQUE,
    repository    TEXT    NOT NULL,
    tag           TEXT    NOT NULL,
    name          TEXT,
    draft         INTEGER NOT NULL DEFAULT 0,
    prerelease    INTEGER NOT NULL DEFAULT 0,
    deleted       INTEGER NOT NULL DEFAULT 0,
    last_action   TEXT    NOT NULL,
    author        TEXT,
    created_at    INTEGER,
    published_at  INTEGER,
    -- GitHub's time of the state (release.updated_at, else its latest known time).
    state_at      INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL
);
CREATE INDEX releases_repo ON releases (repository, id);

-- Workflow runs and check runs. State columns come from the newest event by
-- (run_attempt, progress, state_at, last_event_id): progress 0 = requested/queued/waiting,
-- 1 = in_progress, 2 = completed, so a late `in_progress` never overwrites `completed`.
CREATE TABLE ci_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL CHECK (kind IN ('workflow_run', 'check_run')),
    github_id     INTEGER NOT NULL,
    repository    TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    head_sha      TEXT    NOT NULL,
    head_branch   TEXT,
    status        TEXT    NOT NULL,
    conclusion    TEXT,
    started_at    INTEGER,
    completed_at  INTEGER,
    -- completed_at - started_at; NULL until completed.
    duration_ms   INTEGER,
    run_attempt   INTEGER NOT NULL DEFAULT 1,
    progress      INTEGER NOT NULL,
    state_at      INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL,
    UNIQUE (kind, github_id)
);
CREATE INDEX ci_runs_repo ON ci_runs (repository, id);
CREATE INDEX ci_runs_repo_sha ON ci_runs (repository, head_sha);
CREATE INDEX ci_runs_repo_completed ON ci_runs (repository, kind, completed_at);

-- One row per deployment status (GitHub's status id).
CREATE TABLE deployment_statuses (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    github_id     INTEGER NOT NULL UNIQUE,
    deployment_id INTEGER NOT NULL,
    repository    TEXT    NOT NULL,
    environment   TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    sha           TEXT,
    ref_name      TEXT,
    creator       TEXT,
    created_at    INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL
);
CREATE INDEX deployment_statuses_repo ON deployment_statuses (repository, id);
CREATE INDEX deployment_statuses_deployment ON deployment_statuses (deployment_id, created_at);
CREATE INDEX deployment_statuses_repo_env ON deployment_statuses (repository, environment, created_at);

-- Per repository: counts as last reported by a star, fork or watch payload, newest by
-- (reported_at, last_event_id).
CREATE TABLE repo_social (
    repository    TEXT    PRIMARY KEY,
    stars         INTEGER NOT NULL,
    forks         INTEGER NOT NULL,
    watchers      INTEGER NOT NULL,
    reported_at   INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL
);

-- One row per star, fork or watch delivery.
CREATE TABLE social_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   INTEGER NOT NULL UNIQUE,
    repository TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('star', 'fork', 'watch')),
    -- created / deleted (star), started (watch), created (fork).
    action     TEXT    NOT NULL,
    user_login TEXT    NOT NULL,
    user_id    INTEGER,
    -- The new fork's owner/name.
    fork       TEXT,
    at         INTEGER NOT NULL
);
CREATE INDEX social_events_repo ON social_events (repository, id);
