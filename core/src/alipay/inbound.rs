//! Inbound Alipay notifications for a merchant: verified with the merchant's Alipay key under
//! the right rule, checked to be for the merchant's app, recorded durably, deduplicated.
//!
//! Invariant: the engine answers `success` only after the notification is committed to the
//! database; a duplicate (same app id and notify id) is acknowledged without a second record.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::notify::{Notification, NotifyRule};
use super::{Error as AlipayError, PublicKey};
use crate::db::entity::{alipay_credentials, alipay_notifications};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no merchant with Alipay credentials here")]
    UnknownMerchant,
    #[error(transparent)]
    Rejected(#[from] AlipayError),
    #[error("the notification is for app {0}, not this merchant's")]
    WrongApp(String),
    #[error("the notification has no notify_id")]
    NoNotifyId,
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// What was received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub rule: NotifyRule,
    /// False when it was a retry or duplicate of one already recorded.
    pub new: bool,
    pub notification: Notification,
}

/// Verifies `body` for `merchant_id` and records it.
pub async fn receive(
    db: &impl ConnectionTrait,
    merchant_id: &str,
    body: &[u8],
) -> Result<Received, Error> {
    let creds = alipay_credentials::Entity::find_by_id(merchant_id)
        .one(db)
        .await?
        .ok_or(Error::UnknownMerchant)?;
    let (Some(app_id), Some(key)) = (&creds.app_id, &creds.alipay_public_key) else {
        return Err(Error::UnknownMerchant);
    };
    let key = PublicKey::parse(key)?;
    let notification = Notification::parse(body)?;
    let rule = notification.verify_auto(&key)?;
    // In ISV mode app_id is the partner's app and auth_app_id the merchant's; either may match.
    let sent_for = notification.get("app_id").unwrap_or_default();
    if sent_for != app_id && notification.get("auth_app_id") != Some(app_id.as_str()) {
        return Err(Error::WrongApp(sent_for.chars().take(32).collect()));
    }
    let notify_id = notification
        .get("notify_id")
        .filter(|n| !n.is_empty())
        .ok_or(Error::NoNotifyId)?
        .to_owned();
    if let Some(existing) = alipay_notifications::Entity::find()
        .filter(alipay_notifications::Column::AppId.eq(app_id.as_str()))
        .filter(alipay_notifications::Column::NotifyId.eq(notify_id.as_str()))
        .one(db)
        .await?
    {
        return Ok(Received {
            id: existing.id,
            rule,
            new: false,
            notification,
        });
    }
    let id = Uuid::now_v7().to_string();
    let fields = serde_json::to_string(&notification.fields).unwrap_or_default();
    let text = |k: &str| {
        notification
            .get(k)
            .map(|v| v.chars().take(64).collect::<String>())
    };
    let inserted = alipay_notifications::ActiveModel {
        id: Set(id.clone()),
        merchant_id: Set(merchant_id.to_owned()),
        partner_id: Set(creds.partner_id.clone()),
        agent_id: Set(creds.agent_id.clone()),
        app_id: Set(app_id.clone()),
        notify_id: Set(notify_id.chars().take(128).collect()),
        notify_type: Set(text("notify_type")
            .or_else(|| text("msg_method"))
            .unwrap_or_else(|| "unknown".into())),
        out_trade_no: Set(text("out_trade_no")),
        trade_no: Set(text("trade_no")),
        trade_status: Set(text("trade_status")),
        fields: Set(fields),
        received_at: Set(Utc::now()),
    }
    .insert(db)
    .await;
    match inserted {
        Ok(_) => Ok(Received {
            id,
            rule,
            new: true,
            notification,
        }),
        // Two deliveries raced: the unique index kept one; this one is a duplicate.
        Err(error) if is_unique_violation(&error) => Ok(Received {
            id,
            rule,
            new: false,
            notification,
        }),
        Err(error) => Err(error.into()),
    }
}

fn is_unique_violation(error: &sea_orm::DbErr) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("unique") || text.contains("duplicate key")
}
