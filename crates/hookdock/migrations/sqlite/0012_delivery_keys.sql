-- Deduplication keys leave the events table (see `store::keys`): the unique index on
-- delivery_id and the index on body_sha256 cost each delivery two random B-tree leaves in the
-- write-ahead log. The keys now live in tables filled in key order, many at a time, up to the
-- watermark in delivery_key_state; the group-commit writer knows the events after it.
--
-- SQLite cannot drop a UNIQUE column constraint, so events is rebuilt (foreign keys are off
-- while migrations run, see `Store::migrate`, so jobs and job_history keep their rows and
-- point at the new table, which takes the old name).
CREATE TABLE events_rebuilt (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id     TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    action          TEXT,
    status          TEXT    NOT NULL,
    repository      TEXT,
    repository_id   INTEGER,
    organization    TEXT,
    installation_id INTEGER,
    hook_id         INTEGER,
    target_type     TEXT,
    target_id       INTEGER,
    sender          TEXT,
    ordering_key    TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    headers         TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT,
    body_size       INTEGER NOT NULL,
    body_sha256     BLOB    NOT NULL,
    -- zstd-compressed body bytes exactly as received; last so that scans of
    -- the other columns never walk its overflow pages.
    body            BLOB    NOT NULL
);
INSERT INTO events_rebuilt (id, delivery_id, event, action, status, repository, repository_id,
    organization, installation_id, hook_id, target_type, target_id, sender, ordering_key,
    content_type, headers, received_at, updated_at, last_error, body_size, body_sha256, body)
SELECT id, delivery_id, event, action, status, repository, repository_id, organization,
    installation_id, hook_id, target_type, target_id, sender, ordering_key, content_type,
    headers, received_at, updated_at, last_error, body_size, body_sha256, body
FROM events ORDER BY id;
-- Ids are never given twice, also those of events deleted at the end of the table.
UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'events')
WHERE name = 'events_rebuilt' AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events');
DROP TABLE events;
ALTER TABLE events_rebuilt RENAME TO events;
CREATE INDEX events_status ON events (status, id);
CREATE INDEX events_repository ON events (repository, id);
CREATE INDEX events_hook_id ON events (hook_id, id);

-- The unique constraint on delivery ids, for events up to the watermark.
CREATE TABLE delivery_keys (
    delivery_id TEXT    NOT NULL PRIMARY KEY,
    event_id    INTEGER NOT NULL
) WITHOUT ROWID;
-- Every event's body hash, for the replay guard, up to the watermark.
CREATE TABLE body_keys (
    body_sha256 BLOB    NOT NULL,
    event_id    INTEGER NOT NULL,
    PRIMARY KEY (body_sha256, event_id)
) WITHOUT ROWID;
CREATE TABLE delivery_key_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    -- Every event with an id up to this one has its keys in the tables above.
    merged_through INTEGER NOT NULL,
    -- Events deleted so far: the writer reads the tail again when this moves.
    deletions      INTEGER NOT NULL DEFAULT 0
);
INSERT INTO delivery_keys (delivery_id, event_id) SELECT delivery_id, id FROM events ORDER BY delivery_id;
INSERT INTO body_keys (body_sha256, event_id) SELECT body_sha256, id FROM events ORDER BY body_sha256, id;
INSERT INTO delivery_key_state (id, merged_through) SELECT 1, COALESCE(MAX(id), 0) FROM events;

-- A deleted event's keys go with it, and the writer learns that events were deleted.
CREATE TRIGGER events_delete_keys AFTER DELETE ON events BEGIN
    DELETE FROM delivery_keys WHERE delivery_id = old.delivery_id AND event_id = old.id;
    DELETE FROM body_keys WHERE body_sha256 = old.body_sha256 AND event_id = old.id;
    UPDATE delivery_key_state SET deletions = deletions + 1;
END;
