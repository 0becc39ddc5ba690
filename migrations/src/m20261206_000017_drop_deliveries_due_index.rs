//! Deliveries pending are found only through the turns index (status, partner, merchant, due
//! instant, id): the older (status, due instant) index is dropped. Every reader of pending
//! deliveries now walks the turns index, and with two indexes that both begin with the status
//! PostgreSQL's planner, its statistics lagging behind a backlog that grew at once, would at
//! times pick the older one and sort every pending delivery to find the first. One index less
//! is also one entry less to rewrite each time a delivery changes status.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EventDeliveries {
    Table,
    Status,
    NextAttemptAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("event_deliveries_due")
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
                    .name("event_deliveries_due")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::Status)
                    .col(EventDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await
    }
}
