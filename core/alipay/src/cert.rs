//! Public-key-certificate mode (公钥证书模式): certificate serial names (SN), the root bundle's SN,
//! and trusting a downloaded Alipay certificate only when it chains to the stored root.
//!
//! Rules (protocol reference §4): `sn = hex(md5(issuer_rfc2253 + decimal(serial)))`; the issuer
//! string lists RDNs most specific first, `,`-separated; the root SN covers only certificates
//! signed with an RSA algorithm (OID `1.2.840.113549.1.1.*`), in file order, joined by `_`. The
//! bundle is parsed certificate by certificate and the outer signature OID is read before any
//! full parse, because Alipay's bundle holds SM2 and ECDSA roots strict parsers reject.
//!
//! A root is identified by its fingerprint, the SHA-256 of its DER, never by its name: anyone can
//! make a self-signed root with Alipay's subject name, and a certificate with the same issuer and
//! serial, hence the same SN, under it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use sha2::Sha256;
use x509_cert::Certificate;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::{Decode, Encode};

use super::Error;
use super::keys::PublicKey;

const RSA_FAMILY: &str = "1.2.840.113549.1.1.";
const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const SHA1_WITH_RSA: &str = "1.2.840.113549.1.1.5";

/// Fingerprints of the RSA-signed roots in Alipay's published root bundle (`alipayRootCert.crt`,
/// as shipped with Alipay's SDKs, e.g. `alipay-sdk-nodejs-all` `test/fixtures/alipayRootCert.crt`
/// at e1676390871eb7a69b4f81aa15de8327ac15738a): the only roots a certificate-mode answer can
/// chain to, since [`trust`] skips the bundle's SM2 (`NRCAC ROOTCA`) and ECDSA (`… E1`) roots.
/// In bundle order:
/// * `CN=Ant Financial Certification Authority R1, OU=Certification Authority, O=Ant Financial, C=CN`
///   (sha256WithRSA, serial 1fcfa18d6a480d11, 2018–2038); Alipay's RSA2 public certificates are
///   issued by its `… Class 2 R1` CA;
/// * `CN=iTrusChina Class 2 Root CA - G3, OU=China Trust Network, O=iTrusChina, C=CN`
///   (sha1WithRSA, serial 10c764e9d560384212d9c08fd10e373fdd0fb396, 2013–2033).
pub const ALIPAY_PRODUCTION_ROOT_FINGERPRINTS: [&str; 2] = [
    "8458680229315741d3a9ab299ad357853ea7b8ac44248d65bcecc78869bebda7",
    "7dd16c32a554a6a77e842a879baaeb74ce0b25a8435a6acb0a4bd2e4b64cdc1f",
];

/// The DER blocks of every `CERTIFICATE` in a PEM text, in file order.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let text = body
                .take()
                .ok_or(Error::BadCertificate("an END line without BEGIN"))?;
            out.push(
                STANDARD
                    .decode(text.as_bytes())
                    .map_err(|_| Error::BadCertificate("a block is not base64"))?,
            );
        } else if let Some(text) = body.as_mut() {
            text.push_str(line);
        }
    }
    if body.is_some() {
        return Err(Error::BadCertificate("a certificate is not terminated"));
    }
    if out.is_empty() {
        return Err(Error::BadCertificate("no certificate found"));
    }
    Ok(out)
}

/// One DER TLV: (tag, content range, end), for the three fields of a certificate we need raw.
fn tlv(der: &[u8], at: usize) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let tag = *der.get(at)?;
    let first = *der.get(at + 1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *der.get(at + 2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let start = at + header;
    let end = start.checked_add(len)?;
    (end <= der.len()).then_some((tag, start..end, end))
}

/// The raw pieces of `Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature }`.
struct RawCert<'a> {
    tbs: &'a [u8],
    signature_oid: String,
    signature: &'a [u8],
}

fn raw_cert(der: &[u8]) -> Option<RawCert<'_>> {
    let (0x30, outer, _) = tlv(der, 0)? else {
        return None;
    };
    let (0x30, _, tbs_end) = tlv(der, outer.start)? else {
        return None;
    };
    let tbs = &der[outer.start..tbs_end];
    let (0x30, alg, alg_end) = tlv(der, tbs_end)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(der, alg.start)? else {
        return None;
    };
    let (0x03, bits, _) = tlv(der, alg_end)? else {
        return None;
    };
    let signature = der.get(bits.start + 1..bits.end)?;
    Some(RawCert {
        tbs,
        signature_oid: oid_string(&der[oid])?,
        signature,
    })
}

fn oid_string(bytes: &[u8]) -> Option<String> {
    let (&first, rest) = bytes.split_first()?;
    let mut parts = vec![u64::from(first / 40), u64::from(first % 40)];
    let mut value = 0u64;
    for &b in rest {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(value);
            value = 0;
        }
    }
    Some(
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The outer signature algorithm OID of a certificate, read without a full parse.
pub fn signature_oid(der: &[u8]) -> Result<String, Error> {
    raw_cert(der)
        .map(|c| c.signature_oid)
        .ok_or(Error::BadCertificate("not a DER certificate"))
}

fn attribute_name(atv: &AttributeTypeAndValue) -> Result<&'static str, Error> {
    Ok(match atv.oid.to_string().as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        _ => {
            return Err(Error::BadCertificate(
                "the issuer uses an attribute other than CN, OU, O, C, L, ST",
            ));
        }
    })
}

fn attribute_value(atv: &AttributeTypeAndValue) -> Result<String, Error> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::{Tag, Tagged};
    let value = &atv.value;
    let text = match value.tag() {
        Tag::PrintableString => PrintableStringRef::try_from(value).map(|s| s.as_str().to_owned()),
        Tag::Utf8String => Utf8StringRef::try_from(value).map(|s| s.as_str().to_owned()),
        Tag::Ia5String => Ia5StringRef::try_from(value).map(|s| s.as_str().to_owned()),
        _ => return Err(Error::BadCertificate("an issuer value is not a string")),
    }
    .map_err(|_| Error::BadCertificate("an issuer value does not decode"))?;
    // RFC 2253 §2.4 escaping.
    let mut out = String::new();
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// The RFC 2253 form of a name: RDNs from the most specific, `,` between, `+` inside one.
pub fn rfc2253(name: &x509_cert::name::Name) -> Result<String, Error> {
    let mut rdns = Vec::new();
    for rdn in name.iter_rdn() {
        let mut parts = Vec::new();
        for atv in rdn.iter() {
            parts.push(format!(
                "{}={}",
                attribute_name(atv)?,
                attribute_value(atv)?
            ));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

/// A big-endian unsigned integer in decimal, without leading zeros.
fn decimal(bytes: &[u8]) -> String {
    let mut digits: Vec<u8> = vec![0];
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut() {
            let v = u32::from(*d) * 256 + carry;
            *d = (v % 10) as u8;
            carry = v / 10;
        }
        while carry > 0 {
            digits.push((carry % 10) as u8);
            carry /= 10;
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    digits.iter().rev().map(|d| char::from(b'0' + d)).collect()
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse(der: &[u8]) -> Result<Certificate, Error> {
    Certificate::from_der(der).map_err(|_| Error::BadCertificate("the certificate does not parse"))
}

/// The SN of one certificate (DER).
pub fn cert_sn_der(der: &[u8]) -> Result<String, Error> {
    let cert = parse(der)?;
    let tbs = cert.tbs_certificate();
    let issuer = rfc2253(tbs.issuer())?;
    Ok(md5_hex(&format!(
        "{issuer}{}",
        decimal(tbs.serial_number().as_bytes())
    )))
}

/// `app_cert_sn` / `alipay_cert_sn` of the first certificate in a PEM file.
pub fn cert_sn(pem: &str) -> Result<String, Error> {
    let first = pem_certificates(pem)?
        .into_iter()
        .next()
        .ok_or(Error::BadCertificate("no certificate found"))?;
    cert_sn_der(&first)
}

/// `alipay_root_cert_sn` of a root bundle: the RSA-signed roots' SNs in file order, `_`-joined.
pub fn root_cert_sn(pem: &str) -> Result<String, Error> {
    let mut sns = Vec::new();
    for der in pem_certificates(pem)? {
        if signature_oid(&der)?.starts_with(RSA_FAMILY) {
            sns.push(cert_sn_der(&der)?);
        }
    }
    if sns.is_empty() {
        return Err(Error::BadCertificate("the bundle holds no RSA-signed root"));
    }
    Ok(sns.join("_"))
}

/// The RSA public key a certificate carries.
pub fn public_key(pem: &str) -> Result<PublicKey, Error> {
    let first = pem_certificates(pem)?
        .into_iter()
        .next()
        .ok_or(Error::BadCertificate("no certificate found"))?;
    public_key_der(&first)
}

fn public_key_der(der: &[u8]) -> Result<PublicKey, Error> {
    let cert = parse(der)?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|_| Error::BadCertificate("the public key does not encode"))?;
    PublicKey::from_der(&spki)
}

/// The fingerprint of one certificate: lowercase hex of the SHA-256 of its DER.
pub fn fingerprint_der(der: &[u8]) -> String {
    <Sha256 as sha2::Digest>::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fingerprint as written by people or tools (any case, `:` or spaces between bytes) in the
/// form [`fingerprint_der`] gives; `None` unless it is 32 bytes of hex.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The fingerprints of the roots in a bundle that [`trust`] may chain to (the RSA-signed ones),
/// in file order.
pub fn rsa_root_fingerprints(root_pem: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for der in pem_certificates(root_pem)? {
        if signature_oid(&der)?.starts_with(RSA_FAMILY) {
            out.push(fingerprint_der(&der));
        }
    }
    Ok(out)
}

/// A certificate found trustworthy, with the root that vouched for it.
#[derive(Debug, Clone)]
pub struct Anchored {
    pub sn: String,
    pub key: PublicKey,
    /// [`fingerprint_der`] of the root whose signature it carries.
    pub root_fingerprint: String,
}

/// Whether `cert_pem` (e.g. a rotated Alipay certificate from `alipay.open.app.alipaycert.download`)
/// was signed by one of the RSA roots in `root_pem` and is valid at `now`. Returns its SN and key.
pub fn trust(
    cert_pem: &str,
    root_pem: &str,
    now: DateTime<Utc>,
) -> Result<(String, PublicKey), Error> {
    trust_anchored(cert_pem, root_pem, now).map(|a| (a.sn, a.key))
}

/// [`trust`], also naming the root that signed the certificate: what is learnt from it is worth
/// only as much as that exact root.
pub fn trust_anchored(
    cert_pem: &str,
    root_pem: &str,
    now: DateTime<Utc>,
) -> Result<Anchored, Error> {
    let der = pem_certificates(cert_pem)?
        .into_iter()
        .next()
        .ok_or(Error::BadCertificate("no certificate found"))?;
    let cert = parse(&der)?;
    let raw = raw_cert(&der).ok_or(Error::BadCertificate("not a DER certificate"))?;
    let validity = cert.tbs_certificate().validity();
    let not_before = validity.not_before.to_unix_duration().as_secs();
    let not_after = validity.not_after.to_unix_duration().as_secs();
    let now_secs = now.timestamp().max(0).unsigned_abs();
    if now_secs < not_before || now_secs > not_after {
        return Err(Error::UntrustedCertificate(
            "it is outside its validity period",
        ));
    }
    let issuer = rfc2253(cert.tbs_certificate().issuer())?;
    for root_der in pem_certificates(root_pem)? {
        if !signature_oid(&root_der)?.starts_with(RSA_FAMILY) {
            continue;
        }
        let root = parse(&root_der)?;
        if rfc2253(root.tbs_certificate().subject())? != issuer {
            continue;
        }
        let root_key = public_key_der(&root_der)?;
        let sign_type = match raw.signature_oid.as_str() {
            SHA256_WITH_RSA => super::keys::SignType::Rsa2,
            SHA1_WITH_RSA => super::keys::SignType::Rsa,
            _ => {
                return Err(Error::UntrustedCertificate(
                    "it is signed with an algorithm we do not accept",
                ));
            }
        };
        if root_key.verify(sign_type, raw.tbs, &STANDARD.encode(raw.signature)) {
            return Ok(Anchored {
                sn: cert_sn_der(&der)?,
                key: public_key_der(&der)?,
                root_fingerprint: fingerprint_der(&root_der),
            });
        }
    }
    Err(Error::UntrustedCertificate(
        "it does not chain to the stored Alipay root",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_conversion_of_serials() {
        assert_eq!(decimal(&[]), "0");
        assert_eq!(decimal(&[0]), "0");
        assert_eq!(decimal(&[0x01, 0x00]), "256");
        assert_eq!(
            decimal(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            "18446744073709551615"
        );
    }

    #[test]
    fn oids_decode() {
        assert_eq!(
            oid_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]).unwrap(),
            SHA256_WITH_RSA
        );
    }

    #[test]
    fn malformed_pem_is_refused() {
        assert!(pem_certificates("").is_err());
        assert!(
            pem_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----")
                .is_err()
        );
        assert!(pem_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
        assert!(cert_sn("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err());
    }

    #[test]
    fn fingerprints_are_read_in_any_usual_spelling() {
        let plain = ALIPAY_PRODUCTION_ROOT_FINGERPRINTS[0];
        let colons = "84:58:68:02:29:31:57:41:D3:A9:AB:29:9A:D3:57:85:3E:A7:B8:AC:44:24:8D:65:BC:EC:C7:88:69:BE:BD:A7";
        assert_eq!(normalize_fingerprint(colons).as_deref(), Some(plain));
        assert_eq!(
            normalize_fingerprint(&plain.to_uppercase()).as_deref(),
            Some(plain)
        );
        assert_eq!(normalize_fingerprint(&plain[..62]), None);
        assert_eq!(normalize_fingerprint(&format!("{}zz", &plain[..62])), None);
        assert_eq!(normalize_fingerprint(""), None);
    }

    /// The pinned fingerprints are those of the RSA roots of Alipay's real bundle (from the
    /// shared reference, when present), in bundle order.
    #[test]
    fn the_pinned_fingerprints_are_alipays_published_rsa_roots() {
        let Some(samples) = crate::test_support::real_samples() else {
            return;
        };
        let root = samples["certificates"]["alipay_root_cert_pem"]
            .as_str()
            .unwrap();
        assert_eq!(
            rsa_root_fingerprints(root).unwrap(),
            ALIPAY_PRODUCTION_ROOT_FINGERPRINTS
        );
        assert_eq!(
            pem_certificates(root).unwrap().len(),
            4,
            "SM2 and ECDSA roots too"
        );
    }

    /// Alipay's real certificates (from the shared reference, when present): the SNs match what
    /// the official SDKs compute, and the SM2/ECDSA roots are skipped without failing.
    #[test]
    fn real_alipay_certificates_give_the_official_sns() {
        let Some(samples) = crate::test_support::real_samples() else {
            return;
        };
        let certs = &samples["certificates"];
        let expected = &certs["expected_sn"];
        let root = certs["alipay_root_cert_pem"].as_str().unwrap();
        assert_eq!(
            root_cert_sn(root).unwrap(),
            expected["alipay_root_cert_sn"].as_str().unwrap()
        );
        let app = certs["app_cert_pem_appid_2021001161683774"]
            .as_str()
            .unwrap();
        assert_eq!(
            cert_sn(app).unwrap(),
            expected["app_cert_sn"].as_str().unwrap()
        );
        let alipay = certs["alipay_public_cert_pem_rsa2"].as_str().unwrap();
        assert_eq!(
            cert_sn(alipay).unwrap(),
            expected["alipay_cert_sn"].as_str().unwrap()
        );
        public_key(alipay).unwrap();
    }
}
