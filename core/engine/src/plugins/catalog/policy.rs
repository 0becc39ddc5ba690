//! A partner's rule on archives: whether they must be signed, and by which publisher keys.
//!
//! Invariant: a stored policy that requires signatures names at least one trusted key, each
//! of which parses as a public key.

use sea_orm::FromQueryResult;
use serde::{Deserialize, Serialize};

use super::{Catalog, Error, invalid, partner_of};
use crate::db::sql::{self, Millis};
use crate::rbac::Grant;

/// A partner's rule for archives: whether they must be signed, and by whom.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub require_signature: bool,
    /// Publisher keys (`ed25519:<base64>`) whose signatures the partner accepts.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

/// A stored policy; `trusted_keys` is a JSON array of key strings.
#[derive(FromQueryResult)]
struct PolicyRow {
    require_signature: bool,
    trusted_keys: String,
}

impl Catalog {
    /// The partner's policy on signatures.
    pub async fn policy(&self, partner_id: &str) -> Result<Policy, Error> {
        let row: Option<PolicyRow> = sql::query(
            "SELECT require_signature, trusted_keys FROM plugin_policies WHERE partner_id = ?",
            [partner_id.into()],
        )
        .one(&self.db)
        .await?;
        let Some(row) = row else {
            return Ok(Policy::default());
        };
        Ok(Policy {
            require_signature: row.require_signature,
            trusted_keys: serde_json::from_str(&row.trusted_keys).unwrap_or_default(),
        })
    }

    pub async fn set_policy(&self, grant: &Grant, mut policy: Policy) -> Result<Policy, Error> {
        let partner_id = partner_of(grant)?;
        for key in &mut policy.trusted_keys {
            *key = key.trim().to_owned();
            crate::plugins::archive::parse_public_key(key)
                .map_err(|e| invalid("trusted_keys", e.to_string()))?;
        }
        policy.trusted_keys.sort();
        policy.trusted_keys.dedup();
        if policy.require_signature && policy.trusted_keys.is_empty() {
            return Err(invalid(
                "trusted_keys",
                "requiring signatures needs at least one trusted publisher key",
            ));
        }
        let keys = serde_json::to_string(&policy.trusted_keys).unwrap_or_else(|_| "[]".into());
        sql::query(
            "INSERT INTO plugin_policies (partner_id, require_signature, trusted_keys, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (partner_id) DO UPDATE SET require_signature = excluded.require_signature, \
             trusted_keys = excluded.trusted_keys, updated_at = excluded.updated_at",
            [
                partner_id.into(),
                policy.require_signature.into(),
                keys.into(),
                Millis(self.now()).into(),
            ],
        )
        .execute(&self.db)
        .await?;
        Ok(policy)
    }
}
