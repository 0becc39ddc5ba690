//! Hello: the smallest useful Trellis plugin, and the one to copy.
//!
//! It counts the events each merchant receives (kv is kept per merchant by the engine), emits
//! `hello.milestone` every `milestone` events of a kind, serves a themed page to members and a
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
        // One atomic increment per event. Delivery is at least once, so an event delivered
        // twice is counted twice: fine for a tally like this one. A plugin that must never act
        // twice keeps a key per event id (`kv::insert_json`), as the host-api tutorial does.
        let count = kv::increment(&format!("count/{}", event.kind), 1)?;
        info!("counted {}", event.kind; count = count);

        let config: Config = config::get()?;
        if let Some(every) = config.milestone.filter(|n| *n > 0)
            && count % every == 0
        {
            events::emit(
                "hello.milestone",
                &serde_json::json!({ "kind": event.kind, "count": count }),
            )?;
        }
        Ok(())
    }

    fn handle_http(ctx: &Tenant, request: &Request) -> Result<Response> {
        routes(ctx, request)
    }
}

// The routes, written once: `trellis plugin pack` adds them to the manifest.
routes! {
    GET "/" member => page,
    GET "/stats" staff => stats,
}

/// The members' page, in the partner's theme.
fn page(ctx: &Tenant, _request: &Request) -> Result<Response> {
    let total: i64 = counts()?.iter().map(|(_, n)| n).sum();
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

/// The staff's summary: every count by event kind.
fn stats(_ctx: &Tenant, _request: &Request) -> Result<Response> {
    let counts = counts()?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let by_kind: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(kind, n)| (kind, n.into()))
        .collect();
    Response::json(
        200,
        &serde_json::json!({ "total": total, "by_kind": by_kind }),
    )
}

/// Every counter, by event kind, following the pages of `kv::list`.
fn counts() -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = kv::list("count/", after.as_deref(), 100)?;
        for item in &page.items {
            let kind = item.key.trim_start_matches("count/").to_string();
            let n = String::from_utf8_lossy(&item.entry.value)
                .parse()
                .unwrap_or(0);
            out.push((kind, n));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

export_plugin!(Hello);
