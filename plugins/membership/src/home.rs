//! The member's own page (会员中心), opened from the card in the Alipay wallet: the card, level,
//! points, balance, the level's benefits and the recent ledger, on the partner's domain.
//!
//! Invariant: the page shows only the member the engine identified through Alipay for this
//! merchant's app (the route declares `identify = "alipay"`); it never takes a member from the
//! URL, so no link shows anyone another person's card.

use serde_json::json;
use trellis_host_api::prelude::*;

use crate::card::{self, Card};
use crate::levels::Levels;
use crate::members;
use crate::util;

/// This plugin's id, in the page's address (`/m/{merchant}/{PLUGIN}/me`).
pub const PLUGIN: &str = "com.trellis.membership";
/// The page's route.
pub const PATH: &str = "/me";

/// Ledger entries the page shows: a phone screen's worth.
const RECENT: u32 = 10;

pub fn handle(ctx: &Tenant, request: &Request) -> Result<Response> {
    let user_id = request.header("x-trellis-alipay-user-id");
    let open_id = request.header("x-trellis-alipay-open-id");
    if user_id.is_none() && open_id.is_none() {
        return Err(Error::denied(
            "open this page from the membership card in Alipay",
        ));
    }
    let member = members::find_by_user(user_id, open_id)?;
    let (card, _) = Card::load()?;
    let levels = Levels::load()?;
    let design = card.design.as_ref();
    let mut data = json!({
        "zh": ctx.locale != "en",
        "card": {
            "show_name": design.map(|d| d.show_name.clone()),
            "brand_name": design.map(|d| d.brand_name.clone()),
            "bg_color": design.map_or_else(|| "rgb(55,112,179)".to_owned(), |d| d.bg_color.clone()),
        },
    });
    match &member {
        Some(m) => {
            let level = m.level.as_deref().and_then(|id| levels.get(id));
            let (recent, _) = members::ledger(m, None, RECENT)?;
            data["member"] = json!({
                "name": m.name,
                "level": level.map(|l| l.name.clone()),
                "benefits": level.map(|l| l.benefits.clone()).filter(|b| !b.is_empty()),
                "discount": level.and_then(|l| l.discount).filter(|d| *d < 100),
                "points": m.points,
                "balance": util::yuan(m.balance),
                "card_no": m.external_card_no,
            });
            data["ledger"] = json!(
                recent
                    .iter()
                    .map(|e| json!({
                        "at": util::beijing(e.at_ms),
                        "reason": e.reason,
                        "points": signed(e.points),
                        "balance": (e.balance != 0).then(|| format!(
                            "{}{}",
                            if e.balance > 0 { "+" } else { "-" },
                            util::yuan(e.balance.abs())
                        )),
                    }))
                    .collect::<Vec<_>>()
            );
        }
        None => {
            // Not a member yet: the way to become one, where the merchant has a claim link.
            data["claim"] = json!(card::stored_claim().ok().map(|c| c.url));
        }
    }
    let html = templates::render("member-home.hbs", &data)?;
    let mut response = Response::html(200, html);
    // A person's own card: never kept by a shared cache.
    response.headers.push(trellis_host_api::Header {
        name: "cache-control".into(),
        value: "private, no-store".into(),
    });
    Ok(response)
}

fn signed(n: i64) -> Option<String> {
    match n {
        0 => None,
        n if n > 0 => Some(format!("+{n}")),
        n => Some(n.to_string()),
    }
}
