//! Misbehaves on demand so the engine's containment can be tested: every event kind is one
//! abuse, and `GET /big` answers more than the output limit.

use std::hint::black_box;

use trellis_host_api::prelude::*;

struct Abuse;

/// Recursion whose frames live on the wasm stack (no locals in linear memory): overflows the
/// engine's guest stack limit. Not a tail call, and not a single-operation accumulator, so the
/// compiler cannot turn it into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_mul(3).wrapping_add(depth)
}

/// Recursion with large locals, which Rust keeps on its stack in linear memory: overflows that
/// stack before the wasm one.
#[allow(unconditional_recursion, reason = "the stack overflow is the point")]
fn recurse_frames(depth: u64) -> u64 {
    let frame = [depth as u8; 512];
    black_box(&frame);
    recurse_frames(depth + 1).wrapping_add(u64::from(frame[7]))
}

impl Plugin for Abuse {
    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        match event.kind.as_str() {
            "abuse.ok" => {
                kv::increment("ok", 1)?;
                Ok(())
            }
            "abuse.loop" => {
                let mut x: u64 = 0;
                loop {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            // A fixed amount of work: `rounds` steps of the loop above, then done.
            "abuse.work" => {
                let payload: serde_json::Value = event.payload_as()?;
                let rounds = payload["rounds"].as_u64().unwrap_or(0);
                let mut x: u64 = 0;
                for _ in 0..rounds {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                Ok(())
            }
            // Host work and no guest work: the engine reads 8 MiB of text for every call,
            // and the guest only calls again.
            "abuse.log_big" => {
                let big = "x".repeat(8 << 20);
                loop {
                    trellis_host_api::log::write(
                        trellis_host_api::log::Level::Info,
                        black_box(&big),
                        &[],
                    );
                }
            }
            "abuse.memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "abuse.recurse" => {
                black_box(recurse(black_box(0)));
                Ok(())
            }
            "abuse.recurse_frames" => {
                black_box(recurse_frames(0));
                Ok(())
            }
            "abuse.panic" => panic!("the abuse plugin panics on purpose"),
            "abuse.print_flood" => {
                #[allow(
                    clippy::print_stdout,
                    clippy::print_stderr,
                    reason = "printing is the point"
                )]
                // 80 lines, over the 64 an invocation's log keeps; few enough to stay far below
                // the CPU budget (metered on the wall clock) on a loaded machine.
                for i in 0..40 {
                    println!("out line {i}");
                    eprintln!("err line {i}");
                }
                // One write over what a stream keeps (16 KiB).
                eprintln!("{}", "x".repeat(24 << 10));
                Ok(())
            }
            "abuse.clock" => {
                use std::hash::{BuildHasher, Hasher};
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default();
                // RandomState is seeded from WASI randomness.
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u64(1);
                info!("clock"; now_ms = now, random = hasher.finish());
                Ok(())
            }
            "abuse.emit_undeclared" => events::emit("payment.refunded", &serde_json::json!({})),
            "abuse.template_undeclared" => templates::render("secret.hbs", &()).map(drop),
            "abuse.alipay_outside" => alipay::call(
                "alipay.trade.refund",
                &serde_json::json!({ "out_trade_no": "1" }),
            )
            .map(drop),
            "abuse.alipay_allowed" => alipay::call(
                "alipay.marketing.card.template.create",
                &serde_json::json!({ "request_id": "abuse-1", "card_type": "OUT_MEMBER_CARD" }),
            )
            .map(drop),
            "abuse.kv_flood" => {
                for i in 0.. {
                    kv::set_json(&format!("flood/{i:04}"), &"x".repeat(100))?;
                }
                Ok(())
            }
            "abuse.kv_ops" => loop {
                kv::get("anything")?;
            },
            "abuse.emit_flood" => loop {
                events::emit("abuse.done", &serde_json::json!({}))?;
            },
            other => Err(Error::invalid(format!("unknown abuse {other}"))),
        }
    }

    fn handle_http(_ctx: &Tenant, request: &Request) -> Result<Response> {
        match request.route.as_str() {
            "/big" => Ok(Response::text(200, "x".repeat(2 << 20))),
            "/headers" => {
                let names: Vec<&str> = request.headers.iter().map(|h| h.name.as_str()).collect();
                let mut response = Response::json(200, &names)?;
                response.headers.push(trellis_host_api::Header {
                    name: "set-cookie".into(),
                    value: "trellis_session=stolen; Path=/".into(),
                });
                Ok(response)
            }
            // Data for its console page: every string is markup or script.
            "/page" => Response::json(
                200,
                &serde_json::json!({
                    "items": [{
                        "id": "\"><script>alert('id')</script>",
                        "name": "<script>alert('name')</script>",
                        "html": "<img src=x onerror=alert('html')>",
                    }],
                    "next": "\"><script>alert('next')</script>",
                    "url": "javascript:alert('qr')",
                }),
            ),
            // What the tiers above a merchant see of it.
            "/agent" | "/partner" => Response::json(
                200,
                &serde_json::json!({ "seen_by": request.route.trim_start_matches('/') }),
            ),
            _ => Ok(Response::text(200, "small")),
        }
    }
}

export_plugin!(Abuse);
