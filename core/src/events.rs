//! The durable event outbox: every domain event is a row, fanned out in the same transaction
//! into one delivery row per subscribing installation, which dispatchers claim, deliver, retry
//! with exponential backoff and finally mark delivered, skipped or dead.
//!
//! Invariant: a delivery row is the only record of whether an installation got an event; it is
//! unique per (event, installation), it moves to `delivered` once (guarded by the claim's lease
//! owner), and a claim whose holder died expires and is claimed again — at least once, never lost.
//!
//! One tenant cannot starve the others: claims take due deliveries in turns across partners and,
//! within a partner, across merchants; deliveries of a suspended partner, agent or merchant are
//! held out of every claim; and what plugins emit is paced per (installation, merchant) and
//! bounded per chain (everything that descended from one originating event).

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Value};
use serde::Serialize;
use serde_json::Value as Json;
use uuid::Uuid;

use crate::config::{Clock, EventsConfig};
use crate::db::{from_millis, millis, statement};
use crate::tenancy::{NodeKind, Place};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("delivery {0} not found")]
    NotFound(String),
    #[error(
        "event chain too deep: {kind} would be the {depth}th event caused by plugins in a row (at most {MAX_DEPTH})"
    )]
    TooDeep { kind: String, depth: i32 },
    #[error(
        "fan-out budget spent: the chain started by event {root} may cause at most {limit} {what}"
    )]
    OverBudget {
        root: String,
        what: &'static str,
        limit: u32,
    },
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// A domain event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub place: Place,
    pub payload: Json,
    /// `engine`, `api:<caller>`, or `plugin:<id>` for a plugin's follow-up event.
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// Plugin hops that led here: 0 from outside the plugins, the triggering event's depth + 1
    /// for an event a plugin emits while handling another.
    pub depth: i32,
}

/// The longest chain of plugin-emitted events: plugins that emit what other plugins (or they
/// themselves) subscribe to cannot loop for ever.
pub const MAX_DEPTH: i32 = 8;

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

/// One claimed delivery, with its event.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: String,
    pub event_id: String,
    /// The originating event of its chain (its own id when it started one).
    pub root_id: String,
    pub installation_id: String,
    pub place: Place,
    pub kind: String,
    pub payload: Json,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub depth: i32,
    /// Including this one.
    pub attempts: i32,
}

/// A delivery as the delivery log shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub kind: String,
    pub installation_id: String,
    pub merchant_id: Option<String>,
    /// `pending`, `delivered`, `skipped` (not entitled, expired, over quota, uninstalled) or
    /// `dead` (gave up after the last attempt).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Time from the event's occurrence to its successful delivery.
    pub latency_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Retry policy of the dispatcher.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub max_attempts: i32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::seconds(2),
            max: Duration::hours(1),
            max_attempts: 8,
        }
    }
}

impl Backoff {
    /// The wait after the `attempts`-th failed attempt: doubling from `first`, capped at `max`,
    /// with up to a quarter of jitter so retries of a burst spread out.
    pub fn delay(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let base = self
            .first
            .checked_mul(2_i32.saturating_pow(exponent.min(20)))
            .unwrap_or(self.max)
            .min(self.max);
        let jitter_ms = base.num_milliseconds() / 4;
        let jitter = if jitter_ms > 0 {
            fastrand_like(jitter_ms)
        } else {
            0
        };
        base + Duration::milliseconds(jitter)
    }
}

/// A cheap non-cryptographic jitter in `0..bound` from the clock's nanoseconds.
fn fastrand_like(bound: i64) -> i64 {
    let nanos = i64::from(Utc::now().timestamp_subsec_nanos());
    nanos % bound.max(1)
}

/// Event kinds look like `payment.succeeded`: lower-case dotted words.
pub fn is_event_kind(kind: &str) -> bool {
    kind.len() <= 64
        && kind.contains('.')
        && kind.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn backend(db: &impl ConnectionTrait) -> DbBackend {
    db.get_database_backend()
}

/// Records an event and one pending delivery per installation in `subscribers`, atomically.
/// An event that continues the chain started by `root_id` charges its deliveries to that
/// chain's budget, and is refused whole when they do not fit. Returns the event id.
pub async fn publish(
    db: &DatabaseConnection,
    event: &NewEvent,
    subscribers: &[String],
    root_id: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<String, Error> {
    if !is_event_kind(&event.kind) {
        return Err(Error::Invalid {
            field: "kind",
            message: format!(
                "{:?} is not an event kind such as payment.succeeded",
                event.kind
            ),
        });
    }
    if event.depth > MAX_DEPTH {
        return Err(Error::TooDeep {
            kind: event.kind.clone(),
            depth: event.depth,
        });
    }
    let partner_id = event.place.partner_id.clone().ok_or(Error::Invalid {
        field: "place",
        message: "events belong to a partner's tenant".into(),
    })?;
    let id = Uuid::now_v7().to_string();
    let txn = crate::db::begin_write(db).await?;
    if let Some(root) = root_id
        && !subscribers.is_empty()
    {
        open_chain(&txn, root, &partner_id, now).await?;
        let fanout = i64::try_from(subscribers.len()).unwrap_or(i64::MAX);
        let charged = txn
            .execute_raw(statement(
                backend(&txn),
                "UPDATE event_chains SET deliveries = deliveries + ? WHERE root_id = ? AND deliveries + ? <= ?",
                vec![
                    fanout.into(),
                    root.into(),
                    fanout.into(),
                    i64::from(limits.chain_deliveries).into(),
                ],
            ))
            .await?;
        if charged.rows_affected() != 1 {
            txn.rollback().await?;
            return Err(Error::OverBudget {
                root: root.to_owned(),
                what: "deliveries",
                limit: limits.chain_deliveries,
            });
        }
    }
    txn.execute_raw(statement(
        backend(&txn),
        "INSERT INTO events (id, kind, partner_id, agent_id, merchant_id, payload, source, depth, root_id, occurred_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            id.clone().into(),
            event.kind.clone().into(),
            partner_id.clone().into(),
            event.place.agent_id.clone().into(),
            event.place.merchant_id.clone().into(),
            event.payload.to_string().into(),
            event.source.clone().into(),
            event.depth.into(),
            root_id.map(str::to_owned).into(),
            millis(event.occurred_at).into(),
        ],
    ))
    .await?;
    for installation in subscribers {
        txn.execute_raw(statement(
            backend(&txn),
            "INSERT INTO event_deliveries (id, event_id, installation_id, partner_id, agent_id, merchant_id, kind, \
             status, attempts, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            vec![
                Uuid::now_v7().to_string().into(),
                id.clone().into(),
                installation.clone().into(),
                partner_id.clone().into(),
                event.place.agent_id.clone().into(),
                event.place.merchant_id.clone().into(),
                event.kind.clone().into(),
                millis(now).into(),
                millis(now).into(),
                millis(now).into(),
            ],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(id)
}

/// Makes sure the chain started by `root` has its budget row.
async fn open_chain(
    db: &impl ConnectionTrait,
    root: &str,
    partner_id: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    db.execute_raw(statement(
        backend(db),
        "INSERT INTO event_chains (root_id, partner_id, events, deliveries, created_at) VALUES (?, ?, 0, 0, ?) \
         ON CONFLICT DO NOTHING",
        vec![root.into(), partner_id.into(), millis(now).into()],
    ))
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
    txn.execute_raw(statement(
        backend(&txn),
        "INSERT INTO event_emission_rates (installation_id, scope_id, tat) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        vec![
            emitter.installation_id.clone().into(),
            emitter.scope_id.clone().into(),
            now.into(),
        ],
    ))
    .await?;
    let paced = txn
        .execute_raw(statement(
            backend(&txn),
            "UPDATE event_emission_rates SET tat = (CASE WHEN tat > ? THEN tat ELSE ? END) + ? \
             WHERE installation_id = ? AND scope_id = ? AND tat <= ?",
            vec![
                now.into(),
                now.into(),
                limits.interval_ms().into(),
                emitter.installation_id.clone().into(),
                emitter.scope_id.clone().into(),
                (now + limits.tolerance_ms()).into(),
            ],
        ))
        .await?;
    if paced.rows_affected() != 1 {
        let tat: i64 = txn
            .query_one_raw(statement(
                backend(&txn),
                "SELECT tat FROM event_emission_rates WHERE installation_id = ? AND scope_id = ?",
                vec![
                    emitter.installation_id.clone().into(),
                    emitter.scope_id.clone().into(),
                ],
            ))
            .await?
            .map(|row| row.try_get("", "tat"))
            .transpose()?
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
        let charged = txn
            .execute_raw(statement(
                backend(&txn),
                "UPDATE event_chains SET events = events + 1 WHERE root_id = ? AND events < ? AND deliveries < ?",
                vec![
                    root.clone().into(),
                    i64::from(limits.chain_events).into(),
                    i64::from(limits.chain_deliveries).into(),
                ],
            ))
            .await?;
        if charged.rows_affected() != 1 {
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
    txn.execute_raw(statement(
        backend(&txn),
        "UPDATE event_emission_rates SET tat = tat - ? WHERE installation_id = ? AND scope_id = ?",
        vec![
            (emitter.limits.interval_ms() * i64::from(events)).into(),
            emitter.installation_id.clone().into(),
            emitter.scope_id.clone().into(),
        ],
    ))
    .await?;
    if let Some(root) = &emitter.root_id {
        txn.execute_raw(statement(
            backend(&txn),
            "UPDATE event_chains SET events = events - ? WHERE root_id = ? AND events >= ?",
            vec![
                i64::from(events).into(),
                root.clone().into(),
                i64::from(events).into(),
            ],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Deliveries of a suspended partner, agent or merchant: held out of every claim until the node
/// is active again. The suspended nodes are few, so each list is read once per statement.
const NOT_SUSPENDED: &str = "partner_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended') \
     AND (agent_id IS NULL OR agent_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended')) \
     AND (merchant_id IS NULL OR merchant_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended'))";

/// How many deliveries of each partner the claiming process may still start: one partner may
/// hold at most `per_partner` of its slots, so the rest stay free for the others however slow
/// that partner's plugins are.
#[derive(Debug, Clone, Copy)]
pub struct Room<'a> {
    /// This process's deliveries in flight, by partner.
    pub in_flight: &'a std::collections::HashMap<String, usize>,
    pub per_partner: usize,
    /// A partner with less room than this is left out of the claim: giving it one slot at a
    /// time would rank every due delivery for each one.
    pub least: usize,
}

impl Room<'_> {
    fn of(&self, partner_id: &str) -> usize {
        self.per_partner
            .saturating_sub(self.in_flight.get(partner_id).copied().unwrap_or(0))
    }

    fn held_back(&self) -> Vec<String> {
        self.in_flight
            .keys()
            .filter(|p| self.of(p) < self.least.max(1))
            .cloned()
            .collect()
    }
}

/// Claims up to `batch` due deliveries for `owner` until `now + lease`, in turns: the oldest due
/// delivery of every partner comes before the second of any, and within a partner the oldest of
/// every merchant before the second of any, so one tenant's backlog delays another's deliveries
/// by at most a round rather than by the whole backlog. Deliveries of suspended tenants are held,
/// and no partner gets more than its `room`.
///
/// The turns are ranked by a read (no locks; it reads every due delivery), then the first
/// `batch` still claimable are leased by a short write; rows another dispatcher leased meanwhile
/// are passed over (on PostgreSQL rows it is leasing are skipped, `FOR UPDATE SKIP LOCKED`;
/// SQLite serialises writers, so each write is atomic as it stands).
pub async fn claim(
    db: &impl ConnectionTrait,
    owner: &str,
    batch: u32,
    room: Room<'_>,
    lease: Duration,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, Error> {
    // A read first: an idle dispatcher polls often, and must not take SQLite's write lock
    // (or PostgreSQL row locks) when nothing is due.
    let due = db
        .query_one_raw(statement(
            backend(db),
            &format!(
                "SELECT id FROM event_deliveries WHERE status = 'pending' AND next_attempt_at <= ? \
                 AND (lease_until IS NULL OR lease_until < ?) AND {NOT_SUSPENDED} LIMIT 1"
            ),
            vec![millis(now).into(), millis(now).into()],
        ))
        .await?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    // Deliveries whose every attempt was claimed but never recorded (their dispatchers died
    // each time) are dead rather than retried for ever.
    db.execute_raw(statement(
        backend(db),
        "UPDATE event_deliveries SET status = 'dead', last_error = ?, lease_until = NULL, updated_at = ? \
         WHERE status = 'pending' AND attempts >= ? AND lease_until IS NOT NULL AND lease_until < ?",
        vec![
            format!("no outcome recorded after {max_attempts} attempts (the dispatchers holding it stopped)").into(),
            millis(now).into(),
            max_attempts.into(),
            millis(now).into(),
        ],
    ))
    .await?;
    // Twice the batch: another dispatcher ranking at the same moment takes the same first turns.
    let candidates = fair_turns(
        db,
        batch.saturating_mul(2),
        &room.held_back(),
        max_attempts,
        now,
    )
    .await?;
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let candidates: Vec<String> = candidates
        .iter()
        .filter(|(_, partner)| {
            let count = taken.entry(partner.as_str()).or_default();
            *count += 1;
            *count <= room.of(partner)
        })
        .map(|(id, _)| id.clone())
        .collect();
    let mut claimed: Vec<String> = Vec::new();
    let mut rest = candidates.as_slice();
    let wanted = usize::try_from(batch).unwrap_or(usize::MAX);
    while claimed.len() < wanted && !rest.is_empty() {
        let (chunk, after) = rest.split_at((wanted - claimed.len()).min(rest.len()));
        rest = after;
        claimed.extend(lease_rows(db, owner, chunk, lease, max_attempts, now).await?);
    }
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; claimed.len()].join(", ");
    let mut values: Vec<Value> = claimed.into_iter().map(Value::from).collect();
    values.push(owner.into());
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &format!(
                "SELECT d.id, d.event_id, d.installation_id, d.attempts, e.kind, e.partner_id, e.agent_id, \
                 e.merchant_id, e.payload, e.source, e.depth, e.root_id, e.occurred_at FROM event_deliveries d \
                 JOIN events e ON e.id = d.event_id WHERE d.id IN ({marks}) AND d.lease_owner = ? \
                 ORDER BY d.next_attempt_at, d.id"
            ),
            values,
        ))
        .await?;
    rows.iter().map(claimed_of).collect()
}

/// Up to `limit` due deliveries (id, partner) in fair order: by turn within their partner (each
/// merchant's oldest first, then each one's second, …), oldest first within a turn. The
/// `held_back` partners are left out.
async fn fair_turns(
    db: &impl ConnectionTrait,
    limit: u32,
    held_back: &[String],
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<(String, String)>, Error> {
    let limit = i64::from(limit);
    let mut values: Vec<Value> = vec![millis(now).into(), max_attempts.into(), millis(now).into()];
    let held_back = if held_back.is_empty() {
        String::new()
    } else {
        values.extend(held_back.iter().cloned().map(Value::from));
        format!(
            " AND partner_id NOT IN ({})",
            vec!["?"; held_back.len()].join(", ")
        )
    };
    values.extend([limit.into(), limit.into(), limit.into()]);
    // No merchant or partner can have more than `limit` deliveries among the first `limit`,
    // so later turns are cut before they are ranked again.
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &format!(
                "SELECT id, partner_id FROM (\
                   SELECT id, partner_id, next_attempt_at, \
                   ROW_NUMBER() OVER (PARTITION BY partner_id ORDER BY merchant_turn, next_attempt_at, id) AS turn \
                   FROM (\
                     SELECT id, partner_id, next_attempt_at, \
                     ROW_NUMBER() OVER (PARTITION BY partner_id, merchant_id ORDER BY next_attempt_at, id) AS merchant_turn \
                     FROM event_deliveries WHERE status = 'pending' AND next_attempt_at <= ? AND attempts < ? \
                     AND (lease_until IS NULL OR lease_until < ?) AND {NOT_SUSPENDED}{held_back}\
                   ) per_merchant WHERE merchant_turn <= ?\
                 ) per_partner WHERE turn <= ? ORDER BY turn, next_attempt_at, id LIMIT ?"
            ),
            values,
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "partner_id")?)))
        .collect()
}

/// Leases those of `ids` that are still claimable to `owner`; returns the ids it leased.
async fn lease_rows(
    db: &impl ConnectionTrait,
    owner: &str,
    ids: &[String],
    lease: Duration,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let lock = if backend(db) == DbBackend::Postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let marks = vec!["?"; ids.len()].join(", ");
    let mut values: Vec<Value> = vec![owner.into(), millis(now + lease).into(), millis(now).into()];
    values.extend(ids.iter().cloned().map(Value::from));
    values.extend([max_attempts.into(), millis(now).into()]);
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &format!(
                "UPDATE event_deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ? \
                 WHERE id IN (SELECT id FROM event_deliveries WHERE id IN ({marks}) AND status = 'pending' \
                 AND attempts < ? AND (lease_until IS NULL OR lease_until < ?){lock}) RETURNING id"
            ),
            values,
        ))
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String>("", "id"))
        .collect::<Result<_, _>>()?)
}

fn claimed_of(row: &QueryResult) -> Result<Claimed, Error> {
    let partner_id: String = row.try_get("", "partner_id")?;
    let agent_id: Option<String> = row.try_get("", "agent_id")?;
    let merchant_id: Option<String> = row.try_get("", "merchant_id")?;
    let (id, kind) = if let Some(m) = &merchant_id {
        (m.clone(), NodeKind::Merchant)
    } else if let Some(a) = &agent_id {
        (a.clone(), NodeKind::Agent)
    } else {
        (partner_id.clone(), NodeKind::Partner)
    };
    let payload: String = row.try_get("", "payload")?;
    Ok(Claimed {
        delivery_id: row.try_get("", "id")?,
        root_id: row
            .try_get::<Option<String>>("", "root_id")?
            .map_or_else(|| row.try_get("", "event_id"), Ok)?,
        event_id: row.try_get("", "event_id")?,
        installation_id: row.try_get("", "installation_id")?,
        place: Place {
            id,
            kind,
            partner_id: Some(partner_id),
            agent_id,
            merchant_id,
            store_id: None,
        },
        kind: row.try_get("", "kind")?,
        payload: serde_json::from_str(&payload).unwrap_or(Json::Null),
        occurred_at: from_millis(row.try_get("", "occurred_at")?),
        source: row.try_get("", "source")?,
        depth: row.try_get("", "depth")?,
        attempts: row.try_get("", "attempts")?,
    })
}

/// Applies `set` (with its `values`) to a claimed delivery that is still pending and still
/// held by `owner`; false when the claim was lost (its lease expired and another dispatcher
/// holds it now, which then records the outcome).
async fn while_held(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    set: &str,
    mut values: Vec<Value>,
) -> Result<bool, Error> {
    values.push(claim.delivery_id.clone().into());
    values.push(owner.into());
    let done = db
        .execute_raw(statement(
            backend(db),
            &format!(
                "UPDATE event_deliveries SET {set} WHERE id = ? AND lease_owner = ? AND status = 'pending'"
            ),
            values,
        ))
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends a claim's lease just before its attempt starts (a batch may wait for a free slot);
/// false when the claim was lost meanwhile, and the attempt must not start.
pub async fn renew_lease(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    while_held(
        db,
        claim,
        owner,
        "lease_until = ?",
        vec![millis(now + lease).into()],
    )
    .await
}

/// Puts a claimed delivery back for later without counting the attempt: the engine, not the
/// plugin, could not run it (no free slot, the installation's breaker is open).
pub async fn postpone(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    until: DateTime<Utc>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    while_held(
        db,
        claim,
        owner,
        "next_attempt_at = ?, attempts = attempts - 1, last_error = ?, lease_until = NULL, updated_at = ?",
        vec![millis(until).into(), reason.into(), millis(now).into()],
    )
    .await
}

/// Marks a claimed delivery delivered.
pub async fn delivered(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let latency = (now - claim.occurred_at).num_milliseconds().max(0);
    while_held(
        db,
        claim,
        owner,
        "status = 'delivered', delivered_at = ?, latency_ms = ?, lease_until = NULL, last_error = NULL, updated_at = ?",
        vec![millis(now).into(), latency.into(), millis(now).into()],
    )
    .await
}

/// Marks a claimed delivery skipped (not attempted: `reason` says why).
pub async fn skipped(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    while_held(
        db,
        claim,
        owner,
        "status = 'skipped', last_error = ?, lease_until = NULL, updated_at = ?",
        vec![reason.into(), millis(now).into()],
    )
    .await
}

/// Records a failed attempt: retried after the backoff, or dead after the last attempt.
pub async fn failed(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    error: &str,
    backoff: &Backoff,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let error: String = error.chars().take(1_000).collect();
    let (status, next) = if claim.attempts >= backoff.max_attempts {
        ("dead", now)
    } else {
        ("pending", now + backoff.delay(claim.attempts))
    };
    while_held(
        db,
        claim,
        owner,
        "status = ?, next_attempt_at = ?, last_error = ?, lease_until = NULL, updated_at = ?",
        vec![
            status.into(),
            millis(next).into(),
            error.into(),
            millis(now).into(),
        ],
    )
    .await
}

/// What a quota reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// One of the day's deliveries is held for this attempt.
    Held,
    /// The day's quota is delivered already.
    Exhausted,
    /// What is left of the quota is held by attempts in flight; one may yet fail.
    Busy,
}

/// Holds one of `limit` deliveries of `installation` to `merchant_id` on the day starting at
/// `day` for an attempt. The conditional increment is atomic, so concurrent dispatchers (in any
/// number of processes) never exceed the quota; [`settle_quota`] ends the hold.
pub async fn reserve_quota(
    db: &impl ConnectionTrait,
    installation_id: &str,
    merchant_id: &str,
    day: DateTime<Utc>,
    limit: u64,
) -> Result<Hold, Error> {
    let key = || -> Vec<Value> {
        vec![
            installation_id.into(),
            merchant_id.into(),
            millis(day).into(),
        ]
    };
    db.execute_raw(statement(
        backend(db),
        "INSERT INTO delivery_quota (installation_id, merchant_id, day, used, held) VALUES (?, ?, ?, 0, 0) \
         ON CONFLICT DO NOTHING",
        key(),
    ))
    .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut values = key();
    values.push(limit.into());
    let done = db
        .execute_raw(statement(
            backend(db),
            "UPDATE delivery_quota SET held = held + 1 \
             WHERE installation_id = ? AND merchant_id = ? AND day = ? AND used + held < ?",
            values,
        ))
        .await?;
    if done.rows_affected() == 1 {
        return Ok(Hold::Held);
    }
    let used: i64 = db
        .query_one_raw(statement(
            backend(db),
            "SELECT used FROM delivery_quota WHERE installation_id = ? AND merchant_id = ? AND day = ?",
            key(),
        ))
        .await?
        .map(|row| row.try_get("", "used"))
        .transpose()?
        .unwrap_or(0);
    Ok(if used >= limit {
        Hold::Exhausted
    } else {
        Hold::Busy
    })
}

/// Ends a hold: counted as used when the attempt delivered, given back otherwise.
pub async fn settle_quota(
    db: &impl ConnectionTrait,
    installation_id: &str,
    merchant_id: &str,
    day: DateTime<Utc>,
    delivered: bool,
) -> Result<(), Error> {
    db.execute_raw(statement(
        backend(db),
        "UPDATE delivery_quota SET held = held - 1, used = used + ? \
         WHERE installation_id = ? AND merchant_id = ? AND day = ? AND held > 0",
        vec![
            i64::from(delivered).into(),
            installation_id.into(),
            merchant_id.into(),
            millis(day).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Filters of the delivery log.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub installation_id: Option<String>,
    pub status: Option<String>,
    pub event_id: Option<String>,
    pub limit: u64,
    pub offset: u64,
}

const DELIVERY_COLUMNS: &str = "id, event_id, kind, installation_id, merchant_id, status, attempts, \
     next_attempt_at, last_error, latency_ms, created_at, delivered_at";

fn scope_filter(scope: &Place, values: &mut Vec<Value>) -> String {
    let mut clauses = vec!["1 = 1".to_owned()];
    for (kind, column) in [
        (NodeKind::Partner, "partner_id"),
        (NodeKind::Agent, "agent_id"),
        (NodeKind::Merchant, "merchant_id"),
    ] {
        if let Some(id) = scope.ancestor(kind) {
            clauses.push(format!("{column} = ?"));
            values.push(id.into());
        }
    }
    clauses.join(" AND ")
}

fn delivery_of(row: &QueryResult) -> Result<Delivery, Error> {
    let status: String = row.try_get("", "status")?;
    let next: i64 = row.try_get("", "next_attempt_at")?;
    Ok(Delivery {
        id: row.try_get("", "id")?,
        event_id: row.try_get("", "event_id")?,
        kind: row.try_get("", "kind")?,
        installation_id: row.try_get("", "installation_id")?,
        merchant_id: row.try_get("", "merchant_id")?,
        next_attempt_at: (status == "pending").then(|| from_millis(next)),
        status,
        attempts: row.try_get("", "attempts")?,
        last_error: row.try_get("", "last_error")?,
        latency_ms: row.try_get("", "latency_ms")?,
        created_at: from_millis(row.try_get("", "created_at")?),
        delivered_at: row
            .try_get::<Option<i64>>("", "delivered_at")?
            .map(from_millis),
    })
}

/// The delivery log inside `scope`, newest first.
pub async fn deliveries(
    db: &impl ConnectionTrait,
    scope: &Place,
    filter: &DeliveryFilter,
) -> Result<(Vec<Delivery>, u64), Error> {
    let mut values = Vec::new();
    let mut condition = scope_filter(scope, &mut values);
    for (column, value) in [
        ("installation_id", &filter.installation_id),
        ("status", &filter.status),
        ("event_id", &filter.event_id),
    ] {
        if let Some(v) = value {
            condition.push_str(&format!(" AND {column} = ?"));
            values.push(v.clone().into());
        }
    }
    let total = db
        .query_one_raw(statement(
            backend(db),
            &format!("SELECT COUNT(*) AS n FROM event_deliveries WHERE {condition}"),
            values.clone(),
        ))
        .await?
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    values.push(
        i64::try_from(filter.limit.clamp(1, 200))
            .unwrap_or(50)
            .into(),
    );
    values.push(i64::try_from(filter.offset).unwrap_or(0).into());
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE {condition} \
                 ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
            ),
            values,
        ))
        .await?;
    let items = rows.iter().map(delivery_of).collect::<Result<_, _>>()?;
    Ok((items, u64::try_from(total).unwrap_or(0)))
}

/// One delivery inside `scope`.
pub async fn delivery(
    db: &impl ConnectionTrait,
    scope: &Place,
    id: &str,
) -> Result<Delivery, Error> {
    let mut values = Vec::new();
    let condition = scope_filter(scope, &mut values);
    values.push(id.into());
    let row = db
        .query_one_raw(statement(
            backend(db),
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE {condition} AND id = ?"
            ),
            values,
        ))
        .await?
        .ok_or_else(|| Error::NotFound(id.to_owned()))?;
    delivery_of(&row)
}

/// Puts a finished delivery (delivered, skipped or dead) back in the queue now. A pending one
/// is left alone: it is already on its way.
pub async fn redeliver(
    db: &impl ConnectionTrait,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    db.execute_raw(statement(
        backend(db),
        "UPDATE event_deliveries SET status = 'pending', next_attempt_at = ?, attempts = 0, lease_until = NULL, \
         lease_owner = NULL, delivered_at = NULL, updated_at = ? WHERE id = ? AND status <> 'pending'",
        vec![millis(now).into(), millis(now).into(), delivery.id.clone().into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    async fn database(dir: &std::path::Path) -> DatabaseConnection {
        let mut config = crate::config::Config::load(None).unwrap();
        config.data_dir = dir.to_owned();
        config.database.url =
            secrecy::SecretString::from(format!("sqlite://{}", dir.join("t.db").display()));
        let db = crate::db::Db::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        db.conn
    }

    fn merchant(partner: &str, merchant: &str) -> Place {
        Place {
            id: merchant.to_owned(),
            kind: NodeKind::Merchant,
            partner_id: Some(partner.to_owned()),
            agent_id: None,
            merchant_id: Some(merchant.to_owned()),
            store_id: None,
        }
    }

    fn tick(place: Place) -> NewEvent {
        NewEvent {
            kind: "test.tick".into(),
            place,
            payload: Json::Null,
            source: "test".into(),
            occurred_at: Utc::now(),
            depth: 0,
        }
    }

    /// Queues `n` events for the merchant, each with one delivery, oldest first.
    async fn backlog(db: &DatabaseConnection, place: &Place, n: usize, at: DateTime<Utc>) {
        for _ in 0..n {
            publish(
                db,
                &tick(place.clone()),
                &["i-1".into()],
                None,
                &Limits::default(),
                at,
            )
            .await
            .unwrap();
        }
    }

    async fn claimed_merchants(db: &DatabaseConnection, batch: u32) -> Vec<String> {
        claimed_with_room(db, batch, &HashMap::new(), usize::MAX).await
    }

    async fn claimed_with_room(
        db: &DatabaseConnection,
        batch: u32,
        in_flight: &HashMap<String, usize>,
        per_partner: usize,
    ) -> Vec<String> {
        let room = Room {
            in_flight,
            per_partner,
            least: 2,
        };
        let now = Utc::now() + Duration::seconds(1);
        claim(db, "me", batch, room, Duration::seconds(30), 8, now)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.place.merchant_id.unwrap_or_default())
            .collect()
    }

    /// A clock the test moves by hand.
    fn manual_clock(start: DateTime<Utc>) -> (Clock, Arc<AtomicI64>) {
        let offset = Arc::new(AtomicI64::new(0));
        let read = offset.clone();
        let clock =
            Clock::from_fn(move || start + Duration::milliseconds(read.load(Ordering::SeqCst)));
        (clock, offset)
    }

    #[tokio::test]
    async fn a_partners_backlog_does_not_delay_another_partners_delivery_past_the_first_claim() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let early = Utc::now() - Duration::minutes(5);
        backlog(&db, &merchant("p-a", "m-a1"), 200, early).await;
        backlog(&db, &merchant("p-b", "m-b1"), 1, Utc::now()).await;
        let first = claimed_merchants(&db, 4).await;
        assert_eq!(first.len(), 4);
        assert!(first.contains(&"m-b1".to_owned()), "{first:?}");
    }

    #[tokio::test]
    async fn a_partner_gets_no_more_than_its_room_and_none_when_little_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        backlog(&db, &merchant("p-a", "m-a1"), 20, Utc::now()).await;
        backlog(&db, &merchant("p-b", "m-b1"), 20, Utc::now()).await;
        let busy = HashMap::from([("p-a".to_owned(), 3), ("p-b".to_owned(), 4)]);
        // p-a has room for 3 more; p-b for 2, which is not less than the least worth a claim.
        let mut claimed = claimed_with_room(&db, 10, &busy, 6).await;
        claimed.sort();
        assert_eq!(claimed, ["m-a1", "m-a1", "m-a1", "m-b1", "m-b1"]);
        // With room for one only, p-b is left for a later claim.
        let busy = HashMap::from([("p-b".to_owned(), 5)]);
        assert_eq!(claimed_with_room(&db, 4, &busy, 6).await, ["m-a1"; 4]);
    }

    #[tokio::test]
    async fn within_a_partner_each_merchant_gets_a_turn_before_any_gets_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let early = Utc::now() - Duration::minutes(5);
        backlog(&db, &merchant("p-a", "m-busy"), 50, early).await;
        backlog(&db, &merchant("p-a", "m-quiet"), 1, Utc::now()).await;
        backlog(&db, &merchant("p-a", "m-other"), 1, Utc::now()).await;
        let mut first = claimed_merchants(&db, 3).await;
        first.sort();
        assert_eq!(first, ["m-busy", "m-other", "m-quiet"]);
        // The rest is the busy merchant's, in order.
        assert_eq!(claimed_merchants(&db, 10).await, vec!["m-busy"; 10]);
    }

    #[tokio::test]
    async fn a_suspended_tenants_deliveries_are_held_until_it_is_active_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        backlog(&db, &merchant("p-a", "m-a1"), 3, Utc::now()).await;
        backlog(&db, &merchant("p-b", "m-b1"), 1, Utc::now()).await;
        // The status as tenancy writes it, which the claims' filter spells out.
        db.execute_raw(statement(
            backend(&db),
            "INSERT INTO nodes (id, kind, name, status, created_at, updated_at) VALUES ('p-a', 'partner', 'A', ?, ?, ?)",
            vec![
                crate::tenancy::NodeStatus::Suspended.as_str().into(),
                Utc::now().into(),
                Utc::now().into(),
            ],
        ))
        .await
        .unwrap();
        assert_eq!(claimed_merchants(&db, 10).await, ["m-b1"]);
        assert!(claimed_merchants(&db, 10).await.is_empty());
        db.execute_raw(statement(
            backend(&db),
            "UPDATE nodes SET status = 'active' WHERE id = 'p-a'",
            vec![],
        ))
        .await
        .unwrap();
        assert_eq!(claimed_merchants(&db, 10).await, ["m-a1"; 3]);
    }

    #[tokio::test]
    async fn emissions_beyond_the_burst_wait_for_the_pace() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let start = Utc::now();
        let (clock, offset) = manual_clock(start);
        let limits = Limits {
            emit_per_minute: 60,
            emit_burst: 10,
            ..Limits::default()
        };
        let place = merchant("p-a", "m-a1");
        let emitter = Emitter::new("i-1", &place, None, 1, limits, clock.clone());
        for _ in 0..10 {
            assert_eq!(admit(&db, &emitter).await.unwrap(), Ok(()));
        }
        let Err(Refusal::Pace { message, retry_at }) = admit(&db, &emitter).await.unwrap() else {
            panic!("the eleventh emission is paced");
        };
        assert!(message.contains("60 events per minute"), "{message}");
        assert_eq!(retry_at, from_millis(millis(start) + 1_000));
        // Another merchant, and another installation, have a pace of their own.
        let elsewhere = Emitter::new(
            "i-1",
            &merchant("p-a", "m-a2"),
            None,
            1,
            limits,
            clock.clone(),
        );
        assert_eq!(admit(&db, &elsewhere).await.unwrap(), Ok(()));
        let other = Emitter::new("i-2", &place, None, 1, limits, clock.clone());
        assert_eq!(admit(&db, &other).await.unwrap(), Ok(()));
        offset.store(1_000, Ordering::SeqCst);
        assert_eq!(admit(&db, &emitter).await.unwrap(), Ok(()));
        assert!(admit(&db, &emitter).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_chain_stops_at_its_budget_and_a_failed_call_gives_its_share_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let limits = Limits {
            chain_events: 5,
            chain_deliveries: 4,
            ..Limits::default()
        };
        let place = merchant("p-a", "m-a1");
        let clock = Clock::system();
        let root = publish(
            &db,
            &tick(place.clone()),
            &["i-1".into()],
            None,
            &limits,
            Utc::now(),
        )
        .await
        .unwrap();
        let first = Emitter::new("i-1", &place, Some(&root), 1, limits, clock.clone());
        for _ in 0..5 {
            assert_eq!(admit(&db, &first).await.unwrap(), Ok(()));
        }
        let refusal = admit(&db, &first).await.unwrap().unwrap_err();
        assert!(matches!(refusal, Refusal::Chain(_)), "{refusal:?}");
        assert!(refusal.message().contains("fan-out budget"), "{refusal:?}");
        assert_eq!(first.refusal(), Some(refusal));
        // The call failed: its emissions are dropped and the chain may spend them again.
        refund(&db, &first).await.unwrap();
        let retry = Emitter::new("i-1", &place, Some(&root), 1, limits, clock.clone());
        assert_eq!(admit(&db, &retry).await.unwrap(), Ok(()));
        // Deliveries are charged as events are recorded; an event that does not fit is refused
        // whole.
        let two = ["i-1".to_owned(), "i-2".to_owned()];
        let mut child = tick(place.clone());
        child.depth = 1;
        publish(&db, &child, &two, Some(&root), &limits, Utc::now())
            .await
            .unwrap();
        publish(&db, &child, &two, Some(&root), &limits, Utc::now())
            .await
            .unwrap();
        let over = publish(&db, &child, &two, Some(&root), &limits, Utc::now()).await;
        assert!(
            matches!(
                over,
                Err(Error::OverBudget {
                    what: "deliveries",
                    ..
                })
            ),
            "{over:?}"
        );
        // With the deliveries spent, no more emissions either; other chains are untouched.
        assert!(admit(&db, &retry).await.unwrap().is_err());
        let fresh = Emitter::new("i-1", &place, Some("another-root"), 1, limits, clock);
        assert_eq!(admit(&db, &fresh).await.unwrap(), Ok(()));
        let recorded = claim(
            &db,
            "me",
            10,
            Room {
                in_flight: &HashMap::new(),
                per_partner: 10,
                least: 1,
            },
            Duration::seconds(30),
            8,
            Utc::now() + Duration::seconds(1),
        )
        .await
        .unwrap();
        assert!(recorded.iter().all(|c| c.root_id == root), "{recorded:?}");
        assert_eq!(recorded.len(), 5);
    }

    #[tokio::test]
    async fn an_emission_past_the_deepest_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let place = merchant("p-a", "m-a1");
        let emitter = Emitter::new(
            "i-1",
            &place,
            Some("root"),
            MAX_DEPTH + 1,
            Limits::default(),
            Clock::system(),
        );
        let refusal = admit(&db, &emitter).await.unwrap().unwrap_err();
        assert!(refusal.message().contains("too deep"), "{refusal:?}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let backoff = Backoff {
            first: Duration::seconds(2),
            max: Duration::seconds(60),
            max_attempts: 8,
        };
        let first = backoff.delay(1);
        assert!(first >= Duration::seconds(2) && first <= Duration::milliseconds(2_500));
        let third = backoff.delay(3);
        assert!(third >= Duration::seconds(8) && third <= Duration::seconds(10));
        let late = backoff.delay(30);
        assert!(late >= Duration::seconds(60) && late <= Duration::seconds(75));
    }
}
