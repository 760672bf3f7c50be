//! The server's built-in certificate authority for agent (and later peer) identities, and the
//! one-time join tokens that admit a new host.
//!
//! Enrolment, end to end:
//!
//! 1. An operator creates a join token ([`JoinToken::generate`]); the secret is shown once, the
//!    server keeps only its [`JoinTokenRecord`] (SHA-256 of the secret, expiry, labels).
//! 2. The agent generates its own key ([`AgentKey::generate`]) and a certificate signing request
//!    for its host name ([`AgentKey::csr`]). The private key never leaves the agent.
//! 3. The server checks the token ([`JoinTokenRecord::check`]), decides the host name from it, and
//!    signs the request ([`CertificateAuthority::sign_agent`]): a short-lived client certificate.
//! 4. On every connection the server checks the presented certificate
//!    ([`verify_agent_cert`]) and learns the host's identity ([`AgentIdentity`]).
//! 5. The agent asks for a new certificate once [`renew_due`] says so (at 2/3 of its lifetime).
//!
//! All instants are unix **milliseconds** (`now: i64`), like the rest of endstate; the crate never
//! reads the clock, so every function is deterministic given its inputs (apart from fresh keys,
//! serials and secrets, which come from the operating system's random source). X.509 keeps
//! seconds, so instants written into a certificate are rounded down to a whole second.
//!
//! # Guarantees
//!
//! - One crypto provider: keys, signatures and their verification use aws-lc-rs (through `rcgen`
//!   and `x509-parser`); `ring` is not compiled.
//! - Keys are ECDSA P-256 with SHA-256. The CA is `CA:TRUE, pathlen:0` with key usages
//!   `keyCertSign`, `cRLSign`, `digitalSignature`, so it can only sign end-entity certificates.
//! - An agent certificate carries exactly what the server decides, never what the request asks:
//!   the host name (as the subject CN and the only DNS SAN), `CA:FALSE`, `digitalSignature`, the
//!   client-auth extended key usage, a random positive 126-bit serial, the authority key id of the
//!   CA, and a validity from `now - 5 min` (clock skew between hosts) to `now + lifetime`. Only the
//!   public key is taken from the request, after its self-signature has been verified.
//! - A request is refused when its signature does not verify, when it names (in its CN or any SAN)
//!   anything other than the host name the server chose, or when it asks for extensions rcgen does
//!   not understand.
//! - A certificate is never issued past the end of the CA's own validity, nor by a CA that is not
//!   valid at `now`.
//! - [`verify_agent_cert`] checks, in this order, and reports the first failure: that both
//!   certificates parse, that the issuer is this CA (issuer name and authority key id), the
//!   signature, the validity window, and the agent profile (not a CA, client-auth EKU, one host
//!   name in the SAN equal to the CN).
//! - Join secrets are 32 random bytes (hex, prefixed `esj_`); only their SHA-256 is kept, and the
//!   comparison is constant-time in the hash.
//!
//! # Caveats
//!
//! - No revocation here: revoking a host is the server's job (refuse known-revoked serials or host
//!   names after [`verify_agent_cert`]); short lifetimes bound the exposure of a stolen key.
//! - [`verify_agent_cert`] is for the server's own checks and tests. The TLS handshake itself is
//!   verified by rustls (`WebPkiClientVerifier` with the CA as its only root). The one rustls
//!   piece here is [`pin::PinnedCa`], the client side's trust in a server by its CA's fingerprint.
//! - The CA key is held in memory as PEM/PKCS#8 by the caller; protecting it at rest (mode 0600,
//!   or an HSM later) is the server's job. There is no CA rotation yet: when the CA nears its end,
//!   [`CertificateAuthority::sign_agent`] refuses rather than issuing short certificates.
//! - Whether a join token was already used is the store's fact, passed in as `used`; marking it
//!   used atomically with the enrolment is the caller's job.
//! - Host names follow endstate's name alphabet (`a-z 0-9 - _ .`, at most 63 characters, starting
//!   with a letter or digit); `_` is not strictly a DNS character, but client-certificate
//!   verification does not match names, so it is accepted.

pub mod pin;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
    SerialNumber,
};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// How far back an issued certificate's `not_before` is set, so a host whose clock is a little
/// behind the server's accepts it at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The default lifetime of an agent certificate: short, renewed at 2/3 (16 h).
pub const DEFAULT_AGENT_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest agent certificate this CA issues.
pub const MAX_AGENT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// The default validity of a new CA: ten years.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The longest CA validity accepted.
pub const MAX_CA_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The default time a join token stays usable.
pub const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(60 * 60);

/// The prefix of every join secret, so a leaked one is recognisable (API tokens use `es_`).
pub const JOIN_SECRET_PREFIX: &str = "esj_";

/// The longest host name accepted, like every endstate name.
const MAX_HOST_NAME_LEN: usize = 63;

/// Why a certificate operation failed. Each verification failure names the check that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// The input is not a well-formed certificate, request or key.
    #[error("malformed: {reason}")]
    Malformed {
        /// What could not be read.
        reason: String,
    },
    /// The signature does not verify (a tampered request or certificate, or a forged one).
    #[error("the signature does not verify")]
    BadSignature,
    /// The certificate was issued by another CA.
    #[error("the certificate was not issued by this CA")]
    WrongIssuer,
    /// The certificate's validity ended.
    #[error("the certificate expired at {not_after} (now {now}, unix ms)")]
    Expired {
        /// End of validity, unix ms.
        not_after: i64,
        /// The time checked, unix ms.
        now: i64,
    },
    /// The certificate's validity has not started.
    #[error("the certificate is not valid before {not_before} (now {now}, unix ms)")]
    NotYetValid {
        /// Start of validity, unix ms.
        not_before: i64,
        /// The time checked, unix ms.
        now: i64,
    },
    /// The certificate is well signed by this CA but is not an agent client certificate.
    #[error("not an agent certificate: {reason}")]
    NotAgentCert {
        /// Which part of the profile is missing.
        reason: &'static str,
    },
    /// The request names another host than the one the server decided.
    #[error("the request is for {requested:?}, but this host is {expected:?}")]
    NameMismatch {
        /// The name found in the request.
        requested: String,
        /// The name the server decided (from the join token).
        expected: String,
    },
    /// The host name is not acceptable.
    #[error("host name {name:?}: {reason}")]
    InvalidHostName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A lifetime or validity is zero, too long or out of range.
    #[error("invalid lifetime: {reason}")]
    InvalidLifetime {
        /// Why.
        reason: &'static str,
    },
    /// The CA itself is not valid at `now`, or would expire before the certificate asked for.
    #[error("the CA is valid from {not_before} to {not_after}, which does not cover the request (now {now}, unix ms)")]
    CaNotValid {
        /// Start of the CA's validity, unix ms.
        not_before: i64,
        /// End of the CA's validity, unix ms.
        not_after: i64,
        /// The time checked, unix ms.
        now: i64,
    },
    /// The CA certificate and key given to [`CertificateAuthority::from_pem`] do not belong
    /// together, or the certificate is not a CA.
    #[error("not a usable CA: {reason}")]
    NotACa {
        /// Why.
        reason: &'static str,
    },
    /// Generating a key, a serial or a signature failed.
    #[error("crypto failure: {reason}")]
    Crypto {
        /// What failed.
        reason: String,
    },
}

/// Why a join token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The secret does not match this record (or no record exists).
    #[error("unknown join token")]
    Unknown,
    /// The token is past its expiry.
    #[error("the join token expired at {expires_at} (now {now}, unix ms)")]
    Expired {
        /// When it expired, unix ms.
        expires_at: i64,
        /// The time checked, unix ms.
        now: i64,
    },
    /// The token was already used to enrol a host.
    #[error("the join token was already used")]
    AlreadyUsed,
}

// ---------------------------------------------------------------------------------------------
// The CA

/// The server's certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_before_ms: i64,
    not_after_ms: i64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_before_ms", &self.not_before_ms)
            .field("not_after_ms", &self.not_after_ms)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A certificate issued to an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number, lowercase hex (what revocation refers to).
    pub serial: String,
    /// Start of validity, unix ms (a whole second, [`CLOCK_SKEW`] before the issuing time).
    pub not_before: i64,
    /// End of validity, unix ms (a whole second).
    pub not_after: i64,
}

/// Who a verified agent certificate says the peer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The host name the CA signed (the certificate's DNS SAN and CN).
    pub host_name: String,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// Start of validity, unix ms.
    pub not_before: i64,
    /// End of validity, unix ms.
    pub not_after: i64,
}

impl CertificateAuthority {
    /// Signs a request to an agent (a run of an action, say) with the CA's key, so the agent can
    /// check with [`verify_ca_signature`] that it comes from its server.
    ///
    /// # Errors
    /// [`PkiError::Crypto`] if signing fails.
    pub fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        rcgen::SigningKey::sign(self.issuer.key(), message).map_err(|e| PkiError::Crypto { reason: e.to_string() })
    }

    /// Creates a new CA named `name` (its subject CN), valid from `now` for `validity`
    /// ([`DEFAULT_CA_VALIDITY`] is a sensible choice), with a fresh key.
    ///
    /// # Errors
    /// [`PkiError::InvalidHostName`] if the name is empty or longer than 64 characters,
    /// [`PkiError::InvalidLifetime`] if `validity` is zero or over [`MAX_CA_VALIDITY`],
    /// [`PkiError::Crypto`] if key generation or signing fails.
    pub fn generate(name: &str, now: i64, validity: Duration) -> Result<Self, PkiError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(PkiError::InvalidHostName {
                name: name.to_string(),
                reason: "a CA name has 1 to 64 printable characters",
            });
        }
        if validity.is_zero() || validity > MAX_CA_VALIDITY {
            return Err(PkiError::InvalidLifetime {
                reason: "a CA is valid for more than 0 s and at most 100 years",
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        let not_before = to_cert_time(now)?;
        let not_after = to_cert_time(add_ms(now, validity)?)?;
        params.not_before = not_before.to_datetime();
        params.not_after = not_after.to_datetime();
        let cert = params.self_signed(&key).map_err(crypto)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_before_ms: not_before.timestamp() * 1000,
            not_after_ms: not_after.timestamp() * 1000,
        })
    }

    /// Loads a CA saved by [`to_pem`](Self::to_pem).
    ///
    /// # Errors
    /// [`PkiError::Malformed`] if either PEM does not parse, [`PkiError::NotACa`] if the
    /// certificate is not a CA or the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| malformed(format!("CA key: {e}")))?;
        let der = pem_der(cert_pem, "CERTIFICATE")?;
        let cert = parse_cert(&der, "CA certificate")?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa {
                reason: "the certificate is not a CA (no CA:TRUE)",
            });
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::NotACa {
                reason: "the key does not belong to the certificate",
            });
        }
        if subject_key_id(&cert).is_none() {
            return Err(PkiError::NotACa {
                reason: "no subject key identifier",
            });
        }
        let validity = cert.validity();
        let not_before_ms = validity.not_before.timestamp() * 1000;
        let not_after_ms = validity.not_after.timestamp() * 1000;
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(|e| malformed(format!("CA certificate: {e}")))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            issuer,
            not_before_ms,
            not_after_ms,
        })
    }

    /// The CA certificate and its private key (PKCS#8), both PEM, for the server to persist
    /// (the key with mode 0600). The certificate is also what agents trust for the server.
    #[must_use]
    pub fn to_pem(&self) -> (String, String) {
        (self.cert_pem.clone(), self.issuer.key().serialize_pem())
    }

    /// The CA certificate, PEM (public: agents and the TLS verifier trust it).
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's validity window, unix ms.
    #[must_use]
    pub fn validity(&self) -> (i64, i64) {
        (self.not_before_ms, self.not_after_ms)
    }

    /// Signs an agent's request for `host_name`, the name the server decided (from the join token),
    /// valid from `now - CLOCK_SKEW` to `now + lifetime` ([`DEFAULT_AGENT_LIFETIME`] is the
    /// default).
    ///
    /// Only the request's public key is used; everything else in the certificate is decided here
    /// (see the crate's guarantees).
    ///
    /// # Errors
    /// [`PkiError::Malformed`] if the request does not parse or asks for unsupported extensions,
    /// [`PkiError::BadSignature`] if its self-signature does not verify,
    /// [`PkiError::NameMismatch`] if it names another host, [`PkiError::InvalidHostName`],
    /// [`PkiError::InvalidLifetime`] if `lifetime` is zero or over [`MAX_AGENT_LIFETIME`],
    /// [`PkiError::CaNotValid`] if the CA is not valid at `now` or ends before `now + lifetime`,
    /// [`PkiError::Crypto`] if signing fails.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        host_name: &str,
        now: i64,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        validate_host_name(host_name)?;
        if lifetime.is_zero() || lifetime > MAX_AGENT_LIFETIME {
            return Err(PkiError::InvalidLifetime {
                reason: "an agent certificate lives more than 0 s and at most 90 days",
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => PkiError::BadSignature,
            other => malformed(format!("certificate request: {other}")),
        })?;
        check_requested_names(&csr.params, host_name)?;

        let not_after_ms = add_ms(now, lifetime)?;
        if now < self.not_before_ms || not_after_ms > self.not_after_ms {
            return Err(PkiError::CaNotValid {
                not_before: self.not_before_ms,
                not_after: self.not_after_ms,
                now,
            });
        }
        let not_before = to_cert_time(now.saturating_sub(ms(CLOCK_SKEW)?).max(self.not_before_ms))?;
        let not_after = to_cert_time(not_after_ms)?;

        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            host_name
                .try_into()
                .map_err(|_| invalid_host(host_name, "not an IA5 string"))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial.clone());
        params.not_before = not_before.to_datetime();
        params.not_after = not_after.to_datetime();
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(crypto)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial: hex(&serial.to_bytes()),
            not_before: not_before.timestamp() * 1000,
            not_after: not_after.timestamp() * 1000,
        })
    }
}

impl CertificateAuthority {
    /// Issues the server's own TLS certificate for the agent listener: a fresh key, `serverAuth`,
    /// the given DNS names and IP addresses as SANs, valid from `now` (minus [`CLOCK_SKEW`]) for
    /// `lifetime`. Returns the certificate and the key, both PEM.
    ///
    /// # Errors
    /// [`PkiError::InvalidHostName`] when no name is given or one is not an IA5 string,
    /// [`PkiError::CaNotValid`] if the CA ends before `now + lifetime`, [`PkiError::Crypto`].
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[core::net::IpAddr],
        now: i64,
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(invalid_host("", "a server certificate needs a name or an address"));
        }
        let not_after_ms = add_ms(now, lifetime)?;
        if now < self.not_before_ms || not_after_ms > self.not_after_ms {
            return Err(PkiError::CaNotValid {
                not_before: self.not_before_ms,
                not_after: self.not_after_ms,
                now,
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns_names
                .first()
                .cloned()
                .unwrap_or_else(|| "endstate-server".to_owned()),
        );
        params.distinguished_name = dn;
        for name in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| invalid_host(name, "not an IA5 string"))?,
            ));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let not_before = to_cert_time(now.saturating_sub(ms(CLOCK_SKEW)?).max(self.not_before_ms))?;
        params.not_before = not_before.to_datetime();
        params.not_after = to_cert_time(not_after_ms)?.to_datetime();
        let cert = params.signed_by(&key, &self.issuer).map_err(crypto)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Checks that `cert_pem` is an agent certificate issued by the CA `ca_cert_pem` and valid at
/// `now` (unix ms), and returns who it identifies.
///
/// # Errors
/// The first check that fails, in this order: [`PkiError::Malformed`] (either certificate),
/// [`PkiError::NotACa`] (the CA certificate), [`PkiError::WrongIssuer`],
/// [`PkiError::BadSignature`], [`PkiError::NotYetValid`] / [`PkiError::Expired`],
/// [`PkiError::NotAgentCert`].
pub fn verify_agent_cert(ca_cert_pem: &str, cert_pem: &str, now: i64) -> Result<AgentIdentity, PkiError> {
    let der = pem_der(cert_pem, "CERTIFICATE")?;
    verify_agent_cert_der(ca_cert_pem, &der, now)
}

/// [`verify_agent_cert`] for a certificate in DER, as a TLS handshake gives it.
///
/// # Errors
/// As [`verify_agent_cert`].
pub fn verify_agent_cert_der(ca_cert_pem: &str, der: &[u8], now: i64) -> Result<AgentIdentity, PkiError> {
    let ca_der = pem_der(ca_cert_pem, "CERTIFICATE")?;
    let ca = parse_cert(&ca_der, "CA certificate")?;
    if !ca.is_ca() {
        return Err(PkiError::NotACa {
            reason: "the certificate is not a CA (no CA:TRUE)",
        });
    }
    let cert = parse_cert(der, "agent certificate")?;

    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PkiError::WrongIssuer);
    }
    if let (Some(aki), Some(ski)) = (authority_key_id(&cert), subject_key_id(&ca))
        && aki != ski
    {
        return Err(PkiError::WrongIssuer);
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| PkiError::BadSignature)?;

    let not_before = cert.validity().not_before.timestamp().saturating_mul(1000);
    let not_after = cert.validity().not_after.timestamp().saturating_mul(1000);
    if now < not_before {
        return Err(PkiError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(PkiError::Expired { not_after, now });
    }

    if cert.is_ca() {
        return Err(PkiError::NotAgentCert { reason: "it is a CA" });
    }
    let client_auth = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
    if !client_auth {
        return Err(PkiError::NotAgentCert {
            reason: "no client-auth extended key usage",
        });
    }
    let host_name = agent_name(&cert)?;
    Ok(AgentIdentity {
        host_name,
        serial: hex(cert.raw_serial()),
        not_before,
        not_after,
    })
}

/// Checks that `cert_pem` is an agent certificate of the CA valid at `now` (as
/// [`verify_agent_cert`]) and that its key signed `message` ([`AgentKey::sign_message`]); the
/// agent's identity.
///
/// # Errors
/// As [`verify_agent_cert`]; [`PkiError::BadSignature`] when the signature is not the key's.
pub fn verify_agent_signature(
    ca_cert_pem: &str,
    cert_pem: &str,
    now: i64,
    message: &[u8],
    signature: &[u8],
) -> Result<AgentIdentity, PkiError> {
    let identity = verify_agent_cert(ca_cert_pem, cert_pem, now)?;
    let der = pem_der(cert_pem, "CERTIFICATE")?;
    let cert = parse_cert(&der, "agent certificate")?;
    // Agent keys are ECDSA P-256 with SHA-256, the algorithm the CA signs with too.
    let algorithm =
        x509_parser::x509::AlgorithmIdentifier::new(x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256, None);
    let signature = x509_parser::der_parser::asn1_rs::BitString::new(0, signature);
    x509_parser::verify::verify_signature(cert.public_key(), &algorithm, &signature, message)
        .map_err(|_| PkiError::BadSignature)?;
    Ok(identity)
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at `now` (all
/// unix ms): from 2/3 of its lifetime on. A certificate with an empty or negative window is always
/// due.
#[must_use]
pub fn renew_due(not_before: i64, not_after: i64, now: i64) -> bool {
    if not_after <= not_before {
        return true;
    }
    let (not_before, not_after, now) = (i128::from(not_before), i128::from(not_after), i128::from(now));
    // now >= not_before + 2/3 (not_after - not_before), without rounding.
    3 * (now - not_before) >= 2 * (not_after - not_before)
}

// ---------------------------------------------------------------------------------------------
// The agent's key

/// An agent's key pair. The private key stays with the agent (its data directory).
pub struct AgentKey {
    key: KeyPair,
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKey").field("key", &"<redacted>").finish()
    }
}

impl AgentKey {
    /// A fresh ECDSA P-256 key.
    ///
    /// # Errors
    /// [`PkiError::Crypto`] if the random source fails.
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Self {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto)?,
        })
    }

    /// Loads a key saved by [`to_pem`](Self::to_pem).
    ///
    /// # Errors
    /// [`PkiError::Malformed`] if it does not parse.
    pub fn from_pem(key_pem: &str) -> Result<Self, PkiError> {
        Ok(Self {
            key: KeyPair::from_pem(key_pem).map_err(|e| malformed(format!("agent key: {e}")))?,
        })
    }

    /// The private key, PKCS#8 PEM, for the agent's data directory (mode 0600) and its TLS client
    /// configuration.
    #[must_use]
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs a request of the agent's (asking for its server's current address, say) with its
    /// key (ECDSA P-256, SHA-256, DER), so the server can check it with
    /// [`verify_agent_signature`] against the certificate it issued.
    ///
    /// # Errors
    /// [`PkiError::Crypto`] if signing fails.
    pub fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        rcgen::SigningKey::sign(&self.key, message).map_err(crypto)
    }

    /// A certificate signing request for `host_name` (CN and DNS SAN), PEM, signed by this key.
    ///
    /// # Errors
    /// [`PkiError::InvalidHostName`], or [`PkiError::Crypto`] if signing fails.
    pub fn csr(&self, host_name: &str) -> Result<String, PkiError> {
        validate_host_name(host_name)?;
        let mut params = CertificateParams::new(vec![host_name.to_string()])
            .map_err(|_| invalid_host(host_name, "not an IA5 string"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_name);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&self.key).map_err(crypto)?;
        csr.pem().map_err(crypto)
    }
}

// ---------------------------------------------------------------------------------------------
// Join tokens

/// Creates join tokens (see [`JoinToken::generate`]).
#[derive(Debug)]
pub struct JoinToken;

/// The secret of a join token: shown once to the operator, given to the agent, never stored.
/// Its `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSecret(String);

impl JoinSecret {
    /// The secret itself, to show once.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(<redacted>)")
    }
}

/// What the server keeps of a join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// SHA-256 of the secret, lowercase hex (also the key to look it up by, see [`join_hash`]).
    pub hash_hex: String,
    /// When it stops being usable, unix ms.
    pub expires_at: i64,
    /// Labels the enrolled host receives.
    pub labels: BTreeMap<String, String>,
}

impl JoinToken {
    /// A new join token usable from `now` for `ttl` ([`DEFAULT_JOIN_TTL`] is the default): its
    /// secret (`esj_` and 32 random bytes in hex) and the record to store.
    ///
    /// # Errors
    /// [`PkiError::InvalidLifetime`] if `ttl` is zero or overflows, [`PkiError::Crypto`] if the
    /// random source fails.
    pub fn generate(
        now: i64,
        ttl: Duration,
        labels: BTreeMap<String, String>,
    ) -> Result<(JoinSecret, JoinTokenRecord), PkiError> {
        if ttl.is_zero() {
            return Err(PkiError::InvalidLifetime {
                reason: "a join token lives more than 0 s",
            });
        }
        let expires_at = add_ms(now, ttl)?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| PkiError::Crypto {
            reason: format!("no randomness: {e}"),
        })?;
        let secret = format!("{JOIN_SECRET_PREFIX}{}", hex(&bytes));
        let record = JoinTokenRecord {
            hash_hex: join_hash(&secret),
            expires_at,
            labels,
        };
        Ok((JoinSecret(secret), record))
    }
}

impl JoinTokenRecord {
    /// Whether `secret` may enrol a host at `now` (unix ms); `used` is whether the store has
    /// already consumed this token.
    ///
    /// # Errors
    /// [`JoinError::Unknown`] if the secret does not match (compared in constant time on the
    /// hashes), then [`JoinError::AlreadyUsed`], then [`JoinError::Expired`] (from `expires_at`
    /// on).
    pub fn check(&self, secret: &str, now: i64, used: bool) -> Result<(), JoinError> {
        if !constant_time_eq(join_hash(secret).as_bytes(), self.hash_hex.as_bytes()) {
            return Err(JoinError::Unknown);
        }
        if used {
            return Err(JoinError::AlreadyUsed);
        }
        if now >= self.expires_at {
            return Err(JoinError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

/// The SHA-256 of a join secret, lowercase hex: what the store keeps and looks tokens up by.
#[must_use]
pub fn join_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Equal lengths and equal bytes, in time that depends only on the length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn crypto(e: rcgen::Error) -> PkiError {
    PkiError::Crypto { reason: e.to_string() }
}

fn malformed(reason: String) -> PkiError {
    PkiError::Malformed { reason }
}

fn invalid_host(name: &str, reason: &'static str) -> PkiError {
    PkiError::InvalidHostName {
        name: name.to_string(),
        reason,
    }
}

/// endstate's name rules (see `endstate_types::validate_name`), applied to host names.
fn validate_host_name(name: &str) -> Result<(), PkiError> {
    let Some(first) = name.chars().next() else {
        return Err(invalid_host(name, "empty"));
    };
    if name.len() > MAX_HOST_NAME_LEN {
        return Err(invalid_host(name, "longer than 63 characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(invalid_host(name, "does not start with a lowercase letter or digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid_host(name, "uses a character outside a-z 0-9 - _ ."));
    }
    Ok(())
}

/// Every name a request carries (CN and SANs) must be `host_name`, and there must be one.
fn check_requested_names(params: &CertificateParams, host_name: &str) -> Result<(), PkiError> {
    let mismatch = |requested: String| PkiError::NameMismatch {
        requested,
        expected: host_name.to_string(),
    };
    let mut named = false;
    for (ty, value) in params.distinguished_name.iter() {
        if *ty != DnType::CommonName {
            continue;
        }
        let cn = match value {
            DnValue::Utf8String(s) => s.clone(),
            DnValue::PrintableString(s) => s.as_str().to_string(),
            DnValue::Ia5String(s) => s.as_str().to_string(),
            other => return Err(mismatch(format!("{other:?}"))),
        };
        if cn != host_name {
            return Err(mismatch(cn));
        }
        named = true;
    }
    for san in &params.subject_alt_names {
        match san {
            SanType::DnsName(name) if name.as_str() == host_name => named = true,
            SanType::DnsName(name) => return Err(mismatch(name.as_str().to_string())),
            other => return Err(mismatch(format!("{other:?}"))),
        }
    }
    if named { Ok(()) } else { Err(mismatch(String::new())) }
}

/// Checks that `signature` is the CA's signature of `message` ([`CertificateAuthority::sign_message`]),
/// with the CA certificate the agent pinned at enrolment.
///
/// # Errors
/// [`PkiError::Malformed`] if the CA certificate does not parse, [`PkiError::BadSignature`] if the
/// signature does not verify.
pub fn verify_ca_signature(ca_cert_pem: &str, message: &[u8], signature: &[u8]) -> Result<(), PkiError> {
    let ca_der = pem_der(ca_cert_pem, "CERTIFICATE")?;
    let ca = parse_cert(&ca_der, "CA certificate")?;
    // The CA signs with the algorithm of its own (self-signed) certificate.
    let signature = x509_parser::der_parser::asn1_rs::BitString::new(0, signature);
    x509_parser::verify::verify_signature(ca.public_key(), &ca.signature_algorithm, &signature, message)
        .map_err(|_| PkiError::BadSignature)
}

fn pem_der(pem: &str, tag: &'static str) -> Result<Vec<u8>, PkiError> {
    let (rest, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| malformed(format!("not PEM ({tag} expected): {e}")))?;
    if parsed.label != tag {
        return Err(malformed(format!("PEM block is {:?}, {tag} expected", parsed.label)));
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(malformed(format!("trailing data after the {tag}")));
    }
    Ok(parsed.contents)
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| malformed(format!("{what}: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{what}: trailing bytes after the certificate")));
    }
    Ok(cert)
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|id| id.0.to_vec()),
        _ => None,
    })
}

/// The single DNS SAN, which must equal the CN.
fn agent_name(cert: &X509Certificate<'_>) -> Result<String, PkiError> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Err(PkiError::NotAgentCert {
            reason: "no subject alternative name",
        });
    };
    let [GeneralName::DNSName(name)] = san.value.general_names.as_slice() else {
        return Err(PkiError::NotAgentCert {
            reason: "not exactly one DNS name in the subject alternative name",
        });
    };
    let mut cns = cert.subject().iter_common_name();
    let cn = cns.next().and_then(|cn| cn.as_str().ok());
    if cn != Some(*name) || cns.next().is_some() {
        return Err(PkiError::NotAgentCert {
            reason: "the common name is not the host name",
        });
    }
    validate_host_name(name).map_err(|_| PkiError::NotAgentCert {
        reason: "the host name is not valid",
    })?;
    Ok((*name).to_string())
}

/// 16 random bytes, first byte in `0x40..=0x7f`: positive, a fixed 16-byte encoding, 126 bits.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Crypto {
        reason: format!("no randomness: {e}"),
    })?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ms(d: Duration) -> Result<i64, PkiError> {
    i64::try_from(d.as_millis()).map_err(|_| PkiError::InvalidLifetime { reason: "out of range" })
}

fn add_ms(now: i64, d: Duration) -> Result<i64, PkiError> {
    now.checked_add(ms(d)?)
        .ok_or(PkiError::InvalidLifetime { reason: "out of range" })
}

/// Unix ms to a certificate time (whole seconds, rounded down).
fn to_cert_time(unix_ms: i64) -> Result<ASN1Time, PkiError> {
    ASN1Time::from_timestamp(unix_ms.div_euclid(1000)).map_err(|_| PkiError::InvalidLifetime {
        reason: "a time outside what a certificate can hold",
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}
