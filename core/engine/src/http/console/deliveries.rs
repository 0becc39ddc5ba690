//! The event delivery log of the visitor's subtree: which plugin got which event for which
//! merchant, how many attempts it took and why the last one failed, with redelivery.
//!
//! Invariant: the log is the API's (`http/events.rs`): the visitor's subtree only, redelivery
//! audited; a page reads a bounded number of queries (the page by cursor, newest first, with no
//! count; the names of its merchants; the catalog's installations).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::events as doors;
use super::super::extract::Target;
use super::{Fields, Look, Signed, refused};
use crate::rbac::{Action, allows};
use crate::tenancy;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/deliveries", get(log_page))
        .route("/console/deliveries/{id}/redeliver", post(redeliver))
}

/// The statuses the log is filtered by.
const STATUSES: [&str; 4] = ["pending", "delivered", "skipped", "dead"];

/// Deliveries a page shows.
const PER_PAGE: u64 = 50;

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    status: Option<String>,
    /// The cursor of the page before's last row.
    #[serde(default)]
    after: Option<String>,
}

async fn log_data(
    signed: &Signed,
    status: Option<String>,
    after: Option<String>,
    problem: Option<Value>,
) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let status = status.filter(|s| STATUSES.contains(&s.as_str()));
    let after = after.filter(|a| !a.is_empty());
    let (items, next) =
        doors::deliveries_page(ctx, status.as_deref(), after.as_deref(), PER_PAGE).await?;
    let merchants: Vec<&str> = items
        .iter()
        .filter_map(|d| d.merchant_id.as_deref())
        .collect();
    let names = tenancy::names(&ctx.state.db.conn, &ctx.caller.place, &merchants).await?;
    // Installations name their plugin; the visitor's catalog holds every one it may see.
    let grant = ctx.allow(Action::PluginRead, Target::own()).await;
    let plugins: HashMap<String, String> = match grant {
        Ok(grant) => ctx
            .state
            .catalog
            .list(grant.target())
            .await?
            .into_iter()
            .map(|i| (i.id, i.plugin_id))
            .collect(),
        Err(_) => HashMap::new(),
    };
    let may_redeliver = allows(ctx.caller.role, Action::DeliveryRedeliver);
    let mut data = signed.frame("deliveries").await?;
    data["deliveries"] = json!(
        items
            .iter()
            .map(|d| json!({
                "id": d.id,
                "kind": d.kind,
                "plugin": plugins.get(&d.installation_id).unwrap_or(&d.installation_id),
                "merchant": d.merchant_id.as_ref().map(|m| names.get(m).unwrap_or(m)),
                "status": d.status,
                "attempts": d.attempts,
                "error": d.last_error,
                "at": d.created_at,
                "latency_ms": d.latency_ms,
                "redeliver": may_redeliver && matches!(d.status.as_str(), "dead" | "skipped"),
            }))
            .collect::<Vec<_>>()
    );
    if let Some(next) = next {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(status) = &status {
            query.append_pair("status", status);
        }
        query.append_pair("after", &next);
        data["next"] = format!("/console/deliveries?{}", query.finish()).into();
    }
    data["first"] = after.is_some().into();
    data["statuses"] = json!(STATUSES);
    data["status"] = json!(status);
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

async fn log_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let data = log_data(&signed, query.status, query.after, None).await?;
    look.render(&state, "console-deliveries", data)
}

async fn redeliver(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    match doors::redeliver_one(&signed.ctx, &id).await {
        Ok(_) => Ok(Redirect::to("/console/deliveries").into_response()),
        Err(error) => {
            let Some((status, problem)) = refused(&error, json!({})) else {
                return Err(error);
            };
            let data = log_data(&signed, None, None, Some(problem)).await?;
            look.render_as(&state, "console-deliveries", data, status)
        }
    }
}
