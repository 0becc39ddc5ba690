//! The `/gateway.do` entry: reads the form (and multipart file parts), checks what Alipay's
//! gateway checks before any product sees the request, dispatches by `method`, and signs the
//! answer. Also the failure shape every product answers with.
//!
//! Invariant: nothing reaches a product handler unless the caller's signature verified against
//! its registered app key (and, for a cert-mode app, its certificate SNs matched).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDateTime, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use trellis_alipay::aes::AesKey;
use trellis_alipay::keys::{PublicKey, SignType};
use trellis_alipay::response::response_key;
use trellis_alipay::signing::{COMMON_PARAMS, sign_content};

use crate::Sandbox;

/// A gateway failure in Alipay's shape.
pub(crate) struct GatewayFailure {
    pub(crate) code: &'static str,
    pub(crate) msg: &'static str,
    pub(crate) sub_code: String,
    pub(crate) sub_msg: String,
}

pub(crate) fn fail(
    code: &'static str,
    sub_code: &str,
    sub_msg: impl Into<String>,
) -> GatewayFailure {
    let msg = match code {
        "20000" => "Service Currently Unavailable",
        "20001" => "Insufficient Token Permissions",
        "40001" => "Missing Required Arguments",
        "40002" => "Invalid Arguments",
        "40003" => "Insufficient Conditions",
        "40004" => "Business Failed",
        "40006" => "Insufficient Permissions",
        _ => "Failed",
    };
    GatewayFailure {
        code,
        msg,
        sub_code: sub_code.to_owned(),
        sub_msg: sub_msg.into(),
    }
}

/// A missing common or top-level parameter, with the sub_code Alipay's gateway table gives it
/// (`sign` is `isv.missing-signature`, not `isv.missing-sign`); a business field's absence is
/// [`crate::schema::Fields::missing`].
pub(crate) fn missing(field: &str) -> GatewayFailure {
    let sub_code = match field {
        "app_id" => "isv.missing-app-id",
        "method" => "isv.missing-method",
        "sign" => "isv.missing-signature",
        "sign_type" => "isv.missing-signature-type",
        "timestamp" => "isv.missing-timestamp",
        "version" => "isv.missing-version",
        _ => "isv.missing-parameter",
    };
    fail("40001", sub_code, format!("缺少必选参数 {field}"))
}

pub(crate) fn busy<E>(_: E) -> GatewayFailure {
    fail("20000", "isp.unknow-error", "系统繁忙")
}

pub(crate) type Outcome = Result<Value, GatewayFailure>;

pub(crate) async fn gateway(
    State(sandbox): State<Sandbox>,
    request: axum::extract::Request,
) -> Response {
    let uri: Uri = request.uri().clone();
    let mut params: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut files = BTreeMap::new();
    let multipart = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        use axum::extract::FromRequest;
        let Ok(mut form) = axum::extract::Multipart::from_request(request, &()).await else {
            return (StatusCode::BAD_REQUEST, "malformed multipart body").into_response();
        };
        while let Ok(Some(field)) = form.next_field().await {
            let name = field.name().unwrap_or_default().to_owned();
            let is_file = field.file_name().is_some();
            let file_name = field.file_name().unwrap_or_default().to_owned();
            let content_type = field.content_type().map(str::to_owned);
            let Ok(bytes) = field.bytes().await else {
                return (StatusCode::BAD_REQUEST, "malformed multipart body").into_response();
            };
            if is_file {
                // A file part names its file and its media type, as every SDK sends it.
                let Some(kind) = content_type else {
                    return failure_page(fail(
                        "40002",
                        "isv.invalid-file-extension",
                        format!("文件 {name} 缺少 Content-Type"),
                    ));
                };
                files.insert(name, (file_name, kind, bytes.to_vec()));
            } else if COMMON_PARAMS.contains(&name.as_str()) {
                // The SDKs send the common parameters in the URL; a multipart body cannot
                // carry them (the gateway does not read them there).
                continue;
            } else {
                params.insert(name, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    } else {
        let Ok(body) = axum::body::to_bytes(request.into_body(), 10 * 1024 * 1024).await else {
            return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
        };
        params.extend(url::form_urlencoded::parse(&body).into_owned());
    }
    let answer = sandbox.handle(params, files).await;
    ([("content-type", "application/json;charset=utf-8")], answer).into_response()
}

/// An unsigned gateway refusal, answered before any app is known.
fn failure_page(failure: GatewayFailure) -> Response {
    let node = json!({ "code": failure.code, "msg": failure.msg, "sub_code": failure.sub_code, "sub_msg": failure.sub_msg });
    (
        [("content-type", "application/json;charset=utf-8")],
        format!("{{\"error_response\":{node}}}"),
    )
        .into_response()
}

/// An uploaded file part: its file name, media type and bytes (not signed).
pub(crate) type Files = BTreeMap<String, (String, String, Vec<u8>)>;

impl Sandbox {
    /// The answer body for `app_id`: signed with the main key, or for a cert-mode app with the
    /// current certificate's key and its `alipay_cert_sn` beside the node.
    async fn sign_for(&self, app_id: &str, method: &str, node: &str) -> String {
        match self.cert_signer(app_id).await {
            Some((sn, key)) => match key.sign(SignType::Rsa2, node) {
                Ok(sign) => format!(
                    "{{\"{}\":{node},\"alipay_cert_sn\":\"{sn}\",\"sign\":\"{sign}\"}}",
                    response_key(method)
                ),
                Err(_) => String::new(),
            },
            None => self.sign_body(method, node).unwrap_or_default(),
        }
    }

    fn sign_body(&self, method: &str, node: &str) -> Result<String, trellis_alipay::Error> {
        let sign = self.inner.key.sign(SignType::Rsa2, node)?;
        Ok(format!(
            "{{\"{}\":{node},\"sign\":\"{sign}\"}}",
            response_key(method)
        ))
    }

    /// Answers one gateway request (the form and query parameters, merged; file parts apart,
    /// as they are not signed).
    async fn handle(&self, params: BTreeMap<String, String>, files: Files) -> String {
        let method = params.get("method").cloned().unwrap_or_default();
        match self.verify_and_dispatch(&params, &files).await {
            Ok((node, aes)) => {
                let node_text = node.to_string();
                let node_text = match aes {
                    Some(aes) => match aes.encrypt(&node_text) {
                        Ok(cipher) => format!("\"{cipher}\""),
                        Err(_) => node_text,
                    },
                    None => node_text,
                };
                let app_id = params.get("app_id").cloned().unwrap_or_default();
                self.sign_for(&app_id, &method, &node_text).await
            }
            Err((failure, signed)) => {
                let node = json!({ "code": failure.code, "msg": failure.msg, "sub_code": failure.sub_code, "sub_msg": failure.sub_msg }).to_string();
                if signed {
                    // Business failures of a known, verified app are signed, like Alipay's.
                    let app_id = params.get("app_id").cloned().unwrap_or_default();
                    self.sign_for(&app_id, &method, &node).await
                } else {
                    // Gateway-level refusals come back unsigned in error_response.
                    format!("{{\"error_response\":{node}}}")
                }
            }
        }
    }

    async fn verify_and_dispatch(
        &self,
        p: &BTreeMap<String, String>,
        files: &Files,
    ) -> Result<(Value, Option<AesKey>), (GatewayFailure, bool)> {
        let unsigned = |f| (f, false);
        for field in [
            "app_id",
            "method",
            "charset",
            "sign_type",
            "sign",
            "timestamp",
            "version",
        ] {
            if p.get(field).is_none_or(|v| v.is_empty()) {
                return Err(unsigned(missing(field)));
            }
        }
        let app_id = &p["app_id"];
        let app = self
            .store()
            .get("app", app_id)
            .await
            .map_err(|_| unsigned(fail("20000", "isp.unknow-error", "系统繁忙")))?
            .ok_or_else(|| unsigned(fail("40002", "isv.invalid-app-id", "无效的AppID参数")))?;
        let sign_type = SignType::parse(&p["sign_type"]).map_err(|_| {
            unsigned(fail(
                "40002",
                "isv.invalid-signature-type",
                "无效的签名类型",
            ))
        })?;
        if !p["charset"].eq_ignore_ascii_case("utf-8") {
            return Err(unsigned(fail("40002", "isv.invalid-charset", "字符集错误")));
        }
        if p["version"] != "1.0" {
            return Err(unsigned(fail(
                "40002",
                "isv.invalid-parameter",
                "version 须为 1.0",
            )));
        }
        if p.get("format")
            .is_some_and(|f| !f.eq_ignore_ascii_case("json"))
        {
            return Err(unsigned(fail(
                "40002",
                "isv.invalid-format",
                "无效的数据格式",
            )));
        }
        let stamp = NaiveDateTime::parse_from_str(&p["timestamp"], "%Y-%m-%d %H:%M:%S")
            .map_err(|_| unsigned(fail("40002", "isv.invalid-timestamp", "非法的时间戳参数")))?;
        let sent_utc = stamp - chrono::Duration::hours(8);
        if (Utc::now().naive_utc() - sent_utc).num_minutes().abs() > 30 {
            return Err(unsigned(fail(
                "40002",
                "isv.invalid-timestamp",
                "非法的时间戳参数",
            )));
        }
        let key = PublicKey::parse(app["app_public_key"].as_str().unwrap_or_default())
            .map_err(|_| unsigned(fail("40002", "isv.invalid-app-id", "应用公钥无效")))?;
        let content = sign_content(p);
        if !key.verify(sign_type, content.as_bytes(), &p["sign"]) {
            return Err(unsigned(fail(
                "40002",
                "isv.invalid-signature",
                format!(
                    "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：{content}"
                ),
            )));
        }
        if app["cert_mode"] == true {
            let ca = self
                .store()
                .get("sandbox", "ca")
                .await
                .map_err(|_| unsigned(busy(())))?
                .unwrap_or(Value::Null);
            if p.get("app_cert_sn").map(String::as_str) != app["app_cert_sn"].as_str() {
                return Err(unsigned(fail(
                    "40002",
                    "isv.invalid-app-cert-sn",
                    "应用公钥证书序列号不匹配",
                )));
            }
            if p.get("alipay_root_cert_sn").map(String::as_str) != ca["root_sn"].as_str() {
                return Err(unsigned(fail(
                    "40002",
                    "isv.invalid-alipay-root-cert-sn",
                    "支付宝根证书序列号不匹配",
                )));
            }
        }
        let aes = app["aes_key"]
            .as_str()
            .and_then(|k| AesKey::parse(&SecretString::from(k.to_owned())).ok());
        let encrypted = p.get("encrypt_type").map(String::as_str) == Some("AES");
        let biz_text = match (p.get("biz_content"), encrypted) {
            (Some(cipher), true) => {
                let aes = aes.as_ref().ok_or_else(|| {
                    unsigned(fail(
                        "40002",
                        "isv.decryption-error-not-valid-encrypt-key",
                        "应用未配置加密密钥",
                    ))
                })?;
                Some(aes.decrypt(cipher).map_err(|_| {
                    unsigned(fail("40002", "isv.decryption-error-unknown", "解密出错"))
                })?)
            }
            (text, _) => text.cloned(),
        };
        let biz: Value = match biz_text {
            Some(text) => serde_json::from_str(&text).map_err(|_| {
                unsigned(fail(
                    "40002",
                    "isv.invalid-parameter",
                    "biz_content 不是合法的 JSON",
                ))
            })?,
            None => json!({}),
        };
        let node = if p["method"] == "alipay.offline.material.image.upload" {
            self.image_upload(app_id, p, files).await
        } else {
            self.with_fault(
                app_id,
                &p["method"],
                self.dispatch(&p["method"], app_id, p, &biz),
            )
            .await
        }
        .map_err(|f| (f, true))?;
        let mut node = node;
        // Alipay's answers carry `code: 10000` — except a successful oauth.token, which has no
        // code at all, and those a product sets itself (a payment waiting: 10003).
        if let Value::Object(map) = &mut node
            && p["method"] != "alipay.system.oauth.token"
            && !map.contains_key("code")
        {
            map.insert("code".into(), json!("10000"));
            map.insert("msg".into(), json!("Success"));
        }
        Ok((node, if encrypted { aes } else { None }))
    }

    async fn dispatch(
        &self,
        method: &str,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        match method {
            "alipay.marketing.card.template.create" => self.template_create(app_id, biz).await,
            "alipay.marketing.card.template.modify" => self.template_modify(app_id, biz).await,
            "alipay.marketing.card.template.query" => self.template_query(app_id, biz).await,
            "alipay.marketing.card.formtemplate.set" => self.formtemplate_set(app_id, biz).await,
            "alipay.marketing.card.activateurl.apply" => self.activateurl_apply(app_id, biz).await,
            "alipay.marketing.card.activateform.query" => {
                self.activateform_query(app_id, p, biz).await
            }
            "alipay.marketing.card.open" => self.card_open(app_id, p, biz).await,
            "alipay.marketing.card.query" => self.card_query(app_id, biz).await,
            "alipay.marketing.card.update" => self.card_update(app_id, biz).await,
            "alipay.marketing.card.delete" => self.card_delete(app_id, biz).await,
            "alipay.system.oauth.token" => self.oauth_token(app_id, p).await,
            "alipay.user.info.share" => self.user_info(app_id, p).await,
            "alipay.trade.precreate" => self.trade_precreate(app_id, p, biz).await,
            "alipay.trade.create" => self.trade_create(app_id, p, biz).await,
            "alipay.trade.pay" => self.trade_pay(app_id, p, biz).await,
            "alipay.trade.query" => self.trade_query(app_id, biz).await,
            "alipay.trade.close" => self.trade_close(app_id, biz).await,
            "alipay.trade.cancel" => self.trade_cancel(app_id, biz).await,
            "alipay.trade.refund" => self.trade_refund(app_id, biz).await,
            "alipay.trade.fastpay.refund.query" => self.trade_refund_query(app_id, biz).await,
            "alipay.open.app.alipaycert.download" => self.cert_download(biz).await,
            _ => Err(fail(
                "40002",
                "isv.invalid-method",
                format!("不存在的方法名 {method}"),
            )),
        }
    }
}
