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
use super::PublicKey;
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

/// What a merchant's notifications are verified against: its own app id, Alipay's key (parsed)
/// and the tiers above the merchant, which its records carry. Read once per merchant and kept
/// for a moment by the payments' intake (see `db::recent`).
#[derive(Debug, Clone)]
pub struct Receiver {
    pub app_id: String,
    pub alipay_public_key: PublicKey,
    pub partner_id: Option<String>,
    pub agent_id: Option<String>,
}

/// The receiver of `merchant_id`'s notifications, if it has an app id and Alipay's key. A key
/// that does not parse refuses every notification, as Alipay's own would.
pub async fn receiver(db: &Db, merchant_id: &str) -> Result<Option<Receiver>, Error> {
    #[derive(sea_orm::FromQueryResult)]
    struct Row {
        app_id: Option<String>,
        alipay_public_key: Option<String>,
        partner_id: Option<String>,
        agent_id: Option<String>,
    }
    let row: Option<Row> = crate::db::sql::query(
        "SELECT app_id, alipay_public_key, partner_id, agent_id FROM alipay_credentials \
         WHERE merchant_id = ?",
        [merchant_id.into()],
    )
    .one(&db.conn)
    .await?;
    let Some(Row {
        app_id: Some(app_id),
        alipay_public_key: Some(key),
        partner_id,
        agent_id,
    }) = row
    else {
        return Ok(None);
    };
    Ok(Some(Receiver {
        app_id,
        alipay_public_key: super::parsed::public_key(&key)?,
        partner_id,
        agent_id,
    }))
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
}

/// Verifies `body` for `merchant_id` and records it; returns once the record is durable.
pub async fn receive(db: &Db, merchant_id: &str, body: &[u8]) -> Result<Received, Error> {
    let receiver = receiver(db, merchant_id)
        .await?
        .ok_or(Error::UnknownMerchant)?;
    let verified = verify(&receiver, merchant_id, body)?;
    let txn = db.begin_durable().await?;
    let (id, new) = record_in(&txn, &verified).await?;
    txn.commit().await?;
    Ok(Received {
        id,
        rule: verified.rule,
        new,
        notification: verified.notification,
    })
}

/// Everything [`receive`] does short of writing: parsing, the signature under the right rule,
/// the app, the notify id. No database: many requests run it at once and leave recording —
/// and telling a redelivery from a new notification — to one transaction for all of them.
pub fn verify(receiver: &Receiver, merchant_id: &str, body: &[u8]) -> Result<Verified, Error> {
    let notification = Notification::parse(body)?;
    let notify_id: String = notification
        .get("notify_id")
        .unwrap_or_default()
        .chars()
        .take(NOTIFY_ID_CHARS)
        .collect();
    let rule = notification.verify_auto(&receiver.alipay_public_key)?;
    // In ISV mode app_id is the partner's app and auth_app_id the merchant's; either may match,
    // and the one that does is the merchant's own app id, which is what the record keeps.
    let app_id = &receiver.app_id;
    let sent_for = notification.get("app_id").unwrap_or_default();
    if sent_for != app_id && notification.get("auth_app_id") != Some(app_id.as_str()) {
        return Err(Error::WrongApp(sent_for.chars().take(32).collect()));
    }
    if notify_id.is_empty() {
        return Err(Error::NoNotifyId);
    }
    Ok(Verified {
        merchant_id: merchant_id.to_owned(),
        partner_id: receiver.partner_id.clone(),
        agent_id: receiver.agent_id.clone(),
        app_id: app_id.clone(),
        notify_id,
        rule,
        notification,
    })
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
/// notification, in order. A key twice in `batch` is recorded once, for its first; a key
/// recorded earlier is named by its record's id, not new.
pub async fn record_all(
    txn: &impl ConnectionTrait,
    batch: &[Verified],
) -> Result<Vec<(String, bool)>, sea_orm::DbErr> {
    use std::collections::{BTreeMap, HashMap};
    type Key<'a> = (&'a str, &'a str, &'a str);
    fn key(v: &Verified) -> Key<'_> {
        (&v.merchant_id, &v.app_id, &v.notify_id)
    }
    let now = Utc::now();
    let mut out: Vec<(String, bool)> = Vec::with_capacity(batch.len());
    let mut firsts: HashMap<Key, usize> = HashMap::new();
    let mut rows: Vec<sea_orm::Value> = Vec::new();
    for (i, verified) in batch.iter().enumerate() {
        if firsts.contains_key(&key(verified)) {
            // Given its first's id once that is final, below.
            out.push((String::new(), false));
            continue;
        }
        firsts.insert(key(verified), i);
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
        // Not ours until the insert says so.
        out.push((id, false));
    }
    if firsts.is_empty() {
        return Ok(out);
    }
    // A redelivery, or a delivery racing another engine's: the unique key keeps the first
    // record, and RETURNING names only the rows this statement inserted.
    let statement = format!(
        "INSERT INTO alipay_notifications (id, merchant_id, partner_id, agent_id, app_id, notify_id, \
         notify_type, out_trade_no, trade_no, trade_status, fields, received_at) VALUES {} \
         ON CONFLICT (merchant_id, app_id, notify_id) DO NOTHING RETURNING id",
        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; firsts.len()].join(", ")
    );
    #[derive(sea_orm::FromQueryResult)]
    struct Id {
        id: String,
    }
    let inserted: std::collections::HashSet<String> = crate::db::sql::query(&statement, rows)
        .all::<Id>(txn)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    // The records that were there before, in one read per merchant app.
    let mut earlier: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (&(merchant, app, notify), &i) in &firsts {
        if inserted.contains(out[i].0.as_str()) {
            out[i].1 = true;
        } else {
            earlier.entry((merchant, app)).or_default().push(notify);
        }
    }
    for ((merchant, app), notify_ids) in earlier {
        for found in alipay_notifications::Entity::find()
            .filter(alipay_notifications::Column::MerchantId.eq(merchant))
            .filter(alipay_notifications::Column::AppId.eq(app))
            .filter(alipay_notifications::Column::NotifyId.is_in(notify_ids))
            .all(txn)
            .await?
        {
            if let Some(&i) = firsts.get(&(merchant, app, found.notify_id.as_str())) {
                out[i].0 = found.id;
            }
        }
    }
    // A later duplicate in the batch carries its first's id, now final.
    for (i, verified) in batch.iter().enumerate() {
        if let Some(&first) = firsts.get(&key(verified))
            && first != i
        {
            out[i] = (out[first].0.clone(), false);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use sea_orm::{ActiveModelTrait, Set};
    use secrecy::SecretString;

    use super::*;
    use crate::alipay::{PrivateKey, SignType};
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
        crate::db::test_sqlite(dir).await
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
        let to = receiver(&db, "m-direct").await.unwrap().unwrap();
        let a = verify(&to, "m-direct", &first).unwrap();
        let b = verify(&to, "m-direct", &second).unwrap();
        let a_again = verify(&to, "m-direct", &first).unwrap();
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
