//! Runs a plugin's logic natively against an in-memory host, so `cargo test` in the plugin's
//! folder tests it without a wasm build or an engine.
//!
//! ```ignore
//! #[cfg(test)]
//! mod tests {
//!     use super::*;
//!     use trellis_host_api::testkit::TestHost;
//!
//!     #[test]
//!     fn a_payment_adds_a_stamp_once() {
//!         let host = TestHost::new().routes(ROUTES).config(serde_json::json!({"goal": 3}));
//!         let paid = serde_json::json!({"buyer_id": "2088000000000001"});
//!         host.event_with_id::<Stamps>("e1", "payment.succeeded", paid.clone()).unwrap();
//!         host.event_with_id::<Stamps>("e1", "payment.succeeded", paid).unwrap();
//!         let card = host.http::<Stamps>("GET", "/card/2088000000000001", b"").unwrap();
//!         assert_eq!(card.status, 200);
//!     }
//! }
//! ```
//!
//! Each call is all or nothing, as in the engine: when it fails, its kv writes, events and
//! trades are dropped. Alipay answers and other plugins are what the test gives
//! ([`TestHost::on_alipay`], [`TestHost::on_plugin`]); rendering records the template and its
//! data ([`TestHost::rendered`]) instead of running Handlebars; payments are an in-memory ledger
//! whose trades a test pays with [`TestHost::pay`].
//!
//! The state belongs to the test's thread: each test makes its own `TestHost`.

/// The in-memory host functions the SDK calls in a native build.
pub(crate) mod host;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::bindings::trellis::plugin0_2_0::payments::RefundReceipt;
use crate::bindings::trellis::plugin0_2_0::payments::Trade;
use crate::bindings::trellis::plugin0_2_0::plugins::Request as CallRequest;
use crate::bindings::trellis::plugin0_2_0::tenant::{Context, Quotas};
use crate::{Error, Event, Header, Plugin, Request, Response, Result, Tenant};

type Answer<I, O> = Rc<dyn Fn(&I) -> Result<O>>;

/// One thread's host.
pub(crate) struct State {
    kv: host::Kv,
    version: u64,
    config: Value,
    tenant: Context,
    plugin_id: String,
    routes: &'static str,
    emitted: Vec<(String, Value)>,
    logs: Vec<String>,
    rendered: Vec<(String, Value)>,
    alipay: HashMap<String, Answer<Value, Value>>,
    alipay_calls: Vec<(String, Value)>,
    plugins: HashMap<String, Answer<CallRequest, Response>>,
    trades: Vec<Trade>,
    refunds: BTreeMap<String, RefundReceipt>,
    invocations: u64,
}

impl State {
    fn new() -> Self {
        Self {
            kv: BTreeMap::new(),
            version: 0,
            config: json!({}),
            tenant: Context {
                partner_id: "partner-test".into(),
                agent_id: Some("agent-test".into()),
                merchant_id: Some("merchant-test".into()),
                store_id: None,
                installation_id: "installation-test".into(),
                invocation_id: "invocation-test".into(),
                locale: "zh-CN".into(),
                origin: Some("https://pay.example.test".into()),
                quotas: Quotas {
                    max_members: None,
                    events_per_day: None,
                },
                caller: None,
            },
            plugin_id: "com.example.test".into(),
            routes: "",
            emitted: Vec::new(),
            logs: Vec::new(),
            rendered: Vec::new(),
            alipay: HashMap::new(),
            alipay_calls: Vec::new(),
            plugins: HashMap::new(),
            trades: Vec::new(),
            refunds: BTreeMap::new(),
            invocations: 0,
        }
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::new());
}

/// Runs `f` on this thread's host state.
pub(crate) fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// The in-memory host of this thread, with what a test reads back.
pub struct TestHost {
    // The state is the thread's: a host is not sent to another thread.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// A fresh host for this thread: empty kv, configuration `{}`, merchant `merchant-test` of
    /// partner `partner-test`, locale `zh-CN`.
    pub fn new() -> Self {
        with(|s| *s = State::new());
        Self {
            _thread: std::marker::PhantomData,
        }
    }

    /// The routes, for [`http`](Self::http): the `ROUTES` table `routes!` defines.
    pub fn routes(self, table: &'static str) -> Self {
        with(|s| s.routes = table);
        self
    }

    /// The merchant's configuration (give it with the schema's defaults, as the engine would).
    pub fn config(self, config: Value) -> Self {
        with(|s| s.config = config);
        self
    }

    /// The plugin's id: it tags the trades it creates.
    pub fn plugin_id(self, id: &str) -> Self {
        with(|s| s.plugin_id = id.to_owned());
        self
    }

    /// Changes the tenant calls run for (the store, the locale, the quotas, the calling plugin).
    pub fn tenant(self, change: impl FnOnce(&mut Context)) -> Self {
        with(|s| change(&mut s.tenant));
        self
    }

    /// What Alipay answers to `method`: the response object, from the request (its
    /// `biz_content` and top-level parameters).
    pub fn on_alipay(
        self,
        method: &str,
        answer: impl Fn(&Value) -> Result<Value> + 'static,
    ) -> Self {
        with(|s| s.alipay.insert(method.to_owned(), Rc::new(answer)));
        self
    }

    /// What another plugin answers to `plugins::call`.
    pub fn on_plugin(
        self,
        plugin: &str,
        answer: impl Fn(&CallRequest) -> Result<Response> + 'static,
    ) -> Self {
        with(|s| s.plugins.insert(plugin.to_owned(), Rc::new(answer)));
        self
    }

    /// Runs one call, all or nothing.
    fn invoke<T>(&self, call: impl FnOnce(&Tenant) -> Result<T>) -> Result<T> {
        let (kv, version, emitted, trades, refunds, tenant) = with(|s| {
            s.invocations += 1;
            s.tenant.invocation_id = format!("invocation-{}", s.invocations);
            (
                s.kv.clone(),
                s.version,
                s.emitted.len(),
                s.trades.clone(),
                s.refunds.clone(),
                s.tenant.clone(),
            )
        });
        let ctx = Tenant {
            partner_id: tenant.partner_id,
            agent_id: tenant.agent_id,
            merchant_id: tenant.merchant_id,
            store_id: tenant.store_id,
            installation_id: tenant.installation_id,
            invocation_id: tenant.invocation_id,
            locale: tenant.locale,
        };
        let result = call(&ctx);
        if result.is_err() {
            with(|s| {
                s.kv = kv;
                s.version = s.version.max(version);
                s.emitted.truncate(emitted);
                s.trades = trades;
                s.refunds = refunds;
            });
        }
        result
    }

    /// Delivers an event with a fresh id.
    pub fn event<P: Plugin>(&self, kind: &str, payload: Value) -> Result<()> {
        let id = with(|s| format!("event-{}", s.invocations + 1));
        self.event_with_id::<P>(&id, kind, payload)
    }

    /// Delivers an event with this id (deliver one twice to test deduplication).
    pub fn event_with_id<P: Plugin>(&self, id: &str, kind: &str, payload: Value) -> Result<()> {
        let event = Event {
            id: id.to_owned(),
            kind: kind.to_owned(),
            occurred_at_ms: 1_800_000_000_000,
            payload: payload.to_string(),
        };
        self.invoke(|ctx| P::handle_event(ctx, &event))
    }

    /// Sends `METHOD target` (a path below the plugin, with an optional `?query`) to the route
    /// of [`routes`](Self::routes) it matches, as the engine does.
    pub fn http<P: Plugin>(&self, method: &str, target: &str, body: &[u8]) -> Result<Response> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let table = with(|s| s.routes);
        let matched = table.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            let (Some(m), Some(pattern)) = (words.next(), words.next()) else {
                return None;
            };
            (m == method)
                .then(|| match_path(pattern, path).map(|params| (pattern, params)))
                .flatten()
        });
        let Some((pattern, params)) = matched else {
            return Err(Error::NotFound(format!(
                "no route {method} {path} (give the routes with TestHost::routes(ROUTES))"
            )));
        };
        let request = Request {
            method: method.to_owned(),
            path: path.to_owned(),
            route: pattern.to_owned(),
            params,
            query: query.to_owned(),
            headers: vec![Header {
                name: "content-type".into(),
                value: "application/json".into(),
            }],
            body: body.to_vec(),
        };
        self.invoke(|ctx| P::handle_http(ctx, &request))
    }

    /// Runs `configure` (give the configuration as the schema would pass it).
    pub fn configure<P: Plugin>(&self, config: Value) -> Result<Value> {
        let normalised = self.invoke(|ctx| P::configure(ctx, config))?;
        with(|s| s.config = normalised.clone());
        Ok(normalised)
    }

    /// Runs `install`.
    pub fn install<P: Plugin>(&self) -> Result<()> {
        self.invoke(|ctx| P::install(ctx, None))
    }

    /// The bytes stored at `key`.
    pub fn kv(&self, key: &str) -> Option<Vec<u8>> {
        with(|s| s.kv.get(key).map(|(v, _)| v.clone()))
    }

    /// The JSON stored at `key`, decoded.
    pub fn kv_json<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.kv(key).and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Stores JSON at `key`, as earlier calls would have.
    pub fn set_kv_json<T: Serialize>(&self, key: &str, value: &T) {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        with(|s| {
            s.version += 1;
            let version = s.version;
            s.kv.insert(key.to_owned(), (bytes, version));
        });
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        with(|s| s.kv.keys().cloned().collect())
    }

    /// The events emitted by calls that succeeded, in order.
    pub fn emitted(&self) -> Vec<(String, Value)> {
        with(|s| s.emitted.clone())
    }

    /// The log lines, as `Level message key=value…`.
    pub fn logs(&self) -> Vec<String> {
        with(|s| s.logs.clone())
    }

    /// Each render: the template and its data.
    pub fn rendered(&self) -> Vec<(String, Value)> {
        with(|s| s.rendered.clone())
    }

    /// Each Alipay call: the method and its request.
    pub fn alipay_calls(&self) -> Vec<(String, Value)> {
        with(|s| s.alipay_calls.clone())
    }

    /// The trades the plugin created.
    pub fn trades(&self) -> Vec<Trade> {
        with(|s| s.trades.clone())
    }

    /// A buyer pays trade `id`; returns the `payment.succeeded` payload the engine would send,
    /// to deliver with [`event`](Self::event).
    pub fn pay(&self, id: &str, buyer_id: &str) -> Option<Value> {
        with(|s| {
            let merchant = s.tenant.merchant_id.clone().unwrap_or_default();
            let trade = s.trades.iter_mut().find(|t| t.id == id)?;
            trade.status = "succeeded".into();
            trade.buyer_id = Some(buyer_id.to_owned());
            trade
                .trade_no
                .get_or_insert_with(|| format!("2026{:020}", trade.created_at_ms));
            trade.paid_at_ms = Some(trade.created_at_ms + 1_000);
            Some(json!({
                "payment_id": trade.id, "merchant_id": merchant, "store_id": trade.store_id,
                "device_id": null, "amount_fen": trade.amount_fen, "buyer_id": buyer_id,
                "buyer_open_id": null, "purpose": trade.purpose, "plugin_id": trade.plugin,
                "out_trade_no": trade.out_trade_no, "trade_no": trade.trade_no,
                "paid_at": "2027-01-15T08:00:01Z",
            }))
        })
    }
}

/// The `{name}` values of `path` under `pattern`, when it matches.
fn match_path(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    let pattern: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let path: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if pattern.len() != path.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in pattern.iter().zip(&path) {
        match p.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            Some(name) if !s.is_empty() => params.push((name.to_owned(), (*s).to_owned())),
            Some(_) => return None,
            None if p != s => return None,
            None => {}
        }
    }
    Some(params)
}
