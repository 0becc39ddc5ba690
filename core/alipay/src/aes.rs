//! AES content encryption (`encrypt_type=AES`) and `my.getPhoneNumber` payloads:
//! AES-128-CBC, zero IV, PKCS#7 padding, standard base64 (protocol reference §5).

use aws_lc_rs::cipher::{
    AES_128, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use super::Error;

/// The console's 接口内容加密 key: base64 of 16 bytes.
pub struct AesKey(SecretBox<[u8; 16]>);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

impl AesKey {
    pub fn parse(text: &SecretString) -> Result<Self, Error> {
        let bytes = STANDARD
            .decode(text.expose_secret().trim().as_bytes())
            .map_err(|_| Error::BadKey {
                what: "AES key",
                reason: "it is not base64",
            })?;
        let key: [u8; 16] = bytes.try_into().map_err(|_| Error::BadKey {
            what: "AES key",
            reason: "it must be 16 bytes (AES-128)",
        })?;
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    pub fn encrypt(&self, plaintext: &str) -> Result<String, Error> {
        let key =
            UnboundCipherKey::new(&AES_128, self.0.expose_secret()).map_err(|_| Error::Aes)?;
        let key = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| Error::Aes)?;
        let mut data = plaintext.as_bytes().to_vec();
        key.less_safe_encrypt(
            &mut data,
            EncryptionContext::Iv128(FixedLength::from([0u8; 16])),
        )
        .map_err(|_| Error::Aes)?;
        Ok(STANDARD.encode(data))
    }

    pub fn decrypt(&self, ciphertext: &str) -> Result<String, Error> {
        let mut data = STANDARD
            .decode(ciphertext.trim().as_bytes())
            .map_err(|_| Error::Aes)?;
        let key =
            UnboundCipherKey::new(&AES_128, self.0.expose_secret()).map_err(|_| Error::Aes)?;
        let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| Error::Aes)?;
        let plain = key
            .decrypt(
                &mut data,
                DecryptionContext::Iv128(FixedLength::from([0u8; 16])),
            )
            .map_err(|_| Error::Aes)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Error::Aes)
    }
}

/// The `response` a mini program's `my.getPhoneNumber` hands the server, verified and decrypted.
/// An encrypted payload (not starting with `{`) is verified over `"<ciphertext>"` with quotes.
pub fn open_phone_number(
    payload: &str,
    alipay_key: &super::keys::PublicKey,
    aes: &AesKey,
) -> Result<serde_json::Value, Error> {
    let outer: serde_json::Value = serde_json::from_str(payload)
        .map_err(|_| Error::MalformedResponse("the payload is not JSON"))?;
    let text = |k: &str| outer.get(k).and_then(serde_json::Value::as_str);
    let response = text("response").ok_or(Error::MalformedResponse("no response field"))?;
    if response.trim_start().starts_with('{') {
        // Plain error responses are not encrypted; they are still only errors.
        return Err(Error::MalformedResponse(
            "the response is not encrypted (an error from Alipay)",
        ));
    }
    let sign = text("sign").ok_or(Error::InvalidSignature)?;
    let sign_type = super::keys::SignType::parse(text("sign_type").unwrap_or("RSA2"))?;
    if !alipay_key.verify(sign_type, format!("\"{response}\"").as_bytes(), sign) {
        return Err(Error::InvalidSignature);
    }
    serde_json::from_str(&aes.decrypt(response)?)
        .map_err(|_| Error::MalformedResponse("the decrypted text is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AesKey {
        AesKey::parse(&SecretString::from("aoMq5bkLjvVvtI5CPhxUIg==")).unwrap()
    }

    #[test]
    fn round_trip_with_zero_iv_and_pkcs7() {
        let k = key();
        let text = r#"{"template_id":"2024","名字":"张三"}"#;
        let c = k.encrypt(text).unwrap();
        assert_eq!(k.decrypt(&c).unwrap(), text);
        assert_eq!(k.encrypt(text).unwrap(), c, "zero IV: deterministic");
        // 16 bytes of input get a full block of padding.
        assert_eq!(
            STANDARD
                .decode(k.encrypt("0123456789abcdef").unwrap())
                .unwrap()
                .len(),
            32
        );
        assert!(k.decrypt("not base64!").is_err());
        assert!(k.decrypt(&STANDARD.encode([0u8; 15])).is_err());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(AesKey::parse(&SecretString::from("c2hvcnQ=")).is_err());
        assert!(AesKey::parse(&SecretString::from("%%%")).is_err());
    }

    #[test]
    fn a_phone_number_payload_is_verified_over_the_quoted_ciphertext() {
        let alipay = super::super::keys::PrivateKey::generate().unwrap();
        let k = key();
        let cipher = k
            .encrypt(r#"{"code":"10000","msg":"Success","mobile":"1597671905"}"#)
            .unwrap();
        let sign = alipay
            .sign(super::super::keys::SignType::Rsa2, &format!("\"{cipher}\""))
            .unwrap();
        let payload = serde_json::json!({"response": cipher, "sign": sign, "sign_type": "RSA2", "encrypt_type": "AES", "charset": "UTF-8"}).to_string();
        let opened = open_phone_number(&payload, alipay.public_key(), &k).unwrap();
        assert_eq!(opened["mobile"], "1597671905");
        let unquoted_sign = alipay
            .sign(super::super::keys::SignType::Rsa2, &cipher)
            .unwrap();
        let bad = serde_json::json!({"response": cipher, "sign": unquoted_sign}).to_string();
        assert!(matches!(
            open_phone_number(&bad, alipay.public_key(), &k),
            Err(Error::InvalidSignature)
        ));
    }
}
