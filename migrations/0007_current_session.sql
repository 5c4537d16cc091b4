-- The current session, as the state machine defines it (the newest session the user was
-- given; an adopted orphan only when there is no other): what the registration API hands out
-- again. Kept by every recompute; filled here for the verifications that exist.
ALTER TABLE verifications ADD COLUMN current_session_id text;
UPDATE verifications v SET current_session_id = (
    SELECT i.session_id FROM inputs i
    WHERE i.verification_id = v.id AND i.kind = 'session_created'
    ORDER BY (i.source = 'adopted'), i.id DESC
    LIMIT 1
);
