//! App registration: the app public key (and AES key, cert mode) a merchant registers, which
//! the gateway verifies requests against, and the `/apps` and `/alipay-public-key` routes that
//! tell merchants what to configure in return.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde_json::{Value, json};

use trellis_alipay::aes::AesKey;
use trellis_alipay::keys::PublicKey;

use crate::{Error, Sandbox};

/// How an app identifies consumers. Alipay configures each app for one: a UID-mode app gets
/// the consumer's `user_id` (2088…), an OpenID-mode app (the default for apps created since
/// 2023) only an `open_id`, which differs from app to app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    #[default]
    Uid,
    OpenId,
}

impl Sandbox {
    /// The identity mode `app_id` was registered with.
    pub(crate) async fn identity_of(&self, app_id: &str) -> Identity {
        match self.store().get("app", app_id).await {
            Ok(Some(app)) if app["identity"] == "openid" => Identity::OpenId,
            _ => Identity::Uid,
        }
    }

    /// Registers (or replaces) an app: its public key and optional AES key.
    pub async fn register_app(
        &self,
        app_id: &str,
        app_public_key: &str,
        aes_key: Option<&str>,
        cert_mode: bool,
    ) -> Result<Value, Error> {
        self.register_app_as(app_id, app_public_key, aes_key, cert_mode, Identity::Uid)
            .await
    }

    /// [`Self::register_app`] for an app in the given identity mode.
    pub async fn register_app_as(
        &self,
        app_id: &str,
        app_public_key: &str,
        aes_key: Option<&str>,
        cert_mode: bool,
        identity: Identity,
    ) -> Result<Value, Error> {
        let key = PublicKey::parse(app_public_key)?;
        if let Some(aes) = aes_key {
            AesKey::parse(&SecretString::from(aes.to_owned()))?;
        }
        let mut record = json!({
            "app_public_key": app_public_key, "aes_key": aes_key, "cert_mode": cert_mode, "identity": identity,
        });
        let mut answer = json!({});
        if cert_mode {
            let (app_cert_sn, certificates) = self.certify_app(app_id, &key).await?;
            record["app_cert_sn"] = json!(app_cert_sn);
            answer = certificates;
        }
        self.store().put("app", app_id, &record).await?;
        Ok(answer)
    }
}

pub(crate) async fn alipay_public_key(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(
        json!({ "alipay_public_key": sandbox.public_key().to_base64(), "gateway_url": sandbox.gateway_url() }),
    )
}

#[derive(serde::Deserialize)]
pub(crate) struct RegisterApp {
    app_id: String,
    app_public_key: String,
    #[serde(default)]
    aes_key: Option<String>,
    /// 公钥证书模式: the answer carries the app certificate, Alipay's and the root.
    #[serde(default)]
    cert_mode: bool,
    /// `uid` (default) or `openid`: which consumer identifier the app receives.
    #[serde(default)]
    identity: Identity,
}

pub(crate) async fn register(
    State(sandbox): State<Sandbox>,
    Json(body): Json<RegisterApp>,
) -> Response {
    match sandbox
        .register_app_as(
            &body.app_id,
            &body.app_public_key,
            body.aes_key.as_deref(),
            body.cert_mode,
            body.identity,
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
