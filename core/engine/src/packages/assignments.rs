//! Assignments of agents' packages to merchants: made, renewed and revoked under the package's
//! agent, and read with their state as of the caller's clock.
//!
//! Invariant: an assignment holds one published version of its package; renewing moves it to the
//! latest published version, and nothing changes the version an assignment holds otherwise.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult};
use uuid::Uuid;

use super::{
    Assignment, Error, Package, found, invalid, newest_page, one_in_scope, scope_filter, spec_of,
    version,
};
use crate::db::sql::{self, Millis};
use crate::db::{Page, Paged};
use crate::rbac::Grant;
use crate::tenancy::Place;

const ASSIGNMENT_COLUMNS: &str = "a.id, a.package_id, a.package_version, a.merchant_id, a.agent_id, a.partner_id, \
     a.starts_at, a.ends_at, a.status, a.created_at, a.updated_at, v.spec \
     FROM assignments a JOIN package_versions v ON v.package_id = a.package_id AND v.version = a.package_version";

/// An assignment with its version's spec, as [`ASSIGNMENT_COLUMNS`] read it.
#[derive(FromQueryResult)]
struct AssignmentRow {
    id: String,
    package_id: String,
    package_version: i32,
    merchant_id: String,
    agent_id: String,
    partner_id: String,
    starts_at: Millis,
    ends_at: Millis,
    status: String,
    created_at: Millis,
    updated_at: Millis,
    spec: String,
}

impl AssignmentRow {
    /// The assignment as of `now`, which decides whether it is scheduled, active or expired.
    fn at(self, now: DateTime<Utc>) -> Result<Assignment, Error> {
        let spec = spec_of(&self.spec)?;
        let (starts_at, ends_at) = (self.starts_at.0, self.ends_at.0);
        let state = if self.status == "revoked" {
            "revoked"
        } else if now < starts_at {
            "scheduled"
        } else if now >= ends_at {
            "expired"
        } else {
            "active"
        };
        Ok(Assignment {
            id: self.id,
            package_id: self.package_id,
            package_version: self.package_version,
            package_name: spec.name,
            plugins: spec.plugins,
            merchant_id: self.merchant_id,
            agent_id: self.agent_id,
            partner_id: self.partner_id,
            starts_at,
            ends_at,
            state: state.into(),
            created_at: self.created_at.0,
            updated_at: self.updated_at.0,
        })
    }
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
        sql::query(
            "INSERT INTO assignments (id, package_id, package_version, merchant_id, agent_id, partner_id, \
             starts_at, ends_at, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
            [
                id.clone().into(),
                package.id.clone().into(),
                package.published_version.into(),
                merchant_id.clone().into(),
                package.agent_id.clone().into(),
                package.partner_id.clone().into(),
                Millis(starts_at).into(),
                Millis(ends_at).into(),
                Millis(now).into(),
                Millis(now).into(),
            ],
        )
        .execute(&txn)
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
    let row: AssignmentRow =
        one_in_scope(db, ("a", ASSIGNMENT_COLUMNS), scope, ("assignment", id)).await?;
    row.at(now)
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
        |row: AssignmentRow| row.at(now),
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
    let latest: Option<i32> = sql::query(
        "SELECT published_version FROM packages WHERE id = ?",
        [assignment.package_id.clone().into()],
    )
    .scalar(db)
    .await?;
    let latest = found(latest, "package", &assignment.package_id)?;
    let published = version(db, &assignment.package_id, latest).await?;
    let ends_at = ends_at.unwrap_or_else(|| {
        assignment.ends_at.max(now) + Duration::days(i64::from(published.spec.validity_days))
    });
    if ends_at <= assignment.starts_at {
        return Err(invalid("ends_at", "must be after the assignment's start"));
    }
    sql::query(
        "UPDATE assignments SET ends_at = ?, package_version = ?, updated_at = ? WHERE id = ?",
        [
            Millis(ends_at).into(),
            latest.into(),
            Millis(now).into(),
            assignment.id.clone().into(),
        ],
    )
    .execute(db)
    .await?;
    get_assignment(db, grant.target(), &assignment.id, now).await
}

pub async fn revoke(
    db: &impl ConnectionTrait,
    grant: &Grant,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> Result<Assignment, Error> {
    sql::query(
        "UPDATE assignments SET status = 'revoked', updated_at = ? WHERE id = ?",
        [Millis(now).into(), assignment.id.clone().into()],
    )
    .execute(db)
    .await?;
    get_assignment(db, grant.target(), &assignment.id, now).await
}
