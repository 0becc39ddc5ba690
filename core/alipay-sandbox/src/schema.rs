//! Request checks as strict as Alipay's documented request models: required fields, lengths,
//! enumerations, formats and nesting, each refusal answered with the code family of the
//! product it belongs to.
//!
//! Invariant: a product handler reads a business field only through a [`Fields`] check, so a
//! field the documentation requires is never silently defaulted.
//!
//! Codes: trades answer `40004 ACQ.INVALID_PARAMETER` for a missing or malformed field (Alipay's
//! trade error tables). For the other products Alipay's business codes for malformed fields are
//! not published; the sandbox answers `40001 isv.missing-parameter` and
//! `40002 isv.invalid-parameter` (the gateway's own families), documented in `docs/alipay.md`.

use chrono::NaiveDateTime;
use serde_json::Value;

use crate::gateway::{GatewayFailure, fail};

/// Which product's codes a refusal carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Trade,
    Other,
}

/// Checks on one JSON object (the business content, or an object nested in it), naming each
/// field by its full path in refusals.
pub(crate) struct Fields<'a> {
    value: &'a Value,
    path: String,
    family: Family,
}

impl<'a> Fields<'a> {
    pub(crate) fn of(value: &'a Value, family: Family) -> Self {
        Self {
            value,
            path: String::new(),
            family,
        }
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn missing(&self, key: &str) -> GatewayFailure {
        let name = self.name(key);
        match self.family {
            Family::Trade => fail(
                "40004",
                "ACQ.INVALID_PARAMETER",
                format!("缺少必选参数 {name}"),
            ),
            Family::Other => fail(
                "40001",
                "isv.missing-parameter",
                format!("缺少必选参数 {name}"),
            ),
        }
    }

    pub(crate) fn invalid(&self, key: &str, why: &str) -> GatewayFailure {
        let name = self.name(key);
        match self.family {
            Family::Trade => fail(
                "40004",
                "ACQ.INVALID_PARAMETER",
                format!("参数 {name} 无效: {why}"),
            ),
            Family::Other => fail(
                "40002",
                "isv.invalid-parameter",
                format!("参数 {name} 无效: {why}"),
            ),
        }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.value.get(key).is_some_and(|v| !v.is_null())
    }

    /// A string field that must be present, non-empty and at most `max` characters. A number
    /// where the model says String is refused: Alipay's models type these as strings.
    pub(crate) fn text(&self, key: &str, max: usize) -> Result<&'a str, GatewayFailure> {
        self.optional_text(key, max)?
            .ok_or_else(|| self.missing(key))
    }

    pub(crate) fn optional_text(
        &self,
        key: &str,
        max: usize,
    ) -> Result<Option<&'a str>, GatewayFailure> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if s.chars().count() > max => {
                Err(self.invalid(key, &format!("长度不能超过 {max}")))
            }
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.invalid(key, "必须是字符串")),
        }
    }

    /// A required field whose value is one of `allowed`.
    pub(crate) fn one_of(&self, key: &str, allowed: &[&str]) -> Result<&'a str, GatewayFailure> {
        let value = self.text(key, 64)?;
        self.check_one_of(key, value, allowed)
    }

    pub(crate) fn optional_one_of(
        &self,
        key: &str,
        allowed: &[&str],
    ) -> Result<Option<&'a str>, GatewayFailure> {
        match self.optional_text(key, 64)? {
            Some(value) => self.check_one_of(key, value, allowed).map(Some),
            None => Ok(None),
        }
    }

    fn check_one_of(
        &self,
        key: &str,
        value: &'a str,
        allowed: &[&str],
    ) -> Result<&'a str, GatewayFailure> {
        if allowed.contains(&value) {
            Ok(value)
        } else {
            Err(self.invalid(key, &format!("取值须为 {}", allowed.join("、"))))
        }
    }

    /// An optional `yyyy-MM-dd HH:mm:ss` time.
    pub(crate) fn optional_datetime(&self, key: &str) -> Result<Option<&'a str>, GatewayFailure> {
        match self.optional_text(key, 19)? {
            Some(v) if NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S").is_err() => {
                Err(self.invalid(key, "格式须为 yyyy-MM-dd HH:mm:ss"))
            }
            other => Ok(other),
        }
    }

    pub(crate) fn datetime(&self, key: &str) -> Result<&'a str, GatewayFailure> {
        self.optional_datetime(key)?
            .ok_or_else(|| self.missing(key))
    }

    /// A nested object (absent: `None`).
    pub(crate) fn optional_object(&self, key: &str) -> Result<Option<Fields<'a>>, GatewayFailure> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(Fields {
                value: v,
                path: self.name(key),
                family: self.family,
            })),
            Some(_) => Err(self.invalid(key, "必须是对象")),
        }
    }

    pub(crate) fn object(&self, key: &str) -> Result<Fields<'a>, GatewayFailure> {
        self.optional_object(key)?.ok_or_else(|| self.missing(key))
    }

    /// A list of objects, at most `max` long (absent: empty).
    pub(crate) fn objects(&self, key: &str, max: usize) -> Result<Vec<Fields<'a>>, GatewayFailure> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() > max => {
                Err(self.invalid(key, &format!("不能超过 {max} 项")))
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(_) => Ok(Fields {
                        value: item,
                        path: format!("{}[{i}]", self.name(key)),
                        family: self.family,
                    }),
                    _ => Err(self.invalid(key, "每项必须是对象")),
                })
                .collect(),
            Some(_) => Err(self.invalid(key, "必须是数组")),
        }
    }

    /// A list of strings, each at most `max_len`, at most `max` of them (absent: empty).
    pub(crate) fn strings(
        &self,
        key: &str,
        max: usize,
        max_len: usize,
    ) -> Result<Vec<&'a str>, GatewayFailure> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() > max => {
                Err(self.invalid(key, &format!("不能超过 {max} 项")))
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item.as_str() {
                    Some(s) if !s.is_empty() && s.chars().count() <= max_len => Ok(s),
                    _ => Err(self.invalid(key, &format!("每项须为不超过 {max_len} 的字符串"))),
                })
                .collect(),
            Some(_) => Err(self.invalid(key, "必须是数组")),
        }
    }

    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }
}

/// An amount in yuan as Alipay writes it (`"12.30"`): digits with at most two decimals, within
/// `[0.01, 100000000]`. Returns fen.
pub(crate) fn amount_fen(text: &str) -> Option<i64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || whole.len() > 9
        || frac.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (whole.len() > 1 && whole.starts_with('0'))
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    let fen = whole * 100 + frac;
    (1..=10_000_000_000).contains(&fen).then_some(fen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_refused_with_their_full_path_and_their_product_s_code() {
        let biz = json!({"a": {"b": 3, "c": "x".repeat(11)}, "list": [{"d": "ok"}, 1]});
        let top = Fields::of(&biz, Family::Other);
        let a = top.object("a").ok().unwrap();
        let number = a.text("b", 10).err().unwrap();
        assert_eq!(
            (number.code, number.sub_code.as_str()),
            ("40002", "isv.invalid-parameter")
        );
        assert!(number.sub_msg.contains("a.b"), "{}", number.sub_msg);
        assert!(a.text("c", 10).is_err(), "too long");
        let absent = a.text("z", 10).err().unwrap();
        assert_eq!(absent.code, "40001");
        assert!(
            top.objects("list", 5).is_err(),
            "a number in a list of objects"
        );
        let trade = Fields::of(&biz, Family::Trade)
            .text("nope", 5)
            .err()
            .unwrap();
        assert_eq!(
            (trade.code, trade.sub_code.as_str()),
            ("40004", "ACQ.INVALID_PARAMETER")
        );
    }

    #[test]
    fn amounts_are_yuan_with_two_decimals_within_alipay_s_range() {
        assert_eq!(amount_fen("0.01"), Some(1));
        assert_eq!(amount_fen("12.3"), Some(1230));
        assert_eq!(amount_fen("100000000"), Some(10_000_000_000));
        for bad in [
            "0",
            "0.00",
            "-1",
            "1.234",
            "100000000.01",
            "01.00",
            "1e3",
            "",
            ".5",
        ] {
            assert_eq!(amount_fen(bad), None, "{bad}");
        }
    }
}
