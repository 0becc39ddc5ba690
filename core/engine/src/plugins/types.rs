//! The data that crosses the runtime's boundary: who an invocation is for, which export it
//! calls with what input, and what came back.
//!
//! Invariant: these are plain values — nothing here holds a store, an instance or a guest
//! handle — so callers build and read them without touching wasmtime.

use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use handlebars::Handlebars;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use serde::Serialize;
use serde_json::Value;

use super::manifest::{Allowance, Manifest};
use super::{Error, PluginError, kv};
use crate::alipay::client::AlipayClient;
use crate::secrets::Vault;
use crate::tenancy::Place;
use crate::themes::Themes;

/// The engine services host calls use. The database and vault are the engine's own; a plugin
/// reaches them only through the bound namespace and merchant.
#[derive(Clone)]
pub struct Services {
    pub db: DatabaseConnection,
    /// Where the `kv` capability stores data: the database in the engine.
    pub kv: kv::Store,
    pub vault: Arc<Vault>,
    pub alipay: AlipayClient,
    /// Rendered pages are wrapped in the partner's theme; without themes, bare HTML.
    pub themes: Option<Themes>,
    /// The engine above the host, once the composition root built it; without it (the
    /// harness), `payments` and `plugins` answer `unsupported`.
    pub outside: Arc<OnceLock<Weak<dyn Outside>>>,
}

impl Services {
    /// The engine above the host, while it lives.
    pub fn outside(&self) -> Option<Arc<dyn Outside>> {
        self.outside.get().and_then(Weak::upgrade)
    }
}

/// What the host asks of the engine above it: other plugins' routes and the merchant's
/// payments. It lives above the plugin host (it needs the catalog and the ledger, which need
/// the host), so the composition root hands it down once built. Every call acts for `from`'s
/// merchant only, and the errors are the WIT's.
pub trait Outside: Send + Sync {
    /// Runs `plugin`'s route of the `plugin` audience for `from`'s merchant, within `deadline`.
    fn call_plugin<'a>(
        &'a self,
        from: &'a Invocation,
        plugin: &'a str,
        request: HttpRequest,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<HttpResponse, PluginError>>;

    /// The origin of the partner's first domain (`https://pay.partner.example`), if any.
    fn partner_origin<'a>(&'a self, partner_id: &'a str) -> BoxFuture<'a, Option<String>>;

    /// Does one payments operation for `from`'s merchant (the capability is already checked).
    fn payments<'a>(
        &'a self,
        from: &'a Invocation,
        op: PaymentOp,
    ) -> BoxFuture<'a, Result<PaymentAnswer, PluginError>>;
}

/// A trade a plugin asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginTrade {
    pub amount_fen: i64,
    pub subject: String,
    pub store_id: Option<String>,
    pub purpose: String,
}

/// A payments operation of the `payments` interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOp {
    Precreate(PluginTrade),
    /// With the buyer's user id or open id.
    Jsapi {
        trade: PluginTrade,
        user_id: Option<String>,
        open_id: Option<String>,
    },
    Query(String),
    List {
        from_ms: i64,
        to_ms: i64,
        after: Option<String>,
        limit: u32,
    },
    Refund {
        id: String,
        amount_fen: i64,
        request_no: String,
        reason: Option<String>,
    },
}

/// A trade as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TradeView {
    pub id: String,
    pub out_trade_no: String,
    pub trade_no: Option<String>,
    pub status: String,
    pub scene: String,
    pub amount_fen: i64,
    pub refunded_fen: i64,
    pub subject: String,
    pub purpose: String,
    pub store_id: Option<String>,
    pub plugin: Option<String>,
    pub qr_code: Option<String>,
    pub buyer_id: Option<String>,
    pub buyer_open_id: Option<String>,
    pub created_at_ms: i64,
    pub paid_at_ms: Option<i64>,
}

/// A refund as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundView {
    pub id: String,
    pub request_no: String,
    pub amount_fen: i64,
    pub status: String,
}

/// What a payments operation answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentAnswer {
    Trade(Box<TradeView>),
    Page {
        trades: Vec<TradeView>,
        next: Option<String>,
    },
    Refund(RefundView),
}

/// Engine facts about a call's tenant beyond the tree, for `tenant.current` (0.1 components
/// get the origin and member quota as `x-trellis-*` headers instead).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The partner domain's origin, when the caller knows it; else the host looks up the
    /// partner's first domain when asked.
    pub origin: Option<String>,
    pub max_members: Option<u64>,
    pub events_per_day: Option<u64>,
    /// The plugin whose `plugins.call` this invocation is.
    pub caller: Option<String>,
}

/// An invocation that runs inside another's (a `plugins.call`): it takes no place of its
/// own, since its caller holds one and waits for it, and it ends by its caller's deadline.
#[derive(Debug, Clone, Copy)]
pub struct Inside {
    pub deadline: Instant,
}

/// Who an invocation is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantContext {
    pub partner_id: String,
    pub agent_id: Option<String>,
    pub merchant_id: Option<String>,
    pub store_id: Option<String>,
    pub installation_id: String,
    pub locale: String,
}

impl TenantContext {
    /// The context of a node of the tree (a partner, agent, merchant or store).
    pub fn at(place: &Place, installation_id: &str, locale: &str) -> Self {
        Self {
            partner_id: place.partner_id.clone().unwrap_or_default(),
            agent_id: place.agent_id.clone(),
            merchant_id: place.merchant_id.clone(),
            store_id: place.store_id.clone(),
            installation_id: installation_id.to_owned(),
            locale: if locale == "en" {
                "en".into()
            } else {
                "zh-CN".into()
            },
        }
    }

    /// The kv namespace of this tenant: the merchant's (stores share it), else the agent's or
    /// partner's.
    pub fn scope_id(&self) -> &str {
        self.merchant_id
            .as_deref()
            .or(self.agent_id.as_deref())
            .unwrap_or(&self.partner_id)
    }
}

/// A domain event for `handle-event`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
}

/// An HTTP request for one of the plugin's routes; authentication is already stripped.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    /// Below the plugin's mount point, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// Which export to call.
#[derive(Debug, Clone)]
pub enum Call {
    Install { previous_version: Option<String> },
    Configure { config: Value },
    Uninstall,
    Event(Event),
    Http(HttpRequest),
}

/// A boxed future, for the object-safe [`Finish`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a caller's finishing work could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// The work is no longer this caller's to finish (a delivery's claim passed to another
    /// dispatcher, which runs it again); nothing of the invocation is committed.
    #[error("{0}")]
    Lost(String),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// Work a caller commits in the same database transaction as an invocation's kv writes, when
/// the invocation succeeds: recording the events it emitted, a delivery's outcome. So an
/// invocation's writes, its events and the record that it ran are all kept, or none is.
pub trait Finish: Send + Sync {
    /// Whether there is anything to write for a run that emitted `emitted`.
    fn has_work(&self, emitted: &[Emitted]) -> bool;

    /// Writes the caller's part; an error rolls the invocation's writes back too.
    fn write<'a>(
        &'a self,
        tx: &'a DatabaseTransaction,
        emitted: &'a [Emitted],
    ) -> BoxFuture<'a, Result<(), FinishError>>;

    /// What one run did is thrown away: it failed, or it runs again because what it read
    /// changed. Gives back what its emissions were charged.
    fn discard(&self) -> BoxFuture<'_, ()>;

    /// The claimed delivery this work marks delivered, if that is all it writes for a run that
    /// emitted nothing: such runs may commit in a group, which marks their deliveries together
    /// instead of calling [`Finish::write`]. `None` (the default): the run commits alone.
    fn delivery(&self) -> Option<Delivered<'_>> {
        None
    }
}

/// A claimed delivery that an invocation's commit marks delivered, with the quota hold it
/// uses up.
pub struct Delivered<'a> {
    pub claim: &'a crate::events::Claimed,
    /// The dispatcher holding the claim.
    pub owner: &'a str,
    /// The installation, merchant and business day of the quota hold taken for the attempt.
    pub quota: Option<(&'a str, &'a str, chrono::DateTime<chrono::Utc>)>,
    /// The moment it counts as delivered.
    pub now: chrono::DateTime<chrono::Utc>,
}

/// A caller's [`Finish`], carried by a [`Request`].
#[derive(Clone)]
pub struct Finishing(pub Arc<dyn Finish>);

impl std::fmt::Debug for Finishing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finishing")
    }
}

/// One invocation as the caller asks for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub tenant: TenantContext,
    /// What this tenant is granted; `None`: everything the manifest declares.
    pub grant: Option<Allowance>,
    /// The validated configuration of this installation for this tenant.
    pub config: Value,
    /// The partner's theme, for rendered pages.
    pub theme: String,
    pub call: Call,
    /// Committed with the invocation's kv writes; `None`: they commit alone.
    pub finish: Option<Finishing>,
    /// What `tenant.current` tells beyond the tree.
    pub facts: Facts,
    /// Set when the invocation runs inside another's.
    pub inside: Option<Inside>,
}

/// What an invocation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Done,
    Config(Value),
    Http(HttpResponse),
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostCall {
    pub interface: &'static str,
    pub function: &'static str,
    pub ok: bool,
    pub micros: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Emitted {
    pub kind: String,
    pub payload: Value,
}

/// The result of one invocation and everything observed while it ran.
#[derive(Debug)]
pub struct Outcome {
    pub invocation_id: String,
    pub result: Result<Output, Error>,
    pub logs: Vec<LogLine>,
    pub logs_dropped: usize,
    pub host_calls: Vec<HostCall>,
    /// What the last run emitted; recorded (by the caller's [`Finish`]) only when `result` is
    /// `Ok`.
    pub emitted: Vec<Emitted>,
    /// How many times it ran: more than once when kv data it read changed before it could
    /// commit.
    pub runs: u32,
    pub memory_peak: usize,
    pub cpu: Duration,
    pub wall: Duration,
}

impl Outcome {
    /// An invocation refused before it ran.
    pub fn failed(error: Error) -> Self {
        Self {
            invocation_id: String::new(),
            result: Err(error),
            logs: Vec::new(),
            logs_dropped: 0,
            host_calls: Vec::new(),
            emitted: Vec::new(),
            runs: 0,
            memory_peak: 0,
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        }
    }
}

/// What an invocation carries into its store.
pub struct Invocation {
    pub id: String,
    pub manifest: Arc<Manifest>,
    pub templates: Arc<Handlebars<'static>>,
    pub tenant: TenantContext,
    pub grant: Arc<Allowance>,
    pub config: String,
    pub theme: String,
    pub facts: Facts,
    /// Whether it runs inside another invocation (which may not call further plugins).
    pub inside: bool,
}
