//! Packages (套餐) in the console: an agent drafts one from the plugins its partner offers,
//! publishes it and assigns it to its merchants; everyone above sees them; each assignment can
//! be renewed or revoked, and a merchant sees what it holds and until when.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::extract::Target;
use super::super::packages as doors;
use super::{Fields, Look, PageQuery, Signed, pages, refused};
use crate::db::Page;
use crate::packages::{self, Quotas, Spec};
use crate::rbac::Action;
use crate::tenancy::{self, NodeFilter, NodeKind};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/packages", get(list_page).post(create))
        .route("/console/packages/{id}", get(package_page).post(update))
        .route("/console/packages/{id}/publish", post(publish))
        .route("/console/packages/{id}/assign", post(assign))
        .route("/console/assignments", get(assignments_page))
        .route("/console/assignments/{id}/renew", post(renew))
        .route("/console/assignments/{id}/revoke", post(revoke))
}

/// The merchants an agent picks from when assigning: one page, the first by name.
const MERCHANT_CHOICES: u64 = 200;

/// A package's spec from its form: name, description, the plugins ticked, validity and quotas
/// (an empty quota is unlimited).
fn spec_from(fields: &Fields) -> Result<Spec, ApiError> {
    let number = |field: &'static str| -> Result<Option<u64>, ApiError> {
        let text = fields.one(field).trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| ApiError::Validation {
            field,
            message: "a whole number".into(),
        })
    };
    let validity = number("validity_days")?.unwrap_or(365);
    Ok(Spec {
        name: fields.one("name").to_owned(),
        description: fields.one("description").to_owned(),
        plugins: fields.all("plugins"),
        validity_days: u32::try_from(validity).map_err(|_| ApiError::Validation {
            field: "validity_days",
            message: "too many days".into(),
        })?,
        quotas: Quotas {
            max_members: number("max_members")?,
            events_per_day: number("events_per_day")?,
        },
        list_price: None,
    })
}

async fn list_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let data = list_data(&signed, query.page(), None).await?;
    look.render(&state, "console-packages", data)
}

/// The packages in the visitor's subtree, and the new-package form for an agent.
async fn list_data(signed: &Signed, page: Page, problem: Option<Value>) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let grant = ctx.allow(Action::PackageRead, Target::own()).await?;
    let listed = packages::list(&ctx.state.db.conn, grant.target(), page).await?;
    let mut data = signed.frame("packages").await?;
    data["packages"] = json!(listed.items);
    data["pages"] = pages(listed.total, page);
    // A package belongs to an agent: the agent drafts its own (tiers above use the API).
    let drafts = ctx.caller.place.kind == NodeKind::Agent
        && crate::rbac::allows(ctx.caller.role, Action::PackageWrite);
    if drafts {
        data["offered"] = json!(offered(signed).await?);
    }
    data["may_create"] = drafts.into();
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

/// The plugins the visitor's partner offers to its agents.
async fn offered(signed: &Signed) -> Result<Vec<String>, ApiError> {
    let partner = signed
        .ctx
        .caller
        .place
        .partner_id
        .clone()
        .unwrap_or_default();
    Ok(signed
        .ctx
        .state
        .catalog
        .offered(&partner)
        .await?
        .into_iter()
        .collect())
}

async fn create(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let result = match spec_from(&fields) {
        Ok(spec) => {
            let request = doors::CreatePackageRequest {
                agent_id: None,
                spec,
            };
            doors::create(&signed.ctx, request).await
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(package) => {
            Ok(Redirect::to(&format!("/console/packages/{}", package.id)).into_response())
        }
        Err(error) => {
            let Some((status, problem)) = refused(&error, fields.typed()) else {
                return Err(error);
            };
            let data = list_data(&signed, PageQuery { page: None }.page(), Some(problem)).await?;
            look.render_as(&state, "console-packages", data, status)
        }
    }
}

async fn package_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let data = package_data(&signed, &id, None).await?;
    look.render(&state, "console-package", data)
}

/// One package: its draft in a form (for its agent), its versions, and the assign form with
/// the agent's merchants to pick from.
async fn package_data(
    signed: &Signed,
    id: &str,
    problem: Option<Value>,
) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let detail = doors::detail(ctx, id).await?;
    let mut data = signed.frame("packages").await?;
    let own = ctx.caller.place.agent_id.as_deref() == Some(detail.package.agent_id.as_str())
        && ctx.caller.place.kind == NodeKind::Agent;
    let writes = own && crate::rbac::allows(ctx.caller.role, Action::PackageWrite);
    if writes {
        let offered = offered(signed).await?;
        let ticked = &detail.package.draft.plugins;
        data["offered"] = json!(
            offered
                .iter()
                .map(|p| json!({ "id": p, "ticked": ticked.contains(p) }))
                .collect::<Vec<_>>()
        );
        let filter = NodeFilter {
            parent_id: Some(detail.package.agent_id.clone()),
            ..NodeFilter::default()
        };
        let choices = Page {
            page: 1,
            per_page: MERCHANT_CHOICES,
        };
        let merchants = tenancy::list(
            &ctx.state.db.conn,
            &ctx.caller.place,
            NodeKind::Merchant,
            &filter,
            choices,
        )
        .await?;
        data["merchants"] = json!(merchants.items);
        data["more_merchants"] = (merchants.total > MERCHANT_CHOICES).into();
    }
    data["may_write"] = writes.into();
    data["package"] = json!(detail.package);
    data["versions"] = json!(detail.versions);
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

/// Shows a refused package form again on the package's page, or passes the error on.
async fn again(
    state: &AppState,
    look: &Look,
    signed: &Signed,
    id: &str,
    error: ApiError,
    typed: Value,
) -> Result<Response, ApiError> {
    let Some((status, problem)) = refused(&error, typed) else {
        return Err(error);
    };
    let data = package_data(signed, id, Some(problem)).await?;
    look.render_as(state, "console-package", data, status)
}

fn to_package(id: &str) -> Response {
    Redirect::to(&format!("/console/packages/{id}")).into_response()
}

async fn update(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let result = match spec_from(&fields) {
        Ok(spec) => doors::update(&signed.ctx, &id, spec).await.map(|_| ()),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => Ok(to_package(&id)),
        Err(error) => again(&state, &look, &signed, &id, error, fields.typed()).await,
    }
}

async fn publish(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    match doors::publish(&signed.ctx, &id).await {
        Ok(_) => Ok(to_package(&id)),
        Err(error) => again(&state, &look, &signed, &id, error, json!({})).await,
    }
}

async fn assign(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let ends_at = fields.one("ends_at").trim();
    let request = doors::AssignRequest {
        merchant_ids: fields.all("merchant_id"),
        starts_at: None,
        ends_at: (!ends_at.is_empty()).then(|| ends_at.to_owned()),
    };
    match doors::assign(&signed.ctx, &id, request).await {
        Ok(_) => Ok(Redirect::to("/console/assignments").into_response()),
        Err(error) => again(&state, &look, &signed, &id, error, fields.typed()).await,
    }
}

async fn assignments_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let data = assignments_data(&signed, query.page(), None).await?;
    look.render(&state, "console-assignments", data)
}

/// The assignments in the visitor's subtree, newest first: a merchant's are what it holds.
async fn assignments_data(
    signed: &Signed,
    page: Page,
    problem: Option<Value>,
) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let grant = ctx.allow(Action::AssignmentRead, Target::own()).await?;
    let now = ctx.state.catalog.now();
    let listed =
        packages::list_assignments(&ctx.state.db.conn, grant.target(), None, now, page).await?;
    let ids: Vec<&str> = listed
        .items
        .iter()
        .map(|a| a.merchant_id.as_str())
        .collect();
    let names = tenancy::names(&ctx.state.db.conn, grant.target(), &ids).await?;
    let rows: Vec<Value> = listed
        .items
        .iter()
        .map(|a| {
            let mut row = json!(a);
            row["merchant_name"] = names.get(&a.merchant_id).cloned().into();
            row
        })
        .collect();
    let mut data = signed.frame("assignments").await?;
    data["assignments"] = rows.into();
    data["pages"] = pages(listed.total, page);
    data["may_write"] = crate::rbac::allows(ctx.caller.role, Action::AssignmentWrite).into();
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

async fn renew(
    state: State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    let ends_at = fields.one("ends_at").trim();
    let renewal = doors::RenewRequest {
        ends_at: (!ends_at.is_empty()).then(|| ends_at.to_owned()),
    };
    change(state, look, signed, headers, &id, &fields, Some(renewal)).await
}

async fn revoke(
    state: State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    change(state, look, signed, headers, &id, &fields, None).await
}

async fn change(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    id: &str,
    fields: &Fields,
    renewal: Option<doors::RenewRequest>,
) -> Result<Response, ApiError> {
    signed.check_form(&headers, fields.one("form_token"))?;
    match doors::change_assignment(&signed.ctx, id, renewal).await {
        Ok(_) => Ok(Redirect::to("/console/assignments").into_response()),
        Err(error) => {
            let Some((status, problem)) = refused(&error, fields.typed()) else {
                return Err(error);
            };
            let page = PageQuery { page: None }.page();
            let data = assignments_data(&signed, page, Some(problem)).await?;
            look.render_as(&state, "console-assignments", data, status)
        }
    }
}
