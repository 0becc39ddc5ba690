//! The consoles: server-rendered pages under `/console` where each tier signs in and does its
//! work, on the partner's domain and theme (the platform's on the console host), in Chinese or
//! English, without JavaScript.
//!
//! Invariant: a console page acts only through the doors the API uses (`Ctx`, the same RBAC,
//! the same audit); only the session cookie signs a console request in, never a Bearer token or
//! an API key; and every state change comes from this origin and carries the form token derived
//! from the session, so another site cannot make a signed-in browser act.

use axum::extract::FromRequestParts;
use axum::extract::rejection::FormRejection;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use super::extract::{Ctx, SESSION_COOKIE, cookie, same_origin};
use super::middleware::{HostContext, RequestId};
use crate::auth::{self, PrincipalKind};
use crate::db::Page;
use crate::rbac::Action;
use crate::tenancy::{self, NodeKind};
use crate::themes::{DEFAULT_THEME, Locale};

/// The cookie that keeps a visitor's choice of language.
const LANG_COOKIE: &str = "trellis_lang";
/// Rows on a console list page.
const PER_PAGE: u64 = 20;

mod accounts;
mod apps;
mod deliveries;
mod alipay;
mod keys;
mod node;
mod packages;
mod payments;
mod plugins;
mod audit;
mod session;
mod tree;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(session::routes())
        .merge(tree::routes())
        .merge(accounts::routes())
        .merge(deliveries::routes())
        .merge(keys::routes())
        .merge(node::routes())
        .merge(apps::routes())
        .merge(alipay::routes())
        .merge(packages::routes())
        .merge(payments::routes())
        .merge(plugins::routes())
        .merge(audit::routes())
}

/// How a console page looks: the theme of the host's partner and the visitor's language.
#[derive(Debug, Clone)]
pub struct Look {
    theme: String,
    locale: Locale,
}

impl FromRequestParts<AppState> for Look {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let theme = parts
            .extensions
            .get::<HostContext>()
            .and_then(|h| h.partner.as_ref())
            .and_then(|p| p.theme.clone())
            .unwrap_or_else(|| DEFAULT_THEME.to_owned());
        let chosen = cookie(&parts.headers, LANG_COOKIE).and_then(|tag| locale_of(&tag));
        let locale = chosen.unwrap_or_else(|| {
            Locale::negotiate(
                parts
                    .headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok()),
            )
        });
        Ok(Self { theme, locale })
    }
}

impl Look {
    fn render(&self, state: &AppState, page: &str, data: Value) -> Result<Response, ApiError> {
        let html = state
            .themes
            .render_page(&self.theme, page, self.locale, data)?;
        let mut response = Html(html).into_response();
        // Console pages hold a tenant's data and a form token: never kept by a cache.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// The page with another status: a refused form shown again, a problem the page explains.
    fn render_as(
        &self,
        state: &AppState,
        page: &str,
        data: Value,
        status: StatusCode,
    ) -> Result<Response, ApiError> {
        let mut response = self.render(state, page, data)?;
        *response.status_mut() = status;
        Ok(response)
    }
}

fn locale_of(tag: &str) -> Option<Locale> {
    Locale::ALL.into_iter().find(|l| l.tag() == tag)
}

/// A signed-in console visitor: the API's context plus the session's form token. A visitor
/// without a valid session is sent to the sign-in page instead.
pub struct Signed {
    ctx: Ctx,
    form_token: String,
    /// Where the request arrived, for the plugin calls a page makes.
    arrival: crate::doors::Arrival,
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/console/login").into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let host = parts
            .extensions
            .get::<HostContext>()
            .cloned()
            .unwrap_or_default();
        let caller = match auth::authenticate(&state.db.conn, &token, host.partner_id()).await {
            // An API key is for programs: it never opens the consoles, even set as a cookie.
            Ok(p) if p.kind == PrincipalKind::User => p,
            Ok(_) | Err(auth::Error::Unauthenticated) => return Err(to_login()),
            Err(e) => return Err(ApiError::from(e).into_response()),
        };
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|RequestId(id)| id.clone());
        Ok(Self {
            ctx: Ctx {
                state: state.clone(),
                caller,
                request_id,
            },
            form_token: form_token(&token),
            arrival: super::plugin_routes::arrival(state, &host, &parts.headers),
        })
    }
}

/// The token every console form carries: derived from the session token, which another site
/// can neither read (the cookie is HttpOnly) nor guess, and useless once the session ends.
fn form_token(session_token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"trellis console form\0")
        .chain_update(session_token.as_bytes())
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl Signed {
    /// Refuses a state change that did not come from one of this session's console pages.
    fn check_form(&self, headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
        let matches = aws_lc_rs::constant_time::verify_slices_are_equal(
            token.as_bytes(),
            self.form_token.as_bytes(),
        )
        .is_ok();
        if matches && same_origin(headers) {
            Ok(())
        } else {
            Err(ApiError::FormRefused(
                "this form is stale or came from another site; reload the page and try again",
            ))
        }
    }

    /// What every console page shows around its content: the brand, the visitor, the menu and
    /// the form token.
    async fn frame(&self, current: &str) -> Result<Value, ApiError> {
        let caller = &self.ctx.caller;
        let own = caller.place.id.clone();
        let node =
            tenancy::find_in_scope(&self.ctx.state.db.conn, &caller.place, None, &own).await?;
        // Only what the role may open: a hidden entry is not the permission (each page checks
        // again), but a menu of refusals is no menu.
        let menu = [
            ("home", "/console", None),
            ("accounts", "/console/accounts", Some(Action::UserRead)),
            ("keys", "/console/keys", Some(Action::ApiKeyRead)),
            (
                "alipay",
                "/console/alipay",
                Some(Action::AlipayCredentialsRead),
            ),
            ("plugins", "/console/plugins", Some(Action::PluginRead)),
            ("packages", "/console/packages", Some(Action::PackageRead)),
            (
                "assignments",
                "/console/assignments",
                Some(Action::AssignmentRead),
            ),
            ("payments", "/console/payments", Some(Action::PaymentRead)),
            (
                "deliveries",
                "/console/deliveries",
                Some(Action::DeliveryRead),
            ),
            ("audit", "/console/audit", Some(Action::AuditRead)),
            ("password", "/console/password", None),
        ]
        .into_iter()
        .filter(|(_, _, needs)| needs.is_none_or(|a| crate::rbac::allows(caller.role, a)))
        // A merchant's own pages: tiers above open them for one of their merchants by id.
        .filter(|(key, _, _)| *key != "alipay" || caller.place.kind == NodeKind::Merchant)
        .filter(|(key, _, _)| {
            *key != "payments" || matches!(caller.place.kind, NodeKind::Merchant | NodeKind::Store)
        })
        .map(|(key, href, _)| json!({ "key": key, "href": href, "current": key == current }))
        .collect::<Vec<_>>();
        let apps = apps::menu(self, current).await?;
        Ok(json!({
            "me": { "label": caller.label, "role": caller.role.as_str() },
            "node": node,
            "menu": menu,
            "apps": apps,
            "form_token": self.form_token,
        }))
    }
}

/// Turns a form body that could not be read into the API's validation error.
fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, ApiError> {
    form.map(|Form(t)| t).map_err(|e| ApiError::Validation {
        field: "form",
        message: e.body_text(),
    })
}

/// A form's fields as posted (`application/x-www-form-urlencoded`), repeated names kept: a
/// row of checkboxes posts one name many times, which the typed `Form` cannot take.
pub(super) struct Fields(Vec<(String, String)>);

impl Fields {
    pub(super) fn parse(body: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(body).into_owned().collect())
    }

    pub(super) fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// Sets `name` to one `value`, replacing what was posted for it.
    pub(super) fn set(&mut self, name: &str, value: String) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_owned(), value));
    }

    /// The first value of `name`, or "".
    pub(super) fn one(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub(super) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// What was typed, to show again beside a refusal: never the form token or a password.
    pub(super) fn typed(&self) -> Value {
        let mut typed = serde_json::Map::new();
        for (name, value) in &self.0 {
            if name != "form_token" && !name.contains("password") && !typed.contains_key(name) {
                typed.insert(name.clone(), value.clone().into());
            }
        }
        Value::Object(typed)
    }
}

/// The kind of node a tier manages below itself; a store has none.
fn child_kind(kind: NodeKind) -> Option<NodeKind> {
    NodeKind::ALL.into_iter().find(|k| k.parent() == Some(kind))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    #[serde(default)]
    page: Option<u64>,
}

impl PageQuery {
    fn page(&self) -> Page {
        Page {
            page: self.page.unwrap_or(1),
            per_page: PER_PAGE,
        }
        .clamped()
    }
}

fn pages(total: u64, page: Page) -> Value {
    let last = total.div_ceil(page.per_page).max(1);
    json!({
        "page": page.page,
        "last": last,
        "prev": (page.page > 1).then(|| page.page - 1),
        "next": (page.page < last).then(|| page.page + 1),
        "total": total,
    })
}

/// A refused form, shown again on its page with the reason and what was typed; `None` for what
/// no form can mend (the engine failed, the visitor may not, the thing is not theirs to see),
/// which goes to the themed error page instead.
pub(super) fn refused(error: &ApiError, typed: Value) -> Option<(StatusCode, Value)> {
    let (status, code) = error.status_and_code();
    if status.is_server_error() || status == StatusCode::FORBIDDEN || error.is_not_found() {
        return None;
    }
    let mut problem = json!({ "code": code, "message": problem_text(error) });
    if let (Some(problem), Value::Object(typed)) = (problem.as_object_mut(), typed) {
        problem.extend(typed);
    }
    Some((status, problem))
}

/// What a refused form shows beside its fields: the engine's message, as the API gives it (a
/// refusal's message names the field and what to change, never another tenant's data).
pub(super) fn problem_text(error: &ApiError) -> String {
    error.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_form_posted_from_another_site_is_not_same_origin() {
        assert!(same_origin(&headers(&[
            ("host", "shop.example"),
            ("origin", "https://shop.example"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "shop.example"),
            ("origin", "https://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "shop.example"),
            ("origin", "https://shop.example.evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "shop.example"),
            ("sec-fetch-site", "cross-site"),
        ])));
        // A program sends neither; its form token decides.
        assert!(same_origin(&headers(&[("host", "shop.example")])));
    }

    #[test]
    fn the_form_token_is_the_sessions_own_and_does_not_reveal_it() {
        let one = form_token("session-one");
        assert_eq!(one, form_token("session-one"));
        assert_ne!(one, form_token("session-two"));
        assert_eq!(one.len(), 32);
        assert!(!one.contains("session"));
    }
}
