//! The rules a member-card template (alipay.marketing.card.template.create / modify) follows:
//! field by field as Alipay's request models document them, and the combinations that would
//! make a card show nothing.
//!
//! Invariant: a template the sandbox accepts would render on a real card: every standard column
//! has the field rule that fills it, every custom column has a value or a page to open, and
//! every image is one the app uploaded in a size Alipay accepts.
//!
//! Sources (alipay-sdk-java-all `com.alipay.api.domain`): `AlipayMarketingCardTemplateCreateModel`
//! (request_id ≤ 32, card_type, biz_no_prefix ≤ 10, biz_no_suffix_len a String of 8–32,
//! write_off_type), `TemplateStyleInfoDTO`, `TemplateColumnInfoDTO` (standard codes BALANCE,
//! POINT, LEVEL, TELEPHONE; operate_type), `MoreInfoDTO`, `TemplateFieldRuleDTO` (field_name
//! Balance/Point/Level/OpenDate/ValidDate; rule_name ASSIGN_FROM_REQUEST/DATE_IN_FUTURE/CONST),
//! `TemplateCardLevelConfDTO` (level_icon is an image id), `TemplateActionInfoDTO` (at most 3),
//! `TemplateFormConfig` (the mini-program opening flow, which needs `open_card_mini_app_id`);
//! modify's request_id ≤ 64 from Alipay's template.modify page; `none` as a write-off type
//! from Alipay's member-card FAQ.
//!
//! Stricter than Alipay on purpose: a standard code written in another case (`Point`) is a
//! custom code to Alipay and silently shows nothing; the sandbox refuses it, and a custom column
//! with neither a value nor a page, so that such a card is caught before a merchant ships it.

use std::collections::BTreeSet;

use serde_json::Value;

use super::images::Use;
use crate::Sandbox;
use crate::gateway::GatewayFailure;
use crate::schema::{Family, Fields};

pub(crate) const WRITE_OFF_TYPES: &[&str] = &[
    "qrcode",
    "barcode",
    "dqrcode",
    "dbarcode",
    "mdqrcode",
    "mdbarcode",
    "none",
];
/// Column codes Alipay fills from the card itself; any other code is the merchant's own row.
const STANDARD_CODES: &[&str] = &["BALANCE", "POINT", "LEVEL", "TELEPHONE"];
const FIELD_NAMES: &[&str] = &["Balance", "Point", "Level", "OpenDate", "ValidDate"];
const RULE_NAMES: &[&str] = &["ASSIGN_FROM_REQUEST", "DATE_IN_FUTURE", "CONST"];
const OPERATE_TYPES: &[&str] = &["openNative", "openWeb", "staticinfo"];

/// Create or modify: modify may leave out what the template already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Create,
    Modify,
}

impl Sandbox {
    /// Checks one create or modify request's fields.
    pub(crate) async fn check_template_request(
        &self,
        app_id: &str,
        biz: &Value,
        change: Change,
    ) -> Result<(), GatewayFailure> {
        let f = Fields::of(biz, Family::Other);
        let creating = change == Change::Create;
        f.text("request_id", if creating { 32 } else { 64 })?;
        if creating {
            f.one_of("card_type", &["OUT_MEMBER_CARD"])?;
        }
        let prefix = f.optional_text("biz_no_prefix", 10)?.unwrap_or_default();
        let suffix = if creating {
            Some(f.text("biz_no_suffix_len", 2)?)
        } else {
            f.optional_text("biz_no_suffix_len", 2)?
        };
        if let Some(suffix) = suffix {
            let n: usize = suffix
                .parse()
                .map_err(|_| f.invalid("biz_no_suffix_len", "须为数字字符串"))?;
            if !(8..=32).contains(&n) || prefix.len() + n > 32 {
                return Err(f.invalid("biz_no_suffix_len", "须在 [8,32] 且前缀加后缀不超过 32"));
            }
        }
        let write_off = if creating {
            Some(f.one_of("write_off_type", WRITE_OFF_TYPES)?)
        } else {
            f.optional_one_of("write_off_type", WRITE_OFF_TYPES)?
        };
        if write_off.is_some_and(|w| w.starts_with("md")) && !f.has("mdcode_notify_conf") {
            return Err(f.missing("mdcode_notify_conf"));
        }
        let style = if creating {
            Some(f.object("template_style_info")?)
        } else {
            f.optional_object("template_style_info")?
        };
        if let Some(style) = style {
            style.text("card_show_name", 20)?;
            style.text("logo_id", 1000)?;
            style.text("background_id", 1000)?;
            let color = style.text("bg_color", 32)?;
            if !is_rgb(color) {
                return Err(style.invalid("bg_color", "格式须为 rgb(r,g,b)"));
            }
            self.check_image(app_id, &style, "logo_id", Use::Logo)
                .await?;
            self.check_image(app_id, &style, "background_id", Use::Background)
                .await?;
        }
        let columns = f.objects("column_info_list", 32)?;
        if creating && columns.is_empty() {
            return Err(f.missing("column_info_list"));
        }
        let mut codes = BTreeSet::new();
        for column in &columns {
            let code = column.text("code", 32)?;
            if !codes.insert(code) {
                return Err(column.invalid("code", "栏目 code 不能重复"));
            }
            let standard = STANDARD_CODES.iter().find(|s| s.eq_ignore_ascii_case(code));
            if standard.is_some_and(|s| *s != code) {
                return Err(column.invalid(
                    "code",
                    "标准栏目 code 须大写（BALANCE、POINT、LEVEL、TELEPHONE），否则按自定义栏目处理，卡面不显示其数值",
                ));
            }
            column.text("title", 16)?;
            column.optional_text("value", 64)?;
            let operate = column
                .optional_one_of("operate_type", OPERATE_TYPES)?
                .unwrap_or("staticinfo");
            let more = column.optional_object("more_info")?;
            match (operate, &more) {
                ("openNative", None) | ("openWeb", None) => {
                    return Err(column.missing("more_info"));
                }
                ("openNative", Some(more)) if more.strings("descs", 20, 200)?.is_empty() => {
                    return Err(more.missing("descs"));
                }
                ("openWeb", Some(more)) => {
                    more.text("url", 1024)?;
                }
                _ => {}
            }
            if standard.is_none() && !column.has("value") && more.is_none() {
                return Err(column.invalid(
                    "value",
                    "自定义栏目须有 value 或可打开的 more_info，否则卡面是空行",
                ));
            }
        }
        for rule in f.objects("field_rule_list", 10)? {
            let field = rule.one_of("field_name", FIELD_NAMES)?;
            let name = rule.one_of("rule_name", RULE_NAMES)?;
            let value = rule.text("rule_value", 512)?;
            match name {
                "DATE_IN_FUTURE" if !matches!(field, "OpenDate" | "ValidDate") => {
                    return Err(
                        rule.invalid("rule_name", "DATE_IN_FUTURE 只用于 OpenDate、ValidDate")
                    );
                }
                "DATE_IN_FUTURE" if !is_period(value) => {
                    return Err(rule.invalid("rule_value", "须为数字加 m（月）或 d（日），如 12m"));
                }
                "ASSIGN_FROM_REQUEST" if !FIELD_NAMES.contains(&value) => {
                    return Err(rule.invalid(
                        "rule_value",
                        "须为 OpenDate、ValidDate、Level、Point、Balance 之一",
                    ));
                }
                _ => {}
            }
        }
        // TemplateActionInfoDTO: a code and a text, and where it goes (`url_type` `url`, the
        // default, takes an absolute address; `miniAppUrl` takes `mini_app_url`).
        for action in f.objects("card_action_list", 3)? {
            action.text("code", 32)?;
            action.text("text", 32)?;
            match action.optional_text("url_type", 16)? {
                None | Some("url") => {
                    let url = action.text("url", 1024)?;
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(action.invalid("url", "须为 http(s) 地址"));
                    }
                }
                Some("miniAppUrl") => {}
                Some(_) => return Err(action.invalid("url_type", "须为 url 或 miniAppUrl")),
            }
        }
        let mut levels = BTreeSet::new();
        for level in f.objects("card_level_conf", 64)? {
            if !levels.insert(level.text("level", 64)?) {
                return Err(level.invalid("level", "等级不能重复"));
            }
            level.optional_text("level_show_name", 64)?;
            self.check_image(app_id, &level, "level_icon", Use::Icon)
                .await?;
        }
        if let Some(form) = f.optional_object("template_form_config")? {
            form.text("open_card_mini_app_id", 32).map_err(|_| {
                f.invalid(
                    "template_form_config",
                    "只用于小程序开卡组件（须有 open_card_mini_app_id）；回跳开卡用 formtemplate.set",
                )
            })?;
        }
        Ok(())
    }
}

/// Checks the template as it stands after a change: every standard column that shows a card
/// value has the field rule that fills it.
pub(crate) fn check_template_whole(template: &Value) -> Result<(), GatewayFailure> {
    let f = Fields::of(template, Family::Other);
    let rules: BTreeSet<&str> = f
        .objects("field_rule_list", 10)?
        .iter()
        .filter_map(|r| r.raw("field_name").and_then(Value::as_str))
        .collect();
    for column in f.objects("column_info_list", 32)? {
        let code = column
            .raw("code")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let needs = match code {
            "POINT" => "Point",
            "BALANCE" => "Balance",
            "LEVEL" => "Level",
            _ => continue,
        };
        if !rules.contains(needs) {
            return Err(f.invalid(
                "field_rule_list",
                &format!("栏目 {code} 需要 field_name 为 {needs} 的规则，否则卡面不显示"),
            ));
        }
    }
    Ok(())
}

fn is_rgb(color: &str) -> bool {
    let Some(inner) = color.strip_prefix("rgb(").and_then(|c| c.strip_suffix(')')) else {
        return false;
    };
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    parts.len() == 3 && parts.iter().all(|p| p.parse::<u8>().is_ok())
}

fn is_period(value: &str) -> bool {
    value.len() >= 2
        && (value.ends_with('m') || value.ends_with('d'))
        && value[..value.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_periods_follow_alipay_s_formats() {
        assert!(is_rgb("rgb(255,0,10)") && is_rgb("rgb(1, 2, 3)"));
        assert!(!is_rgb("#ff0000") && !is_rgb("rgb(256,0,0)") && !is_rgb("rgb(1,2)"));
        assert!(is_period("12m") && is_period("365d"));
        assert!(!is_period("m") && !is_period("12y") && !is_period("1.5m"));
    }
}
