//! `--dev`: a local Veriff stand-in and the printed walk-through, so the whole flow runs on
//! one machine with no Veriff account. Only ever on loopback, with public development secrets.

pub(crate) mod guide;
mod standin;

use std::net::SocketAddr;

pub(crate) use standin::{StandIn, routes};

use crate::error::BoxError;
use crate::veriff::integration::{Integration, Integrations};

/// The stand-in, signing with the EU integration's development secret and calling the
/// receiver at `addr`.
pub(crate) fn standin(integrations: &Integrations, addr: SocketAddr) -> Result<StandIn, BoxError> {
    let eu = integrations
        .get(Integration::Eu)
        .ok_or("no EU integration")?;
    let secret = eu.signing_secret().ok_or("no EU shared secret")?;
    tracing::warn!(
        "--dev: a local Veriff stand-in is mounted at /dev/veriff with public development secrets"
    );
    Ok(StandIn::new(
        format!("http://{addr}"),
        eu.api_key().clone(),
        secret.clone(),
    )?)
}
