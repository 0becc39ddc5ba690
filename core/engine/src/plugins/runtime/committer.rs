//! Group commit: the runs that finish while a commit is in flight wait for it to end and then
//! commit together, in one database transaction of a few multi-row statements
//! ([`kv::group`], [`events::delivered_many`]), instead of a transaction each. A run that
//! finds no commit in flight commits at once in its caller's task; on SQLite every commit is
//! two hand-offs on a kept connection ([`commit_held`]).
//!
//! Invariant: every member gets the answer a commit of its own would have given it. A member
//! whose reads changed, whose quota would overflow or whose delivery's claim was lost commits
//! nothing and hears why; the others commit. A group the database fails as a whole is
//! committed again member by member, so one member's failure is never another's. Members of a
//! group have distinct namespaces; one whose namespace is already in the group waits for the next.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Value};
use tokio::sync::{mpsc, oneshot};

use super::super::kv::{self, Txn};
use super::super::{Emitted, Finish};
use super::commit::{self, Refused};
use crate::db::held::{self, HeldWrite, Kept};
use crate::db::sql;
use crate::events;

/// Most members of one group.
const MAX_GROUP: usize = 64;

/// What a member hears back: how its commit went, and its emitted events returned.
type Answer = (Result<(), Refused>, Vec<Emitted>);

/// One run waiting to commit.
struct Member {
    txn: Option<Txn>,
    finish: Option<Arc<dyn Finish>>,
    emitted: Vec<Emitted>,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Answer>,
    /// Set once, by whichever comes first: the committer taking the member into a group, or
    /// the run giving up waiting at its deadline. Taken by the committer, it waits for its
    /// answer; given up, the committer leaves it out.
    taken: Arc<AtomicBool>,
}

impl Member {
    fn answer(self, result: Result<(), Refused>) {
        // A member that stopped waiting (its task was cancelled) has nobody to tell.
        let _ = self.reply.send((result, self.emitted));
    }

    /// Takes the member for a commit, unless its run gave up or went away meanwhile.
    fn take(&self) -> bool {
        !self.reply.is_closed()
            && self
                .taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Commits this member in a transaction of its own.
    async fn alone(mut self, db: &DatabaseConnection) {
        let result = commit::commit_one(
            db,
            self.txn.take(),
            self.finish.as_deref(),
            &self.emitted,
            self.deadline,
        )
        .await;
        self.answer(result);
    }
}

/// A runtime's committer: a task, started on first use (and again should the async runtime
/// that ran it have ended), that takes what waits and commits it.
#[derive(Default)]
pub(super) struct Committer {
    queue: std::sync::Mutex<Option<mpsc::UnboundedSender<Member>>>,
    /// Commits in flight, in callers and in the committer's task.
    in_flight: Arc<AtomicUsize>,
    /// The SQLite connections commits take in turns: one that waits for the write lock, one
    /// that does not ([`HeldWrite::at_once`]).
    kept: Kept,
    eager: Kept,
}

/// One commit in flight, counted while it lives (dropped with a caller that went away too).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Committer {
    /// Commits a run's work with whatever else waits to commit on `db`. A run whose deadline
    /// passes before the committer takes it is answered `Late` and commits nothing.
    pub(super) async fn commit(
        &self,
        db: &DatabaseConnection,
        txn: Option<Txn>,
        finish: Option<Arc<dyn Finish>>,
        emitted: Vec<Emitted>,
        deadline: Option<Instant>,
    ) -> Answer {
        let (reply, mut answer) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let member = Member {
            txn,
            finish,
            emitted,
            deadline,
            reply,
            taken: taken.clone(),
        };
        // With no commit in flight there is nobody to group with: the caller commits at once,
        // without the hop to the committer's task. Those that finish meanwhile queue there and
        // go together next.
        if self
            .in_flight
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _in_flight = InFlight(self.in_flight.clone());
            commit_group(db, (&self.kept, &self.eager), vec![member]).await;
            return answer.await.unwrap_or_else(|_| stopped());
        }
        let sender = {
            let mut queue = super::super::admission::lock(&self.queue);
            match queue.as_ref() {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let (sender, waiting) = mpsc::unbounded_channel();
                    tokio::spawn(run(
                        db.clone(),
                        (self.kept.clone(), self.eager.clone()),
                        waiting,
                        self.in_flight.clone(),
                    ));
                    queue.insert(sender).clone()
                }
            }
        };
        if let Err(refused) = sender.send(member) {
            refused.0.alone(db).await;
        }
        if let Some(deadline) = deadline {
            tokio::select! {
                answered = &mut answer => return answered.unwrap_or_else(|_| stopped()),
                () = tokio::time::sleep_until(deadline.into()) => {
                    if taken
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return (Err(Refused::Late), Vec::new());
                    }
                }
            }
        }
        answer.await.unwrap_or_else(|_| stopped())
    }
}

/// The answer when the committer went away without one.
fn stopped() -> Answer {
    (
        Err(Refused::Failed("the committer stopped".into())),
        Vec::new(),
    )
}

/// Takes groups off the queue until every sender is gone.
async fn run(
    db: DatabaseConnection,
    (kept, eager): (Kept, Kept),
    mut queue: mpsc::UnboundedReceiver<Member>,
    in_flight: Arc<AtomicUsize>,
) {
    let mut waiting: VecDeque<Member> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(member) => waiting.push_back(member),
                None => return,
            }
        }
        while let Ok(member) = queue.try_recv() {
            waiting.push_back(member);
        }
        let mut spaces = HashSet::new();
        let mut group = Vec::new();
        let mut later = VecDeque::new();
        while let Some(member) = waiting.pop_front() {
            if !member.taken.load(Ordering::Acquire) && member.reply.is_closed() {
                continue;
            }
            let distinct = match &member.txn {
                Some(txn) => !spaces.contains(&txn.ids()),
                None => true,
            };
            if group.len() < MAX_GROUP && distinct {
                if !member.take() {
                    continue;
                }
                if let Some(txn) = &member.txn {
                    spaces.insert(txn.ids());
                }
                group.push(member);
            } else {
                later.push_back(member);
            }
        }
        waiting = later;
        in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(in_flight.clone());
        commit_group(&db, (&kept, &eager), group).await;
    }
}

/// Commits a group, answering each member.
async fn commit_group(db: &DatabaseConnection, kept: (&Kept, &Kept), mut members: Vec<Member>) {
    if members.is_empty() {
        return;
    }
    let listed = members
        .iter()
        .any(|m| m.txn.as_ref().is_some_and(Txn::listed));
    if sql::backend(db) == DbBackend::Sqlite && !listed {
        return commit_held(db, kept, members).await;
    }
    // A member alone commits the group's way too: its statements are the group's, fewer than
    // a commit of its own makes.
    if sql::backend(db) == DbBackend::Postgres {
        members = answer_late(members);
        if members.is_empty() {
            return;
        }
        if let Some(statement) = at_once(&members) {
            // The wait for a connection is bounded by the members' deadlines, as `BEGIN` is.
            let earliest = members.iter().filter_map(|m| m.deadline).min();
            match sql::alone_within(db, statement, earliest).await {
                Some(Ok(())) => return members.into_iter().for_each(|m| m.answer(Ok(()))),
                Some(Err(error)) if sql::nothing_written(&error) => {
                    tracing::debug!(%error, "a group's commit in one statement did not hold; checking it");
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, members = members.len(), "a group commit was lost on its way: whether it committed is unknown");
                    return fail_all(members, &error.to_string());
                }
                None => {
                    members = answer_late(members);
                    if members.is_empty() {
                        return;
                    }
                }
            }
        }
    }
    // The waits before the transaction begins are bounded by the members' deadlines; once it
    // has begun it runs to its end (see `commit::commit_one`).
    let begun = loop {
        let earliest = members.iter().filter_map(|m| m.deadline).min();
        let begin = async {
            let turn = crate::db::write_turn(db).await;
            (turn, crate::db::begin_write(db).await)
        };
        let begun = match earliest {
            Some(at) => tokio::time::timeout_at(at.into(), begin).await.ok(),
            None => Some(begin.await),
        };
        members = answer_late(members);
        if let Some(begun) = begun {
            break begun;
        }
        if members.is_empty() {
            return;
        }
    };
    let (turn, tx) = match begun {
        (turn, Ok(tx)) => (turn, tx),
        (_, Err(error)) => {
            for member in members {
                member.answer(Err(Refused::Failed(error.to_string())));
            }
            return;
        }
    };
    match together(&tx, &members).await {
        Ok(results) => {
            let committed = tx.commit().await;
            drop(turn);
            for (member, result) in members.into_iter().zip(results) {
                let result = match (&committed, result) {
                    (Ok(()), result) | (Err(_), result @ Err(_)) => result,
                    (Err(error), Ok(())) => Err(Refused::Failed(error.to_string())),
                };
                member.answer(result);
            }
        }
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(%rollback, "could not roll a group commit back");
            }
            drop(turn);
            match error {
                Failed::ClaimLost => {
                    tracing::debug!(
                        members = members.len(),
                        "a claim in a group was lost; committing its members one by one"
                    );
                }
                Failed::Db(error) => {
                    tracing::warn!(%error, members = members.len(), "a group commit failed; committing its members one by one");
                }
            }
            for member in members {
                member.alone(db).await;
            }
        }
    }
}

/// A group's commit on SQLite in two hand-offs (`db::held`): what every member read, the
/// namespaces' usage and whether each claim is still held ride with `BEGIN IMMEDIATE`; the
/// writes of the members that pass ride with `COMMIT`. SQLite's write lock, held from `BEGIN`,
/// keeps anything else from writing in between, so what the first batch found is what the
/// second writes over, and a lost claim leaves out only its own member.
async fn commit_held(
    db: &DatabaseConnection,
    (kept, eager): (&Kept, &Kept),
    mut members: Vec<Member>,
) {
    // A run alone that wrote, with nothing else to finish: its writes as planned on what its
    // first read found, guarded, in a single hand-off that does not wait for the write lock.
    // When the guard fails (its namespace moved meanwhile) or another connection holds the
    // lock, it goes the checked way below, whose wait for the lock its deadline bounds.
    let alone = match members.as_slice() {
        [member] if member.finish.is_none() => member.txn.as_ref().and_then(kv::group::as_read),
        _ => None,
    };
    if let Some(statements) = alone {
        let turn = match members[0].deadline {
            Some(at) => tokio::time::timeout_at(at.into(), crate::db::write_turn(db)).await,
            None => Ok(crate::db::write_turn(db).await),
        };
        let Ok(turn) = turn else {
            return members
                .into_iter()
                .for_each(|m| m.answer(Err(Refused::Late)));
        };
        let done = HeldWrite::at_once(db, eager, statements).await;
        drop(turn);
        match done {
            Ok(_) => return members.into_iter().for_each(|m| m.answer(Ok(()))),
            Err(error) => {
                tracing::debug!(%error, "a guarded commit did not hold; checking its reads");
            }
        }
    }
    let mut statements = {
        let txns: Vec<&Txn> = members.iter().filter_map(|m| m.txn.as_ref()).collect();
        kv::group::reads(&txns)
    };
    let claims: Vec<(&events::Claimed, &str)> = members
        .iter()
        .filter_map(|m| m.finish.as_ref()?.delivery())
        .map(|d| (d.claim, d.owner))
        .collect();
    statements.extend(events::still_held(&claims));
    // Polled in turns with the members' deadlines, so that members whose deadline passes
    // meanwhile are answered while it waits for the write lock; dropped halfway (nobody waits
    // any more), its connection is closed, which rolls it back.
    let mut begin = std::pin::pin!(async {
        let turn = crate::db::write_turn(db).await;
        (turn, HeldWrite::begin(db, kept, statements).await)
    });
    let begun = loop {
        let earliest = members.iter().filter_map(|m| m.deadline).min();
        let begun = match earliest {
            Some(at) => tokio::time::timeout_at(at.into(), &mut begin).await.ok(),
            None => Some((&mut begin).await),
        };
        members = answer_late(members);
        if let Some(begun) = begun {
            break begun;
        }
        if members.is_empty() {
            return;
        }
    };
    let (turn, held, rows) = match begun {
        (turn, Ok((held, rows))) => (turn, held, rows),
        (_, Err(error)) => return fail_all(members, &error.to_string()),
    };
    let (results, writes, marks) = match judge_held(&members, &rows) {
        Ok(judged) => judged,
        Err(error) => {
            held.rollback().await;
            drop(turn);
            return fail_all(members, &error.to_string());
        }
    };
    match held.commit(writes).await {
        Ok(rows) => {
            drop(turn);
            // The commit's only rows are the ids its marks moved.
            let marked = rows.len();
            if marked != marks {
                // Cannot happen under the write lock; were it to, say so loudly.
                tracing::error!(
                    marked,
                    expected = marks,
                    "a group commit marked other deliveries than it found held"
                );
            }
            for (member, result) in members.into_iter().zip(results) {
                member.answer(result);
            }
        }
        Err(error) => {
            drop(turn);
            tracing::warn!(%error, members = members.len(), "a group commit failed; committing its members one by one");
            for member in members {
                member.alone(db).await;
            }
        }
    }
}

/// What each member is told, the statements that write those that pass, the marks among them.
type Judged = (Vec<Result<(), Refused>>, Vec<(String, Vec<Value>)>, usize);

/// What each member of a held group is told, the statements that write the members that
/// pass, and how many deliveries those statements mark, from the rows of the first batch.
fn judge_held(members: &[Member], rows: &[sea_orm::QueryResult]) -> Result<Judged, DbErr> {
    let mut held_ids = HashSet::new();
    for row in rows {
        if held::what(row)? == "c" {
            held_ids.insert(held::row::<events::Marked>(row)?.id);
        }
    }
    let txns: Vec<&Txn> = members.iter().filter_map(|m| m.txn.as_ref()).collect();
    let mut plans = kv::group::judge(&txns, rows)?.into_iter();
    let mut results = Vec::with_capacity(members.len());
    let mut kept = Vec::new();
    let mut marks = Vec::new();
    for member in members {
        let plan = member
            .txn
            .as_ref()
            .and_then(|txn| Some((txn, plans.next()?)));
        let delivery = member.finish.as_ref().and_then(|f| f.delivery());
        let lost = delivery
            .as_ref()
            .is_some_and(|d| !held_ids.contains(&d.claim.delivery_id));
        let result = match plan {
            Some((_, Err(error))) => Err(Refused::from(error)),
            _ if lost => Err(Refused::Lost(
                "the delivery's claim passed to another dispatcher, which delivers it".into(),
            )),
            plan => {
                kept.extend(plan.and_then(|(txn, plan)| Some((txn, plan.ok()?))));
                marks.extend(delivery);
                Ok(())
            }
        };
        results.push(result);
    }
    let statements = writes(&kept, &marks);
    Ok((results, statements, marks.len()))
}

/// The statements that write a group's members that passed: their kv writes, their
/// deliveries' marks and the quota holds those settle.
fn writes(
    kept: &[(&Txn, kv::group::Plan)],
    marks: &[super::super::Delivered<'_>],
) -> Vec<(String, Vec<Value>)> {
    let mut statements = kv::group::apply(kept);
    let (marked, settled) = finishing(marks);
    statements.extend(marked);
    statements.extend(settled);
    statements
}

/// The statements that mark deliveries delivered (returning the id of each one still held)
/// and those that settle their quota holds.
type Finishing = (Vec<(String, Vec<Value>)>, Vec<(String, Vec<Value>)>);

fn finishing(marks: &[super::super::Delivered<'_>]) -> Finishing {
    let claims: Vec<_> = marks.iter().map(|d| (d.claim, d.owner, d.now)).collect();
    let mut quotas: BTreeMap<(&str, &str, _), i64> = BTreeMap::new();
    for delivered in marks {
        if let Some(quota) = delivered.quota {
            *quotas.entry(quota).or_default() += 1;
        }
    }
    let settled = quotas
        .into_iter()
        .map(|((installation, merchant, day), n)| {
            events::settle_delivered(installation, merchant, day, n)
        })
        .collect();
    (events::delivered_many(&claims), settled)
}

/// PostgreSQL: the group's commit as one statement run on its own — one round trip instead of
/// `BEGIN`, the lock of the usage rows, the writes and `COMMIT` — when every member can be
/// judged by its namespace's usage row alone ([`kv::group::guarded`]). It commits every member
/// or none: where a namespace moved since a member's first read, or a delivery's claim was
/// lost, the statement fails and the group takes the checked way, which tells each member
/// what became of it.
fn at_once(members: &[Member]) -> Option<(String, Vec<Value>)> {
    let txns: Vec<&Txn> = members.iter().filter_map(|m| m.txn.as_ref()).collect();
    let guarded = kv::group::guarded(&txns)?;
    let marks: Vec<super::super::Delivered<'_>> = members
        .iter()
        .filter_map(|m| m.finish.as_ref()?.delivery())
        .collect();
    let (marked, settled) = finishing(&marks);
    let mut statements: Vec<(String, Vec<Value>)> = guarded.usage.into_iter().collect();
    let mut expected = vec![(0..statements.len(), guarded.namespaces)];
    expected.push((statements.len()..statements.len() + guarded.absent.len(), 0));
    statements.extend(guarded.absent);
    expected.push((
        statements.len()..statements.len() + marked.len(),
        marks.len(),
    ));
    statements.extend(marked);
    statements.extend(guarded.keys);
    statements.extend(settled);
    sql::all_or_none(statements, &expected)
}

fn fail_all(members: Vec<Member>, error: &str) {
    for member in members {
        member.answer(Err(Refused::Failed(error.to_owned())));
    }
}

/// Answers the members whose deadline passed; returns the others.
fn answer_late(members: Vec<Member>) -> Vec<Member> {
    let now = Instant::now();
    let (late, rest): (Vec<_>, Vec<_>) = members
        .into_iter()
        .partition(|m| m.deadline.is_some_and(|d| d <= now));
    for member in late {
        member.answer(Err(Refused::Late));
    }
    rest
}

/// Why a group could not commit as a whole; its members then commit one by one.
#[derive(Debug)]
enum Failed {
    /// A delivery's claim passed to another dispatcher while its run ran: alone, that member is
    /// told so and the others commit.
    ClaimLost,
    Db(DbErr),
}

impl From<DbErr> for Failed {
    fn from(error: DbErr) -> Self {
        Failed::Db(error)
    }
}

/// Writes the group inside `tx`: checks every member's reads and quota, then — in one batch of
/// statements, a single hand-off on SQLite — applies the kv writes of those that passed, marks
/// their deliveries delivered and settles their quota holds (all the finishing work a member of
/// a group has: see [`Finish::delivery`]). Returns each member's result, or the database's error for the group as a whole; a
/// delivery whose claim was lost fails the group (rare: its lease ran out while it ran), which
/// then commits one by one.
async fn together(
    tx: &DatabaseTransaction,
    members: &[Member],
) -> Result<Vec<Result<(), Refused>>, Failed> {
    let mut refused: Vec<Option<Refused>> = members.iter().map(|_| None).collect();
    let with_txn: Vec<(usize, &Txn)> = members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.txn.as_ref().map(|t| (i, t)))
        .collect();
    let txns: Vec<&Txn> = with_txn.iter().map(|(_, t)| *t).collect();
    let mut kept = Vec::new();
    for ((i, txn), plan) in with_txn.iter().zip(kv::group::check(tx, &txns).await?) {
        match plan {
            Ok(plan) => kept.push((*txn, plan)),
            Err(error) => refused[*i] = Some(Refused::from(error)),
        }
    }
    let marks: Vec<super::super::Delivered<'_>> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| refused[*i].is_none())
        .filter_map(|(_, m)| m.finish.as_ref()?.delivery())
        .collect();
    let statements = writes(&kept, &marks);
    let marked: Vec<events::Marked> = crate::db::sql::batch(tx, statements).await?;
    if marked.len() != marks.len() {
        return Err(Failed::ClaimLost);
    }
    Ok(refused
        .into_iter()
        .map(|r| match r {
            Some(refused) => Err(refused),
            None => Ok(()),
        })
        .collect())
}

#[cfg(test)]
mod tests;
