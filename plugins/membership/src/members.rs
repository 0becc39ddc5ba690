//! The merchant's members: records, indexes for search, the ledger of experience, points and
//! balance changes, and the card sync that follows every change.
//!
//! Key layout (one kv namespace per merchant, so nothing here names the merchant):
//!
//! | key | value |
//! |---|---|
//! | `m/{id}` | the member (`id` is a 10-digit sequence: keys list in joining order) |
//! | `ix/mobile/{mobile}/{id}` | `1`: search by mobile is a prefix range |
//! | `ix/name/{lowercased name}/{id}` | `1`: search by name is a prefix range |
//! | `ix/card/{card no}` | member id, for our and Alipay's card numbers |
//! | `ix/level/{level}/{id}` | `1`: members of a level |
//! | `ix/user/{u:user id or o:open id}` | member id: one member (and card) per Alipay user |
//! | `ix/sync/{id}` | `1` while the member's card sync is pending or failing |
//! | `l/{id}/{9999999999 - seq}` | a ledger entry: newest first in key order |
//! | `src/{id}/{source}/{source id}` | the ledger entry that applied it: a replay credits nothing |
//! | `seq/member` | the member id counter |
//! | `count/members` | how many members there are (the package's `max_members` is checked on it) |
//!
//! Invariant: a change is applied at most once per (source, source id). The member record is
//! the single source of truth: a change lands there together with its ledger entry in the
//! record's `journal` (one compare-and-swap), and is then copied to `l/…` and `src/…` before it
//! leaves the journal, so at every moment it is visible in one of the two places. Index keys
//! are written before the record that they point to and checked against it when read.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trellis_host_api::prelude::*;

use crate::card::Card;
use crate::levels::{Kind, Levels};
use crate::util;

/// Compare-and-swap rounds before a write gives up with a conflict.
const ROUNDS: usize = 16;
const LEDGER_TOP: u64 = 9_999_999_999;

/// A member's card against ours (`state`: `none`, `synced`, `pending` or `failed`).
pub use crate::card::SyncStatus as CardSync;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: u64,
    pub source: String,
    pub source_id: String,
    pub experience: i64,
    pub points: i64,
    pub balance: i64,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mobile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    pub experience: i64,
    pub points: i64,
    /// In cents.
    pub balance: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_card_no: Option<String>,
    pub external_card_no: String,
    pub opened_at_ms: u64,
    /// `alipay` (opened the card) or `import`.
    pub source: String,
    /// Ledger entries so far.
    #[serde(default)]
    pub seq: u64,
    /// Applied changes not yet copied to the ledger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<Entry>,
    #[serde(default)]
    pub card_sync: CardSync,
    pub updated_at_ms: u64,
}

pub fn member_key(id: &str) -> String {
    format!("m/{id}")
}

fn ledger_key(id: &str, seq: u64) -> String {
    format!("l/{id}/{:010}", LEDGER_TOP.saturating_sub(seq))
}

/// Per member: a request id reused for another member is that member's own change.
fn source_key(id: &str, source: &str, source_id: &str) -> String {
    format!("src/{id}/{source}/{source_id}")
}

fn level_key(level: Option<&str>, id: &str) -> String {
    format!("ix/level/{}/{id}", level.unwrap_or("-"))
}

/// The name index key; names are cut to 120 bytes in it (keys are at most 256).
pub fn name_key(name: &str, id: &str) -> String {
    format!("ix/name/{}/{id}", util::key_segment(name))
}

fn sync_key(id: &str) -> String {
    format!("ix/sync/{id}")
}

/// Removes a member's old level index key, unless a concurrent change has moved the member
/// back to that level meanwhile (the key is theirs then).
fn drop_level_key(id: &str, old: Option<&str>) -> Result<()> {
    let current = load(id)?.map(|(m, _)| m.level);
    if current.as_ref().is_none_or(|level| level.as_deref() != old) {
        kv::delete(&level_key(old, id))?;
    }
    Ok(())
}

pub fn user_key(user_id: Option<&str>, open_id: Option<&str>) -> Option<String> {
    match (user_id, open_id) {
        (Some(u), _) if !u.is_empty() => Some(format!("ix/user/u:{u}")),
        (_, Some(o)) if !o.is_empty() => Some(format!("ix/user/o:{o}")),
        _ => None,
    }
}

fn internal(e: serde_json::Error) -> Error {
    Error::internal(e.to_string())
}

/// A new member id: the next value of the counter, zero-padded so keys sort by joining order.
pub fn next_id() -> Result<String> {
    Ok(format!("{:010}", kv::increment("seq/member", 1)?))
}

pub fn load(id: &str) -> Result<Option<(Member, u64)>> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    kv::get_json::<Member>(&member_key(id))
}

pub fn find_by_card(card_no: &str) -> Result<Option<Member>> {
    if card_no.is_empty() || card_no.len() > 64 {
        return Ok(None);
    }
    let Some(entry) = kv::get(&format!("ix/card/{card_no}"))? else {
        return Ok(None);
    };
    let id = String::from_utf8_lossy(&entry.value).into_owned();
    Ok(load(&id)?
        .map(|(m, _)| m)
        .filter(|m| m.external_card_no == card_no || m.biz_card_no.as_deref() == Some(card_no)))
}

pub fn find_by_user(user_id: Option<&str>, open_id: Option<&str>) -> Result<Option<Member>> {
    let Some(key) = user_key(user_id, open_id) else {
        return Ok(None);
    };
    let Some(entry) = kv::get(&key)? else {
        return Ok(None);
    };
    let id = String::from_utf8_lossy(&entry.value).into_owned();
    // The record must belong to this user: a claim left by an interrupted activation may
    // point at a member another user holds.
    Ok(load(&id)?.map(|(m, _)| m).filter(|m| {
        (user_id.is_some() && m.user_id.as_deref() == user_id)
            || (open_id.is_some() && m.open_id.as_deref() == open_id)
    }))
}

/// Stores a new member: index keys first, then the record (which makes them count).
pub fn create(member: &Member) -> Result<()> {
    let id = &member.id;
    if !member.mobile.is_empty() {
        kv::set_json(&format!("ix/mobile/{}/{id}", member.mobile), &1)?;
    }
    if !member.name.is_empty() {
        kv::set_json(&name_key(&member.name, id), &1)?;
    }
    kv::compare_and_swap(
        &format!("ix/card/{}", member.external_card_no),
        None,
        id.as_bytes(),
    )?;
    if let Some(no) = &member.biz_card_no {
        kv::compare_and_swap(&format!("ix/card/{no}"), None, id.as_bytes())?;
    }
    kv::set_json(&level_key(member.level.as_deref(), id), &1)?;
    let bytes = serde_json::to_vec(member).map_err(internal)?;
    match kv::compare_and_swap(&member_key(id), None, &bytes)? {
        kv::CasOutcome::Stored(_) => {
            kv::increment(COUNT_KEY, 1)?;
            Ok(())
        }
        kv::CasOutcome::Conflict(_) => Err(Error::Conflict(format!("member {id} exists"))),
    }
}

/// Reads, in one host call, the keys [`create`] checks for new members (their records and card
/// numbers), so creating many of them does not read key by key.
pub fn prefetch_new(members: &[Member]) -> Result<()> {
    let keys: Vec<String> = members
        .iter()
        .flat_map(|m| [member_key(&m.id), format!("ix/card/{}", m.external_card_no)])
        .collect();
    for chunk in keys.chunks(256) {
        kv::get_many(chunk)?;
    }
    Ok(())
}

const COUNT_KEY: &str = "count/members";

/// How many members the merchant has.
pub fn count() -> Result<i64> {
    kv::increment(COUNT_KEY, 0)
}

/// Whether the merchant's packages allow one more member: the engine sends the quota as
/// `x-trellis-max-members` when a package sets one. Checked before each new member, so
/// simultaneous sign-ups may pass it by the few in flight.
pub fn room_for_one(request: &Request) -> Result<bool> {
    match max_members(request) {
        Some(max) => Ok(count()? < max),
        None => Ok(true),
    }
}

/// The member quota the engine sent, if the merchant's packages set one.
pub fn max_members(request: &Request) -> Option<i64> {
    request
        .header("x-trellis-max-members")
        .and_then(|m| m.parse::<i64>().ok())
}

/// A change requested by the merchant, another plugin or an event.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    #[serde(default)]
    pub experience: i64,
    #[serde(default)]
    pub points: i64,
    /// In cents.
    #[serde(default)]
    pub balance: i64,
    #[serde(default)]
    pub reason: String,
    /// Grants a locked level: the member's experience becomes the level's fixed value.
    #[serde(default)]
    pub grant_level: Option<String>,
    /// Releases a locked level: the level follows experience again.
    #[serde(default)]
    pub release_level: bool,
    /// Makes the request idempotent: a second request with the same id changes nothing.
    #[serde(default)]
    pub request_id: Option<String>,
}

const LIMIT: i64 = 1_000_000_000_000;

impl Adjustment {
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("experience", self.experience),
            ("points", self.points),
            ("balance", self.balance),
        ] {
            if v.unsigned_abs() > LIMIT.unsigned_abs() {
                return Err(Error::field(format!("/{name}"), "is out of range"));
            }
        }
        let reason = self.reason.trim();
        if reason.is_empty() || reason.chars().count() > 200 {
            return Err(Error::field(
                "/reason",
                "a reason of 1 to 200 characters is required",
            ));
        }
        if self.grant_level.is_some() && (self.release_level || self.experience != 0) {
            return Err(Error::field(
                "/grant_level",
                "granting a locked level sets the experience; send it alone",
            ));
        }
        if self.experience == 0
            && self.points == 0
            && self.balance == 0
            && self.grant_level.is_none()
            && !self.release_level
        {
            return Err(Error::invalid("the adjustment changes nothing"));
        }
        if let Some(id) = &self.request_id
            && !valid_source_id(id)
        {
            return Err(Error::field(
                "/request_id",
                "must be 1 to 128 characters without spaces",
            ));
        }
        Ok(())
    }
}

pub fn valid_source_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// What applying a change did.
#[derive(Debug)]
pub struct Applied {
    pub member: Member,
    /// False when (source, source id) had been applied before: nothing changed now.
    pub applied: bool,
    pub entry: Option<Entry>,
}

/// Applies `adj` to member `id` at most once per (`source`, `source_id`).
pub fn apply(id: &str, adj: &Adjustment, source: &str, source_id: &str) -> Result<Applied> {
    let levels = Levels::load()?;
    for _ in 0..ROUNDS {
        // The record first, then the source mark: a flush writes the mark before it clears the
        // journal, so a change applied before this read is in one of the two.
        let (member, version) =
            load(id)?.ok_or_else(|| Error::not_found(format!("member {id}")))?;
        let replayed = member
            .journal
            .iter()
            .any(|e| e.source == source && e.source_id == source_id);
        if replayed || kv::get(&source_key(id, source, source_id))?.is_some() {
            let member = flush(id)?.unwrap_or(member);
            return Ok(Applied {
                member,
                applied: false,
                entry: None,
            });
        }
        let mut next = member.clone();
        let out_of_range = || Error::Conflict("the result would be out of range".into());
        next.experience = next
            .experience
            .checked_add(adj.experience)
            .ok_or_else(out_of_range)?;
        next.points = next
            .points
            .checked_add(adj.points)
            .ok_or_else(out_of_range)?;
        next.balance = next
            .balance
            .checked_add(adj.balance)
            .ok_or_else(out_of_range)?;
        if next.points < 0 {
            return Err(Error::Conflict(format!(
                "the member has {} points; cannot take {}",
                member.points, -adj.points
            )));
        }
        if next.balance < 0 {
            return Err(Error::Conflict(format!(
                "the member's balance is {}; cannot take {}",
                util::yuan(member.balance),
                util::yuan(-adj.balance)
            )));
        }
        if next.experience < 0 {
            next.experience = 0;
        }
        let mut current = member.level.clone();
        if adj.release_level {
            current = None;
        }
        if let Some(grant) = &adj.grant_level {
            let level = levels
                .get(grant)
                .filter(|l| l.kind == Kind::Locked)
                .ok_or_else(|| Error::field("/grant_level", "must be a locked level's id"))?;
            next.experience = level.experience.unwrap_or(0);
            current = Some(level.id.clone());
        }
        next.level = levels.level_for(next.experience, current.as_deref());
        next.seq = member.seq + 1;
        next.updated_at_ms = util::now_ms();
        let entry = Entry {
            seq: next.seq,
            at_ms: next.updated_at_ms,
            source: source.to_owned(),
            source_id: source_id.to_owned(),
            experience: next.experience - member.experience,
            points: adj.points,
            balance: adj.balance,
            reason: adj.reason.trim().to_owned(),
            level_from: member.level.clone(),
            level_to: next.level.clone(),
        };
        next.journal.push(entry.clone());
        let card_changed = next.level != member.level
            || next.points != member.points
            || next.balance != member.balance;
        if card_changed && member.biz_card_no.is_some() {
            // Listed as pending before it is, so a call cut short still leaves it findable.
            next.card_sync.state = "pending".into();
            kv::set_json(&sync_key(id), &1)?;
        }
        if next.level != member.level {
            kv::set_json(&level_key(next.level.as_deref(), id), &1)?;
        }
        let bytes = serde_json::to_vec(&next).map_err(internal)?;
        match kv::compare_and_swap(&member_key(id), Some(version), &bytes)? {
            kv::CasOutcome::Stored(_) => {}
            kv::CasOutcome::Conflict(_) => continue,
        }
        if next.level != member.level {
            drop_level_key(id, member.level.as_deref())?;
        }
        let member = flush(id)?.unwrap_or(next);
        return Ok(Applied {
            member,
            applied: true,
            entry: Some(entry),
        });
    }
    Err(Error::Conflict(format!(
        "member {id} is being changed by others; try again"
    )))
}

/// Copies the journal to the ledger and the source marks, then empties it. Returns the member
/// as stored afterwards; a concurrent writer may leave the journal for the next flush.
pub fn flush(id: &str) -> Result<Option<Member>> {
    for _ in 0..ROUNDS {
        let Some((mut member, version)) = load(id)? else {
            return Ok(None);
        };
        if member.journal.is_empty() {
            return Ok(Some(member));
        }
        for entry in &member.journal {
            kv::set_json(&ledger_key(id, entry.seq), entry)?;
            kv::set_json(
                &source_key(id, &entry.source, &entry.source_id),
                &json!({"member": id, "seq": entry.seq}),
            )?;
        }
        member.journal.clear();
        let bytes = serde_json::to_vec(&member).map_err(internal)?;
        if let kv::CasOutcome::Stored(_) =
            kv::compare_and_swap(&member_key(id), Some(version), &bytes)?
        {
            return Ok(Some(member));
        }
    }
    Ok(load(id)?.map(|(m, _)| m))
}

/// Recomputes one member's level against the current levels (a locked level stays).
/// Returns the member when the level changed.
pub fn recompute(id: &str, levels: &Levels) -> Result<Option<Member>> {
    for _ in 0..ROUNDS {
        let Some((member, version)) = load(id)? else {
            return Ok(None);
        };
        let level = levels.level_for(member.experience, member.level.as_deref());
        if level == member.level {
            return Ok(None);
        }
        let mut next = member.clone();
        next.level = level;
        next.updated_at_ms = util::now_ms();
        if next.biz_card_no.is_some() {
            next.card_sync.state = "pending".into();
            kv::set_json(&sync_key(id), &1)?;
        }
        kv::set_json(&level_key(next.level.as_deref(), id), &1)?;
        let bytes = serde_json::to_vec(&next).map_err(internal)?;
        if let kv::CasOutcome::Stored(_) =
            kv::compare_and_swap(&member_key(id), Some(version), &bytes)?
        {
            drop_level_key(id, member.level.as_deref())?;
            return Ok(Some(next));
        }
    }
    Err(Error::Conflict(format!(
        "member {id} is being changed by others; try again"
    )))
}

/// Sends the member's level, points and balance to the Alipay card (`card.update`) and records
/// the outcome on the member. `Err` when Alipay failed: the caller schedules a retry.
pub fn sync_card(id: &str) -> Result<Member> {
    let (member, _) = load(id)?.ok_or_else(|| Error::not_found(format!("member {id}")))?;
    let Some(card_no) = member.biz_card_no.clone() else {
        return Ok(member);
    };
    if member.card_sync.state == "synced" && member.card_sync.synced_seq == member.seq {
        return Ok(member);
    }
    let (card, _) = Card::load()?;
    let mut info = json!({
        "point": member.points.to_string(),
        "balance": util::yuan(member.balance),
    });
    if let Some(level) = &member.level {
        info["level"] = json!(level);
    }
    let body = json!({
        "target_card_no": card_no,
        "target_card_no_type": "BIZ_CARD",
        "occur_time": util::beijing(util::now_ms()),
        "card_info": info,
    });
    let outcome = card.template_id.as_deref().map_or(Ok(Value::Null), |_| {
        alipay::call("alipay.marketing.card.update", &body)
    });
    let sent_seq = member.seq;
    let failure = outcome.as_ref().err().cloned();
    let updated = kv::update::<Member, _>(&member_key(id), |stored| {
        let mut m = stored.unwrap_or_else(|| member.clone());
        match &failure {
            None => {
                m.card_sync.synced_seq = sent_seq;
                let pending = m.seq != sent_seq;
                m.card_sync.succeeded();
                if pending {
                    m.card_sync.state = "pending".into();
                }
            }
            Some(e) => m.card_sync.failed(e),
        }
        m
    })?;
    match failure {
        None => {
            if updated.card_sync.state == "synced" {
                kv::delete(&sync_key(id))?;
            }
            Ok(updated)
        }
        Some(e) => {
            kv::set_json(&sync_key(id), &1)?;
            Err(e)
        }
    }
}

/// One page of ledger entries, newest first (unflushed journal entries included).
pub fn ledger(
    member: &Member,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<Entry>, Option<String>)> {
    let mut entries: Vec<Entry> = if after.is_none() {
        member.journal.iter().rev().cloned().collect()
    } else {
        Vec::new()
    };
    let prefix = format!("l/{}/", member.id);
    let after = after.map(|a| format!("{prefix}{a}"));
    let page = kv::list(&prefix, after.as_deref(), limit)?;
    for item in &page.items {
        let entry: Entry = serde_json::from_slice(&item.entry.value).map_err(internal)?;
        if !entries.iter().any(|e| e.seq == entry.seq) {
            entries.push(entry);
        }
    }
    let next = page.next.map(|k| k.trim_start_matches(&prefix).to_owned());
    Ok((entries, next))
}

/// How a list of members is searched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    All,
    Mobile(String),
    Name(String),
    Card(String),
    Level(String),
    SyncFailing,
}

/// A page of members and the cursor to the next one. Index entries are checked against the
/// record they point to, so an index left behind by an interrupted write never shows.
pub fn search(
    by: &Search,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<Member>, Option<String>)> {
    let limit = limit.clamp(1, 200);
    type Check = Box<dyn Fn(&Member) -> bool>;
    let (prefix, check): (String, Check) = match by {
        Search::All => {
            let page = kv::list("m/", after.map(|a| format!("m/{a}")).as_deref(), limit)?;
            let mut out = Vec::new();
            for item in &page.items {
                out.push(serde_json::from_slice(&item.entry.value).map_err(internal)?);
            }
            let next = page.next.map(|k| k.trim_start_matches("m/").to_owned());
            return Ok((out, next));
        }
        Search::Card(no) => {
            return Ok((find_by_card(no)?.into_iter().collect(), None));
        }
        Search::Mobile(q) => {
            let q = q.clone();
            (
                format!("ix/mobile/{q}"),
                Box::new(move |m: &Member| m.mobile.starts_with(&q)),
            )
        }
        Search::Name(q) => {
            let q = util::key_segment(q);
            (
                format!("ix/name/{q}"),
                Box::new(move |m: &Member| util::key_segment(&m.name).starts_with(&q)),
            )
        }
        Search::Level(level) => {
            let level = level.clone();
            (
                format!("ix/level/{level}/"),
                Box::new(move |m: &Member| m.level.as_deref() == Some(level.as_str())),
            )
        }
        Search::SyncFailing => (
            "ix/sync/".to_owned(),
            Box::new(|m: &Member| m.card_sync.state != "synced"),
        ),
    };
    let page = kv::list(&prefix, after, limit)?;
    let mut out = Vec::new();
    for item in &page.items {
        let Some(id) = item.key.rsplit('/').next() else {
            continue;
        };
        if let Some((member, _)) = load(id)?
            && check(&member)
        {
            out.push(member);
        }
    }
    Ok((out, page.next))
}

/// The view of a member the admin API returns.
pub fn view(member: &Member, levels: &Levels) -> Value {
    json!({
        "id": member.id,
        "name": member.name,
        "mobile": member.mobile,
        "birthday": member.birthday,
        "gender": member.gender,
        "user_id": member.user_id,
        "open_id": member.open_id,
        "level": member.level,
        "level_name": levels.name_of(member.level.as_deref()),
        "level_locked": member.level.as_deref().and_then(|l| levels.get(l)).is_some_and(|l| l.kind == Kind::Locked),
        "experience": member.experience,
        "points": member.points,
        "balance": util::yuan(member.balance),
        "balance_cents": member.balance,
        "external_card_no": member.external_card_no,
        "biz_card_no": member.biz_card_no,
        "opened_at_ms": member.opened_at_ms,
        "opened_at": util::beijing(member.opened_at_ms),
        "source": member.source,
        "card_sync": member.card_sync,
    })
}

/// A member to import from another system (no Alipay card until the member claims one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    pub mobile: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub birthday: Option<String>,
    #[serde(default)]
    pub gender: Option<String>,
    #[serde(default)]
    pub experience: i64,
    #[serde(default)]
    pub points: i64,
    #[serde(default)]
    pub balance: i64,
}

impl Import {
    /// Why the row cannot be imported, if it cannot.
    pub fn check(&self, mobile: &str) -> Result<(), &'static str> {
        if !valid_mobile(mobile) {
            return Err("invalid mobile");
        }
        for v in [self.experience, self.points, self.balance] {
            if !(0..=LIMIT).contains(&v) {
                return Err("experience, points and balance must be 0 to 10^12");
            }
        }
        if self.birthday.as_ref().is_some_and(|b| !valid_birthday(b)) {
            return Err("birthday must be YYYY-MM-DD or MM-DD");
        }
        if self
            .gender
            .as_ref()
            .is_some_and(|g| !["m", "f", "male", "female"].contains(&g.as_str()))
        {
            return Err("gender must be m or f");
        }
        Ok(())
    }
}

/// `YYYY-MM-DD` or `MM-DD`, as Alipay's form gives birthdays.
pub fn valid_birthday(text: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = text.split('-').collect();
    match parts.as_slice() {
        [y, m, d] => digits(y, 4) && digits(m, 2) && digits(d, 2),
        [m, d] => digits(m, 2) && digits(d, 2),
        _ => false,
    }
}

pub fn valid_mobile(mobile: &str) -> bool {
    (5..=20).contains(&mobile.len())
        && mobile
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'+'))
}

/// The members with exactly this mobile (the index is checked against each record).
pub fn with_mobile(mobile: &str) -> Result<Vec<Member>> {
    let page = kv::list(&format!("ix/mobile/{mobile}/"), None, 8)?;
    let mut out = Vec::new();
    for item in &page.items {
        if let Some(id) = item.key.rsplit('/').next()
            && let Some((m, _)) = load(id)?
            && m.mobile == mobile
        {
            out.push(m);
        }
    }
    Ok(out)
}

/// The prefix of our card numbers, from the card design (`M` before there is one).
pub fn card_prefix() -> Result<String> {
    Ok(Card::load()?.0.card_no_prefix())
}

/// Builds a new member record with the next id and the card number that goes with it.
pub fn new_member(levels: &Levels, prefix: &str, experience: i64) -> Result<Member> {
    let mut member = blank(next_id()?, prefix, "import");
    member.experience = experience;
    member.level = levels.level_for(experience, None);
    Ok(member)
}

/// A member with nothing yet: no card, no points, no level.
pub fn blank(id: String, prefix: &str, source: &str) -> Member {
    let now = util::now_ms();
    Member {
        external_card_no: format!("{prefix}{id}"),
        id,
        user_id: None,
        open_id: None,
        name: String::new(),
        mobile: String::new(),
        birthday: None,
        gender: None,
        level: None,
        experience: 0,
        points: 0,
        balance: 0,
        biz_card_no: None,
        opened_at_ms: now,
        source: source.to_owned(),
        seq: 0,
        journal: Vec::new(),
        card_sync: CardSync::new("none"),
        updated_at_ms: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_keys_list_newest_first() {
        assert!(ledger_key("0000000001", 2) < ledger_key("0000000001", 1));
        assert_eq!(ledger_key("7", 1), "l/7/9999999998");
    }

    #[test]
    fn adjustments_need_a_reason_and_a_change() {
        let mut adj = Adjustment {
            points: 10,
            ..Adjustment::default()
        };
        assert!(matches!(adj.check(), Err(Error::InvalidField(f)) if f.field == "/reason"));
        adj.reason = "birthday gift".into();
        assert!(adj.check().is_ok());
        adj.points = 0;
        assert!(matches!(adj.check(), Err(Error::InvalidInput(_))));
        let granted = Adjustment {
            grant_level: Some("vip".into()),
            experience: 5,
            reason: "x".into(),
            ..Adjustment::default()
        };
        assert!(
            matches!(granted.check(), Err(Error::InvalidField(f)) if f.field == "/grant_level")
        );
    }

    #[test]
    fn imports_refuse_values_out_of_range_and_odd_birthdays() {
        let row = |birthday: &str, points: i64| Import {
            mobile: "13800138000".into(),
            name: String::new(),
            birthday: Some(birthday.into()),
            gender: None,
            experience: 0,
            points,
            balance: 0,
        };
        assert!(row("1990-05-20", 10).check("13800138000").is_ok());
        assert!(row("05-20", 10).check("13800138000").is_ok());
        assert!(row("May 20", 10).check("13800138000").is_err());
        assert!(row("05-20", -1).check("13800138000").is_err());
        assert!(row("05-20", i64::MAX).check("13800138000").is_err());
    }

    #[test]
    fn mobiles_are_digits() {
        assert!(valid_mobile("13800138000"));
        assert!(valid_mobile("+8613800138000"));
        assert!(!valid_mobile("138-0013"));
        assert!(!valid_mobile("12"));
    }

    #[test]
    fn one_alipay_user_maps_to_one_key() {
        assert_eq!(
            user_key(Some("2088001"), Some("o1")).as_deref(),
            Some("ix/user/u:2088001")
        );
        assert_eq!(user_key(None, Some("o1")).as_deref(), Some("ix/user/o:o1"));
        assert_eq!(user_key(Some(""), None), None);
    }
}
