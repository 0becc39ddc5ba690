//! The turns index (partner, merchant, due instant, id) holds pending deliveries only: it is
//! smaller, and a delivery marked delivered adds no entry to it. It replaces the turns index
//! that led with the status.
//!
//! A delivery's row is written three times (queued, leased, delivered). On PostgreSQL pages
//! are left a quarter free, so that a lease, which changes no indexed column, is rewritten in
//! place (a HOT update) instead of adding an entry to every index of the table; pages written
//! before this migration keep what room they had.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

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
                    .name("event_deliveries_pending_turns")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::PartnerId)
                    .col(EventDeliveries::MerchantId)
                    .col(EventDeliveries::NextAttemptAt)
                    .col(EventDeliveries::Id)
                    .and_where(Expr::col(EventDeliveries::Status).eq("pending"))
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
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE event_deliveries SET (fillfactor = 75)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE event_deliveries RESET (fillfactor)")
                .await?;
        }
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
                    .name("event_deliveries_pending_turns")
                    .table(EventDeliveries::Table)
                    .to_owned(),
            )
            .await
    }
}
