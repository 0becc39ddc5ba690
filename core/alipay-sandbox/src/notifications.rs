//! Reaching merchants: where callbacks and notifications addressed to a URL really go, the
//! signed `trade_status_sync` notification, and its delivery, retried on Alipay's schedule
//! until the merchant acknowledges it; `/notifications` lists every delivery.
//!
//! Invariant: an embedded sandbox sends what is addressed to host names to its own engine and
//! calls loopback addresses only, so it never reaches the rest of the network.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use trellis_alipay::keys::SignType;
use trellis_alipay::notify::ACK;
use trellis_alipay::signing::{beijing_timestamp, sign_content};

use crate::apps::Identity;
use crate::consumers::open_id_for;
use crate::{Error, Sandbox};

/// Alipay's retry schedule for unacknowledged notifications: 4m, 10m, 10m, 1h, 2h, 6h, 15h.
pub const RETRY_SCHEDULE_SECS: [u64; 7] = [240, 600, 600, 3600, 7200, 21600, 54000];

impl Sandbox {
    /// A `trade_status_sync` for `trade`, naming the buyer as the app's identity mode does:
    /// `buyer_id` for a UID-mode app, `buyer_open_id` for an OpenID-mode one.
    pub(crate) fn trade_notification(
        &self,
        trade: &Value,
        identity: Identity,
    ) -> Result<String, trellis_alipay::Error> {
        self.trade_notification_with(trade, identity, BTreeMap::new())
    }

    /// [`Self::trade_notification`] with `extra` fields added or replacing the trade's (a
    /// refund's `out_biz_no`, `refund_fee` and `gmt_refund`; a test's forged amount), signed
    /// like the rest.
    pub(crate) fn trade_notification_with(
        &self,
        trade: &Value,
        identity: Identity,
        extra: BTreeMap<String, String>,
    ) -> Result<String, trellis_alipay::Error> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let buyer = s(&trade["buyer_user_id"]);
        let (buyer_key, buyer) = match identity {
            Identity::Uid => ("buyer_id", buyer),
            Identity::OpenId if buyer.is_empty() => ("buyer_open_id", buyer),
            Identity::OpenId => ("buyer_open_id", open_id_for(&s(&trade["app_id"]), &buyer)),
        };
        let mut fields: BTreeMap<String, String> = [
            ("notify_type", "trade_status_sync".to_owned()),
            ("notify_id", format!("{}", Uuid::new_v4().simple())),
            ("notify_time", beijing_timestamp(Utc::now())),
            ("charset", "utf-8".to_owned()),
            ("version", "1.0".to_owned()),
            ("app_id", s(&trade["app_id"])),
            ("auth_app_id", s(&trade["app_id"])),
            ("trade_no", s(&trade["trade_no"])),
            ("out_trade_no", s(&trade["out_trade_no"])),
            ("trade_status", s(&trade["trade_status"])),
            ("total_amount", s(&trade["total_amount"])),
            ("receipt_amount", s(&trade["total_amount"])),
            ("buyer_pay_amount", s(&trade["total_amount"])),
            (buyer_key, buyer),
            ("subject", s(&trade["subject"])),
            ("gmt_create", s(&trade["gmt_create"])),
            ("gmt_payment", s(&trade["gmt_payment"])),
            (
                "fund_bill_list",
                format!(
                    "[{{\"amount\":\"{}\",\"fundChannel\":\"ALIPAYACCOUNT\"}}]",
                    s(&trade["total_amount"])
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .filter(|(_, v)| !v.is_empty())
        .collect();
        fields.extend(extra);
        // V1: sign_type is not part of what trade notifications sign.
        let sign = self
            .inner
            .key
            .sign(SignType::Rsa2, &sign_content(&fields))?;
        fields.insert("sign_type".into(), "RSA2".into());
        fields.insert("sign".into(), sign);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &fields {
            form.append_pair(k, v);
        }
        Ok(form.finish())
    }

    /// Where a callback or notification addressed to `url` is sent, and the Host header it
    /// carries. An embedded sandbox sends what is addressed to a host *name* (a partner's
    /// domain, `localhost`) to its own engine with the Host kept: offline no other site exists,
    /// and the engine picks the partner by Host. IP addresses are contacted as they are, on
    /// loopback only (a merchant's stand-in in tests), so the sandbox cannot be turned into a
    /// way to reach the rest of the network.
    pub(crate) fn target(&self, url: &str) -> Result<(String, Option<String>), Error> {
        let Some(engine) = self.inner.engine else {
            return Ok((url.to_owned(), None));
        };
        let loopback = |host: Option<url::Host<&str>>| match host {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
        Ok(match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.host(), Some(url::Host::Domain(_))) => {
                let host = match (parsed.host_str(), parsed.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_owned(),
                    (None, _) => String::new(),
                };
                let mut local = format!("http://{engine}{}", parsed.path());
                if let Some(q) = parsed.query() {
                    local.push('?');
                    local.push_str(q);
                }
                (local, Some(host))
            }
            Ok(parsed) if loopback(parsed.host()) => (url.to_owned(), None),
            _ => {
                return Err(Error::Invalid(
                    "the sandbox calls back host names and loopback addresses only".into(),
                ));
            }
        })
    }

    /// One delivery attempt of `body` to `url`, not retried: the merchant's HTTP status and
    /// answer.
    pub(crate) async fn deliver_once(
        &self,
        url: &str,
        body: String,
    ) -> Result<(u16, String), Error> {
        let (to, host) = self.target(url)?;
        let mut request = self.inner.http.post(&to);
        if let Some(host) = &host {
            request = request.header("host", host);
        }
        let sent = request
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body)
            .send()
            .await;
        Ok(match sent {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.without_url().to_string()),
        })
    }

    pub(crate) async fn deliver(&self, notify_id: &str, url: &str, body: String) {
        let (to, host) = match self.target(url) {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(%error, notify_id, "sandbox notification not sent");
                return;
            }
        };
        let mut attempts = Vec::new();
        for attempt in 0..=RETRY_SCHEDULE_SECS.len() {
            if attempt > 0 {
                let wait = RETRY_SCHEDULE_SECS[attempt - 1] * 1000 / self.inner.time_scale;
                tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
            }
            let mut request = self.inner.http.post(&to);
            if let Some(host) = &host {
                request = request.header("host", host);
            }
            let sent = request
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(body.clone())
                .send()
                .await;
            let (status, answer) = match sent {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.without_url().to_string()),
            };
            let acknowledged = status == 200 && answer == ACK;
            attempts
                .push(json!({ "at": Utc::now(), "status": status, "acknowledged": acknowledged }));
            let record = json!({ "url": url, "attempts": attempts, "acknowledged": acknowledged });
            if let Err(error) = self.store().put("delivery", notify_id, &record).await {
                tracing::warn!(%error, "sandbox could not record a delivery");
            }
            if acknowledged {
                return;
            }
        }
    }
}

pub(crate) async fn notifications(State(sandbox): State<Sandbox>) -> Response {
    match sandbox.store().all("delivery").await {
        Ok(all) => Json(
            all.into_iter()
                .map(|(id, v)| json!({ "notify_id": id, "delivery": v }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
