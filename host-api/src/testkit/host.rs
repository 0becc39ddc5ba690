//! The in-memory host behind the SDK in a native build: the same functions, with the same
//! signatures, as the engine's imports, working on the [`TestHost`](super::TestHost) state of
//! the current thread. Limits the engine enforces are enforced here too where a plugin could
//! come to rely on their absence (key and value sizes, batch sizes).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{State, with};
use crate::bindings::trellis::plugin0_1_0::kv::{CasOutcome, Entry, Item, Page};
use crate::{Error, Response, Result};

const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 64 << 10;
const MAX_BATCH: usize = 256;

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidInput(format!(
            "a key is 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::InvalidInput(format!(
            "a value may be at most {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

impl State {
    fn entry(&self, key: &str) -> Option<Entry> {
        self.kv.get(key).map(|(value, version)| Entry {
            value: value.clone(),
            version: *version,
        })
    }

    fn put(&mut self, key: &str, value: &[u8]) -> u64 {
        self.version += 1;
        self.kv
            .insert(key.to_owned(), (value.to_vec(), self.version));
        self.version
    }
}

pub mod kv {
    use super::*;

    pub fn get(key: &str) -> Result<Option<Entry>> {
        check_key(key)?;
        Ok(with(|s| s.entry(key)))
    }

    pub fn compare_and_swap(key: &str, expected: Option<u64>, value: &[u8]) -> Result<CasOutcome> {
        check_key(key)?;
        check_value(value)?;
        Ok(with(|s| {
            let current = s.entry(key);
            match (&current, expected) {
                (None, None) => CasOutcome::Stored(s.put(key, value)),
                (Some(e), Some(v)) if e.version == v => CasOutcome::Stored(s.put(key, value)),
                _ => CasOutcome::Conflict(current),
            }
        }))
    }

    pub fn delete(key: &str, expected: Option<u64>) -> Result<bool> {
        check_key(key)?;
        Ok(with(|s| match s.entry(key) {
            Some(e) if expected.is_none_or(|v| v == e.version) => {
                s.kv.remove(key);
                true
            }
            _ => false,
        }))
    }

    pub fn list(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page> {
        let limit = limit.clamp(1, 256) as usize;
        Ok(with(|s| {
            let mut items: Vec<Item> =
                s.kv.range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                    .take(limit + 1)
                    .map(|(key, (value, version))| Item {
                        key: key.clone(),
                        entry: Entry {
                            value: value.clone(),
                            version: *version,
                        },
                    })
                    .collect();
            let next = (items.len() > limit).then(|| {
                items.truncate(limit);
                items.last().map(|i| i.key.clone())
            });
            Page {
                items,
                next: next.flatten(),
            }
        }))
    }

    pub fn increment(key: &str, delta: i64) -> Result<i64> {
        check_key(key)?;
        with(|s| {
            let old = match s.entry(key) {
                None => 0,
                Some(e) => String::from_utf8_lossy(&e.value)
                    .parse::<i64>()
                    .map_err(|_| {
                        Error::InvalidInput(format!("the value at {key} is not an integer counter"))
                    })?,
            };
            let new = old.checked_add(delta).ok_or_else(|| {
                Error::InvalidInput(format!("the counter at {key} would overflow"))
            })?;
            // As in the engine: adding nothing reads the counter.
            if delta != 0 {
                s.put(key, new.to_string().as_bytes());
            }
            Ok(new)
        })
    }
}

pub mod kv_batch {
    use super::*;
    use crate::bindings::trellis::plugin0_2_0::kv_batch::{BatchOutcome, Expected, Write};

    pub fn get_many(keys: &[String]) -> Result<Vec<Option<Entry>>> {
        if keys.len() > MAX_BATCH {
            return Err(Error::InvalidInput(format!(
                "a batch reads at most {MAX_BATCH} keys"
            )));
        }
        keys.iter().map(|k| super::kv::get(k)).collect()
    }

    pub fn write_many(writes: &[Write]) -> Result<BatchOutcome> {
        if writes.len() > MAX_BATCH {
            return Err(Error::InvalidInput(format!(
                "a batch writes at most {MAX_BATCH} keys"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for w in writes {
            check_key(&w.key)?;
            if let Some(v) = &w.value {
                check_value(v)?;
            }
            if !seen.insert(w.key.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "{} is written twice in one batch",
                    w.key
                )));
            }
        }
        Ok(with(|s| {
            for (index, w) in writes.iter().enumerate() {
                let current = s.entry(&w.key);
                let holds = match (&w.expected, &current) {
                    (Expected::Any, _) | (Expected::Absent, None) => true,
                    (Expected::Version(v), Some(e)) => e.version == *v,
                    _ => false,
                };
                if !holds {
                    return BatchOutcome::Conflict((index as u32, current));
                }
            }
            let versions = writes
                .iter()
                .map(|w| match &w.value {
                    Some(value) => s.put(&w.key, value),
                    None => {
                        s.kv.remove(&w.key);
                        0
                    }
                })
                .collect();
            BatchOutcome::Stored(versions)
        }))
    }
}

pub mod alipay {
    use super::*;
    use crate::bindings::trellis::plugin0_1_0::alipay::CallOptions;

    pub fn call(method: &str, biz_content: &str, options: &CallOptions) -> Result<String> {
        let biz: Value = if biz_content.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(biz_content)
                .map_err(|e| Error::InvalidInput(format!("biz_content is not JSON: {e}")))?
        };
        let mut request = json!({ "biz_content": biz });
        for (name, value) in &options.params {
            request[name] = json!(value);
        }
        let answer = with(|s| {
            s.alipay_calls.push((method.to_owned(), request.clone()));
            s.alipay.get(method).cloned()
        });
        let Some(answer) = answer else {
            return Err(Error::Denied(format!(
                "the test host has no answer for {method}: give one with TestHost::on_alipay"
            )));
        };
        answer(&request).map(|v| v.to_string())
    }

    pub fn upload_image(name: &str, image_type: &str, content: &[u8]) -> Result<String> {
        let method = "alipay.offline.material.image.upload";
        let answer = with(|s| {
            s.alipay_calls.push((
                method.to_owned(),
                json!({ "image_name": name, "image_type": image_type, "bytes": content.len() }),
            ));
            s.alipay.get(method).cloned()
        });
        match answer {
            Some(answer) => answer(&json!({ "image_name": name })).map(|v| v.to_string()),
            None => Ok(json!({ "image_id": format!("test-{name}"),
                "image_url": format!("https://images.example.test/{name}") })
            .to_string()),
        }
    }
}

pub mod templates {
    use super::*;

    /// Records the render and returns its data as the page, for tests to read back.
    pub fn render(template: &str, data: &str) -> Result<String> {
        let data: Value = serde_json::from_str(data)
            .map_err(|e| Error::InvalidInput(format!("render data is not JSON: {e}")))?;
        with(|s| s.rendered.push((template.to_owned(), data.clone())));
        Ok(format!("<!-- {template} -->{data}"))
    }
}

pub mod config {
    use super::*;

    pub fn get() -> String {
        with(|s| s.config.to_string())
    }
}

pub mod events {
    use super::*;

    pub fn emit(kind: &str, payload: &str) -> Result<()> {
        let payload: Value = serde_json::from_str(payload)
            .map_err(|e| Error::InvalidInput(format!("the payload is not JSON: {e}")))?;
        with(|s| s.emitted.push((kind.to_owned(), payload)));
        Ok(())
    }
}

pub mod log {
    use super::*;
    use crate::bindings::trellis::plugin0_1_0::log::Level;

    pub fn enabled(_level: Level) -> bool {
        true
    }

    pub fn log(level: Level, message: &str, fields: &[(String, String)]) {
        let fields: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        with(|s| s.logs.push(format!("{level:?} {message}{fields}")));
    }
}

pub mod tenant {
    use super::*;
    use crate::bindings::trellis::plugin0_2_0::tenant::Context;

    pub fn current() -> Context {
        with(|s| s.tenant.clone())
    }
}

pub mod plugins {
    use super::*;
    use crate::bindings::trellis::plugin0_2_0::plugins::Request;

    pub fn call(plugin: &str, request: &Request) -> Result<Response> {
        let answer = with(|s| s.plugins.get(plugin).cloned());
        match answer {
            Some(answer) => answer(request),
            None => Err(Error::NotFound(format!(
                "the test host has no plugin {plugin}: give one with TestHost::on_plugin"
            ))),
        }
    }
}

pub mod payments {
    use super::*;
    use crate::bindings::trellis::plugin0_2_0::payments::{
        Buyer, NewTrade, RefundReceipt, Trade, TradePage,
    };

    fn open(trade: &NewTrade, scene: &str) -> Result<Trade> {
        if trade.amount_fen == 0 || trade.amount_fen > 10_000_000_000 {
            return Err(Error::InvalidInput(
                "amount_fen: must be 1 to 10000000000 fen".into(),
            ));
        }
        if trade.subject.trim().is_empty() || trade.subject.chars().count() > 256 {
            return Err(Error::InvalidInput(
                "subject: must be 1 to 256 characters".into(),
            ));
        }
        Ok(with(|s| {
            let n = s.trades.len() + 1;
            let tenant = s.tenant.clone();
            let trade = Trade {
                id: format!("payment-{n}"),
                out_trade_no: format!("T{n:020}"),
                trade_no: None,
                status: "created".into(),
                scene: scene.into(),
                amount_fen: trade.amount_fen,
                refunded_fen: 0,
                subject: trade.subject.trim().to_owned(),
                purpose: trade.purpose.clone().unwrap_or_else(|| "sale".into()),
                store_id: trade.store_id.clone().or(tenant.store_id),
                plugin: Some(s.plugin_id.clone()),
                qr_code: (scene == "precreate")
                    .then(|| format!("https://qr.alipay.example.test/{n}")),
                buyer_id: None,
                buyer_open_id: None,
                created_at_ms: 1_800_000_000_000 + n as u64,
                paid_at_ms: None,
            };
            s.trades.push(trade.clone());
            trade
        }))
    }

    pub fn precreate(trade: &NewTrade) -> Result<Trade> {
        open(trade, "precreate")
    }

    pub fn create_jsapi(trade: &NewTrade, buyer: &Buyer) -> Result<Trade> {
        let mut made = open(trade, "jsapi")?;
        match buyer {
            Buyer::UserId(id) => made.buyer_id = Some(id.clone()),
            Buyer::OpenId(id) => made.buyer_open_id = Some(id.clone()),
        }
        made.trade_no = Some(format!("2026{:020}", made.created_at_ms));
        with(|s| {
            if let Some(t) = s.trades.iter_mut().find(|t| t.id == made.id) {
                *t = made.clone();
            }
        });
        Ok(made)
    }

    pub fn query(id: &str) -> Result<Trade> {
        with(|s| s.trades.iter().find(|t| t.id == id).cloned())
            .ok_or_else(|| Error::NotFound(format!("the merchant has no payment {id}")))
    }

    pub fn list(from_ms: u64, to_ms: u64, after: Option<&str>, limit: u32) -> Result<TradePage> {
        let limit = limit.clamp(1, 100) as usize;
        Ok(with(|s| {
            let mut trades: Vec<Trade> = s
                .trades
                .iter()
                .rev()
                .filter(|t| t.created_at_ms >= from_ms && t.created_at_ms < to_ms)
                .skip_while(|t| after.is_some_and(|a| t.id != a))
                .skip(usize::from(after.is_some()))
                .take(limit + 1)
                .cloned()
                .collect();
            let next = (trades.len() > limit).then(|| {
                trades.truncate(limit);
                trades.last().map(|t| t.id.clone())
            });
            TradePage {
                trades,
                next: next.flatten(),
            }
        }))
    }

    pub fn refund(
        id: &str,
        amount_fen: u64,
        request_no: &str,
        _reason: Option<&str>,
    ) -> Result<RefundReceipt> {
        with(|s| {
            if let Some(done) = s.refunds.get(request_no) {
                return Ok(done.clone());
            }
            let plugin = s.plugin_id.clone();
            let trade = s
                .trades
                .iter_mut()
                .find(|t| t.id == id)
                .ok_or_else(|| Error::NotFound(format!("the merchant has no payment {id}")))?;
            if trade.plugin.as_deref() != Some(plugin.as_str()) {
                return Err(Error::Denied(
                    "a plugin refunds only the trades it created".into(),
                ));
            }
            if trade.paid_at_ms.is_none() {
                return Err(Error::Conflict("the payment is not paid".into()));
            }
            if amount_fen == 0 || trade.refunded_fen + amount_fen > trade.amount_fen {
                return Err(Error::Conflict(
                    "the refund would pass what was paid".into(),
                ));
            }
            trade.refunded_fen += amount_fen;
            let receipt = RefundReceipt {
                id: format!("refund-{}", s.refunds.len() + 1),
                request_no: request_no.to_owned(),
                amount_fen,
                status: "succeeded".into(),
            };
            s.refunds.insert(request_no.to_owned(), receipt.clone());
            Ok(receipt)
        })
    }
}

/// Copy of the kv store, for the all-or-nothing of a call.
pub(super) type Kv = BTreeMap<String, (Vec<u8>, u64)>;
