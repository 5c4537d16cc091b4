-- Webhooks accepted while the broker could not confirm them: each committed here before its
-- 200, and deleted by a relay only after the broker confirmed it. The body holds personal
-- data, so it is kept encrypted (KYC_ARCHIVE_ENCRYPTION_KEY), and only until it is relayed.
CREATE TABLE spool (
    id               bigserial PRIMARY KEY,      -- relayed oldest first
    kind             text NOT NULL CHECK (kind IN ('decision', 'event')),
    integration      text NOT NULL CHECK (integration IN ('EU', 'US')),
    signature        text NOT NULL,
    dedup_key        text NOT NULL,
    parsed           boolean NOT NULL,           -- a session id could be read from the body
    body_ciphertext  bytea NOT NULL,
    received_at      timestamptz NOT NULL,
    spooled_at       timestamptz NOT NULL DEFAULT now()
);
