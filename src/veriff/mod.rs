//! Veriff: its wire format (webhook signatures, lenient payload parsing, the dedup key), its
//! integrations and credentials, and the client of its station API.

pub mod client;
pub mod dedup;
pub mod integration;
pub mod payload;
pub mod signature;

use std::fmt;

/// Which of Veriff's two webhooks a body came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Decision,
    Event,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Event => "event",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "decision" => Some(Kind::Decision),
            "event" => Some(Kind::Event),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
