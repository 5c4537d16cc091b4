-- Changes that every running kyc must see at once.
--
-- Every change to a client key (revoked by `kyc clients revoke` or by the registration
-- backend, created, deleted) is announced, so every running kyc drops it from its cache at
-- once instead of serving a revoked key until the cache expires.
CREATE FUNCTION kyc_api_client_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('kyc_api_clients', encode(OLD.key_sha256, 'hex'));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('kyc_api_clients', encode(NEW.key_sha256, 'hex'));
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION kyc_api_clients_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kyc_api_clients', '*');
    RETURN NULL;
END $$;

CREATE TRIGGER api_clients_changed AFTER INSERT OR UPDATE OR DELETE ON api_clients
    FOR EACH ROW EXECUTE FUNCTION kyc_api_client_changed();
CREATE TRIGGER api_clients_truncated AFTER TRUNCATE ON api_clients
    FOR EACH STATEMENT EXECUTE FUNCTION kyc_api_clients_truncated();

-- Onboardings (written by the registration backend) decide which verification a status poll
-- reads: a change is announced as '<onboarding id>:<SHA-256 of its user id, or nothing>', a
-- payload of fixed size whatever the user id is, so that the trigger can never fail the
-- backend's write.
CREATE FUNCTION kyc_onboarding_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('kyc_onboardings', OLD.id::text || ':' || coalesce(encode(sha256(convert_to(OLD.user_id, 'UTF8')), 'hex'), ''));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('kyc_onboardings', NEW.id::text || ':' || coalesce(encode(sha256(convert_to(NEW.user_id, 'UTF8')), 'hex'), ''));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER onboardings_changed AFTER INSERT OR UPDATE OR DELETE ON onboardings
    FOR EACH ROW EXECUTE FUNCTION kyc_onboarding_changed();
