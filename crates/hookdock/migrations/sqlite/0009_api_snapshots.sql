-- What `hookdock metrics backfill` read from GitHub's REST API, so that `hookdock metrics
-- rebuild` recomputes backfilled rows as it does those from webhooks (src/store/backfill.rs).
-- The newest answer per object is kept. Times are Unix epoch milliseconds (UTC).
CREATE TABLE api_snapshots (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- GitHub's `owner/name`.
    repo       TEXT    NOT NULL,
    -- The event the snapshot is read as: pull_request, or pull_request_review (submitted).
    kind       TEXT    NOT NULL,
    action     TEXT,
    -- The pull request's number, or the review's id.
    object_key INTEGER NOT NULL,
    -- zstd-compressed JSON in the shape of that event's payload.
    payload    BLOB    NOT NULL,
    fetched_at INTEGER NOT NULL,
    UNIQUE (repo, kind, object_key)
);
