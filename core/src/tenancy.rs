//! The tenant tree: platform → partner → agent → merchant → store, and the accounts on its nodes.
//!
//! Invariant: exactly one platform node exists and it is the root of every other node.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use crate::db::entity::nodes;

/// The kinds of node, from the root down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Platform,
    Partner,
    Agent,
    Merchant,
    Store,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Partner => "partner",
            Self::Agent => "agent",
            Self::Merchant => "merchant",
            Self::Store => "store",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not a valid email address")]
    InvalidEmail(String),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// Lower-cases and checks an email address: one `@`, a non-empty local part, a dotted domain,
/// no whitespace, at most 254 characters.
pub fn normalize_email(raw: &str) -> Result<String, Error> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(Error::InvalidEmail(raw.trim().to_owned()))
    }
}

/// The platform node, created on first use.
pub async fn ensure_platform(db: &impl ConnectionTrait) -> Result<nodes::Model, Error> {
    if let Some(existing) = nodes::Entity::find()
        .filter(nodes::Column::Kind.eq(NodeKind::Platform.as_str()))
        .one(db)
        .await?
    {
        return Ok(existing);
    }
    let now = Utc::now();
    let node = nodes::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        kind: Set(NodeKind::Platform.as_str().to_owned()),
        parent_id: Set(None),
        partner_id: Set(None),
        agent_id: Set(None),
        merchant_id: Set(None),
        name: Set("Platform".to_owned()),
        status: Set("active".to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(node.insert(db).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(
            normalize_email("  Ops@Example.COM ").unwrap(),
            "ops@example.com"
        );
        for bad in [
            "",
            "no-at.example.com",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
