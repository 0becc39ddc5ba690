//! The engine's Alipay client: signs a call with a merchant's key, sends it, verifies the
//! answer with the merchant's Alipay key (fetching a rotated Alipay certificate when the
//! response names one we do not know, trusted only if it chains to the stored root), decrypts
//! AES answers and maps gateway codes.
//!
//! Invariant: a call's result is returned only after its signature verified; spans carry the
//! method and app id, never keys, tokens or bodies (they hold personal data). A learnt
//! certificate verifies answers only for merchants whose own stored root signed it: merchants
//! share the cache, and a root is whatever the merchant uploaded. Every request goes only where
//! the [`GatewayPolicy`] allows, and no answer is read past its size cap or the caller's deadline.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::Instrument;

use super::Error;
use super::aes::AesKey;
use super::gateway::{self, GatewayPolicy};
use super::keys::{PrivateKey, PublicKey, SignType};
use super::response::{self, KeyLookup};
use super::signing::{AppIdentity, RequestSpec, SignedRequest, sign_request};

/// Everything needed to sign for and verify on behalf of one merchant, opened from the vault.
pub struct MerchantApp {
    pub merchant_id: String,
    pub app_id: String,
    pub sign_type: SignType,
    pub private_key: PrivateKey,
    pub alipay_public_key: PublicKey,
    pub aes: Option<AesKey>,
    pub gateway_url: String,
    /// Certificate mode: (app_cert_sn, alipay_root_cert_sn) to send, and the Alipay cert SN known.
    pub cert_sns: Option<(String, String)>,
    pub alipay_cert_sn: Option<String>,
    pub alipay_root_cert: Option<String>,
}

impl std::fmt::Debug for MerchantApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerchantApp")
            .field("merchant_id", &self.merchant_id)
            .field("app_id", &self.app_id)
            .finish()
    }
}

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
    /// The caller's deadline: the call, retries and certificate downloads included, fails with
    /// [`Error::DeadlineExceeded`] when it passes.
    pub deadline: Option<Instant>,
}

type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// One HTTP client for every merchant: keys come with each call, never stay here.
#[derive(Clone)]
pub struct AlipayClient {
    http: reqwest::Client,
    policy: Arc<GatewayPolicy>,
    clock: Clock,
    /// Alipay certificates learnt in certificate mode, shared by all calls and merchants.
    certs: Arc<Learnt>,
}

impl std::fmt::Debug for AlipayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlipayClient")
    }
}

/// Query methods may be retried on transport failures; anything that changes state may not.
/// Neither may a call made with a consumer's `auth_token`: Alipay lets a token be used a set
/// number of times (twice in the member-card flow: the form query, then the card), so an attempt
/// lost in transit may have spent the use the next step needs.
fn is_retryable(method: &str, options: &CallOptions) -> bool {
    options.auth_token.is_none() && (method.ends_with(".query") || method.ends_with(".batchquery"))
}

impl AlipayClient {
    /// A client for Alipay's own gateways only ([`GatewayPolicy::default`]).
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Result<Self, Error> {
        Self::with_policy(GatewayPolicy::default(), connect_timeout, timeout)
    }

    /// A client that sends requests only where `policy` allows.
    pub fn with_policy(
        policy: GatewayPolicy,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve and connect to the gateway itself, where the policy's
            // resolver cannot check the address.
            .no_proxy()
            .dns_resolver(gateway::resolver(Arc::clone(&policy)))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Self {
            http,
            policy,
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
        until(
            options.deadline,
            self.call_inner(app, method, biz_content, options),
        )
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
            .post(&app.gateway_url, &signed, is_retryable(method, options))
            .await?;
        self.answer(app, method, &body).await
    }

    /// Verifies and decodes a gateway answer: learns a rotated Alipay certificate first (in
    /// certificate mode), checks the signature, decrypts an AES node and maps the codes.
    async fn answer(&self, app: &MerchantApp, method: &str, body: &str) -> Result<Value, Error> {
        let roots = stored_roots(app);
        if let Some(sn) = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["alipay_cert_sn"].as_str().map(str::to_owned))
            && app.cert_sns.is_some()
            && Some(&sn) != app.alipay_cert_sn.as_ref()
            && self.certs.get(&roots, &sn).is_none()
            && method != "alipay.open.app.alipaycert.download"
        {
            self.learn_certificate(app, &sn).await?;
        }
        let keys = Keys {
            app,
            roots: &roots,
            learnt: &self.certs,
        };
        let verified = response::verify_response(body, method, app.sign_type, &keys)?;
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
        self.upload_image_until(app, image_type, image_name, content, None)
            .await
    }

    /// [`Self::upload_image`], failing with [`Error::DeadlineExceeded`] at `deadline`.
    pub async fn upload_image_until(
        &self,
        app: &MerchantApp,
        image_type: &str,
        image_name: &str,
        content: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Value, Error> {
        let method = "alipay.offline.material.image.upload";
        let span = tracing::info_span!("trellis.alipay.call", method, app_id = %app.app_id);
        let upload = async {
            let url = self.policy.check_url(&app.gateway_url)?;
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
            // As the SDKs send it: the common parameters in the URL, each business parameter
            // as a text part, the file as a part with its name and media type.
            let mut form = reqwest::multipart::Form::new();
            for (k, v) in signed.business_params() {
                form = form.text(k.clone(), v.clone());
            }
            let part = reqwest::multipart::Part::bytes(content)
                .file_name(upload_file_name(image_name, image_type))
                .mime_str(image_media_type(image_type))
                .map_err(|e| Error::BadRequest(e.to_string()))?;
            form = form.part("image_content", part);
            let mut url = url;
            url.set_query(Some(&signed.query_string()));
            let response = self
                .http
                .post(url)
                .multipart(form)
                .send()
                .await
                .map_err(gateway::transport)?;
            if !response.status().is_success() {
                return Err(Error::Transport(format!(
                    "gateway answered HTTP {}",
                    response.status()
                )));
            }
            let body = gateway::read_capped(response, self.policy.max_response_bytes()).await?;
            self.answer(app, method, &body).await
        };
        until(deadline, upload).instrument(span).await
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
        let body = self.post(&app.gateway_url, &signed, true).await?;
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
        let super::cert::Anchored {
            sn: real_sn,
            key,
            root_fingerprint,
        } = super::cert::trust_anchored(&pem, root, Utc::now())?;
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
        self.certs.insert(root_fingerprint, real_sn, key);
        tracing::info!(alipay_cert_sn = sn, "learnt a rotated Alipay certificate");
        Ok(())
    }

    /// Posts a signed request: the common parameters in the URL's query, the business ones in
    /// the form body.
    async fn post(
        &self,
        url: &str,
        signed: &SignedRequest,
        retryable: bool,
    ) -> Result<String, Error> {
        let mut url = self.policy.check_url(url)?;
        url.set_query(Some(&signed.query_string()));
        let form = signed.business_body();
        let attempts = if retryable { 3 } else { 1 };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1))).await;
            }
            let sent = self
                .http
                .post(url.clone())
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
                    return gateway::read_capped(response, self.policy.max_response_bytes()).await;
                }
                Err(error) => match gateway::transport(error) {
                    refused @ Error::GatewayRefused(_) => return Err(refused),
                    other => last = Some(other),
                },
            }
        }
        Err(last.unwrap_or_else(|| Error::Transport("no attempt made".into())))
    }
}

/// The upload's file name: the image's name with the extension `image_type` names, once.
fn upload_file_name(image_name: &str, image_type: &str) -> String {
    let ext = format!(".{}", image_type.to_ascii_lowercase());
    if image_name.to_ascii_lowercase().ends_with(&ext) {
        image_name.to_owned()
    } else {
        format!("{image_name}{ext}")
    }
}

/// The media type of an upload's file part, from Alipay's `image_type`.
fn image_media_type(image_type: &str) -> &'static str {
    match image_type.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// Runs `call` until `deadline`, if there is one: past it the request is dropped mid-flight.
async fn until<T>(
    deadline: Option<Instant>,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), call)
            .await
            .unwrap_or(Err(Error::DeadlineExceeded)),
        None => call.await,
    }
}

/// Learnt Alipay certificates' keys by (fingerprint of the root that signed the certificate, SN).
/// The SN alone names nothing: it hashes only the issuer's name and the serial, which anyone's
/// root can reproduce.
#[derive(Default)]
struct Learnt(RwLock<HashMap<(String, String), PublicKey>>);

impl Learnt {
    /// The key of certificate `sn` if one of `roots` (a merchant's stored roots) signed it.
    fn get(&self, roots: &[String], sn: &str) -> Option<PublicKey> {
        let learnt = self.0.read().ok()?;
        roots
            .iter()
            .find_map(|root| learnt.get(&(root.clone(), sn.to_owned())).cloned())
    }

    fn insert(&self, root_fingerprint: String, sn: String, key: PublicKey) {
        if let Ok(mut learnt) = self.0.write() {
            learnt.insert((root_fingerprint, sn), key);
        }
    }
}

/// The fingerprints of the roots `app` stored that may vouch for a certificate; none when it has
/// none or they do not parse, which leaves it only its own stored certificate.
fn stored_roots(app: &MerchantApp) -> Vec<String> {
    app.alipay_root_cert
        .as_deref()
        .and_then(|pem| super::cert::rsa_root_fingerprints(pem).ok())
        .unwrap_or_default()
}

struct Keys<'a> {
    app: &'a MerchantApp,
    roots: &'a [String],
    learnt: &'a Learnt,
}

impl KeyLookup for Keys<'_> {
    fn key_for(&self, sn: Option<&str>) -> Result<Cow<'_, PublicKey>, Error> {
        match sn {
            Some(sn)
                if self.app.cert_sns.is_some()
                    && Some(sn) != self.app.alipay_cert_sn.as_deref() =>
            {
                self.learnt
                    .get(self.roots, sn)
                    .map(Cow::Owned)
                    .ok_or(Error::UntrustedCertificate(
                        "the response names an unknown Alipay certificate",
                    ))
            }
            _ => Ok(Cow::Borrowed(&self.app.alipay_public_key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    #[test]
    fn only_queries_without_a_consumer_token_are_retried() {
        let none = CallOptions::default();
        let token = CallOptions {
            auth_token: Some("authusrB1".into()),
            ..CallOptions::default()
        };
        assert!(is_retryable("alipay.trade.query", &none));
        assert!(!is_retryable("alipay.trade.pay", &none));
        // The member-card token serves a set number of calls: a lost attempt may have spent one.
        assert!(!is_retryable(
            "alipay.marketing.card.activateform.query",
            &token
        ));
        assert!(!is_retryable("alipay.user.info.share", &token));
    }

    #[test]
    fn an_upload_names_its_file_once_with_the_extension_and_media_type() {
        assert_eq!(upload_file_name("logo", "png"), "logo.png");
        assert_eq!(upload_file_name("logo.PNG", "png"), "logo.PNG");
        assert_eq!(image_media_type("jpg"), "image/jpeg");
    }

    use base64::Engine as _;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        SerialNumber,
    };
    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;
    use crate::cert;
    use crate::{PrivateKey, SignType};

    fn rcgen_key(key: &PrivateKey) -> KeyPair {
        let body = key.to_pkcs8_base64();
        let lines: Vec<&str> = body
            .expose_secret()
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
    }

    /// Every root here has this subject: a name proves nothing.
    fn root_params() -> CertificateParams {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "CN");
        dn.push(DnType::OrganizationName, "Ant Financial");
        dn.push(DnType::OrganizationalUnitName, "Certification Authority");
        dn.push(
            DnType::CommonName,
            "Ant Financial Certification Authority R1",
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.serial_number = Some(SerialNumber::from_slice(&[0x1f, 0xcf]));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2060, 1, 1);
        params
    }

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Self {
            let key = rcgen_key(&PrivateKey::generate().unwrap());
            let pem = root_params().self_signed(&key).unwrap().pem();
            Self {
                pem,
                issuer: Issuer::new(root_params(), key),
            }
        }

        /// An Alipay signing certificate with `serial`, and its key.
        fn issue(&self, serial: u8) -> (String, Arc<PrivateKey>) {
            let key = PrivateKey::generate().unwrap();
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "Alipay RSA2");
            params.serial_number = Some(SerialNumber::from_slice(&[0x20, serial]));
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2060, 1, 1);
            let pem = params
                .signed_by(&rcgen_key(&key), &self.issuer)
                .unwrap()
                .pem();
            (pem, Arc::new(key))
        }
    }

    /// What a gateway answers: every call signed by `signer` (named by its SN), and the
    /// certificates `alipaycert.download` hands out.
    #[derive(Default)]
    struct Behaviour {
        signer: Option<(String, Arc<PrivateKey>)>,
        certs: HashMap<String, String>,
    }

    type Gateway = Arc<Mutex<Behaviour>>;

    fn behave(gateway: &Gateway, signer: (&str, &Arc<PrivateKey>), certs: &[&str]) {
        let mut b = gateway.lock().unwrap();
        b.signer = Some((signer.0.to_owned(), Arc::clone(signer.1)));
        b.certs = certs
            .iter()
            .map(|pem| (cert::cert_sn(pem).unwrap(), (*pem).to_owned()))
            .collect();
    }

    async fn answer(
        axum::extract::State(gateway): axum::extract::State<Gateway>,
        uri: axum::http::Uri,
        form: String,
    ) -> String {
        // Like Alipay's gateway: the common parameters in the query, the business ones in the body.
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .chain(url::form_urlencoded::parse(form.as_bytes()))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        let method = params["method"].clone();
        let b = gateway.lock().unwrap();
        let node = if method == "alipay.open.app.alipaycert.download" {
            let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
            match b.certs.get(biz["alipay_cert_sn"].as_str().unwrap()) {
                Some(pem) => json!({"code": "10000", "msg": "Success",
                    "alipay_cert_content": base64::engine::general_purpose::STANDARD.encode(pem)}),
                None => json!({"code": "40004", "msg": "Business Failed",
                    "sub_code": "isv.cert-not-exist", "sub_msg": "no such certificate"}),
            }
        } else {
            json!({"code": "10000", "msg": "Success", "trade_status": "TRADE_SUCCESS"})
        }
        .to_string();
        let (sn, key) = b.signer.as_ref().unwrap();
        let sign = key.sign(SignType::Rsa2, &node).unwrap();
        format!(
            "{{\"{}\":{node},\"alipay_cert_sn\":\"{sn}\",\"sign\":\"{sign}\"}}",
            response::response_key(&method)
        )
    }

    async fn gateway() -> (Gateway, String) {
        let gateway = Gateway::default();
        let app = axum::Router::new()
            .route("/gateway.do", axum::routing::post(answer))
            .with_state(Arc::clone(&gateway));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/gateway.do", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (gateway, url)
    }

    /// A certificate-mode merchant whose stored root is `root` and Alipay certificate `stored`.
    fn merchant(id: &str, gateway_url: &str, root: &str, stored: &str) -> MerchantApp {
        MerchantApp {
            merchant_id: id.into(),
            app_id: "2021004100000001".into(),
            sign_type: SignType::Rsa2,
            private_key: PrivateKey::generate().unwrap(),
            alipay_public_key: cert::public_key(stored).unwrap(),
            aes: None,
            gateway_url: gateway_url.into(),
            cert_sns: Some(("app".into(), cert::root_cert_sn(root).unwrap())),
            alipay_cert_sn: Some(cert::cert_sn(stored).unwrap()),
            alipay_root_cert: Some(root.into()),
        }
    }

    async fn query(client: &AlipayClient, app: &MerchantApp) -> Result<Value, Error> {
        client
            .call(
                app,
                "alipay.trade.query",
                Some(&json!({"out_trade_no": "1"})),
                &CallOptions::default(),
            )
            .await
    }

    /// Alipay's root with its current and rotated certificates, and a merchant's forgeries of
    /// both under a root of the same name: the forged rotated certificate has the real one's SN.
    struct World {
        genuine_root: String,
        genuine_current: String,
        genuine_rotated: (String, Arc<PrivateKey>),
        forged_root: String,
        forged_current: String,
        forged_rotated: (String, Arc<PrivateKey>),
        rotated_sn: String,
    }

    fn world() -> World {
        let alipay = Ca::new();
        let attacker = Ca::new();
        let genuine_rotated = alipay.issue(2);
        let forged_rotated = attacker.issue(2);
        let rotated_sn = cert::cert_sn(&genuine_rotated.0).unwrap();
        assert_eq!(cert::cert_sn(&forged_rotated.0).unwrap(), rotated_sn);
        assert_eq!(
            cert::root_cert_sn(&alipay.pem).unwrap(),
            cert::root_cert_sn(&attacker.pem).unwrap(),
            "the roots are indistinguishable by name and SN"
        );
        World {
            genuine_current: alipay.issue(1).0,
            forged_current: attacker.issue(3).0,
            genuine_root: alipay.pem,
            forged_root: attacker.pem,
            genuine_rotated,
            forged_rotated,
            rotated_sn,
        }
    }

    fn client() -> AlipayClient {
        AlipayClient::with_policy(
            GatewayPolicy::local_sandbox(),
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_forged_root_cannot_poison_another_merchants_trust() {
        let w = world();
        let client = client();
        let (evil, evil_url) = gateway().await;
        let (alipay, alipay_url) = gateway().await;
        let attacker = merchant("a", &evil_url, &w.forged_root, &w.forged_current);
        let victim = merchant("b", &alipay_url, &w.genuine_root, &w.genuine_current);

        // The attacker's gateway names the SN of Alipay's rotated certificate and hands out the
        // forgery: it chains to the attacker's own root, so the attacker's calls go through.
        behave(
            &evil,
            (&w.rotated_sn, &w.forged_rotated.1),
            &[&w.forged_rotated.0],
        );
        query(&client, &attacker).await.unwrap();

        // An answer for the victim signed with the forged key is not taken as Alipay's...
        behave(
            &alipay,
            (&w.rotated_sn, &w.forged_rotated.1),
            &[&w.forged_rotated.0],
        );
        let forged = query(&client, &victim).await;
        assert!(
            matches!(forged, Err(Error::UntrustedCertificate(_))),
            "{forged:?}"
        );
        // ...and Alipay's genuine answers under the same SN still verify for the victim.
        behave(
            &alipay,
            (&w.rotated_sn, &w.genuine_rotated.1),
            &[&w.genuine_rotated.0],
        );
        query(&client, &victim).await.unwrap();
        query(&client, &attacker).await.unwrap();
    }

    #[tokio::test]
    async fn a_certificate_learnt_for_one_root_is_not_trusted_under_another() {
        let w = world();
        let client = client();
        let (alipay, alipay_url) = gateway().await;
        let (other, other_url) = gateway().await;
        let victim = merchant("b", &alipay_url, &w.genuine_root, &w.genuine_current);
        let stranger = merchant("a", &other_url, &w.forged_root, &w.forged_current);
        behave(
            &alipay,
            (&w.rotated_sn, &w.genuine_rotated.1),
            &[&w.genuine_rotated.0],
        );
        query(&client, &victim).await.unwrap();

        // Alipay's rotated certificate, known for the victim, does not chain to the other
        // merchant's root: answers under it are refused there, however genuine.
        behave(
            &other,
            (&w.rotated_sn, &w.genuine_rotated.1),
            &[&w.genuine_rotated.0],
        );
        let result = query(&client, &stranger).await;
        assert!(
            matches!(result, Err(Error::UntrustedCertificate(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn merchants_on_the_same_root_share_what_was_learnt() {
        let w = world();
        let client = client();
        let (alipay, alipay_url) = gateway().await;
        let (quiet, quiet_url) = gateway().await;
        let first = merchant("b", &alipay_url, &w.genuine_root, &w.genuine_current);
        let second = merchant("c", &quiet_url, &w.genuine_root, &w.genuine_current);
        behave(
            &alipay,
            (&w.rotated_sn, &w.genuine_rotated.1),
            &[&w.genuine_rotated.0],
        );
        query(&client, &first).await.unwrap();
        // This gateway cannot hand out the certificate: the second merchant verifies with the
        // one learnt for the first, since the same root vouched for it.
        behave(&quiet, (&w.rotated_sn, &w.genuine_rotated.1), &[]);
        query(&client, &second).await.unwrap();
    }
}
