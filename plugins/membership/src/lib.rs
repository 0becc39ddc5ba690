//! Membership: Alipay membership for merchants (商家会员), built only on `trellis-host-api`.
//!
//! Member levels, the membership card (design, sync to Alipay, claim link with its QR code),
//! activation through Alipay's callback, and the merchant's members with a ledger of every
//! change. Every change to a member with an Alipay card is sent to the card (`card.update`);
//! a failed send is retried through this plugin's own `membership.card_sync` event, which the
//! engine redelivers with backoff. The key layout is in `members.rs` and `docs/membership.md`.

use serde::Deserialize;
use serde_json::{Value, json};
use trellis_host_api::prelude::*;

mod activate;
mod card;
mod home;
mod levels;
mod members;
mod util;

use card::{Card, Design};
use levels::{Levels, LevelsInput};
use members::{Adjustment, Member, Search};

struct Membership;

fn merchant(ctx: &Tenant) -> Result<&str> {
    ctx.merchant_id
        .as_deref()
        .ok_or_else(|| Error::invalid("membership works for one merchant at a time"))
}

fn limit(request: &Request, default: u32) -> Result<u32> {
    match request.query_param("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=200).contains(&n) => Ok(n),
            _ => Err(Error::invalid("limit must be 1 to 200")),
        },
    }
}

/// A paging cursor from the query: a key suffix this plugin gave out.
fn cursor(request: &Request, name: &str) -> Result<Option<String>> {
    match request.query_param(name) {
        Some(c) if c.is_empty() || c.len() > 200 => {
            Err(Error::invalid(format!("{name} is not a cursor")))
        }
        other => Ok(other),
    }
}

fn card_view(card: &Card) -> Value {
    json!({
        "design": card.design,
        "revision": card.revision,
        "template_id": card.template_id,
        "sync": card.sync,
    })
}

/// An error answer in the engine's shape, for failures the plugin reports with a body.
fn failure(status: u16, code: &str, message: &str, extra: Value) -> Result<Response> {
    let mut body = json!({"code": code, "message": message});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Response::json(status, &body)
}

/// What follows a change to a member: events, then the card (a failed send is retried later).
fn after_change(
    before: Option<&Member>,
    member: &Member,
    entry: Option<&members::Entry>,
) -> Result<Member> {
    // The entry knows the level the change started from, even if others changed it since.
    let level_from = match entry {
        Some(e) => e.level_from.clone(),
        None => before.and_then(|b| b.level.clone()),
    };
    if (before.is_some() || entry.is_some()) && level_from != member.level {
        events::emit(
            "member.level_changed",
            &json!({
                "member_id": member.id, "from": level_from, "to": member.level,
                "experience": member.experience, "user_id": member.user_id, "open_id": member.open_id,
            }),
        )?;
    }
    if let Some(entry) = entry
        && entry.points != 0
    {
        events::emit(
            "member.points_changed",
            &json!({
                "member_id": member.id, "delta": entry.points, "points": member.points,
                "source": entry.source, "source_id": entry.source_id,
                "user_id": member.user_id, "open_id": member.open_id,
            }),
        )?;
    }
    if member.biz_card_no.is_none() || member.card_sync.state == "synced" {
        return Ok(member.clone());
    }
    match members::sync_card(&member.id) {
        Ok(synced) => Ok(synced),
        Err(e) => {
            warn!("card.update failed; retrying later: {e}"; member = member.id.clone());
            events::emit("membership.card_sync", &json!({"member_id": member.id}))?;
            Ok(members::load(&member.id)?.map_or_else(|| member.clone(), |(m, _)| m))
        }
    }
}

fn member_param(request: &Request) -> Result<(Member, u64)> {
    let id = request.param("id").unwrap_or_default();
    members::load(id)?.ok_or_else(|| Error::not_found(format!("member {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimInput {
    /// `clean` (default) or `legacy`: which callback path Alipay is given.
    #[serde(default)]
    callback: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportInput {
    members: Vec<members::Import>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RecomputeInput {
    #[serde(default)]
    after: Option<String>,
}

/// `member.adjust` from another plugin (card rules): who, by how much, and a request id.
#[derive(Deserialize)]
struct AdjustRequest {
    request_id: String,
    #[serde(default)]
    member_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    open_id: Option<String>,
    #[serde(default)]
    card_no: Option<String>,
    #[serde(default)]
    experience: i64,
    #[serde(default)]
    points: i64,
    #[serde(default)]
    balance: i64,
    #[serde(default)]
    reason: String,
}

impl Plugin for Membership {
    fn handle_http(ctx: &Tenant, request: &Request) -> Result<Response> {
        let merchant = merchant(ctx)?.to_owned();
        match (request.method.as_str(), request.route.as_str()) {
            ("GET", "/activate") => activate::handle(ctx, request),
            ("GET", home::PATH) => home::handle(ctx, request),
            ("GET", "/levels") => Response::json(200, &Levels::load()?),
            ("PUT", "/levels") => {
                let input: LevelsInput = request.json()?;
                let validated = levels::validate(input.levels)?;
                let stored = kv::update::<Levels, _>(levels::KEY, |old| Levels {
                    levels: validated.clone(),
                    revision: old.map_or(1, |o| o.revision + 1),
                })?;
                card::mark_stale()?;
                Response::json(200, &stored)
            }
            ("GET", "/card") => Response::json(200, &card_view(&Card::load()?.0)),
            ("PUT", "/card") => {
                let design: Design = request.json()?;
                let design = card::validate(design)?;
                let (mut card, version) = Card::load()?;
                card.design = Some(design);
                card.revision += 1;
                if card.sync.state == "synced" {
                    card.sync.state = "stale".into();
                }
                card::store(&card, version)?;
                Response::json(200, &card_view(&card))
            }
            ("POST", "/card/images") => {
                let kind = card::image_type(request.header("content-type").unwrap_or_default())
                    .ok_or_else(|| {
                        Error::invalid("send a PNG, JPEG, GIF or BMP image with its content type")
                    })?;
                let usage = request.query_param("use").unwrap_or_default();
                card::check_image(&usage, kind, &request.body)?;
                let name = request
                    .query_param("name")
                    .filter(|n| !n.is_empty() && n.chars().count() <= 64)
                    .unwrap_or_else(|| format!("{usage}.{kind}"));
                let uploaded = alipay::upload_image(&name, kind, &request.body)?;
                Response::json(
                    200,
                    &json!({"image_id": uploaded["image_id"], "image_url": uploaded["image_url"]}),
                )
            }
            ("POST", "/card/sync") => {
                let home = request
                    .header("x-trellis-origin")
                    .map(|origin| format!("{origin}/m/{merchant}/{}{}", home::PLUGIN, home::PATH));
                let card = card::sync(&merchant, &ctx.locale, home.as_deref())?;
                if card.sync.state == "failed" {
                    return failure(
                        502,
                        "alipay_sync_failed",
                        card.sync
                            .error
                            .as_deref()
                            .unwrap_or("Alipay refused the card"),
                        json!({"sub_code": card.sync.sub_code, "card": card_view(&card)}),
                    );
                }
                Response::json(200, &card_view(&card))
            }
            ("GET", "/claim-link") => {
                let claim = card::stored_claim()?;
                let svg = util::qr_svg(&claim.url)?;
                Response::json(200, &json!({"claim": claim, "qr_svg": svg}))
            }
            ("GET", "/claim-link/qr.svg") => {
                let claim = card::stored_claim()?;
                Ok(Response::new(
                    200,
                    "image/svg+xml",
                    util::qr_svg(&claim.url)?,
                ))
            }
            ("POST", "/claim-link") => {
                let input: ClaimInput = if request.body.is_empty() {
                    ClaimInput { callback: None }
                } else {
                    request.json()?
                };
                let legacy = match input.callback.as_deref() {
                    None | Some("clean") => false,
                    Some("legacy") => true,
                    Some(_) => return Err(Error::field("/callback", "must be clean or legacy")),
                };
                let origin = request
                    .header("x-trellis-origin")
                    .filter(|o| o.starts_with("https://") || o.starts_with("http://"))
                    .ok_or_else(|| {
                        Error::Conflict("the partner has no domain for Alipay's callback".into())
                    })?
                    .to_owned();
                let claim = card::apply_claim_link(&origin, legacy, &merchant)?;
                let svg = util::qr_svg(&claim.url)?;
                Response::json(200, &json!({"claim": claim, "qr_svg": svg}))
            }
            ("GET", "/members") => {
                let q = request.query_param("q").map(|q| q.trim().to_owned());
                let by = request.query_param("by");
                let search = match (by.as_deref(), q) {
                    (Some("sync_failing"), _) => Search::SyncFailing,
                    (_, None) => Search::All,
                    (_, Some(q)) if q.is_empty() || q.len() > 64 => {
                        return Err(Error::invalid("q must be 1 to 64 characters"));
                    }
                    (Some("mobile"), Some(q)) => Search::Mobile(q),
                    (Some("name"), Some(q)) => Search::Name(q),
                    (Some("card"), Some(q)) => Search::Card(q),
                    (Some("level"), Some(q)) => Search::Level(q),
                    (None, Some(q)) if q.bytes().all(|b| b.is_ascii_digit() || b == b'+') => {
                        Search::Mobile(q)
                    }
                    (None, Some(q)) => Search::Name(q),
                    (Some(_), _) => {
                        return Err(Error::invalid(
                            "by must be mobile, name, card, level or sync_failing",
                        ));
                    }
                };
                let after = cursor(request, "after")?;
                let (found, next) =
                    members::search(&search, after.as_deref(), limit(request, 50)?)?;
                let levels = Levels::load()?;
                let items: Vec<Value> = found.iter().map(|m| members::view(m, &levels)).collect();
                Response::json(
                    200,
                    &json!({"items": items, "next": next, "total": members::count()?}),
                )
            }
            ("GET", "/members/by-buyer/{buyer}") => {
                let buyer = request.param("buyer").unwrap_or_default();
                let is_user_id = buyer.len() == 16
                    && buyer.starts_with("2088")
                    && buyer.bytes().all(|b| b.is_ascii_digit());
                let found = if is_user_id {
                    members::find_by_user(Some(buyer), None)?
                } else if !buyer.is_empty()
                    && buyer.len() <= 128
                    && buyer.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    members::find_by_user(None, Some(buyer))?
                } else {
                    return Err(Error::invalid(
                        "buyer must be an Alipay user id (2088…) or an OpenID",
                    ));
                };
                let member = found.ok_or_else(|| Error::not_found("no member for this buyer"))?;
                Response::json(
                    200,
                    &json!({"member": members::view(&member, &Levels::load()?)}),
                )
            }
            ("GET", "/claim-link/url") => Response::json(200, &card::stored_claim()?),
            ("GET", "/members/{id}") => {
                let (member, _) = member_param(request)?;
                let after = cursor(request, "ledger_after")?;
                let (ledger, next) =
                    members::ledger(&member, after.as_deref(), limit(request, 50)?)?;
                let levels = Levels::load()?;
                Response::json(
                    200,
                    &json!({"member": members::view(&member, &levels), "ledger": ledger, "ledger_next": next}),
                )
            }
            ("POST", "/members/import") => {
                let input: ImportInput = request.json()?;
                // About ten kv operations a member, within the 1,000 an invocation may make.
                if input.members.is_empty() || input.members.len() > 50 {
                    return Err(Error::field("/members", "send 1 to 50 members at a time"));
                }
                let levels = Levels::load()?;
                let prefix = members::card_prefix()?;
                let max = members::max_members(request);
                let count = members::count()?;
                let mut created = Vec::new();
                let mut skipped = Vec::new();
                let mut accepted = Vec::new();
                for (i, row) in input.members.into_iter().enumerate() {
                    let mobile = row.mobile.trim().to_owned();
                    if let Err(reason) = row.check(&mobile) {
                        skipped.push(json!({"index": i, "reason": reason}));
                        continue;
                    }
                    if !members::with_mobile(&mobile)?.is_empty()
                        || accepted
                            .iter()
                            .any(|(_, m, _): &(_, String, _)| *m == mobile)
                    {
                        skipped.push(json!({"index": i, "reason": "duplicate mobile"}));
                        continue;
                    }
                    if max.is_some_and(|max| count + accepted.len() as i64 >= max) {
                        skipped.push(json!({"index": i, "reason": "member quota reached"}));
                        continue;
                    }
                    accepted.push((i, mobile, row));
                }
                // The new members' ids come first, so the keys their records and card numbers
                // take are read in one host call rather than two per member.
                let mut fresh = Vec::with_capacity(accepted.len());
                for (_, _, row) in &accepted {
                    fresh.push(members::new_member(&levels, &prefix, row.experience)?);
                }
                members::prefetch_new(&fresh)?;
                for ((_, mobile, row), mut member) in accepted.into_iter().zip(fresh) {
                    member.mobile = mobile;
                    member.name = row.name.trim().chars().take(64).collect();
                    member.birthday = row.birthday;
                    member.gender = row.gender;
                    member.points = row.points;
                    member.balance = row.balance;
                    members::create(&member)?;
                    created.push(member.id);
                }
                Response::json(200, &json!({"created": created, "skipped": skipped}))
            }
            ("POST", "/members/{id}/adjustments") => {
                let (before, _) = member_param(request)?;
                let adj: Adjustment = request.json()?;
                adj.check()?;
                let source_id = adj
                    .request_id
                    .clone()
                    .unwrap_or_else(|| ctx.invocation_id.clone());
                let applied = members::apply(&before.id, &adj, "manual", &source_id)?;
                let member = if applied.applied {
                    after_change(Some(&before), &applied.member, applied.entry.as_ref())?
                } else {
                    // A replay: finish what an interrupted first attempt may have left undone.
                    after_change(None, &applied.member, None)?
                };
                let levels = Levels::load()?;
                Response::json(
                    200,
                    &json!({"member": members::view(&member, &levels), "applied": applied.applied, "entry": applied.entry}),
                )
            }
            ("POST", "/members/{id}/card-sync") => {
                let (member, _) = member_param(request)?;
                if member.biz_card_no.is_none() {
                    return Err(Error::Conflict("the member has no Alipay card".into()));
                }
                let levels = Levels::load()?;
                match members::sync_card(&member.id) {
                    Ok(m) => Response::json(200, &json!({"member": members::view(&m, &levels)})),
                    Err(e) => {
                        let m = members::load(&member.id)?.map_or(member, |(m, _)| m);
                        failure(
                            502,
                            "alipay_sync_failed",
                            &e.to_string(),
                            json!({"member": members::view(&m, &levels)}),
                        )
                    }
                }
            }
            ("POST", "/recompute") => {
                let input: RecomputeInput = if request.body.is_empty() {
                    RecomputeInput::default()
                } else {
                    request.json()?
                };
                let levels = Levels::load()?;
                if input.after.as_ref().is_some_and(|a| a.len() > 200) {
                    return Err(Error::field("/after", "is not a cursor"));
                }
                let page = kv::list("m/", input.after.map(|a| format!("m/{a}")).as_deref(), 100)?;
                let (mut processed, mut changed) = (0, 0);
                let mut last = None;
                for item in &page.items {
                    // Each change emits up to two events; an invocation may emit ten.
                    if changed == 4 {
                        break;
                    }
                    let id = item.key.trim_start_matches("m/").to_owned();
                    let before: Member = serde_json::from_slice(&item.entry.value)
                        .map_err(|e| Error::internal(e.to_string()))?;
                    if let Some(after) = members::recompute(&id, &levels)? {
                        after_change(Some(&before), &after, None)?;
                        changed += 1;
                    }
                    processed += 1;
                    last = Some(id);
                }
                let next = if processed < page.items.len() {
                    last
                } else {
                    page.next.map(|k| k.trim_start_matches("m/").to_owned())
                };
                Response::json(
                    200,
                    &json!({"processed": processed, "changed": changed, "next": next}),
                )
            }
            (method, route) => Err(Error::not_found(format!("{method} {route}"))),
        }
    }

    fn handle_event(_ctx: &Tenant, event: &Event) -> Result<()> {
        match event.kind.as_str() {
            "member.adjust" => {
                let req: AdjustRequest = event.payload_as()?;
                if !members::valid_source_id(&req.request_id) {
                    return Err(Error::invalid("member.adjust needs a request_id"));
                }
                let member = match (&req.member_id, &req.card_no) {
                    (Some(id), _) => members::load(id)?.map(|(m, _)| m),
                    (None, Some(no)) => members::find_by_card(no)?,
                    (None, None) => {
                        members::find_by_user(req.user_id.as_deref(), req.open_id.as_deref())?
                    }
                };
                let Some(before) = member else {
                    // Not (yet) a member: nothing to credit, and retrying would not change it.
                    info!("member.adjust for someone who is not a member"; request = req.request_id);
                    return Ok(());
                };
                let adj = Adjustment {
                    experience: req.experience,
                    points: req.points,
                    balance: req.balance,
                    reason: if req.reason.trim().is_empty() {
                        "member.adjust".into()
                    } else {
                        req.reason
                    },
                    request_id: Some(req.request_id.clone()),
                    ..Adjustment::default()
                };
                // A refused request stays refused: retrying it later would credit or debit a
                // member long after the fact, so it is logged and dropped, not failed.
                let applied = match adj
                    .check()
                    .and_then(|()| members::apply(&before.id, &adj, "adjust", &req.request_id))
                {
                    Ok(applied) => applied,
                    Err(
                        e @ (Error::InvalidField(_) | Error::InvalidInput(_) | Error::Conflict(_)),
                    ) => {
                        warn!("member.adjust refused: {e}"; request = req.request_id);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                if applied.applied {
                    after_change(Some(&before), &applied.member, applied.entry.as_ref())?;
                } else {
                    after_change(None, &applied.member, None)?;
                }
                Ok(())
            }
            "membership.card_sync" => {
                let payload: Value = event.payload_as()?;
                let id = payload["member_id"].as_str().unwrap_or_default();
                match members::load(id)? {
                    // Alipay failing again fails the delivery, so the engine retries with backoff.
                    Some(_) => members::sync_card(id).map(|_| ()),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

export_plugin!(Membership);
