//! Agents' packages (套餐) and their assignment to merchants: what a merchant is entitled to.
//!
//! Invariant: a merchant holds exactly what the published package versions of its active,
//! current assignments say — editing a package changes its draft only, and merchants see the
//! change when the agent publishes a new version and assigns or renews with it. Entitlement is
//! always computed against an explicit `now`, so expiry is decided by the caller's clock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::sql::{self, Millis};
use crate::db::{Page, Paged};
use crate::rbac::Grant;
use crate::tenancy::{NodeKind, Place};

mod assignments;

pub use assignments::{assign, get_assignment, list_assignments, renew, revoke};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("package {0} has no published version; publish it before assigning it")]
    Unpublished(String),
    #[error("the merchant's package for {0} has expired")]
    Expired(String),
    #[error("the merchant is not entitled to {0}")]
    NotEntitled(String),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// The row a lookup found, or [`Error::NotFound`] naming what it looked for.
fn found<T>(row: Option<T>, kind: &'static str, id: &str) -> Result<T, Error> {
    row.ok_or_else(|| Error::NotFound {
        kind,
        id: id.to_owned(),
    })
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// Usage limits a package puts on its plugins; absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Members a merchant may hold (enforced by plugins that keep members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<u64>,
    /// Events delivered to each plugin of the package per merchant per day (UTC+8 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_day: Option<u64>,
}

impl Quotas {
    /// The more generous of two: a merchant holding two packages gets the larger allowance.
    fn union(&self, other: &Quotas) -> Quotas {
        let wider = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        Quotas {
            max_members: wider(self.max_members, other.max_members),
            events_per_day: wider(self.events_per_day, other.events_per_day),
        }
    }
}

/// A list price, for display only: Trellis does not bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// In the currency's minor unit (分 for CNY).
    pub amount: i64,
    #[serde(default = "cny")]
    pub currency: String,
}

fn cny() -> String {
    "CNY".into()
}

/// What a package is: the draft an agent edits, and each published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Plugin ids (such as `com.trellis.membership`), each offered by the partner.
    pub plugins: Vec<String>,
    /// How long an assignment lasts when no end is given.
    pub validity_days: u32,
    #[serde(default)]
    pub quotas: Quotas,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_price: Option<Price>,
}

impl Spec {
    /// Checks the spec; `offered` is what the agent's partner lets its agents package. A draft
    /// may be empty while the agent builds it; a published version holds at least one plugin.
    pub fn validate(&mut self, offered: &BTreeSet<String>, publishing: bool) -> Result<(), Error> {
        self.name = self.name.trim().to_owned();
        if self.name.is_empty() || self.name.chars().count() > 100 {
            return Err(invalid("name", "must be 1 to 100 characters"));
        }
        if self.description.chars().count() > 2_000 {
            return Err(invalid("description", "must be at most 2000 characters"));
        }
        if publishing && self.plugins.is_empty() {
            return Err(invalid(
                "plugins",
                "a published package includes at least one plugin",
            ));
        }
        if self.plugins.len() > 50 {
            return Err(invalid("plugins", "at most 50 plugins"));
        }
        let mut seen = BTreeSet::new();
        for plugin in &self.plugins {
            if !seen.insert(plugin) {
                return Err(invalid("plugins", format!("{plugin} is listed twice")));
            }
            if !offered.contains(plugin) {
                return Err(invalid(
                    "plugins",
                    format!("{plugin} is not offered to agents by the partner"),
                ));
            }
        }
        if self.validity_days == 0 || self.validity_days > 3_660 {
            return Err(invalid("validity_days", "must be 1 to 3660 days"));
        }
        if self.quotas.max_members == Some(0) || self.quotas.events_per_day == Some(0) {
            return Err(invalid(
                "quotas",
                "a quota is at least 1 (leave it out for none)",
            ));
        }
        if let Some(price) = &self.list_price {
            if price.amount < 0 {
                return Err(invalid("list_price", "amount must not be negative"));
            }
            if price.currency.len() != 3 || !price.currency.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(invalid(
                    "list_price",
                    "currency is a 3-letter ISO code such as CNY",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Package {
    pub id: String,
    pub partner_id: String,
    pub agent_id: String,
    /// What the agent is editing; merchants never see it until published.
    pub draft: Spec,
    /// The latest published version (0: never published).
    pub published_version: i32,
    /// Whether the draft differs from the latest published version.
    pub unpublished_changes: bool,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PackageVersion {
    pub package_id: String,
    pub version: i32,
    pub spec: Spec,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Assignment {
    pub id: String,
    pub package_id: String,
    pub package_version: i32,
    pub package_name: String,
    pub plugins: Vec<String>,
    pub merchant_id: String,
    pub agent_id: String,
    pub partner_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// `active`, `scheduled`, `expired` or `revoked` (the first three as of the request).
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a merchant holds for one plugin right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entitlement {
    pub plugin_id: String,
    /// When the last of the covering assignments ends.
    pub ends_at: DateTime<Utc>,
    pub quotas: Quotas,
}

fn spec_of(text: &str) -> Result<Spec, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::Db(sea_orm::DbErr::Custom(format!("stored package spec: {e}"))))
}

fn spec_text(spec: &Spec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

/// A package with its latest published spec, as [`PACKAGE_COLUMNS`] read it.
#[derive(FromQueryResult)]
struct PackageRow {
    id: String,
    partner_id: String,
    agent_id: String,
    draft: String,
    published_version: i32,
    status: String,
    created_at: Millis,
    updated_at: Millis,
    published_spec: Option<String>,
}

impl TryFrom<PackageRow> for Package {
    type Error = Error;

    fn try_from(row: PackageRow) -> Result<Self, Error> {
        let draft = spec_of(&row.draft)?;
        let published = row.published_spec.map(|s| spec_of(&s)).transpose()?;
        Ok(Package {
            id: row.id,
            partner_id: row.partner_id,
            agent_id: row.agent_id,
            unpublished_changes: published.as_ref() != Some(&draft),
            draft,
            published_version: row.published_version,
            status: row.status,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        })
    }
}

const PACKAGE_COLUMNS: &str = "p.id, p.partner_id, p.agent_id, p.draft, p.published_version, p.status, \
     p.created_at, p.updated_at, v.spec AS published_spec \
     FROM packages p LEFT JOIN package_versions v \
     ON v.package_id = p.id AND v.version = p.published_version";

/// A condition restricting `alias`'s partner/agent/merchant columns to `scope`'s subtree.
fn scope_filter(scope: &Place, alias: &str, values: &mut Vec<Value>) -> String {
    let mut clauses = Vec::new();
    for (kind, column) in [
        (NodeKind::Partner, "partner_id"),
        (NodeKind::Agent, "agent_id"),
        (NodeKind::Merchant, "merchant_id"),
    ] {
        if let Some(id) = scope.ancestor(kind) {
            if kind == NodeKind::Merchant && alias == "p" {
                // Packages have no merchant column: a merchant sees none through this path.
                clauses.push("1 = 0".to_owned());
                continue;
            }
            clauses.push(format!("{alias}.{column} = ?"));
            values.push(id.into());
        }
    }
    if clauses.is_empty() {
        "1 = 1".into()
    } else {
        clauses.join(" AND ")
    }
}

/// Creates a package under the agent the grant targets, with its first draft.
pub async fn create(
    db: &impl ConnectionTrait,
    grant: &Grant,
    mut spec: Spec,
    offered: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Result<Package, Error> {
    let agent = grant.target();
    let (Some(partner_id), Some(agent_id)) = (&agent.partner_id, &agent.agent_id) else {
        return Err(invalid("agent_id", "packages belong to an agent"));
    };
    spec.validate(offered, false)?;
    let id = Uuid::now_v7().to_string();
    sql::query(
        "INSERT INTO packages (id, partner_id, agent_id, draft, published_version, status, created_at, updated_at) \
         VALUES (?, ?, ?, ?, 0, 'active', ?, ?)",
        [
            id.clone().into(),
            partner_id.clone().into(),
            agent_id.clone().into(),
            spec_text(&spec).into(),
            Millis(now).into(),
            Millis(now).into(),
        ],
    )
    .execute(db)
    .await?;
    get(db, &Place::platform_scope(), &id).await
}

/// A package inside `scope` (its agent's subtree, or above).
pub async fn get(db: &impl ConnectionTrait, scope: &Place, id: &str) -> Result<Package, Error> {
    let row: PackageRow = one_in_scope(db, ("p", PACKAGE_COLUMNS), scope, ("package", id)).await?;
    row.try_into()
}

/// The row of `columns` (a select list with its `FROM`) whose `alias.id` is `id`, if it is
/// inside `scope`; else [`Error::NotFound`] naming a `kind`.
async fn one_in_scope<R: FromQueryResult>(
    db: &impl ConnectionTrait,
    (alias, columns): (&str, &str),
    scope: &Place,
    (kind, id): (&'static str, &str),
) -> Result<R, Error> {
    let mut values = vec![Value::from(id)];
    let filter = scope_filter(scope, alias, &mut values);
    let row = sql::query(
        &format!("SELECT {columns} WHERE {alias}.id = ? AND {filter}"),
        values,
    )
    .one(db)
    .await?;
    found(row, kind, id)
}

/// Packages inside `scope`, newest first, one page at a time.
pub async fn list(
    db: &impl ConnectionTrait,
    scope: &Place,
    page: Page,
) -> Result<Paged<Package>, Error> {
    let mut values = Vec::new();
    let filter = scope_filter(scope, "p", &mut values);
    newest_page(
        db,
        ("packages", "p", PACKAGE_COLUMNS),
        &filter,
        values,
        page,
        |row: PackageRow| row.try_into(),
    )
    .await
}

/// One page of `table alias` rows matching `filter` (with its `values`), newest first, and the
/// total; `columns` is the select list with its `FROM`.
async fn newest_page<R: FromQueryResult, T>(
    db: &impl ConnectionTrait,
    (table, alias, columns): (&str, &str, &str),
    filter: &str,
    mut values: Vec<Value>,
    page: Page,
    item: impl Fn(R) -> Result<T, Error>,
) -> Result<Paged<T>, Error> {
    let total = sql::query(
        &format!("SELECT COUNT(*) AS n FROM {table} {alias} WHERE {filter}"),
        values.clone(),
    )
    .count(db)
    .await?;
    values.push(limit_value(page.limit()));
    values.push(limit_value(page.offset()));
    let rows: Vec<R> = sql::query(
        &format!(
            "SELECT {columns} WHERE {filter} \
             ORDER BY {alias}.created_at DESC, {alias}.id DESC LIMIT ? OFFSET ?"
        ),
        values,
    )
    .all(db)
    .await?;
    let items = rows.into_iter().map(item).collect::<Result<_, _>>()?;
    Ok(page.wrap(items, total))
}

fn limit_value(n: u64) -> Value {
    i64::try_from(n).unwrap_or(i64::MAX).into()
}

/// Replaces the draft of the package the grant's target (its agent) owns.
pub async fn update_draft(
    db: &impl ConnectionTrait,
    grant: &Grant,
    id: &str,
    mut spec: Spec,
    offered: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Result<Package, Error> {
    let package = get(db, grant.target(), id).await?;
    spec.validate(offered, false)?;
    sql::query(
        "UPDATE packages SET draft = ?, updated_at = ? WHERE id = ?",
        [
            spec_text(&spec).into(),
            Millis(now).into(),
            package.id.clone().into(),
        ],
    )
    .execute(db)
    .await?;
    get(db, grant.target(), id).await
}

/// Publishes the draft as the next version. Merchants already holding an older version keep
/// it until they are assigned or renewed with the new one.
pub async fn publish(
    db: &DatabaseConnection,
    grant: &Grant,
    id: &str,
    offered: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Result<PackageVersion, Error> {
    let txn = crate::db::begin_write(db).await?;
    let package = get(&txn, grant.target(), id).await?;
    let mut spec = package.draft.clone();
    // What the partner offers may have changed since the draft was saved.
    spec.validate(offered, true)?;
    if !package.unpublished_changes {
        txn.commit().await?;
        return version(db, id, package.published_version).await;
    }
    let next = package.published_version + 1;
    sql::query(
        "INSERT INTO package_versions (package_id, version, spec, published_at) VALUES (?, ?, ?, ?)",
        [id.into(), next.into(), spec_text(&spec).into(), Millis(now).into()],
    )
    .execute(&txn)
    .await?;
    // The guard makes two concurrent publishes collide on the primary key rather than skip a
    // version.
    sql::query(
        "UPDATE packages SET published_version = ?, updated_at = ? WHERE id = ? AND published_version = ?",
        [next.into(), Millis(now).into(), id.into(), package.published_version.into()],
    )
    .execute(&txn)
    .await?;
    txn.commit().await?;
    version(db, id, next).await
}

pub async fn version(
    db: &impl ConnectionTrait,
    package_id: &str,
    version: i32,
) -> Result<PackageVersion, Error> {
    let row: Option<VersionRow> = sql::query(
        "SELECT version, spec, published_at FROM package_versions WHERE package_id = ? AND version = ?",
        [package_id.into(), version.into()],
    )
    .one(db)
    .await?;
    found(row, "package version", &format!("{package_id}@{version}"))?.of(package_id)
}

/// A published version as `package_versions` holds it.
#[derive(FromQueryResult)]
struct VersionRow {
    version: i32,
    spec: String,
    published_at: Millis,
}

impl VersionRow {
    fn of(self, package_id: &str) -> Result<PackageVersion, Error> {
        Ok(PackageVersion {
            package_id: package_id.to_owned(),
            version: self.version,
            spec: spec_of(&self.spec)?,
            published_at: self.published_at.0,
        })
    }
}

/// Every version of a package, oldest first.
pub async fn versions(
    db: &impl ConnectionTrait,
    package_id: &str,
) -> Result<Vec<PackageVersion>, Error> {
    let rows: Vec<VersionRow> = sql::query(
        "SELECT version, spec, published_at FROM package_versions WHERE package_id = ? ORDER BY version",
        [package_id.into()],
    )
    .all(db)
    .await?;
    rows.into_iter().map(|row| row.of(package_id)).collect()
}

/// A start or end as clients send it: an RFC 3339 instant, or a date, which means midnight
/// China time (the platform's business day) — as a start, the day's beginning; as an end, the
/// end of that day.
pub fn parse_instant(field: &'static str, text: &str, end: bool) -> Result<DateTime<Utc>, Error> {
    let at = parse_any_instant(field, text, end)?;
    // Years far outside any subscription would only overflow date arithmetic later.
    if !(2000..=9000).contains(&chrono::Datelike::year(&at)) {
        return Err(invalid(field, "must be between the years 2000 and 9000"));
    }
    Ok(at)
}

fn parse_any_instant(field: &'static str, text: &str, end: bool) -> Result<DateTime<Utc>, Error> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if text.starts_with(['+', '-']) {
        return Err(invalid(
            field,
            "expected a date (2026-12-01) or an RFC 3339 instant",
        ));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| invalid(field, "expected a date (2026-12-01) or an RFC 3339 instant"))?;
    let date = if end {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    Ok(midnight.and_utc() - Duration::hours(8))
}

/// Everything `merchant_id` is entitled to at `now`: the union of its active assignments.
pub async fn entitlements(
    db: &impl ConnectionTrait,
    merchant_id: &str,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, Entitlement>, Error> {
    Ok(entitlements_until(db, merchant_id, now).await?.0)
}

/// [`entitlements`], with the moment the first of the assignments behind them ends: until
/// then the union stays what it is (unless an assignment is changed), so it may be kept.
pub async fn entitlements_until(
    db: &impl ConnectionTrait,
    merchant_id: &str,
    now: DateTime<Utc>,
) -> Result<(BTreeMap<String, Entitlement>, Option<DateTime<Utc>>), Error> {
    let rows: Vec<Covering> = sql::query(
        "SELECT a.ends_at, v.spec FROM assignments a JOIN package_versions v \
         ON v.package_id = a.package_id AND v.version = a.package_version \
         WHERE a.merchant_id = ? AND a.status = 'active' AND a.starts_at <= ? AND a.ends_at > ?",
        [merchant_id.into(), Millis(now).into(), Millis(now).into()],
    )
    .all(db)
    .await?;
    let first_end = rows.iter().map(|r| r.ends_at.0).min();
    let mut out: BTreeMap<String, Entitlement> = BTreeMap::new();
    for row in rows {
        let ends_at = row.ends_at.0;
        let spec = spec_of(&row.spec)?;
        for plugin in spec.plugins {
            match out.get_mut(&plugin) {
                Some(held) => {
                    held.ends_at = held.ends_at.max(ends_at);
                    held.quotas = held.quotas.union(&spec.quotas);
                }
                None => {
                    out.insert(
                        plugin.clone(),
                        Entitlement {
                            plugin_id: plugin,
                            ends_at,
                            quotas: spec.quotas.clone(),
                        },
                    );
                }
            }
        }
    }
    Ok((out, first_end))
}

/// The merchant's entitlement to one plugin now, or why it has none: `Expired` when an
/// assignment that covered the plugin has ended or was revoked, else `NotEntitled`.
pub async fn entitlement(
    db: &impl ConnectionTrait,
    merchant_id: &str,
    plugin_id: &str,
    now: DateTime<Utc>,
) -> Result<Entitlement, Error> {
    if let Some(held) = entitlements(db, merchant_id, now).await?.remove(plugin_id) {
        return Ok(held);
    }
    let rows: Vec<SpecOf> = sql::query(
        "SELECT a.id, v.spec FROM assignments a JOIN package_versions v \
         ON v.package_id = a.package_id AND v.version = a.package_version \
         WHERE a.merchant_id = ? AND a.starts_at <= ?",
        [merchant_id.into(), Millis(now).into()],
    )
    .all(db)
    .await?;
    for row in rows {
        let spec = spec_of(&row.spec)?;
        if spec.plugins.iter().any(|p| p == plugin_id) {
            return Err(Error::Expired(plugin_id.to_owned()));
        }
    }
    Err(Error::NotEntitled(plugin_id.to_owned()))
}

/// Why the partner may not uninstall a plugin now: a package whose latest published version
/// includes it, or a current assignment holding an older version that does. `None`: unused.
pub async fn plugin_in_use(
    db: &impl ConnectionTrait,
    partner_id: &str,
    plugin_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, Error> {
    let rows: Vec<SpecOf> = sql::query(
        "SELECT p.id, v.spec FROM packages p JOIN package_versions v \
         ON v.package_id = p.id AND v.version = p.published_version \
         WHERE p.partner_id = ? AND p.status = 'active'",
        [partner_id.into()],
    )
    .all(db)
    .await?;
    for row in rows {
        let spec = spec_of(&row.spec)?;
        if spec.plugins.iter().any(|p| p == plugin_id) {
            return Ok(Some(format!(
                "package {} ({}) includes it",
                row.id, spec.name
            )));
        }
    }
    let rows: Vec<SpecOf> = sql::query(
        "SELECT a.id, v.spec FROM assignments a JOIN package_versions v \
         ON v.package_id = a.package_id AND v.version = a.package_version \
         WHERE a.partner_id = ? AND a.status = 'active' AND a.ends_at > ?",
        [partner_id.into(), Millis(now).into()],
    )
    .all(db)
    .await?;
    for row in rows {
        let spec = spec_of(&row.spec)?;
        if spec.plugins.iter().any(|p| p == plugin_id) {
            return Ok(Some(format!("assignment {} holds it", row.id)));
        }
    }
    Ok(None)
}

/// A package or assignment, and the spec of the version it stands for.
#[derive(FromQueryResult)]
struct SpecOf {
    id: String,
    spec: String,
}

/// A current assignment's end and the spec it holds the merchant to.
#[derive(FromQueryResult)]
struct Covering {
    ends_at: Millis,
    spec: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            name: " Membership ".into(),
            description: String::new(),
            plugins: vec!["com.trellis.hello".into()],
            validity_days: 30,
            quotas: Quotas::default(),
            list_price: Some(Price {
                amount: 9_900,
                currency: "CNY".into(),
            }),
        }
    }

    #[test]
    fn a_package_may_only_include_plugins_the_partner_offers() {
        let offered: BTreeSet<String> = ["com.trellis.other".to_owned()].into();
        let error = spec().validate(&offered, false).unwrap_err();
        assert!(
            matches!(
                error,
                Error::Invalid {
                    field: "plugins",
                    ..
                }
            ),
            "{error}"
        );
        let offered: BTreeSet<String> = ["com.trellis.hello".to_owned()].into();
        let mut ok = spec();
        ok.validate(&offered, true).unwrap();
        let mut empty = spec();
        empty.plugins.clear();
        empty.validate(&offered, false).unwrap();
        assert!(empty.validate(&offered, true).is_err());
        assert_eq!(ok.name, "Membership");
    }

    #[test]
    fn quotas_of_two_packages_take_the_larger_allowance() {
        let a = Quotas {
            max_members: Some(100),
            events_per_day: Some(10),
        };
        let b = Quotas {
            max_members: Some(500),
            events_per_day: None,
        };
        assert_eq!(
            a.union(&b),
            Quotas {
                max_members: Some(500),
                events_per_day: None
            }
        );
    }

    #[test]
    fn a_date_means_a_china_business_day() {
        let start = parse_instant("starts_at", "2026-12-01", false).unwrap();
        assert_eq!(start.to_rfc3339(), "2026-11-30T16:00:00+00:00");
        let end = parse_instant("ends_at", "2026-12-01", true).unwrap();
        assert_eq!(end.to_rfc3339(), "2026-12-01T16:00:00+00:00");
        assert!(parse_instant("ends_at", "tomorrow", true).is_err());
        assert!(parse_instant("ends_at", "-262144-01-01", true).is_err());
        assert!(parse_instant("ends_at", "+262143-12-31", true).is_err());
        assert!(parse_instant("ends_at", "9999-12-31T00:00:00Z", true).is_err());
    }
}
