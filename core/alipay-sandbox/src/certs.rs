//! Minting the X.509 certificates of the sandbox's certificate authority for 公钥证书模式: a
//! root, the certificate of the key the sandbox signs cert-mode answers with, and app
//! certificates. Test-only material: it certifies nothing outside the sandbox. The CA's state
//! and the cert-mode endpoints that use these are in `certificates`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use secrecy::ExposeSecret;

use trellis_alipay::PrivateKey;

#[derive(Debug, thiserror::Error)]
#[error("sandbox certificate: {0}")]
pub struct Error(String);

fn err(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

fn pkcs8_pem(key: &PrivateKey) -> String {
    let body = key.to_pkcs8_base64();
    let lines: Vec<&str> = body
        .expose_secret()
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn rcgen_key(key: &PrivateKey) -> Result<KeyPair, Error> {
    KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8_pem(key), &rcgen::PKCS_RSA_SHA256).map_err(err)
}

fn name(cn: &str, ou: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "CN");
    dn.push(DnType::OrganizationName, "Trellis Sandbox");
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CommonName, cn);
    dn
}

fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Trellis Sandbox Root R1", "Certification Authority");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    params
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// An RSA public key as rcgen wants it: the PKCS#1 `RSAPublicKey` inside the SPKI.
struct RsaSubject(Vec<u8>);

impl RsaSubject {
    fn from_spki(spki_der: &[u8]) -> Result<Self, Error> {
        use rsa::pkcs1::EncodeRsaPublicKey;
        use rsa::pkcs8::DecodePublicKey;
        let key = rsa::PublicKey::from_public_key_der(spki_der).map_err(err)?;
        Ok(Self(key.to_pkcs1_der().map_err(err)?.as_bytes().to_vec()))
    }
}

impl rcgen::PublicKeyData for RsaSubject {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// A fresh self-signed RSA root (sha256WithRSA).
pub fn root(key: &PrivateKey) -> Result<String, Error> {
    let mut params = root_params();
    params.serial_number = Some(serial());
    Ok(params.self_signed(&rcgen_key(key)?).map_err(err)?.pem())
}

/// A certificate for `spki_der` with common name `cn`, signed by the root key.
pub fn issue(root_key: &PrivateKey, cn: &str, spki_der: &[u8]) -> Result<String, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn, "Alipay Sandbox");
    params.serial_number = Some(serial());
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let subject = RsaSubject::from_spki(spki_der)?;
    let issuer = Issuer::new(root_params(), rcgen_key(root_key)?);
    Ok(params.signed_by(&subject, &issuer).map_err(err)?.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_alipay::cert;

    #[test]
    fn issued_certificates_chain_to_the_root_and_give_sns() {
        let root_key = PrivateKey::generate().unwrap();
        let root_pem = root(&root_key).unwrap();
        let subject = PrivateKey::generate().unwrap();
        let pem = issue(&root_key, "sandbox alipay", subject.public_key().spki_der()).unwrap();
        let (sn, key) = cert::trust(&pem, &root_pem, chrono::Utc::now()).unwrap();
        assert_eq!(sn, cert::cert_sn(&pem).unwrap());
        assert_eq!(key.fingerprint(), subject.public_key().fingerprint());
        assert_eq!(cert::root_cert_sn(&root_pem).unwrap().len(), 32);
        let stranger = PrivateKey::generate().unwrap();
        let forged = issue(&stranger, "sandbox alipay", subject.public_key().spki_der()).unwrap();
        assert!(cert::trust(&forged, &root_pem, chrono::Utc::now()).is_err());
    }
}
