-- Pull request metrics: team members, pull requests, reviews, and the review activity that
-- decides each pull request's first review. Written only by the metrics handler's effects
-- (src/store/metrics.rs). Times are Unix epoch milliseconds (UTC); flags are 0 or 1.

-- GitHub users seen as authors or reviewers, matched by their stable user id.
CREATE TABLE members (
    github_id  BIGINT PRIMARY KEY,
    login      TEXT    NOT NULL,
    name       TEXT,
    is_bot     BIGINT NOT NULL DEFAULT 0,
    -- GitHub time of the earliest and the latest event that named this user.
    first_seen BIGINT NOT NULL,
    updated    BIGINT NOT NULL
);
CREATE INDEX members_login ON members (login);

-- One row per pull request, keyed by repository and number. The columns that describe the
-- current state come from the event with the newest GitHub `updated_at`; the size columns
-- from the newest event that carried them (review payloads do not).
CREATE TABLE pull_requests (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repo                TEXT    NOT NULL,
    number              BIGINT NOT NULL,
    github_id           BIGINT NOT NULL,
    author_id           BIGINT,
    title               TEXT    NOT NULL,
    state               TEXT    NOT NULL CHECK (state IN ('open', 'closed', 'merged')),
    draft               BIGINT NOT NULL DEFAULT 0,
    base_ref            TEXT,
    head_ref            TEXT,
    head_sha            TEXT,
    merge_commit_sha    TEXT,
    created_at          BIGINT NOT NULL,
    ready_for_review_at BIGINT,
    first_commit_at     BIGINT,
    first_review_at     BIGINT,
    merged_at           BIGINT,
    closed_at           BIGINT,
    additions           BIGINT,
    deletions           BIGINT,
    changed_files       BIGINT,
    commits             BIGINT,
    is_revert           BIGINT NOT NULL DEFAULT 0,
    -- What a revert names: a number (`Reverts owner/repo#N`) or a commit (`This reverts commit SHA`).
    reverts_sha         TEXT,
    reverts_number      BIGINT,
    reverted            BIGINT NOT NULL DEFAULT 0,
    is_hotfix           BIGINT NOT NULL DEFAULT 0,
    labels              TEXT    NOT NULL DEFAULT '[]',
    -- GitHub's updated_at of the event the state columns come from.
    updated_at          BIGINT NOT NULL,
    -- GitHub's updated_at of the event the size columns come from (NULL: none seen yet).
    size_updated_at     BIGINT,
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
    github_id     BIGINT PRIMARY KEY,
    repo          TEXT    NOT NULL,
    pr_number     BIGINT NOT NULL,
    reviewer_id   BIGINT NOT NULL,
    -- approved, changes_requested, commented or dismissed (lowercase, as webhooks write it).
    state         TEXT    NOT NULL,
    submitted_at  BIGINT NOT NULL,
    comment_count BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX reviews_pr ON reviews (repo, pr_number);
CREATE INDEX reviews_repo_submitted ON reviews (repo, submitted_at);

-- Reviews, review comments and issue comments on a pull request: the bookkeeping behind
-- first_review_at (earliest counted row) and reviews.comment_count.
CREATE TABLE pr_activity (
    kind       TEXT    NOT NULL CHECK (kind IN ('review', 'review_comment', 'issue_comment')),
    source_id  BIGINT NOT NULL,
    repo       TEXT    NOT NULL,
    pr_number  BIGINT NOT NULL,
    actor_id   BIGINT NOT NULL,
    review_id  BIGINT,
    at         BIGINT NOT NULL,
    -- 1 when it counts as a review for first_review_at (not by the author; bots as configured).
    counts     BIGINT NOT NULL,
    deleted    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, source_id)
);
CREATE INDEX pr_activity_pr ON pr_activity (repo, pr_number, at);
CREATE INDEX pr_activity_review ON pr_activity (review_id) WHERE review_id IS NOT NULL;
