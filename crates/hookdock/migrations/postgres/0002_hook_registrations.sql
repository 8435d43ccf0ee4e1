-- Webhooks hookdock installed on GitHub. Secrets are sealed (see src/crypto.rs): the
-- base64 ciphertext sits beside the id of the key that sealed it. The previous secret stays
-- valid until old_secret_until (ms) after a rotation.
CREATE TABLE hook_registrations (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope             TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    target_id         BIGINT,
    hook_id           BIGINT,
    url               TEXT    NOT NULL,
    events            TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    secret_key_id     TEXT,
    secret            TEXT,
    old_secret_key_id TEXT,
    old_secret        TEXT,
    old_secret_until  BIGINT,
    rotated_at        BIGINT,
    checked_at        BIGINT,
    swept_at          BIGINT,
    last_error        TEXT,
    -- The newest delivery GitHub reports for the hook, read by the periodic check.
    last_delivery_at     BIGINT,
    last_delivery_code   BIGINT,
    last_delivery_status TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (scope, name)
);
CREATE INDEX hook_registrations_hook_id ON hook_registrations (hook_id);

-- Deliveries hookdock asked GitHub to send again, one row per delivery guid.
CREATE TABLE redeliveries (
    registration_id    BIGINT NOT NULL REFERENCES hook_registrations (id) ON DELETE CASCADE,
    guid               TEXT    NOT NULL,
    github_delivery_id BIGINT NOT NULL,
    event              TEXT    NOT NULL,
    requested_at       BIGINT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (registration_id, guid)
);

CREATE INDEX events_hook_id ON events (hook_id, id);
