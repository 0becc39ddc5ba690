//! The engine's Alipay client: signs a call with a merchant's key, sends it, verifies the
//! answer with the merchant's Alipay key (fetching a rotated Alipay certificate when the
//! response names one we do not know, trusted only if it chains to the stored root), decrypts
//! AES answers and maps gateway codes.
//!
//! Invariant: a call's result is returned only after its signature verified; spans carry the
//! method and app id, never keys, tokens or bodies (they hold personal data).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::Instrument;

use super::Error;
use super::credentials::MerchantApp;
use super::keys::PublicKey;
use super::response::{self, KeyLookup};
use super::signing::{AppIdentity, RequestSpec, sign_request};

/// Per-call options beyond the method and business content.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub notify_url: Option<String>,
    /// `return_url`, for page methods.
    pub return_url: Option<String>,
    pub app_auth_token: Option<String>,
    pub auth_token: Option<String>,
    /// Top-level parameters such as `grant_type` and `code`.
    pub extra: BTreeMap<String, String>,
    /// Encrypt `biz_content` (and expect an encrypted answer) with the merchant's AES key.
    pub encrypt: bool,
}

type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// One HTTP client for every merchant: keys come with each call, never stay here.
#[derive(Clone)]
pub struct AlipayClient {
    http: reqwest::Client,
    clock: Clock,
    /// Alipay certificates learnt by SN (certificate mode), shared by all calls.
    certs: Arc<RwLock<HashMap<String, PublicKey>>>,
}

impl std::fmt::Debug for AlipayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlipayClient")
    }
}

/// Query methods may be retried on transport failures; anything that changes state may not.
fn is_retryable(method: &str) -> bool {
    method.ends_with(".query")
        || method.ends_with(".batchquery")
        || method == "alipay.user.info.share"
}

impl AlipayClient {
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Self {
            http,
            clock: Arc::new(Utc::now),
            certs: Arc::default(),
        })
    }

    /// A client whose timestamps come from `clock` (tests freeze time with it).
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Calls `method` for `app`. `biz_content` is sent as given (JSON); the verified business
    /// node comes back on `code == 10000`, the verified gateway error otherwise.
    pub async fn call(
        &self,
        app: &MerchantApp,
        method: &str,
        biz_content: Option<&Value>,
        options: &CallOptions,
    ) -> Result<Value, Error> {
        let span = tracing::info_span!("trellis.alipay.call", method, app_id = %app.app_id);
        self.call_inner(app, method, biz_content, options)
            .instrument(span)
            .await
    }

    async fn call_inner(
        &self,
        app: &MerchantApp,
        method: &str,
        biz_content: Option<&Value>,
        options: &CallOptions,
    ) -> Result<Value, Error> {
        let mut biz = biz_content.map(Value::to_string);
        if options.encrypt {
            let aes = app
                .aes
                .as_ref()
                .ok_or_else(|| Error::BadRequest("the merchant has no AES key".into()))?;
            biz = biz.map(|b| aes.encrypt(&b)).transpose()?;
        }
        let spec = RequestSpec {
            method: method.to_owned(),
            biz_content: biz,
            notify_url: options.notify_url.clone(),
            return_url: options.return_url.clone(),
            app_auth_token: options.app_auth_token.clone(),
            auth_token: options.auth_token.clone(),
            extra: options.extra.clone(),
            encrypted: options.encrypt,
        };
        let identity = AppIdentity {
            app_id: app.app_id.clone(),
            sign_type: app.sign_type,
            cert_sns: app.cert_sns.clone(),
        };
        let signed = sign_request(&app.private_key, &identity, &spec, (self.clock)())?;
        let body = self
            .post(&app.gateway_url, signed.form_body(), is_retryable(method))
            .await?;

        // Certificate mode: learn a rotated Alipay certificate before verifying.
        if let Some(sn) = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["alipay_cert_sn"].as_str().map(str::to_owned))
            && app.cert_sns.is_some()
            && Some(&sn) != app.alipay_cert_sn.as_ref()
            && !self.knows(&sn)
            && method != "alipay.open.app.alipaycert.download"
        {
            self.learn_certificate(app, &sn).await?;
        }
        let keys = Keys {
            app,
            learnt: &self.certs,
        };
        let verified = response::verify_response(&body, method, app.sign_type, &keys)?;
        let text = if verified.signed_text.starts_with('"') {
            let cipher: String = serde_json::from_str(&verified.signed_text)
                .map_err(|_| Error::MalformedResponse("bad ciphertext"))?;
            let aes = app.aes.as_ref().ok_or(Error::MalformedResponse(
                "an encrypted answer but no AES key",
            ))?;
            aes.decrypt(&cipher)?
        } else {
            verified.signed_text.replace("\\/", "/")
        };
        let node: Value = serde_json::from_str(&text)
            .map_err(|_| Error::MalformedResponse("the response node is not JSON"))?;
        let result = response::outcome(node);
        if let Err(Error::Gateway(g)) = &result {
            tracing::info!(code = %g.code, sub_code = g.sub_code.as_deref().unwrap_or(""), "alipay answered an error");
        }
        result
    }

    /// `alipay.offline.material.image.upload`: the image goes as a multipart file part, which is
    /// not signed; `image_type` and `image_name` are signed top-level parameters.
    pub async fn upload_image(
        &self,
        app: &MerchantApp,
        image_type: &str,
        image_name: &str,
        content: Vec<u8>,
    ) -> Result<Value, Error> {
        let method = "alipay.offline.material.image.upload";
        let span = tracing::info_span!("trellis.alipay.call", method, app_id = %app.app_id);
        async {
            let spec = RequestSpec {
                method: method.to_owned(),
                extra: [
                    ("image_type".to_owned(), image_type.to_owned()),
                    ("image_name".to_owned(), image_name.to_owned()),
                ]
                .into(),
                ..RequestSpec::default()
            };
            let identity = AppIdentity {
                app_id: app.app_id.clone(),
                sign_type: app.sign_type,
                cert_sns: app.cert_sns.clone(),
            };
            let signed = sign_request(&app.private_key, &identity, &spec, (self.clock)())?;
            let mut form = reqwest::multipart::Form::new();
            for (k, v) in &signed.params {
                form = form.text(k.clone(), v.clone());
            }
            let part = reqwest::multipart::Part::bytes(content)
                .file_name(format!("{image_name}.{image_type}"));
            form = form.part("image_content", part);
            let response = self
                .http
                .post(&app.gateway_url)
                .multipart(form)
                .send()
                .await
                .map_err(|e| Error::Transport(e.without_url().to_string()))?;
            if !response.status().is_success() {
                return Err(Error::Transport(format!(
                    "gateway answered HTTP {}",
                    response.status()
                )));
            }
            let body = response
                .text()
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            let keys = Keys {
                app,
                learnt: &self.certs,
            };
            let verified = response::verify_response(&body, method, app.sign_type, &keys)?;
            let node: Value = serde_json::from_str(&verified.signed_text.replace("\\/", "/"))
                .map_err(|_| Error::MalformedResponse("the response node is not JSON"))?;
            response::outcome(node)
        }
        .instrument(span)
        .await
    }

    fn knows(&self, sn: &str) -> bool {
        self.certs
            .read()
            .map(|c| c.contains_key(sn))
            .unwrap_or(false)
    }

    /// Downloads the Alipay certificate `sn` and trusts it only if it chains to the stored root.
    /// The download's own answer is signed with that new certificate's key, so it is verified
    /// with the key of the certificate it carries, once that certificate is trusted.
    async fn learn_certificate(&self, app: &MerchantApp, sn: &str) -> Result<(), Error> {
        use base64::Engine as _;
        let method = "alipay.open.app.alipaycert.download";
        let root = app
            .alipay_root_cert
            .as_deref()
            .ok_or(Error::UntrustedCertificate("no stored Alipay root"))?;
        let spec = RequestSpec {
            method: method.to_owned(),
            biz_content: Some(serde_json::json!({ "alipay_cert_sn": sn }).to_string()),
            ..RequestSpec::default()
        };
        let identity = AppIdentity {
            app_id: app.app_id.clone(),
            sign_type: app.sign_type,
            cert_sns: app.cert_sns.clone(),
        };
        let signed = sign_request(&app.private_key, &identity, &spec, (self.clock)())?;
        let body = self
            .post(&app.gateway_url, signed.form_body(), true)
            .await?;
        let parsed: Value = serde_json::from_str(&body)
            .map_err(|_| Error::MalformedResponse("the body is not JSON"))?;
        let node_text = response::extract_value(&body, &response::response_key(method))
            .ok_or(Error::MalformedResponse("no certificate in the answer"))?;
        let node: Value = serde_json::from_str(&node_text.replace("\\/", "/"))
            .map_err(|_| Error::MalformedResponse("bad node"))?;
        let node = response::outcome(node)?;
        let content = node["alipay_cert_content"]
            .as_str()
            .ok_or(Error::MalformedResponse("no alipay_cert_content"))?;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(content.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(Error::MalformedResponse(
                "alipay_cert_content is not base64 PEM",
            ))?;
        let (real_sn, key) = super::cert::trust(&pem, root, Utc::now())?;
        if real_sn != sn {
            return Err(Error::UntrustedCertificate(
                "the downloaded certificate has another SN",
            ));
        }
        let signer = match parsed["alipay_cert_sn"].as_str() {
            Some(answer_sn) if answer_sn == real_sn => key.clone(),
            Some(answer_sn) if Some(answer_sn) == app.alipay_cert_sn.as_deref() => {
                app.alipay_public_key.clone()
            }
            _ => {
                return Err(Error::UntrustedCertificate(
                    "the download answer is signed by an unknown certificate",
                ));
            }
        };
        let sign = parsed["sign"].as_str().ok_or(Error::InvalidSignature)?;
        let verified = signer.verify(app.sign_type, node_text.as_bytes(), sign)
            || (node_text.contains("\\/")
                && signer.verify(
                    app.sign_type,
                    node_text.replace("\\/", "/").as_bytes(),
                    sign,
                ));
        if !verified {
            return Err(Error::InvalidSignature);
        }
        if let Ok(mut certs) = self.certs.write() {
            certs.insert(real_sn, key);
        }
        tracing::info!(alipay_cert_sn = sn, "learnt a rotated Alipay certificate");
        Ok(())
    }

    async fn post(&self, url: &str, form: String, retryable: bool) -> Result<String, Error> {
        let attempts = if retryable { 3 } else { 1 };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1))).await;
            }
            let sent = self
                .http
                .post(url)
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded;charset=utf-8",
                )
                .body(form.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_server_error() && attempt + 1 < attempts => {
                    last = Some(Error::Transport(format!(
                        "gateway answered HTTP {}",
                        response.status()
                    )));
                }
                Ok(response) if !response.status().is_success() => {
                    return Err(Error::Transport(format!(
                        "gateway answered HTTP {}",
                        response.status()
                    )));
                }
                Ok(response) => {
                    return response
                        .text()
                        .await
                        .map_err(|e| Error::Transport(e.to_string()));
                }
                Err(error) => last = Some(Error::Transport(error.without_url().to_string())),
            }
        }
        Err(last.unwrap_or_else(|| Error::Transport("no attempt made".into())))
    }
}

struct Keys<'a> {
    app: &'a MerchantApp,
    learnt: &'a RwLock<HashMap<String, PublicKey>>,
}

impl KeyLookup for Keys<'_> {
    fn key_for(&self, sn: Option<&str>) -> Result<Cow<'_, PublicKey>, Error> {
        match sn {
            Some(sn)
                if self.app.cert_sns.is_some()
                    && Some(sn) != self.app.alipay_cert_sn.as_deref() =>
            {
                let learnt = self
                    .learnt
                    .read()
                    .map_err(|_| Error::UntrustedCertificate("certificate cache poisoned"))?;
                let key = learnt.get(sn).cloned();
                key.map(Cow::Owned).ok_or(Error::UntrustedCertificate(
                    "the response names an unknown Alipay certificate",
                ))
            }
            _ => Ok(Cow::Borrowed(&self.app.alipay_public_key)),
        }
    }
}
