-- Webhooks hookdock installed on GitHub. Secrets are sealed (see src/crypto.rs): the
-- base64 ciphertext sits beside the id of the key that sealed it. The previous secret stays
-- valid until old_secret_until (ms) after a rotation.
CREATE TABLE hook_registrations (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    scope             TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    target_id         INTEGER,
    hook_id           INTEGER,
    url               TEXT    NOT NULL,
    events            TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    secret_key_id     TEXT,
    secret            TEXT,
    old_secret_key_id TEXT,
    old_secret        TEXT,
    old_secret_until  INTEGER,
    rotated_at        INTEGER,
    checked_at        INTEGER,
    swept_at          INTEGER,
    last_error        TEXT,
    -- The newest delivery GitHub reports for the hook, read by the periodic check.
    last_delivery_at     INTEGER,
    last_delivery_code   INTEGER,
    last_delivery_status TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (scope, name)
);
CREATE INDEX hook_registrations_hook_id ON hook_registrations (hook_id);

-- Deliveries hookdock asked GitHub to send again, one row per delivery guid.
CREATE TABLE redeliveries (
    registration_id    INTEGER NOT NULL REFERENCES hook_registrations (id) ON DELETE CASCADE,
    guid               TEXT    NOT NULL,
    github_delivery_id INTEGER NOT NULL,
    event              TEXT    NOT NULL,
    requested_at       INTEGER NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (registration_id, guid)
);

CREATE INDEX events_hook_id ON events (hook_id, id);
