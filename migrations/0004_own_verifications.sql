-- A user without an onboarding has at most one verification of their own.
DROP INDEX IF EXISTS verifications_user;
CREATE UNIQUE INDEX verifications_own ON verifications (user_id) WHERE onboarding_id IS NULL;
