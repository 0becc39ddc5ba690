//! One door for plugin calls: runs a plugin's route for whichever way the call came in — an
//! admin at a merchant's path, a store's staff, a member page on the partner's domain, or an
//! engine callback such as Alipay's member-card activation — from domain inputs (the door, the
//! request, where it arrived), never from HTTP state.
//!
//! Invariant: a route runs only for an active, unblocked merchant entitled to the plugin at this
//! moment; at an admin door only after the node is found inside the caller's subtree and the
//! matrix allows both the door's action and the route's audience (`plugin.route.*`); and the
//! plugin never sees the caller's credentials. The engine facts a plugin receives beside the
//! request (the partner's origin, the package quotas) are built here and nowhere else.

/// Member pages that know their visitor, through Alipay's silent authorisation.
pub mod identify;
/// What a running plugin reaches of the engine: other plugins' routes and payments.
pub mod outside;

use std::collections::BTreeMap;

use sea_orm::DatabaseConnection;

use crate::alipay::credentials;
use crate::auth::Principal;
use crate::packages;
use crate::payments::Payments;
use crate::plugins::catalog::{self, Catalog, Live, Via};
use crate::plugins::manifest::{Audience, Identify};
use crate::plugins::{self, Call, HttpRequest, HttpResponse, Output};
use crate::rbac::{self, Action, Rbac};
use crate::tenancy::{self, NodeKind, NodeStatus, Place};

/// The header carrying the origin of the merchant's partner domain, such as
/// `https://pay.partner.example`: where member pages and Alipay callbacks live.
pub const ORIGIN_HEADER: &str = "x-trellis-origin";

/// The header carrying the merchant's member quota from its packages, when one is set.
pub const MAX_MEMBERS_HEADER: &str = "x-trellis-max-members";

/// The engine callback Alipay's member-card activation redirect is delivered as.
pub const CARD_ACTIVATION: &str = "alipay.card-activation";

/// Request headers a plugin never sees: the caller's credentials and hop-by-hop fields.
const STRIPPED: [&str; 7] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "connection",
    "transfer-encoding",
    "host",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The door serves no such route (or not to this caller as a route at all): answered as an
    /// unknown path.
    #[error("no such route")]
    NoRoute,
    #[error("the callback names no Alipay app")]
    NoApp,
    #[error("the route answered something other than HTTP")]
    NotHttp,
    /// The member page needs its visitor identified by Alipay first: not a failure, a detour.
    #[error("the visitor is sent to Alipay to be identified")]
    ToAlipay(identify::ToAlipay),
    #[error("{0}")]
    Identify(String),
    /// Exchanging the visitor's code with Alipay failed.
    #[error("identifying the visitor with Alipay: {0}")]
    Buyer(crate::payments::Error),
    #[error(transparent)]
    Tenancy(#[from] tenancy::Error),
    #[error(transparent)]
    Rbac(#[from] rbac::Error),
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    #[error(transparent)]
    Packages(#[from] packages::Error),
    #[error(transparent)]
    Plugin(#[from] plugins::Error),
}

/// The way a call comes in.
#[derive(Debug, Clone, Copy)]
pub enum Door<'a> {
    /// `/api/v1/merchants/{id}/plugins/{plugin}/…`: a signed-in caller at a merchant; any admin
    /// audience the caller's role allows.
    Merchant {
        caller: &'a Principal,
        merchant_id: &'a str,
    },
    /// `/api/v1/stores/{id}/plugins/{plugin}/…`: `staff` views for a store's staff and above.
    Store {
        caller: &'a Principal,
        store_id: &'a str,
    },
    /// `/m/{merchant}/{plugin}/…`: a member page, no sign-in, on the partner's own domain.
    Member { merchant_id: &'a str },
    /// Alipay's redirect after a consumer confirms the card form, with its query
    /// (`app_id`, `out_string`, …): the merchant is the partner's merchant whose app it is, the
    /// plugin the merchant's entitled plugin that answers [`CARD_ACTIVATION`].
    CardActivation { query: &'a BTreeMap<String, String> },
}

impl Door<'_> {
    /// The permission-matrix action a route's audience needs at an admin door; `None` for the
    /// member and plugin audiences, which no admin door serves.
    pub fn audience_action(audience: Audience) -> Option<Action> {
        match audience {
            Audience::Member | Audience::Plugin => None,
            Audience::Staff => Some(Action::PluginRouteStaff),
            Audience::Merchant => Some(Action::PluginRouteMerchant),
            Audience::Agent => Some(Action::PluginRouteAgent),
            Audience::Partner => Some(Action::PluginRoutePartner),
        }
    }
}

/// Where a request arrived: the partner whose domain it came through (none on a console host)
/// and that domain's origin as the request reached it.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    pub partner_id: Option<String>,
    pub origin: Option<String>,
}

/// A request for a plugin's route: `path` is the part after the plugin's prefix.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The caller's language (`zh-CN`, `en`), for the plugin's rendering.
    pub locale: &'static str,
}

/// What a call came to: the place it ran for (once known, for the audit log) and the answer.
#[derive(Debug)]
pub struct Answer {
    pub place: Option<Place>,
    pub result: Result<HttpResponse, Error>,
}

/// The services a call goes through; cheap to build per request.
#[derive(Clone, Copy)]
pub struct Doors<'a> {
    pub db: &'a DatabaseConnection,
    pub rbac: &'a Rbac,
    pub catalog: &'a Catalog,
    /// `http.public_scheme`: the scheme of a partner origin the request did not arrive on.
    pub public_scheme: &'a str,
    /// Merchants' Alipay apps, for member pages that identify their visitor.
    pub payments: &'a Payments,
}

impl Doors<'_> {
    /// Runs `plugin`'s route for `request` through `door` (the card-activation door finds its
    /// own plugin; `plugin` is ignored there).
    pub async fn call(
        &self,
        door: Door<'_>,
        plugin: &str,
        arrival: &Arrival,
        request: Request,
    ) -> Answer {
        let mut place = None;
        let result = self
            .call_inner(door, plugin, arrival, request, &mut place)
            .await;
        Answer { place, result }
    }

    async fn call_inner(
        &self,
        door: Door<'_>,
        plugin: &str,
        arrival: &Arrival,
        request: Request,
        place: &mut Option<Place>,
    ) -> Result<HttpResponse, Error> {
        match door {
            Door::Merchant {
                caller,
                merchant_id,
            } => {
                let merchant = self
                    .admit(caller, NodeKind::Merchant, merchant_id, Action::PluginUse)
                    .await?;
                *place = Some(merchant.clone());
                let live = self.catalog.live(&merchant, plugin).await?;
                let request = self
                    .plugin_request(&live, &merchant, arrival, request)
                    .await?;
                let audience = route_audience(&live, &request).ok_or(Error::NoRoute)?;
                let action = Door::audience_action(audience).ok_or(Error::NoRoute)?;
                self.rbac.authorize(caller, action, &merchant).await?;
                self.run(&live, &merchant, request).await
            }
            Door::Store { caller, store_id } => {
                let store = self
                    .admit(caller, NodeKind::Store, store_id, Action::PluginView)
                    .await?;
                *place = Some(store.clone());
                let live = self.catalog.live(&store, plugin).await?;
                let request = self.plugin_request(&live, &store, arrival, request).await?;
                // A store's path serves its staff's views and nothing wider.
                if route_audience(&live, &request) != Some(Audience::Staff) {
                    return Err(Error::NoRoute);
                }
                self.rbac
                    .authorize(caller, Action::PluginRouteStaff, &store)
                    .await?;
                self.run(&live, &store, request).await
            }
            Door::Member { merchant_id } => {
                let node = tenancy::find_in_scope(
                    self.db,
                    &Place::platform_scope(),
                    Some(NodeKind::Merchant),
                    merchant_id,
                )
                .await
                .map_err(|_| Error::NoRoute)?;
                // Member pages live on their partner's own domain only: not on the console,
                // another partner's domain or a bare address.
                if arrival.partner_id.is_none() || node.partner_id != arrival.partner_id {
                    return Err(Error::NoRoute);
                }
                let merchant = node.place();
                *place = Some(merchant.clone());
                if node.status != NodeStatus::Active || self.catalog.is_blocked(&merchant).await? {
                    return Err(packages::Error::NotEntitled(plugin.to_owned()).into());
                }
                let live = self.catalog.live(&merchant, plugin).await?;
                let state_cookie = cookie(&request.headers, identify::STATE_COOKIE);
                let request = self
                    .plugin_request(&live, &merchant, arrival, request)
                    .await?;
                if route_audience(&live, &request) != Some(Audience::Member) {
                    return Err(Error::NoRoute);
                }
                let identifies = live
                    .loaded
                    .manifest
                    .match_route(&request.http.method, &request.http.path)
                    .and_then(|(route, _)| route.identify);
                let request = match identifies {
                    Some(Identify::Alipay) => {
                        identify::identified(
                            self.payments,
                            &merchant,
                            plugin,
                            state_cookie.as_deref(),
                            request,
                        )
                        .await?
                    }
                    None => request,
                };
                self.run(&live, &merchant, request).await
            }
            Door::CardActivation { query } => {
                let (merchant, live, route) = self.card_activation(arrival, query).await?;
                *place = Some(merchant.clone());
                // The plugin gets the query as it came, at the route it declared.
                let request = Request {
                    path: route,
                    body: Vec::new(),
                    ..request
                };
                let request = self
                    .plugin_request(&live, &merchant, arrival, request)
                    .await?;
                // The route the runtime will dispatch to must be the callback's own: an earlier
                // route of another audience with a matching pattern must not be reached.
                let matched = live
                    .loaded
                    .manifest
                    .match_route(&request.http.method, &request.http.path)
                    .map(|(route, _)| route.callback.as_deref() == Some(CARD_ACTIVATION));
                if matched != Some(true) {
                    return Err(Error::NoRoute);
                }
                self.run(&live, &merchant, request).await
            }
        }
    }

    /// An admin door's node, found inside the caller's subtree, and the door's own action.
    async fn admit(
        &self,
        caller: &Principal,
        kind: NodeKind,
        id: &str,
        action: Action,
    ) -> Result<Place, Error> {
        let target = tenancy::find_in_scope(self.db, &caller.place, Some(kind), id)
            .await?
            .place();
        self.rbac.authorize(caller, action, &target).await?;
        Ok(target)
    }

    /// The merchant, its live plugin and that plugin's callback route for a card activation:
    /// the partner's merchant whose Alipay app is `app_id` (when several share the app, the one
    /// `out_string` names), and its first entitled plugin that answers the callback.
    async fn card_activation(
        &self,
        arrival: &Arrival,
        query: &BTreeMap<String, String>,
    ) -> Result<(Place, Live, String), Error> {
        let partner_id = arrival.partner_id.as_deref().ok_or(Error::NoRoute)?;
        let app_id = query
            .get("app_id")
            .filter(|a| !a.is_empty() && a.len() <= 32 && a.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(Error::NoApp)?;
        let candidates = credentials::merchants_for_app(self.db, partner_id, app_id).await?;
        let merchant_id = match candidates.as_slice() {
            [only] => only.clone(),
            many => query
                .get("out_string")
                .filter(|named| many.contains(named))
                .cloned()
                .ok_or(Error::NoRoute)?,
        };
        let node = tenancy::find_in_scope(
            self.db,
            &Place::of_partner(partner_id),
            Some(NodeKind::Merchant),
            &merchant_id,
        )
        .await
        .map_err(|_| Error::NoRoute)?;
        let merchant = node.place();
        let refused = || packages::Error::NotEntitled(CARD_ACTIVATION.into());
        if node.status != NodeStatus::Active || self.catalog.is_blocked(&merchant).await? {
            return Err(refused().into());
        }
        let entitled = packages::entitlements(self.db, &merchant_id, self.catalog.now()).await?;
        for plugin in entitled.keys() {
            let Ok(live) = self.catalog.live(&merchant, plugin).await else {
                continue;
            };
            let route = live
                .loaded
                .manifest
                .routes
                .iter()
                .find(|r| r.callback.as_deref() == Some(CARD_ACTIVATION))
                .map(|r| r.path.clone());
            if let Some(route) = route {
                return Ok((merchant, live, route));
            }
        }
        Err(refused().into())
    }

    /// The request as the plugin gets it: the caller's credentials and the engine's own
    /// `x-trellis-*` names stripped, the engine facts added.
    async fn plugin_request(
        &self,
        live: &Live,
        place: &Place,
        arrival: &Arrival,
        request: Request,
    ) -> Result<PluginRequest, Error> {
        let origin = self.partner_origin(place, arrival).await?;
        let headers = plugin_headers(request.headers, origin.as_deref(), live);
        Ok(PluginRequest {
            origin,
            http: HttpRequest {
                method: request.method,
                path: format!("/{}", request.path.trim_start_matches('/')),
                query: request.query,
                headers,
                body: request.body,
            },
            locale: request.locale,
        })
    }

    /// The origin of the partner's domain for a call about one of its nodes: the domain the
    /// request arrived on when it is that partner's, else the partner's first domain. Either
    /// way the name is a stored domain, never a raw `Host` header.
    async fn partner_origin(
        &self,
        place: &Place,
        arrival: &Arrival,
    ) -> Result<Option<String>, Error> {
        let Some(partner_id) = place.partner_id.as_deref() else {
            return Ok(None);
        };
        if arrival.partner_id.as_deref() == Some(partner_id) {
            return Ok(arrival.origin.clone());
        }
        Ok(tenancy::first_domain(self.db, partner_id)
            .await?
            .map(|domain| format!("{}://{domain}", self.public_scheme)))
    }

    async fn run(
        &self,
        live: &Live,
        place: &Place,
        request: PluginRequest,
    ) -> Result<HttpResponse, Error> {
        let outcome = self
            .catalog
            .invoke(
                live,
                place,
                request.locale,
                Call::Http(request.http),
                (
                    0,
                    Via {
                        origin: request.origin,
                        ..Via::default()
                    },
                ),
            )
            .await;
        match outcome.result? {
            Output::Http(response) => Ok(response),
            other => {
                tracing::error!(answer = ?other, "a route answered something other than HTTP");
                Err(Error::NotHttp)
            }
        }
    }
}

/// The headers a plugin gets with a request, whichever door it came through: the caller's,
/// less credentials, hop-by-hop fields and the engine's own `x-trellis-*` names (a client
/// cannot forge them), plus the engine facts — the partner origin and the member quota.
fn plugin_headers(
    headers: Vec<(String, String)>,
    origin: Option<&str>,
    live: &Live,
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            !STRIPPED.contains(&name.as_str()) && !name.starts_with("x-trellis-")
        })
        .collect();
    if let Some(origin) = origin {
        headers.push((ORIGIN_HEADER.to_owned(), origin.to_owned()));
    }
    if let Some(max) = live.quotas.max_members {
        headers.push((MAX_MEMBERS_HEADER.to_owned(), max.to_string()));
    }
    headers
}

/// The value of cookie `name` in the request's headers.
fn cookie(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// A request ready for the runtime.
struct PluginRequest {
    http: HttpRequest,
    origin: Option<String>,
    locale: &'static str,
}

/// The audience of the route the runtime will dispatch to (the first that matches): a later
/// route of a wider audience must not admit the call.
fn route_audience(live: &Live, request: &PluginRequest) -> Option<Audience> {
    live.loaded
        .manifest
        .match_route(&request.http.method, &request.http.path)
        .map(|(route, _)| route.audience)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_audience_is_a_matrix_action_and_members_are_none() {
        assert_eq!(Door::audience_action(Audience::Member), None);
        assert_eq!(Door::audience_action(Audience::Plugin), None);
        for (audience, name) in [
            (Audience::Staff, "plugin.route.staff"),
            (Audience::Merchant, "plugin.route.merchant"),
            (Audience::Agent, "plugin.route.agent"),
            (Audience::Partner, "plugin.route.partner"),
        ] {
            let action = Door::audience_action(audience).map(Action::name);
            assert_eq!(action.as_deref(), Some(name));
        }
    }
}
