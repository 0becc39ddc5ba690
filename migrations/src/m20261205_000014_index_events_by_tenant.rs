//! The event log reads a partner's or a merchant's events newest first: an index for each, so a
//! page does not scan every tenant's events.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    PartnerId,
    MerchantId,
    OccurredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, tenant) in [
            ("events_partner_time", Events::PartnerId),
            ("events_merchant_time", Events::MerchantId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Events::Table)
                        .col(tenant)
                        .col(Events::OccurredAt)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in ["events_partner_time", "events_merchant_time"] {
            manager
                .drop_index(
                    Index::drop()
                        .if_exists()
                        .name(name)
                        .table(Events::Table)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
