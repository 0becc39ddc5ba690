//! Member cards (alipay.marketing.card.*): templates and their open forms, the activation
//! link, opening, querying, updating and deleting cards, and the images
//! (alipay.offline.material.image.upload) templates show as logo and background.
//!
//! Invariant: one card per template per user; an app sees only its own templates and cards.
//!
//! Sources per method (alipay-sdk-java-all `com.alipay.api.domain`): `AlipayMarketingCardOpenModel`,
//! `CardUserInfo` (user_uni_id_type `UID` with user_uni_id or open_id), `MerchantCard`,
//! `MerchantMenber` (`gende` MALE/FEMALE, `birth` yyyy-MM-dd), `AlipayMarketingCardUpdateModel`,
//! `AlipayMarketingCardFormtemplateSetModel` / `OpenFormFieldDO`,
//! `AlipayMarketingCardActivateurlApplyModel`, `AlipayMarketingCardActivateformQueryModel`;
//! field lengths from Alipay's API pages for each method. `docs/alipay.md` tabulates them.

mod images;
mod rules;

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use trellis_alipay::signing::beijing_timestamp;

use crate::apps::Identity;
use crate::consumers::open_id_for;
use crate::gateway::{GatewayFailure, Outcome, busy, fail};
use crate::schema::{Family, Fields};
use crate::{Sandbox, fastish_number, text};
use rules::{Change, check_template_whole};

impl Sandbox {
    pub(crate) async fn template_create(&self, app_id: &str, biz: &Value) -> Outcome {
        self.check_template_request(app_id, biz, Change::Create)
            .await?;
        check_template_whole(biz)?;
        let request_id = text(biz, "request_id").unwrap_or_default();
        let idempotency = format!("{app_id}:{request_id}");
        if let Some(done) = self
            .store()
            .get("template_request", &idempotency)
            .await
            .map_err(busy)?
        {
            return Ok(json!({ "template_id": done["template_id"] }));
        }
        let template_id = format!("2026{:016}", fastish_number());
        let record = json!({ "app_id": app_id, "template": biz, "form": null });
        self.store()
            .put("template", &template_id, &record)
            .await
            .map_err(busy)?;
        self.store()
            .put(
                "template_request",
                &idempotency,
                &json!({ "template_id": template_id }),
            )
            .await
            .map_err(busy)?;
        Ok(json!({ "template_id": template_id }))
    }

    async fn template_of(
        &self,
        app_id: &str,
        template_id: Option<&str>,
    ) -> Result<(String, Value), GatewayFailure> {
        let id = template_id
            .ok_or_else(|| fail("40001", "isv.missing-parameter", "缺少必选参数 template_id"))?;
        let record = self.store().get("template", id).await.map_err(busy)?;
        match record {
            Some(r) if r["app_id"] == app_id => Ok((id.to_owned(), r)),
            _ => Err(fail("40004", "TEMPLATE_NOT_EXIST", "模板不存在")),
        }
    }

    pub(crate) async fn template_modify(&self, app_id: &str, biz: &Value) -> Outcome {
        self.check_template_request(app_id, biz, Change::Modify)
            .await?;
        let (id, mut record) = self.template_of(app_id, text(biz, "template_id")).await?;
        if let (Value::Object(stored), Value::Object(update)) = (&mut record["template"], biz) {
            for (k, v) in update {
                if k != "request_id" && k != "template_id" {
                    stored.insert(k.clone(), v.clone());
                }
            }
        }
        check_template_whole(&record["template"])?;
        self.store()
            .put("template", &id, &record)
            .await
            .map_err(busy)?;
        Ok(json!({ "template_id": id }))
    }

    pub(crate) async fn template_query(&self, app_id: &str, biz: &Value) -> Outcome {
        let (id, record) = self.template_of(app_id, text(biz, "template_id")).await?;
        let mut out = record["template"].clone();
        out["template_id"] = json!(id);
        if let Some(levels) = out.get("card_level_conf").cloned() {
            out["card_level_confs"] = levels;
        }
        Ok(out)
    }

    pub(crate) async fn formtemplate_set(&self, app_id: &str, biz: &Value) -> Outcome {
        let f = Fields::of(biz, Family::Other);
        f.text("template_id", 32)?;
        let (id, mut record) = self.template_of(app_id, text(biz, "template_id")).await?;
        let fields = f.object("fields")?;
        const ALLOWED: [&str; 13] = [
            "OPEN_FORM_FIELD_MOBILE",
            "OPEN_FORM_FIELD_GENDER",
            "OPEN_FORM_FIELD_NAME",
            "OPEN_FORM_FIELD_BIRTHDAY",
            "OPEN_FORM_FIELD_BIRTHDAY_WITH_YEAR",
            "OPEN_FORM_FIELD_IDCARD",
            "OPEN_FORM_FIELD_CERT_TYPE",
            "OPEN_FORM_FIELD_CERT_NO",
            "OPEN_FORM_FIELD_EMAIL",
            "OPEN_FORM_FIELD_ADDRESS",
            "OPEN_FORM_FIELD_CITY",
            "OPEN_FORM_FIELD_IS_STUDENT",
            "OPEN_FORM_FIELD_MEMBER_GRADE",
        ];
        let mut parsed = json!({});
        let mut seen = std::collections::BTreeSet::new();
        for part in ["required", "optional"] {
            // `OpenFormFieldDO` types both as strings holding JSON.
            let Some(raw) = fields.optional_text(part, 102_400)? else {
                continue;
            };
            let inner: Value =
                serde_json::from_str(raw).map_err(|_| fields.invalid(part, "不是合法的 JSON"))?;
            let list = inner["common_fields"]
                .as_array()
                .ok_or_else(|| fields.invalid(part, "须为 {\"common_fields\":[…]}"))?;
            for field in list {
                let name = field
                    .as_str()
                    .and_then(|f| ALLOWED.iter().find(|a| **a == f))
                    .ok_or_else(|| fields.invalid(part, &format!("不支持的表单字段 {field}")))?;
                if !seen.insert(*name) {
                    return Err(fields.invalid(part, &format!("表单字段 {name} 重复")));
                }
            }
            parsed[part] = json!(list);
        }
        if parsed["required"].as_array().is_none_or(Vec::is_empty) {
            return Err(fields.invalid("required", "至少需要一个字段"));
        }
        if seen.len() > 20 {
            return Err(fields.invalid("required", "表单字段不能超过 20 个"));
        }
        record["form"] = parsed;
        self.store()
            .put("template", &id, &record)
            .await
            .map_err(busy)?;
        Ok(json!({}))
    }

    pub(crate) async fn activateurl_apply(&self, app_id: &str, biz: &Value) -> Outcome {
        let f = Fields::of(biz, Family::Other);
        f.text("template_id", 32)?;
        f.optional_text("out_string", 256)?;
        f.optional_text("follow_app_id", 512)?;
        let (id, _) = self.template_of(app_id, text(biz, "template_id")).await?;
        // Optional for Alipay (it then uses the app's registered callback); the sandbox keeps no
        // registered callback, so a link without one cannot land anywhere.
        let callback = f.optional_text("callback", 10_240)?.unwrap_or_default();
        if !callback.is_empty() {
            let parsed =
                url::Url::parse(callback).map_err(|_| f.invalid("callback", "不是合法的地址"))?;
            if parsed.query().is_some() {
                return Err(f.invalid("callback", "不能带参数"));
            }
        }
        let mut link = url::Url::parse(&format!("{}/activecard", self.inner.base_url))
            .map_err(|_| busy(()))?;
        link.query_pairs_mut()
            .append_pair("app_id", app_id)
            .append_pair("template_id", &id)
            .append_pair("out_string", text(biz, "out_string").unwrap_or_default())
            .append_pair("callback", callback);
        // Alipay returns the link URL-encoded; callers must decode it.
        let encoded: String =
            url::form_urlencoded::byte_serialize(link.as_str().as_bytes()).collect();
        Ok(json!({ "apply_card_url": encoded }))
    }

    pub(crate) async fn activateform_query(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        let f = Fields::of(biz, Family::Other);
        f.one_of("biz_type", &["MEMBER_CARD"])?;
        f.text("template_id", 32)?;
        let request_id = f.text("request_id", 128)?;
        let (template_id, template) = self.template_of(app_id, text(biz, "template_id")).await?;
        let user = self.user_of_token(app_id, p, false).await?;
        // The request id is the one the consumer's claim landed with, for this template.
        let claim = self
            .store()
            .get("claim_request", &format!("{app_id}:{request_id}"))
            .await
            .map_err(busy)?;
        if claim.as_ref().is_none_or(|c| {
            c["user_id"] != user["user_id"] || c["template_id"] != json!(template_id)
        }) {
            return Err(f.invalid("request_id", "不是该用户领卡时的 request_id"));
        }
        // A well-formed query spends one of the token's uses.
        self.user_of_token(app_id, p, true).await?;
        let mut infos = Vec::new();
        for part in ["required", "optional"] {
            for field in template["form"][part]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let name = field.as_str().unwrap_or_default();
                let value = match name {
                    "OPEN_FORM_FIELD_MOBILE" => user["mobile"].clone(),
                    "OPEN_FORM_FIELD_NAME" => user["name"].clone(),
                    // As Alipay's form answers it: the Chinese word.
                    "OPEN_FORM_FIELD_GENDER" => {
                        json!(if user["gender"] == "f" { "女" } else { "男" })
                    }
                    "OPEN_FORM_FIELD_BIRTHDAY" => json!(
                        user["birthday"]
                            .as_str()
                            .unwrap_or("1990-01-01")
                            .get(5..)
                            .unwrap_or("01-01")
                    ),
                    "OPEN_FORM_FIELD_BIRTHDAY_WITH_YEAR" => user["birthday"].clone(),
                    _ => continue,
                };
                infos.push(json!({ name: value }));
            }
        }
        // `infos` is a JSON array inside a string, as Alipay sends it.
        Ok(json!({ "infos": Value::Array(infos).to_string() }))
    }

    pub(crate) async fn card_open(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        let f = Fields::of(biz, Family::Other);
        let serial = f.text("out_serial_no", 64)?;
        f.text("card_template_id", 32)?;
        let (template_id, template) = self
            .template_of(app_id, text(biz, "card_template_id"))
            .await?;
        let who = f.object("card_user_info")?;
        who.one_of("user_uni_id_type", &["UID"])?;
        let uid = who.optional_text("user_uni_id", 32)?;
        let open_id = who.optional_text("open_id", 128)?;
        let identity = self.identity_of(app_id).await;
        let claimed = match (identity, uid, open_id) {
            (Identity::Uid, Some(uid), None) => uid.to_owned(),
            (Identity::OpenId, None, Some(open_id)) => open_id.to_owned(),
            (_, None, None) => return Err(who.missing("user_uni_id")),
            (Identity::Uid, _, _) => {
                return Err(who.invalid("open_id", "UID 模式的应用只传 user_uni_id"));
            }
            (Identity::OpenId, _, _) => {
                return Err(who.invalid("user_uni_id", "OpenID 模式的应用只传 open_id"));
            }
        };
        let ext = f.object("card_ext_info")?;
        ext.text("external_card_no", 64)?;
        ext.optional_datetime("open_date")?;
        ext.optional_datetime("valid_date")?;
        check_card_values(&ext, &template)?;
        if let Some(member) = f.optional_object("member_ext_info")? {
            member.optional_text("name", 64)?;
            member.optional_one_of("gende", &["MALE", "FEMALE"])?;
            if let Some(birth) = member.optional_text("birth", 10)?
                && chrono::NaiveDate::parse_from_str(birth, "%Y-%m-%d").is_err()
            {
                return Err(member.invalid("birth", "格式须为 yyyy-MM-dd"));
            }
            if let Some(cell) = member.optional_text("cell", 20)?
                && !cell.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(member.invalid("cell", "须为数字"));
            }
        }
        // Who the token names, without spending it: a refused opening spends none of its uses.
        let token_user = self.user_of_token(app_id, p, false).await?;
        let user_id = token_user["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let expected = match identity {
            Identity::Uid => user_id.clone(),
            Identity::OpenId => open_id_for(app_id, &user_id),
        };
        if claimed != expected {
            return Err(fail("40004", "USER_NOT_MATCH", "开卡用户与授权用户不一致"));
        }
        if let Some(done) = self
            .store()
            .get("card_serial", &format!("{app_id}:{serial}"))
            .await
            .map_err(busy)?
        {
            return Ok(json!({ "card_info": done }));
        }
        // One card per template per user.
        let owner_key = format!("{template_id}:{user_id}");
        if self
            .store()
            .get("card_owner", &owner_key)
            .await
            .map_err(busy)?
            .is_some()
        {
            return Err(fail("40004", "CARD_ALREADY_EXIST", "用户已领取该会员卡"));
        }
        self.user_of_token(app_id, p, true).await?;
        let biz_card_no = card_number(&template["template"]);
        let ext = &biz["card_ext_info"];
        let card = json!({
            "biz_card_no": biz_card_no,
            "external_card_no": ext["external_card_no"],
            "open_date": ext.get("open_date").cloned().unwrap_or_else(|| json!(beijing_timestamp(Utc::now()))),
            "valid_date": ext["valid_date"],
            "level": ext["level"],
            "point": ext["point"],
            "balance": ext["balance"],
            "template_id": template_id,
            "user_id": user_id,
            "app_id": app_id,
            "updates": [],
        });
        self.store()
            .put("card", &biz_card_no, &card)
            .await
            .map_err(busy)?;
        self.store()
            .put(
                "card_owner",
                &owner_key,
                &json!({ "biz_card_no": biz_card_no }),
            )
            .await
            .map_err(busy)?;
        let shown = json!({ "biz_card_no": biz_card_no, "external_card_no": ext["external_card_no"], "open_date": card["open_date"], "valid_date": card["valid_date"] });
        self.store()
            .put("card_serial", &format!("{app_id}:{serial}"), &shown)
            .await
            .map_err(busy)?;
        Ok(json!({ "card_info": shown }))
    }

    async fn card_of(&self, app_id: &str, biz: &Value) -> Result<(String, Value), GatewayFailure> {
        let f = Fields::of(biz, Family::Other);
        let no = f.text("target_card_no", 32)?;
        f.one_of("target_card_no_type", &["BIZ_CARD"])?;
        match self.store().get("card", no).await.map_err(busy)? {
            Some(card) if card["app_id"] == app_id && card["deleted"] != true => {
                Ok((no.to_owned(), card))
            }
            _ => Err(fail("40004", "CARD_NOT_EXIST", "会员卡不存在")),
        }
    }

    pub(crate) async fn card_query(&self, app_id: &str, biz: &Value) -> Outcome {
        let (_, card) = self.card_of(app_id, biz).await?;
        let info = json!({ "biz_card_no": card["biz_card_no"], "external_card_no": card["external_card_no"], "level": card["level"], "point": card["point"], "balance": card["balance"], "open_date": card["open_date"], "valid_date": card["valid_date"] });
        Ok(
            json!({ "card_info": info, "schema_url": format!("alipays://platformapi/startapp?appId=20000021&card={}", card["biz_card_no"].as_str().unwrap_or_default()) }),
        )
    }

    pub(crate) async fn card_update(&self, app_id: &str, biz: &Value) -> Outcome {
        let (no, mut card) = self.card_of(app_id, biz).await?;
        let f = Fields::of(biz, Family::Other);
        f.datetime("occur_time")?;
        let fields = f.object("card_info")?;
        for fixed in ["open_date", "valid_date"] {
            if fields.has(fixed) {
                return Err(fields.invalid(fixed, "开卡日期和有效期不能修改"));
            }
        }
        let template = self
            .template_of(app_id, card["template_id"].as_str())
            .await?
            .1;
        check_card_values(&fields, &template)?;
        let info = &biz["card_info"];
        for field in ["level", "point", "balance", "external_card_no"] {
            if let Some(v) = info.get(field) {
                card[field] = v.clone();
            }
        }
        if let Some(updates) = card["updates"].as_array_mut() {
            updates.push(json!({ "occur_time": biz["occur_time"], "card_info": info }));
        }
        self.store().put("card", &no, &card).await.map_err(busy)?;
        Ok(json!({ "result_code": "SUCCESS" }))
    }

    pub(crate) async fn card_delete(&self, app_id: &str, biz: &Value) -> Outcome {
        let (no, mut card) = self.card_of(app_id, biz).await?;
        Fields::of(biz, Family::Other).text("out_serial_no", 64)?;
        card["deleted"] = json!(true);
        self.store().put("card", &no, &card).await.map_err(busy)?;
        let owner = format!(
            "{}:{}",
            card["template_id"].as_str().unwrap_or_default(),
            card["user_id"].as_str().unwrap_or_default()
        );
        self.store()
            .delete("card_owner", &owner)
            .await
            .map_err(busy)?;
        Ok(json!({ "biz_serial_no": format!("D{}", fastish_number()) }))
    }
}

/// A card's point, balance and level as `MerchantCard` documents them: a point is a number with
/// at most two decimals, a balance yuan with two, a level one the template configured.
fn check_card_values(card: &Fields<'_>, template: &Value) -> Result<(), GatewayFailure> {
    if let Some(point) = card.optional_text("point", 64)?
        && !is_decimal(point)
    {
        return Err(card.invalid("point", "须为数字，最多两位小数"));
    }
    if let Some(balance) = card.optional_text("balance", 32)?
        && !is_decimal(balance)
    {
        return Err(card.invalid("balance", "须为金额（元），最多两位小数"));
    }
    if let Some(level) = card.optional_text("level", 64)? {
        let configured = template["template"]["card_level_conf"]
            .as_array()
            .is_some_and(|levels| levels.iter().any(|l| l["level"] == level));
        if !configured {
            return Err(card.invalid("level", "须为模板 card_level_conf 中的等级"));
        }
    }
    Ok(())
}

fn is_decimal(value: &str) -> bool {
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    !whole.is_empty()
        && whole.len() <= 20
        && frac.len() <= 2
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// A new card's number: the template's prefix and as many digits as its suffix length says.
fn card_number(template: &Value) -> String {
    let prefix = template["biz_no_prefix"].as_str().unwrap_or_default();
    let digits = template["biz_no_suffix_len"]
        .as_str()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(12)
        .clamp(8, 32);
    let mut number = String::new();
    while number.len() < digits {
        number.push_str(&fastish_number().to_string());
    }
    number.truncate(digits);
    format!("{prefix}{number}")
}

/// What a card shows, row by row: each of its template's columns with the value Alipay would
/// put there (standard columns take the card's own point, balance or level).
fn shown_rows(template: &Value, card: &Value) -> Value {
    let rows: Vec<Value> = template["column_info_list"]
        .as_array()
        .map(|columns| {
            columns
                .iter()
                .map(|column| {
                    let value = match column["code"].as_str().unwrap_or_default() {
                        "POINT" => card["point"].clone(),
                        "BALANCE" => card["balance"].clone(),
                        "LEVEL" => template["card_level_conf"]
                            .as_array()
                            .and_then(|levels| levels.iter().find(|l| l["level"] == card["level"]))
                            .map_or(card["level"].clone(), |l| l["level_show_name"].clone()),
                        _ => column["value"].clone(),
                    };
                    json!({ "code": column["code"], "title": column["title"], "value": value })
                })
                .collect()
        })
        .unwrap_or_default();
    Value::Array(rows)
}

/// `/cards/{biz_card_no}`: the card as stored, and `shown`, the rows its face shows.
pub(crate) async fn card_state(State(sandbox): State<Sandbox>, Path(no): Path<String>) -> Response {
    match sandbox.store().get("card", &no).await {
        Ok(Some(mut card)) => {
            let template = match card["template_id"].as_str() {
                Some(id) => sandbox.store().get("template", id).await.ok().flatten(),
                None => None,
            }
            .unwrap_or(Value::Null);
            card["shown"] = shown_rows(&template["template"], &card);
            Json(card).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "code": "not_found", "message": "no such card" })),
        )
            .into_response(),
    }
}
