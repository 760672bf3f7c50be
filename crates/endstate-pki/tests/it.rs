//! Enrolment end to end, and every refusal the CA and the join tokens make.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use endstate_pki::{
    AgentKey, CLOCK_SKEW, CertificateAuthority, DEFAULT_AGENT_LIFETIME, DEFAULT_CA_VALIDITY, JoinError, JoinToken,
    PkiError, join_hash, renew_due, verify_agent_cert,
};

/// 2026-11-22T00:00:00Z in unix ms.
const NOW: i64 = 1_795_305_600_000;
const HOUR_MS: i64 = 3_600_000;

/// A CA made a day before `NOW` (a certificate never starts before its CA).
fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("endstate", NOW - 24 * HOUR_MS, DEFAULT_CA_VALIDITY).unwrap()
}

fn enrol(ca: &CertificateAuthority, host: &str, now: i64, lifetime: Duration) -> endstate_pki::IssuedCert {
    let key = AgentKey::generate().unwrap();
    let csr = key.csr(host).unwrap();
    ca.sign_agent(&csr, host, now, lifetime).unwrap()
}

#[test]
fn enrolment_round_trip() {
    let ca = ca();
    let key = AgentKey::generate().unwrap();
    let csr = key.csr("web-1").unwrap();
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let issued = ca.sign_agent(&csr, "web-1", NOW, DEFAULT_AGENT_LIFETIME).unwrap();
    assert_eq!(issued.not_after, NOW + 24 * HOUR_MS);
    assert_eq!(issued.not_before, NOW - i64::try_from(CLOCK_SKEW.as_millis()).unwrap());
    assert_eq!(issued.serial.len(), 32, "16-byte serial: {}", issued.serial);

    let id = verify_agent_cert(ca.cert_pem(), &issued.cert_pem, NOW + HOUR_MS).unwrap();
    assert_eq!(id.host_name, "web-1");
    assert_eq!(id.serial, issued.serial);
    assert_eq!(id.not_after, issued.not_after);
    assert_eq!(id.not_before, issued.not_before);

    // Serials are random.
    let other = enrol(&ca, "web-1", NOW, DEFAULT_AGENT_LIFETIME);
    assert_ne!(other.serial, issued.serial);

    // The agent key survives a restart (PEM round trip) and signs the same identity again.
    let reloaded = AgentKey::from_pem(&key.to_pem()).unwrap();
    assert_eq!(reloaded.to_pem(), key.to_pem());
    let again = ca
        .sign_agent(&reloaded.csr("web-1").unwrap(), "web-1", NOW, DEFAULT_AGENT_LIFETIME)
        .unwrap();
    assert_eq!(
        verify_agent_cert(ca.cert_pem(), &again.cert_pem, NOW)
            .unwrap()
            .host_name,
        "web-1"
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let ours = ca();
    // Same name, different key: told apart by the authority key identifier.
    let same_name = ca();
    let issued = enrol(&same_name, "web-1", NOW, DEFAULT_AGENT_LIFETIME);
    assert_eq!(
        verify_agent_cert(ours.cert_pem(), &issued.cert_pem, NOW),
        Err(PkiError::WrongIssuer)
    );

    let other_name = CertificateAuthority::generate("someone-else", NOW - HOUR_MS, DEFAULT_CA_VALIDITY).unwrap();
    let issued = enrol(&other_name, "web-1", NOW, DEFAULT_AGENT_LIFETIME);
    assert_eq!(
        verify_agent_cert(ours.cert_pem(), &issued.cert_pem, NOW),
        Err(PkiError::WrongIssuer)
    );

    // A leaf is not a CA.
    let leaf = enrol(&ours, "web-1", NOW, DEFAULT_AGENT_LIFETIME);
    assert!(matches!(
        verify_agent_cert(&leaf.cert_pem, &leaf.cert_pem, NOW),
        Err(PkiError::NotACa { .. })
    ));
}

#[test]
fn expired_and_not_yet_valid_are_refused_with_the_times() {
    let ca = ca();
    let issued = enrol(&ca, "web-1", NOW, Duration::from_secs(3600));
    assert_eq!(issued.not_after, NOW + HOUR_MS);

    // The last valid instant, then one past it.
    assert!(verify_agent_cert(ca.cert_pem(), &issued.cert_pem, issued.not_after).is_ok());
    let late = issued.not_after + 1;
    assert_eq!(
        verify_agent_cert(ca.cert_pem(), &issued.cert_pem, late),
        Err(PkiError::Expired {
            not_after: NOW + HOUR_MS,
            now: late
        })
    );

    // Backdated by the clock skew allowance, and not before.
    let skew = i64::try_from(CLOCK_SKEW.as_millis()).unwrap();
    assert!(verify_agent_cert(ca.cert_pem(), &issued.cert_pem, NOW - skew).is_ok());
    let early = NOW - skew - 1;
    assert_eq!(
        verify_agent_cert(ca.cert_pem(), &issued.cert_pem, early),
        Err(PkiError::NotYetValid {
            not_before: NOW - skew,
            now: early
        })
    );
    let message = PkiError::Expired { not_after: 5, now: 6 }.to_string();
    assert!(message.contains('5') && message.contains('6'), "{message}");
}

#[test]
fn a_request_for_another_name_is_refused() {
    let ca = ca();
    let csr = AgentKey::generate().unwrap().csr("db-1").unwrap();
    assert_eq!(
        ca.sign_agent(&csr, "web-1", NOW, DEFAULT_AGENT_LIFETIME),
        Err(PkiError::NameMismatch {
            requested: "db-1".to_string(),
            expected: "web-1".to_string()
        })
    );

    // A request whose CN is right but which sneaks in a second SAN.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["web-1".to_string(), "server".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "web-1");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    assert!(matches!(
        ca.sign_agent(&csr, "web-1", NOW, DEFAULT_AGENT_LIFETIME),
        Err(PkiError::NameMismatch { requested, .. }) if requested == "server"
    ));

    // Host names follow endstate's name rules.
    assert!(matches!(
        AgentKey::generate().unwrap().csr("Web 1"),
        Err(PkiError::InvalidHostName { .. })
    ));
}

#[test]
fn the_certificate_carries_what_the_ca_decides_not_what_the_request_asks() {
    let ca = ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["web-1".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = ca.sign_agent(&csr, "web-1", NOW, DEFAULT_AGENT_LIFETIME).unwrap();
    // It verifies as an agent certificate, so it is not a CA and has client-auth.
    let id = verify_agent_cert(ca.cert_pem(), &issued.cert_pem, NOW).unwrap();
    assert_eq!(id.host_name, "web-1");
    // And it cannot act as a CA for anyone.
    assert!(matches!(
        verify_agent_cert(&issued.cert_pem, &issued.cert_pem, NOW),
        Err(PkiError::NotACa { .. })
    ));
}

#[test]
fn a_certificate_of_this_ca_without_the_agent_profile_is_refused() {
    let ca = ca();
    let (cert_pem, key_pem) = ca.to_pem();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, rcgen::KeyPair::from_pem(&key_pem).unwrap()).unwrap();
    let leaf = |eku: Vec<rcgen::ExtendedKeyUsagePurpose>, sans: Vec<String>| {
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "web-1");
        params.extended_key_usages = eku;
        params.use_authority_key_identifier_extension = true;
        params.not_before = x509_parser::time::ASN1Time::from_timestamp(NOW / 1000 - 60)
            .unwrap()
            .to_datetime();
        params.not_after = x509_parser::time::ASN1Time::from_timestamp(NOW / 1000 + 60)
            .unwrap()
            .to_datetime();
        params
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .pem()
    };
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let good = leaf(vec![ClientAuth], vec!["web-1".to_string()]);
    assert_eq!(verify_agent_cert(ca.cert_pem(), &good, NOW).unwrap().host_name, "web-1");

    let server = leaf(vec![ServerAuth], vec!["web-1".to_string()]);
    assert_eq!(
        verify_agent_cert(ca.cert_pem(), &server, NOW),
        Err(PkiError::NotAgentCert {
            reason: "no client-auth extended key usage"
        })
    );
    let two_names = leaf(vec![ClientAuth], vec!["web-1".to_string(), "web-2".to_string()]);
    assert!(matches!(
        verify_agent_cert(ca.cert_pem(), &two_names, NOW),
        Err(PkiError::NotAgentCert { .. })
    ));
    let cn_differs = leaf(vec![ClientAuth], vec!["web-2".to_string()]);
    assert!(matches!(
        verify_agent_cert(ca.cert_pem(), &cn_differs, NOW),
        Err(PkiError::NotAgentCert { .. })
    ));
}

#[test]
fn a_tampered_request_is_refused() {
    let ca = ca();
    let csr = AgentKey::generate().unwrap().csr("web-1").unwrap();
    // Change the CN from web-1 to web-2 inside the signed part.
    let tampered = replace_in_pem(&csr, "CERTIFICATE REQUEST", b"web-1", b"web-2");
    assert_eq!(
        ca.sign_agent(&tampered, "web-2", NOW, DEFAULT_AGENT_LIFETIME),
        Err(PkiError::BadSignature)
    );

    // Not a request at all.
    assert!(matches!(
        ca.sign_agent("hello", "web-1", NOW, DEFAULT_AGENT_LIFETIME),
        Err(PkiError::Malformed { .. })
    ));
}

#[test]
fn a_tampered_certificate_is_refused() {
    let ca = ca();
    let issued = enrol(&ca, "web-1", NOW, DEFAULT_AGENT_LIFETIME);
    let tampered = replace_in_pem(&issued.cert_pem, "CERTIFICATE", b"web-1", b"web-2");
    assert_eq!(
        verify_agent_cert(ca.cert_pem(), &tampered, NOW),
        Err(PkiError::BadSignature)
    );
    assert!(matches!(
        verify_agent_cert(ca.cert_pem(), "garbage", NOW),
        Err(PkiError::Malformed { .. })
    ));
    assert!(matches!(
        verify_agent_cert(ca.cert_pem(), &AgentKey::generate().unwrap().csr("web-1").unwrap(), NOW),
        Err(PkiError::Malformed { .. })
    ));
}

#[test]
fn the_ca_survives_a_pem_round_trip() {
    let ca = ca();
    let before = enrol(&ca, "web-1", NOW, DEFAULT_AGENT_LIFETIME);
    let (cert_pem, key_pem) = ca.to_pem();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let loaded = CertificateAuthority::from_pem(&cert_pem, &key_pem).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.validity(), ca.validity());
    assert_eq!(loaded.validity().0, NOW - 24 * HOUR_MS);

    // Certificates from before and after the reload verify against either.
    let after = enrol(&loaded, "web-2", NOW, DEFAULT_AGENT_LIFETIME);
    assert_eq!(
        verify_agent_cert(ca.cert_pem(), &after.cert_pem, NOW)
            .unwrap()
            .host_name,
        "web-2"
    );
    assert_eq!(
        verify_agent_cert(loaded.cert_pem(), &before.cert_pem, NOW)
            .unwrap()
            .host_name,
        "web-1"
    );

    // A key that is not the certificate's is refused.
    let (_, other_key) = self::ca().to_pem();
    assert!(matches!(
        CertificateAuthority::from_pem(&cert_pem, &other_key),
        Err(PkiError::NotACa { .. })
    ));
    // A leaf certificate is not a CA.
    assert!(matches!(
        CertificateAuthority::from_pem(&before.cert_pem, &key_pem),
        Err(PkiError::NotACa { .. })
    ));
    assert!(matches!(
        CertificateAuthority::from_pem("x", &key_pem),
        Err(PkiError::Malformed { .. })
    ));
    assert!(matches!(
        CertificateAuthority::from_pem(&cert_pem, "x"),
        Err(PkiError::Malformed { .. })
    ));
}

#[test]
fn the_ca_never_issues_past_its_own_validity() {
    let ca = CertificateAuthority::generate("endstate", NOW, Duration::from_secs(48 * 3600)).unwrap();
    let csr = AgentKey::generate().unwrap().csr("web-1").unwrap();
    assert!(
        ca.sign_agent(&csr, "web-1", NOW + 24 * HOUR_MS, DEFAULT_AGENT_LIFETIME)
            .is_ok()
    );
    assert!(matches!(
        ca.sign_agent(&csr, "web-1", NOW + 24 * HOUR_MS + 1000, DEFAULT_AGENT_LIFETIME),
        Err(PkiError::CaNotValid { .. })
    ));
    assert!(matches!(
        ca.sign_agent(&csr, "web-1", NOW - 1, DEFAULT_AGENT_LIFETIME),
        Err(PkiError::CaNotValid { .. })
    ));
    // A certificate never starts before its CA.
    assert_eq!(
        ca.sign_agent(&csr, "web-1", NOW, DEFAULT_AGENT_LIFETIME)
            .unwrap()
            .not_before,
        NOW
    );
    assert!(matches!(
        ca.sign_agent(&csr, "web-1", NOW, Duration::ZERO),
        Err(PkiError::InvalidLifetime { .. })
    ));
    assert!(matches!(
        CertificateAuthority::generate("endstate", NOW, Duration::ZERO),
        Err(PkiError::InvalidLifetime { .. })
    ));
}

#[test]
fn renewal_is_due_at_two_thirds_of_the_lifetime() {
    assert!(!renew_due(0, 3000, 0));
    assert!(!renew_due(0, 3000, 1999));
    assert!(renew_due(0, 3000, 2000));
    assert!(renew_due(0, 3000, 5000));
    // Not divisible by three: due at the first instant at or after 2/3.
    assert!(!renew_due(1000, 2000, 1666));
    assert!(renew_due(1000, 2000, 1667));
    // A 24 h certificate is renewed after 16 h.
    assert!(!renew_due(NOW, NOW + 24 * HOUR_MS, NOW + 16 * HOUR_MS - 1));
    assert!(renew_due(NOW, NOW + 24 * HOUR_MS, NOW + 16 * HOUR_MS));
    // An empty window is always due; extremes do not overflow.
    assert!(renew_due(5, 5, 0));
    assert!(!renew_due(i64::MIN, i64::MAX, 0));
    assert!(renew_due(i64::MIN, i64::MAX, i64::MAX));
}

#[test]
fn join_tokens() {
    let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
    let (secret, record) = JoinToken::generate(NOW, Duration::from_secs(3600), labels.clone()).unwrap();
    assert!(secret.expose().starts_with("esj_"));
    assert_eq!(secret.expose().len(), 4 + 64);
    assert!(
        !format!("{secret:?}").contains(&secret.expose()[4..]),
        "Debug must not print the secret"
    );
    assert_eq!(record.hash_hex, join_hash(secret.expose()));
    assert_ne!(record.hash_hex, secret.expose());
    assert_eq!(record.expires_at, NOW + HOUR_MS);
    assert_eq!(record.labels, labels);

    // The right secret, fresh and unused.
    assert_eq!(record.check(secret.expose(), NOW, false), Ok(()));
    assert_eq!(record.check(secret.expose(), NOW + HOUR_MS - 1, false), Ok(()));
    // A wrong secret, including one off by a character and an empty one.
    let (other, _) = JoinToken::generate(NOW, Duration::from_secs(3600), BTreeMap::new()).unwrap();
    assert_eq!(record.check(other.expose(), NOW, false), Err(JoinError::Unknown));
    let mut near = secret.expose().to_string();
    let last = if near.ends_with('0') { "1" } else { "0" };
    near.replace_range(near.len() - 1.., last);
    assert_eq!(record.check(&near, NOW, false), Err(JoinError::Unknown));
    assert_eq!(record.check("", NOW, false), Err(JoinError::Unknown));
    // Expired, from expires_at on.
    assert_eq!(
        record.check(secret.expose(), NOW + HOUR_MS, false),
        Err(JoinError::Expired {
            expires_at: NOW + HOUR_MS,
            now: NOW + HOUR_MS
        })
    );
    // Reused.
    assert_eq!(record.check(secret.expose(), NOW, true), Err(JoinError::AlreadyUsed));
    // A wrong secret says nothing about the token's state.
    assert_eq!(
        record.check(other.expose(), NOW + 2 * HOUR_MS, true),
        Err(JoinError::Unknown)
    );

    assert_ne!(secret, other, "secrets are random");
    assert!(JoinToken::generate(NOW, Duration::ZERO, BTreeMap::new()).is_err());
}

/// Decodes a PEM block, replaces the first occurrence of `from` in its DER, and re-encodes it.
fn replace_in_pem(pem: &str, label: &str, from: &[u8], to: &[u8]) -> String {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let mut der = parsed.contents;
    let at = der.windows(from.len()).position(|w| w == from).unwrap();
    der[at..at + to.len()].copy_from_slice(to);
    let body = base64(&der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_message_signed_by_the_ca_verifies_with_its_certificate_only() {
    let ca = ca();
    let message = br#"{"run":"run-1","action":"shop/flush","generation":3,"params":{"scope":"all"}}"#;
    let signature = ca.sign_message(message).unwrap();
    endstate_pki::verify_ca_signature(ca.cert_pem(), message, &signature).unwrap();

    let mut tampered = message.to_vec();
    tampered[10] ^= 1;
    assert_eq!(
        endstate_pki::verify_ca_signature(ca.cert_pem(), &tampered, &signature),
        Err(PkiError::BadSignature)
    );
    let other = CertificateAuthority::generate("someone-else", NOW - HOUR_MS, DEFAULT_CA_VALIDITY).unwrap();
    assert_eq!(
        endstate_pki::verify_ca_signature(other.cert_pem(), message, &signature),
        Err(PkiError::BadSignature)
    );
    assert_eq!(
        endstate_pki::verify_ca_signature(ca.cert_pem(), message, b"not a signature"),
        Err(PkiError::BadSignature)
    );
}

#[test]
fn an_agent_signs_a_request_with_its_key_and_only_its_certificate_verifies_it() {
    let ca = ca();
    let key = AgentKey::generate().unwrap();
    let issued = ca
        .sign_agent(&key.csr("web-1").unwrap(), "web-1", NOW, DEFAULT_AGENT_LIFETIME)
        .unwrap();
    let message = b"endstate-agent-endpoint web-1 1795305600";
    let signature = key.sign_message(message).unwrap();
    let identity =
        endstate_pki::verify_agent_signature(ca.cert_pem(), &issued.cert_pem, NOW, message, &signature).unwrap();
    assert_eq!(identity.host_name, "web-1");
    // Another message, another agent's certificate, or another CA: refused.
    assert!(matches!(
        endstate_pki::verify_agent_signature(ca.cert_pem(), &issued.cert_pem, NOW, b"something else", &signature),
        Err(PkiError::BadSignature)
    ));
    let other = enrol(&ca, "web-2", NOW, DEFAULT_AGENT_LIFETIME);
    assert!(matches!(
        endstate_pki::verify_agent_signature(ca.cert_pem(), &other.cert_pem, NOW, message, &signature),
        Err(PkiError::BadSignature)
    ));
    let stranger = CertificateAuthority::generate("other", NOW - HOUR_MS, DEFAULT_CA_VALIDITY).unwrap();
    assert!(
        endstate_pki::verify_agent_signature(stranger.cert_pem(), &issued.cert_pem, NOW, message, &signature).is_err()
    );
}
