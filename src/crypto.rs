//! AES-256-GCM for what kyc may keep only encrypted: raw webhook bodies (personal data) and
//! Veriff session URLs (access tokens). A random 96-bit nonce is stored before the ciphertext.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("not 32 bytes of base64")]
    BadKey,
    #[error("the ciphertext is damaged or was sealed with another key")]
    Unreadable,
}

impl Cipher {
    /// A key given as base64 of exactly 32 bytes.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    pub(crate) fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .aead
            .encrypt(&nonce, plaintext)
            .expect("AES-GCM encrypts any message below 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if stored.len() < NONCE_LEN {
            return Err(CryptoError::Unreadable);
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        self.aead
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| CryptoError::Unreadable)
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn seals_and_opens_and_detects_tampering() {
        let cipher = Cipher::from_base64(KEY).expect("valid key");
        let sealed = cipher.seal(b"personal data");
        assert!(!sealed.windows(8).any(|w| w == b"personal"));
        assert_eq!(cipher.open(&sealed).as_deref(), Ok(&b"personal data"[..]));
        let mut damaged = sealed.clone();
        damaged[NONCE_LEN] ^= 1;
        assert_eq!(cipher.open(&damaged), Err(CryptoError::Unreadable));
        assert_ne!(
            cipher.seal(b"x"),
            cipher.seal(b"x"),
            "fresh nonce each time"
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert_eq!(
            Cipher::from_base64("c2hvcnQ=").map(|_| ()),
            Err(CryptoError::BadKey)
        );
        assert_eq!(
            Cipher::from_base64("not base64!").map(|_| ()),
            Err(CryptoError::BadKey)
        );
    }
}
