use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::*;
use crate::config::Clock;
use crate::tenancy::NodeKind;

async fn database(dir: &std::path::Path) -> DatabaseConnection {
    crate::db::test_sqlite(dir).await.conn
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
    claimed_as(db, "me", batch, room, Utc::now() + Duration::seconds(1)).await
}

/// The merchants of what `owner` claims at `now` with `room`, in claim order.
async fn claimed_as(
    db: &DatabaseConnection,
    owner: &str,
    batch: u32,
    room: Room<'_>,
    now: DateTime<Utc>,
) -> Vec<String> {
    claim(
        db,
        owner,
        batch,
        room,
        &mut Walk::default(),
        Duration::seconds(30),
        8,
        now,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|c| c.place.merchant_id.unwrap_or_default())
    .collect()
}

/// The merchant of the one delivery claimed at `now` with `walk`.
async fn walked_claim(
    db: &DatabaseConnection,
    walk: &mut Walk,
    room: Room<'_>,
    now: DateTime<Utc>,
) -> Vec<String> {
    claim(db, "me", 1, room, walk, Duration::seconds(30), 8, now)
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
    let clock = Clock::from_fn(move || start + Duration::milliseconds(read.load(Ordering::SeqCst)));
    (clock, offset)
}

#[tokio::test]
async fn a_delivery_claimed_to_its_last_attempt_by_dispatchers_that_died_is_buried_dead() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path()).await;
    backlog(&db, &merchant("p-a", "m-a1"), 2, Utc::now()).await;
    let room = HashMap::new();
    // Two claims with attempts to spare, then the last, each holder dying with its lease.
    let mut now = Utc::now() + Duration::seconds(1);
    for _ in 0..2 {
        let claimed = claim(
            &db,
            "gone",
            10,
            Room {
                in_flight: &room,
                per_partner: 10,
                least: 1,
            },
            &mut Walk::default(),
            Duration::seconds(30),
            2,
            now,
        )
        .await
        .unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!(
            bury_abandoned(&db, 2, now).await.unwrap(),
            0,
            "leases still run"
        );
        now += Duration::seconds(31);
    }
    assert_eq!(bury_abandoned(&db, 2, now).await.unwrap(), 2);
    let dead: i64 = sql::query(
        "SELECT COUNT(*) FROM event_deliveries WHERE status = 'dead' AND last_error LIKE 'no outcome recorded%'",
        [],
    )
    .scalar(&db)
    .await
    .unwrap()
    .unwrap();
    assert_eq!(dead, 2);
}

#[tokio::test]
async fn a_merchant_whose_first_deliveries_come_after_a_walk_is_claimed_once_the_walk_is_old() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path()).await;
    backlog(&db, &merchant("p-a", "m-a1"), 10, Utc::now()).await;
    let room = HashMap::new();
    let room = Room {
        in_flight: &room,
        per_partner: 100,
        least: 1,
    };
    let mut walk = Walk::every(std::time::Duration::from_secs(2));
    let now = Utc::now() + Duration::seconds(1);
    assert_eq!(walked_claim(&db, &mut walk, room, now).await, ["m-a1"]);
    // Older than m-a1's, but its merchant came after the walk: not seen yet.
    backlog(
        &db,
        &merchant("p-a", "m-a0"),
        1,
        Utc::now() - Duration::minutes(1),
    )
    .await;
    assert_eq!(walked_claim(&db, &mut walk, room, now).await, ["m-a1"]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let third = walked_claim(&db, &mut walk, room, now).await;
    assert_eq!(third, ["m-a0"]);
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
async fn the_walk_along_the_index_finds_the_groups_a_scan_of_the_backlog_finds() {
    crate::db::on_both(walk_finds_what_a_scan_finds).await;
}

async fn walk_finds_what_a_scan_finds(db: DatabaseConnection) {
    let now = Utc::now();
    backlog(&db, &merchant("p-a", "m-2"), 3, now).await;
    backlog(&db, &merchant("p-a", "m-1"), 1, now).await;
    backlog(&db, &merchant("p-c", "m-3"), 2, now).await;
    let mut partner_level = merchant("p-a", "p-a");
    partner_level.kind = NodeKind::Partner;
    partner_level.merchant_id = None;
    backlog(&db, &partner_level, 2, now).await;
    let mut agent_level = merchant("p-b", "a-1");
    agent_level.kind = NodeKind::Agent;
    agent_level.merchant_id = None;
    agent_level.agent_id = Some("a-1".into());
    backlog(&db, &agent_level, 1, now).await;
    // Delivered ones are not pending.
    backlog(&db, &merchant("p-d", "m-4"), 1, now).await;
    sql::query(
        "UPDATE event_deliveries SET status = 'delivered' WHERE partner_id = 'p-d'",
        [],
    )
    .execute(&db)
    .await
    .unwrap();
    #[derive(sea_orm::FromQueryResult)]
    struct Pair {
        partner_id: String,
        merchant_id: Option<String>,
    }
    let scanned: Vec<Pair> = sql::query(
        "SELECT DISTINCT partner_id, merchant_id FROM event_deliveries WHERE status = 'pending'",
        [],
    )
    .all(&db)
    .await
    .unwrap();
    let mut scanned: Vec<(String, Option<String>)> = scanned
        .into_iter()
        .map(|p| (p.partner_id, p.merchant_id))
        .collect();
    scanned.sort();
    let mut walked: Vec<(String, Option<String>)> = claim::pending_groups(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.partner_id, g.merchant_id))
        .collect();
    walked.sort();
    assert_eq!(walked, scanned);
    assert_eq!(walked.len(), 5);
    sql::query("DELETE FROM event_deliveries", [])
        .execute(&db)
        .await
        .unwrap();
    assert!(claim::pending_groups(&db).await.unwrap().is_empty());
}

/// The merchants of what `owner` claims at `now`, in claim order.
async fn claimed_by(
    db: &DatabaseConnection,
    owner: &str,
    batch: u32,
    now: DateTime<Utc>,
) -> Vec<String> {
    let room = HashMap::new();
    let room = Room {
        in_flight: &room,
        per_partner: usize::MAX,
        least: 1,
    };
    claimed_as(db, owner, batch, room, now).await
}

#[tokio::test]
async fn a_merchant_another_dispatcher_is_working_is_left_to_it_until_its_lease_ends() {
    crate::db::on_both(left_to_the_other_dispatcher).await;
}

async fn left_to_the_other_dispatcher(db: DatabaseConnection) {
    let early = Utc::now() - Duration::minutes(5);
    backlog(&db, &merchant("p-a", "m-a1"), 3, early).await;
    backlog(&db, &merchant("p-a", "m-a2"), 3, Utc::now()).await;
    let now = Utc::now() + Duration::seconds(1);
    assert_eq!(claimed_by(&db, "other", 1, now).await, ["m-a1"]);
    // m-a1's next deliveries are due too, but another dispatcher works m-a1.
    assert_eq!(claimed_by(&db, "me", 10, now).await, ["m-a2"; 3]);
    // A dispatcher goes on with its own merchants and leaves the others'.
    assert_eq!(claimed_by(&db, "other", 10, now).await, ["m-a1"; 2]);
    assert!(claimed_by(&db, "third", 10, now).await.is_empty());
    // Once the leases end (their holders died), anyone takes the merchants up again.
    let later = now + Duration::seconds(31);
    let mut all = claimed_by(&db, "third", 10, later).await;
    all.sort();
    assert_eq!(all, ["m-a1", "m-a1", "m-a1", "m-a2", "m-a2", "m-a2"]);
}

/// What `owner` claims with `walk`, batch `batch`, at `now`.
async fn kept_claim(
    db: &DatabaseConnection,
    owner: &str,
    walk: &mut Walk,
    batch: u32,
    now: DateTime<Utc>,
) -> Vec<Claimed> {
    let in_flight = HashMap::new();
    let room = Room {
        in_flight: &in_flight,
        per_partner: 100,
        least: 1,
    };
    claim(db, owner, batch, room, walk, Duration::seconds(30), 8, now)
        .await
        .unwrap()
}

fn merchants_of(claims: &[Claimed]) -> Vec<String> {
    claims
        .iter()
        .map(|c| c.place.merchant_id.clone().unwrap_or_default())
        .collect()
}

/// Three deliveries due for each of m-a, m-b and m-c (in that order, a second apart);
/// returns a moment when all are due.
async fn three_by_three(db: &DatabaseConnection) -> DateTime<Utc> {
    let early = Utc::now() - Duration::minutes(5);
    for (m, at) in [("m-a", 0), ("m-b", 1), ("m-c", 2)] {
        backlog(db, &merchant("p-a", m), 3, early + Duration::seconds(at)).await;
    }
    Utc::now() + Duration::seconds(1)
}

/// Claims with `walk`, two at a time, until nothing is left: each claim's deliveries.
async fn drained(
    db: &DatabaseConnection,
    walk: &mut Walk,
    now: DateTime<Utc>,
) -> Vec<Vec<Claimed>> {
    let mut claims = Vec::new();
    loop {
        let claimed = kept_claim(db, "me", walk, 2, now).await;
        if claimed.is_empty() {
            return claims;
        }
        claims.push(claimed);
    }
}

#[tokio::test]
async fn claims_from_what_the_last_ranking_found_keep_the_turns_of_a_ranking_each_time() {
    crate::db::on_both(kept_turns).await;
}

async fn kept_turns(db: DatabaseConnection) {
    let now = three_by_three(&db).await;
    let mut walk = Walk::every(std::time::Duration::from_secs(60));
    let claims: Vec<String> = drained(&db, &mut walk, now)
        .await
        .iter()
        .map(|claimed| {
            let mut merchants = merchants_of(claimed);
            merchants.sort();
            merchants.join(" ")
        })
        .collect();
    // A ranking finds twice the batch in turns (each merchant's first due delivery not
    // leased, then each one's second), and the claim after it takes the rest: the first
    // ranking's a1 b1 c1 a2 go in two claims; the next ranking finds a3 b2 c2 b3.
    assert_eq!(claims, ["m-a m-b", "m-a m-c", "m-a m-b", "m-b m-c", "m-c"]);
}

#[tokio::test]
async fn a_kept_delivery_that_failed_elsewhere_meanwhile_waits_for_its_next_attempt() {
    crate::db::on_both(kept_taken_elsewhere).await;
}

async fn kept_taken_elsewhere(db: DatabaseConnection) {
    let now = three_by_three(&db).await;
    let mut mine = Walk::every(std::time::Duration::from_secs(60));
    // Ranks a1 b1 c1 a2, takes a1 b1 and keeps c1 a2.
    let first = kept_claim(&db, "me", &mut mine, 2, now).await;
    assert_eq!(merchants_of(&first), ["m-a", "m-b"]);
    // Another dispatcher takes c1 (m-a and m-b it leaves to me), and it fails: it is due
    // again only after its backoff.
    let theirs = kept_claim(&db, "other", &mut Walk::default(), 1, now).await;
    assert_eq!(merchants_of(&theirs), ["m-c"]);
    failed(&db, &theirs[0], "other", "down", &Backoff::default(), now)
        .await
        .unwrap();
    // Of what I kept, c1 is not due: a2, then a3 from a new ranking (before b2 and c2).
    let next = kept_claim(&db, "me", &mut mine, 2, now).await;
    assert_eq!(merchants_of(&next), ["m-a", "m-a"]);
    let rest: Vec<String> = drained(&db, &mut mine, now)
        .await
        .into_iter()
        .flatten()
        .map(|c| c.delivery_id)
        .collect();
    assert_eq!(rest.len(), 4, "b2 b3 c2 c3");
    assert!(!rest.contains(&theirs[0].delivery_id));
}

#[tokio::test]
async fn what_is_kept_for_a_partner_without_room_does_not_hold_back_the_others() {
    crate::db::on_both(kept_without_room).await;
}

async fn kept_without_room(db: DatabaseConnection) {
    let early = Utc::now() - Duration::minutes(5);
    for i in 0..4 {
        let at = early + Duration::seconds(i);
        backlog(&db, &merchant("p-a", &format!("m-a{i}")), 3, at).await;
        backlog(&db, &merchant("p-b", &format!("m-b{i}")), 3, at).await;
    }
    let now = Utc::now() + Duration::seconds(1);
    let mut walk = Walk::every(std::time::Duration::from_secs(60));
    let claim_with = async |walk: &mut Walk, in_flight: &HashMap<String, usize>| {
        let room = Room {
            in_flight,
            per_partner: 10,
            least: 1,
        };
        claim(&db, "me", 4, room, walk, Duration::seconds(30), 8, now)
            .await
            .unwrap()
    };
    // p-a's slow plugins hold eight of its ten: two of it, two of p-b, the rest kept.
    let busy = HashMap::from([("p-a".to_owned(), 8)]);
    let first = claim_with(&mut walk, &busy).await;
    assert_eq!(first.len(), 4);
    // Now p-a has no room at all: what is kept of it waits, and p-b gets a full claim.
    let full = HashMap::from([("p-a".to_owned(), 10)]);
    let second = claim_with(&mut walk, &full).await;
    let partners: Vec<&str> = second
        .iter()
        .map(|c| c.place.partner_id.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(partners, ["p-b"; 4]);
}

#[tokio::test]
async fn within_a_partner_each_merchant_gets_a_turn_before_any_gets_a_second() {
    crate::db::on_both(turns_within_a_partner).await;
}

async fn turns_within_a_partner(db: DatabaseConnection) {
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
    sql::query(
        "INSERT INTO nodes (id, kind, name, status, created_at, updated_at) VALUES ('p-a', 'partner', 'A', ?, ?, ?)",
        [
            crate::tenancy::NodeStatus::Suspended.as_str().into(),
            Utc::now().into(),
            Utc::now().into(),
        ],
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(claimed_merchants(&db, 10).await, ["m-b1"]);
    assert!(claimed_merchants(&db, 10).await.is_empty());
    sql::query("UPDATE nodes SET status = 'active' WHERE id = 'p-a'", [])
        .execute(&db)
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
    assert_eq!(retry_at, sql::from_millis(sql::millis(start) + 1_000));
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
        &mut Walk::default(),
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
