//! Member levels (会员等级): ordered, channel-neutral, either *normal* (reached by accumulating
//! experience past a threshold) or *locked* (granted at one fixed experience value with fixed
//! benefits, and never moved by recomputation).
//!
//! Invariant: a stored level list is valid — at least one level, unique ids and names, and
//! strictly increasing thresholds among normal levels in list order.

use serde::{Deserialize, Serialize};
use trellis_host_api::prelude::*;

pub const KEY: &str = "cfg/levels";
const MAX_LEVELS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Normal,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Stable code (`[a-z0-9-]`, ≤ 32), also the card's level code at Alipay; given when absent.
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub kind: Kind,
    /// Normal levels: the experience from which the level applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i64>,
    /// Locked levels: the experience a member is set to when granted the level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<i64>,
    #[serde(default)]
    pub benefits: String,
    /// Percent of the price a member pays, 1–100 (95 is 9.5折); none for no discount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<u8>,
    /// An Alipay image id (from `POST /card/images`): `card_level_conf.level_icon` takes only
    /// uploaded images (alipay-sdk-java-all `TemplateCardLevelConfDTO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    pub levels: Vec<Level>,
    /// Bumped on every change; the card sync compares it.
    #[serde(default)]
    pub revision: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelsInput {
    pub levels: Vec<Level>,
}

fn field(index: usize, name: &str, message: &str) -> Error {
    Error::field(format!("/levels/{index}/{name}"), message)
}

fn valid_id(id: &str) -> bool {
    // Starts with a letter or digit: `-` alone stands for "no level" in the level index.
    id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks and normalises a level list: trims text, gives missing ids (`lv1`, `lv2`, … not in
/// use), and reports the first problem as a field error.
pub fn validate(mut levels: Vec<Level>) -> Result<Vec<Level>> {
    if levels.is_empty() {
        return Err(Error::field("/levels", "at least one level is required"));
    }
    if levels.len() > MAX_LEVELS {
        return Err(Error::field(
            "/levels",
            format!("at most {MAX_LEVELS} levels"),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    let mut last_threshold: Option<i64> = None;
    for (i, level) in levels.iter_mut().enumerate() {
        level.name = level.name.trim().to_owned();
        level.benefits = level.benefits.trim().to_owned();
        if level.name.is_empty() || level.name.chars().count() > 32 {
            return Err(field(i, "name", "must be 1 to 32 characters"));
        }
        if !names.insert(level.name.to_lowercase()) {
            return Err(field(i, "name", "is used by another level"));
        }
        if !level.id.is_empty() {
            if !valid_id(&level.id) {
                return Err(field(
                    i,
                    "id",
                    "must be 1 to 32 of a-z, 0-9 and -, starting with a letter or digit",
                ));
            }
            if !ids.insert(level.id.clone()) {
                return Err(field(i, "id", "is used by another level"));
            }
        }
        if level.benefits.chars().count() > 500 {
            return Err(field(i, "benefits", "must be at most 500 characters"));
        }
        if let Some(d) = level.discount
            && !(1..=100).contains(&d)
        {
            return Err(field(i, "discount", "must be 1 to 100 (percent paid)"));
        }
        if let Some(icon) = &level.icon
            && !crate::card::image_id_ok(icon)
        {
            return Err(field(
                i,
                "icon",
                "must be an Alipay image id (upload it with POST /card/images first)",
            ));
        }
        match level.kind {
            Kind::Normal => {
                if level.experience.is_some() {
                    return Err(field(
                        i,
                        "experience",
                        "only locked levels have a fixed experience",
                    ));
                }
                let Some(threshold) = level.threshold else {
                    return Err(field(i, "threshold", "a normal level needs a threshold"));
                };
                if threshold < 0 {
                    return Err(field(i, "threshold", "must not be negative"));
                }
                if last_threshold.is_some_and(|last| threshold <= last) {
                    return Err(field(
                        i,
                        "threshold",
                        "must be higher than the previous normal level's",
                    ));
                }
                last_threshold = Some(threshold);
            }
            Kind::Locked => {
                if level.threshold.is_some() {
                    return Err(field(i, "threshold", "a locked level has no threshold"));
                }
                match level.experience {
                    Some(e) if e >= 0 => {}
                    _ => {
                        return Err(field(
                            i,
                            "experience",
                            "a locked level needs its fixed experience (≥ 0)",
                        ));
                    }
                }
            }
        }
    }
    let mut next = 1;
    for level in &mut levels {
        if level.id.is_empty() {
            while ids.contains(&format!("lv{next}")) {
                next += 1;
            }
            level.id = format!("lv{next}");
            ids.insert(level.id.clone());
        }
    }
    Ok(levels)
}

impl Levels {
    pub fn load() -> Result<Self> {
        Ok(kv::get_json::<Levels>(KEY)?
            .map(|(l, _)| l)
            .unwrap_or_default())
    }

    pub fn get(&self, id: &str) -> Option<&Level> {
        self.levels.iter().find(|l| l.id == id)
    }

    /// The level for `experience` when the member holds `current`: a locked level that still
    /// exists is kept; otherwise the highest normal level whose threshold is reached.
    pub fn level_for(&self, experience: i64, current: Option<&str>) -> Option<String> {
        if let Some(level) = current.and_then(|id| self.get(id))
            && level.kind == Kind::Locked
        {
            return Some(level.id.clone());
        }
        self.levels
            .iter()
            .rfind(|l| l.kind == Kind::Normal && l.threshold.is_some_and(|t| t <= experience))
            .map(|l| l.id.clone())
    }

    /// The level's display name, or the id when the level is gone.
    pub fn name_of(&self, id: Option<&str>) -> Option<String> {
        id.map(|id| {
            self.get(id)
                .map_or_else(|| id.to_owned(), |l| l.name.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(name: &str, threshold: i64) -> Level {
        Level {
            id: String::new(),
            name: name.into(),
            kind: Kind::Normal,
            threshold: Some(threshold),
            experience: None,
            benefits: String::new(),
            discount: None,
            icon: None,
        }
    }

    fn locked(name: &str, experience: i64) -> Level {
        Level {
            kind: Kind::Locked,
            threshold: None,
            experience: Some(experience),
            ..normal(name, 0)
        }
    }

    fn field_of(result: Result<Vec<Level>>) -> String {
        match result {
            Err(Error::InvalidField(f)) => f.field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn levels_get_ids_and_keep_given_ones() {
        let mut vip = locked("VIP", 5000);
        vip.id = "lv1".into();
        let levels = validate(vec![normal("普通", 0), vip, normal("金卡", 100)]).unwrap();
        let ids: Vec<&str> = levels.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["lv2", "lv1", "lv3"]);
    }

    #[test]
    fn invalid_level_lists_name_the_field() {
        assert_eq!(field_of(validate(vec![])), "/levels");
        assert_eq!(
            field_of(validate(vec![normal("A", 0), normal("a ", 10)])),
            "/levels/1/name"
        );
        assert_eq!(
            field_of(validate(vec![normal("A", 10), normal("B", 10)])),
            "/levels/1/threshold"
        );
        assert_eq!(
            field_of(validate(vec![
                normal("A", 10),
                locked("L", 1),
                normal("B", 5)
            ])),
            "/levels/2/threshold"
        );
        let mut no_experience = locked("L", 1);
        no_experience.experience = None;
        assert_eq!(
            field_of(validate(vec![no_experience])),
            "/levels/0/experience"
        );
        let mut discount = normal("A", 0);
        discount.discount = Some(0);
        assert_eq!(field_of(validate(vec![discount])), "/levels/0/discount");
    }

    #[test]
    fn recomputation_follows_thresholds_but_never_moves_a_locked_level() {
        let levels = Levels {
            levels: validate(vec![
                normal("Silver", 0),
                normal("Gold", 100),
                locked("Staff", 0),
                normal("Platinum", 1000),
            ])
            .unwrap(),
            revision: 1,
        };
        assert_eq!(levels.level_for(0, None).as_deref(), Some("lv1"));
        assert_eq!(levels.level_for(150, Some("lv1")).as_deref(), Some("lv2"));
        assert_eq!(levels.level_for(5000, None).as_deref(), Some("lv4"));
        // Locked: kept whatever the experience.
        assert_eq!(levels.level_for(5000, Some("lv3")).as_deref(), Some("lv3"));
        // A level that no longer exists is recomputed.
        assert_eq!(levels.level_for(150, Some("gone")).as_deref(), Some("lv2"));
    }

    #[test]
    fn below_the_first_threshold_there_is_no_level() {
        let levels = Levels {
            levels: validate(vec![normal("Gold", 100)]).unwrap(),
            revision: 1,
        };
        assert_eq!(levels.level_for(99, None), None);
    }
}
