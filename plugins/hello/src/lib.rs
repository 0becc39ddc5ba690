//! Hello: the smallest useful Trellis plugin, and the one to copy.
//!
//! It counts the events each merchant receives (in kv, which the engine keeps per merchant),
//! emits `hello.milestone` every `milestone` events, serves a themed page to members and a
//! JSON summary to the merchant's staff.

use serde::{Deserialize, Serialize};
use trellis_host_api::prelude::*;

/// The merchant's configuration; `config.schema.json` describes the same shape.
#[derive(Deserialize, Serialize)]
struct Config {
    #[serde(default)]
    greeting: Option<String>,
    #[serde(default)]
    milestone: Option<i64>,
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
        // Delivery is at least once: count each event id once.
        if !kv::insert_json(&format!("seen/{}", event.id), &event.occurred_at_ms)? {
            return Ok(());
        }
        let total = kv::increment("count/total", 1)?;
        kv::increment(&format!("count/kind/{}", event.kind), 1)?;
        info!("counted {}", event.kind; total = total);

        let config: Config = config::get()?;
        if let Some(every) = config.milestone.filter(|n| *n > 0)
            && total % every == 0
        {
            events::emit("hello.milestone", &serde_json::json!({ "total": total }))?;
        }
        Ok(())
    }

    fn handle_http(ctx: &Tenant, request: &Request) -> Result<Response> {
        let total = count("count/total")?;
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
                    &serde_json::json!({ "greeting": greeting, "total": total, "locale": ctx.locale }),
                )?;
                Ok(Response::html(200, html))
            }
            "/stats" => {
                let page = kv::list("count/kind/", None, 100)?;
                let kinds: serde_json::Map<String, serde_json::Value> = page
                    .items
                    .iter()
                    .map(|item| {
                        let kind = item.key.trim_start_matches("count/kind/").to_string();
                        let n = String::from_utf8_lossy(&item.entry.value)
                            .parse::<i64>()
                            .unwrap_or(0);
                        (kind, n.into())
                    })
                    .collect();
                Response::json(
                    200,
                    &serde_json::json!({ "total": total, "by_kind": kinds }),
                )
            }
            other => Err(Error::not_found(other.to_string())),
        }
    }
}

fn count(key: &str) -> Result<i64> {
    Ok(kv::get(key)?
        .and_then(|entry| String::from_utf8_lossy(&entry.value).parse().ok())
        .unwrap_or(0))
}

export_plugin!(Hello);
