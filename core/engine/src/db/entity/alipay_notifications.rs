//! A verified Alipay notification, kept as received (all decoded fields, as JSON); unique per
//! (merchant, app, notify id).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "alipay_notifications")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub merchant_id: String,
    pub partner_id: Option<String>,
    pub agent_id: Option<String>,
    /// The merchant's app the notification was verified for: its `app_id`, or its
    /// `auth_app_id` when a service provider's app sent it.
    pub app_id: String,
    pub notify_id: String,
    pub notify_type: String,
    pub out_trade_no: Option<String>,
    pub trade_no: Option<String>,
    pub trade_status: Option<String>,
    pub fields: String,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
