//! Claiming due deliveries fairly: in turns across partners and, within a partner, across
//! merchants, holding back suspended tenants and partners that have no room left.
//!
//! Invariant: a delivery is leased to one dispatcher at a time; a suspended tenant's deliveries
//! are left out of claims (one claimed just before its tenant's suspension is held at delivery,
//! which checks again).

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::Value as Json;

use super::{Claimed, Error};
use crate::db::sql::{self, Millis, RowLock};
use crate::tenancy::{NodeKind, Place};

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
    pub in_flight: &'a HashMap<String, usize>,
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
}

/// Claims up to `batch` due deliveries for `owner` until `now + lease`, in turns: the oldest due
/// delivery of every partner comes before the second of any, and within a partner the oldest of
/// every merchant before the second of any, so one tenant's backlog delays another's deliveries
/// by at most a round rather than by the whole backlog (and a merchant new to `walk`, by up to
/// about two polls more: see [`Walk`] and below). Deliveries of suspended tenants are held, and no partner gets more
/// than its `room`.
///
/// The turns are ranked by reads that take no locks — an idle dispatcher polls often, and must
/// take neither SQLite's write lock nor PostgreSQL's row locks when nothing is due — and never
/// by one query over every due delivery, whose plan would follow statistics that lag behind a
/// backlog that grew at once: a walk along the turns index finds the (partner, merchant) pairs
/// with deliveries pending, and each pair's first few due ones are ranked, passing over pairs
/// another dispatcher is working (see [`rank`]). Then the first
/// `batch` still claimable are leased by a short write; rows another dispatcher leased meanwhile
/// are passed over (on PostgreSQL rows it is leasing are skipped, `FOR UPDATE SKIP LOCKED`;
/// SQLite serialises writers, so each write is atomic as it stands).
///
/// A ranking finds twice the batch, and the room left usually caps a claim well below that:
/// what no claim took is kept in `walk`, in its fair order, and the next claims within a poll
/// take from it before ranking again (a merchant whose first delivery falls due meanwhile waits
/// for the next ranking, as it waits for the next walk). A kept delivery another dispatcher
/// took meanwhile, or that is no longer due, is passed over, and so is the rest of its pair:
/// that dispatcher works the pair now. The lease checks each delivery is due however long ago
/// it was ranked; one whose tenant was suspended since it was ranked is held at delivery.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one of the claim's own terms; a struct would only rename them"
)]
pub async fn claim(
    db: &impl ConnectionTrait,
    owner: &str,
    batch: u32,
    room: Room<'_>,
    walk: &mut Walk,
    lease: Duration,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, Error> {
    let wanted = usize::try_from(batch).unwrap_or(usize::MAX);
    let terms = (lease, max_attempts, now);
    let mut taking = Taking {
        wanted,
        room,
        taken: HashMap::new(),
        claimed: Vec::new(),
    };
    // What the last ranking found and no claim took, while it stands; then a ranking for what
    // room is left, unless the claim has all it wants.
    let gathered: Result<(), Error> = async {
        if let Some((until, kept)) = walk.take_kept() {
            let rest = taking.take(db, owner, kept, true, terms).await?;
            walk.keep(until, rest);
        }
        if taking.claimed.len() >= wanted {
            return Ok(());
        }
        let mut groups = walk.groups(db).await?;
        groups.retain(|g| !taking.held_back(&g.partner_id));
        let partners: HashSet<&str> = groups.iter().map(|g| g.partner_id.as_str()).collect();
        let room_left = partners
            .iter()
            .fold(0usize, |sum, p| sum.saturating_add(taking.room_left(p)));
        let can_take = (wanted - taking.claimed.len()).min(room_left);
        if can_take == 0 {
            return Ok(());
        }
        // Twice the batch (and at least twice what this claim can still take): another
        // dispatcher ranking at the same moment takes the same first turns, and what this
        // claim leaves serves the next ones.
        let limit = u32::try_from(can_take.max(wanted).saturating_mul(2)).unwrap_or(u32::MAX);
        let ranked_at = std::time::Instant::now();
        let (candidates, busy) = fair_turns(
            db,
            owner,
            (limit, can_take, &|p: &str| taking.room_left(p)),
            groups,
            max_attempts,
            now,
        )
        .await?;
        walk.worked_elsewhere(busy);
        let rest = taking.take(db, owner, candidates, false, terms).await?;
        walk.keep(ranked_at + walk.every, rest);
        Ok(())
    }
    .await;
    if let Err(error) = gathered {
        if taking.claimed.is_empty() {
            return Err(error);
        }
        // What was leased before the failure is claimed, not left to its lease's end.
        tracing::warn!(%error, "could not claim a whole batch; claiming what was leased");
    }
    let claimed = taking.claimed;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let marks = sql::marks(claimed.len());
    let mut values: Vec<Value> = claimed.into_iter().map(Value::from).collect();
    values.push(owner.into());
    let rows: Vec<ClaimedRow> = sql::query(
        &format!(
            "SELECT d.id, d.event_id, d.installation_id, d.attempts, e.kind, e.partner_id, e.agent_id, \
             e.merchant_id, e.payload, e.source, e.depth, e.root_id, e.occurred_at FROM event_deliveries d \
             JOIN events e ON e.id = d.event_id WHERE d.id IN ({marks}) AND d.lease_owner = ? \
             ORDER BY d.next_attempt_at, d.id"
        ),
        values,
    )
    .all(db)
    .await?;
    Ok(rows.into_iter().map(Claimed::from).collect())
}

/// What one claim has taken so far, and may still take.
struct Taking<'a> {
    wanted: usize,
    room: Room<'a>,
    /// Taken by this claim, by partner.
    taken: HashMap<String, usize>,
    claimed: Vec<String>,
}

impl Taking<'_> {
    /// Whether `partner` is left out of a ranking: it has no room left, or less than
    /// `room.least` while it has deliveries in flight or taken by this claim.
    fn held_back(&self, partner: &str) -> bool {
        let left = self.room_left(partner);
        let counted = self.room.in_flight.contains_key(partner) || self.taken.contains_key(partner);
        left == 0 || (counted && left < self.room.least.max(1))
    }

    /// Room `partner` has left in this claim.
    fn room_left(&self, partner: &str) -> usize {
        self.room
            .of(partner)
            .saturating_sub(self.taken.get(partner).copied().unwrap_or(0))
    }

    /// Leases, in order, those of `candidates` still claimable whose partner has room, until
    /// the claim has what it wants; returns the rest, in order, untried. A candidate another
    /// dispatcher took meanwhile (or that is no longer due) is passed over, and with it the
    /// rest of its pair's: that dispatcher works the pair now. With `one_per_pair` (candidates
    /// kept from an earlier ranking, whose pairs may have been taken up since), each lease
    /// holds at most one of a pair, so that a pair found taken is left before any more of it
    /// is leased.
    async fn take(
        &mut self,
        db: &impl ConnectionTrait,
        owner: &str,
        candidates: Vec<Candidate>,
        one_per_pair: bool,
        (lease, max_attempts, now): (Duration, i32, DateTime<Utc>),
    ) -> Result<Vec<Candidate>, Error> {
        let mut rest: VecDeque<Candidate> = candidates.into();
        // Passed over for want of room, or (with `one_per_pair`) until the next lease.
        let mut passed: VecDeque<Candidate> = VecDeque::new();
        // Pairs this call leased a delivery of: ours, so their others need no lease alone.
        let mut ours: HashSet<Group> = HashSet::new();
        while self.claimed.len() < self.wanted && !rest.is_empty() {
            let mut chunk: Vec<Candidate> = Vec::new();
            let mut pairs = HashSet::new();
            let mut later = VecDeque::new();
            while chunk.len() < self.wanted - self.claimed.len()
                && let Some(candidate) = rest.pop_front()
            {
                if one_per_pair
                    && pairs.contains(&candidate.group)
                    && !ours.contains(&candidate.group)
                {
                    later.push_back(candidate);
                } else if self.room_left(&candidate.group.partner_id) > 0 {
                    *self
                        .taken
                        .entry(candidate.group.partner_id.clone())
                        .or_default() += 1;
                    pairs.insert(candidate.group.clone());
                    chunk.push(candidate);
                } else {
                    passed.push_back(candidate);
                }
            }
            // Deferred pair-mates come before what was not looked at.
            while let Some(candidate) = later.pop_back() {
                rest.push_front(candidate);
            }
            if chunk.is_empty() {
                break;
            }
            let ids: Vec<String> = chunk.iter().map(|c| c.id.clone()).collect();
            let leased: HashSet<String> = {
                let _turn = crate::db::write_turn(db).await;
                lease_rows(db, owner, &ids, lease, max_attempts, now)
                    .await?
                    .into_iter()
                    .collect()
            };
            let mut lost = HashSet::new();
            for candidate in chunk {
                if leased.contains(&candidate.id) {
                    self.claimed.push(candidate.id);
                    ours.insert(candidate.group);
                } else {
                    if let Some(count) = self.taken.get_mut(&candidate.group.partner_id) {
                        *count = count.saturating_sub(1);
                    }
                    lost.insert(candidate.group);
                }
            }
            if !lost.is_empty() {
                rest.retain(|c| !lost.contains(&c.group));
                // Room given back: those passed over for want of it come first again.
                while let Some(candidate) = passed.pop_back() {
                    if !lost.contains(&candidate.group) {
                        rest.push_front(candidate);
                    }
                }
            }
        }
        // In fair order: those passed over came before the untried ones.
        passed.extend(rest);
        Ok(passed.into())
    }
}

/// Marks dead the deliveries whose every attempt was claimed but never recorded (their
/// dispatchers died each time), rather than claiming them for ever. It reads every pending
/// delivery, so dispatchers run it now and then, not with every claim.
pub async fn bury_abandoned(
    db: &impl ConnectionTrait,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    Ok(sql::query(
        "UPDATE event_deliveries SET status = 'dead', last_error = ?, lease_until = NULL, updated_at = ? \
         WHERE status = 'pending' AND attempts >= ? AND lease_until IS NOT NULL AND lease_until < ?",
        [
            format!("no outcome recorded after {max_attempts} attempts (the dispatchers holding it stopped)").into(),
            Millis(now).into(),
            max_attempts.into(),
            Millis(now).into(),
        ],
    )
    .execute(db)
    .await?)
}

/// A (partner, merchant) with deliveries pending.
#[derive(Debug, Clone, PartialEq, Eq, Hash, FromQueryResult)]
pub(super) struct Group {
    pub partner_id: String,
    pub merchant_id: Option<String>,
}

/// The (partner, merchant) pairs a dispatcher's claims rank: as its last walk of the index
/// found them, walked again once `every` has passed, less those its claims found another
/// dispatcher working within `every`. A pair whose deliveries ran out meanwhile is ranked for
/// nothing until then; one whose first deliveries came meanwhile, or that the other dispatcher
/// let go, waits for the next look — at most `every`, the dispatcher's poll, which is how long
/// a dispatcher that found nothing waits to look again anyway.
///
/// It also keeps what the last ranking found beyond what its claim took, in fair order, for
/// the next claims within `every`: a claim takes about a quarter of what it ranks (see
/// [`claim`]), and each ranking reads every pair's first deliveries.
#[derive(Debug, Default)]
pub struct Walk {
    every: std::time::Duration,
    last: Option<(std::time::Instant, Vec<Group>)>,
    /// Pairs another dispatcher works, until when they are left to it.
    elsewhere: HashMap<Group, std::time::Instant>,
    /// Due deliveries the last ranking found and no claim took yet, in fair order, and until
    /// when they stand.
    kept: Option<(std::time::Instant, Vec<Candidate>)>,
}

/// A due delivery a ranking found, with its (partner, merchant).
#[derive(Debug, Clone)]
struct Candidate {
    id: String,
    group: Group,
}

impl Walk {
    /// Walks again once `every` has passed since the last walk (at every claim when zero).
    pub fn every(every: std::time::Duration) -> Self {
        Self {
            every,
            ..Self::default()
        }
    }

    async fn groups(&mut self, db: &impl ConnectionTrait) -> Result<Vec<Group>, Error> {
        let now = std::time::Instant::now();
        self.elsewhere.retain(|_, until| *until > now);
        let groups = match &self.last {
            Some((at, groups)) if at.elapsed() < self.every => groups.clone(),
            _ => {
                let groups = pending_groups(db).await?;
                self.last = Some((now, groups.clone()));
                groups
            }
        };
        Ok(groups
            .into_iter()
            .filter(|g| !self.elsewhere.contains_key(g))
            .collect())
    }

    /// What the last ranking found and no claim took, with until when it stands, while it does.
    fn take_kept(&mut self) -> Option<(std::time::Instant, Vec<Candidate>)> {
        self.kept
            .take()
            .filter(|(until, _)| std::time::Instant::now() < *until)
    }

    /// Keeps what a ranking found and no claim took, for the next claims until `until`.
    fn keep(&mut self, until: std::time::Instant, rest: Vec<Candidate>) {
        self.kept = (!rest.is_empty()).then_some((until, rest));
    }

    fn worked_elsewhere(&mut self, groups: HashSet<Group>) {
        let until = std::time::Instant::now() + self.every;
        self.elsewhere
            .extend(groups.into_iter().map(|g| (g, until)));
    }
}

/// The room a partner has left in a claim.
type RoomLeft<'a> = dyn Fn(&str) -> usize + Sync + 'a;

/// Up to `limit` due deliveries in fair order (enough that `need` of them fit the partners'
/// `room_left`, when that many are due): by turn within their partner (each
/// merchant's oldest first, then each one's second, …), oldest first within a turn.
///
/// Only the first few due deliveries of each (partner, merchant) are ranked — about `limit`
/// spread over the merchants with something pending, and one more each to tell whose backlog
/// goes on — so a claim costs the same however long the backlogs are. What comes back is
/// always a prefix of the fair order: it stops before the turn at which a partner whose
/// backlog was cut short would have had its next delivery. Only `groups` are ranked; those
/// another dispatcher works come back apart.
async fn fair_turns(
    db: &impl ConnectionTrait,
    owner: &str,
    (limit, need, room_left): (u32, usize, &RoomLeft<'_>),
    mut groups: Vec<Group>,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<(Vec<Candidate>, HashSet<Group>), Error> {
    let mut busy = HashSet::new();
    if groups.is_empty() {
        return Ok((Vec::new(), busy));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
    // Groups whose pending deliveries are all leased count too, so a first depth may rank too
    // few: then deeper, while some backlog was cut short and fewer than `need` were found.
    let mut depth = limit.div_ceil(groups.len()).min(limit);
    loop {
        let mut ranked = Vec::new();
        for chunk in groups.chunks(GROUPS_PER_STATEMENT) {
            let (turns, worked) = rank(db, owner, chunk, depth + 1, max_attempts, now).await?;
            ranked.extend(turns);
            busy.extend(worked);
        }
        let (turns, cut_short) = fair_prefix(ranked, depth, limit);
        // What the claim could take of them: each partner's turns up to its room.
        let mut by_partner: HashMap<&str, usize> = HashMap::new();
        for turn in &turns {
            *by_partner
                .entry(turn.group.partner_id.as_str())
                .or_default() += 1;
        }
        let takeable = by_partner.iter().fold(0usize, |sum, (p, n)| {
            sum.saturating_add((*n).min(room_left(p)))
        });
        if takeable >= need.min(limit) || turns.len() >= limit || !cut_short || depth >= limit {
            return Ok((turns, busy));
        }
        groups.retain(|g| !busy.contains(g));
        depth = depth.saturating_mul(4).min(limit);
    }
}

/// The (partner, merchant) pairs with deliveries pending. Not a `DISTINCT` over every pending
/// delivery (a scan of the whole backlog at every claim) but a walk along the turns index that
/// seeks from one pair to the next: each merchant of a partner, then the next partner, then
/// whether each partner has deliveries without a merchant.
///
/// The walk goes from the last pair down, so each seek lands on a pair's newest deliveries:
/// a backlog drains from its oldest, and on PostgreSQL the index keeps the entries of the
/// delivered ones (dead, no longer pending) until a vacuum, so a walk upwards would step over
/// every merchant's delivered prefix at every seek.
pub(super) async fn pending_groups(db: &impl ConnectionTrait) -> Result<Vec<Group>, Error> {
    const PENDING: &str = "SELECT {} FROM event_deliveries WHERE status = 'pending'";
    let select = |what: &str, rest: &str| format!("({} {rest})", PENDING.replace("{}", what));
    let last_partner = select("partner_id", "ORDER BY partner_id DESC LIMIT 1");
    // `m` is NULL at a partner's start: its last merchant comes next.
    let next_merchant = format!(
        "CASE WHEN g.m IS NULL THEN {} ELSE {} END",
        select(
            "merchant_id",
            "AND partner_id = g.p AND merchant_id IS NOT NULL ORDER BY merchant_id DESC LIMIT 1"
        ),
        select(
            "merchant_id",
            "AND partner_id = g.p AND merchant_id < g.m ORDER BY merchant_id DESC LIMIT 1"
        ),
    );
    let next_partner = select(
        "partner_id",
        "AND partner_id < g.p ORDER BY partner_id DESC LIMIT 1",
    );
    // A scalar subquery, which PostgreSQL runs for each partner with both columns on the index;
    // `EXISTS` it may turn into a join that reads the index's every entry without a merchant.
    let without_merchant = select(
        "1",
        "AND partner_id = g.p AND merchant_id IS NULL ORDER BY next_attempt_at DESC LIMIT 1",
    );
    let step = match sql::backend(db) {
        // A lateral subquery seeks the next merchant once per step, where PostgreSQL would run
        // the expression twice (`OFFSET 0` keeps the planner from merging it back in).
        sea_orm::DbBackend::Postgres => format!(
            "SELECT CAST(CASE WHEN n.m IS NOT NULL THEN g.p ELSE {next_partner} END AS TEXT), n.m \
             FROM g CROSS JOIN LATERAL (SELECT CAST({next_merchant} AS TEXT) AS m OFFSET 0) n \
             WHERE g.p IS NOT NULL"
        ),
        // SQLite has no lateral joins.
        _ => format!(
            "SELECT CAST(CASE WHEN ({next_merchant}) IS NOT NULL THEN g.p ELSE {next_partner} END AS TEXT), \
             CAST({next_merchant} AS TEXT) FROM g WHERE g.p IS NOT NULL"
        ),
    };
    let walk = format!(
        "WITH RECURSIVE g (p, m) AS (\
           SELECT CAST({last_partner} AS TEXT), CAST(NULL AS TEXT) \
           UNION ALL {step}\
         ) \
         SELECT p AS partner_id, m AS merchant_id FROM g WHERE p IS NOT NULL AND m IS NOT NULL \
         UNION ALL \
         SELECT p AS partner_id, NULL AS merchant_id FROM g WHERE p IS NOT NULL AND m IS NULL \
         AND {without_merchant} IS NOT NULL"
    );
    Ok(sql::query(&walk, []).all(db).await?)
}

/// A (partner, merchant) group whose partner or merchant is suspended: left out before any of
/// its deliveries is read (each delivery is checked too, for its agent).
const GROUP_NOT_SUSPENDED: &str = "g.partner_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended') \
     AND (g.merchant_id IS NULL OR g.merchant_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended'))";

/// How many of a (partner, merchant)'s first pending deliveries a claim looks at to see
/// whether another dispatcher is working it.
const HEAD: usize = 4;

/// Groups ranked by one statement (two values each, under both engines' limits).
const GROUPS_PER_STATEMENT: usize = 2_000;

/// A row of [`rank`]: a due delivery with its turn among its merchant's, or (no id) a group
/// another dispatcher works.
#[derive(FromQueryResult)]
struct RankRow {
    id: Option<String>,
    partner_id: String,
    merchant_id: Option<String>,
    next_attempt_at: i64,
    merchant_turn: i64,
}

/// A due delivery with its turn among its merchant's.
#[derive(Debug, Clone)]
struct Ranked {
    id: String,
    group: Group,
    next_attempt_at: i64,
    merchant_turn: i64,
}

/// The first `depth` due deliveries of each of `groups`, with their turns, leaving out the
/// groups another dispatcher is working: one that holds a live lease on one of the group's
/// first pending deliveries. Two processes then do not run one merchant's deliveries side by
/// side, where each run's commit would wait on the other's locks and one of them would find
/// what it read changed and run again; a dispatcher that dies leaves its merchants to the
/// others once its leases end.
async fn rank(
    db: &impl ConnectionTrait,
    owner: &str,
    groups: &[Group],
    depth: usize,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<(Vec<Ranked>, Vec<Group>), Error> {
    let depth = i64::try_from(depth).unwrap_or(i64::MAX);
    let mut values: Vec<Value> = Vec::with_capacity(groups.len() * 2 + 8);
    for group in groups {
        values.push(group.partner_id.clone().into());
        values.push(group.merchant_id.clone().into());
    }
    let rows = vec!["(?, ?)"; groups.len()].join(", ");
    values.extend([Millis(now).into(), owner.into()]);
    let due = "status = 'pending' AND partner_id = g.partner_id AND next_attempt_at <= ? \
               AND attempts < ? AND (lease_until IS NULL OR lease_until < ?)";
    let first = |values: &mut Vec<Value>| {
        values.extend([
            Millis(now).into(),
            max_attempts.into(),
            Millis(now).into(),
            depth.into(),
        ]);
    };
    // The first pending deliveries of the group, leased or not, in claim order: where another
    // dispatcher holds some of them, that dispatcher is working the merchant.
    let head = |merchant: &str| {
        format!(
            "SELECT lease_owner, lease_until FROM event_deliveries WHERE status = 'pending' \
             AND partner_id = g.partner_id AND {merchant} ORDER BY next_attempt_at, id LIMIT {HEAD}"
        )
    };
    let (firsts, heads) = match sql::backend(db) {
        // A lateral join runs each range once per (partner, merchant); an equality keeps it on
        // the index, so deliveries without a merchant are a range of their own.
        sea_orm::DbBackend::Postgres => {
            first(&mut values);
            first(&mut values);
            let firsts = format!(
                "CROSS JOIN LATERAL (\
                   (SELECT id, next_attempt_at FROM event_deliveries WHERE {due} \
                    AND merchant_id = g.merchant_id AND {NOT_SUSPENDED} ORDER BY next_attempt_at, id LIMIT ?) \
                   UNION ALL \
                   (SELECT id, next_attempt_at FROM event_deliveries WHERE {due} \
                    AND g.merchant_id IS NULL AND merchant_id IS NULL AND {NOT_SUSPENDED} \
                    ORDER BY next_attempt_at, id LIMIT ?)\
                 ) d"
            );
            let heads = format!(
                "({}) UNION ALL ({})",
                head("merchant_id = g.merchant_id"),
                head("g.merchant_id IS NULL AND merchant_id IS NULL")
            );
            (firsts, heads)
        }
        // SQLite has no lateral joins; `IS` compares NULLs and keeps to the index.
        _ => {
            first(&mut values);
            let firsts = format!(
                "JOIN event_deliveries d ON d.id IN (\
                   SELECT id FROM event_deliveries WHERE {due} AND merchant_id IS g.merchant_id \
                   AND {NOT_SUSPENDED} ORDER BY next_attempt_at, id LIMIT ?)"
            );
            (firsts, head("merchant_id IS g.merchant_id"))
        }
    };
    // Each group once: whether another dispatcher works it (a row without a delivery says so),
    // else its first due deliveries.
    let rows: Vec<RankRow> = sql::query(
        &format!(
            "WITH w (partner_id, merchant_id) AS (VALUES {rows}), \
             g AS (SELECT partner_id, merchant_id, EXISTS (SELECT 1 FROM ({heads}) h \
               WHERE h.lease_until >= ? AND h.lease_owner <> ?) AS busy \
               FROM w g WHERE {GROUP_NOT_SUSPENDED}) \
             SELECT d.id, g.partner_id, g.merchant_id, d.next_attempt_at, \
             ROW_NUMBER() OVER (PARTITION BY g.partner_id, g.merchant_id ORDER BY d.next_attempt_at, d.id) AS merchant_turn \
             FROM g {firsts} WHERE NOT g.busy \
             UNION ALL SELECT NULL, partner_id, merchant_id, 0, 0 FROM g WHERE busy"
        ),
        values,
    )
    .all(db)
    .await?;
    let mut ranked = Vec::with_capacity(rows.len());
    let mut busy = Vec::new();
    for row in rows {
        let group = Group {
            partner_id: row.partner_id,
            merchant_id: row.merchant_id,
        };
        match row.id {
            Some(id) => ranked.push(Ranked {
                id,
                group,
                next_attempt_at: row.next_attempt_at,
                merchant_turn: row.merchant_turn,
            }),
            None => busy.push(group),
        }
    }
    Ok((ranked, busy))
}

/// The first `limit` of `ranked` in fair order, cut where it stops being a prefix of the whole
/// fair order: a partner with a merchant ranked `depth + 1` deep has more due than was ranked,
/// so no partner's turn past that partner's ranked deliveries may be taken.
/// Also says whether some backlog was cut short.
fn fair_prefix(ranked: Vec<Ranked>, depth: usize, limit: usize) -> (Vec<Candidate>, bool) {
    let depth = i64::try_from(depth).unwrap_or(i64::MAX);
    let mut by_partner: HashMap<String, Vec<Ranked>> = HashMap::new();
    let mut cut_short = Vec::new();
    for r in ranked {
        if r.merchant_turn > depth {
            cut_short.push(r.group.partner_id);
        } else {
            by_partner
                .entry(r.group.partner_id.clone())
                .or_default()
                .push(r);
        }
    }
    let through = cut_short
        .iter()
        .map(|p| by_partner.get(p).map_or(0, Vec::len))
        .min()
        .unwrap_or(usize::MAX);
    // A partner's turns: each merchant's first, then each one's second, …, oldest first.
    let mut turns: Vec<(usize, Ranked)> = Vec::new();
    for (_, mut rows) in by_partner {
        rows.sort_by(|a, b| {
            (a.merchant_turn, a.next_attempt_at, &a.id).cmp(&(
                b.merchant_turn,
                b.next_attempt_at,
                &b.id,
            ))
        });
        turns.extend(rows.into_iter().enumerate().take(through));
    }
    turns.sort_by(|(ta, a), (tb, b)| {
        (ta, a.next_attempt_at, &a.id).cmp(&(tb, b.next_attempt_at, &b.id))
    });
    turns.truncate(limit);
    let turns = turns
        .into_iter()
        .map(|(_, r)| Candidate {
            id: r.id,
            group: r.group,
        })
        .collect();
    (turns, !cut_short.is_empty())
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
    let marks = sql::marks(ids.len());
    let mut values: Vec<Value> = vec![owner.into(), Millis(now + lease).into(), Millis(now).into()];
    values.extend(ids.iter().cloned().map(Value::from));
    values.extend([max_attempts.into(), Millis(now).into(), Millis(now).into()]);
    // `COALESCE(status, '')`: the guard must not steer SQLite's planner to the index of pending
    // deliveries (every one of them) when the ids name the rows.
    // Due too: a delivery ranked earlier (kept by the walk) may have been attempted by another
    // dispatcher since, and wait for its next attempt. (One whose tenant was suspended since is
    // held at delivery, which checks again.)
    let claimable = "COALESCE(status, '') = 'pending' AND attempts < ? \
                     AND (lease_until IS NULL OR lease_until < ?) AND next_attempt_at <= ?";
    // PostgreSQL passes over rows another dispatcher is leasing; SQLite's writers take turns,
    // and there the ids are looked up by their key directly.
    let which = match sql::backend(db) {
        sea_orm::DbBackend::Postgres => {
            let lock = sql::for_update(db, RowLock::SkipLocked);
            format!(
                "id IN (SELECT id FROM event_deliveries WHERE id IN ({marks}) AND {claimable}{lock})"
            )
        }
        _ => format!("id IN ({marks}) AND {claimable}"),
    };
    let leased: Vec<Leased> = sql::query(
        &format!(
            "UPDATE event_deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ? \
             WHERE {which} RETURNING id"
        ),
        values,
    )
    .all(db)
    .await?;
    Ok(leased.into_iter().map(|l| l.id).collect())
}

/// A delivery the lease took.
#[derive(FromQueryResult)]
struct Leased {
    id: String,
}

/// A leased delivery joined with its event, as [`claim`] reads it.
#[derive(FromQueryResult)]
struct ClaimedRow {
    id: String,
    event_id: String,
    installation_id: String,
    attempts: i32,
    kind: String,
    partner_id: String,
    agent_id: Option<String>,
    merchant_id: Option<String>,
    payload: String,
    source: String,
    depth: i32,
    root_id: Option<String>,
    occurred_at: Millis,
}

impl From<ClaimedRow> for Claimed {
    fn from(row: ClaimedRow) -> Self {
        let (id, kind) = if let Some(m) = &row.merchant_id {
            (m.clone(), NodeKind::Merchant)
        } else if let Some(a) = &row.agent_id {
            (a.clone(), NodeKind::Agent)
        } else {
            (row.partner_id.clone(), NodeKind::Partner)
        };
        Self {
            delivery_id: row.id,
            root_id: row.root_id.unwrap_or_else(|| row.event_id.clone()),
            event_id: row.event_id,
            installation_id: row.installation_id,
            place: Place {
                id,
                kind,
                partner_id: Some(row.partner_id),
                agent_id: row.agent_id,
                merchant_id: row.merchant_id,
                store_id: None,
            },
            kind: row.kind,
            payload: serde_json::from_str(&row.payload).unwrap_or(Json::Null),
            occurred_at: row.occurred_at.0,
            source: row.source,
            depth: row.depth,
            attempts: row.attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(id: &str, partner: &str, merchant_turn: i64, at: i64) -> Ranked {
        Ranked {
            id: id.into(),
            group: Group {
                partner_id: partner.into(),
                merchant_id: None,
            },
            next_attempt_at: at,
            merchant_turn,
        }
    }

    #[test]
    fn a_claim_stops_where_a_backlog_cut_short_would_have_had_its_next_turn() {
        // Depth 2: p-a's merchant had a third delivery due (ranked 3 deep), so p-a has more
        // than its two ranked; p-b had three merchants with one each.
        let rows = vec![
            ranked("a1", "p-a", 1, 10),
            ranked("a2", "p-a", 2, 11),
            ranked("a3", "p-a", 3, 12),
            ranked("b1", "p-b", 1, 20),
            ranked("b2", "p-b", 1, 21),
            ranked("b3", "p-b", 1, 22),
        ];
        let (turns, cut) = fair_prefix(rows.clone(), 2, 10);
        let ids: Vec<&str> = turns.iter().map(|c| c.id.as_str()).collect();
        // p-b's third turn comes after p-a's third, which was not ranked: it waits.
        assert_eq!(ids, ["a1", "b1", "a2", "b2"]);
        assert!(cut);
        // Nothing cut short: every ranked delivery, in turns.
        let (turns, cut) = fair_prefix(rows[3..].to_vec(), 2, 10);
        assert_eq!(turns.len(), 3);
        assert!(!cut);
        let (turns, _) = fair_prefix(rows, 2, 1);
        let turns: Vec<(&str, &str)> = turns
            .iter()
            .map(|c| (c.id.as_str(), c.group.partner_id.as_str()))
            .collect();
        assert_eq!(turns, [("a1", "p-a")]);
    }
}
