//! Agents' packages (套餐) and their assignment to merchants: what a merchant is entitled to.
//!
//! Invariant: a merchant holds exactly what the published package versions of its active,
//! current assignments say — editing a package changes its draft only, and merchants see the
//! change when the agent publishes a new version and assigns or renews with it. Entitlement is
//! always computed against an explicit `now`, so expiry is decided by the caller's clock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::{Page, Paged, from_millis, millis, statement};
use crate::rbac::Grant;
use crate::tenancy::{NodeKind, Place};

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

fn backend(db: &impl ConnectionTrait) -> DbBackend {
    db.get_database_backend()
}

fn spec_of(text: &str) -> Result<Spec, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::Db(sea_orm::DbErr::Custom(format!("stored package spec: {e}"))))
}

fn spec_text(spec: &Spec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

fn package_of(row: &QueryResult, db: DbBackend) -> Result<Package, Error> {
    let _ = db;
    let draft = spec_of(&row.try_get::<String>("", "draft")?)?;
    let published: Option<String> = row.try_get("", "published_spec")?;
    let published = published.map(|s| spec_of(&s)).transpose()?;
    Ok(Package {
        id: row.try_get("", "id")?,
        partner_id: row.try_get("", "partner_id")?,
        agent_id: row.try_get("", "agent_id")?,
        unpublished_changes: published.as_ref() != Some(&draft),
        draft,
        published_version: row.try_get("", "published_version")?,
        status: row.try_get("", "status")?,
        created_at: from_millis(row.try_get("", "created_at")?),
        updated_at: from_millis(row.try_get("", "updated_at")?),
    })
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
    db.execute_raw(statement(
        backend(db),
        "INSERT INTO packages (id, partner_id, agent_id, draft, published_version, status, created_at, updated_at) \
         VALUES (?, ?, ?, ?, 0, 'active', ?, ?)",
        vec![
            id.clone().into(),
            partner_id.clone().into(),
            agent_id.clone().into(),
            spec_text(&spec).into(),
            millis(now).into(),
            millis(now).into(),
        ],
    ))
    .await?;
    get(db, &Place::platform_scope(), &id).await
}

/// A package inside `scope` (its agent's subtree, or above).
pub async fn get(db: &impl ConnectionTrait, scope: &Place, id: &str) -> Result<Package, Error> {
    let mut values = vec![Value::from(id)];
    let filter = scope_filter(scope, "p", &mut values);
    let row = db
        .query_one_raw(statement(
            backend(db),
            &format!("SELECT {PACKAGE_COLUMNS} WHERE p.id = ? AND {filter}"),
            values,
        ))
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "package",
            id: id.to_owned(),
        })?;
    package_of(&row, backend(db))
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
        |r| package_of(r, backend(db)),
    )
    .await
}

/// One page of `table alias` rows matching `filter` (with its `values`), newest first, and the
/// total; `columns` is the select list with its `FROM`.
async fn newest_page<T>(
    db: &impl ConnectionTrait,
    (table, alias, columns): (&str, &str, &str),
    filter: &str,
    mut values: Vec<Value>,
    page: Page,
    item: impl Fn(&QueryResult) -> Result<T, Error>,
) -> Result<Paged<T>, Error> {
    let total = count(
        db,
        &format!("SELECT COUNT(*) AS n FROM {table} {alias} WHERE {filter}"),
        values.clone(),
    )
    .await?;
    values.push(limit_value(page.limit()));
    values.push(limit_value(page.offset()));
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &format!(
                "SELECT {columns} WHERE {filter} \
                 ORDER BY {alias}.created_at DESC, {alias}.id DESC LIMIT ? OFFSET ?"
            ),
            values,
        ))
        .await?;
    let items = rows.iter().map(item).collect::<Result<_, _>>()?;
    Ok(page.wrap(items, total))
}

fn limit_value(n: u64) -> Value {
    i64::try_from(n).unwrap_or(i64::MAX).into()
}

async fn count(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<u64, Error> {
    let n: i64 = match db
        .query_one_raw(statement(backend(db), sql, values))
        .await?
    {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
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
    db.execute_raw(statement(
        backend(db),
        "UPDATE packages SET draft = ?, updated_at = ? WHERE id = ?",
        vec![
            spec_text(&spec).into(),
            millis(now).into(),
            package.id.clone().into(),
        ],
    ))
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
    txn.execute_raw(statement(
        backend(&txn),
        "INSERT INTO package_versions (package_id, version, spec, published_at) VALUES (?, ?, ?, ?)",
        vec![id.into(), next.into(), spec_text(&spec).into(), millis(now).into()],
    ))
    .await?;
    // The guard makes two concurrent publishes collide on the primary key rather than skip a
    // version.
    txn.execute_raw(statement(
        backend(&txn),
        "UPDATE packages SET published_version = ?, updated_at = ? WHERE id = ? AND published_version = ?",
        vec![next.into(), millis(now).into(), id.into(), package.published_version.into()],
    ))
    .await?;
    txn.commit().await?;
    version(db, id, next).await
}

pub async fn version(
    db: &impl ConnectionTrait,
    package_id: &str,
    version: i32,
) -> Result<PackageVersion, Error> {
    let row = db
        .query_one_raw(statement(
            backend(db),
            "SELECT spec, published_at FROM package_versions WHERE package_id = ? AND version = ?",
            vec![package_id.into(), version.into()],
        ))
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "package version",
            id: format!("{package_id}@{version}"),
        })?;
    Ok(PackageVersion {
        package_id: package_id.to_owned(),
        version,
        spec: spec_of(&row.try_get::<String>("", "spec")?)?,
        published_at: from_millis(row.try_get("", "published_at")?),
    })
}

/// Every version of a package, oldest first.
pub async fn versions(
    db: &impl ConnectionTrait,
    package_id: &str,
) -> Result<Vec<PackageVersion>, Error> {
    let rows = db
        .query_all_raw(statement(
            backend(db),
            "SELECT version, spec, published_at FROM package_versions WHERE package_id = ? ORDER BY version",
            vec![package_id.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(PackageVersion {
                package_id: package_id.to_owned(),
                version: row.try_get("", "version")?,
                spec: spec_of(&row.try_get::<String>("", "spec")?)?,
                published_at: from_millis(row.try_get("", "published_at")?),
            })
        })
        .collect()
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

const ASSIGNMENT_COLUMNS: &str = "a.id, a.package_id, a.package_version, a.merchant_id, a.agent_id, a.partner_id, \
     a.starts_at, a.ends_at, a.status, a.created_at, a.updated_at, v.spec \
     FROM assignments a JOIN package_versions v ON v.package_id = a.package_id AND v.version = a.package_version";

fn assignment_of(row: &QueryResult, now: DateTime<Utc>) -> Result<Assignment, Error> {
    let spec = spec_of(&row.try_get::<String>("", "spec")?)?;
    let status: String = row.try_get("", "status")?;
    let starts_at = from_millis(row.try_get("", "starts_at")?);
    let ends_at = from_millis(row.try_get("", "ends_at")?);
    let state = if status == "revoked" {
        "revoked"
    } else if now < starts_at {
        "scheduled"
    } else if now >= ends_at {
        "expired"
    } else {
        "active"
    };
    Ok(Assignment {
        id: row.try_get("", "id")?,
        package_id: row.try_get("", "package_id")?,
        package_version: row.try_get("", "package_version")?,
        package_name: spec.name,
        plugins: spec.plugins,
        merchant_id: row.try_get("", "merchant_id")?,
        agent_id: row.try_get("", "agent_id")?,
        partner_id: row.try_get("", "partner_id")?,
        starts_at,
        ends_at,
        state: state.into(),
        created_at: from_millis(row.try_get("", "created_at")?),
        updated_at: from_millis(row.try_get("", "updated_at")?),
    })
}

/// Assigns the latest published version of a package to each merchant. The grants are one per
/// merchant (each authorized on that merchant); every merchant must sit under the package's agent.
pub async fn assign(
    db: &DatabaseConnection,
    grants: &[Grant],
    package: &Package,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Vec<Assignment>, Error> {
    if package.published_version == 0 {
        return Err(Error::Unpublished(package.id.clone()));
    }
    if package.status != "active" {
        return Err(invalid("package_id", "the package is archived"));
    }
    let published = version(db, &package.id, package.published_version).await?;
    let ends_at =
        ends_at.unwrap_or(starts_at + Duration::days(i64::from(published.spec.validity_days)));
    if ends_at <= starts_at {
        return Err(invalid("ends_at", "must be after starts_at"));
    }
    if grants.is_empty() {
        return Err(invalid("merchant_ids", "name at least one merchant"));
    }
    let txn = crate::db::begin_write(db).await?;
    let mut ids = Vec::new();
    for grant in grants {
        let merchant = grant.target();
        let Some(merchant_id) = &merchant.merchant_id else {
            return Err(invalid("merchant_ids", "assignments are made to merchants"));
        };
        if merchant.agent_id.as_deref() != Some(package.agent_id.as_str()) {
            return Err(invalid(
                "merchant_ids",
                format!("merchant {merchant_id} is not a merchant of the package's agent"),
            ));
        }
        let id = Uuid::now_v7().to_string();
        txn.execute_raw(statement(
            backend(&txn),
            "INSERT INTO assignments (id, package_id, package_version, merchant_id, agent_id, partner_id, \
             starts_at, ends_at, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
            vec![
                id.clone().into(),
                package.id.clone().into(),
                package.published_version.into(),
                merchant_id.clone().into(),
                package.agent_id.clone().into(),
                package.partner_id.clone().into(),
                millis(starts_at).into(),
                millis(ends_at).into(),
                millis(now).into(),
                millis(now).into(),
            ],
        ))
        .await?;
        ids.push(id);
    }
    txn.commit().await?;
    let mut out = Vec::new();
    for id in ids {
        out.push(get_assignment(db, &Place::platform_scope(), &id, now).await?);
    }
    Ok(out)
}

pub async fn get_assignment(
    db: &impl ConnectionTrait,
    scope: &Place,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Assignment, Error> {
    let mut values = vec![Value::from(id)];
    let filter = scope_filter(scope, "a", &mut values);
    let row = db
        .query_one_raw(statement(
            backend(db),
            &format!("SELECT {ASSIGNMENT_COLUMNS} WHERE a.id = ? AND {filter}"),
            values,
        ))
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "assignment",
            id: id.to_owned(),
        })?;
    assignment_of(&row, now)
}

/// Assignments inside `scope` (a merchant sees its own), optionally of one merchant, newest
/// first, one page at a time.
pub async fn list_assignments(
    db: &impl ConnectionTrait,
    scope: &Place,
    merchant_id: Option<&str>,
    now: DateTime<Utc>,
    page: Page,
) -> Result<Paged<Assignment>, Error> {
    let mut values = Vec::new();
    let mut filter = scope_filter(scope, "a", &mut values);
    if let Some(merchant) = merchant_id {
        filter.push_str(" AND a.merchant_id = ?");
        values.push(merchant.into());
    }
    newest_page(
        db,
        ("assignments", "a", ASSIGNMENT_COLUMNS),
        &filter,
        values,
        page,
        |r| assignment_of(r, now),
    )
    .await
}

/// Extends an assignment (to `ends_at`, or by the package's validity from its current end or
/// from now, whichever is later) and moves it to the package's latest published version.
pub async fn renew(
    db: &impl ConnectionTrait,
    grant: &Grant,
    assignment: &Assignment,
    ends_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Assignment, Error> {
    if assignment.state == "revoked" {
        return Err(invalid(
            "id",
            "a revoked assignment cannot be renewed; assign again",
        ));
    }
    let row = db
        .query_one_raw(statement(
            backend(db),
            "SELECT published_version FROM packages WHERE id = ?",
            vec![assignment.package_id.clone().into()],
        ))
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "package",
            id: assignment.package_id.clone(),
        })?;
    let latest: i32 = row.try_get("", "published_version")?;
    let published = version(db, &assignment.package_id, latest).await?;
    let ends_at = ends_at.unwrap_or_else(|| {
        assignment.ends_at.max(now) + Duration::days(i64::from(published.spec.validity_days))
    });
    if ends_at <= assignment.starts_at {
        return Err(invalid("ends_at", "must be after the assignment's start"));
    }
    db.execute_raw(statement(
        backend(db),
        "UPDATE assignments SET ends_at = ?, package_version = ?, updated_at = ? WHERE id = ?",
        vec![
            millis(ends_at).into(),
            latest.into(),
            millis(now).into(),
            assignment.id.clone().into(),
        ],
    ))
    .await?;
    get_assignment(db, grant.target(), &assignment.id, now).await
}

pub async fn revoke(
    db: &impl ConnectionTrait,
    grant: &Grant,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> Result<Assignment, Error> {
    db.execute_raw(statement(
        backend(db),
        "UPDATE assignments SET status = 'revoked', updated_at = ? WHERE id = ?",
        vec![millis(now).into(), assignment.id.clone().into()],
    ))
    .await?;
    get_assignment(db, grant.target(), &assignment.id, now).await
}

/// Everything `merchant_id` is entitled to at `now`: the union of its active assignments.
pub async fn entitlements(
    db: &impl ConnectionTrait,
    merchant_id: &str,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, Entitlement>, Error> {
    let rows = db
        .query_all_raw(statement(
            backend(db),
            "SELECT a.ends_at, v.spec FROM assignments a JOIN package_versions v \
             ON v.package_id = a.package_id AND v.version = a.package_version \
             WHERE a.merchant_id = ? AND a.status = 'active' AND a.starts_at <= ? AND a.ends_at > ?",
            vec![merchant_id.into(), millis(now).into(), millis(now).into()],
        ))
        .await?;
    let mut out: BTreeMap<String, Entitlement> = BTreeMap::new();
    for row in rows {
        let ends_at = from_millis(row.try_get("", "ends_at")?);
        let spec = spec_of(&row.try_get::<String>("", "spec")?)?;
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
    Ok(out)
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
    let rows = db
        .query_all_raw(statement(
            backend(db),
            "SELECT v.spec FROM assignments a JOIN package_versions v \
             ON v.package_id = a.package_id AND v.version = a.package_version \
             WHERE a.merchant_id = ? AND a.starts_at <= ?",
            vec![merchant_id.into(), millis(now).into()],
        ))
        .await?;
    for row in rows {
        let spec = spec_of(&row.try_get::<String>("", "spec")?)?;
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
    let rows = db
        .query_all_raw(statement(
            backend(db),
            "SELECT p.id, v.spec FROM packages p JOIN package_versions v \
             ON v.package_id = p.id AND v.version = p.published_version \
             WHERE p.partner_id = ? AND p.status = 'active'",
            vec![partner_id.into()],
        ))
        .await?;
    for row in rows {
        let spec = spec_of(&row.try_get::<String>("", "spec")?)?;
        if spec.plugins.iter().any(|p| p == plugin_id) {
            let id: String = row.try_get("", "id")?;
            return Ok(Some(format!("package {id} ({}) includes it", spec.name)));
        }
    }
    let rows = db
        .query_all_raw(statement(
            backend(db),
            "SELECT a.id, v.spec FROM assignments a JOIN package_versions v \
             ON v.package_id = a.package_id AND v.version = a.package_version \
             WHERE a.partner_id = ? AND a.status = 'active' AND a.ends_at > ?",
            vec![partner_id.into(), millis(now).into()],
        ))
        .await?;
    for row in rows {
        let spec = spec_of(&row.try_get::<String>("", "spec")?)?;
        if spec.plugins.iter().any(|p| p == plugin_id) {
            let id: String = row.try_get("", "id")?;
            return Ok(Some(format!("assignment {id} holds it")));
        }
    }
    Ok(None)
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
