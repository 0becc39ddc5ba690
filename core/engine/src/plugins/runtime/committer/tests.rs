use std::collections::HashMap;

use chrono::{Duration, Utc};
use sea_orm::ConnectionTrait;

use super::super::super::{BoxFuture, Delivered, FinishError};
use super::*;
use crate::db::sql;
use crate::events::{Claimed, Limits, NewEvent, Room};
use crate::plugins::kv::{Cas, Namespace, Store};
use crate::plugins::manifest::KvQuota;
use crate::tenancy::{NodeKind, Place};

/// Marks its delivery, as the catalog's finishing work does.
struct Marking {
    claim: Claimed,
    owner: String,
}

impl Finish for Marking {
    fn has_work(&self, _: &[Emitted]) -> bool {
        true
    }

    fn write<'a>(
        &'a self,
        tx: &'a DatabaseTransaction,
        _: &'a [Emitted],
    ) -> BoxFuture<'a, Result<(), FinishError>> {
        Box::pin(async move {
            match events::delivered(tx, &self.claim, &self.owner, Utc::now()).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(FinishError::Lost("lost".into())),
                Err(e) => Err(FinishError::Db(DbErr::Custom(e.to_string()))),
            }
        })
    }

    fn discard(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn delivery(&self) -> Option<Delivered<'_>> {
        Some(Delivered {
            claim: &self.claim,
            owner: &self.owner,
            quota: None,
            now: Utc::now(),
        })
    }
}

fn merchant(id: &str) -> Place {
    Place {
        id: id.to_owned(),
        kind: NodeKind::Merchant,
        partner_id: Some("p".into()),
        agent_id: None,
        merchant_id: Some(id.to_owned()),
        store_id: None,
    }
}

async fn count(db: &impl ConnectionTrait, sql: &str) -> u64 {
    sql::query(sql, []).count(db).await.unwrap()
}

#[tokio::test]
async fn a_run_whose_deadline_passes_while_it_waits_in_the_queue_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db::test_sqlite(dir.path()).await.conn;
    let store = Store::database(db.clone());
    let ns = |scope: &str| Namespace {
        installation_id: "i".into(),
        scope_id: scope.into(),
        quota: KvQuota {
            max_keys: 10,
            max_bytes: 1_000,
        },
    };
    let committer = Arc::new(Committer::default());
    // The process's write turn is held elsewhere: the first run's commit waits for it.
    let turn = crate::db::write_turn(&db).await;
    let mut first = Txn::new(ns("a"));
    first.increment(&store, "n", 1).await.unwrap();
    let waiting = {
        let (committer, db) = (committer.clone(), db.clone());
        tokio::spawn(async move {
            committer
                .commit(&db, Some(first), None, Vec::new(), None)
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // The second queues behind it and gives up at its deadline.
    let mut second = Txn::new(ns("b"));
    second.increment(&store, "n", 1).await.unwrap();
    let deadline = Instant::now() + std::time::Duration::from_millis(100);
    let (told, _) = committer
        .commit(&db, Some(second), None, Vec::new(), Some(deadline))
        .await;
    assert!(matches!(told, Err(Refused::Late)), "{told:?}");
    drop(turn);
    assert!(waiting.await.unwrap().0.is_ok());
    // Let the committer pass over the one that gave up.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(store.get(&ns("a"), "n").await.unwrap().unwrap().value, b"1");
    assert_eq!(store.get(&ns("b"), "n").await.unwrap(), None);
}

#[tokio::test]
async fn a_run_alone_whose_namespace_moved_after_its_first_read_is_checked_and_judged_by_its_reads()
{
    crate::db::on_both(alone_and_moved).await;
}

async fn alone_and_moved(db: DatabaseConnection) {
    let store = Store::database(db.clone());
    let ns = Namespace {
        installation_id: "i".into(),
        scope_id: "s".into(),
        quota: KvQuota {
            max_keys: 10,
            max_bytes: 1_000,
        },
    };
    let committer = Committer::default();
    let commit = |txn: Txn| committer.commit(&db, Some(txn), None, Vec::new(), None);
    // Read, then another run commits the key read: the guard fails, the check refuses.
    let mut stale = Txn::new(ns.clone());
    stale.increment(&store, "n", 1).await.unwrap();
    let mut other = Txn::new(ns.clone());
    other.increment(&store, "n", 10).await.unwrap();
    assert!(commit(other).await.0.is_ok());
    let (told, _) = commit(stale).await;
    assert!(
        matches!(told, Err(Refused::Again(ref key)) if key == "n"),
        "{told:?}"
    );
    // Read, then another run commits another key: the check finds its read unchanged.
    let mut reader = Txn::new(ns.clone());
    assert_eq!(reader.get(&store, "x").await.unwrap(), None);
    reader.increment(&store, "x", 1).await.unwrap();
    let mut other = Txn::new(ns.clone());
    other.increment(&store, "y", 1).await.unwrap();
    assert!(commit(other).await.0.is_ok());
    assert!(commit(reader).await.0.is_ok());
    let x = store.get(&ns, "x").await.unwrap().unwrap();
    let y = store.get(&ns, "y").await.unwrap().unwrap();
    assert_eq!(
        (x.value.as_slice(), y.value.as_slice()),
        (&b"1"[..], &b"1"[..])
    );
    assert!(x.version > y.version, "versions rise in commit order");
    assert_eq!(
        store.usage(&ns).await.unwrap(),
        (3, 7),
        "n (\"10\"), x and y: keys and values"
    );
    // A batched read reads no usage: a usage row read after it cannot vouch for it.
    let mut batched = Txn::new(ns.clone());
    let seen = batched.get_many(&store, &["x".to_owned()]).await.unwrap();
    let mut other = Txn::new(ns.clone());
    other.increment(&store, "x", 1).await.unwrap();
    assert!(commit(other).await.0.is_ok());
    batched.increment(&store, "later", 1).await.unwrap();
    let version = seen[0].as_ref().map(|e| e.version);
    let swapped = batched
        .compare_and_swap(&store, "x", version, b"mine")
        .await
        .unwrap();
    assert!(
        matches!(swapped, Cas::Stored(_)),
        "as the transaction sees it"
    );
    let (told, _) = commit(batched).await;
    assert!(
        matches!(told, Err(Refused::Again(ref key)) if key == "x"),
        "{told:?}"
    );
    // Nothing moved: the guarded commit alone.
    let mut quiet = Txn::new(ns.clone());
    quiet.increment(&store, "n", 1).await.unwrap();
    assert!(commit(quiet).await.0.is_ok());
    assert_eq!(store.get(&ns, "n").await.unwrap().unwrap().value, b"11");
}

#[tokio::test]
async fn a_key_assumed_absent_that_is_there_is_refused_alone_and_in_a_group() {
    crate::db::on_both(assumed_absent).await;
}

async fn assumed_absent(db: DatabaseConnection) {
    let store = Store::database(db.clone());
    let ns = |scope: &str| Namespace {
        installation_id: "i".into(),
        scope_id: scope.into(),
        quota: KvQuota {
            max_keys: 10,
            max_bytes: 1_000,
        },
    };
    store
        .compare_and_swap(&ns("a"), "seen/1", None, b"theirs")
        .await
        .unwrap();
    // A count read with its namespace's usage (which vouches for it), and an insert assumed
    // absent, which the usage row cannot vouch for.
    let guess = async |scope: &str| {
        let mut txn = Txn::new(ns(scope)).optimistic(&store);
        txn.increment(&store, "n", 1).await.unwrap();
        let swapped = txn
            .compare_and_swap(&store, "seen/1", None, b"mine")
            .await
            .unwrap();
        assert!(matches!(swapped, Cas::Stored(_)));
        txn
    };
    // Alone: SQLite's guarded hand-off or PostgreSQL's single statement must not hold.
    let committer = Committer::default();
    let (told, _) = committer
        .commit(&db, Some(guess("a").await), None, Vec::new(), None)
        .await;
    assert!(
        matches!(told, Err(Refused::Again(ref key)) if key == "seen/1"),
        "{told:?}"
    );
    // In a group, beside a member whose assumption holds: only that one commits.
    let mut members = Vec::new();
    let mut answers = Vec::new();
    for scope in ["a", "b"] {
        let (reply, answer) = oneshot::channel();
        members.push(Member {
            txn: Some(guess(scope).await),
            finish: None,
            emitted: Vec::new(),
            deadline: None,
            reply,
            taken: Arc::new(AtomicBool::new(true)),
        });
        answers.push(answer);
    }
    commit_group(&db, (&Kept::default(), &Kept::default()), members).await;
    let mut told = Vec::new();
    for answer in answers {
        told.push(answer.await.unwrap().0);
    }
    assert!(
        matches!(told[0], Err(Refused::Again(ref key)) if key == "seen/1") && told[1].is_ok(),
        "{told:?}"
    );
    let value =
        async |scope: &str, key: &str| store.get(&ns(scope), key).await.unwrap().map(|e| e.value);
    assert_eq!(value("a", "seen/1").await, Some(b"theirs".to_vec()));
    assert_eq!(value("a", "n").await, None);
    assert_eq!(value("b", "seen/1").await, Some(b"mine".to_vec()));
    assert_eq!(value("b", "n").await, Some(b"1".to_vec()));
}

#[tokio::test]
async fn a_group_commits_each_member_as_alone_and_one_whose_claim_was_lost_keeps_nothing() {
    crate::db::on_both(|db| async move {
        let store = Store::database(db.clone());
        let (members, answers) = claimed_members(&db, &store, Some(2)).await;
        commit_group(&db, (&Kept::default(), &Kept::default()), members).await;
        let mut told = Vec::new();
        for answer in answers {
            told.push(answer.await.unwrap().0);
        }
        assert!(told[0].is_ok() && told[1].is_ok(), "{told:?}");
        assert!(matches!(told[2], Err(Refused::Lost(_))), "{told:?}");
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM plugin_kv WHERE key = 'handled'").await,
            2
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM event_deliveries WHERE status = 'delivered' AND latency_ms >= 0").await,
            2
        );
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM event_deliveries WHERE status = 'pending'"
            )
            .await,
            1
        );
    })
    .await;
}

#[tokio::test]
async fn a_postgres_group_commits_in_one_statement_all_of_it_or_nothing() {
    let Some(postgres) = crate::db::test_postgres().await else {
        return;
    };
    let db = postgres.db.conn.clone();
    let store = Store::database(db.clone());
    let (members, _answers) = claimed_members(&db, &store, None).await;
    // Another run commits in the second member's namespace after its first read.
    let moved = Namespace {
        installation_id: "i".into(),
        scope_id: members[1].txn.as_ref().unwrap().ids().1,
        quota: KvQuota {
            max_keys: 10,
            max_bytes: 1_000,
        },
    };
    store.increment(&moved, "other", 1).await.unwrap();
    let statement = at_once(&members).expect("every member judged by its usage row");
    let refused = sql::alone_within(&db, statement, None).await.unwrap();
    assert!(
        refused
            .is_err_and(|e| sql::nothing_written(&e) && e.to_string().contains("division by zero")),
        "a namespace moved: the statement's guard fails it"
    );
    let nothing = [
        "SELECT COUNT(*) FROM plugin_kv WHERE key = 'handled'",
        "SELECT COUNT(*) FROM event_deliveries WHERE status = 'delivered'",
    ];
    for sql in nothing {
        assert_eq!(count(&db, sql).await, 0, "{sql}");
    }
    // Without the second member, the others commit at once: keys, usage and marks.
    let members: Vec<Member> = members
        .into_iter()
        .enumerate()
        .filter_map(|(i, m)| (i != 1).then_some(m))
        .collect();
    let statement = at_once(&members).unwrap();
    sql::alone_within(&db, statement, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(&db, nothing[0]).await, 2);
    assert_eq!(count(&db, nothing[1]).await, 2);
    for member in &members {
        let ns = Namespace {
            installation_id: "i".into(),
            scope_id: member.txn.as_ref().unwrap().ids().1,
            quota: KvQuota {
                max_keys: 10,
                max_bytes: 1_000,
            },
        };
        assert_eq!(
            store.get(&ns, "handled").await.unwrap().unwrap().value,
            b"1"
        );
        assert_eq!(
            store.usage(&ns).await.unwrap(),
            (1, 8),
            "one key: \"handled\", \"1\""
        );
    }
    // The same writes again: every namespace has moved since, nothing is written twice.
    let (statement, values) = at_once(&members).unwrap();
    let refused = sql::query(&statement, values).execute(&db).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("division by zero")));
    postgres.drop().await;
}

/// A claimed delivery for each of three merchants, and a member for each that counted it
/// in its merchant's namespace; the member at `lost` finishes as another dispatcher, as if
/// its lease had passed on while it ran.
async fn claimed_members(
    db: &DatabaseConnection,
    store: &Store,
    lost: Option<usize>,
) -> (Vec<Member>, Vec<oneshot::Receiver<Answer>>) {
    for m in ["m1", "m2", "m3"] {
        let event = NewEvent {
            kind: "test.tick".into(),
            place: merchant(m),
            payload: serde_json::Value::Null,
            source: "test".into(),
            occurred_at: Utc::now(),
            depth: 0,
        };
        events::publish(
            db,
            &event,
            &["i".into()],
            None,
            &Limits::default(),
            Utc::now(),
        )
        .await
        .unwrap();
    }
    let room = HashMap::new();
    let room = Room {
        in_flight: &room,
        per_partner: 10,
        least: 1,
    };
    let now = Utc::now() + Duration::seconds(1);
    let claimed = events::claim(
        db,
        "me",
        10,
        room,
        &mut events::Walk::default(),
        Duration::seconds(30),
        8,
        now,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 3);
    let mut members = Vec::new();
    let mut answers = Vec::new();
    for (i, claim) in claimed.into_iter().enumerate() {
        let ns = Namespace {
            installation_id: "i".into(),
            scope_id: claim.place.id.clone(),
            quota: KvQuota {
                max_keys: 10,
                max_bytes: 1_000,
            },
        };
        let mut txn = Txn::new(ns);
        txn.increment(store, "handled", 1).await.unwrap();
        let owner = if lost == Some(i) {
            "someone else"
        } else {
            "me"
        };
        let (reply, answer) = oneshot::channel();
        members.push(Member {
            txn: Some(txn),
            finish: Some(Arc::new(Marking {
                claim,
                owner: owner.into(),
            })),
            emitted: Vec::new(),
            deadline: None,
            reply,
            taken: Arc::new(AtomicBool::new(true)),
        });
        answers.push(answer);
    }
    (members, answers)
}
