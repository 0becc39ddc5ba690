//! Merchant Alipay credentials at rest: what the merchant enters (app id, key mode, keys or
//! certificates, AES key, gateway), validated, with every secret sealed by the vault.
//!
//! Invariant: reading credentials returns only non-secret fields plus what is derived from the
//! secrets (the app public key and its fingerprint); the private key and AES key are opened only
//! inside [`load_app`], for signing.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::aes::AesKey;
use super::gateway::GatewayPolicy;
use super::keys::{PrivateKey, PublicKey, SignType};
use super::{Error as AlipayError, cert};
use crate::db::entity::alipay_credentials as row;
use crate::rbac::{Action, Grant};
use crate::secrets::{self, Sealed, Vault};
use crate::tenancy::NodeKind;

/// Alipay's production gateway.
pub const PRODUCTION_GATEWAY: &str = "https://openapi.alipay.com/gateway.do";
/// Alipay's own sandbox.
pub const SANDBOX_GATEWAY: &str = "https://openapi-sandbox.dl.alipaydev.com/gateway.do";
/// The host of [`PRODUCTION_GATEWAY`]: a `custom` URL on it is held to the production rules.
const PRODUCTION_HOST: &str = "openapi.alipay.com";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the merchant has no Alipay credentials yet")]
    NotConfigured,
    #[error(transparent)]
    Secrets(#[from] secrets::Error),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

fn invalid(field: &'static str, message: impl std::fmt::Display) -> Error {
    Error::Invalid {
        field,
        message: message.to_string(),
    }
}

/// The Alipay roots a merchant may store for the production gateway in certificate mode
/// (`alipay.production_root_fingerprints`), as SHA-256 fingerprints of the roots' DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductionRoots(Vec<String>);

impl ProductionRoots {
    /// Alipay's published roots, [`cert::ALIPAY_PRODUCTION_ROOT_FINGERPRINTS`].
    pub fn published() -> Self {
        Self::new(cert::ALIPAY_PRODUCTION_ROOT_FINGERPRINTS)
    }

    /// Fingerprints in any usual spelling; an entry that is not one pins nothing, so a typo
    /// refuses roots rather than admitting them.
    pub fn new<S: AsRef<str>>(fingerprints: impl IntoIterator<Item = S>) -> Self {
        Self(
            fingerprints
                .into_iter()
                .filter_map(|f| cert::normalize_fingerprint(f.as_ref()))
                .collect(),
        )
    }

    fn allows(&self, fingerprint: &str) -> bool {
        self.0.iter().any(|f| f == fingerprint)
    }
}

impl Default for ProductionRoots {
    fn default() -> Self {
        Self::published()
    }
}

/// Whether calls go to Alipay's production gateway, whichever way the merchant named it.
fn targets_production(kind: GatewayKind, custom_url: Option<&str>) -> bool {
    match kind {
        GatewayKind::Production => true,
        GatewayKind::Sandbox => false,
        GatewayKind::Custom => custom_url
            .and_then(|u| url::Url::parse(u).ok())
            .is_some_and(|u| u.host_str() == Some(PRODUCTION_HOST)),
    }
}

/// A root bundle holds for production only if every root that can vouch for a certificate is
/// Alipay's: a merchant's own root with Alipay's name would make any key pass as Alipay's.
fn check_pinned(root_pem: &str, roots: &ProductionRoots) -> Result<(), Error> {
    let fingerprints =
        cert::rsa_root_fingerprints(root_pem).map_err(|e| invalid("alipay_root_cert", e))?;
    if fingerprints.is_empty() {
        return Err(invalid(
            "alipay_root_cert",
            "the bundle holds no RSA-signed root",
        ));
    }
    match fingerprints.iter().find(|fp| !roots.allows(fp)) {
        Some(fp) => Err(invalid(
            "alipay_root_cert",
            format!(
                "the production gateway accepts only Alipay's published root certificate \
                 (alipayRootCert.crt); this bundle holds a root with SHA-256 fingerprint {fp}, \
                 which alipay.production_root_fingerprints does not list"
            ),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// 公钥模式: the Alipay public key is pasted in.
    PublicKey,
    /// 公钥证书模式: app certificate, Alipay certificate and Alipay root bundle.
    Certificate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GatewayKind {
    Production,
    /// Alipay's own sandbox environment.
    Sandbox,
    /// Any other URL, e.g. the engine's offline sandbox.
    Custom,
}

/// What a merchant (or a tier above) submits. Secrets are optional on update: absent keeps the
/// stored one (e.g. a key pair generated by the engine); an empty `aes_key` removes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CredentialsInput {
    pub app_id: String,
    #[serde(default)]
    pub sign_type: Option<SignType>,
    pub key_mode: KeyMode,
    /// PKCS#1 or PKCS#8, PEM or bare base64.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password)]
    pub app_private_key: Option<SecretString>,
    /// Public-key mode: Alipay's public key (SPKI, PEM or bare base64).
    #[serde(default)]
    pub alipay_public_key: Option<String>,
    /// Certificate mode: the three PEM files.
    #[serde(default)]
    pub app_cert: Option<String>,
    #[serde(default)]
    pub alipay_cert: Option<String>,
    #[serde(default)]
    pub alipay_root_cert: Option<String>,
    /// base64 of 16 bytes; empty removes it.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password)]
    pub aes_key: Option<SecretString>,
    pub gateway: GatewayKind,
    /// Required for `custom`.
    #[serde(default)]
    pub gateway_url: Option<String>,
}

/// Credentials as any API shows them: nothing secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CredentialsView {
    pub merchant_id: String,
    pub app_id: Option<String>,
    pub key_mode: KeyMode,
    pub sign_type: SignType,
    pub gateway: GatewayKind,
    pub gateway_url: String,
    /// Derived from the stored private key: paste it into Alipay's console as 应用公钥.
    pub app_public_key: Option<String>,
    pub app_public_key_fingerprint: Option<String>,
    pub alipay_public_key_fingerprint: Option<String>,
    pub app_cert_sn: Option<String>,
    pub alipay_cert_sn: Option<String>,
    pub alipay_root_cert_sn: Option<String>,
    pub has_app_private_key: bool,
    pub has_aes_key: bool,
    /// Whether everything needed to call Alipay is present.
    pub complete: bool,
    pub updated_at: chrono::DateTime<Utc>,
}

fn parse_gateway(kind: &str) -> GatewayKind {
    match kind {
        "production" => GatewayKind::Production,
        "sandbox" => GatewayKind::Sandbox,
        _ => GatewayKind::Custom,
    }
}

fn gateway_str(kind: GatewayKind) -> &'static str {
    match kind {
        GatewayKind::Production => "production",
        GatewayKind::Sandbox => "sandbox",
        GatewayKind::Custom => "custom",
    }
}

fn gateway_url(kind: GatewayKind, custom: Option<&str>) -> String {
    match kind {
        GatewayKind::Production => PRODUCTION_GATEWAY.to_owned(),
        GatewayKind::Sandbox => SANDBOX_GATEWAY.to_owned(),
        GatewayKind::Custom => custom.unwrap_or_default().to_owned(),
    }
}

fn view(model: &row::Model) -> CredentialsView {
    let key_mode = if model.key_mode == "certificate" {
        KeyMode::Certificate
    } else {
        KeyMode::PublicKey
    };
    let alipay_fp = model
        .alipay_public_key
        .as_deref()
        .and_then(|k| PublicKey::parse(k).ok())
        .map(|k| k.fingerprint());
    let has_private = model.app_private_key.is_some();
    let has_alipay_side = match key_mode {
        KeyMode::PublicKey => model.alipay_public_key.is_some(),
        KeyMode::Certificate => {
            model.alipay_cert.is_some()
                && model.alipay_root_cert.is_some()
                && model.app_cert.is_some()
        }
    };
    let gateway = parse_gateway(&model.gateway);
    CredentialsView {
        merchant_id: model.merchant_id.clone(),
        app_id: model.app_id.clone(),
        key_mode,
        sign_type: SignType::parse(&model.sign_type).unwrap_or(SignType::Rsa2),
        gateway,
        gateway_url: gateway_url(gateway, model.gateway_url.as_deref()),
        app_public_key: model.app_public_key.clone(),
        app_public_key_fingerprint: model.fingerprint.clone(),
        alipay_public_key_fingerprint: alipay_fp,
        app_cert_sn: model.app_cert_sn.clone(),
        alipay_cert_sn: model.alipay_cert_sn.clone(),
        alipay_root_cert_sn: model.alipay_root_cert_sn.clone(),
        has_app_private_key: has_private,
        has_aes_key: model.aes_key.is_some(),
        complete: model.app_id.is_some() && has_private && has_alipay_side,
        updated_at: model.updated_at,
    }
}

fn aad(merchant_id: &str, field: &str) -> String {
    format!("alipay:{merchant_id}:{field}")
}

fn check_merchant(grant: &Grant, action: Action) -> Result<&str, Error> {
    if grant.action() != action || grant.target().kind != NodeKind::Merchant {
        return Err(invalid("merchant_id", "credentials belong to a merchant"));
    }
    Ok(grant.target().id.as_str())
}

/// The stored credentials of a merchant, if any, as the API may show them.
pub async fn get(
    db: &impl ConnectionTrait,
    merchant_id: &str,
) -> Result<Option<CredentialsView>, Error> {
    Ok(row::Entity::find_by_id(merchant_id)
        .one(db)
        .await?
        .as_ref()
        .map(view))
}

fn blank(grant: &Grant, merchant_id: &str) -> row::Model {
    row::Model {
        merchant_id: merchant_id.to_owned(),
        partner_id: grant.target().partner_id.clone(),
        agent_id: grant.target().agent_id.clone(),
        app_id: None,
        key_mode: "public_key".to_owned(),
        sign_type: SignType::Rsa2.as_str().to_owned(),
        gateway: "production".to_owned(),
        gateway_url: None,
        app_private_key: None,
        app_private_key_kid: None,
        app_public_key: None,
        fingerprint: None,
        alipay_public_key: None,
        app_cert: None,
        alipay_cert: None,
        alipay_root_cert: None,
        app_cert_sn: None,
        alipay_cert_sn: None,
        alipay_root_cert_sn: None,
        aes_key: None,
        aes_key_kid: None,
        updated_by: Some(grant.actor().id.clone()),
        updated_at: Utc::now(),
    }
}

async fn save(
    db: &impl ConnectionTrait,
    model: row::Model,
    exists: bool,
) -> Result<row::Model, Error> {
    let active = row::ActiveModel {
        merchant_id: Set(model.merchant_id),
        partner_id: Set(model.partner_id),
        agent_id: Set(model.agent_id),
        app_id: Set(model.app_id),
        key_mode: Set(model.key_mode),
        sign_type: Set(model.sign_type),
        gateway: Set(model.gateway),
        gateway_url: Set(model.gateway_url),
        app_private_key: Set(model.app_private_key),
        app_private_key_kid: Set(model.app_private_key_kid),
        app_public_key: Set(model.app_public_key),
        fingerprint: Set(model.fingerprint),
        alipay_public_key: Set(model.alipay_public_key),
        app_cert: Set(model.app_cert),
        alipay_cert: Set(model.alipay_cert),
        alipay_root_cert: Set(model.alipay_root_cert),
        app_cert_sn: Set(model.app_cert_sn),
        alipay_cert_sn: Set(model.alipay_cert_sn),
        alipay_root_cert_sn: Set(model.alipay_root_cert_sn),
        aes_key: Set(model.aes_key),
        aes_key_kid: Set(model.aes_key_kid),
        updated_by: Set(model.updated_by),
        updated_at: Set(model.updated_at),
    };
    Ok(if exists {
        active.update(db).await?
    } else {
        active.insert(db).await?
    })
}

/// Whether the platform lets a merchant use the gateway `input` names: a `custom` one only when
/// `alipay.allow_custom_gateway` is on, and at an IP-literal host only at an address the policy
/// permits. The API checks this before [`put`]; the client checks every call again (and every
/// name as it resolves), so credentials stored under another policy gain nothing.
pub fn check_gateway(input: &CredentialsInput, gateways: &GatewayPolicy) -> Result<(), Error> {
    if input.gateway != GatewayKind::Custom {
        return Ok(());
    }
    if !gateways.allows_custom() {
        return Err(invalid(
            "gateway",
            "custom gateways are not enabled on this platform; use production or sandbox",
        ));
    }
    let url = input
        .gateway_url
        .as_deref()
        .map(str::trim)
        .unwrap_or_default();
    match gateways.check_url(url) {
        Ok(_) => Ok(()),
        Err(AlipayError::GatewayRefused(reason)) => Err(invalid("gateway_url", reason)),
        Err(other) => Err(invalid("gateway_url", other)),
    }
}

/// Sets or replaces the merchant's credentials (the grant's target), after validating every
/// key and certificate and checking that they belong together; a production root must be one of
/// Alipay's published roots.
pub async fn put(
    db: &impl ConnectionTrait,
    vault: &Vault,
    grant: &Grant,
    input: CredentialsInput,
) -> Result<CredentialsView, Error> {
    put_with_roots(db, vault, grant, input, &ProductionRoots::published()).await
}

/// [`put`], with the production roots the configuration pins.
pub async fn put_with_roots(
    db: &impl ConnectionTrait,
    vault: &Vault,
    grant: &Grant,
    input: CredentialsInput,
    production_roots: &ProductionRoots,
) -> Result<CredentialsView, Error> {
    let merchant_id = check_merchant(grant, Action::AlipayCredentialsWrite)?;
    let existing = row::Entity::find_by_id(merchant_id).one(db).await?;
    let exists = existing.is_some();
    let mut model = existing.unwrap_or_else(|| blank(grant, merchant_id));

    let app_id = input.app_id.trim();
    if app_id.is_empty() || app_id.len() > 32 || !app_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "app_id",
            "must be the digits of an Alipay app id, e.g. 2021004100000001",
        ));
    }
    let custom_url = match input.gateway {
        GatewayKind::Custom => {
            let url = input
                .gateway_url
                .as_deref()
                .map(str::trim)
                .unwrap_or_default();
            let parsed = url::Url::parse(url)
                .map_err(|_| invalid("gateway_url", "must be an absolute URL"))?;
            if parsed.scheme() != "https" && parsed.scheme() != "http" {
                return Err(invalid("gateway_url", "must be http or https"));
            }
            Some(url.to_owned())
        }
        _ => None,
    };

    // The private key: a new one, or the stored one.
    let private = match &input.app_private_key {
        Some(text) => {
            let key = PrivateKey::parse(text).map_err(|e| invalid("app_private_key", e))?;
            let sealed = vault.seal(
                key.to_pkcs8_base64().expose_secret().as_bytes(),
                &aad(merchant_id, "app_private_key"),
            )?;
            model.app_private_key = Some(sealed.blob);
            model.app_private_key_kid = Some(sealed.key_id);
            Some(key)
        }
        None => match (&model.app_private_key, &model.app_private_key_kid) {
            (Some(blob), Some(kid)) => {
                let sealed = Sealed {
                    key_id: kid.clone(),
                    blob: blob.clone(),
                };
                let text = vault.open_str(&sealed, &aad(merchant_id, "app_private_key"))?;
                Some(PrivateKey::parse(&text).map_err(|e| invalid("app_private_key", e))?)
            }
            _ => {
                return Err(invalid(
                    "app_private_key",
                    "required (or generate one with POST …/alipay/keypair)",
                ));
            }
        },
    };
    if let Some(key) = &private {
        model.app_public_key = Some(key.public_key().to_base64());
        model.fingerprint = Some(key.public_key().fingerprint());
    }

    match input.key_mode {
        KeyMode::PublicKey => {
            let text = input
                .alipay_public_key
                .as_deref()
                .ok_or_else(|| invalid("alipay_public_key", "required in public-key mode"))?;
            let key = PublicKey::parse(text).map_err(|e| invalid("alipay_public_key", e))?;
            model.alipay_public_key = Some(key.to_base64());
            model.app_cert = None;
            model.alipay_cert = None;
            model.alipay_root_cert = None;
            model.app_cert_sn = None;
            model.alipay_cert_sn = None;
            model.alipay_root_cert_sn = None;
        }
        KeyMode::Certificate => {
            let need = |v: &Option<String>, field: &'static str| {
                v.clone()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| invalid(field, "required in certificate mode"))
            };
            let app_cert = need(&input.app_cert, "app_cert")?;
            let alipay_cert = need(&input.alipay_cert, "alipay_cert")?;
            let root = need(&input.alipay_root_cert, "alipay_root_cert")?;
            if targets_production(input.gateway, custom_url.as_deref()) {
                check_pinned(&root, production_roots)?;
            }
            let app_sn = cert::cert_sn(&app_cert).map_err(|e| invalid("app_cert", e))?;
            let root_sn = cert::root_cert_sn(&root).map_err(|e| invalid("alipay_root_cert", e))?;
            let (alipay_sn, alipay_key) = cert::trust(&alipay_cert, &root, Utc::now())
                .map_err(|e| invalid("alipay_cert", e))?;
            let app_key = cert::public_key(&app_cert).map_err(|e| invalid("app_cert", e))?;
            if let Some(key) = &private
                && app_key.fingerprint() != key.public_key().fingerprint()
            {
                return Err(invalid(
                    "app_cert",
                    "it certifies a different key than the app private key",
                ));
            }
            model.alipay_public_key = Some(alipay_key.to_base64());
            model.app_cert = Some(app_cert);
            model.alipay_cert = Some(alipay_cert);
            model.alipay_root_cert = Some(root);
            model.app_cert_sn = Some(app_sn);
            model.alipay_cert_sn = Some(alipay_sn);
            model.alipay_root_cert_sn = Some(root_sn);
        }
    }
    match &input.aes_key {
        Some(text) if text.expose_secret().trim().is_empty() => {
            model.aes_key = None;
            model.aes_key_kid = None;
        }
        Some(text) => {
            AesKey::parse(text).map_err(|e| invalid("aes_key", e))?;
            let sealed = vault.seal_str(text, &aad(merchant_id, "aes_key"))?;
            model.aes_key = Some(sealed.blob);
            model.aes_key_kid = Some(sealed.key_id);
        }
        None => {}
    }
    model.app_id = Some(app_id.to_owned());
    model.key_mode = match input.key_mode {
        KeyMode::PublicKey => "public_key",
        KeyMode::Certificate => "certificate",
    }
    .to_owned();
    model.sign_type = input
        .sign_type
        .unwrap_or(SignType::Rsa2)
        .as_str()
        .to_owned();
    model.gateway = gateway_str(input.gateway).to_owned();
    model.gateway_url = custom_url;
    model.updated_by = Some(grant.actor().id.clone());
    model.updated_at = Utc::now();
    Ok(view(&save(db, model, exists).await?))
}

/// Generates a 2048-bit key pair for the merchant, stores the private key sealed (replacing any
/// earlier one) and returns the view holding the public key to paste into Alipay.
pub async fn generate_keypair(
    db: &impl ConnectionTrait,
    vault: &Vault,
    grant: &Grant,
) -> Result<CredentialsView, Error> {
    let merchant_id = check_merchant(grant, Action::AlipayCredentialsWrite)?;
    if !vault.is_configured() {
        return Err(secrets::Error::NoMasterKey.into());
    }
    let existing = row::Entity::find_by_id(merchant_id).one(db).await?;
    let exists = existing.is_some();
    let mut model = existing.unwrap_or_else(|| blank(grant, merchant_id));
    // RSA key generation takes tens of milliseconds of CPU: off the async workers, so a flood
    // of these calls cannot stall the server.
    let key = tokio::task::spawn_blocking(PrivateKey::generate)
        .await
        .map_err(|_| invalid("app_private_key", "key generation was interrupted"))?
        .map_err(|e: AlipayError| invalid("app_private_key", e))?;
    let sealed = vault.seal(
        key.to_pkcs8_base64().expose_secret().as_bytes(),
        &aad(merchant_id, "app_private_key"),
    )?;
    model.app_private_key = Some(sealed.blob);
    model.app_private_key_kid = Some(sealed.key_id);
    model.app_public_key = Some(key.public_key().to_base64());
    model.fingerprint = Some(key.public_key().fingerprint());
    model.updated_by = Some(grant.actor().id.clone());
    model.updated_at = Utc::now();
    Ok(view(&save(db, model, exists).await?))
}

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

/// Opens a merchant's app for signing. Only the engine's own Alipay client calls this.
pub async fn load_app(
    db: &impl ConnectionTrait,
    vault: &Vault,
    merchant_id: &str,
) -> Result<MerchantApp, Error> {
    let model = row::Entity::find_by_id(merchant_id)
        .one(db)
        .await?
        .ok_or(Error::NotConfigured)?;
    if !view(&model).complete {
        return Err(Error::NotConfigured);
    }
    let sealed = Sealed {
        key_id: model.app_private_key_kid.clone().unwrap_or_default(),
        blob: model.app_private_key.clone().unwrap_or_default(),
    };
    let private_key =
        PrivateKey::parse(&vault.open_str(&sealed, &aad(merchant_id, "app_private_key"))?)
            .map_err(|e| invalid("app_private_key", e))?;
    let alipay_public_key =
        PublicKey::parse(model.alipay_public_key.as_deref().unwrap_or_default())
            .map_err(|e| invalid("alipay_public_key", e))?;
    let aes = match (&model.aes_key, &model.aes_key_kid) {
        (Some(blob), Some(kid)) => {
            let text = vault.open_str(
                &Sealed {
                    key_id: kid.clone(),
                    blob: blob.clone(),
                },
                &aad(merchant_id, "aes_key"),
            )?;
            Some(AesKey::parse(&text).map_err(|e| invalid("aes_key", e))?)
        }
        _ => None,
    };
    let cert_sns = match (&model.app_cert_sn, &model.alipay_root_cert_sn) {
        (Some(app), Some(root)) if model.key_mode == "certificate" => {
            Some((app.clone(), root.clone()))
        }
        _ => None,
    };
    Ok(MerchantApp {
        merchant_id: merchant_id.to_owned(),
        app_id: model.app_id.clone().unwrap_or_default(),
        sign_type: SignType::parse(&model.sign_type).unwrap_or(SignType::Rsa2),
        private_key,
        alipay_public_key,
        aes,
        gateway_url: gateway_url(parse_gateway(&model.gateway), model.gateway_url.as_deref()),
        cert_sns,
        alipay_cert_sn: model.alipay_cert_sn.clone(),
        alipay_root_cert: model.alipay_root_cert.clone(),
    })
}

/// The partner's merchants whose app has `app_id` (callbacks on a partner's domain are
/// routed by it), in id order.
pub async fn merchants_for_app(
    db: &impl ConnectionTrait,
    partner_id: &str,
    app_id: &str,
) -> Result<Vec<String>, Error> {
    Ok(row::Entity::find()
        .filter(row::Column::AppId.eq(app_id))
        .filter(row::Column::PartnerId.eq(partner_id))
        .order_by_asc(row::Column::MerchantId)
        .all(db)
        .await?
        .into_iter()
        .map(|m| m.merchant_id)
        .collect())
}

/// Re-seals every secret sealed under an older master key with the current one; returns how
/// many values changed. Behind `trellis secrets rotate`.
pub async fn rotate_all(db: &impl ConnectionTrait, vault: &Vault) -> Result<usize, Error> {
    let current = vault
        .current_key_id()
        .ok_or(secrets::Error::NoMasterKey)?
        .to_owned();
    let mut changed = 0;
    for model in row::Entity::find().all(db).await? {
        let merchant_id = model.merchant_id.clone();
        let mut updated = model.clone();
        for (blob, kid, field) in [
            (
                &mut updated.app_private_key,
                &mut updated.app_private_key_kid,
                "app_private_key",
            ),
            (&mut updated.aes_key, &mut updated.aes_key_kid, "aes_key"),
        ] {
            if let (Some(b), Some(k)) = (blob.as_ref(), kid.as_ref())
                && *k != current
                && let Some(resealed) = vault.reseal(
                    &Sealed {
                        key_id: k.clone(),
                        blob: b.clone(),
                    },
                    &aad(&merchant_id, field),
                )?
            {
                *blob = Some(resealed.blob);
                *kid = Some(resealed.key_id);
                changed += 1;
            }
        }
        if updated != model {
            save(db, updated, true).await?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alipay::sandbox::certs;

    fn own_root() -> String {
        certs::root(&PrivateKey::generate().unwrap()).unwrap()
    }

    fn field_and_message(result: Result<(), Error>) -> (&'static str, String) {
        match result {
            Err(Error::Invalid { field, message }) => (field, message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_root_of_ones_own_is_refused_for_production_naming_the_field_and_its_fingerprint() {
        let root = own_root();
        let fingerprint = cert::rsa_root_fingerprints(&root).unwrap().remove(0);
        let (field, message) = field_and_message(check_pinned(&root, &ProductionRoots::default()));
        assert_eq!(field, "alipay_root_cert");
        assert!(message.contains(&fingerprint), "{message}");
        assert!(
            message.contains("alipay.production_root_fingerprints"),
            "{message}"
        );
    }

    #[test]
    fn a_bundle_is_refused_when_any_of_its_rsa_roots_is_not_pinned() {
        let pinned = own_root();
        let extra = own_root();
        let roots = ProductionRoots::new(cert::rsa_root_fingerprints(&pinned).unwrap());
        check_pinned(&pinned, &roots).unwrap();
        let bundle = format!("{pinned}\n{extra}");
        let (field, _) = field_and_message(check_pinned(&bundle, &roots));
        assert_eq!(field, "alipay_root_cert");
    }

    #[test]
    fn the_configured_fingerprints_replace_the_published_ones() {
        let root = own_root();
        let fingerprint = cert::rsa_root_fingerprints(&root).unwrap().remove(0);
        let colons = fingerprint
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        check_pinned(&root, &ProductionRoots::new([colons])).unwrap();
        assert!(check_pinned(&root, &ProductionRoots::new(["not a fingerprint"])).is_err());
    }

    /// Alipay's real bundle (from the shared reference, when present) passes the default pins.
    #[test]
    fn alipays_published_root_bundle_is_accepted_for_production() {
        let Some(samples) = crate::alipay::real_samples() else {
            return;
        };
        let root = samples["certificates"]["alipay_root_cert_pem"]
            .as_str()
            .unwrap();
        check_pinned(root, &ProductionRoots::default()).unwrap();
    }

    #[test]
    fn pinning_applies_to_production_however_it_is_named_and_only_to_it() {
        assert!(targets_production(GatewayKind::Production, None));
        assert!(targets_production(
            GatewayKind::Custom,
            Some("https://OpenAPI.alipay.com/gateway.do")
        ));
        assert!(!targets_production(GatewayKind::Sandbox, None));
        assert!(!targets_production(
            GatewayKind::Custom,
            Some("http://127.0.0.1:8080/sandbox/gateway.do")
        ));
        assert!(!targets_production(
            GatewayKind::Custom,
            Some("https://openapi.alipay.com.example.org/gateway.do")
        ));
    }
}
