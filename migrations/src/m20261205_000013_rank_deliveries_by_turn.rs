//! Claims rank only the first due deliveries of each (partner, merchant): an index that holds
//! them in claim order, the delivery id breaking ties of the same due instant, so each is an
//! index range rather than a sort of the whole backlog. It replaces the index it extends.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EventDeliveries {
    Table,
    Id,
    Status,
    PartnerId,
    MerchantId,
    NextAttemptAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("event_deliveries_turns")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::Status)
                    .col(EventDeliveries::PartnerId)
                    .col(EventDeliveries::MerchantId)
                    .col(EventDeliveries::NextAttemptAt)
                    .col(EventDeliveries::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("event_deliveries_tenant_due")
                    .table(EventDeliveries::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("event_deliveries_tenant_due")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::Status)
                    .col(EventDeliveries::PartnerId)
                    .col(EventDeliveries::MerchantId)
                    .col(EventDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("event_deliveries_turns")
                    .table(EventDeliveries::Table)
                    .to_owned(),
            )
            .await
    }
}
