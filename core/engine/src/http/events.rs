//! Events over HTTP: a partner publishing an event for one of its merchants, the event log, and
//! the delivery log with redelivery.
//!
//! Invariant: the engine's own event kinds cannot be published from outside, and a caller sees
//! only events and deliveries inside its subtree, and redelivers only those.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Ctx, Target};
use crate::db::{Page, Paged};
use crate::events::{self, DeliveryFilter, NewEvent};
use crate::rbac::Action;
use crate::tenancy::Place;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/merchants/{id}/events",
            post(publish_event).get(merchant_events),
        )
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/deliveries", get(list_deliveries))
        .route("/api/v1/deliveries/{id}/redeliver", post(redeliver))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PublishEventRequest {
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Published {
    pub event_id: String,
}

/// A partner (or the platform) sends an event for one of its merchants — a test event, or one
/// from a system outside Trellis — to every subscribing plugin.
async fn publish_event(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PublishEventRequest>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let mut place = None;
    let result = async {
        let merchant = ctx.place(Target::merchant(&id)).await?;
        place = Some(merchant.clone());
        // Publishing is the partner's act, whoever stands below it.
        let partner = Place::of_partner(merchant.partner_id.as_deref().unwrap_or_default());
        ctx.allow(Action::PluginManage, Target::Place(partner))
            .await?;
        if crate::plugins::manifest::is_reserved_event(&body.kind) {
            return Err(ApiError::Validation {
                field: "kind",
                message: format!("{} is an engine event; only the engine sends it", body.kind),
            });
        }
        if body.payload.to_string().len() > crate::plugins::MAX_INPUT_BYTES {
            return Err(ApiError::Validation {
                field: "payload",
                message: "the payload is larger than 1 MiB".into(),
            });
        }
        let event = NewEvent {
            kind: body.kind,
            place: merchant,
            payload: body.payload,
            source: format!("api:{}", ctx.caller.id),
            occurred_at: ctx.state.catalog.now(),
            depth: 0,
        };
        Ok(ctx.state.catalog.emit(&event).await?)
    }
    .await;
    let event_id = ctx
        .audited(
            "event.publish",
            ("merchant", Some(&id)),
            place.as_ref(),
            result,
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Published { event_id })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EventQuery {
    #[serde(default)]
    pub merchant_id: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// `engine`, `api:<caller>` or `plugin:<id>`.
    #[serde(default)]
    pub source: Option<String>,
    /// Events of the chain this event started.
    #[serde(default)]
    pub root_id: Option<String>,
}

/// The event log, payloads included (so at most 50 a page): a merchant sees its own, the tiers
/// above everything below them. Reading it is reading the delivery log.
async fn list_events(
    ctx: Ctx,
    ApiQuery(query): ApiQuery<EventQuery>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<events::Recorded>>, ApiError> {
    let scope = match &query.merchant_id {
        Some(id) => Target::merchant(id),
        None => Target::own(),
    };
    let grant = ctx.allow(Action::DeliveryRead, scope).await?;
    if page.per_page > events::MAX_EVENTS_PER_PAGE {
        return Err(ApiError::Validation {
            field: "per_page",
            message: format!(
                "the event log holds at most {} events a page",
                events::MAX_EVENTS_PER_PAGE
            ),
        });
    }
    let filter = events::EventFilter {
        kind: query.kind,
        source: query.source,
        root_id: query.root_id,
        limit: page.limit(),
        offset: page.offset(),
    };
    let (items, total) = events::recorded(&ctx.state.db.conn, grant.target(), &filter).await?;
    Ok(Json(page.wrap(items, total)))
}

/// One merchant's event log: `GET /api/v1/events?merchant_id=`.
async fn merchant_events(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventQuery>,
    page: ApiQuery<Page>,
) -> Result<Json<Paged<events::Recorded>>, ApiError> {
    let query = EventQuery {
        merchant_id: Some(id),
        ..query
    };
    list_events(ctx, ApiQuery(query), page).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeliveryQuery {
    #[serde(default)]
    pub merchant_id: Option<String>,
    #[serde(default)]
    pub installation_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

/// The delivery log: a merchant sees its own, the tiers above everything below them.
async fn list_deliveries(
    ctx: Ctx,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<events::Delivery>>, ApiError> {
    Ok(Json(deliveries(&ctx, query, page).await?))
}

/// One page of the delivery log the caller may read: the door the API and the console share.
pub(super) async fn deliveries(
    ctx: &Ctx,
    query: DeliveryQuery,
    page: Page,
) -> Result<Paged<events::Delivery>, ApiError> {
    let scope = match &query.merchant_id {
        Some(id) => Target::merchant(id),
        None => Target::own(),
    };
    let grant = ctx.allow(Action::DeliveryRead, scope).await?;
    if let Some(status) = &query.status
        && !matches!(
            status.as_str(),
            "pending" | "delivered" | "skipped" | "dead"
        )
    {
        return Err(ApiError::Validation {
            field: "status",
            message: "one of pending, delivered, skipped, dead".into(),
        });
    }
    let filter = DeliveryFilter {
        installation_id: query.installation_id,
        status: query.status,
        event_id: query.event_id,
        limit: page.limit(),
        offset: page.offset(),
    };
    let (items, total) = events::deliveries(&ctx.state.db.conn, grant.target(), &filter).await?;
    Ok(page.wrap(items, total))
}

/// One page of the delivery log newest first, after the cursor `after` (`<ms>.<id>` of the
/// previous page's last row): the console's door, which pages by cursor rather than count.
pub(super) async fn deliveries_page(
    ctx: &Ctx,
    status: Option<&str>,
    after: Option<&str>,
    limit: u64,
) -> Result<(Vec<events::Delivery>, Option<String>), ApiError> {
    let grant = ctx.allow(Action::DeliveryRead, Target::own()).await?;
    let after = match after {
        None => None,
        Some(cursor) => Some(
            cursor
                .split_once('.')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)))
                .filter(|(_, id)| !id.is_empty() && id.len() <= 64)
                .ok_or(ApiError::Validation {
                    field: "after",
                    message: "must be the next of a previous page".into(),
                })?,
        ),
    };
    let items =
        events::deliveries_after(&ctx.state.db.conn, grant.target(), status, after, limit).await?;
    let next = (items.len() as u64 == limit)
        .then(|| {
            items
                .last()
                .map(|d| format!("{}.{}", d.created_at.timestamp_millis(), d.id))
        })
        .flatten();
    Ok((items, next))
}

async fn redeliver(ctx: Ctx, Path(id): Path<String>) -> Result<Json<events::Delivery>, ApiError> {
    Ok(Json(redeliver_one(&ctx, &id).await?))
}

/// Delivers an event to its plugin again, audited: the shared door.
pub(super) async fn redeliver_one(ctx: &Ctx, id: &str) -> Result<events::Delivery, ApiError> {
    let conn = &ctx.state.db.conn;
    let scope = &ctx.caller.place;
    let result = async {
        let delivery = events::delivery(conn, scope, id).await?;
        ctx.allow(Action::DeliveryRedeliver, Target::own()).await?;
        events::redeliver(conn, &delivery, ctx.state.catalog.now()).await?;
        Ok(events::delivery(conn, scope, id).await?)
    }
    .await;
    ctx.audited(
        "delivery.redeliver",
        ("delivery", Some(id)),
        Some(scope),
        result,
    )
    .await
}
