//! The data that crosses the runtime's boundary: who an invocation is for, which export it
//! calls with what input, and what came back.
//!
//! Invariant: these are plain values — nothing here holds a store, an instance or a guest
//! handle — so callers build and read them without touching wasmtime.

use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use chrono::{DateTime, Utc};
use handlebars::Handlebars;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use serde::Serialize;
use serde_json::Value;

use super::manifest::{Allowance, Manifest};
use super::{Error, kv};
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

/// What an invocation carries into its store.
pub struct Invocation {
    pub id: String,
    pub manifest: Arc<Manifest>,
    pub templates: Arc<Handlebars<'static>>,
    pub tenant: TenantContext,
    pub grant: Arc<Allowance>,
    pub config: String,
    pub theme: String,
}
