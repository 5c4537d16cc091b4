-- kyc's own tables: Veriff sessions, the recorded inputs every verification row is computed
-- from, and the dead letters the on-call CLI works on.

CREATE TABLE sessions (
    id               text PRIMARY KEY,            -- Veriff's session id
    verification_id  uuid NOT NULL REFERENCES verifications (id),
    status           text NOT NULL DEFAULT 'created',
    url_ciphertext   bytea,                       -- AES-256-GCM; the URL carries an access token
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_verification ON sessions (verification_id, created_at);

-- One row per input. The non-personal facts stay for the life of the verification; the raw
-- body (encrypted) is cleared after KYC_ARCHIVE_RETENTION.
CREATE TABLE inputs (
    id                 bigserial PRIMARY KEY,     -- recording order
    verification_id    uuid NOT NULL REFERENCES verifications (id),
    dedup_key          text NOT NULL UNIQUE,
    kind               text NOT NULL CHECK (kind IN ('session_created', 'decision', 'event')),
    session_id         text NOT NULL,
    attempt_id         text,
    status             text,                      -- decision status or event action
    decision_time      timestamptz,
    reason_code        integer,
    reason             text,
    source             text NOT NULL,             -- webhook | adopted | api | reconciliation
    integration        text,
    signature          text,
    body_ciphertext    bytea,
    received_at        timestamptz,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inputs_history ON inputs (verification_id, id);
CREATE INDEX inputs_session ON inputs (session_id);
CREATE INDEX inputs_archived ON inputs (recorded_at) WHERE body_ciphertext IS NOT NULL;

CREATE TABLE dead_letters (
    id               uuid PRIMARY KEY,            -- the dead-letter id from the message headers
    reason           text NOT NULL,
    kind             text,
    session_id       text,
    attempts         integer NOT NULL DEFAULT 0,
    first_failure    timestamptz,
    last_failure     timestamptz,
    message_id       text,
    headers          jsonb NOT NULL,
    body_ciphertext  bytea,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, recorded_at);
CREATE INDEX dead_letters_session ON dead_letters (session_id);
