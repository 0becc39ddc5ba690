//! The membership card (会员卡): the merchant's design, its sync to Alipay as a card template
//! (create the first time, modify afterwards, then the activation form), and the claim link.
//!
//! Invariant: Alipay calls carry `request_id`s derived from the merchant and the design's
//! revision, so retrying a sync never creates a second template; the outcome of every sync —
//! including Alipay's `code` and `sub_code` on failure — is stored where the merchant sees it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trellis_host_api::UpstreamError;
use trellis_host_api::prelude::*;

use crate::levels::Levels;
use crate::util;

pub const KEY: &str = "cfg/card";
const CLAIM_KEY: &str = "cfg/claim";

/// Where Alipay sends the consumer after the form: the engine serves both on the partner's
/// domain and routes them to this plugin's `/activate` by app id.
pub const CLEAN_CALLBACK: &str = "/callbacks/alipay/card-activation";
pub const LEGACY_CALLBACK: &str = "/index.php/wxapi/Al/auth/membercode/notify";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    Points,
    Balance,
    Level,
    Benefits,
}

/// Fields of the activation form, by their short names.
const FORM_FIELDS: [(&str, &str); 10] = [
    ("mobile", "OPEN_FORM_FIELD_MOBILE"),
    ("name", "OPEN_FORM_FIELD_NAME"),
    ("gender", "OPEN_FORM_FIELD_GENDER"),
    ("birthday", "OPEN_FORM_FIELD_BIRTHDAY"),
    ("birthday_with_year", "OPEN_FORM_FIELD_BIRTHDAY_WITH_YEAR"),
    ("idcard", "OPEN_FORM_FIELD_IDCARD"),
    ("email", "OPEN_FORM_FIELD_EMAIL"),
    ("address", "OPEN_FORM_FIELD_ADDRESS"),
    ("city", "OPEN_FORM_FIELD_CITY"),
    ("is_student", "OPEN_FORM_FIELD_IS_STUDENT"),
];

/// Alipay's write-off codes a card may show (`AlipayMarketingCardTemplateCreateModel`; `none`
/// shows no code, per Alipay's member-card FAQ). `text` is deprecated and the `md*` kinds need a
/// notification setup this plugin does not offer.
const WRITE_OFF: [&str; 5] = ["qrcode", "dqrcode", "barcode", "dbarcode", "none"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Form {
    pub required: Vec<String>,
    #[serde(default)]
    pub optional: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Design {
    /// The card's name in the Alipay wallet.
    pub show_name: String,
    pub brand_name: String,
    /// Alipay image ids (from `POST /card/images`).
    pub logo_id: String,
    pub background_id: String,
    /// `#RRGGBB` or `rgb(r,g,b)`; stored as `rgb(r,g,b)`.
    pub bg_color: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slogan: Option<String>,
    /// What the card shows, at least one of: `points`, `balance`, `level`, `benefits`.
    #[serde(default)]
    pub columns: Vec<Column>,
    pub form: Form,
    /// Days a card is valid after opening; none for no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
    /// The code shown for write-off: `qrcode`, `dqrcode`, `barcode`, `dbarcode`, `none`.
    #[serde(default = "default_write_off")]
    pub write_off_type: String,
    /// Prefix of our external card numbers (letters and digits, ≤ 8).
    #[serde(default = "default_prefix")]
    pub card_no_prefix: String,
}

fn default_write_off() -> String {
    "qrcode".into()
}

fn default_prefix() -> String {
    "M".into()
}

/// How something at Alipay — the card template, or one member's card — stands against ours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The template: `never`, `synced`, `failed`, or `stale` when the design or levels changed
    /// since. A member's card: `none` (no Alipay card), `synced`, `pending` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Alipay's `code`, `sub_code` and message of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failures in a row.
    #[serde(default)]
    pub attempts: u32,
    /// The template: the (design, levels) revisions last synced.
    #[serde(default, skip_serializing_if = "is_zero_pair")]
    pub revision: (u64, u64),
    /// A member's card: the ledger sequence it last showed.
    #[serde(default)]
    pub synced_seq: u64,
}

fn is_zero_pair(pair: &(u64, u64)) -> bool {
    *pair == (0, 0)
}

impl SyncStatus {
    pub fn new(state: &str) -> Self {
        Self {
            state: state.to_owned(),
            ..Self::default()
        }
    }

    /// Records a success now.
    pub fn succeeded(&mut self) {
        self.state = "synced".into();
        self.at_ms = Some(util::now_ms());
        self.code = None;
        self.sub_code = None;
        self.error = None;
        self.attempts = 0;
    }

    /// Records a failed Alipay call, with Alipay's codes when Alipay answered.
    pub fn failed(&mut self, error: &Error) {
        self.state = "failed".into();
        self.at_ms = Some(util::now_ms());
        self.attempts += 1;
        match error {
            Error::Upstream(UpstreamError {
                code,
                sub_code,
                message,
            }) => {
                self.code = Some(code.clone());
                self.sub_code = sub_code.clone();
                self.error = Some(message.clone());
            }
            other => {
                self.code = None;
                self.sub_code = None;
                self.error = Some(other.to_string());
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Card {
    #[serde(default)]
    pub design: Option<Design>,
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub sync: SyncStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub url: String,
    pub callback: String,
    pub template_id: String,
    pub applied_at_ms: u64,
}

impl Card {
    pub fn load() -> Result<(Self, Option<u64>)> {
        Ok(match kv::get_json::<Card>(KEY)? {
            Some((card, version)) => (card, Some(version)),
            None => (
                Card {
                    sync: SyncStatus::new("never"),
                    ..Card::default()
                },
                None,
            ),
        })
    }

    /// The prefix of our card numbers (`M` before the card is designed).
    pub fn card_no_prefix(&self) -> String {
        self.design
            .as_ref()
            .map_or_else(|| "M".to_owned(), |d| d.card_no_prefix.clone())
    }

    /// The synced template, or a conflict telling the merchant to sync first.
    pub fn template(&self) -> Result<&str> {
        self.template_id
            .as_deref()
            .ok_or_else(|| Error::Conflict("sync the card to Alipay first".into()))
    }
}

fn bad(field: &str, message: &str) -> Error {
    Error::field(format!("/{field}"), message)
}

fn rgb(color: &str) -> Option<String> {
    let color = color.trim();
    if let Some(hex) = color.strip_prefix('#')
        && hex.len() == 6
    {
        let n = u32::from_str_radix(hex, 16).ok()?;
        return Some(format!("rgb({},{},{})", n >> 16, (n >> 8) & 0xff, n & 0xff));
    }
    let inner = color.strip_prefix("rgb(")?.strip_suffix(')')?;
    let parts: Vec<u8> = inner
        .split(',')
        .map(|p| p.trim().parse::<u8>().ok())
        .collect::<Option<_>>()?;
    (parts.len() == 3).then(|| format!("rgb({},{},{})", parts[0], parts[1], parts[2]))
}

/// An Alipay image id: what `image.upload` returns (never a URL).
pub fn image_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks and normalises a design; the first problem comes back as a field error.
pub fn validate(mut d: Design) -> Result<Design> {
    d.show_name = d.show_name.trim().to_owned();
    d.brand_name = d.brand_name.trim().to_owned();
    if d.show_name.is_empty() || d.show_name.chars().count() > 20 {
        return Err(bad("show_name", "must be 1 to 20 characters"));
    }
    if d.brand_name.is_empty() || d.brand_name.chars().count() > 20 {
        return Err(bad("brand_name", "must be 1 to 20 characters"));
    }
    if !image_id_ok(&d.logo_id) {
        return Err(bad(
            "logo_id",
            "must be an Alipay image id (upload it first)",
        ));
    }
    if !image_id_ok(&d.background_id) {
        return Err(bad(
            "background_id",
            "must be an Alipay image id (upload it first)",
        ));
    }
    d.bg_color =
        rgb(&d.bg_color).ok_or_else(|| bad("bg_color", "must be #RRGGBB or rgb(r,g,b)"))?;
    if let Some(slogan) = &d.slogan
        && slogan.chars().count() > 30
    {
        return Err(bad("slogan", "must be at most 30 characters"));
    }
    if d.columns.is_empty() {
        return Err(bad(
            "columns",
            "choose at least one of points, balance, level, benefits",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in d.columns.iter().enumerate() {
        if !seen.insert(*c) {
            return Err(bad(&format!("columns/{i}"), "is listed twice"));
        }
    }
    let known = |f: &str| FORM_FIELDS.iter().any(|(short, _)| *short == f);
    let mut fields = std::collections::BTreeSet::new();
    for (part, list) in [
        ("required", &d.form.required),
        ("optional", &d.form.optional),
    ] {
        for (i, f) in list.iter().enumerate() {
            if !known(f) {
                let names: Vec<&str> = FORM_FIELDS.iter().map(|(s, _)| *s).collect();
                return Err(bad(
                    &format!("form/{part}/{i}"),
                    &format!("must be one of {}", names.join(", ")),
                ));
            }
            if !fields.insert(f.clone()) {
                return Err(bad(&format!("form/{part}/{i}"), "is listed twice"));
            }
        }
    }
    if d.form.required.is_empty() {
        return Err(bad("form/required", "at least one field is required"));
    }
    if let Some(days) = d.validity_days
        && !(1..=36_500).contains(&days)
    {
        return Err(bad("validity_days", "must be 1 to 36500"));
    }
    if !WRITE_OFF.contains(&d.write_off_type.as_str()) {
        return Err(bad(
            "write_off_type",
            &format!("must be one of {}", WRITE_OFF.join(", ")),
        ));
    }
    if d.card_no_prefix.is_empty()
        || d.card_no_prefix.len() > 8
        || !d.card_no_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(bad("card_no_prefix", "must be 1 to 8 letters or digits"));
    }
    Ok(d)
}

fn form_codes(list: &[String]) -> Vec<&'static str> {
    list.iter()
        .filter_map(|f| FORM_FIELDS.iter().find(|(s, _)| s == f).map(|(_, c)| *c))
        .collect()
}

/// The template's blocks shared by `template.create` and `template.modify`, as
/// alipay-sdk-java-all's `AlipayMarketingCardTemplateCreateModel` documents them: standard
/// columns by their upper-case codes (`POINT`, `BALANCE`, `LEVEL`), each filled by the field rule
/// of the same name; benefits as a row that opens the levels' benefits. A design that asks for
/// something the levels cannot fill is a conflict the merchant can fix.
/// `home`: the member's own page, linked from the card (`card_action_list`).
fn template_body(d: &Design, levels: &Levels, locale: &str, home: Option<&str>) -> Result<Value> {
    let zh = locale != "en";
    let title = |zh_text: &str, en: &str| {
        if zh {
            zh_text.to_owned()
        } else {
            en.to_owned()
        }
    };
    let mut columns = Vec::new();
    for c in &d.columns {
        columns.push(match c {
            Column::Points => json!({"code": "POINT", "title": title("积分", "Points")}),
            Column::Balance => json!({"code": "BALANCE", "title": title("余额", "Balance")}),
            Column::Level => {
                if levels.levels.is_empty() {
                    return Err(Error::Conflict(
                        "the card shows the level: define member levels first (PUT /levels)".into(),
                    ));
                }
                json!({"code": "LEVEL", "title": title("等级", "Level")})
            }
            Column::Benefits => {
                // One line per level, long text over several lines (the page shows a list).
                let descs: Vec<String> = levels
                    .levels
                    .iter()
                    .filter(|l| !l.benefits.trim().is_empty())
                    .flat_map(|l| lines(&format!("{}: {}", l.name, l.benefits.trim()), 200))
                    .take(20)
                    .collect();
                if descs.is_empty() {
                    return Err(Error::Conflict(
                        "the card shows benefits: describe them on a member level first (PUT /levels)"
                            .into(),
                    ));
                }
                let heading = title("会员权益", "Benefits");
                json!({"code": "BENEFIT_INFO", "title": heading, "operate_type": "openNative",
                    "more_info": {"title": heading, "descs": descs}})
            }
        });
    }
    let mut rules = vec![
        json!({"field_name": "Point", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Point"}),
        json!({"field_name": "Balance", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Balance"}),
        json!({"field_name": "OpenDate", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "OpenDate"}),
    ];
    if !levels.levels.is_empty() {
        rules.push(
            json!({"field_name": "Level", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Level"}),
        );
    }
    rules.push(match d.validity_days {
        Some(days) => {
            json!({"field_name": "ValidDate", "rule_name": "DATE_IN_FUTURE", "rule_value": format!("{days}d")})
        }
        None => {
            json!({"field_name": "ValidDate", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "ValidDate"})
        }
    });
    let level_conf: Vec<Value> = levels
        .levels
        .iter()
        .map(|l| {
            let mut conf =
                json!({"level": l.id, "level_show_name": l.name, "level_desc": l.benefits});
            if let Some(icon) = &l.icon {
                conf["level_icon"] = json!(icon);
            }
            conf
        })
        .collect();
    let mut style = json!({
        "card_show_name": d.show_name,
        "logo_id": d.logo_id,
        "background_id": d.background_id,
        "bg_color": d.bg_color,
        "brand_name": d.brand_name,
    });
    if let Some(slogan) = &d.slogan {
        style["slogan"] = json!(slogan);
    }
    // No `template_form_config`: it belongs to the mini-program opening flow; this card's form
    // is set with `formtemplate.set`.
    let mut body = json!({
        "write_off_type": d.write_off_type,
        "template_style_info": style,
        "column_info_list": columns,
        "field_rule_list": rules,
        "card_level_conf": level_conf,
    });
    if let Some(home) = home {
        // TemplateActionInfoDTO (alipay-sdk-java-all): the card's entry to the member's page.
        let text = if locale == "en" {
            "My card"
        } else {
            "会员中心"
        };
        body["card_action_list"] =
            json!([{"code": "MEMBER_HOME", "text": text, "url_type": "url", "url": home}]);
    }
    Ok(body)
}

/// `text` in lines of at most `max` characters.
fn lines(text: &str, max: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(max).map(|c| c.iter().collect()).collect()
}

/// Alipay's `fields` of `formtemplate.set`: each part a string holding JSON
/// (`OpenFormFieldDO`); no optional part when there is none.
fn form_body(template_id: &str, form: &Form) -> Value {
    let part = |list: &[String]| json!({"common_fields": form_codes(list)}).to_string();
    let mut fields = json!({"required": part(&form.required)});
    if !form.optional.is_empty() {
        fields["optional"] = json!(part(&form.optional));
    }
    json!({"template_id": template_id, "fields": fields})
}

/// Creates or modifies the template, then sets its form. Returns the card with its new sync
/// status, already stored; `Err` only when storage itself fails.
pub fn sync(merchant: &str, locale: &str, home: Option<&str>) -> Result<Card> {
    let (mut card, _) = Card::load()?;
    let Some(design) = card.design.clone() else {
        return Err(Error::Conflict("design the card first (PUT /card)".into()));
    };
    let levels = Levels::load()?;
    let tag = util::short_hash(merchant);
    let attempt: Result<String> = (|| {
        let mut body = template_body(&design, &levels, locale, home)?;
        let template_id = match &card.template_id {
            None => {
                body["request_id"] = json!(format!("c{tag}r{}l{}", card.revision, levels.revision));
                body["card_type"] = json!("OUT_MEMBER_CARD");
                body["biz_no_suffix_len"] = json!("12");
                let created = alipay::call("alipay.marketing.card.template.create", &body)?;
                created["template_id"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| Error::internal("template.create returned no template_id"))?
                    .to_owned()
            }
            Some(id) => {
                body["request_id"] = json!(format!("m{tag}r{}l{}", card.revision, levels.revision));
                body["template_id"] = json!(id);
                alipay::call("alipay.marketing.card.template.modify", &body)?;
                id.clone()
            }
        };
        // The template id is kept even if the form fails, so a retry modifies, not recreates.
        card.template_id = Some(template_id.clone());
        alipay::call(
            "alipay.marketing.card.formtemplate.set",
            &form_body(&template_id, &design.form),
        )?;
        Ok(template_id)
    })();
    match &attempt {
        Ok(_) => {
            card.sync.succeeded();
            card.sync.revision = (card.revision, levels.revision);
        }
        Err(e) => {
            warn!("card sync failed: {e}");
            card.sync.failed(e);
        }
    }
    // Merged into what is stored now, so a design changed meanwhile keeps its edit and a
    // template just created is never lost (losing it would create a second one next time).
    let outcome = card.clone();
    kv::update::<Card, _>(KEY, move |stored| {
        let mut current = stored.unwrap_or_else(|| outcome.clone());
        current.template_id = outcome.template_id.clone().or(current.template_id);
        current.sync = outcome.sync.clone();
        if current.sync.state == "synced" && current.revision != outcome.revision {
            current.sync.state = "stale".into();
        }
        current
    })
}

/// Writes the card back, failing with a conflict when someone changed it meanwhile.
pub fn store(card: &Card, version: Option<u64>) -> Result<()> {
    let bytes = serde_json::to_vec(card).map_err(|e| Error::internal(e.to_string()))?;
    match kv::compare_and_swap(KEY, version, &bytes)? {
        kv::CasOutcome::Stored(_) => Ok(()),
        kv::CasOutcome::Conflict(_) => Err(Error::Conflict(
            "the card changed meanwhile; reload and try again".into(),
        )),
    }
}

/// Marks a synced card stale after the design or the levels changed.
pub fn mark_stale() -> Result<()> {
    kv::try_update::<Card, _>(KEY, |card| {
        Ok(card.and_then(|mut card| {
            (card.sync.state == "synced").then(|| {
                card.sync.state = "stale".into();
                card
            })
        }))
    })?;
    Ok(())
}

/// `activateurl.apply` with the callback on the partner's domain; the link is stored decoded.
pub fn apply_claim_link(origin: &str, legacy: bool, merchant: &str) -> Result<Claim> {
    let (card, _) = Card::load()?;
    let template_id = card.template()?.to_owned();
    let callback = format!(
        "{}{}",
        origin.trim_end_matches('/'),
        if legacy {
            LEGACY_CALLBACK
        } else {
            CLEAN_CALLBACK
        }
    );
    let applied = alipay::call(
        "alipay.marketing.card.activateurl.apply",
        &json!({"template_id": template_id, "callback": callback, "out_string": merchant}),
    )?;
    let encoded = applied["apply_card_url"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Error::internal("activateurl.apply returned no apply_card_url"))?;
    let claim = Claim {
        url: decoded_link(encoded),
        callback,
        template_id,
        applied_at_ms: util::now_ms(),
    };
    kv::set_json(CLAIM_KEY, &claim)?;
    Ok(claim)
}

/// Alipay returns `apply_card_url` URL-encoded, to be decoded once. A link that already reads
/// as a URL is kept as it is: decoding it again would turn an escape inside its own query
/// (`%3D` in a nested parameter) into the character.
fn decoded_link(link: &str) -> String {
    if link.contains("://") {
        link.to_owned()
    } else {
        trellis_host_api::percent_decode(link)
    }
}

/// The claim link last applied for, or not-found telling the merchant to apply.
pub fn stored_claim() -> Result<Claim> {
    kv::get_json::<Claim>(CLAIM_KEY)?
        .map(|(claim, _)| claim)
        .ok_or_else(|| Error::not_found("no claim link yet (POST /claim-link)"))
}

/// Where the card shows an uploaded image, and the rules Alipay sets for it
/// (alipay-sdk-java-all `TemplateStyleInfoDTO`: the logo square, at least 500×500 and at most
/// 1 MB; the background at least 1020×643 and at most 2 MB; other images at most 5 MB, the
/// upload's own limit).
pub fn check_image(usage: &str, kind: &str, bytes: &[u8]) -> Result<()> {
    let format = match imagesize::image_type(bytes) {
        Ok(imagesize::ImageType::Png) => "png",
        Ok(imagesize::ImageType::Jpeg) => "jpg",
        Ok(imagesize::ImageType::Gif) => "gif",
        Ok(imagesize::ImageType::Bmp) => "bmp",
        _ => {
            return Err(Error::invalid(
                "the body is not a PNG, JPEG, GIF or BMP image",
            ));
        }
    };
    if format != kind {
        return Err(Error::invalid(format!(
            "the image is a {format}, not the {kind} its content type says"
        )));
    }
    let size = imagesize::blob_size(bytes)
        .map_err(|_| Error::invalid("the image's dimensions cannot be read"))?;
    let (w, h, len) = (size.width, size.height, bytes.len());
    const MIB: usize = 1024 * 1024;
    let problem = match usage {
        "logo" if len > MIB => Some(format!("a logo is at most 1 MB ({len} bytes sent)")),
        "logo" if w != h || w < 500 => Some(format!(
            "a logo is square and at least 500×500 ({w}×{h} sent)"
        )),
        "background" if len > 2 * MIB => {
            Some(format!("a background is at most 2 MB ({len} bytes sent)"))
        }
        "background" if w < 1020 || h < 643 => {
            Some(format!("a background is at least 1020×643 ({w}×{h} sent)"))
        }
        "logo" | "background" => None,
        "icon" if len > 5 * MIB => Some(format!("an image is at most 5 MB ({len} bytes sent)")),
        "icon" => None,
        _ => Some("say where the image goes: ?use=logo, background or icon".to_owned()),
    };
    match problem {
        Some(message) => Err(Error::invalid(message)),
        None => Ok(()),
    }
}

/// Image types Alipay accepts, from the upload's content type.
pub fn image_type(content_type: &str) -> Option<&'static str> {
    match content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpg"),
        "image/gif" => Some("gif"),
        "image/bmp" => Some("bmp"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn design() -> Design {
        Design {
            show_name: " 会员卡 ".into(),
            brand_name: "Demo".into(),
            logo_id: "img1".into(),
            background_id: "img2".into(),
            bg_color: "#3770B3".into(),
            slogan: None,
            columns: vec![Column::Points, Column::Level],
            form: Form {
                required: vec!["mobile".into()],
                optional: vec!["name".into(), "birthday".into()],
            },
            validity_days: None,
            write_off_type: "qrcode".into(),
            card_no_prefix: "M".into(),
        }
    }

    fn field_of(result: Result<Design>) -> String {
        match result {
            Err(Error::InvalidField(f)) => f.field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_design_is_normalised() {
        let d = validate(design()).unwrap();
        assert_eq!(d.show_name, "会员卡");
        assert_eq!(d.bg_color, "rgb(55,112,179)");
        assert_eq!(rgb("rgb( 1, 2 ,3)").as_deref(), Some("rgb(1,2,3)"));
    }

    #[test]
    fn bad_designs_name_the_field() {
        let mut d = design();
        d.form.required.clear();
        assert_eq!(field_of(validate(d)), "/form/required");
        let mut d = design();
        d.form.optional.push("mobile".into());
        assert_eq!(field_of(validate(d)), "/form/optional/2");
        let mut d = design();
        d.form.optional.push("shoe_size".into());
        assert_eq!(field_of(validate(d)), "/form/optional/2");
        let mut d = design();
        d.bg_color = "blue".into();
        assert_eq!(field_of(validate(d)), "/bg_color");
        let mut d = design();
        d.write_off_type = "hologram".into();
        assert_eq!(field_of(validate(d)), "/write_off_type");
    }

    #[test]
    fn the_form_is_sent_as_strings_holding_json() {
        let body = form_body("T1", &validate(design()).unwrap().form);
        let required: Value =
            serde_json::from_str(body["fields"]["required"].as_str().unwrap()).unwrap();
        assert_eq!(required["common_fields"][0], "OPEN_FORM_FIELD_MOBILE");
        let optional: Value =
            serde_json::from_str(body["fields"]["optional"].as_str().unwrap()).unwrap();
        assert_eq!(optional["common_fields"][1], "OPEN_FORM_FIELD_BIRTHDAY");
    }

    #[test]
    fn the_card_links_to_the_members_own_page_when_the_origin_is_known() {
        let mut d = validate(design()).unwrap();
        d.columns = vec![Column::Points];
        let home = "https://pay.example/m/m1/com.trellis.membership/me";
        let body = template_body(&d, &Levels::default(), "zh-CN", Some(home)).unwrap();
        assert_eq!(
            body["card_action_list"],
            json!([{"code": "MEMBER_HOME", "text": "会员中心", "url_type": "url", "url": home}])
        );
        let body = template_body(&d, &Levels::default(), "zh-CN", None).unwrap();
        assert!(body.get("card_action_list").is_none());
    }

    #[test]
    fn the_template_carries_style_columns_and_levels() {
        let levels = Levels {
            levels: crate::levels::validate(vec![crate::levels::Level {
                id: String::new(),
                name: "金卡".into(),
                kind: crate::levels::Kind::Normal,
                threshold: Some(0),
                experience: None,
                benefits: "9.5折".into(),
                discount: Some(95),
                icon: None,
            }])
            .unwrap(),
            revision: 1,
        };
        let body = template_body(&validate(design()).unwrap(), &levels, "zh-CN", None).unwrap();
        assert_eq!(body["template_style_info"]["bg_color"], "rgb(55,112,179)");
        assert_eq!(body["column_info_list"][0]["code"], "POINT");
        assert_eq!(body["column_info_list"][1]["code"], "LEVEL");
        let rules: Vec<&str> = body["field_rule_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["field_name"].as_str().unwrap())
            .collect();
        for needed in ["Point", "Balance", "Level", "OpenDate", "ValidDate"] {
            assert!(rules.contains(&needed), "{needed} in {rules:?}");
        }
        assert!(body.get("template_form_config").is_none());
        assert_eq!(body["card_level_conf"][0]["level"], "lv1");
        assert_eq!(body["card_level_conf"][0]["level_show_name"], "金卡");
    }

    #[test]
    fn benefits_open_a_page_and_a_level_column_needs_levels() {
        let mut d = validate(design()).unwrap();
        d.columns = vec![Column::Benefits];
        assert!(matches!(
            template_body(&d, &Levels::default(), "zh-CN", None),
            Err(Error::Conflict(_))
        ));
        d.columns = vec![Column::Level];
        assert!(matches!(
            template_body(&d, &Levels::default(), "zh-CN", None),
            Err(Error::Conflict(_))
        ));
        let mut d = design();
        d.columns.clear();
        assert_eq!(field_of(validate(d)), "/columns");
        let mut d = design();
        d.write_off_type = "text".into();
        assert_eq!(field_of(validate(d)), "/write_off_type");
    }

    #[test]
    fn long_benefits_are_shown_over_several_lines() {
        let split = lines(&"权".repeat(450), 200);
        assert_eq!(
            split.iter().map(|l| l.chars().count()).collect::<Vec<_>>(),
            [200, 200, 50]
        );
    }

    #[test]
    fn an_empty_optional_form_part_is_left_out() {
        let mut d = validate(design()).unwrap();
        d.form.optional.clear();
        let body = form_body("T1", &d.form);
        assert!(body["fields"].get("optional").is_none());
    }

    #[test]
    fn a_claim_link_is_decoded_once_and_only_when_encoded() {
        let inner = "https://p.test/cb?x=a%3Db";
        assert_eq!(decoded_link(inner), inner, "already decoded: kept");
        let encoded = "https%3A%2F%2Fp.test%2Fcb%3Fx%3Da%253Db";
        assert_eq!(decoded_link(encoded), inner);
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        // A PNG signature and IHDR: all the header the size check reads.
        let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        bytes.extend_from_slice(b"IHDR");
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        bytes
    }

    #[test]
    fn images_follow_alipay_s_rules_for_where_they_go() {
        assert!(check_image("logo", "png", &png(500, 500)).is_ok());
        assert!(
            check_image("logo", "png", &png(600, 500)).is_err(),
            "not square"
        );
        assert!(
            check_image("logo", "png", &png(400, 400)).is_err(),
            "too small"
        );
        assert!(check_image("background", "png", &png(1020, 643)).is_ok());
        assert!(check_image("background", "png", &png(1000, 643)).is_err());
        assert!(
            check_image("logo", "jpg", &png(500, 500)).is_err(),
            "a PNG sent as JPEG"
        );
        assert!(check_image("anywhere", "png", &png(500, 500)).is_err());
        assert!(check_image("icon", "png", b"not an image").is_err());
    }
}
