//! The offline Alipay sandbox: a local stand-in for Alipay's v2 gateway for tests, demos and
//! plugin authors without an Alipay account.
//!
//! Invariant: it rejects what Alipay rejects — every request's signature is verified against
//! the app public key registered with it (a bad one gets Alipay's `40002
//! isv.invalid-signature` shape) — and everything it answers or notifies is signed with its own
//! key, so the engine's verifier is exercised for real. State lives in the engine's database.

pub mod certs;
mod store;

use store::Store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{NaiveDateTime, Utc};
use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use trellis_alipay::aes::AesKey;
use trellis_alipay::keys::{PrivateKey, PublicKey, SignType};
use trellis_alipay::notify::ACK;
use trellis_alipay::response::response_key;
use trellis_alipay::signing::{beijing_timestamp, sign_content};

/// Alipay's retry schedule for unacknowledged notifications: 4m, 10m, 10m, 1h, 2h, 6h, 15h.
pub const RETRY_SCHEDULE_SECS: [u64; 7] = [240, 600, 600, 3600, 7200, 21600, 54000];

/// The most of a merchant callback's answer the sandbox hands back to whoever opened the link.
const MAX_CALLBACK_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sandbox storage failed: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("sandbox key: {0}")]
    Key(#[from] trellis_alipay::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The sandbox: its key, its storage, and how fast its clock for retries runs.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    key: PrivateKey,
    /// The URL this sandbox is reached at (for claim links), e.g. `http://127.0.0.1:8080/sandbox`.
    base_url: String,
    /// Divides the retry schedule: 1 is Alipay's real timing; tests compress it.
    time_scale: u64,
    http: reqwest::Client,
    /// The engine this sandbox is embedded in, if any: see [`Sandbox::target`].
    engine: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("base_url", &self.inner.base_url)
            .finish()
    }
}

/// A gateway failure in Alipay's shape.
struct GatewayFailure {
    code: &'static str,
    msg: &'static str,
    sub_code: String,
    sub_msg: String,
}

fn fail(code: &'static str, sub_code: &str, sub_msg: impl Into<String>) -> GatewayFailure {
    let msg = match code {
        "40001" => "Missing Required Arguments",
        "40002" => "Invalid Arguments",
        "40004" => "Business Failed",
        "20001" => "Insufficient Token Permissions",
        _ => "Failed",
    };
    GatewayFailure {
        code,
        msg,
        sub_code: sub_code.to_owned(),
        sub_msg: sub_msg.into(),
    }
}

fn missing(field: &str) -> GatewayFailure {
    fail(
        "40001",
        &format!("isv.missing-{}", field.replace('_', "-")),
        format!("缺少必选参数 {field}"),
    )
}

type Outcome = Result<Value, GatewayFailure>;

impl Sandbox {
    /// Opens the sandbox on the engine's database, creating its signing key on first use.
    /// `engine`: the address of the engine this sandbox is embedded in, which receives the
    /// callbacks and notifications addressed to host names (see [`Sandbox::target`]).
    pub async fn open(
        db: DatabaseConnection,
        base_url: &str,
        time_scale: u64,
        engine: Option<std::net::SocketAddr>,
    ) -> Result<Self, Error> {
        let store = Store(&db);
        let key = match store.get("sandbox", "signing_key").await? {
            Some(v) => PrivateKey::parse(&SecretString::from(
                v["pkcs8"].as_str().unwrap_or_default().to_owned(),
            ))?,
            None => {
                // The sandbox's own key plays Alipay's; it protects nothing real.
                let key = PrivateKey::generate()?;
                store
                    .put(
                        "sandbox",
                        "signing_key",
                        &json!({ "pkcs8": key.to_pkcs8_base64().expose_secret() }),
                    )
                    .await?;
                key
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                key,
                base_url: base_url.trim_end_matches('/').to_owned(),
                time_scale: time_scale.max(1),
                http,
                engine,
            }),
        })
    }

    /// The public key merchants configure as "Alipay public key" when using this sandbox.
    pub fn public_key(&self) -> &PublicKey {
        self.inner.key.public_key()
    }

    /// The gateway URL to put in a merchant's credentials.
    pub fn gateway_url(&self) -> String {
        format!("{}/gateway.do", self.inner.base_url)
    }

    fn store(&self) -> Store<'_> {
        Store(&self.inner.db)
    }

    /// Registers (or replaces) an app: its public key and optional AES key.
    pub async fn register_app(
        &self,
        app_id: &str,
        app_public_key: &str,
        aes_key: Option<&str>,
        cert_mode: bool,
    ) -> Result<Value, Error> {
        let key = PublicKey::parse(app_public_key)?;
        if let Some(aes) = aes_key {
            AesKey::parse(&SecretString::from(aes.to_owned()))?;
        }
        let mut record =
            json!({ "app_public_key": app_public_key, "aes_key": aes_key, "cert_mode": cert_mode });
        let mut answer = json!({});
        if cert_mode {
            let ca = self.authority().await?;
            let root_key = ca_key(&ca, "root_key")?;
            let app_cert = certs::issue(&root_key, &format!("app {app_id}"), key.spki_der())
                .map_err(|e| Error::Invalid(e.to_string()))?;
            record["app_cert_sn"] = json!(trellis_alipay::cert::cert_sn(&app_cert)?);
            let current = ca["current_sn"].as_str().unwrap_or_default();
            answer = json!({
                "app_cert": app_cert,
                "alipay_cert": ca["certs"][current]["pem"],
                "alipay_root_cert": ca["root_pem"],
            });
        }
        self.store().put("app", app_id, &record).await?;
        Ok(answer)
    }

    /// The sandbox's certificate authority, created on first use.
    async fn authority(&self) -> Result<Value, Error> {
        if let Some(ca) = self.store().get("sandbox", "ca").await? {
            return Ok(ca);
        }
        let root_key = PrivateKey::generate()?;
        let root_pem = certs::root(&root_key).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut ca = json!({
            "root_key": root_key.to_pkcs8_base64().expose_secret(),
            "root_pem": root_pem,
            "root_sn": trellis_alipay::cert::root_cert_sn(&root_pem)?,
            "certs": {},
        });
        self.rotate_into(&mut ca)?;
        self.store().put("sandbox", "ca", &ca).await?;
        Ok(ca)
    }

    /// Issues a new Alipay signing key and certificate and makes them current.
    fn rotate_into(&self, ca: &mut Value) -> Result<String, Error> {
        let root_key = ca_key(ca, "root_key")?;
        let key = PrivateKey::generate()?;
        let pem = certs::issue(
            &root_key,
            "Alipay sandbox RSA2",
            key.public_key().spki_der(),
        )
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let sn = trellis_alipay::cert::cert_sn(&pem)?;
        ca["certs"][&sn] = json!({ "pem": pem, "key": key.to_pkcs8_base64().expose_secret() });
        ca["current_sn"] = json!(sn);
        Ok(sn)
    }

    /// Rotates the certificate cert-mode answers are signed with (Alipay does this every few
    /// years); the old one stays downloadable by its SN.
    pub async fn rotate_alipay_certificate(&self) -> Result<String, Error> {
        let mut ca = self.authority().await?;
        let sn = self.rotate_into(&mut ca)?;
        self.store().put("sandbox", "ca", &ca).await?;
        Ok(sn)
    }

    /// For a cert-mode app: the current certificate's SN and key to sign its answers with.
    async fn cert_signer(&self, app_id: &str) -> Option<(String, PrivateKey)> {
        let app = self.store().get("app", app_id).await.ok()??;
        if app["cert_mode"] != true {
            return None;
        }
        let ca = self.store().get("sandbox", "ca").await.ok()??;
        let sn = ca["current_sn"].as_str()?.to_owned();
        let key = PrivateKey::parse(&SecretString::from(
            ca["certs"][&sn]["key"].as_str()?.to_owned(),
        ))
        .ok()?;
        Some((sn, key))
    }

    /// The router: `/gateway.do`, app registration, simulated consumers and inspection.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/gateway.do", post(gateway))
            .route("/alipay-public-key", get(alipay_public_key))
            .route("/apps", post(register))
            .route("/certificates", get(certificates))
            .route("/rotate-alipay-cert", post(rotate_cert))
            .route("/cards/{biz_card_no}", get(card_state))
            .route("/trades/{app_id}/{out_trade_no}", get(trade_state))
            .route("/notifications", get(notifications))
            .route("/consumers/{user}/open-claim-link", post(open_claim_link))
            .route("/consumers/{user}/pay", post(pay))
            .with_state(self.clone())
    }

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
    async fn handle(
        &self,
        params: BTreeMap<String, String>,
        files: BTreeMap<String, Vec<u8>>,
    ) -> String {
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
        files: &BTreeMap<String, Vec<u8>>,
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
                        "isv.missing-encrypt-key",
                        "应用未配置加密密钥",
                    ))
                })?;
                Some(
                    aes.decrypt(cipher)
                        .map_err(|_| unsigned(fail("40002", "isv.decryption-error", "解密出错")))?,
                )
            }
            (text, _) => text.cloned(),
        };
        let biz: Value = match biz_text {
            Some(text) => serde_json::from_str(&text).map_err(|_| {
                unsigned(fail(
                    "40002",
                    "isv.invalid-biz-content",
                    "biz_content 不是合法的 JSON",
                ))
            })?,
            None => json!({}),
        };
        let node = if p["method"] == "alipay.offline.material.image.upload" {
            self.image_upload(app_id, p, files).await
        } else {
            self.dispatch(&p["method"], app_id, p, &biz).await
        }
        .map_err(|f| (f, true))?;
        let mut node = node;
        if let Value::Object(map) = &mut node {
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
            "alipay.trade.precreate" | "alipay.trade.create" | "alipay.trade.pay" => {
                self.trade_new(method, app_id, p, biz).await
            }
            "alipay.trade.query" => self.trade_query(app_id, biz).await,
            "alipay.trade.close" => self.trade_close(app_id, biz).await,
            "alipay.trade.refund" => self.trade_refund(app_id, biz).await,
            "alipay.open.app.alipaycert.download" => self.cert_download(biz).await,
            _ => Err(fail(
                "40004",
                "isv.invalid-method",
                format!("不存在的方法名 {method}"),
            )),
        }
    }

    // ----- certificates -------------------------------------------------------------------

    async fn cert_download(&self, biz: &Value) -> Outcome {
        let sn = text(biz, "alipay_cert_sn").ok_or_else(|| missing("alipay_cert_sn"))?;
        let ca = self
            .store()
            .get("sandbox", "ca")
            .await
            .map_err(busy)?
            .unwrap_or(Value::Null);
        let pem = ca["certs"][sn]["pem"]
            .as_str()
            .ok_or_else(|| fail("40004", "CERT_NOT_EXIST", "证书不存在"))?;
        use base64::Engine as _;
        Ok(
            json!({ "alipay_cert_content": base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()) }),
        )
    }

    // ----- materials ----------------------------------------------------------------------

    async fn image_upload(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Outcome {
        let kind = p
            .get("image_type")
            .map(|t| t.to_ascii_lowercase())
            .ok_or_else(|| missing("image_type"))?;
        if !["jpg", "jpeg", "png", "gif", "bmp"].contains(&kind.as_str()) {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "image_type 仅支持 jpg、png、gif、bmp",
            ));
        }
        p.get("image_name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("image_name"))?;
        let content = files
            .get("image_content")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| missing("image_content"))?;
        if content.len() > 2 * 1024 * 1024 {
            return Err(fail("40004", "IMAGE_SIZE_EXCEED", "图片不能超过 2M"));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
        let hex: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let image_id = format!("sbx{hex}");
        self.store()
            .put("image", &image_id, &json!({ "app_id": app_id, "name": p["image_name"], "type": kind, "size": content.len() }))
            .await
            .map_err(busy)?;
        Ok(
            json!({ "image_id": image_id, "image_url": format!("{}/images/{image_id}", self.inner.base_url) }),
        )
    }

    // ----- member card --------------------------------------------------------------------

    async fn template_create(&self, app_id: &str, biz: &Value) -> Outcome {
        let request_id = text(biz, "request_id").ok_or_else(|| missing("request_id"))?;
        if text(biz, "card_type") != Some("OUT_MEMBER_CARD") {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "card_type 必须为 OUT_MEMBER_CARD",
            ));
        }
        validate_template(biz)?;
        let idempotency = format!("{app_id}:{request_id}");
        if let Some(done) = self
            .store()
            .get("template_request", &idempotency)
            .await
            .map_err(busy)?
        {
            return Ok(json!({ "template_id": done["template_id"] }));
        }
        let template_id = format!("2026{:016}", fastish_number());
        let record = json!({ "app_id": app_id, "template": biz, "form": null });
        self.store()
            .put("template", &template_id, &record)
            .await
            .map_err(busy)?;
        self.store()
            .put(
                "template_request",
                &idempotency,
                &json!({ "template_id": template_id }),
            )
            .await
            .map_err(busy)?;
        Ok(json!({ "template_id": template_id }))
    }

    async fn template_of(
        &self,
        app_id: &str,
        template_id: Option<&str>,
    ) -> Result<(String, Value), GatewayFailure> {
        let id = template_id.ok_or_else(|| missing("template_id"))?;
        let record = self.store().get("template", id).await.map_err(busy)?;
        match record {
            Some(r) if r["app_id"] == app_id => Ok((id.to_owned(), r)),
            _ => Err(fail("40004", "TEMPLATE_NOT_EXIST", "模板不存在")),
        }
    }

    async fn template_modify(&self, app_id: &str, biz: &Value) -> Outcome {
        text(biz, "request_id").ok_or_else(|| missing("request_id"))?;
        let (id, mut record) = self.template_of(app_id, text(biz, "template_id")).await?;
        validate_template(biz)?;
        if let (Value::Object(stored), Value::Object(update)) = (&mut record["template"], biz) {
            for (k, v) in update {
                if k != "request_id" && k != "template_id" {
                    stored.insert(k.clone(), v.clone());
                }
            }
        }
        self.store()
            .put("template", &id, &record)
            .await
            .map_err(busy)?;
        Ok(json!({ "template_id": id }))
    }

    async fn template_query(&self, app_id: &str, biz: &Value) -> Outcome {
        let (id, record) = self.template_of(app_id, text(biz, "template_id")).await?;
        let mut out = record["template"].clone();
        out["template_id"] = json!(id);
        if let Some(levels) = out.get("card_level_conf").cloned() {
            out["card_level_confs"] = levels;
        }
        Ok(out)
    }

    async fn formtemplate_set(&self, app_id: &str, biz: &Value) -> Outcome {
        let (id, mut record) = self.template_of(app_id, text(biz, "template_id")).await?;
        let fields = biz.get("fields").ok_or_else(|| missing("fields"))?;
        const ALLOWED: [&str; 13] = [
            "OPEN_FORM_FIELD_MOBILE",
            "OPEN_FORM_FIELD_GENDER",
            "OPEN_FORM_FIELD_NAME",
            "OPEN_FORM_FIELD_BIRTHDAY",
            "OPEN_FORM_FIELD_BIRTHDAY_WITH_YEAR",
            "OPEN_FORM_FIELD_IDCARD",
            "OPEN_FORM_FIELD_CERT_TYPE",
            "OPEN_FORM_FIELD_CERT_NO",
            "OPEN_FORM_FIELD_EMAIL",
            "OPEN_FORM_FIELD_ADDRESS",
            "OPEN_FORM_FIELD_CITY",
            "OPEN_FORM_FIELD_IS_STUDENT",
            "OPEN_FORM_FIELD_MEMBER_GRADE",
        ];
        let mut parsed = json!({});
        let mut total = 0;
        for part in ["required", "optional"] {
            let Some(raw) = fields.get(part) else {
                continue;
            };
            // Alipay types both as strings holding JSON.
            let text = raw.as_str().ok_or_else(|| {
                fail(
                    "40004",
                    "INVALID_PARAMETER",
                    format!("fields.{part} 必须是 JSON 字符串"),
                )
            })?;
            let inner: Value = serde_json::from_str(text).map_err(|_| {
                fail(
                    "40004",
                    "INVALID_PARAMETER",
                    format!("fields.{part} 不是合法的 JSON"),
                )
            })?;
            let list = inner["common_fields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for field in &list {
                if !field.as_str().is_some_and(|f| ALLOWED.contains(&f)) {
                    return Err(fail(
                        "40004",
                        "INVALID_PARAMETER",
                        format!("不支持的表单字段 {field}"),
                    ));
                }
            }
            total += list.len();
            parsed[part] = json!(list);
        }
        if parsed["required"].as_array().is_none_or(Vec::is_empty) {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "fields.required 至少需要一个字段",
            ));
        }
        if total > 20 {
            return Err(fail("40004", "INVALID_PARAMETER", "表单字段不能超过 20 个"));
        }
        record["form"] = parsed;
        self.store()
            .put("template", &id, &record)
            .await
            .map_err(busy)?;
        Ok(json!({}))
    }

    async fn activateurl_apply(&self, app_id: &str, biz: &Value) -> Outcome {
        let (id, _) = self.template_of(app_id, text(biz, "template_id")).await?;
        let callback = text(biz, "callback").ok_or_else(|| missing("callback"))?;
        let parsed = url::Url::parse(callback)
            .map_err(|_| fail("40004", "INVALID_PARAMETER", "callback 不是合法的地址"))?;
        if parsed.query().is_some() {
            return Err(fail("40004", "INVALID_PARAMETER", "callback 不能带参数"));
        }
        let mut link = url::Url::parse(&format!("{}/activecard", self.inner.base_url))
            .map_err(|_| busy(()))?;
        link.query_pairs_mut()
            .append_pair("app_id", app_id)
            .append_pair("template_id", &id)
            .append_pair("out_string", text(biz, "out_string").unwrap_or_default())
            .append_pair("callback", callback);
        // Alipay returns the link URL-encoded; callers must decode it.
        let encoded: String =
            url::form_urlencoded::byte_serialize(link.as_str().as_bytes()).collect();
        Ok(json!({ "apply_card_url": encoded }))
    }

    async fn user_of_token(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
    ) -> Result<Value, GatewayFailure> {
        let token = p
            .get("auth_token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("auth_token"))?;
        let grant = self.store().get("token", token).await.map_err(busy)?;
        match grant {
            Some(g) if g["app_id"] == app_id => {
                let user = g["user_id"].as_str().unwrap_or_default().to_owned();
                Ok(self
                    .store()
                    .get("user", &user)
                    .await
                    .map_err(busy)?
                    .unwrap_or_else(|| consumer_profile(&user)))
            }
            _ => Err(fail("20001", "aop.invalid-auth-token", "无效的访问令牌")),
        }
    }

    async fn activateform_query(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        if text(biz, "biz_type") != Some("MEMBER_CARD") {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "biz_type 必须为 MEMBER_CARD",
            ));
        }
        let (_, template) = self.template_of(app_id, text(biz, "template_id")).await?;
        text(biz, "request_id").ok_or_else(|| missing("request_id"))?;
        let user = self.user_of_token(app_id, p).await?;
        let mut infos = Vec::new();
        for part in ["required", "optional"] {
            for field in template["form"][part]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let name = field.as_str().unwrap_or_default();
                let value = match name {
                    "OPEN_FORM_FIELD_MOBILE" => user["mobile"].clone(),
                    "OPEN_FORM_FIELD_NAME" => user["name"].clone(),
                    "OPEN_FORM_FIELD_GENDER" => user["gender"].clone(),
                    "OPEN_FORM_FIELD_BIRTHDAY" => json!(
                        user["birthday"]
                            .as_str()
                            .unwrap_or("1990-01-01")
                            .get(5..)
                            .unwrap_or("01-01")
                    ),
                    "OPEN_FORM_FIELD_BIRTHDAY_WITH_YEAR" => user["birthday"].clone(),
                    _ => continue,
                };
                infos.push(json!({ name: value }));
            }
        }
        // `infos` is a JSON array inside a string, as Alipay sends it.
        Ok(json!({ "infos": Value::Array(infos).to_string() }))
    }

    async fn card_open(&self, app_id: &str, p: &BTreeMap<String, String>, biz: &Value) -> Outcome {
        let serial = text(biz, "out_serial_no").ok_or_else(|| missing("out_serial_no"))?;
        let (template_id, _) = self
            .template_of(app_id, text(biz, "card_template_id"))
            .await?;
        let user_info = biz
            .get("card_user_info")
            .ok_or_else(|| missing("card_user_info"))?;
        let ext = biz
            .get("card_ext_info")
            .ok_or_else(|| missing("card_ext_info"))?;
        let token_user = self.user_of_token(app_id, p).await?;
        let user_id = user_info["user_uni_id"]
            .as_str()
            .or_else(|| user_info["open_id"].as_str())
            .unwrap_or_default();
        if user_id != token_user["user_id"].as_str().unwrap_or_default()
            && user_id != token_user["open_id"].as_str().unwrap_or_default()
        {
            return Err(fail("40004", "USER_NOT_MATCH", "开卡用户与授权用户不一致"));
        }
        if let Some(done) = self
            .store()
            .get("card_serial", &format!("{app_id}:{serial}"))
            .await
            .map_err(busy)?
        {
            return Ok(json!({ "card_info": done }));
        }
        // One card per template per user.
        let owner_key = format!("{template_id}:{user_id}");
        if self
            .store()
            .get("card_owner", &owner_key)
            .await
            .map_err(busy)?
            .is_some()
        {
            return Err(fail("40004", "CARD_ALREADY_EXIST", "用户已领取该会员卡"));
        }
        let biz_card_no = format!(
            "{}{:012}",
            text(&Value::Null, "").unwrap_or("VIP"),
            fastish_number() % 1_000_000_000_000
        );
        let card = json!({
            "biz_card_no": biz_card_no,
            "external_card_no": ext["external_card_no"],
            "open_date": ext.get("open_date").cloned().unwrap_or_else(|| json!(beijing_timestamp(Utc::now()))),
            "valid_date": ext["valid_date"],
            "level": ext["level"],
            "point": ext["point"],
            "balance": ext["balance"],
            "template_id": template_id,
            "user_id": user_id,
            "app_id": app_id,
            "updates": [],
        });
        self.store()
            .put("card", &biz_card_no, &card)
            .await
            .map_err(busy)?;
        self.store()
            .put(
                "card_owner",
                &owner_key,
                &json!({ "biz_card_no": biz_card_no }),
            )
            .await
            .map_err(busy)?;
        let shown = json!({ "biz_card_no": biz_card_no, "external_card_no": ext["external_card_no"], "open_date": card["open_date"], "valid_date": card["valid_date"] });
        self.store()
            .put("card_serial", &format!("{app_id}:{serial}"), &shown)
            .await
            .map_err(busy)?;
        Ok(json!({ "card_info": shown }))
    }

    async fn card_of(&self, app_id: &str, biz: &Value) -> Result<(String, Value), GatewayFailure> {
        let no = text(biz, "target_card_no").ok_or_else(|| missing("target_card_no"))?;
        if text(biz, "target_card_no_type") != Some("BIZ_CARD") {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "target_card_no_type 仅支持 BIZ_CARD",
            ));
        }
        match self.store().get("card", no).await.map_err(busy)? {
            Some(card) if card["app_id"] == app_id && card["deleted"] != true => {
                Ok((no.to_owned(), card))
            }
            _ => Err(fail("40004", "CARD_NOT_EXIST", "会员卡不存在")),
        }
    }

    async fn card_query(&self, app_id: &str, biz: &Value) -> Outcome {
        let (_, card) = self.card_of(app_id, biz).await?;
        let info = json!({ "biz_card_no": card["biz_card_no"], "external_card_no": card["external_card_no"], "level": card["level"], "point": card["point"], "balance": card["balance"], "open_date": card["open_date"], "valid_date": card["valid_date"] });
        Ok(
            json!({ "card_info": info, "schema_url": format!("alipays://platformapi/startapp?appId=20000021&card={}", card["biz_card_no"].as_str().unwrap_or_default()) }),
        )
    }

    async fn card_update(&self, app_id: &str, biz: &Value) -> Outcome {
        let (no, mut card) = self.card_of(app_id, biz).await?;
        text(biz, "occur_time").ok_or_else(|| missing("occur_time"))?;
        let info = biz.get("card_info").ok_or_else(|| missing("card_info"))?;
        for field in ["level", "point", "balance", "external_card_no"] {
            if let Some(v) = info.get(field) {
                card[field] = v.clone();
            }
        }
        if let Some(updates) = card["updates"].as_array_mut() {
            updates.push(json!({ "occur_time": biz["occur_time"], "card_info": info }));
        }
        self.store().put("card", &no, &card).await.map_err(busy)?;
        Ok(json!({ "result_code": "SUCCESS" }))
    }

    async fn card_delete(&self, app_id: &str, biz: &Value) -> Outcome {
        let (no, mut card) = self.card_of(app_id, biz).await?;
        text(biz, "out_serial_no").ok_or_else(|| missing("out_serial_no"))?;
        card["deleted"] = json!(true);
        self.store().put("card", &no, &card).await.map_err(busy)?;
        let owner = format!(
            "{}:{}",
            card["template_id"].as_str().unwrap_or_default(),
            card["user_id"].as_str().unwrap_or_default()
        );
        self.store()
            .delete("card_owner", &owner)
            .await
            .map_err(busy)?;
        Ok(json!({ "biz_serial_no": format!("D{}", fastish_number()) }))
    }

    // ----- OAuth --------------------------------------------------------------------------

    async fn oauth_token(&self, app_id: &str, p: &BTreeMap<String, String>) -> Outcome {
        let grant_type = p.get("grant_type").ok_or_else(|| missing("grant_type"))?;
        let user_id = match grant_type.as_str() {
            "authorization_code" => {
                let code = p.get("code").ok_or_else(|| missing("code"))?;
                let grant = self.store().get("auth_code", code).await.map_err(busy)?;
                match grant {
                    Some(g) if g["app_id"] == app_id && g["used"] != true => {
                        let mut used = g.clone();
                        used["used"] = json!(true);
                        self.store()
                            .put("auth_code", code, &used)
                            .await
                            .map_err(busy)?;
                        g["user_id"].as_str().unwrap_or_default().to_owned()
                    }
                    _ => return Err(fail("40002", "isv.code-invalid", "授权码code无效")),
                }
            }
            "refresh_token" => {
                let token = p
                    .get("refresh_token")
                    .ok_or_else(|| missing("refresh_token"))?;
                match self.store().get("refresh", token).await.map_err(busy)? {
                    Some(g) if g["app_id"] == app_id => {
                        g["user_id"].as_str().unwrap_or_default().to_owned()
                    }
                    _ => return Err(fail("40002", "isv.refresh-token-invalid", "刷新令牌无效")),
                }
            }
            _ => return Err(fail("40002", "isv.grant-type-invalid", "grant_type 无效")),
        };
        let access = format!("authusrB{}", Uuid::new_v4().simple());
        let refresh = format!("authusrR{}", Uuid::new_v4().simple());
        self.store()
            .put(
                "token",
                &access,
                &json!({ "app_id": app_id, "user_id": user_id }),
            )
            .await
            .map_err(busy)?;
        self.store()
            .put(
                "refresh",
                &refresh,
                &json!({ "app_id": app_id, "user_id": user_id }),
            )
            .await
            .map_err(busy)?;
        let profile = self
            .store()
            .get("user", &user_id)
            .await
            .map_err(busy)?
            .unwrap_or_else(|| consumer_profile(&user_id));
        Ok(json!({
            "access_token": access, "refresh_token": refresh, "expires_in": 1_296_000, "re_expires_in": 2_592_000,
            "auth_start": beijing_timestamp(Utc::now()), "user_id": user_id, "open_id": profile["open_id"],
        }))
    }

    async fn user_info(&self, app_id: &str, p: &BTreeMap<String, String>) -> Outcome {
        let user = self.user_of_token(app_id, p).await?;
        Ok(
            json!({ "user_id": user["user_id"], "open_id": user["open_id"], "nick_name": user["name"], "mobile": user["mobile"], "gender": user["gender"], "city": "杭州市" }),
        )
    }

    // ----- trades -------------------------------------------------------------------------

    async fn trade_new(
        &self,
        method: &str,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        let out_trade_no = text(biz, "out_trade_no").ok_or_else(|| missing("out_trade_no"))?;
        if out_trade_no.len() > 64
            || !out_trade_no
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(fail(
                "40004",
                "ACQ.INVALID_PARAMETER",
                "out_trade_no 格式错误",
            ));
        }
        let amount = text(biz, "total_amount").ok_or_else(|| missing("total_amount"))?;
        let cents = parse_amount(amount)
            .ok_or_else(|| fail("40004", "ACQ.INVALID_PARAMETER", "total_amount 格式错误"))?;
        text(biz, "subject").ok_or_else(|| missing("subject"))?;
        let key = format!("{app_id}:{out_trade_no}");
        if let Some(existing) = self.store().get("trade", &key).await.map_err(busy)? {
            if existing["total_amount"] != json!(amount) {
                return Err(fail("40004", "ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"));
            }
            return Ok(trade_view(&existing));
        }
        let trade_no = format!("2026{:024}", fastish_number());
        let mut trade = json!({
            "app_id": app_id, "out_trade_no": out_trade_no, "trade_no": trade_no, "total_amount": amount, "cents": cents,
            "subject": biz["subject"], "trade_status": "WAIT_BUYER_PAY", "notify_url": p.get("notify_url"),
            "buyer_user_id": biz.get("buyer_id").cloned().unwrap_or(Value::Null), "gmt_create": beijing_timestamp(Utc::now()),
        });
        if method == "alipay.trade.pay" {
            let code = text(biz, "auth_code").ok_or_else(|| missing("auth_code"))?;
            // A consumer's payment code in the sandbox is "28" + a user id suffix.
            let user = format!("2088{}", code.trim_start_matches("28"));
            trade["buyer_user_id"] = json!(user);
            trade["trade_status"] = json!("TRADE_SUCCESS");
            trade["gmt_payment"] = json!(beijing_timestamp(Utc::now()));
        }
        self.store()
            .put("trade", &key, &trade)
            .await
            .map_err(busy)?;
        let mut view = trade_view(&trade);
        if method == "alipay.trade.precreate" {
            view["qr_code"] = json!(format!(
                "{}/qr/{app_id}/{out_trade_no}",
                self.inner.base_url
            ));
        }
        Ok(view)
    }

    async fn trade_of(&self, app_id: &str, biz: &Value) -> Result<(String, Value), GatewayFailure> {
        let out = text(biz, "out_trade_no").ok_or_else(|| missing("out_trade_no"))?;
        let key = format!("{app_id}:{out}");
        match self.store().get("trade", &key).await.map_err(busy)? {
            Some(t) => Ok((key, t)),
            None => Err(fail("40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")),
        }
    }

    async fn trade_query(&self, app_id: &str, biz: &Value) -> Outcome {
        Ok(trade_view(&self.trade_of(app_id, biz).await?.1))
    }

    async fn trade_close(&self, app_id: &str, biz: &Value) -> Outcome {
        let (key, mut trade) = self.trade_of(app_id, biz).await?;
        if trade["trade_status"] != "WAIT_BUYER_PAY" {
            return Err(fail("40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法"));
        }
        trade["trade_status"] = json!("TRADE_CLOSED");
        self.store()
            .put("trade", &key, &trade)
            .await
            .map_err(busy)?;
        Ok(trade_view(&trade))
    }

    async fn trade_refund(&self, app_id: &str, biz: &Value) -> Outcome {
        let (key, mut trade) = self.trade_of(app_id, biz).await?;
        if trade["trade_status"] != "TRADE_SUCCESS" {
            return Err(fail("40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法"));
        }
        let amount = text(biz, "refund_amount").ok_or_else(|| missing("refund_amount"))?;
        let cents = parse_amount(amount)
            .ok_or_else(|| fail("40004", "ACQ.INVALID_PARAMETER", "refund_amount 格式错误"))?;
        let refunded = trade["refunded_cents"].as_u64().unwrap_or(0) + cents;
        if refunded > trade["cents"].as_u64().unwrap_or(0) {
            return Err(fail(
                "40004",
                "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                "退款金额超限",
            ));
        }
        trade["refunded_cents"] = json!(refunded);
        if refunded == trade["cents"].as_u64().unwrap_or(0) {
            trade["trade_status"] = json!("TRADE_CLOSED");
        }
        self.store()
            .put("trade", &key, &trade)
            .await
            .map_err(busy)?;
        let mut view = trade_view(&trade);
        view["refund_fee"] = json!(format!("{}.{:02}", refunded / 100, refunded % 100));
        view["fund_change"] = json!("Y");
        Ok(view)
    }

    // ----- simulated consumers ------------------------------------------------------------

    /// "User `user` opens the claim link": confirms the form and lands on the merchant's
    /// callback with a fresh `auth_code`, as Alipay's redirect would. Returns the callback's status.
    pub async fn open_claim_link(&self, user: &str, link: &str) -> Result<(u16, String), Error> {
        // As Alipay returns it (encoded), or decoded as merchants show it.
        let decoded = if link.starts_with("http://") || link.starts_with("https://") {
            link.to_owned()
        } else {
            url::form_urlencoded::parse(format!("x={link}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let url =
            url::Url::parse(&decoded).map_err(|_| Error::Invalid("not a claim link".into()))?;
        let q: BTreeMap<String, String> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let (Some(app_id), Some(template_id), Some(callback)) =
            (q.get("app_id"), q.get("template_id"), q.get("callback"))
        else {
            return Err(Error::Invalid(
                "the link lacks app_id, template_id or callback".into(),
            ));
        };
        let user_id = sandbox_user_id(user);
        if self.store().get("user", &user_id).await?.is_none() {
            self.store()
                .put("user", &user_id, &consumer_profile(&user_id))
                .await?;
        }
        let code = Uuid::new_v4().simple().to_string();
        self.store()
            .put(
                "auth_code",
                &code,
                &json!({ "app_id": app_id, "user_id": user_id }),
            )
            .await?;
        let request_id = format!("{}", fastish_number());
        let mut target =
            url::Url::parse(callback).map_err(|_| Error::Invalid("bad callback".into()))?;
        target
            .query_pairs_mut()
            .append_pair("app_id", app_id)
            .append_pair("auth_code", &code)
            .append_pair("scope", "auth_base,auth_user,auth_ecard")
            .append_pair("template_id", template_id)
            .append_pair("request_id", &request_id)
            .append_pair("out_string", q.get("out_string").map_or("", String::as_str));
        let (to, host) = self.target(target.as_str())?;
        let mut request = self.inner.http.get(to);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Error::Invalid(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        // What the callback answered is shown to whoever opened the link: a page's worth.
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_CALLBACK_BODY {
                body.truncate(MAX_CALLBACK_BODY);
                break;
            }
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// "User `user` pays trade `out_trade_no`": marks it paid and sends the signed
    /// `trade_status_sync` notification to its `notify_url`, retrying on Alipay's schedule
    /// (divided by the time scale) until the merchant answers exactly `success`.
    pub async fn pay(&self, user: &str, app_id: &str, out_trade_no: &str) -> Result<Value, Error> {
        let key = format!("{app_id}:{out_trade_no}");
        let mut trade = self
            .store()
            .get("trade", &key)
            .await?
            .ok_or_else(|| Error::Invalid("no such trade".into()))?;
        if trade["trade_status"] != "WAIT_BUYER_PAY" {
            return Err(Error::Invalid(format!(
                "the trade is {}",
                trade["trade_status"]
            )));
        }
        let user_id = sandbox_user_id(user);
        trade["trade_status"] = json!("TRADE_SUCCESS");
        trade["buyer_user_id"] = json!(user_id);
        trade["gmt_payment"] = json!(beijing_timestamp(Utc::now()));
        self.store().put("trade", &key, &trade).await?;
        if let Some(url) = trade["notify_url"].as_str().map(str::to_owned) {
            let body = self.trade_notification(&trade)?;
            let sandbox = self.clone();
            let notify_id = trade["trade_no"].as_str().unwrap_or_default().to_owned();
            tokio::spawn(async move { sandbox.deliver(&notify_id, &url, body).await });
        }
        Ok(trade_view(&trade))
    }

    fn trade_notification(&self, trade: &Value) -> Result<String, trellis_alipay::Error> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let mut fields: BTreeMap<String, String> = [
            ("notify_type", "trade_status_sync".to_owned()),
            ("notify_id", format!("{}", Uuid::new_v4().simple())),
            ("notify_time", beijing_timestamp(Utc::now())),
            ("charset", "utf-8".to_owned()),
            ("version", "1.0".to_owned()),
            ("app_id", s(&trade["app_id"])),
            ("auth_app_id", s(&trade["app_id"])),
            ("trade_no", s(&trade["trade_no"])),
            ("out_trade_no", s(&trade["out_trade_no"])),
            ("trade_status", s(&trade["trade_status"])),
            ("total_amount", s(&trade["total_amount"])),
            ("receipt_amount", s(&trade["total_amount"])),
            ("buyer_pay_amount", s(&trade["total_amount"])),
            ("buyer_id", s(&trade["buyer_user_id"])),
            ("subject", s(&trade["subject"])),
            ("gmt_create", s(&trade["gmt_create"])),
            ("gmt_payment", s(&trade["gmt_payment"])),
            (
                "fund_bill_list",
                format!(
                    "[{{\"amount\":\"{}\",\"fundChannel\":\"ALIPAYACCOUNT\"}}]",
                    s(&trade["total_amount"])
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .filter(|(_, v)| !v.is_empty())
        .collect();
        // V1: sign_type is not part of what trade notifications sign.
        let sign = self
            .inner
            .key
            .sign(SignType::Rsa2, &sign_content(&fields))?;
        fields.insert("sign_type".into(), "RSA2".into());
        fields.insert("sign".into(), sign);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &fields {
            form.append_pair(k, v);
        }
        Ok(form.finish())
    }

    /// Where a callback or notification addressed to `url` is sent, and the Host header it
    /// carries. An embedded sandbox sends what is addressed to a host *name* (a partner's
    /// domain, `localhost`) to its own engine with the Host kept: offline no other site exists,
    /// and the engine picks the partner by Host. IP addresses are contacted as they are, on
    /// loopback only (a merchant's stand-in in tests), so the sandbox cannot be turned into a
    /// way to reach the rest of the network.
    fn target(&self, url: &str) -> Result<(String, Option<String>), Error> {
        let Some(engine) = self.inner.engine else {
            return Ok((url.to_owned(), None));
        };
        let loopback = |host: Option<url::Host<&str>>| match host {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
        Ok(match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.host(), Some(url::Host::Domain(_))) => {
                let host = match (parsed.host_str(), parsed.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_owned(),
                    (None, _) => String::new(),
                };
                let mut local = format!("http://{engine}{}", parsed.path());
                if let Some(q) = parsed.query() {
                    local.push('?');
                    local.push_str(q);
                }
                (local, Some(host))
            }
            Ok(parsed) if loopback(parsed.host()) => (url.to_owned(), None),
            _ => {
                return Err(Error::Invalid(
                    "the sandbox calls back host names and loopback addresses only".into(),
                ));
            }
        })
    }

    async fn deliver(&self, notify_id: &str, url: &str, body: String) {
        let (to, host) = match self.target(url) {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(%error, notify_id, "sandbox notification not sent");
                return;
            }
        };
        let mut attempts = Vec::new();
        for attempt in 0..=RETRY_SCHEDULE_SECS.len() {
            if attempt > 0 {
                let wait = RETRY_SCHEDULE_SECS[attempt - 1] * 1000 / self.inner.time_scale;
                tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
            }
            let mut request = self.inner.http.post(&to);
            if let Some(host) = &host {
                request = request.header("host", host);
            }
            let sent = request
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(body.clone())
                .send()
                .await;
            let (status, answer) = match sent {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.without_url().to_string()),
            };
            let acknowledged = status == 200 && answer == ACK;
            attempts
                .push(json!({ "at": Utc::now(), "status": status, "acknowledged": acknowledged }));
            let record = json!({ "url": url, "attempts": attempts, "acknowledged": acknowledged });
            if let Err(error) = self.store().put("delivery", notify_id, &record).await {
                tracing::warn!(%error, "sandbox could not record a delivery");
            }
            if acknowledged {
                return;
            }
        }
    }
}

fn ca_key(ca: &Value, field: &str) -> Result<PrivateKey, Error> {
    let text = ca[field]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("the sandbox CA has no {field}")))?;
    Ok(PrivateKey::parse(&SecretString::from(text.to_owned()))?)
}

fn busy<E>(_: E) -> GatewayFailure {
    fail("20000", "isp.unknow-error", "系统繁忙")
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn validate_template(biz: &Value) -> Result<(), GatewayFailure> {
    let style = biz
        .get("template_style_info")
        .ok_or_else(|| missing("template_style_info"))?;
    for field in ["card_show_name", "logo_id", "background_id", "bg_color"] {
        if text(style, field).is_none() {
            return Err(missing(&format!("template_style_info.{field}")));
        }
    }
    if let Some(len) = biz.get("biz_no_suffix_len") {
        let n = len
            .as_str()
            .and_then(|s| s.parse::<usize>().ok())
            .or_else(|| len.as_u64().map(|n| n as usize))
            .unwrap_or(0);
        let prefix = text(biz, "biz_no_prefix").unwrap_or_default().len();
        if !(8..=32).contains(&n) || prefix + n > 32 {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "biz_no_suffix_len 须在 [8,32] 且前缀加后缀不超过 32",
            ));
        }
    }
    if let Some(kind) = text(biz, "write_off_type")
        && ![
            "qrcode",
            "dqrcode",
            "barcode",
            "dbarcode",
            "text",
            "mdqrcode",
            "mdbarcode",
            "none",
        ]
        .contains(&kind)
    {
        return Err(fail("40004", "INVALID_PARAMETER", "write_off_type 无效"));
    }
    Ok(())
}

/// Yuan with at most two decimals, within Alipay's range, as cents.
fn parse_amount(text: &str) -> Option<u64> {
    let (yuan, fen) = text.split_once('.').unwrap_or((text, ""));
    if yuan.is_empty()
        || fen.len() > 2
        || !yuan.bytes().chain(fen.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let cents = yuan.parse::<u64>().ok()? * 100 + format!("{fen:0<2}").parse::<u64>().ok()?;
    (1..=10_000_000_000).contains(&cents).then_some(cents)
}

fn trade_view(trade: &Value) -> Value {
    json!({
        "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"], "trade_status": trade["trade_status"],
        "total_amount": trade["total_amount"], "buyer_user_id": trade["buyer_user_id"],
    })
}

/// A stable 2088… user id for a simulated consumer's name.
pub fn sandbox_user_id(name: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let n = digest.as_ref()[..8]
        .iter()
        .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        % 1_000_000_000_000;
    format!("2088{n:012}")
}

fn consumer_profile(user_id: &str) -> Value {
    let tail = &user_id[user_id.len().saturating_sub(8)..];
    json!({
        "user_id": user_id, "open_id": format!("074a{tail}sandbox"), "name": format!("沙箱用户{}", &tail[4..]),
        "mobile": format!("138{tail}"), "gender": "m", "birthday": "1990-05-20",
    })
}

fn fastish_number() -> u64 {
    let id = Uuid::now_v7();
    let bytes = id.as_bytes();
    bytes[8..]
        .iter()
        .fold(u64::from(bytes[6] & 0x0f), |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u64::from(*b))
        })
        % 10_000_000_000_000_000
}

// ----- HTTP handlers ------------------------------------------------------------------------

async fn gateway(State(sandbox): State<Sandbox>, request: axum::extract::Request) -> Response {
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
            let Ok(bytes) = field.bytes().await else {
                return (StatusCode::BAD_REQUEST, "malformed multipart body").into_response();
            };
            if is_file {
                files.insert(name, bytes.to_vec());
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

async fn alipay_public_key(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(
        json!({ "alipay_public_key": sandbox.public_key().to_base64(), "gateway_url": sandbox.gateway_url() }),
    )
}

#[derive(serde::Deserialize)]
struct RegisterApp {
    app_id: String,
    app_public_key: String,
    #[serde(default)]
    aes_key: Option<String>,
    /// 公钥证书模式: the answer carries the app certificate, Alipay's and the root.
    #[serde(default)]
    cert_mode: bool,
}

async fn certificates(State(sandbox): State<Sandbox>) -> Response {
    match sandbox.authority().await {
        Ok(ca) => {
            let current = ca["current_sn"].as_str().unwrap_or_default();
            Json(json!({ "alipay_root_cert": ca["root_pem"], "alipay_cert": ca["certs"][current]["pem"], "alipay_cert_sn": current }))
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "code": "unavailable", "message": e.to_string() })),
        )
            .into_response(),
    }
}

async fn rotate_cert(State(sandbox): State<Sandbox>) -> Response {
    match sandbox.rotate_alipay_certificate().await {
        Ok(sn) => Json(json!({ "alipay_cert_sn": sn })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "code": "unavailable", "message": e.to_string() })),
        )
            .into_response(),
    }
}

async fn register(State(sandbox): State<Sandbox>, Json(body): Json<RegisterApp>) -> Response {
    match sandbox
        .register_app(
            &body.app_id,
            &body.app_public_key,
            body.aes_key.as_deref(),
            body.cert_mode,
        )
        .await
    {
        Ok(certs) => {
            let mut answer = json!({ "app_id": body.app_id, "alipay_public_key": sandbox.public_key().to_base64(), "gateway_url": sandbox.gateway_url() });
            if let (Value::Object(answer), Value::Object(certs)) = (&mut answer, certs) {
                answer.extend(certs);
            }
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "code": "invalid_app", "message": e.to_string() })),
        )
            .into_response(),
    }
}

async fn card_state(State(sandbox): State<Sandbox>, Path(no): Path<String>) -> Response {
    match sandbox.store().get("card", &no).await {
        Ok(Some(card)) => Json(card).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "code": "not_found", "message": "no such card" })),
        )
            .into_response(),
    }
}

async fn trade_state(
    State(sandbox): State<Sandbox>,
    Path((app, out)): Path<(String, String)>,
) -> Response {
    match sandbox.store().get("trade", &format!("{app}:{out}")).await {
        Ok(Some(trade)) => Json(trade).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "code": "not_found", "message": "no such trade" })),
        )
            .into_response(),
    }
}

async fn notifications(State(sandbox): State<Sandbox>) -> Response {
    match sandbox.store().all("delivery").await {
        Ok(all) => Json(
            all.into_iter()
                .map(|(id, v)| json!({ "notify_id": id, "delivery": v }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ClaimLink {
    url: String,
}

async fn open_claim_link(
    State(sandbox): State<Sandbox>,
    Path(user): Path<String>,
    Json(body): Json<ClaimLink>,
) -> Response {
    match sandbox.open_claim_link(&user, &body.url).await {
        Ok((status, answer)) => {
            Json(json!({ "callback_status": status, "callback_body": answer })).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "code": "invalid", "message": e.to_string() })),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Pay {
    app_id: String,
    out_trade_no: String,
}

async fn pay(
    State(sandbox): State<Sandbox>,
    Path(user): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    body: Option<Json<Pay>>,
) -> Response {
    let (app, out) = match body {
        Some(Json(p)) => (p.app_id, p.out_trade_no),
        None => (
            q.get("app_id").cloned().unwrap_or_default(),
            q.get("out_trade_no").cloned().unwrap_or_default(),
        ),
    };
    match sandbox.pay(&user, &app, &out).await {
        Ok(trade) => Json(trade).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "code": "invalid", "message": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_yuan_with_two_decimals() {
        assert_eq!(parse_amount("0.10"), Some(10));
        assert_eq!(parse_amount("12"), Some(1200));
        assert_eq!(parse_amount("1.5"), Some(150));
        for bad in ["0", "0.001", "-1", "1e3", "", ".5", "100000001"] {
            assert_eq!(parse_amount(bad), None, "{bad}");
        }
    }

    #[test]
    fn sandbox_users_have_stable_alipay_style_ids() {
        assert_eq!(sandbox_user_id("alice"), sandbox_user_id("alice"));
        assert_ne!(sandbox_user_id("alice"), sandbox_user_id("bob"));
        assert!(
            sandbox_user_id("alice").starts_with("2088") && sandbox_user_id("alice").len() == 16
        );
    }
}
