//! The Trellis schema as an ordered list of migrations, the same on SQLite and PostgreSQL.
//!
//! Invariant: a migration, once released, never changes; new schema is a new file named
//! `mYYYYMMDD_NNNNNN_<verb>_<object>.rs`, appended to [`Migrator::migrations`]. A new table
//! declares its tenant ids and instants with [`columns`].

pub use sea_orm_migration::prelude::*;

pub mod columns;

mod m20261125_000001_create_tenancy;
mod m20261125_000002_create_auth_and_audit;
mod m20261125_000003_create_alipay_credentials;
mod m20261125_000004_create_sandbox_state;
mod m20261125_000005_create_alipay_notifications;
mod m20261126_000006_create_plugin_kv;
mod m20261126_000007_create_plugin_platform;
mod m20261128_000008_create_event_budgets;
mod m20261204_000009_key_alipay_notifications_by_merchant;
mod m20261204_000010_record_who_suspended_a_node;
mod m20261205_000011_create_payments;
mod m20261205_000012_record_payment_checks;
mod m20261205_000013_rank_deliveries_by_turn;
mod m20261205_000014_index_events_by_tenant;
mod m20261205_000015_record_breaker_resets;
mod m20261206_000016_index_pages_newest_first;
mod m20261206_000017_drop_deliveries_due_index;
mod m20261206_000018_slim_delivery_indexes;

/// Every migration of the engine, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_tenancy::Migration),
            Box::new(m20261125_000002_create_auth_and_audit::Migration),
            Box::new(m20261125_000003_create_alipay_credentials::Migration),
            Box::new(m20261125_000004_create_sandbox_state::Migration),
            Box::new(m20261125_000005_create_alipay_notifications::Migration),
            Box::new(m20261126_000006_create_plugin_kv::Migration),
            Box::new(m20261126_000007_create_plugin_platform::Migration),
            Box::new(m20261128_000008_create_event_budgets::Migration),
            Box::new(m20261204_000009_key_alipay_notifications_by_merchant::Migration),
            Box::new(m20261204_000010_record_who_suspended_a_node::Migration),
            Box::new(m20261205_000011_create_payments::Migration),
            Box::new(m20261205_000012_record_payment_checks::Migration),
            Box::new(m20261205_000013_rank_deliveries_by_turn::Migration),
            Box::new(m20261205_000014_index_events_by_tenant::Migration),
            Box::new(m20261205_000015_record_breaker_resets::Migration),
            Box::new(m20261206_000016_index_pages_newest_first::Migration),
            Box::new(m20261206_000017_drop_deliveries_due_index::Migration),
            Box::new(m20261206_000018_slim_delivery_indexes::Migration),
        ]
    }
}
