-- First commits of pull requests, and the state of background backfills shared by every
-- instance (src/store/metrics.rs, src/store/backfill.rs). Times are Unix epoch milliseconds
-- (UTC).
--
-- api_snapshots gains two kinds, read as the events of the same names: pull_request_commits
-- (GitHub's commits of a pull request, keyed by its number) and pull_request_draft_events
-- (its convert_to_draft and ready_for_review issue events, keyed by its number).

-- The first commit of each pull request, from the newest answer of GitHub's commits API read
-- by a backfill or after a pull_request webhook. pull_requests.first_commit_at is copied from
-- here, so the answer and the pull request's events may arrive in any order.
CREATE TABLE pr_first_commits (
    repo             TEXT    NOT NULL,
    pr_number        BIGINT  NOT NULL,
    -- When hookdock read the answer: a newer answer replaces an older one.
    as_of            BIGINT  NOT NULL,
    -- The earliest `commit.author.date` of the commits listed (NULL: none listed).
    first_commit_at  BIGINT,
    first_commit_sha TEXT,
    -- Commits listed (GitHub lists at most 250).
    commits          BIGINT  NOT NULL,
    PRIMARY KEY (repo, pr_number)
);

-- The latest backfill run of each repository, whichever instance (or CLI) runs it. A running
-- run renews its lease; one whose lease lapsed (its process died) is reported as interrupted
-- and may be started again.
CREATE TABLE backfill_runs (
    -- Lowercase `owner/name`: one run at a time per repository.
    repo_key    TEXT    PRIMARY KEY,
    -- `owner/name` as requested.
    repo        TEXT    NOT NULL,
    -- Identifies the run, so that a run that lost its lease cannot overwrite its successor.
    run_id      TEXT    NOT NULL,
    -- `api` or `cli`.
    started_by  TEXT    NOT NULL,
    -- The span asked for, e.g. `90d`.
    since       TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
    lease_until BIGINT,
    started_at  BIGINT  NOT NULL,
    updated     BIGINT  NOT NULL,
    finished_at BIGINT,
    -- Pull requests listed, and done out of `total` (known once listing ended).
    listed      BIGINT  NOT NULL DEFAULT 0,
    done        BIGINT  NOT NULL DEFAULT 0,
    total       BIGINT  NOT NULL DEFAULT 0,
    -- JSON of the run's report, once done.
    report      TEXT,
    error       TEXT
);
