//! Certificate mode (公钥证书模式): the sandbox's CA as stored state — its root, Alipay's
//! rotatable signing certificates, app certificates — the key cert-mode answers are signed
//! with, `alipay.open.app.alipaycert.download`, and the `/certificates` and
//! `/rotate-alipay-cert` routes. The X.509 minting itself is in [`crate::certs`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use trellis_alipay::keys::{PrivateKey, PublicKey};

use crate::gateway::{Outcome, busy, fail, missing};
use crate::{Error, Sandbox, certs, text};

impl Sandbox {
    /// Certifies a cert-mode app's key: its certificate's SN to remember, and what the app
    /// must be given (its certificate, Alipay's and the root).
    pub(crate) async fn certify_app(
        &self,
        app_id: &str,
        key: &PublicKey,
    ) -> Result<(String, Value), Error> {
        let ca = self.authority().await?;
        let root_key = ca_key(&ca, "root_key")?;
        let app_cert = certs::issue(&root_key, &format!("app {app_id}"), key.spki_der())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let app_cert_sn = trellis_alipay::cert::cert_sn(&app_cert)?;
        let current = ca["current_sn"].as_str().unwrap_or_default();
        let answer = json!({
            "app_cert": app_cert,
            "alipay_cert": ca["certs"][current]["pem"],
            "alipay_root_cert": ca["root_pem"],
        });
        Ok((app_cert_sn, answer))
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
    pub(crate) async fn cert_signer(&self, app_id: &str) -> Option<(String, PrivateKey)> {
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

    /// Any certificate the sandbox has signed with, by SN, so apps can still verify answers
    /// signed before a rotation.
    pub(crate) async fn cert_download(&self, biz: &Value) -> Outcome {
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
}

fn ca_key(ca: &Value, field: &str) -> Result<PrivateKey, Error> {
    let text = ca[field]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("the sandbox CA has no {field}")))?;
    Ok(PrivateKey::parse(&SecretString::from(text.to_owned()))?)
}

pub(crate) async fn certificates(State(sandbox): State<Sandbox>) -> Response {
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

pub(crate) async fn rotate_cert(State(sandbox): State<Sandbox>) -> Response {
    match sandbox.rotate_alipay_certificate().await {
        Ok(sn) => Json(json!({ "alipay_cert_sn": sn })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "code": "unavailable", "message": e.to_string() })),
        )
            .into_response(),
    }
}
