-- The tables shared with the registration backend (DESIGN.md section 5). The backend writes
-- api_clients and onboardings; kyc writes verifications. kyc creates them so it runs alone.

CREATE TABLE IF NOT EXISTS api_clients (
    id          uuid PRIMARY KEY,
    name        text,
    key_sha256  bytea UNIQUE NOT NULL,
    us_enabled  boolean NOT NULL DEFAULT false,
    revoked_at  timestamptz,
    created_at  timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS onboardings (
    id                 uuid PRIMARY KEY,
    client_id          uuid NOT NULL REFERENCES api_clients (id),
    phone_verified_at  timestamptz,
    expires_at         timestamptz NOT NULL,
    completed_at       timestamptz,
    user_id            text,
    created_at         timestamptz DEFAULT now()
);

CREATE INDEX IF NOT EXISTS onboardings_user_newest ON onboardings (user_id, created_at DESC);

CREATE TABLE IF NOT EXISTS verifications (
    id             uuid PRIMARY KEY,
    onboarding_id  uuid UNIQUE REFERENCES onboardings (id),
    user_id        text,
    region         text NOT NULL CHECK (region IN ('EU', 'US')),
    state          text NOT NULL CHECK (state IN ('UNVERIFIED', 'PENDING', 'VERIFIED', 'REJECTED')),
    retry          text NOT NULL CHECK (retry IN ('NONE', 'SAME_SESSION', 'NEW_SESSION', 'BLOCKED')),
    reason_code    integer,
    reason         text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS verifications_user ON verifications (user_id) WHERE onboarding_id IS NULL;
