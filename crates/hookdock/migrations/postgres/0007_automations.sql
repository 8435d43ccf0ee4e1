-- What the automations (review, labels, commands, config simulation) did on GitHub or, in dry
-- run, would have done (src/store/automation.rs). Times are Unix epoch milliseconds (UTC).
CREATE TABLE automation_actions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    BIGINT NOT NULL,
    handler     TEXT    NOT NULL,
    -- GitHub's `owner/name`.
    repository  TEXT    NOT NULL,
    -- The issue or pull request the action is on, if any.
    number      BIGINT,
    -- 1: recorded instead of sent (a dry-run repository or replay).
    dry_run     BIGINT NOT NULL,
    -- add_labels, remove_label, create_label, create_review, create_comment, update_comment,
    -- set_assignees, skipped, superseded, failed …
    kind        TEXT    NOT NULL,
    -- JSON: what was (or would have been) written.
    detail      TEXT    NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX automation_actions_event ON automation_actions (event_id, id);
CREATE INDEX automation_actions_repo ON automation_actions (repository, id);

-- Reviews hookdock ran on a pull request's head commit, and the runs it superseded because a
-- newer head was waiting. A head commit is reviewed at most once (the partial unique index).
CREATE TABLE automated_reviews (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository       TEXT    NOT NULL,
    number           BIGINT NOT NULL,
    head_sha         TEXT    NOT NULL,
    event_id         BIGINT NOT NULL,
    -- reviewed | superseded | skipped
    status           TEXT    NOT NULL,
    -- rules | llm (null unless reviewed)
    reviewer         TEXT,
    github_review_id BIGINT,
    -- The review's summary as posted, and what it covered (JSON).
    summary          TEXT,
    coverage         TEXT,
    created_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX automated_reviews_head ON automated_reviews (repository, number, head_sha)
    WHERE status = 'reviewed';
CREATE INDEX automated_reviews_pull ON automated_reviews (repository, number, id);

CREATE TABLE automated_review_findings (
    review_id   BIGINT NOT NULL REFERENCES automated_reviews (id) ON DELETE CASCADE,
    position    BIGINT NOT NULL,
    path        TEXT,
    line        BIGINT,
    severity    TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    -- The rule's name, or llm.
    source      TEXT    NOT NULL,
    -- inline (a comment on the diff line) | summary (in the review body)
    placement   TEXT    NOT NULL,
    PRIMARY KEY (review_id, position)
);

-- Every call to the language model: the audit of what was sent and how it went.
CREATE TABLE llm_calls (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     BIGINT NOT NULL,
    repository   TEXT    NOT NULL,
    number       BIGINT NOT NULL,
    head_sha     TEXT    NOT NULL,
    model        TEXT    NOT NULL,
    attempt      BIGINT NOT NULL,
    prompt_bytes BIGINT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    -- ok, timeout, http 429, invalid output: …
    outcome      TEXT    NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX llm_calls_pull ON llm_calls (repository, number, id);
