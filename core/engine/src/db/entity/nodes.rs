//! A node of the tenant tree: the platform, a partner, an agent, a merchant or a store.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "nodes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: String,
    pub parent_id: Option<String>,
    pub partner_id: Option<String>,
    pub agent_id: Option<String>,
    pub merchant_id: Option<String>,
    pub store_id: Option<String>,
    pub name: String,
    pub theme: Option<String>,
    pub status: String,
    /// The tier (depth) of whoever suspended the node; only that tier or one above resumes it.
    pub suspended_by_tier: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
