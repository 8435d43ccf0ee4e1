-- Sign-in with GitHub (OAuth web flow). Only SHA-256 hashes of the state values and session
-- ids are stored, so a copy of the database does not hold usable cookies; the user's GitHub
-- token is sealed like every other secret (see src/crypto.rs). Times are Unix ms.
CREATE TABLE oauth_states (
    state_hash TEXT    PRIMARY KEY,
    created_at BIGINT  NOT NULL
);

CREATE TABLE sessions (
    id_hash      TEXT    PRIMARY KEY,
    user_id      BIGINT  NOT NULL,
    login        TEXT    NOT NULL,
    token_key_id TEXT    NOT NULL,
    token        TEXT    NOT NULL,
    scopes       TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
