-- What `hookdock metrics backfill` read from GitHub's REST API, so that `hookdock metrics
-- rebuild` recomputes backfilled rows as it does those from webhooks (src/store/backfill.rs).
-- The newest answer per object is kept. Times are Unix epoch milliseconds (UTC).
CREATE TABLE api_snapshots (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- GitHub's `owner/name`.
    repo       TEXT    NOT NULL,
    -- The event the snapshot is read as: pull_request, or pull_request_review (submitted).
    kind       TEXT    NOT NULL,
    action     TEXT,
    -- The pull request's number, or the review's id.
    object_key BIGINT NOT NULL,
    -- zstd-compressed JSON in the shape of that event's payload.
    payload    BYTEA    NOT NULL,
    fetched_at BIGINT NOT NULL,
    UNIQUE (repo, kind, object_key)
);
