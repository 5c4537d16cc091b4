//! Arbitrary signature headers and body → `Integrations::verify`.
//!
//! Asserts: no panic; an `Ok` means the normalised signature is the HMAC of the body under
//! one of the resolved integration's secrets (recomputed with `sign`), every signature
//! header sent says the same, and `X-AUTH-CLIENT`, when sent, is that integration's key;
//! `verify_as` agrees; the uppercase and lowercase spellings of the headers get the same
//! answer; and a correct signature alone is never refused.
//!
//! The input is a plain byte layout rather than `Arbitrary`, so that a seed is just a few
//! control bytes in front of a fixture:
//!
//! ```text
//! byte 0   bits 0-1 X-HMAC-SIGNATURE, bits 2-3 VRF-HMAC-SIGNATURE:
//!                   0 absent, 1 raw (from the input), 2 signed, 3 signed and re-spelt
//!          bits 4-5 X-AUTH-CLIENT: 0 absent, 1 raw, 2 the EU key, 3 the US key
//!          bit 6    legacy X-SIGNATURE present
//!          bit 7    US integration configured
//! byte 1   which secret signs: low nibble for X-HMAC, high nibble for VRF
//! byte 2   re-spelling: bit i (0-5) uppercases hex digits i, i+6, …; bits 6-7 pad with ' '/'\t'
//! then     each raw header as a length byte and that many bytes (lossy UTF-8)
//! rest     the body
//! ```
#![no_main]

use bytes::Bytes;
use kyc::veriff::Kind;
use kyc::veriff::integration::{Integration, IntegrationKeys, Integrations};
use kyc::veriff::signature::{RawWebhook, SignatureError, SignatureHeaders, sign};
use libfuzzer_sys::fuzz_target;
use secrecy::{ExposeSecret, SecretString};

const EU_KEY: &str = "eu-api-key";
const US_KEY: &str = "us-api-key";
/// EU's current and retired secret (the fixtures are signed with the retired one), US's,
/// and one that no integration has.
const SECRETS: [&str; 4] = [
    "eu-new-secret",
    "test-shared-secret",
    "us-secret",
    "stranger",
];

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn integrations(with_us: bool) -> Integrations {
    let eu = IntegrationKeys::new(
        Integration::Eu,
        secret(EU_KEY),
        vec![secret(SECRETS[0]), secret(SECRETS[1])],
    );
    let us = IntegrationKeys::new(Integration::Us, secret(US_KEY), vec![secret(SECRETS[2])]);
    Integrations::new(eu, with_us.then_some(us))
}

/// A signature header as the input chose it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sig {
    Absent,
    Raw,
    Signed { secret: usize, respelt: bool },
}

impl Sig {
    fn new(bits: u8, selector: u8) -> Self {
        let secret = usize::from(selector) % SECRETS.len();
        match bits & 3 {
            0 => Sig::Absent,
            1 => Sig::Raw,
            2 => Sig::Signed {
                secret,
                respelt: false,
            },
            _ => Sig::Signed {
                secret,
                respelt: true,
            },
        }
    }
}

/// Takes a length-prefixed raw header value off the front of `data`.
fn take_raw(data: &mut &[u8]) -> String {
    let (len, rest) = data
        .split_first()
        .map_or((0, *data), |(l, r)| (usize::from(*l), r));
    let (value, rest) = rest.split_at(len.min(rest.len()));
    *data = rest;
    String::from_utf8_lossy(value).into_owned()
}

fn respell(signature: &str, mask: u8) -> String {
    let cased: String = signature
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 6) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    // Header values may carry surrounding whitespace; it is not part of the signature.
    match mask >> 6 {
        0 => cased,
        1 => format!(" {cased}"),
        2 => format!("{cased}\t"),
        _ => format!(" \t{cased} "),
    }
}

fn verify(integrations: &Integrations, headers: SignatureHeaders, body: &Bytes) -> Outcome {
    let raw = RawWebhook {
        kind: Kind::Decision,
        body: body.clone(),
        headers,
    };
    integrations
        .verify(raw)
        .map(|v| (v.integration(), v.signature().to_owned()))
}

type Outcome = Result<(Integration, String), SignatureError>;

fn with_case(headers: &SignatureHeaders, case: fn(&str) -> String) -> SignatureHeaders {
    // Only the hex headers: the API key is compared exactly.
    SignatureHeaders {
        hmac: headers.hmac.as_deref().map(case),
        vrf_hmac: headers.vrf_hmac.as_deref().map(case),
        ..headers.clone()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((control, mut rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let [flags, selector, mask] = *control;
    let hmac = Sig::new(flags, selector);
    let vrf = Sig::new(flags >> 2, selector >> 4);
    let with_us = flags & 0x80 != 0;

    // Raw values come first in the input, the body is what is left.
    let hmac_raw = (hmac == Sig::Raw).then(|| take_raw(&mut rest));
    let vrf_raw = (vrf == Sig::Raw).then(|| take_raw(&mut rest));
    let auth_client = match (flags >> 4) & 3 {
        0 => None,
        1 => Some(take_raw(&mut rest)),
        2 => Some(EU_KEY.to_owned()),
        _ => Some(US_KEY.to_owned()),
    };
    let body = Bytes::copy_from_slice(rest);

    let value = |sig: Sig, raw: Option<String>| match sig {
        Sig::Absent => None,
        Sig::Raw => raw,
        Sig::Signed { secret: s, respelt } => {
            let signature = sign(&secret(SECRETS[s]), &body);
            Some(if respelt {
                respell(&signature, mask)
            } else {
                signature
            })
        }
    };
    let headers = SignatureHeaders {
        hmac: value(hmac, hmac_raw),
        vrf_hmac: value(vrf, vrf_raw),
        auth_client,
        legacy_present: flags & 0x40 != 0,
    };

    let integrations = integrations(with_us);
    let outcome = verify(&integrations, headers.clone(), &body);

    // Spelling of the hex digits never changes the answer.
    for case in [str::to_ascii_uppercase, str::to_ascii_lowercase] {
        assert_eq!(
            verify(&integrations, with_case(&headers, case), &body),
            outcome,
            "case changes the answer for {headers:?}"
        );
    }

    match &outcome {
        Ok((integration, signature)) => {
            let keys = integrations
                .get(*integration)
                .expect("a configured integration");
            // Only this integration's own secrets may vouch for it.
            let recomputed = SECRETS
                .into_iter()
                .filter(|s| owner(s) == Some(*integration))
                .any(|s| sign(&secret(s), &body) == *signature);
            assert!(
                recomputed,
                "{signature} is no HMAC of the body for {integration}"
            );
            for sent in [&headers.hmac, &headers.vrf_hmac].into_iter().flatten() {
                assert_eq!(
                    sent.trim().to_ascii_lowercase(),
                    *signature,
                    "header disagrees"
                );
            }
            if let Some(client) = &headers.auth_client {
                assert_eq!(
                    client,
                    keys.api_key().expose_secret(),
                    "verified under another key"
                );
            }
            let again = integrations.verify_as(
                *integration,
                RawWebhook {
                    kind: Kind::Event,
                    body: body.clone(),
                    headers: headers.clone(),
                },
            );
            assert!(again.is_ok(), "verify_as refuses what verify accepted");
        }
        Err(error) => {
            // A correct signature in X-HMAC-SIGNATURE alone, from a configured integration,
            // must verify.
            if let (Sig::Signed { secret: s, .. }, Sig::Absent, None) =
                (hmac, vrf, &headers.auth_client)
                && owner(SECRETS[s]).is_some_and(|i| integrations.get(i).is_some())
            {
                panic!("a correct signature was refused: {error:?}");
            }
        }
    }
});

/// The integration a secret belongs to.
fn owner(secret: &str) -> Option<Integration> {
    match SECRETS.iter().position(|s| *s == secret) {
        Some(0 | 1) => Some(Integration::Eu),
        Some(2) => Some(Integration::Us),
        _ => None,
    }
}
