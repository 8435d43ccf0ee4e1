-- Teams and the summary's reads (src/store/metrics.rs). Times are Unix epoch milliseconds (UTC).

-- Every login a GitHub user has been seen with (lowercase), so that a team member configured
-- by login stays matched by user id after renaming.
CREATE TABLE member_logins (
    login_lower TEXT   NOT NULL,
    github_id   BIGINT NOT NULL,
    -- GitHub time of the latest event that named the user with this login.
    seen        BIGINT NOT NULL,
    PRIMARY KEY (login_lower, github_id)
);
INSERT INTO member_logins (login_lower, github_id, seen)
    SELECT LOWER(login), github_id, updated FROM members;
