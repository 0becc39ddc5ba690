//! Activation (开卡): Alipay's callback after a consumer confirms the card form →
//! `alipay.system.oauth.token` → `…activateform.query` → `…card.open` → the member is stored and
//! lands on a themed page showing the card.
//!
//! Invariant: one member and one card per Alipay user. The user's key (`ix/user/…`) is claimed
//! before the card is opened, and the card is opened with an `out_serial_no` derived from the
//! member id, so a repeated or concurrent callback opens no second card.

use serde_json::{Value, json};
use trellis_host_api::prelude::*;

use crate::card::Card;
use crate::levels::Levels;
use crate::members::{self, CardSync, Member};
use crate::util;

struct Shown<'a> {
    status: u16,
    outcome: &'a str,
    member: Option<&'a Member>,
}

fn page(ctx: &Tenant, card: &Card, levels: &Levels, shown: Shown<'_>) -> Result<Response> {
    let design = card.design.as_ref();
    let data = json!({
        "locale": ctx.locale,
        "zh": ctx.locale != "en",
        "outcome": shown.outcome,
        "ok": shown.member.is_some(),
        "card": {
            "show_name": design.map(|d| d.show_name.clone()),
            "brand_name": design.map(|d| d.brand_name.clone()),
            "bg_color": design.map_or_else(|| "rgb(55,112,179)".to_owned(), |d| d.bg_color.clone()),
        },
        "member": shown.member.map(|m| json!({
            "name": m.name,
            "level": levels.name_of(m.level.as_deref()),
            "points": m.points,
            "balance": util::yuan(m.balance),
            "card_no": m.external_card_no,
        })),
    });
    let html = templates::render("activation.hbs", &data)?;
    let mut response = Response::html(shown.status, html);
    response.headers.push(trellis_host_api::Header {
        name: "cache-control".into(),
        value: "no-store".into(),
    });
    Ok(response)
}

fn text(value: &Value, key: &str) -> Option<String> {
    value[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `infos` of `activateform.query`: a string holding a JSON array of one-key objects.
fn form_values(answer: &Value) -> std::collections::BTreeMap<String, String> {
    let list: Vec<Value> = answer["infos"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .or_else(|| answer["infos"].as_array().cloned())
        .unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for item in list {
        if let Value::Object(map) = item {
            for (k, v) in map {
                if let Some(v) = v.as_str() {
                    out.insert(k, v.to_owned());
                }
            }
        }
    }
    out
}

fn valid_param(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

pub fn handle(ctx: &Tenant, request: &Request) -> Result<Response> {
    let levels = Levels::load()?;
    let (card, _) = Card::load()?;
    let refuse = |status, outcome| {
        page(
            ctx,
            &card,
            &levels,
            Shown {
                status,
                outcome,
                member: None,
            },
        )
    };
    let param = |name: &str| request.query_param(name).filter(|v| valid_param(v));
    let (Some(auth_code), Some(request_id)) = (param("auth_code"), param("request_id")) else {
        return refuse(400, "invalid");
    };
    let Some(template_id) = card.template_id.clone() else {
        return refuse(404, "unknown_card");
    };
    if param("template_id").is_some_and(|t| t != template_id) {
        return refuse(404, "unknown_card");
    }
    match open(
        ctx,
        request,
        &card,
        &levels,
        &template_id,
        &auth_code,
        &request_id,
    ) {
        Ok((member, already)) => page(
            ctx,
            &card,
            &levels,
            Shown {
                status: 200,
                outcome: if already { "already" } else { "opened" },
                member: Some(&member),
            },
        ),
        Err(Error::QuotaExceeded(_)) => refuse(403, "full"),
        Err(Error::Upstream(e)) => {
            warn!("activation failed at Alipay: {}", e.message; code = e.code, sub_code = e.sub_code.clone().unwrap_or_default());
            refuse(502, "alipay_failed")
        }
        Err(e) => Err(e),
    }
}

/// Opens the card for the user behind `auth_code`; true when the user was a member already.
fn open(
    ctx: &Tenant,
    request: &Request,
    card: &Card,
    levels: &Levels,
    template_id: &str,
    auth_code: &str,
    request_id: &str,
) -> Result<(Member, bool)> {
    let token = alipay::call_params(
        "alipay.system.oauth.token",
        &alipay::CallOptions {
            params: vec![
                ("grant_type".into(), "authorization_code".into()),
                ("code".into(), auth_code.into()),
            ],
            ..alipay::CallOptions::default()
        },
    )?;
    let access_token =
        text(&token, "access_token").ok_or_else(|| Error::internal("oauth.token gave no token"))?;
    let user_id = text(&token, "user_id");
    let open_id = text(&token, "open_id");
    let user_key = members::user_key(user_id.as_deref(), open_id.as_deref())
        .ok_or_else(|| Error::internal("oauth.token named no user"))?;
    if let Some(member) = members::find_by_user(user_id.as_deref(), open_id.as_deref())?
        && member.biz_card_no.is_some()
    {
        return Ok((member, true));
    }
    let with_token = alipay::CallOptions {
        auth_token: Some(access_token),
        ..alipay::CallOptions::default()
    };
    let form = alipay::call_with(
        "alipay.marketing.card.activateform.query",
        &json!({"biz_type": "MEMBER_CARD", "template_id": template_id, "request_id": request_id}),
        &with_token,
    )?;
    let form = form_values(&form);
    let field = |name: &str| form.get(name).cloned().filter(|v| !v.is_empty());
    let mobile = field("OPEN_FORM_FIELD_MOBILE").filter(|m| members::valid_mobile(m));

    // Claim the user: the first callback decides the member id, later ones reuse it. A member
    // imported earlier with the same mobile (and no card yet) becomes this user's member.
    let id = match kv::get(&user_key)? {
        Some(entry) => String::from_utf8_lossy(&entry.value).into_owned(),
        None => {
            let imported = match &mobile {
                Some(m) => imported_with_mobile(m)?,
                None => None,
            };
            // An imported member is claimed once, by the first user whose form gives its mobile.
            let imported = match imported {
                Some(m) => match kv::compare_and_swap(
                    &format!("claim/{}", m.id),
                    None,
                    user_key.as_bytes(),
                )? {
                    kv::CasOutcome::Stored(_) => Some(m),
                    kv::CasOutcome::Conflict(_) => None,
                },
                None => None,
            };
            let candidate = match imported {
                Some(member) => member.id,
                None if !members::room_for_one(request)? => {
                    return Err(Error::QuotaExceeded(
                        "the merchant's package allows no more members".into(),
                    ));
                }
                None => members::next_id()?,
            };
            match kv::compare_and_swap(&user_key, None, candidate.as_bytes())? {
                kv::CasOutcome::Stored(_) => candidate,
                kv::CasOutcome::Conflict(Some(entry)) => {
                    String::from_utf8_lossy(&entry.value).into_owned()
                }
                kv::CasOutcome::Conflict(None) => {
                    return Err(Error::Conflict("the member is being opened; retry".into()));
                }
            }
        }
    };
    let existing = members::load(&id)?.map(|(m, _)| m);
    if let Some(m) = &existing {
        let mine = (user_id.is_some() && m.user_id == user_id)
            || (open_id.is_some() && m.open_id == open_id);
        if !mine && (m.user_id.is_some() || m.open_id.is_some()) {
            return Err(Error::Conflict(
                "this member belongs to another Alipay user".into(),
            ));
        }
    }
    if let Some(member) = &existing
        && member.biz_card_no.is_some()
    {
        return Ok((member.clone(), true));
    }
    let now = util::now_ms();
    let mut member = existing.clone().unwrap_or_else(|| {
        let mut fresh = members::blank(id.clone(), &card.card_no_prefix(), "alipay");
        fresh.level = levels.level_for(0, None);
        fresh
    });
    member.user_id = user_id.clone();
    member.open_id = open_id.clone();
    if member.name.is_empty() {
        member.name = field("OPEN_FORM_FIELD_NAME")
            .map(|n| n.trim().chars().take(64).collect())
            .unwrap_or_default();
    }
    if member.mobile.is_empty() {
        member.mobile = mobile.clone().unwrap_or_default();
    }
    member.birthday = member.birthday.clone().or_else(|| {
        field("OPEN_FORM_FIELD_BIRTHDAY_WITH_YEAR")
            .or_else(|| field("OPEN_FORM_FIELD_BIRTHDAY"))
            .filter(|b| members::valid_birthday(b))
    });
    member.gender = member.gender.clone().or_else(|| {
        // Stored as members store it (m or f); Alipay's form answers 男 or 女.
        field("OPEN_FORM_FIELD_GENDER")
            .and_then(|g| alipay_gender(&g))
            .map(|g| if g == "MALE" { "m" } else { "f" }.to_owned())
    });
    let valid_date = match card.design.as_ref().and_then(|d| d.validity_days) {
        Some(days) => util::beijing(now + u64::from(days) * 86_400_000),
        None => "2099-12-31 23:59:59".to_owned(),
    };
    let mut ext = json!({
        "external_card_no": member.external_card_no,
        "open_date": util::beijing(now),
        "valid_date": valid_date,
        "point": member.points.to_string(),
        "balance": util::yuan(member.balance),
    });
    if let Some(level) = &member.level {
        ext["level"] = json!(level);
    }
    // `CardUserInfo`: the type is `UID` in both modes; the id is the user id or, for an
    // OpenID-mode app, the open id.
    let user_info = match &user_id {
        Some(uid) => json!({"user_uni_id_type": "UID", "user_uni_id": uid}),
        None => json!({"user_uni_id_type": "UID", "open_id": open_id}),
    };
    let mut member_info = json!({});
    if !member.name.is_empty() {
        member_info["name"] = json!(member.name);
    }
    if let Some(cell) = alipay_cell(&member.mobile) {
        member_info["cell"] = json!(cell);
    }
    // `MerchantMenber`: `birth` is yyyy-MM-dd (a birthday without its year is left out) and
    // `gende` (sic) is MALE or FEMALE.
    if let Some(birth) = member.birthday.as_ref().filter(|b| b.len() == 10) {
        member_info["birth"] = json!(birth);
    }
    if let Some(gender) = member.gender.as_deref().and_then(alipay_gender) {
        member_info["gende"] = json!(gender);
    }
    let opened = alipay::call_with(
        "alipay.marketing.card.open",
        &json!({
            "out_serial_no": format!("open{}{}", util::short_hash(ctx.merchant_id.as_deref().unwrap_or_default()), member.id),
            "card_template_id": template_id,
            "card_user_info": user_info,
            "card_ext_info": ext,
            "member_ext_info": member_info,
        }),
        &with_token,
    )?;
    let biz_card_no = text(&opened["card_info"], "biz_card_no")
        .ok_or_else(|| Error::internal("card.open returned no biz_card_no"))?;
    member.biz_card_no = Some(biz_card_no.clone());
    member.card_sync = CardSync::new("none");
    member.card_sync.succeeded();
    member.card_sync.synced_seq = member.seq;
    member.updated_at_ms = now;
    if existing.is_some() {
        kv::compare_and_swap(
            &format!("ix/card/{biz_card_no}"),
            None,
            member.id.as_bytes(),
        )?;
        let linked = member.clone();
        kv::update::<Member, _>(&members::member_key(&member.id), move |stored| {
            let mut m = stored.unwrap_or_else(|| linked.clone());
            m.user_id = linked.user_id.clone();
            m.open_id = linked.open_id.clone();
            m.biz_card_no = linked.biz_card_no.clone();
            m.card_sync = linked.card_sync.clone();
            if m.name.is_empty() {
                m.name = linked.name.clone();
            }
            m.birthday = m.birthday.clone().or_else(|| linked.birthday.clone());
            m.gender = m.gender.clone().or_else(|| linked.gender.clone());
            // Changed since the card was opened with its values: the card needs them.
            if m.seq != linked.card_sync.synced_seq {
                m.card_sync.state = "pending".into();
            }
            m
        })?;
        if !member.name.is_empty() {
            kv::set_json(&members::name_key(&member.name, &member.id), &1)?;
        }
        if let Ok(m) = members::sync_card(&member.id) {
            member = m;
        } else {
            events::emit("membership.card_sync", &json!({"member_id": member.id}))?;
        }
    } else {
        members::create(&member)?;
    }
    events::emit(
        "member.activated",
        &json!({
            "member_id": member.id,
            "user_id": member.user_id,
            "open_id": member.open_id,
            "level": member.level,
            "external_card_no": member.external_card_no,
            "biz_card_no": member.biz_card_no,
            "opened_at_ms": member.opened_at_ms,
        }),
    )?;
    info!("member activated"; member = member.id.clone());
    Ok((member, false))
}

/// An imported member with exactly this mobile that has no Alipay card yet.
fn imported_with_mobile(mobile: &str) -> Result<Option<Member>> {
    Ok(members::with_mobile(mobile)?
        .into_iter()
        .find(|m| m.biz_card_no.is_none() && m.user_id.is_none() && m.open_id.is_none()))
}

/// A mobile number as `member_ext_info.cell` takes it: digits only. A mainland number keeps
/// its national form (`+86` dropped); any other international number is left out.
fn alipay_cell(mobile: &str) -> Option<String> {
    let national = match mobile.strip_prefix('+') {
        Some(rest) => rest.strip_prefix("86")?,
        None => mobile,
    };
    (!national.is_empty() && national.len() <= 20 && national.bytes().all(|b| b.is_ascii_digit()))
        .then(|| national.to_owned())
}

/// A gender as `member_ext_info.gende` takes it, from the form's 男/女 or a stored m/f.
fn alipay_gender(gender: &str) -> Option<&'static str> {
    match gender.trim().to_ascii_lowercase().as_str() {
        "男" | "m" | "male" => Some("MALE"),
        "女" | "f" | "female" => Some("FEMALE"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_read_alipays_string_holding_json() {
        let answer = json!({"infos": "[{\"OPEN_FORM_FIELD_MOBILE\":\"13552319194\"},{\"OPEN_FORM_FIELD_NAME\":\"李飞\"}]"});
        let values = form_values(&answer);
        assert_eq!(values["OPEN_FORM_FIELD_MOBILE"], "13552319194");
        assert_eq!(values["OPEN_FORM_FIELD_NAME"], "李飞");
        assert!(form_values(&json!({"infos": "not json"})).is_empty());
    }

    #[test]
    fn mobiles_are_sent_as_digits() {
        assert_eq!(alipay_cell("13800000000").as_deref(), Some("13800000000"));
        assert_eq!(
            alipay_cell("+8613800000000").as_deref(),
            Some("13800000000")
        );
        assert_eq!(alipay_cell("+4479460000000"), None);
        assert_eq!(alipay_cell(""), None);
    }

    #[test]
    fn genders_are_sent_as_alipay_spells_them() {
        assert_eq!(alipay_gender("男"), Some("MALE"));
        assert_eq!(alipay_gender("f"), Some("FEMALE"));
        assert_eq!(alipay_gender("x"), None);
    }
}
