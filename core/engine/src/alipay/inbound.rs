//! Inbound Alipay notifications for a merchant: verified with the merchant's Alipay key under
//! the right rule, checked to be for the merchant's app, recorded durably, deduplicated.
//!
//! Invariant: the engine answers `success` only after the notification's record is on disk (a
//! [`Db::begin_durable`] transaction): Alipay stops delivering once answered. A record is keyed
//! by the merchant and the app it was verified for, plus the notify id; a second delivery under
//! that key is acknowledged without a second record. Several merchants may share an app id —
//! one matched by `app_id`, another by `auth_app_id` under a service provider's app — so the
//! app and notify id alone would let one merchant's record swallow another's notification.

use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::notify::{Notification, NotifyRule};
use super::{Error as AlipayError, PublicKey};
use crate::db::Db;
use crate::db::entity::{alipay_credentials, alipay_notifications};

/// The width of the `notify_id` column; longer ids are kept (and matched) by this prefix.
const NOTIFY_ID_CHARS: usize = 128;

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

/// A notification verified for a merchant and not yet recorded: what [`record_in`] writes.
#[derive(Debug, Clone)]
pub struct Verified {
    pub merchant_id: String,
    pub partner_id: Option<String>,
    pub agent_id: Option<String>,
    /// The merchant's own app id (what the record is keyed by).
    pub app_id: String,
    pub notify_id: String,
    pub rule: NotifyRule,
    pub notification: Notification,
    /// The record's id when an earlier delivery already recorded it.
    pub recorded: Option<String>,
}

/// Verifies `body` for `merchant_id` and records it; returns once the record is durable.
pub async fn receive(db: &Db, merchant_id: &str, body: &[u8]) -> Result<Received, Error> {
    let verified = verify(db, merchant_id, body).await?;
    if let Some(id) = verified.recorded.clone() {
        return Ok(verified.into_received(id, false));
    }
    let txn = db.begin_durable().await?;
    let (id, new) = record_in(&txn, &verified).await?;
    txn.commit().await?;
    Ok(verified.into_received(id, new))
}

/// Everything [`receive`] does short of writing: the merchant's key, parsing, the signature, the
/// app, the notify id, and whether it is already recorded. Reads only, so many requests may run
/// it at once and leave the writing to one transaction for all of them.
pub async fn verify(db: &Db, merchant_id: &str, body: &[u8]) -> Result<Verified, Error> {
    let creds = alipay_credentials::Entity::find_by_id(merchant_id)
        .one(&db.conn)
        .await?
        .ok_or(Error::UnknownMerchant)?;
    let (Some(app_id), Some(key)) = (&creds.app_id, &creds.alipay_public_key) else {
        return Err(Error::UnknownMerchant);
    };
    let key = PublicKey::parse(key)?;
    let notification = Notification::parse(body)?;
    let rule = notification.verify_auto(&key)?;
    // In ISV mode app_id is the partner's app and auth_app_id the merchant's; either may match,
    // and the one that does is the merchant's own app id, which is what the record keeps.
    let sent_for = notification.get("app_id").unwrap_or_default();
    if sent_for != app_id && notification.get("auth_app_id") != Some(app_id.as_str()) {
        return Err(Error::WrongApp(sent_for.chars().take(32).collect()));
    }
    let notify_id: String = notification
        .get("notify_id")
        .filter(|n| !n.is_empty())
        .ok_or(Error::NoNotifyId)?
        .chars()
        .take(NOTIFY_ID_CHARS)
        .collect();
    // Every record was committed durably, and a commit is visible only once it is: a record
    // found here may be acknowledged again.
    let recorded = recorded(&db.conn, merchant_id, app_id, &notify_id).await?;
    Ok(Verified {
        merchant_id: merchant_id.to_owned(),
        partner_id: creds.partner_id.clone(),
        agent_id: creds.agent_id.clone(),
        app_id: app_id.clone(),
        notify_id,
        rule,
        notification,
        recorded,
    })
}

impl Verified {
    fn into_received(self, id: String, new: bool) -> Received {
        Received {
            id,
            rule: self.rule,
            new,
            notification: self.notification,
        }
    }
}

/// Records `verified` inside the caller's transaction unless its key is already recorded;
/// returns the record's id and whether this call made it. Durable once the caller commits
/// a [`Db::begin_durable`] transaction.
pub async fn record_in(
    txn: &impl ConnectionTrait,
    verified: &Verified,
) -> Result<(String, bool), sea_orm::DbErr> {
    if let Some(id) = &verified.recorded {
        return Ok((id.clone(), false));
    }
    let notification = &verified.notification;
    let id = Uuid::now_v7().to_string();
    let fields = serde_json::to_string(&notification.fields).unwrap_or_default();
    let text = |k: &str| {
        notification
            .get(k)
            .map(|v| v.chars().take(64).collect::<String>())
    };
    let record = alipay_notifications::ActiveModel {
        id: Set(id.clone()),
        merchant_id: Set(verified.merchant_id.clone()),
        partner_id: Set(verified.partner_id.clone()),
        agent_id: Set(verified.agent_id.clone()),
        app_id: Set(verified.app_id.clone()),
        notify_id: Set(verified.notify_id.clone()),
        notify_type: Set(text("notify_type")
            .or_else(|| text("msg_method"))
            .unwrap_or_else(|| "unknown".into())),
        out_trade_no: Set(text("out_trade_no")),
        trade_no: Set(text("trade_no")),
        trade_status: Set(text("trade_status")),
        fields: Set(fields),
        received_at: Set(Utc::now()),
    };
    // Two deliveries may race past the lookup: the unique key keeps the first, and the other
    // finds its record (committed, or ahead of it in this same transaction).
    let inserted = alipay_notifications::Entity::insert(record)
        .on_conflict(
            OnConflict::columns([
                alipay_notifications::Column::MerchantId,
                alipay_notifications::Column::AppId,
                alipay_notifications::Column::NotifyId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    if inserted == 1 {
        return Ok((id, true));
    }
    let existing = recorded(
        txn,
        &verified.merchant_id,
        &verified.app_id,
        &verified.notify_id,
    )
    .await?;
    Ok((existing.unwrap_or(id), false))
}

/// The id of the record of `notify_id` for this merchant's app, if there is one.
async fn recorded(
    db: &impl ConnectionTrait,
    merchant_id: &str,
    app_id: &str,
    notify_id: &str,
) -> Result<Option<String>, sea_orm::DbErr> {
    Ok(alipay_notifications::Entity::find()
        .filter(alipay_notifications::Column::MerchantId.eq(merchant_id))
        .filter(alipay_notifications::Column::AppId.eq(app_id))
        .filter(alipay_notifications::Column::NotifyId.eq(notify_id))
        .one(db)
        .await?
        .map(|m| m.id))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use sea_orm::ActiveModelTrait;
    use secrecy::SecretString;

    use super::*;
    use crate::alipay::{PrivateKey, SignType};
    use crate::config::Config;
    use crate::db::entity::nodes;

    const MERCHANT_APP: &str = "2021004100000001";
    const ISV_APP: &str = "2021004100000999";
    const NOTIFY_ID: &str = "2024052000222103000012345678901234";

    /// Alipay's side of the test key pairs (`core/alipay/tests/vectors/keys`; test keys only).
    fn alipay_key() -> PrivateKey {
        let pem = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../alipay/tests/vectors/keys/alipay_private_pkcs8.pem"
        ));
        PrivateKey::parse(&SecretString::from(pem.to_owned())).unwrap()
    }

    async fn database(dir: &Path) -> Db {
        let mut config = Config::load(None).unwrap();
        config.data_dir = dir.to_owned();
        config.database.url =
            SecretString::from(format!("sqlite://{}", dir.join("t.db").display()));
        let db = Db::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        db
    }

    async fn merchant(db: &Db, id: &str, app_id: &str, alipay: &PrivateKey) {
        let now = Utc::now();
        nodes::ActiveModel {
            id: Set(id.to_owned()),
            kind: Set("merchant".into()),
            parent_id: Set(None),
            partner_id: Set(None),
            agent_id: Set(None),
            merchant_id: Set(Some(id.to_owned())),
            store_id: Set(None),
            name: Set(id.to_owned()),
            theme: Set(None),
            status: Set("active".into()),
            suspended_by_tier: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&db.conn)
        .await
        .unwrap();
        alipay_credentials::ActiveModel {
            merchant_id: Set(id.to_owned()),
            app_id: Set(Some(app_id.to_owned())),
            key_mode: Set("public_key".into()),
            sign_type: Set("RSA2".into()),
            gateway: Set("custom".into()),
            alipay_public_key: Set(Some(alipay.public_key().to_base64())),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&db.conn)
        .await
        .unwrap();
    }

    /// A trade notification as Alipay sends it, signed with `key` (rule V1).
    fn notification(key: &PrivateKey, ids: &[(&str, &str)], trade_no: &str) -> Vec<u8> {
        let mut fields: BTreeMap<String, String> = [
            ("notify_type", "trade_status_sync"),
            ("notify_id", NOTIFY_ID),
            ("trade_no", trade_no),
            ("out_trade_no", "T-1"),
            ("trade_status", "TRADE_SUCCESS"),
            ("total_amount", "0.10"),
            ("charset", "utf-8"),
            ("version", "1.0"),
            ("sign_type", "RSA2"),
        ]
        .iter()
        .chain(ids)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let unsigned = Notification {
            fields: fields.clone(),
        };
        let sign = key
            .sign(SignType::Rsa2, &unsigned.signed_content(NotifyRule::V1))
            .unwrap();
        fields.insert("sign".into(), sign);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &fields {
            form.append_pair(k, v);
        }
        form.finish().into_bytes()
    }

    async fn records(db: &Db) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = alipay_notifications::Entity::find()
            .filter(alipay_notifications::Column::NotifyId.eq(NOTIFY_ID))
            .all(&db.conn)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.merchant_id, m.app_id))
            .collect();
        all.sort();
        all
    }

    #[tokio::test]
    async fn one_notify_id_reaching_two_merchants_of_the_same_app_is_recorded_for_each() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let alipay = alipay_key();
        merchant(&db, "m-direct", MERCHANT_APP, &alipay).await;
        merchant(&db, "m-isv", MERCHANT_APP, &alipay).await;
        let direct = notification(&alipay, &[("app_id", MERCHANT_APP)], "1");
        let through_isv = notification(
            &alipay,
            &[("app_id", ISV_APP), ("auth_app_id", MERCHANT_APP)],
            "2",
        );

        let first = receive(&db, "m-direct", &direct).await.unwrap();
        let second = receive(&db, "m-isv", &through_isv).await.unwrap();
        assert!(first.new && second.new);
        assert_ne!(first.id, second.id);
        assert_eq!(
            records(&db).await,
            [
                ("m-direct".to_owned(), MERCHANT_APP.to_owned()),
                ("m-isv".to_owned(), MERCHANT_APP.to_owned()),
            ]
        );
        db.close().await;
    }

    #[tokio::test]
    async fn a_replay_to_the_same_merchant_app_is_acknowledged_without_a_second_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let alipay = alipay_key();
        merchant(&db, "m-direct", MERCHANT_APP, &alipay).await;
        merchant(&db, "m-isv", MERCHANT_APP, &alipay).await;
        let direct = notification(&alipay, &[("app_id", MERCHANT_APP)], "1");
        let through_isv = notification(
            &alipay,
            &[("app_id", ISV_APP), ("auth_app_id", MERCHANT_APP)],
            "2",
        );

        for (merchant_id, body) in [("m-direct", &direct), ("m-isv", &through_isv)] {
            let first = receive(&db, merchant_id, body).await.unwrap();
            let again = receive(&db, merchant_id, body).await.unwrap();
            assert!(first.new);
            assert!(!again.new);
            assert_eq!(again.id, first.id);
        }
        assert_eq!(records(&db).await.len(), 2);
        db.close().await;
    }
}
