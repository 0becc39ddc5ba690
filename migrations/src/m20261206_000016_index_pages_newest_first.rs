//! The consoles page payments and deliveries newest first by a `(created_at, id)` cursor: an
//! index for each tenant column that ends in both, so a page reads its rows in index order
//! instead of sorting every row of the tenant (rows created in the same millisecond included).
//! The payments' `(tenant, created_at)` indexes are replaced by these, and a payments page of
//! one status has its own.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (index, table, tenant column or none for the platform's whole log, status too).
const NEWEST_FIRST: [(&str, &str, Option<&str>, bool); 8] = [
    (
        "payments_merchant_newest",
        "payments",
        Some("merchant_id"),
        false,
    ),
    ("payments_store_newest", "payments", Some("store_id"), false),
    // A page of one status reads only that status's rows, however rare it is.
    (
        "payments_merchant_status_newest",
        "payments",
        Some("merchant_id"),
        true,
    ),
    (
        "payments_store_status_newest",
        "payments",
        Some("store_id"),
        true,
    ),
    (
        "deliveries_partner_newest",
        "event_deliveries",
        Some("partner_id"),
        false,
    ),
    (
        "deliveries_agent_newest",
        "event_deliveries",
        Some("agent_id"),
        false,
    ),
    (
        "deliveries_merchant_newest",
        "event_deliveries",
        Some("merchant_id"),
        false,
    ),
    ("deliveries_newest", "event_deliveries", None, false),
];

/// The indexes the new ones replace: the same order, without the tie-breaking id.
const REPLACED: [(&str, &str, &str); 2] = [
    ("payments_merchant_created", "payments", "merchant_id"),
    ("payments_store_created", "payments", "store_id"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, tenant, by_status) in NEWEST_FIRST {
            let mut index = Index::create();
            index.if_not_exists().name(name).table(Alias::new(table));
            if let Some(tenant) = tenant {
                index.col(Alias::new(tenant));
            }
            if by_status {
                index.col(Alias::new("status"));
            }
            index.col(Alias::new("created_at")).col(Alias::new("id"));
            manager.create_index(index.to_owned()).await?;
        }
        for (name, table, _) in REPLACED {
            manager
                .drop_index(
                    Index::drop()
                        .if_exists()
                        .name(name)
                        .table(Alias::new(table))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, tenant) in REPLACED {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Alias::new(table))
                        .col(Alias::new(tenant))
                        .col(Alias::new("created_at"))
                        .to_owned(),
                )
                .await?;
        }
        for (name, table, _, _) in NEWEST_FIRST {
            manager
                .drop_index(
                    Index::drop()
                        .if_exists()
                        .name(name)
                        .table(Alias::new(table))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
