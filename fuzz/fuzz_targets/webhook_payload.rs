//! Any body, as either kind of webhook → `payload::parse` and `dedup_key`.
//!
//! Asserts: no panic; facts always carry a non-empty session id; the dedup key is 64
//! lowercase hex; parsing and keying are deterministic; an unparseable body is keyed by its
//! bytes; the session id and status or action are the document's own; and re-serialising a parsed body (other whitespace, key order) keeps its facts and
//! its key, as redeliveries rely on.
#![no_main]

use kyc::veriff::Kind;
use kyc::veriff::dedup::dedup_key;
use kyc::veriff::payload::parse;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|body: &[u8]| {
    for kind in [Kind::Decision, Kind::Event] {
        let facts = parse(kind, body);
        assert_eq!(parse(kind, body), facts, "parse is deterministic");

        let key = dedup_key(kind, facts.as_ref(), body);
        assert!(is_key(&key), "dedup key {key:?}");
        assert_eq!(dedup_key(kind, facts.as_ref(), body), key);

        let Some(facts) = facts else {
            // Unparseable bodies are keyed by their bytes.
            assert_eq!(key, hex::encode(Sha256::digest(body)));
            continue;
        };
        assert!(!facts.session_id.is_empty(), "facts without a session id");

        // The same document written differently has the same facts. serde_json does not
        // check what it skips (invalid UTF-8 or escapes in ignored fields), so a body with
        // facts need not be a `Value`; the parser is right to stay lenient there.
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            continue;
        };
        // The facts are the fields as sent, where the document has them as strings.
        let base = match kind {
            Kind::Decision => "/verification",
            Kind::Event => "",
        };
        let sent = |name: &str| {
            value
                .pointer(&format!("{base}/{name}"))
                .and_then(|v| v.as_str())
        };
        if let Some(id) = sent("id") {
            assert_eq!(facts.session_id, id, "session id");
        }
        let what = match kind {
            Kind::Decision => "status",
            Kind::Event => "action",
        };
        if let Some(s) = sent(what) {
            assert_eq!(facts.status_or_action(), s, "{what}");
        }
        for reformatted in [
            serde_json::to_vec(&value).expect("serialises"),
            serde_json::to_vec_pretty(&value).expect("serialises"),
        ] {
            let again = parse(kind, &reformatted);
            assert_eq!(again.as_ref(), Some(&facts), "facts change with formatting");
            assert_eq!(dedup_key(kind, again.as_ref(), &reformatted), key);
        }
    }
});

fn is_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
