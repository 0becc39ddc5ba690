//! The stamp card's logic, run natively against the SDK's in-memory host: no wasm build.

use serde_json::{Value, json};
use trellis_host_api::testkit::TestHost;

use super::{ROUTES, StampCard};

const ALICE: &str = "2088000000000001";

fn host() -> TestHost {
    TestHost::new()
        .routes(ROUTES)
        .plugin_id("com.example.stamp-card")
        .config(json!({ "goal": 3, "reward": "咖啡", "min_fen": 100 }))
}

fn card(host: &TestHost) -> Value {
    let answer = host
        .http::<StampCard>("GET", &format!("/cards/{ALICE}"), b"")
        .unwrap();
    serde_json::from_slice(&answer.body).unwrap()
}

fn payment(amount_fen: i64) -> Value {
    json!({ "payment_id": "p1", "merchant_id": "m", "store_id": null, "device_id": null,
        "amount_fen": amount_fen, "buyer_id": ALICE, "buyer_open_id": null, "purpose": "sale",
        "plugin_id": null, "out_trade_no": "T1", "trade_no": "2026", "paid_at": null })
}

#[test]
fn a_payment_stamps_once_however_often_it_is_delivered() {
    let host = host();
    for _ in 0..3 {
        host.event_with_id::<StampCard>("e1", "payment.succeeded", payment(500))
            .unwrap();
    }
    assert_eq!(card(&host), json!({ "stamps": 1, "rewards": 0 }));
    // Below the minimum: no stamp.
    host.event::<StampCard>("payment.succeeded", payment(99))
        .unwrap();
    assert_eq!(card(&host)["stamps"], 1);
}

#[test]
fn a_full_card_emits_the_reward_and_starts_over() {
    let host = host();
    host.event::<StampCard>("member.activated", json!({ "user_id": ALICE }))
        .unwrap();
    for id in ["e1", "e2"] {
        host.event_with_id::<StampCard>(id, "payment.succeeded", payment(500))
            .unwrap();
    }
    assert_eq!(card(&host), json!({ "stamps": 0, "rewards": 1 }));
    assert_eq!(
        host.emitted(),
        [(
            "stamps.rewarded".to_owned(),
            json!({ "buyer": ALICE, "reward": "咖啡", "rewards": 1 })
        )]
    );
}

#[test]
fn staff_stamps_apply_once_per_request_and_bad_input_keeps_nothing() {
    let host = host();
    let path = format!("/cards/{ALICE}/stamps");
    let first = host
        .http::<StampCard>("POST", &path, br#"{"request_id": "r1", "stamps": 2}"#)
        .unwrap();
    let again = host
        .http::<StampCard>("POST", &path, br#"{"request_id": "r1", "stamps": 2}"#)
        .unwrap();
    let body =
        |r: &trellis_host_api::Response| -> Value { serde_json::from_slice(&r.body).unwrap() };
    assert_eq!(body(&first), json!({ "stamps": 2, "repeated": false }));
    assert_eq!(body(&again), json!({ "stamps": null, "repeated": true }));
    let refused = host.http::<StampCard>("POST", &path, br#"{"request_id": "r2", "stamps": 9}"#);
    assert!(matches!(
        refused,
        Err(trellis_host_api::Error::InvalidField(_))
    ));
    assert_eq!(card(&host)["stamps"], 2);
    assert!(
        host.keys().iter().all(|k| !k.contains("r2")),
        "{:?}",
        host.keys()
    );
}

#[test]
fn the_members_page_renders_the_card_in_the_theme() {
    let host = host();
    host.event::<StampCard>("payment.succeeded", payment(500))
        .unwrap();
    let page = host
        .http::<StampCard>("GET", &format!("/card/{ALICE}"), b"")
        .unwrap();
    assert_eq!(page.status, 200);
    let (template, data) = host.rendered().pop().unwrap();
    assert_eq!(template, "card.hbs");
    assert_eq!(
        (data["stamps"].clone(), data["goal"].clone()),
        (json!(1), json!(3))
    );
    // A buyer id with a slash cannot reach another key.
    host.http::<StampCard>("DELETE", "/cards/..%2Fstamps", b"")
        .unwrap();
    assert_eq!(card(&host)["stamps"], 1);
}
