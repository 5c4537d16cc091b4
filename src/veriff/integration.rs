//! Veriff integrations and their credentials: `EU` always, `US` optionally, each with its
//! API key and shared secrets (the first one signs; retired ones stay to verify what is still
//! queued or archived).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::signature::constant_time_eq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Integration {
    Eu,
    Us,
}

impl Integration {
    pub fn as_str(self) -> &'static str {
        match self {
            Integration::Eu => "EU",
            Integration::Us => "US",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EU" => Some(Integration::Eu),
            "US" => Some(Integration::Us),
            _ => None,
        }
    }
}

impl fmt::Display for Integration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One integration's API key and shared secrets, newest first.
#[derive(Clone)]
pub struct IntegrationKeys {
    integration: Integration,
    api_key: SecretString,
    secrets: Vec<SecretString>,
}

impl IntegrationKeys {
    pub fn new(
        integration: Integration,
        api_key: SecretString,
        secrets: Vec<SecretString>,
    ) -> Self {
        Self {
            integration,
            api_key,
            secrets,
        }
    }

    pub fn integration(&self) -> Integration {
        self.integration
    }

    pub fn api_key(&self) -> &SecretString {
        &self.api_key
    }

    /// The secret that signs outgoing requests: the first one configured.
    pub(crate) fn signing_secret(&self) -> Option<&SecretString> {
        self.secrets.first()
    }

    /// Every secret that may verify a signature, the signing one first.
    pub(crate) fn secrets(&self) -> &[SecretString] {
        &self.secrets
    }
}

impl fmt::Debug for IntegrationKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegrationKeys")
            .field("integration", &self.integration)
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

/// The configured integrations: EU always, US optionally.
#[derive(Debug, Clone)]
pub struct Integrations {
    eu: IntegrationKeys,
    us: Option<IntegrationKeys>,
}

impl Integrations {
    pub fn new(eu: IntegrationKeys, us: Option<IntegrationKeys>) -> Self {
        Self { eu, us }
    }

    pub fn get(&self, integration: Integration) -> Option<&IntegrationKeys> {
        match integration {
            Integration::Eu => Some(&self.eu),
            Integration::Us => self.us.as_ref(),
        }
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &IntegrationKeys> {
        std::iter::once(&self.eu).chain(self.us.as_ref())
    }

    /// The integration whose API key was presented as `X-AUTH-CLIENT`.
    pub(crate) fn by_api_key(&self, presented: &str) -> Option<&IntegrationKeys> {
        self.all().find(|keys| {
            constant_time_eq(
                keys.api_key.expose_secret().as_bytes(),
                presented.as_bytes(),
            )
        })
    }
}
