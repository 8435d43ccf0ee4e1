-- Teams and the summary's reads (src/store/metrics.rs). Times are Unix epoch milliseconds (UTC).

-- Every login a GitHub user has been seen with (lowercase), so that a team member configured
-- by login stays matched by user id after renaming.
CREATE TABLE member_logins (
    login_lower TEXT   NOT NULL,
    github_id   INTEGER NOT NULL,
    -- GitHub time of the latest event that named the user with this login.
    seen        INTEGER NOT NULL,
    PRIMARY KEY (login_lower, github_id)
);
INSERT INTO member_logins (login_lower, github_id, seen)
    SELECT LOWER(login), github_id, updated FROM members;

-- When a pull request became a draft (opened as one, or converted: draft = 1) or was marked
-- ready for review (draft = 0), from `pull_request` webhooks; pull_requests.draft_intervals is
-- recomputed from these rows, so any arrival order gives the same intervals.
CREATE TABLE pr_draft_changes (
    repo      TEXT    NOT NULL,
    pr_number INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    draft     INTEGER NOT NULL,
    PRIMARY KEY (repo, pr_number, at, draft)
);
-- Time in draft, as "start-end" pairs of Unix ms joined by commas (an open end: still a draft).
ALTER TABLE pull_requests ADD COLUMN draft_intervals TEXT;

-- The summary's reads: pull requests closed in a window (created and merged have theirs), the
-- counted reviews of each pull request, and the counted reviews of a repository in a window,
-- all answered from the index alone.
CREATE INDEX pull_requests_repo_closed ON pull_requests (repo, closed_at);
CREATE INDEX pr_activity_counted ON pr_activity (repo, pr_number, kind, counts);
CREATE INDEX pr_activity_repo_at ON pr_activity (repo, at, kind, counts, actor_id);
