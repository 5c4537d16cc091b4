//! Veriff's webhook signature: lowercase hex HMAC-SHA256 of the raw body with the
//! integration's shared secret. Verification happens on bytes, before any parsing, and
//! is the only way to obtain a [`VerifiedWebhook`].

use std::fmt;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::Kind;
use super::integration::{Integration, IntegrationKeys, Integrations};

type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

impl Integrations {
    /// Checks a webhook's signature on its raw bytes and resolves its integration.
    pub fn verify(&self, raw: RawWebhook) -> Result<VerifiedWebhook, SignatureError> {
        let tag = raw.headers.tag()?;
        let keys = match raw.headers.auth_client.as_deref() {
            Some(client) => {
                let keys = self
                    .by_api_key(client)
                    .ok_or(SignatureError::UnknownClient)?;
                verifies(keys, &raw.body, &tag).then_some(keys)
            }
            None => self.all().find(|keys| verifies(keys, &raw.body, &tag)),
        };
        let keys = keys.ok_or(SignatureError::Mismatch)?;
        Ok(VerifiedWebhook::new(raw, tag, keys.integration()))
    }

    /// Verifies again a webhook that came through the queue or the spool, with the secrets of
    /// the integration it was resolved to at ingest (neither is trusted).
    pub fn verify_as(
        &self,
        integration: Integration,
        raw: RawWebhook,
    ) -> Result<VerifiedWebhook, SignatureError> {
        let keys = self.get(integration).ok_or(SignatureError::UnknownClient)?;
        let tag = raw.headers.tag()?;
        if !verifies(keys, &raw.body, &tag) {
            return Err(SignatureError::Mismatch);
        }
        Ok(VerifiedWebhook::new(raw, tag, integration))
    }
}

fn verifies(keys: &IntegrationKeys, body: &[u8], tag: &[u8; TAG_LEN]) -> bool {
    keys.secrets().iter().any(|secret| {
        let mut mac = new_mac(secret);
        mac.update(body);
        mac.verify_slice(tag).is_ok()
    })
}

/// The headers that carry a webhook's signature and client, as received.
#[derive(Clone, Default)]
pub struct SignatureHeaders {
    /// `X-HMAC-SIGNATURE`
    pub hmac: Option<String>,
    /// `VRF-HMAC-SIGNATURE`, the fallback when `X-HMAC-SIGNATURE` is absent
    pub vrf_hmac: Option<String>,
    /// `X-AUTH-CLIENT`: an integration's API key, a secret
    pub auth_client: Option<String>,
    /// Whether the legacy `X-SIGNATURE` header was sent (refused on its own)
    pub legacy_present: bool,
}

impl SignatureHeaders {
    /// Only `X-HMAC-SIGNATURE`, as the worker and the relay verify a message again.
    pub fn hmac(signature: Option<&str>) -> Self {
        Self {
            hmac: signature.map(str::to_owned),
            ..Self::default()
        }
    }

    fn tag(&self) -> Result<[u8; TAG_LEN], SignatureError> {
        let tag = match (&self.hmac, &self.vrf_hmac) {
            (Some(primary), Some(fallback)) => {
                let (a, b) = (parse_tag(primary)?, parse_tag(fallback)?);
                if !constant_time_eq(&a, &b) {
                    return Err(SignatureError::Conflicting);
                }
                a
            }
            (Some(one), None) | (None, Some(one)) => parse_tag(one)?,
            (None, None) if self.legacy_present => return Err(SignatureError::LegacyScheme),
            (None, None) => return Err(SignatureError::Missing),
        };
        Ok(tag)
    }
}

impl fmt::Debug for SignatureHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureHeaders")
            .field("hmac", &self.hmac)
            .field("vrf_hmac", &self.vrf_hmac)
            .field(
                "auth_client",
                &self.auth_client.as_ref().map(|_| "[redacted]"),
            )
            .field("legacy_present", &self.legacy_present)
            .finish()
    }
}

/// A webhook as it arrived: bytes that nobody has vouched for yet.
#[derive(Clone)]
pub struct RawWebhook {
    pub kind: Kind,
    pub body: Bytes,
    pub headers: SignatureHeaders,
}

/// Bodies hold personal data: `Debug` shows their size only.
impl fmt::Debug for RawWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawWebhook")
            .field("kind", &self.kind)
            .field("body_bytes", &self.body.len())
            .field("headers", &self.headers)
            .finish()
    }
}

/// A webhook whose signature matched one of the integration's secrets. Only
/// [`Integrations::verify`] and [`Integrations::verify_as`] make one, so holding one is
/// proof of the check.
#[derive(Clone)]
pub struct VerifiedWebhook {
    kind: Kind,
    body: Bytes,
    signature: String,
    integration: Integration,
}

impl VerifiedWebhook {
    fn new(raw: RawWebhook, tag: [u8; TAG_LEN], integration: Integration) -> Self {
        Self {
            kind: raw.kind,
            body: raw.body,
            signature: hex::encode(tag),
            integration,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The verified signature, normalised to lowercase hex.
    pub fn signature(&self) -> &str {
        &self.signature
    }

    pub fn integration(&self) -> Integration {
        self.integration
    }
}

impl fmt::Debug for VerifiedWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedWebhook")
            .field("kind", &self.kind)
            .field("body_bytes", &self.body.len())
            .field("integration", &self.integration)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-HMAC-SIGNATURE header is missing")]
    Missing,
    #[error("the signature is not 64 hexadecimal characters")]
    Malformed,
    #[error("X-HMAC-SIGNATURE and VRF-HMAC-SIGNATURE disagree")]
    Conflicting,
    #[error("the legacy X-SIGNATURE scheme is not accepted; sign with X-HMAC-SIGNATURE")]
    LegacyScheme,
    #[error("X-AUTH-CLIENT does not name a configured integration")]
    UnknownClient,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Lowercase hex HMAC-SHA256 of `message` with `secret`.
pub fn sign(secret: &SecretString, message: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

fn new_mac(secret: &SecretString) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length")
}

fn parse_tag(value: &str) -> Result<[u8; TAG_LEN], SignatureError> {
    let mut tag = [0u8; TAG_LEN];
    hex::decode_to_slice(value.trim(), &mut tag).map_err(|_| SignatureError::Malformed)?;
    Ok(tag)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hashing first hides the lengths as well as the contents.
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &[(&str, &[u8])] = &[
        (
            "event-started.json",
            include_bytes!("../../tests/fixtures/veriff/event-started.json"),
        ),
        (
            "event-submitted.json",
            include_bytes!("../../tests/fixtures/veriff/event-submitted.json"),
        ),
        (
            "decision-approved.json",
            include_bytes!("../../tests/fixtures/veriff/decision-approved.json"),
        ),
        (
            "decision-declined.json",
            include_bytes!("../../tests/fixtures/veriff/decision-declined.json"),
        ),
        (
            "decision-resubmission-requested.json",
            include_bytes!("../../tests/fixtures/veriff/decision-resubmission-requested.json"),
        ),
        (
            "decision-expired.json",
            include_bytes!("../../tests/fixtures/veriff/decision-expired.json"),
        ),
        (
            "decision-abandoned.json",
            include_bytes!("../../tests/fixtures/veriff/decision-abandoned.json"),
        ),
    ];
    const SIGNATURES: &str = include_str!("../../tests/fixtures/veriff/SIGNATURES.txt");

    /// (file, X-HMAC-SIGNATURE, legacy X-SIGNATURE) rows of SIGNATURES.txt.
    fn signatures() -> Vec<(&'static str, &'static str, &'static str)> {
        SIGNATURES
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let cols: Vec<&str> = l.split('\t').collect();
                (cols.len() == 4).then(|| (cols[0], cols[1], cols[2]))
            })
            .collect()
    }

    fn fixture(name: &str) -> &'static [u8] {
        FIXTURES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("no fixture {name}"))
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn integrations() -> Integrations {
        Integrations::new(
            IntegrationKeys::new(
                Integration::Eu,
                secret("eu-key"),
                vec![secret("test-shared-secret")],
            ),
            Some(IntegrationKeys::new(
                Integration::Us,
                secret("us-key"),
                vec![secret("us-secret")],
            )),
        )
    }

    fn raw(body: &[u8], headers: SignatureHeaders) -> RawWebhook {
        RawWebhook {
            kind: Kind::Decision,
            body: Bytes::copy_from_slice(body),
            headers,
        }
    }

    fn hmac(sig: &str) -> SignatureHeaders {
        SignatureHeaders {
            hmac: Some(sig.to_owned()),
            ..SignatureHeaders::default()
        }
    }

    #[test]
    fn every_fixture_signs_and_verifies_as_in_signatures_txt() {
        let rows = signatures();
        assert_eq!(rows.len(), FIXTURES.len());
        for (file, expected, _) in rows {
            let body = fixture(file);
            assert_eq!(
                sign(&secret("test-shared-secret"), body),
                expected,
                "{file}"
            );
            let verified = integrations()
                .verify(raw(body, hmac(expected)))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(verified.integration(), Integration::Eu);
            assert_eq!(verified.signature(), expected);
            assert_eq!(verified.body().as_ref(), body);
        }
    }

    #[test]
    fn uppercase_hex_is_accepted_and_normalised() {
        let (file, sig, _) = signatures()[0];
        let verified = integrations()
            .verify(raw(fixture(file), hmac(&sig.to_uppercase())))
            .expect("uppercase hex verifies");
        assert_eq!(verified.signature(), sig);
    }

    #[test]
    fn tampering_and_wrong_material_are_rejected() {
        for (file, sig, legacy) in signatures() {
            let body = fixture(file);
            let verify =
                |body: &[u8], headers| integrations().verify(raw(body, headers)).map(|_| ());

            let mut flipped = body.to_vec();
            flipped[body.len() / 2] ^= 0x01;
            assert_eq!(
                verify(&flipped, hmac(sig)),
                Err(SignatureError::Mismatch),
                "{file} flipped"
            );

            let value: serde_json::Value = serde_json::from_slice(body).expect("fixture is JSON");
            let pretty = serde_json::to_vec_pretty(&value).expect("serialises");
            assert_eq!(
                verify(&pretty, hmac(sig)),
                Err(SignatureError::Mismatch),
                "{file} pretty"
            );

            let wrong = sign(&secret("another-secret"), body);
            assert_eq!(
                verify(body, hmac(&wrong)),
                Err(SignatureError::Mismatch),
                "{file} secret"
            );

            assert_eq!(
                verify(body, hmac(&sig[..63])),
                Err(SignatureError::Malformed)
            );
            assert_eq!(
                verify(body, hmac(&format!("{}zz", &sig[..62]))),
                Err(SignatureError::Malformed)
            );
            assert_eq!(verify(body, hmac("")), Err(SignatureError::Malformed));

            // The legacy scheme's value in the HMAC header does not verify, and alone it is refused.
            assert_eq!(verify(body, hmac(legacy)), Err(SignatureError::Mismatch));
            let legacy_only = SignatureHeaders {
                legacy_present: true,
                ..SignatureHeaders::default()
            };
            assert_eq!(verify(body, legacy_only), Err(SignatureError::LegacyScheme));
            assert_eq!(
                verify(body, SignatureHeaders::default()),
                Err(SignatureError::Missing)
            );
        }
    }

    #[test]
    fn vrf_header_is_the_fallback_and_must_agree() {
        let (file, sig, _) = signatures()[2];
        let body = fixture(file);
        let vrf_only = SignatureHeaders {
            vrf_hmac: Some(sig.to_owned()),
            ..SignatureHeaders::default()
        };
        assert!(integrations().verify(raw(body, vrf_only)).is_ok());

        let agreeing = SignatureHeaders {
            hmac: Some(sig.to_owned()),
            vrf_hmac: Some(sig.to_uppercase()),
            ..SignatureHeaders::default()
        };
        assert!(integrations().verify(raw(body, agreeing)).is_ok());

        let disagreeing = SignatureHeaders {
            hmac: Some(sig.to_owned()),
            vrf_hmac: Some(sign(&secret("other"), body)),
            ..SignatureHeaders::default()
        };
        assert_eq!(
            integrations().verify(raw(body, disagreeing)).map(|_| ()),
            Err(SignatureError::Conflicting)
        );
    }

    #[test]
    fn auth_client_selects_the_integration() {
        let body = b"{\"verification\":{\"id\":\"s\"}}";
        let us_sig = sign(&secret("us-secret"), body);
        let with_client = |client: &str, sig: &str| SignatureHeaders {
            hmac: Some(sig.to_owned()),
            auth_client: Some(client.to_owned()),
            ..SignatureHeaders::default()
        };
        let resolved = integrations()
            .verify(raw(body, with_client("us-key", &us_sig)))
            .expect("US secret under the US key");
        assert_eq!(resolved.integration(), Integration::Us);
        // The right secret under the other integration's key does not verify.
        assert_eq!(
            integrations()
                .verify(raw(body, with_client("eu-key", &us_sig)))
                .map(|_| ()),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            integrations()
                .verify(raw(body, with_client("nobody", &us_sig)))
                .map(|_| ()),
            Err(SignatureError::UnknownClient)
        );
        // Without X-AUTH-CLIENT the matching secret names the integration.
        let resolved = integrations()
            .verify(raw(body, hmac(&us_sig)))
            .expect("any secret");
        assert_eq!(resolved.integration(), Integration::Us);
    }

    #[test]
    fn retired_secrets_still_verify_and_the_first_one_signs() {
        let keys = IntegrationKeys::new(
            Integration::Eu,
            secret("k"),
            vec![secret("new-secret"), secret("test-shared-secret")],
        );
        assert_eq!(
            keys.signing_secret().map(|s| s.expose_secret()),
            Some("new-secret")
        );
        let (file, sig, _) = signatures()[0];
        let rotated = Integrations::new(keys, None);
        assert!(rotated.verify(raw(fixture(file), hmac(sig))).is_ok());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let shown = format!("{:?}", integrations());
        assert!(
            !shown.contains("test-shared-secret") && !shown.contains("eu-key"),
            "{shown}"
        );
    }

    #[test]
    fn bodies_and_api_keys_never_show_in_debug() {
        let (file, sig, _) = signatures()[2];
        let headers = SignatureHeaders {
            hmac: Some(sig.to_owned()),
            auth_client: Some("eu-key".to_owned()),
            ..SignatureHeaders::default()
        };
        let raw = raw(fixture(file), headers);
        let verified = integrations().verify(raw.clone()).expect("verifies");
        for shown in [format!("{raw:?}"), format!("{verified:?}")] {
            // The fixture's person, and the API key.
            assert!(
                !shown.contains("TESTY") && !shown.contains("eu-key"),
                "{shown}"
            );
            assert!(shown.contains("body_bytes"), "{shown}");
        }
    }
}
