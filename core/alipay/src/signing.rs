//! Requests to the v2 gateway (`gateway.do`): common parameters, the string to sign and the
//! form body.
//!
//! Rules (protocol reference §1.3): every parameter except `sign` is signed, `sign_type`
//! included; empty values are never sent nor signed; keys sort by byte order; values are raw
//! (no URL-encoding, `biz_content` exactly as sent); the timestamp is Beijing wall-clock time
//! whatever the host's time zone.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, Utc};

use super::Error;
use super::keys::{PrivateKey, SignType};

/// `yyyy-MM-dd HH:mm:ss` in GMT+8, the only timestamp form the gateway accepts.
pub fn beijing_timestamp(at: DateTime<Utc>) -> String {
    let beijing =
        FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!("+08:00 is a valid offset"));
    at.with_timezone(&beijing)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The string to sign: non-empty parameters except `sign`, sorted, `k=v` joined by `&`.
pub fn sign_content(params: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (key, value) in params {
        if key == "sign" || key.is_empty() || value.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    out
}

fn is_common(key: &str) -> bool {
    COMMON_PARAMS.contains(&key)
}

fn encode<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        form.append_pair(key, value);
    }
    form.finish()
}

/// The app identity a request is signed with.
#[derive(Debug, Clone)]
pub struct AppIdentity {
    pub app_id: String,
    pub sign_type: SignType,
    /// Certificate mode: `app_cert_sn` and `alipay_root_cert_sn`.
    pub cert_sns: Option<(String, String)>,
}

/// What a caller asks for; the common parameters are added by [`sign_request`].
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    pub method: String,
    /// The business parameters as JSON text (already AES-encrypted when `encrypt` is set).
    pub biz_content: Option<String>,
    pub notify_url: Option<String>,
    pub return_url: Option<String>,
    /// ISV mode: the token a merchant's authorisation gave the partner's app.
    pub app_auth_token: Option<String>,
    /// A user's `access_token`, for user-authorised APIs.
    pub auth_token: Option<String>,
    /// API-specific top-level parameters (e.g. `grant_type`, `code`).
    pub extra: BTreeMap<String, String>,
    /// Adds `encrypt_type=AES` (the caller encrypts `biz_content`).
    pub encrypted: bool,
}

/// Alipay's common request parameters (and `sign`). Every official SDK sends them in the URL's
/// query string and only the business parameters in the body (alipay-sdk-python
/// `DefaultAlipayClient.__prepare_request`; the Java SDK's `ProtocalMustParams` and
/// `ProtocalOptParams`); for an upload the body is multipart and cannot carry them.
pub const COMMON_PARAMS: &[&str] = &[
    "app_id",
    "method",
    "format",
    "return_url",
    "charset",
    "sign_type",
    "sign",
    "timestamp",
    "version",
    "notify_url",
    "app_auth_token",
    "app_cert_sn",
    "alipay_root_cert_sn",
    "encrypt_type",
    "auth_token",
    "alipay_sdk",
];

/// A signed request: every parameter, `sign` included.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub params: BTreeMap<String, String>,
    /// What was signed, for debugging signature mismatches (contains no key material).
    pub signed_content: String,
}

impl SignedRequest {
    /// `application/x-www-form-urlencoded` body of every parameter.
    pub fn form_body(&self) -> String {
        encode(self.params.iter())
    }

    /// The common parameters and `sign`, encoded for the URL's query string.
    pub fn query_string(&self) -> String {
        encode(self.params.iter().filter(|(k, _)| is_common(k)))
    }

    /// The business parameters (`biz_content` and the API's own top-level parameters).
    pub fn business_params(&self) -> impl Iterator<Item = (&String, &String)> {
        self.params.iter().filter(|(k, _)| !is_common(k))
    }

    /// [`Self::business_params`] as an `application/x-www-form-urlencoded` body.
    pub fn business_body(&self) -> String {
        encode(self.business_params())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// Builds the parameter set (common + spec), drops empties, signs it.
pub fn sign_request(
    key: &PrivateKey,
    identity: &AppIdentity,
    spec: &RequestSpec,
    now: DateTime<Utc>,
) -> Result<SignedRequest, Error> {
    if spec.method.is_empty()
        || !spec
            .method
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
    {
        return Err(Error::BadRequest(format!(
            "method {:?} is not an Alipay method name",
            spec.method
        )));
    }
    let mut params = BTreeMap::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            params.insert(key.to_owned(), value.to_owned());
        }
    };
    for (name, value) in &spec.extra {
        put(name, Some(value));
    }
    put("app_id", Some(&identity.app_id));
    put("method", Some(&spec.method));
    put("format", Some("json"));
    put("charset", Some("utf-8"));
    put("sign_type", Some(identity.sign_type.as_str()));
    put("timestamp", Some(&beijing_timestamp(now)));
    put("version", Some("1.0"));
    put("biz_content", spec.biz_content.as_deref());
    put("notify_url", spec.notify_url.as_deref());
    put("return_url", spec.return_url.as_deref());
    put("app_auth_token", spec.app_auth_token.as_deref());
    put("auth_token", spec.auth_token.as_deref());
    if spec.encrypted {
        put("encrypt_type", Some("AES"));
    }
    if let Some((app_sn, root_sn)) = &identity.cert_sns {
        put("app_cert_sn", Some(app_sn));
        put("alipay_root_cert_sn", Some(root_sn));
    }
    params.remove("sign");
    let signed_content = sign_content(&params);
    let sign = key.sign(identity.sign_type, &signed_content)?;
    params.insert("sign".to_owned(), sign);
    Ok(SignedRequest {
        params,
        signed_content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_timestamp_is_beijing_time_whatever_the_host_zone() {
        let at = Utc.with_ymd_and_hms(2024, 5, 20, 2, 30, 0).unwrap();
        assert_eq!(beijing_timestamp(at), "2024-05-20 10:30:00");
        let late = Utc.with_ymd_and_hms(2024, 12, 31, 20, 0, 1).unwrap();
        assert_eq!(
            beijing_timestamp(late),
            "2025-01-01 04:00:01",
            "the date rolls over at 16:00 UTC"
        );
    }

    #[test]
    fn sign_content_sorts_drops_empties_and_sign_and_keeps_raw_values() {
        let params: BTreeMap<String, String> = [
            ("sign_type", "RSA2"),
            ("b", ""),
            ("sign", "zzz"),
            ("a", "x y&z=%20"),
            ("biz_content", r#"{"k":"值/"}"#),
            ("App", "upper sorts first"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            sign_content(&params),
            r#"App=upper sorts first&a=x y&z=%20&biz_content={"k":"值/"}&sign_type=RSA2"#
        );
    }

    #[test]
    fn a_request_signs_sign_type_and_every_common_parameter() {
        let key = PrivateKey::generate().unwrap();
        let identity = AppIdentity {
            app_id: "2021004100000001".into(),
            sign_type: SignType::Rsa2,
            cert_sns: None,
        };
        let spec = RequestSpec {
            method: "alipay.system.oauth.token".into(),
            extra: [
                ("grant_type".to_owned(), "authorization_code".to_owned()),
                ("code".to_owned(), "abc".to_owned()),
            ]
            .into(),
            app_auth_token: Some(String::new()),
            ..RequestSpec::default()
        };
        let at = Utc.with_ymd_and_hms(2024, 5, 20, 2, 30, 0).unwrap();
        let signed = sign_request(&key, &identity, &spec, at).unwrap();
        assert_eq!(
            signed.signed_content,
            "app_id=2021004100000001&charset=utf-8&code=abc&format=json&grant_type=authorization_code\
             &method=alipay.system.oauth.token&sign_type=RSA2&timestamp=2024-05-20 10:30:00&version=1.0"
        );
        assert!(
            signed.get("app_auth_token").is_none(),
            "empty parameters are not sent"
        );
        assert!(key.public_key().verify(
            SignType::Rsa2,
            signed.signed_content.as_bytes(),
            signed.get("sign").unwrap()
        ));
        let body = signed.form_body();
        assert!(body.contains("timestamp=2024-05-20+10%3A30%3A00"), "{body}");
        assert!(
            sign_request(
                &key,
                &identity,
                &RequestSpec {
                    method: "Bad Method".into(),
                    ..RequestSpec::default()
                },
                at
            )
            .is_err()
        );
    }
}
