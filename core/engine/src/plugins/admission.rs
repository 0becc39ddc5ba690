//! Who may run now: each installation gets a share of the runtime's slots, an installation
//! known to be heavy also waits for the heavy lane, an installation that keeps failing for one
//! tenant is suspended for that tenant by the circuit breaker, and invocations working on one kv
//! namespace take turns.
//!
//! Invariant: an invocation takes its permits always in the same order — the installation's
//! share, a slot, then (when heavy) a heavy-lane permit — so no two waiters can hold what the
//! other needs; a namespace's gate comes last, and waiting for it is bounded by the wall time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an installation that needed more than one tick of CPU starts in the heavy lane.
const HOG_MEMORY: Duration = Duration::from_secs(10);
/// Invocations of one installation running at once; more wait, so one busy installation can
/// hold only a share of the runtime's slots.
pub const PER_INSTALLATION: usize = 32;

/// One kv-using invocation at a time per namespace in this process, from its first kv operation
/// to the end of its commit: invocations on one merchant's data take turns instead of reading
/// the same keys and all but one failing their commit (another process can still get in
/// between; the commit's check catches that). An invocation gives its turn up while it waits
/// for Alipay.
#[derive(Default)]
pub(super) struct Gates {
    gates: Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    /// Gates created since the map was last swept of unused ones.
    created: std::sync::atomic::AtomicUsize,
}

/// How many gates are created between sweeps of the unused ones.
const GATE_SWEEP: usize = 4_096;

impl Gates {
    /// The gate of a namespace, made on first use and dropped once no invocation holds it.
    pub(super) fn gate(&self, namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
        use std::sync::atomic::Ordering;
        let mut gates = lock(&self.gates);
        if let Some(gate) = gates.get(namespace).and_then(std::sync::Weak::upgrade) {
            return gate;
        }
        if self.created.fetch_add(1, Ordering::Relaxed) % GATE_SWEEP == GATE_SWEEP - 1 {
            gates.retain(|_, gate| gate.strong_count() > 0);
        }
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(namespace.to_owned(), Arc::downgrade(&gate));
        gate
    }
}

/// Where an invocation stands with its namespace's gate.
#[derive(Default)]
pub(super) enum Turn {
    /// It uses no kv.
    #[default]
    None,
    /// It will wait for this gate at its first kv operation.
    Waiting(Arc<tokio::sync::Mutex<()>>),
    /// It holds the gate until its commit ends.
    Held {
        _guard: tokio::sync::OwnedMutexGuard<()>,
    },
    /// It gave its turn up to wait for Alipay, and runs on without one.
    GivenUp,
}

/// A poisoned lock still guards plain bookkeeping: a panic elsewhere must not stop admission.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The runtime's places to run, and its memory of which installations are heavy or failing.
pub(super) struct Admission {
    slots: Arc<Semaphore>,
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Invocations past their first tick of CPU share these permits, so busy plugins cannot
    /// occupy every worker thread and starve quick ones.
    heavy: Arc<Semaphore>,
    hogs: Arc<Mutex<HashMap<String, Instant>>>,
    pub(super) breaker: Breaker,
}

impl Admission {
    pub(super) fn new(max_concurrency: u32, breaker: Breaker) -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency as usize)),
            shares: Mutex::default(),
            heavy: Arc::new(Semaphore::new(workers.saturating_sub(1).max(1))),
            hogs: Arc::default(),
            breaker,
        }
    }

    /// Waits for a place to run, in the order the module's invariant names. `None` when the
    /// runtime is shutting down.
    pub(super) async fn admit(&self, installation: &str) -> Option<Permits> {
        let share = {
            let mut shares = lock(&self.shares);
            match shares.get(installation) {
                Some(share) => share.clone(),
                None => shares
                    .entry(installation.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(PER_INSTALLATION)))
                    .clone(),
            }
        };
        let _installation = share.acquire_owned().await.ok()?;
        let _slot = self.slots.clone().acquire_owned().await.ok()?;
        let heavy = if self.is_hog(installation) {
            Some(self.heavy.clone().acquire_owned().await.ok()?)
        } else {
            None
        };
        Some(Permits {
            _installation: Some(_installation),
            _slot: Some(_slot),
            heavy,
        })
    }

    fn is_hog(&self, installation: &str) -> bool {
        let mut hogs = lock(&self.hogs);
        match hogs.get(installation) {
            Some(at) if at.elapsed() < HOG_MEMORY => true,
            Some(_) => {
                hogs.remove(installation);
                false
            }
            None => false,
        }
    }

    /// The heavy lane an invocation moves to once it has used a tick of CPU.
    pub(super) fn heavy_lane(&self) -> Arc<Semaphore> {
        self.heavy.clone()
    }

    /// The flag an invocation of `installation` sets when it turns out heavy, and reads to
    /// learn that another invocation of it did.
    pub(super) fn hog_flag(&self, installation: String) -> HogFlag {
        HogFlag {
            hogs: self.hogs.clone(),
            installation,
        }
    }
}

/// What an admitted invocation holds while it runs.
pub(super) struct Permits {
    _installation: Option<OwnedSemaphorePermit>,
    _slot: Option<OwnedSemaphorePermit>,
    heavy: Option<OwnedSemaphorePermit>,
}

impl Permits {
    /// No place of its own: for an invocation run inside another, which holds one.
    pub(super) fn inside() -> Self {
        Self {
            _installation: None,
            _slot: None,
            heavy: None,
        }
    }

    /// The heavy-lane permit, for the store to hold (and drop) with its CPU meter.
    pub(super) fn take_heavy(&mut self) -> Option<OwnedSemaphorePermit> {
        self.heavy.take()
    }
}

/// Remembers that an installation needed more than a tick of CPU.
pub(super) struct HogFlag {
    hogs: Arc<Mutex<HashMap<String, Instant>>>,
    installation: String,
}

impl HogFlag {
    pub(super) fn is_set(&self) -> bool {
        lock(&self.hogs)
            .get(&self.installation)
            .is_some_and(|at| at.elapsed() < HOG_MEMORY)
    }

    pub(super) fn mark(&self) {
        lock(&self.hogs).insert(self.installation.clone(), Instant::now());
    }
}

/// Trips an installation after too many traps in a window.
pub(super) struct Breaker {
    pub(super) traps: u32,
    pub(super) window: Duration,
    cooldown: Duration,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Tripped breakers: until when (monotonic and wall clock), and when they tripped.
    open: Mutex<HashMap<String, Tripped>>,
}

struct Tripped {
    until: Instant,
    until_wall: DateTime<Utc>,
    at: DateTime<Utc>,
}

impl Breaker {
    pub(super) fn new(traps: u32, window: Duration, cooldown: Duration) -> Self {
        Self {
            traps,
            window,
            cooldown,
            recent: Mutex::default(),
            open: Mutex::default(),
        }
    }

    pub(super) fn open_until(&self, installation: &str) -> Option<DateTime<Utc>> {
        let mut open = lock(&self.open);
        match open.get(installation) {
            Some(tripped) if tripped.until > Instant::now() => Some(tripped.until_wall),
            Some(_) => {
                open.remove(installation);
                None
            }
            None => None,
        }
    }

    /// Records a trap; true when it tripped the breaker.
    pub(super) fn record(&self, installation: &str) -> bool {
        let now = Instant::now();
        let mut recent = lock(&self.recent);
        let times = recent.entry(installation.to_owned()).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.traps as usize {
            times.clear();
            let at = Utc::now();
            let until_wall =
                at + chrono::Duration::from_std(self.cooldown).unwrap_or(chrono::Duration::zero());
            lock(&self.open).insert(
                installation.to_owned(),
                Tripped {
                    until: now + self.cooldown,
                    until_wall,
                    at,
                },
            );
            return true;
        }
        false
    }

    /// Lifts the suspensions of an installation that tripped before `at` (a reset another
    /// process recorded).
    pub(super) fn reset_before(&self, installation: &str, at: DateTime<Utc>) {
        let prefix = format!("{installation}/");
        let mut open = lock(&self.open);
        if open.is_empty() {
            return;
        }
        open.retain(|key, tripped| !key.starts_with(&prefix) || tripped.at > at);
    }

    /// Lifts every suspension of an installation (whichever tenants it was for).
    pub(super) fn reset(&self, installation: &str) {
        let prefix = format!("{installation}/");
        lock(&self.open).retain(|key, _| !key.starts_with(&prefix));
        lock(&self.recent).retain(|key, _| !key.starts_with(&prefix));
    }
}
