//! One component packed as two plugins, a caller and a callee, to exercise what host-api 0.2
//! adds: the tenant context, batched kv, calls to another plugin's routes and payments.

use serde_json::{Value, json};
use trellis_host_api::Header;
use trellis_host_api::kv::{BatchOutcome, Write};
use trellis_host_api::payments::NewTrade;
use trellis_host_api::plugins::Request as Call;
use trellis_host_api::prelude::*;

struct Neighbours;

const CALLEE: &str = "test.trellis.callee";
const MEMBERSHIP: &str = "com.trellis.membership";

fn context() -> Value {
    let c = tenant::current();
    json!({
        "partner_id": c.partner_id,
        "merchant_id": c.merchant_id,
        "store_id": c.store_id,
        "installation_id": c.installation_id,
        "invocation_id": c.invocation_id,
        "locale": c.locale,
        "origin": c.origin,
        "max_members": c.quotas.max_members,
        "events_per_day": c.quotas.events_per_day,
        "caller": c.caller,
    })
}

fn batch() -> Result<Value> {
    let first = kv::write_many(&[Write::insert("a", "1"), Write::put("b", "2")])?;
    let BatchOutcome::Stored(versions) = first else {
        return Err(Error::internal("the first batch should be stored"));
    };
    // Its second write expects a version `a` is not at: nothing of it may be written.
    let second = kv::write_many(&[
        Write::insert("c", "3"),
        Write::put("a", "changed").at(versions[0] + 1_000),
    ])?;
    let conflict_at = match second {
        BatchOutcome::Conflict((index, _)) => index,
        BatchOutcome::Stored(_) => return Err(Error::internal("the second batch was stored")),
    };
    let read = kv::get_many(&["a".into(), "b".into(), "c".into()])?;
    let values: Vec<Option<String>> = read
        .into_iter()
        .map(|e| e.map(|e| String::from_utf8_lossy(&e.value).into_owned()))
        .collect();
    Ok(json!({ "versions": versions, "conflict_at": conflict_at, "values": values }))
}

fn ask(what: &str, buyer: Option<&str>) -> Result<Response> {
    let (plugin, path) = match (what, buyer) {
        ("lookup", Some(buyer)) => (CALLEE, format!("/lookup/{buyer}")),
        ("call-back", None) => (CALLEE, "/call-back".into()),
        ("private", None) => (CALLEE, "/private".into()),
        ("undeclared", None) => (CALLEE, "/secret".into()),
        ("member", Some(buyer)) => (MEMBERSHIP, format!("/members/by-buyer/{buyer}")),
        ("claim", None) => (MEMBERSHIP, "/claim-link/url".into()),
        _ => return Err(Error::not_found("no such question")),
    };
    let answer = plugins::call(
        plugin,
        &Call {
            method: "GET".into(),
            path,
            query: String::new(),
            headers: vec![Header {
                name: "x-trellis-origin".into(),
                value: "https://forged.example".into(),
            }],
            body: Vec::new(),
        },
    );
    match answer {
        Ok(response) => Response::json(
            200,
            &json!({
                "status": response.status,
                "body": serde_json::from_slice::<Value>(&response.body).unwrap_or(Value::Null),
            }),
        ),
        Err(error) => Response::json(200, &json!({ "error": format!("{error:?}") })),
    }
}

fn lookup(request: &Request, buyer: &str) -> Result<Response> {
    let count = kv::increment(&format!("lookups/{buyer}"), 1)?;
    Response::json(
        200,
        &json!({
            "buyer": buyer,
            "lookups": count,
            "context": context(),
            "origin_header": request.header("x-trellis-origin"),
        }),
    )
}

fn trade_json(t: &trellis_host_api::payments::Trade) -> Value {
    json!({
        "id": t.id, "out_trade_no": t.out_trade_no, "trade_no": t.trade_no, "status": t.status,
        "scene": t.scene, "amount_fen": t.amount_fen, "refunded_fen": t.refunded_fen,
        "subject": t.subject, "purpose": t.purpose, "store_id": t.store_id, "plugin": t.plugin,
        "qr_code": t.qr_code, "created_at_ms": t.created_at_ms, "paid_at_ms": t.paid_at_ms,
    })
}

fn pay(request: &Request) -> Result<Response> {
    let body: Value = request.json()?;
    let mut trade = NewTrade::new(
        body["amount_fen"].as_u64().unwrap_or(0),
        body["subject"].as_str().unwrap_or_default(),
    );
    trade.store_id = body["store_id"].as_str().map(str::to_owned);
    trade.purpose = body["purpose"].as_str().map(str::to_owned);
    Response::json(201, &trade_json(&payments::precreate(&trade)?))
}

fn list(request: &Request) -> Result<Response> {
    let number = |name: &str| {
        request
            .query_param(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let page = payments::list(
        number("from"),
        number("to"),
        request.query_param("after").as_deref(),
        u32::try_from(number("limit")).unwrap_or(10),
    )?;
    Response::json(
        200,
        &json!({
            "trades": page.trades.iter().map(trade_json).collect::<Vec<_>>(),
            "next": page.next,
        }),
    )
}

fn refund(request: &Request, id: &str) -> Result<Response> {
    let body: Value = request.json()?;
    let receipt = payments::refund(
        id,
        body["amount_fen"].as_u64().unwrap_or(0),
        body["request_no"].as_str().unwrap_or_default(),
        body["reason"].as_str(),
    )?;
    Response::json(
        200,
        &json!({
            "id": receipt.id, "request_no": receipt.request_no,
            "amount_fen": receipt.amount_fen, "status": receipt.status,
        }),
    )
}

impl Plugin for Neighbours {
    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        if event.kind == "neighbours.ask" {
            // What the callee emits continues this event's chain.
            plugins::call(
                CALLEE,
                &Call {
                    method: "POST".into(),
                    path: "/emit".into(),
                    query: String::new(),
                    headers: Vec::new(),
                    body: Vec::new(),
                },
            )?;
            return Ok(());
        }
        // The engine's payload, typed by the SDK; kept once per payment.
        let paid: payloads::Payment = event.payload_as()?;
        kv::once("payment", &paid.payment_id, || {
            kv::set_json(
                &kv::key(&["paid", &paid.payment_id]),
                &json!({ "amount_fen": paid.amount_fen, "plugin_id": paid.plugin_id,
                    "purpose": paid.purpose, "out_trade_no": paid.out_trade_no }),
            )
        })?;
        Ok(())
    }

    fn handle_http(_ctx: &Tenant, request: &Request) -> Result<Response> {
        let param = |name: &str| request.param(name).unwrap_or_default();
        match (request.method.as_str(), request.route.as_str()) {
            ("GET", "/context") => Response::json(200, &context()),
            ("GET", "/ask-many/{n}") => {
                // `n` calls to the callee's cheapest route, for the call-overhead benchmark.
                let n: u32 = param("n").parse().unwrap_or(0);
                for _ in 0..n.min(20) {
                    plugins::call(
                        CALLEE,
                        &Call {
                            method: "GET".into(),
                            path: "/echo".into(),
                            query: String::new(),
                            headers: Vec::new(),
                            body: Vec::new(),
                        },
                    )?;
                }
                Response::json(200, &json!({ "calls": n.min(20) }))
            }
            ("GET", "/echo") => Ok(Response::text(200, "")),
            ("POST", "/emit") => {
                events::emit("neighbours.echoed", &json!({}))?;
                Ok(Response::text(200, ""))
            }
            ("POST", "/batch") => Response::json(200, &batch()?),
            ("GET", "/ask/{what}") => ask(param("what"), None),
            ("GET", "/ask/{what}/{buyer}") => ask(param("what"), Some(param("buyer"))),
            ("GET", "/lookup/{buyer}") => lookup(request, param("buyer")),
            ("GET", "/call-back") => {
                let answer = plugins::get_json::<Value>("test.trellis.caller", "/context");
                Response::json(200, &json!({ "error": format!("{:?}", answer.err()) }))
            }
            ("GET", "/private" | "/secret") => Response::json(200, &json!({ "private": true })),
            ("GET", "/lookups/{buyer}") => Response::json(
                200,
                &json!({ "lookups": kv::get_json::<i64>(&format!("lookups/{}", param("buyer")))?.map(|(n, _)| n) }),
            ),
            ("POST", "/pay") => pay(request),
            ("GET", "/pay/{id}") => {
                Response::json(200, &trade_json(&payments::query(param("id"))?))
            }
            ("GET", "/payments") => list(request),
            ("POST", "/pay/{id}/refund") => refund(request, param("id")),
            ("GET", "/paid/{id}") => match kv::get_json::<Value>(&kv::key(&["paid", param("id")]))?
            {
                Some((paid, _)) => Response::json(200, &paid),
                None => Err(Error::not_found("not paid yet")),
            },
            _ => Err(Error::not_found(request.route.clone())),
        }
    }
}

export_plugin!(Neighbours);
