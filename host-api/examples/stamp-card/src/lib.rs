//! A stamp card: one stamp per payment of at least `min_fen` (once per payment), one to welcome
//! each new member, stamps by hand from the staff (once per request id), and `stamps.rewarded`
//! when a card is full; members see their card on a themed page.

use serde::Deserialize;
use serde_json::json;
use trellis_host_api::prelude::*;

#[derive(Deserialize)]
struct Config {
    goal: i64,
    reward: String,
    min_fen: i64,
}

/// A member, by the id Alipay gives the merchant's app.
#[derive(Deserialize)]
struct Member {
    user_id: Option<String>,
    open_id: Option<String>,
}

/// Adds `n` stamps to `buyer`'s card; a full card starts over and emits the reward.
fn stamp(buyer: &str, n: i64) -> Result<i64> {
    let config: Config = config::get()?;
    let stamps = kv::increment(&kv::key(&["stamps", buyer]), n)?;
    if stamps >= config.goal {
        kv::increment(&kv::key(&["stamps", buyer]), -config.goal)?;
        let rewards = kv::increment(&kv::key(&["rewards", buyer]), 1)?;
        events::emit(
            "stamps.rewarded",
            &json!({ "buyer": buyer, "reward": config.reward, "rewards": rewards }),
        )?;
    }
    Ok(stamps % config.goal)
}

fn count(key: &str) -> Result<i64> {
    Ok(kv::get(key)?
        .and_then(|e| String::from_utf8_lossy(&e.value).parse().ok())
        .unwrap_or(0))
}

routes! {
    GET "/card/{buyer}" member => card,
    GET "/cards/{buyer}" staff => card_json,
    POST "/cards/{buyer}/stamps" staff => stamp_by_hand,
    DELETE "/cards/{buyer}" merchant => reset,
}

fn card(_ctx: &Tenant, request: &Request) -> Result<Response> {
    let buyer = request.param("buyer").unwrap_or_default();
    let config: Config = config::get()?;
    let html = templates::render(
        "card.hbs",
        &json!({
            "title": config.reward, "goal": config.goal, "reward": config.reward,
            "stamps": count(&kv::key(&["stamps", buyer]))?, "rewards": count(&kv::key(&["rewards", buyer]))?,
        }),
    )?;
    Ok(Response::html(200, html))
}

fn card_json(_ctx: &Tenant, request: &Request) -> Result<Response> {
    let buyer = request.param("buyer").unwrap_or_default();
    Response::json(
        200,
        &json!({
            "stamps": count(&kv::key(&["stamps", buyer]))?, "rewards": count(&kv::key(&["rewards", buyer]))?,
        }),
    )
}

/// `{"request_id": "…", "stamps": 1..=5}`: applied once per request id.
fn stamp_by_hand(_ctx: &Tenant, request: &Request) -> Result<Response> {
    #[derive(Deserialize)]
    struct Input {
        request_id: String,
        stamps: i64,
    }
    let input: Input = request.json()?;
    if !(1..=5).contains(&input.stamps) {
        return Err(Error::field("/stamps", "stamp 1 to 5 at a time"));
    }
    let buyer = request.param("buyer").unwrap_or_default();
    let applied = kv::once("staff", &input.request_id, || stamp(buyer, input.stamps))?;
    Response::json(
        200,
        &json!({ "stamps": applied, "repeated": applied.is_none() }),
    )
}

fn reset(_ctx: &Tenant, request: &Request) -> Result<Response> {
    let buyer = request.param("buyer").unwrap_or_default();
    kv::delete(&kv::key(&["stamps", buyer]))?;
    Ok(Response::text(200, "reset"))
}

struct StampCard;

impl Plugin for StampCard {
    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        kv::once("event", &event.id, || match event.kind.as_str() {
            "payment.succeeded" => {
                let paid: payloads::Payment = event.payload_as()?;
                let config: Config = config::get()?;
                match paid.buyer_id.or(paid.buyer_open_id) {
                    Some(buyer) if paid.amount_fen >= config.min_fen => stamp(&buyer, 1).map(drop),
                    _ => Ok(()),
                }
            }
            _ => {
                let member: Member = event.payload_as()?;
                let buyer = member
                    .user_id
                    .or(member.open_id)
                    .ok_or_else(|| Error::invalid("no buyer"))?;
                stamp(&buyer, 1).map(drop)
            }
        })?;
        Ok(())
    }

    fn handle_http(ctx: &Tenant, request: &Request) -> Result<Response> {
        routes(ctx, request)
    }
}

export_plugin!(StampCard);

#[cfg(test)]
mod tests;
