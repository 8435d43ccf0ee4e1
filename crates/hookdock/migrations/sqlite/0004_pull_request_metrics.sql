-- Pull request metrics: team members, pull requests, reviews, and the review activity that
-- decides each pull request's first review. Written only by the metrics handler's effects
-- (src/store/metrics.rs). Times are Unix epoch milliseconds (UTC); flags are 0 or 1.

-- GitHub users seen as authors or reviewers, matched by their stable user id.
CREATE TABLE members (
    github_id  INTEGER PRIMARY KEY,
    login      TEXT    NOT NULL,
    name       TEXT,
    is_bot     INTEGER NOT NULL DEFAULT 0,
    -- GitHub time of the earliest and the latest event that named this user.
    first_seen INTEGER NOT NULL,
    updated    INTEGER NOT NULL
);
CREATE INDEX members_login ON members (login);

-- One row per pull request, keyed by repository and number. The columns that describe the
-- current state come from the event with the newest GitHub `updated_at`; the size columns
-- from the newest event that carried them (review payloads do not).
CREATE TABLE pull_requests (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    repo                TEXT    NOT NULL,
    number              INTEGER NOT NULL,
    github_id           INTEGER NOT NULL,
    author_id           INTEGER,
    title               TEXT    NOT NULL,
    state               TEXT    NOT NULL CHECK (state IN ('open', 'closed', 'merged')),
    draft               INTEGER NOT NULL DEFAULT 0,
    base_ref            TEXT,
    head_ref            TEXT,
    head_sha            TEXT,
    merge_commit_sha    TEXT,
    created_at          INTEGER NOT NULL,
    ready_for_review_at INTEGER,
    first_commit_at     INTEGER,
    first_review_at     INTEGER,
    merged_at           INTEGER,
    closed_at           INTEGER,
    additions           INTEGER,
    deletions           INTEGER,
    changed_files       INTEGER,
    commits             INTEGER,
    is_revert           INTEGER NOT NULL DEFAULT 0,
    -- What a revert names: a number (`Reverts owner/repo#N`) or a commit (`This reverts commit SHA`).
    reverts_sha         TEXT,
    reverts_number      INTEGER,
    reverted            INTEGER NOT NULL DEFAULT 0,
    is_hotfix           INTEGER NOT NULL DEFAULT 0,
    labels              TEXT    NOT NULL DEFAULT '[]',
    -- GitHub's updated_at of the event the state columns come from.
    updated_at          INTEGER NOT NULL,
    -- GitHub's updated_at of the event the size columns come from (NULL: none seen yet).
    size_updated_at     INTEGER,
    UNIQUE (repo, number)
);
CREATE INDEX pull_requests_github_id ON pull_requests (github_id);
CREATE INDEX pull_requests_repo_created ON pull_requests (repo, created_at);
CREATE INDEX pull_requests_repo_merged ON pull_requests (repo, merged_at);
CREATE INDEX pull_requests_author_created ON pull_requests (author_id, created_at);
CREATE INDEX pull_requests_merge_sha ON pull_requests (repo, merge_commit_sha);
CREATE INDEX pull_requests_head_sha ON pull_requests (repo, head_sha);
CREATE INDEX pull_requests_reverts ON pull_requests (repo, reverts_number) WHERE is_revert = 1;
CREATE INDEX pull_requests_unresolved_reverts ON pull_requests (repo)
    WHERE is_revert = 1 AND reverts_number IS NULL AND reverts_sha IS NOT NULL;
CREATE INDEX pull_requests_reverted ON pull_requests (repo) WHERE reverted = 1;

CREATE TABLE reviews (
    github_id     INTEGER PRIMARY KEY,
    repo          TEXT    NOT NULL,
    pr_number     INTEGER NOT NULL,
    reviewer_id   INTEGER NOT NULL,
    -- approved, changes_requested, commented or dismissed (lowercase, as webhooks write it).
    state         TEXT    NOT NULL,
    submitted_at  INTEGER NOT NULL,
    comment_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX reviews_pr ON reviews (repo, pr_number);
CREATE INDEX reviews_repo_submitted ON reviews (repo, submitted_at);

-- Reviews, review comments and issue comments on a pull request: the bookkeeping behind
-- first_review_at (earliest counted row) and reviews.comment_count.
CREATE TABLE pr_activity (
    kind       TEXT    NOT NULL CHECK (kind IN ('review', 'review_comment', 'issue_comment')),
    source_id  INTEGER NOT NULL,
    repo       TEXT    NOT NULL,
    pr_number  INTEGER NOT NULL,
    actor_id   INTEGER NOT NULL,
    review_id  INTEGER,
    at         INTEGER NOT NULL,
    -- 1 when it counts as a review for first_review_at (not by the author; bots as configured).
    counts     INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, source_id)
);
CREATE INDEX pr_activity_pr ON pr_activity (repo, pr_number, at);
CREATE INDEX pr_activity_review ON pr_activity (review_id) WHERE review_id IS NOT NULL;
