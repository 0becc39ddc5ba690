//! Plugins' pages in the console. Each is described as data in the plugin's manifest
//! (`[[pages]]`: a list, a detail, a form or a QR code bound to one of its admin routes); the
//! console calls that route through the API's own door, with the visitor's session, and renders
//! the answer with its own templates.
//!
//! Invariant: nothing a plugin answers reaches the page as markup. Every value is picked from
//! the route's JSON by a pointer the manifest declares and rendered escaped; a QR code is drawn
//! by the console from a URL.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::plugin_routes::{door_error, doors};
use super::{Look, Signed};
use crate::doors::{Door, Request};
use crate::plugins::catalog::Installation;
use crate::plugins::manifest::pages::{Page, PageKind};
use crate::tenancy::NodeKind;
use crate::themes::Locale;

mod form;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/console/apps/{plugin}/{page}",
        get(show).post(form::submit),
    )
}

/// Rows a list page shows at most, whatever the route answers.
const MAX_ROWS: usize = 200;
/// Characters a value shows at most; the rest is cut.
const MAX_SHOWN: usize = 500;
/// The longest URL drawn as a QR code (a code for more is not scannable anyway).
const MAX_QR: usize = 1_000;

/// The plugin pages the visitor's menu lists: the `menu` pages of the plugins its merchant
/// holds whose route its role may reach. Read from the catalog's kept reads, so the menu costs
/// no query per plugin on most pages.
pub(super) async fn menu(signed: &Signed, current: &str) -> Result<Vec<Value>, ApiError> {
    let caller = &signed.ctx.caller;
    let (Some(partner), Some(merchant)) = (&caller.place.partner_id, &caller.place.merchant_id)
    else {
        return Ok(Vec::new());
    };
    if !matches!(caller.place.kind, NodeKind::Merchant | NodeKind::Store) {
        return Ok(Vec::new());
    }
    let catalog = &signed.ctx.state.catalog;
    let mut entries = Vec::new();
    for plugin in catalog.entitled(merchant).await? {
        let Ok(installed) = catalog.installation_for(partner, &plugin).await else {
            continue;
        };
        for page in installed.pages.iter().filter(|p| p.menu) {
            if reachable(signed, &installed, page) {
                let key = format!("{plugin}/{}", page.id);
                // Both languages: the frame is built before the page knows its visitor's.
                let labels: BTreeMap<&str, String> = Locale::ALL
                    .into_iter()
                    .map(|l| (l.tag(), text(&installed, l, &page.title)))
                    .collect();
                entries.push(json!({
                    "href": format!("/console/apps/{key}"),
                    "labels": labels,
                    "current": key == current,
                }));
            }
        }
    }
    Ok(entries)
}

/// The menu pages of the plugins a merchant below the visitor holds, that the visitor's role
/// reaches (an agent's or a partner's routes, and the merchant's own where the role may): what
/// a merchant's page offers the tiers above it, each link carrying the merchant.
pub(super) async fn pages_for(
    signed: &Signed,
    merchant: &crate::tenancy::Node,
) -> Result<Vec<Value>, ApiError> {
    let catalog = &signed.ctx.state.catalog;
    let partner = merchant.partner_id.clone().unwrap_or_default();
    let mut entries = Vec::new();
    for plugin in catalog.entitled(&merchant.id).await? {
        let Ok(installed) = catalog.installation_for(&partner, &plugin).await else {
            continue;
        };
        for page in installed.pages.iter().filter(|p| p.menu) {
            if reachable(signed, &installed, page) {
                let labels: BTreeMap<&str, String> = Locale::ALL
                    .into_iter()
                    .map(|l| (l.tag(), text(&installed, l, &page.title)))
                    .collect();
                entries.push(json!({
                    "href": href(&plugin, &page.id, &[("merchant_id", &merchant.id)]),
                    "labels": labels,
                }));
            }
        }
    }
    Ok(entries)
}

/// Whether the visitor's door and role reach the page's route: a store's door serves `staff`
/// routes only, and the role must allow the route's audience. What the menu and a page's links
/// offer; the door checks again when the route is called.
fn reachable(signed: &Signed, installed: &Installation, page: &Page) -> bool {
    let caller = &signed.ctx.caller;
    let Some(audience) = audience_of(installed, page) else {
        return false;
    };
    if caller.place.kind == NodeKind::Store && audience != crate::plugins::manifest::Audience::Staff
    {
        return false;
    }
    Door::audience_action(audience).is_some_and(|action| crate::rbac::allows(caller.role, action))
}

/// The audience of the route a page uses, as the installation lists its routes.
fn audience_of(
    installed: &Installation,
    page: &Page,
) -> Option<crate::plugins::manifest::Audience> {
    let (method, path) = page.route.split_once(' ')?;
    let route = installed
        .routes
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)?;
    serde_json::from_value(Value::String(route.audience.clone())).ok()
}

/// A manifest string: the `i18n` entry for `key` in the visitor's language, else `key` as is.
fn text(installed: &Installation, locale: Locale, key: &str) -> String {
    installed
        .strings
        .get(locale.tag())
        .and_then(|strings| strings.get(key))
        .cloned()
        .unwrap_or_else(|| key.to_owned())
}

/// The value at `pointer` as the page shows it: text as is, numbers and booleans written out,
/// a list of plain values joined, anything else as compact JSON. Always escaped by the template.
fn shown(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.iter().all(|v| !v.is_object() && !v.is_array()) => items
            .iter()
            .map(|v| shown(Some(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    };
    // A cell is read, not a document: a plugin cannot grow a page by its answers' size.
    if text.chars().count() > MAX_SHOWN {
        let mut cut: String = text.chars().take(MAX_SHOWN).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

/// The merchant a plugin page is opened for, and its partner: the visitor's own for a
/// merchant's or a store's console; for a tier above, the merchant named by `?merchant_id=`,
/// found inside the visitor's subtree (else not found).
#[derive(Debug, Clone)]
pub(super) struct Opened {
    pub(super) partner: String,
    pub(super) merchant: String,
    /// The visitor stands above the merchant: every link carries `merchant_id`.
    pub(super) above: bool,
}

impl Opened {
    pub(super) async fn of(
        signed: &Signed,
        params: &BTreeMap<String, String>,
    ) -> Result<Self, ApiError> {
        let place = &signed.ctx.caller.place;
        if matches!(place.kind, NodeKind::Merchant | NodeKind::Store) {
            return Ok(Self {
                partner: place.partner_id.clone().unwrap_or_default(),
                merchant: place.merchant_id.clone().unwrap_or_default(),
                above: false,
            });
        }
        let wanted = params
            .get("merchant_id")
            .map(String::as_str)
            .unwrap_or_default();
        let node = crate::tenancy::find_in_scope(
            &signed.ctx.state.db.conn,
            place,
            Some(NodeKind::Merchant),
            wanted,
        )
        .await
        .map_err(|_| ApiError::NotFound("open a plugin page from one of your merchants".into()))?;
        Ok(Self {
            partner: node.partner_id.clone().unwrap_or_default(),
            merchant: node.id,
            above: true,
        })
    }

    /// The parameters every link of the page carries besides the page's own.
    pub(super) fn carried(&self) -> Vec<(&str, &str)> {
        if self.above {
            vec![("merchant_id", self.merchant.as_str())]
        } else {
            Vec::new()
        }
    }

    /// Where the visitor's plugin calls go: its store's door for store staff, the merchant's
    /// for everyone else (the door admits only a merchant inside the visitor's subtree).
    fn door<'a>(&'a self, signed: &'a Signed) -> Door<'a> {
        let caller = &signed.ctx.caller;
        match caller.place.kind {
            NodeKind::Store => Door::Store {
                caller,
                store_id: &caller.place.id,
            },
            _ => Door::Merchant {
                caller,
                merchant_id: &self.merchant,
            },
        }
    }
}

/// The installation and its page `id`, else not found.
async fn page_of(
    signed: &Signed,
    opened: &Opened,
    plugin: &str,
    id: &str,
) -> Result<(Arc<Installation>, Page), ApiError> {
    let missing = || ApiError::NotFound(format!("/console/apps/{plugin}/{id}"));
    let installed = signed
        .ctx
        .state
        .catalog
        .installation_for(&opened.partner, plugin)
        .await
        .map_err(|_| missing())?;
    let page = installed
        .pages
        .iter()
        .find(|p| p.id == id)
        .cloned()
        .filter(|page| reachable(signed, &installed, page))
        .ok_or_else(missing)?;
    // Only for a plugin the merchant holds now: not even a form's labels otherwise.
    if !signed
        .ctx
        .state
        .catalog
        .entitled(&opened.merchant)
        .await?
        .iter()
        .any(|p| p == plugin)
    {
        return Err(missing());
    }
    Ok((installed, page))
}

/// The path of `route` (`"METHOD /path"`) with each `{name}` filled from the page's
/// parameters, each one path segment (percent-encoded).
fn path_of(route: &str, params: &BTreeMap<String, String>) -> Result<String, ApiError> {
    let (_, pattern) = route.split_once(' ').unwrap_or_default();
    let mut path = String::new();
    for segment in pattern.split('/').filter(|s| !s.is_empty()) {
        path.push('/');
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let value = params
                    .get(name)
                    .filter(|v| !v.is_empty() && *v != "." && *v != "..")
                    .ok_or_else(|| ApiError::Validation {
                        field: "params",
                        message: format!("this page needs its {name}"),
                    })?;
                path.push_str(&segment_encoded(value));
            }
            None => path.push_str(segment),
        }
    }
    Ok(path)
}

/// `value` as one path segment: every byte but the unreserved ones percent-encoded, so it can
/// neither end the segment nor start a query.
fn segment_encoded(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The parameters a page's links carry: the page's own (its route's `{name}`s) and, for a
/// tier above the merchant, the merchant.
fn pairs_of<'a>(
    page: &'a Page,
    params: &'a BTreeMap<String, String>,
    opened: &'a Opened,
) -> Vec<(&'a str, &'a str)> {
    let mut pairs: Vec<(&str, &str)> = page
        .params()
        .into_iter()
        .filter_map(|p| params.get(p).map(|v| (p, v.as_str())))
        .collect();
    pairs.extend(opened.carried());
    pairs
}

/// A link to page `id` of the plugin with `params`.
fn href(plugin: &str, id: &str, params: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    if query.is_empty() {
        format!("/console/apps/{plugin}/{id}")
    } else {
        format!("/console/apps/{plugin}/{id}?{query}")
    }
}

/// Calls the plugin's route for the visitor through the API's door; a change is audited as the
/// API audits it. Answers the status and the JSON body (`null` when it is not JSON).
async fn call(
    signed: &Signed,
    opened: &Opened,
    plugin: &str,
    request: Request,
) -> Result<(u16, Value), ApiError> {
    let ctx = &signed.ctx;
    let door = opened.door(signed);
    let mutating = request.method != "GET";
    let uri: Uri = format!("/console/apps/{plugin}")
        .parse()
        .unwrap_or_default();
    let answer = doors(&ctx.state)
        .call(door, plugin, &signed.arrival, request)
        .await;
    let result = answer
        .result
        .map(|r| {
            (
                r.status,
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            )
        })
        .map_err(|e| door_error(e, &uri));
    let result = if mutating {
        let about = ("plugin", Some(plugin));
        ctx.audited("plugin.call", about, answer.place.as_ref(), result)
            .await
    } else {
        result
    };
    match result {
        // The plugin's own refusal (`Error::field`, `Error::conflict`, …) is an answer the page
        // shows; the engine's refusals (not entitled, not allowed) stay errors.
        Err(error @ ApiError::Plugin(crate::plugins::Error::Plugin(_))) => {
            let (status, code) = error.status_and_code();
            let message = error.to_string();
            Ok((status.as_u16(), json!({ "code": code, "message": message })))
        }
        other => other,
    }
}

/// A plugin's refusal (`{code, message}`), as a form shows it.
fn refusal(status: u16, body: &Value) -> Value {
    json!({
        "status": status,
        "code": body.get("code").and_then(Value::as_str).unwrap_or("plugin_failed"),
        "message": body.get("message").and_then(Value::as_str).unwrap_or_default(),
    })
}

async fn show(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Path((plugin, id)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let opened = Opened::of(&signed, &params).await?;
    let (installed, page) = page_of(&signed, &opened, &plugin, &id).await?;
    let mut data = frame(&signed, &look, &installed, &page).await?;
    let pairs = pairs_of(&page, &params, &opened);
    data["links"] = json!(
        page.links
            .iter()
            .filter_map(|other| installed.pages.iter().find(|p| &p.id == other))
            .filter(|other| reachable(&signed, &installed, other))
            .map(|other| json!({
                "href": href(&plugin, &other.id, &pairs),
                "label": text(&installed, look.locale, &other.title),
            }))
            .collect::<Vec<_>>()
    );
    if page.kind == PageKind::Form {
        let action = href(&plugin, &page.id, &pairs);
        return form::show(
            (&state, &look, &signed),
            &opened,
            (&installed, &page),
            &params,
            action,
            data,
        )
        .await;
    }
    let path = path_of(&page.route, &params)?;
    let mut query = Vec::new();
    if let Some(search) = &page.search {
        let q = params.get(search).map(String::as_str).unwrap_or_default();
        if !q.is_empty() {
            query.push((search.as_str(), q));
        }
        // The search box sends the page's own parameters along with the words.
        let keep: Vec<Value> = pairs
            .iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
        data["search"] = json!({ "param": search, "value": q, "keep": keep });
    }
    if let Some(after) = params.get("after").filter(|a| !a.is_empty()) {
        query.push(("after", after.as_str()));
    }
    let request = Request {
        method: "GET".into(),
        path,
        query: url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&query)
            .finish(),
        headers: Vec::new(),
        body: Vec::new(),
        locale: look.locale.tag(),
    };
    let (status, body) = call(&signed, &opened, &plugin, request).await?;
    if status >= 400 {
        data["problem"] = refusal(status, &body);
        let mut response = look.render(&state, "console-app", data)?;
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return Ok(response);
    }
    match page.kind {
        PageKind::List | PageKind::Detail => {
            data["fields"] = json!(
                page.fields
                    .iter()
                    .map(|f| json!({
                        "label": text(&installed, look.locale, &f.label),
                        "value": shown(body.pointer(&f.field)),
                    }))
                    .collect::<Vec<_>>()
            );
            if let Some(table) = &page.table {
                data["table"] = table_of(
                    (&installed, look.locale),
                    &page,
                    table,
                    &body,
                    &opened.carried(),
                );
            }
            if let Some(next) = page.next.as_deref().and_then(|n| body.pointer(n)) {
                let cursor = shown(Some(next));
                if !cursor.is_empty() {
                    let mut more = pairs.clone();
                    if let Some(search) = data["search"]["value"].as_str().filter(|v| !v.is_empty())
                    {
                        more.push((page.search.as_deref().unwrap_or("q"), search));
                    }
                    more.push(("after", &cursor));
                    data["next"] = href(&plugin, &page.id, &more).into();
                }
            }
        }
        PageKind::Qr => {
            let url = shown(page.value.as_deref().and_then(|v| body.pointer(v)));
            if !url.is_empty() && url.len() <= MAX_QR {
                data["qr"] = json!({ "url": url, "svg": super::super::qr_svg(&url)? });
            }
        }
        PageKind::Form => {}
    }
    look.render(&state, "console-app", data)
}

/// The frame of a plugin page: the console's, with the plugin's name and the page's title.
async fn frame(
    signed: &Signed,
    look: &Look,
    installed: &Installation,
    page: &Page,
) -> Result<Value, ApiError> {
    let key = format!("{}/{}", installed.plugin_id, page.id);
    let mut data = signed.frame(&key).await?;
    data["app"] = json!({
        "plugin": installed.plugin_id,
        // The manifest's own name in the visitor's language, where it gives one.
        "name": installed
            .strings
            .get(look.locale.tag())
            .and_then(|s| s.get("name"))
            .unwrap_or(&installed.name),
        "title": text(installed, look.locale, &page.title),
        "kind": page.kind,
    });
    Ok(data)
}

/// A table's rows from the answer, each cell shown as text, each row opening its page.
fn table_of(
    (installed, locale): (&Installation, Locale),
    page: &Page,
    table: &crate::plugins::manifest::pages::Table,
    body: &Value,
    carried: &[(&str, &str)],
) -> Value {
    let plugin = installed.plugin_id.as_str();
    let rows = body
        .pointer(&table.items)
        .and_then(Value::as_array)
        .map(|rows| rows.iter().take(MAX_ROWS).collect::<Vec<_>>())
        .unwrap_or_default();
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let cells: Vec<String> = table
                .columns
                .iter()
                .map(|c| shown(row.pointer(&c.field)))
                .collect();
            let open = page.open.as_ref().and_then(|open| {
                let value = shown(row.pointer(&open.field));
                let mut pairs = vec![(open.param.as_str(), value.as_str())];
                pairs.extend_from_slice(carried);
                (!value.is_empty()).then(|| href(plugin, &open.page, &pairs))
            });
            json!({ "cells": cells, "open": open })
        })
        .collect();
    json!({
        "columns": table
            .columns
            .iter()
            .map(|c| text(installed, locale, &c.label))
            .collect::<Vec<_>>(),
        "rows": rows,
    })
}
