//! Outgoing HTTP(S) of the agent: artifacts and HTTP checks. One rustls client (aws-lc-rs, the
//! only crypto provider in the build) that trusts the platform's roots plus the CAs the agent
//! was told to trust (`--trust-ca FILE`, PEM, repeatable): an internal artifact store or a
//! service behind a private CA needs no change to the host's trust store.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The CAs trusted besides the platform's, read from PEM files.
///
/// # Errors
///
/// Names the file and why: unreadable, not PEM, or no certificate in it.
pub fn read_trusted_cas(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut roots = Vec::new();
    for path in paths {
        roots.extend(read_pem_certs(path)?);
    }
    Ok(roots)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("the CA file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A client builder with the agent's trust: no proxy (the agent reads no environment), the
/// platform's roots and `trusted`.
pub(crate) fn client(trusted: &[CertificateDer<'static>]) -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().tls_certs_merge(
        trusted
            .iter()
            .map(|der| reqwest::Certificate::from_der(der.as_ref()))
            .filter_map(Result::ok),
    )
}

/// Whether a URL's host is a loopback address or `localhost` (where plain HTTP is allowed).
#[must_use]
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
