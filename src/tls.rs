//! TLS to the services kyc talks to, with rustls and the *ring* provider (no C toolchain
//! beyond `cc` needed). Every HTTP client of the crate is built here, so the provider is
//! always in place, and so are the client configurations for PostgreSQL's `sslmode`s.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

/// Installs the process-wide TLS provider; later calls do nothing.
pub fn install() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder with the TLS provider installed.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    install();
    reqwest::Client::builder()
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0} cannot be read as PEM certificates")]
    BadCaFile(String),
    #[error("{0} holds no certificate")]
    EmptyCaFile(String),
    #[error("the system's root certificates cannot be loaded")]
    NoSystemRoots,
    #[error("TLS configuration")]
    Rustls(#[from] Error),
}

/// What is checked of a server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: the connection is encrypted, not authenticated (`sslmode=require` without a
    /// root certificate, as libpq does it).
    Nothing,
    /// Signed by a trusted root (`verify-ca`), whatever the name.
    Chain,
    /// Signed by a trusted root and issued for the host connected to (`verify-full`).
    ChainAndName,
}

/// The trusted roots: the certificates of `ca_file` (PEM), else the system's.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let name = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|_| TlsError::BadCaFile(name.clone()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::EmptyCaFile(name));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// A client configuration that checks what `verify` says against `roots`.
pub(crate) fn client_config(
    verify: Verify,
    roots: RootCertStore,
) -> Result<ClientConfig, TlsError> {
    install();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let full = || {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| Error::General(e.to_string()))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::ChainAndName => full()?,
        Verify::Chain => Arc::new(ChainOnly(full()?)),
        Verify::Nothing => Arc::new(EncryptedOnly(Arc::clone(&provider))),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `verify-ca`: the whole chain is checked, only the name is not. rustls checks the name
/// after the chain, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a root: any certificate, but the handshake is still checked against it
/// (the server proves it holds the key of the certificate it showed).
#[derive(Debug)]
struct EncryptedOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptedOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
