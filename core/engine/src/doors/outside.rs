//! The engine as a running plugin reaches it (`plugins::Outside`, host-api 0.2): another
//! plugin's route through the plugin door, and the merchant's payments.
//!
//! Invariant: everything acts for the calling invocation's merchant and nothing else. A call
//! reaches only a route of the `plugin` audience that the caller's manifest declares, of a
//! plugin the partner installed, for an active merchant entitled to it now, and never from a
//! callee; a trade is created only for one of the merchant's stores and tagged with the
//! plugin, read only within the merchant, and refunded only by the plugin that created it.

use std::sync::Arc;
use std::time::Instant;

use sea_orm::DatabaseConnection;

use super::plugin_headers;
use crate::packages;
use crate::payments::reports::{Cursor, Filter};
use crate::payments::{self, Buyer, NewTrade, Payment, Payments};
use crate::plugins::catalog::{self, Catalog, Via};
use crate::plugins::manifest::{Audience, match_path};
use crate::plugins::{
    self, BoxFuture, Call, HttpRequest, HttpResponse, Inside, Invocation, Output, PaymentAnswer,
    PaymentOp, PluginError, PluginTrade, RefundView, TradeView,
};
use crate::tenancy::{self, NodeKind, NodeStatus, Place};

/// How many trades a `payments.list` page holds at most.
pub const MAX_TRADES_PER_PAGE: u32 = 100;
/// What one plugin call may carry besides its body (which the runtime bounds).
const MAX_QUERY_BYTES: usize = 8 << 10;
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 16 << 10;

/// What became of a callee that did not answer, in a word: its details stay in its own log.
fn failure_kind(error: &plugins::Error) -> String {
    match error {
        plugins::Error::Trap { reason, .. } => format!("was stopped ({})", reason.as_str()),
        plugins::Error::Timeout { .. } => "did not answer in time".into(),
        plugins::Error::Busy { .. } => "is busy; try again later".into(),
        plugins::Error::Suspended { .. } => "is suspended after repeated failures".into(),
        plugins::Error::OutputTooLarge { .. } => "answered more than its output limit".into(),
        plugins::Error::Conflict { .. } => "kept conflicting with concurrent calls".into(),
        _ => "failed".into(),
    }
}

/// The engine services a plugin reaches from inside: built by the composition root, held by the
/// application and handed to the plugin host as a weak reference.
#[derive(Clone)]
pub struct Outside {
    pub db: DatabaseConnection,
    pub catalog: Catalog,
    pub payments: Payments,
    /// `http.public_scheme`: the scheme of partner origins.
    pub public_scheme: String,
}

impl std::fmt::Debug for Outside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outside").finish_non_exhaustive()
    }
}

impl Outside {
    /// Hands this to the plugin host of its catalog; the returned handle must outlive every
    /// invocation that may use it (the application keeps it).
    pub fn attach(self) -> Arc<Self> {
        let outside = Arc::new(self);
        let as_trait: Arc<dyn plugins::Outside> = outside.clone();
        let _ = outside
            .catalog
            .runtime
            .services()
            .outside
            .set(Arc::downgrade(&as_trait));
        outside
    }
}

fn denied(message: impl Into<String>) -> PluginError {
    PluginError::Denied {
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> PluginError {
    PluginError::NotFound {
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> PluginError {
    PluginError::InvalidInput {
        message: message.into(),
    }
}

/// A host-side failure: logged in full, the plugin told where to look.
fn internal(what: &str, error: &dyn std::fmt::Display) -> PluginError {
    tracing::error!("{what}: {error}");
    PluginError::Internal {
        message: format!("{what} failed; see the engine log"),
    }
}

/// The merchant a plugin's invocation runs for, as a place.
fn merchant_of(from: &Invocation, what: &str) -> Result<Place, PluginError> {
    let t = &from.tenant;
    let merchant_id = t
        .merchant_id
        .clone()
        .ok_or_else(|| denied(format!("{what} acts for a merchant; this call is for none")))?;
    Ok(Place {
        id: merchant_id.clone(),
        kind: NodeKind::Merchant,
        partner_id: Some(t.partner_id.clone()),
        agent_id: t.agent_id.clone(),
        merchant_id: Some(merchant_id),
        store_id: None,
    })
}

impl plugins::Outside for Outside {
    fn call_plugin<'a>(
        &'a self,
        from: &'a Invocation,
        plugin: &'a str,
        request: HttpRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<HttpResponse, PluginError>> {
        Box::pin(self.call(from, plugin, request, deadline))
    }

    fn partner_origin<'a>(&'a self, partner_id: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            match self.payments.first_domain(partner_id).await {
                Ok(domain) => domain.map(|d| format!("{}://{d}", self.public_scheme)),
                Err(error) => {
                    tracing::error!(%error, "could not read a partner's domain for a plugin");
                    None
                }
            }
        })
    }

    fn payments<'a>(
        &'a self,
        from: &'a Invocation,
        op: PaymentOp,
    ) -> BoxFuture<'a, Result<PaymentAnswer, PluginError>> {
        Box::pin(self.pay(from, op))
    }
}

impl Outside {
    /// The merchant, neither suspended nor under a suspended node (nodes are never deleted,
    /// and the caller's merchant was found when its call was admitted).
    async fn active(&self, merchant: &Place) -> Result<(), PluginError> {
        let blocked = self
            .catalog
            .is_blocked(merchant)
            .await
            .map_err(|e| internal("checking the merchant", &e))?;
        if blocked {
            return Err(denied("the merchant is not active"));
        }
        Ok(())
    }

    async fn call(
        &self,
        from: &Invocation,
        plugin: &str,
        request: HttpRequest,
        deadline: Instant,
    ) -> Result<HttpResponse, PluginError> {
        if from.inside {
            return Err(denied(
                "a plugin called by another plugin cannot call plugins in turn",
            ));
        }
        let merchant = merchant_of(from, "plugins.call")?;
        if !request.path.starts_with('/') || request.path.len() > 1_024 {
            return Err(invalid(
                "the path must start with / and be at most 1024 bytes",
            ));
        }
        let header_bytes: usize = request.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if request.query.len() > MAX_QUERY_BYTES
            || request.headers.len() > MAX_HEADERS
            || header_bytes > MAX_HEADER_BYTES
        {
            return Err(invalid(format!(
                "a call carries at most {MAX_QUERY_BYTES} bytes of query and {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all"
            )));
        }
        // What the manifest declares is checked before anything about the target is looked up,
        // so an undeclared call learns nothing of the partner's installations.
        let declared = from.grant.calls
            && from.manifest.capabilities.calls.iter().any(|c| {
                c.plugin == plugin
                    && c.routes.iter().any(|r| {
                        r.split_once(' ').is_some_and(|(method, pattern)| {
                            method == request.method && match_path(pattern, &request.path).is_some()
                        })
                    })
            });
        if !declared {
            return Err(denied(format!(
                "plugin.toml does not declare a call to {plugin} {} {} in [[capabilities.calls]]",
                request.method, request.path
            )));
        }
        self.active(&merchant).await?;
        let live = match self.catalog.live(&merchant, plugin).await {
            Ok(live) => live,
            Err(catalog::Error::NotInstalled(_)) => {
                return Err(not_found(format!(
                    "{plugin} is not installed for this partner"
                )));
            }
            Err(catalog::Error::Packages(
                packages::Error::NotEntitled(_) | packages::Error::Expired(_),
            )) => {
                return Err(denied(format!(
                    "the merchant is not entitled to {plugin} now"
                )));
            }
            Err(e) => return Err(internal("loading the called plugin", &e)),
        };
        let route = live
            .loaded
            .manifest
            .match_route(&request.method, &request.path)
            .map(|(route, _)| route.clone())
            .filter(|route| route.audience == Audience::Plugin)
            .ok_or_else(|| {
                not_found(format!(
                    "{plugin} has no route {} {} for plugins",
                    request.method, request.path
                ))
            })?;
        if !from
            .manifest
            .capabilities
            .calls_route(plugin, &route.method, &route.path)
        {
            return Err(denied(format!(
                "plugin.toml does not declare the call {plugin} {} {} in [[capabilities.calls]]",
                route.method, route.path
            )));
        }
        let headers = plugin_headers(request.headers, from.facts.origin.as_deref(), &live);
        let call = Call::Http(HttpRequest { headers, ..request });
        // The callee continues its caller's event chain: what it emits counts there.
        let (depth, root_id) = crate::events::EMITTER
            .try_with(|e| (e.depth - 1, e.root_id.clone()))
            .unwrap_or((0, None));
        let via = Via {
            origin: from.facts.origin.clone(),
            caller: Some(from.manifest.id.clone()),
            inside: Some(Inside { deadline }),
            root_id,
        };
        let place = match &from.tenant.store_id {
            Some(store) => Place {
                id: store.clone(),
                kind: NodeKind::Store,
                store_id: Some(store.clone()),
                ..merchant
            },
            None => merchant,
        };
        let outcome = self
            .catalog
            .invoke(&live, &place, &from.tenant.locale, call, (depth, via))
            .await;
        match outcome.result {
            Ok(Output::Http(response)) => Ok(response),
            Ok(_) => Err(PluginError::Internal {
                message: format!("{plugin} answered something other than HTTP"),
            }),
            // The callee's own answer passes through, except what it keeps for its log.
            Err(plugins::Error::Plugin(PluginError::Internal { .. })) => {
                Err(PluginError::Internal {
                    message: format!("{plugin} failed"),
                })
            }
            Err(plugins::Error::Plugin(error)) => Err(error),
            // Only the kind: what a callee's trap says (a panic message) is the callee's.
            Err(error) => Err(PluginError::Internal {
                message: format!("{plugin} {}", failure_kind(&error)),
            }),
        }
    }

    async fn pay(&self, from: &Invocation, op: PaymentOp) -> Result<PaymentAnswer, PluginError> {
        let merchant = merchant_of(from, "payments")?;
        self.active(&merchant).await?;
        let answer = match op {
            PaymentOp::Precreate(trade) => {
                let trade = self.new_trade(from, &merchant, trade).await?;
                PaymentAnswer::Trade(Box::new(view(
                    self.payments.precreate(trade).await.map_err(refused)?,
                )))
            }
            PaymentOp::Jsapi {
                trade,
                user_id,
                open_id,
            } => {
                let buyer = Buyer::of(user_id.as_deref(), open_id.as_deref()).map_err(refused)?;
                let trade = self.new_trade(from, &merchant, trade).await?;
                PaymentAnswer::Trade(Box::new(view(
                    self.payments
                        .create_jsapi(trade, buyer)
                        .await
                        .map_err(refused)?,
                )))
            }
            PaymentOp::Query(id) => {
                let payment = self.payment_of(&merchant, &id).await?;
                let payment = if payment.status().is_final() {
                    payment
                } else {
                    self.payments.query(&payment).await.map_err(refused)?
                };
                PaymentAnswer::Trade(Box::new(view(payment)))
            }
            PaymentOp::List {
                from_ms,
                to_ms,
                after,
                limit,
            } => {
                if to_ms <= from_ms {
                    return Err(invalid("to-ms must be after from-ms"));
                }
                let after = match after.as_deref() {
                    Some(text) => {
                        Some(Cursor::parse(text).ok_or_else(|| invalid("after is not a cursor"))?)
                    }
                    None => None,
                };
                let limit = limit.clamp(1, MAX_TRADES_PER_PAGE);
                let filter = Filter {
                    from_ms: Some(from_ms),
                    to_ms: Some(to_ms),
                    ..Filter::default()
                };
                let mut rows = self
                    .payments
                    .search(
                        NodeKind::Merchant,
                        &merchant.id,
                        &filter,
                        after.as_ref(),
                        u64::from(limit) + 1,
                    )
                    .await
                    .map_err(refused)?;
                let more = rows.len() > limit as usize;
                rows.truncate(limit as usize);
                let next = more.then(|| rows.last().map(Cursor::of)).flatten();
                PaymentAnswer::Page {
                    trades: rows.into_iter().map(view).collect(),
                    next,
                }
            }
            PaymentOp::Refund {
                id,
                amount_fen,
                request_no,
                reason,
            } => {
                let payment = self.payment_of(&merchant, &id).await?;
                if payment.plugin_id.as_deref() != Some(from.manifest.id.as_str()) {
                    return Err(denied(
                        "a plugin refunds only the trades it created; the merchant's staff refund others",
                    ));
                }
                let refund = self
                    .payments
                    .refund(&payment, amount_fen, Some(request_no), reason, None)
                    .await
                    .map_err(refused)?;
                PaymentAnswer::Refund(RefundView {
                    id: refund.id,
                    request_no: refund.out_request_no,
                    amount_fen: refund.amount_fen,
                    status: refund.status,
                })
            }
        };
        Ok(answer)
    }

    /// A plugin's trade as the ledger takes it: for one of the merchant's stores (the one the
    /// call came from unless named), tagged with the plugin.
    async fn new_trade(
        &self,
        from: &Invocation,
        merchant: &Place,
        trade: PluginTrade,
    ) -> Result<NewTrade, PluginError> {
        let store_id = trade
            .store_id
            .or_else(|| from.tenant.store_id.clone())
            .ok_or_else(|| invalid("store-id: a trade belongs to one of the merchant's stores"))?;
        let store = match tenancy::find_in_scope(
            &self.db,
            merchant,
            Some(NodeKind::Store),
            &store_id,
        )
        .await
        {
            Ok(node) => node,
            Err(tenancy::Error::NotFound { .. }) => {
                return Err(not_found(format!("the merchant has no store {store_id}")));
            }
            Err(e) => return Err(internal("finding the store", &e)),
        };
        if store.status != NodeStatus::Active {
            return Err(denied(format!("store {store_id} is not active")));
        }
        Ok(NewTrade {
            store: store.place(),
            amount_fen: trade.amount_fen,
            subject: trade.subject,
            purpose: trade.purpose,
            device_id: None,
            operator_id: None,
            plugin_id: Some(from.manifest.id.clone()),
        })
    }

    /// One of the merchant's payments; another merchant's is as absent as a missing one.
    async fn payment_of(&self, merchant: &Place, id: &str) -> Result<Payment, PluginError> {
        match self.payments.get(id).await {
            Ok(payment) if Some(&payment.merchant_id) == merchant.merchant_id.as_ref() => {
                Ok(payment)
            }
            Ok(_) | Err(payments::Error::NotFound) => {
                Err(not_found(format!("the merchant has no payment {id}")))
            }
            Err(e) => Err(refused(e)),
        }
    }
}

/// A payments error as the WIT says it.
fn refused(error: payments::Error) -> PluginError {
    match error {
        payments::Error::Invalid { field, message } => PluginError::InvalidInput {
            message: format!("{field}: {message}"),
        },
        payments::Error::NotFound => not_found("no such payment"),
        payments::Error::Conflict(message) => PluginError::Conflict { message },
        payments::Error::NoCredentials => denied("the merchant has no Alipay credentials"),
        payments::Error::Refused(g) => PluginError::Upstream {
            code: g.code.clone(),
            sub_code: g.sub_code.clone(),
            message: g.sub_msg.clone().unwrap_or_else(|| g.msg.clone()),
        },
        // Only a verified answer's text reaches a plugin; this one goes to the log.
        payments::Error::Alipay(e) => {
            tracing::warn!(error = %e, "a plugin's payment call to Alipay failed");
            PluginError::Upstream {
                code: "network".into(),
                sub_code: None,
                message: "Alipay could not be reached or its answer did not verify; the outcome is unknown, query the trade".into(),
            }
        }
        other => internal("a payments operation", &other),
    }
}

/// A ledger row as the plugin sees it.
fn view(p: Payment) -> TradeView {
    TradeView {
        id: p.id,
        out_trade_no: p.out_trade_no,
        trade_no: p.trade_no,
        status: p.status,
        scene: p.scene,
        amount_fen: p.amount_fen,
        refunded_fen: p.refunded_fen,
        subject: p.subject,
        purpose: p.purpose,
        store_id: p.store_id,
        plugin: p.plugin_id,
        qr_code: p.qr_code,
        buyer_id: p.buyer_id,
        buyer_open_id: p.buyer_open_id,
        created_at_ms: p.created_at,
        paid_at_ms: p.paid_at,
    }
}
