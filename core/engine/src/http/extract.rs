//! What every API handler starts from: JSON bodies and query strings that fail in our error
//! format, the authenticated caller, and [`Ctx`] — the one door through which a handler checks
//! scope, authorizes and (for changes) records the audit entry.
//!
//! Invariant: a client-supplied id is resolved inside the caller's subtree (404 outside it)
//! before anything is authorized, and every change that passes through [`Change::run`] is
//! audited whatever its outcome.

use std::borrow::Cow;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::error::ApiError;
use super::middleware::{HostContext, RequestId};
use crate::auth::{self, Principal};
use crate::db::{Page, Paged};
use crate::rbac::audit::{self, Outcome};
use crate::rbac::{Action, Grant};
use crate::tenancy::{self, NodeKind, Place};

/// The session cookie; HttpOnly and SameSite=Lax, so page scripts cannot read it and other
/// sites cannot ride it on a POST.
pub const SESSION_COOKIE: &str = "trellis_session";

/// JSON bodies whose rejections speak our error format: 422 naming what is wrong.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "expected a JSON body with content-type: application/json".into(),
            )),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                e.body_text()
            ))),
            Err(rejection) => Err(ApiError::Validation {
                field: "body",
                message: rejection.body_text(),
            }),
        }
    }
}

/// Query strings, with the same error format.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|e| ApiError::Validation {
                field: "query",
                message: e.body_text(),
            })
    }
}

/// The authenticated caller: a session token (Bearer or cookie) or an API key (Bearer).
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let host = parts
            .extensions
            .get::<HostContext>()
            .cloned()
            .unwrap_or_default();
        // A session sent as the cookie is a browser's: a change it asks for must come from this
        // origin, or another site could make a signed-in browser post (a body-less POST needs
        // no preflight). Programs send Bearer tokens, which no other site can attach.
        let cookie_only =
            bearer(&parts.headers).is_none() && cookie(&parts.headers, SESSION_COOKIE).is_some();
        if cookie_only && !parts.method.is_safe() && !same_origin(&parts.headers) {
            return Err(ApiError::FormRefused(
                "a change sent with the session cookie must come from this site's own pages",
            ));
        }
        Ok(Self(principal_of(state, &parts.headers, &host).await?))
    }
}

/// The principal behind a request's session token (Bearer or cookie) or API key (Bearer).
pub(crate) async fn principal_of(
    state: &AppState,
    headers: &HeaderMap,
    host: &HostContext,
) -> Result<Principal, ApiError> {
    let token = bearer(headers).or_else(|| cookie(headers, SESSION_COOKIE));
    let Some(token) = token else {
        return Err(auth::Error::Unauthenticated.into());
    };
    Ok(auth::authenticate(&state.db.conn, &token, host.partner_id()).await?)
}

/// Whether a state-changing request comes from a page of this origin. Browsers send
/// `Sec-Fetch-Site` and `Origin` with every form post; a request with neither (a program) is
/// left to the form token.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
    {
        return false;
    }
    match (header("origin"), header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name`, if the request carries it.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// The request's id, as the audit log files it.
pub(crate) fn request_id(id: &Option<Extension<RequestId>>) -> Option<&str> {
    id.as_ref().map(|Extension(RequestId(id))| id.as_str())
}

/// A page of a short list that is read whole (a partner's plugins).
pub(crate) fn paged<T>(all: Vec<T>, page: Page) -> Paged<T> {
    let total = u64::try_from(all.len()).unwrap_or(u64::MAX);
    let skip = usize::try_from(page.offset()).unwrap_or(usize::MAX);
    let take = usize::try_from(page.limit()).unwrap_or(usize::MAX);
    page.wrap(all.into_iter().skip(skip).take(take).collect(), total)
}

/// Where an action applies, as the client named it.
pub enum Target<'a> {
    /// Node `id`, of this kind (any kind when `None`), inside the caller's subtree.
    Node(Option<NodeKind>, &'a str),
    /// Node `id` when the client named one, else the caller's own node.
    NodeOr(Option<&'a str>),
    /// The node account `id` stands on, inside the caller's subtree.
    Account(&'a str),
    /// The node API key `id` acts for, inside the caller's subtree.
    ApiKey(&'a str),
    /// A place already resolved inside the caller's subtree.
    Place(Place),
}

impl<'a> Target<'a> {
    pub fn partner(id: &'a str) -> Self {
        Self::Node(Some(NodeKind::Partner), id)
    }

    pub fn merchant(id: &'a str) -> Self {
        Self::Node(Some(NodeKind::Merchant), id)
    }

    /// The caller's own node.
    pub fn own() -> Self {
        Self::NodeOr(None)
    }
}

/// An API request's context: the app, the authenticated caller and the request id.
pub struct Ctx {
    pub state: AppState,
    pub caller: Principal,
    pub request_id: Option<String>,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|RequestId(id)| id.clone());
        Ok(Self {
            state: state.clone(),
            caller,
            request_id,
        })
    }
}

impl Ctx {
    /// The place `target` names, inside the caller's subtree (404 outside it).
    pub async fn place(&self, target: Target<'_>) -> Result<Place, ApiError> {
        let (kind, id) = match target {
            Target::Node(kind, id) => (kind, id),
            Target::NodeOr(Some(id)) => (None, id),
            Target::NodeOr(None) => return Ok(self.caller.place.clone()),
            Target::Place(place) => return Ok(place),
            Target::Account(id) => {
                let conn = &self.state.db.conn;
                return Ok(auth::find_user_in_scope(conn, &self.caller.place, id)
                    .await?
                    .1);
            }
            Target::ApiKey(id) => {
                let conn = &self.state.db.conn;
                return Ok(auth::find_api_key_in_scope(conn, &self.caller.place, id)
                    .await?
                    .1);
            }
        };
        Ok(
            tenancy::find_in_scope(&self.state.db.conn, &self.caller.place, kind, id)
                .await?
                .place(),
        )
    }

    /// Scope check, then authorization: the proof a read (or an unaudited step) needs.
    pub async fn allow(&self, action: Action, target: Target<'_>) -> Result<Grant, ApiError> {
        let place = self.place(target).await?;
        Ok(self
            .state
            .rbac
            .authorize(&self.caller, action, &place)
            .await?)
    }

    /// A change: scope check → authorize → the work → the audit entry, whatever the outcome,
    /// filed as `audit_as` about `(kind, id)`.
    pub fn change<'a>(
        &'a self,
        action: Action,
        target: Target<'a>,
        audit_as: impl Into<Cow<'a, str>>,
        (kind, id): (&'static str, Option<&'a str>),
    ) -> Change<'a> {
        Change {
            ctx: self,
            action,
            target,
            name: audit_as.into(),
            kind,
            id,
        }
    }

    /// Records the outcome of a state-changing call and passes the result through. Refusals of
    /// ids outside the caller's subtree are filed under the caller (see `rbac::audit`).
    pub async fn audited<T>(
        &self,
        action: &str,
        target: (&str, Option<&str>),
        place: Option<&Place>,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let (outcome, detail) = match &result {
            Ok(_) => (Outcome::Success, None),
            Err(e) if e.status_and_code().0 == StatusCode::FORBIDDEN || e.is_not_found() => {
                (Outcome::Denied, Some(e.status_and_code().1.to_owned()))
            }
            Err(e) => (Outcome::Failed, Some(e.status_and_code().1.to_owned())),
        };
        let place = if outcome == Outcome::Denied {
            None
        } else {
            place
        };
        let entry = audit::Entry {
            actor: Some(&self.caller),
            place,
            action,
            target_type: target.0,
            target_id: target.1,
            request_id: self.request_id.as_deref(),
            outcome,
            detail,
        };
        if let Err(error) = audit::record(&self.state.db.conn, entry).await {
            // An action that cannot be audited must not be reported as done.
            tracing::error!(%error, action, "audit record failed");
            if result.is_ok() {
                return Err(ApiError::DbErr(error));
            }
        }
        result
    }
}

/// A change on its way through [`Ctx::change`].
pub struct Change<'a> {
    ctx: &'a Ctx,
    action: Action,
    target: Target<'a>,
    name: Cow<'a, str>,
    kind: &'static str,
    id: Option<&'a str>,
}

impl<'a> Change<'a> {
    /// Runs `work` with the proof and audits the outcome.
    pub async fn run<T>(
        self,
        work: impl AsyncFnOnce(Grant) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.run_new(work, |_| None).await
    }

    /// As [`Change::run`], for a change that creates what it is about: the audit entry names
    /// the new id, which only the result knows.
    pub async fn run_new<T>(
        self,
        work: impl AsyncFnOnce(Grant) -> Result<T, ApiError>,
        id_of: impl FnOnce(&T) -> Option<String>,
    ) -> Result<T, ApiError> {
        let Self {
            ctx,
            action,
            target,
            name,
            kind,
            id,
        } = self;
        let mut place = None;
        let result = async {
            let target = ctx.place(target).await?;
            place = Some(target.clone());
            let grant = ctx
                .state
                .rbac
                .authorize(&ctx.caller, action, &target)
                .await?;
            work(grant).await
        }
        .await;
        let created = result.as_ref().ok().and_then(id_of);
        let id = created.as_deref().or(id);
        ctx.audited(&name, (kind, id), place.as_ref(), result).await
    }
}
