//! A merchant's Alipay app. Secret columns hold vault-sealed text only.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "alipay_credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub merchant_id: String,
    pub partner_id: Option<String>,
    pub agent_id: Option<String>,
    pub app_id: Option<String>,
    pub key_mode: String,
    pub sign_type: String,
    pub gateway: String,
    pub gateway_url: Option<String>,
    /// Sealed (`secrets::Sealed::blob`).
    pub app_private_key: Option<String>,
    pub app_private_key_kid: Option<String>,
    pub app_public_key: Option<String>,
    pub fingerprint: Option<String>,
    pub alipay_public_key: Option<String>,
    pub app_cert: Option<String>,
    pub alipay_cert: Option<String>,
    pub alipay_root_cert: Option<String>,
    pub app_cert_sn: Option<String>,
    pub alipay_cert_sn: Option<String>,
    pub alipay_root_cert_sn: Option<String>,
    /// Sealed.
    pub aes_key: Option<String>,
    pub aes_key_kid: Option<String>,
    pub updated_by: Option<String>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
