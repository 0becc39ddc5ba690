//! Synchronous gateway responses: finding the exact signed text, verifying it, and turning
//! `code`/`sub_code` into typed outcomes.
//!
//! Rules (protocol reference §2): the signed content is the raw text of the
//! `<method>_response` (else `error_response`) value, found by brace matching that respects
//! strings and escapes; a string value (AES) is signed with its quotes; if verification fails
//! and the text holds `\/`, it is retried once with `/`; an unsigned `error_response` is a
//! failure that may change no state.

use std::borrow::Cow;

use serde_json::Value;

use super::Error;
use super::keys::{PublicKey, SignType};

/// The JSON key holding a method's response: dots become underscores, `_response` appended.
pub fn response_key(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// The raw text of the value of top-level key `key` in `body`: an object from `{` to its
/// matching `}`, or a string token with both quotes. `None` when the key is absent at the top
/// level or the value is neither.
pub fn extract_value<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let bytes = body.as_bytes();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(bytes, i);
        match bytes.get(i) {
            Some(b'}') | None => return None,
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'"') => {}
            Some(_) => return None,
        }
        let name_end = string_end(bytes, i)?;
        let name = &body[i + 1..name_end - 1];
        i = skip_ws(bytes, name_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(bytes, i + 1);
        let value_end = value_end(bytes, i)?;
        if name == key {
            let value = &body[i..value_end];
            return match bytes.get(i) {
                Some(b'{') | Some(b'"') => Some(value),
                _ => None,
            };
        }
        i = value_end;
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index just past the closing quote of the string starting at `start` (a `"`).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Index just past the JSON value starting at `start`.
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match bytes.get(start)? {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = start;
            while i < bytes.len()
                && !matches!(bytes[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// A verified response node.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The exact text that was signed (a JSON object, or a quoted AES ciphertext).
    pub signed_text: String,
    /// `alipay_cert_sn` beside the node, in certificate mode.
    pub alipay_cert_sn: Option<String>,
    /// Whether the node is `error_response` rather than the method's own.
    pub is_error_node: bool,
}

/// Where the response's signature is checked against: one key, or (certificate mode) the key
/// of the certificate the response names.
pub trait KeyLookup {
    fn key_for(&self, alipay_cert_sn: Option<&str>) -> Result<Cow<'_, PublicKey>, Error>;
}

impl KeyLookup for PublicKey {
    fn key_for(&self, _: Option<&str>) -> Result<Cow<'_, PublicKey>, Error> {
        Ok(Cow::Borrowed(self))
    }
}

/// Finds the method's node (or `error_response`), checks its signature and returns it.
pub fn verify_response(
    body: &str,
    method: &str,
    sign_type: SignType,
    keys: &impl KeyLookup,
) -> Result<Verified, Error> {
    let parsed: Value =
        serde_json::from_str(body).map_err(|_| Error::MalformedResponse("the body is not JSON"))?;
    let own_key = response_key(method);
    let (node, is_error_node) = match extract_value(body, &own_key) {
        Some(node) => (node, false),
        None => match extract_value(body, "error_response") {
            Some(node) => (node, true),
            None => return Err(Error::MalformedResponse("no response node for the method")),
        },
    };
    let sign = parsed.get("sign").and_then(Value::as_str);
    let cert_sn = parsed
        .get("alipay_cert_sn")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(sign) = sign else {
        if is_error_node {
            let (code, sub_code, msg) = codes_of(node);
            return Err(Error::UnsignedError {
                code,
                sub_code,
                msg,
            });
        }
        return Err(Error::InvalidSignature);
    };
    let key = keys.key_for(cert_sn.as_deref())?;
    let verified = key.verify(sign_type, node.as_bytes(), sign)
        || (node.contains("\\/")
            && key.verify(sign_type, node.replace("\\/", "/").as_bytes(), sign));
    if !verified {
        return Err(Error::InvalidSignature);
    }
    Ok(Verified {
        signed_text: node.to_owned(),
        alipay_cert_sn: cert_sn,
        is_error_node,
    })
}

fn codes_of(node: &str) -> (String, Option<String>, String) {
    let value: Value = serde_json::from_str(node).unwrap_or(Value::Null);
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    (
        text("code").unwrap_or_default(),
        text("sub_code"),
        text("msg").unwrap_or_default(),
    )
}

/// The business outcome of a verified JSON node: `Ok(node)` for `code == 10000`, and for a node
/// with neither `code` nor `sub_code` (a successful `alipay.system.oauth.token` answer carries
/// no code at all; the Java SDK's `isSuccess` is likewise "no `sub_code`"); else the gateway
/// error with its codes. `10003` (a payment waiting for the buyer) comes back as an error of
/// kind [`GatewayErrorKind::InProcess`], for the caller to poll.
pub fn outcome(node: Value) -> Result<Value, Error> {
    let code = node
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if code == "10000" || (node.get("code").is_none() && node.get("sub_code").is_none()) {
        return Ok(node);
    }
    let text = |k: &str| node.get(k).and_then(Value::as_str).map(str::to_owned);
    Err(Error::Gateway(GatewayError {
        kind: GatewayErrorKind::of(&code),
        code,
        msg: text("msg").unwrap_or_default(),
        sub_code: text("sub_code"),
        sub_msg: text("sub_msg"),
    }))
}

/// A verified business or gateway failure reported by Alipay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewayError {
    pub kind: GatewayErrorKind,
    pub code: String,
    pub msg: String,
    pub sub_code: Option<String>,
    pub sub_msg: Option<String>,
}

/// Alipay's public `code` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayErrorKind {
    /// 10003: the payment waits for the buyer (a password or confirmation); poll the trade.
    InProcess,
    /// 20000: the outcome is unknown; query before retrying anything that moves money.
    ServiceUnavailable,
    /// 20001: the token lacks permission.
    InsufficientTokenPermission,
    /// 40001
    MissingParameter,
    /// 40002 (bad signature, timestamp, app id…)
    InvalidParameter,
    /// 40003
    InsufficientConditions,
    /// 40004: a business failure; `sub_code` says which.
    BusinessFailed,
    /// 40006
    InsufficientIsvPermission,
    Other,
}

impl GatewayErrorKind {
    pub fn of(code: &str) -> Self {
        match code {
            "10003" => Self::InProcess,
            "20000" => Self::ServiceUnavailable,
            "20001" => Self::InsufficientTokenPermission,
            "40001" => Self::MissingParameter,
            "40002" => Self::InvalidParameter,
            "40003" => Self::InsufficientConditions,
            "40004" => Self::BusinessFailed,
            "40006" => Self::InsufficientIsvPermission,
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn extraction_respects_strings_escapes_and_nesting() {
        let body = r#"{"x_response":{"a":"}{\"}","b":{"c":[1,{"d":"]"}]}},"sign":"s"}"#;
        assert_eq!(
            extract_value(body, "x_response"),
            Some(r#"{"a":"}{\"}","b":{"c":[1,{"d":"]"}]}}"#)
        );
        assert_eq!(extract_value(body, "sign"), Some(r#""s""#));
        assert_eq!(extract_value(body, "c"), None, "only top-level keys");
        let spaced = "{ \"sign\" : \"s\" ,\n \"x_response\" :\t{\"k\": 1 } }";
        assert_eq!(extract_value(spaced, "x_response"), Some("{\"k\": 1 }"));
        assert_eq!(
            extract_value("{\"x_response\":{\"unterminated\":", "x_response"),
            None
        );
        assert_eq!(extract_value("[]", "x"), None);
    }

    fn signed_body(key: &PrivateKey, node_key: &str, node: &str, extra: &str) -> String {
        let sign = key.sign(SignType::Rsa2, node).unwrap();
        format!("{{\"{node_key}\":{node},{extra}\"sign\":\"{sign}\"}}")
    }

    #[test]
    fn a_signed_response_verifies_and_a_tampered_one_does_not() {
        let key = PrivateKey::generate().unwrap();
        let node = r#"{"code":"10000","msg":"Success","template_id":"20240520000000000001","url":"https:\/\/a.b\/c"}"#;
        let body = signed_body(
            &key,
            "alipay_marketing_card_template_create_response",
            node,
            "",
        );
        let verified = verify_response(
            &body,
            "alipay.marketing.card.template.create",
            SignType::Rsa2,
            key.public_key(),
        )
        .unwrap();
        assert_eq!(verified.signed_text, node);
        let tampered = body.replace("20240520000000000001", "20240520000000000002");
        assert!(matches!(
            verify_response(
                &tampered,
                "alipay.marketing.card.template.create",
                SignType::Rsa2,
                key.public_key()
            ),
            Err(Error::InvalidSignature)
        ));
    }

    #[test]
    fn the_escaped_slash_fallback_and_quoted_ciphertext() {
        let key = PrivateKey::generate().unwrap();
        // Signed over the unescaped text, sent with `\/`.
        let plain = r#"{"code":"10000","url":"https://x/y"}"#;
        let sign = key.sign(SignType::Rsa2, plain).unwrap();
        let body = format!(
            r#"{{"m_response":{{"code":"10000","url":"https:\/\/x\/y"}},"sign":"{sign}"}}"#
        );
        assert!(verify_response(&body, "m", SignType::Rsa2, key.public_key()).is_ok());
        // AES: the string token with its quotes is what is signed.
        let cipher = r#""q1w2e3r4+/=""#;
        let body = signed_body(&key, "m_response", cipher, "");
        assert_eq!(
            verify_response(&body, "m", SignType::Rsa2, key.public_key())
                .unwrap()
                .signed_text,
            cipher
        );
    }

    #[test]
    fn an_unsigned_error_response_is_a_failure_with_its_codes() {
        let key = PrivateKey::generate().unwrap();
        let body = r#"{"error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id","sub_msg":"无效的AppID参数"}}"#;
        match verify_response(body, "alipay.trade.query", SignType::Rsa2, key.public_key()) {
            Err(Error::UnsignedError { code, sub_code, .. }) => {
                assert_eq!(code, "40002");
                assert_eq!(sub_code.as_deref(), Some("isv.invalid-app-id"));
            }
            other => panic!("{other:?}"),
        }
        let unsigned_success = r#"{"alipay_trade_query_response":{"code":"10000"}}"#;
        assert!(matches!(
            verify_response(
                unsigned_success,
                "alipay.trade.query",
                SignType::Rsa2,
                key.public_key()
            ),
            Err(Error::InvalidSignature)
        ));
    }

    #[test]
    fn codes_map_to_kinds() {
        let error = outcome(serde_json::json!({"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST"})).unwrap_err();
        match error {
            Error::Gateway(g) => {
                assert_eq!(g.kind, GatewayErrorKind::BusinessFailed);
                assert_eq!(g.sub_code.as_deref(), Some("ACQ.TRADE_NOT_EXIST"));
            }
            other => panic!("{other:?}"),
        }
        assert!(outcome(serde_json::json!({"code":"10000"})).is_ok());
    }

    #[test]
    fn an_oauth_token_answer_without_a_code_is_a_success_and_10003_asks_to_poll() {
        // The shape of a real `alipay_system_oauth_token_response` (OpenID-mode app).
        let token = serde_json::json!({
            "access_token": "authusrB1", "auth_start": "2025-10-15 13:19:21", "expires_in": 1296000,
            "re_expires_in": 2592000, "refresh_token": "authusrB2", "open_id": "083lxyz"
        });
        assert_eq!(outcome(token.clone()).unwrap(), token);
        let refused =
            serde_json::json!({"sub_code": "isv.code-invalid", "sub_msg": "授权码code无效"});
        assert!(
            outcome(refused).is_err(),
            "a sub_code without a code is no success"
        );
        let waiting = serde_json::json!({"code": "10003", "msg": " order success pay inprocess", "out_trade_no": "T1"});
        match outcome(waiting) {
            Err(Error::Gateway(g)) => assert_eq!(g.kind, GatewayErrorKind::InProcess),
            other => panic!("{other:?}"),
        }
    }
}
