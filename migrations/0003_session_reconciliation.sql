-- When kyc last asked Veriff about a session past its end with no final decision.
ALTER TABLE sessions ADD COLUMN reconciled_at timestamptz;
CREATE INDEX sessions_unfinished ON sessions (expires_at)
    WHERE status IN ('created', 'started', 'submitted', 'review', 'resubmission_requested');
