//! Merchants' configuration of a plugin: the schema's defaults filled in, validated against the
//! manifest's JSON Schema, then by the plugin's `configure` hook, and stored as the hook
//! normalised it.
//!
//! Invariant: what is stored is what the plugin's `configure` hook returned for a merchant
//! entitled to the plugin at that moment; a configuration the schema or the hook refuses is
//! never stored; and every invocation reads its configuration with the schema's defaults filled
//! in, configured or not.

use serde_json::{Value as Json, json};

use super::{Catalog, Error, invalid};
use crate::db::sql::{self, Millis};
use crate::plugins::{self, Call, Output, Request, TenantContext};
use crate::rbac::Grant;
use crate::tenancy::Place;

impl Catalog {
    /// The merchant's configuration of a plugin (`{}` until set).
    pub async fn config(&self, merchant: &Place, plugin_id: &str) -> Result<Json, Error> {
        let (Some(partner_id), Some(merchant_id)) = (&merchant.partner_id, &merchant.merchant_id)
        else {
            return Err(Error::NotInstalled(plugin_id.to_owned()));
        };
        let row = self.installed_row(partner_id, plugin_id).await?;
        Ok(self
            .stored_config(&row.id, merchant_id)
            .await?
            .unwrap_or_else(|| json!({})))
    }

    /// Validates a merchant's configuration against the manifest's JSON Schema, then the
    /// plugin's `configure` hook, and stores what the hook returns. The grant targets the
    /// merchant; it must be entitled to the plugin.
    pub async fn configure(
        &self,
        grant: &Grant,
        plugin_id: &str,
        config: Json,
    ) -> Result<Json, Error> {
        let merchant = grant.target().clone();
        let live = self.live(&merchant, plugin_id).await?;
        let schema = live.loaded.manifest.config.schema.as_ref();
        let config = with_defaults(schema, config);
        if let Some(schema) = schema {
            check_schema(schema, &config)?;
        }
        let outcome = self
            .runtime
            .invoke(
                &live.loaded,
                Request {
                    tenant: TenantContext::at(&merchant, &live.installation.id, "zh-CN"),
                    grant: None,
                    config: live.config.clone(),
                    theme: live.theme.clone(),
                    call: Call::Configure { config },
                    finish: None,
                    facts: Default::default(),
                    inside: None,
                },
            )
            .await;
        let normalised = match outcome.result {
            Ok(Output::Config(value)) => value,
            Ok(other) => {
                return Err(Error::Hook {
                    hook: "configure",
                    source: plugins::Error::BadInput(format!("configure answered {other:?}")),
                });
            }
            Err(plugins::Error::Plugin(plugins::PluginError::InvalidField { field, message })) => {
                // Plugins name fields as JSON pointers (`/greeting`); the API as paths.
                let field = field.trim_start_matches('/').replace('/', ".");
                return Err(Error::ConfigRefused { field, message });
            }
            Err(source) => {
                return Err(Error::Hook {
                    hook: "configure",
                    source,
                });
            }
        };
        let merchant_id = merchant.merchant_id.clone().unwrap_or_default();
        sql::query(
            "INSERT INTO plugin_configs (installation_id, merchant_id, config, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (installation_id, merchant_id) DO UPDATE SET config = excluded.config, \
             updated_at = excluded.updated_at",
            [
                live.installation.id.clone().into(),
                merchant_id.into(),
                normalised.to_string().into(),
                Millis(self.now()).into(),
            ],
        )
        .execute(&self.db)
        .await?;
        self.forget_reads();
        Ok(normalised)
    }
}

/// `config` with the schema's `default`s filled in where a property is missing, at every level
/// of nested objects: what a plugin reads is what its schema promises, whether the merchant
/// configured it or not.
pub fn with_defaults(schema: Option<&Json>, mut config: Json) -> Json {
    if let Some(schema) = schema {
        fill_defaults(schema, &mut config, 0);
    }
    config
}

fn fill_defaults(schema: &Json, value: &mut Json, depth: usize) {
    // Schemas are the plugin's: bounded, so a deep one cannot recurse without end.
    const MAX_DEPTH: usize = 16;
    let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Json::as_object),
        value.as_object_mut(),
    ) else {
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    for (name, property) in properties {
        match object.get_mut(name) {
            Some(present) => fill_defaults(property, present, depth + 1),
            None => {
                if let Some(default) = property.get("default") {
                    let mut default = default.clone();
                    fill_defaults(property, &mut default, depth + 1);
                    object.insert(name.clone(), default);
                }
            }
        }
    }
}

/// Validates `config` against a manifest's JSON Schema, naming the first failing field.
pub fn check_schema(schema: &Json, config: &Json) -> Result<(), Error> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        invalid(
            "schema",
            format!("the plugin's config schema is invalid: {e}"),
        )
    })?;
    if let Some(error) = validator.iter_errors(config).next() {
        use jsonschema::error::ValidationErrorKind as Kind;
        let pointer = error.instance_path().to_string();
        let mut path: Vec<String> = pointer
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        // A missing or unexpected property is reported at its object: name the property.
        match error.kind() {
            Kind::Required { property } => {
                path.push(property.as_str().unwrap_or_default().to_owned());
            }
            Kind::AdditionalProperties { unexpected } => {
                path.extend(unexpected.first().cloned());
            }
            _ => {}
        }
        path.retain(|s| !s.is_empty());
        let field = if path.is_empty() {
            "config".to_owned()
        } else {
            path.join(".")
        };
        return Err(Error::Invalid {
            field,
            message: error.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_outside_the_schema_names_the_field() {
        let schema = json!({
            "type": "object",
            "properties": { "greeting": { "type": "string", "maxLength": 5 } },
            "additionalProperties": false
        });
        check_schema(&schema, &json!({ "greeting": "hi" })).unwrap();
        match check_schema(&schema, &json!({ "greeting": "far too long" })) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "greeting"),
            other => panic!("{other:?}"),
        }
        assert!(check_schema(&schema, &json!({ "other": 1 })).is_err());
    }

    fn field_of(schema: &Json, config: &Json) -> String {
        match check_schema(schema, config) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_schemas_defaults_fill_what_the_configuration_leaves_out() {
        let schema = json!({
            "type": "object",
            "properties": {
                "goal": { "type": "integer", "default": 10 },
                "greeting": { "type": "string" },
                "reward": {
                    "type": "object",
                    "default": {},
                    "properties": { "title": { "type": "string", "default": "咖啡" } }
                }
            }
        });
        assert_eq!(
            with_defaults(Some(&schema), json!({})),
            json!({ "goal": 10, "reward": { "title": "咖啡" } })
        );
        assert_eq!(
            with_defaults(
                Some(&schema),
                json!({ "goal": 3, "reward": { "title": "茶" } })
            ),
            json!({ "goal": 3, "reward": { "title": "茶" } })
        );
        assert_eq!(with_defaults(None, json!({ "a": 1 })), json!({ "a": 1 }));
        assert_eq!(with_defaults(Some(&schema), json!([1])), json!([1]));
    }

    #[test]
    fn a_missing_or_unexpected_property_is_named_not_its_object() {
        let schema = json!({
            "type": "object",
            "required": ["goal"],
            "properties": {
                "goal": { "type": "integer" },
                "reward": {
                    "type": "object",
                    "required": ["title"],
                    "properties": { "title": { "type": "string" } },
                    "additionalProperties": false
                }
            },
            "additionalProperties": false
        });
        assert_eq!(field_of(&schema, &json!({})), "goal");
        assert_eq!(
            field_of(&schema, &json!({ "goal": 1, "colour": "red" })),
            "colour"
        );
        assert_eq!(
            field_of(&schema, &json!({ "goal": 1, "reward": {} })),
            "reward.title"
        );
        assert_eq!(
            field_of(
                &schema,
                &json!({ "goal": 1, "reward": { "title": "x", "extra": 1 } })
            ),
            "reward.extra"
        );
        assert_eq!(field_of(&schema, &json!([])), "config");
    }
}
