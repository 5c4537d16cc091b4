//! The walk-through `kyc run --dev` prints.

use crate::config::Config;

/// What a newcomer does next with `kyc run --dev`.
pub fn print(config: &Config) {
    let addr = config.http_addr;
    let db = &config.database_url;
    let kyc =
        std::env::current_exe().map_or_else(|_| "kyc".to_owned(), |p| p.display().to_string());
    out!(
        r#"
kyc is running in development mode on http://{addr} with a local Veriff stand-in.
Try the whole flow in a second terminal:

  KEY=$({kyc} clients create --name demo | sed -n 's/^key.*: //p')
  CLIENT=$({kyc} clients list --json | tail -n 1 | sed 's/.*"id":"\([^"]*\)".*/\1/')
  ONBOARDING=$(cat /proc/sys/kernel/random/uuid)
  psql "{db}" -c "INSERT INTO onboardings (id, client_id, phone_verified_at, expires_at) VALUES ('$ONBOARDING', '$CLIENT', now(), now() + interval '1 day')"
  curl -s -X POST http://{addr}/v1/auth/register/verification -H "x-client-key: $KEY" -d "{{\"onboardingId\":\"$ONBOARDING\"}}"

Open the "url" it returns in a browser and click "Approve"; then

  curl -s "http://{addr}/v1/auth/register/status?onboardingId=$ONBOARDING" -H "x-client-key: $KEY"

reports "state":"VERIFIED".
"#
    );
}
