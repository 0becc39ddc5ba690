//! A partner's rule on archives: whether they must be signed, and by which publisher keys.
//!
//! Invariant: a stored policy that requires signatures names at least one trusted key, each
//! of which parses as a public key.

use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};

use super::{Catalog, Error, backend, invalid, partner_of};
use crate::db::{millis, statement};
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

impl Catalog {
    /// The partner's policy on signatures.
    pub async fn policy(&self, partner_id: &str) -> Result<Policy, Error> {
        let row = self
            .db
            .query_one_raw(statement(
                backend(&self.db),
                "SELECT require_signature, trusted_keys FROM plugin_policies WHERE partner_id = ?",
                vec![partner_id.into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(Policy::default());
        };
        let keys: String = row.try_get("", "trusted_keys")?;
        Ok(Policy {
            require_signature: row.try_get("", "require_signature")?,
            trusted_keys: serde_json::from_str(&keys).unwrap_or_default(),
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
        let now = millis(self.now());
        self.db
            .execute_raw(statement(
                backend(&self.db),
                "INSERT INTO plugin_policies (partner_id, require_signature, trusted_keys, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (partner_id) DO UPDATE SET require_signature = excluded.require_signature, \
                 trusted_keys = excluded.trusted_keys, updated_at = excluded.updated_at",
                vec![partner_id.into(), policy.require_signature.into(), keys.into(), now.into()],
            ))
            .await?;
        Ok(policy)
    }
}
