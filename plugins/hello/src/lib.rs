//! Hello: the smallest useful Trellis plugin, and the one to copy.
//!
//! It counts the events each merchant receives in one kv document (the engine keeps kv per
//! merchant), emits `hello.milestone` every `milestone` events, serves a themed page to members
//! and a JSON summary to the merchant's staff.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use trellis_host_api::prelude::*;

/// How many recent event ids the counter remembers to ignore redeliveries.
const REMEMBERED: usize = 16;

/// The merchant's configuration; `config.schema.json` describes the same shape.
#[derive(Deserialize, Serialize)]
struct Config {
    #[serde(default)]
    greeting: Option<String>,
    #[serde(default)]
    milestone: Option<i64>,
}

/// Everything hello stores for a merchant: one document, updated with compare-and-swap.
#[derive(Deserialize, Serialize, Default)]
struct Stats {
    total: i64,
    by_kind: BTreeMap<String, i64>,
    /// Fingerprints of the last event ids counted. Delivery is at least once, and redeliveries
    /// come soon after the first attempt, so a short memory is enough here; a plugin that must
    /// never count twice keeps one key per event id (see the host-api tutorial).
    recent: VecDeque<u64>,
}

struct Hello;

impl Plugin for Hello {
    fn configure(_ctx: &Tenant, config: serde_json::Value) -> Result<serde_json::Value> {
        let mut config: Config = serde_json::from_value(config)
            .map_err(|e| Error::invalid(format!("configuration: {e}")))?;
        if let Some(greeting) = &config.greeting {
            let trimmed = greeting.trim();
            if trimmed.is_empty() {
                return Err(Error::field("/greeting", "must not be blank"));
            }
            config.greeting = Some(trimmed.to_string());
        }
        serde_json::to_value(&config).map_err(|e| Error::internal(e.to_string()))
    }

    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        // One read and one compare-and-swap; `try_update` retries if another delivery raced us.
        let fingerprint = fingerprint(&event.id);
        let updated = kv::try_update("stats", |old: Option<Stats>| {
            let mut stats = old.unwrap_or_default();
            if stats.recent.contains(&fingerprint) {
                return Ok(None);
            }
            stats.total += 1;
            *stats.by_kind.entry(event.kind.clone()).or_default() += 1;
            stats.recent.push_back(fingerprint);
            if stats.recent.len() > REMEMBERED {
                stats.recent.pop_front();
            }
            Ok(Some(stats))
        })?;
        let Some(stats) = updated else {
            return Ok(()); // a redelivery
        };
        info!("counted {}", event.kind; total = stats.total);

        let config: Config = config::get()?;
        if let Some(every) = config.milestone.filter(|n| *n > 0)
            && stats.total % every == 0
        {
            events::emit(
                "hello.milestone",
                &serde_json::json!({ "total": stats.total }),
            )?;
        }
        Ok(())
    }

    fn handle_http(ctx: &Tenant, request: &Request) -> Result<Response> {
        let stats = kv::get_json::<Stats>("stats")?
            .map(|(s, _)| s)
            .unwrap_or_default();
        match request.route.as_str() {
            "/" => {
                let config: Config = config::get()?;
                let greeting = config.greeting.unwrap_or_else(|| {
                    if ctx.locale == "zh-CN" {
                        "你好".into()
                    } else {
                        "Hello".into()
                    }
                });
                let html = templates::render(
                    "page.hbs",
                    &serde_json::json!({ "greeting": greeting, "total": stats.total, "locale": ctx.locale }),
                )?;
                Ok(Response::html(200, html))
            }
            "/stats" => Response::json(
                200,
                &serde_json::json!({ "total": stats.total, "by_kind": stats.by_kind }),
            ),
            other => Err(Error::not_found(other.to_string())),
        }
    }
}

/// FNV-1a: a stable 64-bit fingerprint of an event id.
fn fingerprint(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

export_plugin!(Hello);
