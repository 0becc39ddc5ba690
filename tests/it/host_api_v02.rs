//! What `trellis:plugin@0.2.0` adds, through the engine's own doors on both databases: the
//! tenant context, batched kv, plugin-to-plugin calls (declared, entitled, one hop, the caller
//! named) and the merchant's payments (tagged with the plugin, within the merchant, refunded
//! only by the plugin that created them) — with the committed 0.1 `hello` component running
//! unchanged beside them.

use serde_json::json;
use trellis_tests::{Engine, create_node, databases, fixtures};

use crate::payments::{ENV, Shop, consumer_pays, shop, until_paid};

const CALLER: &str = "test.trellis.caller";
const CALLEE: &str = "test.trellis.callee";
const HELLO_01: &str = "test.trellis.hello-v01";
const BUYER: &str = "2088000000000001";

/// The caller for the shop's merchant and the other merchant, the callee and the 0.1 `hello`
/// for the shop's merchant only.
async fn install(s: &Shop) {
    let branch = (s.partner.as_str(), s.agent.as_str());
    fixtures::entitle(
        &s.root,
        branch,
        &[&s.merchant, &s.other],
        (
            "tests/plugins/neighbours",
            "trellis_fixture_neighbours",
            CALLER,
        ),
    )
    .await;
    fixtures::entitle(
        &s.root,
        branch,
        &[&s.merchant],
        (
            "tests/plugins/neighbours/callee",
            "trellis_fixture_neighbours",
            CALLEE,
        ),
    )
    .await;
    fixtures::entitle(
        &s.root,
        branch,
        &[&s.merchant],
        (
            "tests/components/hello-0.1",
            "tests/components/hello-0.1/hello.wasm",
            HELLO_01,
        ),
    )
    .await;
}

fn route(merchant: &str, plugin: &str, path: &str) -> String {
    format!("/api/v1/merchants/{merchant}/plugins/{plugin}{path}")
}

#[tokio::test]
async fn plugins_call_each_other_only_as_declared_for_a_merchant_entitled_to_both() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &ENV);
        let s = shop(&engine, &db.url()).await;
        install(&s).await;
        let caller = |path: &str| route(&s.merchant, CALLER, path);

        // The tenant context as typed values, the engine's facts included.
        let context = s.root.get(&caller("/context")).await.ok().body;
        assert_eq!(context["merchant_id"], s.merchant.as_str(), "{label}");
        assert_eq!(context["partner_id"], s.partner.as_str(), "{label}");
        assert!(
            context["origin"]
                .as_str()
                .is_some_and(|o| o.ends_with("://p1.test")),
            "{label}: {context}"
        );
        assert!(context["caller"].is_null(), "{label}: {context}");

        // Batched kv: a batch is written whole, a refused one not at all.
        let batch = s.root.post(&caller("/batch"), json!({})).await.ok().body;
        assert_eq!(batch["conflict_at"], 1, "{label}: {batch}");
        assert_eq!(batch["values"], json!(["1", "2", null]), "{label}: {batch}");

        // A declared call: the callee sees who calls, for which merchant, and the engine's
        // origin rather than the one the caller tried to forge; its write is its own.
        for expected in 1..=2 {
            let asked = s
                .root
                .get(&caller(&format!("/ask/lookup/{BUYER}")))
                .await
                .ok()
                .body;
            assert_eq!(asked["status"], 200, "{label}: {asked}");
            let answer = &asked["body"];
            assert_eq!(answer["lookups"], expected, "{label}: {asked}");
            assert_eq!(answer["context"]["caller"], CALLER, "{label}: {asked}");
            assert_eq!(
                answer["context"]["merchant_id"],
                s.merchant.as_str(),
                "{label}"
            );
            assert_eq!(
                answer["origin_header"], context["origin"],
                "{label}: the forged x-trellis-origin is dropped: {asked}"
            );
        }
        let kept = s
            .root
            .get(&route(&s.merchant, CALLEE, &format!("/lookups/{BUYER}")))
            .await
            .ok()
            .body;
        assert_eq!(kept["lookups"], 2, "{label}: {kept}");

        // What is refused, and why.
        for (what, needle) in [
            ("call-back", "cannot call plugins in turn"),
            ("private", "no route GET /private for plugins"),
            (
                "undeclared",
                "does not declare a call to test.trellis.callee GET /secret",
            ),
        ] {
            let asked = s.root.get(&caller(&format!("/ask/{what}"))).await.ok().body;
            let error = asked["error"]
                .as_str()
                .or_else(|| asked["body"]["error"].as_str())
                .unwrap_or_default();
            assert!(error.contains(needle), "{label}: {what}: {asked}");
        }
        // A plugin route is for plugins only: no person reaches it at any door.
        let direct = s
            .root
            .get(&route(&s.merchant, CALLEE, &format!("/lookup/{BUYER}")))
            .await;
        assert_eq!(direct.status, 404, "{label}: {direct:?}");
        // The other merchant holds the caller but not the callee.
        let refused = s
            .root
            .get(&route(&s.other, CALLER, &format!("/ask/lookup/{BUYER}")))
            .await
            .ok()
            .body;
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("not entitled")),
            "{label}: {refused}"
        );

        // A call made while handling an event continues that event's chain: what the callee
        // emits is in the same chain at the caller's depth, as if the caller had emitted it, so
        // calls cannot restart a loop's count.
        let asked = s
            .root
            .post(
                &format!("/api/v1/merchants/{}/events", s.merchant),
                json!({"kind": "neighbours.ask", "payload": {}}),
            )
            .await
            .ok()
            .body;
        let ask_id = asked["event_id"].as_str().unwrap().to_owned();
        trellis_tests::eventually(
            std::time::Duration::from_secs(20),
            "the callee's event is recorded",
            || async {
                let echoed = s
                    .root
                    .get("/api/v1/events?kind=neighbours.echoed")
                    .await
                    .ok()
                    .body;
                match echoed["items"].as_array().and_then(|i| i.first()) {
                    Some(e) if e["root_id"] == ask_id.as_str() && e["depth"] == 1 => Ok(()),
                    _ => Err(format!("{label}: {echoed}")),
                }
            },
        )
        .await;

        // The committed 0.1 component runs unchanged beside them.
        let stats = s.root.get(&route(&s.merchant, HELLO_01, "/stats")).await;
        assert_eq!(stats.status, 200, "{label}: {stats:?}");
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_plugin_takes_payments_for_its_merchant_and_refunds_only_its_own() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &ENV);
        let s = shop(&engine, &db.url()).await;
        install(&s).await;
        let caller = |path: &str| route(&s.merchant, CALLER, path);
        let other_store = create_node(
            &s.root,
            "stores",
            Some(&s.other),
            json!({"name": "Elsewhere"}),
        )
        .await;

        // Bad input and other merchants' stores are refused before anything is recorded.
        let no_store = s
            .owner
            .post(
                &caller("/pay"),
                json!({"amount_fen": 100, "subject": "咖啡"}),
            )
            .await;
        assert_eq!(no_store.status, 400, "{label}: {no_store:?}");
        let elsewhere = s
            .owner
            .post(
                &caller("/pay"),
                json!({"amount_fen": 100, "subject": "咖啡", "store_id": other_store}),
            )
            .await;
        assert_eq!(elsewhere.status, 404, "{label}: {elsewhere:?}");
        let zero = s
            .owner
            .post(
                &caller("/pay"),
                json!({"amount_fen": 0, "subject": "咖啡", "store_id": s.store}),
            )
            .await;
        assert_eq!(zero.status, 400, "{label}: {zero:?}");

        // A QR-code trade, tagged with the plugin, paid by a sandbox consumer.
        let trade = s
            .owner
            .post(
                &caller("/pay"),
                json!({"amount_fen": 1234, "subject": "咖啡", "store_id": s.store,
                    "purpose": "stamp.card"}),
            )
            .await
            .ok()
            .body;
        assert_eq!(trade["plugin"], CALLER, "{label}: {trade}");
        assert_eq!(trade["purpose"], "stamp.card", "{label}: {trade}");
        assert!(trade["qr_code"].is_string(), "{label}: {trade}");
        let id = trade["id"].as_str().unwrap().to_owned();
        let out_trade_no = trade["out_trade_no"].as_str().unwrap().to_owned();
        consumer_pays(&engine, "alice", &out_trade_no, true).await;
        until_paid(&s.owner, &id, label, std::time::Duration::from_secs(20)).await;
        let queried = s.owner.get(&caller(&format!("/pay/{id}"))).await.ok().body;
        assert_eq!(queried["status"], "succeeded", "{label}: {queried}");
        // payment.succeeded reached the plugin, and its payload decoded with the SDK's type.
        trellis_tests::eventually(
            std::time::Duration::from_secs(20),
            "the plugin keeps the payment",
            || async {
                let paid = s.owner.get(&caller(&format!("/paid/{id}"))).await;
                match (
                    paid.status,
                    &paid.body["amount_fen"],
                    &paid.body["plugin_id"],
                ) {
                    (200, amount, plugin) if *amount == 1234 && *plugin == CALLER => Ok(()),
                    _ => Err(format!("{label}: {paid:?}")),
                }
            },
        )
        .await;

        // A trade the cashier made is the merchant's too: listed, but not the plugin's to refund.
        let cashiers = s
            .cashier
            .post(
                &format!("/api/v1/stores/{}/payments", s.store),
                json!({"scene": "precreate", "amount_fen": 500, "subject": "茶"}),
            )
            .await
            .ok()
            .body;
        let now = chrono::Utc::now().timestamp_millis() + 60_000;
        let listed = s
            .owner
            .get(&caller(&format!("/payments?from=0&to={now}&limit=1")))
            .await
            .ok()
            .body;
        assert_eq!(
            listed["trades"].as_array().map(Vec::len),
            Some(1),
            "{label}"
        );
        let next = listed["next"].as_str().unwrap().to_owned();
        let rest = s
            .owner
            .get(&caller(&format!(
                "/payments?from=0&to={now}&limit=10&after={next}"
            )))
            .await
            .ok()
            .body;
        let mut ids: Vec<String> = listed["trades"]
            .as_array()
            .into_iter()
            .chain(rest["trades"].as_array())
            .flatten()
            .filter_map(|t| t["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        let mut expected = vec![id.clone(), cashiers["id"].as_str().unwrap().to_owned()];
        expected.sort();
        assert_eq!(ids, expected, "{label}: both trades, nothing else");
        let not_ours = s
            .owner
            .post(
                &caller(&format!("/pay/{}/refund", cashiers["id"].as_str().unwrap())),
                json!({"amount_fen": 100, "request_no": "r_cashier"}),
            )
            .await;
        assert_eq!(not_ours.status, 403, "{label}: {not_ours:?}");

        // Its own trade: refunded once per request number.
        for _ in 0..2 {
            let refund = s
                .owner
                .post(
                    &caller(&format!("/pay/{id}/refund")),
                    json!({"amount_fen": 234, "request_no": "r_1", "reason": "破损"}),
                )
                .await
                .ok()
                .body;
            assert_eq!(refund["amount_fen"], 234, "{label}: {refund}");
            assert_eq!(refund["request_no"], "r_1", "{label}: {refund}");
        }
        let after = s
            .owner
            .get(&format!("/api/v1/payments/{id}"))
            .await
            .ok()
            .body;
        assert_eq!(after["refunded_fen"], 234, "{label}: {after}");

        // The other merchant's invocation of the same plugin sees none of it.
        let hidden = s
            .root
            .get(&route(&s.other, CALLER, &format!("/pay/{id}")))
            .await;
        assert_eq!(hidden.status, 404, "{label}: {hidden:?}");
        let theirs = s
            .root
            .get(&route(
                &s.other,
                CALLER,
                &format!("/payments?from=0&to={now}&limit=10"),
            ))
            .await
            .ok()
            .body;
        assert_eq!(theirs["trades"], json!([]), "{label}: {theirs}");
        drop(engine);
        db.cleanup().await;
    }
}
