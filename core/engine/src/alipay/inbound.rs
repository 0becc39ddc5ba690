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
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::Error as AlipayError;
use super::notify::{Notification, NotifyRule};
use crate::db::Db;
use crate::db::entity::alipay_notifications;

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
    let parsed = Notification::parse(body);
    let notify_id: String = parsed
        .as_ref()
        .ok()
        .and_then(|n| n.get("notify_id"))
        .unwrap_or_default()
        .chars()
        .take(NOTIFY_ID_CHARS)
        .collect();
    // The merchant's app and key and this notification's record, if any, in one read: every
    // delivery asks both.
    #[derive(sea_orm::FromQueryResult)]
    struct Row {
        app_id: Option<String>,
        alipay_public_key: Option<String>,
        partner_id: Option<String>,
        agent_id: Option<String>,
        recorded: Option<String>,
    }
    let row: Option<Row> = crate::db::sql::query(
        "SELECT c.app_id, c.alipay_public_key, c.partner_id, c.agent_id, \
         (SELECT n.id FROM alipay_notifications n WHERE n.merchant_id = c.merchant_id \
          AND n.app_id = c.app_id AND n.notify_id = ?) AS recorded \
         FROM alipay_credentials c WHERE c.merchant_id = ?",
        [notify_id.clone().into(), merchant_id.into()],
    )
    .one(&db.conn)
    .await?;
    let Some(Row {
        app_id: Some(app_id),
        alipay_public_key: Some(key),
        partner_id,
        agent_id,
        recorded,
    }) = row
    else {
        return Err(Error::UnknownMerchant);
    };
    let key = super::parsed::public_key(&key)?;
    let notification = parsed?;
    let rule = notification.verify_auto(&key)?;
    // In ISV mode app_id is the partner's app and auth_app_id the merchant's; either may match,
    // and the one that does is the merchant's own app id, which is what the record keeps.
    let sent_for = notification.get("app_id").unwrap_or_default();
    if sent_for != app_id && notification.get("auth_app_id") != Some(app_id.as_str()) {
        return Err(Error::WrongApp(sent_for.chars().take(32).collect()));
    }
    if notify_id.is_empty() {
        return Err(Error::NoNotifyId);
    }
    // Every record was committed durably, and a commit is visible only once it is: a record
    // found here may be acknowledged again.
    Ok(Verified {
        merchant_id: merchant_id.to_owned(),
        partner_id,
        agent_id,
        app_id,
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
    let mut recorded = record_all(txn, std::slice::from_ref(verified)).await?;
    Ok(recorded.pop().unwrap_or_default())
}

/// [`record_in`] for many notifications in one statement (group commit): one `(id, new)` per
/// notification, in order. A key twice in `batch` is recorded once, for its first.
pub async fn record_all(
    txn: &impl ConnectionTrait,
    batch: &[Verified],
) -> Result<Vec<(String, bool)>, sea_orm::DbErr> {
    use std::collections::HashMap;
    let now = Utc::now();
    let mut out: Vec<(String, bool)> = Vec::with_capacity(batch.len());
    let mut firsts: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut rows: Vec<sea_orm::Value> = Vec::new();
    let mut fresh = 0;
    for (i, verified) in batch.iter().enumerate() {
        if let Some(id) = &verified.recorded {
            out.push((id.clone(), false));
            continue;
        }
        let key = (
            verified.merchant_id.as_str(),
            verified.app_id.as_str(),
            verified.notify_id.as_str(),
        );
        if firsts.contains_key(&key) {
            // Given its first's id once that is final, below.
            out.push((String::new(), false));
            continue;
        }
        firsts.insert(key, i);
        let id = Uuid::now_v7().to_string();
        let n = &verified.notification;
        let text = |k: &str| n.get(k).map(|v| v.chars().take(64).collect::<String>());
        rows.extend([
            id.clone().into(),
            verified.merchant_id.clone().into(),
            verified.partner_id.clone().into(),
            verified.agent_id.clone().into(),
            verified.app_id.clone().into(),
            verified.notify_id.clone().into(),
            text("notify_type")
                .or_else(|| text("msg_method"))
                .unwrap_or_else(|| "unknown".into())
                .into(),
            text("out_trade_no").into(),
            text("trade_no").into(),
            text("trade_status").into(),
            serde_json::to_string(&n.fields).unwrap_or_default().into(),
            now.into(),
        ]);
        fresh += 1;
        // Not ours until the insert says so.
        out.push((id, false));
    }
    if fresh == 0 {
        return Ok(out);
    }
    // Two deliveries may race past the lookup: the unique key keeps the first, and RETURNING
    // names only the rows this statement inserted.
    let statement = format!(
        "INSERT INTO alipay_notifications (id, merchant_id, partner_id, agent_id, app_id, notify_id, \
         notify_type, out_trade_no, trade_no, trade_status, fields, received_at) VALUES {} \
         ON CONFLICT (merchant_id, app_id, notify_id) DO NOTHING RETURNING id",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; fresh].join(", ")
    );
    #[derive(sea_orm::FromQueryResult)]
    struct Inserted {
        id: String,
    }
    let inserted: std::collections::HashSet<String> = crate::db::sql::query(&statement, rows)
        .all::<Inserted>(txn)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    for (i, verified) in batch.iter().enumerate() {
        let (id, new) = &mut out[i];
        if verified.recorded.is_some()
            || firsts.get(&(
                verified.merchant_id.as_str(),
                verified.app_id.as_str(),
                verified.notify_id.as_str(),
            )) != Some(&i)
        {
            continue;
        }
        if inserted.contains(id.as_str()) {
            *new = true;
        } else if let Some(existing) = recorded(
            txn,
            &verified.merchant_id,
            &verified.app_id,
            &verified.notify_id,
        )
        .await?
        {
            *id = existing;
        }
    }
    // A later duplicate in the batch carries its first's id, now final.
    for (i, verified) in batch.iter().enumerate() {
        let key = (
            verified.merchant_id.as_str(),
            verified.app_id.as_str(),
            verified.notify_id.as_str(),
        );
        if verified.recorded.is_none()
            && let Some(&first) = firsts.get(&key)
            && first != i
        {
            out[i] = (out[first].0.clone(), false);
        }
    }
    Ok(out)
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

    use sea_orm::{ActiveModelTrait, Set};
    use secrecy::SecretString;

    use super::*;
    use crate::alipay::{PrivateKey, SignType};
    use crate::config::Config;
    use crate::db::entity::{alipay_credentials, nodes};

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

    #[tokio::test]
    async fn a_batch_records_each_key_once_and_names_the_record_of_one_recorded_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let alipay = alipay_key();
        merchant(&db, "m-direct", MERCHANT_APP, &alipay).await;
        let first = notification(&alipay, &[("app_id", MERCHANT_APP)], "1");
        let second = notification(
            &alipay,
            &[("app_id", MERCHANT_APP), ("notify_id", "another-notify-id")],
            "2",
        );
        // Both verified before anything is recorded, as concurrent deliveries are.
        let a = verify(&db, "m-direct", &first).await.unwrap();
        let b = verify(&db, "m-direct", &second).await.unwrap();
        let a_again = verify(&db, "m-direct", &first).await.unwrap();
        // Another delivery of `first` commits its record before the batch.
        let earlier = receive(&db, "m-direct", &first).await.unwrap();
        assert!(earlier.new);

        let txn = db.begin_durable().await.unwrap();
        let recorded = record_all(&txn, &[a, b.clone(), a_again, b]).await.unwrap();
        txn.commit().await.unwrap();

        assert_eq!(recorded[0], (earlier.id.clone(), false));
        assert!(recorded[1].1, "the second notification is new");
        assert_eq!(recorded[2], (earlier.id, false));
        assert_eq!(recorded[3], (recorded[1].0.clone(), false));
        let all = alipay_notifications::Entity::find()
            .all(&db.conn)
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
        db.close().await;
    }
}
