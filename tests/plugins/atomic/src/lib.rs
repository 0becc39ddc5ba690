//! Marks, counts and emits, then fails in the way asked for, so the engine's tests can prove
//! that nothing a failed invocation wrote or emitted is kept. Also a read-modify-write counter
//! with compare-and-swap and no retry loop of its own.

use std::hint::black_box;

use trellis_host_api::kv::CasOutcome;
use trellis_host_api::prelude::*;

struct Atomic;

/// The work every mode does before failing: a mark, a count, a sum, an event. It reads its own
/// writes back, which must see them before the commit.
fn apply(id: &str) -> Result<()> {
    if !kv::insert_json(&format!("seen/{id}"), &())? {
        // Already applied: apply once per id.
        return Ok(());
    }
    let applied = kv::increment("applied", 1)?;
    kv::set_json("last", &id)?;
    if kv::get(&format!("seen/{id}"))?.is_none()
        || kv::get_json::<String>("last")?.map(|(v, _)| v).as_deref() != Some(id)
    {
        return Err(Error::internal(
            "a write was not visible to the invocation that made it",
        ));
    }
    events::emit(
        "atomic.applied",
        &serde_json::json!({ "id": id, "applied": applied }),
    )
}

fn fail(mode: &str) -> Result<()> {
    match mode {
        "ok" => Ok(()),
        "error" => Err(Error::internal("failing after the writes, on purpose")),
        "panic" => panic!("panicking after the writes, on purpose"),
        "cpu" => {
            let mut x: u64 = 0;
            loop {
                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "kv_ops" => loop {
            kv::get("anything")?;
        },
        "emit_flood" => loop {
            events::emit("atomic.applied", &serde_json::json!({ "flood": true }))?;
        },
        other => Err(Error::invalid(format!("unknown mode {other}"))),
    }
}

impl Plugin for Atomic {
    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        let payload: serde_json::Value = event.payload_as()?;
        let mode = payload["mode"].as_str().unwrap_or("ok");
        apply(&event.id)?;
        fail(mode)
    }

    fn handle_http(_ctx: &Tenant, request: &Request) -> Result<Response> {
        match request.route.as_str() {
            "/apply/{mode}/{id}" => {
                let mode = request.param("mode").unwrap_or("ok");
                apply(request.param("id").unwrap_or("none"))?;
                if mode == "big" {
                    return Ok(Response::text(200, "x".repeat(128 << 10)));
                }
                fail(mode)?;
                Response::json(200, &serde_json::json!({ "applied": true }))
            }
            "/once/{id}" => {
                let id = request.param("id").unwrap_or("none");
                if !kv::insert_json(&format!("once/{id}"), &())? {
                    return Err(Error::Conflict(format!("{id} was already applied")));
                }
                Response::json(200, &serde_json::json!({ "applied": id }))
            }
            "/count" => {
                let current = kv::get("counter")?;
                let (expected, value) = match &current {
                    None => (None, 0),
                    Some(entry) => (
                        Some(entry.version),
                        String::from_utf8_lossy(&entry.value)
                            .parse::<i64>()
                            .unwrap_or(0),
                    ),
                };
                match kv::compare_and_swap("counter", expected, (value + 1).to_string().as_bytes())?
                {
                    CasOutcome::Stored(_) => Response::json(200, &(value + 1)),
                    CasOutcome::Conflict(_) => Err(Error::Conflict("the counter moved".into())),
                }
            }
            _ => {
                let counter = kv::get("counter")?
                    .map(|e| {
                        String::from_utf8_lossy(&e.value)
                            .parse::<i64>()
                            .unwrap_or(0)
                    })
                    .unwrap_or(0);
                let applied = kv::get_json::<i64>("applied")?.map(|(v, _)| v).unwrap_or(0);
                let mut seen = 0;
                let mut after: Option<String> = None;
                loop {
                    let page = kv::list("seen/", after.as_deref(), 256)?;
                    seen += page.items.len();
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                Response::json(
                    200,
                    &serde_json::json!({ "counter": counter, "applied": applied, "seen": seen }),
                )
            }
        }
    }
}

export_plugin!(Atomic);
