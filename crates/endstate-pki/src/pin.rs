//! Trusting a server by its CA's fingerprint, as ssh trusts a host key: the server presents its
//! CA in its chain; the CA whose SHA-256 is the one expected becomes the only root, and the
//! chain is verified against it as usual (signatures, validity, the server's name). With no
//! fingerprint expected, the CA presented is trusted on first use and kept, so the caller can
//! show its fingerprint and store it.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate, lowercase hex.
#[must_use]
pub fn sha256_hex(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate's DER as PEM.
#[must_use]
pub fn der_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A verifier that trusts the presented CA with the expected fingerprint (or the first one).
#[derive(Debug)]
pub struct PinnedCa {
    expected: Option<String>,
    seen: Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    /// A rustls client configuration (aws-lc-rs) trusting the CA with this SHA-256 (hex, any
    /// case, `:` allowed), or the first one presented when `expected` is `None`. The returned
    /// handle tells which CA was presented.
    ///
    /// # Errors
    ///
    /// When the provider lacks the default protocol versions (aws-lc-rs has them).
    pub fn client_config(expected: Option<&str>) -> Result<(rustls::ClientConfig, Arc<PinnedCa>), Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pin = Arc::new(PinnedCa {
            expected: expected.map(|e| e.replace(':', "").to_ascii_lowercase()),
            seen: Mutex::new(None),
            provider: Arc::clone(&provider),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&pin) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth();
        Ok((config, pin))
    }

    /// The CA the server presented and this verifier trusted, once a handshake got that far.
    #[must_use]
    pub fn seen(&self) -> Option<CertificateDer<'static>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented: Vec<(usize, String)> = intermediates
            .iter()
            .enumerate()
            .map(|(i, der)| (i, sha256_hex(der.as_ref())))
            .collect();
        let chosen = match &self.expected {
            Some(expected) => presented.iter().find(|(_, fp)| fp == expected),
            None => presented.last(),
        };
        let Some((index, _)) = chosen else {
            let found = presented
                .iter()
                .map(|(_, fp)| fp.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::General(match &self.expected {
                Some(expected) => format!(
                    "the server's CA is not the one pinned: expected SHA-256 {expected}, presented {}",
                    if found.is_empty() { "no CA" } else { &found }
                ),
                None => "the server presented no CA in its chain, so none can be pinned".to_owned(),
            }));
        };
        let ca = intermediates[*index].clone().into_owned();
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|e| Error::General(format!("the server's CA is not a usable root: {e}")))?;
        let rest: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| i != index)
            .map(|(_, der)| der.clone())
            .collect();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        let verified = verifier.verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)?;
        *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ca);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
