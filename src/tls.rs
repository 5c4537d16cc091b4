//! Outgoing HTTPS uses rustls with the *ring* provider (no C toolchain beyond `cc` needed).
//! Every HTTP client of the crate is built here, so the provider is always in place.

/// Installs the process-wide TLS provider; later calls do nothing.
pub fn install() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder with the TLS provider installed.
pub fn client_builder() -> reqwest::ClientBuilder {
    install();
    reqwest::Client::builder()
}
