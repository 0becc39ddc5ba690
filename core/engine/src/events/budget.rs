//! What plugins' emissions may add to the outbox: a pace per (installation, merchant) and a
//! budget per chain (everything descended from one originating event).
//!
//! Invariant: both are charged in the database by conditional updates in one transaction, so
//! they hold across dispatchers and processes, and a refused emission charges nothing.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use super::{Error, MAX_DEPTH};
use crate::config::{Clock, EventsConfig};
use crate::db::sql::{self, Millis, from_millis, millis};
use crate::tenancy::Place;

/// Bounds on what plugins' emissions may add to the outbox (`[events]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events that may descend from one originating event, at any depth.
    pub chain_events: u32,
    /// Deliveries those events may fan out to, together.
    pub chain_deliveries: u32,
    /// Sustained emissions per minute of one installation for one merchant (or partner).
    pub emit_per_minute: u32,
    /// Emissions it may make at once before the pace applies.
    pub emit_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            chain_events: 100,
            chain_deliveries: 500,
            emit_per_minute: 600,
            emit_burst: 100,
        }
    }
}

impl Limits {
    pub fn from_config(config: &EventsConfig) -> Self {
        Self {
            chain_events: config.chain_max_events,
            chain_deliveries: config.chain_max_deliveries,
            emit_per_minute: config.emit_per_minute,
            emit_burst: config.emit_burst,
        }
    }

    /// Milliseconds between two emissions at the sustained pace.
    fn interval_ms(&self) -> i64 {
        (60_000 / i64::from(self.emit_per_minute.max(1))).max(1)
    }

    /// How far ahead of now the pace may run: the burst less the emission being admitted.
    fn tolerance_ms(&self) -> i64 {
        self.interval_ms() * i64::from(self.emit_burst.max(1) - 1)
    }
}

/// Why the engine refused an emission. The plugin gets it as `quota-exceeded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The chain is spent (or too deep): trying again cannot help.
    Chain(String),
    /// The installation emits too fast for this merchant; it may emit again at `retry_at`.
    Pace {
        message: String,
        retry_at: DateTime<Utc>,
    },
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Self::Chain(m) | Self::Pace { message: m, .. } => m,
        }
    }
}

/// What one invocation emitted through [`admit`], to give back if the invocation fails (its
/// events are then dropped) and to tell why an emission was refused.
#[derive(Debug, Default)]
struct Charged {
    events: u32,
    refusal: Option<Refusal>,
}

/// The frame of one invocation's emissions: who emits, in which chain, under which limits.
#[derive(Debug, Clone)]
pub struct Emitter {
    pub installation_id: String,
    pub partner_id: String,
    /// The merchant the invocation runs for, else its partner: the pace is kept per scope.
    pub scope_id: String,
    /// The originating event of the chain the invocation continues; `None` when it handles no
    /// event (an HTTP route), and each event it emits starts a chain of its own.
    pub root_id: Option<String>,
    /// The depth of the events it emits.
    pub depth: i32,
    pub limits: Limits,
    pub clock: Clock,
    charged: Arc<Mutex<Charged>>,
}

tokio::task_local! {
    /// The emitter of the invocation running on this task. The catalog, which knows what caused
    /// an invocation, sets it around the runtime call; the host's `emit` checks against it. The
    /// runtime itself knows nothing of chains, and an invocation without one (a lifecycle hook,
    /// `trellis plugin run`) has its emissions collected but never recorded.
    pub static EMITTER: Emitter;
}

impl Emitter {
    pub fn new(
        installation_id: &str,
        place: &Place,
        root_id: Option<&str>,
        depth: i32,
        limits: Limits,
        clock: Clock,
    ) -> Self {
        let partner_id = place.partner_id.clone().unwrap_or_default();
        Self {
            installation_id: installation_id.to_owned(),
            scope_id: place
                .merchant_id
                .clone()
                .unwrap_or_else(|| partner_id.clone()),
            partner_id,
            root_id: root_id.map(str::to_owned),
            depth,
            limits,
            clock,
            charged: Arc::default(),
        }
    }

    fn charged(&self) -> std::sync::MutexGuard<'_, Charged> {
        self.charged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last emission the engine refused during the invocation, if any.
    pub fn refusal(&self) -> Option<Refusal> {
        self.charged().refusal.clone()
    }
}

/// Makes sure the chain started by `root` has its budget row.
pub(super) async fn open_chain(
    db: &impl ConnectionTrait,
    root: &str,
    partner_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    sql::query(
        "INSERT INTO event_chains (root_id, partner_id, events, deliveries, created_at) VALUES (?, ?, 0, 0, ?) \
         ON CONFLICT DO NOTHING",
        [root.into(), partner_id.into(), Millis(now).into()],
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Admits one emission of the invocation framed by `emitter`, or says why not. The pace and
/// the chain's budget are charged in one transaction by conditional updates, so any number of
/// dispatchers in any number of processes hold both exactly; a refused emission charges
/// nothing.
pub async fn admit(
    db: &DatabaseConnection,
    emitter: &Emitter,
) -> Result<Result<(), Refusal>, Error> {
    let refused = |refusal: Refusal| {
        emitter.charged().refusal = Some(refusal.clone());
        Ok(Err(refusal))
    };
    if emitter.depth > MAX_DEPTH {
        return refused(Refusal::Chain(format!(
            "event chain too deep: plugins may emit at most {MAX_DEPTH} events in a row, each handling the one before"
        )));
    }
    let now = millis(emitter.clock.now());
    let limits = &emitter.limits;
    let txn = crate::db::begin_write(db).await?;
    // The generic cell rate algorithm: `tat` is when the pace would next allow an emission;
    // one may run ahead of it by the burst.
    sql::query(
        "INSERT INTO event_emission_rates (installation_id, scope_id, tat) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [
            emitter.installation_id.clone().into(),
            emitter.scope_id.clone().into(),
            now.into(),
        ],
    )
    .execute(&txn)
    .await?;
    let paced = sql::query(
        "UPDATE event_emission_rates SET tat = (CASE WHEN tat > ? THEN tat ELSE ? END) + ? \
         WHERE installation_id = ? AND scope_id = ? AND tat <= ?",
        [
            now.into(),
            now.into(),
            limits.interval_ms().into(),
            emitter.installation_id.clone().into(),
            emitter.scope_id.clone().into(),
            (now + limits.tolerance_ms()).into(),
        ],
    )
    .execute(&txn)
    .await?;
    if paced != 1 {
        let tat: i64 = sql::query(
            "SELECT tat FROM event_emission_rates WHERE installation_id = ? AND scope_id = ?",
            [
                emitter.installation_id.clone().into(),
                emitter.scope_id.clone().into(),
            ],
        )
        .scalar(&txn)
        .await?
        .unwrap_or(now);
        txn.rollback().await?;
        return refused(Refusal::Pace {
            message: format!(
                "emitting too fast: an installation may emit {} events per minute for one merchant (bursts of {})",
                limits.emit_per_minute, limits.emit_burst
            ),
            retry_at: from_millis((tat - limits.tolerance_ms()).max(now)),
        });
    }
    if let Some(root) = &emitter.root_id {
        open_chain(&txn, root, &emitter.partner_id, from_millis(now)).await?;
        let charged = sql::query(
            "UPDATE event_chains SET events = events + 1 WHERE root_id = ? AND events < ? AND deliveries < ?",
            [
                root.clone().into(),
                i64::from(limits.chain_events).into(),
                i64::from(limits.chain_deliveries).into(),
            ],
        )
        .execute(&txn)
        .await?;
        if charged != 1 {
            txn.rollback().await?;
            return refused(Refusal::Chain(format!(
                "fan-out budget spent: the chain started by event {root} may cause at most {} events and {} deliveries",
                limits.chain_events, limits.chain_deliveries
            )));
        }
    }
    txn.commit().await?;
    emitter.charged().events += 1;
    Ok(Ok(()))
}

/// Gives back what the emitter's invocation was charged: it failed, so nothing it emitted is
/// recorded, and a retry of the delivery may emit the same again.
pub async fn refund(db: &DatabaseConnection, emitter: &Emitter) -> Result<(), Error> {
    let events = std::mem::take(&mut emitter.charged().events);
    if events == 0 {
        return Ok(());
    }
    let txn = crate::db::begin_write(db).await?;
    sql::query(
        "UPDATE event_emission_rates SET tat = tat - ? WHERE installation_id = ? AND scope_id = ?",
        [
            (emitter.limits.interval_ms() * i64::from(events)).into(),
            emitter.installation_id.clone().into(),
            emitter.scope_id.clone().into(),
        ],
    )
    .execute(&txn)
    .await?;
    if let Some(root) = &emitter.root_id {
        sql::query(
            "UPDATE event_chains SET events = events - ? WHERE root_id = ? AND events >= ?",
            [
                i64::from(events).into(),
                root.clone().into(),
                i64::from(events).into(),
            ],
        )
        .execute(&txn)
        .await?;
    }
    txn.commit().await?;
    Ok(())
}
