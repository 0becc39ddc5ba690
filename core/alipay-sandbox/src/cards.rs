//! Member cards (alipay.marketing.card.*): templates and their open forms, the activation
//! link, opening, querying, updating and deleting cards, and the images
//! (alipay.offline.material.image.upload) templates show as logo and background.
//!
//! Invariant: one card per template per user; an app sees only its own templates and cards.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use trellis_alipay::signing::beijing_timestamp;

use crate::gateway::{GatewayFailure, Outcome, busy, fail, missing};
use crate::{Sandbox, fastish_number, text};

impl Sandbox {
    pub(crate) async fn image_upload(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Outcome {
        let kind = p
            .get("image_type")
            .map(|t| t.to_ascii_lowercase())
            .ok_or_else(|| missing("image_type"))?;
        if !["jpg", "jpeg", "png", "gif", "bmp"].contains(&kind.as_str()) {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "image_type 仅支持 jpg、png、gif、bmp",
            ));
        }
        p.get("image_name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("image_name"))?;
        let content = files
            .get("image_content")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| missing("image_content"))?;
        if content.len() > 2 * 1024 * 1024 {
            return Err(fail("40004", "IMAGE_SIZE_EXCEED", "图片不能超过 2M"));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
        let hex: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let image_id = format!("sbx{hex}");
        self.store()
            .put("image", &image_id, &json!({ "app_id": app_id, "name": p["image_name"], "type": kind, "size": content.len() }))
            .await
            .map_err(busy)?;
        Ok(
            json!({ "image_id": image_id, "image_url": format!("{}/images/{image_id}", self.inner.base_url) }),
        )
    }

    pub(crate) async fn template_create(&self, app_id: &str, biz: &Value) -> Outcome {
        let request_id = text(biz, "request_id").ok_or_else(|| missing("request_id"))?;
        if text(biz, "card_type") != Some("OUT_MEMBER_CARD") {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "card_type 必须为 OUT_MEMBER_CARD",
            ));
        }
        validate_template(biz)?;
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
        let id = template_id.ok_or_else(|| missing("template_id"))?;
        let record = self.store().get("template", id).await.map_err(busy)?;
        match record {
            Some(r) if r["app_id"] == app_id => Ok((id.to_owned(), r)),
            _ => Err(fail("40004", "TEMPLATE_NOT_EXIST", "模板不存在")),
        }
    }

    pub(crate) async fn template_modify(&self, app_id: &str, biz: &Value) -> Outcome {
        text(biz, "request_id").ok_or_else(|| missing("request_id"))?;
        let (id, mut record) = self.template_of(app_id, text(biz, "template_id")).await?;
        validate_template(biz)?;
        if let (Value::Object(stored), Value::Object(update)) = (&mut record["template"], biz) {
            for (k, v) in update {
                if k != "request_id" && k != "template_id" {
                    stored.insert(k.clone(), v.clone());
                }
            }
        }
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
        let (id, mut record) = self.template_of(app_id, text(biz, "template_id")).await?;
        let fields = biz.get("fields").ok_or_else(|| missing("fields"))?;
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
        let mut total = 0;
        for part in ["required", "optional"] {
            let Some(raw) = fields.get(part) else {
                continue;
            };
            // Alipay types both as strings holding JSON.
            let text = raw.as_str().ok_or_else(|| {
                fail(
                    "40004",
                    "INVALID_PARAMETER",
                    format!("fields.{part} 必须是 JSON 字符串"),
                )
            })?;
            let inner: Value = serde_json::from_str(text).map_err(|_| {
                fail(
                    "40004",
                    "INVALID_PARAMETER",
                    format!("fields.{part} 不是合法的 JSON"),
                )
            })?;
            let list = inner["common_fields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for field in &list {
                if !field.as_str().is_some_and(|f| ALLOWED.contains(&f)) {
                    return Err(fail(
                        "40004",
                        "INVALID_PARAMETER",
                        format!("不支持的表单字段 {field}"),
                    ));
                }
            }
            total += list.len();
            parsed[part] = json!(list);
        }
        if parsed["required"].as_array().is_none_or(Vec::is_empty) {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "fields.required 至少需要一个字段",
            ));
        }
        if total > 20 {
            return Err(fail("40004", "INVALID_PARAMETER", "表单字段不能超过 20 个"));
        }
        record["form"] = parsed;
        self.store()
            .put("template", &id, &record)
            .await
            .map_err(busy)?;
        Ok(json!({}))
    }

    pub(crate) async fn activateurl_apply(&self, app_id: &str, biz: &Value) -> Outcome {
        let (id, _) = self.template_of(app_id, text(biz, "template_id")).await?;
        let callback = text(biz, "callback").ok_or_else(|| missing("callback"))?;
        let parsed = url::Url::parse(callback)
            .map_err(|_| fail("40004", "INVALID_PARAMETER", "callback 不是合法的地址"))?;
        if parsed.query().is_some() {
            return Err(fail("40004", "INVALID_PARAMETER", "callback 不能带参数"));
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
        if text(biz, "biz_type") != Some("MEMBER_CARD") {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "biz_type 必须为 MEMBER_CARD",
            ));
        }
        let (_, template) = self.template_of(app_id, text(biz, "template_id")).await?;
        text(biz, "request_id").ok_or_else(|| missing("request_id"))?;
        let user = self.user_of_token(app_id, p).await?;
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
                    "OPEN_FORM_FIELD_GENDER" => user["gender"].clone(),
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
        let serial = text(biz, "out_serial_no").ok_or_else(|| missing("out_serial_no"))?;
        let (template_id, _) = self
            .template_of(app_id, text(biz, "card_template_id"))
            .await?;
        let user_info = biz
            .get("card_user_info")
            .ok_or_else(|| missing("card_user_info"))?;
        let ext = biz
            .get("card_ext_info")
            .ok_or_else(|| missing("card_ext_info"))?;
        let token_user = self.user_of_token(app_id, p).await?;
        let user_id = user_info["user_uni_id"]
            .as_str()
            .or_else(|| user_info["open_id"].as_str())
            .unwrap_or_default();
        if user_id != token_user["user_id"].as_str().unwrap_or_default()
            && user_id != token_user["open_id"].as_str().unwrap_or_default()
        {
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
        let biz_card_no = format!(
            "{}{:012}",
            text(&Value::Null, "").unwrap_or("VIP"),
            fastish_number() % 1_000_000_000_000
        );
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
        let no = text(biz, "target_card_no").ok_or_else(|| missing("target_card_no"))?;
        if text(biz, "target_card_no_type") != Some("BIZ_CARD") {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "target_card_no_type 仅支持 BIZ_CARD",
            ));
        }
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
        text(biz, "occur_time").ok_or_else(|| missing("occur_time"))?;
        let info = biz.get("card_info").ok_or_else(|| missing("card_info"))?;
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
        text(biz, "out_serial_no").ok_or_else(|| missing("out_serial_no"))?;
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

fn validate_template(biz: &Value) -> Result<(), GatewayFailure> {
    let style = biz
        .get("template_style_info")
        .ok_or_else(|| missing("template_style_info"))?;
    for field in ["card_show_name", "logo_id", "background_id", "bg_color"] {
        if text(style, field).is_none() {
            return Err(missing(&format!("template_style_info.{field}")));
        }
    }
    if let Some(len) = biz.get("biz_no_suffix_len") {
        let n = len
            .as_str()
            .and_then(|s| s.parse::<usize>().ok())
            .or_else(|| len.as_u64().map(|n| n as usize))
            .unwrap_or(0);
        let prefix = text(biz, "biz_no_prefix").unwrap_or_default().len();
        if !(8..=32).contains(&n) || prefix + n > 32 {
            return Err(fail(
                "40004",
                "INVALID_PARAMETER",
                "biz_no_suffix_len 须在 [8,32] 且前缀加后缀不超过 32",
            ));
        }
    }
    if let Some(kind) = text(biz, "write_off_type")
        && ![
            "qrcode",
            "dqrcode",
            "barcode",
            "dbarcode",
            "text",
            "mdqrcode",
            "mdbarcode",
            "none",
        ]
        .contains(&kind)
    {
        return Err(fail("40004", "INVALID_PARAMETER", "write_off_type 无效"));
    }
    Ok(())
}

pub(crate) async fn card_state(State(sandbox): State<Sandbox>, Path(no): Path<String>) -> Response {
    match sandbox.store().get("card", &no).await {
        Ok(Some(card)) => Json(card).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "code": "not_found", "message": "no such card" })),
        )
            .into_response(),
    }
}
