-- Progress of `hookdock metrics backfill` per repository, so an interrupted run continues
-- where it stopped (src/store/backfill.rs). Times are Unix epoch milliseconds (UTC).
CREATE TABLE backfill_progress (
    -- GitHub's `owner/name` of the repository, as GitHub spells it.
    repo              TEXT    PRIMARY KEY,
    -- When the run began listing (hookdock's clock): pull requests GitHub updated after it
    -- are processed again on resume whatever the cursor says.
    started_at        INTEGER NOT NULL,
    -- The run's lower bound on `updated_at`.
    since_at          INTEGER NOT NULL,
    -- The last fully processed pull request in the listing order (`updated_at` descending):
    -- every pull request listed before it is done.
    cursor_updated_at INTEGER,
    cursor_number     INTEGER,
    pulls_done        INTEGER NOT NULL DEFAULT 0,
    updated           INTEGER NOT NULL,
    -- Set when the run reached its end; a new run then starts afresh.
    completed_at      INTEGER
);
